"""flowpipe export: metric content, monotonic counters, series lifecycle, /healthz, scrape path."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import free_port
from prometheus_client.parser import text_string_to_metric_families

from flowpipe.cli import main
from flowpipe.export import exporter as export
from flowpipe.export.counters import STATE_FILE
from flowpipe.export.metrics import EXPORTER_METRICS
from flowpipe.lab import generate as lab
from flowpipe.rules import check
from flowpipe.serve.replay import ReplayServer, write_responses
from flowpipe.store import compact
from flowpipe.store.layout import Store
from flowpipe.views import query
from tests.support.tools import require

HOUR = 3_600_000_000_000
RULES = """-- flowpipe: stage=t1 title="test rules"
-- rule: has-flows
-- why: flows arrive
-- expect: at_least 1
SELECT * FROM flows;

-- rule: no-drops
-- why: nothing is dropped
-- expect: none
SELECT * FROM drops;
"""
BROKEN = """-- flowpipe: stage=t2
-- rule: cannot-run
-- why: a runtime SQL error is reported as status error
-- expect: at_least 1
SELECT * FROM flows WHERE CAST(src_pod AS INTEGER) > 0;
"""


def write_lab(
    store: Store, start_ns: int, clusters=("cluster1", "cluster2"), **kw
) -> dict[str, int]:
    """Stage-5 lab flows of each cluster into the store; flows written per cluster."""
    out = {}
    for cluster, responses in lab.generate_lab(
        5, clusters=clusters, start_ns=start_ns, seed=7, **kw
    ).items():
        out[cluster] = write_responses(store, responses, cluster=cluster)
    return out


def samples(exp: export.Exporter) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value of what a scrape returns now."""
    body, _ = exp.render(False)
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(smp: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in smp.items() if n == name and want <= ls)


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    d = tmp_path / "rules"
    d.mkdir()
    (d / "t1.sql").write_text(RULES)
    return d


@pytest.fixture
def exporter(store: Store, rules_dir: Path) -> export.Exporter:
    return export.Exporter(store, [rules_dir], interval=30, window=3600)


def test_metrics_content(store, exporter):
    written = write_lab(store, time.time_ns() - 300 * 10**9)
    assert exporter.evaluate(), exporter.last_error
    smp = samples(exporter)
    for cluster, n in written.items():
        # every stored flow is counted once, like hubble_flows_processed_total
        assert total(smp, "flowpipe_flows_processed_total", cluster=cluster) == n
        assert total(smp, "flowpipe_store_flows", cluster=cluster) == n
        _, rows = query.fetch(
            store, f"SELECT verdict, count(*) FROM flows WHERE cluster = '{cluster}' GROUP BY ALL"
        )
        for verdict, count in rows:
            assert (
                total(smp, "flowpipe_flows_processed_total", cluster=cluster, verdict=verdict)
                == count
            )
        _, [(newest,)] = query.fetch(
            store, f"SELECT epoch_ns(max(time)) FROM flows WHERE cluster = '{cluster}'"
        )
        assert total(
            smp, "flowpipe_store_newest_flow_timestamp_seconds", cluster=cluster
        ) == pytest.approx(newest / 1e9)
        assert (
            total(smp, "flowpipe_store_last_flush_timestamp_seconds", cluster=cluster)
            > time.time() - 120
        )
        # the guide's panels: default-deny drops world egress (POLICY_DENIED) and L7 403s
        assert (
            total(
                smp, "flowpipe_drop_total", cluster=cluster, reason="POLICY_DENIED", protocol="TCP"
            )
            > 0
        )
        assert (
            total(smp, "flowpipe_tcp_flags_total", cluster=cluster, flag="SYN", family="IPv4") > 0
        )
        assert (
            total(
                smp, "flowpipe_port_distribution_total", cluster=cluster, protocol="UDP", port="53"
            )
            > 0
        )
        assert (
            total(
                smp, "flowpipe_port_distribution_total", cluster=cluster, protocol="TCP", port="80"
            )
            > 0
        )
        assert total(smp, "flowpipe_l7_flows_total", cluster=cluster, protocol="HTTP") > 0
        assert total(smp, "flowpipe_l7_flows_total", cluster=cluster, protocol="DNS") > 0
        assert (
            total(smp, "flowpipe_flows_processed_total", cluster=cluster, verdict="REDIRECTED") > 0
        )
        assert (
            total(
                smp,
                "flowpipe_policy_verdicts_total",
                cluster=cluster,
                direction="egress",
                action="dropped",
            )
            > 0
        )
        assert total(smp, "flowpipe_http_responses_total", cluster=cluster, status="403") > 0
        # conformance: one status is 1, the stage fails on the drops
        key = {"stage": "t1", "cluster": cluster}
        assert total(smp, "flowpipe_rule_status", rule="has-flows", status="pass", **key) == 1
        assert total(smp, "flowpipe_rule_status", rule="has-flows", **key) == 1
        assert total(smp, "flowpipe_rule_status", rule="no-drops", status="fail", **key) == 1
        assert total(smp, "flowpipe_rule_evidence_flows", rule="has-flows", **key) == n
        assert total(smp, "flowpipe_rule_violation_flows", rule="no-drops", **key) > 0
        assert total(smp, "flowpipe_stage_conformant", **key) == 0
    assert total(smp, "flowpipe_evaluations_total") == 1
    assert total(smp, "flowpipe_evaluation_last_success_timestamp_seconds") > time.time() - 60
    names = {n.removesuffix("_total") for n, _ in smp}
    declared = {s.full_name.removesuffix("_total") for s in EXPORTER_METRICS.values()}
    assert names <= declared  # nothing served that metrics.py does not declare


def test_promtool_accepts_the_exposition(store, rules_dir):
    """promtool's linter over a scrape of export with an in-process collector (both registries)."""
    from prometheus_client import CollectorRegistry

    from flowpipe.export.metrics import CollectorMetrics

    promtool = require("promtool")
    live = CollectorRegistry()
    collector = CollectorMetrics(live)
    collector.init_cluster("cluster1")
    collector.lost_events.labels("cluster1", "OBSERVER_EVENTS_QUEUE").inc(3)
    collector.flush_seconds.labels("cluster1").observe(0.02)
    exporter = export.Exporter(store, [rules_dir], interval=30, window=3600, live=live)
    write_lab(store, time.time_ns() - 300 * 10**9)
    assert exporter.evaluate(), exporter.last_error
    body = exporter.render(False)[0]
    assert b"flowpipe_collector_flows_received_total" in body
    assert b"flowpipe_rule_status{" in body and b"flowpipe_flows_processed_total{" in body
    res = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_counters_monotonic_across_compaction_retention_restart(store, rules_dir):
    now = time.time_ns()
    old_hour = (
        now // HOUR - 3
    ) * HOUR + 60 * 10**9  # closed: compaction and retention may touch it
    flows = "flowpipe_flows_processed_total"
    exp = export.Exporter(store, [rules_dir], interval=30, window=3600)
    a = write_lab(store, old_hour, clusters=("cluster1",))["cluster1"]
    exp.evaluate()
    assert total(samples(exp), flows, cluster="cluster1") == a
    # a file counted and one not yet counted are merged before the next evaluation
    b = write_lab(store, old_hour + 600 * 10**9, clusters=("cluster1",))["cluster1"]
    report = compact.compact(store, grace_s=0)
    assert report.merged_files >= 2
    exp.evaluate()
    after_compaction = samples(exp)
    assert total(after_compaction, flows, cluster="cluster1") == a + b
    # fresh flows, then retention removes the old hour: counters keep their totals
    c = write_lab(store, now - 120 * 10**9, clusters=("cluster1",))["cluster1"]
    compact.compact(store, keep=2 * 3600)
    exp.evaluate()
    smp = samples(exp)
    assert total(smp, flows, cluster="cluster1") == a + b + c
    assert (
        total(smp, "flowpipe_store_flows", cluster="cluster1") == c
    )  # the gauge follows the store
    for key, value in after_compaction.items():
        if key[0].endswith("_total") and key[0] != "flowpipe_evaluations_total":
            assert smp.get(key, 0) >= value, key
    # a restart continues from the persisted state: no reset, no double count
    assert (store.root / STATE_FILE).is_file()
    exp2 = export.Exporter(store, [rules_dir], interval=30, window=3600)
    exp2.evaluate()
    assert total(samples(exp2), flows, cluster="cluster1") == a + b + c
    d = write_lab(store, now - 60 * 10**9, clusters=("cluster1",))["cluster1"]
    exp2.evaluate()
    assert total(samples(exp2), flows, cluster="cluster1") == a + b + c + d


def test_series_of_removed_rules_and_clusters_disappear(store, rules_dir):
    (rules_dir / "t2.sql").write_text(RULES.replace("stage=t1", "stage=t2"))
    write_lab(store, time.time_ns() - 300 * 10**9)
    exp = export.Exporter(store, [rules_dir], interval=30, window=3600)
    exp.evaluate()
    smp = samples(exp)
    assert total(smp, "flowpipe_stage_conformant", stage="t2", cluster="cluster2") == 0
    assert total(smp, "flowpipe_flows_processed_total", cluster="cluster2") > 0
    (rules_dir / "t2.sql").unlink()
    for kind in ("flows", "events"):
        shutil.rmtree(store.root / kind / "cluster=cluster2", ignore_errors=True)
    exp.evaluate()
    smp = samples(exp)
    assert not [k for k in smp if ("stage", "t2") in k[1]]
    assert not [k for k in smp if ("cluster", "cluster2") in k[1]]
    assert total(smp, "flowpipe_flows_processed_total", cluster="cluster1") > 0


def test_lost_events_counted_from_the_events_view(store, exporter):
    from flowpipe.api.flow import flow_pb2
    from flowpipe.api.observer import observer_pb2

    def lost(n: int) -> observer_pb2.GetFlowsResponse:
        resp = observer_pb2.GetFlowsResponse(
            node_name="relay",
            lost_events=flow_pb2.LostEvent(
                source=flow_pb2.OBSERVER_EVENTS_QUEUE, num_events_lost=n
            ),
        )
        resp.time.GetCurrentTime()
        return resp

    write_responses(store, [lost(5), lost(2)], cluster="cluster1")
    exporter.evaluate()
    name = "flowpipe_store_lost_events_total"
    assert total(samples(exporter), name, cluster="cluster1", source="OBSERVER_EVENTS_QUEUE") == 7
    write_responses(store, [lost(3)], cluster="cluster1")
    exporter.evaluate()
    assert total(samples(exporter), name, cluster="cluster1", source="OBSERVER_EVENTS_QUEUE") == 10


def test_rule_errors_are_counted(store, rules_dir):
    (rules_dir / "t2.sql").write_text(BROKEN)
    write_lab(store, time.time_ns() - 300 * 10**9, clusters=("cluster1",))
    exp = export.Exporter(store, [rules_dir], interval=30, window=3600)
    exp.evaluate()
    smp = samples(exp)
    assert total(smp, "flowpipe_rule_status", rule="cannot-run", status="error") == 1
    assert total(smp, "flowpipe_evaluation_errors_total", kind="rule") == 1
    assert total(smp, "flowpipe_stage_conformant", stage="t2") == 0
    assert exp.health()[0]  # a rule error is a result, not a failed evaluation


def get(url: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_healthz(store, rules_dir):
    exp = export.Exporter(store, [rules_dir], interval=0.3, window=3600)
    base = f"http://{exp.serve(f'127.0.0.1:{free_port()}')}"
    try:
        code, body, _ = get(f"{base}/healthz")
        assert code == 503 and b"no evaluation has finished yet" in body
        write_lab(store, time.time_ns() - 300 * 10**9, clusters=("cluster1",))
        exp.evaluate()
        code, body, _ = get(f"{base}/healthz")
        assert code == 200 and body.startswith(b"ok")
        time.sleep(1.0)  # more than 3 intervals without an evaluation
        code, body, _ = get(f"{base}/healthz")
        assert code == 503 and b"more than 3 x 0.3s" in body
        # a failing evaluation keeps the last results and says why
        (rules_dir / "t1.sql").write_text("-- rule: bad\n")
        assert not exp.evaluate()
        code, body, _ = get(f"{base}/healthz")
        assert code == 503 and b"last error: rules:" in body
        assert total(samples(exp), "flowpipe_evaluation_errors_total", kind="check") == 1
        assert total(samples(exp), "flowpipe_rule_status", rule="has-flows", status="pass") == 1
        assert get(f"{base}/nope")[0] == 404
    finally:
        exp.stop()


def test_scrape_never_evaluates(store, rules_dir, monkeypatch):
    write_lab(store, time.time_ns() - 300 * 10**9)
    exp = export.Exporter(store, [rules_dir], interval=3600, window=3600)
    calls = []
    real = check.run_check
    monkeypatch.setattr(check, "run_check", lambda *a, **k: calls.append(1) or real(*a, **k))
    base = f"http://{exp.serve(f'127.0.0.1:{free_port()}')}"
    try:
        exp.evaluate()
        assert len(calls) == 1
        plain = get(f"{base}/metrics")[1]
        with ThreadPoolExecutor(20) as pool:
            results = list(
                pool.map(lambda _: get(f"{base}/metrics", {"Accept-Encoding": "gzip"}), range(200))
            )
        for code, body, headers in results:
            assert code == 200 and headers.get("Content-Encoding") == "gzip"
            assert gzip.decompress(body) == plain  # the same pre-rendered snapshot every time
        assert len(calls) == 1 and exp.evaluations == 1
        assert b"flowpipe_evaluations_total 1.0" in plain
    finally:
        exp.stop()


def test_background_loop_and_in_process_collector(tmp_path):
    """`export --collect-config`: collector and exporter in one process, one /metrics."""
    responses = [
        r
        for rs in lab.generate_lab(5, start_ns=time.time_ns() - 300 * 10**9, seed=3).values()
        for r in rs
    ]
    relays = {}
    for cluster in ("cluster1", "cluster2"):
        rs = ReplayServer(
            responses=[r for r in responses if r.flow.node_name.startswith(cluster)],
            cluster=cluster,
            follow=True,
        ).start()
        relays[cluster] = rs
    config = tmp_path / "collect.yaml"
    config.write_text(
        "flush_interval: 0.5s\nquiet: true\nrelays:\n"
        + "".join(
            f"  - {{cluster: {c}, address: '127.0.0.1:{rs.port}', plaintext: true}}\n"
            for c, rs in relays.items()
        )
    )
    store = Store(tmp_path / "store")
    port = free_port()
    stop = threading.Event()
    ready = []
    thread = threading.Thread(
        target=export.run,
        args=(store, ["stage5"]),
        kwargs=dict(
            listen=f"127.0.0.1:{port}",
            interval=0.5,
            window=3600,
            collect_config=str(config),
            on_ready=ready.append,
            stop=stop,
        ),
        daemon=True,
    )
    thread.start()
    try:
        deadline = time.monotonic() + 60
        body = b""
        while time.monotonic() < deadline:
            time.sleep(0.5)
            code, body, _ = get(f"http://127.0.0.1:{port}/metrics") if ready else (0, b"", {})
            if all(
                f'flowpipe_stage_conformant{{cluster="{c}",stage="5"}} 1.0'.encode() in body
                for c in relays
            ):
                break
        text = body.decode()
        for c in relays:
            assert f'flowpipe_collector_relay_connected{{cluster="{c}"}} 1.0' in text
            assert f'flowpipe_stage_conformant{{cluster="{c}",stage="5"}} 1.0' in text
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        stop.set()
        thread.join(30)
        for rs in relays.values():
            rs.close()
    assert not thread.is_alive()


def test_cli_help_has_example():
    for cmd in ("export", "demo"):
        res = CliRunner().invoke(main, [cmd, "--help"])
        assert res.exit_code == 0 and "Example:" in res.output


def test_cli_rejects_bad_rules(store, tmp_path):
    bad = tmp_path / "bad.sql"
    bad.write_text("-- rule: x\n-- why: y\n-- expect: all\nSELECT * FROM flows;\n")
    res = CliRunner().invoke(
        main,
        [
            "export",
            "--rules",
            str(bad),
            "--store",
            str(store.root),
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
    )
    assert res.exit_code == 2 and "assert" in res.output
