"""`flowpipe export`: evaluate rules and count flows on a schedule; serve the last results to Prometheus."""

from __future__ import annotations

import gzip
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from flowpipe.errors import ConfigError, FlowpipeError
from flowpipe.export.counters import COUNTERS, StoreCounters
from flowpipe.export.metrics import EXPORTER_METRICS, parse_listen
from flowpipe.rules import check
from flowpipe.rules import rulefile as rules_mod
from flowpipe.rules.status import STATUSES, Status, rank
from flowpipe.store.layout import Store

log = logging.getLogger("flowpipe.export")

HEALTHY_INTERVALS = (
    3  # /healthz fails when the last good evaluation is older than this many intervals
)


@dataclass(frozen=True)
class Snapshot:
    """The metrics of one evaluation, rendered once so a scrape only copies bytes."""

    families: tuple
    body: bytes
    gzipped: bytes


class _Families:
    """The minimal registry interface generate_latest needs."""

    def __init__(self, families: Sequence):
        self.families = families

    def collect(self) -> Iterator:
        return iter(self.families)


def _render(families: Sequence) -> Snapshot:
    body = generate_latest(_Families(families))
    return Snapshot(tuple(families), body, gzip.compress(body, 6))


class Exporter:
    """Evaluates every rule file and the store counters in a background thread; scrapes never evaluate."""

    def __init__(
        self,
        store: Store,
        rule_paths: Sequence[str | Path],
        *,
        interval: float = 30.0,
        window: float = 300.0,
        rule_timeout: float = 30.0,
        memory_limit: str = "1GB",
        live: CollectorRegistry | None = None,
    ):
        if interval <= 0 or window <= 0:
            raise ConfigError(
                f"--interval and --window must be positive (got {interval:g}s, {window:g}s)"
            )
        self.store = store
        self.paths = [str(p) for p in rule_paths]
        for rf in rules_mod.load(self.paths):  # refuse unusable rule files before serving anything
            check.validate(rf)
        self.interval, self.window = interval, window
        self.rule_timeout, self.memory_limit = rule_timeout, memory_limit
        self.live = (
            live  # the in-process collector's registry, rendered per scrape (it is live state)
        )
        self.counters = StoreCounters(store, memory_limit=memory_limit)
        self.results: list[check.RuleResult] = []
        self.stage_status: dict[tuple[str, str], str] = {}
        self.evaluations = 0
        self.errors = {"rule": 0, "check": 0, "store": 0}
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_duration = 0.0
        self._snapshot = _render(self._families())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> bool:
        """Advance the store counters and run every rule once, then publish; True when nothing failed."""
        started = time.monotonic()
        problems = []
        try:
            self.counters.update()
        except (FlowpipeError, duckdb.Error, OSError) as exc:
            self.errors["store"] += 1
            problems.append(f"store: {exc}")
        try:
            self._check()
        except (FlowpipeError, duckdb.Error, OSError) as exc:
            # keep the previous conformance results; /healthz turns 503 if this persists
            self.errors["check"] += 1
            problems.append(f"rules: {exc}")
        self.evaluations += 1
        self.last_duration = time.monotonic() - started
        if problems:
            self.last_error = "; ".join(problems)
            log.error("evaluation failed: %s", self.last_error)
        else:
            self.last_success, self.last_error = time.time(), None
        self._snapshot = _render(
            self._families()
        )  # one reference swap: scrapes see old or new, never half
        return not problems

    def _check(self) -> None:
        clusters = self.store.clusters()
        if not clusters:  # nothing collected yet: no conformance series rather than an error
            self.results, self.stage_status = [], {}
            return
        since = datetime.now(UTC) - timedelta(seconds=self.window)
        report = check.run_check(
            self.store,
            self.paths,
            since=since,
            clusters=clusters,
            rule_timeout=self.rule_timeout,
            memory_limit=self.memory_limit,
            samples=0,
        )
        self.errors["rule"] += sum(r.status == Status.ERROR for r in report.results)
        self.results, self.stage_status = report.results, report.stage_status()

    def _families(self) -> list:
        m = EXPORTER_METRICS
        status, evidence, violations, duration = (
            m[n].family()
            for n in (
                "rule_status",
                "rule_evidence_flows",
                "rule_violation_flows",
                "rule_duration_seconds",
            )
        )
        worst: dict[tuple[str, str, str], check.RuleResult] = {}
        for r in self.results:  # two files may name a rule alike within a stage: report the worse
            key = (r.stage, r.rule, r.cluster)
            if key not in worst or rank(r.status) > rank(worst[key].status):
                worst[key] = r
        for key, r in sorted(worst.items()):
            for s in STATUSES:
                status.add_metric([*key, str(s)], 1.0 if r.status == s else 0.0)
            evidence.add_metric(list(key), r.evidence)
            violations.add_metric(list(key), r.violations)
            duration.add_metric(list(key), r.duration_s)
        conformant = m["stage_conformant"].family()
        for (stage, cluster), s in sorted(self.stage_status.items()):
            conformant.add_metric([stage, cluster], 1.0 if s == Status.PASS else 0.0)
        fams = [status, evidence, violations, duration, conformant]
        fams.append(_one(m["evaluation_duration_seconds"], self.last_duration))
        if self.last_success is not None:
            fams.append(_one(m["evaluation_last_success_timestamp_seconds"], self.last_success))
        fams.append(_one(m["evaluation_window_seconds"], self.window))
        fams.append(_one(m["evaluations"], self.evaluations))
        errors = m["evaluation_errors"].family()
        for kind, n in sorted(self.errors.items()):
            errors.add_metric([kind], n)
        fams.append(errors)
        health = {
            n: m[n].family()
            for n in (
                "store_flows",
                "store_files",
                "store_newest_flow_timestamp_seconds",
                "store_last_flush_timestamp_seconds",
            )
        }
        for cluster, h in sorted(self.counters.health.items()):
            health["store_flows"].add_metric([cluster], h.flows)
            health["store_files"].add_metric([cluster], h.files)
            if h.newest_ns:
                health["store_newest_flow_timestamp_seconds"].add_metric(
                    [cluster], h.newest_ns / 1e9
                )
            if h.last_flush:
                health["store_last_flush_timestamp_seconds"].add_metric([cluster], h.last_flush)
        fams += health.values()
        for name in COUNTERS:
            fam = m[name].family()
            for cluster, labels, n in self.counters.series(name):
                fam.add_metric([cluster, *labels], n)
            fams.append(fam)
        return fams

    # ------------------------------------------------------------------ serving

    def collect(self) -> Iterator:
        """prometheus_client Collector interface: the last evaluation's families."""
        return iter(self._snapshot.families)

    def describe(self) -> list:
        return []  # registering must not trigger anything; names are checked in tests

    def render(self, accept_gzip: bool) -> tuple[bytes, bool]:
        """(body, gzipped) of a scrape: the last snapshot, plus the live collector metrics if any."""
        snap = self._snapshot
        if self.live is None:
            return (snap.gzipped, True) if accept_gzip else (snap.body, False)
        body = snap.body + generate_latest(self.live)
        return (gzip.compress(body, 1), True) if accept_gzip else (body, False)

    def health(self) -> tuple[bool, str]:
        """(healthy, reason): the last good evaluation is at most 3 intervals old."""
        why = f"; last error: {self.last_error}" if self.last_error else ""
        if self.last_success is None:
            return False, f"no evaluation has finished yet{why}"
        age = time.time() - self.last_success
        if age > HEALTHY_INTERVALS * self.interval:
            return (
                False,
                f"last good evaluation {age:.0f}s ago (more than {HEALTHY_INTERVALS} x {self.interval:g}s){why}",
            )
        return (
            True,
            f"ok: last evaluation finished {age:.0f}s ago, {len(self.results)} rule results",
        )

    def serve(self, listen: str) -> str:
        """Serve /metrics and /healthz on listen in a background thread; return the bound HOST:PORT."""
        host, port = parse_listen(listen)
        handler = type("Handler", (_Handler,), {"exporter": self})
        try:
            self._server = _Server((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
        threading.Thread(target=self._server.serve_forever, name="export-http", daemon=True).start()
        return f"{host}:{self._server.server_address[1]}"

    def start(self) -> None:
        """Evaluate now and then every interval, in a background thread."""
        self._thread = threading.Thread(target=self._loop, name="export-eval", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.evaluate()
            except Exception:  # a bug must not end evaluations silently; /healthz will say so
                self.errors["check"] += 1
                self.last_error = "evaluation crashed (see log)"
                log.exception("evaluation crashed")
            next_at += self.interval
            now = time.monotonic()
            if (
                next_at < now
            ):  # an evaluation longer than the interval: start the next one right away
                next_at = now
            self._stop.wait(next_at - now)

    def stop(self) -> None:
        """Stop evaluating and serving."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=self.rule_timeout + 5)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many scrapers connecting at once
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection
    disable_nagle_algorithm = True  # else a response waits ~40 ms for the client's delayed ACK
    exporter: Exporter

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = urlsplit(self.path).path
        if path == "/metrics":
            gz = "gzip" in self.headers.get("Accept-Encoding", "")
            body, gzipped = self.exporter.render(gz)
            self._send(200, body, CONTENT_TYPE_LATEST, gzipped)
        elif path == "/healthz":
            ok, reason = self.exporter.health()
            self._send(200 if ok else 503, (reason + "\n").encode(), "text/plain; charset=utf-8")
        elif path == "/":
            self._send(200, b"flowpipe export: /metrics /healthz\n", "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

    def _send(self, code: int, body: bytes, ctype: str, gzipped: bool = False) -> None:
        # one write for headers and body: the cheapest response http.server can make
        head = [
            f"HTTP/1.1 {code} {self.responses[code][0]}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
        ]
        if gzipped:
            head.append("Content-Encoding: gzip")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - scrapes are not worth a log line
        pass


def _one(spec, value: float):
    fam = spec.family()
    fam.add_metric([], value)
    return fam


def run(
    store: Store,
    rule_paths: Sequence[str | Path],
    *,
    listen: str = "0.0.0.0:9965",
    interval: float = 30.0,
    window: float = 300.0,
    rule_timeout: float = 30.0,
    memory_limit: str = "1GB",
    collect_config: str | None = None,
    on_ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """`flowpipe export`: serve until SIGINT/SIGTERM (or stop is set), optionally collecting in-process."""
    collector = None
    if collect_config:
        from flowpipe.ingest import collector as collect_mod
        from flowpipe.ingest import config as cfgmod

        cfg = cfgmod.from_dict(cfgmod.load_file(collect_config), collect_config)
        cfg.store, cfg.metrics_listen = (
            store.url,
            None,
        )  # one store, one /metrics: the exporter's
        cfgmod.validate(cfg)
        store.ensure()
        collector = collect_mod.Collector(cfg, store)
    exporter = Exporter(
        store,
        rule_paths,
        interval=interval,
        window=window,
        rule_timeout=rule_timeout,
        memory_limit=memory_limit,
        live=collector.registry if collector else None,
    )
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    failure: list[BaseException] = []
    thread = None

    def collect() -> None:
        try:
            collector.run(install_signals=False)
        except BaseException as exc:  # surfaced in the calling thread below
            failure.append(exc)
        finally:
            stop.set()

    bound = exporter.serve(listen)  # a busy port fails before anything else starts
    try:
        if collector is not None:
            thread = threading.Thread(target=collect, name="collector", daemon=True)
            thread.start()
        exporter.start()
        if on_ready:
            extra = " (with the collector's metrics)" if collector else ""
            on_ready(
                f"serving http://{bound}/metrics{extra} and /healthz; evaluating every {interval:g}s over {window:g}s"
            )
        while not stop.wait(0.5):
            pass
    finally:
        if collector is not None:
            collector.stop()  # first: it flushes while the exporter finishes its evaluation
        exporter.stop()
        if thread is not None:
            thread.join(timeout=15)
    if failure:
        raise failure[0]
