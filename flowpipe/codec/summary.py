"""Hubble's deprecated `Summary` text, derived from the other fields (Arrow and SQL, one rule).

Hubble fills Summary from the flow itself: "TCP Flags: SYN, ACK", "UDP", "HTTP/1.1 GET http://..",
"HTTP/1.1 200 4ms (GET http://..)", "DNS Query name. A", "DNS Answer \"1.2.3.4\" TTL: 30 (Proxy
name. A)", "DNS Answer RCode: Non-Existent Domain TTL: .. (Proxy ..)". Every flow of the real
captures in tests/data/hubble-otel has exactly the derived text. The store keeps Summary only where
it differs from `derive` (NULL elsewhere) and puts it back on reading: lossless whatever Hubble
sends, and ~1.5 bytes a flow smaller. `derive` (pyarrow) and `SQL` (DuckDB, over the same stored
columns) must give the same text for every row; tests/test_summary.py holds them to it."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from flowpipe.api.flow import flow_pb2

TCP_FLAGS = ("SYN", "ACK", "RST", "FIN", "PSH", "URG", "ECE", "CWR", "NS")  # gopacket's order
RCODES = {2: "Server Failure", 3: "Non-Existent Domain"}  # only texts seen from Hubble
_NULL = pa.scalar(None, pa.string())


_FLAG_TEXTS = pa.array(
    [
        "TCP Flags: " + ", ".join(f for i, f in enumerate(TCP_FLAGS) if code >> i & 1)
        for code in range(1 << len(TCP_FLAGS))
    ]
)


def _field(col, *path: str):
    for name in path:
        col = pc.struct_field(col, name)
    return col


def _cat(*parts) -> pa.Array:
    """Concatenation, NULL when any part is (like SQL ||)."""
    return pc.binary_join_element_wise(
        *[pa.scalar(p) if isinstance(p, str) else p for p in parts], ""
    )


def _when(cond, value) -> pa.Array:
    return pc.if_else(pc.fill_null(cond, False), value, _NULL)


def derive(flows: pa.Table) -> pa.Array:
    """The Summary Hubble would write for each flow (NULL where no rule applies)."""
    if flows.num_rows == 0:
        return pa.array([], pa.string())
    t = flows.select(["Type", "l4", "l7"]).combine_chunks()
    typ, l4, l7 = (t.column(i).chunk(0) for i in range(3))
    flags = _field(l4, "TCP", "flags")
    # the flags as a 9-bit number, then its text from a table of all 512 (one take, no strings built)
    bits = [pc.cast(pc.fill_null(_field(flags, f), False), pa.uint16()) for f in TCP_FLAGS]
    code = bits[0]
    for i, b in enumerate(bits[1:], 1):
        code = pc.bit_wise_or(code, pc.shift_left(b, i))
    tcp = pc.if_else(pc.is_valid(_field(flags, "SYN")), pc.take(_FLAG_TEXTS, code), _NULL)
    udp = _when(pc.is_valid(_field(l4, "UDP", "source_port")), pa.scalar("UDP"))
    out = _when(pc.equal(typ, flow_pb2.L3_L4), pc.coalesce(tcp, udp))
    is_l7 = pc.fill_null(pc.equal(typ, flow_pb2.L7), False)
    if pc.any(is_l7).as_py():  # the string work only for the L7 rows
        out = pc.replace_with_mask(out, is_l7, _l7_text(l7.filter(is_l7)))
    return out


def _l7_text(l7: pa.Array) -> pa.Array:
    l7_type = _field(l7, "type")
    request, response = pc.equal(l7_type, flow_pb2.REQUEST), pc.equal(l7_type, flow_pb2.RESPONSE)
    http = _field(l7, "http")
    proto, method, url = (_field(http, f) for f in ("protocol", "method", "url"))
    code = pc.cast(_field(http, "code"), pa.string())
    ms = pc.cast(
        pc.divide(_field(l7, "latency_ns"), pa.scalar(1_000_000, pa.uint64())), pa.string()
    )
    is_http = pc.is_valid(_field(http, "code"))
    http_text = pc.coalesce(
        _when(pc.and_(is_http, request), _cat(proto, " ", method, " ", url)),
        _when(
            pc.and_(is_http, response),
            _cat(proto, " ", code, " ", ms, "ms (", method, " ", url, ")"),
        ),
    )
    dns = _field(l7, "dns")
    query, rcode = _field(dns, "query"), _field(dns, "rcode")
    qtypes = pc.binary_join(_field(dns, "qtypes"), ",")
    ips = pc.binary_join(_field(dns, "ips"), ",")
    rcode_text = pc.coalesce(*[_when(pc.equal(rcode, k), pa.scalar(v)) for k, v in RCODES.items()])
    answer = pc.if_else(pc.equal(rcode, 0), _cat('"', ips, '"'), _cat("RCode: ", rcode_text))
    no_cnames = pc.equal(pc.list_value_length(_field(dns, "cnames")), 0)
    is_dns = pc.is_valid(rcode)
    dns_text = pc.coalesce(
        _when(pc.and_(is_dns, request), _cat("DNS Query ", query, " ", qtypes)),
        _when(
            pc.and_(pc.and_(is_dns, response), no_cnames),
            _cat(
                "DNS Answer ",
                answer,
                " TTL: ",
                pc.cast(_field(dns, "ttl"), pa.string()),
                " (Proxy ",
                query,
                " ",
                qtypes,
                ")",
            ),
        ),
    )
    return pc.coalesce(http_text, dns_text)


def _sql() -> str:
    flags = " || ".join(
        f"(CASE WHEN coalesce(l4.TCP.flags.{f}, false) THEN '{f}, ' ELSE '' END)" for f in TCP_FLAGS
    )
    rcodes = " ".join(f"WHEN {k} THEN '{v}'" for k, v in RCODES.items())
    qtypes = "array_to_string(l7.dns.qtypes, ',')"
    return (
        "(CASE"
        f' WHEN "Type" = {flow_pb2.L3_L4} THEN (CASE'
        f" WHEN l4.TCP.flags.SYN IS NOT NULL THEN 'TCP Flags: ' || rtrim({flags}, ', ')"
        " WHEN l4.UDP.source_port IS NOT NULL THEN 'UDP' END)"
        f' WHEN "Type" = {flow_pb2.L7} THEN (CASE'
        f" WHEN l7.http.code IS NOT NULL AND l7.type = {flow_pb2.REQUEST}"
        " THEN l7.http.protocol || ' ' || l7.http.method || ' ' || l7.http.url"
        f" WHEN l7.http.code IS NOT NULL AND l7.type = {flow_pb2.RESPONSE}"
        " THEN l7.http.protocol || ' ' || CAST(l7.http.code AS VARCHAR) || ' '"
        " || CAST(l7.latency_ns // 1000000 AS VARCHAR) || 'ms (' || l7.http.method || ' '"
        " || l7.http.url || ')'"
        f" WHEN l7.dns.rcode IS NOT NULL AND l7.type = {flow_pb2.REQUEST}"
        f" THEN 'DNS Query ' || l7.dns.query || ' ' || {qtypes}"
        f" WHEN l7.dns.rcode IS NOT NULL AND l7.type = {flow_pb2.RESPONSE}"
        " AND len(l7.dns.cnames) = 0"
        " THEN 'DNS Answer ' || (CASE WHEN l7.dns.rcode = 0"
        " THEN '\"' || array_to_string(l7.dns.ips, ',') || '\"'"
        f" ELSE 'RCode: ' || (CASE l7.dns.rcode {rcodes} END) END)"
        " || ' TTL: ' || CAST(l7.dns.ttl AS VARCHAR) || ' (Proxy ' || l7.dns.query || ' '"
        f" || {qtypes} || ')'"
        " END) END)"
    )


SQL = _sql()  # the same text as derive(), over the stored flow columns


def elide(flows: pa.Table) -> pa.Table:
    """flows with Summary NULL where it equals the derived text (the stored form)."""
    i = flows.schema.get_field_index("Summary")
    col = flows.column(i)
    same = pc.fill_null(pc.equal(col, derive(flows)), False)
    return flows.set_column(i, "Summary", pc.if_else(same, _NULL, col))


def restore(flows: pa.Table) -> pa.Table:
    """Undo elide: NULL Summaries become the derived text again."""
    i = flows.schema.get_field_index("Summary")
    if i < 0 or flows.column(i).null_count == 0:
        return flows
    return flows.set_column(i, "Summary", pc.coalesce(flows.column(i), derive(flows)))
