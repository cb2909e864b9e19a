"""The Hubble Observer gRPC API over a store: GetFlows (history, then follow), status, nodes, namespaces."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import duckdb
import grpc
import pyarrow as pa

from flowpipe import __version__
from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2
from flowpipe.api.relay import relay_pb2
from flowpipe.codec import storage
from flowpipe.errors import ConfigError, FilterError
from flowpipe.serve import filters
from flowpipe.store.compact import COMPACT_SUFFIX
from flowpipe.store.layout import EVENTS, FLOWS, Store
from flowpipe.views import catalog as views

VERSION = f"flowpipe {__version__}"
JUMP = 256  # an empty window looks for the next match this many window widths ahead
PAGE = 10_000  # flows per query and per reconstruction batch (a query costs ~0.1-0.3 s however few it returns)
MIN_NS, MAX_NS = (
    -9_000_000_000_000_000_000,
    9_200_000_000_000_000_000,
)  # inside DuckDB's TIMESTAMP_NS
SECOND = 1_000_000_000
KEY_UUID = "coalesce(CAST(_uuid AS VARCHAR), uuid, '')"
KEY_FP = "coalesce(_fp, 0)"
COLUMNS = f"* EXCLUDE (_uuid, uuid, filename, date, hour), {KEY_UUID} AS uuid, {KEY_FP} AS k_fp, epoch_ns(time) AS k_t"
ORDER = "time, cluster, uuid, k_fp"
Key = tuple[
    int, str, str, int
]  # (time ns, cluster, uuid, fingerprint): a total order of stored flows


@dataclass
class Faults:
    """Stream faults for tests of clients (replay --abort-after / --lost-events-every)."""

    abort_after: int = 0  # end each GetFlows with UNAVAILABLE after this many responses
    lost_events_every: int = 0  # send an OBSERVER_EVENTS_QUEUE LostEvent after every N flows


@dataclass
class ServerTLS:
    """Server certificate and key; client_ca_file turns on mutual TLS."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    def credentials(self) -> grpc.ServerCredentials:
        def read(path: str, what: str) -> bytes:
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc

        pair = [(read(self.key_file, "TLS key"), read(self.cert_file, "TLS certificate"))]
        if self.client_ca_file:
            ca = read(self.client_ca_file, "client CA")
            return grpc.ssl_server_credentials(pair, root_certificates=ca, require_client_auth=True)
        return grpc.ssl_server_credentials(pair)


# ------------------------------------------------------------------ encoding


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def response_bytes(flow: flow_pb2.Flow) -> bytes:
    """GetFlowsResponse{flow, node_name=flow.node_name, time=flow.time} serialized, without a copy of flow."""
    time_ns = flow.time.seconds * SECOND + flow.time.nanos if flow.HasField("time") else None
    return wrap_flow(flow.SerializeToString(), flow.node_name, time_ns)


def wrap_flow(body: bytes, node_name: str | None, time_ns: int | None) -> bytes:
    """A serialized Flow inside a GetFlowsResponse, with response node_name and time as Relay sets them."""
    out = b"\x0a" + _varint(len(body)) + body
    if node_name:
        name = node_name.encode()
        out += b"\xc2\x3e" + _varint(len(name)) + name  # field 1000
    if time_ns is not None:
        sec, nanos = divmod(time_ns, SECOND)
        # int64 seconds: negative values go on the wire as 64-bit two's complement
        ts = (b"\x08" + _varint(sec & 0xFFFF_FFFF_FFFF_FFFF) if sec else b"") + (
            b"\x10" + _varint(nanos) if nanos else b""
        )
        out += b"\xca\x3e" + _varint(len(ts)) + ts  # field 1001
    return out


def _timestamp(ns: int):
    from google.protobuf.timestamp_pb2 import Timestamp

    return Timestamp(seconds=ns // SECOND, nanos=ns % SECOND)


def lost_event_response(
    source: int, count: int, when_ns: int, node: str, cpu: int | None = None
) -> bytes:
    """A serialized GetFlowsResponse carrying a LostEvent."""
    ev = flow_pb2.LostEvent(source=source, num_events_lost=count)
    if cpu is not None:
        ev.cpu.value = cpu
    resp = observer_pb2.GetFlowsResponse(lost_events=ev, node_name=node, time=_timestamp(when_ns))
    return resp.SerializeToString()


def _ts_sql(ns: int) -> str:
    ns = min(max(ns, MIN_NS), MAX_NS)
    sec, frac = divmod(ns, SECOND)
    return f"'{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(sec))}.{frac:09d}+00'::TIMESTAMPTZ_NS"


def _date_sql(ns: int) -> str:
    ns = min(max(ns, MIN_NS), MAX_NS)
    return f"DATE '{time.strftime('%Y-%m-%d', time.gmtime(ns // SECOND))}'"


def _files_sql(paths: set[str]) -> str:
    return "(" + ", ".join(filters.lit(p) for p in sorted(paths)) + ")"


# ------------------------------------------------------------------ reading the store


class StoreReader:
    """One call's view of the store: pages of matching flows in key order, lost events, new files."""

    def __init__(self, store: Store, where: str, con: duckdb.DuckDBPyConnection):
        self.store = store
        self.where = where
        self.con = con
        self.known = self.current_files()  # files committed before the call: its history
        self.has_lost = self._count("lost_events IS NOT NULL", "events_proto_files") > 0

    def current_files(self) -> set[str]:
        return {str(p) for kind in (FLOWS, EVENTS) for p in self.store.files(kind)}

    def new_files(self) -> set[str]:
        """Files committed since the call started. Compaction output is not new: it only holds
        flows of files that existed before (closed hours), so it counts as history."""
        return {f for f in self.current_files() - self.known if not f.endswith(COMPACT_SUFFIX)}

    def _query(self, sql: str) -> duckdb.DuckDBPyRelation:
        with self.store.read_lock():
            return self.con.sql(sql)

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
                f"SELECT epoch_ns(min(time)) FROM flows_proto_files WHERE time >= {_ts_sql(t)} "
                f"AND time <= {_ts_sql(until)} AND date >= {_date_sql(t)} AND date <= {_date_sql(until)} "
                f"AND {self._scope(files)} AND {self.where}"
            ).fetchall()[0]
        return row[0]

    def time_span(self, files: set[str] | None = None) -> tuple[int, int, int] | None:
        """Oldest and newest flow time in scope, and how many flows (matching or not) are there."""
        with self.store.read_lock():
            row = self.con.sql(
                "SELECT epoch_ns(min(time)), epoch_ns(max(time)), count(*) FROM flows_proto_files "
                f"WHERE {self._scope(files)}"
            ).fetchall()[0]
        return None if row is None or row[0] is None else (row[0], row[1], row[2])

    def nth_newest(self, n: int) -> Key | None:
        """Key of the n-th newest matching flow (None when fewer match)."""
        sql = (
            f"SELECT epoch_ns(time), cluster, {KEY_UUID}, {KEY_FP} FROM flows_proto_files "
            f"WHERE time IS NOT NULL AND {self._scope(None)} AND {self.where} "
            f"ORDER BY time DESC, cluster DESC, {KEY_UUID} DESC, {KEY_FP} DESC LIMIT 1 OFFSET {min(n, 1 << 62) - 1}"
        )
        with self.store.read_lock():
            rows = self.con.sql(sql).fetchall()
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
            f"time >= {_ts_sql(lo)}",
            f"time < {_ts_sql(hi)}",
            f"date >= {_date_sql(lo)}",
            f"date <= {_date_sql(hi)}",
            self._scope(files),
            self.where,
        ]
        if after is not None:
            t, c, u, f = after
            last = ">=" if inclusive else ">"
            conds.append(
                f"(time > {_ts_sql(t)} OR (time = {_ts_sql(t)} AND (cluster > {filters.lit(c)} OR (cluster = "
                f"{filters.lit(c)} AND ({KEY_UUID} > {filters.lit(u)} OR ({KEY_UUID} = {filters.lit(u)} "
                f"AND {KEY_FP} {last} {int(f)}))))))"
            )
        sql = f"SELECT {COLUMNS} FROM flows_proto_files WHERE {' AND '.join(conds)} ORDER BY {ORDER} LIMIT {limit}"
        with self.store.read_lock():
            return self.con.sql(sql).to_arrow_table()

    def lost_events(self, lo: int, hi: int, files: set[str] | None) -> list[tuple[int, bytes]]:
        """(time, serialized response) of stored LostEvents with lo <= time <= hi."""
        sql = (
            "SELECT epoch_ns(time), lost_events.source, lost_events.num_events_lost, lost_events.cpu, "
            "epoch_ns(lost_events.first), epoch_ns(lost_events.last), node_name FROM events_proto_files "
            f"WHERE lost_events IS NOT NULL AND time >= {_ts_sql(lo)} AND time <= {_ts_sql(hi)} "
            f"AND {self._scope(files)} ORDER BY time"
        )
        with self.store.read_lock():
            rows = self.con.sql(sql).fetchall()
        out = []
        for t, source, count, cpu, first, last, node in rows:
            ev = flow_pb2.LostEvent(source=source or 0, num_events_lost=count or 0)
            if cpu is not None:
                ev.cpu.value = cpu
            if first is not None:
                ev.first.CopyFrom(_timestamp(first))
            if last is not None:
                ev.last.CopyFrom(_timestamp(last))
            resp = observer_pb2.GetFlowsResponse(
                lost_events=ev, node_name=node or "", time=_timestamp(t)
            )
            out.append((t, resp.SerializeToString()))
        return out

    def any_after(self, t: int, files: set[str]) -> bool:
        """Whether any flow (matching or not) in files is newer than t (ends a stream with until)."""
        return self._count(f"time > {_ts_sql(t)}", files=files) > 0


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
    active,
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
        yield from _merge(rows, lost)
        if remaining is not None and remaining <= 0:
            return


def _merge(
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


# ------------------------------------------------------------------ the service


def _ns(ts) -> int:
    if not (-62135596800 <= ts.seconds <= 253402300799 and 0 <= ts.nanos < SECOND):
        raise FilterError(f"invalid timestamp: seconds={ts.seconds} nanos={ts.nanos}")
    return ts.seconds * SECOND + ts.nanos


class ObserverService:
    """observer.Observer over a store, streaming pre-serialized responses."""

    def __init__(
        self,
        store: Store,
        *,
        poll_interval: float = 0.5,
        faults: Faults | None = None,
        follow_all: bool = False,
        node_name: str = "flowpipe",
    ):
        self.store = store
        self.poll_interval = poll_interval
        self.faults = faults or Faults()
        self.follow_all = (
            follow_all  # replay --follow: every call gets all history, then stays open
        )
        self.node_name = node_name
        self.started = time.monotonic()
        self._base: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()

    def connection(self) -> duckdb.DuckDBPyConnection:
        """A cursor on one shared in-memory database holding the views (built once: it takes ~0.5 s)."""
        with self._lock:
            if self._base is None:
                self._base = views.connect(self.store)
                self._base.execute("SET enable_progress_bar = false")
            return self._base.cursor()

    def handler(self) -> grpc.GenericRpcHandler:
        """A generic handler whose GetFlows yields bytes (no per-message serializer)."""
        req = observer_pb2
        return grpc.method_handlers_generic_handler(
            "observer.Observer",
            {
                "GetFlows": grpc.unary_stream_rpc_method_handler(
                    self.GetFlows, request_deserializer=req.GetFlowsRequest.FromString
                ),
                "GetAgentEvents": grpc.unary_stream_rpc_method_handler(
                    self.GetAgentEvents,
                    request_deserializer=req.GetAgentEventsRequest.FromString,
                    response_serializer=req.GetAgentEventsResponse.SerializeToString,
                ),
                "GetDebugEvents": grpc.unary_stream_rpc_method_handler(
                    self.GetDebugEvents,
                    request_deserializer=req.GetDebugEventsRequest.FromString,
                    response_serializer=req.GetDebugEventsResponse.SerializeToString,
                ),
                "GetNodes": grpc.unary_unary_rpc_method_handler(
                    self.GetNodes,
                    request_deserializer=req.GetNodesRequest.FromString,
                    response_serializer=req.GetNodesResponse.SerializeToString,
                ),
                "GetNamespaces": grpc.unary_unary_rpc_method_handler(
                    self.GetNamespaces,
                    request_deserializer=req.GetNamespacesRequest.FromString,
                    response_serializer=req.GetNamespacesResponse.SerializeToString,
                ),
                "ServerStatus": grpc.unary_unary_rpc_method_handler(
                    self.ServerStatus,
                    request_deserializer=req.ServerStatusRequest.FromString,
                    response_serializer=req.ServerStatusResponse.SerializeToString,
                ),
            },
        )

    # -------------------------------------------------------------- GetFlows

    def GetFlows(
        self, request: observer_pb2.GetFlowsRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """Stored flows per Hubble's number/first/follow/since/until rules, then live ones if follow."""
        if request.first and request.follow:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first cannot be specified with follow")
        try:
            where = filters.compile_filters(request.whitelist, request.blacklist)
            since = _ns(request.since) if request.HasField("since") else None
            until = _ns(request.until) if request.HasField("until") else None
        except FilterError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        done = threading.Event()
        context.add_callback(done.set)
        con = self.connection()
        try:
            reader = StoreReader(self.store, where, con)
            yield from self._with_faults(self._flows(reader, request, since, until, done), context)
        except duckdb.Error as exc:
            context.abort(
                grpc.StatusCode.INTERNAL, f"store query failed: {str(exc).splitlines()[0]}"
            )
        finally:
            con.close()

    def _with_faults(self, stream: Iterator[tuple[int, bytes, bool]], context) -> Iterator[bytes]:
        sent = flows = 0
        f = self.faults
        for _, data, is_flow in stream:
            yield data
            sent += 1
            if f.abort_after and sent >= f.abort_after:
                context.abort(
                    grpc.StatusCode.UNAVAILABLE, f"replay: stream aborted after {sent} responses"
                )
            if is_flow and f.lost_events_every:
                flows += 1
                if flows % f.lost_events_every == 0:
                    yield lost_event_response(
                        2, 1, time.time_ns(), self.node_name
                    )  # OBSERVER_EVENTS_QUEUE
                    sent += 1
                    if f.abort_after and sent >= f.abort_after:
                        context.abort(
                            grpc.StatusCode.UNAVAILABLE,
                            f"replay: stream aborted after {sent} responses",
                        )

    def _flows(
        self, reader: StoreReader, req, since: int | None, until: int | None, done: threading.Event
    ) -> Iterator[tuple[int, bytes, bool]]:
        follow = req.follow or (self.follow_all and not req.first)
        number = req.number
        end = MAX_NS if until is None else until
        span = reader.time_span()
        active = lambda: not done.is_set()  # noqa: E731
        start: Key | int | None
        limit = None
        if req.first and since is None:
            start, limit = MIN_NS, number or None
        elif follow and number == 0 and since is None and not self.follow_all:
            start = None  # live only
        elif since is not None:
            start = since  # "since takes precedence over number" for the rewind
            limit = number if number and not follow else None
        elif number:
            start = reader.nth_newest(number) or MIN_NS
            limit = None if follow else number
        else:
            start = MIN_NS
        if start is not None and span is not None:
            if not isinstance(start, tuple):
                start = max(start, span[0])
            density = span[2] / max(span[1] - span[0], 1)
            yield from read_range(reader, start, min(end, span[1]), limit, None, active, density)
        if not follow or not active():
            return
        yield from self._live(reader, until, done)

    def _live(
        self, reader: StoreReader, until: int | None, done: threading.Event
    ) -> Iterator[tuple[int, bytes, bool]]:
        """Flows and lost events from files committed after the call started, batch by batch."""
        while not done.wait(self.poll_interval):
            new = reader.new_files()
            if not new:
                continue
            reader.known |= new
            span = reader.time_span(new)
            lo = span[0] if span else MAX_NS
            hi = span[1] if span else MIN_NS
            if until is not None:
                hi = min(hi, until)
            # lost events may lie outside the flows' span
            events = reader.lost_events(MIN_NS, MAX_NS if until is None else until, new)
            density = span[2] / max(span[1] - span[0], 1) if span else 0.0
            rows = (
                read_range(reader, lo, hi, None, new, lambda: not done.is_set(), density)
                if lo <= hi
                else iter(())
            )
            yield from _merge([(t, b) for t, b, is_flow in rows if is_flow], events)
            if until is not None and reader.any_after(until, new):
                return  # Hubble ends the stream at the first event past `until`

    def GetAgentEvents(self, request, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "GetAgentEvents not implemented: flowpipe stores flows only",
        )

    def GetDebugEvents(self, request, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "GetDebugEvents not implemented: flowpipe stores flows only",
        )

    # -------------------------------------------------------------- status

    def _rows(self, sql: str) -> list[tuple]:
        con = self.connection()
        try:
            with self.store.read_lock():
                return con.sql(sql).fetchall()
        finally:
            con.close()

    def ServerStatus(self, request, context) -> observer_pb2.ServerStatusResponse:
        """Flow counts over the whole store; flows_rate over the last minute of flow times."""
        minute_ago = _ts_sql(time.time_ns() - 60 * SECOND)
        total, recent = self._rows(
            f"SELECT count(*), count(*) FILTER (WHERE time >= {minute_ago}) FROM flows_proto"
        )[0]
        nodes = self._rows("SELECT count(DISTINCT cluster || '/' || node_name) FROM flows_proto")[
            0
        ][0]
        resp = observer_pb2.ServerStatusResponse(
            num_flows=total,
            max_flows=total,
            seen_flows=total,
            version=VERSION,
            uptime_ns=int((time.monotonic() - self.started) * SECOND),
            flows_rate=recent / 60.0,
        )
        resp.num_connected_nodes.value = nodes
        resp.num_unavailable_nodes.value = 0
        return resp

    def GetNodes(self, request, context) -> observer_pb2.GetNodesResponse:
        """Every node seen in the store, named cluster/node."""
        rows = self._rows(
            "SELECT CASE WHEN contains(node_name, '/') THEN node_name ELSE cluster || '/' || node_name END AS n, "
            "count(*) FROM flows_proto WHERE coalesce(node_name, '') <> '' GROUP BY n ORDER BY n"
        )
        up = int((time.monotonic() - self.started) * SECOND)
        return observer_pb2.GetNodesResponse(
            nodes=[
                observer_pb2.Node(
                    name=n,
                    version=VERSION,
                    state=relay_pb2.NODE_CONNECTED,
                    uptime_ns=up,
                    num_flows=c,
                    max_flows=c,
                    seen_flows=c,
                )
                for n, c in rows
            ]
        )

    def GetNamespaces(self, request, context) -> observer_pb2.GetNamespacesResponse:
        """(cluster, namespace) of every endpoint in the store."""
        rows = self._rows(
            "SELECT DISTINCT coalesce(nullif(ep.cluster_name, ''), cluster) AS c, ep.namespace AS ns FROM "
            "(SELECT cluster, source AS ep FROM flows_proto UNION ALL SELECT cluster, destination FROM flows_proto) "
            "WHERE coalesce(ep.namespace, '') <> '' ORDER BY c, ns"
        )
        return observer_pb2.GetNamespacesResponse(
            namespaces=[observer_pb2.Namespace(cluster=c, namespace=ns) for c, ns in rows]
        )


# ------------------------------------------------------------------ lifecycle


class FlowServer:
    """A gRPC server running ObserverService on one address; start, stop and start again."""

    def __init__(
        self,
        store: Store,
        listen: str,
        *,
        tls: ServerTLS | None = None,
        max_workers: int = 32,
        **service_options,
    ):
        self.store = store
        self.listen = listen
        self.tls = tls
        self.max_workers = max_workers
        self.service = ObserverService(store, **service_options)
        self._server: grpc.Server | None = None
        self.port = 0

    def start(self) -> int:
        """Bind and serve in background threads; return the bound port."""
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.max_workers, thread_name_prefix="flowpipe-serve"
            ),
            handlers=[self.service.handler()],
            options=[("grpc.so_reuseport", 0)],
        )
        try:
            if self.tls:
                port = server.add_secure_port(self.listen, self.tls.credentials())
            else:
                port = server.add_insecure_port(self.listen)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {self.listen}: {exc}") from exc
        if not port:
            raise ConfigError(f"cannot listen on {self.listen} (address in use or invalid)")
        server.start()
        self._server, self.port = server, port
        return port

    def stop(self, grace: float | None = 0.5) -> None:
        """Stop serving; open streams end with UNAVAILABLE."""
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    def wait(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            self._server.wait_for_termination()


def serve(
    store: Store, listen: str, *, tls: ServerTLS | None = None, on_ready=None, **service_options
) -> None:
    """Serve the Observer API over store until interrupted."""
    server = FlowServer(store, listen, tls=tls, **service_options)
    port = server.start()
    if on_ready:
        on_ready(port)
    try:
        server.wait()
    finally:
        with contextlib.suppress(Exception):
            server.stop(1.0)
