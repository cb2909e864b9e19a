"""Dedup keys: uuid when present, content fingerprint otherwise."""

from __future__ import annotations

from test_store import make_flows

from flowpipe.ingest.dedup import Deduper, keys


def test_repeats_within_and_across_batches_dropped():
    _, flows, _ = make_flows(10, 1_700_000_000_000_000_000)
    d = Deduper()
    kept, dropped, _ = d.filter(flows)
    assert (kept.num_rows, dropped) == (10, 0)
    again, dropped, _ = d.filter(flows.slice(3, 5))
    assert (again.num_rows, dropped) == (0, 5)


def test_uuidless_flows_use_fingerprints():
    _, flows, _ = make_flows(4, 1_700_000_000_000_000_000, with_uuid=False)
    ks = keys(flows)
    assert all(isinstance(k, int) for k in ks) and len(set(ks)) == 4
    kept, dropped, _ = Deduper().filter(flows.take([0, 1, 1, 2, 0]))
    assert (kept.num_rows, dropped) == (3, 2)


def test_remember_preloads_stored_keys():
    _, flows, _ = make_flows(3, 1_700_000_000_000_000_000)
    d = Deduper()
    d.remember(set(keys(flows)))
    assert d.filter(flows)[0].num_rows == 0


def test_forgotten_keys_are_accepted_again():
    _, flows, _ = make_flows(4, 1_700_000_000_000_000_000)
    d = Deduper()
    kept, _, fresh = d.filter(flows)
    d.forget(fresh[:2])  # e.g. their file could not be committed
    again, dropped, _ = d.filter(flows)
    assert (again.num_rows, dropped) == (2, 2)
