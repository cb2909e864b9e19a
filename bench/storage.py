"""Bytes per stored flow (Parquet store) vs gzip-compressed jsonpb, per-column bytes, losslessness."""

from __future__ import annotations

import argparse
import gzip
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import mix
import pyarrow.compute as pc
import pyarrow.parquet as pq
from common import load_note, save_result

from flowpipe.api.observer import observer_pb2
from flowpipe.codec import decode, storage
from flowpipe.store import compact
from flowpipe.store.layout import Store
from flowpipe.store.writer import StreamWriter

DECODE_BATCH = 8192  # what the collector decodes and hands its writer at a time

GZIP_LEVEL = 6  # gzip(1)'s and Go's gzip.NewWriter default (lumberjack compresses Hubble's exporter files so)
HOUR_NS = 3_600_000_000_000


def make_chunk(job: tuple[int, int, int]) -> tuple[list[bytes], int, int]:
    """(serialized responses, jsonpb bytes, gzip-6 jsonpb bytes) of one chunk of the mix."""
    seed, n, start_ns = job
    rows, lines = [], []
    for r in mix.generate(n, seed=seed, start_ns=start_ns, observed_by=("cluster1",)):
        rows.append(r.SerializeToString())
        lines.append(mix.to_jsonpb(r))
    text = ("\n".join(lines) + "\n").encode()
    return rows, len(text), len(gzip.compress(text, compresslevel=GZIP_LEVEL))


def flow_files(store: Store) -> list[Path]:
    return store.files("flows")


def column_bytes(files: list[Path]) -> tuple[Counter, Counter, int]:
    """Compressed bytes by top-level column and by leaf column path, and the row count."""
    top: Counter = Counter()
    leaf: Counter = Counter()
    rows = 0
    for f in files:
        md = pq.read_metadata(f)
        rows += md.num_rows
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                path = col.path_in_schema
                leaf[path] += col.total_compressed_size
                top[path.split(".", 1)[0]] += col.total_compressed_size
    return top, leaf, rows


def verify(files: list[Path], originals: dict[str, object], sample: int) -> tuple[int, int]:
    """(checked, equal): reconstruct stored rows with storage.flows_from_columns and compare to the originals."""
    checked = equal = 0
    for f in files:
        pf = pq.ParquetFile(f)
        for g in range(pf.num_row_groups):
            table = pf.read_row_group(g)
            flows = storage.flows_from_columns(table)
            for flow in flows:
                orig = originals.get(flow.uuid)
                if orig is None:
                    continue
                checked += 1
                equal += flow == orig
                if checked >= sample:
                    return checked, equal
    return checked, equal


def main(argv: list[str] | None = None) -> int:
    """Generate the mix, store it like the collector does, and compare with gzip jsonpb."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument(
        "--batch",
        type=int,
        default=60_000,
        help="flows per committed file (collector: 2s at 30k/s)",
    )
    ap.add_argument(
        "--writer",
        choices=["import", "collect"],
        default="import",
        help="import: one store.write per batch (flowpipe import); collect: the collector's "
        "StreamWriter, batches of 8,192 flows, a commit per --batch flows",
    )
    ap.add_argument("--verify", type=int, default=20_000, help="flows to check for losslessness")
    ap.add_argument("--top", type=int, default=15, help="leaf columns to list")
    ap.add_argument("--workers", type=int, default=2, help="processes generating flows and jsonpb")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args(argv)
    print(load_note())
    # Two days ago on an hour boundary: every hour is closed, so compaction runs.
    start = (time.time_ns() // HOUR_NS - 48) * HOUR_NS
    step = 1e9 / mix.RATE
    jobs = []
    for k, first in enumerate(range(0, args.flows, args.batch)):
        jobs.append(
            (args.seed * 10_000 + k, min(args.batch, args.flows - first), start + int(first * step))
        )
    t0 = time.perf_counter()
    proto_bytes = json_bytes = gz_bytes = 0
    originals: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="flowpipe-storage-") as tmp:
        store = Store(tmp)
        store.ensure()
        stream = StreamWriter(store, "cluster1") if args.writer == "collect" else None
        with multiprocessing.Pool(args.workers) as pool:
            for rows, jb, gb in pool.imap(make_chunk, jobs):
                proto_bytes += sum(map(len, rows))
                json_bytes += jb
                gz_bytes += gb
                if len(originals) < args.verify:
                    for raw in rows[: args.verify - len(originals)]:
                        flow = observer_pb2.GetFlowsResponse.FromString(raw).flow
                        originals[flow.uuid] = flow
                if stream is None:
                    flows, events = decode.split_responses(decode.decode_responses(rows))
                    store.write("cluster1", storage.to_storage(flows), events)
                    continue
                for i in range(0, len(rows), DECODE_BATCH):
                    dec = decode.decode_responses(rows[i : i + DECODE_BATCH])
                    flows, events = decode.split_responses(dec)
                    stream.write(storage.to_storage(flows), events)
                stream.commit()
        elapsed = time.perf_counter() - t0
        files = flow_files(store)
        top, leaf, rows = column_bytes(files)
        parquet = sum(f.stat().st_size for f in files)
        checked, equal = verify(files, originals, args.verify)
        report = compact.compact(store, grace_s=0)
        files_c = flow_files(store)
        parquet_c = sum(f.stat().st_size for f in files_c)
        checked_c, equal_c = verify(files_c, originals, args.verify)
        rows_c = sum(pq.read_metadata(f).num_rows for f in files_c)
        uuids = sum(
            pc.count_distinct(pq.read_table(f, columns=["_uuid"]).column(0).cast("binary")).as_py()
            for f in files_c
        )
    n = args.flows
    ratio = parquet / gz_bytes
    print(
        f"{n:,} flows of the mix ({proto_bytes / n:,.0f} B protobuf, {json_bytes / n:,.0f} B jsonpb each), "
        f"{elapsed:.0f}s"
    )
    print(
        f"  gzip -{GZIP_LEVEL} jsonpb (hubble observe -o jsonpb / exporter): {gz_bytes / n:7.1f} B/flow "
        f"({gz_bytes / 1e6:,.1f} MB)"
    )
    print(
        f"  flowpipe store ({args.writer}), {len(files)} files of {args.batch:,}: {parquet / n:7.1f} B/flow "
        f"({parquet / 1e6:,.1f} MB) = {ratio:.2f}x gzip jsonpb; target <= 0.45x: "
        f"{'OK' if ratio <= 0.45 else 'MISSED'}"
    )
    print(
        f"  after compaction ({report.merged_files} -> {report.written_files} files): {parquet_c / n:7.1f} B/flow "
        f"= {parquet_c / gz_bytes:.2f}x; {rows_c:,} rows, {uuids:,} distinct uuids"
    )
    print(
        f"  lossless: {equal:,}/{checked:,} sampled flows equal before compaction, {equal_c:,}/{checked_c:,} after"
    )
    total = sum(top.values())
    print(f"  compressed bytes by top-level column (of {total / n:.1f} B/flow in column chunks):")
    for name, b in top.most_common(12):
        print(f"    {name:<28} {b / n:7.2f} B/flow {100 * b / total:5.1f}%")
    print(f"  top {args.top} leaf columns:")
    for name, b in leaf.most_common(args.top):
        print(f"    {name:<52} {b / n:7.2f} B/flow {100 * b / total:5.1f}%")
    save_result(
        "storage" if args.writer == "import" else "storage_collect",
        {
            "flows": n,
            "writer": args.writer,
            "batch": args.batch,
            "protobuf_b": round(proto_bytes / n, 1),
            "jsonpb_b": round(json_bytes / n, 1),
            "gzip_jsonpb_b": round(gz_bytes / n, 1),
            "parquet_b": round(parquet / n, 1),
            "parquet_compacted_b": round(parquet_c / n, 1),
            "ratio": round(ratio, 3),
            "lossless": f"{equal}/{checked}, {equal_c}/{checked_c}",
            "top_columns": {k: round(v / n, 2) for k, v in top.most_common(12)},
        },
    )
    lossless = (
        equal == checked == min(args.verify, n) and equal_c == checked_c and rows_c == uuids == n
    )
    return 0 if lossless else 1  # a missed size target is a figure; a lossy store is a failure


if __name__ == "__main__":
    sys.exit(main())
