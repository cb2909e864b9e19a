"""`flowpipe collect`: one resumable stream per relay, buffered, deduplicated, committed to the store."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry

from flowpipe.codec import decode, storage
from flowpipe.common import times
from flowpipe.common.throttle import LogThrottle, Tally
from flowpipe.errors import FlowpipeError, StoreError
from flowpipe.export.metrics import CollectorMetrics
from flowpipe.ingest.children import Compactor, database_error, start_database
from flowpipe.ingest.config import CollectConfig, RelayConfig
from flowpipe.ingest.dedup import Deduper
from flowpipe.ingest.receiver import Receiver
from flowpipe.ingest.resume import Attempt, ResumePoint
from flowpipe.ingest.stream import FatalStreamError, FlowStream, RetryLater
from flowpipe.store.layout import Store
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
STUCK_WARN_AFTER = 3  # attempts in a row cut before anything new: WARNING (and the metric's alert)


class CollectError(FlowpipeError):
    """The collector had to stop (fatal relay error, or flows it could not store)."""


@dataclass
class Inbox:
    """Raw responses on their way from the stream thread to the flusher.

    The lock also guards what a re-dial reads and a store failure changes (ClusterState.resume,
    trouble.paused): the resume point and the pause are decided in one order."""

    lock: threading.Condition = field(default_factory=threading.Condition)
    rows: deque = field(
        default_factory=deque
    )  # appended by the stream thread, taken by the flusher
    nbytes: int = 0  # bytes of rows (back-pressure); changed only under the lock
    first_at: float = 0.0  # when the oldest row arrived
    sync_requested: bool = False  # a re-dial waits until every row is decoded (resume point)

    def put(self, batch: list[bytes]) -> int:
        """Append a batch; return the bytes now held."""
        size = sum(map(len, batch))
        with self.lock:
            if not self.rows:
                self.first_at = time.monotonic()
            self.rows.extend(batch)
            self.nbytes += size
            return self.nbytes

    def take(self, n: int) -> list[bytes]:
        """The n oldest rows, out of the inbox (wakes a stream waiting for room)."""
        with self.lock:
            rows = [self.rows.popleft() for _ in range(min(n, len(self.rows)))]
            self.nbytes -= sum(map(len, rows))
            self.lock.notify_all()
        return rows

    def clear(self) -> int:
        """Drop every row; return how many there were."""
        with self.lock:
            n = len(self.rows)
            self.rows.clear()
            self.nbytes = 0
            self.lock.notify_all()
        return n


@dataclass
class StoreTrouble:
    """After a failed commit: the stream pauses, and what was dropped is asked for again."""

    failing: bool = False  # since the last failure, no commit has worked yet
    paused: bool = False  # until the stream re-dials: drop what still arrives
    unstored: int = 0  # flows dropped since the last successful commit
    failures: int = 0
    retry_at: float = 0.0  # next attempt to commit
    delay: float = 0.0


@dataclass
class ClusterState:
    """What the collector holds for one cluster between receiving and committing."""

    relay: RelayConfig
    resume: ResumePoint
    writer: StreamWriter  # open files of decoded, deduplicated, uncommitted flows
    logs: LogThrottle  # repeated warnings of this cluster: one line per key and interval
    deduper: Deduper = field(default_factory=Deduper)
    pending_keys: list = field(default_factory=list)  # dedup keys of the rows in the open files
    inbox: Inbox = field(default_factory=Inbox)
    trouble: StoreTrouble = field(default_factory=StoreTrouble)
    stored: int = 0
    lost: int = 0
    window_flows: int = 0  # stored since the last progress line
    stream: FlowStream | None = None
    thread: threading.Thread | None = None
    fatal: str | None = None

    @property
    def buffered(self) -> int:
        return len(self.inbox.rows) + self.writer.rows


class Collector:
    """Runs the streams and the flush loop; stop() (or SIGINT/SIGTERM, or setting `stop`) flushes
    and returns."""

    def __init__(
        self,
        cfg: CollectConfig,
        store: Store,
        registry: CollectorRegistry | None = None,
        *,
        stop: threading.Event | None = None,
    ):
        self.cfg = cfg
        self.store = store
        self.registry = registry or CollectorRegistry()
        self.metrics = CollectorMetrics(self.registry)
        self.clusters: dict[str, ClusterState] = {}
        self._stop = stop or threading.Event()  # may be set before run(): it then returns at once
        self._wake = threading.Event()
        self.fatal: str | None = None
        self._compactor = Compactor(store, settle=cfg.compact_settle, keep=cfg.keep)
        self._database: subprocess.Popen | None = None  # writing flowpipe.duckdb at start

    # ------------------------------------------------------------------ set-up

    def _prepare(self) -> None:
        self.store.ensure()
        self._database = start_database(self.store)
        if n := self.store.clean_incoming():
            log.info("removed %d temporary files left by an interrupted writer", n)

        for relay in self.cfg.relays:
            with self.store.read_lock():  # a compaction swap must not hide the newest files
                last = self.store.last_time(relay.cluster)
            st = ClusterState(
                relay=relay,
                resume=ResumePoint(last, int(self.cfg.resume_overlap * 1e9)),
                writer=StreamWriter(self.store, relay.cluster),
                logs=LogThrottle(self.cfg.log_every),
            )
            if last is not None:
                log.info("[%s] resuming after %s", relay.cluster, _fmt_ns(last))
            self.metrics.init_cluster(relay.cluster)
            self.clusters[relay.cluster] = st

    def _since(self, st: ClusterState, attempt: Attempt | None) -> int | None:
        # Called by the stream thread before each dial: let the flusher decode what is
        # received first, so the resume point covers every flow already received. Asked for
        # even when the inbox is empty: a flush may be decoding rows it took from it just now.
        deadline = time.monotonic() + 5
        inbox = st.inbox
        with inbox.lock:
            if attempt is not None or inbox.rows:  # (the first dial has nothing to wait for)
                inbox.sync_requested = True  # flush() clears it once every row is decoded
                self._wake.set()
            while inbox.sync_requested and not self._stop.is_set() and time.monotonic() < deadline:
                inbox.lock.wait(0.1)
            if not inbox.sync_requested:  # every flow of the last attempt is decoded
                self._judge(st, attempt)
            since = st.resume.next_since()
            if since is None:
                since = self._first_since()
            # about to dial from the resume point: what comes now is wanted (a store failure
            # after this point pauses the stream again, and its dial is not made)
            st.trouble.paused = False
            load_keys = st.resume.resend_until is not None and st.resume.committed_ns is not None
        if load_keys:
            # stored keys of the overlap; the decoded but uncommitted ones are in the deduper.
            # Under the read lock: a compaction swapping files meanwhile would fail the read
            try:
                with self.store.read_lock():
                    keys = self.store.keys_between(st.relay.cluster, since)
            except StoreError as exc:
                raise RetryLater(f"cannot read the stored flows to resume from: {exc}") from exc
            st.deduper.remember(keys)
        return since

    def _first_since(self) -> int | None:
        """Nothing stored for the cluster yet: --since, else everything Relay holds."""
        if self.cfg.since is None:
            return 1_000_000_000
        if self.cfg.since.strip().lower() == "now":
            return None  # only new flows
        return times.parse_time_ns(self.cfg.since, "--since")

    def _judge(self, st: ClusterState, attempt: Attempt | None) -> None:
        """Count an attempt cut before it brought anything new; warn when it keeps happening."""
        before = st.resume.stuck
        st.resume.judge(attempt)
        self._stuck_changed(st, before, attempt.received if attempt else 0)

    def _stuck_changed(self, st: ClusterState, before: int, received: int = 0) -> None:
        cluster, stuck = st.relay.cluster, st.resume.stuck
        if stuck == before:
            return
        self.metrics.attempts_without_progress.labels(cluster).set(stuck)
        if stuck >= STUCK_WARN_AFTER and st.logs.add(("stuck",)):
            log.warning(
                "[%s] relay %s: %d attempts in a row were cut before they brought a new flow "
                "(the last after %d responses); asking from the newest stored flow",
                cluster,
                st.relay.address,
                stuck,
                received,
            )
        elif stuck == 0 and before >= STUCK_WARN_AFTER:
            log.info("[%s] relay %s delivers new flows again", cluster, st.relay.address)
            st.logs.reset(("stuck",))

    # ------------------------------------------------------------------ streams

    def _on_messages(self, st: ClusterState, batch: list[bytes]) -> None:
        inbox = st.inbox
        with inbox.lock:
            if st.trouble.paused:
                return  # sent before the hang-up; the re-dial asks for it again
            held = inbox.put(batch)
        if len(inbox.rows) >= DECODE_BATCH:
            self._wake.set()
        if held >= self.cfg.max_buffer_bytes:
            self._backpressure(st)

    def _backpressure(self, st: ClusterState) -> None:
        """Stop reading the relay until the flusher catches up (or the store recovers)."""
        inbox = st.inbox
        with inbox.lock:
            while inbox.nbytes >= self.cfg.max_buffer_bytes and not self._stop.is_set():
                self._wake.set()
                inbox.lock.wait(0.5)

    def _on_event(self, st: ClusterState, kind: str, detail: str) -> None:
        cluster, address = st.relay.cluster, st.relay.address
        m = self.metrics
        if kind == "connected":
            m.relay_connected.labels(cluster).set(1)
            if detail == "first":
                log.info("[%s] streaming from %s%s", cluster, address, _filters_note(st.relay))
                return
            m.reconnects.labels(cluster).inc()
            # a proxy that cuts streams often would otherwise log a line per cut
            if tally := st.logs.add(("resumed",)):
                again = f", {tally.calls} times since the last line" if tally.calls > 1 else ""
                log.info("[%s] streaming from %s (resumed%s)", cluster, address, again)
        elif kind == "disconnected":
            m.relay_connected.labels(cluster).set(0)
        elif kind == "error":
            code, _, text = detail.partition("|")
            m.stream_errors.labels(cluster, code).inc()
            # a relay that is down fails every attempt: say so at once, then once an interval
            if tally := st.logs.add(("error", detail)):
                repeated = (
                    f" (x{tally.calls} since last logged)" if tally.last_line is not None else ""
                )
                log.warning(
                    "[%s] relay %s: %s: %s; retrying%s", cluster, address, code, text, repeated
                )

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
        inbox = st.inbox
        if now < st.trouble.retry_at and not force:
            _ack_sync(inbox)  # nothing is decoded meanwhile (the failure emptied the inbox)
            return  # the store failed: the stream is paused until retry_at
        interval = self.cfg.flush_interval
        due = (
            force
            or inbox.sync_requested
            or (inbox.rows and now - inbox.first_at >= interval)
            or (st.writer.opened_at is not None and now - st.writer.opened_at >= interval)
        )
        started = time.perf_counter()
        decoded = 0
        ok = True
        # bounded batches: memory is one batch, however far behind the flusher is; and only what
        # had arrived when the flush began, so a relay that never pauses cannot keep the loop
        # here (other clusters, progress and compaction wait for it to come back)
        budget = len(inbox.rows)
        while ok and budget > 0 and inbox.rows and (due or len(inbox.rows) >= DECODE_BATCH):
            take = min(len(inbox.rows), DECODE_BATCH, budget)
            budget -= take
            decoded += take
            ok = self._decode_into_files(st, inbox.take(take))
            if ok and st.writer.rows >= self.cfg.flush_rows:
                ok = self._commit(st)
        _ack_sync(inbox)
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
        stuck = st.resume.stuck
        st.resume.decoded(newest, flows.num_rows)
        self._stuck_changed(st, stuck)
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
        trouble = st.trouble
        trouble.unstored = 0  # what a failure dropped has been asked for again and is coming in
        trouble.delay = 0.0
        if trouble.failing:
            log.info("[%s] store writable again", cluster)
            trouble.failing = False
            st.logs.reset(("store",))
        st.stored += result.flows
        st.window_flows += result.flows
        self.metrics.flows_stored.labels(cluster).inc(result.flows)
        self.metrics.store_bytes.labels(cluster).inc(result.bytes)
        self.metrics.last_flush.labels(cluster).set(time.time())
        if st.resume.committed(newest):
            self.metrics.newest_flow.labels(cluster).set(newest / 1e9)
        with st.inbox.lock:
            if st.resume.resend_over():
                # committed keys are not needed while streaming: a reconnect reloads the
                # overlap's keys from the store, so memory does not grow with the flow rate
                st.deduper.clear()
        return True

    def _store_failed(
        self, st: ClusterState, exc: StoreError, keys: list, uncommitted: int
    ) -> None:
        """Drop what was not committed and ask Relay for it again once the store may work."""
        cluster = st.relay.cluster
        trouble = st.trouble
        st.deduper.forget(st.pending_keys + keys)
        st.pending_keys = []
        with st.inbox.lock:  # not between a re-dial's resume point and its un-pausing
            trouble.paused = trouble.failing = True
            trouble.failures += 1
            dropped = uncommitted + st.inbox.clear()
            st.resume.rewind()  # resume from the last committed flow
            trouble.delay = min(max(trouble.delay * 2, 0.5), 10.0)
            trouble.retry_at = time.monotonic() + trouble.delay
            trouble.unstored += dropped
        if st.stream is not None and not self._stop.is_set():
            st.stream.pause(trouble.delay)
        self.metrics.flush_errors.labels(cluster).inc()
        if st.logs.add(("store",)):
            log.error(
                "[%s] %s; %d uncommitted flows dropped from memory, asking Relay for them again in %.1fs",
                cluster,
                exc,
                dropped,
                trouble.delay,
            )

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
                # a relay under pressure reports losses many times a second: sum them per line
                if tally := st.logs.add(("lost", source), n):
                    _log_lost(cluster, source, tally)
        for status in events.column("node_status").to_pylist():
            if status:
                state = NODE_STATES.get(status["state_change"], str(status["state_change"]))
                self.metrics.node_status.labels(cluster, state).inc()
                nodes = ", ".join(status["node_names"])
                bad = state in ("NODE_UNAVAILABLE", "NODE_ERROR", "NODE_GONE")
                if bad and (tally := st.logs.add(("node", state, nodes))):
                    again = f" (x{tally.calls} since last logged)" if tally.calls > 1 else ""
                    log.warning("[%s] %s: %s %s%s", cluster, state, nodes, status["message"], again)

    def _due(self, st: ClusterState, now: float) -> bool:
        inbox = st.inbox
        if inbox.sync_requested:
            return True  # a re-dial waits (during a store failure, flush() only answers it)
        if now < st.trouble.retry_at:
            return False
        if len(inbox.rows) >= DECODE_BATCH:
            return True
        if inbox.rows and now - inbox.first_at >= self.cfg.flush_interval:
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
            with st.inbox.lock:
                st.inbox.lock.notify_all()

    def run(self, *, install_signals: bool = True) -> int:
        """Collect until stopped; return the number of flows that could not be stored (0 = clean)."""
        if install_signals:  # first: a stop asked for during start-up is a clean stop too
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self.stop())
        if self._stop.is_set():
            return 0  # stopped before anything was received: nothing to flush
        # the receiving processes import grpc while the store is prepared
        receivers = {relay.cluster: Receiver(relay.name) for relay in self.cfg.relays}
        try:
            for receiver in receivers.values():
                receiver.start()
            self._prepare()
        except BaseException:
            for receiver in receivers.values():
                receiver.close()
            raise
        for st in self.clusters.values():
            st.stream = FlowStream(
                st.relay,
                self.cfg,
                resume_since=lambda attempt, st=st: self._since(st, attempt),
                on_messages=lambda batch, st=st: self._on_messages(st, batch),
                on_event=lambda kind, detail, st=st: self._on_event(st, kind, detail),
                receiver=receivers[st.relay.cluster],
            )
            st.thread = threading.Thread(
                target=self._run_stream, args=(st,), name=f"stream-{st.relay.cluster}", daemon=True
            )
        for st in self.clusters.values():
            if not self._stop.is_set():
                st.thread.start()
        # the streams dial, receive and commit while the views database is written (seconds on
        # a busy machine); if it cannot be written, the collector stops with its one line
        database_failed = None
        last_progress = time.monotonic()
        last_compact = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(0.1)
            self._wake.clear()
            if self._database is not None and self._database.poll() is not None:
                database_failed = database_error(self._database, self.store)
                self._database = None
                if database_failed:
                    break
            now = time.monotonic()
            for st in self.clusters.values():
                if self._due(st, now):
                    self.flush(st)
            if not self.cfg.quiet and now - last_progress >= self.cfg.progress_every:
                self._progress(now - last_progress)
                last_progress = now
            self._compactor.poll()
            if self.cfg.compact_every and now - last_compact >= self.cfg.compact_every:
                self._compactor.start()
                last_compact = now
        self.stop()  # the event may have been set from outside: stop the streams too
        for st in self.clusters.values():
            if st.thread and st.thread.is_alive():
                st.thread.join(timeout=5)
            st.stream.close()  # (a stream stopped before its thread started still has one)
        self._compactor.stop()
        if self._database is not None:  # stopped while it is still written: let it finish
            database_failed = database_error(self._database, self.store)
            self._database = None
        unstored = 0
        for st in self.clusters.values():
            failures = st.trouble.failures
            while st.inbox.rows or st.writer.rows:
                self.flush(st, force=True)
                if st.trouble.failures > failures:
                    break  # the store still refuses: stop trying
            for key, tally in st.logs.pending():
                if key[0] == "lost":  # losses counted since the last line get their line
                    _log_lost(st.relay.cluster, key[1], tally)
            unstored += st.trouble.unstored
            if st.trouble.unstored:
                log.error(
                    "[%s] %d flows received since the last commit could not be stored; the next "
                    "start asks Relay for them again",
                    st.relay.cluster,
                    st.trouble.unstored,
                )
        if self.fatal:
            raise CollectError(self.fatal)
        if database_failed:
            raise StoreError(database_failed)
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


def _ack_sync(inbox: Inbox) -> None:
    """Tell a waiting re-dial that every row received is decoded (if so; rows that arrived
    during this flush, beyond its budget, wait for the next one)."""
    with inbox.lock:
        if inbox.sync_requested and not inbox.rows:
            inbox.sync_requested = False
            inbox.lock.notify_all()


def _log_lost(cluster: str, source: str, tally: Tally) -> None:
    """One line for the losses of a source since its last line (exact counts: the metric and
    the store's lost_events view have every report)."""
    if tally.last_line is None:
        log.warning(
            "[%s] relay reports %d events lost (%s); further reports are summed, a line per interval",
            cluster,
            tally.amount,
            source,
        )
    else:
        log.warning(
            "[%s] relay reports %d events lost (%s) in %d reports since the last line; %d since start",
            cluster,
            tally.amount,
            source,
            tally.calls,
            tally.total,
        )


def _filters_note(relay: RelayConfig) -> str:
    """' with 2 allow and 1 deny filters' for the first streaming line (empty without filters)."""
    if not (relay.allow or relay.deny):
        return ""
    return (
        f" with {len(relay.allow)} allow and {len(relay.deny)} deny filters"
        " (`flowpipe collect --print-raw-filters` prints them)"
    )


def _fmt_ns(ns: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="milliseconds")
