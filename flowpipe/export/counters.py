"""Monotonic flow counters over a store: only files not yet counted are read; state persists in the store."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from flowpipe.codec.hubble import TRACE_POINTS
from flowpipe.errors import StoreError
from flowpipe.store.layout import EVENTS, FLOWS, Store
from flowpipe.views import catalog as views
from flowpipe.views import columns

log = logging.getLogger("flowpipe.export")

STATE_FILE = ".export-state.json"
STATE_VERSION = 1
MAX_PORTS = 100  # distinct (protocol, port) series per cluster; later ones count as port="other"
SEP = "\x1f"  # joins label values into one JSON key

# Hubble's v1.FlowProtocol: the L7 protocol for L7 events, else the L4 protocol
_L4 = "CASE WHEN l4_protocol IN ('TCP', 'UDP', 'ICMPv4', 'ICMPv6', 'SCTP') THEN l4_protocol ELSE 'Unknown L4' END"
_PROTOCOL = (
    f"CASE WHEN event_type = 129 THEN coalesce(l7_protocol, 'Unknown L7') "
    f"WHEN event_type IN (1, 3, 4, 5) THEN {_L4} ELSE 'Unknown flow' END"
)
_TRACE = "CASE event_subtype " + " ".join(f"WHEN {k} THEN '{v}'" for k, v in TRACE_POINTS.items())
_TRACE += " ELSE CAST(event_subtype AS VARCHAR) END"
_FORWARDED = "verdict IN ('FORWARDED', 'REDIRECTED')"
_P = "cluster, date, hour"  # every query groups by partition first

# metric -> SELECT over the temp table t: partition columns, label values, count (pkg/hubble/metrics/*)
FLOW_SQL = {
    "flows_processed": f"""SELECT {_P},
        CASE event_type WHEN 129 THEN 'L7' WHEN 1 THEN 'Drop' WHEN 3 THEN 'Capture' WHEN 4 THEN 'Trace'
             WHEN 5 THEN 'PolicyVerdict' ELSE 'Unknown' END,
        CASE WHEN event_type = 129 THEN coalesce(l7_protocol, '') WHEN event_type = 4 THEN {_TRACE}
             WHEN event_type IN (1, 3, 5) THEN '' ELSE CAST(coalesce(event_type, 0) AS VARCHAR) END,
        verdict, {_PROTOCOL}, count(*) FROM t GROUP BY ALL""",
    "drop": f"""SELECT {_P}, coalesce(drop_reason_desc, ''), {_PROTOCOL}, count(*)
        FROM t WHERE verdict = 'DROPPED' GROUP BY ALL""",
    "tcp_flags": f"""SELECT {_P}, flag, coalesce(ip_version, ''), count(*) FROM (
        SELECT {_P}, ip_version, unnest(list_filter([
            CASE WHEN list_contains(tcp_flags, 'FIN') THEN 'FIN' END,
            CASE WHEN list_contains(tcp_flags, 'SYN') THEN
                 CASE WHEN list_contains(tcp_flags, 'ACK') THEN 'SYN-ACK' ELSE 'SYN' END END,
            CASE WHEN list_contains(tcp_flags, 'RST') THEN 'RST' END], lambda f: f IS NOT NULL)) AS flag
        FROM t WHERE {_FORWARDED} AND l4_protocol = 'TCP') GROUP BY ALL""",
    "port_distribution": f"""SELECT {_P}, l4_protocol,
        CASE WHEN l4_protocol LIKE 'ICMP%' THEN '0' ELSE CAST(coalesce(dst_port, 0) AS VARCHAR) END, count(*)
        FROM t WHERE {_FORWARDED} AND is_reply = false
          AND l4_protocol IN ('TCP', 'UDP', 'SCTP', 'ICMPv4', 'ICMPv6') GROUP BY ALL""",
    "l7_flows": f"""SELECT {_P}, l7_protocol, coalesce(l7_type, ''), count(*)
        FROM t WHERE event_type = 129 AND l7_protocol IS NOT NULL GROUP BY ALL""",
    "http_responses": f"""SELECT {_P}, coalesce(http_method, ''), CAST(http_code AS VARCHAR), count(*)
        FROM t WHERE l7_protocol = 'HTTP' AND l7_type = 'RESPONSE' AND http_code IS NOT NULL GROUP BY ALL""",
    # policy-verdict events (not from the host identity), plus L7 requests as match "l7/<proto>"
    "policy_verdicts": f"""SELECT {_P}, lower(traffic_direction), lower(policy_match), lower(verdict), count(*)
        FROM t WHERE event_type = 5 AND coalesce(src_identity, 0) <> 1 GROUP BY ALL
        UNION ALL
        SELECT {_P}, lower(traffic_direction), 'l7/' || lower(l7_protocol), lower(verdict), count(*)
        FROM t WHERE event_type = 129 AND l7_protocol IS NOT NULL AND NOT coalesce(is_reply, false) GROUP BY ALL""",
    # the stored BIGINT time: its maximum comes from Parquet statistics, no row is converted
    "_newest": f"SELECT {_P}, max({views.RAW_TIME}) FROM flows_proto GROUP BY ALL",
}
FLOW_COLUMNS = (
    "cluster, date, hour, event_type, event_subtype, verdict, drop_reason_desc, l4_protocol, "
    "l7_protocol, l7_type, tcp_flags, ip_version, dst_port, is_reply, traffic_direction, policy_match, "
    "src_identity, http_method, http_code"
)
# the events view has no partition columns: the same expressions over events_proto
_EV = {name: expr for name, expr, _ in columns.event_columns()}
EVENT_SQL = {
    "store_lost_events": f"""SELECT {_P}, {_EV["lost_source"]}, CAST(sum({_EV["num_events_lost"]}) AS BIGINT)
        FROM events_proto WHERE lost_events IS NOT NULL GROUP BY ALL""",
}
COUNTERS = tuple(k for k in (*FLOW_SQL, *EVENT_SQL) if not k.startswith("_"))

Agg = dict[str, dict[str, int]]  # metric -> joined labels -> count


@dataclass
class ClusterHealth:
    """What the file listing says about one cluster."""

    flows: int = 0
    files: int = 0
    newest_ns: int | None = None
    last_flush: float | None = None


@dataclass
class _Part:
    files: dict[str, int] = field(default_factory=dict)  # file name -> rows
    agg: Agg = field(default_factory=dict)  # raw (uncapped) counts of the counted files
    newest_ns: int | None = None


class StoreCounters:
    """Running totals per cluster and series, advanced by reading only files committed since last time."""

    def __init__(self, store: Store, *, memory_limit: str = "1GB"):
        self.store = store
        self.memory_limit = memory_limit
        # on object storage the state stays in memory: a restarted exporter recounts
        self.path = store.root / STATE_FILE if store.local else None
        self.totals: dict[str, Agg] = {}
        self.parts: dict[str, _Part] = {}  # "flows/cluster=c/date=d/hour=h" -> state
        self.health: dict[str, ClusterHealth] = {}
        self._warned_readonly = False
        self._load()

    # ------------------------------------------------------------------ state

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning(
                "export state %s unreadable (%s): counting the store from scratch", self.path, exc
            )
            return
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            log.warning(
                "export state %s has another version: counting the store from scratch", self.path
            )
            return
        self.totals = data.get("totals", {})
        self.parts = {
            k: _Part(v["files"], v["agg"], v.get("newest_ns"))
            for k, v in data.get("parts", {}).items()
        }

    def save(self) -> None:
        """Write the state atomically (a read-only store keeps it in memory only)."""
        if self.path is None:
            return
        data = {
            "version": STATE_VERSION,
            "totals": self.totals,
            "parts": {
                k: {"files": p.files, "agg": p.agg, "newest_ns": p.newest_ns}
                for k, p in self.parts.items()
            },
        }
        tmp = self.path.with_name(f"{STATE_FILE}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w") as fh:
                json.dump(data, fh, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not self._warned_readonly:
                log.warning(
                    "cannot save export state to %s (%s): a restart will recount", self.path, exc
                )
                self._warned_readonly = True

    # ------------------------------------------------------------------ counting

    def update(self) -> None:
        """Count the files committed since the last update; forget partitions retention removed."""
        with self.store.read_lock():  # no compaction swap between listing and reading
            listing = {kind: _list(self.store, kind) for kind in (FLOWS, EVENTS)}
            clusters = set(self.store.clusters())
            work: dict[
                str, tuple[list[str], list[str]]
            ] = {}  # kind -> (new files, partitions to recount)
            for kind, parts in listing.items():
                new_files, recount = [], []
                for key, files in parts.items():
                    known = self.parts[key].files if key in self.parts else {}
                    if any(name not in files for name in known):
                        recount.append(
                            key
                        )  # compaction merged files: recount the partition, add the difference
                    else:
                        new_files += [
                            str(self.store.root / key / n) for n in files if n not in known
                        ]
                work[kind] = (new_files, recount)
            if any(n or r for n, r in work.values()):
                self._count(listing, work)
        for key in [k for k in self.parts if k not in listing[k.split("/", 1)[0]]]:
            del self.parts[key]  # retention removed it; its counts stay in the totals
        for cluster in [c for c in self.totals if c not in clusters]:
            del self.totals[cluster]  # the cluster is gone from the store: its series go too
        self.health = _health(self.store, listing, self.parts, clusters)
        self.save()

    def _count(
        self,
        listing: dict[str, dict[str, dict[str, float]]],
        work: dict[str, tuple[list[str], list[str]]],
    ) -> None:
        con = duckdb.connect(":memory:", config={"memory_limit": self.memory_limit, "threads": 2})
        try:
            for kind, (new_files, recount) in work.items():
                sql = FLOW_SQL if kind == FLOWS else EVENT_SQL
                if new_files:
                    counts = self._query(con, kind, new_files, sql)
                    for key, agg in counts.items():
                        part = self.parts.setdefault(key, _Part())
                        _add_part(part, agg)
                        self._advance(key, agg)
                    for path in new_files:
                        key, name = path[len(str(self.store.root)) + 1 :].rsplit("/", 1)
                        self.parts.setdefault(key, _Part()).files[name] = _rows(self.store, path)
                if recount:
                    paths = [
                        str(self.store.root / k / n) for k in recount for n in listing[kind][k]
                    ]
                    counts = self._query(con, kind, paths, sql)
                    for key in recount:
                        part = self.parts[key]
                        now = counts.get(key, {})
                        self._advance(key, _difference(now, part.agg))
                        part.agg = {m: dict(s) for m, s in now.items() if m != "_newest"}
                        part.newest_ns = _newest(now) or part.newest_ns
                        part.files = {
                            n: _rows(self.store, str(self.store.root / key / n))
                            for n in listing[kind][key]
                        }
        except duckdb.Error as exc:
            raise StoreError(f"store {self.store.url}: counting flows failed: {exc}") from exc
        finally:
            con.close()

    def _query(
        self, con: duckdb.DuckDBPyConnection, kind: str, paths: list[str], queries: dict[str, str]
    ) -> dict[str, Agg]:
        """partition key -> metric -> labels -> count, over the given files only."""
        # the empty schema files give every column even when the listed files predate some
        files = {k: self.store.schema_files(k) for k in (FLOWS, EVENTS)}
        files[kind] += paths
        views.register(con, self.store, files)
        for stmt in views.view_sql(self.store, files=files):
            con.execute(stmt)
        if kind == FLOWS:
            con.execute(f"CREATE OR REPLACE TEMP TABLE t AS SELECT {FLOW_COLUMNS} FROM flows")
        out: dict[str, Agg] = defaultdict(lambda: defaultdict(dict))
        for metric, sql in queries.items():
            for row in con.execute(sql).fetchall():
                cluster, date, hour, *labels, n = row
                if n is None:
                    continue
                key = f"{kind}/cluster={cluster}/date={date:%Y-%m-%d}/hour={int(hour):02d}"
                series = out[key][metric]
                joined = SEP.join("" if v is None else str(v) for v in labels)
                series[joined] = series.get(joined, 0) + int(n)
        return out

    def _advance(self, key: str, agg: Agg) -> None:
        """Add counts of partition key to its cluster's totals (ports beyond MAX_PORTS become 'other')."""
        cluster = key.split("/", 2)[1].split("=", 1)[1]
        totals = self.totals.setdefault(cluster, {})
        for metric, series in agg.items():
            if metric.startswith("_"):
                continue
            target = totals.setdefault(metric, {})
            for labels, n in series.items():
                if n <= 0:
                    continue
                if (
                    metric == "port_distribution"
                    and labels not in target
                    and len(target) >= MAX_PORTS
                ):
                    labels = labels.split(SEP)[0] + SEP + "other"
                target[labels] = target.get(labels, 0) + n

    def series(self, metric: str) -> list[tuple[str, list[str], int]]:
        """(cluster, label values, running total) of a counter, sorted."""
        out = []
        for cluster in sorted(self.totals):
            for labels, n in sorted(self.totals[cluster].get(metric, {}).items()):
                out.append((cluster, labels.split(SEP), n))
        return out


def _add_part(part: _Part, agg: Agg) -> None:
    for metric, series in agg.items():
        if metric == "_newest":
            part.newest_ns = max(filter(None, [part.newest_ns, _newest(agg)]), default=None)
            continue
        target = part.agg.setdefault(metric, {})
        for labels, n in series.items():
            target[labels] = target.get(labels, 0) + n


def _newest(agg: Agg) -> int | None:
    values = [v for v in agg.get("_newest", {}).values() if v]
    return max(values) if values else None


def _difference(now: Agg, before: Agg) -> Agg:
    """now - before per series; compaction only merges rows, so nothing should go negative."""
    out: Agg = {}
    for metric, series in now.items():
        if metric.startswith("_"):
            continue
        prev = before.get(metric, {})
        out[metric] = {k: n - prev.get(k, 0) for k, n in series.items() if n > prev.get(k, 0)}
    return out


def _list(store: Store, kind: str) -> dict[str, dict[str, float]]:
    """'kind/cluster=c/date=d/hour=h' -> file name -> commit time (s), for every committed file."""
    out: dict[str, dict[str, float]] = {}
    root = str(store.root)
    for path in store.committed(kind):
        at = store.committed_at(path)
        if at is not None:
            key, name = path[len(root) + 1 :].rsplit("/", 1)
            out.setdefault(key, {})[name] = at / 1e9
    return out


def _rows(store: Store, path: str) -> int:
    try:
        return pq.read_metadata(store.open_input(path)).num_rows
    except (OSError, pa.ArrowException):
        return 0


def _health(
    store: Store, listing: dict, parts: dict[str, _Part], clusters: set[str]
) -> dict[str, ClusterHealth]:
    out = {c: ClusterHealth() for c in clusters}
    for kind, by_part in listing.items():
        for key, files in by_part.items():
            cluster = key.split("/", 2)[1].split("=", 1)[1]
            h = out.setdefault(cluster, ClusterHealth())
            newest_file = max(files.values())
            h.last_flush = max(h.last_flush or 0.0, newest_file)
            if kind != FLOWS or key not in parts:
                continue
            h.files += len(files)
            h.flows += sum(parts[key].files.get(n, 0) for n in files)
            if parts[key].newest_ns and (h.newest_ns is None or parts[key].newest_ns > h.newest_ns):
                h.newest_ns = parts[key].newest_ns
    return out
