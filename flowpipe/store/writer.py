"""Open Parquet files that batches of one cluster stream into, published atomically on commit."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowpipe.errors import StoreError
from flowpipe.store.layout import (
    EVENTS,
    FLOWS,
    Store,
    WriteResult,
    _by_hour,
    _describe_os_error,
    check_cluster,
    stored_rows,
    write_options,
)

ROW_GROUP = 16 * 1024  # rows buffered per open file and written (sorted) as one row group


class _Open:
    """One open temp file and the rows waiting to fill its next row group."""

    def __init__(self, writer: pq.ParquetWriter, tmp: Path, final: Path):
        self.writer, self.tmp, self.final = writer, tmp, final
        self.pending: list[pa.Table] = []
        self.rows = 0


class StreamWriter:
    """Appends batches of one cluster to open temp files (one per kind and hour) and publishes
    them atomically on commit(). Rows are written in row groups of row_group rows, sorted
    (layout.stored_rows): memory is one row group per open file, not one file."""

    def __init__(self, store: Store, cluster: str, row_group: int = ROW_GROUP):
        self.store = store
        self.cluster = check_cluster(cluster)
        self.row_group = row_group
        self._open: dict[tuple[str, int], _Open] = {}
        self.flows = 0
        self.events = 0
        self.newest_ns: int | None = None
        self.opened_at: float | None = None

    @property
    def rows(self) -> int:
        return self.flows + self.events

    def write(self, flows: pa.Table | None, events: pa.Table | None = None) -> None:
        """Append; on failure every open file is removed and StoreError raised (nothing published)."""
        try:
            for kind, table in ((FLOWS, flows), (EVENTS, events)):
                if table is None or table.num_rows == 0:
                    continue
                for hour_ns, part in _by_hour(table):
                    f = self._file(kind, hour_ns, part)
                    f.pending.append(part)
                    f.rows += part.num_rows
                    if f.rows >= self.row_group:
                        self._write_group(kind, f)
                if kind == FLOWS:
                    self.flows += table.num_rows
                    newest = pc.max(table.column("time")).as_py()
                    if newest is not None and (self.newest_ns is None or newest > self.newest_ns):
                        self.newest_ns = newest
                else:
                    self.events += table.num_rows
        except (OSError, pa.ArrowException) as exc:
            self.abort()
            what = f"writing {self.cluster}'s open files"
            reason = (
                _describe_os_error(exc, what) if isinstance(exc, OSError) else f"{exc} while {what}"
            )
            raise StoreError(f"store {self.store.root}: {reason}") from exc

    def _file(self, kind: str, hour_ns: int, part: pa.Table) -> _Open:
        key = (kind, hour_ns)
        if key not in self._open:
            final_dir = self.store.partition_dir(kind, self.cluster, hour_ns)
            first = pc.min(part.column("time").cast(pa.int64())).as_py() or 0
            name = f"part-{first:019d}-{uuid.uuid4().hex[:12]}.parquet"
            tmp = self.store.tmp_path(name)
            schema = stored_rows(kind, part.slice(0, 0)).schema
            writer = pq.ParquetWriter(tmp, schema, **write_options(schema))
            self._open[key] = _Open(writer, tmp, final_dir / name)
            if self.opened_at is None:
                self.opened_at = time.monotonic()
        return self._open[key]

    def _write_group(self, kind: str, f: _Open) -> None:
        if not f.rows:
            return
        table = pa.concat_tables(f.pending) if len(f.pending) > 1 else f.pending[0]
        f.pending, f.rows = [], 0
        table = stored_rows(kind, table, self.row_group)
        f.writer.write_table(table, row_group_size=max(table.num_rows, 1))

    def commit(self, publish: bool = True) -> WriteResult:
        """Close, fsync and rename every open file into its partition; reset for the next files.

        publish=False leaves the closed files staged (result.pending) for store.publish or
        store.discard later: an all-or-nothing import of many files."""
        result = WriteResult(flows=self.flows, events=self.events)
        try:
            for (kind, _), f in self._open.items():
                self._write_group(kind, f)
                f.writer.close()
                with open(f.tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                result.bytes += f.tmp.stat().st_size
                result.pending.append((f.tmp, f.final))
        except (OSError, pa.ArrowException) as exc:
            self.abort()
            reason = (
                _describe_os_error(exc, "closing files") if isinstance(exc, OSError) else str(exc)
            )
            raise StoreError(f"store {self.store.root}: {reason}") from exc
        self._open.clear()
        if publish:
            self.store.publish(result)
        self.flows = self.events = 0
        self.newest_ns = None
        self.opened_at = None
        return result

    def abort(self) -> None:
        """Drop the open files (their rows were never published)."""
        for f in self._open.values():
            with contextlib.suppress(Exception):
                f.writer.close()
            with contextlib.suppress(OSError):
                f.tmp.unlink()
        self._open.clear()
        self.flows = self.events = 0
        self.newest_ns = None
        self.opened_at = None
