"""`flowpipe replay`: recorded flows in a temporary store, served by server.py as a fake Hubble Relay."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2
from flowpipe.codec import decode, storage
from flowpipe.errors import ConfigError, InputError
from flowpipe.ingest import importer
from flowpipe.serve import history, responses, server
from flowpipe.store.layout import Store, check_cluster
from flowpipe.views import catalog as views

RATE_TICK = 0.5  # seconds between generated files
RATE_KEEP = 300.0  # generated files older than this are deleted, so an endless stream stays small
RATE_SOURCE_MAX = 10_000  # recorded flows cycled through by --rate
FAULT_NODE = "flowpipe-replay"  # node_name of the LostEvents --lost-events-every sends


def write_responses(
    store: Store, responses: Iterable[observer_pb2.GetFlowsResponse], *, cluster: str | None = None
) -> int:
    """Commit responses to store as a collector would (cluster: given, else node_name prefix, else default)."""
    by_cluster: dict[str, list[bytes]] = {}
    for resp in responses:
        node = resp.flow.node_name or resp.node_name
        c = cluster or (node.split("/", 1)[0] if "/" in node else "default")
        by_cluster.setdefault(check_cluster(c), []).append(resp.SerializeToString())
    written = 0
    for c, rows in by_cluster.items():
        dec = decode.decode_responses(rows)
        if dec.errors:
            raise InputError(f"response {dec.errors[0][0]}: {dec.errors[0][1]}")
        flows, events = decode.split_responses(dec)
        written += store.write(c, storage.to_storage(flows), events).flows
    return written


class RateGenerator(threading.Thread):
    """Writes about `rate` flows per second into the store: recorded flows with new uuids and times."""

    def __init__(self, store: Store, rate: float):
        super().__init__(name="flowpipe-replay-rate", daemon=True)
        self.store = store
        self.rate = rate
        self.source = self._recorded()
        if not self.source:
            raise InputError("--rate needs at least one recorded flow to cycle through")
        self._halt = threading.Event()
        self._files: list[tuple[float, list[Path]]] = []
        self.generated = 0
        self.error: Exception | None = None

    def _recorded(self) -> list[tuple[str, flow_pb2.Flow]]:
        con = views.connect(self.store)
        try:
            table = con.sql(
                f"SELECT {history.COLUMNS} FROM flows_proto_files ORDER BY {history.ORDER} LIMIT {RATE_SOURCE_MAX}"
            ).to_arrow_table()
        finally:
            con.close()
        return list(zip(table.column("cluster").to_pylist(), storage.flows_from_columns(table)))

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        i, owed, last = 0, 0.0, time.monotonic()
        try:
            while not self._halt.wait(RATE_TICK):
                now = time.monotonic()
                owed += (now - last) * self.rate
                last = now
                n, owed = int(owed), owed - int(owed)
                if n:
                    batch = [self.source[(i + k) % len(self.source)] for k in range(n)]
                    i = (i + n) % len(self.source)
                    self._write(batch)
                self._expire()
        except (
            Exception
        ) as exc:  # reported by ReplayServer.check(); a dead generator must not pass silently
            self.error = exc

    def _write(self, batch: list[tuple[str, flow_pb2.Flow]]) -> None:
        now = time.time_ns()
        step = int(1e9 / max(self.rate, 1))
        by_cluster: dict[str, list[observer_pb2.GetFlowsResponse]] = {}
        for k, (c, f) in enumerate(batch):
            flow = flow_pb2.Flow()
            flow.CopyFrom(f)
            flow.uuid = str(uuid.uuid4())
            flow.time.seconds, flow.time.nanos = divmod(
                now - (len(batch) - 1 - k) * step, 1_000_000_000
            )
            resp = observer_pb2.GetFlowsResponse(
                flow=flow, node_name=flow.node_name, time=flow.time
            )
            by_cluster.setdefault(c, []).append(resp)
        files = []
        for c, resps in by_cluster.items():
            flows, _ = decode.split_responses(
                decode.decode_responses([r.SerializeToString() for r in resps])
            )
            files += self.store.write(c, storage.to_storage(flows), None).files
        self.generated += len(batch)
        self._files.append((time.monotonic(), files))

    def _expire(self) -> None:
        cutoff = time.monotonic() - RATE_KEEP
        old = [f for t, fs in self._files if t < cutoff for f in fs]
        if not old:
            return
        self._files = [(t, fs) for t, fs in self._files if t >= cutoff]
        with self.store.swap_lock():  # never under a running query
            for path in old:
                with contextlib.suppress(OSError):
                    path.unlink()


@dataclass
class Faults:
    """Stream faults for tests of clients (replay --abort-after / --lost-events-every)."""

    abort_after: int = 0  # end each GetFlows with UNAVAILABLE after this many responses
    lost_events_every: int = 0  # send an OBSERVER_EVENTS_QUEUE LostEvent after every N flows


class FaultyObserver(server.ObserverService):
    """An ObserverService whose GetFlows streams break as faults say; the rest is the service's own."""

    def __init__(self, store: Store, faults: Faults, **options):
        super().__init__(store, **options)
        self.faults = faults

    def GetFlows(self, request, context) -> Iterator[bytes]:
        stream = super().GetFlows(request, context)
        try:
            sent = flows = 0
            f = self.faults
            for data in stream:
                extra = []
                if f.lost_events_every and responses.is_flow(data):
                    flows += 1
                    if flows % f.lost_events_every == 0:
                        extra.append(
                            responses.lost_event_response(
                                flow_pb2.OBSERVER_EVENTS_QUEUE, 1, time.time_ns(), FAULT_NODE
                            )
                        )
                for out in (data, *extra):
                    yield out
                    sent += 1
                    if f.abort_after and sent >= f.abort_after:
                        context.abort(
                            grpc.StatusCode.UNAVAILABLE,
                            f"replay: stream aborted after {sent} responses",
                        )
        finally:
            stream.close()


class ReplayServer:
    """A fake Hubble Relay on host:port over a temporary store of recorded flows (in this process).

    ReplayServer(paths or responses, port=..., follow=..., rate=..., abort_after=..., lost_events_every=...)
    .start() / .stop() / .restart() (same port) / .feed(responses) / .close() (removes the store)."""

    def __init__(
        self,
        paths: Sequence[str] = (),
        responses: Iterable[observer_pb2.GetFlowsResponse] = (),
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        cluster: str | None = None,
        follow: bool = False,
        rate: float = 0.0,
        abort_after: int = 0,
        lost_events_every: int = 0,
        tls: server.ServerTLS | None = None,
        poll_interval: float = 0.2,
    ):
        self.tmp = Path(tempfile.mkdtemp(prefix="flowpipe-replay-"))
        try:
            self.store = Store(self.tmp / "store")
            self.store.ensure()
            self.cluster = cluster
            self.imported = 0
            if paths:
                report = importer.import_files(
                    self.store, list(paths), cluster=cluster, strict=True
                )
                self.imported += report.flows
            self.imported += write_responses(self.store, responses, cluster=cluster)
            self.rate = RateGenerator(self.store, rate) if rate > 0 else None
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        options = {"follow_all": follow, "poll_interval": poll_interval}
        faults = Faults(abort_after=abort_after, lost_events_every=lost_events_every)
        service = (
            FaultyObserver(self.store, faults, **options)
            if faults.abort_after or faults.lost_events_every
            else server.ObserverService(self.store, **options)
        )
        self._server = server.FlowServer(self.store, f"{host}:{port}", tls=tls, service=service)
        self.host = host
        self.port = port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> ReplayServer:
        """Serve (and start the rate generator once); the port is fixed from the first start on."""
        self.port = self._server.start()
        self._server.listen = f"{self.host}:{self.port}"
        if self.rate is not None and not self.rate.is_alive() and self.rate.ident is None:
            self.rate.start()
        return self

    def stop(self) -> None:
        """Stop serving (clients see UNAVAILABLE); the store and the rate generator stay."""
        self._server.stop()

    def restart(self, delay: float = 0.0) -> None:
        """Stop, wait delay seconds, serve again on the same port."""
        self.stop()
        time.sleep(delay)
        deadline = time.monotonic() + 10
        while True:
            try:
                self._server.start()
                return
            except ConfigError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def feed(self, responses: Iterable[observer_pb2.GetFlowsResponse]) -> int:
        """Commit more responses; follow streams deliver them as live flows."""
        return write_responses(self.store, responses, cluster=self.cluster)

    def check(self) -> None:
        """Raise the rate generator's error, if it died."""
        if self.rate is not None and self.rate.error is not None:
            raise self.rate.error

    def close(self) -> None:
        """Stop everything and remove the temporary store."""
        if self.rate is not None:
            self.rate.stop()
            if self.rate.is_alive():
                self.rate.join(5)
        self._server.stop(0)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def wait(self) -> None:
        self._server.wait()

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def replay(paths: Sequence[str], listen: str, *, on_ready=None, **options) -> None:
    """Serve recorded files on listen until interrupted; the temporary store is removed on exit."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--listen {listen!r} must be HOST:PORT")
    rs = ReplayServer(
        paths, port=int(port), host=host.strip("[]") if host.startswith("[") else host, **options
    )
    try:
        rs.start()
        if on_ready:
            on_ready(rs)
        while True:
            rs.check()
            time.sleep(0.5)
    finally:
        rs.close()
