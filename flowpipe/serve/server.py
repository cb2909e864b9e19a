"""The Hubble Observer gRPC API over a store: GetFlows (history, then follow), status, nodes, namespaces."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import duckdb
import grpc

from flowpipe import __version__
from flowpipe.api.observer import observer_pb2
from flowpipe.api.relay import relay_pb2
from flowpipe.common.sql import MAX_NS, MIN_NS, SECOND, ns_literal
from flowpipe.common.text import first_line
from flowpipe.errors import ConfigError, FilterError, StoreError
from flowpipe.serve import filters
from flowpipe.serve.history import Key, StoreReader, merge, read_range
from flowpipe.store.layout import Store
from flowpipe.views import catalog as views

VERSION = f"flowpipe {__version__}"
log = logging.getLogger("flowpipe.serve")


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


# ------------------------------------------------------------------ the service


def _ns(ts) -> int:
    if not (-62135596800 <= ts.seconds <= 253402300799 and 0 <= ts.nanos < SECOND):
        raise FilterError(f"invalid timestamp: seconds={ts.seconds} nanos={ts.nanos}")
    return ts.seconds * SECOND + ts.nanos


def _abort_internal(context: grpc.ServicerContext, call: str, exc: Exception) -> NoReturn:
    """End a call that failed on flowpipe's side, never as the client's fault: UNAVAILABLE when the
    store could not be read (it may be back on a retry), else INTERNAL; one log line either way."""
    if isinstance(exc, (OSError, StoreError, duckdb.IOException)):
        code, what = grpc.StatusCode.UNAVAILABLE, "store unreadable"
    elif isinstance(exc, duckdb.Error):
        code, what = grpc.StatusCode.INTERNAL, "store query failed"
    else:
        code, what = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
    message = f"{what}: {first_line(exc)}"
    log.error("%s: %s (%s)", call, message, code.name, exc_info=code == grpc.StatusCode.INTERNAL)
    context.abort(code, message)


class ObserverService:
    """observer.Observer over a store, streaming pre-serialized responses."""

    def __init__(self, store: Store, *, poll_interval: float = 0.5, follow_all: bool = False):
        self.store = store
        self.poll_interval = poll_interval
        self.follow_all = (
            follow_all  # replay --follow: every call gets all history, then stays open
        )
        self.started = time.monotonic()
        self._base: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()

    def connection(self) -> duckdb.DuckDBPyConnection:
        """A cursor on one shared in-memory database holding the views (built once: it takes ~0.5 s)."""
        with self._lock:
            if self._base is None:
                self._base = views.connect(self.store)
                self._base.execute("SET enable_progress_bar = false")
            cur = self._base.cursor()
        # on object storage the views read datasets registered per connection: the files the
        # log commits now (on disk, views glob the directories and see new files by themselves)
        views.register(cur, self.store)
        return cur

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
                    self._unary(self.GetNodes),
                    request_deserializer=req.GetNodesRequest.FromString,
                    response_serializer=req.GetNodesResponse.SerializeToString,
                ),
                "GetNamespaces": grpc.unary_unary_rpc_method_handler(
                    self._unary(self.GetNamespaces),
                    request_deserializer=req.GetNamespacesRequest.FromString,
                    response_serializer=req.GetNamespacesResponse.SerializeToString,
                ),
                "ServerStatus": grpc.unary_unary_rpc_method_handler(
                    self._unary(self.ServerStatus),
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
        except FilterError as exc:  # the request's fault, and only then
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:
            _abort_internal(context, "GetFlows", exc)
        done = threading.Event()
        context.add_callback(done.set)
        con = None
        try:
            con = self.connection()
            reader = StoreReader(self.store, where, con)
            for _, data, _ in self._flows(reader, request, since, until, done):
                yield data
        except Exception as exc:
            _abort_internal(context, "GetFlows", exc)
        finally:
            if con is not None:
                con.close()

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
            yield from merge([(t, b) for t, b, is_flow in rows if is_flow], events)
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

    def _rows(self, query: str) -> list[tuple]:
        con = self.connection()
        try:
            with self.store.read_lock():
                return con.sql(query).fetchall()
        finally:
            con.close()

    def _unary(self, method: Callable) -> Callable:
        """method answering INTERNAL or UNAVAILABLE, with a log line, when it fails on our side."""

        def call(request, context):
            try:
                return method(request, context)
            except Exception as exc:
                _abort_internal(context, method.__name__, exc)

        return call

    def ServerStatus(self, request, context) -> observer_pb2.ServerStatusResponse:
        """Flow counts over the whole store; flows_rate over the last minute of flow times."""
        minute_ago = ns_literal(time.time_ns() - 60 * SECOND)
        total, recent = self._rows(
            f"SELECT count(*), count(*) FILTER (WHERE {views.RAW_TIME} >= {minute_ago}) FROM flows_proto"
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
    """A gRPC server running ObserverService (or the given service) on one address; start, stop
    and start again."""

    def __init__(
        self,
        store: Store,
        listen: str,
        *,
        tls: ServerTLS | None = None,
        max_workers: int = 32,
        service: ObserverService | None = None,
        **service_options,
    ):
        self.store = store
        self.listen = listen
        self.tls = tls
        self.max_workers = max_workers
        self.service = service or ObserverService(store, **service_options)
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
            # a call beyond the worker threads (each open --follow holds one) is refused with
            # RESOURCE_EXHAUSTED at once, instead of waiting, maybe forever, for a free thread
            maximum_concurrent_rpcs=self.max_workers,
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
