"""Stored history in key order, page by page: what GetFlows streams, read from the store's files."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import duckdb
import pyarrow as pa

from flowpipe.codec import storage
from flowpipe.common.sql import MAX_NS, SECOND, date_literal, ns_literal, quote
from flowpipe.serve.responses import lost_event_response, wrap_flow
from flowpipe.store.compact import COMPACT_SUFFIX
from flowpipe.store.layout import EVENTS, FLOWS, Store
from flowpipe.views import catalog
from flowpipe.views.catalog import RAW_TIME

T = RAW_TIME  # the stored BIGINT ns: time predicates on it prune Parquet row groups
JUMP = 256  # an empty window looks for the next match this many window widths ahead
PAGE = 10_000  # flows per query and per reconstruction batch (a query costs ~0.1-0.3 s however few it returns)
KEY_UUID = "coalesce(CAST(_uuid AS VARCHAR), uuid, '')"
KEY_FP = "coalesce(_fp, 0)"
COLUMNS = f"* EXCLUDE (_uuid, uuid, filename, date, hour, {T}), {KEY_UUID} AS uuid, {KEY_FP} AS k_fp, {T} AS k_t"
ORDER = "k_t, cluster, uuid, k_fp"
# (time ns, cluster, uuid, fingerprint): a total order of stored flows
Key = tuple[int, str, str, int]


def _files_sql(paths: set[str]) -> str:
    return "(" + ", ".join(quote(p) for p in sorted(paths)) + ")"


class StoreReader:
    """One call's view of the store: pages of matching flows in key order, lost events, new files."""

    def __init__(self, store: Store, where: str, con: duckdb.DuckDBPyConnection):
        self.store = store
        self.where = where
        self.con = con
        self.known = self.current_files()  # files committed before the call: its history
        self.has_lost = self._count("lost_events IS NOT NULL", "events_proto_files") > 0

    def current_files(self) -> set[str]:
        by_kind = {kind: self.store.committed(kind) for kind in (FLOWS, EVENTS)}
        files = {p for paths in by_kind.values() for p in paths}
        if not self.store.local and files != getattr(self, "_registered", None):
            # object storage: the views' datasets hold the files listed when registered
            catalog.register(
                self.con,
                self.store,
                {k: self.store.schema_files(k) + v for k, v in by_kind.items()},
            )
            self._registered = files
        return files

    def new_files(self) -> set[str]:
        """Files committed since the call started. Compaction output is not new: it only holds
        flows of files that existed before (closed hours), so it counts as history."""
        return {f for f in self.current_files() - self.known if not f.endswith(COMPACT_SUFFIX)}

    def _scope(self, files: set[str] | None) -> str:
        """History is what was committed before the call; later files are the live part."""
        if files is not None:
            return f"filename IN {_files_sql(files)}"
        new = self.new_files()
        return f"filename NOT IN {_files_sql(new)}" if new else "TRUE"

    def _count(
        self, cond: str, view: str = "flows_proto_files", files: set[str] | None = None
    ) -> int:
        with self.store.read_lock():
            return self.con.sql(
                f"SELECT count(*) FROM {view} WHERE {cond} AND {self._scope(files)}"
            ).fetchall()[0][0]

    def next_match(self, t: int, until: int, files: set[str] | None) -> int | None:
        """Time of the first matching flow with t <= time <= until: skips gaps without empty windows."""
        with self.store.read_lock():
            row = self.con.sql(
                f"SELECT min({T}) FROM flows_proto_files WHERE {T} >= {ns_literal(t)} "
                f"AND {T} <= {ns_literal(until)} AND date >= {date_literal(t)} AND date <= {date_literal(until)} "
                f"AND {self._scope(files)} AND {self.where}"
            ).fetchall()[0]
        return row[0]

    def time_span(self, files: set[str] | None = None) -> tuple[int, int, int] | None:
        """Oldest and newest flow time in scope, and how many flows (matching or not) are there."""
        with self.store.read_lock():
            row = self.con.sql(
                f"SELECT min({T}), max({T}), count(*) FROM flows_proto_files "
                f"WHERE {self._scope(files)}"
            ).fetchall()[0]
        return None if row is None or row[0] is None else (row[0], row[1], row[2])

    def nth_newest(self, n: int) -> Key | None:
        """Key of the n-th newest matching flow (None when fewer match)."""
        query = (
            f"SELECT {T}, cluster, {KEY_UUID}, {KEY_FP} FROM flows_proto_files "
            f"WHERE {T} IS NOT NULL AND {self._scope(None)} AND {self.where} "
            f"ORDER BY {T} DESC, cluster DESC, {KEY_UUID} DESC, {KEY_FP} DESC LIMIT 1 OFFSET {min(n, 1 << 62) - 1}"
        )
        with self.store.read_lock():
            rows = self.con.sql(query).fetchall()
        return tuple(rows[0]) if rows else None

    def page(
        self,
        lo: int,
        hi: int,
        after: Key | None,
        inclusive: bool,
        limit: int,
        files: set[str] | None,
    ) -> pa.Table:
        """Matching flows with lo <= time < hi after key `after`, in key order, at most limit."""
        conds = [
            f"{T} >= {ns_literal(lo)}",
            f"{T} < {ns_literal(hi)}",
            f"date >= {date_literal(lo)}",
            f"date <= {date_literal(hi)}",
            self._scope(files),
            self.where,
        ]
        if after is not None:
            t, c, u, f = after
            last = ">=" if inclusive else ">"
            conds.append(
                f"({T} > {ns_literal(t)} OR ({T} = {ns_literal(t)} AND (cluster > {quote(c)} OR (cluster = "
                f"{quote(c)} AND ({KEY_UUID} > {quote(u)} OR ({KEY_UUID} = {quote(u)} "
                f"AND {KEY_FP} {last} {int(f)}))))))"
            )
        query = f"SELECT {COLUMNS} FROM flows_proto_files WHERE {' AND '.join(conds)} ORDER BY {ORDER} LIMIT {limit}"
        with self.store.read_lock():
            return self.con.sql(query).to_arrow_table()

    def lost_events(self, lo: int, hi: int, files: set[str] | None) -> list[tuple[int, bytes]]:
        """(time, serialized response) of stored LostEvents with lo <= time <= hi."""
        query = (
            f"SELECT {T}, lost_events.source, lost_events.num_events_lost, lost_events.cpu, "
            "epoch_ns(lost_events.first), epoch_ns(lost_events.last), node_name FROM events_proto_files "
            f"WHERE lost_events IS NOT NULL AND {T} >= {ns_literal(lo)} AND {T} <= {ns_literal(hi)} "
            f"AND {self._scope(files)} ORDER BY {T}"
        )
        with self.store.read_lock():
            rows = self.con.sql(query).fetchall()
        return [
            (
                t,
                lost_event_response(
                    source or 0, count or 0, t, node or "", cpu=cpu, first_ns=first, last_ns=last
                ),
            )
            for t, source, count, cpu, first, last, node in rows
        ]

    def any_after(self, t: int, files: set[str]) -> bool:
        """Whether any flow (matching or not) in files is newer than t (ends a stream with until)."""
        return self._count(f"{T} > {ns_literal(t)}", files=files) > 0


def _chunks(table: pa.Table) -> list[tuple[int, bytes]]:
    """(time, serialized response) for each row of a page."""
    times = table.column("k_t").to_pylist()
    nodes = table.column("node_name").to_pylist()
    bodies = storage.encode_flows(table)
    return [(t, wrap_flow(b, n, t)) for t, n, b in zip(times, nodes, bodies)]


def read_range(
    reader: StoreReader,
    start: Key | int,
    end: int,
    limit: int | None,
    files: set[str] | None,
    active: Callable[[], bool],
    density: float,
) -> Iterator[tuple[int, bytes, bool]]:
    """(time, response, is_flow) in time order from start (a key, inclusive, or a time) to end (inclusive).

    Each query reads one window of time sized to hold about a page (density = flows per ns);
    windows shrink while pages fill and grow or jump over gaps while they come back short, so no
    query scans the whole store and nothing holds the whole answer."""
    after, inclusive = (start, True) if isinstance(start, tuple) else (None, False)
    lo = start[0] if isinstance(start, tuple) else start
    lost_lo = lo
    width = int(min(max(PAGE / density if density > 0 else 60 * SECOND, SECOND), MAX_NS // 4))
    remaining = limit
    while lo <= end and active():
        hi = min(lo + width, end + 1)
        want = PAGE if remaining is None else min(PAGE, remaining)
        table = reader.page(lo, hi, after, inclusive, want, files)
        rows = _chunks(table) if table.num_rows else []
        if remaining is not None:
            remaining -= len(rows)
        if (
            len(rows) == want
        ):  # window not exhausted (or limit reached): continue after the last key
            last = table.slice(table.num_rows - 1)
            after = (
                rows[-1][0],
                last.column("cluster")[0].as_py(),
                last.column("uuid")[0].as_py(),
                last.column("k_fp")[0].as_py(),
            )
            inclusive = False
            covered = lo = rows[-1][0]
            width = max(width // 2, 1_000_000)
        else:
            covered, lo = hi - 1, hi
            # few rows: a selective filter; none: grow faster (each window costs a query)
            width = min(width * (2 if rows else 4), MAX_NS // 4)
            if not rows and lo <= end:
                # jump to the next matching flow instead of stepping through a gap (a quiet
                # time, or a selective filter); one narrow query looks up to JUMP windows ahead
                horizon = min(end, lo + JUMP * width)
                nxt = reader.next_match(lo, horizon, files)
                if nxt is None:
                    covered, lo = horizon, horizon + 1
                elif nxt > lo:
                    covered, lo = nxt - 1, nxt
        lost = (
            reader.lost_events(lost_lo, covered, files)
            if reader.has_lost and covered >= lost_lo
            else []
        )
        lost_lo = covered + 1
        yield from merge(rows, lost)
        if remaining is not None and remaining <= 0:
            return


def merge(
    rows: list[tuple[int, bytes]], lost: list[tuple[int, bytes]]
) -> Iterator[tuple[int, bytes, bool]]:
    i = 0
    for t, b in rows:
        while i < len(lost) and lost[i][0] < t:
            yield lost[i][0], lost[i][1], False
            i += 1
        yield t, b, True
    for t, b in lost[i:]:
        yield t, b, False
