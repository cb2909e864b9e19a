"""GetFlowsResponse wire bytes -> Arrow columns (through _wire.c), with content fingerprints."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from flowpipe.api.observer import observer_pb2
from flowpipe.codec.spec import (
    K_BOOL,
    K_BYTES,
    K_DOUBLE,
    K_ENUM,
    K_FLOAT,
    K_INT32,
    K_MESSAGE,
    K_SFIXED32,
    K_SINT32,
    K_STRING,
    K_TIMESTAMP,
    K_WRAPPER,
    _wire,
    flow_type,
    kind_of,
    response_spec,
    response_type,
)


def _assemble(typ: pa.DataType, node) -> pa.Array:
    length, nulls, validity, values, data, kids = node
    vbuf = pa.py_buffer(validity) if validity is not None else None
    if pa.types.is_struct(typ):
        children = [_assemble(typ.field(i).type, k) for i, k in enumerate(kids)]
        return pa.StructArray.from_buffers(typ, length, [vbuf], nulls, children=children)
    if pa.types.is_list(typ):
        child = _assemble(typ.value_type, kids[0])
        return pa.Array.from_buffers(
            typ, length, [vbuf, pa.py_buffer(values)], nulls, children=[child]
        )
    if pa.types.is_string(typ) or pa.types.is_binary(typ):
        bufs = [vbuf, pa.py_buffer(values), pa.py_buffer(data)]
        return pa.Array.from_buffers(typ, length, bufs, nulls)
    return pa.Array.from_buffers(typ, length, [vbuf, pa.py_buffer(values)], nulls)


@dataclass
class Decoded:
    """A batch of GetFlowsResponse messages as Arrow: responses in arrival order, minus bad rows."""

    responses: pa.StructArray  # response_type(), one row per good input
    fingerprints: pa.UInt64Array  # content hash of each row's flow (0 when no flow)
    raw: pa.BinaryArray  # original bytes where the columns alone are not exact, else null
    errors: list[tuple[int, str]]  # (input index, reason) for undecodable input


def decode_responses(rows: Sequence[bytes]) -> Decoded:
    """Decode serialized GetFlowsResponse messages into columns; never raises on bad input."""
    spec, compiled = response_spec()
    typ = spec.arrow["observer.GetFlowsResponse"]
    if compiled is None:
        return _decode_python(rows)
    tree, fallback, fps = _wire.decode(compiled, rows, False)
    arr = _assemble(typ, tree)
    fp = pa.Array.from_buffers(pa.uint64(), len(arr), [None, pa.py_buffer(fps)])
    raw = pa.nulls(len(arr), pa.binary())
    errors: list[tuple[int, str]] = []
    if fallback:
        extra = _canonicalize([rows[i] for i in fallback])
        good = [(i, c) for i, (c, err) in zip(fallback, extra) if err is None]
        errors = [(i, err) for i, (c, err) in zip(fallback, extra) if err is not None]
        if good:
            tree2, bad2, fps2 = _wire.decode(compiled, [c for _, c in good], True)
            arr2 = _assemble(typ, tree2)
            keep = [g for j, g in enumerate(good) if j not in set(bad2)]
            errors += [(good[j][0], "cannot be represented as columns") for j in bad2]
            fp2 = pa.Array.from_buffers(pa.uint64(), len(arr2), [None, pa.py_buffer(fps2)])
            raw2 = pa.array([rows[i] for i, _ in keep], pa.binary())
            arr = pa.concat_arrays([arr, arr2])
            fp = pa.concat_arrays([fp, fp2])
            raw = pa.concat_arrays([raw, raw2])
    return Decoded(arr, fp, raw, sorted(errors))


def _canonicalize(rows: Iterable[bytes]) -> list[tuple[bytes, str | None]]:
    """Parse rows with protobuf and re-serialise without unknown fields, or say why not."""
    out = []
    for b in rows:
        msg = observer_pb2.GetFlowsResponse()
        try:
            msg.ParseFromString(b)
        except Exception as exc:  # protobuf raises DecodeError and friends
            out.append((b"", f"malformed protobuf: {exc}".strip()))
            continue
        msg.DiscardUnknownFields()
        out.append((msg.SerializeToString(deterministic=True), None))
    return out


def _decode_python(rows: Sequence[bytes]) -> Decoded:
    """Reference decoder through protobuf objects (used when _wire is missing, and by tests)."""
    msgs, errors, raws = [], [], []
    for i, b in enumerate(rows):
        msg = observer_pb2.GetFlowsResponse()
        try:
            msg.ParseFromString(b)
        except Exception as exc:
            errors.append((i, f"malformed protobuf: {exc}".strip()))
            continue
        exact = not _has_unknown(msg)
        msg.DiscardUnknownFields()
        msgs.append(msg)
        raws.append(None if exact else b)
    typ = response_type()
    arr = pa.array([message_to_dict(m) for m in msgs], typ)
    fps = pa.array(
        [python_fingerprint(m.flow) if m.HasField("flow") else 0 for m in msgs], pa.uint64()
    )
    return Decoded(arr, fps, pa.array(raws, pa.binary()), errors)


def _has_unknown(msg) -> bool:
    from google.protobuf import unknown_fields

    if len(unknown_fields.UnknownFieldSet(msg)):
        return True
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        items = value if fd.is_repeated else [value]
        if any(_has_unknown(v) for v in items):
            return True
    return False


def message_to_dict(msg) -> dict:
    """A message as the nested dict Arrow expects (enums as ints, timestamps as ns)."""
    out = {}
    for fd in msg.DESCRIPTOR.fields:
        kind, _ = kind_of(fd)
        value = getattr(msg, fd.name)
        if fd.is_repeated:
            out[fd.name] = [_value_to_py(kind, fd, v) for v in value]
        elif kind in (K_MESSAGE, K_TIMESTAMP, K_WRAPPER) and not msg.HasField(fd.name):
            out[fd.name] = None
        else:
            out[fd.name] = _value_to_py(kind, fd, value)
    return out


def _value_to_py(kind: int, fd, value):
    if kind == K_MESSAGE:
        return message_to_dict(value)
    if kind == K_TIMESTAMP:
        return value.seconds * 1_000_000_000 + value.nanos
    if kind == K_WRAPPER:
        return value.value
    return value


def python_fingerprint(flow) -> int:
    """The C decoder's flow fingerprint, computed from a protobuf object."""
    h = [0x6A09E667F3BCC908]
    mask = (1 << 64) - 1

    def mix(v: int) -> None:
        x = h[0]
        x ^= (v + 0x9E3779B97F4A7C15 + ((x << 6) & mask) + (x >> 2)) & mask
        x = (x * 0xFF51AFD7ED558CCD) & mask
        x ^= x >> 33
        h[0] = x

    def raw_bytes(b: bytes) -> None:
        mix(len(b))
        for i in range(0, len(b) - len(b) % 8, 8):
            mix(int.from_bytes(b[i : i + 8], "little"))
        if len(b) % 8:
            mix(int.from_bytes(b[len(b) - len(b) % 8 :], "little"))

    def scalar(kind: int, v) -> None:
        if kind == K_STRING:
            raw_bytes(v.encode())
        elif kind == K_BYTES:
            raw_bytes(v)
        elif kind == K_BOOL:
            mix(int(bool(v)))
        elif kind == K_FLOAT:
            import struct

            mix(int.from_bytes(struct.pack("<f", v), "little"))
        elif kind == K_DOUBLE:
            import struct

            mix(int.from_bytes(struct.pack("<d", v), "little"))
        elif kind in (K_INT32, K_ENUM, K_SINT32, K_SFIXED32):
            mix(v & 0xFFFFFFFF)
        else:
            mix(v & mask)

    def walk(msg) -> None:
        for fd in msg.DESCRIPTOR.fields:
            kind, inner = kind_of(fd)
            value = getattr(msg, fd.name)
            if fd.is_repeated:
                mix(fd.number << 8)
                for v in value:
                    one(kind, inner, v)
                mix(len(value))
            elif kind in (K_MESSAGE, K_TIMESTAMP, K_WRAPPER):
                present = msg.HasField(fd.name)
                mix((fd.number << 8) | int(present))
                if present:
                    one(kind, inner, value)
            else:
                # a proto3 scalar always counts as present with its (maybe default) value
                mix((fd.number << 8) | 1)
                scalar(kind, value)

    def one(kind: int, inner: int, v) -> None:
        if kind == K_MESSAGE:
            walk(v)
        elif kind == K_TIMESTAMP:
            mix((v.seconds * 1_000_000_000 + v.nanos) & mask)
        elif kind == K_WRAPPER:
            mix(0x5752)
            scalar(inner, v.value)
        else:
            scalar(kind, v)

    mix((1 << 8) | 1)  # GetFlowsResponse.flow (field 1) is present
    walk(flow)
    return h[0]


def split_responses(dec: Decoded) -> tuple[pa.Table, pa.Table]:
    """Split decoded responses into a flows table (flow columns + _fp, _raw) and an events table."""
    arr = dec.responses
    flow = arr.field("flow")
    has_flow = flow.is_valid()
    flows = pa.Table.from_arrays(
        [*flow.flatten(), dec.fingerprints, dec.raw],
        names=[*[f.name for f in flow_type()], "_fp", "_raw"],
    )
    events = pa.Table.from_arrays(
        [
            arr.field("node_status"),
            arr.field("lost_events"),
            arr.field("node_name"),
            arr.field("time"),
        ],
        names=["node_status", "lost_events", "node_name", "time"],
    )
    if flow.null_count == 0:  # only flows, the usual case: no filter copy
        return flows, events.slice(0, 0)
    return flows.filter(has_flow), events.filter(pc.invert(has_flow))
