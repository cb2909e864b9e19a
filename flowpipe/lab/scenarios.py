"""What each stage of the guide runs, when, on which cluster; and the broken variants of stage 5."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from flowpipe.lab.cluster import ALLOW_ALL, ALLOW_DNS, BACKEND_HOST, FE_TO_BE, STAGE_POLICIES
from flowpipe.lab.traffic import SECOND, Client, http_get, https_world, resolve

C1, C2 = "cluster1", "cluster2"

VARIANTS = {
    "allow-all-left": "stage 5 with allow-all not removed: world egress forwarded by allow-all, /get answered 200",
    "l4-ingress-left": "stage 5 with allow-frontend-to-backend not deleted: L4 ingress bypasses the L7 rule, /get 200",
    "no-allow-dns": "stage 5 without allow-dns: DNS dropped (POLICY_DENIED), so no HTTP at all",
    "no-traffic": "stage 5 with nothing sent from the frontend at all",
}


def policies(stage: int, variant: str | None) -> frozenset[str]:
    """The CiliumNetworkPolicies in namespace shop during stage (with variant's mistake)."""
    base = STAGE_POLICIES[stage]
    if variant == "allow-all-left":
        return base | {ALLOW_ALL}
    if variant == "l4-ingress-left":
        return base | {FE_TO_BE}
    if variant == "no-allow-dns":
        return base - {ALLOW_DNS}
    return base


@dataclass(frozen=True)
class Action:
    """One guide command (or shell loop of it) run in the frontend pod of one cluster."""

    at: float  # seconds after the stage anchor
    cluster: str
    command: str  # "curl" (path on the backend), "nslookup", "world" (host or IP)
    target: str = ""
    count: int = 1
    sleep: float = 0.0
    max_time: float | None = None
    port: int = 443
    pins: tuple[dict, ...] = ()  # per-iteration values the guide's quoted output shows


def _t(h: int, m: int, s: int, us: int) -> int:
    return int(datetime(2025, 10, 2, h, m, s, us, tzinfo=UTC).timestamp()) * SECOND + us * 1000


# Stage anchors put the quoted events at the guide's timestamps (Oct 2, UTC).
ANCHORS = {
    1: _t(14, 6, 19, 406300),
    2: _t(14, 14, 50, 446300),
    3: _t(14, 23, 7, 44300),
    4: _t(14, 32, 42, 865500),
    5: _t(14, 45, 2, 0),
}
_LOOP10_SYN = (43.789, 44.132, 44.491, 44.826, 45.160, 45.495, 45.835, 46.175, 46.513, 46.849)
_LOOP10_PORTS = (41728, 41736, 41748, 41762, 41768, 41782, 41792, 41798, 41806, 41818)
_LOOP10_AT = 161.7  # 14:47:43.7 - 14:45:02
_XRFWZ, _WJLS9 = "kube-dns-75df64b86-xrfwz", "kube-dns-75df64b86-wjls9"


def _pin(**values: object) -> tuple[dict, ...]:
    """Values the guide's quoted output shows for a single command."""
    return (values,)


# The guide runs its traffic loops with --context $CLUSTER1 only; the simulated lab runs them on
# both clusters so that every stage can be checked on both (cluster2's loops carry no pins).
SCRIPTS: dict[int, tuple[Action, ...]] = {
    1: (
        Action(0, C1, "curl", "/get", pins=_pin(dns_port=60788, port=55544, syn_ms=58, dns_pod=_XRFWZ)),
        Action(9.155, C2, "curl", "/get", pins=_pin(dns_port=53700, port=35010, syn_ms=15)),
        Action(40, C1, "curl", "/anything/ok", count=60, sleep=0.1),
        Action(48, C2, "curl", "/anything/ok", count=60, sleep=0.1),
    ),
    2: (
        Action(0, C1, "nslookup", pins=_pin(
            a_port=56300, aaaa_port=53175, a_rtt_ms=7, aaaa_gap_ms=12, aaaa_rtt_ms=1, dns_pod=_WJLS9
        )),
        Action(28.078, C2, "nslookup", pins=_pin(
            a_port=38458, aaaa_port=42314, a_rtt_ms=4, aaaa_gap_ms=7, aaaa_rtt_ms=1
        )),
        Action(60, C1, "nslookup", count=40, sleep=0.15),
        Action(68, C2, "nslookup", count=40, sleep=0.15),
    ),
    3: (
        Action(0, C1, "curl", "/anything/ok", pins=_pin(port=54130, syn_ms=9)),
        Action(11.648, C2, "curl", "/anything/ok", pins=_pin(port=52560, syn_ms=9)),
        Action(30, C1, "world", "example.com", max_time=3),
        Action(36, C2, "world", "example.com", max_time=3),
        Action(60, C1, "curl", "/anything/ok", count=80, sleep=0.1),
        Action(68, C2, "curl", "/anything/ok", count=80, sleep=0.1),
    ),
    4: (
        Action(0, C1, "curl", "/status/200", pins=_pin(port=55886, syn_ms=8)),
        Action(8.282, C1, "curl", "/status/500", pins=_pin(port=55894, syn_ms=8)),
        Action(40, C1, "curl", "/status/200", count=40, sleep=0.15),
        Action(12, C2, "curl", "/status/200"),
        Action(20, C2, "curl", "/status/500"),
        Action(48, C2, "curl", "/status/200", count=40, sleep=0.15),
    ),
    5: (
        Action(0, C1, "nslookup"),
        Action(5, C2, "nslookup"),
        Action(15, C1, "curl", "/status/200"),
        Action(20, C2, "curl", "/status/200"),
        Action(30, C1, "curl", "/get"),
        Action(35, C2, "curl", "/get"),
        Action(45, C1, "world", "example.com", max_time=3),
        Action(52, C2, "world", "example.com", max_time=3),
        Action(_LOOP10_AT, C1, "curl", "/status/200", count=10, sleep=0.3, max_time=3, pins=tuple(
            {"port": p, "syn_at": s + 118.0} for p, s in zip(_LOOP10_PORTS, _LOOP10_SYN)
        )),
        Action(190, C1, "curl", "/status/200", count=8, sleep=0.2),
        Action(200, C1, "curl", "/get", count=6, sleep=0.25, max_time=2),
        Action(210, C1, "world", "1.1.1.1", count=6, sleep=0.25, max_time=2, port=80),
        Action(166, C2, "curl", "/status/200", count=10, sleep=0.3, max_time=3),
        Action(195, C2, "curl", "/status/200", count=8, sleep=0.2),
        Action(205, C2, "curl", "/get", count=6, sleep=0.25, max_time=2),
        Action(215, C2, "world", "1.1.1.1", count=6, sleep=0.25, max_time=2, port=80),
    ),
}  # fmt: skip


def run(client: Client, stage: int, anchor: int) -> None:
    """Replay stage's commands for client's cluster, starting at anchor (ns)."""
    for action in SCRIPTS[stage]:
        if action.cluster != client.cluster.name:
            continue
        t = anchor + round(action.at * SECOND)
        for i in range(action.count):
            pins = dict(action.pins[i]) if i < len(action.pins) else {}
            if (
                "syn_at" in pins
            ):  # a loop iteration the guide timed; its DNS lookup runs just before
                syn = anchor + round(pins.pop("syn_at") * SECOND)
                t = syn - client.jitter(4, 9)
                pins["syn_ms"] = (syn - t) / 1e6
            t = _one(client, action, t, pins) + round(action.sleep * SECOND) + client.jitter(3, 12)


def _one(client: Client, action: Action, t: int, pins: dict) -> int:
    limit = round(action.max_time * SECOND) if action.max_time is not None else None
    if action.command == "curl":
        return http_get(client, t, action.target, limit=limit, pins=pins)
    if action.command == "nslookup":
        return resolve(client, t, BACKEND_HOST, separate_sockets=True, pins=pins)[1]
    return https_world(client, t, action.target, port=action.port, limit=limit, pins=pins)
