"""Merge small files (closed hours into large files, open hours level by level) and drop partitions past retention."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowpipe.errors import StoreError
from flowpipe.store.layout import (
    EVENTS,
    FLOWS,
    Store,
    _describe_os_error,
    now_ns,
    part_name,
    stored_rows,
    write_options,
)

HOUR_NS = 3_600_000_000_000
COMPACT_SUFFIX = "-compact.parquet"  # readers following new files recognise merged ones by it
TARGET_FILE_BYTES = 256 * 1024 * 1024
ROW_GROUP = (
    32 * 1024
)  # rows (~50 MB of Arrow for typical flows): the merge holds one or two in memory
FANOUT = 16  # files of one level merged into one of the next, in open hours
FINAL = 1_000  # level of a closed hour's merged files
SETTLE_S = 30.0  # seconds a committed file waits before an open hour's merge may take it
_LEVEL = re.compile(r"-l(\d+)" + re.escape(COMPACT_SUFFIX) + "$")


class _Stopped(Exception):
    """The merge was asked to stop (the collector is shutting down)."""


@dataclass
class CompactReport:
    merged_files: int = 0
    written_files: int = 0
    removed_partitions: int = 0
    removed_files: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    skipped: bool = False  # another compaction of the store was running

    def summary(self) -> str:
        if self.skipped:
            return "skipped: another compaction of this store is running"
        return (
            f"merged {self.merged_files} files into {self.written_files} "
            f"({self.bytes_before:,} -> {self.bytes_after:,} bytes), "
            f"removed {self.removed_partitions} partitions ({self.removed_files} files) past retention"
        )


def compact(
    store: Store,
    *,
    keep: float | None = None,
    grace_s: float = 120.0,
    min_files: int = 2,
    now: int | None = None,
    settle_s: float | None = None,
    stop: threading.Event | None = None,
    wait: bool = True,
) -> CompactReport:
    """Compact every closed hour partition with at least min_files files, merge the open hours'
    settled small files level by level (see _merge_open), and apply retention (seconds).

    One compaction at a time per store (two would merge the same files twice): wait=False
    returns an empty report at once when another is running."""
    with store.compact_lock(wait=wait) as mine:
        if not mine:
            return CompactReport(skipped=True)
        return _compact(
            store,
            keep,
            grace_s,
            min_files,
            now or now_ns(),
            SETTLE_S if settle_s is None else settle_s,
            stop,
        )


def _compact(
    store: Store,
    keep: float | None,
    grace_s: float,
    min_files: int,
    now: int,
    settle_s: float,
    stop: threading.Event | None,
) -> CompactReport:
    report = CompactReport()
    for kind in (FLOWS, EVENTS):
        for (cluster, start), files in sorted(store.partitions(kind).items()):
            if stop is not None and stop.is_set():
                return report
            part = store.partition_dir(kind, cluster, start)
            if keep is not None and start + HOUR_NS <= now - int(keep * 1e9):
                report.removed_files += store.drop(kind, cluster, start, files)
                report.removed_partitions += 1
                continue
            if start + HOUR_NS + int(grace_s * 1e9) > now:
                _merge_open(store, kind, cluster, start, now - int(settle_s * 1e9), report, stop)
                continue
            if len(files) >= min_files:
                _merge(store, part, [Path(f) for f in files], report, stop=stop)
    store.tidy(now)
    return report


def level(path: Path) -> int:
    """A file's merge level in an open hour: 0 as committed, n after n merges, FINAL for a closed
    hour's compaction output (never merged again while the hour is open)."""
    if not path.name.endswith(COMPACT_SUFFIX):
        return 0
    m = _LEVEL.search(path.name)
    return int(m.group(1)) if m else FINAL


def _merge_open(
    store: Store,
    kind: str,
    cluster: str,
    start: int,
    settled_ns: int,
    report: CompactReport,
    stop: threading.Event | None,
) -> None:
    """Merge FANOUT files of one level into one of the next, while any level has that many.

    An hour still being written gets a file every few seconds per collector; scanning thousands
    of small files costs queries more than their rows do. Level by level, a row is rewritten
    about log_FANOUT(files per hour) times, and an open hour holds at most FANOUT-1 files per
    level. Committed files join only once settled (older than settle_s): `serve --follow` reads
    new committed files, and takes merged ones for history."""
    part = store.partition_dir(kind, cluster, start)
    while stop is None or not stop.is_set():
        files = sorted(Path(f) for f in store.committed(kind, cluster, start, start + HOUR_NS - 1))
        by_level: dict[int, list[Path]] = {}
        for f in files:
            if str(f.parent) != str(part):
                continue
            lv = level(f)
            if lv == FINAL:
                continue
            if lv == 0:
                at = store.committed_at(f)
                if at is None or at > settled_ns:
                    continue
            by_level.setdefault(lv, []).append(f)
        ready = [lv for lv, fs in sorted(by_level.items()) if len(fs) >= FANOUT]
        if not ready:
            return
        lv = ready[0]
        _merge(store, part, by_level[lv][:FANOUT], report, tag=f"-l{lv + 1}", stop=stop)


def _merge(
    store: Store,
    part: Path,
    files: list[Path],
    report: CompactReport,
    *,
    tag: str = "",
    stop: threading.Event | None = None,
) -> None:
    """Stream files (oldest first) into new files of at most TARGET_FILE_BYTES, then swap.

    Rows are gathered into row groups of ROW_GROUP rows: the collector commits a few hundred
    rows per file, and a row group per input would leave merged files with thousands of tiny
    row groups, whose footers DuckDB parses on every query."""
    try:
        schemas = [pq.read_schema(store.open_input(f)) for f in files]
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(f"store {store.url}: cannot read {part}: {exc}") from exc
    schema = pa.unify_schemas(schemas)
    kind = part.parent.parent.parent.name  # flows or events
    outputs: list[tuple[Path, Path]] = []
    writer = None
    written = 0
    pending: list[pa.Table] = []

    def new_writer(first_ns: int) -> pq.ParquetWriter:
        # named like committed files, by their first flow's time: files sort, and merge, in
        # time order, so row groups stay narrow in time and queries skip most of them
        name = part_name(first_ns, f"{tag}{COMPACT_SUFFIX}")
        tmp = store.tmp_path(name)
        outputs.append((tmp, part / name))
        return pq.ParquetWriter(tmp, schema, **write_options(schema))

    def flush(final: bool = False) -> None:
        """Write whole row groups of the pending rows (the rest too when final)."""
        nonlocal writer, written
        rows = sum(t.num_rows for t in pending)
        if not rows or (rows < ROW_GROUP and not final):
            return
        table = pa.concat_tables(pending)
        pending.clear()
        cut = rows if final else rows - rows % ROW_GROUP
        if cut < rows:
            pending.append(table.slice(cut))
        if writer is None or written >= TARGET_FILE_BYTES:
            if writer is not None:
                writer.close()
            first = pc.min(table.column("time")).as_py() if "time" in table.column_names else None
            writer = new_writer(max(first or 0, 0))
            written = 0
        out = stored_rows(kind, table.slice(0, cut), ROW_GROUP)
        writer.write_table(out, row_group_size=ROW_GROUP)
        written += out.nbytes // 4  # compressed size is not known until close; ~4x is typical

    try:
        for f in files:
            if stop is not None and stop.is_set():
                raise _Stopped
            report.bytes_before += store.size(f)
            source = pq.ParquetFile(store.open_input(f))
            for i in range(source.num_row_groups):  # a row group at a time: memory stays bounded
                table = source.read_row_group(i)
                for col in schema.names:
                    if col not in table.column_names:
                        table = table.append_column(
                            col, pa.nulls(table.num_rows, schema.field(col).type)
                        )
                pending.append(table.select(schema.names).cast(schema))
                flush()
        flush(final=True)
        if writer is not None:
            writer.close()
            writer = None
        for tmp, _ in outputs:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
    except (OSError, pa.ArrowException, _Stopped) as exc:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        for tmp, _ in outputs:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(exc, _Stopped):
            return  # asked to stop: nothing was swapped, the inputs stay
        reason = (
            _describe_os_error(exc, f"compacting {part}") if isinstance(exc, OSError) else str(exc)
        )
        raise StoreError(f"store {store.url}: {reason}") from exc
    report.bytes_after += store.replace([str(f) for f in files], outputs)
    report.merged_files += len(files)
    report.written_files += len(outputs)
