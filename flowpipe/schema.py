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


UUID_TYPE = pa.uuid()


def to_storage(flows: pa.Table) -> pa.Table:
    """The stored form of a flows table: canonical uuids packed into 16 bytes (`_uuid`),
    fingerprints kept only for flows without a uuid (the only ones deduplicated by it)."""
    col = _as_array(flows.column("uuid"))
    if col.offset:
        col = pa.concat_arrays([col])  # the C helper reads buffers from offset 0
    n = len(col)
    _, offsets, data = col.buffers()
    packed16 = None
    if _wire is not None and n:
        packed, validity, count = _wire.pack_uuids(
            offsets.to_pybytes(), data.to_pybytes() if data is not None else b"", n
        )
        storage = pa.Array.from_buffers(
            pa.binary(16), n, [pa.py_buffer(validity), pa.py_buffer(packed)], n - count
        )
        packed16 = pa.ExtensionArray.from_storage(UUID_TYPE, storage)
    else:
        packed16 = pa.array([_pack_uuid_py(u) for u in col.to_pylist()], UUID_TYPE)
    is_packed = packed16.is_valid()
    flows = flows.set_column(flows.schema.get_field_index("uuid"), "uuid", pc.if_else(is_packed, "", col))
    fp = flows.column("_fp")
    fp = pc.if_else(pc.equal(col, ""), fp, pa.scalar(None, pa.uint64()))
    flows = flows.set_column(flows.schema.get_field_index("_fp"), "_fp", fp)
    return flows.append_column("_uuid", packed16)


def _pack_uuid_py(u: str | None) -> bytes | None:
    import uuid as _uuid

    if not u or len(u) != 36:
        return None
    try:
        parsed = _uuid.UUID(u)
    except ValueError:
        return None
    return parsed.bytes if str(parsed) == u else None


def from_storage(table: pa.Table) -> pa.Table:
    """Undo to_storage: the uuid column holds every flow's uuid string again."""
    if "_uuid" not in table.column_names:
        return table
    packed = _as_array(table.column("_uuid"))
    if isinstance(packed, pa.ExtensionArray):
        packed = packed.storage
    if packed.offset:
        packed = pa.concat_arrays([packed])
    n = len(packed)
    validity, data = packed.buffers()
    if _wire is not None and n:
        offsets, chars = _wire.unpack_uuids(
            data.to_pybytes() if data is not None else b"\0" * 16 * n,
            validity.to_pybytes() if validity is not None and packed.null_count else None,
            n,
        )
        strings = pa.Array.from_buffers(
            pa.string(), n, [packed.buffers()[0] if packed.null_count else None, pa.py_buffer(offsets),
                             pa.py_buffer(chars)], packed.null_count
        )
    else:
        import uuid as _uuid

        strings = pa.array([str(_uuid.UUID(bytes=b)) if b is not None else None for b in packed.to_pylist()],
                           pa.string())
    uuid_col = pc.coalesce(strings, _as_array(table.column("uuid")))
    table = table.set_column(table.schema.get_field_index("uuid"), "uuid", uuid_col)
    return table.drop_columns(["_uuid"])


def encode_flows(table: pa.Table | pa.RecordBatch) -> list[bytes]:
    """Serialized Flow per stored row (lossless: rows with _raw give back their original flow)."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    table = from_storage(table)
    if table.num_rows == 0:
        return []
    spec, compiled = _response_spec()
    ftype = flow_type()
    cols = []
    for f in ftype:
        if f.name in table.column_names:
            cols.append(_as_array(table.column(f.name)).cast(f.type))
        else:  # a file written before this field existed
            cols.append(pa.nulls(table.num_rows, f.type))
    struct = pa.StructArray.from_arrays(cols, fields=list(ftype))
    if compiled is None:
        out = [f.SerializeToString() for f in _flows_python(struct)]
    else:
        _, array_capsule = struct.__arrow_c_array__()
        out = _wire.encode(compiled, spec.index["flow.Flow"], array_capsule)
    if "_raw" in table.column_names:
        raws = _as_array(table.column("_raw"))
        if raws.null_count != len(raws):
            for i, raw in enumerate(raws.to_pylist()):
                if raw is not None:
                    out[i] = observer_pb2.GetFlowsResponse.FromString(raw).flow.SerializeToString()
    return out


def _flows_python(struct: pa.StructArray) -> list[flow_pb2.Flow]:
    rows = struct.cast(_raw_type(struct.type)).to_pylist()
    out = []
    for row in rows:
        flow = flow_pb2.Flow()
        _fill(flow, row)
        out.append(flow)
    return out


def flows_from_columns(table: pa.Table | pa.RecordBatch) -> list[flow_pb2.Flow]:
    """Turn stored flow rows back into Flow messages equal to the ones that arrived."""
    return [flow_pb2.Flow.FromString(b) for b in encode_flows(table)]


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
    )
    events = pa.Table.from_arrays(
        [arr.field("node_status"), arr.field("lost_events"), arr.field("node_name"), arr.field("time")],
        names=["node_status", "lost_events", "node_name", "time"],
    )
    if flow.null_count == 0:  # only flows, the usual case: no filter copy
        return flows, events.slice(0, 0)
    return flows.filter(has_flow), events.filter(pc.invert(has_flow))


# ------------------------------------------------------------------ friendly columns

MATCH_TYPES = {0: "none", 1: "L3-Only", 2: "L3-L4", 3: "L4-Only", 4: "all", 5: "L3-Proto", 6: "Proto-Only"}
EVENT_TYPES = {
    1: "drop",
    2: "debug",
    3: "capture",
    4: "trace",
    5: "policy-verdict",
    6: "recorder",
    7: "trace-sock",
    129: "l7",
    130: "agent",
}
TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


def _case(expr: str, names: dict[int, str]) -> str:
    whens = " ".join(f"WHEN {k} THEN '{v}'" for k, v in sorted(names.items()))
    return f"(CASE {expr} {whens} ELSE CAST({expr} AS VARCHAR) END)"


def _enum(enum_name: str, expr: str) -> str:
    desc = flow_pb2.DESCRIPTOR.enum_types_by_name[enum_name]
    return _case(expr, {v.number: v.name for v in desc.values})


def _port(side: str) -> str:
    return f"coalesce(l4.TCP.{side}_port, l4.UDP.{side}_port, l4.SCTP.{side}_port)"


def _endpoint(prefix: str, ep: str, side: str) -> list[tuple[str, str, str]]:
    who = "source" if side == "source" else "destination"
    return [
        (f"{prefix}_namespace", f"nullif({ep}.namespace, '')", f"{who} namespace"),
        (f"{prefix}_pod", f"nullif({ep}.pod_name, '')", f"{who} pod name"),
        (f"{prefix}_identity", f"{ep}.identity", f"{who} security identity"),
        (f"{prefix}_labels", f"{ep}.labels", f"{who} labels, e.g. ['k8s:app=frontend', ...]"),
        (f"{prefix}_workload", f"nullif({ep}.workloads[1].name, '')", f"first {who} workload name"),
        (f"{prefix}_workloads", f"{ep}.workloads", f"{who} workloads (name, kind)"),
        (f"{prefix}_cluster", f"nullif({ep}.cluster_name, '')", f"{who} cluster name (clustermesh)"),
        (f"{prefix}_endpoint_id", f"{ep}.ID", f"{who} Cilium endpoint ID"),
        (f"{prefix}_ip", f"nullif(IP.{side}, '')", f"{who} IP"),
        (f"{prefix}_port", _port(side), f"{who} L4 port (TCP, UDP, SCTP)"),
        (f"{prefix}_service", f"nullif({side}_service.name, '')", f"{who} service name"),
        (
            f"{prefix}_service_namespace",
            f"nullif({side}_service.namespace, '')",
            f"{who} service namespace",
        ),
        (f"{prefix}_names", f"{side}_names", f"DNS names of the {who} IP"),
    ]


def _policies(field_name: str, what: str) -> list[tuple[str, str, str]]:
    return [
        (field_name, f"list_transform({field_name}, lambda p: p.name)", f"names of policies that {what}"),
        (
            f"{field_name}_kind",
            f"list_transform({field_name}, lambda p: p.kind)",
            f"kinds of policies that {what}",
        ),
        (f"{field_name}_detail", field_name, f"policies that {what} (name, namespace, labels, revision, kind)"),
    ]


def _l4_protocol() -> str:
    names = ("TCP", "UDP", "ICMPv4", "ICMPv6", "SCTP", "VRRP", "IGMP")
    whens = " ".join(f"WHEN l4.{n} IS NOT NULL THEN '{n}'" for n in names)
    return f"(CASE {whens} END)"


def _tcp_flags() -> str:
    items = ", ".join(f"CASE WHEN l4.TCP.flags.{f} THEN '{f}' END" for f in TCP_FLAGS)
    return f"list_filter([{items}], lambda f: f IS NOT NULL)"


def flat_columns() -> list[tuple[str, str, str]]:
    """(name, SQL over the stored columns, description) of every column of the `flows` view."""
    cols = [
        ("time", "time", "when the event was observed (UTC, nanoseconds)"),
        ("cluster", "cluster", "cluster the flow was collected from"),
        ("node", "nullif(node_name, '')", "node that observed the flow"),
        ("uuid", "coalesce(CAST(_uuid AS VARCHAR), nullif(uuid, ''))", "flow UUID (NULL on old Cilium)"),
        ("verdict", _enum("Verdict", "verdict"), "FORWARDED, DROPPED, REDIRECTED, AUDIT, ERROR, TRACED, TRANSLATED"),
        ("drop_reason_desc", _enum("DropReason", "drop_reason_desc"), "drop reason, e.g. POLICY_DENIED"),
        ("type", _enum("FlowType", "Type"), "L3_L4, L7 or SOCK"),
        ("event_type", "event_type.type", "Cilium monitor message type (1 drop, 4 trace, 5 policy verdict, 129 L7)"),
        ("event_subtype", "event_type.sub_type", "monitor sub-type (trace point, drop reason, ...)"),
        ("event", _case("event_type.type", EVENT_TYPES), "event type as hubble --type names it"),
        ("traffic_direction", _enum("TrafficDirection", "traffic_direction"), "INGRESS or EGRESS"),
        ("policy_match_type", "policy_match_type", "policy verdict match type number"),
        ("policy_match", _case("policy_match_type", MATCH_TYPES), "L3-Only, L3-L4, L4-Only, all, none"),
        ("is_reply", "is_reply", "reply direction (NULL when unknown)"),
        (
            "trace_observation_point",
            _enum("TraceObservationPoint", "trace_observation_point"),
            "trace point, e.g. TO_ENDPOINT",
        ),
        ("trace_reason", _enum("TraceReason", "trace_reason"), "conntrack state of a trace event"),
        *_endpoint("src", "source", "source"),
        *_endpoint("dst", "destination", "destination"),
        ("ip_version", _enum("IPVersion", "IP.ipVersion"), "IPv4 or IPv6"),
        ("encrypted", "IP.encrypted", "packet was encrypted"),
        ("l4_protocol", _l4_protocol(), "TCP, UDP, ICMPv4, ICMPv6, SCTP, VRRP or IGMP"),
        ("tcp_flags", _tcp_flags(), "TCP flags set, e.g. ['SYN', 'ACK']"),
        ("icmp_type", "coalesce(l4.ICMPv4.type, l4.ICMPv6.type)", "ICMP type"),
        ("icmp_code", "coalesce(l4.ICMPv4.code, l4.ICMPv6.code)", "ICMP code"),
        *_policies("ingress_allowed_by", "allowed it on ingress"),
        *_policies("egress_allowed_by", "allowed it on egress"),
        *_policies("ingress_denied_by", "denied it on ingress"),
        *_policies("egress_denied_by", "denied it on egress"),
        ("policy_log", "policy_log", "log values of matching policies"),
        ("auth_type", _enum("AuthType", "auth_type"), "authentication type required by policy"),
        ("l7_type", _enum("L7FlowType", "l7.type"), "REQUEST, RESPONSE or SAMPLE"),
        (
            "l7_protocol",
            # a present record has its plain scalars set (0 by default), so one leaf tells
            # presence: `l7.http IS NOT NULL` would make DuckDB read every leaf of the record
            "(CASE WHEN l7.http.code IS NOT NULL THEN 'HTTP' WHEN l7.dns.rcode IS NOT NULL THEN 'DNS' "
            "WHEN l7.kafka.error_code IS NOT NULL THEN 'Kafka' END)",
            "HTTP, DNS or Kafka",
        ),
        ("l7_latency_ns", "l7.latency_ns", "L7 response latency in nanoseconds"),
        ("http_method", "nullif(l7.http.method, '')", "HTTP method"),
        ("http_url", "nullif(l7.http.url, '')", "HTTP URL"),
        (
            "http_path",
            "nullif(regexp_extract(l7.http.url, '^(?:[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*)?([^?#]*)', 1), '')",
            "path part of the HTTP URL",
        ),
        ("http_code", "nullif(l7.http.code, 0)", "HTTP status code (responses)"),
        ("http_protocol", "nullif(l7.http.protocol, '')", "HTTP protocol, e.g. HTTP/1.1"),
        ("http_headers", "l7.http.headers", "HTTP headers (key, value)"),
        ("dns_query", "nullif(l7.dns.query, '')", "DNS query name, e.g. 'backend.shop.svc.cluster.local.'"),
        ("dns_rcode", "l7.dns.rcode", "DNS response code (0 = NOERROR)"),
        ("dns_ips", "l7.dns.ips", "IPs in the DNS answer"),
        ("dns_ttl", "l7.dns.ttl", "TTL of the DNS answer"),
        ("dns_cnames", "l7.dns.cnames", "CNAMEs in the DNS answer"),
        ("dns_qtypes", "l7.dns.qtypes", "query types, e.g. ['A']"),
        ("dns_rrtypes", "l7.dns.rrtypes", "answer record types"),
        ("dns_observation_source", "nullif(l7.dns.observation_source, '')", "proxy or other DNS source"),
        ("summary", "nullif(Summary, '')", "Hubble's summary text"),
        ("proxy_port", "nullif(proxy_port, 0)", "L7 proxy port the flow was redirected to"),
        ("interface", "nullif(interface.name, '')", "network interface"),
        ("node_labels", "node_labels", "labels of the observing node"),
        ("emitter", "nullif(emitter.name, '')", "software that emitted the flow"),
        ("date", "date", "partition date (UTC)"),
        ("hour", "hour", "partition hour (UTC)"),
    ]
    return cols


EVENT_COLUMNS = [
    ("time", "time", "when Relay reported the event"),
    ("cluster", "cluster", "cluster"),
    ("node", "nullif(node_name, '')", "node or relay that reported it"),
    (
        "kind",
        "(CASE WHEN lost_events IS NOT NULL THEN 'lost_events' WHEN node_status IS NOT NULL "
        "THEN 'node_status' ELSE 'unknown' END)",
        "lost_events or node_status",
    ),
    ("lost_source", None, "where events were lost"),
    ("num_events_lost", "lost_events.num_events_lost", "how many events were lost"),
    ("lost_cpu", "lost_events.cpu", "CPU that lost them (perf ring buffer)"),
    ("lost_first", "lost_events.first", "first loss time"),
    ("lost_last", "lost_events.last", "last loss time"),
    ("node_state", None, "NODE_CONNECTED, NODE_UNAVAILABLE, NODE_GONE, NODE_ERROR"),
    ("node_names", "node_status.node_names", "nodes the status is about"),
    ("message", "nullif(node_status.message, '')", "status message"),
]


def event_columns() -> list[tuple[str, str, str]]:
    """Columns of the `events` view (lost events and node status reported by Relay)."""
    from flowpipe.api.relay import relay_pb2

    state = relay_pb2.DESCRIPTOR.enum_types_by_name["NodeState"]
    out = []
    for name, expr, doc in EVENT_COLUMNS:
        if name == "lost_source":
            expr = _enum("LostEventSource", "lost_events.source")
        elif name == "node_state":
            expr = _case("node_status.state_change", {v.number: v.name for v in state.values})
        out.append((name, expr, doc))
    return out


def storage_schema() -> pa.Schema:
    """Schema of stored flow files (flow fields, then _fp, _raw, _uuid)."""
    fields = list(flow_type()) + [pa.field("_fp", pa.uint64()), pa.field("_raw", pa.binary())]
    return pa.schema(fields + [pa.field("_uuid", UUID_TYPE)])


def events_schema() -> pa.Schema:
    """Schema of stored event files (node_status and lost_events responses)."""
    rt = response_type()
    return pa.schema([rt.field("node_status"), rt.field("lost_events"), rt.field("node_name"), rt.field("time")])
