"""The guide's client commands (curl, nslookup) as the packets they send, recorded by a Recorder."""

from __future__ import annotations

import ipaddress
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from flowpipe.lab.cluster import (
    BACKEND_HOST,
    Cluster,
    Decision,
    Peer,
    egress,
    ingress_backend,
    world,
)
from flowpipe.lab.datapath import MS, TO_ENDPOINT, TO_PROXY, TO_STACK, Conn, Hop, Recorder, ms

SECOND = 1000 * MS
NO_ANSWER_TTL = 4294967295  # Cilium's TTL for an answer without records (the min over none)
EXTERNAL = {  # what kube-dns answers for names outside the cluster
    "example.com": {"A": ["93.184.215.14"], "AAAA": ["2606:2800:21f:cb07:6820:80da:af6b:8b2c"]},
}
USER_AGENT = "curl/8.14.1"


@dataclass
class Client:
    """The frontend pod of one cluster running commands under one set of policies."""

    rec: Recorder
    cluster: Cluster
    policies: frozenset[str]
    rng: random.Random
    upstream: Conn | None = None  # Envoy's kept-alive connection to the backend
    _tcp_port: int = 0

    def __post_init__(self) -> None:
        self._tcp_port = self.rng.randrange(32768, 60000) & ~1

    @property
    def fe(self) -> Peer:
        return self.cluster.frontend

    def tcp_port(self, pinned: int | None = None) -> int:
        """Linux connect() ports: even, ascending by small random steps."""
        if pinned:
            return pinned
        self._tcp_port += self.rng.choice((2, 4, 6, 8, 10, 12, 14))
        if self._tcp_port > 60998:
            self._tcp_port = 32768
        return self._tcp_port

    def udp_port(self, pinned: int | None = None) -> int:
        return pinned or self.rng.randrange(32768, 61000)

    def kube_dns(self, pinned: str | None = None) -> Peer:
        for pod in self.cluster.kube_dns:
            if pod.pod == pinned:
                return pod
        return self.rng.choice(self.cluster.kube_dns)

    def jitter(self, low_ms: float, high_ms: float) -> int:
        return ms(self.rng.uniform(low_ms, high_ms))


def answer(cl: Cluster, name: str, qtype: str) -> tuple[list[str], int]:
    """kube-dns's answer (IPs, TTL) for name and qtype."""
    if name == BACKEND_HOST:
        return ([cl.backend_service_ip], 30) if qtype == "A" else ([], NO_ANSWER_TTL)
    ips = EXTERNAL.get(name, {}).get(qtype, [])
    return (ips, 300) if ips else ([], NO_ANSWER_TTL)


# ------------------------------------------------------------------ DNS


def _dns_conn(c: Client, server: Peer, port: int, decision: Decision) -> tuple[Conn, Conn | None]:
    """The pod's UDP socket to kube-dns and, through the DNS proxy, the proxy's upstream one."""
    fe, node = c.fe, c.fe.node
    if decision.redirect:
        proxy = c.cluster.proxy_ports["dns"]
        conn = Conn(
            "UDP",
            fe,
            server,
            port,
            53,
            (Hop(node, TO_PROXY, fe, proxy_port=proxy),),
            (Hop(node, TO_ENDPOINT, fe),),
        )
        # the proxy keeps the pod's address and port (transparent socket) towards kube-dns
        upstream = Conn(
            "UDP",
            fe,
            server,
            port,
            53,
            (Hop(server.node, TO_ENDPOINT, server, ms(0.3)),),
            (Hop(server.node, TO_STACK, server),),
        )
        return conn, upstream
    hops = (Hop(node, TO_STACK, fe), Hop(server.node, TO_ENDPOINT, server, ms(0.25)))
    back = (Hop(server.node, TO_STACK, server), Hop(node, TO_ENDPOINT, fe, ms(0.25)))
    return Conn("UDP", fe, server, port, 53, hops, back), None


def _exchange(
    c: Client, t: int, conn: Conn, upstream: Conn | None, name: str, qtype: str, rtt: int
) -> int:
    """The answer to a query the pod sent at t (relayed by the DNS proxy if any); returns when it arrives."""
    if upstream is None:
        c.rec.packet(conn, t + rtt, (), reply=True)
        return t + rtt
    query = name + "."
    c.rec.dns(t + ms(0.15), conn, query=query, qtype=qtype)
    c.rec.packet(upstream, t + ms(0.2), ())
    c.rec.packet(upstream, t + rtt - ms(0.2), (), reply=True)
    ips, ttl = answer(c.cluster, name, qtype)
    c.rec.dns(t + rtt, conn, query=query, qtype=qtype, ips=ips, ttl=ttl)
    c.rec.packet(conn, t + rtt + ms(0.1), (), reply=True)
    return t + rtt + ms(0.1)


def resolve(
    c: Client,
    t: int,
    name: str,
    *,
    separate_sockets: bool = False,
    limit: int | None = None,
    pins: dict | None = None,
) -> tuple[bool, int]:
    """A and AAAA lookups; returns (answered, time the command goes on)."""
    # musl (curl) sends both at once on one socket; nslookup uses one socket each, in turn.
    # Denied queries are retried as the resolvers do, until they give up or --max-time.
    pins = pins or {}
    decision = egress(c.policies, "kube-dns")
    server = c.kube_dns(pins.get("dns_pod"))
    if not decision.allowed:
        return False, _denied_lookup(c, t, server, separate_sockets, limit, pins)
    if separate_sockets:
        end = t
        for qtype in ("A", "AAAA"):
            key = qtype.lower()
            if qtype == "A":
                start = t
            elif "aaaa_gap_ms" in pins:
                start = t + ms(pins["aaaa_gap_ms"])
            else:
                start = end + c.jitter(3, 6)
            rtt = ms(pins[f"{key}_rtt_ms"]) if f"{key}_rtt_ms" in pins else c.jitter(0.8, 5)
            conn, upstream = _dns_conn(c, server, c.udp_port(pins.get(f"{key}_port")), decision)
            c.rec.connect(conn, start, (), decision, None)
            end = _exchange(c, start, conn, upstream, name, qtype, rtt)
        return True, end
    conn, upstream = _dns_conn(c, server, c.udp_port(pins.get("dns_port")), decision)
    c.rec.connect(conn, t, (), decision, None)
    c.rec.packet(conn, t + ms(0.05), ())  # musl sends AAAA right behind A on the same socket
    ends = [
        _exchange(c, t + ms(0.05) * i, conn, upstream, name, qtype, c.jitter(0.8, 4))
        for i, qtype in enumerate(("A", "AAAA"))
    ]
    return True, max(ends)


def _denied_lookup(
    c: Client, t: int, server: Peer, separate: bool, limit: int | None, pins: dict
) -> int:
    """Queries the default deny drops: musl retries every 2.5 s for 5 s, nslookup every 5 s for 15 s."""
    step, give_up = (5 * SECOND, 15 * SECOND) if separate else (SECOND * 5 // 2, 5 * SECOND)
    if limit is not None:
        give_up = min(give_up, limit)
    conn, _ = _dns_conn(c, server, c.udp_port(pins.get("dns_port")), Decision(False))
    qtypes = ("A",) if separate else ("A", "AAAA")
    at = 0
    while at < give_up:
        for i, _qtype in enumerate(qtypes):
            c.rec.connect(conn, t + at + ms(0.05) * i, (), Decision(False), None)
        at += step
    return t + give_up


# ------------------------------------------------------------------ TCP


def _http_date(t: int) -> str:
    return datetime.fromtimestamp(t // 1_000_000_000, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def _syn_times(limit: int | None) -> list[int]:
    """A blocked connect(): SYN, then retransmissions after 1, 3, 7, 15 s (doubling RTO)."""
    limit = limit if limit is not None else 31 * SECOND
    return [s * SECOND for s in (0, 1, 3, 7, 15) if s * SECOND < limit]


def _blocked(
    c: Client, t: int, conn: Conn, eg: Decision | None, ing: Decision | None, limit: int | None
) -> int:
    """The retransmissions of a SYN that was dropped at t, until connect() gives up."""
    for offset in _syn_times(limit)[1:]:
        c.rec.connect(conn, t + offset, ("SYN",), eg, ing)
    return t + (limit if limit is not None else 31 * SECOND)


def _handshake_and_close(
    c: Client, conn: Conn, synack: int, exchanges: list[tuple[int, int]]
) -> int:
    """SYN-ACK at synack, ACK, then (request at, response at) exchanges, then the client closes."""
    rec = c.rec
    rec.packet(conn, synack, ("SYN", "ACK"), reply=True)
    rec.packet(conn, synack + ms(0.04), ("ACK",))
    end = synack
    for req, resp in exchanges:
        rec.packet(conn, req, ("PSH", "ACK"))
        rec.packet(conn, req + ms(0.05), ("ACK",), reply=True)
        rec.packet(conn, resp, ("PSH", "ACK"), reply=True)
        rec.packet(conn, resp + ms(0.04), ("ACK",))
        end = resp
    rec.packet(conn, end + ms(0.3), ("FIN", "ACK"))
    rec.packet(conn, end + ms(0.35), ("FIN", "ACK"), reply=True)
    rec.packet(conn, end + ms(0.38), ("ACK",))
    return end + ms(0.4)


def http_get(
    c: Client, t: int, path: str, *, limit: int | None = None, pins: dict | None = None
) -> int:
    """`curl http://backend.shop.svc.cluster.local<path>`: DNS, then one HTTP/1.1 GET."""
    pins = pins or {}
    ok, t_dns = resolve(c, t, BACKEND_HOST, limit=limit, pins=pins)
    if not ok:
        return t_dns
    syn = t + ms(pins["syn_ms"]) if "syn_ms" in pins else t_dns + c.jitter(0.2, 0.6)
    fe, be = c.fe, c.cluster.backend
    eg, ing = egress(c.policies, "backend"), ingress_backend(c.policies)
    port = c.tcp_port(pins.get("port"))
    if ing.redirect:
        conn = Conn(
            "TCP",
            fe,
            be,
            port,
            80,
            (Hop(be.node, TO_PROXY, be, proxy_port=c.cluster.proxy_ports["http"]),),
            (Hop(fe.node, TO_ENDPOINT, fe),),
        )
    else:
        conn = Conn(
            "TCP",
            fe,
            be,
            port,
            80,
            (Hop(be.node, TO_ENDPOINT, be),),
            (Hop(fe.node, TO_ENDPOINT, fe),),
        )
    if not c.rec.connect(conn, syn, ("SYN",), eg, ing):
        return _blocked(c, syn, conn, eg, ing, limit)
    if not ing.redirect:
        req = syn + ms(0.15)
        return _handshake_and_close(c, conn, syn + ms(0.04), [(req, req + c.jitter(1.5, 6))])
    return _through_proxy(c, conn, syn, path, ing)


def _through_proxy(c: Client, conn: Conn, syn: int, path: str, ing: Decision) -> int:
    """Envoy on the backend's node: access-log records, and its pooled upstream connection."""
    url = f"http://{BACKEND_HOST}{path}"
    req = syn + ms(0.12)
    logged = syn + ms(0.5)
    rid = str(uuid.UUID(int=c.rng.getrandbits(128), version=4))
    headers = [
        (":scheme", "http"),
        ("Accept", "*/*"),
        ("User-Agent", USER_AGENT),
        ("X-Envoy-Internal", "true"),
        ("X-Forwarded-Proto", "http"),
        ("X-Request-Id", rid),
    ]
    allowed = ing.http_allows("GET", path)
    c.rec.packet(conn, syn + ms(0.04), ("SYN", "ACK"), reply=True)
    c.rec.packet(conn, syn + ms(0.08), ("ACK",))
    c.rec.packet(conn, req, ("PSH", "ACK"))
    c.rec.http(logged, conn, method="GET", url=url, headers=headers, allowed=allowed)
    if allowed:
        served = _upstream(c, logged + ms(0.1))
        code = int(path.split("/")[2]) if path.startswith("/status/") else 200
        body = "0" if path.startswith("/status/") else "384"
        kind = "text/html; charset=utf-8" if path.startswith("/status/") else "application/json"
        upstream_ms = (served - logged) // MS
        extra = [("Access-Control-Allow-Credentials", "true"), ("Access-Control-Allow-Origin", "*")]
        resp_headers = [
            *extra,
            ("Content-Length", body),
            ("Content-Type", kind),
            ("Date", _http_date(served)),
            ("Server", "envoy"),
            ("X-Envoy-Upstream-Service-Time", str(upstream_ms)),
            ("X-Request-Id", rid),
        ]
        answered = served + ms(0.2)
    else:  # Envoy's local reply
        code, answered = 403, logged + ms(0.06)
        resp_headers = [
            ("Content-Length", "15"),
            ("Content-Type", "text/plain"),
            ("Date", _http_date(answered)),
            ("Server", "envoy"),
            ("X-Request-Id", rid),
        ]
    c.rec.http(
        answered,
        conn,
        method="GET",
        url=url,
        headers=resp_headers,
        code=code,
        latency_ns=answered - logged,
    )
    c.rec.packet(conn, req + ms(0.05), ("ACK",), reply=True)
    c.rec.packet(conn, answered + ms(0.1), ("PSH", "ACK"), reply=True)
    c.rec.packet(conn, answered + ms(0.15), ("ACK",))
    c.rec.packet(conn, answered + ms(0.4), ("FIN", "ACK"))
    c.rec.packet(conn, answered + ms(0.45), ("FIN", "ACK"), reply=True)
    c.rec.packet(conn, answered + ms(0.5), ("ACK",))
    return answered + ms(0.5)


def _upstream(c: Client, t: int) -> int:
    """Envoy -> backend on its kept-alive upstream connection (opened on first use)."""
    fe, be = c.fe, c.cluster.backend
    conn = c.upstream
    if conn is None:
        # Envoy keeps the client's address as source for ingress (original source)
        conn = Conn(
            "TCP",
            fe,
            be,
            c.tcp_port(),
            80,
            (Hop(be.node, TO_ENDPOINT, be),),
            (Hop(be.node, TO_STACK, be),),
        )
        c.upstream = conn
        c.rec.packet(conn, t, ("SYN",))
        c.rec.packet(conn, t + ms(0.04), ("SYN", "ACK"), reply=True)
        c.rec.packet(conn, t + ms(0.08), ("ACK",))
        t += ms(0.1)
    c.rec.packet(conn, t, ("PSH", "ACK"))
    served = t + c.jitter(1.5, 6)
    c.rec.packet(conn, served, ("PSH", "ACK"), reply=True)
    c.rec.packet(conn, served + ms(0.05), ("ACK",))
    return served


def https_world(
    c: Client,
    t: int,
    host: str,
    *,
    port: int = 443,
    limit: int | None = None,
    pins: dict | None = None,
) -> int:
    """`curl https://<host>` or `curl http://<ip>:<port>` to an address outside the cluster."""
    pins = pins or {}
    ip = host
    if not _is_ip(host):
        ok, t = resolve(c, t, host, limit=limit, pins=pins)
        if not ok:
            return t
        ip = answer(c.cluster, host, "A")[0][0]
        t += c.jitter(0.2, 0.6)
    fe = c.fe
    peer = world(ip)
    conn = Conn(
        "TCP",
        fe,
        peer,
        c.tcp_port(pins.get("port")),
        port,
        (Hop(fe.node, TO_STACK, fe),),
        (Hop(fe.node, TO_ENDPOINT, fe),),
    )
    eg = egress(c.policies, "world")
    if not c.rec.connect(conn, t, ("SYN",), eg, None):
        return _blocked(c, t, conn, eg, None, limit)
    rtt = c.jitter(4, 12)
    hello = t + rtt + ms(0.1)  # TLS: ClientHello / ServerHello, then the request / response
    exchanges = [(hello, hello + rtt), (hello + rtt + ms(0.5), hello + 2 * rtt + ms(1))]
    return _handshake_and_close(c, conn, t + rtt, exchanges)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
