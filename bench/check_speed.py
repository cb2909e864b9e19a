"""`flowpipe check` of each stage file over big stores (bench/bigstore.py), and stage 5 done with jq.

For every store size: check.run_check of stage1..stage5.sql over the whole store (both clusters),
and stage 5 over the last 15 minutes (what the guide runs). Then the guide's way without
flowpipe: the same flows as `hubble observe -o jsonpb` files (one per cluster) and, per rule and
cluster, `jq -c 'select(SCOPE)' cluster.jsonl | wc -l` (for `expect: all` rules the violations
are then counted over the rule's matches). jq's counts are compared with check's.
Target: stage 5 over 10M flows >= 100x faster than jq and under 3 s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bigstore
from common import load_note, save_result

from flowpipe.rules import check
from flowpipe.rules import rulefile as rules
from flowpipe.rules.status import STATUSES

STAGES = [f"stage{i}.sql" for i in range(1, 6)]
TARGET_S, TARGET_RATIO = 3.0, 100.0

# jq programs equivalent to stage5.sql: (rule, scope, assert or None). The views are filters:
# policy_verdicts = event_type 5, l7_dns / l7_http = an L7 DNS / HTTP record, drops = DROPPED.
# jsonpb omits zero values: an absent enum is its zero name (drop_reason_desc DROP_REASON_UNKNOWN).
JQ_DEFS = r"""
def ns(e): (e.namespace // "");
def dport: .flow.l4.TCP.destination_port // .flow.l4.UDP.destination_port // .flow.l4.SCTP.destination_port;
def has_label($ls; $sel): any(($ls // [])[]; . == $sel or ((index(":") // -1) >= 0 and .[(index(":") + 1):] == $sel));
def pol($ps; $name): any(($ps // [])[]; .name == $name);
def path: (.flow.l7.http.url // "") | capture("^(?:[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*)?(?<p>[^?#]*)").p;
def shop_fe_be: ns(.flow.source) == "shop" and has_label(.flow.source.labels; "app=frontend")
  and ns(.flow.destination) == "shop" and has_label(.flow.destination.labels; "app=backend");
def connects($a; $b): (has_label(.flow.source.labels; $a) and has_label(.flow.destination.labels; $b))
  or (has_label(.flow.source.labels; $b) and has_label(.flow.destination.labels; $a));
def pv: .flow.event_type.type == 5;
def world: any((.flow.destination.labels // [])[]; . == "reserved:world");
"""
JQ_STAGE5 = [
    (
        "dns-allowed-by-allow-dns",
        'pv and ns(.flow.source) == "shop" and dport == 53 and .flow.traffic_direction == "EGRESS"',
        '(.flow.verdict == "FORWARDED" or .flow.verdict == "REDIRECTED") and pol(.flow.egress_allowed_by; "allow-dns")',
    ),
    (
        "backend-name-resolved",
        '.flow.l7.dns != null and (ns(.flow.source) == "shop" or ns(.flow.destination) == "shop")'
        ' and .flow.l7.type == "RESPONSE" and .flow.verdict == "FORWARDED"'
        ' and ((.flow.l7.dns.query // "") | sub("[.]+$"; "")) == "backend.shop.svc.cluster.local"'
        " and (.flow.l7.dns.rcode // 0) == 0 and ((.flow.l7.dns.ips // []) | length) > 0",
        None,
    ),
    (
        "status-200-forwarded",
        '.flow.l7.http != null and ns(.flow.source) == "shop" and ns(.flow.destination) == "shop"'
        ' and connects("app=frontend"; "app=backend") and .flow.l7.http.method == "GET" and path == "/status/200"',
        '.flow.verdict == "FORWARDED" and (.flow.l7.type != "RESPONSE" or .flow.l7.http.code == 200)',
    ),
    (
        "fe-be-egress-by-allow-frontend-egress",
        'pv and shop_fe_be and dport == 80 and .flow.traffic_direction == "EGRESS"',
        '.flow.verdict == "FORWARDED" and pol(.flow.egress_allowed_by; "allow-frontend-egress")'
        " and .flow.policy_match_type == 2",
    ),
    (
        "fe-be-ingress-by-allow-frontend-l7",
        'pv and shop_fe_be and dport == 80 and .flow.traffic_direction == "INGRESS"',
        '.flow.verdict == "REDIRECTED" and pol(.flow.ingress_allowed_by; "allow-frontend-l7")'
        " and .flow.policy_match_type == 2",
    ),
    (
        "other-paths-denied",
        '.flow.l7.http != null and shop_fe_be and .flow.l7.type == "REQUEST"'
        ' and (.flow.l7.http.method == "GET" and path == "/status/200" | not)',
        '.flow.verdict == "DROPPED" and (.flow.drop_reason_desc // "DROP_REASON_UNKNOWN") == "DROP_REASON_UNKNOWN"'
        " and ((.flow.l7.http.code // 0) == 0 or .flow.l7.http.code == 403)",
    ),
    (
        "world-egress-denied",
        '.flow.verdict == "DROPPED" and ns(.flow.source) == "shop" and world'
        ' and .flow.drop_reason_desc == "POLICY_DENIED"',
        None,
    ),
    (
        "no-forwarded-to-world",
        'ns(.flow.source) == "shop" and world and (.flow.verdict == "FORWARDED" or .flow.verdict == "REDIRECTED")'
        ' and (.flow.trace_observation_point // "") != "FROM_ENDPOINT"',
        None,
    ),
    (
        "no-allow-all",
        '(ns(.flow.source) == "shop" or ns(.flow.destination) == "shop")'
        ' and (pol(.flow.ingress_allowed_by; "allow-all") or pol(.flow.egress_allowed_by; "allow-all"))',
        None,
    ),
    (
        "no-l4-bypass",
        '(ns(.flow.source) == "shop" or ns(.flow.destination) == "shop")'
        ' and (pol(.flow.ingress_allowed_by; "allow-frontend-to-backend")'
        ' or pol(.flow.egress_allowed_by; "allow-frontend-to-backend"))',
        None,
    ),
]

JQ_NONE = {
    "no-forwarded-to-world",
    "no-allow-all",
    "no-l4-bypass",
}  # expect: none (every match violates)


def stage_path(name: str) -> str:
    return str(rules.shipped_dir() / name)


def window(meta: bigstore.Meta) -> tuple[datetime, datetime]:
    """A window covering the whole store."""
    return (
        datetime.fromtimestamp(meta.start_ns // 10**9 - 1, UTC),
        datetime.fromtimestamp(meta.end_ns // 10**9 + 1, UTC),
    )


def time_check(
    store, stage: str, since: datetime, until: datetime
) -> tuple[float, check.CheckReport]:
    started = time.perf_counter()
    rep = check.run_check(store, [stage_path(stage)], since=since, until=until)
    return time.perf_counter() - started, rep


def summary(rep: check.CheckReport) -> str:
    counts = {s: sum(r.status == s for r in rep.results) for s in STATUSES}
    return " ".join(f"{s} {n}" for s, n in counts.items() if n)


def run_jq(
    files: dict[str, Path], timeout: float
) -> tuple[float, dict[tuple[str, str], tuple[int, int]]]:
    """(seconds, {(rule, cluster): (evidence, violations)}) of the stage-5 jq programs."""
    counts = {}
    started = time.perf_counter()
    deadline = started + timeout
    with tempfile.TemporaryDirectory() as tmp:
        for name, scope, cond in JQ_STAGE5:
            for cluster, path in files.items():
                out = Path(tmp) / "scope.jsonl"
                prog = f"{JQ_DEFS} select({scope})"
                # what a person types: jq -c 'select(...)' cluster.jsonl | tee scope.jsonl | wc -l
                cmd = f"jq -c {sh(prog)} {sh(str(path))} | tee {sh(str(out))} | wc -l"
                evidence = int(bash(cmd, max(1.0, deadline - time.perf_counter())))
                violations = evidence if name in JQ_NONE else 0
                if cond is not None:
                    prog = f"{JQ_DEFS} select(({cond}) | not)"
                    violations = int(bash(f"jq -c {sh(prog)} {sh(str(out))} | wc -l", 600))
                counts[(name, cluster)] = (evidence, violations)
    return time.perf_counter() - started, counts


def bash(cmd: str, timeout: float) -> str:
    """stdout of a shell pipeline; any failing stage (a jq error) fails it."""
    res = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=timeout
    )
    if res.returncode:
        raise SystemExit(f"check_speed: {cmd[:200]}... failed: {res.stderr.strip()[:500]}")
    return res.stdout


def sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def main(argv: list[str] | None = None) -> int:
    """Time check per stage over each store size and stage 5 with jq; print seconds and ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--flows", type=int, action="append", help="store sizes (default 1M and 10M mix flows)"
    )
    ap.add_argument(
        "--jq-flows",
        type=int,
        action="append",
        help="store sizes to run jq over in full (default 1M; larger sizes are extrapolated)",
    )
    ap.add_argument("--no-jq", action="store_true", help="skip jq")
    ap.add_argument("--repeat", type=int, default=2, help="runs per check (best is reported)")
    ap.add_argument(
        "--jq-timeout",
        type=float,
        default=3600.0,
        help="seconds allowed for all jq runs of one size",
    )
    ap.add_argument("--stage", action="append", help="stage files (default: all five)")
    args = ap.parse_args(argv)
    sizes = args.flows or [1_000_000, 10_000_000]
    stages = args.stage or STAGES
    jq_sizes = [] if args.no_jq else (args.jq_flows or [min(sizes)])
    if set(jq_sizes) - set(sizes):
        ap.error("--jq-flows sizes must be among --flows")
    if "stage5.sql" not in stages:
        jq_sizes = []  # jq is compared with stage 5
    print(load_note(), flush=True)
    figures: dict = {"stores": {}}
    stage5: dict[int, tuple[float, check.CheckReport, bigstore.Meta]] = {}
    for n in sizes:
        store, meta = bigstore.build(n)
        since, until = window(meta)
        print(
            f"\n== store-{n}: {meta.total:,} flows, {meta.files:,} files, {meta.bytes / 1e6:,.0f} MB, "
            f"{since:%H:%M}..{until:%H:%M} UTC",
            flush=True,
        )
        per = {}
        for stage in stages:
            runs = [time_check(store, stage, since, until) for _ in range(args.repeat)]
            best, rep = min(runs, key=lambda r: r[0])
            per[stage] = round(best, 3)
            if stage == "stage5.sql":
                stage5[n] = (best, rep, meta)
            slow = max(rep.results, key=lambda r: r.duration_s)
            print(
                f"check {stage} (whole store): {best:6.2f} s (runs {', '.join(f'{r[0]:.2f}' for r in runs)}) "
                f"| {summary(rep)} | slowest rule {slow.rule} {slow.duration_s:.2f} s",
                flush=True,
            )
        recent = datetime.fromtimestamp(meta.end_ns / 1e9, UTC)
        secs, rep = min(
            (
                time_check(store, "stage5.sql", recent - timedelta(minutes=15), recent)
                for _ in range(args.repeat)
            ),
            key=lambda r: r[0],
        )
        per["stage5.sql --since 15m"] = round(secs, 3)
        print(f"check stage5.sql (last 15 minutes): {secs:6.2f} s | {summary(rep)}", flush=True)
        figures["stores"][n] = {
            "flows": meta.total,
            "files": meta.files,
            "bytes": meta.bytes,
            "check_s": per,
        }
    jq_s: dict[int, float] = {}
    for n in jq_sizes:
        paths = bigstore.dump_jsonpb(n)
        gb = sum(p.stat().st_size for p in paths.values()) / 1e9
        secs, counts = run_jq(paths, args.jq_timeout)
        jq_s[n] = secs
        _, rep, _ = stage5[n]
        got = {(r.rule, r.cluster): (r.evidence, r.violations) for r in rep.results}
        bad = {k: (v, got.get(k)) for k, v in counts.items() if got.get(k) != v}
        print(
            f"\njq stage 5 over store-{n} as jsonpb ({gb:.1f} GB, {len(counts)} rule x cluster runs): {secs:.1f} s; "
            f"counts {'equal to check' if not bad else f'DIFFER from check: {bad}'}",
            flush=True,
        )
        if bad:
            return 1
    print("\nstage 5: check vs jq", flush=True)
    ok = True
    for n, (secs, _, meta) in sorted(stage5.items()):
        if n in jq_s:
            jq, how = jq_s[n], "measured"
        elif jq_s:
            base = max(jq_s)
            total = bigstore.build(base)[1].total
            jq, how = (
                jq_s[base] * meta.total / total,
                f"extrapolated from store-{base} (jq is linear)",
            )
        else:
            jq, how = None, ""
        ratio = jq / secs if jq else None
        meets = secs < TARGET_S and (ratio is None or ratio >= TARGET_RATIO)
        if n == max(stage5):
            ok = meets
        print(
            f"  store-{n}: check {secs:.2f} s"
            + (f", jq {jq:,.0f} s ({how}), ratio {ratio:,.0f}x" if jq else "")
            + f" | target < {TARGET_S:g} s and >= {TARGET_RATIO:g}x: {'met' if meets else 'NOT met'}",
            flush=True,
        )
        figures["stores"][n]["jq_s"] = round(jq, 1) if jq else None
        figures["stores"][n]["jq_how"] = how
        figures["stores"][n]["ratio"] = round(ratio) if ratio else None
    save_result("check_speed", figures)
    print(load_note(), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
