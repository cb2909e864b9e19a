"""Scrape latency of `flowpipe export`: 50 concurrent scrapers for 30 s, 100 rules x 2 clusters.

    python bench/export_scrape.py [--scrapers 50] [--seconds 30] [--rules 100] [--pause 0]

The exporter runs as its own process (its evaluation loop active, as in production); scrapers
are threads spread over a few client processes, each keeping one HTTP/1.1 connection and asking
for gzip like Prometheus. --pause sleeps between a scraper's requests (0 = back to back, the
worst case). Prints p50/p90/p99/max; the target is p99 < 50 ms. Prints, never asserts.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from flowpipe.lab import generate as lab
from flowpipe.serve.replay import write_responses
from flowpipe.store.layout import Store

RULE = """-- rule: r{i}
-- why: synthetic rule {i} for the scrape benchmark
-- expect: {expect}
SELECT * FROM flows WHERE dst_port = {port};

"""


def make_rules(d: Path, n: int) -> None:
    """n cheap rules in files of 10, each file its own stage."""
    for f in range(0, n, 10):
        text = f"-- flowpipe: stage=b{f // 10 + 1}\n"
        for i in range(f, min(n, f + 10)):
            text += RULE.format(
                i=i, expect="none" if i % 3 == 0 else "at_least 1", port=(53, 80, 443)[i % 3]
            )
        (d / f"bench{f // 10 + 1:02d}.sql").write_text(text)


def scraper_process(port: int, threads: int, seconds: float, pause: float, out: mp.Queue) -> None:
    lat: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine = []
        while time.monotonic() < end:
            t = time.perf_counter()
            conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
            resp = conn.getresponse()
            resp.read()
            mine.append(time.perf_counter() - t)
            if resp.status != 200:
                raise RuntimeError(f"status {resp.status}")
            if pause:
                time.sleep(pause)
        with lock:
            lat.extend(mine)

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put(lat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scrapers", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rules", type=int, default=100)
    ap.add_argument(
        "--pause", type=float, default=0.0, help="seconds between one scraper's requests"
    )
    ap.add_argument(
        "--procs", type=int, default=5, help="client processes the scrapers are spread over"
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flowpipe-bench-"))
    store = Store(tmp / "store")
    store.ensure()
    for cluster, responses in lab.generate_lab(
        5, start_ns=time.time_ns() - 120 * 10**9, seed=1
    ).items():
        write_responses(store, responses, cluster=cluster)
    rules = tmp / "rules"
    rules.mkdir()
    make_rules(rules, args.rules)
    port = 19965
    exporter = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowpipe.cli",
            "export",
            "--rules",
            str(rules),
            "--store",
            str(store.root),
            "--listen",
            f"127.0.0.1:{port}",
            "--interval",
            "30s",
            "--quiet",
        ]
    )
    try:
        started = time.monotonic()
        while True:  # the first evaluation must have finished: /healthz 200
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    break
            except OSError:
                pass
            if exporter.poll() is not None:
                sys.exit("exporter exited")
            time.sleep(0.2)
        conn.request("GET", "/metrics")
        body = conn.getresponse().read()
        print(
            f"exporter ready after {time.monotonic() - started:.1f}s (first evaluation of "
            f"{args.rules} rules x 2 clusters); /metrics is {len(body):,} bytes, "
            f"{sum(1 for line in body.splitlines() if not line.startswith(b'#')):,} samples"
        )
        q: mp.Queue = mp.Queue()
        per = [
            args.scrapers // args.procs + (1 if i < args.scrapers % args.procs else 0)
            for i in range(args.procs)
        ]
        procs = [
            mp.Process(target=scraper_process, args=(port, n, args.seconds, args.pause, q))
            for n in per
            if n
        ]
        for p in procs:
            p.start()
        lat = sorted(x for _ in procs for x in q.get())
        for p in procs:
            p.join()
    finally:
        exporter.terminate()
        exporter.wait(30)
    if not lat:
        sys.exit("no scrapes completed")

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000

    print(
        f"{args.scrapers} scrapers x {args.seconds:g}s (pause {args.pause:g}s), {os.cpu_count()} CPUs: "
        f"{len(lat):,} scrapes, {len(lat) / args.seconds:,.0f}/s"
    )
    print(
        f"latency ms: p50 {pct(0.50):.1f}  p90 {pct(0.90):.1f}  p99 {pct(0.99):.1f}  max {lat[-1] * 1000:.1f}"
        f"   (target p99 < 50)"
    )


if __name__ == "__main__":
    main()
