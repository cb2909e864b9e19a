"""Distinct connections of the stored flows, grouped in SQL over the `flows` view.

A connection is (cluster, direction as stored, source, destination, port, protocol, L7
request); source and destination are identities (and, outside the cluster, IPs and names).
Replies and L7 responses are left out: "replies of allowed connections are not subject to the
other side's policy". One example flow per connection is fetched afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb

from flowpipe.rules.check import _ts_ns  # the one TIMESTAMPTZ_NS literal helper

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
    quoted = ", ".join("'" + n.replace("'", "''") + "'" for n in sorted(set(names)))
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
    "is_reply IS NOT TRUE AND event_type IN (1, 4, 5, 129) "
    "AND l7_type IS DISTINCT FROM 'RESPONSE' AND NOT (event_type = 4 AND is_reply IS NULL)"
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
    example: dict = field(default_factory=dict)  # that flow's row of the flows view

    @property
    def observed(self) -> str | None:
        """The verdict stored: that of the latest decision, else what traces show."""
        if self.verdict:
            return self.verdict
        return ("REDIRECTED" if self.proxied else "FORWARDED") if self.flows else None

    def get(self, name: str) -> Any:
        return self.key[_INDEX[name]]


_INDEX = {name: i for i, (name, _) in enumerate([*KEYS, HOST_KEY, ("k_headers", "")])}


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


def group(
    con: duckdb.DuckDBPyConnection,
    *,
    clusters: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    host: bool = False,
    headers: Sequence[str] = (),
) -> list[Group]:
    """Every distinct connection (per stored direction) with its counts and example flow."""
    keys = list(KEYS)
    keys.append(HOST_KEY if host else ("k_host", "NULL"))
    keys.append(header_key(headers) if headers else ("k_headers", "NULL"))
    where, params = _filters(clusters, since, until)
    cols = ",\n  ".join(f"{expr} AS {name}" for name, expr in keys)
    sql = f"""
SELECT
  {cols},
  count(*) AS flows,
  epoch_ns(min(time)) AS first_seen,
  epoch_ns(max(time)) AS last_seen,
  count(*) FILTER (WHERE {_DECISIVE}) AS decisive,
  count(*) FILTER (WHERE {_DENIED}) AS denied,
  arg_max(verdict, time) FILTER (WHERE {_DECISIVE}) AS verdict,
  coalesce(bool_or(event_type = 4 AND trace_observation_point = 'TO_PROXY'), false) AS proxied,
  epoch_ns(coalesce(max(time) FILTER (WHERE {_DECISIVE}), max(time))) AS example_at
FROM flows
WHERE {where}
GROUP BY ALL"""
    rows = con.execute(sql, params).fetchall()
    n = len(keys)
    groups = [
        Group(
            _hashable(r[:n]),
            r[n],
            r[n + 1],
            r[n + 2],
            r[n + 3],
            r[n + 4],
            r[n + 5],
            r[n + 6],
            r[n + 7],
        )
        for r in rows
    ]
    groups.sort(key=lambda g: tuple("" if v is None else str(v) for v in g.key))
    _examples(con, groups, keys, where, params)
    return groups


def _examples(
    con: duckdb.DuckDBPyConnection,
    groups: list[Group],
    keys: list[tuple[str, str]],
    where: str,
    params: list,
) -> None:
    """Each group's example row, from one query over the rows at the examples' times."""
    times = sorted({g.example_at for g in groups if g.example_at is not None})
    if not times:
        return
    by_key = {g.key: g for g in groups}
    cols = ", ".join(f"{expr} AS {name}" for name, expr in keys)
    wanted = {(g.key, g.example_at) for g in groups}
    for start in range(0, len(times), 5000):  # IN lists of a bounded size
        at = ", ".join(_ts_ns(t) for t in times[start : start + 5000])
        rel = con.execute(
            f"SELECT *, epoch_ns(time) AS k_at, {cols} FROM flows WHERE {where} AND time IN ({at})",
            params,
        )
        names = [d[0] for d in rel.description]
        n = len(keys)
        for row in rel.fetchall():
            key = _hashable(row[len(names) - n :])
            g = by_key.get(key)
            if g is not None and not g.example and (key, row[-n - 1]) in wanted:
                g.example = dict(zip(names[: -n - 1], row[: -n - 1]))


def _hashable(values: Sequence[Any]) -> tuple:
    return tuple(tuple(v) if isinstance(v, list) else v for v in values)
