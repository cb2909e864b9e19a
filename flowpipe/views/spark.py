"""flowpipe's views and macros on Apache Spark through Spark Connect (flowpipe[spark]).

Nothing here is written twice: the views' columns (views/columns.py), the convenience views
(views/catalog.py) and the rule macros (views/macros.py) are DuckDB SQL translated by
views/translate.py; the macros become temporary SQL functions of the session. Spark reads the
store's Parquet files (store format 2, docs/store-format.md) itself, so every Spark process must
see the store's path (a shared or object-store path).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import decimal
import functools
import logging
import socket
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb

from flowpipe.codec import summary
from flowpipe.common.sql import date_literal, datetime_ns, ns_literal, quote
from flowpipe.common.text import first_line
from flowpipe.errors import ConfigError, QueryError
from flowpipe.store.layout import EVENTS, FLOWS, Store, StoreError
from flowpipe.views import catalog, columns
from flowpipe.views import translate as tr
from flowpipe.views.catalog import RAW_TIME
from flowpipe.views.macros import RULE_MACROS

DEFAULT_PORT = 15002
REMOTE_ENV = "SPARK_REMOTE"  # the variable pyspark itself reads

# Macro parameters and results in DuckDB's types (Spark's are derived): Spark SQL functions
# are typed where DuckDB macros are not. tests/test_spark.py checks every rule macro has one.
SIGNATURES: dict[str, tuple[tuple[tuple[str, str], ...], str]] = {
    "has_label": ((("labels", "VARCHAR[]"), ("sel", "VARCHAR")), "BOOLEAN"),
    "allowed_by": ((("policies", "VARCHAR[]"), ("name", "VARCHAR")), "BOOLEAN"),
    "denied_by": ((("policies", "VARCHAR[]"), ("name", "VARCHAR")), "BOOLEAN"),
    "http_status_class": ((("code", "BIGINT"),), "VARCHAR"),
    "is_world": ((("labels", "VARCHAR[]"),), "BOOLEAN"),
    "has_tcp_flags": ((("flags", "VARCHAR[]"), ("wanted", "VARCHAR[]")), "BOOLEAN"),
    "connects": (
        (("src", "VARCHAR[]"), ("dst", "VARCHAR[]"), ("a", "VARCHAR"), ("b", "VARCHAR")),
        "BOOLEAN",
    ),
}

# Columns whose stored form Spark reads differently from DuckDB: Spark SQL over the stored
# columns as Spark sees them (the uuid is 16 plain bytes, FIXED_LEN_BYTE_ARRAY(16), which DuckDB's
# flows_proto casts to UUID and Spark reads as BINARY)
_UUID_TEXT = (
    "lower(regexp_replace(hex(_uuid), '^(.{8})(.{4})(.{4})(.{4})(.{12})$', '$1-$2-$3-$4-$5'))"
)
SPARK_COLUMNS = {"uuid": f"coalesce({_UUID_TEXT}, nullif(uuid, ''))"}

# Session settings the results depend on, set explicitly whatever the cluster's defaults
SESSION_CONF = {
    "spark.sql.session.timeZone": "UTC",  # as the DuckDB sandbox
    "spark.sql.ansi.enabled": "true",  # errors, not silent NULLs, on bad casts and overflows
    "spark.sql.legacy.sizeOfNull": "false",  # size(NULL) is NULL, as len(NULL) in DuckDB
    "spark.sql.caseSensitive": "false",  # DuckDB's identifiers are case-insensitive
    "spark.sql.pyspark.jvmStacktrace.enabled": "false",
}

_BASE = {FLOWS: "__fp_flows", EVENTS: "__fp_events"}  # DataFrames over the files; not for rules


# the Hadoop filesystem Spark reads an object store through, by store URL scheme
SPARK_SCHEMES = {"s3": "s3a", "gs": "gs"}


def spark_uri(store: Store, path: str) -> str:
    """A store path as Spark names it: local paths as they are; objects of an s3:// store
    through Hadoop's S3A connector (s3a://), of a gs:// store through the GCS connector.
    Neither connector is on a registry these machines reach: untested on Spark (docs/spark.md)."""
    if getattr(store, "local", True):
        return path
    scheme = store.url.split("://", 1)[0]
    return f"{SPARK_SCHEMES.get(scheme, scheme)}://{path}"


def _quiet_import():
    """pyspark's connect client, without its import-time warnings (pandas versions)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the Connect classes themselves: pyspark.sql.SparkSession.builder.remote() would
            # also switch the whole process to Connect mode (an environment variable), and
            # a later local Spark session in the same process would then fail
            from pyspark.sql import types as T
            from pyspark.sql.connect import functions as F
            from pyspark.sql.connect.session import SparkSession
    except ImportError as exc:
        raise ConfigError(
            f"--engine spark needs the Spark Connect client: pip install 'flowpipe[spark]' ({exc})"
        ) from None
    # pyspark logs every failed query as a JSON blob on stderr; flowpipe reports it in one line
    logging.getLogger("SQLQueryContextLogger").setLevel(logging.CRITICAL + 1)
    return SparkSession, F, T


def parse_remote(remote: str | None) -> tuple[str, int]:
    """(host, port) of a Spark Connect URL sc://HOST[:PORT][/;params]."""
    if not remote:
        raise ConfigError(f"--engine spark needs --spark-remote sc://HOST:PORT (or ${REMOTE_ENV})")
    parts = urlsplit(remote)
    if parts.scheme != "sc" or not parts.hostname:
        raise ConfigError(f"--spark-remote {remote!r}: expected sc://HOST:PORT")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigError(f"--spark-remote {remote!r}: bad port") from None
    return parts.hostname, port


def connect(remote: str | None, *, timeout: float = 10.0):
    """A new Spark Connect session at remote with SESSION_CONF (ConfigError if unreachable)."""
    host, port = parse_remote(remote)
    SparkSession, _, _ = _quiet_import()
    # the client retries an unreachable server for minutes: fail fast with one line instead
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot reach Spark Connect at {remote}: {exc.strerror or exc}"
        ) from None
    builder = SparkSession.builder.remote(remote)
    for key, value in SESSION_CONF.items():
        builder = builder.config(key, value)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return builder.create()
    except Exception as exc:  # grpc and pyspark errors: the server answered but refused
        raise ConfigError(
            f"cannot start a Spark Connect session at {remote}: {first_line(exc)}"
        ) from None


# ------------------------------------------------------------------ schema and SQL


def schema_files(store: Store) -> dict[str, str]:
    """The schema file of each kind (every store has one; it defines the columns)."""
    out = {}
    for kind in (FLOWS, EVENTS):
        found = store.schema_files(kind)
        if not found:
            raise StoreError(
                f"store {store.url}: no schema file under {kind}/ (is this a flowpipe store?)"
            )
        out[kind] = found[-1]
    return out


def duck_schema(store: Store) -> dict[str, dict[str, str]]:
    """view -> column -> DuckDB type, of every view DuckDB defines over this store."""
    files = schema_files(store)
    return _duck_schema(files[FLOWS], files[EVENTS])


def _duck_views(flows_file: str, events_file: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views over the schema files alone (no rows): it binds
    queries to tell types and column names, and never reads a flow."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    stmts = catalog.view_sql(
        Store(Path(flows_file).parents[4]), files={FLOWS: [flows_file], EVENTS: [events_file]}
    )
    for stmt in stmts:
        con.execute(stmt)
    # it binds rule and query text: as locked down as the rule sandbox
    con.execute(f"SET allowed_paths = [{quote(flows_file)}, {quote(events_file)}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


@functools.lru_cache(maxsize=4)
def _duck_schema(flows_file: str, events_file: str) -> dict[str, dict[str, str]]:
    con = _duck_views(flows_file, events_file)
    try:
        names = [
            r[0]
            for r in con.execute(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY view_name"
            ).fetchall()
        ]
        return {n: {r[0]: r[1] for r in con.execute(f'DESCRIBE "{n}"').fetchall()} for n in names}
    finally:
        con.close()


def macro_arity() -> dict[str, int]:
    """Macros available to rules on Spark, with their number of arguments."""
    return {name: len(params) for name, (params, _) in SIGNATURES.items()}


def function_statements() -> list[str]:
    """CREATE TEMPORARY FUNCTION statements of the rule macros (in their order of definition;
    the fp_* macros of serve's filters are not rule helpers and stay DuckDB's)."""
    out = []
    known: dict[str, int] = {}
    for name, (_, body) in RULE_MACROS.items():
        params, result = SIGNATURES[name]
        spark_body = tr.expression_to_spark(body, dict(params), functions=known)
        args = ", ".join(f"{p} {tr.spark_type(t)}" for p, t in params)
        out.append(
            f"CREATE OR REPLACE TEMPORARY FUNCTION {name}({args}) "
            f"RETURNS {tr.spark_type(result)} RETURN {spark_body}"
        )
        known[name] = len(params)
    return out


def view_statements(schema: dict[str, dict[str, str]]) -> list[str]:
    """CREATE TEMPORARY VIEW statements of flows, events and the convenience views, over
    flows_proto and events_proto (defined by SparkViews.define)."""
    return list(_view_statements(tuple((v, tuple(c.items())) for v, c in sorted(schema.items()))))


@functools.lru_cache(maxsize=4)
def _view_statements(key: tuple) -> tuple[str, ...]:
    schema = {v: dict(c) for v, c in key}
    stmts = []
    for view, proto, cols in (
        ("flows", "flows_proto", columns.flat_columns()),
        ("events", "events_proto", columns.event_columns()),
    ):
        exprs = []
        for name, expr, _ in cols:
            if view == "flows" and name in SPARK_COLUMNS:
                exprs.append(f"{SPARK_COLUMNS[name]} AS {name}")
            else:
                exprs.append(f"{tr.expression_to_spark(expr, schema[proto])} AS {name}")
        stmts.append(
            f"CREATE OR REPLACE TEMPORARY VIEW {view} AS SELECT\n  "
            + ",\n  ".join(exprs)
            + f"\nFROM {proto}"
        )
    for name, sql in catalog.CONVENIENCE_VIEWS.items():
        stmts.append(f"CREATE OR REPLACE TEMPORARY VIEW {name} AS {tr.to_spark(sql, schema)}")
    return tuple(stmts)


# ------------------------------------------------------------------ a session with the views


class SparkViews:
    """A Spark Connect session with flowpipe's views over chosen files of one store."""

    def __init__(self, remote: str | None, store: Store):
        self.store = store
        self.remote = remote
        self.schema = duck_schema(store)
        self.functions = macro_arity()
        self._schema_files = schema_files(store)
        self.session = connect(remote)
        _, self._F, self._T = _quiet_import()
        self._defined = False
        self._duck: duckdb.DuckDBPyConnection | None = None
        self._names: dict[str, list[str] | None] = {}
        self._spark_schema: dict[str, Any] = {}
        try:
            for stmt in function_statements():
                self._command(stmt)
        except BaseException:
            self.close()
            raise

    def translate(self, sql: str) -> str:
        """Spark SQL of a DuckDB query over the views (Untranslatable when it cannot be)."""
        return tr.to_spark(sql, self.schema, functions=self.functions)

    def define(self, files: dict[str, list[str]], where: str | None = None) -> None:
        """(Re)define the views over these files (the schema file is added); where: a Spark SQL
        condition on the stored columns (see window)."""
        cond = f" WHERE {where}" if where else ""
        for kind in (FLOWS, EVENTS):
            paths = list(dict.fromkeys([self._schema_files[kind], *files.get(kind, [])]))
            paths = [self._uri(p) for p in paths]
            df = self._reader(kind).parquet(*paths)
            df.createOrReplaceTempView(_BASE[kind])
            path = self._F.col("_metadata.file_path").alias("filename")
            df.select("*", path).createOrReplaceTempView(f"{_BASE[kind]}_files")
            select = self._proto_select(kind)
            self._command(
                f"CREATE OR REPLACE TEMPORARY VIEW {kind}_proto AS "
                f"SELECT {select} FROM {_BASE[kind]}{cond}"
            )
            self._command(
                f"CREATE OR REPLACE TEMPORARY VIEW {kind}_proto_files AS "
                f"SELECT {select}, filename FROM {_BASE[kind]}_files{cond}"
            )
        if not self._defined:  # the others read these by name when they run
            for stmt in view_statements(self.schema):
                self._command(stmt)
            self._defined = True

    def _uri(self, path: str) -> str:
        return spark_uri(self.store, path)

    def _reader(self, kind: str):
        """A Parquet reader with the schema file's columns and the partition columns' types."""
        if kind not in self._spark_schema:
            T = self._T
            stored = self.session.read.parquet(self._uri(self._schema_files[kind])).schema
            self._spark_schema[kind] = T.StructType(
                [
                    *(f for f in stored.fields if f.name not in ("cluster", "date", "hour")),
                    T.StructField("cluster", T.StringType()),
                    T.StructField("date", T.DateType()),
                    T.StructField("hour", T.IntegerType()),
                ]
            )
        return (
            self.session.read.schema(self._spark_schema[kind])
            .option("basePath", self._uri(str(self.store.root / kind)))
            .option("mergeSchema", "false")
        )

    def _proto_select(self, kind: str) -> str:
        """The stored columns (store format 2) with the types DuckDB's <kind>_proto view gives
        them: integer nanoseconds become timestamps (microseconds: Spark's precision), an elided
        Summary the text derived from the other fields; the stored time in ns also as RAW_TIME."""
        stored = self._spark_schema[kind]
        duck = self.schema[f"{kind}_proto"]
        parts = []
        for f in stored.fields:
            ident = f"`{f.name}`"
            if kind == FLOWS and f.name == "Summary":  # as catalog._stored_select restores it
                conv = tr.expression_to_spark(f'coalesce("Summary", {summary.SQL})', duck)
            else:
                conv = _decoded(ident, f.dataType, duck.get(f.name), self._T)
            parts.append(f"{conv} AS {ident}" if conv else ident)
        # to Spark's precision, as epoch_ns(time) gives it here: the sample lookup by time
        # (check._samples_together) then finds the rows it was given the times of
        return ", ".join([*parts, f"`time` - `time` % 1000 AS {RAW_TIME}"])

    def window(
        self, clusters: list[str], since: _dt.datetime | None, until: _dt.datetime | None
    ) -> str:
        """The Spark SQL condition on the stored columns for these clusters and time window."""
        names = ", ".join(map(quote, clusters))
        conds = [f"cluster IN ({names})"]
        for bound, op in ((since, ">="), (until, "<=")):
            if bound is not None:  # the stored time is BIGINT ns: exact, and it prunes row groups
                ns = datetime_ns(bound)
                conds += [f"date {op} {date_literal(ns)}", f"time {op} {ns_literal(ns)}"]
        return " AND ".join(conds)

    def _command(self, sql: str) -> None:
        try:
            self.session.sql(sql)
        except Exception as exc:
            raise QueryError(f"Spark refused flowpipe's own definition: {first_line(exc)}") from exc

    def names(self, sql: str) -> list[str] | None:
        """The column names DuckDB gives the result of a DuckDB query (Spark names unaliased
        expressions its own way: count(*) is `_col_1` there, `count_star()` in DuckDB)."""
        if sql not in self._names:
            if self._duck is None:
                self._duck = _duck_views(self._schema_files[FLOWS], self._schema_files[EVENTS])
            try:
                self._names[sql] = [r[0] for r in self._duck.execute(f"DESCRIBE {sql}").fetchall()]
            except duckdb.Error:
                self._names[sql] = None
        return self._names[sql]

    def run(self, spark_sql: str, names: list[str] | None = None) -> tuple[list[str], list[tuple]]:
        """Column names and rows of a Spark SQL query, as Python values like DuckDB's; names:
        the columns' names as DuckDB gives them (see names())."""
        table = self.session.sql(spark_sql).toArrow()
        got = list(table.column_names)
        names = names if names is not None and len(names) == len(got) else got
        cols = [[_plain(v) for v in col.to_pylist()] for col in table.columns]
        return names, list(zip(*cols)) if cols else []

    def interrupt(self) -> None:
        """Stop every running operation of this session (from another thread)."""
        with contextlib.suppress(Exception):
            self.session.interruptAll()

    def close(self) -> None:
        """End the session on the server (its temporary views and functions go with it)."""
        with contextlib.suppress(Exception):
            self.session.stop()
        if self._duck is not None:
            self._duck.close()


def _decoded(expr: str, stored: Any, duck_type: str | None, T: Any) -> str | None:
    """Spark SQL turning a stored value into the type DuckDB shows (None when it needs nothing):
    integer nanoseconds where DuckDB has a timestamp, inside structs and lists too."""
    if duck_type is None:
        return None
    try:
        want = _duck_type(duck_type)
    except Exception:
        return None
    return _decoded_dt(expr, stored, want, T)


@functools.lru_cache(maxsize=512)
def _duck_type(text: str):
    from sqlglot import exp

    # udt: types sqlglot does not know (TIMESTAMPTZ_NS) are kept by name, not refused
    return exp.DataType.build(text, dialect="duckdb", udt=True)


def _decoded_dt(expr: str, stored: Any, want: Any, T: Any) -> str | None:
    from sqlglot import exp

    kind = want.this
    if isinstance(stored, T.LongType) and _is_time(want):
        return f"timestamp_micros({expr} DIV 1000)"
    if isinstance(stored, T.StructType) and kind == exp.DataType.Type.STRUCT:
        wanted = {}
        for col in want.expressions:  # ColumnDef(name, type)
            wanted[col.name.lower()] = col.args.get("kind")
        parts, changed = [], False
        for f in stored.fields:
            sub = f"{expr}.`{f.name}`"
            sub_want = wanted.get(f.name.lower())
            conv = _decoded_dt(sub, f.dataType, sub_want, T) if sub_want is not None else None
            changed |= conv is not None
            parts.append(f"'{f.name}', {conv or sub}")
        if not changed:
            return None
        return f"CASE WHEN {expr} IS NULL THEN NULL ELSE named_struct({', '.join(parts)}) END"
    if isinstance(stored, T.ArrayType) and kind == exp.DataType.Type.ARRAY and want.expressions:
        conv = _decoded_dt("__fp_x", stored.elementType, want.expressions[0], T)
        return None if conv is None else f"transform({expr}, __fp_x -> {conv})"
    return None


def _is_time(t: Any) -> bool:
    name = str(t.args.get("kind") or "") if t.this.name == "USERDEFINED" else t.this.name
    return name.upper().startswith("TIMESTAMP")


def _plain(v: Any) -> Any:
    """Spark's value as DuckDB's Python client gives it: integers for unsigned 64-bit columns
    (Spark reads them as DECIMAL(20,0)), dicts for structs, aware UTC datetimes."""
    if isinstance(v, decimal.Decimal) and v.as_tuple().exponent == 0:
        return int(v)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, _dt.datetime) and v.tzinfo is not None:
        return v.astimezone(_dt.UTC)
    return v


def store_files(store: Store) -> dict[str, list[str]]:
    """Every committed file of the store, per kind."""
    return {kind: [str(p) for p in store.files(kind)] for kind in (FLOWS, EVENTS)}


def fetch(store: Store, sql: str, remote: str | None) -> tuple[list[str], list[tuple]]:
    """`flowpipe query --engine spark`: column names and rows of DuckDB-dialect SQL on Spark."""
    with store.read_lock():
        views = SparkViews(remote, store)
        try:
            try:
                spark_sql = views.translate(sql)
            except tr.Untranslatable as exc:
                raise QueryError(f"query cannot run on Spark: {exc}") from None
            views.define(store_files(store))
            try:
                return views.run(spark_sql, views.names(sql))
            except Exception as exc:
                raise QueryError(f"query failed on Spark: {first_line(exc)}") from exc
        finally:
            views.close()
