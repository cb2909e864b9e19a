"""Simulated Hubble flows of the Cilium zero-trust lab guide, per stage and cluster.

The guide (two GKE clusters, namespace shop, five policy stages) quotes real `hubble observe`
output; `generate` replays each stage's commands and emits the flows Cilium would report for
them, event for event, so rules and dashboards can be exercised without a cluster.
See docs/lab.md for what is emitted and what is approximated.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from flowpipe.api.observer import observer_pb2
from flowpipe.codec import hubble as hubble_format
from flowpipe.errors import ConfigError
from flowpipe.lab import cluster as lab_cluster
from flowpipe.lab import scenarios as lab_scenarios
from flowpipe.lab.datapath import Recorder
from flowpipe.lab.traffic import Client

STAGES = (1, 2, 3, 4, 5)
VARIANTS = dict(lab_scenarios.VARIANTS)
CLUSTERS = tuple(lab_cluster.CLUSTERS)
STAGE_DESCRIPTIONS = {
    1: "allow-all: FE->BE HTTP and DNS forwarded, policy-verdict:all by allow-all",
    2: "allow-dns: DNS to kube-dns:53 through the DNS proxy (L3-L4 REDIRECTED, dns-request/response proxy)",
    3: "L4 pair: FE->BE:80 allowed L3-L4 by allow-frontend-egress / allow-frontend-to-backend",
    4: "L7: backend ingress REDIRECTED to Envoy by allow-frontend-l7; allow-all still lets /status/500 through",
    5: "default-deny: DNS ok, /status/200 = 200, other paths 403 (L7 DROPPED), world egress POLICY_DENIED",
}


def _check(stage: int, variant: str | None) -> None:
    if stage not in STAGES:
        raise ConfigError(f"unknown lab stage {stage!r} (stages: {', '.join(map(str, STAGES))})")
    if variant is None:
        return
    if variant not in VARIANTS:
        raise ConfigError(f"unknown lab variant {variant!r} (variants: {', '.join(VARIANTS)})")
    if stage != 5:
        raise ConfigError(
            f"variant {variant!r} is a broken stage 5; it does not apply to stage {stage}"
        )


def _seeded(seed: int, *parts: object) -> random.Random:
    digest = hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


STAGE_SPAN_NS = 300 * 1_000_000_000  # every stage's traffic fits in five minutes


def parse_start(text: str) -> int | None:
    """'guide' -> None (the guide's timestamps), 'now' -> five minutes ago (the stage's traffic
    ends now), else a time point: RFC 3339 or a duration before now (ns)."""
    import time

    from flowpipe.common import times

    if text == "guide":
        return None
    if text == "now":
        return time.time_ns() - STAGE_SPAN_NS
    return times.parse_time_ns(text, "--start")


def generate(
    stage: int,
    cluster: str,
    *,
    variant: str | None = None,
    start_ns: int | None = None,
    seed: int | None = None,
) -> list[observer_pb2.GetFlowsResponse]:
    """The flows Hubble Relay returns for one stage on one cluster, oldest first."""
    # start_ns moves the timeline (default: the guide's own timestamps, 2 Oct 2025 UTC);
    # seed fixes ports, jitter and uuids (default: uuid4 and random jitter)
    _check(stage, variant)
    cl = lab_cluster.cluster(cluster)
    if variant == "no-traffic":
        return []
    rng = random.Random() if seed is None else _seeded(seed, stage, cluster)
    ids = None if seed is None else _seeded(seed, stage, cluster, "uuid")

    def new_uuid() -> str:
        return str(uuid.uuid4() if ids is None else uuid.UUID(int=ids.getrandbits(128), version=4))

    names = lab_scenarios.policies(stage, variant)
    revision = lab_cluster.STAGE_REVISION[stage]
    rec = Recorder(cl, [lab_cluster.policy(cluster, n, revision) for n in sorted(names)], new_uuid)
    anchor = lab_scenarios.ANCHORS[stage] if start_ns is None else start_ns
    lab_scenarios.run(Client(rec, cl, names, rng), stage, anchor)
    flows = sorted(rec.flows, key=lambda f: (f.time.seconds, f.time.nanos))
    return [
        observer_pb2.GetFlowsResponse(flow=f, node_name=f.node_name, time=f.time) for f in flows
    ]


def generate_lab(
    stage: int,
    *,
    clusters: Sequence[str] = CLUSTERS,
    variant: str | None = None,
    broken_clusters: Iterable[str] | None = None,
    start_ns: int | None = None,
    seed: int | None = None,
) -> dict[str, list[observer_pb2.GetFlowsResponse]]:
    """generate() for every cluster; variant applies to broken_clusters only (default: all)."""
    clusters = list(clusters)
    broken = set(clusters if broken_clusters is None else broken_clusters)
    if broken_clusters is not None and variant is None:
        raise ConfigError("a broken cluster needs a variant (see `flowpipe lab list`)")
    if broken - set(clusters):
        raise ConfigError(
            f"broken cluster(s) {', '.join(sorted(broken - set(clusters)))} not among {', '.join(clusters)}"
        )
    return {
        c: generate(
            stage, c, variant=variant if c in broken else None, start_ns=start_ns, seed=seed
        )
        for c in clusters
    }


def write_jsonpb(responses: Iterable[observer_pb2.GetFlowsResponse], path: str | Path) -> int:
    """Write responses as `hubble observe -o jsonpb` lines; returns how many were written."""
    lines = [hubble_format.jsonpb(r) + "\n" for r in responses]
    try:
        Path(path).write_text("".join(lines), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return len(lines)


def write_lab(
    out_dir: str | Path,
    stage: int,
    *,
    variant: str | None = None,
    broken_clusters: Iterable[str] | None = None,
    start_ns: int | None = None,
    seed: int | None = None,
) -> dict[str, tuple[Path, int]]:
    """generate_lab() written as <out_dir>/<cluster>.jsonl; returns {cluster: (path, flows)}."""
    lab = generate_lab(
        stage, variant=variant, broken_clusters=broken_clusters, start_ns=start_ns, seed=seed
    )
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out}: {exc.strerror or exc}") from exc
    return {c: (out / f"{c}.jsonl", write_jsonpb(rs, out / f"{c}.jsonl")) for c, rs in lab.items()}


def catalog() -> list[str]:
    """Lines describing the stages and the broken variants (for `flowpipe lab list`)."""
    lines = ["stages:"]
    lines += [f"  {s}  {STAGE_DESCRIPTIONS[s]}" for s in STAGES]
    lines.append("variants (stage 5; --broken-cluster limits them to some clusters):")
    width = max(map(len, VARIANTS))
    lines += [f"  {name:<{width}}  {text}" for name, text in VARIANTS.items()]
    lines.append(f"clusters: {', '.join(CLUSTERS)}")
    return lines
