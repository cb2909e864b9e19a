"""hubble jsonpb lines (and Hubble exporter logs) -> GetFlowsResponse wire bytes.

_jsonpb.c converts the lines it can convert exactly; every other line goes through
protobuf's own json_format (parse_line), which accepts it or says why not."""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass, field

from google.protobuf import json_format

from flowpipe.api.observer import observer_pb2
from flowpipe.codec.spec import _jsonpb, json_spec

BARE_FLOW_KEYS = {"verdict", "source", "IP"}  # with "time": a bare Flow (older `-o json`)


@dataclass
class Converted:
    """The lines of one chunk: wire bytes of the good ones, in order, and what the others were."""

    rows: list[bytes] = field(default_factory=list)
    lines: array = field(default_factory=lambda: array("q"))  # line number of each row
    clusters: list[str] = field(default_factory=list)  # cluster of each row (cluster_of)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    skipped: int = 0  # agent/debug events: valid, not kept in the flow store
    count: int = 0  # lines in the chunk, blank ones included


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """json.loads hook: a key given twice is an error (as in json_format.Parse and Go's protojson)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def cluster_of(msg: observer_pb2.GetFlowsResponse) -> str:
    """The cluster a response belongs to: the part of its node name (the flow's, else the
    response's; Relay sends `cluster/node`) before '/', 'default' without one. _jsonpb.c does
    the same for the lines it converts."""
    node = msg.flow.node_name or msg.node_name
    return node.split("/", 1)[0] if "/" in node else "default"


def parse_line(line: bytes) -> tuple[bytes | None, str | None, bool]:
    """(wire bytes, error, skipped) of one line, by json_format: the reference for _jsonpb.c."""
    spec = json_spec()
    try:
        obj = json.loads(line.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8: {exc}", False
    except (ValueError, RecursionError) as exc:
        return None, f"not JSON: {exc}", False
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}", False
    keys = obj.keys()
    if keys & spec.export_only_keys and not keys & spec.response_keys:
        return None, None, True
    if not keys & spec.response_keys:
        if "time" in obj and keys & BARE_FLOW_KEYS:
            obj = {"flow": obj}
        else:
            return None, "no flow, node_status or lost_events in this object", False
    msg = observer_pb2.GetFlowsResponse()
    try:
        json_format.ParseDict(obj, msg)
    except Exception as exc:  # ParseError, and what ParseDict lets out where Parse wraps it
        return None, f"not a GetFlowsResponse: {exc}", False
    return msg.SerializeToString(), None, False


def convert(chunk: bytes, first: int = 1, *, fast: bool = True) -> Converted:
    """Convert the lines of chunk (split on newlines, numbered from first; blank ones skipped)."""
    compiled = json_spec().compiled if fast else None
    if compiled is None:
        return _convert_python(chunk, first)
    rows, row_lines, clusters, bails, count = _jsonpb.convert(compiled, chunk, first)
    fast = Converted(rows, array("q", row_lines), clusters, count=count)
    if not bails:
        return fast
    out = Converted(count=count)
    done = 0
    for before, line, start, end in bails:
        out.rows += rows[done:before]
        out.lines += fast.lines[done:before]
        out.clusters += clusters[done:before]
        done = before
        _add(out, line, chunk[start:end])
    out.rows += rows[done:]
    out.lines += fast.lines[done:]
    out.clusters += clusters[done:]
    return out


def _add(out: Converted, lineno: int, line: bytes) -> None:
    wire, err, skipped = parse_line(line)
    if wire is not None:
        out.rows.append(wire)
        out.lines.append(lineno)
        out.clusters.append(cluster_of(observer_pb2.GetFlowsResponse.FromString(wire)))
    elif err is not None:
        out.errors.append((lineno, err))
    out.skipped += skipped


def _convert_python(chunk: bytes, first: int) -> Converted:
    out = Converted()
    for i, line in enumerate(chunk.split(b"\n"), first):
        if line.strip():
            _add(out, i, line)
    out.count = chunk.count(b"\n") + (0 if chunk.endswith(b"\n") or not chunk else 1)
    return out
