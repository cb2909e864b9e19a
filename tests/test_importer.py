"""`flowpipe import` on the real captures: lossless, idempotent, malformed lines named file:line."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import capture_files
from google.protobuf import json_format

from flowpipe.api.observer import observer_pb2
from flowpipe.cli import main
from flowpipe.codec import storage
from flowpipe.errors import InputError
from flowpipe.ingest import importer
from flowpipe.store.layout import Store


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


def test_each_imported_flow_equals_protobufs_parse_of_its_line(tmp_path):
    for path in capture_files():
        store = Store(tmp_path / path.stem)
        store.ensure()
        report = importer.import_files(store, [str(path)], cluster="lab")
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        want = Counter(
            json_format.Parse(line, observer_pb2.GetFlowsResponse()).flow.SerializeToString(
                deterministic=True
            )
            for line in lines
        )
        got = Counter(f.SerializeToString(deterministic=True) for f in stored_flows(store))
        assert report.errors == [] and got == Counter(set(want)), path.name
        assert report.flows + report.duplicates == len(lines)


def test_files_and_row_groups_as_the_collector_writes_them(store, monkeypatch):
    from flowpipe.ingest import collector
    from flowpipe.ingest.config import CollectConfig

    assert importer.ROW_GROUP == collector.DECODE_BATCH
    assert CollectConfig().flush_rows == importer.FILE_ROWS
    monkeypatch.setattr(importer, "ROW_GROUP", 100)
    monkeypatch.setattr(importer, "FILE_ROWS", 250)
    path = capture_files()[2]  # 400 tcp flows within one hour
    report = importer.import_files(store, [str(path)], cluster="c1")
    files = store.files("flows", "c1")
    sizes = [pq.read_metadata(p).num_rows for p in files]
    groups = [
        pq.read_metadata(p).row_group(g).num_rows
        for p in files
        for g in range(pq.read_metadata(p).num_row_groups)
    ]
    assert report.flows == 400 and sorted(sizes) == [100, 300]
    assert groups == [100] * 4


def test_duplicates_found_in_committed_files_of_the_same_import(store, tmp_path, monkeypatch):
    monkeypatch.setattr(importer, "ROW_GROUP", 64)
    monkeypatch.setattr(importer, "FILE_ROWS", 128)
    text = capture_files()[2].read_text()
    twice = tmp_path / "twice.jsonl"
    twice.write_text(text + text)  # the second copy arrives after the first is committed
    report = importer.import_files(store, [str(twice), str(capture_files()[2])], cluster="c1")
    assert report.flows == 400 and report.duplicates == 800 and report.errors == []
    assert len(stored_flows(store)) == 400


def test_strict_discards_staged_files_of_every_file(store, tmp_path, monkeypatch):
    monkeypatch.setattr(importer, "ROW_GROUP", 50)
    monkeypatch.setattr(importer, "FILE_ROWS", 100)
    bad = tmp_path / "late-bad.jsonl"
    bad.write_text(capture_files()[2].read_text() + '{"flow": {"verdict": "NOPE"}}\n')
    with pytest.raises(InputError, match=r"late-bad.jsonl:401: not a GetFlowsResponse.*--strict"):
        importer.import_files(store, [str(capture_files()[1]), str(bad)], strict=True)
    assert store.files() == [] and store.files("events") == []
    assert list((store.root / ".incoming").glob("*.tmp")) == []
    assert importer.import_files(store, [str(capture_files()[1])], strict=True).flows == 400


def test_node_name_without_a_usable_cluster_is_a_bad_line(store, tmp_path, captures):
    lines = []
    for i, c in enumerate(captures[:6]):
        d = json_format.MessageToDict(c)
        d["flow"]["node_name"] = "bad name/n" if i == 3 else "east/n"
        lines.append(json.dumps(d))
    path = tmp_path / "names.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = importer.import_files(store, [str(path)])
    assert report.flows == 5 and store.clusters() == ["east"]
    assert len(report.errors) == 1 and report.errors[0].startswith(f"{path}:4: node_name:")


def test_overlong_line_reported_and_skipped(store, tmp_path, monkeypatch):
    monkeypatch.setattr(importer, "CHUNK", 4096)
    monkeypatch.setattr(importer, "MAX_LINE", 10_000)
    lines = capture_files()[1].read_text().splitlines()
    path = tmp_path / "long.jsonl"
    path.write_text("\n".join(lines[:3] + ["x" * 50_000] + lines[3:]) + "\n")
    report = importer.import_files(store, [str(path)], cluster="c1")
    assert len(report.errors) == 1 and report.errors[0].startswith(f"{path}:4: line longer than")
    assert report.flows == 400


def test_small_chunks_give_the_same_store(tmp_path, monkeypatch):
    paths = [str(p) for p in capture_files()]
    stores = []
    for chunk in (importer.CHUNK, 777):
        monkeypatch.setattr(importer, "CHUNK", chunk)
        s = Store(tmp_path / f"s{chunk}")
        s.ensure()
        report = importer.import_files(s, paths, cluster="lab")
        assert report.errors == []
        stores.append(sorted(f.SerializeToString(deterministic=True) for f in stored_flows(s)))
    assert stores[0] == stores[1] and len(stores[0]) > 700


def test_stdin_gzip_and_truncated_gzip(tmp_path):
    flowpipe = [sys.executable, "-m", "flowpipe.cli", "import", "--store", str(tmp_path / "s")]
    data = gzip.compress(capture_files()[2].read_bytes())
    run = subprocess.run([*flowpipe, "-"], input=data, capture_output=True, timeout=120)
    assert run.returncode == 0 and b"imported 400 flows" in run.stderr, run.stderr
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    run = subprocess.run([*flowpipe, str(cut)], capture_output=True, timeout=120)
    assert run.returncode == 1 and f"{cut}: read error after line".encode() in run.stderr
