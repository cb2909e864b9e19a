"""`flowpipe query` and `flowpipe columns` over a real store; table, CSV and JSON rendering."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner
from conftest import capture_files

from flowpipe.cli import main
from flowpipe.errors import QueryError
from flowpipe.ingest import importer
from flowpipe.views import columns, query

SQL = (
    "SELECT time, cluster, verdict, src_labels, dst_port FROM flows "
    "WHERE dst_port IS NOT NULL ORDER BY time, src_port LIMIT 5"
)


@pytest.fixture
def lab(store):
    importer.import_files(store, [str(p) for p in capture_files()], cluster="lab")
    return store


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.stdout, res.stderr


def test_table_has_a_header_a_rule_and_a_row_count(lab):
    code, out, _ = run("query", "--store", str(lab.root), SQL)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["time", "cluster", "verdict", "src_labels", "dst_port"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert len(lines) == 2 + 5 + 1 and lines[-1] == "(5 rows)"
    names, rows = query.fetch(lab, SQL)
    # the columns line up under their headers
    start = lines[0].index("verdict")
    assert all(line[start:].startswith(str(row[2])) for line, row in zip(lines[2:7], rows))


def test_csv_and_json_carry_every_value(lab):
    names, rows = query.fetch(lab, SQL)
    code, out, _ = run("query", "--store", str(lab.root), "--format", "csv", SQL)
    assert code == 0
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == names and len(table) == 1 + len(rows)
    assert [r[4] for r in table[1:]] == [str(r[4]) for r in rows]
    assert json.loads(table[1][3]) == rows[0][3]  # lists as JSON
    assert table[1][0] == rows[0][0].isoformat()
    code, out, _ = run("query", "--store", str(lab.root), "--format", "json", SQL)
    docs = [json.loads(line) for line in out.splitlines()]
    assert [list(d) for d in docs] == [names] * len(rows)
    assert docs[0]["time"] == rows[0][0].isoformat() and docs[0]["src_labels"] == rows[0][3]


def test_max_rows_says_how_many_are_left(lab):
    code, out, _ = run("query", "--store", str(lab.root), "--max-rows", "2", SQL)
    assert code == 0
    assert "... 3 more rows (use --max-rows or --format csv)" in out
    assert out.splitlines()[-1] == "(5 rows)"


def test_a_bad_query_is_one_line_and_exit_2(lab):
    code, out, err = run("query", "--store", str(lab.root), "SELECT nope FROM flows")
    assert code == 2 and out == ""
    assert err.startswith("flowpipe: error: query failed: Binder Error: ")
    assert err.count("\n") == 1  # DuckDB's context lines (LINE 1: ...) stay out
    with pytest.raises(QueryError):
        query.fetch(lab, "SELEC 1")


def test_columns_lists_every_column_of_the_view(store):
    for view, cols in (("flows", columns.flat_columns()), ("events", columns.event_columns())):
        code, out, _ = run("columns", "--view", view)
        assert code == 0
        listed = [line.split(None, 1) for line in out.splitlines()]
        assert [n for n, _ in listed] == [n for n, _, _ in cols]
        assert [d for _, d in listed] == [d for _, _, d in cols]
        names, _ = query.fetch(store, f"SELECT * FROM {view} LIMIT 0")
        assert [n for n, _ in listed] == names  # what it lists is what the view has


def test_render_table_cuts_long_cells_and_shows_nulls_empty():
    text = query.render_table(["a", "long"], [(None, "x" * 100), (1, "two\nlines")], max_width=10)
    lines = text.splitlines()
    assert lines[2] == "   " + "x" * 9 + "…"
    assert lines[3] == "1  two lines"
    assert lines[-1] == "(2 rows)"
    assert query.render_table(["n"], [(1,)]).splitlines()[-1] == "(1 row)"
    assert query.render_table(["n"], []).splitlines() == ["n", "-", "(0 rows)"]
