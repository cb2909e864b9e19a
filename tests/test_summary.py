"""Hubble's Summary: derived from the other fields (pyarrow and SQL agree), stored only where it differs."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2
from flowpipe.codec import decode, storage, summary
from flowpipe.lab import generate as lab
from flowpipe.views import query


def _flows(responses) -> pa.Table:
    raw = [r.SerializeToString() for r in responses]
    return decode.split_responses(decode.decode_responses(raw))[0]


def _edge_cases() -> list[observer_pb2.GetFlowsResponse]:
    """Flows each rule must (or must not) cover, with Summaries that are not the derived text."""
    out = []

    def add(summary_text: str, **fields) -> flow_pb2.Flow:
        r = observer_pb2.GetFlowsResponse()
        r.flow.uuid = f"00000000-0000-4000-8000-{len(out):012d}"
        r.flow.time.FromNanoseconds(1_700_000_000_123_456_789 + len(out))
        r.flow.Summary = summary_text
        for k, v in fields.items():
            setattr(r.flow, k, v)
        out.append(r)
        return r.flow

    f = add("TCP Flags: ", Type=flow_pb2.L3_L4)  # flags present, none set
    f.l4.TCP.flags.SetInParent()
    f = add("TCP Flags: SYN, ACK, RST, FIN, PSH, URG, ECE, CWR, NS", Type=flow_pb2.L3_L4)
    for name in summary.TCP_FLAGS:
        setattr(f.l4.TCP.flags, name, True)
    f = add("TCP", Type=flow_pb2.L3_L4)  # TCP without flags: no rule
    f.l4.TCP.destination_port = 80
    add("ICMPv4 EchoRequest", Type=flow_pb2.L3_L4).l4.ICMPv4.type = 8  # no rule
    add("", Type=flow_pb2.L3_L4).l4.UDP.source_port = 53  # derivable, but Hubble sent ""
    add("something else", Type=flow_pb2.L3_L4).l4.UDP.source_port = 53
    f = add("HTTP/2 GET https://é.example/ä?q=1", Type=flow_pb2.L7)
    f.l7.type, f.l7.http.protocol, f.l7.http.method = flow_pb2.REQUEST, "HTTP/2", "GET"
    f.l7.http.url = "https://é.example/ä?q=1"
    f = add("HTTP/1.1 503 4138ms (GET /x)", Type=flow_pb2.L7)
    f.l7.type, f.l7.latency_ns = flow_pb2.RESPONSE, 4_138_999_999
    f.l7.http.protocol, f.l7.http.method, f.l7.http.url, f.l7.http.code = (
        "HTTP/1.1",
        "GET",
        "/x",
        503,
    )
    f = add("HTTP/1.1 GET /x", Type=flow_pb2.L7)  # SAMPLE: no rule
    f.l7.type, f.l7.http.protocol, f.l7.http.method, f.l7.http.url = (
        flow_pb2.SAMPLE,
        "HTTP/1.1",
        "GET",
        "/x",
    )
    f = add('DNS Answer "1.1.1.1,2.2.2.2" TTL: 60 (Proxy a.b. A,AAAA)', Type=flow_pb2.L7)
    f.l7.type, f.l7.dns.query, f.l7.dns.ttl = flow_pb2.RESPONSE, "a.b.", 60
    f.l7.dns.qtypes.extend(["A", "AAAA"])
    f.l7.dns.ips.extend(["1.1.1.1", "2.2.2.2"])
    f = add('DNS Answer CNAMEs: "c." "1.1.1.1" TTL: 60 (Proxy a.b. A)', Type=flow_pb2.L7)
    f.l7.type, f.l7.dns.query, f.l7.dns.ttl = flow_pb2.RESPONSE, "a.b.", 60
    f.l7.dns.qtypes.append("A")
    f.l7.dns.ips.append("1.1.1.1")
    f.l7.dns.cnames.append("c.")  # no rule for CNAMEs
    f = add("DNS Answer RCode: Refused TTL: 0 (Proxy a.b. A)", Type=flow_pb2.L7)
    f.l7.type, f.l7.dns.query, f.l7.dns.rcode = flow_pb2.RESPONSE, "a.b.", 5  # unknown text
    f.l7.dns.qtypes.append("A")
    f = add("DNS Query a.b. ", Type=flow_pb2.L7)
    f.l7.type, f.l7.dns.query = flow_pb2.REQUEST, "a.b."
    add("", Type=flow_pb2.SOCK)
    return out


@pytest.fixture(scope="module")
def corpus(captures) -> list[observer_pb2.GetFlowsResponse]:
    labs = [r for s in (1, 2, 3, 4, 5) for rs in lab.generate_lab(s, seed=4).values() for r in rs]
    return list(captures) + labs + _edge_cases()


def test_every_real_capture_has_exactly_the_derived_summary(captures):
    flows = _flows(captures)
    derived = summary.derive(flows)
    assert derived.to_pylist() == flows.column("Summary").to_pylist()


def test_sql_and_pyarrow_derive_the_same_text(corpus):
    flows = _flows(corpus)
    arrow = summary.derive(flows).to_pylist()
    con = duckdb.connect()
    con.register("f", flows)
    sql = [r[0] for r in con.execute(f"SELECT {summary.SQL} FROM f").fetchall()]
    assert sql == arrow
    edge = arrow[-len(_edge_cases()) :]
    assert edge[0] == "TCP Flags: " and edge[2] is None and edge[3] is None  # rules apply or not
    assert edge[4] == edge[5] == "UDP" and edge[8] is None and edge[10] is None
    assert edge[7] == "HTTP/1.1 503 4138ms (GET /x)"


def test_summary_is_stored_only_where_it_differs_and_comes_back(corpus, store):
    flows = _flows(corpus)
    stored = storage.to_storage(flows)
    kept = stored.column("Summary")
    original = flows.column("Summary")
    differs = pc.invert(pc.fill_null(pc.equal(original, summary.derive(flows)), False))
    assert kept.null_count == len(corpus) - pc.sum(differs).as_py() > 800  # most are derived
    assert pc.all(pc.equal(kept.filter(differs), original.filter(differs))).as_py()
    assert storage.flows_from_columns(stored) == [r.flow for r in corpus]
    store.write("c1", stored)
    _, rows = query.fetch(store, "SELECT uuid, coalesce(summary, '') FROM flows")
    want = {r.flow.uuid: r.flow.Summary for r in corpus if r.flow.uuid}
    got = dict(rows)
    assert {u: got[u] for u in want} == want
