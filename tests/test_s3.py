"""The store on S3 (a real SeaweedFS on loopback): the same reports as on disk, nothing lost or twice."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import capture_files
from test_collect import Running, config, make_responses, wait_for
from test_stages import CLUSTERS, build

from flowpipe.codec import storage
from flowpipe.errors import StoreError
from flowpipe.lab import generate as lab
from flowpipe.rules import check
from flowpipe.serve.replay import ReplayServer, write_responses
from flowpipe.store.layout import Store
from flowpipe.views import query

STAGE_FILES = [f"stage{n}.sql" for n in (1, 2, 3, 4, 5)]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flowpipe.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def report_rows(rep: check.CheckReport) -> list[tuple]:
    """Everything a report says but how long each rule took."""
    return [
        tuple(v for k, v in dataclasses.asdict(r).items() if k != "duration_s") for r in rep.results
    ]


def stored_flows(store: Store, cluster: str) -> list:
    out = []
    for p in store.files("flows", cluster):
        out += storage.flows_from_columns(pq.read_table(store.open_input(p)))
    return out


@pytest.mark.parametrize("stage", [1, 2, 3, 4, 5])
def test_every_stage_file_reports_the_same_on_s3_as_on_disk(s3, tmp_path, stage):
    disk = build(tmp_path / "disk", stage)
    remote = build(s3.url(f"stage{stage}"), stage)
    on_disk = check.run_check(disk, STAGE_FILES, clusters=list(CLUSTERS))
    on_s3 = check.run_check(remote, STAGE_FILES, clusters=list(CLUSTERS))
    assert not on_disk.errors()
    assert report_rows(on_s3) == report_rows(on_disk)
    assert any(r.evidence for r in on_s3.results)  # the rules saw flows
    sql = "SELECT cluster, count(*), sum(hash(uuid)) FROM flows GROUP BY ALL ORDER BY ALL"
    assert query.fetch(remote, sql) == query.fetch(disk, sql)


def test_collect_from_two_relays_into_s3_gives_the_disk_report(s3, tmp_path):
    per = lab.generate_lab(5, clusters=CLUSTERS, seed=7)
    disk = Store(tmp_path / "disk")
    remote = Store.open(s3.url("collect"), create=True)
    with (
        ReplayServer(responses=per["cluster1"], follow=True) as r1,
        ReplayServer(responses=per["cluster2"], follow=True) as r2,
    ):
        for store in (disk, remote):
            cfg = config(("cluster1", r1.address), ("cluster2", r2.address))
            with Running(cfg, store) as run:
                wait_for(
                    lambda run=run: all(
                        run.metric("flowpipe_collector_flows_stored_total", cluster=c)
                        == sum(r.HasField("flow") for r in per[c])
                        for c in CLUSTERS
                    ),
                    what="every flow stored",
                )
                assert run.stop() == 0
    for c in CLUSTERS:
        sent = {r.flow.uuid: r.flow for r in per[c] if r.HasField("flow")}
        got = stored_flows(remote, c)
        assert len(got) == len(sent) and {f.uuid: f for f in got} == sent
    on_disk = check.run_check(disk, ["stage5.sql"])
    on_s3 = check.run_check(remote, ["stage5.sql"])
    assert report_rows(on_s3) == report_rows(on_disk)
    assert on_s3.passed()


def test_import_twice_into_s3_adds_nothing_the_second_time(s3, tmp_path):
    url = s3.url("import")
    files = [str(p) for p in capture_files()]
    for store in (url, url, str(tmp_path / "disk")):
        out = cli("import", "--store", store, "--cluster", "otel", *files)
        assert out.returncode == 0, out.stderr
    sql = "SELECT count(*), count(DISTINCT _uuid), sum(hash(_fp)), max(time) FROM flows_proto"
    got = query.fetch(Store.open(url), sql)
    assert got == query.fetch(Store.open(tmp_path / "disk"), sql)
    assert got[1][0][0] > 700
    out = cli("query", "--store", url, "--format", "csv", "SELECT count(*) AS n FROM flows")
    assert out.returncode == 0 and out.stdout.split() == ["n", str(got[1][0][0])], out.stderr


def test_a_data_object_without_a_log_entry_is_not_read(s3):
    """What a writer killed between its two PUTs leaves: an object no entry names."""
    store = Store.open(s3.url("orphan"), create=True)
    responses = make_responses(50, seed=3)
    from flowpipe.codec import decode

    flows, events = decode.split_responses(
        decode.decode_responses([r.SerializeToString() for r in responses])
    )
    staged = store.stage("c1", storage.to_storage(flows), events)
    for tmp, final in staged.pending:  # uploaded, never committed
        store._upload(tmp, str(final))
    store.discard(staged)
    assert store.clusters() == [] and store.committed() == []
    store.write("c1", storage.to_storage(flows), events)
    _, rows = query.fetch(store, "SELECT count(*) FROM flows")
    assert rows == [(50,)]


@pytest.mark.parametrize(
    "env, says",
    [
        ({"AWS_SECRET_ACCESS_KEY": "wrong"}, "denied"),
        ({"AWS_ACCESS_KEY_ID": "nobody"}, "denied"),
        ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot reach"),
    ],
)
def test_unreachable_store_or_bad_credentials_is_one_line(s3, env, says):
    url = s3.url("bad")
    for args in (
        ["query", "--store", url, "SELECT 1"],
        ["check", "stage5.sql", "--store", url],
        ["import", "--store", url, "--cluster", "c1", str(capture_files()[0])],
    ):
        out = cli(*args, env=env)
        assert out.returncode != 0
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and url in lines[0] and says in lines[0], out.stderr


def test_missing_bucket_and_missing_store_are_one_line(s3):
    out = cli("query", "--store", "s3://no-such-bucket-here/x", "SELECT 1")
    assert out.returncode != 0
    assert out.stderr.strip() == (
        "flowpipe: error: store s3://no-such-bucket-here/x: the bucket 'no-such-bucket-here' does not exist"
    )
    with pytest.raises(StoreError, match="no flowpipe store at s3://"):
        Store.open(s3.url("never-written"))


def _small_files(
    store: Store, cluster: str, n_files: int, per_file: int, start_ns: int, seed: int = 0
) -> int:
    """n_files commits of per_file distinct flows each (a collector's flushes), from start_ns."""
    for i in range(n_files):
        responses = make_responses(
            per_file,
            start_ns=start_ns + i * per_file * 1_000_000,
            step_ns=1_000_000,
            seed=seed + i + 1,
        )
        write_responses(store, responses, cluster=cluster)
    return n_files * per_file


COUNT = "SELECT count(*), count(DISTINCT uuid) FROM flows"


def test_compaction_while_reading_counts_every_flow_once(s3):
    """Two `flowpipe compact` processes at once (each its own log writer) while a reader reads."""
    import threading
    import time

    url = s3.url("compact")
    store = Store.open(url, create=True)
    hour = 3_600_000_000_000
    closed = (time.time_ns() // hour - 3) * hour  # an hour compaction merges whole
    total = _small_files(store, "c1", 24, 40, closed)
    total += _small_files(store, "c1", 20, 30, time.time_ns() - 120_000_000_000, 100)  # open
    seen: list = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(query.fetch(Store.open(url), COUNT)[1][0])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "flowpipe.cli", "compact", "--store", url, "--settle", "0s"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        for _ in range(3):
            seen.append(query.fetch(Store.open(url), COUNT)[1][0])
    finally:
        stop.set()
        reader.join(60)
    assert seen and set(seen) == {(total, total)}
    after = Store.open(url).committed("flows", "c1")
    assert len(after) < 10, after  # merged: 24 closed-hour files into one, 16 open ones into one
    assert sum(pq.read_metadata(Store.open(url).open_input(p)).num_rows for p in after) == total


def test_retention_drops_old_hours_from_the_log(s3):
    import time

    from flowpipe.store import compact

    url = s3.url("retention")
    store = Store.open(url, create=True)
    hour = 3_600_000_000_000
    old = _small_files(store, "c1", 3, 20, time.time_ns() - 50 * hour)
    new = _small_files(store, "c1", 2, 20, time.time_ns() - 60_000_000_000, 100)
    assert query.fetch(store, COUNT)[1] == [(old + new, old + new)]
    report = compact.compact(Store.open(url), keep=24 * 3600)
    assert report.removed_partitions == 1 and report.removed_files == 3
    assert query.fetch(Store.open(url), COUNT)[1] == [(new, new)]


@pytest.mark.slow
def test_sigkill_of_a_collector_writing_to_s3_loses_and_repeats_nothing(s3):
    import random
    import signal
    import time

    from test_reliability_crash import collect_cmd

    rng = random.Random(7)
    n = 20_000
    start = time.time_ns() - 3_600_000_000_000
    a = make_responses(n, start_ns=start, step_ns=10_000_000, node="c1-node", seed=11)
    b = make_responses(n, start_ns=start + 5_000_000, step_ns=10_000_000, node="c2-node", seed=12)
    url = s3.url("crash")
    store = Store.open(url, create=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def count() -> int:
        return query.fetch(Store.open(url), "SELECT count(*) FROM flows")[1][0][0]

    with ReplayServer(responses=a, follow=True) as ra, ReplayServer(responses=b, follow=True) as rb:
        cmd = collect_cmd(store, ra.address, rb.address)
        counts = []
        for _ in range(5):
            before = count()
            proc = subprocess.Popen(
                cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            # once it commits (a loaded machine starts slowly), at a random moment: mid-stream,
            # mid-upload or between the upload and the commit (start-up, once all is stored)
            deadline = time.monotonic() + 30
            while count() == before < 2 * n and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(rng.uniform(0.0, 1.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            counts.append(count())
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and count() < 2 * n:
            time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1].decode(errors="replace")
        assert proc.returncode == 0, err
    assert counts == sorted(counts) and counts[-1] > 0, counts
    _, rows = query.fetch(
        Store.open(url),
        "SELECT cluster, count(*), count(DISTINCT uuid) FROM flows GROUP BY ALL ORDER BY ALL",
    )
    assert rows == [("cluster1", n, n), ("cluster2", n, n)]


class _Proxy:
    """A TCP forwarder to the S3 server that the test can take down and bring back."""

    def __init__(self, target: str):
        import socket
        import threading

        self.host, self.port = "127.0.0.1", 0
        self.target = target.split("://", 1)[1].split(":")
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        import socket
        import threading

        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, self.port))
        self.port = ls.getsockname()[1]
        ls.listen(64)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def down(self) -> None:
        import contextlib
        import socket

        with self.lock:
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close alone does not
            self.listener.close()
            for c in self.conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                    c.close()
            self.conns.clear()

    def _accept(self, ls) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            server = socket.create_connection((self.target[0], int(self.target[1])))
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"


def test_collect_retries_while_the_bucket_is_unreachable_and_stores_everything_once(
    s3, monkeypatch
):
    proxy = _Proxy(s3.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    store = Store.open(s3.url("outage"), create=True)
    sent = make_responses(3000, seed=5)
    with ReplayServer(responses=sent, follow=True, rate=1500) as relay:
        with Running(config(("c1", relay.address)), store) as run:
            wait_for(lambda: run.metric("flowpipe_collector_flows_stored_total", cluster="c1") > 0)
            proxy.down()
            wait_for(
                lambda: run.metric("flowpipe_collector_flush_errors_total", cluster="c1") > 0,
                timeout=60,
                what="a failed commit counted",
            )
            before = run.metric("flowpipe_collector_flows_stored_total", cluster="c1")
            proxy.up()
            wait_for(
                lambda: (
                    run.metric("flowpipe_collector_flows_stored_total", cluster="c1")
                    > max(before, 3000)
                ),
                timeout=60,
                what="commits again after the outage",
            )
            assert run.stop() == 0
            stored = run.metric("flowpipe_collector_flows_stored_total", cluster="c1")
    # rate= keeps generating flows (new uuids): every one committed is there once, none twice
    _, rows = query.fetch(Store.open(store.url), "SELECT count(*), count(DISTINCT uuid) FROM flows")
    assert rows == [(stored, stored)]
    _, got = query.fetch(Store.open(store.url), "SELECT uuid FROM flows")
    assert {r.flow.uuid for r in sent} <= {u for (u,) in got}


def test_serve_over_s3_answers_history_and_follows_new_commits(s3):
    import time

    import grpc
    from test_server import DROPPED, Follower, Req, _resp, ids

    from flowpipe.api.observer import observer_pb2_grpc
    from flowpipe.serve.server import FlowServer

    store = Store.open(s3.url("serve"), create=True)
    write_responses(
        store,
        [_resp(i, verdict="DROPPED" if i % 2 else "FORWARDED") for i in range(20)],
        cluster="c1",
    )
    server = FlowServer(store, "127.0.0.1:0", poll_interval=0.05)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = observer_pb2_grpc.ObserverStub(channel)
        assert ids(stub, number=100) == list(range(20))
        assert ids(stub, number=3, whitelist=DROPPED) == [15, 17, 19]
        live = Follower(stub, Req(follow=True))
        time.sleep(0.5)
        write_responses(store, [_resp(i) for i in range(20, 25)], cluster="c1")
        live.wait_for(5)
        try:
            assert live.ids() == list(range(20, 25))
        finally:
            live.close()
    finally:
        channel.close()
        server.stop()


def test_export_counts_the_same_over_s3_as_on_disk(s3, tmp_path):
    from flowpipe.export.counters import StoreCounters

    disk = build(tmp_path / "disk", 5)
    remote = build(s3.url("export"), 5)
    on_disk, on_s3 = StoreCounters(disk), StoreCounters(remote)
    on_disk.update()
    on_s3.update()
    assert on_s3.totals == on_disk.totals and on_s3.totals
    assert {c: h.flows for c, h in on_s3.health.items()} == {
        c: h.flows for c, h in on_disk.health.items()
    }


def test_policy_whatif_over_s3_prints_what_it_prints_on_disk(s3, tmp_path):
    disk = build(tmp_path / "disk", 4)
    url = s3.url("whatif")
    build(url, 4)
    policies = str(Path(__file__).parent.parent / "deploy/kubernetes/lab/stage5")
    outs = [cli("policy", "whatif", policies, "--store", store) for store in (str(disk.root), url)]
    assert outs[0].returncode == outs[1].returncode and outs[0].stdout, outs[1].stderr
    assert outs[1].stdout.replace(url, "STORE") == outs[0].stdout.replace(str(disk.root), "STORE")


def test_tidy_deletes_removed_objects_and_orphans_and_folds_the_log(s3, monkeypatch):
    """Once the safe age has passed (compaction run with a later `now`), removed objects and
    orphans are deleted and the log is folded into a checkpoint; readers count the same."""
    import time

    import pyarrow.fs as pafs

    from flowpipe.store import compact, objstore

    monkeypatch.setattr(objstore, "CHECKPOINT_EVERY", 5)
    url = s3.url("tidy")
    store = Store.open(url, create=True)
    hour = 3_600_000_000_000
    total = _small_files(store, "c1", 8, 25, (time.time_ns() // hour - 3) * hour)
    orphan = f"{store.root}/flows/cluster=c1/date=2000-01-01/hour=00/part-orphan.parquet"
    store._put(orphan, b"left by a writer killed between its two PUTs")

    def objects(sub: str) -> list[str]:
        sel = pafs.FileSelector(f"{store.root}/{sub}", recursive=True, allow_not_found=True)
        return sorted(i.path for i in store.fs.get_file_info(sel) if i.type == pafs.FileType.File)

    reader = Store.open(url)  # a long-running reader (serve, export) across all of it
    assert query.fetch(reader, COUNT)[1] == [(total, total)]
    later = time.time_ns() + 2 * hour  # past SAFE_AGE_NS for everything written now
    report = compact.compact(Store.open(url), now=later, settle_s=0)
    assert report.merged_files == 8
    live = Store.open(url).committed("flows", "c1")
    assert objects("flows/cluster=c1") == live and len(live) == 1  # inputs and orphan deleted
    assert query.fetch(Store.open(url), COUNT)[1] == [(total, total)]
    Store.open(url).tidy(later + 2 * hour)  # the checkpoint is now old enough to replace entries
    log = objects("_log/c1")
    assert len(log) == 1 and "/_checkpoint/" in log[0], log
    assert query.fetch(Store.open(url), COUNT)[1] == [(total, total)]
    _small_files(Store.open(url), "c1", 1, 10, time.time_ns(), seed=50)  # new entries still count
    assert query.fetch(Store.open(url), COUNT)[1] == [(total + 10, total + 10)]
    reader.snapshot("c1", fresh=True)  # its entries were folded away: it goes on from there
    assert query.fetch(reader, COUNT)[1] == [(total + 10, total + 10)]


def test_a_log_put_whose_answer_is_lost_is_never_overwritten(s3, monkeypatch):
    """The entry landed but the writer heard an error (and could not read it back): its number
    is never used again, so the rows it committed stay, and the next commit adds to them."""
    store = Store.open(s3.url("lost-answer"), create=True)
    write_responses(store, make_responses(10, seed=1), cluster="c1")
    put = store._put

    def landed_but_lost(path: str, data: bytes) -> None:
        put(path, data)
        if "/_log/" in path:
            raise OSError("connection reset (the answer to a PUT that landed)")

    monkeypatch.setattr(store, "_put", landed_but_lost)
    monkeypatch.setattr(store, "_landed", lambda path, data: False)  # the read-back failed too
    with pytest.raises(StoreError, match="committing to the log"):
        write_responses(store, make_responses(20, seed=2), cluster="c1")
    monkeypatch.setattr(store, "_put", put)
    write_responses(store, make_responses(30, seed=3), cluster="c1")
    _, rows = query.fetch(Store.open(store.url), COUNT)
    assert rows == [(60, 60)]  # the 20 whose commit looked failed are there: they landed


def test_spark_reads_the_committed_objects_through_s3a_and_maps_them_back(s3, tmp_path):
    """Spark gets the log's committed objects as s3a:// URIs (never the bucket's directory), and
    check's sample lookup maps the names Spark reports back to the store's own paths."""
    from flowpipe.rules.spark import _local_path
    from flowpipe.views.spark import spark_uri

    store = Store.open(s3.url("sparkpaths"), create=True)
    store.write("c1", storage.to_storage(_flows(20)), None)
    files = store.committed()
    assert files
    for f in files:
        uri = spark_uri(store, f)
        assert uri == f"s3a://{f}" and _local_path(uri) == f
    local = Store.open(tmp_path / "local", create=True)
    assert spark_uri(local, "/a/b c.parquet") == "/a/b c.parquet"
    assert _local_path("file:/a/b%20c.parquet") == "/a/b c.parquet"


def _flows(n: int):
    from flowpipe.codec import decode

    responses = [r.SerializeToString() for r in make_responses(n, seed=5)]
    return decode.split_responses(decode.decode_responses(responses))[0]
