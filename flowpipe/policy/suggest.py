"""`flowpipe policy suggest`: least-privilege CiliumNetworkPolicies from the allowed flows.

One policy per workload of the namespace and direction (<workload>-egress, <workload>-ingress),
selecting by workload labels; peers by their workload labels (and namespace), entities, DNS
names (toFQDNs, with a DNS rule to kube-dns so that the names are learnt) or IPs. A direction
without allowed traffic gets `[{}]`: default deny, nothing allowed. Output is deterministic, so a
second run over the same flows changes no byte.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from flowpipe.common.times import parse_time
from flowpipe.errors import ConfigError, FlowpipeError, StoreError
from flowpipe.policy import schema
from flowpipe.policy import selectors as sel
from flowpipe.policy.evaluate import Peer
from flowpipe.policy.model import EGRESS, INGRESS
from flowpipe.policy.whatif import Connection, connections_of, open_views, scan_store
from flowpipe.store.layout import Store, check_cluster

# identity labels that name a pod, a revision or Cilium's own metadata, not a workload
_NOT_WORKLOAD = (
    sel.NAMESPACE_KEY,
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
)
_NOT_WORKLOAD_PREFIXES = ("io.cilium.k8s.", "io.cilium.")
_ENTITY_OF = {
    1: "host",
    4: "health",
    5: "init",
    6: "remote-node",
    7: "kube-apiserver",
    8: "ingress",
}


@dataclass
class SuggestReport:
    """What was written where."""

    out: Path
    written: list[Path] = field(default_factory=list)  # new or changed files
    unchanged: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return sorted(self.written + self.unchanged)


def workload_labels(peer: Peer) -> dict[str, str]:
    """The k8s labels that select peer's workload (not its pod, revision or namespace)."""
    out = {}
    for label in sorted(peer.index.raw):
        source, key, value = sel.parse_label(label)
        if source != "k8s" or key in _NOT_WORKLOAD or key.startswith(_NOT_WORKLOAD_PREFIXES):
            continue
        out[key] = value
    return out


def _name(text: str) -> str:
    """A DNS-1123 name from a workload name."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:50].strip("-") or "workload"


@dataclass
class _Peer:
    """One peer of a workload's rules, and the ports and requests it was reached on."""

    field: str  # toEndpoints, toEntities, toFQDNs, toCIDR (from* for ingress)
    value: object
    ports: set[tuple[int, str]] = field(default_factory=set)
    dns: set[str] = field(default_factory=set)  # queries seen on this peer's DNS ports
    dns_ports: set[tuple[int, str]] = field(default_factory=set)
    http: dict[tuple[int, str], set[tuple[str, str]]] = field(default_factory=dict)

    def sort_key(self) -> str:
        return f"{self.field}:{json.dumps(self.value, sort_keys=True)}"


def _peer_of(peer: Peer, namespace: str, direction: str) -> tuple[str, object] | None:
    prefix = "to" if direction == EGRESS else "from"
    if peer.is_pod:
        labels = workload_labels(peer)
        if peer.namespace != namespace:
            labels[sel.NAMESPACE_KEY] = peer.namespace
        return f"{prefix}Endpoints", {"matchLabels": labels}
    if peer.identity in _ENTITY_OF:
        return f"{prefix}Entities", _ENTITY_OF[peer.identity]
    if peer.is_world:
        if peer.names and direction == EGRESS:
            return "toFQDNs", tuple(sorted({n.rstrip(".").lower() for n in peer.names}))
        if peer.ip:
            addr = sel.address(peer.ip)
            return f"{prefix}CIDR", f"{addr}/{addr.max_prefixlen}" if addr else None
    return None


def suggest(
    store: Store,
    namespace: str,
    out: str | os.PathLike[str],
    *,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    clusters: Sequence[str] | None = None,
    l7: bool = False,
) -> SuggestReport:
    """Write least-privilege policies for the workloads of namespace into out."""
    if not re.match(schema.DNS_1123_LABEL, namespace or ""):
        raise ConfigError(f"--namespace {namespace!r} is not a Kubernetes namespace name")
    since_dt = parse_time(since, "--since") if since is not None else None
    until_dt = parse_time(until, "--until") if until is not None else None
    for c in clusters or ():
        check_cluster(c)
    names = list(dict.fromkeys(clusters or [])) or store.clusters()
    if not names:
        raise StoreError(f"store {store.url} has no clusters yet: run collect or import first")
    with store.read_lock():
        con = open_views(store, names, since_dt, until_dt)
        try:
            scan = scan_store(store, con, clusters=names, since=since_dt, until=until_dt)
        finally:
            con.close()
    docs = build(connections_of(scan), namespace, l7=l7)
    if not docs:
        raise StoreError(
            f"no allowed flows of pods in namespace {namespace} in the window: nothing to suggest"
        )
    return write(docs, Path(out))


def build(conns: list[Connection], namespace: str, *, l7: bool = False) -> list[dict]:
    """The policy documents, sorted by name, each validated against the structural schema."""
    workloads: dict[tuple, dict] = {}  # selector labels -> {"name", "peers": {dir: {key: _Peer}}}
    for conn in conns:
        if not conn.allowed():  # from what was allowed, never from drops
            continue
        for direction, subject, peer in (
            (EGRESS, conn.src, conn.dst),
            (INGRESS, conn.dst, conn.src),
        ):
            if not subject.is_pod or subject.namespace != namespace:
                continue
            labels = workload_labels(subject)
            if not labels:
                continue
            key = tuple(sorted(labels.items()))
            w = workloads.setdefault(
                key,
                {
                    "labels": labels,
                    "name": subject.name.split("/", 1)[-1],
                    "peers": {EGRESS: {}, INGRESS: {}},
                },
            )
            if conn.request is not None and direction not in conn.groups:
                continue  # L7 rules go where a proxy saw the request
            found = _peer_of(peer, namespace, direction)
            if found is None or found[1] is None:
                continue
            p = w["peers"][direction].setdefault(
                json.dumps(found, sort_keys=True), _Peer(found[0], found[1])
            )
            if conn.port is None:
                continue
            port = (conn.port, conn.protocol)
            req = conn.request
            if req is None:
                p.ports.add(port)
            elif req.protocol == "DNS" and direction == EGRESS:
                p.dns.add(req.query)
                p.dns_ports.add(port)
            elif req.protocol == "HTTP" and l7:
                p.http.setdefault(port, set()).add((req.method, req.path))
    docs = []
    for w in workloads.values():
        for direction in (EGRESS, INGRESS):
            docs.append(_policy(w, direction, namespace))
    docs.sort(key=lambda d: d["metadata"]["name"])
    seen: set[str] = set()
    for d in docs:
        name = d["metadata"]["name"]
        if name in seen:
            raise FlowpipeError(f"two workloads of {namespace} would both be named {name}")
        seen.add(name)
        errors = schema.validate(d)
        if errors:
            raise FlowpipeError(f"suggested policy {name} breaks the CRD schema: {errors[0]}")
    return docs


def _is_dns(peer: _Peer, port: tuple[int, str]) -> bool:
    """A DNS port of the peer: DNS requests were seen there, or it is port 53 of kube-dns."""
    if port in peer.dns_ports:
        return True
    labels = peer.value.get("matchLabels", {}) if isinstance(peer.value, dict) else {}
    return port[0] == 53 and labels.get("k8s-app") == "kube-dns"


def _policy(w: dict, direction: str, namespace: str) -> dict:
    peers: dict[str, _Peer] = w["peers"][direction]
    rules = []
    for p in sorted(peers.values(), key=_Peer.sort_key):
        rules.append(_rule(p, direction))
    where = "egress" if direction == EGRESS else "ingress"
    if rules:
        description = (
            f"Least privilege for {namespace}/{w['name']} {where}: the peers, ports and requests "
            "allowed in the flows flowpipe stored."
        )
    else:
        rules = [{}]  # a rule that allows nothing: default deny at this direction
        description = (
            f"Least privilege for {namespace}/{w['name']} {where}: no {where} traffic was allowed "
            "in the flows flowpipe stored, so none is allowed (default deny)."
        )
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {
            "name": f"{_name(w['name'])}-{where}",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "flowpipe"},
        },
        "spec": {
            "description": description,
            "endpointSelector": {"matchLabels": dict(sorted(w["labels"].items()))},
            where: rules,
        },
    }


def _rule(p: _Peer, direction: str) -> dict:
    rule: dict = {}
    if p.field.endswith("Endpoints"):
        rule[p.field] = [{"matchLabels": dict(sorted(p.value["matchLabels"].items()))}]
    elif p.field.endswith("Entities"):
        rule[p.field] = [p.value]
    elif p.field == "toFQDNs":
        rule[p.field] = [{"matchName": n} for n in p.value]
    else:
        rule[p.field] = [p.value]
    ports = sorted(p.ports | p.dns_ports | set(p.http))
    to_ports = []
    dns_ports = [pt for pt in ports if _is_dns(p, pt)]
    if dns_ports and direction == EGRESS:
        # the DNS proxy sees the lookups (and learns the names toFQDNs rules need)
        names = sorted(p.dns)
        dns = [{"matchName": n} for n in names] or [{"matchPattern": "*"}]
        to_ports.append({"ports": [_port(pt) for pt in dns_ports], "rules": {"dns": dns}})
    for pt in ports:
        if pt in dns_ports and direction == EGRESS:
            continue
        entry: dict = {"ports": [_port(pt)]}
        if pt in p.http:
            entry["rules"] = {
                "http": [
                    {"method": m, "path": "^" + re.escape(path) + "$"}
                    for m, path in sorted(p.http[pt])
                ]
            }
        to_ports.append(entry)
    if to_ports:
        rule["toPorts"] = to_ports
    return rule


def _port(pt: tuple[int, str]) -> dict:
    return {"port": str(pt[0]), "protocol": pt[1]}


def dump(doc: dict) -> str:
    """The YAML text of one policy (stable: key order as built, no timestamps)."""
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=4096)


def write(docs: list[dict], out: Path) -> SuggestReport:
    """One file per policy (<name>.yaml), written atomically and only when it changed."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: {exc.strerror or exc}") from exc
    report = SuggestReport(out)
    for doc in docs:
        path = out / f"{doc['metadata']['name']}.yaml"
        text = dump(doc)
        try:
            if path.exists() and path.read_text(encoding="utf-8") == text:
                report.unchanged.append(path)
                continue
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
        report.written.append(path)
    ours = {p.name for p in report.files}
    stale = sorted(
        p.name
        for p in out.glob("*.yaml")
        if p.name not in ours and p.name.endswith(("-egress.yaml", "-ingress.yaml"))
    )
    if stale:
        report.notes.append(f"{out} also holds {', '.join(stale)}, not written by this run")
    return report
