"""`flowpipe migrate`: convert a store written in an older format to FORMAT_VERSION, in place.

Each file is rewritten under .incoming/ and renamed over itself (one atomic rename, under the swap
lock): a reader sees the old file or the new one, never half of one and never both. Files already
converted are skipped, so an interrupted migration resumes where it stopped. The schema files say
the store's format; they change last, and until then every command asks for migrate again."""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flowpipe.codec import storage
from flowpipe.errors import StoreError
from flowpipe.store.layout import (
    EVENTS,
    FLOWS,
    FORMAT_VERSION,
    Store,
    _describe_os_error,
    _fsync_dir,
    stored_rows,
    write_options,
)


@dataclass
class MigrateReport:
    from_version: str | None = None
    converted: int = 0  # files rewritten by this run
    skipped: int = 0  # files already in the current format (an earlier run was interrupted)
    bytes_before: int = 0
    bytes_after: int = 0
    stopped: bool = False  # asked to stop: run again to finish

    def summary(self, root: Path) -> str:
        if self.from_version in (None, FORMAT_VERSION):
            return f"store {root} is already in format {FORMAT_VERSION}: nothing to do"
        done = "stopped; run migrate again to finish" if self.stopped else "done"
        return (
            f"store {root}: format {self.from_version} -> {FORMAT_VERSION}, {done}: converted "
            f"{self.converted} files ({self.bytes_before:,} -> {self.bytes_after:,} bytes), "
            f"{self.skipped} already converted"
        )


def migrate(store: Store, *, stop: threading.Event | None = None) -> MigrateReport:
    """Convert every file of a format-1 store to the current format (see the module's doc)."""
    report = MigrateReport(from_version=store.format_version())
    if report.from_version in (None, FORMAT_VERSION):
        return report
    if report.from_version != "1":
        raise StoreError(
            f"store {store.url} is in format {report.from_version}, which this flowpipe does not "
            f"know (it writes format {FORMAT_VERSION}): use a newer flowpipe"
        )
    with store.compact_lock():  # no compaction (of any version) swaps files meanwhile
        busy = store.live_writers()
        if busy:
            raise StoreError(
                f"store {store.url}: {busy} flowpipe process(es) are writing to it (collect, "
                "import or compact); stop them, then run migrate again"
            )
        store.clean_incoming()
        for kind in (FLOWS, EVENTS):
            for path in store.files(kind):
                if stop is not None and stop.is_set():
                    report.stopped = True
                    return report
                _convert(store, kind, path, report)
        store.finish_format()
    return report


def _convert(store: Store, kind: str, path: Path, report: MigrateReport) -> None:
    try:
        source = pq.ParquetFile(path)
        if not storage.is_format_1(source.schema_arrow):
            report.skipped += 1
            return
        before = path.stat().st_size
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(f"store {store.url}: cannot read {path}: {exc}") from exc
    tmp = store.tmp_path(f"migrate-{path.name}")
    writer = None
    try:
        empty = storage.upgrade_format_1(source.schema_arrow.empty_table())
        schema = stored_rows(kind, empty).schema
        writer = pq.ParquetWriter(tmp, schema, **write_options(schema))
        for i in range(source.num_row_groups):  # one row group at a time: memory stays bounded
            table = storage.upgrade_format_1(source.read_row_group(i))
            table = stored_rows(kind, table, max(table.num_rows, 1))
            writer.write_table(table, row_group_size=max(table.num_rows, 1))
        writer.close()
        writer = None
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        with store.swap_lock():
            os.replace(tmp, path)  # same name: readers see the old rows or the new, never both
            _fsync_dir(path.parent)
    except (OSError, pa.ArrowException) as exc:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        what = f"converting {path}"
        reason = _describe_os_error(exc, what) if isinstance(exc, OSError) else f"{exc} ({what})"
        raise StoreError(f"store {store.url}: {reason}") from exc
    report.converted += 1
    report.bytes_before += before
    report.bytes_after += path.stat().st_size
