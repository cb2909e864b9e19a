"""Rule files: plain SQL over the store's views, settings in `-- key: value` comment headers."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import duckdb

from flowpipe.common.text import first_line
from flowpipe.errors import RuleError

SETTINGS = ("rule", "why", "expect", "assert", "min_flows", "severity")
FILE_KEYS = ("stage", "title")
SEVERITIES = ("error", "warn")
EXPECT_HELP = "all, none or at_least N"

# `-- key: value`; a free comment must not start with a single word and a colon
_SETTING_RE = re.compile(r"^\s*--\s*([A-Za-z_][A-Za-z0-9_-]*)\s*:(.*)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_EXPECT_RE = re.compile(r"^(all|none|at_least\s+(\d+))$")
_LINE_RE = re.compile(r"LINE (\d+):")


@dataclass(frozen=True)
class Rule:
    """One named check: a SELECT (the flows in scope) and what must hold for them."""

    name: str
    why: str
    expect: str  # all | none | at_least
    sql: str  # the SELECT as written, without its terminating ';'
    asserts: tuple[str, ...] = ()  # expect all: every flow satisfies each (ANDed)
    min_flows: int = 1  # all: flows needed in scope; at_least: N; none: 0
    severity: str = "error"  # error | warn
    file: str = ""
    line: int = 0  # line of `-- rule:`
    sql_line: int = 0  # first line of the SELECT
    assert_lines: tuple[int, ...] = ()

    @property
    def condition(self) -> str:
        """The assert lines as one SQL boolean expression."""
        return " AND ".join(f"({a})" for a in self.asserts) or "true"

    def where(self, line: int | None = None) -> str:
        """'file:line: rule name' for messages."""
        return f"{self.file}:{line or self.line}: rule {self.name}"


@dataclass(frozen=True)
class RuleFile:
    """A parsed rule file: its stage, title and rules in file order."""

    path: str
    stage: str
    title: str
    rules: tuple[Rule, ...]


def parse_file(path: str | os.PathLike[str], display: str | None = None) -> RuleFile:
    """Read and parse a rule file; raise RuleError naming file:line and rule."""
    name = display or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"{name}: cannot read rule file: {exc}") from exc
    return parse_text(text, name, stem=Path(path).stem)


def parse_text(text: str, path: str = "<rules>", *, stem: str | None = None) -> RuleFile:
    """Parse the text of a rule file (see docs/check.md for the format)."""
    header: dict[str, str] = {}
    rules: list[Rule] = []
    cur: _Draft | None = None
    for no, line in enumerate(text.splitlines(), 1):
        m = _SETTING_RE.match(line)
        key = m.group(1).lower() if m else None
        value = m.group(2).strip() if m else ""
        if key == "flowpipe":
            if cur is not None or rules:
                raise RuleError(
                    f"{path}:{no}: the '-- flowpipe:' header must come before the first rule"
                )
            header = _file_header(value, path, no)
        elif key == "rule":
            if cur is not None:
                rules.append(cur.finish(rules))
            cur = _Draft(path, no, value)
        elif cur is None:
            if key in SETTINGS:
                raise RuleError(f"{path}:{no}: '-- {key}:' before the first '-- rule:' line")
            if line.strip() and not line.lstrip().startswith("--"):
                raise RuleError(
                    f"{path}:{no}: SQL before the first '-- rule:' line (every SELECT belongs to a rule)"
                )
        elif cur.sql_line:  # inside the SQL: comments are SQL comments, but settings are misplaced
            if key in SETTINGS:
                raise RuleError(
                    f"{path}:{no}: rule {cur.name}: '-- {key}:' after the SQL; settings go above the SELECT"
                )
            cur.sql.append(line)
        elif m:
            cur.set(key, value, no)
        elif line.strip() and not line.lstrip().startswith("--"):
            cur.sql_line = no
            cur.sql.append(line)
    if cur is not None:
        rules.append(cur.finish(rules))
    if not rules:
        raise RuleError(f"{path}:1: no rules (a rule starts with a '-- rule: NAME' line)")
    stage = header.get("stage") or (stem if stem is not None else Path(path).stem)
    return RuleFile(path, stage, header.get("title", ""), tuple(rules))


def _file_header(value: str, path: str, no: int) -> dict[str, str]:
    try:
        items = shlex.split(value)
    except ValueError as exc:
        raise RuleError(f"{path}:{no}: bad '-- flowpipe:' header: {exc}") from exc
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or k not in FILE_KEYS:
            raise RuleError(
                f"{path}:{no}: bad '-- flowpipe:' item {item!r} (use stage=N title=\"...\")"
            )
        out[k] = v
    return out


class _Draft:
    """A rule being read: settings and SQL lines."""

    def __init__(self, path: str, line: int, name: str):
        self.path, self.line, self.name = path, line, name
        if not _NAME_RE.match(name):
            raise RuleError(
                f"{path}:{line}: rule {name!r}: bad rule name (letters, digits, '.', '_' or '-', e.g. dns-allowed)"
            )
        self.settings: dict[str, tuple[str, int]] = {}
        self.asserts: list[tuple[str, int]] = []
        self.sql: list[str] = []
        self.sql_line = 0

    def fail(self, line: int, what: str) -> RuleError:
        return RuleError(f"{self.path}:{line}: rule {self.name}: {what}")

    def set(self, key: str, value: str, line: int) -> None:
        if key not in SETTINGS:
            raise self.fail(
                line,
                f"unknown setting {key!r} (settings: {', '.join(SETTINGS)}; "
                "a free comment must not start with 'word:')",
            )
        if key == "assert":
            if not value:
                raise self.fail(line, "empty '-- assert:'")
            self.asserts.append((value, line))
        elif key in self.settings:
            raise self.fail(
                line, f"'-- {key}:' given twice (first at line {self.settings[key][1]})"
            )
        else:
            self.settings[key] = (value, line)

    def finish(self, done: list[Rule]) -> Rule:
        if any(r.name == self.name for r in done):
            first = next(r.line for r in done if r.name == self.name)
            raise self.fail(self.line, f"duplicate rule name (first at line {first})")
        why = self.settings.get("why", ("", 0))[0]
        if not why:
            raise self.fail(
                self.line, "missing '-- why:' (one line a person reads when the rule fails)"
            )
        expect, min_flows = self._expect()
        severity, sev_line = self.settings.get("severity", ("error", self.line))
        if severity not in SEVERITIES:
            raise self.fail(sev_line, f"bad severity {severity!r} (error or warn)")
        sql = _statement(self)
        return Rule(
            name=self.name,
            why=why,
            expect=expect,
            sql=sql,
            asserts=tuple(a for a, _ in self.asserts),
            min_flows=min_flows,
            severity=severity,
            file=self.path,
            line=self.line,
            sql_line=self.sql_line,
            assert_lines=tuple(n for _, n in self.asserts),
        )

    def _expect(self) -> tuple[str, int]:
        if "expect" not in self.settings:
            raise self.fail(self.line, f"missing '-- expect:' ({EXPECT_HELP})")
        text, line = self.settings["expect"]
        m = _EXPECT_RE.match(" ".join(text.split()))
        if not m or (m.group(2) is not None and int(m.group(2)) < 1):
            raise self.fail(line, f"bad expect {text!r} (use {EXPECT_HELP}, N >= 1)")
        expect = "at_least" if m.group(2) else m.group(1)
        if expect != "all" and self.asserts:
            raise self.fail(
                self.asserts[0][1],
                f"'-- assert:' only applies to expect: all (with {expect}, put the condition in the WHERE clause)",
            )
        if expect == "all" and not self.asserts:
            raise self.fail(
                line, "expect: all needs at least one '-- assert:' line (what every flow satisfies)"
            )
        if "min_flows" in self.settings:
            text_mf, line_mf = self.settings["min_flows"]
            if expect != "all":
                hint = (
                    "use at_least N alone"
                    if expect == "at_least"
                    else "add an expect: at_least rule"
                )
                raise self.fail(line_mf, f"min_flows has no meaning with expect: {expect} ({hint})")
            if not text_mf.isdigit():
                raise self.fail(line_mf, f"bad min_flows {text_mf!r} (a whole number >= 0)")
            return expect, int(text_mf)
        if expect == "at_least":
            return expect, int(m.group(2))
        return expect, 1 if expect == "all" else 0


def _statement(d: _Draft) -> str:
    """The rule's single SELECT, checked with DuckDB's own parser."""
    if not d.sql_line:
        raise d.fail(d.line, "missing SELECT (the flows the rule is about)")
    text = "\n".join(d.sql)
    try:
        stmts = duckdb.extract_statements(text)
    except duckdb.Error as exc:
        msg = first_line(exc)
        m = _LINE_RE.search(str(exc))
        line = d.sql_line + int(m.group(1)) - 1 if m else d.sql_line
        raise d.fail(line, f"SQL syntax: {msg}") from exc
    if not stmts:
        raise d.fail(d.sql_line, "missing SELECT (only comments)")
    if len(stmts) > 1:
        offset = len(stmts[0].query)
        second = d.sql_line + text[:offset].count("\n") + _leading_lines(stmts[1].query)
        raise d.fail(
            second,
            f"two statements in one rule (one SELECT per rule; the second starts at line {second})",
        )
    if stmts[0].type != duckdb.StatementType.SELECT:
        raise d.fail(
            d.sql_line, f"a rule is one SELECT (or WITH ... SELECT), not {stmts[0].type.name}"
        )
    return strip_terminator(text)


def _leading_lines(sql: str) -> int:
    """Newlines before the first token of sql (skipping blanks and -- comments)."""
    n = 0
    for line in sql.split("\n"):
        s = line.strip()
        if s and not s.startswith("--"):
            return n
        n += 1
    return n


def strip_terminator(sql: str) -> str:
    """sql without ';' outside strings and comments (it is known to be one statement)."""
    out = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            j = i + 1
            while j < n and not (sql[j] == c and (j + 1 >= n or sql[j + 1] != c)):
                j += 2 if sql[j] == c else 1
            out.append(sql[i : j + 1])
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            out.append(sql[i:j])
            i = j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(sql[i:j])
            i = j
        elif c == ";":
            out.append(" ")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out).rstrip()


# ------------------------------------------------------------------ locating files


def shipped_dir() -> Path:
    """Directory of the stage files shipped inside the package (flowpipe/queries)."""
    return Path(str(resources.files("flowpipe").joinpath("queries")))


def shipped_files() -> list[Path]:
    """The shipped rule files, sorted by name."""
    d = shipped_dir()
    return sorted(d.glob("*.sql")) if d.is_dir() else []


def resolve(names: list[str]) -> list[tuple[Path, str]]:
    """(path, display name) of rule files for command-line names: files, directories, shipped names."""
    out: list[tuple[Path, str]] = []
    for name in names:
        p = Path(name).expanduser()
        if p.is_file():
            out.append((p, name))
        elif p.is_dir():
            found = sorted(p.glob("*.sql"))
            if not found:
                raise RuleError(f"{name}: directory holds no *.sql rule files")
            out += [(f, str(f)) for f in found]
        elif "/" not in name and os.sep not in name and (shipped := _shipped(name)):
            out.append(
                (shipped, shipped.name)
            )  # a bare name: the stage file shipped in the package
        else:
            avail = ", ".join(f.name for f in shipped_files()) or "none"
            raise RuleError(f"{name}: no such rule file (shipped: {avail})")
    return out


def _shipped(name: str) -> Path | None:
    for cand in (name, f"{name}.sql"):
        p = shipped_dir() / cand
        if p.is_file():
            return p
    return None


def load(names: list[str]) -> list[RuleFile]:
    """Resolve and parse rule files; raise RuleError on the first problem."""
    return [parse_file(path, display=shown) for path, shown in resolve(names)]
