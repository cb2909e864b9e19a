"""export.metrics: every metric declared once, by Prometheus' naming rules, served over real HTTP."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flowpipe.errors import ConfigError
from flowpipe.export import exporter as export
from flowpipe.export.metrics import (
    EXPORTER_METRICS,
    NAMESPACE,
    CollectorMetrics,
    parse_listen,
    serve,
)
from flowpipe.lab import generate as lab
from flowpipe.rules.status import STATUSES
from flowpipe.serve.replay import write_responses

NAME = re.compile(r"[a-z][a-z0-9_]*")


def families(registry) -> dict:
    return {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}


@pytest.mark.parametrize("spec", EXPORTER_METRICS.values(), ids=lambda s: s.name)
def test_exporter_metrics_follow_the_naming_rules(spec):
    assert NAME.fullmatch(spec.name) and not spec.name.endswith("_total")
    assert spec.full_name.startswith(f"{NAMESPACE}_")
    assert spec.full_name.endswith("_total") == (spec.kind == "counter")
    assert spec.kind in ("gauge", "counter") and spec.help.endswith(".")
    if "timestamp" in spec.name:
        assert spec.name.endswith("_timestamp_seconds") and spec.kind == "gauge"
    assert all(NAME.fullmatch(label) for label in spec.labels)
    assert len(set(spec.labels)) == len(spec.labels) <= 6
    fam = spec.family()
    assert fam.type == spec.kind and fam.name == f"{NAMESPACE}_{spec.name}"
    fam.add_metric([f"v{i}" for i in range(len(spec.labels))], 1.0)  # the labels it declares
    assert list(fam.samples[0].labels) == list(spec.labels)


def test_collector_metrics_have_a_cluster_label_and_start_at_zero():
    registry = CollectorRegistry()
    metrics = CollectorMetrics(registry)
    metrics.init_cluster("c1")
    got = families(registry)
    assert got and all(name.startswith(f"{NAMESPACE}_collector_") for name in got)
    names = {s.name for f in got.values() for s in f.samples}
    for fam in got.values():
        for sample in fam.samples:
            assert list(sample.labels)[:1] == ["cluster"] or sample.name.endswith("_created")
    # dashboards see the cluster's series before its first event
    zero = {
        s.name: s.value
        for f in got.values()
        for s in f.samples
        if s.labels.get("cluster") == "c1" and not s.name.endswith("_created")
    }
    for name in (
        "flowpipe_collector_flows_received_total",
        "flowpipe_collector_flows_stored_total",
        "flowpipe_collector_reconnects_total",
        "flowpipe_collector_relay_connected",
        "flowpipe_collector_buffered_flows",
    ):
        assert zero[name] == 0, name
    assert "flowpipe_collector_flush_duration_seconds_bucket" not in zero  # no fake observation
    assert "flowpipe_collector_lost_events_total" not in names  # its source label is not known yet


def test_serve_exposes_the_registry_over_http():
    registry = CollectorRegistry()
    metrics = CollectorMetrics(registry)
    metrics.flows_received.labels("c1").inc(5)
    port = free_port()
    server = serve(registry, f"127.0.0.1:{port}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            body = resp.read().decode()
        assert 'flowpipe_collector_flows_received_total{cluster="c1"} 5.0' in body
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve(CollectorRegistry(), f"127.0.0.1:{port}")  # the port is taken
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "listen,want",
    [
        ("127.0.0.1:9965", ("127.0.0.1", 9965)),
        (":9965", ("0.0.0.0", 9965)),
        ("[::1]:1", ("[::1]", 1)),
    ],
)
def test_parse_listen(listen, want):
    assert parse_listen(listen) == want


@pytest.mark.parametrize("bad", ["9965", "host:", "host:0", "host:65536", "host:http"])
def test_parse_listen_refuses(bad):
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        parse_listen(bad)


def test_a_rule_named_twice_in_a_stage_reports_the_worse(store, tmp_path: Path):
    for name, expect in (("a.sql", "at_least 1"), ("b.sql", "none")):
        (tmp_path / name).write_text(
            f"-- flowpipe: stage=s1\n-- rule: twin\n-- why: w\n-- expect: {expect}\nSELECT * FROM flows;\n"
        )
    for cluster, responses in lab.generate_lab(
        5, clusters=("cluster1",), start_ns=time.time_ns() - 300 * 10**9, seed=3
    ).items():
        write_responses(store, responses, cluster=cluster)
    exp = export.Exporter(store, [tmp_path / "a.sql", tmp_path / "b.sql"], interval=30, window=3600)
    assert exp.evaluate(), exp.last_error
    assert sorted(r.status for r in exp.results) == ["fail", "pass"]
    status = {
        s.labels["status"]: s.value
        for f in exp.collect()
        if f.name == "flowpipe_rule_status"
        for s in f.samples
    }
    assert status == {str(s): float(s == "fail") for s in STATUSES}


def test_collector_metrics_are_registered_as_the_table_declares():
    from flowpipe.export.metrics import COLLECTOR_METRICS

    registry = CollectorRegistry()
    m = CollectorMetrics(registry)
    got = {f.name: f for f in registry.collect()}
    for attr, spec in COLLECTOR_METRICS.items():
        name = f"{NAMESPACE}_{spec.name}"
        assert name in got, name
        assert got[name].type == spec.kind and got[name].documentation == spec.help
        assert tuple(getattr(m, attr)._labelnames) == spec.labels
    assert len(got) == len(COLLECTOR_METRICS)


def test_collector_timestamps_do_not_start_at_zero():
    """A zero there would read as 'last flush in 1970' and fire the staleness alerts."""
    registry = CollectorRegistry()
    CollectorMetrics(registry).init_cluster("c1")
    text = generate_latest(registry).decode()
    assert 'flowpipe_collector_attempts_without_progress{cluster="c1"} 0.0' in text
    assert "flowpipe_collector_newest_flow_timestamp_seconds{" not in text
    assert "flowpipe_collector_last_flush_timestamp_seconds{" not in text


def test_collector_metrics_pass_promtool():
    import subprocess

    from support.tools import require

    promtool = require("promtool")
    registry = CollectorRegistry()
    m = CollectorMetrics(registry)
    m.init_cluster("c1")
    m.lost_events.labels("c1", "HUBBLE_RING_BUFFER").inc(3)
    m.flush_seconds.labels("c1").observe(0.2)
    res = subprocess.run(
        [promtool, "check", "metrics"],
        input=generate_latest(registry),
        capture_output=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stdout + res.stderr
