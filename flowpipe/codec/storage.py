"""The stored form of flow and event rows (store format 2), and stored rows back to lossless Flow messages.

Format 2 is read by Spark, DuckDB and pyarrow with no configuration: every protobuf Timestamp is
an INT64 of nanoseconds since the epoch with no logical type (Spark refuses TIMESTAMP(NANOS)),
and canonical uuids are packed into a FIXED_LEN_BYTE_ARRAY(16) `_uuid` with no UUID annotation
(Spark refuses that too). Rows are clustered (`order_rows`) and columns encoded
(`parquet_encoding`) so that files are small from their first write."""

from __future__ import annotations

import io
from functools import cache

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2
from flowpipe.codec import summary
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

UUID_BYTES = pa.binary(16)
# Rows of a flows row group are sorted by these (then time): flows of one conversation sit
# together, so dictionary indices run-length encode and zstd finds repeats (about a third
# smaller than time order for a busy mesh; bench/storage.py). Time stays exact per row group
# (Parquet statistics), which is what readers prune by.
SORT_KEYS = (
    "Type",
    "verdict",
    "event_type.type",
    "source.pod_name",
    "destination.pod_name",
    "traffic_direction",
    "is_reply",
    "time",
)


def stored_type(typ: pa.DataType) -> pa.DataType:
    """typ with timestamps as int64 nanoseconds (the stored form, exact to the nanosecond)."""
    if pa.types.is_timestamp(typ):
        return pa.int64()
    if pa.types.is_struct(typ):
        return pa.struct([pa.field(f.name, stored_type(f.type)) for f in typ])
    if pa.types.is_list(typ):
        return pa.list_(stored_type(typ.value_type))
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


def _times_to_int(table: pa.Table) -> pa.Table:
    """table with every timestamp (top level or nested) as int64 nanoseconds."""
    target = pa.schema([pa.field(f.name, stored_type(f.type)) for f in table.schema])
    return table if target.equals(table.schema) else table.cast(target)


def to_storage(flows: pa.Table) -> pa.Table:
    """The stored form of decoded flows: times as int64 ns, canonical uuids packed into 16 bytes
    (`_uuid`), fingerprints kept only for flows without a uuid (the only ones deduplicated by it),
    Summary only where it differs from the text derived from the other fields (codec.summary)."""
    col = _as_array(flows.column("uuid"))
    if col.offset:
        col = pa.concat_arrays([col])  # the C helper reads buffers from offset 0
    n = len(col)
    _, offsets, data = col.buffers()
    if _wire is not None and n:
        packed, validity, count = _wire.pack_uuids(
            offsets.to_pybytes(), data.to_pybytes() if data is not None else b"", n
        )
        packed16 = pa.Array.from_buffers(
            UUID_BYTES, n, [pa.py_buffer(validity), pa.py_buffer(packed)], n - count
        )
    else:
        packed16 = pa.array([_pack_uuid_py(u) for u in col.to_pylist()], UUID_BYTES)
    is_packed = packed16.is_valid()
    flows = flows.set_column(
        flows.schema.get_field_index("uuid"), "uuid", pc.if_else(is_packed, "", col)
    )
    fp = flows.column("_fp")
    fp = pc.if_else(pc.equal(col, ""), fp, pa.scalar(None, pa.uint64()))
    flows = flows.set_column(flows.schema.get_field_index("_fp"), "_fp", fp)
    return _times_to_int(summary.elide(flows).append_column("_uuid", packed16))


def events_to_storage(events: pa.Table) -> pa.Table:
    """The stored form of decoded events (node_status, lost_events): times as int64 ns."""
    return _times_to_int(events)


def _pack_uuid_py(u: str | None) -> bytes | None:
    import uuid as _uuid

    if not u or len(u) != 36:
        return None
    try:
        parsed = _uuid.UUID(u)
    except ValueError:
        return None
    return parsed.bytes if str(parsed) == u else None


@cache
def decoded_types() -> dict[str, pa.DataType]:
    """Column name -> decoded Arrow type, for every stored flow and event column."""
    out = {f.name: f.type for f in flow_type()}
    out.update({f.name: f.type for f in response_type()})
    return out


def from_storage(table: pa.Table) -> pa.Table:
    """Undo to_storage / events_to_storage on any subset of columns: uuid strings, timestamps and
    (when Type, l4 and l7 are there too) Summary."""
    if {"Summary", "Type", "l4", "l7"} <= set(table.column_names):
        table = summary.restore(table)
    decoded = decoded_types()
    for i, f in enumerate(table.schema):
        want = decoded.get(f.name)
        if want is not None and not f.type.equals(want) and f.type.equals(stored_type(want)):
            table = table.set_column(i, f.name, table.column(i).cast(want))
    if "_uuid" not in table.column_names:
        return table
    packed = _as_array(table.column("_uuid"))
    if isinstance(packed, pa.ExtensionArray):  # a format-1 file (pa.uuid())
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
    if "uuid" in table.column_names:
        uuid_col = pc.coalesce(strings, _as_array(table.column("uuid")))
        table = table.set_column(table.schema.get_field_index("uuid"), "uuid", uuid_col)
    else:
        table = table.append_column("uuid", strings)
    return table.drop_columns(["_uuid"])


def is_format_1(schema: pa.Schema) -> bool:
    """True for the schema of a file written in store format 1 (timestamp types, uuid extension)."""

    def old(typ: pa.DataType) -> bool:
        if pa.types.is_timestamp(typ) or isinstance(typ, pa.ExtensionType):
            return True
        if pa.types.is_struct(typ):
            return any(old(f.type) for f in typ)
        if pa.types.is_list(typ):
            return old(typ.value_type)
        return False

    return any(old(f.type) for f in schema)


def upgrade_format_1(table: pa.Table) -> pa.Table:
    """A row group of a format-1 file (flows or events) in the stored form of format 2."""
    if "_uuid" in table.column_names:
        packed = _as_array(table.column("_uuid"))
        if isinstance(packed, pa.ExtensionArray):
            packed = packed.storage
        table = table.set_column(table.schema.get_field_index("_uuid"), "_uuid", packed)
    if {"Summary", "Type", "l4", "l7"} <= set(table.column_names):
        table = summary.elide(table)
    return _times_to_int(table)


def order_rows(flows: pa.Table) -> pa.Table:
    """Stored flow rows in SORT_KEYS order (columns a table lacks are left out of the key)."""
    if flows.num_rows < 2:
        return flows
    keys = []
    for path in SORT_KEYS:
        head, *rest = path.split(".")
        if head not in flows.column_names:
            continue
        col = flows.column(head)
        try:
            for name in rest:
                col = pc.struct_field(col, name)
        except (KeyError, pa.ArrowException):
            continue
        keys.append(col)
    names = [f"k{i}" for i in range(len(keys))]
    order = pc.sort_indices(
        pa.table(keys, names=names), sort_keys=[(k, "ascending") for k in names]
    )
    return flows.take(order)


# Columns whose values rarely repeat within a row group: a dictionary only costs there.
_NO_DICTIONARY = ("_uuid", "_fp", "latency_ns", "source_port", "destination_port")


@cache
def _encoding_for(schema: pa.Schema) -> dict:
    buf = io.BytesIO()
    pq.write_table(schema.empty_table(), buf)
    parquet_schema = pq.read_metadata(io.BytesIO(buf.getvalue())).schema
    dictionary, encoding = [], {}
    times = set(_time_paths(schema))
    for i in range(len(parquet_schema)):
        path = parquet_schema.column(i).path
        if path in times:
            encoding[path] = "DELTA_BINARY_PACKED"  # sorted-ish ns timestamps: small deltas
        elif path.rsplit(".", 1)[-1] not in _NO_DICTIONARY:
            dictionary.append(path)
    return {"use_dictionary": dictionary, "column_encoding": encoding}


def parquet_encoding(schema: pa.Schema) -> dict:
    """pyarrow.parquet writer arguments (use_dictionary, column_encoding) for a stored schema."""
    return _encoding_for(schema)


def _time_paths(schema: pa.Schema) -> list[str]:
    """Parquet column paths of the stored schema's timestamps (int64 ns where decoded types have
    timestamps), e.g. time, lost_events.first."""
    decoded = decoded_types()
    out = []

    def walk(path: str, typ: pa.DataType, want: pa.DataType) -> None:
        if pa.types.is_timestamp(want) and pa.types.is_int64(typ):
            out.append(path)
        elif pa.types.is_struct(want) and pa.types.is_struct(typ):
            for f in want:
                idx = typ.get_field_index(f.name)
                if idx >= 0:
                    walk(f"{path}.{f.name}", typ.field(idx).type, f.type)
        elif pa.types.is_list(want) and pa.types.is_list(typ):
            walk(f"{path}.list.element", typ.value_type, want.value_type)

    for f in schema:
        if f.name in decoded:
            walk(f.name, f.type, decoded[f.name])
    return out


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
    rows = struct.cast(stored_type(struct.type)).to_pylist()  # keeps every nanosecond
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
    fields = [pa.field(f.name, stored_type(f.type)) for f in flow_type()]
    fields += [pa.field("_fp", pa.uint64()), pa.field("_raw", pa.binary())]
    return pa.schema(fields + [pa.field("_uuid", UUID_BYTES)])


def events_schema() -> pa.Schema:
    """Schema of stored event files (node_status and lost_events responses)."""
    rt = response_type()
    names = ("node_status", "lost_events", "node_name", "time")
    return pa.schema([pa.field(n, stored_type(rt.field(n).type)) for n in names])
