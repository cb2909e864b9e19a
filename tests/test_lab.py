"""The lab simulator against the guide: quoted hubble lines per stage, policy names, variants."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from click.testing import CliRunner
from conftest import load_capture

from flowpipe.api.flow import flow_pb2
from flowpipe.cli import main
from flowpipe.codec import decode, storage
from flowpipe.codec import hubble as hf
from flowpipe.errors import ConfigError
from flowpipe.lab import generate as lab
from flowpipe.views import catalog as views

P = " (ID:114060) -> shop/backend-6c4c67dc75-g22jn:80 (ID:69364) policy-verdict:L3-L4 "

# Every `hubble observe` line the guide quotes, by stage (cluster1 is d6gb7, cluster2 is r56dx).
GUIDE = {
    1: """\
Oct  2 14:06:19.406: shop/frontend-79f5dbfc6c-d6gb7:60788 (ID:114060) -> kube-system/kube-dns-75df64b86-xrfwz:53 (ID:67025) policy-verdict:all EGRESS ALLOWED (UDP)
Oct  2 14:06:19.464: shop/frontend-79f5dbfc6c-d6gb7:55544 (ID:114060) -> shop/backend-6c4c67dc75-g22jn:80 (ID:69364) policy-verdict:all EGRESS ALLOWED (TCP Flags: SYN)
Oct  2 14:06:19.464: shop/frontend-79f5dbfc6c-d6gb7:55544 (ID:114060) -> shop/backend-6c4c67dc75-g22jn:80 (ID:69364) policy-verdict:all INGRESS ALLOWED (TCP Flags: SYN)
Oct  2 14:06:28.561: shop/frontend-79f5dbfc6c-r56dx:53700 (ID:135917) -> kube-system/kube-dns-55899b7fc-2rdqk:53 (ID:156453) policy-verdict:all EGRESS ALLOWED (UDP)
Oct  2 14:06:28.576: shop/frontend-79f5dbfc6c-r56dx:35010 (ID:135917) -> shop/backend-6c4c67dc75-mqm9j:80 (ID:163287) policy-verdict:all EGRESS ALLOWED (TCP Flags: SYN)
Oct  2 14:06:28.576: shop/frontend-79f5dbfc6c-r56dx:35010 (ID:135917) -> shop/backend-6c4c67dc75-mqm9j:80 (ID:163287) policy-verdict:all INGRESS ALLOWED (TCP Flags: SYN)""",
    2: """\
Oct  2 14:14:50.446: shop/frontend-79f5dbfc6c-d6gb7:56300 (ID:114060) -> kube-system/kube-dns-75df64b86-wjls9:53 (ID:67025) dns-request proxy FORWARDED (DNS Query backend.shop.svc.cluster.local. A)
Oct  2 14:14:50.453: shop/frontend-79f5dbfc6c-d6gb7:56300 (ID:114060) <- kube-system/kube-dns-75df64b86-wjls9:53 (ID:67025) dns-response proxy FORWARDED (DNS Answer "34.118.239.118" TTL: 30 (Proxy backend.shop.svc.cluster.local. A))
Oct  2 14:14:50.458: shop/frontend-79f5dbfc6c-d6gb7:53175 (ID:114060) -> kube-system/kube-dns-75df64b86-wjls9:53 (ID:67025) dns-request proxy FORWARDED (DNS Query backend.shop.svc.cluster.local. AAAA)
Oct  2 14:14:50.459: shop/frontend-79f5dbfc6c-d6gb7:53175 (ID:114060) <- kube-system/kube-dns-75df64b86-wjls9:53 (ID:67025) dns-response proxy FORWARDED (DNS Answer  TTL: 4294967295 (Proxy backend.shop.svc.cluster.local. AAAA))
Oct  2 14:15:18.524: shop/frontend-79f5dbfc6c-r56dx:38458 (ID:135917) -> kube-system/kube-dns-55899b7fc-2rdqk:53 (ID:156453) dns-request proxy FORWARDED (DNS Query backend.shop.svc.cluster.local. A)
Oct  2 14:15:18.528: shop/frontend-79f5dbfc6c-r56dx:38458 (ID:135917) <- kube-system/kube-dns-55899b7fc-2rdqk:53 (ID:156453) dns-response proxy FORWARDED (DNS Answer "34.118.228.223" TTL: 30 (Proxy backend.shop.svc.cluster.local. A))
Oct  2 14:15:18.531: shop/frontend-79f5dbfc6c-r56dx:42314 (ID:135917) -> kube-system/kube-dns-55899b7fc-2rdqk:53 (ID:156453) dns-request proxy FORWARDED (DNS Query backend.shop.svc.cluster.local. AAAA)
Oct  2 14:15:18.532: shop/frontend-79f5dbfc6c-r56dx:42314 (ID:135917) <- kube-system/kube-dns-55899b7fc-2rdqk:53 (ID:156453) dns-response proxy FORWARDED (DNS Answer  TTL: 4294967295 (Proxy backend.shop.svc.cluster.local. AAAA))
Oct  2 14:14:50.458: shop/frontend-79f5dbfc6c-d6gb7:53175 (ID:114060) -> kube-system/kube-dns-75df64b86-wjls9:53 (ID:67025) policy-verdict:L3-L4 EGRESS ALLOWED (UDP)
Oct  2 14:15:18.531: shop/frontend-79f5dbfc6c-r56dx:42314 (ID:135917) -> kube-system/kube-dns-55899b7fc-2rdqk:53 (ID:156453) policy-verdict:L3-L4 EGRESS ALLOWED (UDP)""",
    3: """\
Oct  2 14:23:07.053: shop/frontend-79f5dbfc6c-d6gb7:54130 (ID:114060) -> shop/backend-6c4c67dc75-g22jn:80 (ID:69364) policy-verdict:L3-L4 EGRESS ALLOWED (TCP Flags: SYN)
Oct  2 14:23:07.053: shop/frontend-79f5dbfc6c-d6gb7:54130 (ID:114060) -> shop/backend-6c4c67dc75-g22jn:80 (ID:69364) policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN)
Oct  2 14:23:07.053: shop/frontend-79f5dbfc6c-d6gb7:54130 (ID:114060) -> shop/backend-6c4c67dc75-g22jn:80 (ID:69364) to-endpoint FORWARDED (TCP Flags: SYN)
Oct  2 14:23:18.701: shop/frontend-79f5dbfc6c-r56dx:52560 (ID:135917) -> shop/backend-6c4c67dc75-mqm9j:80 (ID:163287) policy-verdict:L3-L4 EGRESS ALLOWED (TCP Flags: SYN)
Oct  2 14:23:18.701: shop/frontend-79f5dbfc6c-r56dx:52560 (ID:135917) -> shop/backend-6c4c67dc75-mqm9j:80 (ID:163287) policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN)
Oct  2 14:23:18.701: shop/frontend-79f5dbfc6c-r56dx:52560 (ID:135917) -> shop/backend-6c4c67dc75-mqm9j:80 (ID:163287) to-endpoint FORWARDED (TCP Flags: SYN)""",
    4: """\
Oct  2 14:32:42.874: shop/frontend-79f5dbfc6c-d6gb7:55886 (ID:114060) -> shop/backend-6c4c67dc75-g22jn:80 (ID:69364) http-request FORWARDED (HTTP/1.1 GET http://backend.shop.svc.cluster.local/status/200)
Oct  2 14:32:51.156: shop/frontend-79f5dbfc6c-d6gb7:55894 (ID:114060) -> shop/backend-6c4c67dc75-g22jn:80 (ID:69364) http-request FORWARDED (HTTP/1.1 GET http://backend.shop.svc.cluster.local/status/500)""",
    5: "\n".join(
        f"Oct  2 14:{t}: shop/frontend-79f5dbfc6c-d6gb7:{port}{P}{d} ALLOWED (TCP Flags: SYN)"
        for d in ("EGRESS", "INGRESS")
        for t, port in zip(
            (
                "47:43.789",
                "47:44.132",
                "47:44.491",
                "47:44.826",
                "47:45.160",
                "47:45.495",
                "47:45.835",
                "47:46.175",
                "47:46.513",
                "47:46.849",
            ),
            (41728, 41736, 41748, 41762, 41768, 41782, 41792, 41798, 41806, 41818),
        )
    ),
}


def _norm(line: str) -> str:
    """A line without its time, client ports and kube-dns replica (they differ between runs)."""
    line = line.split(": ", 1)[1]
    line = re.sub(r":(\d{4,5}) ", ":* ", line)
    return re.sub(r"kube-dns-[0-9a-z]+-[0-9a-z]+", "kube-dns-*", line)


def _lines(responses, **kw) -> list[str]:
    return [hf.compact_line(r.flow, **kw) for r in responses]


@pytest.fixture(scope="module")
def stages() -> dict[int, dict[str, list]]:
    return {s: lab.generate_lab(s, seed=7) for s in lab.STAGES}


@pytest.mark.parametrize("stage", lab.STAGES)
def test_each_stage_reproduces_the_guides_quoted_lines(stages, stage):
    printed = set(_lines(stages[stage]["cluster1"]) + _lines(stages[stage]["cluster2"]))
    missing = [q for q in GUIDE[stage].splitlines() if q not in printed]
    assert missing == []


@pytest.mark.parametrize("stage", lab.STAGES)
def test_other_seeds_and_start_times_match_modulo_time_ports_and_replica(stage):
    shifted = lab.generate_lab(stage, start_ns=1_700_000_000 * 10**9, seed=99)
    printed = {_norm(line) for rs in shifted.values() for line in _lines(rs)}
    assert {_norm(q) for q in GUIDE[stage].splitlines()} <= printed
    first = min(r.time.ToNanoseconds() for rs in shifted.values() for r in rs)
    assert first == 1_700_000_000 * 10**9


def _verdicts(responses, direction=None) -> list[flow_pb2.Flow]:
    """Policy verdicts of frontend -> backend connections (optionally of one direction)."""
    return [
        r.flow
        for r in responses
        if r.flow.event_type.type == 5
        and r.flow.source.pod_name.startswith("frontend")
        and r.flow.destination.pod_name.startswith("backend")
        and direction in (None, r.flow.traffic_direction)
    ]


def _names(policies) -> list[str]:
    return [p.name for p in policies]


def test_stage1_last_verdict_names_allow_all_on_ingress(stages):
    for cluster, rs in stages[1].items():
        last = _verdicts(rs)[-1]
        assert flow_pb2.Verdict.Name(last.verdict) == "FORWARDED", cluster
        assert (_names(last.ingress_allowed_by), _names(last.egress_allowed_by)) == (
            ["allow-all"],
            [],
        )
        policy = last.ingress_allowed_by[0]
        assert (policy.namespace, policy.kind) == ("shop", "CiliumNetworkPolicy")
        assert "k8s:io.cilium.k8s.policy.name=allow-all" in policy.labels


def test_stage4_verdicts_redirected_by_l7_policy_and_500_passes(stages):
    rs = stages[4]["cluster1"]
    seen = {
        (flow_pb2.Verdict.Name(f.verdict), ",".join(_names(f.ingress_allowed_by)))
        for f in _verdicts(rs)
    }
    assert seen == {("REDIRECTED", "allow-frontend-l7"), ("FORWARDED", "")}
    codes = Counter(f.l7.http.code for f in (r.flow for r in rs) if f.l7.http.code)
    assert codes == {200: 41, 500: 1}
    # the guide runs stage 4 on cluster1 only; the simulated lab runs the same on cluster2
    codes2 = Counter(
        f.l7.http.code for f in (r.flow for r in stages[4]["cluster2"]) if f.l7.http.code
    )
    assert codes2 == {200: 41, 500: 1}


def test_stage5_final_matching_and_denials(stages):
    for cluster, rs in stages[5].items():
        flows = [r.flow for r in rs]
        egress = _verdicts(rs, flow_pb2.EGRESS)
        ingress = _verdicts(rs, flow_pb2.INGRESS)
        assert {tuple(_names(f.egress_allowed_by)) for f in egress} == {("allow-frontend-egress",)}
        assert {tuple(_names(f.ingress_allowed_by)) for f in ingress} == {("allow-frontend-l7",)}
        assert all(f.verdict == flow_pb2.REDIRECTED for f in ingress)
        assert not any(
            "allow-all" in _names(f.egress_allowed_by) + _names(f.ingress_allowed_by) for f in flows
        )
        get = [f for f in flows if f.l7.http.url.endswith("/get")]
        assert {(f.l7.type, f.verdict, f.l7.http.code) for f in get} == {
            (flow_pb2.REQUEST, flow_pb2.DROPPED, 0),
            (flow_pb2.RESPONSE, flow_pb2.FORWARDED, 403),
        }
        assert all(f.drop_reason_desc == flow_pb2.DROP_REASON_UNKNOWN for f in get)
        drops = [f for f in flows if f.event_type.type == 1]
        assert drops, cluster
        for f in drops:
            assert (f.event_type.sub_type, f.verdict, f.drop_reason_desc) == (
                133,
                flow_pb2.DROPPED,
                flow_pb2.POLICY_DENIED,
            )
            assert (f.destination.identity, list(f.destination.labels)) == (2, ["reserved:world"])
            assert not f.HasField("is_reply")
        denied = [f for f in flows if f.event_type.type == 5 and f.verdict == flow_pb2.DROPPED]
        assert len(denied) == len(drops)
        assert {(f.policy_match_type, f.traffic_direction) for f in denied} == {
            (0, flow_pb2.EGRESS)
        }
        dns_answers = [f for f in flows if f.l7.dns.ips]
        assert dns_answers and all(f.verdict == flow_pb2.FORWARDED for f in dns_answers)
    world = {f.flow.IP.destination for f in stages[5]["cluster1"] if f.flow.event_type.type == 1}
    assert world == {"1.1.1.1", "93.184.215.14"}
    lines = _lines(stages[5]["cluster1"])
    assert any(
        line.endswith("<> example.com:443 (world) Policy denied DROPPED (TCP Flags: SYN)")
        for line in lines
    )


def test_tcp_handshake_flags_and_reply_direction(stages):
    rs = stages[3]["cluster2"]
    port = 52560
    traces = [
        r.flow
        for r in rs
        if r.flow.event_type.type == 4
        and port in (r.flow.l4.TCP.source_port, r.flow.l4.TCP.destination_port)
    ]
    got = [
        (
            hf.flow_type(
                event_type=4,
                sub_type=f.event_type.sub_type,
                l7_type=None,
                l7_protocol=None,
                dns_source="",
                match_type=0,
                direction="",
            ),
            f.Summary,
            f.is_reply.value,
            flow_pb2.TrafficDirection.Name(f.traffic_direction),
        )
        for f in traces
    ]
    assert got == [
        ("to-endpoint", "TCP Flags: SYN", False, "INGRESS"),
        ("to-endpoint", "TCP Flags: SYN, ACK", True, "EGRESS"),
        ("to-endpoint", "TCP Flags: ACK", False, "INGRESS"),
        ("to-endpoint", "TCP Flags: ACK, PSH", False, "INGRESS"),
        ("to-endpoint", "TCP Flags: ACK, PSH", True, "EGRESS"),
        ("to-endpoint", "TCP Flags: ACK, FIN", False, "INGRESS"),
        ("to-endpoint", "TCP Flags: ACK, FIN", True, "EGRESS"),
    ]
    stage5 = [r.flow for r in stages[5]["cluster1"]]
    points = {hf.TRACE_POINTS[f.event_type.sub_type] for f in stage5 if f.event_type.type == 4}
    assert points == {"to-endpoint", "to-proxy", "to-stack"}
    assert all(
        f.proxy_port for f in stage5 if f.event_type.type == 4 and f.event_type.sub_type == 1
    )


def test_every_flow_carries_what_hubble_reports(stages):
    for by_cluster in stages.values():
        for cluster, rs in by_cluster.items():
            times = [r.time.ToNanoseconds() for r in rs]
            assert times == sorted(times)
            for r in rs:
                f = r.flow
                assert r.node_name == f.node_name and r.time == f.time
                assert f.node_name.startswith(f"{cluster}/gke-{cluster}-default-pool-")
                assert len(f.uuid) == 36 and f.HasField("IP") and f.HasField("l4")
                assert f.Type == (flow_pb2.L7 if f.event_type.type == 129 else flow_pb2.L3_L4)
                assert f.traffic_direction in (flow_pb2.INGRESS, flow_pb2.EGRESS)
                assert f.source.identity and f.destination.identity and f.Summary
                if f.event_type.type == 4:
                    assert f.trace_observation_point and f.HasField("is_reply")
                for ep in (f.source, f.destination):
                    if ep.namespace == "shop":
                        assert f"k8s:io.cilium.k8s.policy.cluster={cluster}" in ep.labels
                        assert "k8s:io.kubernetes.pod.namespace=shop" in ep.labels
                        assert "k8s:io.cilium.k8s.policy.serviceaccount=default" in ep.labels
                        local = f.node_name.endswith(
                            "-5m2q"
                        )  # shop pods run there; elsewhere they are remote
                        workloads = [(w.name, w.kind) for w in ep.workloads]
                        assert bool(ep.ID) == local
                        assert workloads == (
                            [(ep.pod_name.rsplit("-", 2)[0], "Deployment")] if local else []
                        )
                if f.destination.pod_name.startswith("backend") and f.l4.TCP.destination_port == 80:
                    assert (f.destination_service.namespace, f.destination_service.name) == (
                        "shop",
                        "backend",
                    )
            assert len({r.flow.uuid for r in rs}) == len(rs)


def test_counts_follow_the_guides_loops(stages):
    def count(rs, pred):
        return sum(1 for r in rs if pred(r.flow))

    ingress_verdict = lambda f: f.event_type.type == 5 and f.traffic_direction == flow_pb2.INGRESS  # noqa: E731
    dns_request = lambda f: f.l7.type == flow_pb2.REQUEST and f.l7.HasField("dns")  # noqa: E731
    assert count(stages[1]["cluster1"], ingress_verdict) == 61  # check + 60 curls
    # the guide's loops run with --context $CLUSTER1; the simulated lab runs them on both clusters
    assert count(stages[1]["cluster2"], ingress_verdict) == 61
    assert count(stages[2]["cluster1"], dns_request) == 82  # (check + 40 nslookups) x A/AAAA
    assert count(stages[2]["cluster2"], dns_request) == 82
    assert count(stages[3]["cluster1"], ingress_verdict) == 81
    assert count(stages[5]["cluster1"], ingress_verdict) == 1 + 1 + 10 + 8 + 6
    assert count(stages[5]["cluster2"], ingress_verdict) == 1 + 1 + 10 + 8 + 6


def test_variants_change_what_they_should():
    normal = [r.flow for r in lab.generate(5, "cluster2", seed=1)]
    left = [r.flow for r in lab.generate(5, "cluster2", variant="allow-all-left", seed=1)]
    world = [f for f in left if f.destination.identity == 2 and f.event_type.type == 5]
    assert world and all(
        f.verdict == flow_pb2.FORWARDED and _names(f.egress_allowed_by) == ["allow-all"]
        for f in world
    )
    assert not any(f.event_type.type == 1 for f in left)
    assert {f.l7.http.code for f in left if f.l7.http.url.endswith("/get") and f.l7.http.code} == {
        200
    }
    assert {
        f.l7.http.code for f in normal if f.l7.http.url.endswith("/get") and f.l7.http.code
    } == {403}

    l4_responses = lab.generate(5, "cluster2", variant="l4-ingress-left", seed=1)
    l4 = [r.flow for r in l4_responses]
    assert {
        tuple(_names(f.ingress_allowed_by)) for f in _verdicts(l4_responses, flow_pb2.INGRESS)
    } == {("allow-frontend-l7", "allow-frontend-to-backend")}
    assert {f.l7.http.code for f in l4 if f.l7.http.url.endswith("/get") and f.l7.http.code} == {
        200
    }

    nodns = [r.flow for r in lab.generate(5, "cluster1", variant="no-allow-dns", seed=1)]
    assert not any(f.HasField("l7") for f in nodns)
    dns_drops = [f for f in nodns if f.event_type.type == 1 and f.l4.UDP.destination_port == 53]
    assert dns_drops and all(f.drop_reason_desc == flow_pb2.POLICY_DENIED for f in dns_drops)
    assert not any(f.destination.pod_name.startswith("backend") for f in nodns)

    assert lab.generate(5, "cluster1", variant="no-traffic") == []


def test_one_broken_cluster():
    both = lab.generate_lab(5, variant="allow-all-left", broken_clusters=["cluster2"], seed=3)
    assert both["cluster1"] == lab.generate(5, "cluster1", seed=3)
    assert both["cluster2"] == lab.generate(5, "cluster2", variant="allow-all-left", seed=3)
    assert both["cluster2"] != lab.generate(5, "cluster2", seed=3)


def test_seed_makes_output_deterministic():
    a = lab.generate(3, "cluster1", seed=42)
    assert [r.SerializeToString() for r in a] == [
        r.SerializeToString() for r in lab.generate(3, "cluster1", seed=42)
    ]
    assert a != lab.generate(3, "cluster1", seed=43)
    u1 = {r.flow.uuid for r in lab.generate(1, "cluster2")}
    assert u1.isdisjoint(r.flow.uuid for r in lab.generate(1, "cluster2"))


@pytest.mark.parametrize("variant", [None, *lab.VARIANTS])
def test_flows_round_trip_through_storage_unchanged(variant):
    stage_list = [5] if variant else lab.STAGES
    for stage in stage_list:
        for rs in lab.generate_lab(stage, variant=variant, seed=5).values():
            dec = decode.decode_responses([r.SerializeToString() for r in rs])
            assert dec.errors == []
            flows, events = decode.split_responses(dec)
            assert events.num_rows == 0
            assert storage.flows_from_columns(storage.to_storage(flows)) == [r.flow for r in rs]


def test_rows_of_the_flows_view_print_with_policy_names(store, stages):
    rs = stages[5]["cluster1"]
    dec = decode.decode_responses([r.SerializeToString() for r in rs])
    store.write("cluster1", storage.to_storage(decode.split_responses(dec)[0]))
    con = views.connect(store)
    cur = con.execute("SELECT * FROM flows")
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, row)) for row in cur.fetchall()]
    con.close()
    by_uuid = {r.flow.uuid: r.flow for r in rs}
    assert all(
        hf.compact_line_row(row) == hf.compact_line(by_uuid[row["uuid"]], policies=True)
        for row in rows
    )
    printed = {hf.compact_line_row(row) for row in rows}
    assert (
        "Oct  2 14:47:43.789: shop/frontend-79f5dbfc6c-d6gb7:41728"
        + P
        + "INGRESS ALLOWED (TCP Flags: SYN) [ingress: allow-frontend-l7]"
    ) in printed


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="stage"):
        lab.generate(6, "cluster1")
    with pytest.raises(ConfigError, match="variant"):
        lab.generate(5, "cluster1", variant="nope")
    with pytest.raises(ConfigError, match="stage 4"):
        lab.generate(4, "cluster1", variant="no-traffic")
    with pytest.raises(ConfigError, match="cluster3"):
        lab.generate(1, "cluster3")
    with pytest.raises(ConfigError, match="variant"):
        lab.generate_lab(5, broken_clusters=["cluster2"])
    with pytest.raises(ConfigError, match="cluster9"):
        lab.generate_lab(5, variant="no-traffic", broken_clusters=["cluster9"])


def test_cli_generate_and_list(tmp_path):
    runner = CliRunner()
    out = tmp_path / "lab5"
    res = runner.invoke(
        main,
        [
            "lab",
            "generate",
            "--stage",
            "5",
            "--variant",
            "no-allow-dns",
            "--broken-cluster",
            "cluster2",
            "--seed",
            "1",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    c1, c2 = load_capture(out / "cluster1.jsonl"), load_capture(out / "cluster2.jsonl")
    assert c1 == lab.generate(5, "cluster1", seed=1)
    assert c2 == lab.generate(5, "cluster2", variant="no-allow-dns", seed=1)
    assert (out / "cluster1.jsonl").read_text().splitlines()[0] == hf.jsonpb(c1[0])
    res = runner.invoke(main, ["lab", "list"])
    assert res.exit_code == 0 and "allow-all-left" in res.output and "default-deny" in res.output
    res = runner.invoke(
        main, ["lab", "generate", "--stage", "2", "--variant", "no-traffic", "--out", str(out)]
    )
    assert res.exit_code == 2 and "stage 5" in res.output
    for cmd in (["lab", "--help"], ["lab", "generate", "--help"], ["lab", "list", "--help"]):
        assert "Example:" in runner.invoke(main, cmd).output


def test_only_shop_traffic_is_emitted(stages):
    for by_cluster in stages.values():
        for rs in by_cluster.values():
            assert all(
                "shop" in (r.flow.source.namespace, r.flow.destination.namespace) for r in rs
            )
