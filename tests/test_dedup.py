"""Dedup keys: uuid when present, content fingerprint otherwise; a sliding window of flow time."""

from __future__ import annotations

from test_store import make_flows

from flowpipe.dedup import Deduper, keys


def test_repeats_within_and_across_batches_dropped():
    _, flows, _ = make_flows(10, 1_700_000_000_000_000_000)
    d = Deduper()
    kept, dropped = d.filter(flows)
    assert (kept.num_rows, dropped) == (10, 0)
    again, dropped = d.filter(flows.slice(3, 5))
    assert (again.num_rows, dropped) == (0, 5)


def test_uuidless_flows_use_fingerprints():
    _, flows, _ = make_flows(4, 1_700_000_000_000_000_000, with_uuid=False)
    ks = keys(flows)
    assert all(isinstance(k, int) for k in ks) and len(set(ks)) == 4
    kept, dropped = Deduper().filter(flows.take([0, 1, 1, 2, 0]))
    assert (kept.num_rows, dropped) == (3, 2)


def test_window_forgets_old_keys():
    start = 1_700_000_000_000_000_000
    _, old, _ = make_flows(3, start)
    _, new, _ = make_flows(3, start + 120_000_000_000)
    d = Deduper(window_ns=60_000_000_000)
    d.filter(old)
    d.filter(new)
    kept, _ = d.filter(old)  # older than the window: no longer remembered
    assert kept.num_rows == 3


def test_remember_preloads_stored_keys():
    _, flows, _ = make_flows(3, 1_700_000_000_000_000_000)
    d = Deduper()
    d.remember(set(keys(flows)))
    assert d.filter(flows)[0].num_rows == 0
