"""Distinct connections of the stored flows, grouped in SQL over the `flows` view.

A connection is (cluster, direction as stored, source, destination, port, protocol, L7
request); source and destination are identities (and, outside the cluster, IPs and names).
Replies and L7 responses are left out: "replies of allowed connections are not subject to the
other side's policy". Example flows are fetched afterwards, for the connections shown.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb

from flowpipe.common.sql import quote, timestamp_literal

# flows from outside the cluster keep their IP (CIDR rules) and names (toFQDNs); identity 0 is
# an unknown peer: its IP is kept too
_WORLD = "({s}_identity IN (2, 9, 10) OR {s}_identity >= 16777216 OR coalesce({s}_identity, 0) = 0)"
_PATH = r"regexp_extract(http_url, '^(?:[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*)?([^#]*)', 1)"
_HOST = r"regexp_extract(http_url, '^[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#]*)', 1)"

KEYS: list[tuple[str, str]] = [
    ("k_cluster", "cluster"),
    ("k_dir", "coalesce(traffic_direction, 'TRAFFIC_DIRECTION_UNKNOWN')"),
    ("k_src_id", "coalesce(src_identity, 0)"),
    ("k_dst_id", "coalesce(dst_identity, 0)"),
    ("k_src_ip", f"CASE WHEN {_WORLD.format(s='src')} THEN src_ip END"),
    ("k_dst_ip", f"CASE WHEN {_WORLD.format(s='dst')} THEN dst_ip END"),
    ("k_dst_names", f"CASE WHEN {_WORLD.format(s='dst')} THEN list_sort(dst_names) END"),
    ("k_port", "CASE WHEN l4_protocol IN ('TCP', 'UDP', 'SCTP') THEN dst_port END"),
    ("k_proto", "coalesce(l4_protocol, '')"),
    ("k_l7", "CASE WHEN event_type = 129 THEN l7_protocol END"),
    ("k_method", "CASE WHEN event_type = 129 AND l7_protocol = 'HTTP' THEN http_method END"),
    ("k_path", f"CASE WHEN event_type = 129 AND l7_protocol = 'HTTP' THEN {_PATH} END"),
    ("k_query", "CASE WHEN event_type = 129 AND l7_protocol = 'DNS' THEN lower(dns_query) END"),
]
# only when a policy has HTTP host or header rules: they split connections further
HOST_KEY = ("k_host", f"CASE WHEN event_type = 129 AND l7_protocol = 'HTTP' THEN {_HOST} END")


def header_key(names: Sequence[str]) -> tuple[str, str]:
    """The request headers the policies name, as a sorted list of 'name: value'."""
    quoted = ", ".join(quote(n) for n in sorted(set(names)))
    return (
        "k_headers",
        "CASE WHEN event_type = 129 AND l7_protocol = 'HTTP' THEN CASE WHEN len(http_headers) = 0 "
        "THEN NULL ELSE list_sort(list_transform(list_filter(http_headers, lambda h: "
        f"lower(h.key) IN ({quoted})), lambda h: lower(h.key) || ': ' || h.value)) END END",
    )


# Flows that show a policy decision: policy verdicts, policy drops, L7 records.
_DECISIVE = (
    "(event_type IN (5, 129) OR (event_type = 1 AND drop_reason_desc IN ('POLICY_DENIED', "
    "'POLICY_DENY')))"
)
_DENIED = f"({_DECISIVE} AND verdict IN ('DROPPED', 'ERROR'))"
# Requests only: replies out, L7 responses out, and traces whose reply flag is unknown (they
# may be replies; they show no policy decision anyway).
_BASE = (
    "is_reply IS NOT TRUE AND event_type IN (1, 4, 5, 129) AND NOT (event_type = 4 AND "
    "is_reply IS NULL) AND (event_type <> 129 OR l7_type IS DISTINCT FROM 'RESPONSE')"
)
# The scan groups by the view's columns as they are, each computed only for the rows that need
# it (the enum names of verdicts and drop reasons are long CASEs); the keys are then computed
# over the far fewer groups.
_INNER = [
    ("cluster", "cluster"),
    ("traffic_direction", "traffic_direction"),
    ("src_identity", "src_identity"),
    ("dst_identity", "dst_identity"),
    ("src_ip", f"CASE WHEN {_WORLD.format(s='src')} THEN src_ip END"),
    ("dst_ip", f"CASE WHEN {_WORLD.format(s='dst')} THEN dst_ip END"),
    ("dst_names", f"CASE WHEN {_WORLD.format(s='dst')} THEN dst_names END"),
    ("dst_port", "dst_port"),
    ("l4_protocol", "l4_protocol"),
    ("event_type", "event_type"),
    ("verdict", "CASE WHEN event_type <> 4 THEN verdict END"),
    ("drop_reason_desc", "CASE WHEN event_type = 1 THEN drop_reason_desc END"),
    ("to_proxy", "CASE WHEN event_type = 4 THEN trace_observation_point = 'TO_PROXY' END"),
    ("l7_protocol", "CASE WHEN event_type = 129 THEN l7_protocol END"),
    ("http_method", "CASE WHEN event_type = 129 THEN http_method END"),
    ("http_url", "CASE WHEN event_type = 129 THEN http_url END"),
    ("dns_query", "CASE WHEN event_type = 129 THEN dns_query END"),
]
# what the latest policy verdict of a group names (Hubble fills one of the four lists): read
# at those verdicts' times only (decoding the policy lists of every flow costs seconds); other
# events of the group at the same instant give NULL, whatever order the store keeps rows in
_VERDICT_COLUMNS = (
    "CASE WHEN event_type = 5 THEN"
    " list_concat(ingress_allowed_by, egress_allowed_by, ingress_denied_by, egress_denied_by) END",
    "CASE WHEN event_type = 5 THEN policy_match END",
)
_ENDPOINT_COLUMNS = ("labels", "namespace", "pod", "workload")
# what codec.hubble.compact_line_row prints (reading every column of those rows costs seconds)
EXAMPLE_COLUMNS = (
    "time",
    "event_type",
    "event_subtype",
    "l7_type",
    "l7_protocol",
    "dns_observation_source",
    "policy_match",
    "policy_match_type",
    "traffic_direction",
    "is_reply",
    "verdict",
    "summary",
    "auth_type",
    "ingress_allowed_by",
    "egress_allowed_by",
    "ingress_denied_by",
    "egress_denied_by",
    *(
        f"{side}_{c}"
        for side in ("src", "dst")
        for c in (
            "ip",
            "port",
            "identity",
            "namespace",
            "pod",
            "service",
            "service_namespace",
            "names",
        )
    ),
)


@dataclass
class Group:
    """The flows of one connection as stored in one direction."""

    key: tuple
    flows: int
    first: int  # ns since the epoch
    last: int
    decisive: int  # flows that show a policy decision
    denied: int  # of those, denials
    verdict: str | None  # of the latest decisive flow
    proxied: bool  # a trace went to the proxy
    example_at: int  # ns: time of the example flow (the latest decisive one, else the latest)
    verdict_at: int | None = None  # ns: time of the latest policy verdict
    policy_names: tuple[str, ...] | None = None  # named by the latest policy verdict
    policy_match: str | None = None  # its match type
    example: dict = field(default_factory=dict)  # that flow's row (see Scan.examples)

    @property
    def observed(self) -> str | None:
        """The verdict stored: that of the latest decision, else what traces show."""
        if self.verdict:
            return self.verdict
        return ("REDIRECTED" if self.proxied else "FORWARDED") if self.flows else None

    def get(self, name: str) -> Any:
        return self.key[_INDEX[name]]


_INDEX = {name: i for i, (name, _) in enumerate([*KEYS, HOST_KEY, ("k_headers", "")])}


class Scan:
    """The distinct connections of a store's flows in a window, and where to read more of them.

    endpoints: (cluster, 'src' or 'dst', identity) -> labels, namespace, pod and workload of one
    flow of that identity (an identity's labels are the same on every flow of a cluster)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        *,
        clusters: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        host: bool = False,
        headers: Sequence[str] = (),
    ):
        self.con = con
        self.keys = list(KEYS)
        self.keys.append(HOST_KEY if host else ("k_host", "NULL"))
        self.keys.append(header_key(headers) if headers else ("k_headers", "NULL"))
        self.inner = list(_INNER)
        if headers:
            self.inner.append(("http_headers", "CASE WHEN event_type = 129 THEN http_headers END"))
        self.where, self.params = _filters(clusters, since, until)
        self.groups = self._group()
        self.endpoints: dict[tuple[str, str, int], dict] = {}
        self._details()

    def _group(self) -> list[Group]:
        inner = ",\n    ".join(f"{expr} AS {name}" for name, expr in self.inner)
        cols = ",\n  ".join(f"{expr} AS {name}" for name, expr in self.keys)
        sql = f"""
WITH g AS (
  SELECT
    {inner},
    count(*) AS n,
    min(time) AS first,
    max(time) AS last,
    max(time) FILTER (WHERE event_type = 5) AS verdict_last
  FROM flows
  WHERE {self.where}
  GROUP BY ALL
)
SELECT
  {cols},
  sum(n) AS flows,
  epoch_ns(min(first)) AS first_seen,
  epoch_ns(max(last)) AS last_seen,
  coalesce(sum(n) FILTER (WHERE {_DECISIVE}), 0) AS decisive,
  coalesce(sum(n) FILTER (WHERE {_DENIED}), 0) AS denied,
  arg_max(verdict, last) FILTER (WHERE {_DECISIVE}) AS verdict,
  coalesce(bool_or(to_proxy), false) AS proxied,
  epoch_ns(coalesce(max(last) FILTER (WHERE {_DECISIVE}), max(last))) AS example_at,
  epoch_ns(max(verdict_last)) AS verdict_at
FROM g
GROUP BY ALL"""
        rows = self.con.execute(sql, self.params).fetchall()
        n = len(self.keys)
        groups = [Group(_hashable(r[:n]), *r[n : n + 9]) for r in rows]
        groups.sort(key=lambda g: tuple("" if v is None else str(v) for v in g.key))
        return groups

    def _details(self) -> None:
        """In one read of the rows at chosen times: each identity's endpoint columns (at its
        latest flow) and the names and match type of each group's latest policy verdict."""
        latest: dict[tuple[str, str, int], int] = {}
        for g in self.groups:
            for side in ("src", "dst"):
                k = (g.get("k_cluster"), side, g.get(f"k_{side}_id"))
                latest[k] = max(latest.get(k, 0), g.last)
        verdicts = {g.key: g for g in self.groups if g.verdict_at is not None}
        width, n = len(_ENDPOINT_COLUMNS), len(self.keys)
        select = ", ".join(
            [
                "cluster",
                "coalesce(src_identity, 0)",
                "coalesce(dst_identity, 0)",
                *(f"{side}_{c}" for side in ("src", "dst") for c in _ENDPOINT_COLUMNS),
                *_VERDICT_COLUMNS,
                *(f"{expr} AS {name}" for name, expr in self.keys),
            ]
        )
        times = [*latest.values(), *(g.verdict_at for g in verdicts.values())]
        for at_ns, row in self._rows_at(times, select):
            for j, side in enumerate(("src", "dst")):
                k = (row[0], side, row[1 + j])
                if latest.get(k) == at_ns and k not in self.endpoints:
                    part = row[3 + j * width : 3 + (j + 1) * width]
                    self.endpoints[k] = dict(zip(_ENDPOINT_COLUMNS, part))
            g = verdicts.get(_hashable(row[-n:]))
            names, match = row[3 + 2 * width : 5 + 2 * width]
            if (
                g is not None
                and g.verdict_at == at_ns
                and names is not None
                and g.policy_names is None
            ):
                g.policy_match, g.policy_names = match, _names(names)

    def _rows_at(self, times: Iterable[int], select: str) -> Iterator[tuple[int, tuple]]:
        """(time in ns, row of select) of the window's request flows at the given times."""
        for chunk in _chunks(sorted(set(times))):
            at = ", ".join(timestamp_literal(t) for t in chunk)
            rel = self.con.execute(
                f"SELECT epoch_ns(time), {select} FROM flows WHERE {self.where} AND time IN ({at})",
                self.params,
            )
            for row in rel.fetchall():
                yield row[0], row[1:]

    def _at(self, wanted: dict[tuple, int], columns: str) -> dict[tuple, tuple]:
        """Rows at given times, by group key: wanted is key -> time (ns); columns are read. A
        decisive row wins over another event of the group at the same instant (rows have no
        order within a file)."""
        out: dict[tuple, tuple] = {}
        decisive: dict[tuple, bool] = {}
        n = len(self.keys)
        keys = ", ".join(f"{expr} AS {name}" for name, expr in self.keys)
        select = f"{columns}, coalesce({_DECISIVE}, false), {keys}"
        for at_ns, row in self._rows_at(wanted.values(), select):
            key = _hashable(row[-n:])
            mine = wanted.get(key) == at_ns and not decisive.get(key, False)
            if mine and (key not in out or row[-n - 1]):
                out[key], decisive[key] = row[: -n - 1], row[-n - 1]
        return out

    def examples(self, groups: Sequence[Group]) -> None:
        """Fill each group's example row (the flows view's columns a hubble line shows)."""
        todo = {g.key: g for g in groups if not g.example and g.example_at is not None}
        if not todo:
            return
        got = self._at({k: g.example_at for k, g in todo.items()}, ", ".join(EXAMPLE_COLUMNS))
        for key, row in got.items():
            todo[key].example = dict(zip(EXAMPLE_COLUMNS, row))


def _chunks(values: list, size: int = 5000):
    """IN lists of a bounded size."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _filters(
    clusters: Sequence[str] | None, since: datetime | None, until: datetime | None
) -> tuple[str, list]:
    conds, params = [_BASE], []
    if clusters:
        conds.append(f"cluster IN ({', '.join('?' for _ in clusters)})")
        params += list(clusters)
    if since is not None:
        conds += ["date >= ?::DATE", "time >= ?"]
        params += [since.date(), since]
    if until is not None:
        conds += ["date <= ?::DATE", "time <= ?"]
        params += [until.date(), until]
    return " AND ".join(conds), params


def _names(value: list | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(sorted(set(value)))


def _hashable(values: Sequence[Any]) -> tuple:
    return tuple(tuple(v) if isinstance(v, list) else v for v in values)
