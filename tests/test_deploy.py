"""deploy/: Kubernetes manifests, Prometheus config and rules, Grafana dashboard, Dockerfile."""

from __future__ import annotations

import json
import re
import shutil
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


def resource_files(directory: Path) -> list[Path]:
    """The files a kustomization of plain resources lists, through its sub-directories."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kust) <= {"apiVersion", "kind", "resources"}, kust  # nothing to transform
    out = []
    for r in kust["resources"]:
        p = directory / r
        out += resource_files(p) if p.is_dir() else [p]
    assert all(p.is_file() for p in out), out
    return out


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict]:
    return objects(*resource_files(K8S))


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
    assert re.search(r"pip (wheel|install)[^\n]* \"?\.", text)


# ---------------------------------------------------------------- the scaled-out shape

SCALED = K8S / "scaled-out"
SHARED = ("Namespace", "ConfigMap", "Service", "ServiceMonitor", "PrometheusRule")
# h/spark adds these options to `check`; until it is merged they are stripped from the Spark
# check's command line (the rest of it is still parsed) and test_spark_check_flags skips
SPARK_FLAGS = ("--engine", "--spark-remote")


def kustomize(directory: Path) -> dict[tuple[str, str], dict]:
    """What `kubectl kustomize` renders for the directory."""
    # kubectl comes from Google's apt repository (this machine image has it; .ci/run tries to
    # install it): where it cannot be had, the rendering tests skip, in CI too, and say so
    kubectl = require("kubectl", package="kubectl", in_ci=False)
    res = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    out = {}
    for d in yaml.safe_load_all(res.stdout):
        key = (d["kind"], d["metadata"]["name"])
        assert key not in out, key
        out[key] = d
    return out


def kustomize_with(tmp: Path, component: str) -> dict[tuple[str, str], dict]:
    """scaled-out/ rendered with one of its components enabled, as its README says to do."""
    for d in ("common", "scaled-out"):  # a copy, so that ../common still resolves
        shutil.copytree(K8S / d, tmp / d)
    kust_file = tmp / "scaled-out" / "kustomization.yaml"
    kust = yaml.safe_load(kust_file.read_text())
    assert "components" not in kust  # off by default: the Secret
    kust["components"] = [f"components/{component}"]
    kust_file.write_text(yaml.safe_dump(kust))
    return kustomize(tmp / "scaled-out")


@pytest.fixture(scope="module")
def scaled() -> dict[tuple[str, str], dict]:
    return kustomize(SCALED)


def params_env() -> dict[str, str]:
    lines = (SCALED / "params.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.fixture(scope="module")
def params() -> dict[str, str]:
    return params_env()


def readme_secrets(text: str) -> dict[str, set[str]]:
    """The Secrets the README's `kubectl create secret generic` commands make, and their keys."""
    out = {}
    for m in re.finditer(
        r"kubectl -n flowpipe create secret generic (\S+)((?: --from-\S+)+)", text
    ):
        keys = set()
        for kind, value in re.findall(r"--from-(literal|file)=(\S+)", m.group(2)):
            keys.add(value.split("=", 1)[0] if kind == "literal" or "=" in value else value)
        out[m.group(1)] = keys
    return out


def pod_template(obj: dict) -> dict:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return obj["spec"]["template"]


def workloads(objs: dict) -> list[dict]:
    return [o for o in objs.values() if o["kind"] in ("Deployment", "CronJob")]


def component(obj: dict) -> str:
    return obj["metadata"]["labels"].get("app.kubernetes.io/component", "")


def _flags(args: list[str], name: str) -> list[str]:
    return [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]


def test_scaled_out_reuses_the_shared_objects(k8s, scaled):
    # the shared objects are common/'s, unchanged and in both shapes; scaled-out/ has no copies
    common = objects(*resource_files(K8S / "common"))
    assert {k[0] for k in common} == set(SHARED)
    for key, obj in common.items():
        assert scaled[key] == obj == k8s[key], key
    own = {d["kind"] for p in SCALED.glob("*.yaml") for d in docs(p) if "kind" in d}
    assert not own & set(SHARED) - {"ConfigMap"}, own
    assert {k for k in scaled if k[0] == "ConfigMap"} == {("ConfigMap", "flowpipe-rules")}
    # no local store in this shape, and nothing outside the namespace
    assert not [k for k in scaled if k[0] == "PersistentVolumeClaim"]
    for (kind, name), obj in scaled.items():
        if kind != "Namespace":
            assert obj["metadata"]["namespace"] == "flowpipe", (kind, name)


def test_scaled_out_collectors_write_one_cluster_each_to_the_bucket(scaled, params):
    collectors = [o for o in workloads(scaled) if component(o) == "collector"]
    assert len(collectors) >= 2
    clusters = []
    for dep in collectors:
        assert dep["kind"] == "Deployment"
        assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        args = c["args"]
        assert args[0] == "collect"
        assert _flags(args, "--store") == [params["store"]]
        assert _flags(args, "--keep") == [params["keep"]]
        (relay,) = _flags(args, "--relay")
        cluster, address = relay.split("=", 1)
        assert address == params[f"relay-{cluster}"]
        assert dep["metadata"]["labels"]["flowpipe.io/cluster"] == cluster
        assert dep["spec"]["selector"]["matchLabels"]["flowpipe.io/cluster"] == cluster
        clusters.append(cluster)
        # the relay client certificates are this cluster's Secret, mounted where the flags say
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        for flag in ("--tls-ca-cert-files", "--tls-client-cert-file", "--tls-client-key-file"):
            (path,) = _flags(args, flag)
            directory, name = path.rsplit("/", 1)
            secret = volumes[mounts[directory]]["secret"]
            assert secret["secretName"] == f"hubble-relay-client-certs-{cluster}"
            assert name in {i["path"] for i in secret["items"]}
        assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert len(set(clusters)) == len(clusters), clusters
    # every relay of params.env has its collector, and no collector lacks a relay line
    assert set(clusters) == {k.removeprefix("relay-") for k in params if k.startswith("relay-")}
    assert params["store"].split("://", 1)[0] in ("s3", "gs")


def test_scaled_out_readers_read_the_writers_bucket(scaled, params):
    readers = [o for o in workloads(scaled) if component(o) != "collector"]
    assert {component(o) for o in readers} == {"exporter", "check", "check-spark"}
    rules_cm = scaled[("ConfigMap", "flowpipe-rules")]
    for obj in readers:
        pod = pod_template(obj)["spec"]
        (c,) = pod["containers"]
        assert _flags(c["args"], "--store") == [params["store"]], obj["metadata"]["name"]
        # the rule file is in the shared rules ConfigMap, mounted where the command reads it
        rules = _flags(c["args"], "--rules") if c["args"][0] == "export" else [c["args"][1]]
        (path,) = rules
        directory, name = path.rsplit("/", 1)
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == directory)
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == rules_cm["metadata"]["name"]
        assert name in rules_cm["data"]
    exporter = scaled[("Deployment", "flowpipe-exporter")]
    assert exporter["spec"]["replicas"] == 1
    spark = scaled[("CronJob", "flowpipe-check-spark")]
    (c,) = pod_template(spark)["spec"]["containers"]
    assert _flags(c["args"], "--engine") == ["spark"]
    assert _flags(c["args"], "--spark-remote") == [params["spark-remote"]]
    assert params["spark-remote"].startswith("sc://")
    # the Spark image is the one built with the spark extra, as the README and Dockerfile say
    assert c["image"].split(":")[0] == "ghcr.io/flowpipe/flowpipe-spark"
    readme = (SCALED / "README.md").read_text()
    assert "--build-arg EXTRAS=[spark] -t ghcr.io/flowpipe/flowpipe-spark:" in readme
    assert "ARG EXTRAS=" in (ROOT / "Dockerfile").read_text()


def test_scaled_out_checks_fail_once_and_retry_what_could_not_run(scaled):
    from flowpipe.rules.report import EXIT_FAILED

    checks = [o for o in scaled.values() if o["kind"] == "CronJob"]
    assert len(checks) == 2
    for cj in checks:
        assert cj["spec"]["concurrencyPolicy"] == "Forbid"
        job = cj["spec"]["jobTemplate"]["spec"]
        pod = job["template"]["spec"]
        assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
        (c,) = pod["containers"]
        assert c["args"][0] == "check" and _flags(c["args"], "--format") in (["json"], ["junit"])
        (rule,) = job["podFailurePolicy"]["rules"]
        assert rule["action"] == "FailJob"
        assert rule["onExitCodes"] == {
            "containerName": c["name"],
            "operator": "In",
            "values": [EXIT_FAILED],
        }
        assert job["backoffLimit"] >= 1  # exit 2 (could not run) is retried


def test_scaled_out_selectors_ports_and_references(scaled):
    pods = {o["metadata"]["name"]: pod_template(o) for o in workloads(scaled)}
    for obj in workloads(scaled):
        if obj["kind"] == "Deployment":
            sel = obj["spec"]["selector"]["matchLabels"]
            assert sel.items() <= obj["spec"]["template"]["metadata"]["labels"].items()
            # each Deployment selects only its own pods
            for name, pod in pods.items():
                if name != obj["metadata"]["name"]:
                    assert not sel.items() <= pod["metadata"]["labels"].items(), (obj, name)
    # the Service selects the exporter and every collector, never a check
    svc = scaled[("Service", "flowpipe")]
    selected = {
        n: p
        for n, p in pods.items()
        if svc["spec"]["selector"].items() <= p["metadata"]["labels"].items()
    }
    assert {component(o) for o in workloads(scaled) if o["metadata"]["name"] in selected} == {
        "collector",
        "exporter",
    }
    named = {}
    for name, pod in selected.items():
        (c,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        named.update(ports)
        listen = {"export": "--listen", "collect": "--metrics-listen"}[c["args"][0]]
        (addr,) = _flags(c["args"], listen)
        assert int(addr.rsplit(":", 1)[1]) in ports.values(), (name, addr, ports)
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == set(named)
    # Secrets are the ones the README creates (with the keys read); the ServiceAccount exists
    secrets = readme_secrets((SCALED / "README.md").read_text())
    clusters = [
        o["metadata"]["labels"]["flowpipe.io/cluster"]
        for o in workloads(scaled)
        if component(o) == "collector"
    ]
    relay_keys = secrets.pop("hubble-relay-client-certs-CLUSTER")
    secrets |= {f"hubble-relay-client-certs-{c}": relay_keys for c in clusters}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= secrets["flowpipe-store-credentials"]
    check_references(scaled, secrets)


def check_references(objs: dict, secrets: dict[str, set[str]]) -> None:
    """Every Secret, ConfigMap, volume and ServiceAccount a pod names exists."""
    for obj in workloads(objs):
        pod = pod_template(obj)["spec"]
        assert ("ServiceAccount", pod["serviceAccountName"]) in objs
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, (obj["metadata"]["name"], m)
            for e in c.get("envFrom", []):
                assert e["secretRef"]["name"] in secrets, e
        for v in volumes.values():
            if "secret" in v:
                keys = secrets[v["secret"]["secretName"]]
                assert {i["key"] for i in v["secret"]["items"]} <= keys, v
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in objs, v


@pytest.mark.parametrize(
    "name,annotation",
    [
        ("eks-irsa", "eks.amazonaws.com/role-arn"),
        ("gke-workload-identity", "iam.gke.io/gcp-service-account"),
        ("gcs-key-file", None),
    ],
)
def test_scaled_out_credential_components(scaled, tmp_path, name, annotation):
    objs = kustomize_with(tmp_path, name)
    annotations = objs[("ServiceAccount", "flowpipe")]["metadata"].get("annotations", {})
    assert list(annotations) == ([annotation] if annotation else [])
    secrets = readme_secrets((SCALED / "README.md").read_text())
    assert secrets["flowpipe-gcs-key"] == {"key.json"}
    for obj in workloads(objs):
        pod = pod_template(obj)["spec"]
        (c,) = pod["containers"]
        assert "envFrom" not in c  # the keys' Secret is gone from every pod
        plain = pod_template(scaled[(obj["kind"], obj["metadata"]["name"])])["spec"]
        assert c["args"] == plain["containers"][0]["args"]
        env = {e["name"]: e["value"] for e in c.get("env", [])}
        if name != "gcs-key-file":  # nothing changes in the pod but the Secret's removal
            stripped = {k: v for k, v in plain["containers"][0].items() if k != "envFrom"}
            assert pod == {**plain, "containers": [stripped]}
            continue
        key = env["GOOGLE_APPLICATION_CREDENTIALS"]
        mount = next(m for m in c["volumeMounts"] if key.startswith(m["mountPath"] + "/"))
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == "flowpipe-gcs-key"
        assert key.rsplit("/", 1)[1] in {i["path"] for i in volume["secret"]["items"]}
    relay = secrets.pop("hubble-relay-client-certs-CLUSTER")
    clusters = [k.removeprefix("relay-") for k in params_env() if k.startswith("relay-")]
    check_references(objs, secrets | {f"hubble-relay-client-certs-{c}": relay for c in clusters})


# ---------------------------------------------------------------- command lines


def flowpipe_commands(objs: dict) -> list[tuple[str, list[str]]]:
    """(workload/container, args) of every flowpipe container."""
    out = []
    for obj in workloads(objs):
        for c in pod_template(obj)["spec"]["containers"]:
            assert "ghcr.io/flowpipe/flowpipe" in c["image"] and "command" not in c
            out.append((f"{obj['metadata']['name']}/{c['name']}", c["args"]))
    return out


def parse_command(args: list[str]) -> tuple[str, dict]:
    """Parse a command line with flowpipe's own CLI (as the image's entrypoint would), not run it."""
    import click

    from flowpipe.cli import main

    ctx = main.make_context("flowpipe", args[:1])
    cmd = main.get_command(ctx, args[0])
    assert isinstance(cmd, click.Command), args
    return args[0], cmd.make_context(args[0], list(args[1:]), parent=ctx).params


def validate_command(args: list[str], files: dict[str, str], tmp: Path) -> None:
    """Parse, then check the values the command would check first (relays, durations, times).

    files: mounted file contents by path (a collector's --config is read from them)."""
    from flowpipe.common.times import parse_time
    from flowpipe.common.units import parse_duration
    from flowpipe.ingest import config as cfgmod

    name, params = parse_command(args)
    if name == "collect":
        config = params.pop("config_file")
        if config:
            local = tmp / config.rsplit("/", 1)[1]
            local.write_text(files[config])
            config = str(local)
        params.pop("print_raw_filters")
        cfg = cfgmod.load(config, store=params.pop("store_path"), **params)
        assert cfg.relays and cfg.store
    elif name == "export":
        parse_duration(params["interval"], "--interval")
        parse_duration(params["window"], "--window")
    elif name == "check":
        parse_time(params["since"], "--since")
    else:
        raise AssertionError(f"no manifest runs flowpipe {name}: {args}")


def mounted_files(objs: dict) -> dict[str, str]:
    """Path -> content of every ConfigMap key mounted by a flowpipe pod."""
    out = {}
    for obj in workloads(objs):
        pod = pod_template(obj)["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            for m in c.get("volumeMounts", []):
                cm = volumes[m["name"]].get("configMap")
                if cm:
                    for key, text in objs[("ConfigMap", cm["name"])]["data"].items():
                        out[f"{m['mountPath']}/{key}"] = text
    return out


def cli_options(command: str) -> set[str]:
    from flowpipe.cli import main

    return {o for p in main.commands[command].params for o in p.opts}


def test_every_flowpipe_command_line_parses(k8s, scaled, tmp_path):
    pending = [f for f in SPARK_FLAGS if f not in cli_options("check")]
    # both missing: h/spark not merged yet; one missing: renamed, and the parse below fails
    strip = pending if len(pending) == len(SPARK_FLAGS) else []
    seen = set()
    for objs in (k8s, scaled):
        files = mounted_files(objs)
        for _where, args in flowpipe_commands(objs):
            args = [a for a in args if a.split("=", 1)[0] not in strip]
            validate_command(args, files, tmp_path)
            seen.add(args[0])
    assert seen == {"collect", "export", "check"}
    # and the check fails on a flag flowpipe does not know, so the parse above means something
    with pytest.raises(Exception, match="No such option"):
        parse_command(["check", "stage5.sql", "--stroe=s3://b/p"])


def test_spark_check_flags_parse(scaled, params):
    missing = [f for f in SPARK_FLAGS if f not in cli_options("check")]
    if len(missing) == len(SPARK_FLAGS):
        pytest.skip(
            "flowpipe check has no --engine/--spark-remote on this checkout (h/spark adds them)"
        )
    (c,) = pod_template(scaled[("CronJob", "flowpipe-check-spark")])["spec"]["containers"]
    _, parsed = parse_command(c["args"])
    assert parsed["engine"] == "spark" and parsed["spark_remote"] == params["spark-remote"]
