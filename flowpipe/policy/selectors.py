"""Matching: label selectors against identity labels, entities, CIDRs, DNS names and patterns,
HTTP regexes (RE2, as Envoy), each with the Cilium source it follows."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from functools import lru_cache

import duckdb

from flowpipe.common.sql import quote
from flowpipe.common.text import first_line
from flowpipe.policy.model import Requirement, Selector
from flowpipe.serve.filters import _go_ip  # the one net.ParseIP

# Tri-state results: a construct flowpipe does not evaluate makes a match MAYBE.
NO, YES, MAYBE = 0, 1, 2


def tri_or(values: Iterable[int]) -> int:
    out = NO
    for v in values:
        if v == YES:
            return YES
        if v == MAYBE:
            out = MAYBE
    return out


def tri_and(*values: int) -> int:
    if NO in values:
        return NO
    return MAYBE if MAYBE in values else YES


# ------------------------------------------------------------------ labels and selectors

LABEL_SOURCES = frozenset(
    {"any", "k8s", "reserved", "container", "cidr", "fqdn", "unspec", "kvstore", "cilium-generated"}
)
# Reserved identities (pkg/identity/numericidentity.go) and the labels they carry; kube-apiserver
# also carries reserved:remote-node (reservedIdentityLabels).
RESERVED_LABELS = {
    1: ("reserved:host",),
    2: ("reserved:world",),
    3: ("reserved:unmanaged",),
    4: ("reserved:health",),
    5: ("reserved:init",),
    6: ("reserved:remote-node",),
    7: ("reserved:kube-apiserver", "reserved:remote-node"),
    8: ("reserved:ingress",),
    9: ("reserved:world-ipv4",),
    10: ("reserved:world-ipv6",),
}
LOCAL_SCOPE = 1 << 24  # identities of CIDRs and FQDNs: outside the cluster (IdentityScopeLocal)
WORLD_LABELS = frozenset({"reserved:world", "reserved:world-ipv4", "reserved:world-ipv6"})
NAMESPACE_KEY = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels"
CLUSTER_KEY = "io.cilium.k8s.policy.cluster"


def split_key(key: str) -> tuple[str, str]:
    """'k8s:app' -> ('k8s', 'app'); 'app' -> ('any', 'app') (pkg/labels ParseSelectLabel)."""
    source, sep, rest = key.partition(":")
    if sep and source in LABEL_SOURCES:
        return source, rest
    return "any", key


def parse_label(label: str) -> tuple[str, str, str]:
    """'k8s:app=frontend' -> ('k8s', 'app', 'frontend'); 'reserved:world' -> ('reserved', 'world', '')."""
    source, key = split_key(label)
    if source == "any" and ":" in label:  # an unknown source is still a source
        source, _, key = label.partition(":")
    key, _, value = key.partition("=")
    return source, key, value


class Labels:
    """An identity's labels, indexed by key for selector matching."""

    __slots__ = ("by_key", "raw")

    def __init__(self, labels: Iterable[str]):
        self.raw = frozenset(labels)
        self.by_key: dict[str, list[tuple[str, str]]] = {}
        for label in self.raw:
            source, key, value = parse_label(label)
            self.by_key.setdefault(key, []).append((source, value))

    def values(self, source: str, key: str) -> list[str]:
        """Values of key from source ('any': from every source)."""
        return [v for s, v in self.by_key.get(key, ()) if source == "any" or s == source]

    def get(self, key: str) -> str | None:
        vals = self.values("any", key)
        return vals[0] if vals else None


_LABELS: dict[frozenset[str], Labels] = {}


def labels_of(labels: frozenset[str]) -> Labels:
    """The (cached) index of a label set: identities repeat across connections."""
    hit = _LABELS.get(labels)
    if hit is None:
        if len(_LABELS) > 100_000:
            _LABELS.clear()
        hit = _LABELS[labels] = Labels(labels)
    return hit


def requirement_matches(req: Requirement, labels: Labels) -> bool:
    """Kubernetes label selector semantics on Cilium labels (keys carry a source)."""
    values = labels.values(req.source, req.key)
    if req.op == "In":
        return any(v in req.values for v in values)
    if req.op == "NotIn":
        return not any(v in req.values for v in values)
    if req.op == "Exists":
        return bool(values)
    return not values  # DoesNotExist


def selector_matches(sel: Selector, labels: Labels) -> bool:
    """All requirements hold (an empty selector selects every identity, reserved ones included)."""
    return all(requirement_matches(r, labels) for r in sel.requirements)


def selector(match_labels: dict, expressions: list[tuple[str, str, list[str]]]) -> Selector:
    """A Selector from matchLabels and (key, operator, values) expressions (keys with sources)."""
    reqs: list[Requirement] = []
    texts: list[str] = []
    for key, value in match_labels.items():
        source, k = split_key(str(key))
        reqs.append(Requirement(source, k, "In", frozenset({str(value)})))
        texts.append(f"{key}={value}")
    for key, op, values in expressions:
        source, k = split_key(str(key))
        reqs.append(Requirement(source, k, op, frozenset(map(str, values))))
        texts.append(f"{key} {op}{' ' + ','.join(sorted(map(str, values))) if values else ''}")
    return Selector(tuple(reqs), "{" + ", ".join(texts) + "}")


def with_requirement(sel: Selector, req: Requirement, text: str) -> Selector:
    """sel plus one requirement (the namespace Cilium adds to selectors)."""
    inner = sel.text[1:-1]
    return Selector((*sel.requirements, req), "{" + ", ".join(p for p in (inner, text) if p) + "}")


def has_key(sel: Selector, source: str, key: str) -> bool:
    return any(r.key == key and r.source in (source, "any") for r in sel.requirements)


# ------------------------------------------------------------------ entities (pkg/policy/api/entity.go)

ENTITIES = frozenset(
    {
        "all",
        "world",
        "world-ipv4",
        "world-ipv6",
        "cluster",
        "host",
        "init",
        "ingress",
        "unmanaged",
        "remote-node",
        "health",
        "none",
        "kube-apiserver",
    }
)
_ENTITY_RESERVED = {
    "world": WORLD_LABELS,
    "world-ipv4": frozenset({"reserved:world-ipv4"}),
    "world-ipv6": frozenset({"reserved:world-ipv6"}),
    "host": frozenset({"reserved:host"}),
    "init": frozenset({"reserved:init"}),
    "ingress": frozenset({"reserved:ingress"}),
    "unmanaged": frozenset({"reserved:unmanaged"}),
    "remote-node": frozenset({"reserved:remote-node"}),
    "health": frozenset({"reserved:health"}),
    "kube-apiserver": frozenset({"reserved:kube-apiserver"}),
    "none": frozenset(),
}
# InitEntities: cluster = host, remote-node, init, ingress, health, unmanaged, kube-apiserver
# and every endpoint labelled with the local cluster's name
_CLUSTER_RESERVED = frozenset().union(
    *(_ENTITY_RESERVED[e] for e in ("host", "remote-node", "init", "ingress", "health"))
) | {"reserved:unmanaged", "reserved:kube-apiserver"}


def entity_matches(entity: str, labels: Labels, local_cluster: str) -> bool:
    """Whether an identity with these labels is the entity (local_cluster: the subject's cluster)."""
    if entity == "all":
        return True
    if entity == "cluster":
        if labels.raw & _CLUSTER_RESERVED:
            return True
        return local_cluster in labels.values("k8s", CLUSTER_KEY)
    return bool(labels.raw & _ENTITY_RESERVED[entity])


# ------------------------------------------------------------------ CIDRs


@lru_cache(maxsize=4096)
def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR (host bits allowed, as net.ParseCIDR) or a bare IP as /32 or /128."""
    if "/" not in text:
        return ipaddress.ip_network(ipaddress.ip_address(text))
    return ipaddress.ip_network(text, strict=False)


@lru_cache(maxsize=65536)
def address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """net.ParseIP (IPv4-mapped IPv6 as IPv4), as Hubble's IP filters read addresses."""
    return _go_ip(text)


def cidr_matches(cidr: str, excepts: Iterable[str], ip: str | None) -> bool:
    """ip in cidr and in none of its exceptions."""
    addr = address(ip or "")
    if addr is None:
        return False
    net = network(cidr)
    if addr.version != net.version or addr not in net:
        return False
    return not any(addr in network(e) for e in excepts if network(e).version == addr.version)


# ------------------------------------------------------------------ DNS names and patterns


def fqdn(name: str) -> str:
    """Lower case with one trailing dot (dns.FQDN)."""
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


_DNS_CHARS = "[-a-zA-Z0-9_]"


@lru_cache(maxsize=4096)
def dns_pattern_regex(pattern: str) -> re.Pattern[str]:
    """Cilium's matchPattern as an anchored regex (pkg/fqdn/matchpattern ToAnchoredRegexp):
    '*' alone matches every name; '*' in a label is 0+ DNS characters but never '.'; a leading
    '**.' matches one or more whole labels."""
    p = pattern.strip().lower()
    if p and set(p.rstrip(".")) == {"*"}:
        return re.compile(rf"(^({_DNS_CHARS}+[.])+$)|(^[.]$)")
    p = fqdn(p)
    out, i = [], 0
    stars = len(p) - len(p.lstrip("*"))
    if stars >= 2 and p[stars : stars + 1] == ".":
        out.append(rf"({_DNS_CHARS}+([.]{_DNS_CHARS}+){{0,}})[.]")
        i = stars + 1
    while i < len(p):
        c = p[i]
        if c == ".":
            out.append("[.]")
        elif c == "*":
            while i + 1 < len(p) and p[i + 1] == "*":
                i += 1
            out.append(_DNS_CHARS + "*")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("^" + "".join(out) + "$")


def dns_matches(name: str, match_name: str = "", match_pattern: str = "") -> bool:
    """A DNS name against matchName (exact, case-insensitive) or matchPattern."""
    if match_name:
        return fqdn(name) == fqdn(match_name)
    return dns_pattern_regex(match_pattern).match(fqdn(name)) is not None


# ------------------------------------------------------------------ RE2 (HTTP rules)


class RE2:
    """RE2 full matches, as Envoy applies a rule's method/path/host (HeaderMatcher safe_regex:
    the whole value must match), answered by DuckDB's RE2 and cached; `prefetch` answers many
    pairs in one query."""

    def __init__(self) -> None:
        self._con = duckdb.connect(":memory:")
        self._cache: dict[tuple[str, str], bool] = {}

    def error(self, pattern: str) -> str | None:
        """None if RE2 compiles pattern, else its message."""
        try:
            self._con.execute(f"SELECT regexp_full_match('', {quote(pattern)})").fetchall()
        except (duckdb.Error, ValueError) as exc:  # ValueError: a NUL, which SQL cannot hold
            return first_line(exc)
        return None

    def prefetch(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Answer every (pattern, text) pair at once."""
        todo = sorted({p for p in pairs if p not in self._cache})
        if not todo:
            return
        import pyarrow as pa

        table = pa.table({"p": [p for p, _ in todo], "t": [t for _, t in todo]})
        self._con.register("re2_pairs", table)
        try:
            rows = self._con.execute(
                "SELECT p, t, regexp_full_match(t, p) FROM re2_pairs"
            ).fetchall()
        finally:
            self._con.unregister("re2_pairs")
        self._cache.update({(p, t): bool(m) for p, t, m in rows})

    def full_match(self, pattern: str, text: str) -> bool:
        key = (pattern, text)
        hit = self._cache.get(key)
        if hit is None:
            try:
                sql = f"SELECT regexp_full_match({quote(text)}, {quote(pattern)})"
            except ValueError:  # a NUL in the request: no regex of a rule matches it
                hit = self._cache[key] = False
            else:
                hit = self._cache[key] = bool(self._con.execute(sql).fetchone()[0])
        return hit

    def close(self) -> None:
        self._con.close()
