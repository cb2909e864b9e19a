"""The evaluator: the verdict a policy set gives one connection at one enforcement point.

Semantics (each cited in docs/policy.md): an endpoint selected by a rule that has rules in a
direction is in default deny there unless enableDefaultDeny says otherwise; allows are a
union; deny rules win; a port-specific entry wins over an L3-only one (the datapath's lookup
order) and redirects to the proxy when one of its rules has L7 rules; a request on a redirected
port passes when any allow rule for the peer and port has no L7 rules or one that matches it;
the local host may always reach its endpoints. Constructs flowpipe does not evaluate make a
match MAYBE; a decision that differs between the possible outcomes is `unknown`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from flowpipe.policy import selectors as sel
from flowpipe.policy.model import INGRESS, L4_PROTOCOLS, PeerRule, Policy, PortRule, Rule
from flowpipe.policy.selectors import MAYBE, NO, YES

ALLOWED, DENIED, UNKNOWN = "allowed", "denied", "unknown"
MAX_UNKNOWNS = 10  # constructs that could go either way, per decision (2**n outcomes tried)


@dataclass(frozen=True)
class Peer:
    """One side of a connection as the stored flows show it."""

    identity: int
    labels: frozenset[str]
    namespace: str = ""
    ip: str = ""
    names: tuple[str, ...] = ()  # DNS names Hubble knew for the IP
    name: str = ""  # for people: namespace/workload, an IP or a reserved name

    @cached_property
    def index(self) -> sel.Labels:
        extra = sel.RESERVED_LABELS.get(self.identity, ())
        if self.identity >= sel.LOCAL_SCOPE:
            extra = ("reserved:world",)
        return sel.labels_of(self.labels | frozenset(extra) if extra else self.labels)

    @cached_property
    def is_world(self) -> bool:
        """Outside the cluster: a world identity or a CIDR/FQDN one (what CIDR rules select)."""
        raw = self.index.raw
        return bool(raw & sel.WORLD_LABELS) or any(label.startswith("cidr:") for label in raw)

    @cached_property
    def is_pod(self) -> bool:
        """A Cilium-managed workload endpoint: the subject of CiliumNetworkPolicy rules."""
        return (
            self.identity > 255
            and self.identity < sel.LOCAL_SCOPE
            and not self.is_world
            and bool(self.namespace or self.index.get(sel.NAMESPACE_KEY))
        )

    @property
    def is_host(self) -> bool:
        return "reserved:host" in self.index.raw

    @property
    def cluster(self) -> str:
        return self.index.get(sel.CLUSTER_KEY) or ""


@dataclass(frozen=True)
class Request:
    """The L7 request of a connection: HTTP (method, path with query, host, headers) or DNS."""

    protocol: str  # HTTP or DNS
    method: str = ""
    path: str = ""
    host: str = ""
    headers: tuple[tuple[str, str], ...] | None = None  # lowercase names; None: not in the flows
    query: str = ""

    def text(self) -> str:
        if self.protocol == "DNS":
            return f"DNS {self.query}"
        return f"{self.method} {self.path}"


@dataclass
class Verdict:
    """What the policy set decides for one connection at one enforcement point."""

    predicted: str  # allowed, denied, unknown
    verdict: str | None  # FORWARDED, REDIRECTED, DROPPED (None when unknown)
    match: str  # L3-L4, L4-Only, L3-Only, all, none
    policies: tuple[str, ...]
    reason: str
    unknown: tuple[str, ...] = ()  # constructs not evaluated that could change it
    pending: str = ""  # requests are decided by L7 rules the flows do not show


@dataclass
class _Entry:
    """One way a rule applies to the connection."""

    policy: str
    deny: bool
    state: int  # YES, MAYBE
    wildcard: bool  # the rule selects every peer
    rank: int  # the policy map key it makes, in lookup order (1 first): see _RANKS
    port_rule: PortRule | None
    unknown: tuple[str, ...] = ()


# bpf/lib/policy.h: keys are looked up in this order; Hubble's match type names the key found
_RANKS = {1: "L3-L4", 2: "L4-Only", 3: "L3-Proto", 4: "Proto-Only", 5: "L3-Only", 6: "all"}


@dataclass
class _Outcome:
    allowed: bool | None
    verdict: str
    match: str
    policies: tuple[str, ...]
    reason: str
    pending: str = ""
    unknown: tuple[str, ...] = field(default_factory=tuple)


class Evaluator:
    """Decides connections against a set of policies (rules selected per subject are cached)."""

    def __init__(self, policies: Sequence[Policy], re2: sel.RE2):
        self.policies = list(policies)
        self.rules: list[Rule] = [r for p in policies for r in p.rules]
        self.host_policies = sorted({r.policy for r in self.rules if r.subject is None})
        self.re2 = re2
        self._selected: dict[frozenset[str], list[Rule]] = {}

    def selecting(self, subject: Peer) -> list[Rule]:
        """The rules whose endpointSelector selects subject."""
        key = subject.labels
        hit = self._selected.get(key)
        if hit is None:
            hit = [
                r
                for r in self.rules
                if r.subject is not None and sel.selector_matches(r.subject, subject.index)
            ]
            self._selected[key] = hit
        return hit

    def decide(
        self,
        direction: str,
        subject: Peer,
        peer: Peer,
        port: int | None,
        protocol: str,
        request: Request | None = None,
        *,
        dns_visible: bool = True,
        local_cluster: str = "",
    ) -> Verdict:
        """The verdict at subject's ingress (peer is the source) or egress (peer the destination).

        dns_visible: the subject's DNS lookups went through the DNS proxy in the flows (so a world
        peer without names was not reached by a looked-up name)."""
        if subject.is_host:
            if self.host_policies:
                return Verdict(
                    UNKNOWN,
                    None,
                    "none",
                    tuple(self.host_policies),
                    "host policies (nodeSelector) are not evaluated",
                    unknown=tuple(f"nodeSelector ({p})" for p in self.host_policies),
                )
            return Verdict(
                ALLOWED, "FORWARDED", "none", (), "the host is not subject to endpoint policy"
            )
        rules = self.selecting(subject)
        cluster = subject.cluster or local_cluster
        entries: list[_Entry] = []
        requires = [
            u
            for r in rules
            for u in r.unknown
            if u.startswith("fromRequires" if direction == INGRESS else "toRequires")
        ]
        for rule in rules:
            for pr in rule.peer_rules:
                if pr.direction != direction:
                    continue
                for e in self._entries(rule.policy, pr, peer, port, protocol, dns_visible, cluster):
                    if requires and not e.deny:
                        e.state, e.unknown = MAYBE, e.unknown + tuple(requires)
                    entries.append(e)
        default_deny = sorted({r.policy for r in rules if r.enables_default_deny(direction)})
        if direction == INGRESS and peer.is_host and default_deny:
            # allow-localhost: "Kubernetes will automatically allow all communication from the
            # local host of all local endpoints" (docs: Layer 3, Access to/from local host)
            entries.append(_Entry("", False, YES, False, 5, None))
        sure = [e for e in entries if e.state == YES]
        maybe = [e for e in entries if e.state == MAYBE]
        if len(maybe) > MAX_UNKNOWNS:
            names = tuple(dict.fromkeys(u for e in maybe for u in e.unknown))
            return Verdict(
                UNKNOWN, None, "none", (), "too many constructs not evaluated", unknown=names
            )
        outcomes = [
            self._outcome(
                direction, sure + [e for e, on in zip(maybe, bits) if on], default_deny, request
            )
            for bits in itertools.product((False, True), repeat=len(maybe))
        ]
        unknown = tuple(dict.fromkeys(u for e in maybe for u in e.unknown))
        unknown += tuple(dict.fromkeys(u for o in outcomes for u in o.unknown if u not in unknown))
        first = outcomes[0]
        if all(o.allowed is not None and o.allowed == first.allowed for o in outcomes):
            same = all(o.verdict == first.verdict for o in outcomes)
            return Verdict(
                ALLOWED if first.allowed else DENIED,
                first.verdict if same else None,
                first.match if same else "none",
                first.policies,
                first.reason,
                unknown if not same else (),
                first.pending,
            )
        names = tuple(sorted({p for o in outcomes for p in o.policies if p}))
        return Verdict(
            UNKNOWN,
            None,
            "none",
            names,
            "depends on constructs flowpipe does not evaluate",
            unknown or ("an L7 rule",),
        )

    # -------------------------------------------------------------- matching one rule

    def _entries(
        self,
        policy: str,
        pr: PeerRule,
        peer: Peer,
        port: int | None,
        protocol: str,
        dns_visible: bool,
        cluster: str,
    ) -> list[_Entry]:
        l3, wildcard, unknown = self._l3(pr, peer, dns_visible, cluster)
        if l3 == NO:
            return []
        unknown += pr.unknown if not pr.deny else ()
        if pr.unknown and not pr.deny:
            l3 = MAYBE
        out: list[_Entry] = []
        peer_rank = 1 if wildcard else 0
        icmp = protocol.startswith("ICMP")
        if pr.icmp and icmp:  # ICMP types are not evaluated; TCP/UDP are not matched by them
            out.append(
                _Entry(policy, pr.deny, MAYBE, wildcard, 3 + peer_rank, None, unknown + ("icmps",))
            )
        if pr.ports is None:
            if pr.icmp or not pr.has_l3:  # an empty rule ({}) selects nothing
                return out
            return [_Entry(policy, pr.deny, l3, wildcard, 5 + peer_rank, None, unknown)]
        for port_rule in pr.ports:
            state, rank = self._ports(port_rule, port, protocol)
            if state == NO:
                continue
            extra = port_rule.unknown if not pr.deny else ()
            if extra:
                state = MAYBE
            if state == MAYBE and not extra:
                extra = tuple(f"named port {p.named}" for p in port_rule.ports if p.named) or (
                    "a port flowpipe cannot read",
                )
            out.append(
                _Entry(
                    policy,
                    pr.deny,
                    sel.tri_and(l3, state),
                    wildcard,
                    rank + peer_rank,
                    port_rule,
                    unknown + extra,
                )
            )
        return out

    @staticmethod
    def _ports(port_rule: PortRule, port: int | None, protocol: str) -> tuple[int, int]:
        """(match, rank of the best key: 1 a port, 3 a protocol's every port, 5 anything)."""
        if protocol not in L4_PROTOCOLS:
            return NO, 0  # toPorts never match ICMP ("Matching on ICMP is not supported")
        if not port_rule.ports:
            return YES, 5
        found: list[tuple[int, int]] = []
        for pp in port_rule.ports:
            if pp.protocol not in ("ANY", protocol):
                continue
            if pp.named:
                found.append((MAYBE, 1))
            elif pp.port == 0:
                found.append((YES, 5 if pp.protocol == "ANY" else 3))
            elif port is None:
                found.append((MAYBE, 1))
            elif pp.port <= port <= (pp.end_port or pp.port):
                found.append((YES, 1))
        state = sel.tri_or(f[0] for f in found)
        return state, min((r for st, r in found if st == state), default=0)

    def _l3(
        self, pr: PeerRule, peer: Peer, dns_visible: bool, cluster: str
    ) -> tuple[int, bool, tuple[str, ...]]:
        """(match, the rule selects every peer, constructs not evaluated that made it MAYBE)."""
        if not pr.has_l3:
            return YES, True, ()
        states: list[int] = []
        wildcard = False
        labels = peer.index
        for s in pr.endpoints or ():
            if sel.selector_matches(s, labels):
                states.append(YES)
                wildcard = wildcard or s.wildcard
        for entity in pr.entities or ():
            if sel.entity_matches(entity, labels, cluster):
                states.append(YES)
                wildcard = wildcard or entity == "all"
        # "CIDR rules do not apply to traffic where both sides of the connection are either
        # managed by Cilium or use an IP belonging to a node in the cluster" (docs: Layer 3)
        if peer.is_world:
            for c in pr.cidrs or ():
                if sel.cidr_matches(c.cidr, c.excepts, peer.ip):
                    states.append(YES)
            if pr.fqdns:
                if peer.names:
                    if any(
                        sel.dns_matches(n, f.name, f.pattern) for n in peer.names for f in pr.fqdns
                    ):
                        states.append(YES)
                elif not dns_visible:
                    states.append(MAYBE)
        unknown: tuple[str, ...] = ()
        if pr.unknown_peers:
            states.append(MAYBE)
            unknown = pr.unknown_peers
        if pr.fqdns and MAYBE in states and not peer.names and not dns_visible:
            unknown += (
                "toFQDNs (the flows carry no DNS names: lookups did not go through the DNS proxy)",
            )
        state = sel.tri_or(states)
        return state, wildcard and state == YES, unknown

    # -------------------------------------------------------------- one outcome

    def _outcome(
        self,
        direction: str,
        entries: list[_Entry],
        default_deny: list[str],
        request: Request | None,
    ) -> _Outcome:
        where = "ingress" if direction == INGRESS else "egress"
        denies = [e for e in entries if e.deny]
        if denies:
            names = _names(denies)
            level = _RANKS[min(e.rank for e in denies)]
            return _Outcome(
                False, "DROPPED", level, names, f"denied by {', '.join(names)} ({where}Deny)"
            )
        allows = [e for e in entries if not e.deny]
        if allows:
            best = min(e.rank for e in allows)
            top = [e for e in allows if e.rank == best]
            names, level = _names(top), _RANKS[best]
            redirect = [e for e in top if e.port_rule is not None and e.port_rule.has_l7]
            if not redirect:
                how = (
                    f"allowed by {', '.join(names)}"
                    if names
                    else "the local host may always reach its endpoints"
                )
                return _Outcome(True, "FORWARDED", level if names else "none", names, how)
            l7_names = _names(redirect)
            l7_rules = [e for e in allows if e.port_rule is not None and e.port_rule.has_l7]
            free = [e for e in allows if e.port_rule is None or not e.port_rule.has_l7]
            if request is None:
                how = f"redirected to the L7 proxy by {', '.join(l7_names)}"
                every = [e for e in l7_rules if e.port_rule.allows_every_request]
                if free or every:
                    how += f"; every request allowed by {', '.join(_names(free + every))}"
                    return _Outcome(True, "REDIRECTED", level, names, how)
                pending = f"requests are decided by the L7 rules of {', '.join(_names(l7_rules))}"
                return _Outcome(True, "REDIRECTED", level, names, how, pending)
            if free:
                return _Outcome(
                    True,
                    "FORWARDED",
                    level,
                    names,
                    f"{request.text()} allowed: {', '.join(_names(free))} allows the port "
                    "without L7 rules",
                )
            states = [(e, self._l7(e.port_rule, request)) for e in l7_rules]
            yes = [e for e, s in states if s == YES]
            if yes:
                return _Outcome(
                    True,
                    "FORWARDED",
                    level,
                    names,
                    f"{request.text()} allowed by the L7 rules of {', '.join(_names(yes))}",
                )
            if any(s == MAYBE for _, s in states):
                unknown = tuple(
                    dict.fromkeys(
                        u
                        for e, s in states
                        if s == MAYBE
                        for u in _l7_unknown(e.port_rule, request)
                    )
                )
                return _Outcome(None, "", level, names, "", unknown=unknown)
            denial = "HTTP 403" if request.protocol == "HTTP" else "DNS REFUSED"
            return _Outcome(
                False,
                "DROPPED",
                level,
                l7_names,
                f"redirected to the L7 proxy by {', '.join(l7_names)}; no L7 rule matches "
                f"{request.text()} ({denial})",
            )
        if default_deny:
            return _Outcome(
                False,
                "DROPPED",
                "none",
                tuple(default_deny),
                f"default deny at {where} (selected by {', '.join(default_deny)}); no rule allows it",
            )
        return _Outcome(
            True,
            "FORWARDED",
            "none",
            (),
            f"not in default deny at {where} (no rule for {where} selects it)",
        )

    def _l7(self, port_rule: PortRule, request: Request) -> int:
        if port_rule.other_l7:
            return MAYBE
        if request.protocol == "HTTP":
            if port_rule.http is None:
                return NO
            return sel.tri_or(self._http(h, request) for h in port_rule.http)
        if port_rule.dns is None:
            return NO
        return (
            YES
            if any(sel.dns_matches(request.query, d.name, d.pattern) for d in port_rule.dns)
            else NO
        )

    def _http(self, rule, request: Request) -> int:
        states = []
        for pattern, value in (
            (rule.method, request.method),
            (rule.path, request.path),
            (rule.host, request.host),
        ):
            if pattern:
                states.append(YES if self.re2.full_match(pattern, value) else NO)
        for name, value in rule.headers:
            if request.headers is None:
                states.append(MAYBE)
                continue
            got = [v for k, v in request.headers if k == name]
            if "HUBBLE_REDACTED" in got:
                states.append(MAYBE)
            else:
                states.append(YES if (got and (value is None or value in got)) else NO)
        if rule.unknown:
            states.append(MAYBE)
        return sel.tri_and(*states) if states else YES


def _l7_unknown(port_rule: PortRule | None, request: Request) -> tuple[str, ...]:
    if port_rule is None:
        return ()
    if port_rule.other_l7:
        return (f"rules.{port_rule.other_l7}",)
    out = []
    for h in port_rule.http or ():
        out += list(h.unknown)
        if h.headers and request.headers is None:
            out.append("header rules (the flows carry no request headers)")
    return tuple(out) or ("an L7 rule",)


def _names(entries: Sequence[_Entry]) -> tuple[str, ...]:
    return tuple(sorted({e.policy for e in entries if e.policy}))
