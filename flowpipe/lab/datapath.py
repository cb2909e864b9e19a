"""The flows Cilium and Hubble report for lab packets: traces, policy verdicts, drops, L7 records.

Trace events follow the default monitor aggregation ("medium"): no from-* traces, and a
to-* trace only for a connection's first packet in each direction, a packet carrying a TCP
flag not yet seen in that direction, or the first packet 5 s after the last report
(bpf/lib/trace.h emit_trace_notify, bpf/lib/conntrack.h __ct_update_timeout).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flowpipe.api.flow import flow_pb2
from flowpipe.lab.cluster import Cluster, Decision, Peer

MS = 1_000_000  # nanoseconds per millisecond
REPORT_INTERVAL_NS = 5_000_000_000  # CT_REPORT_INTERVAL

TO_ENDPOINT, TO_PROXY, TO_STACK = 0, 1, 3
EV_DROP, EV_TRACE, EV_POLICY_VERDICT, EV_L7 = 1, 4, 5, 129
POLICY_DENIED = 133
INGRESS, EGRESS = flow_pb2.INGRESS, flow_pb2.EGRESS
NEW, ESTABLISHED, REPLY = flow_pb2.NEW, flow_pb2.ESTABLISHED, flow_pb2.REPLY
TCP_FLAG_ORDER = ("SYN", "ACK", "RST", "FIN", "PSH", "URG", "ECE", "CWR", "NS")


def ms(value: float) -> int:
    """Milliseconds as integer nanoseconds."""
    return round(value * MS)


@dataclass(frozen=True)
class Hop:
    """Where one direction of a connection is traced: node, observation point, emitting endpoint."""

    node: str
    point: int
    emitter: Peer
    delay_ns: int = 0
    proxy_port: int = 0


@dataclass(frozen=True)
class Conn:
    """A TCP or UDP connection and where each of its directions is traced."""

    proto: str
    client: Peer
    server: Peer
    sport: int
    dport: int
    fwd: tuple[Hop, ...]
    rev: tuple[Hop, ...]


def tcp_summary(flags: Sequence[str]) -> str:
    """Hubble's L3/L4 summary for TCP (flags in gopacket order)."""
    return "TCP Flags: " + ", ".join(f for f in TCP_FLAG_ORDER if f in flags)


def _mac(ip: str) -> str:
    digest = hashlib.sha1(ip.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02 | (digest[0] & 0xFC), *digest[1:6]))


class Recorder:
    """Collects the flows one cluster's Hubble reports, tracking conntrack report state."""

    def __init__(
        self, cl: Cluster, policies: Sequence[flow_pb2.Policy], new_uuid: Callable[[], str]
    ):
        self.cluster = cl
        self.flows: list[flow_pb2.Flow] = []
        self.names: dict[str, list[str]] = {}  # what the DNS proxy learned: ip -> names
        self._policies = {p.name: p for p in policies}
        self._uuid = new_uuid
        self._ct: dict[tuple, tuple[frozenset[str], int]] = {}

    # -------------------------------------------------------------- building blocks

    def _base(
        self, t: int, node: str, src: Peer, dst: Peer, sport: int, dport: int, proto: str
    ) -> flow_pb2.Flow:
        f = flow_pb2.Flow(uuid=self._uuid(), node_name=self.cluster.node_name(node))
        f.time.seconds, f.time.nanos = divmod(t, 1_000_000_000)
        f.IP.source, f.IP.destination, f.IP.ipVersion = src.ip, dst.ip, flow_pb2.IPv4
        l4 = f.l4.TCP if proto == "TCP" else f.l4.UDP
        l4.source_port, l4.destination_port = sport, dport
        f.source.CopyFrom(src.endpoint(node))
        f.destination.CopyFrom(dst.endpoint(node))
        f.source_names.extend(self.names.get(src.ip, ()))
        f.destination_names.extend(self.names.get(dst.ip, ()))
        if src.service and sport == src.service_port:
            f.source_service.name, f.source_service.namespace = src.service, src.namespace
        if dst.service and dport == dst.service_port:
            f.destination_service.name, f.destination_service.namespace = dst.service, dst.namespace
        return f

    def _l34(
        self,
        t: int,
        node: str,
        src: Peer,
        dst: Peer,
        sport: int,
        dport: int,
        proto: str,
        flags: Sequence[str],
    ) -> flow_pb2.Flow:
        f = self._base(t, node, src, dst, sport, dport, proto)
        f.Type = flow_pb2.L3_L4
        f.ethernet.source, f.ethernet.destination = _mac(src.ip), _mac(dst.ip)
        if proto == "TCP":
            for flag in flags:
                setattr(f.l4.TCP.flags, flag, True)
            f.Summary = tcp_summary(flags)
        else:
            f.Summary = "UDP"
        return f

    def _emit(self, f: flow_pb2.Flow) -> None:
        self.flows.append(f)

    # -------------------------------------------------------------- datapath events

    def trace(
        self,
        t: int,
        hop: Hop,
        src: Peer,
        dst: Peer,
        sport: int,
        dport: int,
        proto: str,
        flags: Sequence[str],
        reason: int,
    ) -> None:
        """A trace event at hop (to-endpoint, to-proxy, to-stack)."""
        f = self._l34(t, hop.node, src, dst, sport, dport, proto, flags)
        reply = reason == REPLY
        f.verdict = flow_pb2.FORWARDED
        f.event_type.type, f.event_type.sub_type = EV_TRACE, hop.point
        f.trace_observation_point = flow_pb2.TO_ENDPOINT if hop.point == TO_ENDPOINT else hop.point
        f.trace_reason = reason
        f.is_reply.value = reply
        f.reply = reply
        from_emitter = bool(src.pod) and src.pod == hop.emitter.pod
        f.traffic_direction = EGRESS if from_emitter != reply else INGRESS
        if hop.point == TO_ENDPOINT:
            f.interface.index, f.interface.name = hop.emitter.ifindex, hop.emitter.lxc
        if hop.point == TO_PROXY:
            f.proxy_port = hop.proxy_port
        self._emit(f)

    def verdict(
        self,
        t: int,
        node: str,
        direction: int,
        decision: Decision,
        src: Peer,
        dst: Peer,
        sport: int,
        dport: int,
        proto: str,
        flags: Sequence[str],
    ) -> None:
        """A policy-verdict event, with the policies that allowed it (Hubble policy correlation)."""
        f = self._l34(t, node, src, dst, sport, dport, proto, flags)
        f.event_type.type = EV_POLICY_VERDICT
        f.traffic_direction = direction
        f.policy_match_type = decision.match
        if decision.allowed:
            f.verdict = flow_pb2.REDIRECTED if decision.redirect else flow_pb2.FORWARDED
            f.is_reply.value = False
            by = f.ingress_allowed_by if direction == INGRESS else f.egress_allowed_by
            for name in decision.by:
                by.add().CopyFrom(self._policies[name])
        else:  # default deny: no policy to name (correlation only names explicit deny rules)
            f.verdict = flow_pb2.DROPPED
            f.drop_reason, f.drop_reason_desc = POLICY_DENIED, flow_pb2.POLICY_DENIED
        self._emit(f)

    def drop(
        self,
        t: int,
        node: str,
        direction: int,
        src: Peer,
        dst: Peer,
        sport: int,
        dport: int,
        proto: str,
        flags: Sequence[str],
    ) -> None:
        """A drop event for a packet no policy allowed."""
        f = self._l34(t, node, src, dst, sport, dport, proto, flags)
        f.event_type.type, f.event_type.sub_type = EV_DROP, POLICY_DENIED
        f.verdict = flow_pb2.DROPPED
        f.drop_reason, f.drop_reason_desc = POLICY_DENIED, flow_pb2.POLICY_DENIED
        f.traffic_direction = direction
        f.file.name, f.file.line = "bpf_lxc.c", 1407 if direction == EGRESS else 2142
        self._emit(f)

    # -------------------------------------------------------------- connections

    def connect(
        self,
        conn: Conn,
        t: int,
        flags: Sequence[str],
        egress: Decision | None,
        ingress: Decision | None,
    ) -> bool:
        """The first packet of conn: policy verdicts where enforced, then traces; False if dropped."""
        args = (conn.client, conn.server, conn.sport, conn.dport, conn.proto, flags)
        for decision, direction, node in (
            (egress, EGRESS, conn.client.node),
            (ingress, INGRESS, conn.server.node),
        ):
            if decision is None:
                continue
            self.verdict(t, node, direction, decision, *args)
            if not decision.allowed:
                self.drop(t, node, direction, *args)
                return False
        self.packet(conn, t, flags)
        return True

    def packet(self, conn: Conn, t: int, flags: Sequence[str], reply: bool = False) -> None:
        """One packet of an established conn, traced where monitor aggregation reports it."""
        if reply:
            src, dst, sport, dport, hops = (
                conn.server,
                conn.client,
                conn.dport,
                conn.sport,
                conn.rev,
            )
        else:
            src, dst, sport, dport, hops = (
                conn.client,
                conn.server,
                conn.sport,
                conn.dport,
                conn.fwd,
            )
        bits = frozenset(flags)
        for hop in hops:
            key = (
                hop.node,
                hop.point,
                conn.client.ip,
                conn.sport,
                conn.server.ip,
                conn.dport,
                reply,
            )
            when = t + hop.delay_ns
            seen, last = self._ct.get(key, (None, 0))
            if seen is None or not bits <= seen or when - last >= REPORT_INTERVAL_NS:
                reason = REPLY if reply else (NEW if seen is None else ESTABLISHED)
                self._ct[key] = ((seen or frozenset()) | bits, when)
                self.trace(when, hop, src, dst, sport, dport, conn.proto, flags, reason)

    # -------------------------------------------------------------- L7 (proxy access log)

    def _l7(self, t: int, conn: Conn, reply: bool, direction: int, verdict: int) -> flow_pb2.Flow:
        node = conn.client.node if direction == EGRESS else conn.server.node
        if reply:
            f = self._base(t, node, conn.server, conn.client, conn.dport, conn.sport, conn.proto)
        else:
            f = self._base(t, node, conn.client, conn.server, conn.sport, conn.dport, conn.proto)
        f.Type = flow_pb2.L7
        f.event_type.type = EV_L7
        f.verdict = verdict
        f.traffic_direction = direction
        f.is_reply.value = reply
        f.reply = reply
        f.l7.type = flow_pb2.RESPONSE if reply else flow_pb2.REQUEST
        return f

    def http(
        self,
        t: int,
        conn: Conn,
        *,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        code: int = 0,
        latency_ns: int = 0,
        allowed: bool = True,
    ) -> None:
        """An Envoy access-log record (ingress proxy): request when code is 0, else response."""
        reply = code != 0
        verdict = flow_pb2.FORWARDED if allowed else flow_pb2.DROPPED
        f = self._l7(t, conn, reply, INGRESS, verdict)
        h = f.l7.http
        h.method, h.url, h.protocol, h.code = method, url, "HTTP/1.1", code
        for key, value in headers:
            h.headers.add(key=key, value=value)
        if reply:
            f.l7.latency_ns = latency_ns
            f.Summary = f"HTTP/1.1 {code} {latency_ns // MS}ms ({method} {url})"
        else:
            f.Summary = f"HTTP/1.1 {method} {url}"
        self._emit(f)

    def dns(
        self,
        t: int,
        conn: Conn,
        *,
        query: str,
        qtype: str,
        ips: Sequence[str] | None = None,
        ttl: int = 0,
    ) -> None:
        """A DNS proxy record: request when ips is None, else the response (learned for names)."""
        reply = ips is not None
        f = self._l7(t, conn, reply, EGRESS, flow_pb2.FORWARDED)
        d = f.l7.dns
        d.query, d.observation_source = query, "proxy"
        d.qtypes.append(qtype)
        if reply:
            d.ips.extend(ips)
            d.ttl = ttl
            d.rrtypes.extend([qtype] * len(ips))
            answer = f'"{",".join(ips)}"' if ips else ""
            f.Summary = f"DNS Answer {answer} TTL: {ttl} (Proxy {query} {qtype})"
            for ip in ips:
                known = self.names.setdefault(ip, [])
                if query.rstrip(".") not in known:
                    known.append(query.rstrip("."))
        else:
            f.Summary = f"DNS Query {query} {qtype}"
        self._emit(f)
