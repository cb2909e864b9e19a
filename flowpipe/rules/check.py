"""`flowpipe check`: evaluate rule files per cluster and time window inside the sandbox."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import duckdb

from flowpipe.common.sql import ns_literal, quote
from flowpipe.common.text import first_line
from flowpipe.common.times import parse_time
from flowpipe.errors import ConfigError, RuleError, StoreError
from flowpipe.rules import planner, sandbox
from flowpipe.rules import rulefile as rules_mod
from flowpipe.rules.rulefile import Rule, RuleFile
from flowpipe.rules.status import Status, stage_verdict
from flowpipe.store.layout import Store, check_cluster
from flowpipe.views.catalog import RAW_TIME

ENGINES = ("duckdb", "spark")


@dataclass
class RuleResult:
    """The outcome of one rule on one cluster."""

    file: str
    stage: str
    rule: str
    cluster: str
    status: Status
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
        return all(r.status == Status.PASS for r in self.results if r.severity == "error")

    def stage_status(self) -> dict[tuple[str, str], Status]:
        """(stage, cluster) -> pass | fail | error (error: some rule could not run)."""
        by_stage: dict[tuple[str, str], list[Status]] = {}
        for r in self.results:
            by_stage.setdefault((r.stage, r.cluster), []).append(r.status)
        return {key: stage_verdict(statuses) for key, statuses in by_stage.items()}

    def errors(self) -> list[RuleResult]:
        """Results whose rule could not run."""
        return [r for r in self.results if r.status == Status.ERROR]


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
    engine: str = "duckdb",
    spark_remote: str | None = None,
) -> CheckReport:
    """Evaluate every rule of the rule files on every cluster over [since, until], with DuckDB
    or on Spark (engine="spark", through Spark Connect at spark_remote)."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: use one of {', '.join(ENGINES)}")
    files = list({rf.path: rf for rf in rules_mod.load([str(p) for p in paths])}.values())
    for rf in files:
        validate(rf)
    if engine == "spark":
        from flowpipe.rules import spark

        for rf in files:
            spark.validate(store, rf)
    since_dt = parse_time(since, "--since") if since is not None else None
    until_dt = parse_time(until, "--until") if until is not None else None
    if since_dt and until_dt and since_dt > until_dt:
        raise ConfigError(f"--since {since_dt.isoformat()} is after --until {until_dt.isoformat()}")
    if rule_timeout <= 0:
        raise ConfigError(f"--rule-timeout must be positive, not {rule_timeout:g}")
    names = _clusters(store, clusters)
    results: list[RuleResult] = []
    with store.read_lock():
        if engine == "spark":
            sb = spark.SparkSandbox(store, names, since_dt, until_dt, remote=spark_remote)
        else:
            sb = sandbox.Sandbox(store, names, since_dt, until_dt, memory_limit=memory_limit)
        try:
            plan = [(rf, rule) for rf in files for rule in rf.rules]
            # rules that filter rows of one view: every cluster at once, all of them in one scan
            done = _evaluate_together(sb, plan, names, rule_timeout, memory_limit, samples)
            results += done.values()
            rest = [(rf, rule) for rf, rule in plan if (rf.path, rule.name, names[0]) not in done]
            for cluster in names if rest else []:
                sb.scope(cluster)
                for rf, rule in rest:
                    results += [
                        _evaluate(sb, rf, rule, cluster, rule_timeout, memory_limit, samples)
                    ]
        finally:
            sb.close()
    order = {
        (rf.path, r.name): i for i, (rf, r) in enumerate((rf, r) for rf in files for r in rf.rules)
    }
    results.sort(key=lambda r: (order[(r.file, r.rule)], names.index(r.cluster)))
    return CheckReport(results, names, since_dt, until_dt)


def _clusters(store: Store, given: Iterable[str] | None) -> list[str]:
    names = list(dict.fromkeys(given or [])) or store.clusters()
    if not names:
        raise StoreError(
            f"store {store.url} has no clusters yet: run collect first or pass --cluster"
        )
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
        for query in (counts_sql(rule), samples_sql(rule, 1, ordered=True)):
            sandbox.check_sql(query, rule.where())  # what actually runs, checked as a whole


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


def samples_sql(rule: Rule, limit: int, *, ordered: bool, cluster: str | None = None) -> str:
    """SQL returning up to limit offending rows of a rule (oldest first when they have a time);
    cluster: of that cluster only (views over several clusters)."""
    conds = [f"NOT coalesce(({rule.condition}), false)"] if rule.expect == "all" else []
    if cluster is not None:
        conds.insert(0, f"cluster = {quote(check_cluster(cluster))}")
    cond = f" WHERE {' AND '.join(conds)}" if conds else ""
    order = " ORDER BY time" if ordered else ""
    return f"SELECT * FROM (\n{rule.sql}\n) AS rule_flows{cond}{order} LIMIT {int(limit)}"


def _evaluate_together(
    sb: sandbox.Sandbox,
    plan: list[tuple[RuleFile, Rule]],
    names: list[str],
    timeout: float,
    memory_limit: str,
    k: int,
) -> dict[tuple[str, str, str], RuleResult]:
    """Results of the row-filter rules, keyed (file, rule, cluster): a few scans for all of them and
    all clusters (one per key, see planner.plan), instead of one per rule and cluster.

    A scan that fails or runs out of time leaves its rules to the per-cluster path, which then
    reports each rule's own error (its time limit is the sum of its rules' on every cluster)."""
    shapes = [sh for rf, rule in plan if (sh := planner.shape(rf, rule)) is not None]
    if not shapes:
        return {}
    sb.scope_all()
    scans: dict[tuple[str, str | None], list[planner.Piece]] = {}
    for pc in planner.plan(shapes):
        scans.setdefault((pc.shape.base, pc.key), []).append(pc)
    counts: dict[
        tuple[int, str], list[int]
    ] = {}  # (id of shape, cluster) -> [evidence, violations]
    times: dict[tuple[int, str], list[int]] = {}  # times of the oldest violations (samples)
    timed: dict[tuple[int, str], int] = {}  # violations that have a time
    spent: dict[int, float] = {}
    failed: set[int] = set()
    for (base, key), pieces in scans.items():
        query = planner.together_sql(base, key, pieces, k)
        started = time.monotonic()
        try:
            sandbox.check_sql(
                query, f"rules over {base}"
            )  # built from checked parts; checked whole anyway
            _, rows = sb.run(query, timeout * len({id(pc.shape) for pc in pieces}) * len(names))
        except (RuleError, sandbox.RuleTimeout, *sb.errors):
            failed.update(id(pc.shape) for pc in pieces)
            continue
        per = {row[0]: row[1:] for row in rows}
        width = 4 if k > 0 else 2
        for i, pc in enumerate(pieces):
            sid = id(pc.shape)
            spent[sid] = spent.get(sid, 0.0) + (time.monotonic() - started) / len(pieces)
            for cluster in names:
                got = per.get(cluster)
                acc = counts.setdefault((sid, cluster), [0, 0])
                if got is None:
                    continue
                acc[0] += int(got[width * i])
                acc[1] += int(got[width * i + 1])
                if k > 0:
                    times.setdefault((sid, cluster), []).extend(got[width * i + 2] or [])
                    timed[(sid, cluster)] = timed.get((sid, cluster), 0) + int(got[width * i + 3])
    out: dict[tuple[str, str, str], RuleResult] = {}
    for sh in shapes:
        if id(sh) in failed:
            continue
        for cluster in names:
            evidence, violations = counts.get((id(sh), cluster), [0, 0])
            res = RuleResult(
                sh.rf.path,
                sh.rf.stage,
                sh.rule.name,
                cluster,
                Status.ERROR,
                sh.rule.severity,
                evidence,
                violations,
                sh.rule.why,
                "",
            )
            res.status, res.message = _judge(sh.rule, res.evidence, res.violations)
            res.duration_s = spent.get(id(sh), 0.0) / len(names)
            out[(sh.rf.path, sh.rule.name, cluster)] = res
    if k > 0:
        _samples_together(
            sb,
            [sh for sh in shapes if id(sh) not in failed],
            scans,
            out,
            names,
            times,
            timed,
            timeout,
            memory_limit,
            k,
        )
    for res in out.values():
        res.duration_s = round(res.duration_s, 6)
    return out


def _samples_together(
    sb: sandbox.Sandbox,
    shapes: list[planner.Shape],
    scans: dict[tuple[str, str | None], list[planner.Piece]],
    out: dict[tuple[str, str, str], RuleResult],
    names: list[str],
    times: dict[tuple[int, str], list[int]],
    timed: dict[tuple[int, str], int],
    timeout: float,
    memory_limit: str,
    k: int,
) -> None:
    """Samples of the failed results: the count scans gave the times of each one's k oldest
    violations; one query per base view fetches the rows at those times and says which rule
    (piece) each violates, and each result keeps its k oldest (ORDER BY time LIMIT k, ties
    in any order, as samples_sql). Results whose samples need rows without a time, or whose
    fetch fails, take them per rule and cluster as _evaluate does."""
    wanted: dict[tuple[int, str], RuleResult] = {}
    alone: dict[tuple[int, str], tuple[Rule, RuleResult]] = {}
    for sh in shapes:
        for cluster in names:
            res = out[(sh.rf.path, sh.rule.name, cluster)]
            if res.status in (Status.FAIL, Status.WARN) and res.violations:
                if timed.get((id(sh), cluster), 0) >= min(k, res.violations):
                    wanted[(id(sh), cluster)] = res
                else:  # some of the k oldest have no time: the plain query orders them last
                    alone[(id(sh), cluster)] = (sh.rule, res)
    bases: dict[str, list[planner.Piece]] = {}
    for (base, _), pieces in scans.items():
        bases.setdefault(base, []).extend(
            pc for pc in pieces if any((id(pc.shape), c) in wanted for c in names)
        )
    for base, pieces in bases.items():
        at = [
            t
            for pc in pieces
            for c in names
            if (id(pc.shape), c) in wanted
            for t in times.get((id(pc.shape), c), [])
        ]
        if not at:
            continue
        query = planner.samples_fetch_sql(base, at, pieces)
        started = time.monotonic()
        try:
            sandbox.check_sql(query, f"samples over {base}")
            # the files holding those rows, from a scan of the time column alone; then all the
            # columns of those few files (a wide scan of every file costs seconds)
            _, found = sb.run(
                f"SELECT DISTINCT filename FROM {base}_proto_files WHERE {RAW_TIME} IN "
                f"({', '.join(ns_literal(t) for t in sorted(set(at)))})",
                timeout,
            )
            sb.scope_all(only={f for (f,) in found})
            cols, rows = sb.run(query, timeout * len(wanted))
        except (RuleError, sandbox.RuleTimeout, *sb.errors):
            alone.update(
                {
                    key: (next(sh.rule for sh in shapes if id(sh) == key[0]), res)
                    for key, res in wanted.items()
                    if any(id(pc.shape) == key[0] for pc in pieces)
                }
            )
            continue
        share = (time.monotonic() - started) / max(1, len(wanted))
        nflags = len(pieces)
        names_ = cols[: len(cols) - nflags]
        got: dict[tuple[int, str], list[dict]] = {}
        for row in rows:
            record = dict(zip(names_, row[: len(cols) - nflags]))
            for i, flag in enumerate(row[len(cols) - nflags :]):
                key = (id(pieces[i].shape), record.get("cluster"))
                if flag and key in wanted:
                    got.setdefault(key, []).append(record)
        for key, res in wanted.items():
            if any(id(pc.shape) == key[0] for pc in pieces):
                res.samples = _oldest(got.get(key, []), k)
                res.duration_s += share
    if alone:
        sb.scope_all()  # every file again
    for (_, cluster), (rule, res) in alone.items():
        started = time.monotonic()
        try:  # a failure here is reported as _evaluate reports it
            res.samples = _samples(sb, rule, k, timeout, cluster)
        except (sandbox.RuleTimeout, *sb.errors) as exc:
            res.message = _failure(exc, memory_limit)
        res.duration_s += time.monotonic() - started


def _oldest(rows: list[dict], k: int) -> list[dict]:
    return sorted(rows, key=lambda r: (r.get("time") is None, r.get("time") or 0))[:k]


def _evaluate(
    sb: sandbox.Sandbox,
    rf: RuleFile,
    rule: Rule,
    cluster: str,
    timeout: float,
    memory_limit: str,
    k: int,
) -> RuleResult:
    res = RuleResult(
        rf.path, rf.stage, rule.name, cluster, Status.ERROR, rule.severity, 0, 0, rule.why, ""
    )
    started = time.monotonic()
    try:
        _, rows = sb.run(counts_sql(rule), timeout)
        res.evidence, res.violations = int(rows[0][0]), int(rows[0][1])
        res.status, res.message = _judge(rule, res.evidence, res.violations)
        if res.status != Status.PASS and res.violations and k > 0:
            left = max(0.1, timeout - (time.monotonic() - started))
            res.samples = _samples(sb, rule, k, left)
    except (sandbox.RuleTimeout, *sb.errors) as exc:
        res.message = _failure(exc, memory_limit)
    if res.status == Status.ERROR:
        res.message = f"{rule.where()}: {res.message}"
    res.duration_s = round(time.monotonic() - started, 6)
    return res


def _failure(exc: Exception, memory_limit: str) -> str:
    """The message of a rule query that could not run."""
    if isinstance(exc, duckdb.OutOfMemoryException):
        return f"out of memory (--memory-limit {memory_limit})"
    if isinstance(exc, duckdb.Error):
        return f"SQL error: {first_line(exc)}"
    return str(exc)  # the rule's timeout


def _judge(rule: Rule, evidence: int, violations: int) -> tuple[Status, str]:
    """(status, message) for a rule's counts: a failed rule is a failure, or a warning."""
    failed, message = _verdict(rule, evidence, violations)
    if not failed:
        return Status.PASS, message
    return (Status.WARN if rule.severity == "warn" else Status.FAIL), message


def _verdict(rule: Rule, evidence: int, violations: int) -> tuple[bool, str]:
    """(failed, message) for a rule's counts."""
    if rule.expect == "none":
        if violations:
            return True, f"{violations} flow{_s(violations)} match; expected none"
        return False, "no flow matches"
    if rule.expect == "all" and violations:
        return True, f"{violations} of {evidence} flows violate: {rule.condition}"
    if evidence < rule.min_flows:
        return (
            True,
            f"{evidence} flow{_s(evidence)} in scope; need at least {rule.min_flows} (no evidence in the window?)",
        )
    if rule.expect == "all":
        return False, f"all {evidence} flows satisfy the assert"
    return False, f"{evidence} flows (at least {rule.min_flows})"


def _samples(
    sb: sandbox.Sandbox, rule: Rule, k: int, timeout: float, cluster: str | None = None
) -> list[dict]:
    try:
        names, rows = sb.run(samples_sql(rule, k, ordered=True, cluster=cluster), timeout)
    except sb.missing_column:  # the rule's rows have no time column: any order
        names, rows = sb.run(samples_sql(rule, k, ordered=False, cluster=cluster), timeout)
    return [dict(zip(names, row)) for row in rows]


def _s(n: int) -> str:
    return "" if n == 1 else "s"
