"""Compaction merges closed hours without losing or duplicating a flow; retention drops old hours."""

from __future__ import annotations

import pyarrow.parquet as pq
from test_store import make_flows

from flowpipe import compact, query, schema

HOUR = 3_600_000_000_000
T0 = 1_700_000_000 * 1_000_000_000 // HOUR * HOUR


def fill(store, batches: int, start: int, per: int = 100):
    uuids = []
    for b in range(batches):
        msgs, flows, _ = make_flows(per, start + b * per * 1_000_000)
        store.write("c1", schema.to_storage(flows))
        uuids += [m.flow.uuid for m in msgs]
    return uuids


def test_merges_closed_hours_losslessly(store):
    uuids = fill(store, 5, T0)
    assert len(store.files()) == 5
    report = compact.compact(store, now=T0 + 2 * HOUR)
    assert report.merged_files == 5 and report.written_files == 1
    files = store.files()
    assert len(files) == 1
    back = schema.flows_from_columns(pq.read_table(files[0]))
    assert sorted(f.uuid for f in back) == sorted(uuids)
    _, rows = query.fetch(store, "SELECT count(*), count(DISTINCT uuid) FROM flows")
    assert rows == [(500, 500)]


def test_open_hour_is_left_alone(store):
    fill(store, 3, T0)
    report = compact.compact(store, now=T0 + HOUR // 2)
    assert report.merged_files == 0 and len(store.files()) == 3


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
