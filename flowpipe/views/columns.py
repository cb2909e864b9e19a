"""The SQL of the friendly columns of the `flows` and `events` views, over the stored columns."""

from __future__ import annotations

from flowpipe.api.flow import flow_pb2
from flowpipe.codec.hubble import EVENT_TYPES, MATCH_TYPES

TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


def _case(expr: str, names: dict[int, str]) -> str:
    whens = " ".join(f"WHEN {k} THEN '{v}'" for k, v in sorted(names.items()))
    return f"(CASE {expr} {whens} ELSE CAST({expr} AS VARCHAR) END)"


def _enum(enum_name: str, expr: str) -> str:
    desc = flow_pb2.DESCRIPTOR.enum_types_by_name[enum_name]
    return _case(expr, {v.number: v.name for v in desc.values})


def _port(side: str) -> str:
    return f"coalesce(l4.TCP.{side}_port, l4.UDP.{side}_port, l4.SCTP.{side}_port)"


def _endpoint(prefix: str, ep: str, side: str) -> list[tuple[str, str, str]]:
    who = "source" if side == "source" else "destination"
    return [
        (f"{prefix}_namespace", f"nullif({ep}.namespace, '')", f"{who} namespace"),
        (f"{prefix}_pod", f"nullif({ep}.pod_name, '')", f"{who} pod name"),
        (f"{prefix}_identity", f"{ep}.identity", f"{who} security identity"),
        (f"{prefix}_labels", f"{ep}.labels", f"{who} labels, e.g. ['k8s:app=frontend', ...]"),
        (f"{prefix}_workload", f"nullif({ep}.workloads[1].name, '')", f"first {who} workload name"),
        (f"{prefix}_workloads", f"{ep}.workloads", f"{who} workloads (name, kind)"),
        (
            f"{prefix}_cluster",
            f"nullif({ep}.cluster_name, '')",
            f"{who} cluster name (clustermesh)",
        ),
        (f"{prefix}_endpoint_id", f"{ep}.ID", f"{who} Cilium endpoint ID"),
        (f"{prefix}_ip", f"nullif(IP.{side}, '')", f"{who} IP"),
        (f"{prefix}_port", _port(side), f"{who} L4 port (TCP, UDP, SCTP)"),
        (f"{prefix}_service", f"nullif({side}_service.name, '')", f"{who} service name"),
        (
            f"{prefix}_service_namespace",
            f"nullif({side}_service.namespace, '')",
            f"{who} service namespace",
        ),
        (f"{prefix}_names", f"{side}_names", f"DNS names of the {who} IP"),
    ]


def _policies(field_name: str, what: str) -> list[tuple[str, str, str]]:
    return [
        (
            field_name,
            f"list_transform({field_name}, lambda p: p.name)",
            f"names of policies that {what}",
        ),
        (
            f"{field_name}_kind",
            f"list_transform({field_name}, lambda p: p.kind)",
            f"kinds of policies that {what}",
        ),
        (
            f"{field_name}_detail",
            field_name,
            f"policies that {what} (name, namespace, labels, revision, kind)",
        ),
    ]


def _l4_protocol() -> str:
    # one leaf tells a present record (its plain scalars are set, 0 by default): `l4.TCP IS NOT
    # NULL` would make DuckDB read every leaf of the record, flags included
    names = ("TCP", "UDP", "ICMPv4", "ICMPv6", "SCTP", "VRRP", "IGMP")
    leaf = {"TCP": "source_port", "UDP": "source_port", "SCTP": "source_port"}
    whens = " ".join(f"WHEN l4.{n}.{leaf.get(n, 'type')} IS NOT NULL THEN '{n}'" for n in names)
    return f"(CASE {whens} END)"


def _tcp_flags() -> str:
    items = ", ".join(f"CASE WHEN l4.TCP.flags.{f} THEN '{f}' END" for f in TCP_FLAGS)
    return f"list_filter([{items}], lambda f: f IS NOT NULL)"


def flat_columns() -> list[tuple[str, str, str]]:
    """(name, SQL over the stored columns, description) of every column of the `flows` view."""
    cols = [
        ("time", "time", "when the event was observed (UTC, nanoseconds)"),
        ("cluster", "cluster", "cluster the flow was collected from"),
        ("node", "nullif(node_name, '')", "node that observed the flow"),
        (
            "uuid",
            "coalesce(CAST(_uuid AS VARCHAR), nullif(uuid, ''))",
            "flow UUID (NULL on old Cilium)",
        ),
        (
            "verdict",
            _enum("Verdict", "verdict"),
            "FORWARDED, DROPPED, REDIRECTED, AUDIT, ERROR, TRACED, TRANSLATED",
        ),
        (
            "drop_reason_desc",
            _enum("DropReason", "drop_reason_desc"),
            "drop reason, e.g. POLICY_DENIED",
        ),
        ("type", _enum("FlowType", "Type"), "L3_L4, L7 or SOCK"),
        (
            "event_type",
            "event_type.type",
            "Cilium monitor message type (1 drop, 4 trace, 5 policy verdict, 129 L7)",
        ),
        (
            "event_subtype",
            "event_type.sub_type",
            "monitor sub-type (trace point, drop reason, ...)",
        ),
        ("event", _case("event_type.type", EVENT_TYPES), "event type as hubble --type names it"),
        ("traffic_direction", _enum("TrafficDirection", "traffic_direction"), "INGRESS or EGRESS"),
        ("policy_match_type", "policy_match_type", "policy verdict match type number"),
        (
            "policy_match",
            _case("policy_match_type", MATCH_TYPES),
            "L3-Only, L3-L4, L4-Only, all, none",
        ),
        ("is_reply", "is_reply", "reply direction (NULL when unknown)"),
        (
            "trace_observation_point",
            _enum("TraceObservationPoint", "trace_observation_point"),
            "trace point, e.g. TO_ENDPOINT",
        ),
        ("trace_reason", _enum("TraceReason", "trace_reason"), "conntrack state of a trace event"),
        *_endpoint("src", "source", "source"),
        *_endpoint("dst", "destination", "destination"),
        ("ip_version", _enum("IPVersion", "IP.ipVersion"), "IPv4 or IPv6"),
        ("encrypted", "IP.encrypted", "packet was encrypted"),
        ("l4_protocol", _l4_protocol(), "TCP, UDP, ICMPv4, ICMPv6, SCTP, VRRP or IGMP"),
        ("tcp_flags", _tcp_flags(), "TCP flags set, e.g. ['SYN', 'ACK']"),
        ("icmp_type", "coalesce(l4.ICMPv4.type, l4.ICMPv6.type)", "ICMP type"),
        ("icmp_code", "coalesce(l4.ICMPv4.code, l4.ICMPv6.code)", "ICMP code"),
        *_policies("ingress_allowed_by", "allowed it on ingress"),
        *_policies("egress_allowed_by", "allowed it on egress"),
        *_policies("ingress_denied_by", "denied it on ingress"),
        *_policies("egress_denied_by", "denied it on egress"),
        ("policy_log", "policy_log", "log values of matching policies"),
        ("auth_type", _enum("AuthType", "auth_type"), "authentication type required by policy"),
        ("l7_type", _enum("L7FlowType", "l7.type"), "REQUEST, RESPONSE or SAMPLE"),
        (
            "l7_protocol",
            # a present record has its plain scalars set (0 by default), so one leaf tells
            # presence: `l7.http IS NOT NULL` would make DuckDB read every leaf of the record
            "(CASE WHEN l7.http.code IS NOT NULL THEN 'HTTP' WHEN l7.dns.rcode IS NOT NULL THEN 'DNS' "
            "WHEN l7.kafka.error_code IS NOT NULL THEN 'Kafka' END)",
            "HTTP, DNS or Kafka",
        ),
        ("l7_latency_ns", "l7.latency_ns", "L7 response latency in nanoseconds"),
        ("http_method", "nullif(l7.http.method, '')", "HTTP method"),
        ("http_url", "nullif(l7.http.url, '')", "HTTP URL"),
        (
            "http_path",
            "nullif(regexp_extract(l7.http.url, '^(?:[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*)?([^?#]*)', 1), '')",
            "path part of the HTTP URL",
        ),
        ("http_code", "nullif(l7.http.code, 0)", "HTTP status code (responses)"),
        ("http_protocol", "nullif(l7.http.protocol, '')", "HTTP protocol, e.g. HTTP/1.1"),
        ("http_headers", "l7.http.headers", "HTTP headers (key, value)"),
        (
            "dns_query",
            "nullif(l7.dns.query, '')",
            "DNS query name, e.g. 'backend.shop.svc.cluster.local.'",
        ),
        ("dns_rcode", "l7.dns.rcode", "DNS response code (0 = NOERROR)"),
        ("dns_ips", "l7.dns.ips", "IPs in the DNS answer"),
        ("dns_ttl", "l7.dns.ttl", "TTL of the DNS answer"),
        ("dns_cnames", "l7.dns.cnames", "CNAMEs in the DNS answer"),
        ("dns_qtypes", "l7.dns.qtypes", "query types, e.g. ['A']"),
        ("dns_rrtypes", "l7.dns.rrtypes", "answer record types"),
        (
            "dns_observation_source",
            "nullif(l7.dns.observation_source, '')",
            "proxy or other DNS source",
        ),
        ("summary", "nullif(Summary, '')", "Hubble's summary text"),
        ("proxy_port", "nullif(proxy_port, 0)", "L7 proxy port the flow was redirected to"),
        ("interface", "nullif(interface.name, '')", "network interface"),
        ("node_labels", "node_labels", "labels of the observing node"),
        ("emitter", "nullif(emitter.name, '')", "software that emitted the flow"),
        ("date", "date", "partition date (UTC)"),
        ("hour", "hour", "partition hour (UTC)"),
    ]
    return cols


EVENT_COLUMNS = [
    ("time", "time", "when Relay reported the event"),
    ("cluster", "cluster", "cluster"),
    ("node", "nullif(node_name, '')", "node or relay that reported it"),
    (
        "kind",
        "(CASE WHEN lost_events IS NOT NULL THEN 'lost_events' WHEN node_status IS NOT NULL "
        "THEN 'node_status' ELSE 'unknown' END)",
        "lost_events or node_status",
    ),
    ("lost_source", None, "where events were lost"),
    ("num_events_lost", "lost_events.num_events_lost", "how many events were lost"),
    ("lost_cpu", "lost_events.cpu", "CPU that lost them (perf ring buffer)"),
    ("lost_first", "lost_events.first", "first loss time"),
    ("lost_last", "lost_events.last", "last loss time"),
    ("node_state", None, "NODE_CONNECTED, NODE_UNAVAILABLE, NODE_GONE, NODE_ERROR"),
    ("node_names", "node_status.node_names", "nodes the status is about"),
    ("message", "nullif(node_status.message, '')", "status message"),
]


def event_columns() -> list[tuple[str, str, str]]:
    """Columns of the `events` view (lost events and node status reported by Relay)."""
    from flowpipe.api.relay import relay_pb2

    state = relay_pb2.DESCRIPTOR.enum_types_by_name["NodeState"]
    out = []
    for name, expr, doc in EVENT_COLUMNS:
        if name == "lost_source":
            expr = _enum("LostEventSource", "lost_events.source")
        elif name == "node_state":
            expr = _case("node_status.state_change", {v.number: v.name for v in state.values})
        out.append((name, expr, doc))
    return out
