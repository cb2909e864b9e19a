"""FlowFilters served over gRPC against an independent Python model of Hubble's filter semantics."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote, urlsplit

import grpc
import pytest
from google.protobuf import json_format

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2, observer_pb2_grpc
from flowpipe.errors import FilterError
from flowpipe.serve import filters
from flowpipe.serve.replay import write_responses
from flowpipe.serve.server import FlowServer
from flowpipe.store.layout import Store

F = flow_pb2.FlowFilter
T0 = 1_700_000_000


# ------------------------------------------------------------------ hand-made flows (fields the captures lack)


def _flow(i: int, **fields) -> observer_pb2.GetFlowsResponse:
    d = {
        "time": f"2023-11-14T22:13:{20 + i:02d}.{i:09d}Z",
        "node_name": f"c2/node-{i % 2}",
        "verdict": "FORWARDED",
    }
    d.update(fields)
    flow = json_format.ParseDict(d, flow_pb2.Flow())
    return observer_pb2.GetFlowsResponse(flow=flow, node_name=flow.node_name, time=flow.time)


HANDMADE = [
    _flow(
        0,
        uuid="0b7e8a52-6c1b-4a43-9f1e-2d8a1c7d9e01",
        IP={"source": "fd00::1", "destination": "fd00:1::5", "ipVersion": "IPv6"},
        l4={"UDP": {"source_port": 5353, "destination_port": 53}},
        source={
            "namespace": "shop",
            "pod_name": "cart-1",
            "cluster_name": "c2",
            "identity": 300,
            "labels": ["k8s:app=cart", "container:app=other", "k8s:tier=web"],
            "workloads": [{"name": "cart", "kind": "Deployment"}],
        },
        destination_names=["api.Example.com", "db.shop.svc.cluster.local"],
        traffic_direction="EGRESS",
        event_type={"type": 4, "sub_type": 3},
        is_reply=False,
        node_labels=["kubernetes.io/os=linux", "zone=a"],
    ),
    _flow(
        1,
        uuid="NOT-CANONICAL",
        IP={
            "source": "::ffff:10.1.2.3",
            "destination": "10.1.2.4",
            "source_xlated": "192.168.7.7",
            "ipVersion": "IPv4",
            "encrypted": True,
        },
        l4={"SCTP": {"source_port": 70000, "destination_port": 9}},
        verdict="DROPPED",
        drop_reason_desc="POLICY_DENIED",
        interface={"index": 7, "name": "eth0"},
        source={
            "namespace": "",
            "pod_name": "bare",
            "labels": ["reserved:world", "cidr:10.0.0.0/8"],
        },
        destination={"namespace": "shop", "cluster_name": "c3", "identity": 2},
        event_type={"type": 1, "sub_type": 133},
        trace_context={"parent": {"trace_id": "abc123"}},
        ip_trace_id={"trace_id": "42"},
    ),
    _flow(
        2,
        IP={"source": "10.9.0.1", "destination": "10.9.0.2", "ipVersion": "IPv4"},
        l4={
            "TCP": {
                "source_port": 40000,
                "destination_port": 8080,
                "flags": {"SYN": True, "ACK": True},
            }
        },
        l7={
            "type": "RESPONSE",
            "http": {
                "code": 503,
                "method": "POST",
                "url": "http://api:8080/v1/orders?x=1",
                "headers": [{"key": "x-user", "value": "alice"}],
            },
        },
        source_service={"namespace": "shop", "name": "frontend"},
        destination_service={"namespace": "shop", "name": "api"},
        source={
            "namespace": "shop",
            "pod_name": "frontend-7",
            "labels": ["k8s:app=frontend", "k8s:version=v2"],
            "workloads": [{"name": "frontend", "kind": "StatefulSet"}],
        },
        destination={
            "namespace": "default",
            "pod_name": "productpage-x",
            "workloads": [{"name": "x", "kind": "D"}],
        },
        event_type={"type": 129},
        is_reply=True,
        traffic_direction="INGRESS",
    ),
    _flow(
        3,
        IP={"source": "10.9.0.2", "destination": "8.8.8.8", "ipVersion": "IPv4"},
        l4={"ICMPv4": {"type": 8}},
        verdict="DROPPED",
        event_type={"type": 1},
        l7={"type": "REQUEST", "kafka": {"topic": "t"}},
        node_name="solo-node",
    ),
    _flow(
        4,
        IP={"source": "fd00::9", "destination": "fd00::1", "ipVersion": "IPv6"},
        l4={"ICMPv6": {"type": 128}},
        l7={"type": "REQUEST", "http": {"method": "GET", "url": "/a%20b/c"}},
        event_type={"type": 129},
        source={"labels": ["k8s:app=cart", "reserved:host"]},
    ),
    _flow(5, IP={"source": "10.9.0.3", "destination": "10.9.0.4", "ipVersion": "IPv4"}),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory, captures):
    """A store with the real captures (cluster c1) and the hand-made flows (cluster c2), served on loopback."""
    store = Store(tmp_path_factory.mktemp("filters") / "store")
    store.ensure()
    write_responses(store, captures, cluster="c1")
    write_responses(store, HANDMADE)  # clusters from node names: c2, and default for "solo-node"
    server = FlowServer(store, "127.0.0.1:0")
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    flows = [("c1", r.flow) for r in captures]
    flows += [
        (r.flow.node_name.split("/")[0] if "/" in r.flow.node_name else "default", r.flow)
        for r in HANDMADE
    ]
    yield observer_pb2_grpc.ObserverStub(channel), flows
    channel.close()
    server.stop()


# ------------------------------------------------------------------ the independent model


def _ns_name(v: str) -> tuple[str, str]:
    parts = v.split("/")
    if len(parts) > 1:
        return parts[0], parts[1]
    return ("default", parts[0]) if parts[0] else ("", "")


def _names(vals, ns, name) -> bool:
    if not ns and not name:
        return False
    return any(fns == ns and name.startswith(p) for fns, p in map(_ns_name, vals))


def _addr(s: str):
    if not s or "%" in s:
        return None
    try:
        a = ipaddress.ip_address(s)
    except ValueError:
        return None
    return a.ipv4_mapped if a.version == 6 and a.ipv4_mapped else a


def _ips(vals, ip: str) -> bool:
    if not ip:
        return False
    for v in vals:
        if "/" in v:
            net, a = ipaddress.ip_network(v, strict=False), _addr(ip)
            if a is not None and a.version == net.version and a in net:
                return True
        elif v == ip:
            return True
    return False


def _glob(p: str) -> str:
    p = p.strip().removesuffix(".").lower()
    return "".join(r"\." if c == "." else "[-.0-9a-z]*" if c == "*" else c for c in p)


def _fqdn(vals, names) -> bool:
    rx = re.compile("(?:" + "|".join(_glob(v) for v in vals) + ")")
    return any(rx.fullmatch(n) for n in names)


def _label(s: str) -> tuple[str, str, str]:
    src, sep, rest = s.partition(":")
    if not sep:
        src, rest = "unspec", s
    key, _, value = rest.partition("=")
    return src, key, value


def _selector_matches(sel: str, labels) -> bool:
    parsed = [_label(lbl) for lbl in labels]
    reqs, depth, cur = [], 0, ""
    for ch in sel:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            reqs.append(cur)
            cur = ""
        else:
            cur += ch
    reqs.append(cur)
    for req in (r for r in reqs if r.strip()):
        m = re.fullmatch(
            r"\s*(!)?\s*([^\s=!,()]+)\s*(?:(==|=|!=)\s*([^\s,()]*)|\s(in|notin)\s*\((.*)\))?\s*",
            req,
        )
        neg, key, op, val, setop, setvals = m.groups()
        src, _, k = key.partition(":") if ":" in key else ("any", "", key)
        hits = [v for s, kk, v in parsed if kk == k and (src == "any" or s == src)]
        if neg:
            ok = not hits
        elif op in ("=", "=="):
            ok = bool(hits) and hits[0] == val
        elif op == "!=":
            ok = not hits or hits[0] != val
        elif setop:
            vals = {v.strip() for v in setvals.split(",")}
            ok = (
                bool(hits) and hits[0] in vals if setop == "in" else not hits or hits[0] not in vals
            )
        else:
            ok = bool(hits)
        if not ok:
            return False
    return True


def _port(flow, side):
    for p in ("TCP", "UDP", "SCTP"):
        if flow.l4.HasField(p):
            return getattr(getattr(flow.l4, p), f"{side}_port") % 65536
    return None


def _http_path(url: str):
    if not url:
        return None
    if url.startswith("/"):
        return unquote(url.split("?")[0])
    return unquote(urlsplit(url).path)


def matches(cluster: str, f: flow_pb2.Flow, ff: flow_pb2.FlowFilter) -> bool:
    """Hubble's FlowFilter semantics (docs/hubble-semantics.md section 2), written from the notes."""
    http = f.l7.http if f.l7.HasField("http") else None
    checks = []
    if ff.uuid:
        checks.append(f.uuid in ff.uuid)
    if ff.event_type:
        checks.append(
            f.HasField("event_type")
            and any(
                (t.type == 0 or t.type == f.event_type.type)
                and (not t.match_sub_type or t.sub_type == f.event_type.sub_type)
                for t in ff.event_type
            )
        )
    if ff.verdict:
        checks.append(f.verdict in ff.verdict)
    if ff.drop_reason_desc:
        checks.append(f.verdict == flow_pb2.DROPPED and f.drop_reason_desc in ff.drop_reason_desc)
    if ff.reply:
        if not f.HasField("is_reply") and f.verdict != flow_pb2.DROPPED:
            checks.append(False)
        else:
            checks.append(f.is_reply.value in ff.reply)
    if ff.encrypted:
        checks.append(f.IP.encrypted in ff.encrypted)
    if ff.source_identity:
        checks.append(f.source.identity in ff.source_identity)
    if ff.destination_identity:
        checks.append(f.destination.identity in ff.destination_identity)
    if ff.protocol:
        have = {
            "tcp": f.l4.HasField("TCP"),
            "udp": f.l4.HasField("UDP"),
            "sctp": f.l4.HasField("SCTP"),
            "icmpv4": f.l4.HasField("ICMPv4"),
            "icmpv6": f.l4.HasField("ICMPv6"),
            "icmp": f.l4.HasField("ICMPv4") or f.l4.HasField("ICMPv6"),
            "dns": f.l7.HasField("dns"),
            "http": f.l7.HasField("http"),
            "kafka": f.l7.HasField("kafka"),
        }
        checks.append(any(have[p.lower()] for p in ff.protocol))
    if ff.source_ip:
        checks.append(_ips(ff.source_ip, f.IP.source))
    if ff.destination_ip:
        checks.append(_ips(ff.destination_ip, f.IP.destination))
    if ff.source_ip_xlated:
        checks.append(_ips(ff.source_ip_xlated, f.IP.source_xlated))
    if ff.source_pod:
        checks.append(_names(ff.source_pod, f.source.namespace, f.source.pod_name))
    if ff.destination_pod:
        checks.append(_names(ff.destination_pod, f.destination.namespace, f.destination.pod_name))
    for fw, ep in ((ff.source_workload, f.source), (ff.destination_workload, f.destination)):
        if fw:
            checks.append(
                any(
                    (not w.name or w.name == x.name) and (not w.kind or w.kind == x.kind)
                    for x in ep.workloads
                    for w in fw
                )
            )
    if ff.source_service:
        checks.append(_names(ff.source_service, f.source_service.namespace, f.source_service.name))
    if ff.destination_service:
        checks.append(
            _names(
                ff.destination_service, f.destination_service.namespace, f.destination_service.name
            )
        )
    if ff.source_fqdn:
        checks.append(_fqdn(ff.source_fqdn, f.source_names))
    if ff.destination_fqdn:
        checks.append(_fqdn(ff.destination_fqdn, f.destination_names))
    if ff.dns_query:
        checks.append(
            f.l7.HasField("dns") and any(re.search(p, f.l7.dns.query) for p in ff.dns_query)
        )
    for sels, labels in (
        (ff.source_label, f.source.labels),
        (ff.destination_label, f.destination.labels),
        (ff.node_labels, f.node_labels),
    ):
        if sels:
            checks.append(any(_selector_matches(s, labels) for s in sels))
    if ff.source_port:
        checks.append(_port(f, "source") in {int(p) for p in ff.source_port})
    if ff.destination_port:
        checks.append(_port(f, "destination") in {int(p) for p in ff.destination_port})
    if ff.http_status_code:
        code = f"{http.code:03d}" if http and http.code else None
        checks.append(
            code is not None
            and any(
                code == s if not s.endswith("+") else code.startswith(s[:-1])
                for s in ff.http_status_code
            )
        )
    if ff.http_method:
        checks.append(
            bool(http and http.method)
            and http.method.lower() in {m.lower() for m in ff.http_method}
        )
    if ff.http_path:
        path = _http_path(http.url) if http else None
        checks.append(path is not None and any(re.search(p, path) for p in ff.http_path))
    if ff.http_url:
        checks.append(bool(http and http.url) and any(re.search(p, http.url) for p in ff.http_url))
    if ff.http_header:
        checks.append(
            bool(http)
            and any(
                h.key == x.key and h.value == x.value for h in http.headers for x in ff.http_header
            )
        )
    if ff.tcp_flags:
        fl = f.l4.TCP.flags if f.l4.TCP.HasField("flags") else None
        checks.append(
            fl is not None
            and any(
                all(getattr(fl, n) for n in filters.TCP_FLAG_NAMES if getattr(e, n))
                for e in ff.tcp_flags
            )
        )
    if ff.node_name:
        name = f.node_name if "/" in f.node_name else f"{cluster}/{f.node_name}"
        alts = []
        for p in ff.node_name:
            c, _, n = p.rpartition("/")
            any_name = r"[-0-9_a-z]+(?:\.[-0-9_a-z]+)*"
            alts.append(f"{_glob(c) if c else any_name}/{_glob(n) if n else any_name}")
        checks.append(
            bool(f.node_name) and re.fullmatch("(?:" + "|".join(alts) + ")", name) is not None
        )
    if ff.source_cluster_name:
        checks.append(f.source.cluster_name in ff.source_cluster_name)
    if ff.destination_cluster_name:
        checks.append(f.destination.cluster_name in ff.destination_cluster_name)
    if ff.ip_version:
        checks.append(f.IP.ipVersion in ff.ip_version)
    if ff.trace_id:
        checks.append(f.trace_context.parent.trace_id in ff.trace_id)
    if ff.traffic_direction:
        checks.append(f.traffic_direction in ff.traffic_direction)
    if ff.interface:
        checks.append(
            f.HasField("interface")
            and any(
                (i.index == 0 or i.index == f.interface.index)
                and (not i.name or i.name == f.interface.name)
                for i in ff.interface
            )
        )
    if ff.ip_trace_id:
        checks.append(f.HasField("ip_trace_id") and f.ip_trace_id.trace_id in ff.ip_trace_id)
    return all(checks)


def select(flows, allow, deny):
    return [
        f
        for c, f in flows
        if (not allow or any(matches(c, f, a) for a in allow))
        and not any(matches(c, f, d) for d in deny)
    ]


# ------------------------------------------------------------------ the table


def ff(**kw) -> flow_pb2.FlowFilter:
    return json_format.ParseDict(kw, F())


CASES = {
    "empty filter": ([ff()], []),
    "uuid canonical": ([ff(uuid=["0b7e8a52-6c1b-4a43-9f1e-2d8a1c7d9e01"])], []),
    "uuid non-canonical": ([ff(uuid=["NOT-CANONICAL", "nope"])], []),
    "source ip exact": ([ff(source_ip=["10.0.2.16", "fd00::1"])], []),
    "source ip cidr v4 (incl. v4-mapped)": ([ff(source_ip=["10.0.0.0/8"])], []),
    "destination ip cidr v6": ([ff(destination_ip=["fd00::/16"])], []),
    "destination ip cidr with host bits": ([ff(destination_ip=["10.0.2.99/24"])], []),
    "source ip xlated": ([ff(source_ip_xlated=["192.168.0.0/16"])], []),
    "source pod ns/prefix": ([ff(source_pod=["bookinfo/reviews-v1", "shop/"])], []),
    "destination pod no namespace means default": ([ff(destination_pod=["productpage"])], []),
    "source pod empty namespace": ([ff(source_pod=["/ba"])], []),
    "destination fqdn glob": ([ff(destination_fqdn=["*.EXAMPLE.com.", "db.*"])], []),
    "source fqdn": ([ff(source_fqdn=["*"])], []),
    "source label any source": ([ff(source_label=["app=reviews"])], []),
    "source label k8s prefix, in, !=": (
        [ff(source_label=["k8s:app in (reviews, ratings), version!=v1"])],
        [],
    ),
    "source label notin and exists": (
        [ff(source_label=["app notin (cart), k8s:io.kubernetes.pod.namespace"])],
        [],
    ),
    "source label first match wins": ([ff(source_label=["app=other", "app=cart"])], []),
    "label !key and reserved": (
        [ff(source_label=["!app"]), ff(destination_label=["reserved:host"])],
        [],
    ),
    "label double equals": ([ff(destination_label=["k8s:app==productpage"])], []),
    "source service": ([ff(source_service=["shop/front"])], []),
    "destination service": ([ff(destination_service=["shop/"])], []),
    "source workload": ([ff(source_workload=[{"kind": "StatefulSet"}, {"name": "cart"}])], []),
    "destination workload": ([ff(destination_workload=[{"name": "x"}])], []),
    "source cluster name": ([ff(source_cluster_name=["c2"])], []),
    "destination cluster name": ([ff(destination_cluster_name=["c3", "c9"])], []),
    "traffic direction": ([ff(traffic_direction=["INGRESS"])], []),
    "verdict": ([ff(verdict=["DROPPED", "REDIRECTED"])], []),
    "drop reason desc": ([ff(drop_reason_desc=["POLICY_DENIED"])], []),
    "interface": ([ff(interface=[{"name": "eth0"}]), ff(interface=[{"index": 8}])], []),
    "event type": (
        [ff(event_type=[{"type": 4, "match_sub_type": True, "sub_type": 3}, {"type": 129}])],
        [],
    ),
    "event type any": ([ff(event_type=[{"type": 0}])], []),
    "http status exact and prefix": ([ff(http_status_code=["404", "5+"])], []),
    "http status two-digit prefix": ([ff(http_status_code=["20+"])], []),
    "protocol case-insensitive": ([ff(protocol=["UDP", "icmp"])], []),
    "protocol l7": ([ff(protocol=["http", "kafka", "dns"])], []),
    "protocol tcp includes http": ([ff(protocol=["tcp"])], []),
    "protocol sctp and icmpv6": ([ff(protocol=["sctp", "icmpv6"])], []),
    "source port": ([ff(source_port=["15020", "5353"])], []),
    "destination port with truncation": ([ff(destination_port=["9080", "9"])], []),
    "source port uint16 wrap": ([ff(source_port=["4464"])], []),
    "reply true": ([ff(reply=[True])], []),
    "reply false incl. dropped quirk": ([ff(reply=[False])], []),
    "dns query regex unanchored": ([ff(dns_query=["svc\\.cluster", "^nomatch"])], []),
    "source identity": ([ff(source_identity=[1, 300])], []),
    "destination identity": ([ff(destination_identity=[2])], []),
    "http method case-insensitive": ([ff(http_method=["post", "GET"])], []),
    "http path regex": ([ff(http_path=["^/v1/", "^/a b"])], []),
    "http path productpage": ([ff(http_path=["productpage$"])], []),
    "http url regex": ([ff(http_url=["orders\\?x=1", "productpage"])], []),
    "http header exact": ([ff(http_header=[{"key": "x-user", "value": "alice"}])], []),
    "tcp flags all of an entry": ([ff(tcp_flags=[{"SYN": True, "ACK": True}])], []),
    "tcp flags entries ORed": ([ff(tcp_flags=[{"FIN": True}, {"PSH": True, "ACK": True}])], []),
    "node name cluster only": ([ff(node_name=["c1/"])], []),
    "node name glob any cluster": ([ff(node_name=["node-*"])], []),
    "node name bare node gets default cluster": ([ff(node_name=["default/solo-node"])], []),
    "node name cluster glob": ([ff(node_name=["c*/gke-*"])], []),
    "node labels": ([ff(node_labels=["zone in (a, b)"])], []),
    "ip version": ([ff(ip_version=["IPv6"])], []),
    "trace id": ([ff(trace_id=["abc123"])], []),
    "ip trace id": ([ff(ip_trace_id=["42"])], []),
    "encrypted": ([ff(encrypted=[True])], []),
    "fields ANDed": ([ff(source_pod=["bookinfo/"], verdict=["FORWARDED"], protocol=["tcp"])], []),
    "allow ORed": ([ff(source_pod=["shop/"]), ff(destination_pod=["shop/"])], []),
    "deny only": ([], [ff(verdict=["FORWARDED"])]),
    "allow minus deny": (
        [ff(source_pod=["bookinfo/"])],
        [ff(destination_port=["9080"]), ff(reply=[True])],
    ),
    "deny with reply quirk": ([], [ff(reply=[False])]),
}


def _served(stub, allow, deny):
    req = observer_pb2.GetFlowsRequest(whitelist=allow, blacklist=deny)
    return [r.flow for r in stub.GetFlows(req, timeout=30)]


def _key(f):
    return (f.time.seconds, f.time.nanos, f.SerializeToString(deterministic=True))


@pytest.mark.parametrize("name", list(CASES))
def test_filter_case(served, name):
    stub, flows = served
    allow, deny = CASES[name]
    got = _served(stub, allow, deny)
    want = select(flows, allow, deny)
    times = [(f.time.seconds, f.time.nanos) for f in got]
    assert times == sorted(times), "not in time order"
    assert sorted(got, key=_key) == sorted(want, key=_key)


def test_cases_are_not_trivial(served):
    _, flows = served
    sizes = {name: len(select(flows, *CASES[name])) for name in CASES}
    trivial = [
        n
        for n, s in sizes.items()
        if s in (0, len(flows)) and n not in ("empty filter", "source fqdn")
    ]
    assert not trivial, f"cases selecting nothing or everything: {trivial}"


@pytest.mark.parametrize(
    "bad",
    [
        ff(protocol=["foo"]),
        ff(source_port=["http"]),
        ff(destination_port=["70000"]),
        ff(source_ip=["10.0.0.0/33"]),
        ff(source_ip=["10.0.0.01"]),
        ff(destination_ip=["not-an-ip"]),
        ff(source_pod=["/"]),
        ff(source_pod=[""]),
        ff(destination_fqdn=["bad name!"]),
        ff(source_fqdn=["a.."]),
        ff(node_name=["a/b/c"]),
        ff(dns_query=["(unclosed"]),
        ff(http_path=["[z-a]"]),
        ff(http_status_code=["6xx"]),
        ff(http_method=["GET"], event_type=[{"type": 4}]),
        ff(http_status_code=["200"], event_type=[{"type": 1}]),
        ff(source_label=["app in (a"]),
        ff(source_label=["a b"]),
        ff(source_label=["App_=x"]),
        ff(source_label=["count > 5"]),
        ff(source_cluster_name=[""]),
        ff(experimental={"cel_expression": ["_flow.verdict == 1"]}),
    ],
    ids=lambda f: json_format.MessageToJson(f, indent=None),
)
def test_unsupported_filter_is_invalid_argument(served, bad):
    stub, _ = served
    with pytest.raises(grpc.RpcError) as err:
        _served(stub, [bad], [])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details()
    with pytest.raises(FilterError):
        filters.compile_filters([], [bad])


def test_values_cannot_inject_sql():
    sql = filters.compile_filters(
        [ff(source_pod=["x'); DROP TABLE flows; --/y"], uuid=["a' OR '1'='1"])]
    )
    assert "'x''); DROP TABLE flows; --'" in sql and "'a'' OR ''1''=''1'" in sql


def test_unknown_filter_fields_are_refused():
    raw = (
        F(verdict=[1]).SerializeToString() + b"\xa8\x06\x01"
    )  # field 101, varint: a newer hubble's filter
    with pytest.raises(FilterError, match="unknown"):
        filters.compile_filters([F.FromString(raw)])


# ------------------------------------------------------------------ the raw filter parser


RAW = """allowlist:
- '{"source_pod":["kube-system/"]}'
- '{"destination_pod":["kube-system/"],"verdict":["DROPPED"]}'
denylist:
- '{"protocol":["udp"]}'
"""


def test_parse_print_raw_filters_yaml():
    allow, deny = filters.parse_raw_filters(RAW)
    assert allow == [
        ff(source_pod=["kube-system/"]),
        ff(destination_pod=["kube-system/"], verdict=["DROPPED"]),
    ]
    assert deny == [ff(protocol=["udp"])]


def test_parse_filter_list_shapes(tmp_path):
    one = ff(source_label=["app=x"])
    assert filters.parse_filter_list('{"source_label": ["app=x"]}') == [one]
    assert filters.parse_filter_list('[{"source_label": ["app=x"]}, {}]') == [one, F()]
    assert filters.parse_filter_list(['{"source_label": ["app=x"]}']) == [one]
    assert filters.parse_filter_list('allowlist:\n- \'{"source_label":["app=x"]}\'\n') == [one]
    path = tmp_path / "f.json"
    path.write_text('[{"source_label": ["app=x"]}]')
    assert filters.parse_filter_list(str(path)) == [one]
    with pytest.raises(FilterError):
        filters.parse_filter_list('{"no_such_field": 1}')
    with pytest.raises(FilterError):
        filters.parse_filter_list(RAW)  # has a denylist: must not silently drop it


def test_prefilter_never_drops_a_matching_flow(tmp_path, captures):
    """The cheap condition serve puts before the exact SQL holds for every flow the exact SQL
    matches, for every case of the table; and it exists where it can speed a query up."""
    from flowpipe.views import query

    store = Store(tmp_path / "store")
    store.ensure()
    write_responses(store, captures, cluster="c1")
    write_responses(store, HANDMADE)
    with_pre = 0
    for name, (allow, _) in CASES.items():
        pre = filters.prefilter(allow)
        if pre is None:
            continue
        with_pre += 1
        exact = filters._any(filters.flow_filter_sql(f) for f in allow)
        _, rows = query.fetch(
            store,
            f"SELECT count(*) FILTER (WHERE {exact}), "
            f"count(*) FILTER (WHERE {exact} AND NOT coalesce({pre}, FALSE)) FROM flows_proto",
        )
        assert rows[0][1] == 0, (name, pre)
    assert with_pre >= 5
    assert filters.prefilter([ff(source_pod=["shop/"]), ff(destination_pod=["shop/"])]) == (
        "((source.namespace IN ('shop')) OR (destination.namespace IN ('shop')))"
    )
    assert (
        filters.prefilter([ff(verdict=["DROPPED"]), ff(source_ip=["10.0.0.1"])]) is None
    )  # one filter is not narrowed


def test_every_flowfilter_field_has_one_builder():
    built = [name for name, _ in filters.FIELDS]
    assert len(built) == len(set(built))
    fields = {f.name for f in F.DESCRIPTOR.fields}
    assert set(built) | set(filters.REFUSED) == fields and not set(built) & set(filters.REFUSED)


@pytest.mark.parametrize(
    "bad",
    [
        ff(source_pod=["shop/\x00x"]),
        ff(http_header=[{"key": "x-user", "value": "a\x00"}]),
        ff(source_workload=[{"name": "\x00"}]),
        ff(dns_query=["a\x00"]),
    ],
    ids=["pod", "header value", "workload name", "regex"],
)
def test_a_nul_anywhere_is_the_clients_fault(served, bad):
    stub, _ = served
    with pytest.raises(grpc.RpcError) as err:
        _served(stub, [bad], [])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NUL" in err.value.details()
