"""A time window over a big store: the stored-BIGINT predicate flowpipe builds vs one on the views' converted time.

Store format 2 keeps `time` as INT64 nanoseconds; the views convert it to TIMESTAMPTZ_NS, and
DuckDB cannot prune Parquet row groups through that conversion. So every time window flowpipe
builds (check --since/--until, serve paging, export, samples) compares the stored column
(`time` in the reader's WHERE, `_time_ns` in the views). This prints both, best of N, and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time

import bigstore
from common import load_note

from flowpipe.views import catalog


def best(con, sql: str, repeat: int) -> tuple[float, list]:
    times, rows = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows = con.execute(sql).fetchall()
        times.append(time.perf_counter() - t0)
    return min(times), rows


def main(argv: list[str] | None = None) -> int:
    """Time a windowed query both ways over store-<flows>; print seconds and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=1_000_000, help="store size (bench/bigstore.py)")
    ap.add_argument("--minutes", type=float, default=15.0, help="window before the newest flow")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    store, meta = bigstore.build(args.flows)
    print(load_note(), flush=True)
    lo = meta.end_ns - int(args.minutes * 60e9)
    con = catalog.connect(store)
    what = "count(*), count(DISTINCT source.pod_name)"
    stored_sql = f"SELECT {what} FROM flows_proto WHERE {catalog.RAW_TIME} >= {lo}"
    converted_sql = (
        f"SELECT {what} FROM flows_proto WHERE time >= timezone('UTC', make_timestamp_ns({lo}))"
    )
    t_stored, a = best(con, stored_sql, args.repeat)
    t_conv, b = best(con, converted_sql, args.repeat)
    if a != b:
        print(f"different answers: {a} vs {b}")
        return 1
    print(f"last {args.minutes:g} min of store-{args.flows} ({a[0][0]:,} flows):")
    print(f"  stored BIGINT predicate ({catalog.RAW_TIME} >= ns): {t_stored * 1000:8.1f} ms")
    print(f"  converted time >= TIMESTAMPTZ_NS           : {t_conv * 1000:8.1f} ms")
    print(
        f"  ratio {t_conv / t_stored:.2f}x (row groups outside the window are skipped only the first way)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
