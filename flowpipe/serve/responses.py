"""GetFlowsResponse bytes as Relay sends them, built without copying the stored Flow."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2
from flowpipe.common.sql import SECOND


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def response_bytes(flow: flow_pb2.Flow) -> bytes:
    """GetFlowsResponse{flow, node_name=flow.node_name, time=flow.time} serialized, without a copy of flow."""
    time_ns = flow.time.seconds * SECOND + flow.time.nanos if flow.HasField("time") else None
    return wrap_flow(flow.SerializeToString(), flow.node_name, time_ns)


def wrap_flow(body: bytes, node_name: str | None, time_ns: int | None) -> bytes:
    """A serialized Flow inside a GetFlowsResponse, with response node_name and time as Relay sets them."""
    out = b"\x0a" + _varint(len(body)) + body  # field 1 (flow) first: is_flow() relies on it
    if node_name:
        name = node_name.encode()
        out += b"\xc2\x3e" + _varint(len(name)) + name  # field 1000
    if time_ns is not None:
        sec, nanos = divmod(time_ns, SECOND)
        # int64 seconds: negative values go on the wire as 64-bit two's complement
        ts = (b"\x08" + _varint(sec & 0xFFFF_FFFF_FFFF_FFFF) if sec else b"") + (
            b"\x10" + _varint(nanos) if nanos else b""
        )
        out += b"\xca\x3e" + _varint(len(ts)) + ts  # field 1001
    return out


def is_flow(response: bytes) -> bool:
    """Whether a serialized GetFlowsResponse carries a flow: its first field is field 1, a message
    (protobuf writes fields in number order; wrap_flow too)."""
    return response[:1] == b"\x0a"


def timestamp(ns: int) -> Timestamp:
    """A protobuf Timestamp of ns since the epoch."""
    return Timestamp(seconds=ns // SECOND, nanos=ns % SECOND)


def lost_event_response(
    source: int,
    count: int,
    when_ns: int,
    node: str,
    *,
    cpu: int | None = None,
    first_ns: int | None = None,
    last_ns: int | None = None,
) -> bytes:
    """A serialized GetFlowsResponse carrying a LostEvent."""
    ev = flow_pb2.LostEvent(source=source, num_events_lost=count)
    if cpu is not None:
        ev.cpu.value = cpu
    if first_ns is not None:
        ev.first.CopyFrom(timestamp(first_ns))
    if last_ns is not None:
        ev.last.CopyFrom(timestamp(last_ns))
    resp = observer_pb2.GetFlowsResponse(lost_events=ev, node_name=node, time=timestamp(when_ns))
    return resp.SerializeToString()
