"""Reliability 7: the store's filesystem fills up; nothing corrupt appears and nothing is lost."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_collect import Running, config, make_responses, stored_count, wait_for

from flowpipe.serve.replay import ReplayServer
from flowpipe.store.layout import Store

pytestmark = pytest.mark.reliability


@pytest.fixture
def small_fs(tmp_path):
    """A 16 MB tmpfs mounted for this test (needs root, as in CI)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({res.stderr.strip() or 'not root'}); CI runs as root"
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path, leave_bytes: int) -> Path:
    """Write a filler file until only about leave_bytes are free."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    filler = path / "filler"
    with open(filler, "wb") as fh:
        remaining = max(0, free - leave_bytes)
        chunk = b"\0" * (1 << 20)
        while remaining > 0:
            n = min(len(chunk), remaining)
            fh.write(chunk[:n])
            remaining -= n
    return filler


def test_full_disk_reported_and_recovered(small_fs, caplog):
    store = Store(small_fs / "store")
    store.ensure()
    start = time.time_ns() - 600_000_000_000
    first = make_responses(200, start_ns=start, seed=51)
    later = make_responses(20_000, start_ns=start + 10_000_000_000, step_ns=10_000_000, seed=52)
    with ReplayServer(responses=first, follow=True) as relay:
        with Running(config(("c1", relay.address), flush_interval=0.2), store) as run:
            wait_for(lambda: stored_count(run, "c1") == 200, what="flows before the disk fills")
            filler = fill(small_fs, leave_bytes=64 * 1024)
            relay.feed(later)
            wait_for(
                lambda: run.metric("flowpipe_collector_flush_errors_total", cluster="c1") >= 1,
                what="the failed commit to be counted",
            )
            assert any(
                "no space left on device" in r.getMessage() and "[c1]" in r.getMessage()
                for r in caplog.records
            )
            # nothing half-written where queries look, and nothing left in the temp area
            for path in store.files():
                pq.read_metadata(path)
            assert not list((store.root / ".incoming").glob("*.tmp"))
            # what was not committed is not held in memory: Relay still has it and is asked again
            assert any("asking Relay for them again" in r.getMessage() for r in caplog.records)
            filler.unlink()
            wait_for(
                lambda: stored_count(run, "c1") >= 20_200,
                timeout=60,
                what="flows after space was freed",
            )
            print(
                "stored",
                stored_count(run, "c1"),
                run.metric("flowpipe_collector_duplicate_flows_total", cluster="c1"),
            )
            assert run.stop() == 0
    uuids = [
        u
        for p in store.files()
        for u in pq.read_table(p, columns=["_uuid"]).column("_uuid").to_pylist()
    ]
    assert len(uuids) == len(set(uuids)) == 20_200


def test_collector_that_must_stop_on_a_full_disk_exits_non_zero(small_fs):
    store = Store(small_fs / "store")
    store.ensure()
    with ReplayServer(responses=make_responses(100, seed=53), follow=True) as relay:
        run = Running(config(("c1", relay.address)), store)
        with run:
            wait_for(lambda: stored_count(run, "c1") == 100, what="first flows")
            fill(small_fs, leave_bytes=32 * 1024)
            relay_more = make_responses(5000, start_ns=time.time_ns() - 5_000_000_000, seed=54)
            relay.feed(relay_more)
            wait_for(
                lambda: run.metric("flowpipe_collector_flush_errors_total", cluster="c1") >= 1,
                what="failed commit",
            )
        unstored = run.result  # stopping while the disk is still full
    assert (
        isinstance(unstored, int) and unstored > 0
    )  # the CLI turns this into exit 1 with one line
    assert not list((store.root / ".incoming").glob("*.tmp"))


def test_starting_on_a_full_disk_is_one_clear_error(small_fs):
    from click.testing import CliRunner

    from flowpipe.cli import main

    fill(small_fs, leave_bytes=4 * 1024)
    res = CliRunner().invoke(
        main,
        [
            "collect",
            "--store",
            str(small_fs / "store"),
            "--plaintext",
            "--relay",
            "c1=127.0.0.1:1",
            "--quiet",
        ],
    )
    assert res.exit_code == 2
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("flowpipe: error: store ") and "no space left on device" in line, (
        res.output
    )
