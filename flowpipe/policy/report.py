"""Render a WhatIfReport: text for people (like `flowpipe check`), JSON lines for scripts."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from flowpipe.codec import hubble
from flowpipe.policy.whatif import Decision, WhatIfReport, decision_dict
from flowpipe.rules.report import flow_line

EXIT_OK, EXIT_DENIED = 0, 1
FORMATS = ("text", "json")
_TITLES = {
    "denied": "WOULD BE DENIED",
    "allowed": "NEWLY ALLOWED",
    "unknown": "UNKNOWN",
}


def exit_code(report: WhatIfReport) -> int:
    """0: nothing observed as allowed would be denied; 1: something would."""
    return EXIT_DENIED if report.would_deny() else EXIT_OK


def render(report: WhatIfReport, fmt: str) -> str:
    return render_json(report) if fmt == "json" else render_text(report)


def render_json(report: WhatIfReport) -> str:
    """One JSON object per decision and line."""
    return "".join(json.dumps(decision_dict(d), sort_keys=False) + "\n" for d in report.decisions)


def _iso(dt: datetime | None, default: str) -> str:
    return dt.isoformat().replace("+00:00", "Z") if dt else default


def _when(ns: int | None) -> str:
    if ns is None:
        return "N/A"
    return hubble.stamp_milli(datetime.fromtimestamp(ns / 1e9, UTC))


def render_text(report: WhatIfReport) -> str:
    """Notes, then per cluster the connections that would be denied, newly allowed, unknown."""
    n = len(report.policies)
    lines = [
        f"flowpipe policy whatif: {n} polic{'y' if n == 1 else 'ies'} from {len(report.files)} "
        f"file{'' if len(report.files) == 1 else 's'} on {', '.join(report.clusters)}; flows from "
        f"{_iso(report.since, 'the first stored flow')} to {_iso(report.until, 'now')}",
    ]
    if report.notes:
        lines.append("")
        lines += [f"note: {note}" for note in report.notes]
    if report.unsupported:
        lines.append("")
        lines += [f"unsupported: {u.text()}" for u in report.unsupported]
    for cluster in report.clusters:
        lines += ["", f"== {cluster}"]
        for change in ("denied", "allowed", "unknown"):
            found = report.by_change(change, cluster)
            lines.append(f"{_TITLES[change]}: {len(found) or 'none'}")
            for d in found:
                lines += _block(d)
        other = [d for d in report.by_change("same", cluster) if d.other_policies]
        if other:
            lines.append(f"SAME VERDICT, OTHER POLICIES: {len(other)}")
            for d in other:
                lines += _block(d)
        counts = {
            c: len(report.by_change(c, cluster)) for c in ("denied", "allowed", "unknown", "same")
        }
        lines.append(
            f"{cluster}: {counts['denied']} would be denied, {counts['allowed']} newly allowed, "
            f"{counts['unknown']} unknown, {counts['same']} unchanged"
            + (f" ({len(other)} decided by other policies)" if other else "")
        )
    denied = len(report.by_change("denied"))
    unknown = len(report.by_change("unknown"))
    lines.append("")
    if denied:
        lines.append(
            f"result: FAIL ({denied} decision{'s' if denied != 1 else ''} on connections observed "
            "as allowed would deny them)"
        )
    else:
        tail = f"; {unknown} unknown, see above" if unknown else ""
        lines.append(f"result: PASS (nothing observed as allowed would be denied{tail})")
    return "\n".join(lines) + "\n"


def _block(d: Decision) -> list[str]:
    v = d.verdict
    predicted = v.verdict or v.predicted
    span = f"{_when(d.first)} to {_when(d.last)}"
    if d.observed:
        seen = f"{d.flows} flow{'s' if d.flows != 1 else ''} ({span}), stored {d.observed}"
    else:  # decided at a point the flows never reached (dropped before, or not collected)
        seen = f"not seen at this point (the connection: {span})"
    out = [
        f"  {d.direction} {d.where()}: {seen}, would be {predicted}",
        f"    why: {v.reason}" if v.reason else "    why: depends on constructs not evaluated",
    ]
    if v.policies:
        out.append(f"    policies: {', '.join(v.policies)}")
    if d.observed_policies:
        out.append(f"    stored verdict names: {', '.join(d.observed_policies)}")
    if v.unknown:
        out.append(f"    not evaluated: {', '.join(v.unknown)}")
    if v.pending:
        out.append(f"    note: {v.pending}")
    if d.example:
        out.append(f"    {flow_line(d.example)}")
    return out
