"""`flowpipe policy whatif`: what a policy set would decide for every stored connection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

import duckdb

from flowpipe.common.sql import datetime_ns
from flowpipe.common.text import first_line
from flowpipe.common.times import parse_time
from flowpipe.errors import StoreError
from flowpipe.policy import connections, loader, parse
from flowpipe.policy import selectors as sel
from flowpipe.policy.connections import Group
from flowpipe.policy.evaluate import ALLOWED, DENIED, UNKNOWN, Evaluator, Peer, Request, Verdict
from flowpipe.policy.model import EGRESS, INGRESS, Policy, Unsupported
from flowpipe.rules.sandbox import window_files
from flowpipe.store.layout import EVENTS, FLOWS, Store, check_cluster
from flowpipe.views import catalog

ALLOWED_VERDICTS = ("FORWARDED", "REDIRECTED", "AUDIT")
# what each change is called, in report order
CHANGES = ("denied", "allowed", "unknown", "same")


@dataclass
class Decision:
    """One connection at one enforcement point: what the flows show, what the policies decide."""

    cluster: str
    direction: str  # the enforcement point: EGRESS of src, INGRESS of dst
    src: Peer
    dst: Peer
    port: int | None
    protocol: str
    request: Request | None
    flows: int  # flows of the connection stored in this direction
    first: int | None  # ns
    last: int | None
    observed: str | None  # verdict stored in this direction (None: not seen here)
    decided: bool  # observed comes from a policy decision (verdict, policy drop, L7 record)
    verdict: Verdict
    group: Group | None = None  # the stored flows in this direction
    shown: Group | None = None  # the group whose example flow is shown (this one, else another)
    seen_allowed: bool = False  # the connection was allowed in some direction

    @property
    def example(self) -> dict:
        """The example flow (a row of the flows view), once fetched (WhatIfReport.examples)."""
        return self.shown.example if self.shown is not None else {}

    @property
    def observed_policies(self) -> tuple[str, ...] | None:
        """The policy names the latest stored policy verdict carries (None: no verdict here, or
        one without names: Hubble before policy correlation)."""
        if self.group is None or self.request is not None:
            return None
        return self.group.policy_names or None

    @property
    def other_policies(self) -> bool:
        """Same verdict, but other policies would decide it than the stored verdict names."""
        names = self.observed_policies
        return (
            self.change == "same"
            and self.verdict.verdict == self.observed
            and names is not None
            and names != tuple(sorted(self.verdict.policies))
            and self.observed != "DROPPED"
        )

    @property
    def change(self) -> str:
        """denied: observed allowed, would be denied; allowed: observed denied, would be allowed."""
        if self.verdict.predicted == UNKNOWN:
            return "unknown"
        allowed_now = self.observed in ALLOWED_VERDICTS or (
            self.observed is None and self.seen_allowed
        )
        if self.verdict.predicted == DENIED and allowed_now:
            return "denied"
        if self.verdict.predicted == ALLOWED and self.observed == "DROPPED" and self.decided:
            return "allowed"
        return "same"

    @property
    def l7(self) -> str | None:
        return self.request.text() if self.request else None

    def where(self) -> str:
        """'shop/frontend -> shop/backend:80/TCP GET /get'."""
        port = f":{self.port}" if self.port is not None else ""
        out = f"{self.src.name} -> {self.dst.name}{port}/{self.protocol or '?'}"
        return out + (f" {self.l7}" if self.l7 else "")


@dataclass
class WhatIfReport:
    """Every decision, plus what the policies could not say."""

    files: list[str]
    policies: list[Policy]
    decisions: list[Decision]
    clusters: list[str]
    since: datetime | None
    until: datetime | None
    skipped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def unsupported(self) -> list[Unsupported]:
        return [u for p in self.policies for u in p.unsupported]

    def by_change(self, change: str, cluster: str | None = None) -> list[Decision]:
        return [
            d
            for d in self.decisions
            if d.change == change and (cluster is None or d.cluster == cluster)
        ]

    def would_deny(self) -> bool:
        """Something observed as allowed would be denied."""
        return any(d.change == "denied" for d in self.decisions)


def run_whatif(
    store: Store,
    paths: Sequence[str],
    *,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    clusters: Sequence[str] | None = None,
    stream: TextIO | None = None,
    memory_limit: str | None = None,
    examples: int = 20,
) -> WhatIfReport:
    """Load the policies of paths and decide every distinct connection stored in the window;
    examples: example flows fetched for the first that many of each cluster's lists."""
    since_dt = parse_time(since, "--since") if since is not None else None
    until_dt = parse_time(until, "--until") if until is not None else None
    for c in clusters or ():
        check_cluster(c)
    files = loader.policy_files(paths)
    re2 = sel.RE2()
    try:
        docs = [d for f in files for d in loader.read_documents(f, stream)]
        parsed = parse.parse(docs, re2)
        evaluator = Evaluator(parsed.policies, re2)
        names = list(dict.fromkeys(clusters or [])) or store.clusters()
        if not names:
            raise StoreError(f"store {store.url} has no clusters yet: run collect or import first")
        headers = sorted(
            {
                n
                for r in evaluator.rules
                for pr in r.peer_rules
                for pt in pr.ports or ()
                for h in pt.http or ()
                for n, _ in h.headers
            }
        )
        host = any(
            h.host
            for r in evaluator.rules
            for pr in r.peer_rules
            for pt in pr.ports or ()
            for h in pt.http or ()
        )
        with store.read_lock():
            con = open_views(store, names, since_dt, until_dt, memory_limit=memory_limit)
            try:
                scan = scan_store(
                    store,
                    con,
                    clusters=names,
                    since=since_dt,
                    until=until_dt,
                    host=host,
                    headers=headers,
                )
                re2.prefetch(_regex_pairs(evaluator, scan.groups))
                decisions = decide_all(evaluator, scan)
                scan.examples(_shown(decisions, examples))
            finally:
                con.close()
    finally:
        re2.close()
    report = WhatIfReport(
        files, parsed.policies, decisions, names, since_dt, until_dt, dict(parsed.skipped)
    )
    report.notes = _notes(report, evaluator, scan.groups)
    return report


def open_views(
    store: Store,
    clusters: Sequence[str],
    since: datetime | None,
    until: datetime | None,
    *,
    memory_limit: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the store's views over the clusters' files of the window only
    (as `flowpipe check` reads them: files of one schema are read without union_by_name)."""
    since_ns = datetime_ns(since) if since else None
    until_ns = datetime_ns(until) if until else None
    files = {
        kind: list(
            dict.fromkeys(
                f for c in clusters for f in window_files(store, kind, c, since_ns, until_ns)
            )
        )
        for kind in (FLOWS, EVENTS)
    }
    same = frozenset(
        kind for kind, paths in files.items() if store.local and catalog.same_schema(paths)
    )
    con = duckdb.connect(":memory:", config={"memory_limit": memory_limit} if memory_limit else {})
    try:
        # the same files are read by several queries: their footers are parsed once
        con.execute("SET parquet_metadata_cache = true")
        catalog.register(con, store, files)
        for stmt in catalog.view_sql(store, files=files, same_schema=same):
            con.execute(stmt)
    except duckdb.Error as exc:
        con.close()
        raise StoreError(f"store {store.url}: cannot read the flows: {first_line(exc)}") from exc
    return con


def scan_store(store: Store, con, **kw) -> connections.Scan:
    """The store's connections; a DuckDB failure is a store problem named in one line."""
    try:
        return connections.Scan(con, **kw)
    except duckdb.Error as exc:
        raise StoreError(f"store {store.url}: cannot read the flows: {first_line(exc)}") from exc


def _shown(decisions: list[Decision], per_list: int) -> list[Group]:
    """The groups whose example flows the report shows: the first per_list of each cluster's
    changes, unknowns and decisions by other policies."""
    taken: dict[tuple[str, str], int] = {}
    out = []
    for d in decisions:
        kind = "other" if d.other_policies else d.change
        if kind == "same" or d.shown is None:
            continue
        n = taken.get((d.cluster, kind), 0)
        if n < per_list:
            taken[(d.cluster, kind)] = n + 1
            out.append(d.shown)
    return out


def _regex_pairs(evaluator: Evaluator, groups: list[Group], limit: int = 1_000_000):
    """Every (HTTP rule regex, request value) pair the decisions may ask RE2 about."""
    fields = {"method": set(), "path": set(), "host": set()}
    for r in evaluator.rules:
        for pr in r.peer_rules:
            for pt in pr.ports or ():
                for h in pt.http or ():
                    for name in fields:
                        if getattr(h, name):
                            fields[name].add(getattr(h, name))
    values = {"method": set(), "path": set(), "host": set()}
    for g in groups:
        if g.get("k_l7") == "HTTP":
            values["method"].add(g.get("k_method") or "")
            values["path"].add(g.get("k_path") or "/")
            values["host"].add(g.get("k_host") or "")
    if sum(len(fields[f]) * len(values[f]) for f in fields) > limit:
        return []  # answered one by one instead
    return [(p, v) for f in fields for p in fields[f] for v in values[f]]


# ------------------------------------------------------------------ connections -> decisions


def _peer(row: dict, side: str, group: Group) -> Peer:
    """A connection's source or destination from its identity's endpoint row and the key."""
    labels = frozenset(row.get("labels") or ())
    identity = group.get(f"k_{side}_id") or 0
    ns = row.get("namespace") or ""
    ip = group.get(f"k_{side}_ip") or ""
    names = tuple(group.get("k_dst_names") or ()) if side == "dst" else ()
    probe = Peer(identity, labels, ns, ip, names)
    ns = ns or probe.index.get(sel.NAMESPACE_KEY) or ""
    return Peer(identity, labels, ns, ip, names, _display(probe, row, ns))


def _display(peer: Peer, row: dict, ns: str) -> str:
    if peer.is_world or peer.identity == 0:
        what = ", ".join(peer.names) or peer.ip or "?"
        if peer.names and peer.ip:
            what += f" ({peer.ip})"
        return what if peer.identity == 0 else f"world {what}"
    for reserved, name in ((1, "host"), (6, "remote-node"), (7, "kube-apiserver"), (4, "health")):
        if peer.identity == reserved:
            return name
    idx = peer.index
    # labels first: the same on every flow of the identity (a workload name is only on some)
    keys = ("app.kubernetes.io/name", "app", "k8s-app", "name")
    workload = next((v for v in map(idx.get, keys) if v), None)
    workload = workload or row.get("workload") or row.get("pod") or f"ID:{peer.identity}"
    return f"{ns}/{workload}" if ns else str(workload)


def _request(group: Group) -> Request | None:
    l7 = group.get("k_l7")
    if l7 == "DNS":
        return Request("DNS", query=group.get("k_query") or "")
    if l7 == "HTTP":
        raw = group.get("k_headers")
        headers = None
        if raw is not None:
            headers = tuple(tuple(h.split(": ", 1)) for h in raw if ": " in h)
        return Request(
            "HTTP",
            method=group.get("k_method") or "",
            path=group.get("k_path") or "/",
            host=group.get("k_host") or "",
            headers=headers,
        )
    return None


@dataclass
class Connection:
    """One connection: its groups per stored direction, its peers and L7 request."""

    cluster: str
    src: Peer
    dst: Peer
    port: int | None
    protocol: str
    request: Request | None
    groups: dict[str, Group]  # stored direction -> group

    @property
    def main(self) -> Group:
        return max(self.groups.values(), key=lambda g: (g.decisive, g.flows))

    def allowed(self) -> bool:
        """Observed allowed wherever it was seen (no stored direction denied it)."""
        seen = [g.observed for g in self.groups.values() if g.observed]
        return bool(seen) and all(v in ALLOWED_VERDICTS for v in seen)


def connections_of(scan: connections.Scan) -> list[Connection]:
    """Groups of the same connection (every stored direction) together, with their peers."""
    by_conn: dict[tuple, dict[str, Group]] = {}
    for g in scan.groups:
        conn = g.key[:1] + g.key[2:]  # everything but the stored direction
        by_conn.setdefault(conn, {})[g.get("k_dir")] = g
    out = []
    peers: dict[tuple, Peer] = {}  # the same identity (and IP, names) is one Peer

    def peer(cluster: str, side: str, g: Group) -> Peer:
        ident = (cluster, side, g.get(f"k_{side}_id"))
        k = (*ident, g.get(f"k_{side}_ip"), g.get("k_dst_names") if side == "dst" else None)
        hit = peers.get(k)
        if hit is None:
            hit = peers[k] = _peer(scan.endpoints.get(ident, {}), side, g)
        return hit

    for per_dir in by_conn.values():
        main = max(per_dir.values(), key=lambda g: (g.decisive, g.flows))
        cluster = main.get("k_cluster")
        out.append(
            Connection(
                cluster=cluster,
                src=peer(cluster, "src", main),
                dst=peer(cluster, "dst", main),
                port=main.get("k_port"),
                protocol=main.get("k_proto"),
                request=_request(main),
                groups=per_dir,
            )
        )
    return out


def decide_all(evaluator: Evaluator, scan: connections.Scan) -> list[Decision]:
    """One decision per connection and enforcement point the connection passes."""
    groups = scan.groups
    dns_visible = {
        (g.get("k_cluster"), g.get("k_src_id")) for g in groups if g.get("k_l7") == "DNS"
    }
    conns = connections_of(scan)
    # L4 connections whose requests the flows show (each decided as its own connection)
    with_requests = {
        (c.cluster, c.src.identity, c.dst.identity, c.port, c.protocol, d)
        for c in conns
        if c.request is not None
        for d in c.groups
    }
    out: list[Decision] = []
    for conn in conns:
        src, dst, cluster, per_dir = conn.src, conn.dst, conn.cluster, conn.groups
        main = conn.main
        seen_allowed = any(g.observed in ALLOWED_VERDICTS for g in per_dir.values())
        points = []
        # an L7 request is decided where a proxy saw it; both sides' L4 decisions are the
        # L4 connection's
        here = set(per_dir) if conn.request is not None else {EGRESS, INGRESS}
        hosts = bool(evaluator.host_policies)
        for direction, subject, peer in ((EGRESS, src, dst), (INGRESS, dst, src)):
            enforced = subject.is_pod or (subject.is_host and hosts)
            # a pod of another cluster (clustermesh) is enforced there, unless seen here
            local = direction in per_dir or subject.cluster in ("", cluster)
            if direction in here and enforced and local:
                points.append((direction, subject, peer))
        for direction, subject, peer in points:
            g = per_dir.get(direction)
            verdict = evaluator.decide(
                direction,
                subject,
                peer,
                conn.port,
                conn.protocol,
                conn.request,
                dns_visible=(cluster, subject.identity) in dns_visible,
                local_cluster=cluster,
            )
            if verdict.pending and (
                (cluster, src.identity, dst.identity, conn.port, conn.protocol, direction)
                in with_requests
            ):
                verdict.pending = ""
            out.append(
                Decision(
                    cluster=cluster,
                    direction=direction,
                    src=src,
                    dst=dst,
                    port=conn.port,
                    protocol=conn.protocol,
                    request=conn.request,
                    flows=g.flows if g is not None else 0,
                    first=(g or main).first,
                    last=(g or main).last,
                    observed=g.observed if g is not None else None,
                    decided=bool(g is not None and g.decisive),
                    verdict=verdict,
                    group=g,
                    shown=g or main,
                    seen_allowed=seen_allowed,
                )
            )
    out.sort(key=_order)
    return out


def _order(d: Decision) -> tuple:
    return (
        d.cluster,
        CHANGES.index(d.change),
        d.src.name,
        d.dst.name,
        d.port if d.port is not None else -1,
        d.protocol,
        d.l7 or "",
        d.direction,
    )


# ------------------------------------------------------------------ notes


def _notes(report: WhatIfReport, evaluator: Evaluator, groups: list[Group]) -> list[str]:
    out = []
    for p in report.policies:
        out += [f"{p.ref} ({p.where}): {n}" for n in p.notes]
    if report.skipped:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(report.skipped.items()))
        out.append(f"skipped documents that are not network policies: {kinds}")
    if not report.policies:
        out.append("no CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy found")
    subjects = {}
    for d in report.decisions:
        subject = d.src if d.direction == EGRESS else d.dst
        subjects[subject.labels] = subject
    for p in report.policies:
        pod_rules = [r for r in p.rules if r.subject is not None]
        if pod_rules and not any(
            any(sel.selector_matches(r.subject, s.index) for s in subjects.values())
            for r in pod_rules
        ):
            out.append(f"{p.ref} ({p.where}): selects none of the endpoints in the flows")
    seen = {g.get("k_cluster") for g in groups}
    for cluster in report.clusters:
        if cluster not in seen:
            out.append(f"{cluster}: no flows in the window, nothing to decide")
    return out


def decision_dict(d: Decision) -> dict[str, Any]:
    """One decision with the fields of `--format json` (stable keys)."""
    from flowpipe.codec import hubble

    def stamp(ns: int | None) -> str | None:
        return hubble.rfc3339(*divmod(ns, 1_000_000_000)) if ns is not None else None

    return {
        "cluster": d.cluster,
        "direction": d.direction,
        "src": d.src.name,
        "dst": d.dst.name,
        "port": d.port,
        "protocol": d.protocol,
        "l7": d.l7,
        "flows": d.flows,
        "observed": d.observed,
        "predicted": d.verdict.predicted,
        "policies": list(d.verdict.policies),
        "verdict": d.verdict.verdict,
        "match": d.verdict.match,
        "change": d.change,
        "observed_policies": list(d.observed_policies) if d.observed_policies is not None else None,
        "reason": d.verdict.reason,
        "pending": d.verdict.pending or None,
        "unknown": list(d.verdict.unknown),
        "first": stamp(d.first),
        "last": stamp(d.last),
    }
