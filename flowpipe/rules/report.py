"""Render a CheckReport as text for people, JSON for scripts or JUnit XML for CI; exit codes."""

from __future__ import annotations

import datetime as _dt
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping
from typing import Any

from flowpipe.codec.hubble import compact_line_row
from flowpipe.common.text import json_default
from flowpipe.rules.check import CheckReport, RuleResult
from flowpipe.rules.status import STATUSES, Status

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
FORMATS = ("text", "json", "junit")
_FLOW_ROW = frozenset({"time", "verdict", "src_ip", "dst_ip"})  # what a compact line is made of
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def exit_code(report: CheckReport) -> int:
    """0 all error-severity rules pass (warnings allowed), 1 a rule failed, 2 a rule could not run."""
    if report.errors():
        return EXIT_ERROR
    return EXIT_OK if report.passed() else EXIT_FAILED


def render(report: CheckReport, fmt: str) -> str:
    """The report in fmt (text, json or junit)."""
    if fmt == "json":
        return render_json(report)
    if fmt == "junit":
        return render_junit(report)
    return render_text(report)


def flow_line(row: Mapping[str, Any]) -> str:
    """One offending flow the way `hubble observe` prints it (plus policy names); a row of other
    columns (a rule may select its own) as JSON. Never raises: a line never costs the report."""
    if row.keys() >= _FLOW_ROW:
        try:
            return compact_line_row(row)
        except Exception:  # odd values under flow column names: shown as they are
            pass
    return json.dumps(dict(row), default=json_default, sort_keys=True)[:300]


# ------------------------------------------------------------------ text


def _period(report: CheckReport) -> str:
    if not report.since and not report.until:
        return "all stored flows"
    since = _iso(report.since) if report.since else "the first stored flow"
    until = _iso(report.until) if report.until else "now"
    return f"flows from {since} to {until}"


def render_text(report: CheckReport) -> str:
    """A table of rule x cluster results, then why and sample flows of every failure."""
    files = list(dict.fromkeys(r.file for r in report.results))
    prefix = len(files) > 1
    lines = [
        f"flowpipe check: {', '.join(files)} on {', '.join(report.clusters)}; {_period(report)}",
        "",
    ]
    rows = [
        (
            f"{r.file}/{r.rule}" if prefix else r.rule,
            r.cluster,
            r.status.upper() if r.status != Status.PASS else str(r.status),
            str(r.evidence),
            str(r.violations),
        )
        for r in report.results
    ]
    head = ("RULE", "CLUSTER", "STATUS", "EVIDENCE", "VIOLATIONS")
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(5)]
    for row in [head, *rows]:
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    # one block per failing rule and message: "no evidence" on five clusters is one finding
    blocks: dict[tuple, list[RuleResult]] = {}
    for r in report.results:
        if r.status != Status.PASS:
            key = (r.file, r.rule, r.status, r.message, id(r) if r.samples else None)
            blocks.setdefault(key, []).append(r)
    for group in blocks.values():
        lines += ["", *_failure_text(group)]
    lines.append("")
    stages = report.stage_status()
    for stage in dict.fromkeys(s for s, _ in stages):
        states = ", ".join(
            f"{c} {stages[(stage, c)]}" for c in report.clusters if (stage, c) in stages
        )
        lines.append(f"stage {stage}: {states}")
    counts = Counter(r.status for r in report.results)
    verdict = {EXIT_OK: "PASS", EXIT_FAILED: "FAIL", EXIT_ERROR: "ERROR"}[exit_code(report)]
    lines.append(
        f"result: {verdict} ({counts[Status.PASS]} passed, {counts[Status.WARN]} warnings, "
        f"{counts[Status.FAIL]} failed, {counts[Status.ERROR]} errors)"
    )
    return "\n".join(lines) + "\n"


def _failure_text(group: list[RuleResult]) -> list[str]:
    r = group[0]
    where = ", ".join(g.cluster for g in group)
    out = [f"{r.status.upper()} {r.rule} on {where} ({r.file}): {r.message}", f"  why: {r.why}"]
    for row in r.samples:
        out.append(f"  {flow_line(row)}")
    if r.violations > len(r.samples) and r.samples:
        out.append(
            f"  ... and {r.violations - len(r.samples)} more (paste the rule's SELECT into flowpipe query)"
        )
    return out


# ------------------------------------------------------------------ json


def _iso(dt: _dt.datetime | None) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


def result_dict(r: RuleResult) -> dict[str, Any]:
    """One result with stable keys (samples as flows-view rows plus their compact lines)."""
    return {
        "file": r.file,
        "stage": r.stage,
        "rule": r.rule,
        "cluster": r.cluster,
        "status": r.status,
        "severity": r.severity,
        "evidence": r.evidence,
        "violations": r.violations,
        "why": r.why,
        "message": r.message,
        "duration_s": r.duration_s,
        "sample_lines": [flow_line(s) for s in r.samples],
        "samples": r.samples,
    }


def render_json(report: CheckReport) -> str:
    """One JSON document with stable keys, for scripts."""
    counts = Counter(r.status for r in report.results)
    doc = {
        "passed": report.passed(),
        "exit_code": exit_code(report),
        "since": _iso(report.since),
        "until": _iso(report.until),
        "clusters": report.clusters,
        "counts": {str(s): counts.get(s, 0) for s in STATUSES},
        "stages": [
            {"stage": s, "cluster": c, "status": v} for (s, c), v in report.stage_status().items()
        ],
        "results": [result_dict(r) for r in report.results],
    }
    return json.dumps(doc, indent=2, default=json_default) + "\n"


# ------------------------------------------------------------------ junit


def _x(text: str) -> str:
    return _XML_BAD.sub("?", text)


def render_junit(report: CheckReport) -> str:
    """JUnit XML: a testsuite per rule file, a testcase per rule x cluster."""
    root = ET.Element("testsuites", name="flowpipe check")
    by_file: dict[str, list[RuleResult]] = {}
    for r in report.results:
        by_file.setdefault(r.file, []).append(r)
    for file, results in by_file.items():
        counts = Counter(r.status for r in results)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=_x(file),
            tests=str(len(results)),
            failures=str(counts[Status.FAIL]),
            errors=str(counts[Status.ERROR]),
            skipped="0",
            time=f"{sum(r.duration_s for r in results):.3f}",
        )
        for r in results:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=_x(f"flowpipe.{r.stage}.{r.cluster}"),
                name=_x(r.rule),
                time=f"{r.duration_s:.3f}",
            )
            body = "\n".join([f"why: {r.why}", *(flow_line(s) for s in r.samples)])
            if r.status == Status.FAIL:
                ET.SubElement(case, "failure", message=_x(r.message), type="fail").text = _x(body)
            elif r.status == Status.ERROR:
                ET.SubElement(case, "error", message=_x(r.message), type="error").text = _x(body)
            elif r.status == Status.WARN:  # JUnit has no warning: a passing case that says so
                ET.SubElement(case, "system-out").text = _x(f"WARNING: {r.message}\n{body}")
    total = Counter(r.status for r in report.results)
    root.set("tests", str(len(report.results)))
    root.set("failures", str(total[Status.FAIL]))
    root.set("errors", str(total[Status.ERROR]))
    root.set("time", f"{sum(r.duration_s for r in report.results):.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
