"""What the collector's threads share: the inbox's byte count, the deduper, the resume path's
reads of the store during a compaction, and a pause asked for while a dial is prepared."""

from __future__ import annotations

import fcntl
import os
import sys
import threading
import time

import pytest
from relays import ScriptedRelay
from test_collect import Running, config, make_responses, stored, stored_count, wait_for
from test_store import make_flows

from flowpipe.codec import storage
from flowpipe.ingest import stream
from flowpipe.ingest.children import database_error
from flowpipe.ingest.collector import Collector, Inbox
from flowpipe.ingest.config import CollectConfig, RelayConfig, TLSConfig
from flowpipe.ingest.dedup import Deduper, keys
from flowpipe.serve.replay import ReplayServer
from flowpipe.store import compact
from flowpipe.store.layout import LOCK


@pytest.fixture
def busy_switching():
    """Threads switch as often as CPython allows, so unlocked read-modify-writes interleave."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def _run_threads(*targets) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


def test_inbox_byte_count_is_exact_under_concurrent_put_and_take(busy_switching):
    """The stream thread adds, the flusher subtracts: a lost update made the count drift, and a
    count stuck above max_buffer would hold the stream in back-pressure for ever."""
    inbox = Inbox()
    batches = [[b"x" * (1 + (i * 7 + j) % 300) for j in range(1 + i % 5)] for i in range(40_000)]
    done = threading.Event()

    def stream_thread():
        for batch in batches:
            inbox.put(batch)
        done.set()

    def flusher():
        while not (done.is_set() and not inbox.rows):
            inbox.take(3)

    assert _run_threads(stream_thread, flusher) == []
    assert (len(inbox.rows), inbox.nbytes) == (0, 0)


def test_deduper_shared_by_the_stream_thread_and_the_flusher(busy_switching):
    """The stream thread remembers stored keys on resume while the flusher filters, and forgets
    the keys of flows a store failure dropped; nothing may raise and no key may be lost."""
    _, flows, _ = make_flows(200, 1_700_000_000_000_000_000)
    stored_keys = [[(1 << 62) + i * 1000 + j for j in range(1000)] for i in range(60)]
    d = Deduper()

    def stream_thread():
        for ks in stored_keys:
            d.remember(ks)

    def flusher():
        for _ in range(60):
            kept, _, fresh = d.filter(flows)
            assert kept.num_rows == flows.num_rows
            d.forget(fresh)  # as after a failed commit: the relay is asked for them again

    assert _run_threads(stream_thread, flusher) == []
    assert len(d) == 60_000  # every remembered key, none of the forgotten ones
    assert d.filter(flows)[0].num_rows == flows.num_rows


def _swap_if_possible(store) -> bool:
    """Run a real compaction now if nothing holds off its swap (a reader's shared lock)."""
    fd = os.open(store.root / LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # (releases the probe's lock, if it got it)
    report = compact.compact(store)
    assert report.merged_files >= 2
    return True


def test_resume_reads_stored_keys_without_a_compaction_swap_in_between(store):
    """A compaction that swapped files while the resume path read the overlap's keys failed the
    read (StoreError), which stopped the whole collector."""
    hour_ago = (time.time_ns() // 3_600_000_000_000 - 3) * 3_600_000_000_000
    first, _, _ = make_flows(50, hour_ago + 60_000_000_000)
    _, flows, _ = make_flows(100, hour_ago + 60_000_000_000)
    store.write("c1", storage.to_storage(flows.slice(0, 50)))  # two files of a closed hour:
    store.write("c1", storage.to_storage(flows.slice(50)))  # compaction merges them
    cfg = config(("c1", "127.0.0.1:1"), resume_overlap=4 * 3600.0)
    collector = Collector(cfg, store)
    collector._prepare()
    assert database_error(collector._database, store) is None
    st = collector.clusters["c1"]

    real_keys_in = store.keys_in
    swapped: list[bool] = []

    def keys_in(path, *args, **kwargs):
        if not swapped:  # right after the resume path listed the files, before it reads one
            swapped.append(_swap_if_possible(store))
        return real_keys_in(path, *args, **kwargs)

    store.keys_in = keys_in
    since = collector._since(st, None)
    assert since == st.resume.newest_ns - int(4 * 3600 * 1e9)
    assert swapped == [False]  # the reader held the swap off
    assert len(st.deduper) == 100 and set(keys(flows)) <= st.deduper._seen
    assert _swap_if_possible(store)  # and once it is done, compaction goes ahead


def test_pause_while_the_resume_point_is_worked_out_cancels_that_dial():
    """The collector pauses the stream when a commit fails; a pause that came while the stream
    was asking where to resume was lost: the dial went ahead, from a resume point computed
    before the failure, and everything it brought was dropped as 'paused'."""
    response = make_responses(1)[0].SerializeToString()
    held = threading.Event()

    def get_flows(request, context, n):
        yield response
        held.wait(10)  # a follow stream stays open

    asked: list[int] = []
    calls_when_asked: list[int] = []
    first_message_after: list[int] = []
    with ScriptedRelay(get_flows) as relay:
        rc = RelayConfig("c1", relay.address, tls=TLSConfig(enabled=False))
        cfg = CollectConfig(relays=[rc], backoff_initial=0.02, backoff_max=0.05)

        def resume_since(last):
            asked.append(1)
            calls_when_asked.append(relay.calls)
            if len(asked) == 1:
                fs.pause(0.2)  # e.g. a commit failed just now, in the flusher
            return None

        def on_messages(batch):
            first_message_after.append(len(asked))
            fs.stop()

        fs = stream.FlowStream(rc, cfg, resume_since=resume_since, on_messages=on_messages)
        t = threading.Thread(target=fs.run, daemon=True)
        t.start()
        t.join(20)
        held.set()
        assert not t.is_alive()
    assert calls_when_asked[:2] == [0, 0]  # the paused dial was not made
    assert first_message_after == [2]  # what came, came to the dial after the pause
    assert relay.calls == 1


def test_two_relays_under_back_pressure_both_stored_exactly_once(store):
    """Two relays pushing as fast as they can, each with its own receiving process, share one
    flusher and a small buffer (back-pressure on both): neither is starved, nothing is lost or
    stored twice."""
    n = 12_000
    a = make_responses(n, node="a-node", seed=61)
    b = make_responses(n, node="b-node", seed=62)
    cfg = config(
        ("c1", "placeholder"), ("c2", "placeholder"), max_buffer_bytes=256 * 1024, flush_rows=3000
    )
    with ReplayServer(responses=a, follow=True) as ra, ReplayServer(responses=b, follow=True) as rb:
        cfg.relays[0].address, cfg.relays[1].address = ra.address, rb.address
        with Running(cfg, store) as run:
            wait_for(
                lambda: stored_count(run, "c1") == n and stored_count(run, "c2") == n,
                timeout=120,
                what="both relays' flows stored",
            )
            assert run.stop() == 0
    for cluster, sent in (("c1", a), ("c2", b)):
        got = [f.uuid for f in stored(store, cluster)]
        assert len(got) == len(set(got)) == n
        assert set(got) == {r.flow.uuid for r in sent}
