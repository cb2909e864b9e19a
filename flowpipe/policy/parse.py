"""Policy documents -> the policy model, with every refusal naming file:line and field.

CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy follow the CRD (cilium.io/v2) and
pkg/k8s/apis/cilium.io/utils/utils.go (the namespace added to selectors); NetworkPolicy follows
Cilium's translation (pkg/k8s/network_policy.go ParseNetworkPolicy). Other kinds are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flowpipe.errors import InputError
from flowpipe.policy import selectors as sel
from flowpipe.policy.loader import Document, line_of
from flowpipe.policy.model import (
    CCNP,
    CNP,
    EGRESS,
    FQDN,
    INGRESS,
    KNP,
    CIDRRule,
    DNSRule,
    HTTPRule,
    PeerRule,
    Policy,
    PortProto,
    PortRule,
    Requirement,
    Rule,
    Selector,
    Unsupported,
)

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
# CRD patterns (pkg/k8s/apis/cilium.io/client/crds/v2/ciliumnetworkpolicies.yaml)
PORT_RE = re.compile(
    r"^(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})$"
)
NAMED_PORT_RE = re.compile(r"^([a-zA-Z0-9]-?)*[a-zA-Z](-?[a-zA-Z0-9])*$")
MATCH_NAME_RE = re.compile(r"^([-a-zA-Z0-9_]+[.]?)+$")
MATCH_PATTERN_RE = re.compile(r"^([-a-zA-Z0-9_*]+[.]?)+$")
PROTOCOLS = ("TCP", "UDP", "SCTP", "ANY")

_SPEC_FIELDS = {
    "endpointSelector",
    "nodeSelector",
    "ingress",
    "ingressDeny",
    "egress",
    "egressDeny",
    "enableDefaultDeny",
    "labels",
    "description",
    "log",
}
_INGRESS_PEERS = ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities")
_EGRESS_PEERS = ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities", "toFQDNs")
# fields flowpipe does not evaluate: each makes the peer match unknown
_UNKNOWN_PEERS = {
    INGRESS: ("fromGroups", "fromNodes"),
    EGRESS: ("toServices", "toGroups", "toNodes"),
}
_REQUIRES = {INGRESS: "fromRequires", EGRESS: "toRequires"}


class _Errors:
    """Errors collected while parsing; raised together, the first one in full."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def raise_if_any(self) -> None:
        if self.items:
            more = len(self.items) - 1
            raise InputError(self.items[0] + (f" (and {more} more errors)" if more else ""))


@dataclass
class _Ctx:
    doc: Document
    policy: Policy
    errors: _Errors
    re2: sel.RE2
    namespace: str  # "" for clusterwide
    kind: str
    notes: list[str] = field(default_factory=list)

    def where(self, obj: Any, key: Any = None) -> str:
        return f"{self.doc.file}:{line_of(obj, key, self.doc.line)}"

    def unsupported(self, construct: str, obj: Any, key: Any = None, effect: str = "") -> None:
        u = Unsupported(self.policy.ref, construct, self.where(obj, key))
        if effect:
            u = Unsupported(u.policy, u.construct, u.where, effect)
        if u not in self.policy.unsupported:
            self.policy.unsupported.append(u)


@dataclass
class ParseResult:
    """The policies of a set of documents, and how many documents were not policies."""

    policies: list[Policy]
    skipped: dict[str, int]


def parse(docs: Sequence[Document], re2: sel.RE2) -> ParseResult:
    """Every CNP, CCNP and NetworkPolicy of docs; other kinds counted; InputError on a bad one."""
    errors = _Errors()
    policies: list[Policy] = []
    skipped: dict[str, int] = {}
    for doc in docs:
        data = doc.data
        if not isinstance(data, dict):
            errors.add(doc.where, "a policy document must be a mapping")
            continue
        kind = data.get("kind")
        if kind not in (CNP, CCNP, KNP):
            skipped[str(kind)] = skipped.get(str(kind), 0) + 1
            continue
        policy = _policy(doc, data, str(kind), errors, re2)
        if policy is not None:
            policies.append(policy)
    errors.raise_if_any()
    seen: dict[tuple[str, str, str], str] = {}
    for p in policies:
        key = (p.kind, p.namespace, p.name)
        if key in seen:
            errors.add(p.where, f"{p.ref} is also defined at {seen[key]}")
        seen.setdefault(key, p.where)
    errors.raise_if_any()
    return ParseResult(policies, skipped)


def _policy(doc: Document, data: dict, kind: str, errors: _Errors, re2: sel.RE2) -> Policy | None:
    meta = data.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        errors.add(doc.where, f"{kind} without metadata.name")
        return None
    api = str(data.get("apiVersion", ""))
    want = "networking.k8s.io/" if kind == KNP else "cilium.io/"
    if not api.startswith(want):
        errors.add(doc.where, f"{kind} {meta['name']}: apiVersion {api!r} is not {want}...")
        return None
    namespace = ""
    notes = []
    if kind != CCNP:
        namespace = meta.get("namespace") or "default"
        if not meta.get("namespace"):
            notes.append(
                "no metadata.namespace: read as namespace default (kubectl would use the "
                "namespace of your context)"
            )
    policy = Policy(kind, meta["name"], str(namespace), doc.where, notes=notes)
    ctx = _Ctx(doc, policy, errors, re2, policy.namespace, kind)
    if kind == KNP:
        spec = data.get("spec")
        if not isinstance(spec, dict):
            errors.add(ctx.where(data, "spec"), "NetworkPolicy without a spec mapping")
            return None
        policy.rules.append(_knp_rule(ctx, spec))
        return policy
    specs: list[Any] = []
    if "spec" in data:
        specs.append(data["spec"])
    if "specs" in data:
        if not isinstance(data["specs"], list):
            errors.add(ctx.where(data, "specs"), "specs must be a list")
            return None
        specs += list(data["specs"])
    if not specs:
        errors.add(doc.where, f"{policy.ref} has neither spec nor specs")
        return None
    for spec in specs:
        if not isinstance(spec, dict):
            errors.add(ctx.where(data, "spec"), "a spec must be a mapping")
            continue
        rule = _cilium_rule(ctx, spec)
        if rule is not None:
            policy.rules.append(rule)
    for spec in specs:
        if isinstance(spec, dict):
            _empty_sections_note(ctx, spec)
    return policy


def _empty_sections_note(ctx: _Ctx, spec: dict) -> None:
    """Say so when a spec has no rules at all (the lab's default-deny.yaml: ingress: [], egress: [])."""
    sections = ("ingress", "ingressDeny", "egress", "egressDeny")
    if any(spec.get(s) for s in sections) or spec.get("enableDefaultDeny"):
        return
    written = [f"{s}: []" for s in sections if s in spec]
    how = " and ".join(written) if written else "no ingress or egress section"
    ctx.policy.notes.append(
        f"{how}: no rules, so it puts no endpoint in default deny and changes nothing "
        "(enableDefaultDeny defaults to true only for a direction that has rules; to deny all, "
        "write ingress: [{}] / egress: [{}] or set enableDefaultDeny)"
    )


# ------------------------------------------------------------------ selectors


def _label_selector(ctx: _Ctx, obj: Any, what: str, k8s_prefix: bool = False) -> Selector | None:
    """A matchLabels/matchExpressions mapping; k8s_prefix: keys get source k8s (NetworkPolicy)."""
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        ctx.errors.add(ctx.where(obj), f"{what}: a label selector must be a mapping")
        return None
    for key in obj:
        if key not in ("matchLabels", "matchExpressions"):
            ctx.notes.append(f"{ctx.where(obj, key)}: {what}.{key} is not a selector field")
    labels = obj.get("matchLabels") or {}
    exprs = obj.get("matchExpressions") or []
    if not isinstance(labels, dict) or not isinstance(exprs, list):
        ctx.errors.add(
            ctx.where(obj), f"{what}: matchLabels must be a mapping, matchExpressions a list"
        )
        return None

    def key_of(k: Any) -> str:
        k = str(k)
        return f"k8s:{k}" if k8s_prefix and ":" not in k else k

    parsed = []
    for i, e in enumerate(exprs):
        if not isinstance(e, dict) or "key" not in e or e.get("operator") not in OPERATORS:
            ctx.errors.add(
                ctx.where(exprs, i),
                f"{what}.matchExpressions[{i}]: needs key and operator ({', '.join(OPERATORS)})",
            )
            continue
        values = e.get("values") or []
        if e["operator"] in ("In", "NotIn") and not values:
            ctx.errors.add(
                ctx.where(exprs, i), f"{what}.matchExpressions[{i}]: {e['operator']} needs values"
            )
        parsed.append((key_of(e["key"]), e["operator"], [str(v) for v in values]))
    return sel.selector({key_of(k): "" if v is None else v for k, v in labels.items()}, parsed)


def _namespaced_peer(ctx: _Ctx, s: Selector, subject: Selector | None) -> Selector:
    """getEndpointSelector: limit a peer selector to the policy's namespace (CNP), or to
    endpoints that have a namespace (CCNP), unless it names the namespace or is reserved."""
    if any(r.source == "reserved" for r in s.requirements):
        return s
    if sel.has_key(s, "k8s", sel.NAMESPACE_KEY):
        return s
    if ctx.namespace == "":
        init = subject is not None and any(
            r.source == "reserved" and r.key == "init" for r in subject.requirements
        )
        if init:
            return s
        return sel.with_requirement(
            s, Requirement("k8s", sel.NAMESPACE_KEY, "Exists"), f"k8s:{sel.NAMESPACE_KEY} Exists"
        )
    if any(r.key.startswith(sel.NAMESPACE_LABELS_PREFIX) for r in s.requirements):
        return s
    return sel.with_requirement(
        s,
        Requirement("k8s", sel.NAMESPACE_KEY, "In", frozenset({ctx.namespace})),
        f"k8s:{sel.NAMESPACE_KEY}={ctx.namespace}",
    )


# ------------------------------------------------------------------ Cilium rules


def _cilium_rule(ctx: _Ctx, spec: dict) -> Rule | None:
    for key in spec:
        if key not in _SPEC_FIELDS:
            ctx.policy.notes.append(
                f"{ctx.where(spec, key)}: unknown field spec.{key}: the API server drops it"
            )
    has_ep, has_node = "endpointSelector" in spec, "nodeSelector" in spec
    if has_ep == has_node:
        ctx.errors.add(
            ctx.where(spec), "a spec needs exactly one of endpointSelector and nodeSelector"
        )
        return None
    subject: Selector | None = None
    if has_node:
        if ctx.kind != CCNP:
            ctx.errors.add(
                ctx.where(spec, "nodeSelector"),
                "nodeSelector only in a CiliumClusterwideNetworkPolicy",
            )
            return None
        ctx.unsupported(
            "nodeSelector (host policy)",
            spec,
            "nodeSelector",
            "it selects nodes, not pods: decisions for the host endpoint are unknown",
        )
    else:
        subject = _label_selector(ctx, spec["endpointSelector"], "endpointSelector")
        if subject is None:
            return None
        if ctx.namespace:  # the endpointSelector always applies in the policy's namespace
            subject = Selector(
                tuple(r for r in subject.requirements if r.key != sel.NAMESPACE_KEY)
                + (Requirement("k8s", sel.NAMESPACE_KEY, "In", frozenset({ctx.namespace})),),
                subject.text,
            )
    peer_rules: list[PeerRule] = []
    unknown: list[str] = []
    for section, direction, deny in (
        ("ingress", INGRESS, False),
        ("ingressDeny", INGRESS, True),
        ("egress", EGRESS, False),
        ("egressDeny", EGRESS, True),
    ):
        items = spec.get(section)
        if items is None:
            continue
        if not isinstance(items, list):
            ctx.errors.add(ctx.where(spec, section), f"spec.{section} must be a list")
            continue
        for i, item in enumerate(items):
            what = f"{section}[{i}]"
            if not isinstance(item, dict):
                ctx.errors.add(ctx.where(items, i), f"{what} must be a mapping")
                continue
            if item.get(_REQUIRES[direction]) is not None:
                ctx.unsupported(_REQUIRES[direction], item, _REQUIRES[direction])
                unknown.append(f"{_REQUIRES[direction]} ({ctx.where(item, _REQUIRES[direction])})")
            rule = _peer_rule(ctx, item, what, direction, deny, subject)
            if rule is not None:
                peer_rules.append(rule)
    default_deny: dict[str, bool | None] = {INGRESS: None, EGRESS: None}
    edd = spec.get("enableDefaultDeny")
    if edd is not None:
        if not isinstance(edd, dict):
            ctx.errors.add(
                ctx.where(spec, "enableDefaultDeny"), "enableDefaultDeny must be a mapping"
            )
        else:
            for key, direction in (("ingress", INGRESS), ("egress", EGRESS)):
                if key in edd:
                    if not isinstance(edd[key], bool):
                        ctx.errors.add(
                            ctx.where(edd, key), f"enableDefaultDeny.{key} must be true or false"
                        )
                    else:
                        default_deny[direction] = edd[key]
    for note in ctx.notes:
        ctx.policy.notes.append(note)
    ctx.notes.clear()
    return Rule(
        policy=ctx.policy.name,
        kind=ctx.kind,
        namespace=ctx.namespace,
        where=ctx.where(spec),
        subject=subject,
        peer_rules=tuple(peer_rules),
        default_deny=tuple(default_deny.items()),
        unknown=tuple(unknown),
    )


def _peer_rule(
    ctx: _Ctx, item: dict, what: str, direction: str, deny: bool, subject: Selector | None
) -> PeerRule | None:
    peers = _INGRESS_PEERS if direction == INGRESS else _EGRESS_PEERS
    known = (
        set(peers)
        | set(_UNKNOWN_PEERS[direction])
        | {
            _REQUIRES[direction],
            "toPorts",
            "icmps",
            "authentication",
        }
    )
    for key in item:
        if key not in known:
            ctx.policy.notes.append(
                f"{ctx.where(item, key)}: unknown field {what}.{key}: the API server drops it"
            )
    prefix = "from" if direction == INGRESS else "to"
    endpoints = entities = cidrs = fqdns = None
    eps = item.get(f"{prefix}Endpoints")
    if eps is not None:
        if not isinstance(eps, list):
            ctx.errors.add(
                ctx.where(item, f"{prefix}Endpoints"), f"{what}.{prefix}Endpoints must be a list"
            )
            return None
        parsed = [
            _label_selector(ctx, e, f"{what}.{prefix}Endpoints[{j}]") for j, e in enumerate(eps)
        ]
        endpoints = tuple(_namespaced_peer(ctx, s, subject) for s in parsed if s is not None)
    ents = item.get(f"{prefix}Entities")
    if ents is not None:
        if not isinstance(ents, list) or any(str(e) not in sel.ENTITIES for e in ents):
            ctx.errors.add(
                ctx.where(item, f"{prefix}Entities"),
                f"{what}.{prefix}Entities: entities are {', '.join(sorted(sel.ENTITIES))}",
            )
            return None
        entities = tuple(str(e) for e in ents)
    cidrs = _cidrs(ctx, item, what, prefix)
    if direction == EGRESS and item.get("toFQDNs") is not None:
        fqdns = _fqdns(ctx, item, what)
        if any(f is not None for f in (endpoints, entities, cidrs)):
            ctx.errors.add(
                ctx.where(item, "toFQDNs"),
                f"{what}: toFQDNs cannot be combined with other L3 rules",
            )
    unknown_peers = []
    for key in _UNKNOWN_PEERS[direction]:
        if item.get(key) is not None:
            ctx.unsupported(key, item, key)
            unknown_peers.append(f"{key} ({ctx.where(item, key)})")
    if cidrs is not None:
        for raw in item.get(f"{prefix}CIDRSet") or []:
            if isinstance(raw, dict) and ("cidrGroupRef" in raw or "cidrGroupSelector" in raw):
                key = "cidrGroupRef" if "cidrGroupRef" in raw else "cidrGroupSelector"
                ctx.unsupported(f"{prefix}CIDRSet.{key}", raw, key)
                unknown_peers.append(f"{prefix}CIDRSet.{key} ({ctx.where(raw, key)})")
    unknown = []
    if item.get("authentication") is not None and not deny:
        ctx.unsupported(
            "authentication",
            item,
            "authentication",
            "allowed traffic may wait for mutual authentication: decisions it allows are unknown",
        )
        unknown.append(f"authentication ({ctx.where(item, 'authentication')})")
    ports = _to_ports(ctx, item, what, deny) if "toPorts" in item else None
    icmp = item.get("icmps") is not None
    if icmp:
        ctx.unsupported("icmps", item, "icmps", "ICMP decisions it could change are unknown")
    return PeerRule(
        direction=direction,
        deny=deny,
        where=ctx.where(item),
        endpoints=endpoints,
        entities=entities,
        cidrs=cidrs,
        fqdns=fqdns,
        ports=ports,
        icmp=icmp,
        unknown_peers=tuple(unknown_peers),
        unknown=tuple(unknown),
    )


def _cidr_ok(ctx: _Ctx, where: str, text: Any) -> str | None:
    try:
        sel.network(str(text))
    except ValueError:
        ctx.errors.add(where, f"invalid CIDR {text!r}")
        return None
    return str(text)


def _cidrs(ctx: _Ctx, item: dict, what: str, prefix: str) -> tuple[CIDRRule, ...] | None:
    plain, sets = item.get(f"{prefix}CIDR"), item.get(f"{prefix}CIDRSet")
    if plain is None and sets is None:
        return None
    out: list[CIDRRule] = []
    for key, value in ((f"{prefix}CIDR", plain), (f"{prefix}CIDRSet", sets)):
        if value is None:
            continue
        if not isinstance(value, list):
            ctx.errors.add(ctx.where(item, key), f"{what}.{key} must be a list")
            continue
        for j, entry in enumerate(value):
            where = ctx.where(value, j)
            if key.endswith("Set"):
                if not isinstance(entry, dict):
                    ctx.errors.add(where, f"{what}.{key}[{j}] must be a mapping")
                    continue
                if "cidr" not in entry:
                    continue  # a CIDR group reference: not evaluated (see _peer_rule)
                cidr = _cidr_ok(ctx, where, entry["cidr"])
                excepts = [_cidr_ok(ctx, where, e) for e in entry.get("except") or []]
                if cidr and all(excepts):
                    out.append(CIDRRule(cidr, tuple(e for e in excepts if e)))
            else:
                cidr = _cidr_ok(ctx, where, entry)
                if cidr:
                    out.append(CIDRRule(cidr))
    return tuple(out)


def _fqdns(ctx: _Ctx, item: dict, what: str) -> tuple[FQDN, ...]:
    out = []
    value = item.get("toFQDNs")
    if not isinstance(value, list):
        ctx.errors.add(ctx.where(item, "toFQDNs"), f"{what}.toFQDNs must be a list")
        return ()
    for j, entry in enumerate(value):
        where = ctx.where(value, j)
        name, pattern = _name_or_pattern(ctx, where, entry, f"{what}.toFQDNs[{j}]")
        if name or pattern:
            out.append(FQDN(name, pattern))
    return tuple(out)


def _name_or_pattern(ctx: _Ctx, where: str, entry: Any, what: str) -> tuple[str, str]:
    if not isinstance(entry, dict) or ("matchName" in entry) == ("matchPattern" in entry):
        ctx.errors.add(where, f"{what}: needs exactly one of matchName and matchPattern")
        return "", ""
    name, pattern = str(entry.get("matchName") or ""), str(entry.get("matchPattern") or "")
    if name and (len(name) > 255 or not MATCH_NAME_RE.match(name)):
        ctx.errors.add(where, f"{what}: invalid matchName {name!r}")
        return "", ""
    if pattern and (len(pattern) > 255 or not MATCH_PATTERN_RE.match(pattern)):
        ctx.errors.add(where, f"{what}: invalid matchPattern {pattern!r}")
        return "", ""
    return name, pattern


def _port_proto(ctx: _Ctx, entry: Any, where: str, what: str) -> PortProto | None:
    if not isinstance(entry, dict) or "port" not in entry:
        ctx.errors.add(where, f"{what}: needs a port")
        return None
    port, proto = entry["port"], entry.get("protocol") or "ANY"
    if not isinstance(port, str):
        ctx.errors.add(where, f'{what}.port must be a string (write "{port}")')
        return None
    if proto not in PROTOCOLS:
        ctx.errors.add(where, f"{what}.protocol {proto!r} is not one of {', '.join(PROTOCOLS)}")
        return None
    end = entry.get("endPort") or 0
    if not isinstance(end, int) or not 0 <= end <= 65535:
        ctx.errors.add(where, f"{what}.endPort must be a number from 0 to 65535")
        return None
    if PORT_RE.match(port):
        if end and end < int(port):
            ctx.errors.add(where, f"{what}: endPort {end} is below port {port}")
            return None
        return PortProto(int(port), proto, end)
    if NAMED_PORT_RE.match(port):
        ctx.unsupported(
            f"named port {port!r}",
            entry,
            "port",
            "named ports come from the pod spec: decisions on them are unknown",
        )
        return PortProto(0, proto, 0, named=port)
    ctx.errors.add(where, f"{what}.port {port!r} is not a port number (0-65535) or a port name")
    return None


def _to_ports(ctx: _Ctx, item: dict, what: str, deny: bool) -> tuple[PortRule, ...]:
    value = item.get("toPorts")
    if not isinstance(value, list):
        ctx.errors.add(ctx.where(item, "toPorts"), f"{what}.toPorts must be a list")
        return ()
    out = []
    for j, pr in enumerate(value):
        where, pwhat = ctx.where(value, j), f"{what}.toPorts[{j}]"
        if not isinstance(pr, dict):
            ctx.errors.add(where, f"{pwhat} must be a mapping")
            continue
        ports = []
        raw_ports = pr.get("ports") or []
        for k, entry in enumerate(raw_ports if isinstance(raw_ports, list) else []):
            pp = _port_proto(ctx, entry, ctx.where(raw_ports, k), f"{pwhat}.ports[{k}]")
            if pp is not None:
                ports.append(pp)
        rules = pr.get("rules")
        if deny:
            if rules:
                ctx.policy.notes.append(
                    f"{ctx.where(pr, 'rules')}: a deny rule has no L7 rules: the API server drops "
                    f"{pwhat}.rules, so the deny applies to the whole port"
                )
            out.append(PortRule(tuple(ports)))
            continue
        unknown = []
        for key in ("serverNames", "listener"):
            if pr.get(key):
                ctx.unsupported(key, pr, key)
                unknown.append(f"{key} ({ctx.where(pr, key)})")
        out.append(_l7(ctx, pr, rules, pwhat, tuple(ports), tuple(unknown)))
    return tuple(out)


def _l7(
    ctx: _Ctx,
    pr: dict,
    rules: Any,
    what: str,
    ports: tuple[PortProto, ...],
    unknown: tuple[str, ...],
) -> PortRule:
    if not rules:
        return PortRule(ports, unknown=unknown)
    if not isinstance(rules, dict):
        ctx.errors.add(ctx.where(pr, "rules"), f"{what}.rules must be a mapping")
        return PortRule(ports, unknown=unknown)
    kinds = [k for k in ("http", "dns", "kafka", "l7proto") if rules.get(k)]
    if len(kinds) > 1:
        ctx.errors.add(
            ctx.where(pr, "rules"), f"{what}.rules: only one of http, dns, kafka, l7proto"
        )
    if "http" in kinds:
        http = []
        for i, h in enumerate(rules["http"] if isinstance(rules["http"], list) else []):
            rule = _http(ctx, h, ctx.where(rules["http"], i), f"{what}.rules.http[{i}]")
            if rule is not None:
                http.append(rule)
        return PortRule(ports, http=tuple(http), unknown=unknown)
    if "dns" in kinds:
        if any(p.end_port for p in ports):
            ctx.errors.add(ctx.where(pr, "rules"), f"{what}: DNS rules do not support port ranges")
        dns = []
        for i, d in enumerate(rules["dns"] if isinstance(rules["dns"], list) else []):
            name, pattern = _name_or_pattern(
                ctx, ctx.where(rules["dns"], i), d, f"{what}.rules.dns[{i}]"
            )
            if name or pattern:
                dns.append(DNSRule(name, pattern))
        return PortRule(ports, dns=tuple(dns), unknown=unknown)
    if kinds:
        ctx.unsupported(
            f"rules.{kinds[0]}",
            rules,
            kinds[0],
            f"{kinds[0]} requests are not evaluated: their decisions are unknown",
        )
        return PortRule(ports, other_l7=kinds[0], unknown=unknown)
    return PortRule(ports, unknown=unknown)


def _http(ctx: _Ctx, h: Any, where: str, what: str) -> HTTPRule | None:
    if not isinstance(h, dict):
        ctx.errors.add(where, f"{what} must be a mapping")
        return None
    fields = {}
    for key in ("method", "path", "host"):
        value = h.get(key) or ""
        if value:
            err = ctx.re2.error(str(value))
            if err:
                ctx.errors.add(where, f"{what}.{key}: {value!r} is not a valid RE2 regex: {err}")
                return None
        fields[key] = str(value)
    headers: list[tuple[str, str | None]] = []
    for raw in h.get("headers") or []:
        name, _, value = str(raw).partition(" ")  # getHTTPRule: "Name: value" or "Name"
        headers.append((name.rstrip(":").lower(), value if value else None))
    unknown: list[str] = []
    for i, m in enumerate(h.get("headerMatches") or []):
        if not isinstance(m, dict) or "name" not in m:
            ctx.errors.add(where, f"{what}.headerMatches[{i}] needs a name")
            continue
        if m.get("mismatch"):
            continue  # LOG/ADD/DELETE/REPLACE act on the request but never deny it
        if m.get("secret"):
            ctx.unsupported(
                "headerMatches.secret",
                m,
                "secret",
                "the header value lives in a Secret: requests it decides are unknown",
            )
            unknown.append(f"headerMatches.secret ({ctx.where(m, 'secret')})")
            continue
        headers.append((str(m["name"]).lower(), str(m["value"]) if m.get("value") else None))
    return HTTPRule(
        fields["method"], fields["path"], fields["host"], tuple(headers), tuple(unknown)
    )


# ------------------------------------------------------------------ Kubernetes NetworkPolicy


def _knp_rule(ctx: _Ctx, spec: dict) -> Rule:
    """Cilium's translation of a NetworkPolicy (ParseNetworkPolicy)."""
    subject = _label_selector(ctx, spec.get("podSelector") or {}, "podSelector", k8s_prefix=True)
    subject = subject or Selector((), "{}")
    subject = Selector(
        subject.requirements
        + (Requirement("k8s", sel.NAMESPACE_KEY, "In", frozenset({ctx.namespace})),),
        subject.text,
    )
    types = spec.get("policyTypes") or []
    peer_rules: list[PeerRule] = []
    for section, direction, peers_key in (("ingress", INGRESS, "from"), ("egress", EGRESS, "to")):
        items = spec.get(section) or []
        for i, item in enumerate(items if isinstance(items, list) else []):
            what = f"spec.{section}[{i}]"
            if not isinstance(item, dict):
                ctx.errors.add(ctx.where(items, i), f"{what} must be a mapping")
                continue
            ports = _knp_ports(ctx, item.get("ports"), what) if item.get("ports") else None
            peers = item.get(peers_key) or []
            if not peers:  # "If this field is empty or missing, this rule matches all"
                peer_rules.append(
                    PeerRule(
                        direction,
                        False,
                        ctx.where(item),
                        endpoints=(Selector((), "{}"),),
                        ports=ports,
                    )
                )
                continue
            for j, peer in enumerate(peers):
                where = ctx.where(peers, j)
                if not isinstance(peer, dict):
                    ctx.errors.add(where, f"{what}.{peers_key}[{j}] must be a mapping")
                    continue
                endpoints = None
                if peer.get("namespaceSelector") is not None or peer.get("podSelector") is not None:
                    endpoints = (_knp_peer(ctx, peer, f"{what}.{peers_key}[{j}]"),)
                cidrs = None
                block = peer.get("ipBlock")
                if block is not None:
                    cidr = _cidr_ok(ctx, where, (block or {}).get("cidr"))
                    excepts = [_cidr_ok(ctx, where, e) for e in (block or {}).get("except") or []]
                    cidrs = (CIDRRule(cidr, tuple(e for e in excepts if e)),) if cidr else ()
                peer_rules.append(
                    PeerRule(direction, False, where, endpoints=endpoints, cidrs=cidrs, ports=ports)
                )
    # the Kubernetes default-deny model (no rules, policyTypes) as Cilium converts it
    if not any(r.direction == INGRESS for r in peer_rules) and (
        "Ingress" in types or "Egress" not in types
    ):
        peer_rules.append(PeerRule(INGRESS, False, ctx.where(spec)))
    if not any(r.direction == EGRESS for r in peer_rules) and "Egress" in types:
        peer_rules.append(PeerRule(EGRESS, False, ctx.where(spec)))
    for note in ctx.notes:
        ctx.policy.notes.append(note)
    ctx.notes.clear()
    return Rule(ctx.policy.name, KNP, ctx.namespace, ctx.where(spec), subject, tuple(peer_rules))


def _knp_peer(ctx: _Ctx, peer: dict, what: str) -> Selector:
    """parseNetworkPolicyPeer: namespaceSelector keys become namespace labels; a podSelector
    alone stays in the policy's namespace."""
    pods = _label_selector(ctx, peer.get("podSelector") or {}, f"{what}.podSelector", True)
    pods = pods or Selector((), "{}")
    ns_sel = peer.get("namespaceSelector")
    if ns_sel is None:
        return sel.with_requirement(
            pods,
            Requirement("k8s", sel.NAMESPACE_KEY, "In", frozenset({ctx.namespace})),
            f"k8s:{sel.NAMESPACE_KEY}={ctx.namespace}",
        )
    ns = _label_selector(ctx, ns_sel, f"{what}.namespaceSelector") or Selector((), "{}")
    reqs = tuple(
        Requirement("k8s", f"{sel.NAMESPACE_LABELS_PREFIX}.{r.key}", r.op, r.values)
        for r in ns.requirements
    ) or (Requirement("k8s", sel.NAMESPACE_KEY, "Exists"),)
    text = ", ".join(p for p in (pods.text[1:-1], "namespace " + ns.text) if p)
    return Selector(pods.requirements + reqs, "{" + text + "}")


def _knp_ports(ctx: _Ctx, ports: Any, what: str) -> tuple[PortRule, ...]:
    """parsePorts: TCP unless given; no port means every port of the protocol."""
    out = []
    for k, p in enumerate(ports if isinstance(ports, list) else []):
        where = ctx.where(ports, k)
        if not isinstance(p, dict):
            ctx.errors.add(where, f"{what}.ports[{k}] must be a mapping")
            continue
        proto = p.get("protocol") or "TCP"
        if proto not in ("TCP", "UDP", "SCTP"):
            ctx.errors.add(where, f"{what}.ports[{k}].protocol {proto!r} is not TCP, UDP or SCTP")
            continue
        port, end = p.get("port"), p.get("endPort") or 0
        if isinstance(port, str) and not port.isdigit():
            ctx.unsupported(
                f"named port {port!r}",
                p,
                "port",
                "named ports come from the pod spec: decisions on them are unknown",
            )
            out.append(PortRule((PortProto(0, proto, 0, named=port),)))
            continue
        number = int(port) if port is not None else 0
        if not 0 <= number <= 65535 or (end and end < number):
            ctx.errors.add(where, f"{what}.ports[{k}]: invalid port {port!r} / endPort {end!r}")
            continue
        out.append(PortRule((PortProto(number, proto, int(end)),)))
    return tuple(out)
