"""`flowpipe migrate` on a store written by flowpipe in format 1 (tests/data/store-format1)."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import CAPTURES, DATA, load_capture

from flowpipe.cli import main
from flowpipe.codec import storage
from flowpipe.errors import StoreError
from flowpipe.store import migrate as migrate_mod
from flowpipe.store.layout import EVENTS, FLOWS, FORMAT_VERSION, Store
from flowpipe.views import query

FORMAT1 = DATA / "store-format1"


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    for kind in (FLOWS, EVENTS):
        shutil.copytree(FORMAT1 / kind, root / kind)
    return root


def _files(root: Path) -> list[Path]:
    return sorted(
        p for p in root.glob("*/cluster=*/*/*/*.parquet") if "cluster=_schema" not in str(p)
    )


def _flows(root: Path) -> list[bytes]:
    """Every stored flow, serialized (sorted: rows are reordered within row groups)."""
    out = []
    for path in Store(root).files(FLOWS):
        out += [f.SerializeToString() for f in storage.flows_from_columns(pq.read_table(path))]
    return sorted(out)


def _events(root: Path) -> list[str]:
    out = []
    for path in Store(root).files(EVENTS):
        out += map(repr, storage.events_to_storage(pq.read_table(path)).to_pylist())
    return sorted(out)


def test_commands_meeting_an_old_store_say_to_migrate_in_one_line(old_store):
    runner = CliRunner()
    for args in (
        ["query", "--store", str(old_store), "SELECT count(*) FROM flows"],
        ["import", "--store", str(old_store), str(CAPTURES / "basic-sample-10-flows.jsonl")],
        ["compact", "--store", str(old_store)],
    ):
        res = runner.invoke(main, args)
        assert res.exit_code == 2, (args, res.output)
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and "in format 1" in lines[0], res.output
        assert f"flowpipe migrate --store {old_store}" in lines[0]
    assert all(storage.is_format_1(pq.read_schema(p)) for p in _files(old_store))  # untouched


def test_migrate_converts_every_file_in_place_losslessly(old_store):
    names = [p.relative_to(old_store) for p in _files(old_store)]
    flows, events = _flows(old_store), _events(old_store)
    assert len(flows) > 500 and len(events) == 2
    (lost,) = [
        (e["lost_events"]["first"], e["lost_events"]["last"])
        for p in Store(old_store).files(EVENTS)
        for e in pq.read_table(p).cast(storage.events_schema()).to_pylist()
        if e["lost_events"]
    ]
    res = CliRunner().invoke(main, ["migrate", "--store", str(old_store)])
    assert res.exit_code == 0, res.output
    assert f"format 1 -> {FORMAT_VERSION}, done: converted {len(names)} files" in res.output
    assert [p.relative_to(old_store) for p in _files(old_store)] == names  # same names, in place
    assert not any(storage.is_format_1(pq.read_schema(p)) for p in _files(old_store))
    assert _flows(old_store) == flows and _events(old_store) == events
    store = Store.open(old_store)
    assert store.format_version() == FORMAT_VERSION
    # the real captures (no uuids: kept by fingerprint) come back exactly
    otel = [
        f.SerializeToString()
        for p in store.files(FLOWS, "otel")
        for f in storage.flows_from_columns(pq.read_table(p))
    ]
    want = [
        r.flow.SerializeToString() for r in load_capture(CAPTURES / "basic-sample-10-flows.jsonl")
    ]
    assert sorted(otel) == sorted(want)
    # the views read the migrated files with their usual types
    _, rows = query.fetch(
        store,
        "SELECT min(typeof(time)), count(*), count(DISTINCT uuid), min(typeof(uuid)) FROM flows",
    )
    assert rows == [("TIMESTAMPTZ_NS", len(flows), len(flows) - 10, "VARCHAR")]
    _, got = query.fetch(
        store, "SELECT epoch_ns(lost_first), epoch_ns(lost_last), num_events_lost FROM lost_events"
    )
    assert got == [(*lost, 3)] and lost[1] - lost[0] == 987654321 + 1234
    again = CliRunner().invoke(main, ["migrate", "--store", str(old_store)])
    assert again.exit_code == 0 and "nothing to do" in again.output


def test_an_interrupted_migration_leaves_no_half_file_and_resumes(old_store, monkeypatch):
    flows = _flows(old_store)
    originals = {p: p.read_bytes() for p in _files(old_store)}
    real = pq.ParquetWriter
    calls = {"files": 0}

    class DiskFullOnSecondFile(real):
        def __init__(self, *a, **kw):
            calls["files"] += 1
            super().__init__(*a, **kw)

        def write_table(self, *a, **kw):
            if calls["files"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            super().write_table(*a, **kw)

    monkeypatch.setattr(migrate_mod.pq, "ParquetWriter", DiskFullOnSecondFile)
    with pytest.raises(StoreError, match="no space left on device while converting"):
        migrate_mod.migrate(Store(old_store))
    monkeypatch.undo()
    changed = [p for p, data in originals.items() if p.read_bytes() != data]
    assert len(changed) == 1  # the first file converted, the second untouched (not half written)
    assert not list((old_store / ".incoming").glob("*.tmp"))
    assert Store(old_store).format_version() == "1"  # readers still ask for migrate
    report = migrate_mod.migrate(Store(old_store))
    assert (report.converted, report.skipped) == (len(originals) - 1, 1)
    assert _flows(old_store) == flows


def test_readers_see_every_flow_once_while_files_are_swapped(old_store):
    files = _files(old_store)
    total = sum(pq.read_metadata(p).num_rows for p in files)
    seen: list[int] = []
    done = threading.Event()

    def count() -> None:
        while not done.is_set():
            seen.append(sum(pq.read_metadata(p).num_rows for p in _files(old_store)))

    reader = threading.Thread(target=count)
    reader.start()
    try:
        migrate_mod.migrate(Store(old_store))
    finally:
        done.set()
        reader.join()
    assert seen and set(seen) == {total}


def test_migrate_refuses_while_a_writer_is_alive(old_store):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from flowpipe.store.layout import Store; "
            "Store(sys.argv[1]).tmp_path('x'); print('ready', flush=True); time.sleep(60)",
            str(old_store),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreError, match="writing to it"):
            migrate_mod.migrate(Store(old_store))
        assert all(storage.is_format_1(pq.read_schema(p)) for p in _files(old_store))
    finally:
        holder.kill()
        holder.wait()
    assert migrate_mod.migrate(Store(old_store)).converted == len(_files(old_store))
