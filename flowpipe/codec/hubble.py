"""Print flows exactly as `hubble observe` does: compact lines and `-o jsonpb` lines.

Compact format (hubble/pkg/printer/printer.go, IP translation on, no --print-node-name):
``<time>: <src> <src identity> <arrow> <dst> <dst identity> <type> <verdict> (<summary>)``.

flowpipe extension: when ``policies=True`` and a flow names the policies that allowed or
denied it, `` [ingress: a,b, egress: c, denied ingress: d, denied egress: e]`` (only the
non-empty groups) is appended after the hubble part. Without policy names the line is
byte-identical to hubble's. `compact_line_row` turns it on by default (the rule checker shows
offending flows with it); `compact_line` leaves it off so it can be compared with hubble output.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor as _FD

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2
from flowpipe.codec.spec import WRAPPERS

# Hubble's names of policy match types and monitor event types
MATCH_TYPES = {
    0: "none",
    1: "L3-Only",
    2: "L3-L4",
    3: "L4-Only",
    4: "all",
    5: "L3-Proto",
    6: "Proto-Only",
}
EVENT_TYPES = {
    1: "drop",
    2: "debug",
    3: "capture",
    4: "trace",
    5: "policy-verdict",
    6: "recorder",
    7: "trace-sock",
    129: "l7",
    130: "agent",
}

# pkg/monitor/api/types.go (trace_point enum of bpf/lib/trace.h)
TRACE_POINTS = {
    0: "to-endpoint",
    1: "to-proxy",
    2: "to-host",
    3: "to-stack",
    4: "to-overlay",
    5: "from-endpoint",
    6: "from-proxy",
    7: "from-host",
    8: "from-stack",
    9: "from-overlay",
    10: "from-network",
    11: "to-network",
    12: "from-crypto",
    13: "to-crypto",
}

# pkg/monitor/api/drop.go: what `hubble observe` prints as the type of a drop event
DROP_REASONS = {
    0: "Success",
    2: "Invalid packet",
    3: "Interface",
    4: "Interface Decrypted",
    5: "LB, sock cgroup: No backend slot entry found",
    6: "LB, sock cgroup: No backend entry found",
    7: "LB, sock cgroup: Reverse entry update failed",
    8: "LB, sock cgroup: Reverse entry stale",
    9: "Fragmented packet",
    10: "Fragmented packet entry update failed",
    130: "Invalid source mac",
    131: "Invalid destination mac",
    132: "Invalid source ip",
    133: "Policy denied",
    134: "Invalid packet",
    135: "CT: Truncated or invalid header",
    136: "CT: Missing TCP ACK flag",
    137: "CT: Unknown L4 protocol",
    138: "CT: Can't create entry from packet",
    139: "Unsupported L3 protocol",
    140: "Missed tail call",
    141: "Error writing to packet",
    142: "Unknown L4 protocol",
    143: "Unknown ICMPv4 code",
    144: "Unknown ICMPv4 type",
    145: "Unknown ICMPv6 code",
    146: "Unknown ICMPv6 type",
    147: "Error retrieving tunnel key",
    148: "Error retrieving tunnel options",
    149: "Invalid Geneve option",
    150: "Unknown L3 target address",
    151: "Stale or unroutable IP",
    152: "No matching local container found",
    153: "Error while correcting L3 checksum",
    154: "Error while correcting L4 checksum",
    155: "CT: Map insertion failed",
    156: "Invalid IPv6 extension header",
    157: "IP fragmentation not supported",
    158: "Service backend not found",
    160: "No tunnel/encapsulation endpoint (datapath BUG!)",
    161: "Failed to insert into proxymap",
    162: "Reached EDT rate-limiting drop horizon",
    163: "Unknown connection tracking state",
    164: "Local host is unreachable",
    165: "No configuration available to perform policy decision",
    166: "Unsupported L2 protocol",
    167: "No mapping for NAT masquerade",
    168: "Unsupported protocol for NAT masquerade",
    169: "FIB lookup failed",
    170: "Encapsulation traffic is prohibited",
    171: "Invalid identity",
    172: "Unknown sender",
    173: "NAT not needed",
    174: "Is a ClusterIP",
    175: "First logical datagram fragment not found",
    176: "Forbidden ICMPv6 message",
    177: "Denied by LB src range check",
    178: "Socket lookup failed",
    179: "Socket assign failed",
    180: "Proxy redirection not supported for protocol",
    181: "Policy denied by denylist",
    182: "VLAN traffic disallowed by VLAN filter",
    183: "Incorrect VNI from VTEP",
    184: "Failed to update or lookup TC buffer",
    185: "No SID was found for the IP address",
    186: "SRv6 state was removed during tail call",
    187: "L3 translation from IPv4 to IPv6 failed (NAT46)",
    188: "L3 translation from IPv6 to IPv4 failed (NAT64)",
    189: "Authentication required",
    190: "No conntrack map found",
    191: "No nat map found",
    192: "Invalid ClusterID",
    193: "Unsupported packet protocol for DSR encapsulation",
    194: "No egress gateway found",
    195: "Traffic is unencrypted",
    196: "TTL exceeded",
    197: "No node ID found",
    198: "Rate limited",
    199: "IGMP handled",
    200: "IGMP subscribed",
    201: "Multicast handled",
    202: "Host datapath not ready",
    203: "Endpoint policy program not available",
    204: "No Egress IP configured",
    205: "Punt to proxy",
}

# pkg/identity/numericidentity.go reservedIdentityNames
RESERVED_IDENTITIES = {
    0: "unknown",
    1: "host",
    2: "world",
    3: "unmanaged",
    4: "health",
    5: "init",
    6: "remote-node",
    7: "kube-apiserver",
    8: "ingress",
    9: "world-ipv4",
    10: "world-ipv6",
}

SOCK_XLATE = {1: "pre-xlate-fwd", 2: "post-xlate-fwd", 3: "pre-xlate-rev", 4: "post-xlate-rev"}
TYPE_DROP, TYPE_CAPTURE, TYPE_TRACE, TYPE_POLICY_VERDICT, TYPE_TRACE_SOCK = 1, 3, 4, 5, 7
_ALLOWED, _DENIED = {"FORWARDED", "REDIRECTED"}, {"DROPPED", "ERROR"}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def stamp_milli(when: datetime | None, tz: tzinfo = UTC) -> str:
    """Go's time.StampMilli ("Jan _2 15:04:05.000", milliseconds truncated), or "N/A"."""
    if when is None:
        return "N/A"
    if when.tzinfo is None:  # naive values from the store are UTC
        when = when.replace(tzinfo=UTC)
    t = when.astimezone(tz)
    return f"{_MONTHS[t.month - 1]} {t.day:>2} {t:%H:%M:%S}.{t.microsecond // 1000:03d}"


def hostname(
    ip: str, port: int | None, namespace: str, pod: str, service: str, names: Sequence[str]
) -> str:
    """Printer.Hostname: ns/pod, else ns/svc, else DNS names, else the IP; then :port."""
    host = ip
    if pod:
        host = f"{namespace}/{pod}" if namespace else pod
    elif service:
        host = f"{namespace}/{service}" if namespace else service
    elif names:
        host = ",".join(names)
    if port:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # net.JoinHostPort
    return host


def identity(num: int | None) -> str:
    """(name) for reserved identities, else (ID:n)."""
    num = num or 0
    name = RESERVED_IDENTITIES.get(num)
    return f"({name})" if name else f"(ID:{num})"


def flow_type(
    *,
    event_type: int,
    sub_type: int,
    l7_type: str | None,
    l7_protocol: str | None,
    dns_source: str,
    match_type: int | str,
    direction: str,
    capture_point: str = "UNKNOWN",
    sock_point: int = 0,
) -> str:
    """GetFlowType: http-request, dns-response proxy, to-endpoint, Policy denied, policy-verdict:..."""
    if l7_type is not None:
        kind = l7_type.lower()
        proto = {"HTTP": "http", "DNS": "dns", "Kafka": "kafka"}.get(l7_protocol or "", "l7")
        if proto == "dns":
            kind += " " + dns_source
        return f"{proto}-{kind}"
    if event_type == TYPE_TRACE:
        return TRACE_POINTS.get(sub_type, str(sub_type))
    if event_type == TYPE_DROP:
        return DROP_REASONS.get(sub_type, str(sub_type))
    if event_type == TYPE_POLICY_VERDICT:
        match = (
            match_type if isinstance(match_type, str) else MATCH_TYPES.get(match_type, "unknown")
        )
        return f"policy-verdict:{match} {direction}"
    if event_type == TYPE_CAPTURE:
        return capture_point
    if event_type == TYPE_TRACE_SOCK:
        return SOCK_XLATE.get(sock_point, "SOCK_XLATE_POINT_UNKNOWN")
    return "UNKNOWN"


def verdict_text(verdict: str, event_type: int) -> str:
    """The verdict, as ALLOWED/DENIED/AUDITED for policy-verdict events."""
    if event_type == TYPE_POLICY_VERDICT:
        if verdict in _ALLOWED:
            return "ALLOWED"
        if verdict in _DENIED:
            return "DENIED"
        if verdict == "AUDIT":
            return "AUDITED"
    return verdict


def policy_suffix(
    ingress: Sequence[str] = (),
    egress: Sequence[str] = (),
    ingress_denied: Sequence[str] = (),
    egress_denied: Sequence[str] = (),
) -> str:
    """The flowpipe extension: ' [ingress: a,b, egress: c, denied ...]', or '' when no names."""
    groups = [
        ("ingress", ingress),
        ("egress", egress),
        ("denied ingress", ingress_denied),
        ("denied egress", egress_denied),
    ]
    parts = [f"{label}: {','.join(names)}" for label, names in groups if names]
    return f" [{', '.join(parts)}]" if parts else ""


def _line(
    ts: str,
    src: str,
    src_id: str,
    dst: str,
    dst_id: str,
    is_reply: bool | None,
    typ: str,
    verdict: str,
    summary: str,
) -> str:
    arrow = "->"
    if is_reply is None:
        arrow = "<>"
    elif is_reply:
        src, dst, src_id, dst_id, arrow = dst, src, dst_id, src_id, "<-"
    return f"{ts}: {src} {src_id} {arrow} {dst} {dst_id} {typ} {verdict} ({summary})"


def _ports(flow: flow_pb2.Flow) -> tuple[int, int]:
    which = flow.l4.WhichOneof("protocol")
    if which in ("TCP", "UDP", "SCTP"):
        p = getattr(flow.l4, which)
        return p.source_port, p.destination_port
    return 0, 0


def _flow_hosts(flow: flow_pb2.Flow) -> tuple[str, str]:
    if not flow.HasField("IP"):
        if flow.HasField("ethernet"):
            return flow.ethernet.source, flow.ethernet.destination
        return "", ""
    sport, dport = _ports(flow)
    src_ns, dst_ns = flow.source.namespace, flow.destination.namespace
    src_svc = dst_svc = ""
    if flow.HasField("source_service"):  # hubble quirk: the service namespace wins
        src_ns, src_svc = flow.source_service.namespace, flow.source_service.name
    if flow.HasField("destination_service"):
        dst_ns, dst_svc = flow.destination_service.namespace, flow.destination_service.name
    src = hostname(flow.IP.source, sport, src_ns, flow.source.pod_name, src_svc, flow.source_names)
    dst = hostname(
        flow.IP.destination,
        dport,
        dst_ns,
        flow.destination.pod_name,
        dst_svc,
        flow.destination_names,
    )
    return src, dst


def _summary(summary: str, auth: str, trace_id: int = 0) -> str:
    out = f"IP Trace ID: {trace_id}; " if trace_id else ""
    out += summary
    if auth and auth != "DISABLED":
        out += f"; {auth}"
    return out


def compact_line(flow: flow_pb2.Flow, *, tz: tzinfo = UTC, policies: bool = False) -> str:
    """The flow as one `hubble observe` compact line (no trailing newline)."""
    when = flow.time.ToDatetime(tzinfo=UTC) if flow.HasField("time") else None
    src, dst = _flow_hosts(flow)
    l7 = flow.l7 if flow.HasField("l7") else None
    typ = flow_type(
        event_type=flow.event_type.type,
        sub_type=flow.event_type.sub_type,
        l7_type=flow_pb2.L7FlowType.Name(l7.type) if l7 is not None else None,
        l7_protocol={"http": "HTTP", "dns": "DNS", "kafka": "Kafka"}.get(
            l7.WhichOneof("record") or ""
        )
        if l7 is not None
        else None,
        dns_source=l7.dns.observation_source if l7 is not None else "",
        match_type=flow.policy_match_type,
        direction=flow_pb2.TrafficDirection.Name(flow.traffic_direction),
        capture_point=flow_pb2.DebugCapturePoint.Name(flow.debug_capture_point),
        sock_point=flow.sock_xlate_point,
    )
    verdict = verdict_text(_enum_name(flow_pb2.Verdict, flow.verdict), flow.event_type.type)
    summary = _summary(
        flow.Summary, _enum_name(flow_pb2.AuthType, flow.auth_type), flow.ip_trace_id.trace_id
    )
    is_reply = flow.is_reply.value if flow.HasField("is_reply") else None
    line = _line(
        stamp_milli(when, tz),
        src,
        identity(flow.source.identity),
        dst,
        identity(flow.destination.identity),
        is_reply,
        typ,
        verdict,
        summary,
    )
    if policies:
        line += policy_suffix(
            [p.name for p in flow.ingress_allowed_by],
            [p.name for p in flow.egress_allowed_by],
            [p.name for p in flow.ingress_denied_by],
            [p.name for p in flow.egress_denied_by],
        )
    return line


def _enum_name(enum, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


def _row_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, int):  # nanoseconds since the epoch
        secs, ns = divmod(value, 1_000_000_000)
        return datetime.fromtimestamp(secs, UTC).replace(microsecond=ns // 1000)
    if hasattr(value, "to_pydatetime"):  # pandas.Timestamp
        return value.to_pydatetime()
    return datetime.fromisoformat(str(value))


def _row_host(row: Mapping[str, Any], side: str) -> str:
    ip = row.get(f"{side}_ip") or ""
    if not ip:
        return ""
    ns = row.get(f"{side}_namespace") or ""
    svc = row.get(f"{side}_service") or ""
    if svc:  # hubble quirk: the service namespace wins
        ns = row.get(f"{side}_service_namespace") or ""
    return hostname(
        ip,
        row.get(f"{side}_port"),
        ns,
        row.get(f"{side}_pod") or "",
        svc,
        row.get(f"{side}_names") or (),
    )


def compact_line_row(row: Mapping[str, Any], *, tz: tzinfo = UTC, policies: bool = True) -> str:
    """A row of the `flows` view as a hubble compact line, plus the policy names (see module doc)."""
    event_type = row.get("event_type") or 0
    typ = flow_type(
        event_type=event_type,
        sub_type=row.get("event_subtype") or 0,
        l7_type=row.get("l7_type"),
        l7_protocol=row.get("l7_protocol"),
        dns_source=row.get("dns_observation_source") or "",
        match_type=row.get("policy_match")
        or MATCH_TYPES.get(row.get("policy_match_type") or 0, "none"),
        direction=row.get("traffic_direction") or "TRAFFIC_DIRECTION_UNKNOWN",
    )
    line = _line(
        stamp_milli(_row_time(row.get("time")), tz),
        _row_host(row, "src"),
        identity(row.get("src_identity")),
        _row_host(row, "dst"),
        identity(row.get("dst_identity")),
        row.get("is_reply"),
        typ,
        verdict_text(row.get("verdict") or "VERDICT_UNKNOWN", event_type),
        _summary(row.get("summary") or "", row.get("auth_type") or ""),
    )
    if policies:
        line += policy_suffix(
            row.get("ingress_allowed_by") or (),
            row.get("egress_allowed_by") or (),
            row.get("ingress_denied_by") or (),
            row.get("egress_denied_by") or (),
        )
    return line


# ------------------------------------------------------------------ jsonpb


def jsonpb(flow_or_response: flow_pb2.Flow | observer_pb2.GetFlowsResponse) -> str:
    """One `hubble observe -o jsonpb` line (protojson with proto names, Go field order; no newline)."""
    msg = flow_or_response
    if isinstance(msg, flow_pb2.Flow):
        msg = observer_pb2.GetFlowsResponse(flow=msg, node_name=msg.node_name)
        if msg.flow.HasField("time"):
            msg.time.CopyFrom(msg.flow.time)
    text = json.dumps(_message(msg), ensure_ascii=False, separators=(",", ":"))
    # Go's json.Encoder HTML-escapes what protojson returns
    for raw, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(raw, esc)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


_QUOTED = {_FD.TYPE_INT64, _FD.TYPE_UINT64, _FD.TYPE_SINT64, _FD.TYPE_FIXED64, _FD.TYPE_SFIXED64}


def _message(msg) -> Any:
    name = msg.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        return rfc3339(msg.seconds, msg.nanos)
    if name in WRAPPERS:
        return _scalar(msg.DESCRIPTOR.fields_by_name["value"], msg.value)
    if name in ("google.protobuf.Any", "google.protobuf.Duration", "google.protobuf.Struct"):
        return json_format.MessageToDict(msg, preserving_proto_field_name=True)
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:  # declaration order, as Go's protojson writes
        value = getattr(msg, fd.name)
        if fd.is_repeated:
            if not value:
                continue
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                vfd = fd.message_type.fields_by_name["value"]
                out[fd.name] = {str(k): _field(vfd, v) for k, v in value.items()}
            else:
                out[fd.name] = [_field(fd, v) for v in value]
        elif fd.has_presence:
            if msg.HasField(fd.name):
                out[fd.name] = _field(fd, value)
        elif value != fd.default_value:
            out[fd.name] = _field(fd, value)
    return out


def _field(fd: _FD, value: Any) -> Any:
    if fd.message_type is not None:
        return _message(value)
    return _scalar(fd, value)


def _scalar(fd: _FD, value: Any) -> Any:
    if fd.enum_type is not None:
        ev = fd.enum_type.values_by_number.get(value)
        return ev.name if ev is not None else value
    if fd.type in _QUOTED:
        return str(value)
    if fd.type == _FD.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value


def rfc3339(seconds: int, nanos: int) -> str:
    """A Timestamp as protobuf's JSON mapping writes it (0, 3, 6 or 9 fraction digits, UTC)."""
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if nanos == 0:
        return base + "Z"
    if nanos % 1_000_000 == 0:
        return f"{base}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{base}.{nanos // 1000:06d}Z"
    return f"{base}.{nanos:09d}Z"
