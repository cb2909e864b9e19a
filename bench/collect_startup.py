"""Seconds from starting `flowpipe collect` to its first committed file, against a local replay.

Compare trees in the same run (machines here are noisy): --tree DIR runs another checkout's
flowpipe (its C decoder built in place) the same way, alternating with this one."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_collect import make_responses  # noqa: E402

from flowpipe.serve.replay import ReplayServer  # noqa: E402


def first_commit(tree: Path, address: str) -> float:
    """Start collect from tree's flowpipe; seconds until a Parquet file of c1 is committed."""
    store = Path(tempfile.mkdtemp(prefix="flowpipe-startup-")) / "store"
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, "-m", "flowpipe.cli", "collect", "--store", str(store)]
    cmd += ["--plaintext", "--relay", f"c1={address}", "--flush-interval", "0.5s", "--quiet"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=tree)
    try:
        while not any((store / "flows" / "cluster=c1").rglob("*.parquet")):
            if proc.poll() is not None:
                raise SystemExit(f"collect exited with {proc.returncode}")
            time.sleep(0.01)
        return time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tree", type=Path, help="another checkout to compare with")
    args = ap.parse_args()
    trees = {"this": ROOT} | ({"other": args.tree.resolve()} if args.tree else {})
    times: dict[str, list[float]] = {name: [] for name in trees}
    with ReplayServer(responses=make_responses(1000), follow=True) as relay:
        for _ in range(args.runs):
            for name, tree in trees.items():
                times[name].append(first_commit(tree, relay.address))
    for name, ts in times.items():
        print(
            f"{name}: first commit after {statistics.median(ts):.2f}s (median of {len(ts)}: "
            + ", ".join(f"{t:.2f}" for t in ts)
            + ")"
        )
    if args.tree:
        ratio = statistics.median(a / b for a, b in zip(times["this"], times["other"]))
        print(f"this / other: {ratio:.2f} (median of paired ratios)")


if __name__ == "__main__":
    main()
