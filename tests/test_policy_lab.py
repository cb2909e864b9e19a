"""`flowpipe policy` proven on the lab (both clusters, five stages, broken variants) and on the
real captures: what-if predictions equal what the next stage's flows show; suggestions allow
what was allowed; the CLI's output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import capture_files
from test_stages import CLUSTERS, build

from flowpipe.cli import main
from flowpipe.ingest import importer
from flowpipe.lab import scenarios
from flowpipe.policy import schema, suggest, whatif
from flowpipe.store.layout import Store

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "deploy" / "kubernetes" / "lab"
BOOKINFO = Path(__file__).resolve().parent / "data" / "policies" / "bookinfo.yaml"
VARIANTS = ("allow-all-left", "l4-ingress-left", "no-allow-dns", "no-traffic")


def _manifests() -> dict[str, Path]:
    """The lab's policy manifests by policy name."""
    out = {}
    for path in sorted(LAB.glob("stage*/*.yaml")):
        out[yaml.safe_load(path.read_text())["metadata"]["name"]] = path
    return out


def stage_files(stage: int, variant: str | None = None) -> list[str]:
    """The manifests of the policies in namespace shop during stage (the lab's own list)."""
    files = _manifests()
    return sorted(str(files[name]) for name in scenarios.policies(stage, variant))


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict:
    out: dict = {}
    for stage in (1, 2, 3, 4, 5):
        out[stage] = build(tmp_path_factory.mktemp(f"p{stage}"), stage)
    for variant in VARIANTS:
        out[variant] = build(
            tmp_path_factory.mktemp(variant), 5, variant=variant, broken_clusters=["cluster2"]
        )
    return out


def key(d: whatif.Decision) -> tuple:
    return (d.cluster, d.direction, d.src.name, d.dst.name, d.port, d.protocol, d.l7)


def run(store: Store, stage: int) -> whatif.WhatIfReport:
    return whatif.run_whatif(store, stage_files(stage), clusters=list(CLUSTERS))


def test_lab_policies_are_the_guides():
    """Each stage's manifests: stage 4 deletes the L4 ingress pair half, stage 5 allow-all."""
    names = {s: {Path(f).stem for f in stage_files(s)} for s in (1, 2, 3, 4, 5)}
    assert names[4] == {"allow-all", "allow-dns", "allow-frontend-egress", "allow-frontend-l7"}
    assert names[5] == {"allow-dns", "allow-frontend-egress", "allow-frontend-l7", "default-deny"}


@pytest.fixture(scope="module")
def own(stores) -> dict[int, whatif.WhatIfReport]:
    """Each stage's policies over its own flows."""
    return {stage: run(stores[stage], stage) for stage in (1, 2, 3, 4, 5)}


@pytest.mark.parametrize("stage", [1, 2, 3, 4, 5])
def test_each_stage_predicts_its_own_flows(own, stage: int):
    """Policies of stage K over the flows of stage K: every stored verdict, name and match type."""
    rep = own[stage]
    seen = [d for d in rep.decisions if d.observed]
    assert {d.cluster for d in seen} == set(CLUSTERS)
    for d in seen:
        assert d.verdict.verdict == d.observed, (key(d), d.verdict.reason)
        if d.observed_policies is not None:
            assert d.verdict.policies == d.observed_policies, key(d)
            assert d.verdict.match == d.group.policy_match, key(d)
    assert not rep.would_deny()
    # replies are no connections: only the services' ports appear
    assert {d.port for d in rep.decisions} <= {53, 80, 443}


def truth(own, stage: int) -> dict[tuple, whatif.Decision]:
    return {key(d): d for d in own[stage].decisions if d.observed}


# stage K over K-1 (the issue's proof), and over older stages: stage 5 over stage 3's flows
# predicts the world egress drops, stage 4 over stage 1's the redirect to Envoy
PAIRS = [(s, f) for s in range(2, 6) for f in range(1, s)]


@pytest.mark.parametrize(("stage", "flows"), PAIRS)
def test_stage_k_over_earlier_flows_predicts_stage_k(stores, own, stage: int, flows: int):
    """What-if of stage K over the flows of an earlier stage predicts, for every connection both
    hold, the verdict (and deciding policies) that stage K's flows show."""
    expected = truth(own, stage)
    common = [
        (d, expected[key(d)]) for d in run(stores[flows], stage).decisions if key(d) in expected
    ]
    assert {d.cluster for d, _ in common} == set(CLUSTERS)
    assert len(common) >= 4
    for d, t in common:
        assert d.verdict.verdict == t.observed, (key(d), d.verdict.reason)
        if t.observed_policies is not None:
            assert d.verdict.policies == t.observed_policies, key(d)
    if flows != stage - 1:
        return
    landmarks = {  # stage 2 ran only nslookup: stage 3 shares its DNS
        2: ("EGRESS", "shop/frontend", "kube-system/kube-dns", 53, "UDP", None, "REDIRECTED"),
        3: ("EGRESS", "shop/frontend", "kube-system/kube-dns", 53, "UDP", None, "REDIRECTED"),
        4: ("INGRESS", "shop/frontend", "shop/backend", 80, "TCP", None, "REDIRECTED"),
        5: ("INGRESS", "shop/frontend", "shop/backend", 80, "TCP", "GET /status/200", "FORWARDED"),
    }
    *where, verdict = landmarks[stage]
    for cluster in CLUSTERS:
        d = next(d for d, _ in common if key(d) == (cluster, *where))
        assert d.verdict.verdict == verdict


def test_stage5_over_stage3_drops_world_egress(stores):
    rep = run(stores[3], 5)
    denied = {(d.cluster, d.dst.name, d.port) for d in rep.by_change("denied")}
    for cluster in CLUSTERS:
        assert (cluster, "world example.com (93.184.215.14)", 443) in denied
    d = rep.by_change("denied")[0]
    assert "default deny at egress" in d.verdict.reason
    assert "default-deny" not in d.verdict.policies  # ingress: [] / egress: [] selects nothing
    assert any("default-deny" in n and "changes nothing" in n for n in rep.notes)


def changes(rep: whatif.WhatIfReport, cluster: str) -> dict[str, set]:
    return {
        c: {(d.direction, d.dst.name, d.port, d.l7) for d in rep.by_change(c, cluster)}
        for c in ("denied", "allowed", "unknown")
    }


NOTHING: dict[str, set] = {"denied": set(), "allowed": set(), "unknown": set()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_intended_stage5_over_broken_variants_names_the_difference(stores, variant: str):
    rep = run(stores[variant], 5)
    assert changes(rep, "cluster1") == NOTHING  # the cluster done right
    got = changes(rep, "cluster2")
    if variant == "allow-all-left":
        assert got["denied"] == {
            ("EGRESS", "world 1.1.1.1", 80, None),
            ("EGRESS", "world example.com (93.184.215.14)", 443, None),
            ("INGRESS", "shop/backend", 80, "GET /get"),
        }
        stored = {d.observed_policies for d in rep.by_change("denied", "cluster2")}
        assert ("allow-all",) in stored
    elif variant == "l4-ingress-left":
        assert got["denied"] == {("INGRESS", "shop/backend", 80, "GET /get")}
        other = [d for d in rep.decisions if d.other_policies and d.cluster == "cluster2"]
        assert [(d.observed_policies, d.verdict.policies) for d in other] == [
            (("allow-frontend-l7", "allow-frontend-to-backend"), ("allow-frontend-l7",))
        ]
    elif variant == "no-allow-dns":
        assert got == {**NOTHING, "allowed": {("EGRESS", "kube-system/kube-dns", 53, None)}}
    else:
        assert got == NOTHING
        assert "cluster2: no flows in the window, nothing to decide" in rep.notes
    assert got["unknown"] == set()


def test_suggest_from_stage1_allows_everything_allowed(stores, tmp_path: Path):
    out = tmp_path / "suggested"
    first = suggest.suggest(stores[1], "shop", out)
    names = [p.name for p in first.files]
    assert names == [
        "backend-egress.yaml",
        "backend-ingress.yaml",
        "frontend-egress.yaml",
        "frontend-ingress.yaml",
    ]
    for path in first.files:
        assert schema.validate(yaml.safe_load(path.read_text())) == []
    rep = whatif.run_whatif(stores[1], [str(out)])
    assert rep.decisions and not rep.by_change("denied") and not rep.by_change("unknown")
    # least privilege: the suggestion denies what stage 1 never did (world egress of stage 3)
    later = whatif.run_whatif(stores[3], [str(out)])
    assert {d.dst.name for d in later.by_change("denied")} == {"world example.com (93.184.215.14)"}
    # a second run over the same flows changes no byte
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in first.files}
    again = suggest.suggest(stores[1], "shop", out)
    assert again.written == [] and sorted(again.unchanged) == sorted(first.files)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in again.files} == before


def test_suggest_l7_and_fqdn(stores, tmp_path: Path):
    """Stage 3: example.com reached by name -> toFQDNs plus a DNS rule naming the lookups;
    stage 5 with --l7: only the request that was allowed, never the dropped ones."""
    out3 = tmp_path / "s3"
    suggest.suggest(stores[3], "shop", out3)
    egress = yaml.safe_load((out3 / "frontend-egress.yaml").read_text())["spec"]["egress"]
    assert {
        "toFQDNs": [{"matchName": "example.com"}],
        "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}],
    } in egress
    dns = next(r for r in egress if "k8s-app" in str(r))
    assert dns["toPorts"][0]["rules"]["dns"] == [
        {"matchName": "backend.shop.svc.cluster.local."},
        {"matchName": "example.com."},
    ]
    rep = whatif.run_whatif(stores[3], [str(out3)])
    assert not rep.by_change("denied") and not rep.by_change("unknown")
    out5 = tmp_path / "s5"
    suggest.suggest(stores[5], "shop", out5, l7=True)
    ingress = yaml.safe_load((out5 / "backend-ingress.yaml").read_text())["spec"]["ingress"]
    assert ingress[0]["toPorts"][0]["rules"]["http"] == [{"method": "GET", "path": "^/status/200$"}]
    assert "world" not in (out5 / "frontend-egress.yaml").read_text()  # dropped: not suggested
    rep = whatif.run_whatif(stores[5], [str(out5)])
    assert not rep.by_change("denied") and not rep.by_change("unknown")


def test_lab_manifests_fit_the_schema():
    for path in sorted(LAB.glob("stage*/*.yaml")):
        assert schema.validate(yaml.safe_load(path.read_text())) == [], path


def test_schema_refuses_what_the_api_server_would():
    doc = yaml.safe_load((LAB / "stage4" / "allow-frontend-l7.yaml").read_text())
    ports = doc["spec"]["ingress"][0]["toPorts"][0]["ports"][0]
    ports["port"], ports["protocol"] = 80, "ICMP"
    doc["spec"]["ingress"][0]["fromEndpoint"] = []
    errors = schema.validate(doc)
    assert "spec.ingress[0].toPorts[0].ports[0].port: must be of type string" in errors
    assert any("protocol: 'ICMP' is not one of" in e for e in errors)
    assert any("unknown field fromEndpoint" in e for e in errors)


# ------------------------------------------------------------------ real captures


@pytest.fixture(scope="module")
def otel(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("otel") / "store")
    store.ensure()
    importer.import_files(store, [str(p) for p in capture_files()])
    return store


def test_real_captures_name_unsupported_constructs(otel: Store):
    rep = whatif.run_whatif(otel, [str(BOOKINFO)])
    constructs = {u.construct for u in rep.unsupported}
    assert constructs == {
        "toServices",
        "toGroups",
        "nodeSelector (host policy)",
        "rules.kafka",
        "named port 'http'",
        "headerMatches.secret",
    }
    assert all(u.where.startswith(f"{BOOKINFO}:") for u in rep.unsupported)
    unknown = rep.by_change("unknown")
    assert unknown and all(d.verdict.unknown for d in unknown)
    assert any("toServices" in u for d in unknown for u in d.verdict.unknown)
    # the NetworkPolicy puts jaeger in default deny at ingress: a real connection it would drop
    denied = rep.by_change("denied")
    assert [(d.dst.name, d.verdict.policies) for d in denied] == [
        ("jaeger/jaeger-default", ("jaeger-default-deny",))
    ]
    assert "skipped documents that are not network policies: 1 Deployment" in rep.notes
    lines = [
        json.loads(line)
        for line in __import__("flowpipe.policy.report", fromlist=["x"])
        .render(rep, "json")
        .splitlines()
    ]
    assert len(lines) == len(rep.decisions)


def test_real_captures_with_the_lab_policies(otel: Store):
    rep = whatif.run_whatif(otel, stage_files(5))
    assert rep.decisions and not rep.by_change("denied")
    assert any("selects none of the endpoints in the flows" in n for n in rep.notes)


# ------------------------------------------------------------------ CLI


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_cli_whatif_exit_codes_and_json(stores, tmp_path: Path):
    five = [
        str(LAB / "stage2"),
        str(LAB / "stage3" / "allow-frontend-egress.yaml"),
        str(LAB / "stage4"),
        str(LAB / "stage5"),
    ]
    res = invoke("policy", "whatif", *five, "--store", str(stores[3].root))
    assert res.exit_code == 1, res.output
    assert "WOULD BE DENIED: 1" in res.output and "result: FAIL" in res.output
    assert "policy-verdict:all EGRESS ALLOWED (TCP Flags: SYN) [egress: allow-all]" in res.output
    res = invoke("policy", "whatif", *five, "--store", str(stores[5].root), "--format", "json")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    fields = {
        "cluster",
        "direction",
        "src",
        "dst",
        "port",
        "protocol",
        "l7",
        "flows",
        "observed",
        "predicted",
        "policies",
    }
    assert rows and all(fields <= set(r) for r in rows)
    assert {r["l7"] for r in rows} >= {
        None,
        "GET /status/200",
        "DNS backend.shop.svc.cluster.local.",
    }
    assert {r["predicted"] for r in rows} <= {"allowed", "denied", "unknown"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: shop}\n"
        "spec:\n  endpointSelector: {}\n  egress:\n    - toPorts:\n        - ports: [{port: 80}]\n"
    )
    res = invoke("policy", "whatif", str(bad), "--store", str(stores[5].root))
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        f'flowpipe: error: {bad}:8: egress[0].toPorts[0].ports[0].port must be a string (write "80")'
    ]
    res = invoke("policy", "whatif", str(LAB), "--store", str(tmp_path / "nostore"))
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1


def test_cli_suggest(stores, tmp_path: Path):
    out = tmp_path / "sug"
    res = invoke(
        "policy",
        "suggest",
        "--namespace",
        "shop",
        "--store",
        str(stores[1].root),
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "backend-egress.yaml",
        "backend-ingress.yaml",
        "frontend-egress.yaml",
        "frontend-ingress.yaml",
    ]
    res = invoke(
        "policy",
        "suggest",
        "--namespace",
        "nobody",
        "--store",
        str(stores[1].root),
        "--out",
        str(out),
    )
    assert res.exit_code == 2 and "nothing to suggest" in res.stderr
    for cmd in (["policy"], ["policy", "whatif"], ["policy", "suggest"]):
        assert "Example:" in invoke(*cmd, "--help").output
