"""Per-stage CPU cost of the collector (receive, decode, split, dedup, to_storage, by-hour, write) in us/flow."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

import mix
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from common import Peer, load_note, save_result, templates

from flowpipe.codec import decode, storage
from flowpipe.ingest.collector import Collector
from flowpipe.ingest.config import CollectConfig, RelayConfig, TLSConfig
from flowpipe.ingest.dedup import Deduper
from flowpipe.ingest.stream import FlowStream
from flowpipe.store import layout as store_mod
from flowpipe.store.layout import FLOWS, Store, stored_rows, write_options


def receive_cost(n: int) -> dict[str, float]:
    """CPU us per message of the real FlowStream + Collector._on_message thread, and its msgs/s."""
    with tempfile.TemporaryDirectory() as tmp, Peer(templates(), n) as peer:
        relay = RelayConfig("c1", peer.address, tls=TLSConfig(enabled=False))
        cfg = CollectConfig(relays=[relay], max_buffer_bytes=1 << 40, flush_rows=n + 1, quiet=True)
        collector = Collector(cfg, Store(tmp))
        collector._prepare()
        st = collector.clusters["c1"]
        got = [0]
        cpu = {}

        def on_message(raw: bytes) -> None:
            collector._on_message(st, raw)
            got[0] += 1
            if got[0] == 1:
                cpu["t0"], cpu["w0"] = time.thread_time(), time.perf_counter()
            elif got[0] == n:
                cpu["t1"], cpu["w1"] = time.thread_time(), time.perf_counter()
                stream.stop()

        stream = FlowStream(
            relay, cfg, resume_since=lambda _attempt: 1_000_000_000, on_message=on_message
        )
        t = threading.Thread(target=stream.run, daemon=True)
        t.start()
        t.join(timeout=300)
        if got[0] < n:
            raise SystemExit(f"collect_stages: received only {got[0]} of {n} messages")
    per = (cpu["t1"] - cpu["t0"]) / (n - 1) * 1e6
    return {"receive_cpu_us": per, "receive_msgs_per_s": (n - 1) / (cpu["w1"] - cpu["w0"])}


def by_hour_fast(table: pa.Table):
    """The recommended _by_hour: no filter/take when the batch is one hour and already sorted."""
    hour_ns = 3_600_000_000_000
    times = table.column("time").cast(pa.int64())
    lo, hi = pc.min_max(times).values()
    if times.null_count == 0 and lo.as_py() // hour_ns == hi.as_py() // hour_ns:
        t = times.combine_chunks() if isinstance(times, pa.ChunkedArray) else times
        if len(t) < 2 or pc.all(pc.greater_equal(t[1:], t[:-1])).as_py():
            yield lo.as_py() // hour_ns * hour_ns, table
            return
    yield from store_mod._by_hour(table)


def flush_costs(batches: list[list[bytes]], tmp: str) -> dict[str, list[float]]:
    """CPU us/flow of each flush stage, per batch (process CPU time: includes Arrow's pool threads)."""
    costs: dict[str, list[float]] = {}
    deduper = Deduper()
    out = os.path.join(tmp, "part.parquet")

    def timed(name: str, n: int, fn, *a):
        t0 = time.process_time()
        result = fn(*a)
        costs.setdefault(name, []).append((time.process_time() - t0) / n * 1e6)
        return result

    for rows in batches:
        n = len(rows)
        dec = timed("decode (decode.decode_responses)", n, decode.decode_responses, rows)
        flows, events = timed("split (decode.split_responses)", n, decode.split_responses, dec)
        flows, _, _ = timed("dedup (Deduper.filter)", n, deduper.filter, flows)
        stored = timed("to_storage (storage.to_storage)", n, storage.to_storage, flows)
        parts = timed(
            "by-hour split (layout._by_hour)",
            n,
            lambda t: list(store_mod._by_hour(t)),
            stored,
        )
        timed(
            "  alt: by-hour fast path (1 hour, sorted)", n, lambda t: list(by_hour_fast(t)), stored
        )

        def write(table: pa.Table) -> None:
            with open(out, "wb") as fh:
                pq.write_table(table, fh, **write_options(table.schema), row_group_size=256 * 1024)
                fh.flush()
                os.fsync(fh.fileno())

        for _, part in parts:
            part = timed("row order (layout.stored_rows)", n, stored_rows, FLOWS, part)
            timed("parquet write (format 2) + fsync", n, write, part)
        del dec, flows, events, stored, parts
    return costs


def main(argv: list[str] | None = None) -> int:
    """Print each stage's CPU us/flow (median over batches) and the single-core ceiling it implies."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=60_000, help="flows per flush (2s at 30k flows/s)")
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument(
        "--receive",
        type=int,
        default=300_000,
        help="messages for the receive measurement (0 = skip)",
    )
    args = ap.parse_args(argv)
    print(load_note())
    gen = mix.generate(args.batch * args.batches, seed=7)
    batches = [
        [next(gen).SerializeToString() for _ in range(args.batch)] for _ in range(args.batches)
    ]
    size = sum(len(r) for r in batches[0]) / args.batch
    with tempfile.TemporaryDirectory() as tmp:
        Store(tmp).ensure()
        costs = flush_costs(batches, tmp)
    med = {
        k: statistics.median(v[1:] if len(v) > 2 else v) for k, v in costs.items()
    }  # first batch warms up
    if args.receive:
        med.update(
            {
                "receive (grpc + FlowStream + _on_message)": receive_cost(args.receive)[
                    "receive_cpu_us"
                ]
            }
        )
    total = sum(v for k, v in med.items() if not k.startswith("  alt"))
    print(
        f"batch {args.batch:,} flows of {size:,.0f} B; CPU us/flow, median of batches 2..{args.batches}:"
    )
    for k, v in med.items():
        print(f"  {k:<45} {v:7.2f} us/flow")
    print(
        f"  {'total (without alt)':<45} {total:7.2f} us/flow = {1e6 / total:,.0f} flows/s on one core"
    )
    save_result(
        "collect_stages",
        {
            "batch": args.batch,
            "mean_bytes": round(size),
            **{k.strip(): round(v, 2) for k, v in med.items()},
            "total_us": round(total, 2),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
