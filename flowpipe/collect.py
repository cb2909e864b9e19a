"""`flowpipe collect`: one resumable stream per relay, buffered, deduplicated, committed to the store."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry

from flowpipe import schema, views
from flowpipe.config import CollectConfig, RelayConfig, parse_duration
from flowpipe.dedup import Deduper
from flowpipe.errors import FlowpipeError, StoreError
from flowpipe.metrics import CollectorMetrics
from flowpipe.store import Store, now_ns
from flowpipe.stream import FatalStreamError, FlowStream

log = logging.getLogger("flowpipe.collect")

NODE_STATES = {0: "UNKNOWN_NODE_STATE", 1: "NODE_CONNECTED", 2: "NODE_UNAVAILABLE", 3: "NODE_GONE", 4: "NODE_ERROR"}
LOST_SOURCES = {0: "UNKNOWN_LOST_EVENT_SOURCE", 1: "PERF_EVENT_RING_BUFFER", 2: "OBSERVER_EVENTS_QUEUE", 3: "HUBBLE_RING_BUFFER"}


class CollectError(FlowpipeError):
    """The collector had to stop (fatal relay error, or flows it could not store)."""


@dataclass
class ClusterState:
    """What the collector holds for one cluster between receiving and committing."""

    relay: RelayConfig
    deduper: Deduper
    lock: threading.Condition = field(default_factory=threading.Condition)
    rows: list[bytes] = field(default_factory=list)
    first_row_at: float = 0.0
    unwritten: deque = field(default_factory=deque)  # (flows, events) decoded but not yet committed
    unwritten_rows: int = 0
    newest_ns: int | None = None  # newest flow time decoded (resume point)
    stored: int = 0
    lost: int = 0
    window_flows: int = 0
    stream: FlowStream | None = None
    thread: threading.Thread | None = None
    fatal: str | None = None
    sync_requested: bool = False
    last_error: str = ""
    last_error_logged: float = 0.0
    retry_at: float = 0.0  # next attempt to commit after a store failure
    retry_delay: float = 0.0
    store_error_logged: float = 0.0
    error_repeats: int = 0

    @property
    def buffered(self) -> int:
        return len(self.rows) + self.unwritten_rows


class Collector:
    """Runs the streams and the flush loop; stop() (or SIGINT/SIGTERM) flushes and returns."""

    def __init__(self, cfg: CollectConfig, store: Store, registry: CollectorRegistry | None = None):
        self.cfg = cfg
        self.store = store
        self.registry = registry or CollectorRegistry()
        self.metrics = CollectorMetrics(self.registry)
        self.clusters: dict[str, ClusterState] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.fatal: str | None = None

    # ------------------------------------------------------------------ set-up

    def _prepare(self) -> None:
        self.store.ensure()
        views.write_database(self.store)
        if n := self.store.clean_incoming():
            log.info("removed %d temporary files left by an interrupted writer", n)
        window = int(max(60.0, 3 * self.cfg.resume_overlap) * 1e9)
        for relay in self.cfg.relays:
            st = ClusterState(relay=relay, deduper=Deduper(window))
            last = self.store.last_time(relay.cluster)
            if last is not None:
                since = last - int(self.cfg.resume_overlap * 1e9)
                st.deduper.remember(self.store.keys_between(relay.cluster, since), at_ns=last)
                st.newest_ns = last
                log.info("[%s] resuming after %s (%d stored keys in the overlap)", relay.cluster,
                         _fmt_ns(last), len(st.deduper))
            self.metrics.init_cluster(relay.cluster)
            self.clusters[relay.cluster] = st

    def _since(self, st: ClusterState) -> int | None:
        # Called by the stream thread before each dial: let the flusher decode what is
        # buffered first, so the resume point covers every flow already received.
        deadline = time.monotonic() + 5
        with st.lock:
            while st.rows and not self._stop.is_set() and time.monotonic() < deadline:
                st.sync_requested = True
                self._wake.set()
                st.lock.wait(0.1)
        if st.newest_ns is not None:
            return st.newest_ns - int(self.cfg.resume_overlap * 1e9)
        if self.cfg.since is None:
            return 1_000_000_000  # everything Relay still holds
        if self.cfg.since == "now":
            return None
        return now_ns() - int(parse_duration(self.cfg.since, "--since") * 1e9)

    # ------------------------------------------------------------------ streams

    def _on_message(self, st: ClusterState, raw: bytes) -> None:
        with st.lock:
            while st.buffered >= self.cfg.max_buffer_rows and not self._stop.is_set():
                # back-pressure: stop reading until the flusher catches up (or the disk recovers)
                self._wake.set()
                st.lock.wait(0.5)
            if not st.rows:
                st.first_row_at = time.monotonic()
            st.rows.append(raw)
            if len(st.rows) >= self.cfg.flush_rows:
                self._wake.set()

    def _on_event(self, st: ClusterState, kind: str, detail: str) -> None:
        cluster = st.relay.cluster
        m = self.metrics
        if kind == "connected":
            m.relay_connected.labels(cluster).set(1)
            if detail != "first":
                m.reconnects.labels(cluster).inc()
            log.info("[%s] streaming from %s%s", cluster, st.relay.address, "" if detail == "first" else " (resumed)")
        elif kind == "disconnected":
            m.relay_connected.labels(cluster).set(0)
        elif kind == "error":
            code, _, text = detail.partition("|")
            m.stream_errors.labels(cluster, code).inc()
            # a relay that is down fails every attempt: say so at once, then once a minute
            now = time.monotonic()
            if detail != st.last_error or now - st.last_error_logged >= 60:
                repeated = f" (x{st.error_repeats + 1} since last logged)" if detail == st.last_error else ""
                log.warning("[%s] relay %s: %s: %s; retrying%s", cluster, st.relay.address, code, text, repeated)
                st.last_error, st.last_error_logged, st.error_repeats = detail, now, 0
            else:
                st.error_repeats += 1

    def _run_stream(self, st: ClusterState) -> None:
        try:
            st.stream.run()
        except FatalStreamError as exc:
            st.fatal = str(exc)
            self.fatal = self.fatal or str(exc)
            log.error("%s", exc)
            self.stop()
        except Exception as exc:  # a bug must stop the collector loudly, not hang it
            st.fatal = f"relay {st.relay.name}: {type(exc).__name__}: {exc}"
            self.fatal = self.fatal or st.fatal
            log.exception("[%s] stream crashed", st.relay.cluster)
            self.stop()

    # ------------------------------------------------------------------ flushing

    def flush(self, st: ClusterState, force: bool = False) -> None:
        """Decode what arrived, drop duplicates, commit; keep it in memory if the store fails."""
        cluster = st.relay.cluster
        with st.lock:
            rows, st.rows = st.rows, []
        started = time.perf_counter()
        if rows:
            self._decode(st, rows)
        with st.lock:
            st.sync_requested = False
            st.lock.notify_all()  # rows are decoded: a waiting _since() may read newest_ns
        now = time.monotonic()
        while st.unwritten and (force or now >= st.retry_at):
            # one file per commit: batches that piled up while the store failed go out together
            take = 1
            while take < len(st.unwritten) and sum(f.num_rows for f, _ in list(st.unwritten)[:take + 1]) <= self.cfg.flush_rows:
                take += 1
            batch = [st.unwritten[i] for i in range(take)]
            flows = pa.concat_tables([f for f, _ in batch]) if take > 1 else batch[0][0]
            events = pa.concat_tables([e for _, e in batch]) if take > 1 else batch[0][1]
            try:
                result = self.store.write(cluster, schema.to_storage(flows), events)
            except StoreError as exc:
                self.metrics.flush_errors.labels(cluster).inc()
                # retry with backoff; say it at once, then every 30 s while it lasts
                st.retry_delay = min(max(st.retry_delay * 2, 0.5), 10.0)
                st.retry_at = now + st.retry_delay
                if now - st.store_error_logged >= 30:
                    log.error("[%s] %s; %d flows kept in memory, retrying", cluster, exc, st.buffered)
                    st.store_error_logged = now
                break
            if st.store_error_logged:
                log.info("[%s] store writable again; %d flows committed", cluster, flows.num_rows)
                st.store_error_logged = 0.0
            st.retry_delay = 0.0
            for _ in range(take):
                st.unwritten.popleft()
            st.unwritten_rows -= flows.num_rows
            st.stored += flows.num_rows
            st.window_flows += flows.num_rows
            self.metrics.flows_stored.labels(cluster).inc(flows.num_rows)
            self.metrics.store_bytes.labels(cluster).inc(result.bytes)
            self.metrics.last_flush.labels(cluster).set(time.time())
            newest = pc.max(flows.column("time")).value if flows.num_rows else None
            if newest:
                self.metrics.newest_flow.labels(cluster).set(newest / 1e9)
        self.metrics.buffered.labels(cluster).set(st.buffered)
        if rows:
            self.metrics.flush_seconds.labels(cluster).observe(time.perf_counter() - started)
        with st.lock:
            st.lock.notify_all()

    def _decode(self, st: ClusterState, rows: list[bytes]) -> None:
        cluster = st.relay.cluster
        m = self.metrics
        m.flows_received.labels(cluster)  # series exists even before flows
        dec = schema.decode_responses(rows)
        for idx, reason in dec.errors[:5]:
            log.warning("[%s] undecodable response (%d bytes): %s", cluster, len(rows[idx]), reason)
        if dec.errors:
            m.malformed.labels(cluster).inc(len(dec.errors))
        flows, events = schema.split_responses(dec)
        m.flows_received.labels(cluster).inc(flows.num_rows)
        self._count_events(st, events)
        flows, dups = st.deduper.filter(flows)
        if dups:
            m.duplicates.labels(cluster).inc(dups)
        newest = st.deduper.newest_ns
        if newest is not None and (st.newest_ns is None or newest > st.newest_ns):
            st.newest_ns = newest
        if flows.num_rows or events.num_rows:
            st.unwritten.append((flows, events))
            st.unwritten_rows += flows.num_rows

    def _count_events(self, st: ClusterState, events: pa.Table) -> None:
        if events.num_rows == 0:
            return
        cluster = st.relay.cluster
        for lost in events.column("lost_events").to_pylist():
            if lost:
                source = LOST_SOURCES.get(lost["source"], str(lost["source"]))
                n = lost["num_events_lost"] or 0
                self.metrics.lost_events.labels(cluster, source).inc(n)
                st.lost += n
                log.warning("[%s] relay reports %d events lost (%s)", cluster, n, source)
        for status in events.column("node_status").to_pylist():
            if status:
                state = NODE_STATES.get(status["state_change"], str(status["state_change"]))
                self.metrics.node_status.labels(cluster, state).inc()
                if state in ("NODE_UNAVAILABLE", "NODE_ERROR", "NODE_GONE"):
                    log.warning("[%s] %s: %s %s", cluster, state, ", ".join(status["node_names"]), status["message"])

    def _due(self, st: ClusterState, now: float) -> bool:
        if st.sync_requested or (st.unwritten and now >= st.retry_at):
            return True
        if not st.rows:
            return False
        return len(st.rows) >= self.cfg.flush_rows or now - st.first_row_at >= self.cfg.flush_interval

    # ------------------------------------------------------------------ main loop

    def stop(self) -> None:
        """Ask everything to stop; run() then flushes and returns."""
        self._stop.set()
        self._wake.set()
        for st in self.clusters.values():
            if st.stream:
                st.stream.stop()
            with st.lock:
                st.lock.notify_all()

    def run(self, *, install_signals: bool = True) -> int:
        """Collect until stopped; return the number of flows that could not be stored (0 = clean)."""
        self._prepare()
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self.stop())
        for st in self.clusters.values():
            st.stream = FlowStream(
                st.relay,
                self.cfg,
                resume_since=lambda st=st: self._since(st),
                on_message=lambda raw, st=st: self._on_message(st, raw),
                on_event=lambda kind, detail, st=st: self._on_event(st, kind, detail),
            )
            st.thread = threading.Thread(target=self._run_stream, args=(st,), name=f"stream-{st.relay.cluster}", daemon=True)
            st.thread.start()
        last_progress = time.monotonic()
        last_compact = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(0.1)
            self._wake.clear()
            now = time.monotonic()
            for st in self.clusters.values():
                if self._due(st, now):
                    self.flush(st)
            if not self.cfg.quiet and now - last_progress >= self.cfg.progress_every:
                self._progress(now - last_progress)
                last_progress = now
            if self.cfg.compact_every and now - last_compact >= self.cfg.compact_every:
                self._compact()
                last_compact = now
        for st in self.clusters.values():
            if st.thread:
                st.thread.join(timeout=5)
        unstored = 0
        for st in self.clusters.values():
            self.flush(st, force=True)
            unstored += st.buffered
            if st.buffered:
                log.error("[%s] %d flows could not be stored before exit", st.relay.cluster, st.buffered)
        if self.fatal:
            raise CollectError(self.fatal)
        return unstored

    def _progress(self, elapsed: float) -> None:
        parts = []
        for name, st in self.clusters.items():
            rate = st.window_flows / elapsed if elapsed > 0 else 0.0
            state = "connected" if st.stream and st.stream.state.connected else "disconnected"
            parts.append(f"{name}: {rate:,.0f} flows/s, {st.stored:,} stored, {st.lost} lost, {state}")
            st.window_flows = 0
        log.info("progress: %s", "; ".join(parts))

    def _compact(self) -> None:
        from flowpipe import compact

        try:
            report = compact.compact(self.store, keep=self.cfg.keep)
            if report.merged_files or report.removed_partitions:
                log.info("compaction: %s", report.summary())
        except FlowpipeError as exc:
            log.error("compaction failed: %s", exc)


def _fmt_ns(ns: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="milliseconds")
