"""The Observer server over a real store on loopback: request semantics, follow, lossless output, TLS."""

from __future__ import annotations

import json
import shutil
import threading
import time

import grpc
import pytest
from google.protobuf import json_format

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2, observer_pb2_grpc
from flowpipe.codec import decode
from flowpipe.ingest import importer
from flowpipe.serve.replay import write_responses
from flowpipe.serve.responses import response_bytes
from flowpipe.serve.server import FlowServer, ServerTLS
from flowpipe.store.layout import Store
from tests.certs import relay_pki
from tests.conftest import CAPTURES

Req = observer_pb2.GetFlowsRequest
NS = 1_000_000_000
T0 = 1_700_000_000


def _resp(
    i: int, *, node: str = "node-a", pod: str = "p", verdict: str = "FORWARDED"
) -> observer_pb2.GetFlowsResponse:
    flow = json_format.ParseDict(
        {
            "uuid": f"00000000-0000-4000-8000-{i:012d}",
            "node_name": node,
            "verdict": verdict,
            "source": {"namespace": "ns", "pod_name": f"{pod}-{i}"},
            "IP": {"source": "10.0.0.1", "destination": "10.0.0.2", "ipVersion": "IPv4"},
        },
        flow_pb2.Flow(),
    )
    flow.time.seconds, flow.time.nanos = T0 + i // 10, (i % 10) * 100_000_000
    return observer_pb2.GetFlowsResponse(flow=flow, node_name=node, time=flow.time)


def _ts(i: int):
    r = _resp(i)
    return r.flow.time


@pytest.fixture
def served(store: Store):
    """40 flows (uuids 0..39, 100 ms apart), odd ones DROPPED, in clusters c1 and c2; and a client."""
    write_responses(
        store,
        [_resp(i, verdict="DROPPED" if i % 2 else "FORWARDED") for i in range(0, 40, 2)],
        cluster="c1",
    )
    write_responses(
        store,
        [_resp(i, verdict="DROPPED" if i % 2 else "FORWARDED") for i in range(1, 40, 2)],
        cluster="c2",
    )
    server = FlowServer(store, "127.0.0.1:0", poll_interval=0.05)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield observer_pb2_grpc.ObserverStub(channel), store
    channel.close()
    server.stop()


def ids(stub, **kw) -> list[int]:
    return [
        int(r.flow.uuid[-12:]) for r in stub.GetFlows(Req(**kw), timeout=20) if r.HasField("flow")
    ]


DROPPED = [flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])]


def test_request_semantics(served):
    stub, _ = served
    assert ids(stub) == list(range(40))  # number 0: everything, oldest first
    assert ids(stub, number=5) == list(range(35, 40))  # the last N, oldest first
    assert ids(stub, number=3, whitelist=DROPPED) == [35, 37, 39]
    assert ids(stub, number=5, first=True) == [0, 1, 2, 3, 4]
    assert ids(stub, first=True) == list(range(40))
    assert ids(stub, number=2, first=True, blacklist=DROPPED) == [0, 2]
    assert ids(stub, since=_ts(30)) == list(range(30, 40))  # inclusive
    assert ids(stub, until=_ts(3)) == [0, 1, 2, 3]  # inclusive
    assert ids(stub, since=_ts(10), until=_ts(12)) == [10, 11, 12]
    assert ids(stub, since=_ts(10), number=3) == [10, 11, 12]  # quirk: the FIRST N after since
    assert ids(stub, since=_ts(10), number=3, first=True) == [10, 11, 12]
    assert ids(stub, number=5, until=_ts(36)) == [
        35,
        36,
    ]  # last N of the whole ring, then cut at until
    assert ids(stub, number=1000) == list(range(40))
    assert ids(stub, number=2**64 - 1) == list(range(40))  # hubble --all


def test_invalid_requests(served):
    stub, _ = served
    with pytest.raises(grpc.RpcError) as err:
        ids(stub, first=True, follow=True)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "first" in err.value.details()
    bad = Req()
    bad.since.nanos = -1
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GetFlows(bad, timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


class Follower:
    """Reads a follow stream in a thread."""

    def __init__(self, stub, req):
        self.call = stub.GetFlows(req, timeout=30)
        self.got: list[observer_pb2.GetFlowsResponse] = []
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for r in self.call:
                self.got.append(r)
        except grpc.RpcError as exc:
            self.error = exc

    def ids(self) -> list[int]:
        return [int(r.flow.uuid[-12:]) for r in self.got if r.HasField("flow")]

    def wait_for(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.02)

    def close(self):
        self.call.cancel()
        self.thread.join(5)


def test_follow_delivers_flows_committed_after_the_call(served):
    stub, store = served
    live_only = Follower(stub, Req(follow=True))
    last_two = Follower(stub, Req(follow=True, number=2, whitelist=DROPPED))
    last_two.wait_for(2)
    time.sleep(0.3)
    # late flows, including one older than everything stored: follow delivers what is committed, once
    write_responses(store, [_resp(i) for i in range(40, 45)] + [_resp(0, pod="late")], cluster="c1")
    write_responses(store, [_resp(i, verdict="DROPPED") for i in range(45, 47)], cluster="c2")
    live_only.wait_for(8)
    last_two.wait_for(4)
    time.sleep(0.3)
    try:
        assert sorted(live_only.ids()) == [0, *range(40, 47)]
        assert live_only.ids()[-2:] == [45, 46]
        assert last_two.ids() == [37, 39, 45, 46]
        assert live_only.thread.is_alive() and live_only.error is None
    finally:
        live_only.close()
        last_two.close()


def test_follow_is_not_fooled_by_compaction(served):
    """Compaction rewrites closed hours into new files: a follow stream must not send them again."""
    from flowpipe.store import compact

    stub, store = served
    follower = Follower(stub, Req(follow=True, number=40))
    follower.wait_for(40)
    report = compact.compact(
        store, now=(T0 + 3 * 3600) * NS, min_files=1
    )  # the hour is long closed
    assert report.merged_files >= 2
    write_responses(store, [_resp(i) for i in range(40, 42)], cluster="c1")
    follower.wait_for(42)
    time.sleep(0.5)
    try:
        assert sorted(follower.ids()) == list(
            range(42)
        )  # every flow once, the merged ones not again
    finally:
        follower.close()
    assert sorted(ids(stub, number=100)) == list(range(42))  # history after compaction: complete


def test_follow_since_and_until_end_the_stream(served):
    stub, store = served
    f = Follower(stub, Req(follow=True, since=_ts(38), until=_ts(41)))
    f.wait_for(2)
    time.sleep(0.2)
    write_responses(store, [_resp(i) for i in range(40, 43)], cluster="c1")
    f.thread.join(10)
    assert f.ids() == [38, 39, 40, 41]
    assert not f.thread.is_alive() and f.error is None  # ended cleanly at the first flow past until


def test_lost_events_are_served_in_time_order(served):
    stub, store = served
    lost = observer_pb2.GetFlowsResponse(
        lost_events=flow_pb2.LostEvent(source=flow_pb2.PERF_EVENT_RING_BUFFER, num_events_lost=7),
        node_name="node-a",
        time=_ts(20),
    )
    lost.lost_events.cpu.value = 1
    flows, events = decode.split_responses(decode.decode_responses([lost.SerializeToString()]))
    store.write("c1", None, events)
    got = list(stub.GetFlows(Req(since=_ts(19), until=_ts(21)), timeout=10))
    kinds = [r.WhichOneof("response_types") for r in got]
    assert kinds.count("lost_events") == 1 and kinds.count("flow") == 3
    assert got[kinds.index("lost_events")] == lost
    # lost events are not flows: --last N still means N flows
    assert len([r for r in stub.GetFlows(Req(number=25), timeout=10) if r.HasField("flow")]) == 25


def test_served_jsonpb_equals_the_capture(tmp_path, port):
    path = CAPTURES / "basic-sample-400-l7-redirected-flows.jsonl"
    store = Store(tmp_path / "s")
    store.ensure()
    report = importer.import_files(store, [str(path)], strict=True)
    server = FlowServer(store, f"127.0.0.1:{port}")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            got = list(observer_pb2_grpc.ObserverStub(ch).GetFlows(Req(), timeout=30))
    finally:
        server.stop()
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    unique = {json.dumps(d, sort_keys=True) for d in lines}
    served = [
        json.dumps(json_format.MessageToDict(r, preserving_proto_field_name=True), sort_keys=True)
        for r in got
    ]
    assert report.flows == len(unique) == len(got)
    assert sorted(served) == sorted(unique)  # field for field what hubble printed
    times = [(r.time.seconds, r.time.nanos) for r in got]
    assert times == sorted(times)


def test_response_bytes_match_protobuf(captures):
    for r in captures[:50]:
        assert (
            response_bytes(r.flow)
            == observer_pb2.GetFlowsResponse(
                flow=r.flow, node_name=r.flow.node_name, time=r.flow.time
            ).SerializeToString()
        )


def test_status_nodes_namespaces(served):
    stub, _ = served
    st = stub.ServerStatus(observer_pb2.ServerStatusRequest())
    assert (
        st.num_flows == 40
        and st.version.startswith("flowpipe ")
        and st.num_connected_nodes.value == 2
    )
    nodes = stub.GetNodes(observer_pb2.GetNodesRequest()).nodes
    assert sorted(n.name for n in nodes) == ["c1/node-a", "c2/node-a"]
    assert sum(n.num_flows for n in nodes) == 40
    ns = stub.GetNamespaces(observer_pb2.GetNamespacesRequest()).namespaces
    assert sorted((n.cluster, n.namespace) for n in ns) == [("c1", "ns"), ("c2", "ns")]
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GetAgentEvents(observer_pb2.GetAgentEventsRequest(), timeout=5))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_large_answer_streams_in_pages(store, port):
    write_responses(store, [_resp(i) for i in range(5000)], cluster="c1")
    server = FlowServer(store, f"127.0.0.1:{port}")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = observer_pb2_grpc.ObserverStub(ch)
            assert ids(stub) == list(range(5000))
            assert ids(stub, number=2500) == list(range(2500, 5000))
    finally:
        server.stop()


def test_tls_and_mtls(tmp_path, store, port):
    pki = relay_pki(tmp_path / "pki")
    write_responses(store, [_resp(i) for i in range(3)], cluster="c1")
    cert = pki["server_localhost"]
    server = FlowServer(
        store,
        f"127.0.0.1:{port}",
        tls=ServerTLS(str(cert.cert), str(cert.key), str(pki["ca"].path)),
    )
    server.start()
    try:
        ca = pki["ca"].path.read_bytes()
        client = pki["client"]
        good = grpc.ssl_channel_credentials(ca, client.key_pem, client.cert_pem)
        with grpc.secure_channel(f"localhost:{port}", good) as ch:
            assert ids(observer_pb2_grpc.ObserverStub(ch)) == [0, 1, 2]
        no_client_cert = grpc.ssl_channel_credentials(ca)
        with (
            grpc.secure_channel(f"localhost:{port}", no_client_cert) as ch,
            pytest.raises(grpc.RpcError),
        ):
            ids(observer_pb2_grpc.ObserverStub(ch))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch, pytest.raises(grpc.RpcError):
            ids(observer_pb2_grpc.ObserverStub(ch))
    finally:
        server.stop()


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        result = call()
        list(result) if not hasattr(result, "SerializeToString") else result
    return err.value.code(), err.value.details()


def _calls(stub):
    return {
        "GetFlows": lambda: stub.GetFlows(Req(whitelist=DROPPED), timeout=10),
        "GetNodes": lambda: stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=10),
        "GetNamespaces": lambda: stub.GetNamespaces(
            observer_pb2.GetNamespacesRequest(), timeout=10
        ),
        "ServerStatus": lambda: stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=10),
    }


def test_a_broken_store_is_internal_never_the_clients_fault(served, caplog):
    stub, store = served
    assert len(ids(stub)) == 40  # the views are built: what fails below is the query
    store.files()[0].write_bytes(b"PAR1 this is not a Parquet file PAR1")
    for name, call in _calls(stub).items():
        code, details = _code(call)
        assert code == grpc.StatusCode.INTERNAL, (name, code, details)
        assert details.startswith("store query failed: ") and "\n" not in details
        logged = [r for r in caplog.records if r.name == "flowpipe.serve" and name in r.message]
        assert logged and logged[-1].levelname == "ERROR", name


def test_an_unreadable_store_is_unavailable(served, caplog):
    """Here from the first call on, so building the views fails too."""
    stub, store = served
    for path in store.files():
        path.unlink()
    shutil.rmtree(store.root / "flows")
    for name, call in _calls(stub).items():
        code, details = _code(call)
        assert code == grpc.StatusCode.UNAVAILABLE, (name, code, details)
        assert details.startswith("store unreadable: ")
        assert any(r.name == "flowpipe.serve" and name in r.message for r in caplog.records)


def test_calls_beyond_the_workers_are_refused_not_left_waiting(store, port):
    write_responses(store, [_resp(i) for i in range(3)], cluster="c1")
    server = FlowServer(store, f"127.0.0.1:{port}", max_workers=4, poll_interval=0.05)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = observer_pb2_grpc.ObserverStub(ch)
            followers = [Follower(stub, Req(follow=True, number=3)) for _ in range(4)]
            for f in followers:
                f.wait_for(3)
            assert all(len(f.got) == 3 for f in followers)  # every worker holds an open stream
            with pytest.raises(grpc.RpcError) as err:
                ids(stub)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            followers.pop().close()
            deadline = time.monotonic() + 10
            while True:  # a freed worker serves again
                try:
                    assert ids(stub) == [0, 1, 2]
                    break
                except grpc.RpcError as exc:
                    if (
                        exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED
                        or time.monotonic() > deadline
                    ):
                        raise
                    time.sleep(0.05)
            for f in followers:
                f.close()
    finally:
        server.stop()
