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
from common import Peer, TreeUsage, free_port, load_note, mb, save_result, templates

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


def scrape(url: str) -> tuple[dict[str, int], int]:
    """(flows stored per cluster, relays connected) from the collector's /metrics."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}, 0
    stored: dict[str, int] = {}
    connected = 0
    for name, cluster, value in METRIC_RE.findall(text):
        if name == "flows_stored_total":
            stored[cluster] = int(float(value))
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
        self,
        flows: int,
        clusters: int,
        rate: float,
        workdir: Path,
        args: argparse.Namespace,
        tree: Path | None = None,
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
        env = dict(os.environ)
        if tree is not None:  # another checkout's flowpipe (its C decoder built in place)
            env["PYTHONPATH"] = str(tree)
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
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=tree
        )
        self.usage = TreeUsage(self.proc.pid)

    @property
    def peak_rss(self) -> int:
        return self.usage.peak_rss

    def sample(self) -> tuple[dict[str, int], int]:
        """(flows stored per cluster, relays connected); samples CPU and RSS too."""
        stored, connected = scrape(self.metrics_url)
        self.usage.sample()
        return stored, connected

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> tuple[int, float]:
        """SIGTERM the collector (it flushes), stop the peers; (exit code, CPU seconds of the
        collector and its children until now)."""
        self.usage.sample()
        cpu = self.usage.cpu()
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


def throughput(args: argparse.Namespace, workdir: Path, tree: Path | None = None) -> dict:
    """Time N flows from starting the collector to the last one committed."""
    run = Run(args.flows, args.clusters, args.rate, workdir, args, tree)
    per_relay = run.expected // args.clusters
    first = None
    done: dict[str, float] = {}
    at_first_done: dict[str, int] = {}  # each cluster's count when the first one finished
    deadline = time.monotonic() + args.timeout
    stored: dict[str, int] = {}
    try:
        while time.monotonic() < deadline and run.alive():
            stored, connected = run.sample()
            now = time.monotonic()
            if first is None and connected:
                first = now
            for cluster, n in stored.items():
                if n >= per_relay and cluster not in done:
                    done[cluster] = now
                    at_first_done = at_first_done or dict(stored)
            if len(done) == args.clusters:
                break
            # coarse while far from the end (a scrape costs the collector CPU), fine near it
            near = sum(stored.values()) >= 0.9 * run.expected
            time.sleep(0.05 if first is None or near else 0.5)
    finally:
        code, cpu = run.stop()
    rows = stored_rows(run.store)
    total = sum(stored.values())
    if len(done) < args.clusters or first is None:
        print(run.log_text[-2000:], file=sys.stderr)
        raise SystemExit(
            f"collect_throughput: only {total:,} of {run.expected:,} flows stored before the timeout"
        )
    end = max(done.values())
    seconds = end - run.started
    rate = run.expected / seconds
    free_s = run.usage.free_cores_seconds()
    sends = [p.send_rate() or 0 for p in run.peers]
    kinds = run.usage.by_kind()
    out = {
        "flows": run.expected,
        "clusters": args.clusters,
        "tree": str(tree) if tree else "this",
        "seconds_from_start": round(seconds, 2),
        "flows_per_s": round(rate),
        "flows_per_s_after_connect": round(run.expected / (end - first)),
        "flows_per_s_free_cores_estimate": round(run.expected / free_s),
        "peer_send_msgs_per_s": round(sum(sends)),
        "cpu_s": round(cpu, 1),
        "cpu_us_per_flow": round(cpu / run.expected * 1e6, 1),
        "cpu_s_by_process": {k: round(v, 1) for k, v in kinds.items()},
        "peak_rss_mb": round(run.peak_rss / 1e6, 1),
        "peak_rss_with_children_mb": round(run.usage.peak_tree_rss / 1e6, 1),
        "stored_rows": rows,
        "exit_code": code,
        **knobs(args),
    }
    if args.clusters > 1:
        out["per_cluster_flows_per_s"] = {
            c: round(per_relay / (t - run.started)) for c, t in sorted(done.items())
        }
        out["per_cluster_share_when_first_done"] = {
            c: round(n / per_relay, 3) for c, n in sorted(at_first_done.items())
        }
    label = f" [{tree}]" if tree else ""
    print(
        f"collect{label}: {run.expected:,} flows ({args.clusters} relay(s)) committed {seconds:.1f}s "
        f"after start = {rate:,.0f} flows/s ({out['flows_per_s_after_connect']:,} after the first "
        f"message); target {TARGET_FLOWS_S:,}: {'OK' if rate >= TARGET_FLOWS_S else 'MISSED'}"
    )
    by_kind = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
    print(
        f"  CPU {cpu:.1f}s = {out['cpu_us_per_flow']} us/flow ({by_kind}); with the cores free "
        f"(estimate) {out['flows_per_s_free_cores_estimate']:,} flows/s; peak RSS "
        f"{mb(run.peak_rss)} (with children {mb(run.usage.peak_tree_rss)}); peer sent "
        f"{out['peer_send_msgs_per_s']:,} msgs/s; {rows:,} rows stored; exit {code}"
    )
    if args.clusters > 1:
        rates = ", ".join(f"{c} {r:,}/s" for c, r in out["per_cluster_flows_per_s"].items())
        shares = ", ".join(
            f"{c} {v:.0%}" for c, v in out["per_cluster_share_when_first_done"].items()
        )
        print(f"  per relay: {rates}; stored when the first finished: {shares}")
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


def rss_run(args: argparse.Namespace, workdir: Path, tree: Path | None = None) -> dict:
    """Stream at a fixed --rate for --duration seconds, compaction running as in production;
    print the stored rate and RSS over time."""
    rate = args.rate or 30_000
    flows = int(rate * args.duration * 1.2)
    run = Run(flows, args.clusters, rate, workdir, args, tree)
    started = time.monotonic()
    samples = []
    next_at = started + args.every
    print(f"{'t (s)':>6} {'stored':>12} {'flows/s':>9} {'RSS':>10} {'HWM':>10} {'+children':>10}")
    last_stored, last_t = 0, started
    try:
        while time.monotonic() - started < args.duration and run.alive():
            time.sleep(min(1.0, max(0.0, next_at - time.monotonic())))
            stored_by, _ = run.sample()  # every second: a compaction's RSS is seen too
            now = time.monotonic()
            if now < next_at:
                continue
            next_at += args.every
            stored = sum(stored_by.values())
            usage = run.usage
            samples.append((now - started, stored, usage.rss, usage.tree_rss))
            print(
                f"{now - started:6.0f} {stored:12,} {(stored - last_stored) / (now - last_t):9,.0f} "
                f"{mb(usage.rss):>10} {mb(usage.peak_rss):>10} {mb(usage.tree_rss):>10}",
                flush=True,
            )
            last_stored, last_t = stored, now
            if usage.rss > args.max_rss * 1e6:
                print(
                    f"rss: stopping early: RSS above --max-rss {args.max_rss:,.0f} MB (a shared machine)"
                )
                break
    finally:
        code, cpu = run.stop()
    if not samples:
        raise SystemExit("collect_throughput: the collector died before the first sample")
    # the collector compacts in the background (every 60 s): what it left shows it did
    files = [
        p for p in (run.store / "flows").glob("cluster=*/*/*/*.parquet") if "_schema" not in str(p)
    ]
    merged = sum(p.name.endswith(compact.COMPACT_SUFFIX) for p in files)
    compactions = run.log_text.count("compaction: merged")
    steady = [s for s in samples if s[0] >= min(60.0, args.duration / 2)] or samples
    lo, hi = min(s[2] for s in steady), max(s[2] for s in steady)
    kinds = run.usage.by_kind()
    out = {
        "rate": rate,
        "clusters": args.clusters,
        "tree": str(tree) if tree else "this",
        "duration_s": args.duration,
        "stored": samples[-1][1],
        "flows_per_s": round(samples[-1][1] / samples[-1][0]),
        "rss_steady_min_mb": round(lo / 1e6, 1),
        "rss_steady_max_mb": round(hi / 1e6, 1),
        "peak_rss_mb": round(run.peak_rss / 1e6, 1),
        "peak_rss_with_children_mb": round(run.usage.peak_tree_rss / 1e6, 1),
        "cpu_us_per_flow": round(cpu / max(samples[-1][1], 1) * 1e6, 1),
        "cpu_s_by_process": {k: round(v, 1) for k, v in kinds.items()},
        "exit_code": code,
        "files": len(files),
        "merged_files": merged,
        "compactions_logged": compactions,
        **knobs(args),
    }
    by_kind = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
    print(
        f"rss: {samples[-1][1]:,} flows offered at {rate:,.0f}/s, {out['flows_per_s']:,}/s stored "
        f"over {samples[-1][0]:.0f}s; collector RSS after 60s {mb(lo)} .. {mb(hi)}, peak "
        f"{mb(run.peak_rss)} (with its children at one moment: peak "
        f"{mb(run.usage.peak_tree_rss)}); target <= {mb(TARGET_RSS)}: "
        f"{'OK' if run.peak_rss <= TARGET_RSS else 'MISSED'}; exit {code}"
    )
    print(
        f"  CPU {out['cpu_us_per_flow']} us/flow ({by_kind}); {compactions} compactions logged, "
        f"the store holds {len(files)} files ({merged} made by compaction)",
        flush=True,
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
    ap.add_argument(
        "--tree",
        type=Path,
        help="run another checkout's flowpipe too (C decoder built in place), one after the other",
    )
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
    trees: list[Path | None] = [None] + ([args.tree.resolve()] if args.tree else [])
    outs = []
    for tree in trees:
        workdir = Path(tempfile.mkdtemp(prefix="flowpipe-bench-"))
        try:
            if args.rss:
                outs.append(rss_run(args, workdir, tree))
            else:
                outs.append(throughput(args, workdir, tree))
        finally:
            if args.keep:
                print(f"kept {workdir}", file=sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    if len(outs) == 2:
        key = "flows_per_s"
        print(
            f"this / {args.tree}: {outs[0][key] / outs[1][key]:.2f}x flows/s, "
            f"{outs[1]['cpu_us_per_flow'] / outs[0]['cpu_us_per_flow']:.2f}x less CPU per flow"
        )
    name = "collect_rss" if args.rss else f"collect_throughput_{args.clusters}"
    save_result(name, outs[0])
    failed = any(o.get("failed") or o.get("exit_code") for o in outs)
    return 1 if failed else 0  # a missed target is a figure, not a failure


if __name__ == "__main__":
    sys.exit(main())
