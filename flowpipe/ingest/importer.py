"""`flowpipe import`: hubble jsonpb captures and Hubble exporter logs into the store.

A thread per file (two files at a time) reads, gunzips, converts lines to wire bytes
(codec.jsonpb, C) and decodes them into Arrow (codec.decode, C), mostly without the GIL; the
calling thread drops duplicates and writes the files as the collector does: a row group per
ROW_GROUP flows, a file per cluster and hour every FILE_ROWS flows. Memory stays a few batches
whatever the size of the input."""

from __future__ import annotations

import contextlib
import gzip
import os
import queue
import sys
import threading
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

import pyarrow as pa
import pyarrow.compute as pc

from flowpipe.codec import decode, jsonpb, storage
from flowpipe.errors import InputError
from flowpipe.ingest import dedup
from flowpipe.ingest.known import StoredKeys
from flowpipe.store.layout import FLOWS, Store, WriteResult, check_cluster
from flowpipe.store.writer import StreamWriter

ROW_GROUP = 8192  # flows per row group: the collector's DECODE_BATCH (a test keeps them equal)
FILE_ROWS = 30_000  # flows per file: the collector's flush_rows (idem)
CHUNK = 2 << 20  # bytes read at a time
MAX_LINE = 64 << 20  # a longer "line" is reported and skipped, not held in memory
READERS = 2  # files read at once
QUEUED = 2  # decoded batches waiting for the writer
DECODE_ROWS = 2048  # rows a reader decodes at a time (the writer joins them into row groups)


@dataclass
class ImportReport:
    flows: int = 0
    events: int = 0
    duplicates: int = 0
    skipped: int = 0  # agent/debug events: valid input that the flow store does not keep
    errors: list[str] = field(default_factory=list)
    files: int = 0


@dataclass
class _Part:
    """Flows and events of one cluster, decoded."""

    cluster: str
    flows: pa.Table  # stored form (codec.storage)
    events: pa.Table
    keys: list[int]  # dedup key of each flow


@dataclass
class _Batch:
    """What a reader hands the writer: decoded rows, bad lines, or the end of its file."""

    file: int
    parts: list[_Part] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, reason); line 0: the file
    lines: int = 0  # lines read since the previous batch
    skipped: int = 0
    end: bool = False
    crash: BaseException | None = None


def _open(path: str, files: contextlib.ExitStack) -> IO[bytes]:
    """The file (or stdin for -), gunzipped when it starts with the gzip magic; closed by files."""
    fh = sys.stdin.buffer if path == "-" else files.enter_context(open(path, "rb"))  # noqa: SIM115
    head = fh.peek(2)[:2] if hasattr(fh, "peek") else b""
    if head == b"\x1f\x8b":
        return files.enter_context(gzip.GzipFile(fileobj=fh))
    return fh


class _Reader(threading.Thread):
    """Reads one file into decoded batches on the queue; stops early when told to."""

    def __init__(self, file: int, path: str, cluster: str | None, out: queue.Queue, stop):
        super().__init__(name=f"import-{file}", daemon=True)
        self.file, self.path, self.cluster, self.out, self.stop = file, path, cluster, out, stop
        self.rows: dict[str, tuple[list[bytes], array]] = {}  # cluster -> rows to decode, lines
        self.valid: dict[str, str | None] = {}  # cluster -> why it is not a usable name

    def run(self) -> None:
        try:
            self._read()
        except BaseException as exc:  # a bug or MemoryError: the writer re-raises it
            self._put(_Batch(self.file, crash=exc))
        self._put(_Batch(self.file, end=True), always=True)

    def _put(self, batch: _Batch, always: bool = False) -> None:
        while always or not self.stop.is_set():
            try:
                self.out.put(batch, timeout=0.2)
                return
            except queue.Full:
                continue

    def _read(self) -> None:
        with contextlib.ExitStack() as files:
            try:
                fh = _open(self.path, files)
            except OSError as exc:
                raise InputError(f"{_name(self.path)}: cannot open: {exc.strerror or exc}") from exc
            batch = _Batch(self.file)
            seen = 0  # lines before the current chunk
            try:
                for chunk in _chunks(fh):
                    if self.stop.is_set():
                        return
                    if chunk is None:  # one line too long to hold
                        seen += 1
                        batch.errors.append((seen, f"line longer than {MAX_LINE >> 20} MB"))
                        batch.lines += 1
                        continue
                    conv = jsonpb.convert(chunk, seen + 1)
                    seen += conv.count
                    batch.lines += conv.count
                    batch.errors += conv.errors
                    batch.skipped += conv.skipped
                    self._route(conv, batch)
                    self._decode(batch)
                    if batch.parts or batch.errors:
                        self._put(batch)
                        batch = _Batch(self.file)
            except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
                batch.errors.append((0, f"read error after line {seen}: {exc}"))
        self._decode(batch, final=True)
        self._put(batch)

    def _route(self, conv: jsonpb.Converted, batch: _Batch) -> None:
        """Queue the converted rows by cluster; rows of unusable cluster names are bad lines."""
        names = {self.cluster} if self.cluster else set(conv.clusters)
        for c in names - self.valid.keys():
            try:
                check_cluster(c)
                self.valid[c] = None
            except ValueError as exc:
                self.valid[c] = f"node_name: {exc}"
        only = next(iter(names)) if len(names) == 1 else None
        if only is not None and self.valid[only] is None:  # the usual case: one cluster
            rows, lines = self.rows.setdefault(only, ([], array("q")))
            rows += conv.rows
            lines += conv.lines
            return
        for row, line, c in zip(conv.rows, conv.lines, conv.clusters):
            if self.valid[c] is not None:
                batch.errors.append((line, self.valid[c]))
                continue
            rows, lines = self.rows.setdefault(c, ([], array("q")))
            rows.append(row)
            lines.append(line)

    def _decode(self, batch: _Batch, final: bool = False) -> None:
        """Decode what the clusters hold once they hold DECODE_ROWS rows between them (or at the
        end): memory stays one batch whatever the number of clusters; the writer puts a
        cluster's parts back together into row groups of ROW_GROUP."""
        if not final and sum(len(rows) for rows, _ in self.rows.values()) < DECODE_ROWS:
            return
        for c, (rows, lines) in self.rows.items():
            if rows:
                dec = decode.decode_responses(rows)
                batch.errors += [(lines[i], reason) for i, reason in dec.errors]
                flows, events = decode.split_responses(dec)
                batch.parts.append(_Part(c, storage.to_storage(flows), events, dedup.keys(flows)))
        self.rows.clear()


def _chunks(fh: IO[bytes]):
    """Whole lines, CHUNK bytes or so at a time; None for each line longer than MAX_LINE."""
    carry = b""
    skipping = False
    while True:
        data = fh.read(CHUNK)
        if not data:
            break
        cut = data.rfind(b"\n")
        if skipping:
            if cut < 0:
                continue
            skipping = False
            data = data[data.find(b"\n") + 1 :]
            yield None
            cut = data.rfind(b"\n")
        if cut < 0:
            carry += data
            if len(carry) > MAX_LINE:
                carry, skipping = b"", True
            continue
        yield carry + data[: cut + 1]
        carry = data[cut + 1 :]
    if skipping:
        yield None
    elif carry:
        yield carry


class _Sink:
    """One cluster's writer: its queued flows, open files, and the keys of both (a flow is a
    duplicate when its key is among them or in the store, see StoredKeys)."""

    def __init__(self, store: Store, cluster: str, publish: bool):
        self.writer = StreamWriter(store, cluster)
        self.known = StoredKeys(store, cluster)
        self.publish = publish  # False: commits stay staged (--strict)
        self.staged: list[WriteResult] = []
        self.flows: list[pa.Table] = []  # queued, in order
        self.keys: list[int] = []  # their keys, in the same order
        self.events: list[pa.Table] = []
        self.in_files: list[int] = []  # keys of the flows in the open files
        self.seen: set[int] = set()  # keys of queued flows and of those in open files
        self.rows = 0  # queued flows
        self.stored = [0, 0]  # flows, events committed

    def add(self, part: _Part) -> int:
        """Queue the part's new flows and its events, write full row groups (committing the
        files when due); return how many duplicates the part held."""
        flows = part.flows
        dups = 0
        if flows.num_rows:
            times = flows.column("time")
            span = pc.min_max(times)
            lo, hi = span["min"].as_py(), span["max"].as_py()  # int64 ns (stored form)
            stored = self.known.sets(lo, hi, with_untimed=times.null_count > 0)
            seen = self.seen
            mask = []
            for k in part.keys:
                if k in seen or any(k in s for s in stored):
                    mask.append(False)
                    dups += 1
                else:
                    seen.add(k)
                    self.keys.append(k)
                    mask.append(True)
            if dups:
                flows = flows.filter(pa.array(mask))
            self.flows.append(flows)
            self.rows += flows.num_rows
        if part.events.num_rows:
            self.events.append(part.events)
        while self.rows >= ROW_GROUP:
            self._write()
        return dups

    def finish(self) -> None:
        """Write and commit what is left."""
        while self.rows or self.events:
            self._write()
        if self.writer.rows:
            self._commit()

    def _write(self) -> None:
        """One row group of queued flows (and the queued events) into the open files; commit
        them once they hold FILE_ROWS, as the collector does."""
        take = min(self.rows, ROW_GROUP)
        flows = pa.concat_tables(self.flows) if self.flows else None
        events = pa.concat_tables(self.events) if self.events else None
        self.writer.write(flows.slice(0, take) if flows is not None else None, events)
        self.flows = [flows.slice(take)] if flows is not None and take < self.rows else []
        self.events = []
        self.rows -= take
        self.in_files += self.keys[:take]
        del self.keys[:take]
        if self.writer.rows >= FILE_ROWS:
            self._commit()

    def _commit(self) -> None:
        """Close the open files (published, or staged) and index them for the lookups, which
        find their flows from now on."""
        result = self.writer.commit(publish=self.publish)
        written = [(f, f) for f in result.files] if self.publish else result.pending
        for path, final in written:
            if final.relative_to(self.writer.store.root).parts[0] == FLOWS:
                self.known.note(path)
        if not self.publish:
            self.staged.append(result)
        self.seen.difference_update(self.in_files)
        self.in_files = []
        self.stored[0] += result.flows
        self.stored[1] += result.events
        pa.default_memory_pool().release_unused()


def import_files(
    store: Store,
    paths: list[str],
    *,
    cluster: str | None = None,
    strict: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import jsonpb files; duplicates (already stored or repeated) are dropped; --strict is all or nothing."""
    if cluster:
        check_cluster(cluster)
    if paths.count("-") > 1:
        raise InputError("- (stdin) can be read only once")
    for p in paths:  # a mistyped name stops the import before anything is written
        if p != "-":
            try:
                open(p, "rb").close()
            except OSError as exc:
                raise InputError(f"{p}: cannot open: {exc.strerror or exc}") from exc
    report = ImportReport(files=len(paths))
    errors: list[tuple[int, int, str]] = []  # (file, line, reason)
    sinks: dict[str, _Sink] = {}
    out: queue.Queue = queue.Queue(maxsize=QUEUED)
    stop = threading.Event()
    readers: list[_Reader] = []
    todo = list(enumerate(paths))

    def start_next() -> int:
        if not todo or stop.is_set():
            return 0
        i, p = todo.pop(0)
        readers.append(_Reader(i, p, cluster, out, stop))
        readers[-1].start()
        return 1

    try:
        running = sum(start_next() for _ in range(READERS))
        while running:
            batch = out.get()
            if batch.crash is not None:
                raise batch.crash
            if batch.end:
                running += start_next() - 1
                continue
            errors += [(batch.file, line, reason) for line, reason in batch.errors]
            report.skipped += batch.skipped
            if on_progress and batch.lines:
                on_progress(batch.lines)
            if strict and errors:
                stop.set()  # nothing will be kept: stop reading
                continue
            for part in batch.parts:
                sink = sinks.get(part.cluster)
                if sink is None:
                    sink = sinks[part.cluster] = _Sink(store, part.cluster, publish=not strict)
                report.duplicates += sink.add(part)
        if strict and errors:
            first = _where(paths, *min(errors))
            raise InputError(f"{first} (--strict: nothing imported, {len(errors)} error(s))")
        for sink in sinks.values():
            sink.finish()
        for sink in sinks.values():  # --strict: every file is written; now publish them
            while sink.staged:
                store.publish(sink.staged.pop(0))
    except BaseException:
        for sink in sinks.values():
            sink.writer.abort()
            for result in sink.staged:
                store.discard(result)
        raise
    finally:
        stop.set()
        _drain(out, readers)
    report.flows = sum(s.stored[0] for s in sinks.values())
    report.events = sum(s.stored[1] for s in sinks.values())
    report.errors = [_where(paths, *e) for e in sorted(errors)]
    if report.flows or report.events:
        from flowpipe.views import catalog  # DuckDB: loaded once the batches are gone

        catalog.write_database(store)
    return report


def _drain(out: queue.Queue, readers: list[_Reader]) -> None:
    """Let stopped readers finish: they may be waiting to hand over a batch."""
    while any(r.is_alive() for r in readers):
        try:
            out.get(timeout=0.05)
        except queue.Empty:
            pass


def _name(path: str) -> str:
    return "<stdin>" if path == "-" else path


def _where(paths: list[str], file: int, line: int, reason: str) -> str:
    name = _name(paths[file])
    return f"{name}:{line}: {reason}" if line else f"{name}: {reason}"


def total_size(paths: list[str]) -> int | None:
    """Bytes to read, when known (for a progress bar)."""
    try:
        return sum(os.path.getsize(p) for p in paths if p != "-")
    except OSError:
        return None
