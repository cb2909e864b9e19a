"""The store on object storage (s3://, gs://): data objects written once, committed by a per-cluster commit log.

Same interface as layout.Store (the disk store): writers stage files on local disk (a spool
under the temp directory), publish uploads them under unique names and then PUTs one log entry
(store.commitlog) naming them: the entry's PUT is the commit. Readers list the log, never the
data objects. docs/object-storage.md says why, and what it costs."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from flowpipe.errors import StoreError
from flowpipe.store import location
from flowpipe.store.commitlog import (
    CHECKPOINTS,
    LOG,
    Added,
    Entry,
    Snapshot,
    entry_name,
    parse_name,
)
from flowpipe.store.layout import (
    EVENTS,
    FLOWS,
    FORMAT_VERSION,
    SCHEMA_CLUSTER,
    Store,
    WriteResult,
    hour_overlaps,
    path_hour_ns,
    time_spans,
)

SNAPSHOT_TTL_S = 1.0  # a snapshot is reused this long by one process (import's lookups per batch)
GET_THREADS = 8  # log entries fetched at once
SAFE_AGE_NS = 3600 * 10**9  # removed objects, orphans and superseded log entries live this long
CHECKPOINT_EVERY = 200  # log entries past the newest checkpoint before compaction writes one

_WRITERS: dict[tuple[int, str], str] = {}  # (pid, store url) -> this process's writer id
_SEQ: dict[tuple[str, str], int] = {}  # (writer id, cluster) -> last seq written
_SEQ_LOCK = threading.RLock()  # append retires a writer id while holding it


class ObjectStore(Store):
    """A store under s3://bucket/prefix or gs://bucket/prefix (see the module doc)."""

    local = False

    def __init__(self, loc: location.Location):
        self.loc = loc
        self.url = loc.url
        self.fs = loc.fs
        self.root = PurePosixPath(loc.root)  # type: ignore[assignment]  # a path in self.fs
        digest = hashlib.sha1(loc.url.encode()).hexdigest()[:16]
        self.incoming = Path(tempfile.gettempdir()) / "flowpipe-spool" / digest
        self._entries: dict[str, dict[tuple[str, int], Entry]] = {}  # cluster -> entries read
        self._snaps: dict[str, tuple[float, Snapshot]] = {}
        self._since_checkpoint: dict[str, int] = {}  # cluster -> entries read past the checkpoint
        self._bases: dict[str, Snapshot] = {}  # cluster -> the last snapshot (entries applied)
        self._cps: dict[str, tuple[str, Snapshot]] = {}  # cluster -> newest checkpoint read
        self._lock = threading.Lock()

    @classmethod
    def open_url(cls, url: str, *, create: bool = False, check_format: bool = True) -> ObjectStore:
        """The store at an s3:// or gs:// URL; StoreError (one line naming it) when the bucket
        cannot be reached, does not exist, or holds no store (unless create)."""
        store = cls(location.parse(url))
        info = store._call("reaching its bucket", store.fs.get_file_info, store.loc.bucket)
        if info.type == pafs.FileType.NotFound:
            raise StoreError(f"store {store.url}: the bucket {store.loc.bucket!r} does not exist")
        if create:
            store.ensure()
        elif store.format_version() is None:
            raise StoreError(f"no flowpipe store at {store.url} (run collect or import first)")
        elif check_format:
            store.check_format()
        return store

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"store {self.url}: {location.describe(exc)} ({what})") from exc

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def _list(self, prefix: str) -> list[pafs.FileInfo]:
        sel = pafs.FileSelector(prefix, recursive=False, allow_not_found=True)
        return self._call(f"listing {prefix}", self.fs.get_file_info, sel)

    def _get(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as fh:
            return fh.read()

    def _parent(self, path: str) -> None:
        # object stores have no directories; a local filesystem (bench/log_on_disk.py) does
        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)

    def _put(self, path: str, data: bytes) -> None:
        self._parent(path)
        with self.fs.open_output_stream(path) as fh:
            fh.write(data)

    # ------------------------------------------------------------ format

    def format_version(self) -> str | None:
        found = sorted(
            i.base_name[len("schema-v") : -len(".parquet")]
            for kind in (FLOWS, EVENTS)
            for i in self._list(str(self._schema_dir(kind)))
            if i.base_name.startswith("schema-v") and i.base_name.endswith(".parquet")
        )
        return min(found, key=int) if found else None

    def ensure(self) -> None:
        self.check_format()
        self._write_schema_files()

    def _write_schema_files(self) -> None:
        from flowpipe.codec import storage

        for kind, sch in ((FLOWS, storage.storage_schema()), (EVENTS, storage.events_schema())):
            path = f"{self._schema_dir(kind)}/schema-v{FORMAT_VERSION}.parquet"
            if (
                self._call("reading its schema", self.fs.get_file_info, path).type
                == pafs.FileType.File
            ):
                continue
            self._call(
                "writing its schema files",
                lambda p=path, t=sch.empty_table(): (
                    self._parent(p),
                    pq.write_table(t, p, filesystem=self.fs),
                ),
            )

    def finish_format(self) -> None:
        self._write_schema_files()

    def live_writers(self) -> int:
        return 0  # no locks on object storage; writers of format 1 never wrote to a bucket

    def schema_files(self, kind: str) -> list[str]:
        return [f"{self._schema_dir(kind)}/schema-v{FORMAT_VERSION}.parquet"]

    # ------------------------------------------------------------ locks: the log makes them moot

    @contextlib.contextmanager
    def read_lock(self) -> Iterator[None]:
        yield  # readers read a snapshot of the log; removed objects live SAFE_AGE_NS more

    @contextlib.contextmanager
    def swap_lock(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def compact_lock(self, *, wait: bool = True) -> Iterator[bool]:
        yield True  # two compactions at once stay exact: the log applies the first to remove

    # ------------------------------------------------------------ writing

    def writer_id(self, retire: bool = False) -> str:
        """This process's writer id in the log (retire: take a new one, see append)."""
        key = (os.getpid(), self.url)
        with _SEQ_LOCK:
            if key not in _WRITERS or retire:
                _WRITERS[key] = f"w{uuid.uuid4().hex[:16]}"
            return _WRITERS[key]

    def publish(self, staged: WriteResult) -> None:
        """Upload the staged files, then commit them with one log entry per cluster."""
        if not staged.pending:
            return
        try:
            adds: dict[str, list[Added]] = {}
            for tmp, final in staged.pending:
                rel = str(PurePosixPath(final).relative_to(self.root))
                adds.setdefault(_cluster_of(rel), []).append(_describe_file(tmp, rel))
                self._upload(tmp, str(final))
            for cluster, added in adds.items():
                self.append(cluster, added)
        except (OSError, pa.ArrowException, StoreError) as exc:
            self.discard(staged)
            if isinstance(exc, StoreError):
                raise
            raise StoreError(
                f"store {self.url}: {location.describe(exc)} (publishing files)"
            ) from exc
        for tmp, _ in staged.pending:
            with contextlib.suppress(OSError):
                tmp.unlink()
        staged.files.extend(final for _, final in staged.pending)
        staged.pending.clear()

    def _upload(self, tmp: Path, final: str) -> None:
        self._parent(final)
        with open(tmp, "rb") as src, self.fs.open_output_stream(final) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)

    def append(
        self,
        cluster: str,
        add: list[Added],
        remove: list[str] | None = None,
        after: dict[str, int] | None = None,
    ) -> Entry:
        """Commit one log entry of cluster (its PUT is atomic): adds and removes at once."""
        writer = self.writer_id()
        key = (writer, cluster)
        with _SEQ_LOCK:  # a seq is taken only once its entry is written: no gap, ever
            seq = _SEQ.get(key, 0) + 1
            entry = Entry(writer, seq, time.time_ns(), add, remove or [], after or {})
            path = self._path(f"{LOG}/{cluster}/{entry_name(writer, seq)}")
            data = entry.encode()
            try:
                self._put(path, data)
            except (OSError, pa.ArrowException) as exc:
                if not self._landed(path, data):
                    # The PUT may still have landed (an answer lost): never write this number
                    # again (a second entry under it could replace one whose rows a reader, or
                    # the collector's dedup after a rewind, already saw). A new writer id starts
                    # at 1; the old one ends here, with or without this entry.
                    self.writer_id(retire=True)
                    with self._lock:
                        self._snaps.pop(cluster, None)
                    raise StoreError(
                        f"store {self.url}: {location.describe(exc)} (committing to the log)"
                    ) from exc
            _SEQ[key] = seq
        with self._lock:
            self._entries.setdefault(cluster, {})[(writer, seq)] = entry
            self._snaps.pop(cluster, None)
        return entry

    def _landed(self, path: str, data: bytes) -> bool:
        """Whether a PUT that reported failure stored the object anyway (a lost answer)."""
        try:
            return self._get(path) == data
        except (OSError, pa.ArrowException):
            return False

    # ------------------------------------------------------------ reading

    def snapshot(self, cluster: str, fresh: bool = False) -> Snapshot:
        """The committed objects of cluster: the last snapshot this process made (or the newest
        checkpoint) plus the log entries after it. Callers must not change it (see copy)."""
        with self._lock:
            hit = self._snaps.get(cluster)
            if hit and not fresh and time.monotonic() - hit[0] < SNAPSHOT_TTL_S:
                return hit[1]
        prefix = self._path(f"{LOG}/{cluster}")
        listed = {
            wn: i.base_name
            for i in self._list(prefix)
            if i.type == pafs.FileType.File and (wn := parse_name(i.base_name)) is not None
        }
        cps = sorted(
            i.base_name
            for i in self._list(f"{prefix}/{CHECKPOINTS}")
            if i.type == pafs.FileType.File
        )
        cp = self._checkpoint(cluster, f"{prefix}/{CHECKPOINTS}/{cps[-1]}") if cps else Snapshot()
        with self._lock:
            cache = self._entries.setdefault(cluster, {})
            base = self._bases.get(cluster)
            if base is None or not _continues(base, cp, set(listed) | set(cache)):
                base = cp  # (again) from the checkpoint: entries base needs were folded away
            snap = base.copy()
            self._since_checkpoint[cluster] = sum(
                1 for w, seq in listed if seq > cp.applied.get(w, 0)
            )
            want = [
                name
                for (w, seq), name in listed.items()
                if seq > snap.applied.get(w, 0) and (w, seq) not in cache
            ]
        if want:
            with ThreadPoolExecutor(min(GET_THREADS, len(want))) as pool:
                datas = list(
                    pool.map(
                        lambda n: self._call("reading its log", self._get, f"{prefix}/{n}"), want
                    )
                )
            with self._lock:
                for data in datas:
                    e = Entry.decode(data)
                    cache[(e.writer, e.seq)] = e
        with self._lock:
            snap.apply(cache)
            for key in [k for k in cache if k[1] <= snap.applied.get(k[0], 0)]:
                del cache[key]  # applied: the snapshot holds what it did (memory stays flat)
            self._bases[cluster] = snap.copy()
            self._snaps[cluster] = (time.monotonic(), snap)
        return snap

    def _checkpoint(self, cluster: str, path: str) -> Snapshot:
        hit = self._cps.get(cluster)
        if hit is None or hit[0] != path:
            hit = (path, Snapshot.decode(self._call("reading a checkpoint", self._get, path)))
            self._cps[cluster] = hit
        return hit[1]

    def clusters(self) -> list[str]:
        return sorted(
            i.base_name
            for i in self._list(self._path(LOG))
            if i.type == pafs.FileType.Directory and i.base_name != SCHEMA_CLUSTER
        )

    def committed(
        self,
        kind: str = FLOWS,
        cluster: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
    ) -> list[str]:
        out = []
        for c in [cluster] if cluster else self.clusters():
            for rel, (a, *_rest) in self.snapshot(c).live.items():
                if not rel.startswith(kind + "/"):
                    continue
                if not hour_overlaps(path_hour_ns(rel), since_ns, until_ns):
                    continue
                if since_ns is not None and a.max_ns is not None and a.max_ns < since_ns:
                    continue  # every row is older than the window
                if until_ns is not None and a.min_ns is not None and a.min_ns > until_ns:
                    continue
                out.append(self._path(rel))
        return sorted(out)

    def files(self, kind: str = FLOWS, cluster: str | None = None) -> list[PurePosixPath]:  # type: ignore[override]
        return [PurePosixPath(p) for p in self.committed(kind, cluster)]

    def hours(self, kind: str, cluster: str) -> set[int]:
        return {h for p in self.committed(kind, cluster) if (h := path_hour_ns(p)) is not None}

    def hour_files(
        self, kind: str, cluster: str, hour_ns: int, since: object = None
    ) -> tuple[object, set | None]:
        snap = self.snapshot(cluster)
        token = tuple(sorted(snap.applied.items()))
        if since is not None and token == since:
            return token, None
        files = {
            PurePosixPath(self._path(rel))
            for rel in snap.live
            if rel.startswith(kind + "/") and path_hour_ns(rel) == hour_ns
        }
        return token, files

    def open_input(self, path):
        if str(path).startswith(str(self.incoming)):
            return pafs.LocalFileSystem().open_input_file(str(path))  # staged, not uploaded
        return self.fs.open_input_file(str(path))

    def exists(self, path) -> bool:
        if str(path).startswith(str(self.incoming)):
            return Path(path).exists()
        return self.fs.get_file_info(str(path)).type == pafs.FileType.File

    def last_time(self, cluster: str) -> int | None:
        times = [
            a.max_ns
            for rel, (a, *_r) in self.snapshot(cluster, fresh=True).live.items()
            if rel.startswith(FLOWS + "/") and a.max_ns is not None
        ]
        return max(times, default=None)

    def keys_between(self, cluster: str, lo_ns: int, hi_ns: int | None = None) -> set[int]:
        found: set[int] = set()
        for path in self.committed(FLOWS, cluster, lo_ns, hi_ns):  # min/max from the log
            found.update(self.keys_in(path, lo_ns, hi_ns))
        return found

    # ------------------------------------------------------------ compaction, retention, tidying

    def _rel(self, path) -> str:
        return str(PurePosixPath(path).relative_to(self.root))

    def _live(self, path) -> tuple[Added, str, int, int] | None:
        rel = self._rel(path)
        return self.snapshot(_cluster_of(rel)).live.get(rel)

    def committed_at(self, path) -> int | None:
        hit = self._live(path)
        return None if hit is None else hit[3]

    def size(self, path) -> int:
        hit = self._live(path)
        return 0 if hit is None else hit[0].bytes

    def replace(self, removed: list[str], outputs: list[tuple[Path, PurePosixPath]]) -> int:
        """Upload compaction's outputs, then one entry: remove the inputs, add the outputs."""
        rels = [self._rel(f) for f in removed]
        cluster = _cluster_of(rels[0])
        snap = self.snapshot(cluster, fresh=True)
        if any(r not in snap.live for r in rels):  # another compaction took them: drop ours
            for tmp, _ in outputs:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            return 0
        staged = WriteResult(pending=list(outputs))
        added = []
        try:
            for tmp, final in outputs:
                added.append(_describe_file(tmp, self._rel(final)))
                self._upload(tmp, str(final))
        except (OSError, pa.ArrowException) as exc:
            self.discard(staged)
            raise StoreError(f"store {self.url}: {location.describe(exc)} (compacting)") from exc
        self.append(cluster, added, rels, snap.after_for(rels))
        self.discard(staged)
        return sum(a.bytes for a in added)

    def drop(self, kind: str, cluster: str, hour_ns: int, files: list[str]) -> int:
        rels = [self._rel(f) for f in files]
        snap = self.snapshot(cluster, fresh=True)
        rels = [r for r in rels if r in snap.live]
        if rels:
            self.append(cluster, [], rels, snap.after_for(rels))
        return len(rels)

    def tidy(self, now_ns: int) -> None:
        """Delete what no reader can need any more: objects removed (or never committed, by a
        killed writer) over SAFE_AGE_NS ago; fold the log into a checkpoint every
        CHECKPOINT_EVERY entries and delete entries a checkpoint over SAFE_AGE_NS old covers."""
        for cluster in self.clusters():
            snap = self.snapshot(cluster, fresh=True).copy()
            old = now_ns - SAFE_AGE_NS
            gone = [rel for rel, t in snap.removed.items() if t < old]
            for kind in (FLOWS, EVENTS):
                sel = pafs.FileSelector(
                    self._path(f"{kind}/cluster={cluster}"), recursive=True, allow_not_found=True
                )
                for info in self._call("listing its objects", self.fs.get_file_info, sel):
                    if info.type != pafs.FileType.File:
                        continue
                    rel = self._rel(info.path)
                    orphan = rel not in snap.live and rel not in snap.removed
                    if orphan and info.mtime_ns is not None and info.mtime_ns < old:
                        gone.append(rel)
            for rel in gone:
                with contextlib.suppress(FileNotFoundError):
                    self._call("deleting removed objects", self.fs.delete_file, self._path(rel))
            for rel in gone:
                snap.removed.pop(rel, None)
            self._fold(cluster, snap, now_ns)

    def _fold(self, cluster: str, snap: Snapshot, now_ns: int) -> None:
        prefix = self._path(f"{LOG}/{cluster}")
        if self._since_checkpoint.get(cluster, 0) >= CHECKPOINT_EVERY:
            name = f"{now_ns:019d}-{self.writer_id()}.json"
            data = snap.encode(now_ns)
            self._call("writing a checkpoint", self._put, f"{prefix}/{CHECKPOINTS}/{name}", data)
            self._since_checkpoint[cluster] = 0
        cps = sorted(
            i.base_name
            for i in self._list(f"{prefix}/{CHECKPOINTS}")
            if i.type == pafs.FileType.File
        )
        settled = [c for c in cps if int(c.split("-", 1)[0]) < now_ns - SAFE_AGE_NS]
        if not settled:
            return
        base = Snapshot.decode(
            self._call("reading a checkpoint", self._get, f"{prefix}/{CHECKPOINTS}/{settled[-1]}")
        )
        for info in self._list(prefix):
            wn = parse_name(info.base_name)
            if wn is not None and wn[1] <= base.applied.get(wn[0], 0):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.delete_file(info.path)
        for c in settled[:-1]:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(f"{prefix}/{CHECKPOINTS}/{c}")


def _continues(base: Snapshot, cp: Snapshot, present: set[tuple[str, int]]) -> bool:
    """Whether base can reach the checkpoint's state from entries still present: for every
    writer the checkpoint is ahead on, base's next entry must still exist."""
    return all(
        seq <= base.applied.get(w, 0) or (w, base.applied.get(w, 0) + 1) in present
        for w, seq in cp.applied.items()
    )


def _cluster_of(rel: str) -> str:
    """The cluster a stored object's relative path names (kind/cluster=c/...)."""
    return rel.split("/", 2)[1].split("=", 1)[1]


def _describe_file(tmp: Path, rel: str) -> Added:
    """The log's record of a staged file: rows and time span from its footer."""
    meta = pq.read_metadata(tmp)
    spans = time_spans(tmp)
    lows = [lo for _, lo, _ in spans if lo is not None]
    highs = [hi for _, _, hi in spans if hi is not None]
    return Added(
        rel,
        meta.num_rows,
        min(lows) if lows else None,
        max(highs) if highs else None,
        tmp.stat().st_size,
    )
