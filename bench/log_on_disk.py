"""Would the commit log cost anything on a local disk? The disk store (rename + flock) against the
object-store code (uploads + commit log) running over pyarrow's LocalFileSystem, in one run:
commits of collector-sized flushes, a cold listing of the committed files, and a count query."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import load_note  # noqa: E402
from test_collect import make_responses  # noqa: E402

from flowpipe.serve.replay import write_responses  # noqa: E402
from flowpipe.store.layout import Store  # noqa: E402
from flowpipe.store.location import Location  # noqa: E402
from flowpipe.store.objstore import ObjectStore  # noqa: E402
from flowpipe.views import query  # noqa: E402


def log_store(root: Path) -> ObjectStore:
    store = ObjectStore(Location(f"log+file://{root}", pafs.LocalFileSystem(), str(root), False))
    store.ensure()
    return store


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=300)
    ap.add_argument("--flows", type=int, default=1000, help="flows per commit")
    args = ap.parse_args(argv)
    print(load_note(), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="flowpipe-log-on-disk-"))
    batches = [
        make_responses(args.flows, seed=i + 1, start_ns=1_800_000_000_000_000_000 + i * 10**9)
        for i in range(args.commits)
    ]
    disk = Store(tmp / "disk")
    disk.ensure()
    log = log_store(tmp / "log")
    out = {}
    for name, store in (("disk", disk), ("log", log)):
        t0 = time.perf_counter()
        for batch in batches:
            write_responses(store, batch, cluster="c1")
        out[name] = {"commit_ms": (time.perf_counter() - t0) * 1e3 / args.commits}
    for name, make in (
        ("disk", lambda: Store(tmp / "disk")),
        ("log", lambda: log_store(tmp / "log")),
    ):
        t0 = time.perf_counter()
        files = make().committed("flows", "c1")
        out[name]["list_ms"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        (n,) = query.fetch(make(), "SELECT count(*) FROM flows")[1][0]
        out[name]["query_ms"] = (time.perf_counter() - t0) * 1e3
        assert n == args.commits * args.flows and len(files) == args.commits
    d, g = out["disk"], out["log"]
    print(
        f"{args.commits} commits of {args.flows} flows: commit {d['commit_ms']:.1f} ms (disk) vs "
        f"{g['commit_ms']:.1f} ms (log) = {g['commit_ms'] / d['commit_ms']:.2f}x; cold listing "
        f"{d['list_ms']:.0f} vs {g['list_ms']:.0f} ms = {g['list_ms'] / d['list_ms']:.1f}x; "
        f"count query {d['query_ms']:.0f} vs {g['query_ms']:.0f} ms = "
        f"{g['query_ms'] / d['query_ms']:.2f}x",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
