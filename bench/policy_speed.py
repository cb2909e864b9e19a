"""`flowpipe policy whatif` of the lab's stage-5 policy set over big stores (bench/bigstore.py).

Connections are grouped in SQL over the `flows` view, then each distinct connection is decided
once. Prints the wall clock of whatif.run_whatif over the whole store (both clusters), its parts
(views, grouping and example rows, decisions) and how many flows, connections and decisions
there were. Target: the stage-5 set over 10M stored flows in under 10 s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import bigstore
from common import load_note, save_result

from flowpipe.policy import connections, whatif

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "deploy" / "kubernetes" / "lab"
STAGE5 = [
    LAB / "stage2",
    LAB / "stage3" / "allow-frontend-egress.yaml",
    LAB / "stage4",
    LAB / "stage5",
]
TARGET_S = 10.0


class _Timed:
    """Wall clock of the parts of one run (the views, the Scan's queries, decide_all)."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}

    def wrap(self, module, name: str, label: str):
        original = getattr(module, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.parts[label] = self.parts.get(label, 0.0) + time.perf_counter() - started

        setattr(module, name, timed)
        return original


def one_run(store) -> tuple[float, float, dict[str, float], whatif.WhatIfReport]:
    timer = _Timed()
    originals = [
        (whatif, "open_views", timer.wrap(whatif, "open_views", "views")),
        (connections.Scan, "_group", timer.wrap(connections.Scan, "_group", "group in SQL")),
        (
            connections.Scan,
            "_details",
            timer.wrap(connections.Scan, "_details", "endpoint labels and verdict names"),
        ),
        (connections.Scan, "examples", timer.wrap(connections.Scan, "examples", "examples")),
        (whatif, "decide_all", timer.wrap(whatif, "decide_all", "decide")),
    ]
    try:
        started, cpu = time.perf_counter(), time.process_time()
        rep = whatif.run_whatif(store, [str(p) for p in STAGE5])
        total, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        for module, name, original in originals:
            setattr(module, name, original)
    return total, cpu, timer.parts, rep


def main(argv: list[str] | None = None) -> int:
    """Time whatif of the stage-5 set over each store size; print seconds and counts."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, action="append", help="store sizes (default 10M)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per size (best is reported)")
    args = ap.parse_args(argv)
    print(load_note(), flush=True)
    figures: dict = {"stores": {}}
    ok = True
    for n in args.flows or [10_000_000]:
        store, meta = bigstore.build(n)
        print(
            f"\n== store-{n}: {meta.total:,} flows, {meta.files:,} files, {meta.bytes / 1e6:,.0f} MB",
            flush=True,
        )
        runs = [one_run(store) for _ in range(args.repeat)]
        best, cpu, parts, rep = min(runs, key=lambda r: r[0])
        decisions = len(rep.decisions)
        conns = sum(d.flows for d in rep.decisions)
        changed = {c: len(rep.by_change(c)) for c in ("denied", "allowed", "unknown")}
        print(
            f"whatif stage-5 set (whole store, {', '.join(rep.clusters)}): {best:.2f} s "
            f"(runs {', '.join(f'{r[0]:.2f}' for r in runs)}); CPU {cpu:.2f} s (DuckDB's threads "
            f"included; CPU of the runs {', '.join(f'{r[1]:.2f}' for r in runs)})",
            flush=True,
        )
        print(
            "  parts of the best run: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items())
            + f"; {decisions:,} decisions over {conns:,} request flows; changes {changed}",
            flush=True,
        )
        meets = best < TARGET_S
        print(f"  target < {TARGET_S:g} s: {'met' if meets else 'NOT met'}", flush=True)
        ok = ok and meets
        figures["stores"][n] = {
            "flows": meta.total,
            "whatif_s": round(best, 3),
            "runs_s": [round(r[0], 3) for r in runs],
            "cpu_s": round(cpu, 3),
            "parts_s": {k: round(v, 3) for k, v in parts.items()},
            "decisions": decisions,
            "changes": changed,
        }
    save_result("policy_speed", figures)
    print(load_note(), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
