"""Every resumed stream makes progress: streams cut after K responses over dense data and the real
captures store every flow exactly once within a bounded number of attempts; a relay that keeps
bringing nothing new is a WARNING and a metric."""

from __future__ import annotations

import math
import time

import grpc
from conftest import capture_files, load_capture
from relays import ScriptedRelay
from test_collect import Running, config, make_responses, stored, stored_count, wait_for

from flowpipe.api.observer import observer_pb2
from flowpipe.api.relay import relay_pb2
from flowpipe.ingest.resume import Attempt, ResumePoint
from flowpipe.serve.replay import ReplayServer

S = 1_000_000_000
CUT = Attempt(received=100, cut=True)


def test_resume_asks_for_the_overlap_again():
    rp = ResumePoint(newest_ns=100 * S, overlap_ns=10 * S)
    assert rp.next_since() == 90 * S
    rp.decoded(105 * S, new=40)  # the attempt brought new flows, then was cut
    rp.judge(CUT)
    assert rp.stuck == 0 and rp.next_since() == 95 * S


def test_an_attempt_cut_inside_the_overlap_narrows_the_next_one():
    rp = ResumePoint(newest_ns=100 * S, overlap_ns=10 * S)
    assert rp.next_since() == 90 * S
    rp.decoded(93 * S, new=0)  # only duplicates, cut before reaching 100 s
    rp.judge(CUT)
    assert rp.stuck == 1
    assert rp.narrow and rp.next_since() == 100 * S  # exactly the newest flow, inclusive
    rp.decoded(101 * S, new=99)
    rp.judge(CUT)
    assert rp.stuck == 0 and not rp.narrow and rp.next_since() == 91 * S


def test_an_attempt_cut_right_at_the_newest_flow_narrows_too():
    """The K-th response of the resend is the newest flow itself: the same request again would
    end the same way, forever; the next one asks from that flow instead."""
    rp = ResumePoint(newest_ns=100 * S, overlap_ns=10 * S)
    rp.next_since()
    rp.decoded(100 * S, new=0)
    rp.judge(CUT)
    assert rp.stuck == 0  # it got back to what was stored: not a relay that brings nothing
    assert rp.narrow and rp.next_since() == 100 * S


def test_what_is_not_judged():
    rp = ResumePoint(newest_ns=100 * S, overlap_ns=10 * S)
    rp.next_since()
    rp.judge(Attempt(received=0, cut=True))  # refused: the relay is down, not stuck
    rp.judge(Attempt(received=50, cut=False))  # our watchdog, a pause or a stop
    rp.judge(None)
    assert rp.stuck == 0
    assert rp.stuck == 0 and not rp.narrow and rp.next_since() == 90 * S
    first = ResumePoint(newest_ns=None, overlap_ns=10 * S)
    assert first.next_since() is None  # nothing stored: the collector's --since decides
    first.judge(CUT)
    assert first.stuck == 0


def test_attempts_that_bring_no_flow_at_all_count_up():
    rp = ResumePoint(newest_ns=100 * S, overlap_ns=10 * S)
    for n in range(1, 4):
        rp.next_since()
        rp.judge(Attempt(received=5, cut=True))  # e.g. only node status events, then cut
        assert rp.stuck == n
    assert rp.next_since() == 100 * S


def test_store_failure_rewinds_to_the_committed_flow():
    rp = ResumePoint(newest_ns=100 * S, overlap_ns=10 * S)
    rp.decoded(120 * S, new=10)
    assert rp.committed(110 * S) and not rp.committed(105 * S)
    rp.rewind()
    assert rp.newest_ns == 110 * S and rp.next_since() == 100 * S


def _cut_every_k(relay: ReplayServer, store, cluster: str) -> float:
    """Collect from relay (10 s overlap) until it has every flow; return the attempts it took."""
    with Running(config((cluster, relay.address), resume_overlap=10.0), store) as run:
        wait_for(
            lambda: stored_count(run, cluster) >= relay.imported, timeout=120, what="every flow"
        )
        time.sleep(0.5)  # an attempt or two more: nothing may be stored twice
        attempts = run.metric("flowpipe_collector_reconnects_total", cluster=cluster) + 1
        assert run.metric("flowpipe_collector_attempts_without_progress", cluster=cluster) < 3
        assert run.stop() == 0
    return attempts


def test_cut_every_k_over_dense_data_stores_everything_once(store):
    """1,000 flows in 2 s, a 10 s overlap, streams cut after 100 responses: each resume used to
    receive the same 100 flows of the overlap again and stop at 100 stored, forever."""
    n, k = 1000, 100
    sent = make_responses(n, step_ns=2_000_000, seed=51)
    with ReplayServer(responses=sent, follow=True, abort_after=k) as relay:
        attempts = _cut_every_k(relay, store, "c1")
    got = stored(store)
    assert len(got) == n and len({f.uuid for f in got}) == n
    # a full-overlap attempt that brings nothing new is followed by one that brings k-1 new
    bound = 2 * math.ceil(n / (k - 1)) + 3
    print(f"\ndense: {n} flows, cut every {k} responses: {attempts:.0f} attempts (bound {bound})")
    assert attempts <= bound


def test_cut_every_k_over_the_real_captures_stores_everything_once(store):
    k = 100
    paths = [str(p) for p in capture_files()]
    want = {
        r.flow.SerializeToString(deterministic=True)
        for p in capture_files()
        for r in load_capture(p)
    }
    with ReplayServer(paths, follow=True, cluster="lab", abort_after=k) as relay:
        expected = relay.imported
        attempts = _cut_every_k(relay, store, "lab")
    got = [f.SerializeToString(deterministic=True) for f in stored(store)]
    assert len(got) == len(set(got)) == expected and set(got) == want
    bound = 2 * math.ceil(expected / (k - 2)) + 3  # at most 2 flows share a timestamp here
    print(f"\ncaptures: {expected} flows, cut every {k}: {attempts:.0f} attempts (bound {bound})")
    assert attempts <= bound


def _node_unavailable() -> bytes:
    ev = relay_pb2.NodeStatusEvent(
        state_change=relay_pb2.NODE_UNAVAILABLE, node_names=["node-2"], message="no connection"
    )
    return observer_pb2.GetFlowsResponse(node_status=ev, node_name="relay").SerializeToString()


def test_relay_that_brings_nothing_new_is_a_warning_and_a_metric(store, caplog):
    """A relay whose stream is cut (after a burst of node status events) before any flow, over
    and over: every attempt is counted, a WARNING names cluster and relay, and the gauge the
    FlowpipeCollectorNoProgress alert watches says how many attempts in a row it has been."""
    caplog.set_level("INFO", logger="flowpipe.collect")
    first = make_responses(50, seed=61)
    later = make_responses(20, start_ns=time.time_ns() - 5 * S, seed=62)
    state = {"stuck_calls": 5}

    def get_flows(request, context, n):
        if n == 1:
            yield from (r.SerializeToString() for r in first)
        elif n <= 1 + state["stuck_calls"]:
            for _ in range(5):
                yield _node_unavailable()
        else:  # the relay recovers: new flows, then the stream stays open
            yield from (r.SerializeToString() for r in later)
            while context.is_active():
                time.sleep(0.05)
            return
        context.abort(grpc.StatusCode.UNAVAILABLE, "proxy: stream cut")

    gauge = "flowpipe_collector_attempts_without_progress"
    with ScriptedRelay(get_flows) as relay:
        with Running(config(("c1", relay.address)), store) as run:
            wait_for(lambda: run.metric(gauge, cluster="c1") >= 3, what="three stuck attempts")
            wait_for(lambda: stored_count(run, "c1") == 70, what="flows after the recovery")
            wait_for(lambda: run.metric(gauge, cluster="c1") == 0, what="progress again")
            assert run.stop() == 0
    newest = first[-1].flow.time.seconds * S + first[-1].flow.time.nanos
    since = [r.since.seconds * S + r.since.nanos for r in relay.requests]
    assert since[1] == newest - 1 * S  # the first resume asks for the (1 s) overlap again
    assert all(s == newest for s in since[2 : 2 + state["stuck_calls"]])  # then from the newest
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelname == "WARNING" and "before they brought a new flow" in r.getMessage()
    ]
    assert warnings == [
        f"[c1] relay {relay.address}: 3 attempts in a row were cut before they brought a new "
        "flow (the last after 5 responses); asking from the newest stored flow"
    ]
    assert any(
        r.getMessage() == f"[c1] relay {relay.address} delivers new flows again"
        for r in caplog.records
    )
    assert len(stored(store)) == 70
