"""hubble_format against hubble itself: the guide's quoted `hubble observe` lines and real captures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from conftest import capture_files, load_capture

from flowpipe.api.flow import flow_pb2
from flowpipe.codec import decode, storage
from flowpipe.codec import hubble as hf
from flowpipe.views import catalog as views

FE1 = ("shop", "frontend-79f5dbfc6c-d6gb7", 114060)
BE1 = ("shop", "backend-6c4c67dc75-g22jn", 69364)
FE2 = ("shop", "frontend-79f5dbfc6c-r56dx", 135917)
BE2 = ("shop", "backend-6c4c67dc75-mqm9j", 163287)
DNS1A = ("kube-system", "kube-dns-75df64b86-xrfwz", 67025)
DNS1B = ("kube-system", "kube-dns-75df64b86-wjls9", 67025)
DNS2 = ("kube-system", "kube-dns-55899b7fc-2rdqk", 156453)
URL = "http://backend.shop.svc.cluster.local"
QUERY = "backend.shop.svc.cluster.local."


def _flow(
    when: str, src, sport: int, dst, dport: int, proto: str, *, reply: bool | None = False
) -> flow_pb2.Flow:
    """A flow with the given endpoints; when is 'HH:MM:SS.mmm' on 2 Oct 2025 UTC."""
    f = flow_pb2.Flow()
    f.time.FromDatetime(datetime(2025, 10, 2, tzinfo=UTC) + timedelta(seconds=_secs(when)))
    if reply:  # the datapath reports replies server -> client; hubble swaps them back
        src, sport, dst, dport = dst, dport, src, sport
    f.IP.source, f.IP.destination = "10.0.0.1", "10.0.0.2"
    for ep, (ns, pod, ident) in ((f.source, src), (f.destination, dst)):
        ep.namespace, ep.pod_name, ep.identity = ns, pod, ident
    l4 = f.l4.TCP if proto == "TCP" else f.l4.UDP
    l4.source_port, l4.destination_port = sport, dport
    if reply is not None:
        f.is_reply.value = reply
    return f


def _secs(when: str) -> float:
    h, m, s = when.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def verdict(when, src, sport, dst, dport, proto, match, direction, v=flow_pb2.FORWARDED):
    f = _flow(when, src, sport, dst, dport, proto)
    f.event_type.type, f.policy_match_type, f.traffic_direction, f.verdict = 5, match, direction, v
    f.Summary = "UDP" if proto == "UDP" else "TCP Flags: SYN"
    return f


def to_endpoint(when, src, sport, dst, dport):
    f = _flow(when, src, sport, dst, dport, "TCP")
    f.event_type.type, f.verdict, f.Summary = 4, flow_pb2.FORWARDED, "TCP Flags: SYN"
    return f


def dns(when, src, sport, dst, qtype, answer=None, ttl=0):
    f = _flow(when, src, sport, dst, 53, "UDP", reply=answer is not None)
    f.event_type.type, f.verdict = 129, flow_pb2.FORWARDED
    f.l7.type = flow_pb2.RESPONSE if answer is not None else flow_pb2.REQUEST
    f.l7.dns.query, f.l7.dns.observation_source = QUERY, "proxy"
    if answer is None:
        f.Summary = f"DNS Query {QUERY} {qtype}"
    else:
        f.Summary = f"DNS Answer {answer} TTL: {ttl} (Proxy {QUERY} {qtype})"
    return f


def http_request(when, src, sport, dst, path):
    f = _flow(when, src, sport, dst, 80, "TCP")
    f.event_type.type, f.verdict, f.l7.type = 129, flow_pb2.FORWARDED, flow_pb2.REQUEST
    f.l7.http.method, f.l7.http.url = "GET", URL + path
    f.Summary = f"HTTP/1.1 GET {URL}{path}"
    return f


EG, IN = flow_pb2.EGRESS, flow_pb2.INGRESS
# (quoted line, the flow it prints) for lines of every stage of the guide
GUIDE = [
    # stage 1: hubble observe -n shop --type policy-verdict --follow
    (
        "Oct  2 14:06:19.406: shop/frontend-79f5dbfc6c-d6gb7:60788 (ID:114060) -> kube-system/kube-dns-75df64b86-xrfwz:53 (ID:67025) policy-verdict:all EGRESS ALLOWED (UDP)",
        verdict("14:06:19.406", FE1, 60788, DNS1A, 53, "UDP", 4, EG),
    ),
    (
        "Oct  2 14:06:19.464: shop/frontend-79f5dbfc6c-d6gb7:55544 (ID:114060) -> shop/backend-6c4c67dc75-g22jn:80 (ID:69364) policy-verdict:all EGRESS ALLOWED (TCP Flags: SYN)",
        verdict("14:06:19.464", FE1, 55544, BE1, 80, "TCP", 4, EG),
    ),
    (
        "Oct  2 14:06:19.464: shop/frontend-79f5dbfc6c-d6gb7:55544 (ID:114060) -> shop/backend-6c4c67dc75-g22jn:80 (ID:69364) policy-verdict:all INGRESS ALLOWED (TCP Flags: SYN)",
        verdict("14:06:19.464", FE1, 55544, BE1, 80, "TCP", 4, IN),
    ),
    (
        "Oct  2 14:06:28.561: shop/frontend-79f5dbfc6c-r56dx:53700 (ID:135917) -> kube-system/kube-dns-55899b7fc-2rdqk:53 (ID:156453) policy-verdict:all EGRESS ALLOWED (UDP)",
        verdict("14:06:28.561", FE2, 53700, DNS2, 53, "UDP", 4, EG),
    ),
    (
        "Oct  2 14:06:28.576: shop/frontend-79f5dbfc6c-r56dx:35010 (ID:135917) -> shop/backend-6c4c67dc75-mqm9j:80 (ID:163287) policy-verdict:all EGRESS ALLOWED (TCP Flags: SYN)",
        verdict("14:06:28.576", FE2, 35010, BE2, 80, "TCP", 4, EG),
    ),
    (
        "Oct  2 14:06:28.576: shop/frontend-79f5dbfc6c-r56dx:35010 (ID:135917) -> shop/backend-6c4c67dc75-mqm9j:80 (ID:163287) policy-verdict:all INGRESS ALLOWED (TCP Flags: SYN)",
        verdict("14:06:28.576", FE2, 35010, BE2, 80, "TCP", 4, IN),
    ),
    # stage 2: hubble observe -n shop --protocol DNS --last 10
    (
        "Oct  2 14:14:50.446: shop/frontend-79f5dbfc6c-d6gb7:56300 (ID:114060) -> kube-system/kube-dns-75df64b86-wjls9:53 (ID:67025) dns-request proxy FORWARDED (DNS Query backend.shop.svc.cluster.local. A)",
        dns("14:14:50.446", FE1, 56300, DNS1B, "A"),
    ),
    (
        'Oct  2 14:14:50.453: shop/frontend-79f5dbfc6c-d6gb7:56300 (ID:114060) <- kube-system/kube-dns-75df64b86-wjls9:53 (ID:67025) dns-response proxy FORWARDED (DNS Answer "34.118.239.118" TTL: 30 (Proxy backend.shop.svc.cluster.local. A))',
        dns("14:14:50.453", FE1, 56300, DNS1B, "A", '"34.118.239.118"', 30),
    ),
    (
        "Oct  2 14:14:50.458: shop/frontend-79f5dbfc6c-d6gb7:53175 (ID:114060) -> kube-system/kube-dns-75df64b86-wjls9:53 (ID:67025) dns-request proxy FORWARDED (DNS Query backend.shop.svc.cluster.local. AAAA)",
        dns("14:14:50.458", FE1, 53175, DNS1B, "AAAA"),
    ),
    (
        "Oct  2 14:14:50.459: shop/frontend-79f5dbfc6c-d6gb7:53175 (ID:114060) <- kube-system/kube-dns-75df64b86-wjls9:53 (ID:67025) dns-response proxy FORWARDED (DNS Answer  TTL: 4294967295 (Proxy backend.shop.svc.cluster.local. AAAA))",
        dns("14:14:50.459", FE1, 53175, DNS1B, "AAAA", "", 4294967295),
    ),
    (
        "Oct  2 14:15:18.524: shop/frontend-79f5dbfc6c-r56dx:38458 (ID:135917) -> kube-system/kube-dns-55899b7fc-2rdqk:53 (ID:156453) dns-request proxy FORWARDED (DNS Query backend.shop.svc.cluster.local. A)",
        dns("14:15:18.524", FE2, 38458, DNS2, "A"),
    ),
    (
        'Oct  2 14:15:18.528: shop/frontend-79f5dbfc6c-r56dx:38458 (ID:135917) <- kube-system/kube-dns-55899b7fc-2rdqk:53 (ID:156453) dns-response proxy FORWARDED (DNS Answer "34.118.228.223" TTL: 30 (Proxy backend.shop.svc.cluster.local. A))',
        dns("14:15:18.528", FE2, 38458, DNS2, "A", '"34.118.228.223"', 30),
    ),
    # stage 2: hubble observe -n shop --type policy-verdict --to-port 53 (REDIRECTED prints ALLOWED)
    (
        "Oct  2 14:14:50.458: shop/frontend-79f5dbfc6c-d6gb7:53175 (ID:114060) -> kube-system/kube-dns-75df64b86-wjls9:53 (ID:67025) policy-verdict:L3-L4 EGRESS ALLOWED (UDP)",
        verdict("14:14:50.458", FE1, 53175, DNS1B, 53, "UDP", 2, EG, flow_pb2.REDIRECTED),
    ),
    (
        "Oct  2 14:15:18.531: shop/frontend-79f5dbfc6c-r56dx:42314 (ID:135917) -> kube-system/kube-dns-55899b7fc-2rdqk:53 (ID:156453) policy-verdict:L3-L4 EGRESS ALLOWED (UDP)",
        verdict("14:15:18.531", FE2, 42314, DNS2, 53, "UDP", 2, EG, flow_pb2.REDIRECTED),
    ),
    # stage 3: hubble observe -n shop --verdict FORWARDED --from-label app=frontend --to-label app=backend
    (
        "Oct  2 14:23:07.053: shop/frontend-79f5dbfc6c-d6gb7:54130 (ID:114060) -> shop/backend-6c4c67dc75-g22jn:80 (ID:69364) policy-verdict:L3-L4 EGRESS ALLOWED (TCP Flags: SYN)",
        verdict("14:23:07.053", FE1, 54130, BE1, 80, "TCP", 2, EG),
    ),
    (
        "Oct  2 14:23:07.053: shop/frontend-79f5dbfc6c-d6gb7:54130 (ID:114060) -> shop/backend-6c4c67dc75-g22jn:80 (ID:69364) policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN)",
        verdict("14:23:07.053", FE1, 54130, BE1, 80, "TCP", 2, IN),
    ),
    (
        "Oct  2 14:23:07.053: shop/frontend-79f5dbfc6c-d6gb7:54130 (ID:114060) -> shop/backend-6c4c67dc75-g22jn:80 (ID:69364) to-endpoint FORWARDED (TCP Flags: SYN)",
        to_endpoint("14:23:07.053", FE1, 54130, BE1, 80),
    ),
    (
        "Oct  2 14:23:18.701: shop/frontend-79f5dbfc6c-r56dx:52560 (ID:135917) -> shop/backend-6c4c67dc75-mqm9j:80 (ID:163287) to-endpoint FORWARDED (TCP Flags: SYN)",
        to_endpoint("14:23:18.701", FE2, 52560, BE2, 80),
    ),
    # stage 4: hubble observe -n shop --protocol http
    (
        "Oct  2 14:32:42.874: shop/frontend-79f5dbfc6c-d6gb7:55886 (ID:114060) -> shop/backend-6c4c67dc75-g22jn:80 (ID:69364) http-request FORWARDED (HTTP/1.1 GET http://backend.shop.svc.cluster.local/status/200)",
        http_request("14:32:42.874", FE1, 55886, BE1, "/status/200"),
    ),
    (
        "Oct  2 14:32:51.156: shop/frontend-79f5dbfc6c-d6gb7:55894 (ID:114060) -> shop/backend-6c4c67dc75-g22jn:80 (ID:69364) http-request FORWARDED (HTTP/1.1 GET http://backend.shop.svc.cluster.local/status/500)",
        http_request("14:32:51.156", FE1, 55894, BE1, "/status/500"),
    ),
    # stage 5: --type policy-verdict --traffic-direction egress / ingress
    (
        "Oct  2 14:47:43.789: shop/frontend-79f5dbfc6c-d6gb7:41728 (ID:114060) -> shop/backend-6c4c67dc75-g22jn:80 (ID:69364) policy-verdict:L3-L4 EGRESS ALLOWED (TCP Flags: SYN)",
        verdict("14:47:43.789", FE1, 41728, BE1, 80, "TCP", 2, EG),
    ),
    (
        "Oct  2 14:47:46.849: shop/frontend-79f5dbfc6c-d6gb7:41818 (ID:114060) -> shop/backend-6c4c67dc75-g22jn:80 (ID:69364) policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN)",
        verdict("14:47:46.849", FE1, 41818, BE1, 80, "TCP", 2, IN, flow_pb2.REDIRECTED),
    ),
]


@pytest.mark.parametrize("quoted,flow", GUIDE, ids=[str(i) for i in range(len(GUIDE))])
def test_compact_line_reproduces_the_guides_hubble_output(quoted, flow):
    assert hf.compact_line(flow) == quoted


def test_timestamp_is_utc_by_default_and_follows_tz():
    flow = GUIDE[0][1]
    assert hf.compact_line(flow).startswith("Oct  2 14:06:19.406: ")
    assert hf.compact_line(flow, tz=timezone(timedelta(hours=9))).startswith(
        "Oct  2 23:06:19.406: "
    )
    flow2 = flow_pb2.Flow()
    flow2.CopyFrom(flow)
    flow2.time.FromDatetime(datetime(2025, 10, 12, 1, 2, 3, 999999, tzinfo=UTC))
    assert hf.compact_line(flow2).startswith("Oct 12 01:02:03.999: ")  # truncated, not rounded
    flow2.ClearField("time")
    assert hf.compact_line(flow2).startswith("N/A: ")


def test_drops_unknown_direction_reserved_identities_and_ipv6():
    f = flow_pb2.Flow()
    f.time.FromDatetime(datetime(2025, 10, 2, 14, 48, 32, tzinfo=UTC))
    f.IP.source, f.IP.destination = "10.60.0.14", "1.1.1.1"
    f.source.namespace, f.source.pod_name, f.source.identity = "shop", "frontend-x", 114060
    f.destination.identity = 2
    f.l4.TCP.source_port, f.l4.TCP.destination_port, f.l4.TCP.flags.SYN = 40912, 80, True
    f.event_type.type, f.event_type.sub_type, f.verdict = 1, 133, flow_pb2.DROPPED
    f.Summary = "TCP Flags: SYN"
    assert hf.compact_line(f) == (
        "Oct  2 14:48:32.000: shop/frontend-x:40912 (ID:114060) <> 1.1.1.1:80 (world) Policy denied DROPPED (TCP Flags: SYN)"
    )
    f.event_type.type, f.policy_match_type, f.traffic_direction = 5, 0, flow_pb2.EGRESS
    assert (
        "<> 1.1.1.1:80 (world) policy-verdict:none EGRESS DENIED (TCP Flags: SYN)"
        in hf.compact_line(f)
    )
    f.IP.destination, f.destination.identity = "2606:2800:21f:cb07:6820:80da:af6b:8b2c", 0
    assert "<> [2606:2800:21f:cb07:6820:80da:af6b:8b2c]:80 (unknown) " in hf.compact_line(f)
    f.destination_names.append("example.com")
    assert "<> example.com:80 (unknown) " in hf.compact_line(f)
    f.event_type.type, f.event_type.sub_type = 4, 11
    assert " to-network FORWARDED " not in hf.compact_line(f)  # verdict stays DROPPED
    assert " to-network DROPPED " in hf.compact_line(f)


def test_policy_names_are_an_opt_in_suffix():
    flow = flow_pb2.Flow()
    flow.CopyFrom(GUIDE[2][1])
    plain = hf.compact_line(flow)
    assert hf.compact_line(flow, policies=True) == plain  # no names: byte-identical to hubble
    flow.ingress_allowed_by.add(name="allow-frontend-l7")
    flow.ingress_allowed_by.add(name="allow-frontend-to-backend")
    flow.egress_denied_by.add(name="deny-world")
    assert hf.compact_line(flow) == plain
    assert hf.compact_line(flow, policies=True) == (
        plain + " [ingress: allow-frontend-l7,allow-frontend-to-backend, denied egress: deny-world]"
    )


def test_jsonpb_reproduces_real_hubble_captures_byte_for_byte():
    for path in capture_files():
        for line, resp in zip(path.read_text().splitlines(), load_capture(path)):
            assert hf.jsonpb(resp) == line
            assert hf.jsonpb(resp.flow).startswith('{"flow":{"time":')


def test_real_captures_print_sensibly(captures):
    lines = [hf.compact_line(r.flow) for r in captures]
    assert all(line.endswith(f"({r.flow.Summary})") for line, r in zip(lines, captures))
    assert not any(" UNKNOWN " in line for line in lines)
    expected = {
        "Nov 10 10:40:56.885: bookinfo/ratings-v1-b6994bb9-jgqxb:59736 (ID:16370) -> "
        "bookinfo/productpage-v1-6b746f74dc-9rcxx:9080 (ID:3418) policy-verdict:L4-Only EGRESS ALLOWED (TCP Flags: SYN)",
        "Oct  4 11:22:26.593: kube-system/node-local-dns-88zrp:59102 (ID:1563) <- kube-system/kube-dns-b4f5c58c7-vnx5s:53 "
        "(ID:796) dns-response proxy FORWARDED (DNS Answer RCode: Non-Existent Domain TTL: 4294967295 (Proxy "
        "istiod-istio-1611.istio-system.svc.istio-system.svc.cluster.local. A))",
        "Jun 16 16:52:13.136: bookinfo/reviews-v1-545db77b95-s6jb8:15020 (ID:25339) <> 10.0.2.1:42044 (host) "
        "to-stack FORWARDED (TCP Flags: ACK, FIN)",
        "Nov 10 10:40:56.465: bookinfo/productpage-v1-6b746f74dc-9rcxx:35128 (ID:3418) -> "
        "bookinfo/reviews-v2-7bf8c9648f-r7bs2:9080 (ID:11615) to-proxy FORWARDED (TCP Flags: ACK)",
    }
    assert expected <= set(lines)


def test_compact_line_row_matches_compact_line_through_the_flows_view(store, captures):
    dec = decode.decode_responses([r.SerializeToString() for r in captures])
    flows, _ = decode.split_responses(dec)
    store.write("c1", storage.to_storage(flows))
    con = views.connect(store)
    cur = con.execute("SELECT * FROM flows ORDER BY time")
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r)) for r in cur.fetchall()]
    con.close()
    want = sorted(hf.compact_line(r.flow, policies=True) for r in captures)
    assert sorted(hf.compact_line_row(row) for row in rows) == want
