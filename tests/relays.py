"""A real gRPC Observer on loopback whose GetFlows a test scripts (status codes, odd relays)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc

from flowpipe.api.observer import observer_pb2

GetFlows = Callable[[observer_pb2.GetFlowsRequest, grpc.ServicerContext, int], Iterator[bytes]]


class ScriptedRelay:
    """Serves observer.Observer/GetFlows on 127.0.0.1 with get_flows(request, context, call_no),
    which yields serialized GetFlowsResponses and may end with context.abort(code, text)."""

    def __init__(self, get_flows: GetFlows):
        self.get_flows = get_flows
        self.requests: list[observer_pb2.GetFlowsRequest] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "observer.Observer",
            {
                "GetFlows": grpc.unary_stream_rpc_method_handler(
                    self._serve, request_deserializer=observer_pb2.GetFlowsRequest.FromString
                )
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.requests)

    def _serve(self, request, context) -> Iterator[bytes]:
        with self._lock:
            self.requests.append(request)
            n = len(self.requests)
        yield from self.get_flows(request, context, n)

    def __enter__(self) -> ScriptedRelay:
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(0)
