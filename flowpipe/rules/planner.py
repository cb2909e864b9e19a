"""The shared-scan planner of check: rules that filter rows of one view, read together in a few scans.

A rule `SELECT * FROM flows WHERE ...` (or a convenience view of flows/events) is a row filter:
instead of one query per rule and cluster, every such rule is counted in a few scans of the base
view, grouped by cluster, each scan filtering one key column inside the Parquet reader."""

from __future__ import annotations

from dataclasses import dataclass

from flowpipe.common.sql import timestamp_literal
from flowpipe.rules import sandbox
from flowpipe.rules.rulefile import Rule, RuleFile
from flowpipe.views import catalog as views


@dataclass
class Shape:
    """A rule that filters rows of one base view (flows or events): `SELECT * FROM v WHERE c`."""

    rf: RuleFile
    rule: Rule
    base: str
    scope: str  # the rows the rule is about, as one condition over the base view
    keys: list[
        list[str]
    ]  # per AND term of the rule's WHERE: scan-filterable comparisons (see sandbox.conjuncts)
    view_keys: list[str]  # scan-filterable terms of the view's own filter (e.g. event_type = 5)


def shape(rf: RuleFile, rule: Rule) -> Shape | None:
    """The rule as a row filter of flows/events, or None when it is more than that."""
    found = sandbox.row_filter(rule.sql)
    if found is None:
        return None
    view, cond = found
    conds = [cond] if cond else []
    keys = [k for _, k in sandbox.conjuncts(cond)] if cond else []
    view_keys: list[str] = []
    while view not in ("flows", "events"):  # a convenience view: its own filter of flows/events
        inner = views.CONVENIENCE_VIEWS.get(view)
        found = sandbox.row_filter(inner) if inner else None
        if found is None:
            return None
        view, cond = found
        conds = ([cond] if cond else []) + conds
        view_keys += [k[0] for _, k in sandbox.conjuncts(cond) if len(k) == 1] if cond else []
    return Shape(rf, rule, view, " AND ".join(f"({c})" for c in conds) or "true", keys, view_keys)


@dataclass
class Piece:
    """Rows of one rule read by one scan: those of `key` (filtered inside the scan) and `extra`."""

    shape: Shape
    key: str | None
    extra: str | None  # earlier OR branches are not true: the pieces of a rule are disjoint

    @property
    def rows(self) -> str:
        """The piece's rows as one condition (without the scan's WHERE)."""
        return " AND ".join(
            [f"({self.key})"] * (self.key is not None)
            + [self.shape.scope]
            + [self.extra] * bool(self.extra)
        )

    @property
    def violations(self) -> str:
        if self.shape.rule.expect == "all":
            return f"{self.rows} AND NOT coalesce(({self.shape.rule.condition}), false)"
        return self.rows if self.shape.rule.expect == "none" else "false"


def plan(shapes: list[Shape]) -> list[Piece]:
    """Split every rule into pieces, each read by the scan of one key.

    A rule's key is one of its column = constant terms: rows failing it are skipped inside the
    scan, before DuckDB decodes the other columns (e.g. label lists). A rule whose only such
    terms sit in an OR (src_namespace = 'shop' OR dst_namespace = 'shop') is read in disjoint
    pieces, one per branch. Keys are chosen so that few scans cover every rule: each scan
    costs a pass over every file of the window."""
    chosen: list[str] = []

    def options(sh: Shape) -> tuple[list[str], list[list[str]]]:
        singles = [ks[0] for ks in sh.keys if len(ks) == 1]
        splits = [ks for ks in sh.keys if len(ks) > 1]
        return (singles, splits) if singles or splits else (sh.view_keys, [])

    def covered(sh: Shape) -> bool:
        singles, splits = options(sh)
        return any(k in chosen for k in singles) or any(
            all(k in chosen for k in ks) for ks in splits
        )

    # rules that can only be read in pieces need every branch of one of their ORs
    for sh in shapes:
        singles, splits = options(sh)
        if not singles and splits and not covered(sh):
            best = max(splits, key=lambda ks: sum(k in chosen for k in ks))
            chosen += [k for k in best if k not in chosen]
    # then, greedily, the key shared by most rules not yet covered
    while True:
        todo = [sh for sh in shapes if not covered(sh) and options(sh)[0]]
        if not todo:
            break
        votes: dict[str, int] = {}
        for sh in todo:
            for k in dict.fromkeys(options(sh)[0]):
                votes[k] = votes.get(k, 0) + 1
        chosen.append(max(votes, key=lambda k: votes[k]))
    out = []
    for sh in shapes:
        singles, splits = options(sh)
        key = next((k for k in chosen if k in singles), None)
        if key is not None or not splits:
            out.append(Piece(sh, key, None))
            continue
        branches = next(ks for ks in splits if all(k in chosen for k in ks))
        for i, k in enumerate(branches):
            extra = " AND ".join(f"({b}) IS NOT TRUE" for b in branches[:i]) or None
            out.append(Piece(sh, k, extra))
    return out


def together_sql(base: str, key: str | None, pieces: list[Piece], k: int = 0) -> str:
    """One scan of base: per cluster and piece, evidence (e<i>), violations (v<i>) and, for
    samples, the times of the k oldest violations (t<i>) and how many violations have a time (n<i>)."""
    cols = []
    for i, pc in enumerate(pieces):
        cols.append(f"count(*) FILTER (WHERE {pc.rows}) AS e{i}")
        cols.append(f"count(*) FILTER (WHERE {pc.violations}) AS v{i}")
        if k > 0:
            cols.append(f"min(epoch_ns(time), {int(k)}) FILTER (WHERE {pc.violations}) AS t{i}")
            cols.append(f"count(time) FILTER (WHERE {pc.violations}) AS n{i}")
    # the key alone is filtered inside the scan; any piece's rows are then picked before the
    # view's columns are computed (they are, for those rows only)
    anyone = " OR ".join(dict.fromkeys(f"({pc.shape.scope})" for pc in pieces))
    where = f"({key}) AND ({anyone})" if key else anyone
    return f"SELECT cluster,\n  {_SEP.join(cols)}\nFROM {base}\nWHERE {where}\nGROUP BY cluster"


_SEP = ",\n  "
_FLAG = "__flowpipe_sample_"  # columns added to sample rows, dropped before they are reported


def samples_fetch_sql(base: str, times: list[int], pieces: list[Piece]) -> str:
    """Rows of base at the given times (ns) with, per piece, whether they violate it."""
    flags = [f"({pc.violations}) AS {_FLAG}{i}" for i, pc in enumerate(pieces)]
    at = ", ".join(timestamp_literal(t) for t in sorted(set(times)))
    return f"SELECT *,\n  {_SEP.join(flags)}\nFROM {base}\nWHERE time IN ({at})"
