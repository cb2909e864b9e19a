"""Run SQL over a store's views and render the result as a table, CSV or JSON lines."""

from __future__ import annotations

import csv
import datetime as _dt
import json
from typing import IO, Any

import duckdb

from flowpipe.common.text import first_line, json_default
from flowpipe.errors import QueryError
from flowpipe.store.layout import Store
from flowpipe.views import catalog as views


def fetch(store: Store, sql: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
    """Column names and rows of sql over the store's views."""
    with store.read_lock():
        con = views.connect(store)
        try:
            rel = con.execute(sql, params or [])
            if rel.description is None:
                return [], []
            names = [d[0] for d in rel.description]
            return names, rel.fetchall()
        except duckdb.Error as exc:
            raise QueryError(f"query failed: {first_line(exc)}") from exc
        finally:
            con.close()


def run(
    store: Store,
    sql: str,
    *,
    fmt: str = "table",
    out: IO[str],
    max_rows: int = 1000,
    engine: str = "duckdb",
    spark_remote: str | None = None,
) -> int:
    """Print the result of sql to out in fmt; return the number of rows. engine="spark": the
    same SQL (DuckDB's dialect) translated and run through Spark Connect at spark_remote."""
    if engine == "spark":
        from flowpipe.views import spark

        names, rows = spark.fetch(store, sql, spark_remote)
    else:
        names, rows = fetch(store, sql)
    if fmt == "csv":
        w = csv.writer(out)
        w.writerow(names)
        for row in rows:
            w.writerow([_text(v) for v in row])
    elif fmt == "json":
        for row in rows:
            out.write(json.dumps(dict(zip(names, row)), default=json_default) + "\n")
    else:
        out.write(render_table(names, rows, max_rows=max_rows))
    return len(rows)


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=json_default)
    if isinstance(v, _dt.datetime):
        return v.isoformat()
    return str(v)


def render_table(
    names: list[str], rows: list[tuple], *, max_rows: int = 1000, max_width: int = 60
) -> str:
    """A plain fixed-width table; long cells are cut with an ellipsis."""
    shown = rows[:max_rows]
    cells = [[_cut(_text(v), max_width) for v in row] for row in shown]
    widths = [len(n) for n in names]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    if len(rows) > len(shown):
        lines.append(f"... {len(rows) - len(shown)} more rows (use --max-rows or --format csv)")
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines) + "\n"


def _cut(s: str, width: int) -> str:
    s = s.replace("\n", " ")
    return s if len(s) <= width else s[: width - 1] + "…"
