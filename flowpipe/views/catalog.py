"""The one function that builds flowpipe's DuckDB views and macros (views.macros) over a store."""

from __future__ import annotations

import contextlib
import datetime as _date
import os
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from flowpipe.codec import storage, summary
from flowpipe.common.sql import quote, quote_list
from flowpipe.common.text import first_line
from flowpipe.store.layout import DB_FILE, EVENTS, FLOWS, INCOMING, Store, StoreError
from flowpipe.views import columns
from flowpipe.views.macros import MACROS

VIEWS_VERSION = "1"

CONVENIENCE_VIEWS = {
    "policy_verdicts": "SELECT * FROM flows WHERE event_type = 5",
    "drops": "SELECT * FROM flows WHERE verdict = 'DROPPED'",
    "l7_http": "SELECT * FROM flows WHERE l7_protocol = 'HTTP'",
    "l7_dns": "SELECT * FROM flows WHERE l7_protocol = 'DNS'",
    "lost_events": "SELECT * FROM events WHERE kind = 'lost_events'",
    "node_status": "SELECT * FROM events WHERE kind = 'node_status'",
}


# On object storage the views read pyarrow datasets registered under these names (register):
# DuckDB's httpfs extension downloads itself at first use, which fails where only PyPI is
# reachable; a pyarrow dataset gets projection and filter pushdown and pyarrow's S3/GCS client.
SOURCES = {FLOWS: "_flowpipe_flows_source", EVENTS: "_flowpipe_events_source"}
PARTITIONS = pa.schema([("cluster", pa.string()), ("date", pa.date32()), ("hour", pa.int32())])


def _reader(
    store: Store, kind: str, files: list[str] | None = None, union_by_name: bool = True
) -> str:
    if not store.local:
        return SOURCES[kind]
    # files: an explicit list (check's cluster and time window) instead of the store-wide glob
    source = quote(store.glob(kind)) if files is None else quote_list(files)
    return (
        f"read_parquet({source}, hive_partitioning = true, union_by_name = {str(union_by_name).lower()}, "
        "hive_types = {'cluster': VARCHAR, 'date': DATE, 'hour': INTEGER})"
    )


RAW_TIME = (
    "_time_ns"  # the stored time (BIGINT ns) beside the converted one, for pruning predicates
)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _decoded_sql(expr: str, stored: pa.DataType, decoded: pa.DataType) -> str | None:
    """SQL turning a stored value (codec.storage) back into its decoded type; None when equal."""
    if pa.types.is_timestamp(decoded) and pa.types.is_integer(stored):
        # TIMESTAMPTZ_NS whatever the session's TimeZone (a cast from TIMESTAMP_NS would shift)
        return f"timezone('UTC', make_timestamp_ns({expr}))"
    if pa.types.is_struct(decoded) and pa.types.is_struct(stored):
        parts, changed = [], False
        for f in decoded:
            sub = f"{expr}.{_ident(f.name)}"
            conv = _decoded_sql(sub, stored.field(f.name).type, f.type)
            changed |= conv is not None
            parts.append(f"{quote(f.name)}: {conv or sub}")
        if not changed:
            return None
        return f"CASE WHEN {expr} IS NULL THEN NULL ELSE {{{', '.join(parts)}}} END"
    if pa.types.is_list(decoded) and pa.types.is_list(stored):
        conv = _decoded_sql("x", stored.value_type, decoded.value_type)
        return None if conv is None else f"list_transform({expr}, lambda x: {conv})"
    return None


def _stored_select(kind: str) -> str:
    """The select list that gives a stored file's columns their decoded types (times as
    TIMESTAMPTZ_NS, `_uuid` as UUID, the whole Summary), plus the stored time as RAW_TIME."""
    schema = storage.storage_schema() if kind == FLOWS else storage.events_schema()
    decoded = storage.decoded_types()
    replace = []
    for f in schema:
        conv = _decoded_sql(_ident(f.name), f.type, decoded[f.name]) if f.name in decoded else None
        if conv is not None:
            replace.append(f"{conv} AS {_ident(f.name)}")
    if "_uuid" in schema.names:
        replace.append("CAST(_uuid AS UUID) AS _uuid")
    if "Summary" in schema.names:  # stored only where it differs from the derived text
        replace.append(f'coalesce("Summary", {summary.SQL}) AS "Summary"')
    return f"* REPLACE ({', '.join(replace)}), time AS {RAW_TIME}"


def register(
    con: duckdb.DuckDBPyConnection, store: Store, files: dict[str, list[str]] | None = None
) -> None:
    """On an object store, (re)point the views' sources at pyarrow datasets over files (default:
    every committed file); nothing to do on disk, where the views read the files by path."""
    if store.local:
        return
    files = files or {}
    for kind in (FLOWS, EVENTS):
        paths = files.get(kind)
        if paths is None:
            paths = store.schema_files(kind) + store.committed(kind)
        con.register(SOURCES[kind], dataset(store, kind, paths))


def dataset(store: Store, kind: str, paths: list[str]) -> pads.Dataset:
    """A pyarrow dataset over stored files of kind with the partition columns and `filename`,
    as read_parquet gives them on disk (constant per file: scans skip files by them). Its schema
    is the store format's: files written before a column existed read it as NULL."""
    try:
        schema = pq.read_schema(store.open_input(store.schema_files(kind)[0]))
        schema = pa.unify_schemas([schema, PARTITIONS, pa.schema([("filename", pa.string())])])
        fmt = pads.ParquetFileFormat()
        frags = [
            fmt.make_fragment(str(p), filesystem=store.fs, partition_expression=_constants(str(p)))
            for p in paths
        ]
        return pads.FileSystemDataset(frags, schema, fmt, store.fs)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise StoreError(f"store {store.url}: cannot read {kind}: {first_line(exc)}") from exc


def _constants(path: str) -> pads.Expression:
    """cluster, date, hour (from the hive directories) and filename of one stored file."""
    parts = dict(d.split("=", 1) for d in path.split("/")[-4:-1] if "=" in d)
    expr = pads.field("filename") == path
    if "cluster" in parts:
        expr &= pads.field("cluster") == parts["cluster"]
    if "date" in parts:
        expr &= pads.field("date") == pa.scalar(_date.date.fromisoformat(parts["date"]))
    if "hour" in parts:
        expr &= pads.field("hour") == pa.scalar(int(parts["hour"]), pa.int32())
    return expr


def view_sql(
    store: Store,
    *,
    files: dict[str, list[str]] | None = None,
    where: str | None = None,
    same_schema: frozenset[str] = frozenset(),
) -> list[str]:
    """Every statement that defines the views and macros, in order (files/where narrow the rows).

    same_schema: kinds whose listed files all have the Parquet schema of the first (see
    `same_schema`): read without union_by_name, which reads every file's schema at every bind."""
    flat = ",\n  ".join(f"{expr} AS {name}" for name, expr, _ in columns.flat_columns())
    events = ",\n  ".join(f"{expr} AS {name}" for name, expr, _ in columns.event_columns())
    files = files or {}
    # on stored columns (cluster, date, hour, time as BIGINT ns): pushed into the Parquet scan
    cond = f" WHERE {where}" if where else ""
    fsel, esel = _stored_select(FLOWS), _stored_select(EVENTS)

    def reader(kind: str) -> str:
        return _reader(
            store,
            kind,
            files.get(kind),
            union_by_name=not (kind in same_schema and files.get(kind)),
        )

    stmts = [
        f"CREATE OR REPLACE VIEW flows_proto AS SELECT {fsel} FROM {reader(FLOWS)}{cond}",
        f"CREATE OR REPLACE VIEW events_proto AS SELECT {esel} FROM {reader(EVENTS)}{cond}",
        # the same rows plus the file each came from: serve follows newly committed files
        f"CREATE OR REPLACE VIEW flows_proto_files AS SELECT {fsel}, filename FROM {reader(FLOWS)}{cond}",
        f"CREATE OR REPLACE VIEW events_proto_files AS SELECT {esel}, filename FROM {reader(EVENTS)}{cond}",
        f"CREATE OR REPLACE VIEW flows AS SELECT\n  {flat}\nFROM flows_proto",
        f"CREATE OR REPLACE VIEW events AS SELECT\n  {events}\nFROM events_proto",
    ]
    stmts += [f"CREATE OR REPLACE VIEW {name} AS {sql}" for name, sql in CONVENIENCE_VIEWS.items()]
    stmts += [
        f"CREATE OR REPLACE MACRO {name}{args} AS {body}" for name, (args, body) in MACROS.items()
    ]
    return stmts


def same_schema(paths: list[str]) -> bool:
    """True when every file has byte for byte the Parquet schema of the first (then reading them
    without union_by_name gives the same columns and rows); False when any differs or is unreadable.

    Reads only the start of each footer: the FileMetaData's version and schema come first."""
    try:
        prefixes = []
        for path in paths:
            with open(path, "rb") as fh:
                fh.seek(-8, os.SEEK_END)
                tail = fh.read(8)
                if tail[4:] != b"PAR1":
                    return False
                length = int.from_bytes(tail[:4], "little")
                if not prefixes:
                    fh.seek(-8 - length, os.SEEK_END)
                    first = fh.read(length)
                    end = _schema_end(first)
                    prefixes.append(first[:end])
                    continue
                want = prefixes[0]
                if length < len(want):
                    return False
                fh.seek(-8 - length, os.SEEK_END)
                if fh.read(len(want)) != want:
                    return False
    except (OSError, ValueError, IndexError):
        return False
    return True


def _schema_end(meta: bytes) -> int:
    """Offset just past FileMetaData fields 1 (version) and 2 (schema) in thrift compact encoding."""
    pos = fid = 0
    while True:
        head = meta[pos]
        if head == 0:
            return pos
        if not head >> 4:
            raise ValueError("long-form thrift field header")  # never written for fields 1-3
        fid += head >> 4
        if fid > 2:
            return pos
        pos = _skip(meta, pos + 1, head & 0x0F)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _skip(buf: bytes, pos: int, kind: int) -> int:
    """Position after one thrift compact value of type kind starting at pos."""
    if kind in (1, 2):  # booleans in a field header
        return pos
    if kind == 3:  # byte
        return pos + 1
    if kind in (4, 5, 6):  # zigzag varints
        return _varint(buf, pos)[1]
    if kind == 7:  # double
        return pos + 8
    if kind == 8:  # binary
        n, pos = _varint(buf, pos)
        return pos + n
    if kind in (9, 10):  # list, set
        head = buf[pos]
        pos += 1
        n, elem = head >> 4, head & 0x0F
        if n == 15:
            n, pos = _varint(buf, pos)
        for _ in range(n):
            pos = pos + 1 if elem in (1, 2) else _skip(buf, pos, elem)
        return pos
    if kind == 11:  # map
        n, pos = _varint(buf, pos)
        if n:
            types = buf[pos]
            pos += 1
            for _ in range(n):
                pos = _skip(buf, _skip(buf, pos, types >> 4), types & 0x0F)
        return pos
    if kind == 12:  # struct
        while True:
            head = buf[pos]
            pos += 1
            if head == 0:
                return pos
            if not head >> 4:  # long form: zigzag i16 field id follows
                pos = _varint(buf, pos)[1]
            pos = _skip(buf, pos, head & 0x0F)
    raise ValueError(f"thrift type {kind}")


def build_views(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    """Create the views (flows, events, policy_verdicts, drops, l7_http, l7_dns, ...) and macros."""
    register(con, store)
    for stmt in view_sql(store):
        con.execute(stmt)


def connect(
    store: Store, *, memory_limit: str | None = None, threads: int | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the store's views."""
    config = {}
    if memory_limit:
        config["memory_limit"] = memory_limit
    if threads:
        config["threads"] = threads
    con = duckdb.connect(":memory:", config=config)
    build_views(con, store)
    return con


def write_database(store: Store) -> Path | None:
    """(Re)write <store>/flowpipe.duckdb with the same views, atomically; nothing keeps it open.

    Not on object storage (None): a DuckDB file there could read the bucket only through
    httpfs; `flowpipe query --store s3://...` gives the same views."""
    if not store.local:
        return None
    final = store.root / DB_FILE
    tmp = store.root / INCOMING / "db-not-created.duckdb"
    try:
        tmp = store.tmp_path(f"db-{uuid.uuid4().hex[:8]}.duckdb")
        con = duckdb.connect(str(tmp))
        try:
            build_views(con, store)
            con.execute(
                "CREATE OR REPLACE TABLE flowpipe_meta AS SELECT ? AS views_version, ? AS store",
                [VIEWS_VERSION, str(store.root)],
            )
        finally:
            con.close()
        os.replace(tmp, final)
    except (OSError, duckdb.Error) as exc:
        for leftover in (tmp, Path(str(tmp) + ".wal")):
            with contextlib.suppress(OSError):
                leftover.unlink()
        raise StoreError(f"store {store.url}: cannot write {DB_FILE}: {exc}") from exc
    return final
