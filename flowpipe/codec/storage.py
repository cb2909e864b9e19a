"""The stored form of flow columns (packed uuids), and stored rows back to lossless Flow messages."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2
from flowpipe.codec.spec import (
    K_MESSAGE,
    K_TIMESTAMP,
    K_WRAPPER,
    _wire,
    flow_type,
    kind_of,
    response_spec,
    response_type,
)


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
        kind, _ = kind_of(fd)
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
    flows = flows.set_column(
        flows.schema.get_field_index("uuid"), "uuid", pc.if_else(is_packed, "", col)
    )
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
            pa.string(),
            n,
            [
                packed.buffers()[0] if packed.null_count else None,
                pa.py_buffer(offsets),
                pa.py_buffer(chars),
            ],
            packed.null_count,
        )
    else:
        import uuid as _uuid

        strings = pa.array(
            [str(_uuid.UUID(bytes=b)) if b is not None else None for b in packed.to_pylist()],
            pa.string(),
        )
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
    spec, compiled = response_spec()
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


def storage_schema() -> pa.Schema:
    """Schema of stored flow files (flow fields, then _fp, _raw, _uuid)."""
    fields = list(flow_type()) + [pa.field("_fp", pa.uint64()), pa.field("_raw", pa.binary())]
    return pa.schema(fields + [pa.field("_uuid", UUID_TYPE)])


def events_schema() -> pa.Schema:
    """Schema of stored event files (node_status and lost_events responses)."""
    rt = response_type()
    return pa.schema(
        [rt.field("node_status"), rt.field("lost_events"), rt.field("node_name"), rt.field("time")]
    )
