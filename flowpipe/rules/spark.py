"""Rules on Apache Spark: the sandbox's interface (scope, run, close) over a Spark Connect session.

check.py evaluates rules the same way on both engines and hands every query to the sandbox in
DuckDB's dialect; here each one is translated (views/translate.py), checked again as Spark SQL
(one SELECT over the views, no DDL, no file, JVM or environment function), and run.
"""

from __future__ import annotations

import threading
from datetime import datetime
from urllib.parse import unquote, urlsplit

from flowpipe.common.text import first_line
from flowpipe.errors import QueryError, RuleError
from flowpipe.rules import sandbox
from flowpipe.rules.rulefile import RuleFile
from flowpipe.store.layout import EVENTS, FLOWS, Store
from flowpipe.views import spark as spark_views
from flowpipe.views import translate as tr

# Spark functions that reach the JVM, files or the environment: refused wherever they appear
FORBIDDEN_FUNCTIONS = frozenset(
    {
        "reflect",
        "java_method",
        "try_reflect",
        "input_file_name",
        "input_file_block_start",
        "input_file_block_length",
        "current_user",
        "user",
        "session_user",
        "current_catalog",
        "current_database",
        "current_schema",
        "read_files",
        "version",
        "secret",
        "try_aes_decrypt",
        "aes_decrypt",
        "aes_encrypt",
        "url_decode",
        "assert_true",
        "raise_error",
    }
)
# functions of unknown kind (to sqlglot) the translation emits, besides the macros
_EMITTED = frozenset(
    {
        "array_contains",
        "arrays_overlap",
        "array_except",
        "try_element_at",
        "unix_micros",
        "min_by",
        "max_by",
        "concat_ws",
        "filter",
        "size",
    }
)


class QueryFailed(Exception):
    """A rule query Spark could not run (the message is one line)."""


class MissingColumn(QueryFailed):
    """The query names a column its relation does not have (e.g. time, for ordering samples)."""


def _tables():
    return sandbox.view_names()


def check_spark_sql(sql: str, where: str) -> None:
    """Refuse Spark SQL unless it is one SELECT over the views using no forbidden function."""
    import sqlglot
    from sqlglot import exp

    try:
        trees = [t for t in sqlglot.parse(sql, read="spark") if t is not None]
    except sqlglot.errors.SqlglotError as exc:
        raise RuleError(f"{where}: translated SQL unreadable: {first_line(exc)}") from None
    if len(trees) != 1 or not isinstance(trees[0], exp.Query):
        raise RuleError(f"{where}: refused on Spark: not exactly one SELECT")
    tree = trees[0]
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    allowed = _tables() | ctes
    for node in tree.walk():
        if isinstance(node, exp.Command | exp.DDL | exp.DML | exp.Set | exp.Use | exp.Hint):
            raise RuleError(f"{where}: refused on Spark: {type(node).__name__} statement")
        if isinstance(node, exp.Table):
            name = node.name.lower()
            if (
                not isinstance(node.this, exp.Identifier)
                or node.args.get("db")
                or node.args.get("catalog")
            ):
                raise RuleError(f"{where}: refused on Spark: table {node.sql('spark')[:60]}")
            if name not in allowed:
                raise RuleError(
                    f"{where}: refused on Spark: table {name!r}; rules read only the views"
                )
        elif isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name in FORBIDDEN_FUNCTIONS:
                raise RuleError(
                    f"{where}: refused on Spark: function {name}() reaches the JVM, files or "
                    "the environment"
                )
            if isinstance(node, exp.Anonymous) and not (
                name in _EMITTED or name in spark_views.SIGNATURES
            ):
                raise RuleError(f"{where}: refused on Spark: unknown function {name}()")


def translate(schema, sql: str, where: str) -> str:
    """Spark SQL of a rule query, or RuleError naming the construct that cannot be translated."""
    try:
        out = tr.to_spark(sql, schema, functions=spark_views.macro_arity())
    except tr.Untranslatable as exc:
        raise RuleError(f"{where}: cannot run on Spark: {exc}") from None
    check_spark_sql(out, where)
    return out


def validate(store: Store, rf: RuleFile) -> None:
    """Refuse a rule file that cannot run on Spark, naming file, line, rule and construct."""
    from flowpipe.rules import check

    schema = spark_views.duck_schema(store)
    for rule in rf.rules:
        for sql in (check.counts_sql(rule), check.samples_sql(rule, 1, ordered=True)):
            translate(schema, sql, rule.where(rule.sql_line))


class SparkSandbox:
    """The window's files of the store as flowpipe's views in a Spark Connect session."""

    errors: tuple[type[Exception], ...] = (QueryFailed,)
    missing_column: type[Exception] = MissingColumn

    def __init__(
        self,
        store: Store,
        clusters: list[str],
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        remote: str | None,
    ):
        self.store, self.since, self.until = store, since, until
        # listed once, like the DuckDB sandbox: files committed later are not seen
        self.files = sandbox.cluster_files(store, clusters, since, until)
        self.views = spark_views.SparkViews(remote, store)
        self._scoped: tuple | None = None
        self._sql: dict[str, str] = {}
        self._lock = threading.Lock()

    def scope(self, cluster: str) -> None:
        """(Re)define every view over one cluster's rows in the window only."""
        self._define([cluster])

    def scope_all(self, only: set[str] | None = None) -> None:
        """(Re)define every view over all the sandbox's clusters (only: of those files alone)."""
        self._define(list(self.files), only)

    def _define(self, clusters: list[str], only: set[str] | None = None) -> None:
        key = (tuple(clusters), frozenset(only) if only is not None else None)
        if key == self._scoped:
            return
        files = {
            kind: list(dict.fromkeys(f for c in clusters for f in self.files[c][kind]))
            for kind in (FLOWS, EVENTS)
        }
        if only is not None:  # Spark names a file by its URI (filename, from _metadata)
            paths = {_local_path(f) for f in only}
            files = {kind: [f for f in fs if f in paths] for kind, fs in files.items()}
        try:
            self.views.define(files, self.views.window(clusters, self.since, self.until))
        except Exception as exc:
            raise QueryError(
                f"store {self.store.root}: Spark cannot read it: {first_line(exc)}"
            ) from exc
        self._scoped = key

    def translate(self, sql: str) -> str:
        if sql not in self._sql:
            self._sql[sql] = translate(self.views.schema, sql, "rule query")
        return self._sql[sql]

    def run(self, sql: str, timeout: float) -> tuple[list[str], list[tuple]]:
        """Column names and rows of a DuckDB-dialect query, run on Spark, interrupted after
        timeout seconds (sandbox.RuleTimeout); QueryFailed when Spark refuses or fails it."""
        try:
            spark_sql = self.translate(sql)
        except RuleError as exc:
            raise QueryFailed(str(exc)) from None
        done, fired = threading.Event(), threading.Event()

        def interrupt() -> None:
            # again every second until the query ends: an interrupt that comes before Spark has
            # registered the operation (planning on a busy cluster) stops nothing
            if done.wait(timeout):
                return
            fired.set()
            while True:
                with self._lock:  # never after this run ended: it would hit the next query
                    if done.is_set():
                        return
                    self.views.interrupt()
                if done.wait(1.0):
                    return

        watchdog = threading.Thread(target=interrupt, name="spark-rule-timeout", daemon=True)
        watchdog.start()
        try:
            return self.views.run(spark_sql, self.views.names(sql))
        except Exception as exc:
            if fired.is_set():
                raise sandbox.RuleTimeout(
                    f"interrupted after {timeout:g} s (--rule-timeout)"
                ) from exc
            raise _failed(exc) from exc
        finally:
            with self._lock:
                done.set()

    def close(self) -> None:
        self.views.close()


def _local_path(uri: str) -> str:
    """The store's path of a file as Spark names it (file:/a/b%20c -> /a/b c; an object
    s3a://bucket/key -> bucket/key, as an object store names it)."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return unquote(parts.path)
    if parts.scheme in ("s3a", "gs"):
        return parts.netloc + unquote(parts.path)
    return uri


def _failed(exc: Exception) -> QueryFailed:
    line = first_line(exc)
    condition = ""
    get = getattr(exc, "getCondition", None) or getattr(exc, "getErrorClass", None)
    if get is not None:
        try:
            condition = get() or ""
        except Exception:
            condition = ""
    cls = MissingColumn if condition.startswith("UNRESOLVED_COLUMN") else QueryFailed
    return cls(f"SQL error on Spark: {line}")
