"""Policy files as YAML documents that remember their lines: files, directories, stdin, `List`s."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from flowpipe.errors import InputError

SUFFIXES = (".yaml", ".yml", ".json")


class YDict(dict):
    """A YAML mapping that knows its line and the line of each of its keys (1-based)."""

    line: int = 0
    lines: dict[Any, int]


class YList(list):
    """A YAML sequence that knows its line and the line of each item (1-based)."""

    line: int = 0
    lines: list[int]


class _Loader(yaml.SafeLoader):
    """SafeLoader building YDict/YList; duplicate keys are errors (as kubectl's YAML parser)."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> YDict:
    loader.flatten_mapping(node)  # merge keys (<<)
    out = YDict()
    out.line, out.lines = node.start_mark.line + 1, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a scalar", key_node.start_mark
            ) from None
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> YList:
    out = YList(loader.construct_object(child, deep=True) for child in node.value)
    out.line, out.lines = node.start_mark.line + 1, [c.start_mark.line + 1 for c in node.value]
    return out


_Loader.add_constructor("tag:yaml.org,2002:map", _mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _sequence)


@dataclass
class Document:
    """One YAML document (or one item of a `kind: List`) and where it starts."""

    data: Any
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def line_of(obj: Any, key: Any = None, default: int = 0) -> int:
    """The line of obj (or of obj's key) if it came from YAML, else default."""
    if key is not None and isinstance(obj, YDict):
        return obj.lines.get(key, obj.line)
    if key is not None and isinstance(obj, YList) and isinstance(key, int):
        return obj.lines[key] if 0 <= key < len(obj.lines) else obj.line
    return getattr(obj, "line", default) or default


def policy_files(paths: Sequence[str]) -> list[str]:
    """The files named, with directories expanded (recursively, sorted); '-' is stdin."""
    out: list[str] = []
    for raw in paths:
        if raw == "-":
            out.append(raw)
            continue
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES
            )
            if not found:
                raise InputError(f"{raw}: no {', '.join(SUFFIXES)} files in this directory")
            out += found
        elif p.is_file():
            out.append(str(p))
        else:
            raise InputError(f"{raw}: no such file or directory")
    return list(dict.fromkeys(out))


def read_documents(path: str, stream: TextIO | None = None) -> list[Document]:
    """Every non-empty document of one file ('-': stream or stdin), `List` items expanded."""
    name = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            text = (stream or sys.stdin).read()
        else:
            text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{name}: cannot read: {exc}") from exc
    docs: list[Document] = []
    try:
        for data in yaml.load_all(text, Loader=_Loader):
            if data is None:  # an empty document (a stray ---)
                continue
            docs += _expand(Document(data, name, line_of(data, default=1)))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{name}:{line}: invalid YAML: {problem}") from None
    return docs


def _expand(doc: Document) -> Iterator[Document]:
    """`kind: List` (kubectl get -o yaml, some kustomize setups) becomes its items."""
    data = doc.data
    if isinstance(data, dict) and str(data.get("kind", "")).endswith("List"):
        items = data.get("items")
        if not isinstance(items, list):
            raise InputError(f"{doc.where}: {data.get('kind')} without an items list")
        for i, item in enumerate(items):
            yield from _expand(Document(item, doc.file, line_of(items, i, doc.line)))
        return
    yield doc


def load(paths: Sequence[str], stream: TextIO | None = None) -> list[Document]:
    """Every document of every file named (directories expanded)."""
    docs: list[Document] = []
    for path in policy_files(paths):
        docs += read_documents(path, stream)
    return docs
