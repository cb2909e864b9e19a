"""`flowpipe collect`: one resumable stream per relay, buffered, deduplicated, committed to the store."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry

from flowpipe.codec import decode, storage
from flowpipe.errors import FlowpipeError, StoreError
from flowpipe.export.metrics import CollectorMetrics
from flowpipe.ingest.config import CollectConfig, RelayConfig, parse_duration
from flowpipe.ingest.dedup import Deduper
from flowpipe.ingest.stream import FatalStreamError, FlowStream
from flowpipe.store.layout import Store, now_ns
from flowpipe.store.writer import StreamWriter

log = logging.getLogger("flowpipe.collect")

NODE_STATES = {
    0: "UNKNOWN_NODE_STATE",
    1: "NODE_CONNECTED",
    2: "NODE_UNAVAILABLE",
    3: "NODE_GONE",
    4: "NODE_ERROR",
}
LOST_SOURCES = {
    0: "UNKNOWN_LOST_EVENT_SOURCE",
    1: "PERF_EVENT_RING_BUFFER",
    2: "OBSERVER_EVENTS_QUEUE",
    3: "HUBBLE_RING_BUFFER",
}


DECODE_BATCH = 8192  # rows decoded (and written as one row group) at a time
RESEND_SLACK_NS = 2_000_000_000  # flows of a resend can arrive this far out of time order


class CollectError(FlowpipeError):
    """The collector had to stop (fatal relay error, or flows it could not store)."""


@dataclass
class ClusterState:
    """What the collector holds for one cluster between receiving and committing."""

    relay: RelayConfig
    deduper: Deduper
    lock: threading.Condition = field(default_factory=threading.Condition)
    # The receiving thread appends without a lock (deque.append is atomic); the flusher pops.
    rows: deque = field(default_factory=deque)
    rows_bytes: int = 0  # approximate bytes of rows (back-pressure)
    first_row_at: float = 0.0
    writer: StreamWriter | None = None  # open files of decoded, deduplicated, uncommitted flows
    pending_keys: list = field(default_factory=list)  # dedup keys of the rows in the open files
    newest_ns: int | None = None  # newest flow time decoded (resume point)
    committed_ns: int | None = (
        None  # newest flow time committed (resume point after a store failure)
    )
    unstored: int = 0  # flows dropped by store failures since the last successful commit
    failures: int = 0
    resend_until: int | None = (
        None  # after a (re)connect: keep dedup keys until flows pass this time
    )
    stream_newest: int | None = None  # newest flow time decoded since the last (re)connect
    paused: bool = (
        False  # after a store failure, until the stream re-dials: drop what still arrives
    )
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
        return len(self.rows) + (self.writer.rows if self.writer else 0)


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
        self._compactor: subprocess.Popen | None = None

    # ------------------------------------------------------------------ set-up

    def _prepare(self) -> None:
        self.store.ensure()
        _write_database(self.store)
        if n := self.store.clean_incoming():
            log.info("removed %d temporary files left by an interrupted writer", n)

        for relay in self.cfg.relays:
            st = ClusterState(
                relay=relay, deduper=Deduper(), writer=StreamWriter(self.store, relay.cluster)
            )
            last = self.store.last_time(relay.cluster)
            if last is not None:
                st.newest_ns = st.committed_ns = last
                log.info("[%s] resuming after %s", relay.cluster, _fmt_ns(last))
            self.metrics.init_cluster(relay.cluster)
            self.clusters[relay.cluster] = st

    def _since(self, st: ClusterState) -> int | None:
        # Called by the stream thread before each dial: let the flusher decode what is
        # buffered first, so the resume point covers every flow already received.
        deadline = time.monotonic() + 5
        with st.lock:
            if st.rows:
                st.sync_requested = True  # flush() clears it once every row is decoded
                self._wake.set()
            while st.sync_requested and not self._stop.is_set() and time.monotonic() < deadline:
                st.lock.wait(0.1)
            since = self._resume_point(st)
            resend = since is not None and st.newest_ns is not None  # something was had before
            if resend:
                # Relay will send again what it sent after `since`: keep dedup keys until the
                # new stream is past what we had (plus slack for flows out of time order)
                st.resend_until = (st.newest_ns or 0) + RESEND_SLACK_NS
                st.stream_newest = None
        if resend and st.committed_ns is not None:
            # stored keys of the overlap; the decoded but uncommitted ones are in the deduper
            keys = self.store.keys_between(st.relay.cluster, since)
            st.deduper.remember(keys, at_ns=st.newest_ns or 0)
        st.paused = False  # about to dial from the resume point: what comes now is wanted
        return since

    def _resume_point(self, st: ClusterState) -> int | None:
        if st.newest_ns is not None:
            return st.newest_ns - int(self.cfg.resume_overlap * 1e9)
        if self.cfg.since is None:
            return 1_000_000_000  # everything Relay still holds
        if self.cfg.since == "now":
            return None
        return now_ns() - int(parse_duration(self.cfg.since, "--since") * 1e9)

    # ------------------------------------------------------------------ streams

    def _on_message(self, st: ClusterState, raw: bytes) -> None:
        if st.paused:
            return  # sent before the hang-up; the re-dial asks for it again
        rows = st.rows
        if not rows:
            st.first_row_at = time.monotonic()
        rows.append(raw)
        st.rows_bytes += len(raw)
        n = len(rows)
        if n % 1024 == 0:
            if n >= self.cfg.flush_rows:
                self._wake.set()
            if st.rows_bytes >= self.cfg.max_buffer_bytes:
                self._backpressure(st)

    def _backpressure(self, st: ClusterState) -> None:
        """Stop reading the relay until the flusher catches up (or the store recovers)."""
        with st.lock:
            while st.rows_bytes >= self.cfg.max_buffer_bytes and not self._stop.is_set():
                self._wake.set()
                st.lock.wait(0.5)

    def _on_event(self, st: ClusterState, kind: str, detail: str) -> None:
        cluster = st.relay.cluster
        m = self.metrics
        if kind == "connected":
            m.relay_connected.labels(cluster).set(1)
            if detail != "first":
                m.reconnects.labels(cluster).inc()
            log.info(
                "[%s] streaming from %s%s",
                cluster,
                st.relay.address,
                "" if detail == "first" else " (resumed)",
            )
        elif kind == "disconnected":
            m.relay_connected.labels(cluster).set(0)
        elif kind == "error":
            code, _, text = detail.partition("|")
            m.stream_errors.labels(cluster, code).inc()
            # a relay that is down fails every attempt: say so at once, then once a minute
            now = time.monotonic()
            if detail != st.last_error or now - st.last_error_logged >= 60:
                repeated = (
                    f" (x{st.error_repeats + 1} since last logged)"
                    if detail == st.last_error
                    else ""
                )
                log.warning(
                    "[%s] relay %s: %s: %s; retrying%s",
                    cluster,
                    st.relay.address,
                    code,
                    text,
                    repeated,
                )
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
        """Decode what arrived into the open files (a row group per batch) and commit them when due."""
        now = time.monotonic()
        if now < st.retry_at and not force:
            return  # the store failed: the stream is paused until retry_at
        interval = self.cfg.flush_interval
        due = (
            force
            or st.sync_requested
            or (st.rows and now - st.first_row_at >= interval)
            or (st.writer.opened_at is not None and now - st.writer.opened_at >= interval)
        )
        started = time.perf_counter()
        decoded = 0
        ok = True
        # bounded batches: memory is one batch, however far behind the flusher is; and only what
        # had arrived when the flush began, so a relay that never pauses cannot keep the loop
        # here (other clusters, progress and compaction wait for it to come back)
        budget = len(st.rows)
        while ok and budget > 0 and st.rows and (due or len(st.rows) >= DECODE_BATCH):
            take = min(len(st.rows), DECODE_BATCH, budget)
            budget -= take
            rows = [st.rows.popleft() for _ in range(take)]
            st.rows_bytes -= sum(map(len, rows))
            decoded += take
            ok = self._decode_into_files(st, rows)
            if ok and st.writer.rows >= self.cfg.flush_rows:
                ok = self._commit(st)
        with st.lock:
            st.sync_requested = False
            st.lock.notify_all()  # rows are decoded: a waiting _since() may read newest_ns
        if ok and st.writer.rows and due:
            self._commit(st)
        self.metrics.buffered.labels(st.relay.cluster).set(st.buffered)
        if decoded:
            self.metrics.flush_seconds.labels(st.relay.cluster).observe(
                time.perf_counter() - started
            )
            pa.default_memory_pool().release_unused()  # give freed batch memory back to the OS

    def _decode_into_files(self, st: ClusterState, rows: list[bytes]) -> bool:
        cluster = st.relay.cluster
        m = self.metrics
        dec = decode.decode_responses(rows)
        for idx, reason in dec.errors[:5]:
            log.warning("[%s] undecodable response (%d bytes): %s", cluster, len(rows[idx]), reason)
        if dec.errors:
            m.malformed.labels(cluster).inc(len(dec.errors))
        flows, events = decode.split_responses(dec)
        m.flows_received.labels(cluster).inc(flows.num_rows)
        self._count_events(st, events)
        flows, dups, keys = st.deduper.filter(flows)
        if dups:
            m.duplicates.labels(cluster).inc(dups)
        newest = pc.max(flows.column("time")).value if flows.num_rows else None
        if newest is not None and (st.newest_ns is None or newest > st.newest_ns):
            st.newest_ns = newest
        if newest is not None and (st.stream_newest is None or newest > st.stream_newest):
            st.stream_newest = newest
        if not (flows.num_rows or events.num_rows):
            return True
        before = st.writer.rows
        try:
            st.writer.write(storage.to_storage(flows), events)
        except StoreError as exc:
            self._store_failed(st, exc, keys, before + flows.num_rows + events.num_rows)
            return False
        st.pending_keys.extend(keys)
        return True

    def _commit(self, st: ClusterState) -> bool:
        cluster = st.relay.cluster
        rows, newest = st.writer.rows, st.writer.newest_ns
        try:
            result = st.writer.commit()
        except StoreError as exc:
            self._store_failed(st, exc, [], rows)
            return False
        st.pending_keys = []
        st.unstored = 0  # what a failure dropped has been asked for again and is coming in
        if st.store_error_logged:
            log.info("[%s] store writable again", cluster)
            st.store_error_logged = 0.0
        st.retry_delay = 0.0
        st.stored += result.flows
        st.window_flows += result.flows
        self.metrics.flows_stored.labels(cluster).inc(result.flows)
        self.metrics.store_bytes.labels(cluster).inc(result.bytes)
        self.metrics.last_flush.labels(cluster).set(time.time())
        if newest is not None and (st.committed_ns is None or newest > st.committed_ns):
            st.committed_ns = newest
            self.metrics.newest_flow.labels(cluster).set(newest / 1e9)
        with st.lock:
            if st.resend_until is not None and (st.stream_newest or 0) > st.resend_until:
                st.resend_until = None  # the resend is over: new flows only from here on
            if st.resend_until is None:
                # committed keys are not needed while streaming: a reconnect reloads the
                # overlap's keys from the store, so memory does not grow with the flow rate
                st.deduper.clear()
        return True

    def _store_failed(
        self, st: ClusterState, exc: StoreError, keys: list, uncommitted: int
    ) -> None:
        """Drop what was not committed and ask Relay for it again once the store may work."""
        cluster = st.relay.cluster
        now = time.monotonic()
        st.deduper.forget(st.pending_keys + keys)
        st.pending_keys = []
        st.paused = True
        st.failures += 1
        dropped = uncommitted + len(st.rows)
        st.rows.clear()
        st.rows_bytes = 0
        st.newest_ns = st.committed_ns  # resume from the last committed flow
        st.retry_delay = min(max(st.retry_delay * 2, 0.5), 10.0)
        st.retry_at = now + st.retry_delay
        st.unstored += dropped
        if st.stream is not None and not self._stop.is_set():
            st.stream.pause(st.retry_delay)
        self.metrics.flush_errors.labels(cluster).inc()
        if now - st.store_error_logged >= 30:
            log.error(
                "[%s] %s; %d uncommitted flows dropped from memory, asking Relay for them again in %.1fs",
                cluster,
                exc,
                dropped,
                st.retry_delay,
            )
            st.store_error_logged = now

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
                    log.warning(
                        "[%s] %s: %s %s",
                        cluster,
                        state,
                        ", ".join(status["node_names"]),
                        status["message"],
                    )

    def _due(self, st: ClusterState, now: float) -> bool:
        if now < st.retry_at:
            return False
        if st.sync_requested or len(st.rows) >= DECODE_BATCH:
            return True
        if st.rows and now - st.first_row_at >= self.cfg.flush_interval:
            return True
        return (
            st.writer.opened_at is not None and now - st.writer.opened_at >= self.cfg.flush_interval
        )

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
            st.thread = threading.Thread(
                target=self._run_stream, args=(st,), name=f"stream-{st.relay.cluster}", daemon=True
            )
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
            if self._compactor is not None and self._compactor.poll() is not None:
                self._reap_compaction()
            if self.cfg.compact_every and now - last_compact >= self.cfg.compact_every:
                self._compact()
                last_compact = now
        for st in self.clusters.values():
            if st.thread:
                st.thread.join(timeout=5)
        self._stop_compaction()
        unstored = 0
        for st in self.clusters.values():
            failures = st.failures
            while st.rows or st.writer.rows:
                self.flush(st, force=True)
                if st.failures > failures:
                    break  # the store still refuses: stop trying
            unstored += st.unstored
            if st.unstored:
                log.error(
                    "[%s] %d flows received since the last commit could not be stored; the next "
                    "start asks Relay for them again",
                    st.relay.cluster,
                    st.unstored,
                )
        if self.fatal:
            raise CollectError(self.fatal)
        return unstored

    def _progress(self, elapsed: float) -> None:
        parts = []
        for name, st in self.clusters.items():
            rate = st.window_flows / elapsed if elapsed > 0 else 0.0
            state = "connected" if st.stream and st.stream.state.connected else "disconnected"
            parts.append(
                f"{name}: {rate:,.0f} flows/s, {st.stored:,} stored, {st.lost} lost, {state}"
            )
            st.window_flows = 0
        log.info("progress: %s", "; ".join(parts))

    def _compact(self) -> None:
        """Start `flowpipe compact` in a child process unless one still runs: merges take
        seconds to minutes of CPU and ~150 MB of memory, which stay out of the collector (no
        GIL contention with receiving, memory back to the OS when the child exits)."""
        if self._compactor is not None:
            if self._compactor.poll() is None:
                return
            self._reap_compaction()
        cmd = [
            sys.executable,
            "-m",
            "flowpipe.cli",
            "compact",
            "--store",
            str(self.store.root),
            "--no-wait",
            "--settle",
            f"{self.cfg.compact_settle}s",
        ]
        if self.cfg.keep is not None:
            cmd += ["--keep", f"{self.cfg.keep}s"]
        try:
            self._compactor = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        except OSError as exc:
            log.error("compaction could not start: %s", exc)

    def _reap_compaction(self) -> None:
        """Log how the finished compaction child went."""
        proc, self._compactor = self._compactor, None
        if proc is None:
            return
        out, err = proc.communicate()
        if proc.returncode == 0:
            summary = out.strip().splitlines()[-1] if out.strip() else ""
            if summary and not summary.startswith(("merged 0 files into 0", "skipped")):
                log.info("compaction: %s", summary)
        else:
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            log.error("compaction failed: %s", lines[-1] if lines else f"exit {proc.returncode}")

    def _stop_compaction(self) -> None:
        """Ask a running compaction child to stop (it drops its unfinished merge) and wait."""
        if self._compactor is None:
            return
        if self._compactor.poll() is None:
            self._compactor.send_signal(signal.SIGTERM)
        try:
            self._compactor.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._compactor.kill()
        self._reap_compaction()


def _fmt_ns(ns: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="milliseconds")


def _write_database(store: Store) -> None:
    """Refresh <store>/flowpipe.duckdb in a short-lived process: DuckDB stays out of the
    collector's memory (about 50 MB of a long-running process)."""
    code = "import sys; from flowpipe.store.layout import Store; from flowpipe.views import catalog; catalog.write_database(Store(sys.argv[1]))"
    res = subprocess.run(
        [sys.executable, "-c", code, str(store.root)], capture_output=True, text=True
    )
    if res.returncode != 0:
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        raise StoreError(
            lines[-1].split(": ", 1)[-1] if lines else f"cannot write {store.root}/flowpipe.duckdb"
        )
