"""The policy model: Cilium and Kubernetes network policies as what the evaluator needs of them.

CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and NetworkPolicy all become `Rule`s of
`PeerRule`s (Kubernetes NetworkPolicy the way Cilium translates it, pkg/k8s/network_policy.go),
with the namespace label already added to selectors (pkg/k8s/apis/cilium.io/utils/utils.go).
Anything flowpipe does not evaluate is kept as a named `Unsupported` construct.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INGRESS, EGRESS = "INGRESS", "EGRESS"
DIRECTIONS = (INGRESS, EGRESS)
CNP, CCNP, KNP = "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy", "NetworkPolicy"
L4_PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True)
class Requirement:
    """One label requirement of a selector; matchLabels entries are In with one value."""

    source: str  # label source: any, k8s, reserved, ...
    key: str
    op: str  # In, NotIn, Exists, DoesNotExist
    values: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Selector:
    """A Kubernetes label selector as Cilium reads it (an empty one selects every identity)."""

    requirements: tuple[Requirement, ...]
    text: str  # for people, e.g. {app=frontend, io.kubernetes.pod.namespace=shop}

    @property
    def wildcard(self) -> bool:
        return not self.requirements


@dataclass(frozen=True)
class CIDRRule:
    """A CIDR with its exceptions (toCIDR, toCIDRSet, ipBlock)."""

    cidr: str
    excepts: tuple[str, ...] = ()


@dataclass(frozen=True)
class FQDN:
    """A toFQDNs selector: matchName or matchPattern."""

    name: str = ""
    pattern: str = ""


@dataclass(frozen=True)
class PortProto:
    """One entry of toPorts.ports (or a NetworkPolicy port)."""

    port: int  # 0: every port
    protocol: str  # TCP, UDP, SCTP or ANY
    end_port: int = 0
    named: str = ""  # a named port (resolved from the pod spec by Cilium: not evaluated)

    def text(self) -> str:
        port = self.named or ("*" if self.port == 0 else str(self.port))
        if self.end_port:
            port += f"-{self.end_port}"
        return f"{port}/{self.protocol}"


@dataclass(frozen=True)
class HTTPRule:
    """One rules.http entry: RE2 regexes matched against the whole value (Envoy safe_regex)."""

    method: str = ""
    path: str = ""
    host: str = ""
    headers: tuple[tuple[str, str | None], ...] = ()  # (lowercase name, exact value or None)
    unknown: tuple[str, ...] = ()  # constructs whose outcome flowpipe cannot know

    def text(self) -> str:
        parts = [p for p in (self.method, self.path) if p] or ["any request"]
        if self.host:
            parts.append(f"host {self.host}")
        parts += [f"{k}: {v}" if v is not None else k for k, v in self.headers]
        return " ".join(parts)


@dataclass(frozen=True)
class DNSRule:
    """One rules.dns entry: matchName or matchPattern."""

    name: str = ""
    pattern: str = ""

    def text(self) -> str:
        return f"matchName {self.name}" if self.name else f"matchPattern {self.pattern}"


@dataclass(frozen=True)
class PortRule:
    """One toPorts entry: ports and the L7 rules that apply on them."""

    ports: tuple[PortProto, ...]  # empty: every port and protocol
    http: tuple[HTTPRule, ...] | None = None
    dns: tuple[DNSRule, ...] | None = None
    other_l7: str = ""  # kafka, l7proto: redirected, but not evaluated
    unknown: tuple[str, ...] = ()  # port-level constructs not evaluated (serverNames, listener)

    @property
    def has_l7(self) -> bool:
        return self.http is not None or self.dns is not None or bool(self.other_l7)

    @property
    def allows_every_request(self) -> bool:
        """An empty HTTP rule or DNS matchPattern '*': L7 visibility, every request allowed."""
        if any(
            not (h.method or h.path or h.host or h.headers or h.unknown) for h in self.http or ()
        ):
            return True
        return any(d.pattern and set(d.pattern.rstrip(".")) == {"*"} for d in self.dns or ())


@dataclass(frozen=True)
class PeerRule:
    """One ingress/egress (allow) or ingressDeny/egressDeny rule."""

    direction: str
    deny: bool
    where: str  # file:line
    endpoints: tuple[Selector, ...] | None = None  # None: field absent
    entities: tuple[str, ...] | None = None
    cidrs: tuple[CIDRRule, ...] | None = None
    fqdns: tuple[FQDN, ...] | None = None
    ports: tuple[PortRule, ...] | None = None  # None: no toPorts (an L3-only rule)
    icmp: bool = False  # has icmps (ICMP types are not evaluated)
    unknown_peers: tuple[str, ...] = ()  # L3 fields not evaluated (toServices, toGroups, ...)
    unknown: tuple[str, ...] = ()  # rule-level constructs not evaluated (authentication)

    @property
    def has_l3(self) -> bool:
        return any(
            f is not None for f in (self.endpoints, self.entities, self.cidrs, self.fqdns)
        ) or bool(self.unknown_peers)


@dataclass
class Policy:
    """One policy object: its rules (a CNP's spec and specs), notes and unsupported constructs."""

    kind: str
    name: str
    namespace: str  # "" for clusterwide
    where: str  # file:line of the document
    rules: list[Rule] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unsupported: list[Unsupported] = field(default_factory=list)

    @property
    def ref(self) -> str:
        """kind namespace/name, as people say it."""
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"


@dataclass(frozen=True)
class Rule:
    """One rule of a policy (one spec): the endpoints it selects and its peer rules."""

    policy: str  # the policy's name (what Hubble reports in *_allowed_by)
    kind: str
    namespace: str
    where: str
    subject: Selector | None  # None: a nodeSelector (host) rule
    peer_rules: tuple[PeerRule, ...] = ()
    # enableDefaultDeny per direction as written (None: not given)
    default_deny: tuple[tuple[str, bool | None], ...] = ((INGRESS, None), (EGRESS, None))
    unknown: tuple[str, ...] = ()  # rule-level constructs that affect every decision (fromRequires)

    def rules(self, direction: str, deny: bool) -> tuple[PeerRule, ...]:
        return tuple(r for r in self.peer_rules if r.direction == direction and r.deny == deny)

    def has_rules(self, direction: str) -> bool:
        return any(r.direction == direction for r in self.peer_rules)

    def enables_default_deny(self, direction: str) -> bool:
        """enableDefaultDeny, else true exactly for a direction that has rules (docs: intro)."""
        explicit = dict(self.default_deny)[direction]
        return self.has_rules(direction) if explicit is None else explicit


@dataclass(frozen=True)
class Unsupported:
    """A construct flowpipe does not evaluate; decisions it could change are reported unknown."""

    policy: str  # policy ref
    construct: str  # e.g. toServices
    where: str
    effect: str = "decisions it could change are unknown"

    def text(self) -> str:
        return f"{self.policy} ({self.where}): {self.construct} is not evaluated; {self.effect}"
