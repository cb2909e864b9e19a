"""replay: recorded files or in-memory responses served as a fake Relay, with faults, rate and restarts."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import grpc
import pytest

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2, observer_pb2_grpc
from flowpipe.serve.replay import ReplayServer
from tests.conftest import CAPTURES
from tests.support.replay import ReplayProcess

Req = observer_pb2.GetFlowsRequest
TEN = str(CAPTURES / "basic-sample-10-flows.jsonl")


def stub_for(address: str):
    channel = grpc.insecure_channel(address)
    return channel, observer_pb2_grpc.ObserverStub(channel)


def test_replays_files_and_fed_responses(captures, port):
    with ReplayServer([TEN], captures[400:405], port=port, cluster="rec") as rs:
        ch, stub = stub_for(rs.address)
        with ch:
            got = list(stub.GetFlows(Req(), timeout=20))
            assert len(got) == 15 and rs.imported == 15
            nodes = stub.GetNodes(observer_pb2.GetNodesRequest()).nodes
            assert all(n.name.startswith("rec/") for n in nodes)


def test_abort_after_counts_per_call(captures, port):
    with ReplayServer(responses=captures[:30], port=port, abort_after=7) as rs:
        ch, stub = stub_for(rs.address)
        with ch:
            for _ in range(2):  # every call gets its own 7 responses
                got = []
                with pytest.raises(grpc.RpcError) as err:
                    for r in stub.GetFlows(Req(), timeout=20):
                        got.append(r)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert len(got) == 7


def test_lost_events_every_n_flows(captures, port):
    with ReplayServer(responses=captures[:25], port=port, lost_events_every=10) as rs:
        ch, stub = stub_for(rs.address)
        with ch:
            kinds = [r.WhichOneof("response_types") for r in stub.GetFlows(Req(), timeout=20)]
            lost = [r for r in stub.GetFlows(Req(), timeout=20) if r.HasField("lost_events")]
    assert kinds.count("flow") == 25 and kinds.count("lost_events") == 2
    assert kinds[10] == "lost_events" and kinds[21] == "lost_events"
    assert lost[0].lost_events.source == flow_pb2.OBSERVER_EVENTS_QUEUE


def test_follow_plays_history_then_fed_flows(captures, port):
    with ReplayServer(responses=captures[:5], port=port, follow=True, poll_interval=0.05) as rs:
        ch, stub = stub_for(rs.address)
        with ch:
            call = stub.GetFlows(Req(follow=True), timeout=20)  # a Relay would send only new flows
            got = [next(call) for _ in range(5)]
            rs.feed(captures[5:8])
            got += [next(call) for _ in range(3)]
            call.cancel()
    assert [r.flow for r in got] == [c.flow for c in captures[:8]]


def test_stop_and_restart_on_the_same_port(captures, port):
    with ReplayServer(responses=captures[:3], port=port) as rs:
        ch, stub = stub_for(f"127.0.0.1:{port}")
        with ch:
            assert len(list(stub.GetFlows(Req(), timeout=10))) == 3
            rs.stop()
            with pytest.raises(grpc.RpcError) as err:
                list(stub.GetFlows(Req(), timeout=2))
            assert err.value.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            rs.restart()
            assert rs.port == port
            assert len(list(stub.GetFlows(Req(), timeout=10, wait_for_ready=True))) == 3


def test_rate_plays_an_endless_stream_with_fresh_uuids(captures, port):
    with ReplayServer(responses=captures[:20], port=port, rate=200, poll_interval=0.05) as rs:
        ch, stub = stub_for(rs.address)
        with ch:
            call = stub.GetFlows(Req(follow=True), timeout=20)
            started = time.time_ns()
            got = [next(call) for _ in range(60)]  # more than were recorded: the cycle goes on
            call.cancel()
        rs.check()
    uuids = [r.flow.uuid for r in got]
    assert len(set(uuids)) == 60 and all(uuid.UUID(u).version == 4 for u in uuids)
    assert all(r.flow.time.seconds * 10**9 >= started - 2 * 10**9 for r in got)
    recorded = {c.flow.l4.SerializeToString() for c in captures[:20]}
    assert all(r.flow.l4.SerializeToString() in recorded for r in got)


def test_replay_process_restarts(port):
    proc = ReplayProcess([TEN], port, abort_after=4)
    with proc:
        ch, stub = stub_for(f"127.0.0.1:{port}")
        with ch:
            with pytest.raises(grpc.RpcError) as err:
                list(stub.GetFlows(Req(), timeout=20))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            proc.restart()
            got = []
            with pytest.raises(grpc.RpcError):
                for r in stub.GetFlows(Req(), timeout=20, wait_for_ready=True):
                    got.append(r)
            assert len(got) == 4


def test_cli_refuses_plaintext_unless_asked():
    out = subprocess.run(
        [sys.executable, "-m", "flowpipe.cli", "replay", TEN, "--listen", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "--plaintext" in out.stderr
