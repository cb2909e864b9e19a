"""deploy/: Kubernetes manifests, Prometheus config and rules, Grafana dashboard, Dockerfile."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from flowpipe.export.metrics import EXPORTER_METRICS
from flowpipe.rules import rulefile as rules_mod
from tests.support.tools import require

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "flowpipe-dashboard.json"
GUIDE_PANELS = (
    "Flow Types",
    "Forwarded vs Dropped",
    "Drop Reason",
    "TCPv4 flags",
    "Top 10 Port",
    "L7 Flow Distribution",
    "Forwarded vs Redirected",
)


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def objects(*paths: Path) -> dict[tuple[str, str], dict]:
    out = {}
    for p in paths:
        for d in docs(p):
            out[(d["kind"], d["metadata"]["name"])] = d
    return out


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    paths = [K8S / r for r in kust["resources"]]
    assert all(p.is_file() for p in paths), paths
    return objects(*paths)


def _flag(args: list[str], name: str) -> str:
    for i, a in enumerate(args):
        if a.startswith(f"{name}="):
            return a.split("=", 1)[1]
        if a == name:
            return args[i + 1]
    raise AssertionError(f"{name} not in {args}")


def test_manifests_fit_together(k8s):
    ns = {name for kind, name in k8s if kind == "Namespace"}
    for (kind, name), obj in k8s.items():
        if kind != "Namespace":
            assert obj["metadata"]["namespace"] in ns, (kind, name)
    dep = k8s[("Deployment", "flowpipe")]
    pod = dep["spec"]["template"]
    sel = dep["spec"]["selector"]["matchLabels"]
    assert sel.items() <= pod["metadata"]["labels"].items()
    svc = k8s[("Service", "flowpipe")]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    ports = {p["name"]: p["containerPort"] for c in containers.values() for p in c["ports"]}
    for sp in svc["spec"]["ports"]:
        assert sp["targetPort"] in ports, sp
    # the listen flags are the ports the Service targets
    assert _flag(containers["exporter"]["args"], "--listen").endswith(f":{ports['metrics-export']}")
    assert _flag(containers["collector"]["args"], "--metrics-listen").endswith(
        f":{ports['metrics-collect']}"
    )
    assert (
        containers["exporter"]["args"][0] == "export"
        and containers["collector"]["args"][0] == "collect"
    )
    # volumes: every mount has a volume; the store is shared; configmaps and the PVC exist
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for c in containers.values():
        for m in c["volumeMounts"]:
            assert m["name"] in volumes, (c["name"], m["name"])
    mounts = {
        c["name"]: {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        for c in containers.values()
    }
    for c in containers.values():
        assert _flag(c["args"], "--store").startswith("/data/")
        assert mounts[c["name"]]["/data"] == "store"
    assert ("PersistentVolumeClaim", volumes["store"]["persistentVolumeClaim"]["claimName"]) in k8s
    for v in volumes.values():
        if "configMap" in v:
            assert ("ConfigMap", v["configMap"]["name"]) in k8s
    # the rules the exporter reads are in the rules ConfigMap and parse
    rules_path = _flag(containers["exporter"]["args"], "--rules")
    mount = next(p for p, n in mounts["exporter"].items() if n == "rules")
    assert rules_path.startswith(mount + "/")
    rules_cm = k8s[("ConfigMap", volumes["rules"]["configMap"]["name"])]
    assert rules_path.rsplit("/", 1)[1] in rules_cm["data"]
    for name, text in rules_cm["data"].items():
        assert rules_mod.parse_text(text, name).rules
    # the collector config points at the mounted relay client certificates (mTLS)
    cfg_mount = next(p for p, n in mounts["collector"].items() if n == "collect-config")
    assert _flag(containers["collector"]["args"], "--config").startswith(cfg_mount + "/")
    collect_cm = k8s[("ConfigMap", volumes["collect-config"]["configMap"]["name"])]
    cfg = yaml.safe_load(
        collect_cm["data"][_flag(containers["collector"]["args"], "--config").rsplit("/", 1)[1]]
    )
    for relay in cfg["relays"]:
        tls = relay["tls"]
        for f in (tls["cert"], tls["key"], *tls["ca_files"]):
            d, name = f.rsplit("/", 1)
            vol = volumes[mounts["collector"][d]]
            assert name in {i["path"] for i in vol["secret"]["items"]}
            assert {i["key"] for i in vol["secret"]["items"]} == {"ca.crt", "tls.crt", "tls.key"}


def test_service_monitor_selects_the_service(k8s):
    sm = k8s[("ServiceMonitor", "flowpipe")]
    svc = k8s[("Service", "flowpipe")]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
    assert {e["port"] for e in sm["spec"]["endpoints"]} == {p["name"] for p in svc["spec"]["ports"]}
    assert (
        svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "flowpipe"
    )  # job="flowpipe" as the alerts expect


def test_prometheus_rule_matches_alert_file(k8s):
    alerts = yaml.safe_load((PROM / "flowpipe-alerts.yml").read_text())
    assert k8s[("PrometheusRule", "flowpipe")]["spec"] == alerts


def test_lab_manifests_are_the_guides():
    lab = K8S / "lab"
    apps = objects(lab / "backend.yaml", lab / "frontend.yaml", lab / "namespace.yaml")
    assert ("Namespace", "shop") in apps
    for name in ("backend", "frontend"):
        dep = apps[("Deployment", name)]
        assert dep["metadata"]["namespace"] == "shop"
        assert (
            dep["spec"]["selector"]["matchLabels"]
            == dep["spec"]["template"]["metadata"]["labels"]
            == {"app": name}
        )
    svc = apps[("Service", "backend")]
    assert svc["spec"]["selector"] == {"app": "backend"}
    assert (
        svc["spec"]["ports"][0]["targetPort"]
        == apps[("Deployment", "backend")]["spec"]["template"]["spec"]["containers"][0]["ports"][0][
            "containerPort"
        ]
        == 80
    )
    expected = {
        1: {"allow-all"},
        2: {"allow-dns"},
        3: {"allow-frontend-to-backend", "allow-frontend-egress"},
        4: {"allow-frontend-l7"},
        5: {"default-deny"},
    }
    for stage, names in expected.items():
        found = objects(*sorted((lab / f"stage{stage}").glob("*.yaml")))
        assert {n for k, n in found if k == "CiliumNetworkPolicy"} == names
        for obj in found.values():
            assert obj["apiVersion"] == "cilium.io/v2" and obj["metadata"]["namespace"] == "shop"
    l7 = objects(lab / "stage4" / "allow-frontend-l7.yaml")[
        ("CiliumNetworkPolicy", "allow-frontend-l7")
    ]
    assert l7["spec"]["ingress"][0]["toPorts"][0]["rules"]["http"] == [
        {"method": "GET", "path": "^/status/200$"}
    ]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            out += [t["expr"] for t in p.get("targets", [])]
    return out


def test_dashboard_imports_as_is():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    assert "__inputs" not in dash and dash.get("id") is None
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource"
        and variables["datasource"]["query"] == "prometheus"
    )
    assert variables["cluster"]["multi"] and variables["cluster"]["includeAll"]
    assert "stage" in variables
    titles = [p["title"] for p in dash["panels"]]
    for title in GUIDE_PANELS:
        panel = next(p for p in dash["panels"] if p["title"].startswith(title))
        assert (
            panel.get("repeat") == "cluster" and panel["repeatDirection"] == "h"
        )  # clusters side by side
    for want in (
        "Stage conformance",
        "Violations",
        "Evidence",
        "Freshness",
        "Lost events",
        "Relay connected",
    ):
        assert any(want in t for t in titles), want
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    declared = {s.full_name for s in EXPORTER_METRICS.values()} | {
        "flowpipe_collector_relay_connected"
    }
    for expr in dashboard_exprs():
        for name in re.findall(r"\bflowpipe_[a-z0-9_]+", expr):
            assert name in declared, (name, expr)
        assert 'cluster=~"$cluster"' in expr  # every panel follows the cluster variable
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"


def test_promtool_config_rules_and_unit_tests():
    promtool = require("promtool")
    for args in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "flowpipe-alerts.yml"],
        ["test", "rules", "flowpipe-alerts.test.yml"],
    ):
        res = subprocess.run(
            [promtool, *args], cwd=PROM, capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert 'ENTRYPOINT ["flowpipe"]' in text
    assert re.search(r"pip (wheel|install)[^\n]* \.", text)
