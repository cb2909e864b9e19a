"""Where `flowpipe collect`'s CPU goes: py-spy samples of the collector and its children over N
flows from the Node.js peer, sorted into stages (receive, decode, dedup, Arrow building, Parquet
encoding, fsync, compaction, ...).

Each stage is a share of all samples of every process (py-spy, non-idle threads), so two trees
profiled in one run (--tree, e.g. a checkout of main) compare as ratios on a noisy machine.
py-spy counts a thread that waits for a core, the GIL or a full pipe as busy: the us/flow of the
samples run 2-3x above the CPU time /proc reports (printed last); read the shares. A compaction
child runs every 60 s, so a run shorter than that has none (collect_vs_hubble's sustained run
reports its CPU).

    .venv/bin/python bench/collect_profile.py --flows 500000 --tree /tmp/main-checkout
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from collect_throughput import Run
from common import RESULTS, load_note, save_result

# (stage, substrings of a stack, innermost first wins); the first stage that matches a sample
STAGES = [
    ("compaction child", ("flowpipe.cli compact", "compact.py")),
    ("views database child", ("catalog.py", "children.py:database")),
    ("fsync", ("fsync",)),
    ("Parquet encoding", ("write_table", "ParquetWriter", "writer.py")),
    ("Arrow building (to_storage, by hour)", ("to_storage", "_by_hour", "storage.py")),
    ("dedup", ("dedup.py",)),
    ("decode", ("decode_responses", "split_responses", "decode.py")),
    ("receive: receiver process (grpcio, batching)", ("_Child", "flowpipe.ingest.receiver")),
    ("receive: grpcio in the collector (before)", ("grpc",)),
    (
        "receive: collector's stream thread (pipe, inbox)",
        ("receiver.py", "stream.py", "_on_message"),
    ),
    ("commit bookkeeping (publish, metrics)", ("collector.py", "layout.py")),
]


def stage_of(stack: str) -> str:
    """The stage a sample's stack belongs to (see STAGES)."""
    for stage, needles in STAGES:
        if any(n in stack for n in needles):
            return stage
    return "other (start-up, imports, logging, HTTP metrics)"


def profile(flows: int, tree: Path | None, rate: int) -> dict:
    """py-spy the collector (and its children) until flows are stored; samples per stage."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args = argparse.Namespace(
        arrow_pool=None, flush_rows=None, switch_interval=None, max_buffer=None
    )
    with tempfile.TemporaryDirectory(prefix="flowpipe-profile-") as tmp:
        run = Run(flows, 1, 0.0, Path(tmp), args, tree)
        out = Path(tmp) / "raw.txt"
        cmd = [spy, "record", "--pid", str(run.proc.pid), "--subprocesses", "--format", "raw"]
        cmd += ["--rate", str(rate), "--nonblocking", "--output", str(out)]
        spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while run.alive():
                stored, _ = run.sample()
                if sum(stored.values()) >= flows:
                    break
                time.sleep(0.5)
        finally:
            code, cpu = run.stop()
            try:
                spy_proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy_proc.kill()
        samples: Counter[str] = Counter()
        text = out.read_text() if out.exists() else ""
    (RESULTS / f"collect_profile-{'other' if tree else 'this'}.txt").write_text(text)
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples[stage_of(stack)] += int(count)
    if not samples:
        raise SystemExit(
            f"collect_profile: py-spy recorded nothing ({spy_proc.stderr.read()[-300:]!r})"
        )
    return {"samples": dict(samples), "cpu_s": round(cpu, 1), "exit_code": code}


def main(argv: list[str] | None = None) -> int:
    """Profile this tree (and --tree) and print the share of samples per stage."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", type=int, default=500_000)
    ap.add_argument("--tree", type=Path, help="another checkout to profile the same way")
    ap.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    args = ap.parse_args(argv)
    print(load_note(), flush=True)
    trees = {"this": None, **({"other": args.tree.resolve()} if args.tree else {})}
    results = {name: profile(args.flows, tree, args.rate) for name, tree in trees.items()}
    stages = [s for s, _ in STAGES] + ["other (start-up, imports, logging, HTTP metrics)"]
    print(
        f"py-spy samples of the collector and its children, {args.flows:,} flows (sampled us/flow, share):"
    )
    print(f"  {'stage':<46}" + "".join(f"{name:>22}" for name in results))
    for stage in stages:
        cells = ""
        for r in results.values():
            n = r["samples"].get(stage, 0)
            total = sum(r["samples"].values())
            # samples / rate = CPU seconds (one sample per busy thread per tick)
            cells += f"{n / args.rate / args.flows * 1e6:9.2f} us/flow {n / total:5.0%}"
        print(f"  {stage:<46}{cells}")
    for name, r in results.items():
        total = sum(r["samples"].values())
        print(
            f"  {name}: {total / args.rate / args.flows * 1e6:.2f} us/flow sampled; CPU from "
            f"/proc {r['cpu_s'] / args.flows * 1e6:.2f} us/flow; exit {r['exit_code']}"
        )
    save_result(
        "collect_profile",
        {"flows": args.flows, "trees": {k: str(v) for k, v in trees.items()}, **results},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
