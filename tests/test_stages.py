"""The shipped stage files against the lab simulator: each passes on its own stage, fails elsewhere."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flowpipe.codec import decode, storage
from flowpipe.lab import generate as lab
from flowpipe.rules import check
from flowpipe.store.layout import Store

CLUSTERS = ("cluster1", "cluster2")
VARIANTS = ("allow-all-left", "l4-ingress-left", "no-allow-dns", "no-traffic")


def build(root: Path | str, stage: int, **kw) -> Store:
    """A store (a directory, or an s3:// URL) holding the lab's flows of stage."""
    store = Store.open(str(root), create=True)
    for cluster, responses in lab.generate_lab(stage, clusters=CLUSTERS, seed=7, **kw).items():
        if responses:
            flows, events = decode.split_responses(
                decode.decode_responses([r.SerializeToString() for r in responses])
            )
            store.write(cluster, storage.to_storage(flows), events)
    return store


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[tuple[int, str | None], Store]:
    out = {}
    for stage in (1, 2, 3, 4, 5):
        out[(stage, None)] = build(tmp_path_factory.mktemp(f"stage{stage}"), stage)
    for variant in VARIANTS:
        out[(5, variant)] = build(tmp_path_factory.mktemp(variant), 5, variant=variant)
    return out


def failing(rep: check.CheckReport, cluster: str) -> set[str]:
    return {r.rule for r in rep.results if r.cluster == cluster and r.status != "pass"}


def has_traffic(store: Store, cluster: str) -> bool:
    return bool(store.files("flows", cluster))


def run(store: Store, stage: int) -> check.CheckReport:
    # clusters named explicitly: a lab cluster without traffic never wrote to the store
    return check.run_check(store, [f"stage{stage}.sql"], clusters=list(CLUSTERS))


@pytest.mark.parametrize("stage", [1, 2, 3, 4, 5])
def test_stage_file_passes_on_its_own_stage(stores, stage: int):
    rep = run(stores[(stage, None)], stage)
    assert not rep.errors()
    for cluster in CLUSTERS:
        assert has_traffic(stores[(stage, None)], cluster), cluster
        assert failing(rep, cluster) == set(), [
            r.message for r in rep.results if r.status != "pass"
        ]


# (stage file, lab stage) -> rules that must fail on cluster1, the cluster every stage drives
MUST_FAIL = {
    (1, 2): {"dns-allowed-by-allow-all"},
    (1, 3): {
        "dns-allowed-by-allow-all",
        "fe-be-egress-allowed-by-allow-all",
        "fe-be-ingress-allowed-by-allow-all",
    },
    (1, 4): {"fe-be-egress-allowed-by-allow-all", "fe-be-ingress-allowed-by-allow-all"},
    (1, 5): {"fe-be-ingress-allowed-by-allow-all", "no-policy-drops-in-shop"},
    (2, 1): {"dns-through-proxy", "dns-verdict-by-allow-dns", "backend-name-resolved"},
    (2, 3): {"fe-be-still-allowed-by-allow-all"},
    (2, 4): {"fe-be-still-allowed-by-allow-all"},
    (2, 5): {"fe-be-still-allowed-by-allow-all", "no-policy-drops-in-shop"},
    (3, 1): {"fe-be-egress-by-allow-frontend-egress", "fe-be-ingress-by-allow-frontend-to-backend"},
    (3, 2): {"fe-be-egress-by-allow-frontend-egress", "fe-be-ingress-by-allow-frontend-to-backend"},
    (3, 4): {"fe-be-ingress-by-allow-frontend-to-backend"},
    (3, 5): {"fe-be-ingress-by-allow-frontend-to-backend", "no-policy-drops-in-shop"},
    (4, 1): {"fe-be-ingress-redirected-by-allow-frontend-l7", "status-200-forwarded"},
    (4, 2): {"fe-be-ingress-redirected-by-allow-frontend-l7", "status-200-forwarded"},
    (4, 3): {"fe-be-ingress-redirected-by-allow-frontend-l7", "no-l4-bypass"},
    (4, 5): {"no-policy-drops-in-shop"},
    (5, 1): {
        "no-allow-all",
        "dns-allowed-by-allow-dns",
        "world-egress-denied",
        "other-paths-denied",
    },
    (5, 2): {"status-200-forwarded", "world-egress-denied"},
    (5, 3): {
        "no-allow-all",
        "no-l4-bypass",
        "no-forwarded-to-world",
        "fe-be-ingress-by-allow-frontend-l7",
    },
    (5, 4): {"other-paths-denied", "world-egress-denied"},
}


@pytest.mark.parametrize("stage,data", sorted(MUST_FAIL))
def test_stage_file_fails_on_other_stages_naming_the_rules(stores, stage: int, data: int):
    rep = run(stores[(data, None)], stage)
    assert not rep.passed() and not rep.errors()
    got = failing(rep, "cluster1")
    assert MUST_FAIL[(stage, data)] <= got, got
    assert rep.stage_status()[(str(stage), "cluster1")] == "fail"


VARIANT_FAILS = {
    "allow-all-left": {
        "no-allow-all",
        "no-forwarded-to-world",
        "world-egress-denied",
        "other-paths-denied",
    },
    "l4-ingress-left": {"no-l4-bypass", "other-paths-denied"},
    "no-allow-dns": {"dns-allowed-by-allow-dns", "backend-name-resolved"},
    "no-traffic": {
        "dns-allowed-by-allow-dns",
        "backend-name-resolved",
        "status-200-forwarded",
        "fe-be-egress-by-allow-frontend-egress",
        "fe-be-ingress-by-allow-frontend-l7",
        "other-paths-denied",
        "world-egress-denied",
    },
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_stage5_fails_on_every_broken_variant(stores, variant: str):
    rep = run(stores[(5, variant)], 5)
    for cluster in CLUSTERS:
        assert failing(rep, cluster) >= VARIANT_FAILS[variant], (cluster, failing(rep, cluster))
    if variant == "no-traffic":  # the vacuous case: nothing violated, nothing proven
        assert all(r.violations == 0 for r in rep.results)
        assert {r.rule for r in rep.results if r.status == "pass"} == {
            "no-forwarded-to-world",
            "no-allow-all",
            "no-l4-bypass",
        }


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_earlier_stage_files_fail_on_broken_stage5(stores, stage: int, variant: str):
    rep = run(stores[(5, variant)], stage)
    if (stage, variant) == (4, "allow-all-left"):
        # allow-all left beside default-deny allows exactly what stage 4's policies allow: the
        # flows are stage 4's, so stage4.sql rightly passes (stage5.sql is the one that fails)
        assert rep.passed()
    else:
        assert failing(rep, "cluster1"), (stage, variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("broken", CLUSTERS)
def test_variant_broken_on_one_cluster_fails_there_only(tmp_path: Path, variant: str, broken: str):
    store = build(tmp_path / "store", 5, variant=variant, broken_clusters=[broken])
    rep = run(store, 5)
    healthy = next(c for c in CLUSTERS if c != broken)
    assert failing(rep, healthy) == set(), [r.message for r in rep.results if r.cluster == healthy]
    assert failing(rep, broken) >= VARIANT_FAILS[variant]
    assert rep.stage_status() == {("5", healthy): "pass", ("5", broken): "fail"}


def test_recent_window_like_the_guide_uses(tmp_path: Path):
    start = datetime.now(UTC) - timedelta(minutes=10)
    store = build(tmp_path / "store", 5, start_ns=int(start.timestamp()) * 1_000_000_000)
    assert check.run_check(store, ["stage5.sql"], since="15m").passed()
    late = check.run_check(
        store, ["stage5.sql"], since="1m"
    )  # the lab's traffic is older: no evidence
    assert not late.passed() and all(r.violations == 0 for r in late.results)


def _outcome(rep: check.CheckReport) -> list[tuple]:
    return [
        (
            r.rule,
            r.cluster,
            r.status,
            r.evidence,
            r.violations,
            r.message,
            len(r.samples),
            [s.get("time") for s in r.samples],
        )
        for r in rep.results
    ]


@pytest.mark.parametrize("stage", [1, 2, 3, 4, 5])
def test_one_scan_evaluation_equals_rule_by_rule(stores, stage: int, monkeypatch):
    """check reads rules that filter one view in shared scans; the result must be exactly
    what evaluating each rule on its own per cluster gives, on every lab store."""
    for key, store in sorted(stores.items(), key=str):
        together = check.run_check(store, [f"stage{stage}.sql"], clusters=list(CLUSTERS), samples=3)
        with monkeypatch.context() as m:
            m.setattr(check, "_evaluate_together", lambda *a, **k: {})
            alone = check.run_check(
                store, [f"stage{stage}.sql"], clusters=list(CLUSTERS), samples=3
            )
        assert _outcome(together) == _outcome(alone), key
    # the shared path was taken (it is the one this test is about)
    seen = []
    real = check._evaluate_together
    monkeypatch.setattr(
        check, "_evaluate_together", lambda *a, **k: seen.append(1) or real(*a, **k)
    )
    check.run_check(stores[(stage, None)], [f"stage{stage}.sql"], clusters=list(CLUSTERS))
    assert seen
