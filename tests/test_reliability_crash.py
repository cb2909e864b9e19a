"""Reliability 1: SIGKILL the collector 20 times during a 200,000-flow replay from two relays."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from test_collect import make_responses

from flowpipe.serve.replay import ReplayServer
from flowpipe.views import query

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

FLOWS_PER_RELAY = 100_000
KILLS = 20


def collect_cmd(store, a: str, b: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "flowpipe.cli",
        "collect",
        "--store",
        str(store.root),
        "--plaintext",
        "--relay",
        f"cluster1={a}",
        "--relay",
        f"cluster2={b}",
        "--flush-interval",
        "0.5s",
        "--backoff-max",
        "0.5s",
        "--resume-overlap",
        "2s",
        "--quiet",
    ]


def test_sigkill_twenty_times_loses_and_repeats_nothing(store):
    rng = random.Random(20)
    start = time.time_ns() - 3_600_000_000_000
    # 100k flows per relay over ~17 minutes of flow time, like a busy two-node cluster
    a = make_responses(FLOWS_PER_RELAY, start_ns=start, step_ns=10_000_000, node="c1-node", seed=11)
    b = make_responses(
        FLOWS_PER_RELAY, start_ns=start + 5_000_000, step_ns=10_000_000, node="c2-node", seed=12
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    stored_after_kill = []
    with ReplayServer(responses=a, follow=True) as ra, ReplayServer(responses=b, follow=True) as rb:
        cmd = collect_cmd(store, ra.address, rb.address)
        for _ in range(KILLS):
            proc = subprocess.Popen(
                cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(rng.uniform(0.4, 2.5))  # a random moment: start-up, mid-stream or mid-flush
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            stored_after_kill.append(_count(store))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and _count(store) < 2 * FLOWS_PER_RELAY:
            time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1].decode(errors="replace")
        assert proc.returncode == 0, err
    print(f"\ncrash: {KILLS} SIGKILLs; flows stored after each kill: {stored_after_kill}")
    # progress was made across the kills, not only at the end
    assert stored_after_kill[-1] > 0 and stored_after_kill == sorted(stored_after_kill)
    # every file where queries look is a complete Parquet file
    files = store.files()
    for path in files:
        pq.read_metadata(path)
    assert all(p.name.endswith(".parquet") and ".tmp" not in p.name for p in files)
    _, rows = query.fetch(
        store,
        "SELECT cluster, count(*), count(DISTINCT uuid) FROM flows GROUP BY cluster ORDER BY cluster",
    )
    assert rows == [
        ("cluster1", FLOWS_PER_RELAY, FLOWS_PER_RELAY),
        ("cluster2", FLOWS_PER_RELAY, FLOWS_PER_RELAY),
    ]
    sent = {r.flow.uuid for r in a} | {r.flow.uuid for r in b}
    _, got = query.fetch(store, "SELECT uuid FROM flows")
    assert {u for (u,) in got} == sent


def _count(store) -> int:
    return sum(pq.read_metadata(p).num_rows for p in store.files())
