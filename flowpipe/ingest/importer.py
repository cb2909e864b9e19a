"""`flowpipe import`: hubble jsonpb captures and Hubble exporter logs into the store."""

from __future__ import annotations

import gzip
import json
import os
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

import pyarrow.compute as pc
from google.protobuf import json_format

from flowpipe.api.observer import observer_pb2
from flowpipe.codec import decode, storage
from flowpipe.errors import InputError
from flowpipe.ingest.dedup import Deduper
from flowpipe.store.layout import Store, WriteResult, check_cluster
from flowpipe.views import catalog as views

BATCH = 20_000
RESPONSE_KEYS = {"flow", "node_status", "lost_events"}
EXPORT_ONLY_KEYS = {"agent_event", "debug_event"}


@dataclass
class ImportReport:
    flows: int = 0
    events: int = 0
    duplicates: int = 0
    skipped: int = 0  # agent/debug events: valid input that the flow store does not keep
    errors: list[str] = field(default_factory=list)
    files: int = 0


def _open(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    fh = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if fh.read(2) == b"\x1f\x8b":
        fh.seek(0)
        return gzip.GzipFile(fileobj=fh)
    fh.seek(0)
    return fh


def _parse_line(line: bytes) -> tuple[observer_pb2.GetFlowsResponse | None, str | None, bool]:
    """(response, error, skipped) for one JSON line."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"not JSON: {exc}", False
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}", False
    keys = set(obj)
    if keys & EXPORT_ONLY_KEYS and not keys & RESPONSE_KEYS:
        return None, None, True
    if not keys & RESPONSE_KEYS:
        if "time" in obj and ("verdict" in obj or "source" in obj or "IP" in obj):
            obj = {"flow": obj}  # a bare Flow (older `hubble observe -o json`)
        else:
            return None, "no flow, node_status or lost_events in this object", False
    try:
        msg = json_format.ParseDict(obj, observer_pb2.GetFlowsResponse())
    except json_format.ParseError as exc:
        return None, f"not a GetFlowsResponse: {exc}", False
    return msg, None, False


def _cluster_of(msg: observer_pb2.GetFlowsResponse, default: str | None) -> str:
    if default:
        return default
    node = msg.flow.node_name or msg.node_name
    if "/" in node:
        return node.split("/", 1)[0]
    return "default"


def iter_responses(
    path: str, errors: list[str]
) -> Iterator[tuple[int, observer_pb2.GetFlowsResponse | None]]:
    """(line number, response) for each line; None for skipped lines; errors appended as file:line."""
    name = "<stdin>" if path == "-" else path
    try:
        fh = _open(path)
    except OSError as exc:
        raise InputError(f"{name}: cannot open: {exc.strerror or exc}") from exc
    try:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            msg, err, skipped = _parse_line(line)
            if err:
                errors.append(f"{name}:{lineno}: {err}")
            elif skipped:
                yield lineno, None
            else:
                yield lineno, msg
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        errors.append(f"{name}: read error: {exc}")
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()


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
    report = ImportReport()
    staged: list[WriteResult] = []
    dedupers: dict[str, Deduper] = {}
    pending: dict[str, list[bytes]] = {}

    def flush(c: str) -> None:
        rows = pending.pop(c, [])
        if not rows:
            return
        dec = decode.decode_responses(rows)
        for idx, reason in dec.errors:  # cannot happen for re-serialised input, but never silent
            report.errors.append(f"{c}: flow {idx}: {reason}")
        flows, events = decode.split_responses(dec)
        d = dedupers.setdefault(c, Deduper())
        span = pc.min_max(flows.column("time"))
        if span["min"].is_valid:
            # only keys stored in this batch's time span can be duplicates of it
            d.remember(store.keys_between(c, span["min"].value, span["max"].value))
        flows, dups, _ = d.filter(flows)
        report.duplicates += dups
        report.flows += flows.num_rows
        report.events += events.num_rows
        result = store.stage(c, storage.to_storage(flows), events)
        if strict:
            staged.append(result)
        else:
            store.publish(result)

    try:
        for path in paths:
            report.files += 1
            for _, msg in iter_responses(path, report.errors):
                if on_progress:
                    on_progress(1)
                if msg is None:
                    report.skipped += 1
                    continue
                c = _cluster_of(msg, cluster)
                check_cluster(c)
                pending.setdefault(c, []).append(msg.SerializeToString())
                if len(pending[c]) >= BATCH:
                    flush(c)
            if strict and report.errors:
                break
        if not (strict and report.errors):
            for c in list(pending):
                flush(c)
        if strict and report.errors:
            for s in staged:
                store.discard(s)
            report.flows = report.events = report.duplicates = 0
            raise InputError(
                f"{report.errors[0]} (--strict: nothing imported, {len(report.errors)} error(s))"
            )
        for s in staged:
            store.publish(s)
        if report.flows or report.events:
            views.write_database(store)
    except BaseException:
        for s in staged:
            store.discard(s)
        raise
    return report


def total_size(paths: list[str]) -> int | None:
    """Bytes to read, when known (for a progress bar)."""
    try:
        return sum(os.path.getsize(p) for p in paths if p != "-")
    except OSError:
        return None
