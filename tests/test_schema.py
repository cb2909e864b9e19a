"""The C decoder against protobuf itself: same columns, same fingerprints, lossless round trip."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pytest

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2
from flowpipe.codec import decode, spec, storage


def _raw(msgs) -> list[bytes]:
    return [m.SerializeToString() for m in msgs]


def test_c_decoder_matches_protobuf(captures):
    raw = _raw(captures)
    fast = decode.decode_responses(raw)
    ref = decode._decode_python(raw)
    assert fast.errors == [] and ref.errors == []
    assert fast.responses.equals(ref.responses)
    assert fast.fingerprints.equals(ref.fingerprints)


def test_round_trip_is_lossless(captures):
    flows, events = decode.split_responses(decode.decode_responses(_raw(captures)))
    assert events.num_rows == 0
    back = storage.flows_from_columns(storage.to_storage(flows))
    assert back == [c.flow for c in captures]


def test_fingerprint_ignores_wire_order_and_explicit_defaults(captures):
    flow = captures[0].flow
    canonical = observer_pb2.GetFlowsResponse(flow=flow).SerializeToString()
    # the same flow with its fields reversed and an explicit default (verdict=0 then real value)
    parts = []
    for fd, value in reversed(flow.ListFields()):
        single = flow_pb2.Flow()
        if fd.is_repeated:
            getattr(single, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(single, fd.name).CopyFrom(value)
        else:
            setattr(single, fd.name, value)
        parts.append(single.SerializeToString())
    flow_bytes = b"".join(parts)
    reordered = b"\x0a" + _varint(len(flow_bytes)) + flow_bytes
    a = decode.decode_responses([canonical, reordered])
    assert a.errors == []
    assert a.fingerprints[0] == a.fingerprints[1]
    assert a.responses[0] == a.responses[1]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_unknown_fields_keep_original_bytes(captures):
    flow = captures[0].flow
    body = flow.SerializeToString() + b"\xf8\x07\x2a"  # field 127 (unknown), varint 42
    raw = b"\x0a" + _varint(len(body)) + body
    dec = decode.decode_responses([raw])
    assert dec.errors == []
    assert dec.raw[0].as_py() == raw
    flows, _ = decode.split_responses(dec)
    back = storage.flows_from_columns(flows)[0]
    assert back.SerializeToString() == body  # unknown field survives


@pytest.mark.parametrize(
    "bad",
    [b"\x0a\x05\x01", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x0a\x02\x92\x01"],
)
def test_malformed_bytes_are_reported_not_raised(bad):
    dec = decode.decode_responses([bad])
    assert len(dec.responses) == 0
    assert dec.errors and dec.errors[0][0] == 0 and "malformed" in dec.errors[0][1]


def test_uuid_packing_round_trips_exact_strings(captures):
    msgs = []
    for i, text in enumerate([str(uuid.uuid4()), str(uuid.uuid4()).upper(), "not-a-uuid", ""]):
        m = observer_pb2.GetFlowsResponse()
        m.CopyFrom(captures[i])
        m.flow.uuid = text
        msgs.append(m)
    flows, _ = decode.split_responses(decode.decode_responses(_raw(msgs)))
    stored = storage.to_storage(flows)
    assert stored.column("_uuid").null_count == 3  # only the canonical lowercase one packs
    assert stored.column("_fp").null_count == 3  # fingerprints only where uuid is empty
    assert [f.uuid for f in storage.flows_from_columns(stored)] == [m.flow.uuid for m in msgs]


def test_timestamp_out_of_range_falls_back_to_raw(captures):
    m = observer_pb2.GetFlowsResponse()
    m.CopyFrom(captures[0])
    m.flow.time.seconds = 253402300799  # year 9999: valid protobuf, beyond int64 ns
    dec = decode.decode_responses([m.SerializeToString()])
    flows, _ = decode.split_responses(dec)
    assert flows.column("time")[0].as_py() is None
    assert storage.flows_from_columns(flows)[0] == m.flow


def test_storage_schema_matches_written_tables(captures):
    flows, _ = decode.split_responses(decode.decode_responses(_raw(captures[:5])))
    assert storage.to_storage(flows).schema.equals(storage.storage_schema())
    assert isinstance(spec.flow_type(), pa.StructType)


def test_c_encoder_matches_python_reference(captures):
    from flowpipe.lab import generate as lab

    msgs = list(captures) + [r for rs in lab.generate_lab(5, seed=3).values() for r in rs]
    flows, _ = decode.split_responses(decode.decode_responses(_raw(msgs)))
    stored = storage.to_storage(flows)
    fast = [flow_pb2.Flow.FromString(b) for b in storage.encode_flows(stored)]
    table = storage.from_storage(stored)
    struct = pa.StructArray.from_arrays(
        [table.column(f.name).combine_chunks() for f in spec.flow_type()],
        fields=list(spec.flow_type()),
    )
    assert fast == storage._flows_python(struct) == [m.flow for m in msgs]
