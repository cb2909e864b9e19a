"""`flowpipe demo`: lab -> simulated relays -> collect -> check -> export -> Prometheus, all on loopback."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from flowpipe.errors import ConfigError, FlowpipeError
from flowpipe.ingest import importer
from flowpipe.lab import generate as lab
from flowpipe.rules import check
from flowpipe.rules.status import Status, stage_verdict
from flowpipe.store.layout import Store
from flowpipe.views import query

CLUSTERS = ("cluster1", "cluster2")
STAGE_GAP_S = 600  # the demo's history: each earlier stage ran this long before the next
LIVE_LEAD_S = 300  # the live stage's recorded flows start this long before now
MARKER = ".flowpipe-demo"  # only a directory holding this is ever cleaned by the demo
ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "flowpipe-alerts.yml"


@dataclass
class Child:
    """A process the demo started, with its log file."""

    name: str
    proc: subprocess.Popen
    log: Path


@dataclass
class DemoResult:
    """What the demo found: stage x cluster check status and the endpoints it served."""

    stages: dict[tuple[int, str], str] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)


def free_port(preferred: int = 0) -> int:
    """preferred if it is free on 127.0.0.1, else any free port."""
    for candidate in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return s.getsockname()[1]
    raise ConfigError("no free loopback port")


def run(
    work_dir: str | Path,
    *,
    stage: int = 5,
    variant: str | None = None,
    broken_clusters: list[str] | None = None,
    rate: float = 20.0,
    duration: float | None = None,
    prometheus: str = "prometheus",
    say: Callable[[str], None] = lambda text: None,
    stop: threading.Event | None = None,
) -> DemoResult:
    """Run the demo until duration passes, stop is set, or SIGINT/SIGTERM; every child is stopped."""
    root = _prepare_dir(Path(work_dir).absolute())
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    children: list[Child] = []
    result = DemoResult()
    try:
        _demo(
            root,
            stage,
            variant,
            broken_clusters,
            rate,
            duration,
            prometheus,
            say,
            stop,
            children,
            result,
        )
    finally:
        _stop_all(children)
    return result


def _demo(
    root, stage, variant, broken, rate, duration, prometheus, say, stop, children, result
) -> None:
    deadline = time.monotonic() + duration if duration else None
    store = Store(root / "store")
    store.ensure()
    now = time.time_ns()
    live_start = now - LIVE_LEAD_S * 1_000_000_000
    windows = {
        k: live_start - (stage - k) * STAGE_GAP_S * 1_000_000_000 for k in range(1, stage + 1)
    }
    say(f"flowpipe demo in {root}")
    live = lab.write_lab(
        root / "lab" / f"stage{stage}",
        stage,
        variant=variant,
        broken_clusters=broken,
        start_ns=live_start,
    )
    relays = {}
    for cluster, (path, count) in live.items():
        port = free_port(4245 + len(relays))
        args = [
            "replay",
            str(path),
            "--listen",
            f"127.0.0.1:{port}",
            "--plaintext",
            "--cluster",
            cluster,
            "--follow",
        ]
        if count and rate > 0:
            args += ["--rate", f"{rate:g}"]
        children.append(
            _spawn(root, f"relay-{cluster}", [sys.executable, "-m", "flowpipe.cli", *args])
        )
        relays[cluster] = port
    for cluster, port in relays.items():
        _wait_port(port, children, f"relay-{cluster}")
    config = root / "collect.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "flush_interval": "1s",
                "relays": [
                    {"cluster": c, "address": f"127.0.0.1:{p}", "plaintext": True}
                    for c, p in relays.items()
                ],
            }
        )
    )
    export_port = free_port(9965)
    children.append(
        _spawn(
            root,
            "export",
            [
                sys.executable,
                "-m",
                "flowpipe.cli",
                "export",
                "--rules",
                f"stage{stage}",
                "--store",
                str(store.root),
                "--listen",
                f"127.0.0.1:{export_port}",
                "--interval",
                "5s",
                "--window",
                "5m",
                "--collect-config",
                str(config),
            ],
        )
    )
    _wait_port(export_port, children, "export")
    # history after the collector started (it resumes from the store's newest flow): the earlier
    # stages, as if collected while each was applied
    for k in range(1, stage):
        written = lab.write_lab(root / "lab" / f"stage{k}", k, start_ns=windows[k])
        for cluster, (path, _) in written.items():
            importer.import_files(store, [str(path)], cluster=cluster)
    broke = f", {variant} on {', '.join(broken or CLUSTERS)}" if variant else ""
    history = f"stages 1-{stage - 1} imported as history; " if stage > 1 else ""
    say(
        f"  {history}stage {stage} live from relays {', '.join(f'{c}=127.0.0.1:{p}' for c, p in relays.items())}{broke}"
    )
    result.urls["metrics"] = f"http://127.0.0.1:{export_port}/metrics"
    result.urls["healthz"] = f"http://127.0.0.1:{export_port}/healthz"
    binary = shutil.which(prometheus)
    if binary:
        prom_port = free_port(9090)
        prom_config = _prometheus_config(root, export_port)
        children.append(
            _spawn(
                root,
                "prometheus",
                [
                    binary,
                    f"--config.file={prom_config}",
                    f"--storage.tsdb.path={root / 'prometheus' / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--storage.tsdb.retention.time=1d",
                ],
            )
        )
        _wait_port(prom_port, children, "prometheus")
        result.urls["prometheus"] = f"http://127.0.0.1:{prom_port}"
    else:
        say(
            f"  (no {prometheus!r} binary found: skipping Prometheus; `apt-get install prometheus` adds it)"
        )
    say("  waiting for both relays' flows to reach the store ...")
    _wait_flows(store, [c for c, (_, n) in live.items() if n], live_start, children, stop)
    for k in range(1, stage + 1):
        if stop.is_set():  # Ctrl-C during start-up: skip straight to stopping
            say("stopping ...")
            return
        # up to a second before the next stage began (the bound is inclusive, datetimes hold microseconds)
        until = None if k == stage else datetime.fromtimestamp(windows[k + 1] / 1e9 - 1, UTC)
        report = check.run_check(
            store,
            [f"stage{k}"],
            since=datetime.fromtimestamp(windows[k] / 1e9, UTC),
            until=until,
            clusters=list(CLUSTERS),
            samples=0,
        )
        for (_, cluster), status in sorted(report.stage_status().items()):
            result.stages[(k, cluster)] = status
        say(_stage_line(k, report))
    for line in _guide(result, store, relays, stage, windows):
        say(line)
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        _check_alive(children)
        stop.wait(0.5)
    say("stopping ...")


def _stage_line(stage: int, report: check.CheckReport) -> str:
    parts = []
    for cluster in report.clusters:
        rs = [r for r in report.results if r.cluster == cluster]
        status = report.stage_status().get((f"{stage}", cluster)) or stage_verdict(
            r.status for r in rs
        )
        passed = sum(r.status == Status.PASS for r in rs)
        parts.append(f"{cluster} {status.upper()} ({passed}/{len(rs)} rules)")
    lines = [f"  check stage {stage}: " + ", ".join(parts)]
    lines += [
        f"    {r.cluster} {r.rule}: {r.message}"
        for r in report.results
        if r.status in (Status.FAIL, Status.ERROR)
    ]
    return "\n".join(lines)


def _guide(
    result: DemoResult, store: Store, relays: dict[str, int], stage: int, windows: dict[int, int]
) -> list[str]:
    since = datetime.fromtimestamp(windows[1] / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = ["", "what to look at:"]
    lines += [f"  {name:<10} {url}" for name, url in result.urls.items()]
    if "prometheus" in result.urls:
        for q in (
            "flowpipe_stage_conformant",
            "sum by (cluster, verdict) (rate(flowpipe_flows_processed_total[1m]))",
            "topk(10, sum by (cluster, port) (rate(flowpipe_port_distribution_total[5m])))",
        ):
            lines.append(f"  {result.urls['prometheus']}/graph?g0.expr={urllib.parse.quote(q)}")
        lines.append(f"  alerts: {result.urls['prometheus']}/alerts")
    lines += [
        "  Grafana: import deploy/grafana/flowpipe-dashboard.json with a Prometheus datasource on the URL above",
        "",
        "try:",
        f"  flowpipe check stage{stage} --store {store.url} --since 5m",
        f"  flowpipe check stage1 --store {store.url} --since {since} --cluster cluster1",
        f'  flowpipe query --store {store.url} "SELECT cluster, verdict, count(*) FROM flows GROUP BY ALL ORDER BY ALL"',
    ]
    lines += [
        f"  hubble observe --server 127.0.0.1:{p} --follow   # {c}" for c, p in relays.items()
    ]
    lines += ["", "Ctrl-C stops everything."]
    return lines


def _prometheus_config(root: Path, export_port: int) -> Path:
    d = root / "prometheus"
    d.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "scrape_configs": [
            {"job_name": "flowpipe", "static_configs": [{"targets": [f"127.0.0.1:{export_port}"]}]}
        ],
    }
    if ALERTS.is_file():  # a source checkout: load the shipped alerting rules too
        config["rule_files"] = [str(ALERTS)]
    path = d / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _prepare_dir(root: Path) -> Path:
    """Create root, or clean one an earlier demo left (never a directory the demo did not make)."""
    if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
        raise ConfigError(f"{root} exists and was not made by `flowpipe demo`: pass another --dir")
    try:
        for sub in ("store", "lab", "prometheus", "logs"):
            shutil.rmtree(root / sub, ignore_errors=True)
        (root / "logs").mkdir(parents=True, exist_ok=True)
        (root / MARKER).touch()
    except OSError as exc:
        raise ConfigError(f"cannot prepare {root}: {exc.strerror or exc}") from exc
    return root


def _spawn(root: Path, name: str, cmd: list[str]) -> Child:
    log = root / "logs" / f"{name}.log"
    with open(log, "wb") as fh:
        # own session: the terminal's Ctrl-C reaches the demo only, which stops children in order
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Child(name, proc, log)


def _check_alive(children: list[Child]) -> None:
    for c in children:
        if c.proc.poll() is not None:
            tail = (
                c.log.read_text(errors="replace").strip().splitlines()[-3:]
                if c.log.exists()
                else []
            )
            raise FlowpipeError(
                f"{c.name} exited with {c.proc.returncode} (log {c.log}): {' | '.join(tail)}"
            )


def _wait_port(port: int, children: list[Child], name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(children)
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise FlowpipeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def _wait_flows(
    store: Store,
    clusters: list[str],
    since_ns: int,
    children: list[Child],
    stop: threading.Event,
    timeout: float = 60.0,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        _check_alive(children)
        _, rows = query.fetch(
            store, "SELECT cluster, epoch_ns(max(time)) FROM flows_proto GROUP BY cluster"
        )
        newest = dict(rows)
        if all((newest.get(c) or 0) >= since_ns for c in clusters):
            time.sleep(2)  # let the relays' recorded flows finish arriving
            return
        time.sleep(0.5)
    if not stop.is_set():
        raise FlowpipeError(
            f"no flows reached the store within {timeout:.0f}s (see logs in {store.root.parent / 'logs'})"
        )


def _stop_all(children: list[Child]) -> None:
    """SIGTERM every child (newest first), then SIGKILL whatever is still running after 10 s."""
    for c in reversed(children):
        if c.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                c.proc.terminate()
    deadline = time.monotonic() + 10
    for c in reversed(children):
        try:
            c.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                c.proc.kill()
            c.proc.wait()


def prometheus_ready(url: str) -> bool:
    """True when the Prometheus at url answers /-/ready."""
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False
