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
PROGRESS_TIMEOUT = 180  # seconds a run may take to store its first new flows (a busy machine)


def collect_cmd(store, a: str, b: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "flowpipe.cli",
        "collect",
        "--store",
        store.url,
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
    """Each run is killed at a random moment of its own progress, whatever the machine's speed:
    most once this run has committed something (then up to a second later: streaming,
    decoding, mid-commit), some during start-up. The relays get new flows before each run, as a
    live cluster would, so every run has something new to store."""
    rng = random.Random(20)
    start = time.time_ns() - 3_600_000_000_000
    # 100k flows per relay over ~17 minutes of flow time, like a busy two-node cluster
    a = make_responses(FLOWS_PER_RELAY, start_ns=start, step_ns=10_000_000, node="c1-node", seed=11)
    b = make_responses(
        FLOWS_PER_RELAY, start_ns=start + 5_000_000, step_ns=10_000_000, node="c2-node", seed=12
    )
    chunk = FLOWS_PER_RELAY // (KILLS + 1)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    stored_after_kill = []
    kinds = []
    with ReplayServer(follow=True) as ra, ReplayServer(follow=True) as rb:
        cmd = collect_cmd(store, ra.address, rb.address)
        for i in range(KILLS):
            ra.feed(a[i * chunk : (i + 1) * chunk])
            rb.feed(b[i * chunk : (i + 1) * chunk])
            before = _count(store)
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if rng.random() < 0.2:
                kinds.append("start-up")
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                kinds.append("progress")
                deadline = time.monotonic() + PROGRESS_TIMEOUT
                while _count(store) <= before:
                    assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")
                    assert time.monotonic() < deadline, f"run {i}: nothing stored in time"
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 1.0))
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            stored_after_kill.append(_count(store))
        ra.feed(a[KILLS * chunk :])
        rb.feed(b[KILLS * chunk :])
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and _count(store) < 2 * FLOWS_PER_RELAY:
            time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1].decode(errors="replace")
        assert proc.returncode == 0, err
    print(
        f"\ncrash: {KILLS} SIGKILLs ({kinds.count('start-up')} during start-up); flows stored after each: {stored_after_kill}"
    )
    # every run killed after its own progress had stored something new
    counts = [0, *stored_after_kill]
    for i, kind in enumerate(kinds):
        assert counts[i + 1] >= counts[i]
        assert kind == "start-up" or counts[i + 1] > counts[i]
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
