"""Merge the small files of closed hours and drop partitions past retention."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flowpipe.errors import StoreError
from flowpipe.store import (
    EVENTS,
    FLOWS,
    INCOMING,
    PARQUET_OPTIONS,
    SCHEMA_CLUSTER,
    Store,
    _describe_os_error,
    _dir_hour_ns,
    _fsync_dir,
    now_ns,
)

HOUR_NS = 3_600_000_000_000
COMPACT_SUFFIX = "-compact.parquet"  # readers following new files recognise merged ones by it
TARGET_FILE_BYTES = 256 * 1024 * 1024
ROW_GROUP = 256 * 1024


@dataclass
class CompactReport:
    merged_files: int = 0
    written_files: int = 0
    removed_partitions: int = 0
    removed_files: int = 0
    bytes_before: int = 0
    bytes_after: int = 0

    def summary(self) -> str:
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
) -> CompactReport:
    """Compact every closed hour partition with at least min_files files; apply retention (seconds)."""
    now = now or now_ns()
    report = CompactReport()
    for kind in (FLOWS, EVENTS):
        base = store.root / kind
        for part in sorted(base.glob("cluster=*/date=*/hour=*")):
            if part.parent.parent.name == f"cluster={SCHEMA_CLUSTER}" or not part.is_dir():
                continue
            start = _dir_hour_ns(part)
            if keep is not None and start + HOUR_NS <= now - int(keep * 1e9):
                report.removed_files += _remove_partition(store, part)
                report.removed_partitions += 1
                continue
            if start + HOUR_NS + int(grace_s * 1e9) > now:
                continue  # still being written
            files = sorted(part.glob("*.parquet"))
            if len(files) >= min_files:
                _merge(store, part, files, report)
    return report


def _remove_partition(store: Store, part: Path) -> int:
    files = list(part.glob("*.parquet"))
    with store.swap_lock():
        try:
            shutil.rmtree(part)
            date_dir = part.parent
            if not any(date_dir.iterdir()):
                date_dir.rmdir()
        except OSError as exc:
            raise StoreError(f"store {store.root}: {_describe_os_error(exc, f'removing {part}')}") from exc
    return len(files)


def _merge(store: Store, part: Path, files: list[Path], report: CompactReport) -> None:
    """Stream files (oldest first) into new files of at most TARGET_FILE_BYTES, then swap."""
    try:
        schemas = [pq.read_schema(f) for f in files]
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(f"store {store.root}: cannot read {part}: {exc}") from exc
    schema = pa.unify_schemas(schemas)
    outputs: list[tuple[Path, Path]] = []
    writer = None
    written = 0

    def new_writer() -> pq.ParquetWriter:
        name = f"part-{uuid.uuid4().hex[:12]}{COMPACT_SUFFIX}"
        tmp = store.root / INCOMING / f"{name}.tmp"
        outputs.append((tmp, part / name))
        return pq.ParquetWriter(tmp, schema, **PARQUET_OPTIONS)

    try:
        for f in files:
            report.bytes_before += f.stat().st_size
            table = pq.read_table(f)
            for col in schema.names:
                if col not in table.column_names:
                    table = table.append_column(col, pa.nulls(table.num_rows, schema.field(col).type))
            table = table.select(schema.names).cast(schema)
            if writer is None or written >= TARGET_FILE_BYTES:
                if writer is not None:
                    writer.close()
                writer = new_writer()
                written = 0
            writer.write_table(table, row_group_size=ROW_GROUP)
            written += table.nbytes // 4  # compressed size is not known until close; ~4x is typical
        if writer is not None:
            writer.close()
            writer = None
        for tmp, _ in outputs:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
    except (OSError, pa.ArrowException) as exc:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        for tmp, _ in outputs:
            with contextlib.suppress(OSError):
                tmp.unlink()
        reason = _describe_os_error(exc, f"compacting {part}") if isinstance(exc, OSError) else str(exc)
        raise StoreError(f"store {store.root}: {reason}") from exc
    # The swap is the only moment readers must not list the directory: new files in, old out.
    with store.swap_lock():
        for tmp, final in outputs:
            os.rename(tmp, final)
            report.bytes_after += final.stat().st_size
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        _fsync_dir(part)
    report.merged_files += len(files)
    report.written_files += len(outputs)
