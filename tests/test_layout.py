"""The tree shows the pipeline: every module has its row in DEVELOPERS.md, none is a grab bag."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flowpipe"
GENERATED = PACKAGE / "api"  # protoc's output (`make protos`), never edited by hand


def modules() -> list[Path]:
    """Every hand-written module of the package (package markers aside)."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")) + sorted(PACKAGE.rglob("*.c")):
        if GENERATED in path.parents or path.name in ("__init__.py", "__main__.py"):
            continue
        out.append(path)
    return out


def test_every_module_has_its_row_in_developers_md():
    text = (ROOT / "DEVELOPERS.md").read_text()
    rows = set(re.findall(r"^\| `([^`]+)`", text, flags=re.M))
    missing = [str(p.relative_to(ROOT)) for p in modules() if str(p.relative_to(ROOT)) not in rows]
    assert not missing, f"modules without a row in DEVELOPERS.md's module table: {missing}"
    stale = [r for r in rows if r.startswith("flowpipe/") and not (ROOT / r).exists()]
    assert not stale, f"rows of DEVELOPERS.md naming modules that do not exist: {stale}"


def test_modules_stay_a_few_hundred_lines():
    """One topic per module: a module past 800 lines is a sign of two topics."""
    big = {}
    for path in modules():
        if path.suffix != ".py":
            continue  # a C extension is one topic however long: the decoder, the JSON converter
        n = len(path.read_text().splitlines())
        if n > 800:
            big[str(path.relative_to(ROOT))] = n
    assert not big, f"split these by topic: {big}"
