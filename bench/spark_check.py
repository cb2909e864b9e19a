"""`flowpipe check stage5.sql` over a big store on Spark (two workers) next to DuckDB, in one run.

The store is bench/bigstore.py's (10M flows by default, cached). A Spark standalone cluster (a
master and two workers of one core each, and Spark Connect) is started on loopback from the
pyspark wheel, as the tests start it; Spark reads the store's files from the same local path.
Both engines check the whole store (after one untimed run each, best of --repeat runs, the
engines alternating so that both see the same machine load); their results must be equal
(status, evidence and violations per rule and cluster). Printed: seconds each and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import bigstore
from check_speed import stage_path, summary, window
from common import ROOT, load_note, save_result

sys.path.insert(0, str(ROOT))
from flowpipe.rules import check  # noqa: E402
from tests.support.spark_cluster import SparkCluster  # noqa: E402


def timed(store, since, until, **engine) -> tuple[float, check.CheckReport]:
    started = time.perf_counter()
    rep = check.run_check(store, [stage_path("stage5.sql")], since=since, until=until, **engine)
    return time.perf_counter() - started, rep


def outcome(rep: check.CheckReport) -> list[tuple]:
    return [(r.rule, r.cluster, r.status, r.evidence, r.violations) for r in rep.results]


def main(argv: list[str] | None = None) -> int:
    """Time stage 5 with DuckDB and with Spark over one store; print both and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=10_000_000, help="store size (bigstore.py)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per engine (best is reported)")
    ap.add_argument("--workers", type=int, default=2, help="Spark workers (one core each)")
    ap.add_argument("--worker-memory", default="1g", help="memory of each Spark worker")
    args = ap.parse_args(argv)
    print(load_note(), flush=True)
    store, meta = bigstore.build(args.flows)
    since, until = window(meta)
    print(
        f"store {store.root}: {meta.total:,} flows, {meta.files:,} files, {meta.bytes / 1e6:,.0f} MB",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="flowpipe-spark-") as tmp:
        cluster = SparkCluster(Path(tmp), workers=args.workers, memory=args.worker_memory)
        started = time.perf_counter()
        cluster.start()
        print(
            f"Spark cluster: {args.workers} workers x 1 core, {args.worker_memory} each, "
            f"{cluster.remote} ready in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        try:
            # one untimed run each first: JVMs compile their hot code, DuckDB caches footers
            timed(store, since, until)
            timed(store, since, until, engine="spark", spark_remote=cluster.remote)
            duck, spark = [], []
            for i in range(args.repeat):  # alternated, so both see the same machine load
                duck.append(timed(store, since, until))
                spark.append(
                    timed(store, since, until, engine="spark", spark_remote=cluster.remote)
                )
                print(
                    f"run {i + 1}: duckdb {duck[-1][0]:.2f} s, spark {spark[-1][0]:.2f} s",
                    flush=True,
                )
        finally:
            cluster.stop()
    d_s, d_rep = min(duck, key=lambda r: r[0])
    s_s, s_rep = min(spark, key=lambda r: r[0])
    same = outcome(d_rep) == outcome(s_rep)
    print(
        f"\ncheck stage5.sql over {meta.total:,} flows (whole store, both clusters):\n"
        f"  duckdb (this process, on disk): {d_s:6.2f} s | {summary(d_rep)}\n"
        f"  spark ({args.workers} workers):             {s_s:6.2f} s | {summary(s_rep)}\n"
        f"  spark / duckdb: {s_s / d_s:.1f}x | results {'equal' if same else 'DIFFER'}",
        flush=True,
    )
    save_result(
        "spark_check",
        {
            "flows": meta.total,
            "workers": args.workers,
            "duckdb_s": round(d_s, 3),
            "spark_s": round(s_s, 3),
            "ratio": round(s_s / d_s, 2),
            "equal": same,
        },
    )
    print(load_note(), flush=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
