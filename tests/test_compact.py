"""Compaction merges closed hours without losing or duplicating a flow; retention drops old hours."""

from __future__ import annotations

import pyarrow.parquet as pq
from test_store import make_flows

from flowpipe.codec import storage
from flowpipe.store import compact
from flowpipe.views import query

HOUR = 3_600_000_000_000
T0 = 1_700_000_000 * 1_000_000_000 // HOUR * HOUR


def fill(store, batches: int, start: int, per: int = 100):
    uuids = []
    for b in range(batches):
        msgs, flows, _ = make_flows(per, start + b * per * 1_000_000)
        store.write("c1", storage.to_storage(flows))
        uuids += [m.flow.uuid for m in msgs]
    return uuids


def test_merges_closed_hours_losslessly(store):
    uuids = fill(store, 5, T0)
    assert len(store.files()) == 5
    report = compact.compact(store, now=T0 + 2 * HOUR)
    assert report.merged_files == 5 and report.written_files == 1
    files = store.files()
    assert len(files) == 1
    back = storage.flows_from_columns(pq.read_table(files[0]))
    assert sorted(f.uuid for f in back) == sorted(uuids)
    _, rows = query.fetch(store, "SELECT count(*), count(DISTINCT uuid) FROM flows")
    assert rows == [(500, 500)]


def test_open_hour_with_few_files_is_left_alone(store):
    fill(store, 3, T0)
    report = compact.compact(store, now=T0 + HOUR // 2, settle_s=0)
    assert report.merged_files == 0 and len(store.files()) == 3


def _settle(store, now_ns: int, seconds_ago: float) -> None:
    """Date every file's commit (mtime) seconds_ago before now_ns (compaction's idea of now)."""
    import os

    for f in store.files():
        t = now_ns / 1e9 - seconds_ago
        os.utime(f, (t, t))


def test_open_hour_merges_settled_files_level_by_level(store, monkeypatch):
    monkeypatch.setattr(compact, "FANOUT", 4)
    uuids = fill(store, 18, T0, per=10)
    _settle(store, T0 + HOUR // 2, 60)
    report = compact.compact(store, now=T0 + HOUR // 2)
    # 18 level-0 files: four merges of 4 into level 1, then those 4 into one of level 2; 2 stay
    levels = sorted(compact.level(f) for f in store.files())
    assert levels == [0, 0, 2], levels
    assert report.merged_files == 16 + 4 and report.written_files == 5
    back = [f for p in store.files() for f in storage.flows_from_columns(pq.read_table(p))]
    assert sorted(f.uuid for f in back) == sorted(uuids)
    # serve --follow takes merged files for history: they carry the compaction suffix
    assert all(f.name.endswith(compact.COMPACT_SUFFIX) for f in store.files() if compact.level(f))
    # when the hour closes, everything becomes one final file
    compact.compact(store, now=T0 + 2 * HOUR)
    assert [compact.level(f) for f in store.files()] == [compact.FINAL]


def test_open_hour_leaves_files_that_have_not_settled(store, monkeypatch):
    monkeypatch.setattr(compact, "FANOUT", 4)
    fill(store, 6, T0, per=10)
    _settle(store, T0 + HOUR // 2, 300)
    report = compact.compact(store, now=T0 + HOUR // 2, settle_s=600)
    assert report.merged_files == 0 and len(store.files()) == 6
    _settle(store, T0 + HOUR // 2, 700)
    report = compact.compact(store, now=T0 + HOUR // 2, settle_s=600)
    assert report.merged_files == 4 and sorted(compact.level(f) for f in store.files()) == [0, 0, 1]


def test_merged_files_have_full_row_groups(store, monkeypatch):
    monkeypatch.setattr(compact, "ROW_GROUP", 250)
    fill(store, 10, T0, per=100)  # ten commits of 100 rows: one row group each
    compact.compact(store, now=T0 + 2 * HOUR)
    (merged,) = store.files()
    meta = pq.read_metadata(merged)
    assert meta.num_rows == 1000
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [250, 250, 250, 250]


def test_one_compaction_at_a_time(store):
    fill(store, 3, T0)
    with store.compact_lock() as mine:
        assert mine
        report = compact.compact(store, now=T0 + 2 * HOUR, wait=False)
        assert (
            report.skipped and report.merged_files == 0 and "another compaction" in report.summary()
        )
    assert compact.compact(store, now=T0 + 2 * HOUR, wait=False).merged_files == 3


def test_a_stopped_compaction_leaves_everything_as_it_was(store):
    import threading

    fill(store, 3, T0)
    before = store.files()
    stop = threading.Event()
    stop.set()
    report = compact.compact(store, now=T0 + 2 * HOUR, stop=stop)
    assert report.merged_files == 0 and store.files() == before
    assert not list((store.root / ".incoming").glob("*.tmp"))


def test_retention_removes_old_partitions(store):
    fill(store, 2, T0)
    fill(store, 2, T0 + 30 * HOUR)
    report = compact.compact(store, keep=24 * 3600, now=T0 + 31 * HOUR)
    assert report.removed_partitions == 1 and report.removed_files == 2
    _, rows = query.fetch(store, "SELECT count(*) FROM flows")
    assert rows == [(200,)]


def test_compaction_failure_leaves_sources(store, monkeypatch):
    fill(store, 3, T0)
    before = store.files()

    class Broken:
        def __init__(self, *a, **k):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "ParquetWriter", Broken)
    import pytest

    from flowpipe.errors import StoreError

    with pytest.raises(StoreError, match="no space left on device while compacting"):
        compact.compact(store, now=T0 + 2 * HOUR)
    assert store.files() == before
    assert not list((store.root / ".incoming").glob("*.tmp"))


def test_cli_no_wait_skips_while_another_compaction_runs(store):
    import subprocess
    import sys

    fill(store, 3, T0)
    cmd = [sys.executable, "-m", "flowpipe.cli", "compact", "--store", str(store.root), "--no-wait"]
    with store.compact_lock() as mine:
        assert mine
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and "another compaction" in res.stdout, res
        assert len(store.files()) == 3
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "merged 3 files into 1" in res.stdout, res
