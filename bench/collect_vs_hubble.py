"""`flowpipe collect` against the hubble CLI writing jsonpb from the same server (issue 13).

Targets: over 1M flows, from process start to the last flow committed, at least 1.5x
`hubble observe --last 1000000 -o jsonpb > file`; RSS flat (<= 250 MB) at that rate with
compaction running as in production; two relays at once: the sum of both rates, neither
starving the other. One command prints every figure.

The server is the Node.js peer (bench/peer, `make bench-deps`): GetFlows streaming the
responses of bench/mix.py's flow mix as fast as the client takes them. With `hubble` on PATH
the reference is hubble against that peer, in this run; without it, issue 13's figure (32,700
flows/s: 1M flows in 30.6 s against a Go server, on a quiet machine of this kind), and the
script says so.

The machines here are shared (2 cores, other sessions' load): rates move with the load, so
compare variants of one run (--tree runs another checkout too, e.g. main, built in place) and
read the CPU seconds per flow, and the rate they imply with the cores free, next to the rates.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import collect_stages
import collect_throughput
import mix
from common import Peer, load_note, save_result, templates

HUBBLE_REF_FLOWS_S = 32_700  # issue 13: hubble observe --last 1000000 -o jsonpb, 30.6 s
TARGET = 1.5  # x hubble
TARGET_RSS_MB = 250


def hubble_reference(flows: int) -> tuple[float, str, dict]:
    """(flows/s, where it comes from, details) of hubble writing jsonpb from the peer."""
    hubble = shutil.which("hubble")
    if not hubble:
        how = (
            f"hubble not on PATH: issue 13's measured {HUBBLE_REF_FLOWS_S:,} flows/s (1M flows "
            "in 30.6 s, Go server, quiet machine); the collector below streams from the Node.js "
            "peer instead"
        )
        return HUBBLE_REF_FLOWS_S, how, {}
    with Peer(templates(), flows) as peer, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "flows.json"
        cmd = [hubble, "observe", "--server", peer.address, "--last", str(flows), "-o", "jsonpb"]
        started = time.perf_counter()
        with open(out, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace")
        with open(out, "rb") as fh:
            lines = sum(1 for _ in fh)
    if proc.returncode != 0 or lines != flows:
        raise SystemExit(
            f"hubble: exit {proc.returncode}, {lines:,} lines of {flows:,}: {err[-500:]}"
        )
    cpu = usage.ru_utime + usage.ru_stime
    how = f"hubble on PATH ({hubble}): measured in this run against the Node.js peer"
    details = {"seconds": round(seconds, 2), "cpu_us_per_flow": round(cpu / flows * 1e6, 1)}
    print(
        f"hubble observe --last {flows:,} -o jsonpb: {seconds:.1f}s = {flows / seconds:,.0f} "
        f"flows/s; CPU {cpu / flows * 1e6:.1f} us/flow"
    )
    return flows / seconds, how, details


def _args(**kw) -> argparse.Namespace:
    base = dict(
        flows=1_000_000,
        clusters=1,
        rate=0.0,
        timeout=900.0,
        duration=150.0,
        every=10.0,
        max_rss=4000.0,
        flush_rows=None,
        max_buffer=None,
        arrow_pool=None,
        switch_interval=None,
    )
    base.update(kw)
    return argparse.Namespace(**base)


def _workdir(fn, *args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="flowpipe-bench-"))
    try:
        return fn(*args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def stages(batches: int) -> dict[str, float]:
    """CPU us/flow of each stage of this tree's collector (bench/collect_stages.py)."""
    gen = mix.generate(8192 * batches, seed=7)
    rows = [[next(gen).SerializeToString() for _ in range(8192)] for _ in range(batches)]
    with tempfile.TemporaryDirectory() as tmp:
        collect_stages.Store(tmp).ensure()
        costs = collect_stages.flush_costs(rows, tmp)
    out = {k.strip(): statistics.median(v[1:] or v) for k, v in costs.items()}
    rc = collect_stages.receive_cost(200_000)
    out["receive: receiver process (grpcio, batches, pipe)"] = rc["receiver_cpu_us"]
    out["receive: collector's stream thread (pipe, inbox)"] = rc["stream_thread_cpu_us"]
    return out


def main(argv: list[str] | None = None) -> int:
    """Run every part and print the figures (see the module's docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--tree", type=Path, help="another checkout to run the same way (e.g. main)")
    ap.add_argument(
        "--sustain", type=float, default=150, help="seconds of the sustained run (0: skip)"
    )
    ap.add_argument("--no-stages", action="store_true", help="skip the per-stage CPU table")
    args = ap.parse_args(argv)
    print(load_note(), flush=True)
    trees: dict[str, Path | None] = {"this": None}
    if args.tree:
        trees["other"] = args.tree.resolve()
        print(f"other = {trees['other']}")

    ref, how, ref_details = hubble_reference(args.flows)
    print(f"reference: {ref:,.0f} flows/s ({how})\n", flush=True)

    results: dict[str, dict] = {}
    for clusters in (1, 2):
        for name, tree in trees.items():
            key = f"{name}, {clusters} relay{'s' if clusters > 1 else ''}"
            print(f"== collect {args.flows:,} flows, {key}", flush=True)
            a = _args(flows=args.flows, clusters=clusters)
            results[key] = _workdir(
                lambda a, tree, w: collect_throughput.throughput(a, w, tree), a, tree
            )
            print(flush=True)

    sustained: dict[str, dict] = {}
    if args.sustain > 0:
        rate = round(TARGET * ref)
        for name, tree in trees.items():
            print(
                f"== {name}: {rate:,} flows/s offered for {args.sustain:.0f}s (1 relay)", flush=True
            )
            a = _args(rate=rate, duration=args.sustain, every=max(5.0, args.sustain / 15))
            sustained[name] = _workdir(
                lambda a, tree, w: collect_throughput.rss_run(a, w, tree), a, tree
            )
            print(flush=True)

    table = {} if args.no_stages else stages(6)
    print(load_note())
    print(f"reference: {ref:,.0f} flows/s ({how})")
    print(
        f"target: >= {TARGET}x = {TARGET * ref:,.0f} flows/s from process start to the last commit"
    )
    for key, r in results.items():
        vs = r["flows_per_s"] / ref
        free = r["flows_per_s_free_cores_estimate"] / ref
        line = (
            f"  {key:<20} {r['flows_per_s']:>7,} flows/s = {vs:4.2f}x hubble "
            f"({'OK' if vs >= TARGET else 'MISSED'}); CPU {r['cpu_us_per_flow']:5.1f} us/flow; "
            f"with the cores free (estimate) {free:4.2f}x; RSS {r['peak_rss_mb']:,.0f} MB "
            f"(+children {r['peak_rss_with_children_mb']:,.0f})"
        )
        if "per_cluster_flows_per_s" in r:
            shares = "/".join(f"{v:.0%}" for v in r["per_cluster_share_when_first_done"].values())
            line += f"; per relay {' + '.join(f'{v:,}' for v in r['per_cluster_flows_per_s'].values())}/s, stored when the first was done: {shares}"
        print(line)
    if len(trees) == 2:
        for clusters in ("1 relay", "2 relays"):
            new, old = results[f"this, {clusters}"], results[f"other, {clusters}"]
            print(
                f"  this / other, {clusters}: {new['flows_per_s'] / old['flows_per_s']:.2f}x "
                f"flows/s, {old['cpu_us_per_flow'] / new['cpu_us_per_flow']:.2f}x less CPU per "
                f"flow, {new['flows_per_s_free_cores_estimate'] / old['flows_per_s_free_cores_estimate']:.2f}x "
                "with the cores free (estimate)"
            )
    for name, r in sustained.items():
        ok = r["peak_rss_mb"] <= TARGET_RSS_MB
        print(
            f"  sustained ({name}): {r['flows_per_s']:,} of {r['rate']:,} flows/s stored over "
            f"{r['duration_s']:.0f}s, {r['compactions_logged']} compactions; collector RSS "
            f"{r['rss_steady_min_mb']:.0f}..{r['rss_steady_max_mb']:.0f} MB after 60s, peak "
            f"{r['peak_rss_mb']:.0f} MB (target <= {TARGET_RSS_MB}: {'OK' if ok else 'MISSED'}); "
            f"CPU by process {r['cpu_s_by_process']}"
        )
    if table:
        print("  CPU per flow by stage (this tree, each stage alone):")
        for k, v in table.items():
            print(f"    {k:<52} {v:6.2f} us")
    save_result(
        "collect_vs_hubble",
        {
            "reference_flows_per_s": round(ref),
            "reference": how,
            **({"hubble": ref_details} if ref_details else {}),
            "runs": results,
            "sustained": sustained,
            "stages_us_per_flow": {k: round(v, 2) for k, v in table.items()},
        },
    )
    failed = any(
        r.get("failed") or r.get("exit_code") for r in [*results.values(), *sustained.values()]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
