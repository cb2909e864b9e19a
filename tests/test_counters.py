"""export.counters: running totals over a real store, checked against the flows view itself."""

from __future__ import annotations

import time

import pytest
from google.protobuf import json_format

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2
from flowpipe.export.counters import COUNTERS, MAX_PORTS, STATE_FILE, StoreCounters
from flowpipe.lab import generate as lab
from flowpipe.serve.replay import write_responses
from flowpipe.views import query

NOW = time.time_ns()


def lab_store(store, start_ns: int = NOW - 600 * 10**9) -> int:
    written = 0
    for cluster, responses in lab.generate_lab(5, start_ns=start_ns, seed=11).items():
        written += write_responses(store, responses, cluster=cluster)
    return written


def tcp_to(port: int, i: int) -> observer_pb2.GetFlowsResponse:
    flow = json_format.ParseDict(
        {
            "time": f"2025-10-02T14:00:{i % 60:02d}.{i:09d}Z",
            "uuid": f"00000000-0000-4000-8000-{i:012d}",
            "verdict": "FORWARDED",
            "event_type": {"type": 4},
            "is_reply": False,
            "IP": {"source": "10.0.0.1", "destination": "10.0.0.2", "ipVersion": "IPv4"},
            "l4": {"TCP": {"source_port": 40000, "destination_port": port}},
            "node_name": "c1/node",
        },
        flow_pb2.Flow(),
    )
    return observer_pb2.GetFlowsResponse(flow=flow, node_name=flow.node_name, time=flow.time)


def totals(counters: StoreCounters) -> dict:
    return {name: counters.series(name) for name in COUNTERS}


def fetch(store, sql: str) -> dict:
    return {tuple(row[:-1]): row[-1] for row in query.fetch(store, sql)[1]}


def test_counts_equal_the_flows_view(store):
    written = lab_store(store)
    counters = StoreCounters(store)
    counters.update()
    per_cluster = fetch(store, "SELECT cluster, count(*) FROM flows GROUP BY ALL")
    assert sum(per_cluster.values()) == written
    for (cluster,), n in per_cluster.items():
        assert sum(v for c, _, v in counters.series("flows_processed") if c == cluster) == n
        assert counters.health[cluster].flows == n
    drops = fetch(
        store,
        "SELECT cluster, coalesce(drop_reason_desc, ''), count(*) FROM flows "
        "WHERE verdict = 'DROPPED' GROUP BY ALL",
    )
    got: dict = {}
    for cluster, (reason, _protocol), n in counters.series("drop"):
        got[(cluster, reason)] = got.get((cluster, reason), 0) + n
    assert got == drops and drops
    codes = fetch(
        store,
        "SELECT cluster, http_method, CAST(http_code AS VARCHAR), count(*) FROM flows "
        "WHERE l7_protocol = 'HTTP' AND l7_type = 'RESPONSE' AND http_code IS NOT NULL GROUP BY ALL",
    )
    assert {(c, *labels): n for c, labels, n in counters.series("http_responses")} == codes
    assert codes
    newest = fetch(store, "SELECT cluster, epoch_ns(max(time)) FROM flows GROUP BY ALL")
    assert {c: h.newest_ns for c, h in counters.health.items()} == {
        c: n for (c,), n in newest.items()
    }


def test_an_update_without_new_files_counts_nothing_twice(store):
    lab_store(store)
    counters = StoreCounters(store)
    counters.update()
    before = totals(counters)
    counters.update()
    assert totals(counters) == before
    # new files add exactly their flows
    more = write_responses(store, [tcp_to(443, i) for i in range(7)], cluster="cluster1")
    counters.update()
    added = sum(v for c, _, v in counters.series("flows_processed") if c == "cluster1") - sum(
        v for c, _, v in before["flows_processed"] if c == "cluster1"
    )
    assert more == added == 7


def test_ports_beyond_the_cap_count_as_other(store):
    ports = MAX_PORTS + 20
    write_responses(store, [tcp_to(1000 + i, i) for i in range(ports)], cluster="c1")
    write_responses(store, [tcp_to(5000, ports + 1)], cluster="c1")  # a later file: one more port
    counters = StoreCounters(store)
    counters.update()
    series = {tuple(labels): n for _, labels, n in counters.series("port_distribution")}
    assert len(series) == MAX_PORTS + 1 and sum(series.values()) == ports + 1
    assert series[("TCP", "other")] == ports + 1 - MAX_PORTS


def test_a_broken_state_file_recounts_from_the_store(store, caplog):
    lab_store(store)
    counters = StoreCounters(store)
    counters.update()
    want = totals(counters)
    (store.root / STATE_FILE).write_text("{not json")
    again = StoreCounters(store)
    assert "unreadable" in caplog.text and STATE_FILE in caplog.text
    again.update()
    assert totals(again) == want


def test_an_unwritable_state_warns_once_and_counts_on(store, caplog):
    (store.root / STATE_FILE).mkdir()  # neither readable nor replaceable as a file
    counters = StoreCounters(store)
    lab_store(store)
    counters.update()
    write_responses(store, [tcp_to(443, i) for i in range(3)], cluster="cluster1")
    counters.update()
    warnings = [r for r in caplog.records if "cannot save export state" in r.message]
    assert len(warnings) == 1
    total = sum(v for _, _, v in counters.series("flows_processed"))
    assert total == sum(query.fetch(store, "SELECT count(*) FROM flows")[1][0])


@pytest.mark.parametrize("name", COUNTERS)
def test_every_counter_is_declared_as_a_metric(name):
    from flowpipe.export.metrics import EXPORTER_METRICS

    spec = EXPORTER_METRICS[name]
    assert spec.kind == "counter" and spec.labels[0] == "cluster"
