"""Hostile rule files are refused before anything runs, and the connection itself is locked down."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from flowpipe.codec import decode, storage
from flowpipe.errors import RuleError
from flowpipe.rules import check, sandbox
from flowpipe.store.layout import Store

pytestmark = pytest.mark.reliability


@pytest.fixture
def filled(store: Store, captures) -> Store:
    flows, events = decode.split_responses(
        decode.decode_responses([c.SerializeToString() for c in captures])
    )
    store.write("cluster1", storage.to_storage(flows), events)
    return store


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    p = tmp_path / "secret.txt"
    p.write_text("password=hunter2\n")
    return p


def checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def one_file(store: Store) -> str:
    return str(store.files()[0])


# (SQL of the rule, words the refusal must contain); {secret}, {store}, {file}, {tmp} are filled in
HOSTILE = [
    ("SELECT * FROM read_csv('{secret}')", "read_csv()"),
    ("SELECT * FROM read_csv_auto('{secret}')", "read_csv_auto()"),
    ("SELECT * FROM READ_CSV('{secret}')", "read_csv()"),
    ("SELECT * FROM \"read_csv\"('{secret}')", "read_csv()"),
    ("SELECT * FROM read_text('{secret}')", "read_text()"),
    ("SELECT * FROM read_blob('{secret}')", "read_blob()"),
    ("SELECT * FROM read_json('{secret}')", "read_json()"),
    ("SELECT * FROM read_ndjson_objects('{secret}')", "read_ndjson_objects()"),
    ("SELECT * FROM glob('/etc/*')", "glob()"),
    ("SELECT * FROM read_parquet('{tmp}/other.parquet')", "read_parquet()"),
    ("SELECT * FROM read_parquet('{store}/flows/*/*/*/*.parquet')", "read_parquet()"),
    ("SELECT * FROM parquet_metadata('{file}')", "parquet_metadata()"),
    ("SELECT * FROM parquet_schema('{file}')", "parquet_schema()"),
    ("SELECT * FROM sniff_csv('{secret}')", "sniff_csv()"),
    ("SELECT * FROM '{secret}'", "table '"),
    ("SELECT * FROM 'https://example.com/flows.parquet'", "table 'https://"),
    ("SELECT * FROM read_parquet('s3://bucket/flows.parquet')", "read_parquet()"),
    ("SELECT * FROM read_csv('http://example.com/x.csv')", "read_csv()"),
    (
        "SELECT * FROM flows WHERE src_pod IN (SELECT content FROM read_text('{secret}'))",
        "read_text()",
    ),
    ("WITH s AS (SELECT * FROM read_text('{secret}')) SELECT * FROM s", "read_text()"),
    ("ATTACH '{tmp}/x.db' AS x", "not ATTACH"),
    ("COPY (SELECT 1) TO '{store}/flows/evil.csv'", "not COPY"),
    ("COPY flows TO '{tmp}/out.parquet' (FORMAT parquet)", "not COPY"),
    ("EXPORT DATABASE '{tmp}/export'", "not EXPORT"),
    ("INSTALL httpfs", "not LOAD"),
    ("LOAD httpfs", "not LOAD"),
    ("SET memory_limit = '100GB'", "not SET"),
    ("SET enable_external_access = true", "not SET"),
    ("RESET memory_limit", "not SET"),
    ("SET VARIABLE x = 1", "not "),
    ("PRAGMA enable_profiling", "not PRAGMA"),
    ("CREATE TABLE stolen AS SELECT * FROM flows", "not CREATE"),
    ("CREATE OR REPLACE VIEW flows AS SELECT 1 AS x", "not CREATE"),
    ("CREATE OR REPLACE MACRO has_label(a, b) AS true", "not CREATE"),
    ("DROP VIEW flows", "not DROP"),
    ("ALTER VIEW flows RENAME TO gone", "not ALTER"),
    ("CALL pragma_version()", "not CALL"),
    ("EXPLAIN SELECT * FROM flows", "not EXPLAIN"),
    ("CHECKPOINT", "not "),
    ("DETACH memory", "not DETACH"),
    ("SELECT 1; DROP VIEW flows", "two statements"),
    ("SELECT 1; COPY (SELECT 1) TO '{tmp}/x.csv'", "two statements"),
    ("SELECT getenv('HOME')", "getenv()"),
    ("SELECT current_setting('allowed_paths')", "current_setting()"),
    ("SELECT * FROM duckdb_settings()", "duckdb_settings()"),
    ("SELECT * FROM duckdb_settings", "table 'duckdb_settings'"),
    ("SELECT * FROM duckdb_databases()", "duckdb_databases()"),
    ("SELECT * FROM query('SELECT * FROM read_text(''{secret}'')')", "query()"),
    ("SELECT * FROM query_table('flows')", "query_table()"),
    ("SELECT * FROM json_execute_serialized_sql('x')", "json_execute_serialized_sql()"),
    ("SELECT * FROM information_schema.tables", "qualified table name"),
    ("SELECT * FROM memory.main.flows", "qualified table name"),
    ("SELECT main.has_label(src_labels, 'x') FROM flows", "qualified function name"),
    ("SELECT * FROM pragma_database_list", "table 'pragma_database_list'"),
    (
        "SELECT * FROM (WITH duckdb_tables AS (SELECT 1) SELECT 1), duckdb_tables",
        "table 'duckdb_tables'",
    ),
    ("DESCRIBE flows", "DESCRIBE/SHOW/SUMMARIZE"),
    ("SUMMARIZE flows", "DESCRIBE/SHOW/SUMMARIZE"),
    ("SHOW TABLES", "DESCRIBE/SHOW/SUMMARIZE"),
]


def fill(sql: str, store: Store, secret: Path, tmp: Path) -> str:
    file = one_file(store) if store.files() else ""
    return (
        sql.replace("{secret}", str(secret))
        .replace("{store}", str(store.root))
        .replace("{file}", file)
        .replace("{tmp}", str(tmp))
    )


@pytest.mark.parametrize("sql,what", HOSTILE, ids=[h[0][:48] for h in HOSTILE])
def test_hostile_rule_is_refused_and_store_unchanged(
    filled: Store, secret: Path, tmp_path: Path, sql: str, what: str
):
    before = checksums(filled.root)
    text = "-- rule: fine\n-- why: w\n-- expect: none\nSELECT * FROM flows\n\n"
    text += (
        "-- rule: evil\n-- why: w\n-- expect: none\n" + fill(sql, filled, secret, tmp_path) + "\n"
    )
    path = tmp_path / "hostile.sql"
    path.write_text(text)
    with pytest.raises(RuleError) as err:
        check.run_check(filled, [str(path)])
    msg = str(err.value)
    assert msg.startswith(f"{path}:") and "rule evil" in msg and what in msg, msg
    assert "\n" not in msg
    assert checksums(filled.root) == before
    assert not (tmp_path / "export").exists() and not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize(
    "expr,what",
    [
        ("true) FROM read_text('{secret}') --", "bad assert"),
        ("(SELECT count(*) FROM read_csv('{secret}')) > 0", "read_csv()"),
        ("getenv('HOME') IS NOT NULL", "getenv()"),
        ("true); DROP VIEW flows; SELECT (true", "bad assert"),
        ("verdict = 'x' AND current_setting('threads') > 0", "current_setting()"),
    ],
)
def test_hostile_assert_is_refused(
    filled: Store, secret: Path, tmp_path: Path, expr: str, what: str
):
    before = checksums(filled.root)
    path = tmp_path / "a.sql"
    path.write_text(
        "-- rule: evil\n-- why: w\n-- expect: all\n-- assert: "
        + fill(expr, filled, secret, tmp_path)
        + "\nSELECT * FROM flows\n"
    )
    with pytest.raises(RuleError) as err:
        check.run_check(filled, [str(path)])
    assert str(err.value).startswith(f"{path}:4: rule evil: ") and what in str(err.value), str(
        err.value
    )
    assert checksums(filled.root) == before


def test_plain_rules_over_every_view_are_accepted():
    for name in sorted(sandbox.view_names()):
        sandbox.check_sql(
            f"WITH x AS (SELECT * FROM {name}) SELECT * FROM x, range(2) r, unnest([1]) u", "t"
        )


# ------------------------------------------------------------------ the connection itself


@pytest.fixture
def box(filled: Store):
    sb = sandbox.Sandbox(filled, ["cluster1"], memory_limit="256MB", threads=1)
    sb.scope("cluster1")
    yield sb
    sb.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_text('{secret}')",
        "SELECT * FROM read_csv('{secret}')",
        "SELECT * FROM glob('{store}/*')",
        "SELECT * FROM read_blob('{store}/.lock')",
        "COPY (SELECT 1) TO '{store}/flows/evil.csv'",
        "COPY (SELECT 1 AS x) TO '{file}' (FORMAT parquet)",
        "ATTACH '{tmp}/x.db' AS x",
        "EXPORT DATABASE '{tmp}/export'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET memory_limit = '64GB'",
        "SET enable_external_access = true",
        "SET allowed_paths = ['/']",
        "RESET lock_configuration",
        "SELECT * FROM read_parquet('https://example.com/x.parquet')",
        "SELECT * FROM secret_table",
    ],
)
def test_connection_refuses_even_without_static_checks(
    box, filled: Store, secret: Path, tmp_path: Path, sql: str
):
    secret_table = duckdb.sql("SELECT 'hunter2' AS password").arrow()  # noqa: F841 - a replacement-scan target
    before = checksums(filled.root)
    with pytest.raises(duckdb.Error):
        box.run(fill(sql, filled, secret, tmp_path), timeout=10)
    assert checksums(filled.root) == before
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "export").exists()
    assert box.run("SELECT count(*) FROM flows", timeout=10)[1][0][0] > 0  # still usable


def test_connection_reads_only_the_window(filled: Store):
    # a window that ends before every stored flow: no flow file is even readable
    until = datetime(2000, 1, 1, tzinfo=UTC)
    sb = sandbox.Sandbox(filled, ["cluster1"], None, until)
    try:
        sb.scope("cluster1")
        assert sb.run("SELECT count(*) FROM flows", timeout=10)[1] == [(0,)]
        with pytest.raises(duckdb.PermissionException):
            sb.run(f"SELECT count(*) FROM read_parquet('{one_file(filled)}')", timeout=10)
    finally:
        sb.close()
