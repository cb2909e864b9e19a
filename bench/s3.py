"""The store on S3 (SeaweedFS on loopback) against local disk, as ratios measured in one run.

1. collect: `flowpipe collect` from two replay relays (N flows each) into a disk store and into
   s3://, flows/s until every flow is committed (from the collector's /metrics), and the S3
   requests the collect cost (SeaweedFS's own request counters).
2. check: stage5.sql over a big store (bench/bigstore.py) on disk and the same files on S3
   (committed through the log, one entry per file), over the whole store and over the last
   15 minutes; best of --repeat runs; LIST and GET requests one check costs on S3.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import bigstore  # noqa: E402
from common import free_port, load_note, save_result  # noqa: E402
from test_collect import make_responses  # noqa: E402

from flowpipe.rules import check  # noqa: E402
from flowpipe.serve.replay import ReplayServer  # noqa: E402
from flowpipe.store.layout import EVENTS, FLOWS, Store  # noqa: E402
from tests.support import seaweed  # noqa: E402

STORED = re.compile(r'^flowpipe_collector_flows_stored_total\{cluster="[^"]+"\} (\S+)$', re.M)
REQUESTS = re.compile(
    r'^SeaweedFS_s3_request_total\{bucket="([^"]*)",code="(\d+)",type="(\w+)"\} (\S+)$', re.M
)


def requests(server: seaweed.S3Server) -> dict[str, int]:
    """S3 requests the server answered so far, by type (GET, LIST, PUT, POST, HEAD, DELETE)."""
    text = urllib.request.urlopen(server.metrics, timeout=5).read().decode()
    out: dict[str, int] = {}
    for _, _, kind, value in REQUESTS.findall(text):
        out[kind] = out.get(kind, 0) + int(float(value))
    return out


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {
        k: after.get(k, 0) - before.get(k, 0)
        for k in sorted(after)
        if after.get(k, 0) - before.get(k, 0)
    }


def collect(store: str, relays: list[str], n: int, env: dict[str, str]) -> float:
    """Seconds from the collector's start until it has committed n flows."""
    port = free_port()
    cmd = [sys.executable, "-m", "flowpipe.cli", "collect", "--store", store, "--plaintext"]
    for i, address in enumerate(relays):
        cmd += ["--relay", f"cluster{i + 1}={address}"]
    cmd += ["--metrics-listen", f"127.0.0.1:{port}", "--quiet"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode())
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
                if sum(float(v) for v in STORED.findall(text.read().decode())) >= n:
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def copy_to_s3(disk: Store, url: str) -> Store:
    """The disk store's committed files uploaded as they are, one log entry per file."""
    from flowpipe.store.objstore import _describe_file

    remote = Store.open(url, create=True)
    for kind in (FLOWS, EVENTS):
        for path in disk.committed(kind):
            rel = str(Path(path).relative_to(disk.root))
            remote._upload(Path(path), f"{remote.root}/{rel}")
            remote.append(rel.split("/")[1].split("=", 1)[1], [_describe_file(Path(path), rel)])
    return remote


def timed_check(store: Store, since: datetime | None, repeat: int) -> tuple[float, object]:
    best, report = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        report = check.run_check(store, ["stage5.sql"], since=since)
        best = min(best, time.perf_counter() - t0)
    return best, report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=100_000, help="flows per relay for collect")
    ap.add_argument("--store-flows", type=int, default=1_000_000, help="big store for check")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    print(load_note(), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="flowpipe-s3-bench-"))
    server = seaweed.start(tmp / "weed")
    env = {**os.environ, **server.env()}
    os.environ.update(server.env())
    figures: dict = {"load": load_note()}
    try:
        # ---------------------------------------------------------------- collect
        start = time.time_ns() - 3_600_000_000_000
        a = make_responses(args.flows, start_ns=start, step_ns=5_000_000, node="n1", seed=1)
        b = make_responses(args.flows, start_ns=start + 1, step_ns=5_000_000, node="n2", seed=2)
        with (
            ReplayServer(responses=a, follow=True) as ra,
            ReplayServer(responses=b, follow=True) as rb,
        ):
            relays = [ra.address, rb.address]
            disk_s = collect(str(tmp / "collect-disk"), relays, 2 * args.flows, env)
            before = requests(server)
            s3_s = collect(server.url("collect"), relays, 2 * args.flows, env)
            cost = delta(requests(server), before)
        n = 2 * args.flows
        print(
            f"collect {n:,} flows from 2 relays: disk {n / disk_s:,.0f} flows/s ({disk_s:.1f} s), "
            f"S3 {n / s3_s:,.0f} flows/s ({s3_s:.1f} s): S3/disk = {disk_s / s3_s:.2f}x the rate; "
            f"S3 requests {cost}",
            flush=True,
        )
        figures["collect"] = {"flows": n, "disk_s": disk_s, "s3_s": s3_s, "s3_requests": cost}

        # ---------------------------------------------------------------- check
        disk, meta = bigstore.build(args.store_flows)
        t0 = time.monotonic()
        remote = copy_to_s3(disk, server.url("big"))
        print(
            f"store of {meta.total:,} flows, {len(disk.committed(FLOWS))} flows files: uploaded "
            f"to S3 in {time.monotonic() - t0:.0f} s",
            flush=True,
        )
        end = datetime.fromtimestamp(meta.end_ns / 1e9, UTC)
        for label, since in (("whole store", None), ("last 15 min", end - timedelta(minutes=15))):
            d_s, d_rep = timed_check(disk, since, args.repeat)
            Store.open(remote.url)  # a fresh client: no snapshot cached
            before = requests(server)
            one_s, _ = timed_check(Store.open(remote.url), since, 1)
            cost = delta(requests(server), before)
            s_s, s_rep = timed_check(Store.open(remote.url), since, args.repeat)
            same = [
                (r.rule, r.cluster, r.status, r.evidence, r.violations) for r in d_rep.results
            ] == [(r.rule, r.cluster, r.status, r.evidence, r.violations) for r in s_rep.results]
            print(
                f"check stage5.sql, {label}: DuckDB on disk {d_s:.2f} s, DuckDB on S3 {s_s:.2f} s "
                f"(S3/disk {s_s / d_s:.1f}x); one check on S3 cost {cost} requests "
                f"(first run {one_s:.2f} s); same report: {same}",
                flush=True,
            )
            figures[f"check {label}"] = {
                "disk_s": d_s,
                "s3_s": s_s,
                "s3_requests": cost,
                "same": same,
            }
    finally:
        seaweed.stop(server.proc)
    save_result("s3", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
