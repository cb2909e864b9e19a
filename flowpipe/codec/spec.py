"""The Flow schema: protobuf descriptors -> the Arrow types of stored columns (the spec _wire.c runs on).

The one place that walks protobuf descriptors; decode.py, storage.py and hubble.py use what it derives."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import pyarrow as pa
from google.protobuf import descriptor as _d

from flowpipe.api.observer import observer_pb2

try:  # the C decoder; the pure-Python paths give the same columns, only slower
    from flowpipe.codec import _wire
except ImportError:  # pragma: no cover - exercised only when the extension is not built
    _wire = None
try:  # the C jsonpb reader; json_format gives the same messages, only slower
    from flowpipe.codec import _jsonpb
except ImportError:  # pragma: no cover - exercised only when the extension is not built
    _jsonpb = None

# Kinds shared with _wire.c.
K_BOOL, K_INT32, K_SINT32, K_UINT32, K_INT64, K_SINT64, K_UINT64 = 1, 2, 3, 4, 5, 6, 7
K_FIXED32, K_SFIXED32, K_FIXED64, K_SFIXED64, K_FLOAT, K_DOUBLE = 8, 9, 10, 11, 12, 13
K_STRING, K_BYTES, K_ENUM = 14, 15, 16
K_MESSAGE, K_TIMESTAMP, K_WRAPPER = 20, 21, 22
K_OPAQUE = 23  # a message with its own JSON form (Any, Duration, Struct...): _jsonpb.c leaves it to json_format

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
WRAPPERS = {
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


def kind_of(fd: _d.FieldDescriptor) -> tuple[int, int]:
    if fd.message_type is None:
        return _SCALAR_KIND[fd.type], 0
    name = fd.message_type.full_name
    if name == "google.protobuf.Timestamp":
        return K_TIMESTAMP, 0
    if name in WRAPPERS:
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
        kind, inner = kind_of(fd)
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
def response_spec() -> tuple[_Spec, object | None]:
    spec = _Spec()
    root = _register(spec, observer_pb2.GetFlowsResponse.DESCRIPTOR)
    names = [f.name for f in observer_pb2.GetFlowsResponse.DESCRIPTOR.fields]
    compiled = _wire.compile(spec.types, root, names.index("flow")) if _wire else None
    return spec, compiled


def response_type() -> pa.StructType:
    """Arrow type of one decoded GetFlowsResponse (flow, node_status, lost_events, ...)."""
    return response_spec()[0].arrow["observer.GetFlowsResponse"]


def flow_type() -> pa.StructType:
    """Arrow type of a Flow: the stored flow columns."""
    return response_spec()[0].arrow["flow.Flow"]


@dataclass
class JsonSpec:
    """What the jsonpb reader needs: the compiled spec (None without _jsonpb) and the root keys."""

    compiled: object | None
    response_keys: frozenset[str]  # GetFlowsResponse keys that hold a flow or an event
    export_only_keys: frozenset[str]  # ExportEvent keys the flow store does not keep (agent/debug)


def _names(fd: _d.FieldDescriptor) -> tuple[str, ...]:
    return (fd.json_name,) if fd.json_name == fd.name else (fd.json_name, fd.name)


@cache
def json_spec() -> JsonSpec:
    """The GetFlowsResponse tree for _jsonpb.c: per message type its fields (number, kind, inner
    kind, repeated, message type, enum, oneof, JSON and proto names), the enums' value names."""
    types: list[list[tuple]] = []
    index: dict[str, int] = {}
    enums: list[list[tuple[str, int]]] = []
    enum_index: dict[str, int] = {}

    def register(desc: _d.Descriptor) -> int:
        if desc.full_name in index:
            return index[desc.full_name]
        idx = index[desc.full_name] = len(types)
        types.append([])
        rows = []
        for fd in desc.fields:
            kind, inner = kind_of(fd)
            sub = enum = oneof = -1
            if kind == K_MESSAGE and fd.message_type.full_name.startswith("google.protobuf."):
                kind = K_OPAQUE
            elif kind == K_MESSAGE:
                sub = register(fd.message_type)
            if kind == K_ENUM:
                enum = enum_index.setdefault(fd.enum_type.full_name, len(enums))
                if enum == len(enums):
                    enums.append([(v.name, v.number) for v in fd.enum_type.values])
            if fd.containing_oneof is not None:
                oneof = desc.oneofs.index(fd.containing_oneof)
            rows.append((fd.number, kind, inner, int(fd.is_repeated), sub, enum, oneof, _names(fd)))
        types[idx] = rows
        return idx

    resp = observer_pb2.GetFlowsResponse.DESCRIPTOR
    root = register(resp)
    holders = [fd for fd in resp.fields if fd.containing_oneof is not None]
    required = [resp.fields.index(fd) for fd in holders]
    flow = resp.fields_by_name["flow"]
    node = (  # what rows are routed to clusters by: `cluster/node` names
        resp.fields.index(resp.fields_by_name["node_name"]),
        resp.fields.index(flow),
        flow.message_type.fields.index(flow.message_type.fields_by_name["node_name"]),
    )
    compiled = _jsonpb.compile(types, enums, root, required, node) if _jsonpb else None
    export = observer_pb2.ExportEvent.DESCRIPTOR
    extra = [
        fd for fd in export.fields if fd.containing_oneof and fd.name not in resp.fields_by_name
    ]
    return JsonSpec(
        compiled,
        frozenset(n for fd in holders for n in _names(fd)),
        frozenset(n for fd in extra for n in _names(fd)),
    )
