"""The one place that knows protobuf field paths: GetFlowsResponse bytes <-> Arrow columns <-> Flow."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache

import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf import descriptor as _d

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2

try:  # the C decoder; the pure-Python path below gives the same columns, only slower
    from flowpipe import _wire
except ImportError:  # pragma: no cover - exercised only when the extension is not built
    _wire = None

# Kinds shared with _wire.c.
K_BOOL, K_INT32, K_SINT32, K_UINT32, K_INT64, K_SINT64, K_UINT64 = 1, 2, 3, 4, 5, 6, 7
K_FIXED32, K_SFIXED32, K_FIXED64, K_SFIXED64, K_FLOAT, K_DOUBLE = 8, 9, 10, 11, 12, 13
K_STRING, K_BYTES, K_ENUM = 14, 15, 16
K_MESSAGE, K_TIMESTAMP, K_WRAPPER = 20, 21, 22

_FD = _d.FieldDescriptor
_SCALAR_KIND = {
    _FD.TYPE_BOOL: K_BOOL,
    _FD.TYPE_INT32: K_INT32,
    _FD.TYPE_SINT32: K_SINT32,
    _FD.TYPE_UINT32: K_UINT32,
    _FD.TYPE_INT64: K_INT64,
    _FD.TYPE_SINT64: K_SINT64,
    _FD.TYPE_UINT64: K_UINT64,
    _FD.TYPE_FIXED32: K_FIXED32,
    _FD.TYPE_SFIXED32: K_SFIXED32,
    _FD.TYPE_FIXED64: K_FIXED64,
    _FD.TYPE_SFIXED64: K_SFIXED64,
    _FD.TYPE_FLOAT: K_FLOAT,
    _FD.TYPE_DOUBLE: K_DOUBLE,
    _FD.TYPE_STRING: K_STRING,
    _FD.TYPE_BYTES: K_BYTES,
    _FD.TYPE_ENUM: K_ENUM,
}
_ARROW_OF_KIND = {
    K_BOOL: pa.bool_(),
    K_INT32: pa.int32(),
    K_SINT32: pa.int32(),
    K_SFIXED32: pa.int32(),
    K_ENUM: pa.int32(),
    K_UINT32: pa.uint32(),
    K_FIXED32: pa.uint32(),
    K_INT64: pa.int64(),
    K_SINT64: pa.int64(),
    K_SFIXED64: pa.int64(),
    K_UINT64: pa.uint64(),
    K_FIXED64: pa.uint64(),
    K_FLOAT: pa.float32(),
    K_DOUBLE: pa.float64(),
    K_STRING: pa.string(),
    K_BYTES: pa.binary(),
}
TIMESTAMP = pa.timestamp("ns", tz="UTC")
_WRAPPERS = {
    "google.protobuf.BoolValue",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.FloatValue",
    "google.protobuf.DoubleValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}


@dataclass
class _Spec:
    types: list[list[tuple[int, int, int, int, int]]] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    arrow: dict[str, pa.StructType] = field(default_factory=dict)


def _kind(fd: _d.FieldDescriptor) -> tuple[int, int]:
    if fd.message_type is None:
        return _SCALAR_KIND[fd.type], 0
    name = fd.message_type.full_name
    if name == "google.protobuf.Timestamp":
        return K_TIMESTAMP, 0
    if name in _WRAPPERS:
        return K_WRAPPER, _SCALAR_KIND[fd.message_type.fields_by_name["value"].type]
    return K_MESSAGE, 0


def _register(spec: _Spec, desc: _d.Descriptor, depth: int = 0) -> int:
    """Assign desc a type index (depth-first) and derive its Arrow struct type."""
    if desc.full_name in spec.index:
        return spec.index[desc.full_name]
    if depth > 30:
        raise ValueError(f"recursive protobuf type {desc.full_name} cannot be columnar")
    idx = len(spec.types)
    spec.index[desc.full_name] = idx
    spec.types.append([])
    rows = []
    fields = []
    seen = set()
    for fd in desc.fields:
        if fd.name.lower() in seen:  # DuckDB resolves struct fields case-insensitively
            raise ValueError(f"{desc.full_name} has fields differing only in case: {fd.name}")
        seen.add(fd.name.lower())
        kind, inner = _kind(fd)
        sub = -1
        if kind == K_MESSAGE:
            sub = _register(spec, fd.message_type, depth + 1)
            typ: pa.DataType = spec.arrow[fd.message_type.full_name]
        elif kind == K_TIMESTAMP:
            typ = TIMESTAMP
        elif kind == K_WRAPPER:
            typ = _ARROW_OF_KIND[inner]
        else:
            typ = _ARROW_OF_KIND[kind]
        if fd.is_repeated:
            typ = pa.list_(typ)
        rows.append((fd.number, kind, inner, int(fd.is_repeated), sub))
        fields.append(pa.field(fd.name, typ))
    spec.types[idx] = rows
    spec.arrow[desc.full_name] = pa.struct(fields)
    return idx


@cache
def _response_spec() -> tuple[_Spec, object | None]:
    spec = _Spec()
    root = _register(spec, observer_pb2.GetFlowsResponse.DESCRIPTOR)
    names = [f.name for f in observer_pb2.GetFlowsResponse.DESCRIPTOR.fields]
    compiled = _wire.compile(spec.types, root, names.index("flow")) if _wire else None
    return spec, compiled


def response_type() -> pa.StructType:
    """Arrow type of one decoded GetFlowsResponse (flow, node_status, lost_events, ...)."""
    return _response_spec()[0].arrow["observer.GetFlowsResponse"]


def flow_type() -> pa.StructType:
    """Arrow type of a Flow: the stored flow columns."""
    return _response_spec()[0].arrow["flow.Flow"]


# ------------------------------------------------------------------ decoding


def _assemble(typ: pa.DataType, node) -> pa.Array:
    length, nulls, validity, values, data, kids = node
    vbuf = pa.py_buffer(validity) if validity is not None else None
    if pa.types.is_struct(typ):
        children = [_assemble(typ.field(i).type, k) for i, k in enumerate(kids)]
        return pa.StructArray.from_buffers(typ, length, [vbuf], nulls, children=children)
    if pa.types.is_list(typ):
        child = _assemble(typ.value_type, kids[0])
        return pa.Array.from_buffers(typ, length, [vbuf, pa.py_buffer(values)], nulls, children=[child])
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
    spec, compiled = _response_spec()
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
    fps = pa.array([python_fingerprint(m.flow) if m.HasField("flow") else 0 for m in msgs], pa.uint64())
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
        kind, _ = _kind(fd)
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
            kind, inner = _kind(fd)
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


# ------------------------------------------------------------------ reconstruction


def _raw_type(typ: pa.DataType) -> pa.DataType:
    """typ with timestamps as int64, so to_pylist keeps every nanosecond."""
    if pa.types.is_timestamp(typ):
        return pa.int64()
    if pa.types.is_struct(typ):
        return pa.struct([pa.field(f.name, _raw_type(f.type)) for f in typ])
    if pa.types.is_list(typ):
        return pa.list_(_raw_type(typ.value_type))
    return typ


def _fill(msg, d: dict) -> None:
    desc = msg.DESCRIPTOR
    for name, value in d.items():
        if value is None:
            continue
        fd = desc.fields_by_name[name]
        kind, _ = _kind(fd)
        if fd.is_repeated:
            if not value:
                continue
            target = getattr(msg, name)
            if kind == K_MESSAGE:
                for item in value:
                    _fill(target.add(), item)
            elif kind == K_TIMESTAMP:
                for item in value:
                    target.add(seconds=item // 1_000_000_000, nanos=item % 1_000_000_000)
            elif kind == K_WRAPPER:
                for item in value:
                    target.add(value=item)
            else:
                target.extend(value)
        elif kind == K_MESSAGE:
            sub = getattr(msg, name)
            sub.SetInParent()
            _fill(sub, value)
        elif kind == K_TIMESTAMP:
            sub = getattr(msg, name)
            sub.seconds, sub.nanos = divmod(value, 1_000_000_000)
        elif kind == K_WRAPPER:
            sub = getattr(msg, name)
            sub.SetInParent()
            sub.value = value
        elif value:
            setattr(msg, name, value)


def flows_from_columns(table: pa.Table | pa.RecordBatch) -> list[flow_pb2.Flow]:
    """Turn stored flow rows back into Flow messages equal to the ones that arrived."""
    names = [f.name for f in flow_type()]
    have = [n for n in names if n in table.column_names]
    raw_col = table.column("_raw") if "_raw" in table.column_names else None
    struct = pa.StructArray.from_arrays(
        [_as_array(table.column(n)) for n in have], names=have
    )
    target = _raw_type(struct.type)
    rows = struct.cast(target).to_pylist()
    raws = raw_col.to_pylist() if raw_col is not None else [None] * len(rows)
    out = []
    for row, raw in zip(rows, raws):
        flow = flow_pb2.Flow()
        if raw is not None:
            resp = observer_pb2.GetFlowsResponse.FromString(raw)
            flow.CopyFrom(resp.flow)
        else:
            _fill(flow, row)
        out.append(flow)
    return out


def _as_array(col) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def split_responses(dec: Decoded) -> tuple[pa.Table, pa.Table]:
    """Split decoded responses into a flows table (flow columns + _fp, _raw) and an events table."""
    arr = dec.responses
    flow = arr.field("flow")
    has_flow = flow.is_valid()
    flows = pa.Table.from_arrays(
        [*flow.flatten(), dec.fingerprints, dec.raw],
        names=[*[f.name for f in flow_type()], "_fp", "_raw"],
    ).filter(has_flow)
    events = pa.Table.from_arrays(
        [arr.field("node_status"), arr.field("lost_events"), arr.field("node_name"), arr.field("time")],
        names=["node_status", "lost_events", "node_name", "time"],
    ).filter(pc.invert(has_flow))
    return flows, events
