"""serve under concurrent clients: every filter kind at once, each answer the one it gets alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from test_filters import CASES, HANDMADE, ff

from flowpipe.api.observer import observer_pb2, observer_pb2_grpc
from flowpipe.serve.replay import write_responses
from flowpipe.serve.server import FlowServer
from flowpipe.store.layout import Store

CLIENTS = 16
ROUNDS = 2
# filters the client got wrong: they must stay INVALID_ARGUMENT under load, and only they
BAD = {
    "bad dns regex": ([ff(dns_query=["(unclosed"])], []),
    "bad path regex": ([ff(http_path=["[z-a]"])], []),
    "bad url regex": ([ff(http_url=["a{2,1}"])], []),
}
# every regex filter at once in one request: many regex checks per call
REGEXES = ([ff(dns_query=["svc", "^x"], http_path=["^/v1/", "b$"], http_url=["orders", "a+"])], [])
REQUESTS = {**CASES, **BAD, "many regexes": REGEXES}


@pytest.fixture(scope="module")
def address(tmp_path_factory, captures):
    """The filter tests' store (real captures and hand-made flows) served on loopback."""
    store = Store(tmp_path_factory.mktemp("concurrency") / "store")
    store.ensure()
    write_responses(store, captures, cluster="c1")
    write_responses(store, HANDMADE)
    server = FlowServer(store, "127.0.0.1:0")
    port = server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


def answer(stub, name: str) -> tuple:
    """('OK', responses) or (status code, details) of one GetFlows."""
    allow, deny = REQUESTS[name]
    req = observer_pb2.GetFlowsRequest(whitelist=allow, blacklist=deny)
    try:
        return ("OK", [r.SerializeToString() for r in stub.GetFlows(req, timeout=60)])
    except grpc.RpcError as exc:
        return (exc.code().name, exc.details())


def test_concurrent_clients_get_the_answers_they_get_alone(address):
    names = list(REQUESTS)
    with grpc.insecure_channel(address) as channel:
        stub = observer_pb2_grpc.ObserverStub(channel)
        alone = {name: answer(stub, name) for name in names}
    assert {n for n, a in alone.items() if a[0] != "OK"} == set(BAD)
    assert all(alone[n][0] == "INVALID_ARGUMENT" for n in BAD)
    start = threading.Barrier(CLIENTS)

    def client(i: int) -> list[tuple[int, str, tuple]]:
        """A share of the requests, so that every kind is in flight at once, after one with many regexes."""
        order = ["many regexes", *names[i::CLIENTS]]
        got = []
        with grpc.insecure_channel(address) as channel:
            stub = observer_pb2_grpc.ObserverStub(channel)
            for rnd in range(ROUNDS):
                start.wait(timeout=120)  # the clients' first requests of a round arrive together
                got += [(rnd, n, answer(stub, n)) for n in order]
        return got

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [r for rs in pool.map(client, range(CLIENTS)) for r in rs]
    assert len(results) == ROUNDS * (CLIENTS + len(names))
    wrong = [
        (rnd, n, a[:2] if a[0] != "OK" else len(a[1])) for rnd, n, a in results if a != alone[n]
    ]
    print(
        f"\nconcurrency: {CLIENTS} clients, {ROUNDS} rounds of {CLIENTS + len(names)} requests, "
        f"{len(wrong)} answers differ from the request made alone"
    )
    assert not wrong, wrong[:10]
