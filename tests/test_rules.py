"""The rule file format: settings, SQL, and every parse error naming file:line and rule."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flowpipe.errors import RuleError
from flowpipe.rules import rulefile as rules

GOOD = textwrap.dedent(
    """\
    -- flowpipe: stage=5 title="Stage 5: default-deny"
    -- A free comment about the file.

    -- rule: dns-allowed-by-allow-dns
    -- why: DNS from shop must still be allowed by allow-dns
    -- expect: all
    -- a free comment inside the header
    -- assert: allowed_by(egress_allowed_by, 'allow-dns')
    -- assert: verdict IN ('FORWARDED', 'REDIRECTED')
    -- min_flows: 3
    -- severity: warn
    SELECT * FROM policy_verdicts
    WHERE src_namespace = 'shop' -- keep: a SQL comment
      AND dst_port = 53;

    -- rule: no-allow-all
    -- why: allow-all must be gone
    -- expect: none
    SELECT * FROM flows WHERE allowed_by(ingress_allowed_by, 'allow-all')

    -- rule: some-dns
    -- why: DNS must be seen
    -- expect: at_least 2
    SELECT * FROM l7_dns WHERE ';' <> 'x'; -- trailing comment
    """
)


def parse(text: str) -> rules.RuleFile:
    return rules.parse_text(textwrap.dedent(text), "r.sql")


def test_parses_settings_and_sql():
    rf = rules.parse_text(GOOD, "stage5.sql")
    assert (rf.stage, rf.title) == ("5", "Stage 5: default-deny")
    a, b, c = rf.rules
    assert a.name == "dns-allowed-by-allow-dns" and a.line == 4 and a.sql_line == 12
    assert a.expect == "all" and a.min_flows == 3 and a.severity == "warn"
    assert a.asserts == (
        "allowed_by(egress_allowed_by, 'allow-dns')",
        "verdict IN ('FORWARDED', 'REDIRECTED')",
    )
    assert a.condition.count(" AND ") == 1 and a.assert_lines == (8, 9)
    assert a.sql.startswith("SELECT * FROM policy_verdicts") and ";" not in a.sql
    assert "-- keep: a SQL comment" in a.sql  # comments inside the SQL are SQL, not settings
    assert (b.expect, b.min_flows, b.severity, b.asserts) == ("none", 0, "error", ())
    assert (c.expect, c.min_flows) == ("at_least", 2)
    assert "';'" in c.sql and c.sql.rstrip().endswith("-- trailing comment")


def test_defaults_and_stage_from_file_name(tmp_path: Path):
    p = tmp_path / "mystage.sql"
    p.write_text("-- rule: r1\n-- why: w\n-- expect: all\n-- assert: true\nSELECT 1\n")
    rf = rules.parse_file(p)
    assert rf.stage == "mystage" and rf.title == ""
    assert rf.rules[0].min_flows == 1 and rf.rules[0].severity == "error"


def test_shipped_stage_files_parse_and_resolve_by_bare_name(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # from any directory
    names = [p.name for p in rules.shipped_files()]
    assert names == [f"stage{i}.sql" for i in range(1, 6)]
    for i in range(1, 6):
        for name in (f"stage{i}.sql", f"stage{i}"):
            [rf] = rules.load([name])
            assert rf.stage == str(i) and rf.path == f"stage{i}.sql" and rf.rules


def test_a_local_file_wins_over_a_shipped_name(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stage5.sql").write_text("-- rule: mine\n-- why: w\n-- expect: none\nSELECT 1\n")
    [rf] = rules.load(["stage5.sql"])
    assert rf.rules[0].name == "mine" and rf.path == "stage5.sql"


def test_directory_of_rule_files(tmp_path: Path):
    for name in ("b.sql", "a.sql"):
        (tmp_path / name).write_text("-- rule: r\n-- why: w\n-- expect: none\nSELECT 1\n")
    assert [Path(rf.path).name for rf in rules.load([str(tmp_path)])] == ["a.sql", "b.sql"]


def test_unknown_file_lists_shipped_ones():
    with pytest.raises(RuleError, match=r"nope.sql: no such rule file \(shipped: stage1.sql"):
        rules.load(["nope.sql"])


BAD = [
    (
        "-- rule: r\n-- why: w\n-- expect: none\n-- severty: warn\nSELECT 1",
        4,
        "unknown setting 'severty'",
    ),
    ("-- rule: r\n-- expect: none\nSELECT 1", 1, "missing '-- why:'"),
    ("-- rule: r\n-- why:\n-- expect: none\nSELECT 1", 1, "missing '-- why:'"),
    ("-- rule: r\n-- why: w\n-- expect: none\n", 1, "missing SELECT"),
    ("-- rule: r\n-- why: w\n-- expect: none\n-- only a comment\n", 1, "missing SELECT"),
    (
        "-- rule: r\n-- why: w\n-- expect: none\nSELECT 1;\nSELECT 2;",
        5,
        "two statements in one rule",
    ),
    (
        "-- rule: r\n-- why: w\n-- expect: none\nSELECT 1; DROP VIEW flows",
        4,
        "two statements in one rule",
    ),
    ("-- rule: r\n-- why: w\n-- expect: some\nSELECT 1", 3, "bad expect 'some'"),
    ("-- rule: r\n-- why: w\n-- expect: at_least 0\nSELECT 1", 3, "bad expect 'at_least 0'"),
    ("-- rule: r\n-- why: w\n-- expect: at_least\nSELECT 1", 3, "bad expect 'at_least'"),
    ("-- rule: r\n-- why: w\nSELECT 1", 1, "missing '-- expect:'"),
    ("-- rule: r\n-- why: w\n-- expect: all\nSELECT 1", 3, "needs at least one '-- assert:'"),
    (
        "-- rule: r\n-- why: w\n-- expect: none\n-- assert: true\nSELECT 1",
        4,
        "only applies to expect: all",
    ),
    (
        "-- rule: r\n-- why: w\n-- expect: none\n-- min_flows: 2\nSELECT 1",
        4,
        "min_flows has no meaning",
    ),
    (
        "-- rule: r\n-- why: w\n-- expect: at_least 2\n-- min_flows: 2\nSELECT 1",
        4,
        "use at_least N alone",
    ),
    (
        "-- rule: r\n-- why: w\n-- expect: all\n-- assert: true\n-- min_flows: x\nSELECT 1",
        5,
        "bad min_flows 'x'",
    ),
    (
        "-- rule: r\n-- why: w\n-- expect: none\n-- severity: fatal\nSELECT 1",
        4,
        "bad severity 'fatal'",
    ),
    ("-- rule: r\n-- why: w\n-- why: v\n-- expect: none\nSELECT 1", 3, "'-- why:' given twice"),
    ("-- rule: r\n-- why: w\n-- expect: none\nSELECT 1\n-- why: late\n", 5, "after the SQL"),
    (
        "-- rule: r\n-- why: w\n-- expect: none\nSELECT 1\n-- rule: r\n-- why: w\n-- expect: none\nSELECT 2",
        5,
        "duplicate rule name",
    ),
    ("-- rule: bad name!\n-- why: w\n-- expect: none\nSELECT 1", 1, "bad rule name"),
    ("-- rule: r\n-- why: w\n-- expect: none\nDELETE FROM flows", 4, "not DELETE"),
    (
        "-- rule: r\n-- why: w\n-- expect: none\nSELECT *\nFROM flows\nWHERE a = = 1",
        6,
        "SQL syntax",
    ),
    ("-- rule: r\n-- why: w\n-- expect: all\n-- assert:\nSELECT 1", 4, "empty '-- assert:'"),
]


@pytest.mark.parametrize("text,line,what", BAD)
def test_parse_errors_name_file_line_and_rule(text: str, line: int, what: str):
    with pytest.raises(RuleError) as err:
        rules.parse_text(text, "bad.sql")
    msg = str(err.value)
    assert msg.startswith(f"bad.sql:{line}: rule "), msg
    assert what in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "text,line,what",
    [
        (
            "SELECT 1\n-- rule: r\n-- why: w\n-- expect: none\nSELECT 1",
            1,
            "SQL before the first '-- rule:'",
        ),
        ("-- why: w\n-- rule: r\n", 1, "'-- why:' before the first '-- rule:'"),
        ("-- just a comment\n", 1, "no rules"),
        (
            "-- rule: r\n-- why: w\n-- expect: none\nSELECT 1\n-- flowpipe: stage=1\n",
            5,
            "must come before",
        ),
        (
            "-- flowpipe: stage=1 colour=red\n-- rule: r\n-- why: w\n-- expect: none\nSELECT 1",
            1,
            "colour=red",
        ),
        (
            '-- flowpipe: title="unterminated\n-- rule: r\n-- why: w\n-- expect: none\nSELECT 1',
            1,
            "bad '-- flowpipe:'",
        ),
    ],
)
def test_file_level_errors_name_file_and_line(text: str, line: int, what: str):
    with pytest.raises(RuleError) as err:
        rules.parse_text(text, "f.sql")
    assert str(err.value).startswith(f"f.sql:{line}: ") and what in str(err.value), str(err.value)


def test_unreadable_file_is_a_rule_error(tmp_path: Path):
    p = tmp_path / "x.sql"
    p.write_bytes(b"\xff\xfe-- rule")
    with pytest.raises(RuleError, match="cannot read rule file"):
        rules.parse_file(p)


def test_strip_terminator_keeps_strings_and_comments():
    sql = "SELECT ';' AS a, \"x;y\" /* ; */ FROM t -- c;\n;;"
    assert rules.strip_terminator(sql) == "SELECT ';' AS a, \"x;y\" /* ; */ FROM t -- c;"
