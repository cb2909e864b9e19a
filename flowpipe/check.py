"""`flowpipe check`: evaluate rule files per cluster and time window inside the sandbox."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import duckdb

from flowpipe import rules as rules_mod
from flowpipe import sandbox
from flowpipe.errors import ConfigError, StoreError
from flowpipe.rules import Rule, RuleFile
from flowpipe.store import Store, check_cluster

STATUSES = ("pass", "warn", "fail", "error")
_DURATION_RE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+$")
_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass
class RuleResult:
    """The outcome of one rule on one cluster."""

    file: str
    stage: str
    rule: str
    cluster: str
    status: str  # pass | warn | fail | error
    severity: str  # error | warn
    evidence: int  # flows in scope (rows of the rule's SELECT)
    violations: int  # flows that break the rule
    why: str
    message: str
    samples: list[dict] = field(default_factory=list)  # up to K offending rows of the flows view
    duration_s: float = 0.0


@dataclass
class CheckReport:
    """Every rule on every cluster checked, over one time window."""

    results: list[RuleResult]
    clusters: list[str]
    since: datetime | None
    until: datetime | None

    def passed(self) -> bool:
        """True when every error-severity rule passed on every cluster (warnings allowed)."""
        return all(r.status == "pass" for r in self.results if r.severity == "error")

    def stage_status(self) -> dict[tuple[str, str], str]:
        """(stage, cluster) -> pass | fail | error (error: some rule could not run)."""
        out: dict[tuple[str, str], str] = {}
        rank = {"pass": 0, "fail": 1, "error": 2}
        for r in self.results:
            status = "error" if r.status == "error" else "fail" if r.status == "fail" else "pass"
            key = (r.stage, r.cluster)
            if rank[status] >= rank[out.get(key, "pass")]:
                out[key] = status
        return out

    def errors(self) -> list[RuleResult]:
        """Results whose rule could not run."""
        return [r for r in self.results if r.status == "error"]


def parse_time(text: str | datetime, what: str = "time", *, now: datetime | None = None) -> datetime:
    """'15m', '2h', '7d' (that long before now), 'now' or RFC3339 -> an aware UTC datetime."""
    if isinstance(text, datetime):
        return text.astimezone(UTC) if text.tzinfo else text.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    value = text.strip()
    if value == "now":
        return now
    if _DURATION_RE.match(value):
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART_RE.findall(value))
        return now - timedelta(seconds=seconds)
    try:
        dt = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ConfigError(
            f"invalid {what} {text!r}: use a duration (15m, 2h, 7d) or RFC3339 (2024-05-01T12:00:00Z)"
        ) from None
    return dt.astimezone(UTC) if dt.tzinfo else dt.replace(tzinfo=UTC)


def run_check(
    store: Store,
    paths: Sequence[str | os.PathLike[str]],
    *,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    clusters: Iterable[str] | None = None,
    rule_timeout: float = 30.0,
    memory_limit: str = "1GB",
    samples: int = 5,
) -> CheckReport:
    """Evaluate every rule of the rule files on every cluster over [since, until]."""
    files = list({rf.path: rf for rf in rules_mod.load([str(p) for p in paths])}.values())
    for rf in files:
        validate(rf)
    since_dt = parse_time(since, "--since") if since is not None else None
    until_dt = parse_time(until, "--until") if until is not None else None
    if since_dt and until_dt and since_dt > until_dt:
        raise ConfigError(f"--since {since_dt.isoformat()} is after --until {until_dt.isoformat()}")
    if rule_timeout <= 0:
        raise ConfigError(f"--rule-timeout must be positive, not {rule_timeout:g}")
    names = _clusters(store, clusters)
    results: list[RuleResult] = []
    with store.read_lock():
        sb = sandbox.Sandbox(store, names, since_dt, until_dt, memory_limit=memory_limit)
        try:
            for cluster in names:
                sb.scope(cluster)
                for rf in files:
                    for rule in rf.rules:
                        results.append(_evaluate(sb, rf, rule, cluster, rule_timeout, memory_limit, samples))
        finally:
            sb.close()
    order = {(rf.path, r.name): i for i, (rf, r) in enumerate((rf, r) for rf in files for r in rf.rules)}
    results.sort(key=lambda r: (order[(r.file, r.rule)], names.index(r.cluster)))
    return CheckReport(results, names, since_dt, until_dt)


def _clusters(store: Store, given: Iterable[str] | None) -> list[str]:
    names = list(dict.fromkeys(given or [])) or store.clusters()
    if not names:
        raise StoreError(f"store {store.root} has no clusters yet: run collect first or pass --cluster")
    for name in names:
        try:
            check_cluster(name)
        except ValueError as exc:
            raise ConfigError(f"--cluster: {exc}") from None
    return names


def validate(rf: RuleFile) -> None:
    """Refuse a rule file whose SQL could do more than read the views (before anything runs)."""
    for rule in rf.rules:
        sandbox.check_sql(rule.sql, rule.where(rule.sql_line))
        for expr, line in zip(rule.asserts, rule.assert_lines):
            sandbox.check_expression(expr, rule.where(line))
        for sql in (counts_sql(rule), samples_sql(rule, 1, ordered=True)):
            sandbox.check_sql(sql, rule.where())  # what actually runs, checked as a whole


def counts_sql(rule: Rule) -> str:
    """SQL returning (evidence, violations) of a rule."""
    if rule.expect == "all":
        bad = f"count(*) FILTER (WHERE NOT coalesce(({rule.condition}), false))"
    elif rule.expect == "none":
        bad = "count(*)"
    else:
        bad = "0"
    # newline before ')': the rule may end in a -- comment
    return f"SELECT count(*) AS evidence, {bad} AS violations FROM (\n{rule.sql}\n) AS rule_flows"


def samples_sql(rule: Rule, limit: int, *, ordered: bool) -> str:
    """SQL returning up to limit offending rows of a rule (oldest first when they have a time)."""
    cond = f" WHERE NOT coalesce(({rule.condition}), false)" if rule.expect == "all" else ""
    order = " ORDER BY time" if ordered else ""
    return f"SELECT * FROM (\n{rule.sql}\n) AS rule_flows{cond}{order} LIMIT {int(limit)}"


def _evaluate(
    sb: sandbox.Sandbox, rf: RuleFile, rule: Rule, cluster: str, timeout: float, memory_limit: str, k: int
) -> RuleResult:
    res = RuleResult(rf.path, rf.stage, rule.name, cluster, "error", rule.severity, 0, 0, rule.why, "")
    started = time.monotonic()
    try:
        _, rows = sb.run(counts_sql(rule), timeout)
        res.evidence, res.violations = int(rows[0][0]), int(rows[0][1])
        failed, res.message = _judge(rule, res.evidence, res.violations)
        res.status = ("warn" if rule.severity == "warn" else "fail") if failed else "pass"
        if failed and res.violations and k > 0:
            left = max(0.1, timeout - (time.monotonic() - started))
            res.samples = _samples(sb, rule, k, left)
    except sandbox.RuleTimeout as exc:
        res.message = str(exc)
    except duckdb.OutOfMemoryException:
        res.message = f"out of memory (--memory-limit {memory_limit})"
    except duckdb.Error as exc:
        res.message = f"SQL error: {_first_line(exc)}"
    if res.status == "error":
        res.message = f"{rule.where()}: {res.message}"
    res.duration_s = round(time.monotonic() - started, 6)
    return res


def _judge(rule: Rule, evidence: int, violations: int) -> tuple[bool, str]:
    """(failed, message) for a rule's counts."""
    if rule.expect == "none":
        if violations:
            return True, f"{violations} flow{_s(violations)} match; expected none"
        return False, "no flow matches"
    if rule.expect == "all" and violations:
        return True, f"{violations} of {evidence} flows violate: {' AND '.join(rule.asserts)}"
    if evidence < rule.min_flows:
        return True, f"{evidence} flow{_s(evidence)} in scope; need at least {rule.min_flows} (no evidence in the window?)"
    if rule.expect == "all":
        return False, f"all {evidence} flows satisfy the assert"
    return False, f"{evidence} flows (at least {rule.min_flows})"


def _samples(sb: sandbox.Sandbox, rule: Rule, k: int, timeout: float) -> list[dict]:
    try:
        names, rows = sb.run(samples_sql(rule, k, ordered=True), timeout)
    except duckdb.BinderException:  # the rule's rows have no time column: any order
        names, rows = sb.run(samples_sql(rule, k, ordered=False), timeout)
    return [dict(zip(names, row)) for row in rows]


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).strip().splitlines()[:1])
