"""A big store for the check/serve benchmarks: N flows of a busy two-cluster mesh over a few hours.

Built once and cached under $FLOWPIPE_BENCH_DIR (default /tmp/flowpipe-bench)/store-<N>:
- the flows come from bench/mix.py (a busy mesh), decoded once as templates; every stored flow
  is a template with its own uuid and time, spread evenly over SPAN_S seconds per cluster;
- the lab's stage-5 traffic (lab.generate_lab(5)) is inside, 10 minutes before the end;
- files are written as collect writes them (store.write, one file per 2 s flush per cluster,
  dated by mtime when that flush would have been committed), then flowpipe.compact.compact runs
  as the collector's does at the end: closed hours become a few large files, and the open hour's
  settled files are merged level by level (the last 30 s of commits stay as they are).
`dump_jsonpb(n)` writes the same flows as `hubble observe -o jsonpb` lines, one file per cluster.
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mix  # noqa: E402

from flowpipe.codec import decode, storage
from flowpipe.codec import hubble as hubble_format
from flowpipe.lab import generate as lab
from flowpipe.store import compact
from flowpipe.store.layout import Store

VERSION = 2  # bump when the content changes: cached templates and stores are rebuilt
LAYOUT = (
    5  # bump when the file layout changes (what store.write and compact do): stores are rebuilt
)
BASE = Path(os.environ.get("FLOWPIPE_BENCH_DIR", "/tmp/flowpipe-bench"))
CLUSTERS = ("cluster1", "cluster2")
SPAN_S = 3 * 3600  # flows cover the last 3 hours before the end
FLUSH_S = 2.0  # collect's flush_interval: one file per cluster per flush
TEMPLATES = 200_000  # distinct mix flows (each stored flow is one of them, new uuid and time)
LAB_BEFORE_END_S = 600  # the lab's stage-5 traffic starts 10 minutes before the end
HOUR_NS = 3_600_000_000_000
SEC = 1_000_000_000
SENTINEL_UUID = "ffffffff-ffff-4fff-bfff-ffffffffffff"
SENTINEL_TIME = (1, 1)  # 1970-01-01T00:00:01.000000001Z, found and replaced in template json


@dataclass
class Meta:
    """What a cached store holds (meta.json next to flows/)."""

    version: int
    flows: int  # mix flows
    lab_flows: int  # stage-5 lab flows on top
    clusters: list[str]
    seed: int
    templates: int
    start_ns: int
    end_ns: int
    lab_start_ns: int
    lab_end_ns: int
    files: int = 0
    bytes: int = 0
    build_s: float = 0.0
    write_s: float = 0.0
    compact_s: float = 0.0
    layout: int = 0

    @property
    def total(self) -> int:
        return self.flows + self.lab_flows


def store_dir(n: int) -> Path:
    return BASE / f"store-{n}"


def load_meta(root: Path) -> Meta | None:
    try:
        data = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if data.get("version") != VERSION or data.get("layout") != LAYOUT:
        return None
    return Meta(**data)


# ------------------------------------------------------------------ templates


def _template_paths(k: int, seed: int) -> tuple[Path, Path]:
    stem = BASE / f"templates-{k}-{seed}-v{VERSION}"
    return stem.with_suffix(".parquet"), stem.with_suffix(".jsonl")


def templates(k: int, seed: int) -> pa.Table:
    """k mix flows in storage form plus a `_cluster` column (cached), and their jsonpb lines file."""
    table_path, json_path = _template_paths(k, seed)
    if table_path.exists() and json_path.exists():
        return pq.read_table(table_path)
    BASE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    parts, lines = [], []
    batch: list = []

    def flush() -> None:
        raw = [r.SerializeToString() for r in batch]
        dec = decode.decode_responses(raw)
        if dec.errors:
            raise SystemExit(f"bigstore: mix flows failed to decode: {dec.errors[:3]}")
        flows, _ = decode.split_responses(dec)
        stored = storage.to_storage(flows)
        clusters = [r.node_name.split("/", 1)[0] for r in batch]
        parts.append(stored.append_column("_cluster", pa.array(clusters, pa.string())))
        for r in batch:  # jsonpb with a sentinel uuid and time, replaced per stored flow
            r.flow.uuid = SENTINEL_UUID
            r.flow.time.seconds, r.flow.time.nanos = SENTINEL_TIME
            r.time.seconds, r.time.nanos = SENTINEL_TIME
            lines.append(hubble_format.jsonpb(r) + "\n")
        batch.clear()

    for r in mix.generate(k, seed=seed, clusters=CLUSTERS, start_ns=0):
        batch.append(r)
        if len(batch) == 20_000:
            flush()
    if batch:
        flush()
    table = pa.concat_tables(parts)
    if table.column("_raw").null_count != table.num_rows:
        raise SystemExit(
            "bigstore: some mix flows keep _raw bytes: their uuid/time could not be replaced"
        )
    tmp = table_path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, table_path)
    tmp = json_path.with_suffix(".tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, json_path)
    print(f"bigstore: {k:,} templates in {time.monotonic() - started:.0f}s", flush=True)
    return table


# ------------------------------------------------------------------ the flows of a store


def _plan(n: int, seed: int, k: int) -> Meta:
    now = time.time_ns()
    end = now // HOUR_NS * HOUR_NS - 20 * 60 * SEC  # 40 minutes into the previous hour: always past
    lab_start = end - LAB_BEFORE_END_S * SEC
    return Meta(
        VERSION, n, 0, list(CLUSTERS), seed, k, end - SPAN_S * SEC, end, lab_start, lab_start
    )


def _share(meta: Meta, cluster: str) -> int:
    i = meta.clusters.index(cluster)
    base, extra = divmod(meta.flows, len(meta.clusters))
    return base + (1 if i < extra else 0)


@dataclass
class Chunk:
    """One flush of one cluster: mix flows [lo, hi) of its sequence and their times and uuids."""

    lo: int
    hi: int
    times: list[int]
    uuids: bytes  # 16 bytes per flow (version 4, variant 1)
    t_lo: int  # the flush covers [t_lo, t_hi)
    t_hi: int


def chunks(meta: Meta, cluster: str) -> Iterator[Chunk]:
    """Every flush of cluster, in order (deterministic: the store and the jsonpb dump agree)."""
    n = _share(meta, cluster)
    rng = random.Random(f"{meta.seed}-{cluster}")
    span = meta.end_ns - meta.start_ns
    step = span / max(n, 1)
    times = [meta.start_ns + int(i * step + rng.random() * step * 0.9) for i in range(n)]
    flush = int(FLUSH_S * SEC)
    t = meta.start_ns
    i = 0
    while t < meta.end_ns:
        j = bisect.bisect_left(times, t + flush, lo=i)
        raw = bytearray(rng.randbytes(16 * (j - i)))
        raw[6::16] = bytes((b & 0x0F) | 0x40 for b in raw[6::16])
        raw[8::16] = bytes((b & 0x3F) | 0x80 for b in raw[8::16])
        yield Chunk(i, j, times[i:j], bytes(raw), t, t + flush)
        i, t = j, t + flush


def _lab(meta: Meta) -> dict[str, list]:
    return lab.generate_lab(5, clusters=meta.clusters, seed=meta.seed, start_ns=meta.lab_start_ns)


def _lab_table(responses: list) -> pa.Table:
    dec = decode.decode_responses([r.SerializeToString() for r in responses])
    flows, _ = decode.split_responses(dec)
    return storage.to_storage(flows)


def _write_cluster(root: str, meta: Meta, cluster: str) -> tuple[float, float, str]:
    """Write one cluster's flushes with store.write into its own store under root, then compact it
    as the collector would at the end (a worker process; clusters do not share files)."""
    store = Store(Path(root) / cluster)
    store.ensure()
    started = time.monotonic()
    tmpl = templates(meta.templates, meta.seed)
    tmpl = tmpl.filter(pc.equal(tmpl.column("_cluster"), cluster)).drop_columns(["_cluster"])
    k = tmpl.num_rows
    lab_t = _lab_table(_lab(meta)[cluster])
    lab_ns = lab_t.column("time").cast(pa.int64()).to_pylist()
    ti = tmpl.schema.get_field_index("time")
    ui = tmpl.schema.get_field_index("_uuid")
    ttype = tmpl.schema.field("time").type
    for c in chunks(meta, cluster):
        a, m = c.lo % k, c.hi - c.lo  # templates a, a+1, ... (wrapping around): slices, no copy
        part = pa.concat_tables(
            [tmpl.slice(a, m)] + ([tmpl.slice(0, a + m - k)] if a + m > k else [])
        )
        part = part.set_column(ti, "time", pa.array(c.times, pa.int64()).cast(ttype))
        ids = pa.Array.from_buffers(pa.binary(16), c.hi - c.lo, [None, pa.py_buffer(c.uuids)])
        part = part.set_column(ui, "_uuid", ids)
        a, b = bisect.bisect_left(lab_ns, c.t_lo), bisect.bisect_left(lab_ns, c.t_hi)
        if b > a:
            part = pa.concat_tables(
                [part, lab_t.slice(a, b - a).select(part.column_names).cast(part.schema)]
            )
        if part.num_rows:
            for f in store.write(cluster, part, None).files:
                os.utime(f, ns=(c.t_hi, c.t_hi))  # committed at the end of its flush
    written = time.monotonic()
    report = compact.compact(store, now=meta.end_ns)
    return written - started, time.monotonic() - written, report.summary()


def build(n: int, *, seed: int = 1, k: int = TEMPLATES, force: bool = False) -> tuple[Store, Meta]:
    """The cached store of n mix flows (built now if missing or out of date)."""
    root = store_dir(n)
    meta = load_meta(root)
    if meta is not None and not force and meta.seed == seed:
        return Store(root), meta
    k = min(k, max(n, 1))
    templates(k, seed)  # once, before the workers fork
    meta = _plan(n, seed, k)
    meta.layout = LAYOUT
    labs = _lab(meta)
    meta.lab_flows = sum(len(v) for v in labs.values())
    lab_times = [r.flow.time.seconds * SEC + r.flow.time.nanos for v in labs.values() for r in v]
    meta.lab_start_ns, meta.lab_end_ns = min(lab_times), max(lab_times)
    tmp_root = root.with_name(root.name + ".building")
    parts = root.with_name(root.name + ".parts")
    for d in (tmp_root, parts, root):
        shutil.rmtree(d, ignore_errors=True)
    store = Store(tmp_root)
    store.ensure()
    started = time.monotonic()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(min(len(meta.clusters), os.cpu_count() or 1)) as pool:
        done = pool.starmap(_write_cluster, [(str(parts), meta, c) for c in meta.clusters])
    for c in meta.clusters:
        for kind in ("flows", "events"):
            src = parts / c / kind / f"cluster={c}"
            if src.exists():
                os.rename(src, tmp_root / kind / f"cluster={c}")
    shutil.rmtree(parts)
    meta.write_s = round(max(w for w, _, _ in done), 1)
    meta.compact_s = round(max(c for _, c, _ in done), 1)
    meta.build_s = round(time.monotonic() - started, 1)
    meta.files = len(store.files())
    meta.bytes = sum(p.stat().st_size for p in store.files())
    for c, (w, cs, summary) in zip(meta.clusters, done):
        print(f"bigstore: {c}: written in {w:.0f}s, compacted in {cs:.0f}s: {summary}", flush=True)
    (tmp_root / "meta.json").write_text(json.dumps(asdict(meta), indent=1) + "\n")
    os.replace(tmp_root, root)
    return Store(root), meta


# ------------------------------------------------------------------ the same flows as jsonpb


def _ts(ns: int) -> str:
    return hubble_format.rfc3339(*divmod(ns, SEC))


def dump_jsonpb(n: int, *, seed: int = 1) -> dict[str, Path]:
    """The flows of store-<n> as `hubble observe -o jsonpb` lines, one file per cluster (cached)."""
    _, meta = build(n, seed=seed)
    out = BASE / f"jsonpb-{n}"
    done = out / "meta.json"
    paths = {c: out / f"{c}.jsonl" for c in meta.clusters}
    if done.exists() and json.loads(done.read_text()).get("end_ns") == meta.end_ns:
        return paths
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    templates(meta.templates, meta.seed)
    _, json_path = _template_paths(meta.templates, meta.seed)
    lines = json_path.read_text().splitlines(keepends=True)
    tmpl = pq.read_table(_template_paths(meta.templates, meta.seed)[0], columns=["_cluster"])
    owner = tmpl.column("_cluster").to_pylist()
    sentinel_t = _ts(SENTINEL_TIME[0] * SEC + SENTINEL_TIME[1])
    labs = _lab(meta)
    started = time.monotonic()
    for cluster in meta.clusters:
        mine = [line for line, c in zip(lines, owner) if c == cluster]
        k = len(mine)
        lab_rs = labs[cluster]
        lab_ns = [r.flow.time.seconds * SEC + r.flow.time.nanos for r in lab_rs]
        lab_lines = [hubble_format.jsonpb(r) + "\n" for r in lab_rs]
        with open(paths[cluster], "w", encoding="utf-8", buffering=1 << 22) as fh:
            for c in chunks(meta, cluster):
                buf = []
                for j, i in enumerate(range(c.lo, c.hi)):
                    u = str(uuid.UUID(bytes=c.uuids[16 * j : 16 * j + 16]))
                    buf.append(
                        mine[i % k].replace(SENTINEL_UUID, u).replace(sentinel_t, _ts(c.times[j]))
                    )
                a, b = bisect.bisect_left(lab_ns, c.t_lo), bisect.bisect_left(lab_ns, c.t_hi)
                buf += lab_lines[a:b]
                fh.write("".join(buf))
    done.write_text(
        json.dumps(
            {
                "end_ns": meta.end_ns,
                "flows": meta.total,
                "write_s": round(time.monotonic() - started, 1),
            }
        )
        + "\n"
    )
    return paths


def size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.parquet"))


def main(argv: list[str] | None = None) -> int:
    """Build (or show) the cached stores and print build time and size."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--flows", type=int, action="append", help="mix flows per store (default 1M and 10M)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--jsonpb", action="store_true", help="also write the jsonpb dumps")
    args = ap.parse_args(argv)
    for n in args.flows or [1_000_000, 10_000_000]:
        store, meta = build(n, seed=args.seed, force=args.force)
        span = (meta.end_ns - meta.start_ns) / 3.6e12
        print(
            f"store-{n}: {store.root} | {meta.total:,} flows ({meta.lab_flows} lab) over {span:.1f} h, "
            f"{meta.files:,} files, {meta.bytes / 1e6:,.1f} MB ({meta.bytes / meta.total:.0f} B/flow) | "
            f"built in {meta.build_s}s (write {meta.write_s}s, compact {meta.compact_s}s)",
            flush=True,
        )
        if args.jsonpb:
            t0 = time.monotonic()
            paths = dump_jsonpb(n, seed=args.seed)
            total = sum(p.stat().st_size for p in paths.values())
            print(f"jsonpb-{n}: {total / 1e9:.2f} GB in {time.monotonic() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
