"""End-to-end `flowpipe collect` throughput and RSS against the Node peer on loopback."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
from common import Peer, cpu_seconds, free_port, load_note, mb, proc_status, save_result, templates

from flowpipe.store import compact

METRIC_RE = re.compile(
    r'^flowpipe_collector_(flows_stored_total|flows_received_total|relay_connected)\{cluster="([^"]+)"\} (\S+)$',
    re.M,
)
TARGET_FLOWS_S = 30_000
TARGET_RSS = 250e6


def collector_cmd(
    store: Path,
    relays: list[str],
    metrics: str,
    *,
    flush_rows: int | None = None,
    switch_interval: float | None = None,
    config: Path | None = None,
) -> list[str]:
    """The collect command line (python -m flowpipe.cli, optionally with a GIL switch interval)."""
    if switch_interval is None:
        base = [sys.executable, "-m", "flowpipe.cli"]
    else:  # an experiment knob: how much of the collector's time is GIL hand-over between threads
        prelude = f"import sys; sys.setswitchinterval({switch_interval}); from flowpipe.cli import main; main()"
        base = [sys.executable, "-c", prelude]
    cmd = base + [
        "collect",
        "--plaintext",
        "--store",
        str(store),
        "--metrics-listen",
        metrics,
    ]  # logs to collect.log
    if flush_rows:
        cmd += ["--flush-rows", str(flush_rows)]
    if config:
        cmd += ["--config", str(config)]
    for r in relays:
        cmd += ["--relay", r]
    return cmd


def scrape(url: str) -> tuple[int, int]:
    """(flows stored, relays connected) from the collector's /metrics, summed over clusters."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return 0, 0
    stored = connected = 0
    for name, _cluster, value in METRIC_RE.findall(text):
        if name == "flows_stored_total":
            stored += int(float(value))
        elif name == "relay_connected":
            connected += int(float(value))  # set when a stream delivers its first message
    return stored, connected


def stored_rows(store: Path) -> int:
    """Rows committed to the store, from Parquet footers."""
    return sum(
        pq.read_metadata(p).num_rows
        for p in (store / "flows").glob("cluster=*/*/*/*.parquet")
        if "cluster=_schema" not in str(p)
    )


class Run:
    """Peers + a collector subprocess + a store in a temporary directory."""

    def __init__(
        self, flows: int, clusters: int, rate: float, workdir: Path, args: argparse.Namespace
    ):
        self.flows = flows
        self.store = workdir / "store"
        self.peers: list[Peer] = []
        per = flows // clusters
        for i in range(clusters):
            name = f"cluster{i + 1}"
            tpl = templates(observed_by=name if clusters > 1 else None)
            self.peers.append(
                Peer(tpl, per, rate=rate / clusters if rate else 0, instance=f"{i + 1:08x}")
            )
        self.expected = per * clusters
        relays = [f"cluster{i + 1}={p.address}" for i, p in enumerate(self.peers)]
        self.metrics_url = f"http://127.0.0.1:{(port := free_port())}/metrics"
        self.log = open(workdir / "collect.log", "w+")  # noqa: SIM115 - closed in stop()
        self.started = time.monotonic()
        env = dict(os.environ)
        if args.arrow_pool:
            env["ARROW_DEFAULT_MEMORY_POOL"] = args.arrow_pool
        config = None
        if args.max_buffer:
            config = workdir / "collect.yaml"
            config.write_text(f"max_buffer: {args.max_buffer}\n")
        cmd = collector_cmd(
            self.store,
            relays,
            f"127.0.0.1:{port}",
            flush_rows=args.flush_rows,
            switch_interval=args.switch_interval,
            config=config,
        )
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.peak_rss = 0

    def sample(self) -> tuple[int, int, dict[str, int]]:
        stored, connected = scrape(self.metrics_url)
        st = proc_status(self.proc.pid)
        self.peak_rss = max(self.peak_rss, st.get("VmHWM", 0))
        return stored, connected, st

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> tuple[int, float]:
        """SIGTERM the collector (it flushes), stop the peers; (exit code, collector CPU seconds)."""
        cpu = cpu_seconds(self.proc.pid)
        st = proc_status(self.proc.pid)
        self.peak_rss = max(self.peak_rss, st.get("VmHWM", 0))
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        for p in self.peers:
            p.stop()
        self.log.seek(0)
        self.log_text = self.log.read()
        self.log.close()
        return code, cpu


def throughput(args: argparse.Namespace, workdir: Path) -> dict:
    """Time N flows from the first message (relay_connected=1) to the last commit."""
    run = Run(args.flows, args.clusters, args.rate, workdir, args)
    first = done = None
    deadline = time.monotonic() + args.timeout
    stored = 0
    try:
        while time.monotonic() < deadline and run.alive():
            stored, connected, _ = run.sample()
            now = time.monotonic()
            if first is None and connected:
                first = now
            if stored >= run.expected:
                done = now
                break
            time.sleep(0.02 if first is None else 0.2)
    finally:
        code, cpu = run.stop()
    rows = stored_rows(run.store)
    if done is None or first is None:
        print(run.log_text[-2000:], file=sys.stderr)
        raise SystemExit(
            f"collect_throughput: only {stored:,} of {run.expected:,} flows stored before the timeout"
        )
    rate = run.expected / (done - first)
    sends = [p.send_rate() or 0 for p in run.peers]
    out = {
        "flows": run.expected,
        "clusters": args.clusters,
        "flows_per_s": round(rate),
        "flows_per_s_incl_startup": round(run.expected / (done - run.started)),
        "seconds": round(done - first, 2),
        "peer_send_msgs_per_s": round(sum(sends)),
        "collector_cpu_s": round(cpu, 1),
        "cpu_us_per_flow": round(cpu / run.expected * 1e6, 1),
        "peak_rss_mb": round(run.peak_rss / 1e6, 1),
        "stored_rows": rows,
        "exit_code": code,
        **knobs(args),
    }
    print(
        f"collect: {run.expected:,} flows ({args.clusters} relay(s)) committed in {done - first:.1f}s "
        f"= {rate:,.0f} flows/s end to end ({out['flows_per_s_incl_startup']:,} incl. start-up); "
        f"target {TARGET_FLOWS_S:,}: {'OK' if rate >= TARGET_FLOWS_S else 'MISSED'}"
    )
    print(
        f"peer send rate {out['peer_send_msgs_per_s']:,} msgs/s (paced by the collector); collector CPU "
        f"{cpu:.1f}s = {out['cpu_us_per_flow']} us/flow; peak RSS {mb(run.peak_rss)}; "
        f"{rows:,} rows in the store; exit {code}"
    )
    if rows != run.expected or code != 0:
        print(
            f"collect_throughput: store has {rows:,} rows (expected {run.expected:,}), exit code {code}",
            file=sys.stderr,
        )
        out["failed"] = True
    return out


def knobs(args: argparse.Namespace) -> dict:
    """The experiment options that were set, for the results file."""
    names = ("flush_rows", "max_buffer", "arrow_pool", "switch_interval")
    return {k: getattr(args, k) for k in names if getattr(args, k)}


def rss_run(args: argparse.Namespace, workdir: Path) -> dict:
    """Stream at a fixed --rate for --duration seconds; print RSS over time."""
    rate = args.rate or 30_000
    flows = int(rate * args.duration * 1.2)
    run = Run(flows, args.clusters, rate, workdir, args)
    started = time.monotonic()
    samples = []
    next_at = started + args.every
    print(f"{'t (s)':>6} {'stored':>12} {'flows/s':>9} {'VmRSS':>10} {'VmHWM':>10}")
    last_stored, last_t = 0, started
    try:
        while time.monotonic() - started < args.duration and run.alive():
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += args.every
            stored, _, st = run.sample()
            now = time.monotonic()
            rss = st.get("VmRSS", 0)
            samples.append((now - started, stored, rss))
            print(
                f"{now - started:6.0f} {stored:12,} {(stored - last_stored) / (now - last_t):9,.0f} "
                f"{mb(rss):>10} {mb(st.get('VmHWM', 0)):>10}",
                flush=True,
            )
            last_stored, last_t = stored, now
            if rss > args.max_rss * 1e6:
                print(
                    f"rss: stopping early: RSS above --max-rss {args.max_rss:,.0f} MB (a shared machine)"
                )
                break
    finally:
        code, cpu = run.stop()
    if not samples:
        raise SystemExit("collect_throughput: the collector died before the first sample")
    # the collector compacts in the background (every 60 s): what it left shows it did, within the RSS above
    files = [
        p for p in (run.store / "flows").glob("cluster=*/*/*/*.parquet") if "_schema" not in str(p)
    ]
    merged = sum(p.name.endswith(compact.COMPACT_SUFFIX) for p in files)
    print(
        f"rss: store holds {len(files)} files ({merged} made by the collector's compaction)",
        flush=True,
    )
    steady = [s for s in samples if s[0] >= min(60.0, args.duration / 2)] or samples
    lo, hi = min(s[2] for s in steady), max(s[2] for s in steady)
    out = {
        "rate": rate,
        "duration_s": args.duration,
        "stored": samples[-1][1],
        "flows_per_s": round(samples[-1][1] / samples[-1][0]),
        "rss_steady_min_mb": round(lo / 1e6, 1),
        "rss_steady_max_mb": round(hi / 1e6, 1),
        "peak_rss_mb": round(run.peak_rss / 1e6, 1),
        "cpu_us_per_flow": round(cpu / max(samples[-1][1], 1) * 1e6, 1),
        "exit_code": code,
        "files": len(files),
        "merged_files": merged,
        **knobs(args),
    }
    print(
        f"rss: {samples[-1][1]:,} flows offered at {rate:,.0f}/s, {out['flows_per_s']:,}/s stored, "
        f"over {samples[-1][0]:.0f}s; RSS after 60s "
        f"{mb(lo)} .. {mb(hi)}, peak {mb(run.peak_rss)}; target <= {mb(TARGET_RSS)}: "
        f"{'OK' if run.peak_rss <= TARGET_RSS else 'MISSED'}; exit {code}"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse options and run the throughput or the long-stream RSS benchmark."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--flows", type=int, default=1_000_000, help="flows to collect (throughput run)"
    )
    ap.add_argument(
        "--clusters", type=int, default=1, choices=(1, 2), help="relays (one peer each)"
    )
    ap.add_argument(
        "--rate", type=float, default=0, help="peer send rate, flows/s in total (0 = unpaced)"
    )
    ap.add_argument(
        "--rss", action="store_true", help="long-stream RSS run at --rate (default 30000/s)"
    )
    ap.add_argument("--duration", type=float, default=300, help="seconds of the RSS run")
    ap.add_argument("--every", type=float, default=10, help="seconds between RSS samples")
    ap.add_argument(
        "--max-rss", type=float, default=4000, help="MB: end the RSS run early above this"
    )
    ap.add_argument(
        "--timeout", type=float, default=300, help="give up on the throughput run after this"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary store and log")
    ap.add_argument("--flush-rows", type=int, help="pass --flush-rows to the collector")
    ap.add_argument(
        "--max-buffer",
        help="collector back-pressure threshold per cluster, e.g. 64MB (via --config)",
    )
    ap.add_argument(
        "--arrow-pool",
        choices=("system", "jemalloc", "mimalloc"),
        help="ARROW_DEFAULT_MEMORY_POOL for the collector",
    )
    ap.add_argument(
        "--switch-interval",
        type=float,
        help="sys.setswitchinterval() in the collector (experiment)",
    )
    args = ap.parse_args(argv)
    print(load_note(), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="flowpipe-bench-"))
    out: dict = {}
    try:
        if args.rss:
            out = rss_run(args, workdir)
            save_result("collect_rss", out)
        else:
            out = throughput(args, workdir)
            save_result(f"collect_throughput_{args.clusters}", out)
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return (
        1 if out.get("failed") or out.get("exit_code") else 0
    )  # a missed target is a figure, not a failure


if __name__ == "__main__":
    sys.exit(main())
