"""Reliability 8: garbage in (protobuf bytes, JSON lines, a relay sending junk): reported, never a crash."""

from __future__ import annotations

import json
from concurrent import futures

import grpc
import pytest
from click.testing import CliRunner
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_collect import Running, config, make_responses, stored, wait_for

from flowpipe.api.observer import observer_pb2
from flowpipe.cli import main
from flowpipe.codec import decode, storage
from flowpipe.ingest import importer

pytestmark = pytest.mark.reliability

VALID = [r.SerializeToString() for r in make_responses(20, seed=61)]


def protobuf_view(raw: bytes) -> observer_pb2.GetFlowsResponse | None:
    """What upstream protobuf makes of raw (None when it refuses it)."""
    msg = observer_pb2.GetFlowsResponse()
    try:
        msg.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError):
        return None
    return msg


def check_against_protobuf(raw: bytes) -> None:
    """The decoder agrees with protobuf: same verdict on validity, same flow when valid."""
    dec = decode.decode_responses([raw])
    want = protobuf_view(raw)
    if want is None:
        assert len(dec.responses) == 0 and dec.errors and dec.errors[0][0] == 0
        return
    assert dec.errors == [] and len(dec.responses) == 1
    flows, events = decode.split_responses(dec)
    if want.HasField("flow"):
        assert storage.flows_from_columns(flows) == [want.flow]
    else:
        assert flows.num_rows == 0


mutations = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.sampled_from(VALID), st.integers(0, 2000)).map(
        lambda t: t[0][: t[1]]
    ),  # truncated
    st.tuples(st.sampled_from(VALID), st.binary(min_size=1, max_size=40)).map(
        lambda t: t[0] + t[1]
    ),  # trailing junk
    st.tuples(st.sampled_from(VALID), st.integers(0, 10_000), st.integers(0, 255)).map(
        lambda t: (
            t[0][: t[1] % len(t[0])] + bytes([t[2]]) + t[0][t[1] % len(t[0]) + 1 :]
        )  # one byte changed
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations)
def test_decoder_matches_protobuf_on_garbage(raw):
    check_against_protobuf(raw)


@settings(max_examples=50, deadline=None)
@given(st.lists(mutations, min_size=1, max_size=30))
def test_batches_keep_good_rows_and_name_bad_ones(rows):
    dec = decode.decode_responses(rows)
    bad = {i for i, _ in dec.errors}
    assert bad == {i for i, r in enumerate(rows) if protobuf_view(r) is None}
    assert len(dec.responses) == len(rows) - len(bad)


def test_unknown_enum_values_survive():
    r = observer_pb2.GetFlowsResponse()
    r.CopyFrom(make_responses(1, seed=62)[0])
    r.flow.verdict = 99  # a verdict newer than our protos
    r.flow.drop_reason_desc = 4242
    check_against_protobuf(r.SerializeToString())


def test_oversized_message_round_trips():
    r = observer_pb2.GetFlowsResponse()
    r.CopyFrom(make_responses(1, seed=63)[0])
    r.flow.Summary = "x" * 5_000_000
    r.flow.source.labels.extend(f"k8s:label{i}=v" for i in range(20_000))
    check_against_protobuf(r.SerializeToString())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
wrong_shapes = st.one_of(
    json_values,
    st.dictionaries(
        st.sampled_from(["flow", "node_status", "lost_events", "time", "node_name"]),
        json_values,
        min_size=1,
        max_size=3,
    ),
    st.builds(lambda v: {"flow": {"verdict": v}}, json_values),
    st.builds(lambda v: {"flow": {"source": v, "time": "2024-01-01T00:00:00Z"}}, json_values),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(wrong_shapes, min_size=1, max_size=8))
def test_import_reports_wrong_json_shapes_with_locations(tmp_path_factory, values):
    tmp = tmp_path_factory.mktemp("garbage")
    from flowpipe.store.layout import Store

    store = Store(tmp / "store")
    store.ensure()
    path = tmp / "weird.jsonl"
    lines = [json.dumps(v) for v in values]
    path.write_text("\n".join(lines) + "\n")
    report = importer.import_files(store, [str(path)], cluster="c1")
    located = {int(e.split(":")[1]) for e in report.errors}
    for lineno, value in enumerate(values, 1):
        ok = _parses(value)
        assert (lineno in located) == (not ok), (lineno, value, report.errors)
    assert all(e.startswith(f"{path}:") for e in report.errors)


def _parses(value) -> bool:
    if not isinstance(value, dict):
        return False
    keys = set(value)
    if not keys & {"flow", "node_status", "lost_events"}:
        return False
    try:
        json_format.ParseDict(value, observer_pb2.GetFlowsResponse())
    except json_format.ParseError:
        return False
    return True


def test_cli_never_shows_a_traceback_on_garbage(tmp_path):
    path = tmp_path / "junk.jsonl.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00junk-that-is-not-gzip")
    res = CliRunner().invoke(main, ["import", "--store", str(tmp_path / "s"), str(path)])
    assert "Traceback" not in res.output and res.exit_code in (1, 2)
    assert str(path) in res.output


class JunkRelay(grpc.GenericRpcHandler):
    """A real gRPC server whose GetFlows stream mixes valid responses with junk bytes."""

    def __init__(self, items: list[bytes]):
        self.items = items

    def service(self, details):
        if details.method != "/observer.Observer/GetFlows":
            return None

        def stream(request, context):
            yield from self.items
            while context.is_active():
                context.add_callback(lambda: None)
                import time

                time.sleep(0.1)

        return grpc.unary_stream_rpc_method_handler(
            stream,
            request_deserializer=observer_pb2.GetFlowsRequest.FromString,
            response_serializer=None,
        )


def test_collector_survives_a_relay_sending_junk(store, port, caplog):
    good = make_responses(30, seed=64)
    junk = [b"\xff\xff\xff", b"\x0a\x05\x01", b"\x0a\x02\x92\x01"]
    items = (
        [r.SerializeToString() for r in good[:15]]
        + junk
        + [r.SerializeToString() for r in good[15:]]
    )
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([JunkRelay(items)])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        with Running(config(("c1", f"127.0.0.1:{port}")), store) as run:
            wait_for(
                lambda: (
                    run.metric("flowpipe_collector_malformed_responses_total", cluster="c1") == 3
                ),
                what="junk counted",
            )
            wait_for(
                lambda: run.metric("flowpipe_collector_flows_stored_total", cluster="c1") == 30,
                what="flows",
            )
            run.stop()
    finally:
        server.stop(0)
    assert sorted(f.uuid for f in stored(store)) == sorted(r.flow.uuid for r in good)
    assert any("[c1] undecodable response" in r.getMessage() for r in caplog.records)
