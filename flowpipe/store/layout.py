"""The Parquet store: hive-partitioned files per cluster and hour, committed atomically."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from flowpipe.codec import storage
from flowpipe.errors import StoreError
from flowpipe.ingest import dedup
from flowpipe.store import location

FLOWS = "flows"
EVENTS = "events"
INCOMING = ".incoming"
COMPACT_LOCK = ".compact.lock"
LOCK = ".lock"
DB_FILE = "flowpipe.duckdb"
ENV = "FLOWPIPE_STORE"
CLUSTER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3}
# Store format: 2 stores times as plain INT64 ns and uuids as plain 16 bytes (codec.storage), which
# Spark reads; 1 (flowpipe before this) used TIMESTAMP(NANOS) and UUID types. The schema file
# under cluster=_schema names it; `flowpipe migrate` converts a format-1 store in place.
FORMAT_VERSION = "2"
ROW_GROUP = 256 * 1024  # rows: import writes a file of at most this many rows as one row group
SCHEMA_CLUSTER = "_schema"  # cannot clash: cluster names start with a letter or digit
HOUR_NS = 3_600_000_000_000


def write_options(schema: pa.Schema) -> dict:
    """pyarrow.parquet writer arguments for stored files of schema (compression, encodings)."""
    return {**PARQUET_OPTIONS, **storage.parquet_encoding(schema)}


def part_name(first_ns: int, suffix: str = ".parquet") -> str:
    """A new data file's name: its first flow's time (files sort in time order) and a random
    part (unique among writers of one store, on disk and in a bucket)."""
    return f"part-{max(first_ns, 0):019d}-{uuid.uuid4().hex[:12]}{suffix}"


def check_cluster(name: str) -> str:
    """Return name if it is usable as a cluster partition value, else raise ValueError."""
    if not CLUSTER_RE.match(name):
        raise ValueError(
            f"invalid cluster name {name!r}: use letters, digits, '.', '_' or '-' (max 63)"
        )
    return name


@dataclass
class WriteResult:
    files: list[Path] = field(default_factory=list)
    pending: list[tuple[Path, Path]] = field(default_factory=list)
    flows: int = 0
    events: int = 0
    bytes: int = 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe_os_error(exc: OSError, what: str) -> str:
    if exc.errno == errno.ENOSPC:
        return f"no space left on device while {what}"
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded while {what}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied while {what}"
    if exc.errno == errno.EROFS:
        return f"read-only file system while {what}"
    return f"{exc.strerror or exc} while {what}"


class Store:
    """A store root: flows/ and events/ partitions, an .incoming/ area and the DuckDB file.

    This is the store on a local disk (rename and flock); store.objstore.ObjectStore is the same
    interface over s3:// and gs:// (a commit log). Store.open gives the right one."""

    local = True

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)  # what messages name
        self.fs: pafs.FileSystem = pafs.LocalFileSystem()
        self.incoming = self.root / INCOMING  # temporary files (tmp_path)

    # -------------------------------------------------------------- layout

    @classmethod
    def open(
        cls, root: str | os.PathLike[str] | None, *, create: bool = False, check_format: bool = True
    ) -> Store:
        """The store at root (or $FLOWPIPE_STORE); raise StoreError when it does not exist or is
        in an older format (check_format=False: open it anyway, for migrate)."""
        if root is None:
            root = os.environ.get(ENV)
        if not root:
            raise StoreError(f"no store given: pass --store PATH or set {ENV}")
        if location.is_remote(root):
            from flowpipe.store.objstore import ObjectStore

            return ObjectStore.open_url(str(root), create=create, check_format=check_format)
        store = cls(root)
        if create:
            store.ensure()
        elif not (store.root / FLOWS).is_dir():
            raise StoreError(f"no flowpipe store at {store.url} (run collect or import first)")
        elif check_format:
            store.check_format()
        return store

    def format_version(self) -> str | None:
        """The store format its schema files name (the oldest when a migration is unfinished);
        None for a store without schema files (a new one)."""
        found = sorted(
            p.name[len("schema-v") : -len(".parquet")]
            for kind in (FLOWS, EVENTS)
            for p in self._schema_dir(kind).glob("schema-v*.parquet")
        )
        return min(found, key=int) if found else None

    def check_format(self) -> None:
        """Raise StoreError (one line: run migrate) unless the store is in FORMAT_VERSION."""
        found = self.format_version()
        if found is not None and found != FORMAT_VERSION:
            raise StoreError(
                f"store {self.url} is in format {found} (an older flowpipe wrote it); convert it "
                f"once with: flowpipe migrate --store {self.url}"
            )

    def _schema_dir(self, kind: str) -> Path:
        return self.root / kind / f"cluster={SCHEMA_CLUSTER}" / "date=1970-01-01" / "hour=00"

    def ensure(self) -> None:
        """Create the store directories (StoreError for a store in an older format)."""
        self.check_format()
        try:
            for sub in (FLOWS, EVENTS, INCOMING):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            (self.root / LOCK).touch(exist_ok=True)
            self._write_schema_files()
        except OSError as exc:
            raise StoreError(f"store {self.url}: {_describe_os_error(exc, 'creating it')}") from exc

    def _write_schema_files(self) -> None:
        # An empty file with the current schema in every glob: views work on an empty store,
        # and union_by_name gives old files the columns newer versions added.
        for kind, sch in ((FLOWS, storage.storage_schema()), (EVENTS, storage.events_schema())):
            d = self._schema_dir(kind)
            path = d / f"schema-v{FORMAT_VERSION}.parquet"
            if path.exists():
                continue
            d.mkdir(parents=True, exist_ok=True)
            tmp = self.tmp_path(f"{kind}-schema.parquet")
            pq.write_table(sch.empty_table(), tmp)
            os.rename(tmp, path)

    def finish_format(self) -> None:
        """Name FORMAT_VERSION in the schema files, then remove older ones (the end of migrate)."""
        try:
            self._write_schema_files()
            for kind in (FLOWS, EVENTS):
                d = self._schema_dir(kind)
                for old in d.glob("schema-v*.parquet"):
                    if old.name != f"schema-v{FORMAT_VERSION}.parquet":
                        old.unlink()
                _fsync_dir(d)
        except OSError as exc:
            raise StoreError(
                f"store {self.url}: {_describe_os_error(exc, 'writing its schema files')}"
            ) from exc

    def live_writers(self) -> int:
        """How many other live processes hold a writer token of this store (see tmp_path)."""
        mine = {
            t for (pid, root), t in _TOKENS.items() if pid == os.getpid() and root == str(self.root)
        }
        return sum(
            1
            for lock in self.incoming.glob("*.lock")
            if lock.name[: -len(".lock")] not in mine and _locked(lock)
        )

    def tmp_path(self, name: str) -> Path:
        """A temporary file for name under .incoming/, tagged with this process's writer token.

        The token's lock file stays locked while the process lives, so clean_incoming (run by
        every collector at start) removes only what dead writers left, never a live importer's
        or compactor's file."""
        incoming = self.incoming
        incoming.mkdir(parents=True, exist_ok=True)
        key = (os.getpid(), str(self.root))
        token = _TOKENS.get(key)
        if token is None:
            token = f"w{uuid.uuid4().hex[:12]}"
            fd = os.open(incoming / f"{token}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel when the process dies
            _TOKENS[key] = token
            _LOCK_FDS.append(fd)
        return incoming / f"{token}.{name}.tmp"

    def glob(self, kind: str = FLOWS) -> str:
        """The DuckDB glob that matches every committed file of kind (never temporary files)."""
        return str(self.root / kind / "*" / "*" / "*" / "*.parquet")

    def files(self, kind: str = FLOWS, cluster: str | None = None) -> list[Path]:
        """Committed Parquet files of kind, optionally of one cluster, sorted by path."""
        return [Path(p) for p in self.committed(kind, cluster)]

    def committed(
        self,
        kind: str = FLOWS,
        cluster: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
    ) -> list[str]:
        """The committed data files of kind (of one cluster, or all) whose hour partition
        overlaps [since_ns, until_ns], sorted: what every reader reads (never a schema file, a
        temporary file or, on object storage, a file the commit log does not hold)."""
        out = []
        for c in [cluster] if cluster else self._clusters(kind):
            for part in _hour_dirs(self.root / kind / f"cluster={c}"):
                if hour_overlaps(_safe_hour_ns(part), since_ns, until_ns):
                    out += sorted(str(p) for p in part.glob("*.parquet"))
        return out

    def schema_files(self, kind: str) -> list[str]:
        """The empty schema file(s) of kind: every file list a reader builds starts with one."""
        return [str(p) for p in sorted(self._schema_dir(kind).glob("*.parquet"))]

    def open_input(self, path: str | os.PathLike[str]):
        """A readable (seekable) file for a stored path (pyarrow, pq.ParquetFile)."""
        return self.fs.open_input_file(str(path))

    def exists(self, path: str | os.PathLike[str]) -> bool:
        return Path(path).exists()

    def hour_files(
        self, kind: str, cluster: str, hour_ns: int, since: object = None
    ) -> tuple[object, set | None]:
        """(a token that changes when the hour's committed files change, those files), the
        files None when the token is still `since` (listed before, unchanged)."""
        d = self.partition_dir(kind, cluster, hour_ns)
        try:
            mtime: int | None = d.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if since is not None and mtime == since:
            return mtime, None
        return mtime, set(d.glob("*.parquet")) if mtime is not None else set()

    def hours(self, kind: str, cluster: str) -> set[int]:
        """Start (ns) of every hour partition cluster has files in."""
        return {_dir_hour_ns(d) for d in _hour_dirs(self.root / kind / f"cluster={cluster}")}

    def _clusters(self, kind: str) -> list[str]:
        base = self.root / kind
        return sorted(
            name
            for p in base.glob("cluster=*")
            if p.is_dir() and (name := p.name.split("=", 1)[1]) != SCHEMA_CLUSTER
        )

    def clusters(self) -> list[str]:
        """Clusters that have a flows or events partition."""
        return sorted({c for kind in (FLOWS, EVENTS) for c in self._clusters(kind)})

    def partition_dir(self, kind: str, cluster: str, hour_start_ns: int) -> Path:
        dt = datetime.fromtimestamp(hour_start_ns / 1e9, tz=UTC)
        return self.root / kind / f"cluster={cluster}" / f"date={dt:%Y-%m-%d}" / f"hour={dt:%H}"

    # -------------------------------------------------------------- locking

    @contextlib.contextmanager
    def read_lock(self) -> Iterator[None]:
        """Hold off compaction's file swap while a query reads (writers never wait)."""
        with self._lock(fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def swap_lock(self) -> Iterator[None]:
        """Exclusive against readers, for the instant compaction swaps files."""
        with self._lock(fcntl.LOCK_EX):
            yield

    @contextlib.contextmanager
    def compact_lock(self, *, wait: bool = True) -> Iterator[bool]:
        """Held by the one compaction of the store; yields False when another holds it and not wait."""
        try:
            fd = os.open(self.root / COMPACT_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(
                f"store {self.url}: {_describe_os_error(exc, 'locking it for compaction')}"
            ) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _lock(self, mode: int) -> Iterator[None]:
        path = self.root / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            # a read-only store (e.g. a mounted snapshot) cannot be compacted either
            yield
            return
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    # -------------------------------------------------------------- writing

    def write(
        self, cluster: str, flows: pa.Table | None, events: pa.Table | None = None
    ) -> WriteResult:
        """Commit flows and events of one cluster: one file per hour partition, all or nothing each."""
        staged = self.stage(cluster, flows, events)
        self.publish(staged)
        return staged

    def stage(
        self, cluster: str, flows: pa.Table | None, events: pa.Table | None = None
    ) -> WriteResult:
        """Write files under .incoming/ without publishing them (see publish / discard)."""
        check_cluster(cluster)
        result = WriteResult()
        try:
            for kind, table in ((FLOWS, flows), (EVENTS, events)):
                if table is None or table.num_rows == 0:
                    continue
                for hour_ns, part in _by_hour(table):
                    tmp, final, size = self._write_tmp(
                        kind, cluster, hour_ns, stored_rows(kind, part)
                    )
                    result.pending.append((tmp, final))
                    result.bytes += size
                if kind == FLOWS:
                    result.flows += table.num_rows
                else:
                    result.events += table.num_rows
        except StoreError:
            self.discard(result)
            raise
        return result

    def publish(self, staged: WriteResult) -> None:
        """Rename staged files into their partitions and fsync: all of them, or none.

        Directories are made first (a full disk fails there, before anything is visible); a
        rename failing halfway moves the files already published back out, so callers can
        retry the whole batch without storing anything twice."""
        done: list[tuple[Path, Path]] = []
        try:
            dirs = {final.parent for _, final in staged.pending}
            for d in dirs:
                d.mkdir(parents=True, exist_ok=True)
            for tmp, final in staged.pending:
                os.rename(tmp, final)
                done.append((tmp, final))
            for d in dirs:
                _fsync_dir(d)
        except OSError as exc:
            for tmp, final in done:
                with contextlib.suppress(OSError):
                    os.rename(final, tmp)
            self.discard(staged)
            raise StoreError(
                f"store {self.url}: {_describe_os_error(exc, 'publishing files')}"
            ) from exc
        staged.files.extend(final for _, final in staged.pending)
        staged.pending.clear()

    def discard(self, staged: WriteResult) -> None:
        """Delete staged files that were not published."""
        for tmp, _ in staged.pending:
            with contextlib.suppress(OSError):
                tmp.unlink()
        staged.pending.clear()

    def _write_tmp(
        self, kind: str, cluster: str, hour_ns: int, table: pa.Table
    ) -> tuple[Path, Path, int]:
        final_dir = self.partition_dir(kind, cluster, hour_ns)
        first = pc.min(table.column("time")).as_py() if table.num_rows else 0
        name = part_name(first or 0)
        what = f"writing {final_dir.relative_to(self.root) / name}"
        tmp = self.root / INCOMING / f"{name}.tmp"
        try:
            tmp = self.tmp_path(name)
            with open(tmp, "wb") as fh:
                pq.write_table(table, fh, **write_options(table.schema), row_group_size=ROW_GROUP)
                fh.flush()
                os.fsync(fh.fileno())
            return tmp, final_dir / name, tmp.stat().st_size
        except (OSError, pa.ArrowException) as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            reason = (
                _describe_os_error(exc, what) if isinstance(exc, OSError) else f"{exc} while {what}"
            )
            raise StoreError(f"store {self.url}: {reason}") from exc

    def clean_incoming(self) -> int:
        """Remove temporary files left by killed writers (never a live writer's); return how many."""
        incoming = self.incoming
        alive: dict[str, bool] = {}
        n = 0
        for tmp in sorted(incoming.glob("*.tmp")):
            token = tmp.name.split(".", 1)[0]
            if token not in alive:
                alive[token] = _locked(incoming / f"{token}.lock")
            if alive[token]:
                continue
            with contextlib.suppress(OSError):
                tmp.unlink()
                n += 1
        # a lock file is created just before it is locked: only old unlocked ones are dead
        for lock in incoming.glob("*.lock"):
            with contextlib.suppress(OSError):
                if time.time() - lock.stat().st_mtime > 60 and not _locked(lock):
                    lock.unlink()
        return n

    # -------------------------------------------------------------- compaction and retention

    def partitions(self, kind: str) -> dict[tuple[str, int], list[str]]:
        """(cluster, hour start ns) -> committed files of that hour partition (compaction)."""
        out: dict[tuple[str, int], list[str]] = {}
        for path in self.committed(kind):
            hour = path_hour_ns(path)
            if hour is not None:
                out.setdefault((_path_cluster(path), hour), []).append(path)
        return out

    def committed_at(self, path: str | os.PathLike[str]) -> int | None:
        """When path was committed (ns; None when it is gone): compaction lets new files settle."""
        try:
            return Path(path).stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def size(self, path: str | os.PathLike[str]) -> int:
        return Path(path).stat().st_size

    def replace(self, removed: list[str], outputs: list[tuple[Path, Path]]) -> int:
        """Publish compaction's staged outputs and remove its inputs, as one step for readers;
        return the outputs' bytes. On disk: renames under the swap lock (readers wait)."""
        size = 0
        with self.swap_lock():
            dirs = {Path(final).parent for _, final in outputs} | {Path(f).parent for f in removed}
            for tmp, final in outputs:
                os.rename(tmp, final)
                size += Path(final).stat().st_size
            for f in removed:
                with contextlib.suppress(FileNotFoundError):
                    Path(f).unlink()
            for d in dirs:
                _fsync_dir(d)
        return size

    def drop(self, kind: str, cluster: str, hour_ns: int, files: list[str]) -> int:
        """Retention: remove an hour partition (files: what it holds); return how many files."""
        part = self.partition_dir(kind, cluster, hour_ns)
        with self.swap_lock():
            try:
                shutil.rmtree(part)
                date_dir = part.parent
                if not any(date_dir.iterdir()):
                    date_dir.rmdir()
            except OSError as exc:
                raise StoreError(
                    f"store {self.url}: {_describe_os_error(exc, f'removing {part}')}"
                ) from exc
        return len(files)

    def tidy(self, now_ns: int) -> None:
        """After compaction: nothing to do on disk (clean_incoming removes dead writers' files)."""

    # -------------------------------------------------------------- reading state

    def last_time(self, cluster: str) -> int | None:
        """Newest flow time (ns) stored for cluster, from Parquet statistics."""
        by_hour: dict[int | None, list[str]] = {}
        for path in self.committed(FLOWS, cluster):
            by_hour.setdefault(path_hour_ns(path), []).append(path)
        for hour in sorted(by_hour, key=lambda h: -1 if h is None else h, reverse=True):
            times = [t for p in by_hour[hour] if (t := _max_time(self, p)) is not None]
            if times:
                return max(times)
        return None

    def keys_between(self, cluster: str, lo_ns: int, hi_ns: int | None = None) -> set[int]:
        """Dedup keys (see dedup.keys) of the flows stored for cluster in [lo_ns, hi_ns]."""
        found: set[int] = set()
        for path in self.committed(FLOWS, cluster, lo_ns, hi_ns):
            newest = _max_time(self, path)
            if newest is not None and newest < lo_ns:
                continue  # the footer says every flow in it is older: skip reading it
            found.update(self.keys_in(path, lo_ns, hi_ns))
        return found

    def keys_in(
        self,
        path: Path,
        lo_ns: int | None = None,
        hi_ns: int | None = None,
        row_groups: list[int] | None = None,
    ) -> list[int]:
        """Dedup keys of the flows of one flows file (or of some of its row groups) in [lo_ns, hi_ns]."""
        columns = ["time", "uuid", "_uuid", "_fp"]
        try:
            pf = pq.ParquetFile(self.open_input(path))
            columns = [c for c in columns if c in pf.schema_arrow.names]
            t = pf.read(columns) if row_groups is None else pf.read_row_groups(row_groups, columns)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"store {self.url}: cannot read {path}: {exc}") from exc
        ttype = t.schema.field("time").type
        conds = []
        if lo_ns is not None:
            conds.append(pc.greater_equal(t.column("time"), pa.scalar(lo_ns, ttype)))
        if hi_ns is not None:
            conds.append(pc.less_equal(t.column("time"), pa.scalar(hi_ns, ttype)))
        for cond in conds:
            t = t.filter(cond)
        return dedup.keys(storage.from_storage(t)) if t.num_rows else []


_TOKENS: dict[tuple[int, str], str] = {}  # (pid, store root) -> writer token
_LOCK_FDS: list[int] = []  # held open (and locked) for the life of the process


def _locked(lock: Path) -> bool:
    """True when a live process holds lock (its writer token's lock file)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False  # no lock file: a writer from before tokens, or one that is gone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _hour_dirs(cluster_dir: Path) -> list[Path]:
    return sorted(p for p in cluster_dir.glob("date=*/hour=*") if p.is_dir())


def hour_overlaps(start_ns: int | None, since_ns: int | None, until_ns: int | None) -> bool:
    """Whether the hour starting at start_ns (None: unknown, so read it) overlaps the window."""
    if start_ns is None:
        return True
    if since_ns is not None and start_ns + HOUR_NS <= since_ns:
        return False
    return until_ns is None or start_ns <= until_ns


def _safe_hour_ns(part: Path) -> int | None:
    try:
        return _dir_hour_ns(part)
    except (IndexError, ValueError):
        return None  # an unexpected name: read it rather than silently skip it


def _path_cluster(path: str | os.PathLike[str]) -> str:
    return Path(path).parent.parent.parent.name.split("=", 1)[1]


def path_hour_ns(path: str | os.PathLike[str]) -> int | None:
    """Start (ns) of the hour partition a stored file's path names (None: not a partition)."""
    return _safe_hour_ns(Path(path).parent)


def _dir_hour_ns(part: Path) -> int:
    date = part.parent.name.split("=", 1)[1]
    hour = int(part.name.split("=", 1)[1])
    dt = datetime.strptime(date, "%Y-%m-%d").replace(hour=hour, tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000_000


def _max_time(store: Store, path: Path) -> int | None:
    spans = time_spans(path, store)
    return max((newest for _, _, newest in spans if newest is not None), default=None)


def time_spans(path: Path, store: Store | None = None) -> list[tuple[int, int | None, int | None]]:
    """(row group, oldest, newest flow time in ns) of each row group of a file, from its footer
    (None, None for a row group without statistics); empty when unreadable."""
    try:
        meta = pq.read_metadata(path if store is None else store.open_input(path))
    except (OSError, pa.ArrowException):
        return []
    names = meta.schema.names
    if "time" not in names:
        return []
    col = names.index("time")
    out = []
    for rg in range(meta.num_row_groups):
        stats = meta.row_group(rg).column(col).statistics
        if stats is None or not stats.has_min_max:
            out.append((rg, None, None))
        else:  # physical int64 nanoseconds (the logical value would be a datetime)
            out.append((rg, stats.min_raw, stats.max_raw))
    return out


def _by_hour(table: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    """Split table by the hour of its time column (rows without time go to hour 0)."""
    hour_ns = HOUR_NS
    times = table.column("time").cast(pa.int64()).fill_null(0)
    hours = pc.multiply(pc.divide(times, hour_ns), hour_ns)  # integer division
    span = pc.min_max(hours)
    if span["min"] == span["max"]:
        yield span["min"].as_py(), table  # the usual case (one flush, one hour): no copy
        return
    table = table.append_column("__hour", hours)
    for h in pc.unique(hours).to_pylist():
        yield h, table.filter(pc.equal(table.column("__hour"), h)).drop_columns(["__hour"])


def stored_rows(kind: str, table: pa.Table, group: int = ROW_GROUP) -> pa.Table:
    """Rows in stored order, events in stored form: flows clustered by storage.order_rows within
    each run of `group` rows (runs in time order, so row groups stay narrow in time), events by time."""
    if kind == EVENTS:
        table = storage.events_to_storage(table)
    elif not pa.types.is_integer(table.schema.field("time").type):
        raise ValueError("flows must be in stored form (codec.storage.to_storage) to be written")
    if table.num_rows < 2:
        return table
    if kind == FLOWS and table.num_rows <= group:
        return storage.order_rows(table)  # one take: its keys end with time
    times = table.column("time")
    if not pc.all(pc.less_equal(times[:-1], times[1:])).as_py():
        table = table.take(pc.sort_indices(times))
    if kind == EVENTS:
        return table
    return pa.concat_tables(
        storage.order_rows(table.slice(i, group)) for i in range(0, table.num_rows, group)
    )


def now_ns() -> int:
    return time.time_ns()
