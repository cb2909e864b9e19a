"""A real Prometheus scrapes flowpipe export while the simulated lab runs; dashboard, alerts and demo."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import free_port

from flowpipe.lab import generate as lab
from flowpipe.serve.replay import ReplayServer, write_responses
from flowpipe.store.layout import Store
from tests.support.tools import require

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "flowpipe-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "flowpipe-dashboard.json"
PROMETHEUS = shutil.which("prometheus") or "prometheus"
CLUSTERS = ("cluster1", "cluster2")

pytestmark = pytest.mark.prometheus


@pytest.fixture(scope="module", autouse=True)
def _prometheus_installed():
    """Skipped without Prometheus, except in CI (which installs it)."""
    require("prometheus")


def api(base: str, path: str, **params) -> dict:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


def clusters_of(base: str, expr: str) -> set[str]:
    return {r["metric"].get("cluster") for r in api(base, "query", query=expr)["result"]}


def value(base: str, expr: str) -> dict[str, float]:
    return {
        r["metric"]["cluster"]: float(r["value"][1])
        for r in api(base, "query", query=expr)["result"]
    }


def wait_for(what: str, fn, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except OSError as exc:  # Prometheus not listening yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Two simulated relays -> `flowpipe export --collect-config` -> a real Prometheus (1 s scrapes)."""
    tmp = tmp_path_factory.mktemp("prom")
    now = time.time_ns()
    flows = lab.generate_lab(5, start_ns=now - 240 * 10**9, seed=11)
    relays = {
        c: ReplayServer(responses=flows[c], cluster=c, follow=True, rate=10).start()
        for c in CLUSTERS
    }
    config = tmp / "collect.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "flush_interval": "0.5s",
                "relays": [
                    {"cluster": c, "address": f"127.0.0.1:{rs.port}", "plaintext": True}
                    for c, rs in relays.items()
                ],
            }
        )
    )
    store = Store(tmp / "store")
    export_port, prom_port = free_port(), free_port()
    exporter = start(
        [
            sys.executable,
            "-m",
            "flowpipe.cli",
            "export",
            "--rules",
            "stage5",
            "--store",
            str(store.root),
            "--listen",
            f"127.0.0.1:{export_port}",
            "--interval",
            "1s",
            "--window",
            "10m",
            "--collect-config",
            str(config),
        ],
        tmp / "export.log",
    )
    prom_config = tmp / "prometheus.yml"
    prom_config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {
                        "job_name": "flowpipe",
                        "static_configs": [{"targets": [f"127.0.0.1:{export_port}"]}],
                    }
                ],
            }
        )
    )
    prom = start(
        [
            PROMETHEUS,
            f"--config.file={prom_config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        tmp / "prometheus.log",
    )
    base = f"http://127.0.0.1:{prom_port}"
    try:

        def ready() -> bool:
            assert exporter.poll() is None, (tmp / "export.log").read_text()
            assert prom.poll() is None, (tmp / "prometheus.log").read_text()
            return clusters_of(base, 'flowpipe_stage_conformant{stage="5"}') >= set(CLUSTERS)

        wait_for("Prometheus to scrape both clusters' conformance", ready, timeout=90)
        yield {"prom": base, "store": store, "tmp": tmp, "exporter": exporter}
    finally:
        stop(prom)
        stop(exporter)
        for rs in relays.values():
            rs.close()


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        out += [(panel["title"], t["expr"]) for t in panel.get("targets", [])]
    return out


def test_every_dashboard_query_returns_both_clusters(pipeline):
    base = pipeline["prom"]
    subst = {"$cluster": "|".join(CLUSTERS), "$stage": ".*", "$__rate_interval": "20s"}
    pending = {}
    for title, expr in dashboard_exprs():
        for k, v in subst.items():
            expr = expr.replace(k, v)
        pending[title + ": " + expr] = expr

    def check_all():
        for key, expr in list(pending.items()):
            if clusters_of(base, expr) >= set(CLUSTERS):
                del pending[key]
        return not pending

    try:
        wait_for("every dashboard query", check_all, timeout=60)
    except AssertionError:
        pytest.fail("queries without series for both clusters:\n" + "\n".join(pending))
    # the dashboard's variables find both clusters and the stage
    assert set(api(base, "label/cluster/values", **{"match[]": "flowpipe_store_flows"})) >= set(
        CLUSTERS
    )
    assert "5" in api(base, "label/stage/values", **{"match[]": "flowpipe_stage_conformant"})


def test_stage_turns_non_conforming_and_the_alert_follows(pipeline):
    base, store = pipeline["prom"], pipeline["store"]
    conformant = 'flowpipe_stage_conformant{stage="5"}'
    wait_for(
        "stage 5 conformant on both clusters",
        lambda: value(base, conformant) == {c: 1.0 for c in CLUSTERS},
    )
    t0 = time.time()
    # cluster2 forgets to delete allow-all: its flows now break stage 5
    broken = lab.generate_lab(
        5,
        clusters=("cluster2",),
        variant="allow-all-left",
        start_ns=time.time_ns() - 60 * 10**9,
        seed=12,
    )
    write_responses(store, broken["cluster2"], cluster="cluster2")
    wait_for(
        "cluster2 to stop conforming",
        lambda: value(base, conformant) == {"cluster1": 1.0, "cluster2": 0.0},
    )
    violations = value(base, 'sum by (cluster) (flowpipe_rule_violation_flows{stage="5"})')
    assert violations["cluster2"] > 0 and violations.get("cluster1", 0) == 0
    failing = api(base, "query", query='flowpipe_rule_status{stage="5", status="fail"} == 1')[
        "result"
    ]
    assert {r["metric"]["cluster"] for r in failing} == {"cluster2"}
    alerts = wait_for(
        "the alert to be pending",
        lambda: [
            a
            for a in api(base, "alerts")["alerts"]
            if a["labels"]["alertname"] == "FlowpipeStageNotConformant"
        ],
    )
    assert {(a["labels"]["cluster"], a["state"]) for a in alerts} == {("cluster2", "pending")}

    # the scraped series, one sample per minute, through `promtool test rules`: the alert fires after its 5m
    def fetch():
        # the instant query above may see the 0 a moment before a range query ending "now" does
        got = api(base, "query_range", query=conformant, start=t0, end=time.time() + 1, step="1s")[
            "result"
        ]
        return (
            got
            if any(s["values"][0][1] == "1" and s["values"][-1][1] == "0" for s in got)
            else None
        )

    series = wait_for("the range query to show the change", fetch)
    input_series, n = [], 0
    for s in series:
        values = [str(int(float(v))) for _, v in s["values"]]
        n = max(n, len(values))
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s["metric"].items()))
        input_series.append(
            {
                "series": f"flowpipe_stage_conformant{{{labels}}}",
                "values": " ".join(values) + f" {values[-1]}x10",
            }
        )
    assert any(
        s["values"].split()[0] == "1" and s["values"].split()[-2] == "0" for s in input_series
    ), input_series
    metric = next(s["metric"] for s in series if s["metric"]["cluster"] == "cluster2")
    metric.pop("__name__", None)
    test = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series,
                "alert_rule_test": [
                    {
                        "eval_time": f"{n + 6}m",
                        "alertname": "FlowpipeStageNotConformant",
                        "exp_alerts": [
                            {
                                "exp_labels": {**metric, "severity": "critical"},
                                "exp_annotations": {
                                    "summary": "Stage 5 does not conform on cluster2",
                                    "description": "A rule of stage 5 fails or cannot run on cluster2. See which: "
                                    "flowpipe check stage5 --cluster cluster2 --since 15m",
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    path = pipeline["tmp"] / "conformance.test.yml"
    path.write_text(yaml.safe_dump(test))
    promtool = require("promtool")
    res = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace"
                ):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


@pytest.mark.slow
def test_demo_runs_and_ctrl_c_stops_every_child(tmp_path):
    work = tmp_path / "demo"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowpipe.cli",
            "demo",
            "--dir",
            str(work),
            "--stage",
            "2",
            "--rate",
            "10",
            "--duration",
            "120s",
            "--prometheus",
            PROMETHEUS,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 100
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        out = "".join(lines)
        assert "Ctrl-C stops everything" in out, out
        assert _processes_mentioning(str(work)), "the demo's relays/exporter should be running"
        prom = next(u.split()[-1] for u in lines if u.strip().startswith("prometheus "))
        wait_for(
            "Prometheus to scrape the demo",
            lambda: clusters_of(prom, "flowpipe_store_flows") >= set(CLUSTERS),
        )
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + rest
    assert "check stage 1: cluster1 PASS" in out and "check stage 2: cluster1 PASS" in out, out
    assert "stopping" in rest
    assert not _processes_mentioning(str(work))
