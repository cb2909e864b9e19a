"""Store layout, atomic commits, resume state and dedup keys, on real files."""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flowpipe.api.observer import observer_pb2
from flowpipe.codec import decode, storage
from flowpipe.errors import StoreError
from flowpipe.store.layout import Store, check_cluster

HOUR = 3_600_000_000_000


def make_flows(n: int, start_ns: int, step_ns: int = 1_000_000, with_uuid: bool = True):
    msgs = []
    for i in range(n):
        m = observer_pb2.GetFlowsResponse()
        t = start_ns + i * step_ns
        m.flow.time.seconds, m.flow.time.nanos = divmod(t, 1_000_000_000)
        if with_uuid:
            m.flow.uuid = str(uuid.uuid4())
        m.flow.verdict = 1
        m.flow.node_name = "node-a"
        m.flow.l4.TCP.destination_port = 80 + i % 3
        msgs.append(m)
    flows, events = decode.split_responses(
        decode.decode_responses([m.SerializeToString() for m in msgs])
    )
    return msgs, flows, events


def test_open_requires_existing_store(tmp_path, monkeypatch):
    with pytest.raises(StoreError, match="no flowpipe store"):
        Store.open(tmp_path / "nope")
    monkeypatch.delenv("FLOWPIPE_STORE", raising=False)
    with pytest.raises(StoreError, match="--store"):
        Store.open(None)
    monkeypatch.setenv("FLOWPIPE_STORE", str(tmp_path / "env-store"))
    assert Store.open(None, create=True).root == tmp_path / "env-store"


def test_write_partitions_by_cluster_and_hour(store):
    start = (
        1_700_000_000 * 1_000_000_000 // HOUR * HOUR + HOUR - 5_000_000_000
    )  # 5 s before an hour ends
    msgs, flows, events = make_flows(100, start, step_ns=100_000_000)  # spans 10 s: two hours
    result = store.write("cluster1", storage.to_storage(flows), events)
    assert len(result.files) == 2
    assert all("cluster=cluster1" in str(p) and "hour=" in str(p) for p in result.files)
    assert sum(pq.read_metadata(p).num_rows for p in result.files) == 100
    assert not list((store.root / ".incoming").glob("*.tmp"))
    assert store.clusters() == ["cluster1"]
    back = []
    for p in sorted(result.files):
        back += storage.flows_from_columns(pq.read_table(p))
    assert sorted(f.uuid for f in back) == sorted(m.flow.uuid for m in msgs)


def test_last_time_and_keys_between(store):
    start = 1_700_000_000_000_000_000
    msgs, flows, _ = make_flows(50, start)
    store.write("c1", storage.to_storage(flows))
    assert store.last_time("c1") == start + 49 * 1_000_000
    assert store.last_time("c2") is None
    keys = store.keys_between("c1", start + 40 * 1_000_000)
    assert keys == {hash(m.flow.uuid) for m in msgs[40:]}


def test_keys_of_uuidless_flows_are_fingerprints(store):
    start = 1_700_000_000_000_000_000
    _, flows, _ = make_flows(5, start, with_uuid=False)
    store.write("c1", storage.to_storage(flows))
    keys = store.keys_between("c1", start)
    assert keys == set(flows.column("_fp").to_pylist())


def test_write_failure_leaves_no_file(store, monkeypatch):
    _, flows, _ = make_flows(10, 1_700_000_000_000_000_000)

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(StoreError, match="no space left on device while writing flows/cluster=c1"):
        store.write("c1", storage.to_storage(flows))
    assert store.files() == []
    assert not list((store.root / ".incoming").glob("*.tmp"))


def test_stage_then_discard_publishes_nothing(store):
    _, flows, _ = make_flows(10, 1_700_000_000_000_000_000)
    staged = store.stage("c1", storage.to_storage(flows))
    assert staged.pending and store.files() == []
    store.discard(staged)
    assert store.files() == [] and not list((store.root / ".incoming").glob("*.tmp"))


def test_clean_incoming_removes_leftovers(store):
    (store.root / ".incoming" / "part-x.parquet.tmp").write_bytes(b"half a file")
    assert store.clean_incoming() == 1


_HOLD = """
import sys, time
from flowpipe.store.layout import Store
tmp = Store(sys.argv[1]).tmp_path("part-1.parquet")
tmp.write_bytes(b"being written")
print(tmp, flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_clean_incoming_spares_a_live_writer_and_removes_a_dead_ones(store):
    """A collector starting while `import` or `compact` writes must not delete their files."""
    import subprocess
    import sys

    live = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(store.root), "60"], stdout=subprocess.PIPE, text=True
    )
    dead = subprocess.run(
        [sys.executable, "-c", _HOLD, str(store.root), "0"],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    try:
        live_tmp = Path(live.stdout.readline().strip())
        dead_tmp = Path(dead.stdout.strip())
        assert live_tmp.exists() and dead_tmp.exists() and live_tmp.name != dead_tmp.name
        assert store.clean_incoming() == 1
        assert live_tmp.exists() and not dead_tmp.exists()
    finally:
        live.kill()
        live.wait()
    assert store.clean_incoming() == 1 and not live_tmp.exists()


def test_ensure_and_writes_from_many_processes_never_collide(tmp_path):
    """Concurrent writers (collect, import, compact) share .incoming/ without clashing names."""
    import subprocess
    import sys

    code = (
        "import sys; from flowpipe.store.layout import Store; from tests.test_store import make_flows; "
        "from flowpipe.codec import storage\n"
        "s = Store(sys.argv[1]); s.ensure()\n"
        "for i in range(5):\n"
        "    s.write('c1', storage.to_storage(make_flows(50, 1_700_000_000_000_000_000 + i)[1]))\n"
        "    s.clean_incoming()\n"
    )
    root = tmp_path / "s"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(root)],
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        for _ in range(4)
    ]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errs
    assert sum(pq.read_metadata(f).num_rows for f in Store(root).files()) == 4 * 5 * 50


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a b", "x" * 64, "_schema"])
def test_bad_cluster_names(name):
    with pytest.raises(ValueError, match="invalid cluster name"):
        check_cluster(name)
