"""Apache Spark (local mode, no special configuration) reads the store's files exactly."""

from __future__ import annotations

import os
import uuid

import pytest

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2
from flowpipe.codec import decode
from flowpipe.codec import storage as codec
from flowpipe.ingest import importer
from flowpipe.lab import generate as lab
from flowpipe.store.layout import Store
from flowpipe.store.writer import StreamWriter

pyspark = pytest.importorskip("pyspark")


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"  # loopback only
    session = (
        SparkSession.builder.master("local[1]")
        .appName("flowpipe-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.driver.memory", "512m")  # a small heap: the JVM starts on a busy machine
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _ns(ts) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def _events(t0: int) -> list[observer_pb2.GetFlowsResponse]:
    lost = observer_pb2.GetFlowsResponse(node_name="c1/relay")
    lost.lost_events.source = flow_pb2.OBSERVER_EVENTS_QUEUE
    lost.lost_events.num_events_lost = 7
    lost.lost_events.cpu.value = 3
    lost.lost_events.first.FromNanoseconds(t0 + 123_456_789)
    lost.lost_events.last.FromNanoseconds(t0 + 987_654_321)
    lost.time.FromNanoseconds(t0 + 1_000_000_001)
    status = observer_pb2.GetFlowsResponse(node_name="c1/relay")
    status.node_status.state_change = 2
    status.node_status.node_names.extend(["c1/node-a", "c1/node-b"])
    status.node_status.message = "unreachable"
    status.time.FromNanoseconds(t0 + 2_000_000_003)
    return [lost, status]


def _flow_rows(spark, store: Store) -> dict[str, object]:
    """uuid (as flowpipe keys it) -> Spark row of every stored flow, read with spark.read.parquet."""
    rows = spark.read.parquet(str(store.root / "flows")).where("cluster <> '_schema'").collect()
    out = {}
    for r in rows:
        key = str(uuid.UUID(bytes=bytes(r["_uuid"]))) if r["_uuid"] is not None else r["uuid"]
        assert key not in out
        out[key] = r
    return out


def _check_flows(rows: dict, sent: list[observer_pb2.GetFlowsResponse]) -> None:
    assert len(rows) == len(sent)
    for resp in sent:
        f = resp.flow
        r = rows[f.uuid]
        assert r["time"] == _ns(f.time)  # INT64 nanoseconds, exact
        assert r["source"]["pod_name"] == f.source.pod_name
        assert list(r["destination"]["labels"]) == list(f.destination.labels)
        assert r["verdict"] == f.verdict and r["Type"] == f.Type
        if f.l4.HasField("TCP"):
            assert r["l4"]["TCP"]["destination_port"] == f.l4.TCP.destination_port
            if f.l4.TCP.HasField("flags"):
                assert r["l4"]["TCP"]["flags"]["SYN"] == f.l4.TCP.flags.SYN
        if f.l7.HasField("http"):
            assert r["l7"]["http"]["url"] == f.l7.http.url
            assert r["l7"]["latency_ns"] == f.l7.latency_ns
        if f.l7.HasField("dns"):
            assert r["l7"]["dns"]["query"] == f.l7.dns.query
        assert [p["name"] for p in r["egress_allowed_by"] or []] == [
            p.name for p in f.egress_allowed_by
        ]


def _check_events(spark, store: Store, sent: list[observer_pb2.GetFlowsResponse]) -> None:
    rows = spark.read.parquet(str(store.root / "events")).where("cluster <> '_schema'").collect()
    by_time = {r["time"]: r for r in rows}
    assert len(rows) == len(sent) == len(by_time)
    lost, status = sent
    r = by_time[_ns(lost.time)]
    assert (r["lost_events"]["first"], r["lost_events"]["last"]) == (
        _ns(lost.lost_events.first),
        _ns(lost.lost_events.last),
    )
    assert (r["lost_events"]["num_events_lost"], r["lost_events"]["cpu"]) == (7, 3)
    r = by_time[_ns(status.time)]
    assert r["node_status"]["message"] == "unreachable"
    assert list(r["node_status"]["node_names"]) == ["c1/node-a", "c1/node-b"]


def test_spark_reads_a_store_written_by_import(spark, tmp_path):
    sent = [r for rs in lab.generate_lab(4, seed=5, clusters=["cluster1"]).values() for r in rs]
    t0 = _ns(sent[0].flow.time)
    events = _events(t0)
    src = tmp_path / "flows.jsonl"
    lab.write_jsonpb(sent + events, src)
    store = Store.open(tmp_path / "store", create=True)
    report = importer.import_files(store, [str(src)], cluster="c1")
    assert report.flows == len(sent) and report.events == 2
    _check_flows(_flow_rows(spark, store), sent)
    _check_events(spark, store, events)


def test_spark_reads_a_store_written_by_the_collector(spark, tmp_path):
    sent = [r for rs in lab.generate_lab(5, seed=6, clusters=["cluster2"]).values() for r in rs]
    events = _events(_ns(sent[0].flow.time))
    store = Store.open(tmp_path / "store", create=True)
    writer = StreamWriter(store, "c1")  # a row group per batch: several per file
    raw = [r.SerializeToString() for r in sent + events]
    for i in range(0, len(raw), 150):  # batches as the collector decodes them
        flows, evs = decode.split_responses(decode.decode_responses(raw[i : i + 150]))
        writer.write(codec.to_storage(flows), evs)
    writer.commit()
    _check_flows(_flow_rows(spark, store), sent)
    _check_events(spark, store, events)
