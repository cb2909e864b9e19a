"""`flowpipe import` on the real captures: lossless, idempotent, malformed lines named file:line."""

from __future__ import annotations

import gzip
import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import capture_files
from google.protobuf import json_format

from flowpipe.cli import main
from flowpipe.codec import storage
from flowpipe.errors import InputError
from flowpipe.ingest import importer


def stored_flows(store):
    out = []
    for p in store.files():
        out += storage.flows_from_columns(pq.read_table(p))
    return out


def test_real_captures_round_trip(store, captures):
    report = importer.import_files(store, [str(p) for p in capture_files()], cluster="lab")
    assert report.errors == []
    # the sample files repeat 27 identical flows between them: stored once
    expected = {c.flow.SerializeToString(deterministic=True) for c in captures}
    got = stored_flows(store)
    assert len(got) == report.flows == len(expected)
    assert {f.SerializeToString(deterministic=True) for f in got} == expected


def test_import_twice_adds_nothing(store):
    paths = [str(p) for p in capture_files()]
    first = importer.import_files(store, paths)
    again = importer.import_files(store, paths)
    assert (
        first.flows > 0 and again.flows == 0 and again.duplicates == first.flows + first.duplicates
    )


def test_gzip_and_cluster_from_node_name(store, tmp_path, captures):
    lines = []
    for c in captures[:20]:
        d = json_format.MessageToDict(c)
        d["flow"]["node_name"] = "east/" + d["flow"].get("node_name", "n")
        lines.append(json.dumps(d))
    path = tmp_path / "east.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    report = importer.import_files(store, [str(path)])
    assert report.errors == [] and report.flows == 20
    assert store.clusters() == ["east"]


def test_malformed_lines_named_with_file_and_line(store, tmp_path):
    good = capture_files()[0].read_text().splitlines()[0]
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        "\n".join([good, "{not json", '{"flow": {"verdict": "BOGUS"}}', "[1, 2]", '{"x": 1}'])
        + "\n"
    )
    report = importer.import_files(store, [str(path)])
    assert report.flows == 1
    assert [e.split(": ")[0] for e in report.errors] == [f"{path}:{n}" for n in (2, 3, 4, 5)]
    assert "not JSON" in report.errors[0] and "BOGUS" in report.errors[1]


def test_strict_writes_nothing(store, tmp_path):
    good = capture_files()[0].read_text()
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "garbage\n")
    with pytest.raises(InputError, match=r"bad.jsonl:11: not JSON.*--strict: nothing imported"):
        importer.import_files(store, [str(path)], strict=True)
    assert store.files() == []


def test_agent_events_are_counted_not_stored(store, tmp_path):
    path = tmp_path / "export.jsonl"
    path.write_text('{"agent_event": {"type": "AGENT_STARTED"}, "node_name": "n"}\n')
    report = importer.import_files(store, [str(path)])
    assert report.skipped == 1 and report.flows == 0 and report.errors == []


def test_cli_import_exit_codes(tmp_path):
    runner = CliRunner()
    store = str(tmp_path / "s")
    ok = runner.invoke(main, ["import", "--store", store, "-q", str(capture_files()[0])])
    assert ok.exit_code == 0, ok.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text("nope\n")
    res = runner.invoke(main, ["import", "--store", store, str(bad)])
    assert res.exit_code == 1 and f"{bad}:1: not JSON" in res.output
    res = runner.invoke(main, ["import", "--store", store, str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2 and "cannot open" in res.output


def test_lost_events_and_node_status_are_stored(store, tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"lost_events": {"source": "OBSERVER_EVENTS_QUEUE", "num_events_lost": "7"}, "node_name": "n1", "time": "2024-01-01T00:00:00Z"}\n'
        '{"node_status": {"state_change": "NODE_UNAVAILABLE", "node_names": ["n2"]}, "time": "2024-01-01T00:00:01Z"}\n'
    )
    report = importer.import_files(store, [str(path)], cluster="c1")
    assert report.events == 2
    from flowpipe.views import query

    _, rows = query.fetch(
        store, "SELECT kind, lost_source, num_events_lost, node_state FROM events ORDER BY time"
    )
    assert rows == [
        ("lost_events", "OBSERVER_EVENTS_QUEUE", 7, None),
        ("node_status", None, None, "NODE_UNAVAILABLE"),
    ]
