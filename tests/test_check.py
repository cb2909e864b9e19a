"""run_check, reports and the check CLI on real stores: statuses, vacuity, windows, samples, exit codes."""

from __future__ import annotations

import json
import threading
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from google.protobuf import json_format

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2
from flowpipe.cli import main
from flowpipe.codec import decode, storage
from flowpipe.errors import ConfigError, StoreError
from flowpipe.rules import check, report, sandbox
from flowpipe.store.layout import Store

NOW = datetime(2025, 10, 2, 14, 30, tzinfo=UTC)
FRONTEND = {
    "namespace": "shop",
    "pod_name": "frontend-79f5dbfc6c-d6gb7",
    "identity": 114060,
    "labels": ["k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=shop"],
}
KUBE_DNS = {
    "namespace": "kube-system",
    "pod_name": "kube-dns-75df64b86-xrfwz",
    "identity": 67025,
    "labels": ["k8s:k8s-app=kube-dns", "k8s:io.kubernetes.pod.namespace=kube-system"],
}


def dns_verdict(when: datetime, policy: str, port: int = 53000) -> observer_pb2.GetFlowsResponse:
    """A policy-verdict:L3-L4 EGRESS ALLOWED flow from frontend to kube-dns:53, allowed by policy."""
    flow = json_format.ParseDict(
        {
            "time": when.isoformat().replace("+00:00", "Z"),
            "verdict": "FORWARDED",
            "IP": {"source": "10.0.0.5", "destination": "10.0.1.9", "ipVersion": "IPv4"},
            "l4": {"UDP": {"source_port": port, "destination_port": 53}},
            "source": FRONTEND,
            "destination": KUBE_DNS,
            "Type": "L3_L4",
            "node_name": "node-1",
            "event_type": {"type": 5},
            "traffic_direction": "EGRESS",
            "policy_match_type": 2,
            "is_reply": False,
            "egress_allowed_by": [
                {"name": policy, "namespace": "shop", "kind": "CiliumNetworkPolicy"}
            ],
            "Summary": "UDP",
        },
        flow_pb2.Flow(),
    )
    return observer_pb2.GetFlowsResponse(flow=flow, node_name="node-1", time=flow.time)


def write(store: Store, cluster: str, responses) -> None:
    flows, events = decode.split_responses(
        decode.decode_responses([r.SerializeToString() for r in responses])
    )
    store.write(cluster, storage.to_storage(flows), events)


def rule_file(tmp_path: Path, body: str, name: str = "rules.sql") -> Path:
    p = tmp_path / name
    p.write_text('-- flowpipe: stage=9 title="test"\n' + body)
    return p


DNS_SCOPE = "SELECT * FROM policy_verdicts WHERE src_namespace = 'shop' AND dst_port = 53"
OK = f"-- rule: ok\n-- why: DNS by allow-dns\n-- expect: all\n-- assert: allowed_by(egress_allowed_by, 'allow-dns')\n{DNS_SCOPE};\n\n"
BAD = "-- rule: bad\n-- why: allow-all must be gone\n-- expect: none\nSELECT * FROM flows WHERE allowed_by(egress_allowed_by, 'allow-all');\n\n"
SOFT = "-- rule: soft\n-- why: allow-all should be gone\n-- expect: none\n-- severity: warn\nSELECT * FROM flows WHERE allowed_by(egress_allowed_by, 'allow-all');\n\n"
BROKEN = "-- rule: broken\n-- why: w\n-- expect: none\nSELECT no_such_column FROM flows;\n\n"


@pytest.fixture
def shop(store: Store) -> Store:
    write(
        store,
        "cluster1",
        [dns_verdict(NOW - timedelta(minutes=5), "allow-dns", 40000 + i) for i in range(3)]
        + [dns_verdict(NOW - timedelta(minutes=4), "allow-all")],
    )
    return store


def statuses(rep: check.CheckReport) -> dict[tuple[str, str], str]:
    return {(r.rule, r.cluster): r.status for r in rep.results}


def test_statuses_pass_warn_fail_error_are_distinct(shop: Store, tmp_path: Path):
    rep = check.run_check(shop, [rule_file(tmp_path, OK + BAD + SOFT + BROKEN)])
    assert statuses(rep) == {
        ("ok", "cluster1"): "fail",
        ("bad", "cluster1"): "fail",
        ("soft", "cluster1"): "warn",
        ("broken", "cluster1"): "error",
    }
    ok = rep.results[0]
    assert (ok.evidence, ok.violations) == (4, 1) and "1 of 4 flows violate" in ok.message
    broken = rep.results[3]
    assert (
        broken.message.startswith(f"{tmp_path / 'rules.sql'}:") and "rule broken" in broken.message
    )
    assert "no_such_column" in broken.message
    assert not rep.passed() and report.exit_code(rep) == 2
    assert rep.stage_status() == {("9", "cluster1"): "error"}


def test_exit_codes_follow_the_worst_status(shop: Store, tmp_path: Path):
    ok_only = (
        "-- rule: ok\n-- why: w\n-- expect: all\n-- assert: verdict = 'FORWARDED'\n"
        + DNS_SCOPE
        + "\n\n"
    )
    rep = check.run_check(shop, [rule_file(tmp_path, ok_only + SOFT)])
    assert statuses(rep) == {("ok", "cluster1"): "pass", ("soft", "cluster1"): "warn"}
    assert (
        rep.passed()
        and report.exit_code(rep) == 0
        and rep.stage_status() == {("9", "cluster1"): "pass"}
    )
    rep = check.run_check(shop, [rule_file(tmp_path, ok_only + BAD)])
    assert (
        not rep.passed()
        and report.exit_code(rep) == 1
        and rep.stage_status() == {("9", "cluster1"): "fail"}
    )


def test_quiet_cluster_never_passes_vacuously(shop: Store, tmp_path: Path):
    quiet_events = observer_pb2.GetFlowsResponse(
        node_name="relay", time={"seconds": int(NOW.timestamp())}
    )
    quiet_events.node_status.state_change = 1
    write(shop, "cluster2", [quiet_events])  # known to the store, but no flows
    body = (
        "-- rule: all-dns\n-- why: w\n-- expect: all\n-- assert: verdict = 'FORWARDED'\n"
        + DNS_SCOPE
        + "\n\n"
        "-- rule: some-dns\n-- why: w\n-- expect: at_least 2\n" + DNS_SCOPE + "\n\n"
        "-- rule: optional\n-- why: w\n-- expect: all\n-- assert: false\n-- min_flows: 0\n"
        + DNS_SCOPE
        + " AND false\n\n"
        "-- rule: nothing-dropped\n-- why: w\n-- expect: none\nSELECT * FROM drops\n"
    )
    rep = check.run_check(shop, [rule_file(tmp_path, body)], clusters=None)
    assert rep.clusters == ["cluster1", "cluster2"]  # every cluster of the store, flows or not
    got = statuses(rep)
    assert got[("all-dns", "cluster1")] == "pass" and got[("all-dns", "cluster2")] == "fail"
    assert got[("some-dns", "cluster1")] == "pass" and got[("some-dns", "cluster2")] == "fail"
    assert (
        got[("optional", "cluster2")] == "pass" and got[("nothing-dropped", "cluster2")] == "pass"
    )
    quiet = next(r for r in rep.results if (r.rule, r.cluster) == ("all-dns", "cluster2"))
    assert quiet.evidence == 0 and "need at least 1" in quiet.message
    rep = check.run_check(shop, [rule_file(tmp_path, body)], clusters=["cluster1", "elsewhere"])
    assert statuses(rep)[("some-dns", "elsewhere")] == "fail"


def test_window_restricts_flows_and_files(store: Store, tmp_path: Path):
    write(store, "cluster1", [dns_verdict(NOW - timedelta(hours=3), "allow-all")])
    write(store, "cluster1", [dns_verdict(NOW - timedelta(minutes=10), "allow-dns")])
    f = rule_file(tmp_path, OK)
    assert statuses(check.run_check(store, [f]))[("ok", "cluster1")] == "fail"
    recent = check.run_check(store, [f], since=NOW - timedelta(hours=1))
    assert statuses(recent)[("ok", "cluster1")] == "pass" and recent.results[0].evidence == 1
    old = check.run_check(
        store, [f], since=NOW - timedelta(hours=4), until=NOW - timedelta(hours=2)
    )
    assert old.results[0].evidence == 1 and old.results[0].violations == 1
    empty = check.run_check(store, [f], since=NOW - timedelta(minutes=9), until=NOW)
    assert empty.results[0].evidence == 0 and empty.results[0].status == "fail"
    # partition pruning: the 3-hour-old file is not even readable by the rule connection
    sb = sandbox.Sandbox(store, ["cluster1"], NOW - timedelta(hours=1), None)
    try:
        listed = [p for p in sb.files["cluster1"]["flows"] if "cluster=cluster1" in p]
        assert len(listed) == 1 and f"hour={(NOW - timedelta(minutes=10)):%H}" in listed[0]
    finally:
        sb.close()


def test_a_window_wider_than_duckdb_time_is_every_flow(shop: Store, tmp_path: Path):
    """Bounds outside DuckDB's TIMESTAMP_NS range (1677-2262) hold every stored flow; they used to
    make every rule an error (the literal did not convert)."""
    path = rule_file(tmp_path, OK + BAD + SOFT)
    wide = check.run_check(shop, [path], since="1000-01-01T00:00:00Z", until="9999-12-31T00:00:00Z")
    assert not wide.errors(), [r.message for r in wide.errors()]
    assert statuses(wide) == statuses(check.run_check(shop, [path]))


def test_samples_are_flow_rows_oldest_first_and_capped(store: Store, tmp_path: Path):
    write(
        store,
        "cluster1",
        [dns_verdict(NOW - timedelta(seconds=60 - i), "allow-all", 41000 + i) for i in range(8)],
    )
    rep = check.run_check(store, [rule_file(tmp_path, BAD)], samples=3)
    [r] = rep.results
    assert r.violations == 8 and len(r.samples) == 3
    assert [s["src_port"] for s in r.samples] == [41000, 41001, 41002]
    assert r.samples[0]["verdict"] == "FORWARDED" and r.samples[0]["egress_allowed_by"] == [
        "allow-all"
    ]
    line = report.flow_line(r.samples[0])
    assert (
        "shop/frontend-79f5dbfc6c-d6gb7:41000" in line
        and "policy-verdict:L3-L4 EGRESS ALLOWED" in line
    )
    text = report.render_text(rep)
    assert "why: allow-all must be gone" in text and line in text and "... and 5 more" in text
    assert check.run_check(store, [rule_file(tmp_path, BAD)], samples=0).results[0].samples == []


def test_rule_timeout_interrupts_and_the_next_rule_runs(shop: Store, tmp_path: Path):
    slow = (
        "-- rule: slow\n-- why: w\n-- expect: none\nSELECT * FROM flows\n"
        "WHERE (SELECT count(*) FROM range(1000000000000) t(x) WHERE x % 7 = 1) > 0\n\n"
    )
    rep = check.run_check(shop, [rule_file(tmp_path, slow + SOFT)], rule_timeout=0.5)
    assert statuses(rep) == {("slow", "cluster1"): "error", ("soft", "cluster1"): "warn"}
    assert "interrupted after 0.5 s" in rep.results[0].message and report.exit_code(rep) == 2


def test_memory_limit_bounds_a_rule(shop: Store, tmp_path: Path):
    hog = (
        "-- rule: hog\n-- why: w\n-- expect: none\nSELECT * FROM flows WHERE (SELECT count(*) FROM "
        "(SELECT DISTINCT x::VARCHAR || 'padding-padding' FROM range(20000000) t(x))) < 0\n"
    )
    rep = check.run_check(shop, [rule_file(tmp_path, hog)], memory_limit="32MB")
    assert (
        rep.results[0].status == "error"
        and "out of memory (--memory-limit 32MB)" in rep.results[0].message
    )
    with pytest.raises(ConfigError, match="memory-limit"):
        check.run_check(shop, [rule_file(tmp_path, hog)], memory_limit="lots")


def test_json_report_has_stable_keys(shop: Store, tmp_path: Path):
    rep = check.run_check(
        shop, [rule_file(tmp_path, OK + SOFT)], since="2025-10-02T14:00:00Z", until=NOW
    )
    doc = json.loads(report.render_json(rep))
    assert list(doc) == [
        "passed",
        "exit_code",
        "since",
        "until",
        "clusters",
        "counts",
        "stages",
        "results",
    ]
    assert doc["since"] == "2025-10-02T14:00:00Z" and doc["until"] == "2025-10-02T14:30:00Z"
    assert doc["counts"] == {"pass": 0, "warn": 1, "fail": 1, "error": 0}
    assert doc["stages"] == [{"stage": "9", "cluster": "cluster1", "status": "fail"}]
    first = doc["results"][0]
    assert list(first) == [
        "file",
        "stage",
        "rule",
        "cluster",
        "status",
        "severity",
        "evidence",
        "violations",
        "why",
        "message",
        "duration_s",
        "sample_lines",
        "samples",
    ]
    assert (
        first["samples"][0]["time"].startswith("2025-10-02T14:26:00") and first["sample_lines"][0]
    )


def test_junit_report_has_a_testcase_per_rule_and_cluster(shop: Store, tmp_path: Path):
    rep = check.run_check(
        shop, [rule_file(tmp_path, OK + SOFT + BROKEN)], clusters=["cluster1", "cluster2"]
    )
    root = ET.fromstring(report.render_junit(rep))
    assert root.tag == "testsuites" and root.get("tests") == "6"
    assert (root.get("failures"), root.get("errors")) == ("2", "2")
    cases = root.findall("./testsuite/testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases][:2] == [
        ("flowpipe.9.cluster1", "ok"),
        ("flowpipe.9.cluster2", "ok"),
    ]
    assert cases[0].find("failure").get("message").startswith("1 of 4 flows violate")
    assert "why: DNS by allow-dns" in cases[0].find("failure").text
    assert cases[2].find("system-out").text.startswith("WARNING:")  # warn on cluster1
    assert cases[4].find("error") is not None


def test_cli_exit_codes_and_outputs(shop: Store, tmp_path: Path):
    runner = CliRunner()
    store = ["--store", str(shop.root)]
    good = rule_file(
        tmp_path,
        "-- rule: ok\n-- why: w\n-- expect: all\n-- assert: verdict = 'FORWARDED'\n"
        + DNS_SCOPE
        + "\n",
    )
    res = runner.invoke(main, ["check", str(good), *store])
    assert res.exit_code == 0 and "result: PASS" in res.output, res.output
    res = runner.invoke(
        main, ["check", str(rule_file(tmp_path, BAD, "bad.sql")), *store, "--since", "1h"]
    )
    assert (
        res.exit_code == 0 and "FAIL bad" not in res.output
    )  # nothing in the last hour: none passes
    res = runner.invoke(main, ["check", str(rule_file(tmp_path, BAD, "bad.sql")), *store])
    assert res.exit_code == 1 and "FAIL bad on cluster1" in res.output
    broken = rule_file(
        tmp_path, "-- rule: r\n-- why: w\n-- expect: sometimes\nSELECT 1\n", "broken.sql"
    )
    res = runner.invoke(main, ["check", str(broken), *store])
    assert res.exit_code == 2 and f"{broken}:4: rule r: bad expect 'sometimes'" in res.output
    res = runner.invoke(main, ["check", str(rule_file(tmp_path, BROKEN, "err.sql")), *store])
    assert res.exit_code == 2 and "ERROR broken on cluster1" in res.output
    res = runner.invoke(main, ["check", str(good), "--store", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no flowpipe store" in res.output
    out = tmp_path / "report.xml"
    res = runner.invoke(
        main, ["check", str(good), *store, "--format", "junit", "--output", str(out)]
    )
    assert res.exit_code == 0 and ET.parse(out).getroot().get("tests") == "1"
    res = runner.invoke(
        main, ["check", str(good), *store, "--format", "json", "--cluster", "cluster1"]
    )
    assert res.exit_code == 0 and json.loads(res.output)["passed"] is True
    res = runner.invoke(main, ["check", str(good), *store, "--since", "yesterday"])
    assert res.exit_code == 2 and "invalid --since 'yesterday'" in res.output


def test_cli_shipped_stage_by_bare_name_and_rules_listing(shop: Store, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["check", "stage5.sql", "--store", str(shop.root)])
    assert res.exit_code == 1 and "stage 5: cluster1 fail" in res.output, res.output
    res = runner.invoke(main, ["rules"])
    assert res.exit_code == 0 and "stage5.sql" in res.output and "no-allow-all" in res.output
    for cmd in ("check", "rules"):
        assert "Example:" in runner.invoke(main, [cmd, "--help"]).output


def test_empty_store_is_an_error_not_a_pass(store: Store, tmp_path: Path):
    with pytest.raises(StoreError, match="no clusters"):
        check.run_check(store, [rule_file(tmp_path, BAD)])


def test_check_runs_while_collect_writes(store: Store, tmp_path: Path):
    write(store, "cluster1", [dns_verdict(NOW - timedelta(minutes=30), "allow-dns")])
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        i = 0
        try:
            while not stop.is_set() and i < 200:
                write(
                    store,
                    "cluster1",
                    [
                        dns_verdict(
                            NOW - timedelta(minutes=20) + timedelta(seconds=i),
                            "allow-dns",
                            42000 + i % 1000,
                        )
                    ],
                )
                i += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    try:
        seen = []
        for _ in range(5):
            rep = check.run_check(store, [rule_file(tmp_path, OK)])
            assert rep.results[0].status == "pass", rep.results[0].message
            seen.append(rep.results[0].evidence)
    finally:
        stop.set()
        t.join()
    assert not errors and seen == sorted(seen)


def test_bad_window_and_cluster_are_config_errors(shop: Store, tmp_path: Path):
    f = rule_file(tmp_path, BAD)
    with pytest.raises(ConfigError, match="is after --until"):
        check.run_check(shop, [f], since="1h", until="2h")
    with pytest.raises(ConfigError, match="invalid cluster name"):
        check.run_check(shop, [f], clusters=["../etc"])
    with pytest.raises(ConfigError, match="rule-timeout"):
        check.run_check(shop, [f], rule_timeout=0)
