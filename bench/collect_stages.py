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
from common import Peer, cpu_seconds, load_note, save_result, templates

from flowpipe.codec import decode, storage
from flowpipe.ingest.collector import Collector
from flowpipe.ingest.config import CollectConfig, RelayConfig, TLSConfig
from flowpipe.ingest.dedup import Deduper
from flowpipe.ingest.stream import FlowStream
from flowpipe.store import layout as store_mod
from flowpipe.store.layout import FLOWS, Store, stored_rows, write_options


def receive_cost(n: int) -> dict[str, float]:
    """CPU us per message of receiving: the receiver process (grpcio's iterator, batching, the
    pipe) and the collector's stream thread (reading the pipe, Collector._on_messages)."""
    with tempfile.TemporaryDirectory() as tmp, Peer(templates(), n) as peer:
        relay = RelayConfig("c1", peer.address, tls=TLSConfig(enabled=False))
        cfg = CollectConfig(relays=[relay], max_buffer_bytes=1 << 40, flush_rows=n + 1, quiet=True)
        collector = Collector(cfg, Store(tmp))
        collector._prepare()
        collector._database.wait()
        st = collector.clusters["c1"]
        got = [0]
        cpu = {}

        def child_cpu() -> float:
            return cpu_seconds(stream._receiver.proc.pid)

        def on_messages(batch: list[bytes]) -> None:
            collector._on_messages(st, batch)
            if got[0] == 0:  # from the first batch on: the child's start-up is not receiving
                cpu["t0"], cpu["w0"], cpu["c0"] = (
                    time.thread_time(),
                    time.perf_counter(),
                    child_cpu(),
                )
                cpu["n0"] = len(batch)
            got[0] += len(batch)
            if got[0] >= n and "t1" not in cpu:
                cpu["t1"], cpu["w1"], cpu["c1"] = (
                    time.thread_time(),
                    time.perf_counter(),
                    child_cpu(),
                )
                stream.stop()

        stream = FlowStream(
            relay, cfg, resume_since=lambda _attempt: 1_000_000_000, on_messages=on_messages
        )
        t = threading.Thread(target=stream.run, daemon=True)
        t.start()
        t.join(timeout=300)
        if got[0] < n:
            raise SystemExit(f"collect_stages: received only {got[0]} of {n} messages")
    m = got[0] - cpu["n0"]
    return {
        "receiver_cpu_us": (cpu["c1"] - cpu["c0"]) / m * 1e6,
        "stream_thread_cpu_us": (cpu["t1"] - cpu["t0"]) / m * 1e6,
        "receive_msgs_per_s": m / (cpu["w1"] - cpu["w0"]),
    }


def receive_in_process_cost(n: int) -> float:
    """CPU us per message of grpcio's single-threaded iterator in this process, all its threads
    counted: how the collector received before the receiving process (grpcio's default
    EventEngine client reads on threads of its own)."""
    import grpc
    import grpc.experimental

    with Peer(templates(), n) as peer:
        options = [(grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)]
        with grpc.insecure_channel(peer.address, options=options) as channel:
            call = channel.unary_stream(
                "/observer.Observer/GetFlows", request_serializer=None, response_deserializer=None
            )(b"\x18\x01\x3a\x02\x08\x01")  # follow=true, since={seconds: 1}
            c0 = 0.0
            rows: list[bytes] = []
            for got, raw in enumerate(call, 1):
                rows.append(raw)  # (what the collector's inbox did with it)
                if got == 1:
                    c0 = time.process_time()
                elif got == n:
                    break
                if len(rows) >= 8192:
                    rows.clear()
            cpu = time.process_time() - c0
            call.cancel()
    return cpu / (n - 1) * 1e6


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

        def fsync() -> None:
            with open(out, "rb") as fh:
                os.fsync(fh.fileno())

        for _, part in parts:
            part = timed("row order (layout.stored_rows)", n, stored_rows, FLOWS, part)
            timed("parquet encoding (format 2)", n, write, part)
            t0 = time.perf_counter()
            timed("fsync (CPU)", n, fsync)
            costs.setdefault("  fsync (wall, per 8,192-flow file)", []).append(
                (time.perf_counter() - t0) / n * 1e6
            )
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
        rc = receive_cost(args.receive)
        med["receive: receiver process (grpcio, batches, pipe)"] = rc["receiver_cpu_us"]
        med["receive: collector's stream thread (pipe, inbox)"] = rc["stream_thread_cpu_us"]
        med["  before: grpcio in the collector's process"] = receive_in_process_cost(args.receive)
    total = sum(v for k, v in med.items() if not k.startswith("  "))  # indented: side figures
    print(
        f"batch {args.batch:,} flows of {size:,.0f} B; CPU us/flow, median of batches 2..{args.batches}:"
    )
    for k, v in med.items():
        print(f"  {k:<52} {v:7.2f} us/flow")
    print(
        f"  {'total (without the indented lines)':<52} {total:7.2f} us/flow = {1e6 / total:,.0f} flows/s on one core"
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
