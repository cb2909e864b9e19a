"""Run semi-trusted rule SQL: static checks with DuckDB's own parser, then a locked-down connection."""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from datetime import datetime
from typing import Any

import duckdb

from flowpipe.common.sql import date_literal, datetime_ns, ns_literal, quote, quote_list
from flowpipe.common.text import first_line
from flowpipe.errors import ConfigError, RuleError, StoreError
from flowpipe.store.layout import EVENTS, FLOWS, Store
from flowpipe.views import catalog as views

# Table functions a rule may call: they generate rows and touch nothing outside the query.
ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
# Scalar functions (and name prefixes) that reveal the environment, settings or files.
FORBIDDEN_FUNCTIONS = frozenset(
    {
        "getenv",
        "current_setting",
        "which_secret",
        "query",
        "query_table",
        "glob",
        "checkpoint",
        "force_checkpoint",
    }
)
FORBIDDEN_PREFIXES = (
    "read_",
    "parquet_",
    "duckdb_",
    "pragma_",
    "sniff_",
    "json_execute",
    "enable_",
    "disable_",
    "import_",
    "copy_",
    "test_",
    "register_",
    "create_",
    "destroy_",
    "deregister_",
    "truncate_",
)
# Table reference kinds that are not reading rows of a view, a CTE or a subquery.
_REFUSED_REFS = {
    "SHOW_REF": "DESCRIBE/SHOW/SUMMARIZE",
    "COLUMN_DATA": "data",
    "DELIM_GET": "internal",
    "BOUND_TABLE_REF": "internal",
    "INVALID": "invalid",
}
_TABLE_REFS = {
    "BASE_TABLE",
    "TABLE_FUNCTION",
    "SUBQUERY",
    "JOIN",
    "EXPRESSION_LIST",
    "EMPTY",
    "EMPTY_FROM",
    "PIVOT",
    "CTE",
    *_REFUSED_REFS,
}
_VIEW_RE = re.compile(r"^CREATE OR REPLACE VIEW (\w+)")
HOUR_NS = 3_600_000_000_000


@functools.cache
def view_names() -> frozenset[str]:
    """Names of the views a rule may read (flows, policy_verdicts, drops, ...)."""
    return frozenset(
        m.group(1) for s in views.view_sql(Store("/nonexistent")) if (m := _VIEW_RE.match(s))
    )


# ------------------------------------------------------------------ static checks

_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def _tree(sql: str) -> dict:
    """DuckDB's parse tree of sql (json_serialize_sql), from a connection that never runs it."""
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect(":memory:", config={"enable_external_access": False})
        return json.loads(_parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])


def check_sql(sql: str, where: str, allowed_tables: frozenset[str] | None = None) -> None:
    """Refuse sql unless it is one SELECT over the views using no file, setting or system function."""
    try:
        stmts = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise RuleError(f"{where}: SQL syntax: {first_line(exc)}") from exc
    if len(stmts) != 1:
        raise RuleError(f"{where}: {len(stmts)} statements; a rule is exactly one SELECT")
    if stmts[0].type != duckdb.StatementType.SELECT:
        raise RuleError(f"{where}: {stmts[0].type.name} statement refused; a rule is one SELECT")
    tree = _tree(sql)
    if tree.get("error"):
        raise RuleError(f"{where}: refused: {tree.get('error_message', 'not a plain SELECT')}")
    if len(tree["statements"]) != 1:
        raise RuleError(f"{where}: several statements; a rule is exactly one SELECT")
    _walk(tree["statements"][0], frozenset(), allowed_tables or view_names(), where)


def check_expression(expr: str, where: str) -> None:
    """Refuse an assert that is not one plain boolean expression (nothing smuggled around it)."""
    tree = _tree(f"SELECT ({expr})")
    if tree.get("error") or len(tree["statements"]) != 1:
        msg = tree.get("error_message", "more than one statement")
        raise RuleError(f"{where}: bad assert expression: {msg}")
    node = tree["statements"][0]["node"]
    extra = any(
        node.get(k) for k in ("where_clause", "group_expressions", "having", "qualify", "modifiers")
    )
    if (
        node.get("type") != "SELECT_NODE"
        or len(node["select_list"]) != 1
        or extra
        or (node.get("from_table", {}).get("type") not in ("EMPTY", "EMPTY_FROM"))
    ):
        raise RuleError(
            f"{where}: bad assert: one expression over the rule's columns, e.g. verdict = 'FORWARDED'"
        )
    _walk(node["select_list"][0], frozenset(), view_names(), where)


# Expression node classes that only read the current row: a WHERE made of these filters each row
# on its own, so it gives the same rows per cluster whether or not other clusters are in the view.
_ROW_LOCAL = frozenset(
    {
        "COLUMN_REF",
        "CONSTANT",
        "COMPARISON",
        "CONJUNCTION",
        "OPERATOR",
        "FUNCTION",
        "CASE",
        "CAST",
        "BETWEEN",
        "LAMBDA",
        "COLLATE",
    }
)


def row_filter(sql: str) -> tuple[str, str | None] | None:
    """(view, condition SQL or None) when sql is exactly `SELECT * FROM view [WHERE row-local condition]`.

    The condition is DuckDB's own rendering of the parsed WHERE, so nothing outside it comes along."""
    try:
        tree = _tree(sql)
    except duckdb.Error:
        return None
    if tree.get("error") or len(tree.get("statements", [])) != 1:
        return None
    node = tree["statements"][0]["node"]
    star = node.get("select_list") or [{}]
    src = node.get("from_table") or {}
    if (
        node.get("type") != "SELECT_NODE"
        or len(star) != 1
        or star[0].get("class") != "STAR"
        or star[0].get("relation_name")
        or star[0].get("columns")
        or star[0].get("expr")
        or any(
            star[0].get(k)
            for k in ("exclude_list", "replace_list", "qualified_exclude_list", "rename_list")
        )
        or any(
            node.get(k)
            for k in ("modifiers", "group_expressions", "group_sets", "having", "qualify", "sample")
        )
        or (node.get("cte_map") or {}).get("map")
        or node.get("aggregate_handling", "STANDARD_HANDLING") != "STANDARD_HANDLING"
        or src.get("type") != "BASE_TABLE"
        or src.get("alias")
        or src.get("sample")
        or src.get("at_clause")
        or src.get("schema_name")
        or src.get("catalog_name")
        or src.get("column_name_alias")
    ):
        return None
    cond = node.get("where_clause")
    if cond is not None and not _row_local(cond):
        return None
    return str(src.get("table_name", "")).lower(), (None if cond is None else _render(cond))


def conjuncts(cond: str) -> list[tuple[str, list[str]]]:
    """The top-level AND terms of a row-local condition: (term SQL, keys), where keys is [term]
    when the term compares one column with constants (DuckDB filters such a term inside the
    Parquet scan, before it decodes other columns), the branches when the term is an OR of such
    comparisons, else []."""
    tree = _tree(f"SELECT * FROM flows WHERE {cond}")
    out = []
    for term in _flatten(tree["statements"][0]["node"]["where_clause"], "CONJUNCTION_AND"):
        sql = _render(term)
        if _is_key(term):
            out.append((sql, [sql]))
        elif term.get("type") == "CONJUNCTION_OR" and all(
            _is_key(b) for b in _flatten(term, "CONJUNCTION_OR")
        ):
            out.append((sql, [_render(b) for b in _flatten(term, "CONJUNCTION_OR")]))
        else:
            out.append((sql, []))
    return out


def _flatten(node: dict, kind: str) -> list[dict]:
    if node.get("class") == "CONJUNCTION" and node.get("type") == kind:
        return [leaf for child in node["children"] for leaf in _flatten(child, kind)]
    return [node]


def _is_key(node: dict) -> bool:
    """column = constant, constant = column or column IN (constants)."""
    if node.get("class") == "COMPARISON" and node.get("type") == "COMPARE_EQUAL":
        parts = [node.get("left") or {}, node.get("right") or {}]
    elif node.get("class") == "OPERATOR" and node.get("type") == "COMPARE_IN":
        parts = node.get("children") or []
    else:
        return False
    cols = [
        p for p in parts if p.get("class") == "COLUMN_REF" and len(p.get("column_names", [])) == 1
    ]
    consts = [p for p in parts if p.get("class") == "CONSTANT"]
    return (
        len(cols) == 1
        and len(cols) + len(consts) == len(parts)
        and (parts[0] is cols[0] or len(parts) == 2)
    )


def _row_local(node: Any) -> bool:
    if isinstance(node, list):
        return all(_row_local(n) for n in node)
    if not isinstance(node, dict):
        return True
    cls = node.get("class")
    if cls is not None:
        if cls not in _ROW_LOCAL:
            return False
        if cls == "COLUMN_REF" and len(node.get("column_names", [])) != 1:
            return False  # qualified (view.column): the combined query reads another relation
        if cls == "FUNCTION" and (
            node.get("filter") or node.get("order_bys", {}).get("orders") or node.get("distinct")
        ):
            return False  # aggregate clauses
    return all(_row_local(v) for v in node.values() if isinstance(v, (dict, list)))


def _render(expr: dict) -> str:
    """SQL text of one parsed expression (DuckDB's json_deserialize_sql)."""
    template = _tree("SELECT 1")
    template["statements"][0]["node"]["select_list"] = [expr]
    with _parser_lock:
        text = _parser.execute("SELECT json_deserialize_sql(?)", [json.dumps(template)]).fetchone()[
            0
        ]
    if not text.startswith("SELECT "):
        raise RuleError(f"cannot render a parsed expression: {text[:80]}")
    return text[len("SELECT ") :]


def _walk(node: Any, ctes: frozenset[str], tables: frozenset[str], where: str) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, ctes, tables, where)
        return
    if not isinstance(node, dict):
        return
    cte_map = node.get("cte_map")
    if isinstance(cte_map, dict) and cte_map.get("map"):
        ctes = ctes | {entry["key"].lower() for entry in cte_map["map"]}
    if node.get("class") == "FUNCTION" or (
        node.get("type") == "FUNCTION" and "function_name" in node
    ):
        _check_function(node, where)
    elif "class" not in node and node.get("type") in _TABLE_REFS:
        _check_table_ref(node, ctes, tables, where)
    for value in node.values():
        if isinstance(value, (dict, list)):
            _walk(value, ctes, tables, where)


def _check_function(node: dict, where: str) -> None:
    name = str(node.get("function_name", "")).lower()
    if node.get("schema") or node.get("catalog"):
        raise RuleError(f"{where}: refused: qualified function name {node.get('schema')}.{name}")
    if name in FORBIDDEN_FUNCTIONS or name.startswith(FORBIDDEN_PREFIXES):
        raise RuleError(
            f"{where}: refused: function {name}() reads files, settings or the environment"
        )


def _check_table_ref(node: dict, ctes: frozenset[str], tables: frozenset[str], where: str) -> None:
    kind = node["type"]
    if kind in _REFUSED_REFS:
        raise RuleError(
            f"{where}: refused: {_REFUSED_REFS[kind]} statements are not rules; SELECT from a view"
        )
    if kind == "TABLE_FUNCTION":
        fn = node.get("function") or {}
        name = str(fn.get("function_name", "?")).lower()
        if name not in ALLOWED_TABLE_FUNCTIONS or fn.get("schema") or fn.get("catalog"):
            raise RuleError(
                f"{where}: refused: table function {name}(); rules read only the views "
                f"(allowed table functions: {', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))})"
            )
    elif kind == "BASE_TABLE":
        name = str(node.get("table_name", "")).lower()
        if node.get("schema_name") or node.get("catalog_name"):
            raise RuleError(f"{where}: refused: qualified table name; use the view name alone")
        if name not in tables and name not in ctes:
            raise RuleError(
                f"{where}: refused: table {node.get('table_name')!r}; rules read only the views "
                f"({', '.join(sorted(tables))}) and their own CTEs"
            )


# ------------------------------------------------------------------ the connection


class RuleTimeout(Exception):
    """A query ran longer than its time limit and was interrupted."""


class Sandbox:
    """A DuckDB connection that can read the window's Parquet files of the store and nothing else."""

    errors: tuple[type[Exception], ...] = (duckdb.Error,)  # a query that failed (check.py)
    missing_column: type[Exception] = duckdb.BinderException  # e.g. no time to order samples by

    def __init__(
        self,
        store: Store,
        clusters: list[str],
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        memory_limit: str = "1GB",
        threads: int | None = None,
    ):
        self.store, self.since, self.until = store, since, until
        # listed once: files committed later are not seen, and no other path is ever readable
        self.files = cluster_files(store, clusters, since, until)
        readable = sorted({f for per in self.files.values() for fs in per.values() for f in fs})
        # files of one schema (the usual case) are read without union_by_name, whose schema
        # reading at every bind costs seconds on stores of thousands of files
        self.same_schema = frozenset(
            kind
            for kind in (FLOWS, EVENTS)
            if store.local
            and views.same_schema(
                list(dict.fromkeys(f for per in self.files.values() for f in per[kind]))
            )
        )
        config = {
            "memory_limit": memory_limit,
            "threads": threads or max(1, min(4, os.cpu_count() or 1)),
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "allow_persistent_secrets": False,
            "python_enable_replacements": False,  # no scans of Python variables by name
            "temp_directory": "",  # no spilling to disk: memory_limit is the bound
        }
        try:
            self.con = duckdb.connect(":memory:", config=config)
        except duckdb.Error as exc:
            raise ConfigError(
                f"cannot start DuckDB (--memory-limit {memory_limit!r}?): {first_line(exc)}"
            ) from exc
        try:
            self.con.execute("SET TimeZone = 'UTC'")
            self.con.execute("SET enable_progress_bar = false")  # never drawn over the report
            # footers are parsed once per check, not once per rule and cluster (a compacted
            # hour's footer alone can be tens of MB)
            self.con.execute("SET parquet_metadata_cache = true")
            # scans skip most row groups' columns (rows filtered inside the scan): fetching
            # them ahead only costs
            self.con.execute("SET disable_parquet_prefetching = true")
            # exact files, not directories: a directory grant would also allow writing new files
            self.con.execute(f"SET allowed_paths = {quote_list(readable)}")
            self.con.execute("SET enable_external_access = false")
            for optional in ("SET allow_extension_repositories = 'forbidden'",):
                try:  # a newer-DuckDB setting; the locks below hold without it
                    self.con.execute(optional)
                except duckdb.Error:
                    pass
            self.con.execute("SET lock_configuration = true")
        except duckdb.Error as exc:
            self.con.close()
            raise ConfigError(f"cannot lock down DuckDB: {first_line(exc)}") from exc
        self._lock = threading.Lock()
        self._running = 0
        self._scoped = False

    def scope(self, cluster: str) -> None:
        """(Re)define every view over one cluster's rows in the window only."""
        self._define([cluster])

    def scope_all(self, only: set[str] | None = None) -> None:
        """(Re)define every view over the rows of all the sandbox's clusters in the window
        (for rules evaluated once for every cluster, grouped by the cluster column); only:
        of those files alone (and the schema files), e.g. the few that hold wanted rows."""
        self._define(list(self.files), only)

    def _define(self, clusters: list[str], only: set[str] | None = None) -> None:
        names = ", ".join(map(quote, clusters))
        conds = [f"cluster = {names}" if len(clusters) == 1 else f"cluster IN ({names})"]
        # over the stored columns: time is BIGINT ns there, so DuckDB prunes row groups by it
        if self.since:
            since = datetime_ns(self.since)
            conds += [f"date >= {date_literal(since)}", f"time >= {ns_literal(since)}"]
        if self.until:
            until = datetime_ns(self.until)
            conds += [f"date <= {date_literal(until)}", f"time <= {ns_literal(until)}"]
        files = {
            kind: list(dict.fromkeys(f for c in clusters for f in self.files[c][kind]))
            for kind in (FLOWS, EVENTS)
        }
        if only is not None:
            files = {
                kind: [f for i, f in enumerate(fs) if i == 0 or f in only]
                for kind, fs in files.items()
            }
        views.register(self.con, self.store, files)
        for stmt in views.view_sql(
            self.store, files=files, where=" AND ".join(conds), same_schema=self.same_schema
        ):
            # views bind by name at query time: after the first cluster only the readers change
            if not self._scoped or "read_parquet(" in stmt:
                self.con.execute(stmt)
        self._scoped = True

    def run(self, sql: str, timeout: float) -> tuple[list[str], list[tuple]]:
        """Column names and rows of sql, interrupted after timeout seconds (RuleTimeout)."""
        with self._lock:
            self._running += 1
            token = self._running
        timer = threading.Timer(timeout, self._interrupt, [token])
        timer.daemon = True
        timer.start()
        try:
            rel = self.con.execute(sql)
            names = [d[0] for d in rel.description or []]
            return names, rel.fetchall()
        except duckdb.InterruptException as exc:
            raise RuleTimeout(f"interrupted after {timeout:g} s (--rule-timeout)") from exc
        finally:
            timer.cancel()
            with self._lock:
                self._running += 1  # a late timer now sees a different token

    def _interrupt(self, token: int) -> None:
        with self._lock:
            if self._running == token:
                self.con.interrupt()

    def close(self) -> None:
        self.con.close()


def cluster_files(
    store: Store, clusters: list[str], since: datetime | None, until: datetime | None
) -> dict[str, dict[str, list[str]]]:
    """cluster -> kind -> the window's files (window_files), for every cluster."""
    since_ns = datetime_ns(since) if since else None
    until_ns = datetime_ns(until) if until else None
    return {
        c: {kind: window_files(store, kind, c, since_ns, until_ns) for kind in (FLOWS, EVENTS)}
        for c in clusters
    }


def window_files(
    store: Store, kind: str, cluster: str, since_ns: int | None, until_ns: int | None
) -> list[str]:
    """The schema file, then the committed files of cluster that may hold rows of the window."""
    out = store.schema_files(kind)
    if not out:
        raise StoreError(
            f"store {store.url}: no schema file under {kind}/ (is this a flowpipe store?)"
        )
    return out + store.committed(kind, cluster, since_ns, until_ns)
