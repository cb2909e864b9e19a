"""The jsonpb fast path (_jsonpb.c) against protobuf's own JSON parser (json_format.Parse).

What the C path converts must be exactly what json_format makes of the line; what it leaves to
json_format is json_format's by definition. Checked on the real captures and, differentially, on
lines mutated as JSON values and as bytes."""

from __future__ import annotations

import copy
import json
import os
import re

import pytest
from conftest import capture_files
from google.protobuf import json_format
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2
from flowpipe.codec import jsonpb
from flowpipe.codec.spec import _jsonpb, json_spec

# a developer's tree without the build skips; CI builds it (make install), so there it must run
pytestmark = pytest.mark.skipif(
    _jsonpb is None and not os.environ.get("CI"), reason="the C extension is not built"
)


def rich_lines() -> list[str]:
    """Responses using most field kinds: wrappers, uint64, enums, repeated messages, events."""
    r = observer_pb2.GetFlowsResponse(node_name="east/node-1")
    f = r.flow
    f.time.seconds, f.time.nanos = 1_700_000_000, 123_000_000
    f.uuid = "0b5e8a54-8e0b-4c36-9d8f-1f1d3a0a9f10"
    f.verdict, f.drop_reason_desc, f.Type = flow_pb2.DROPPED, flow_pb2.POLICY_DENIED, flow_pb2.L7
    f.node_name = "east/node-1"
    f.node_labels.extend(["kubernetes.io/hostname=node-1", 'zone=é\u2028"quoted"\\'])
    f.source.ID, f.source.identity, f.source.namespace = 4242, 16781, "shop"
    f.source.labels.extend(["k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=shop"])
    f.source.workloads.add(name="frontend", kind="Deployment")
    f.destination.identity = 2
    f.IP.source, f.IP.destination, f.IP.ipVersion = "10.0.0.1", "1.1.1.1", flow_pb2.IPv4
    f.l4.UDP.source_port, f.l4.UDP.destination_port = 53000, 53
    f.l7.type = flow_pb2.REQUEST
    f.l7.latency_ns = 2**40 + 7
    f.l7.http.method, f.l7.http.url, f.l7.http.code = "GET", "http://x/?a=1&b=<2>", 403
    f.l7.http.headers.add(key="X-Request-Id", value="\x00\x7f\U0001f600")
    f.is_reply.value = False
    f.socket_cookie, f.cgroup_id = 2**64 - 1, 12345
    f.egress_allowed_by.add(name="allow-dns", namespace="shop", revision=7, labels=["a"])
    f.egress_allowed_by.add()
    f.policy_match_type, f.proxy_port = 3, 15001
    f.trace_observation_point, f.traffic_direction = flow_pb2.TO_PROXY, flow_pb2.EGRESS
    f.interface.index, f.interface.name = 7, "lxc1"
    f.Summary = "DNS Query"
    r.time.CopyFrom(f.time)
    lost = observer_pb2.GetFlowsResponse(node_name="east/node-2")
    lost.lost_events.source = flow_pb2.OBSERVER_EVENTS_QUEUE
    lost.lost_events.num_events_lost = 2**63 + 5
    lost.lost_events.cpu.value = 3
    lost.time.seconds = 1
    status = observer_pb2.GetFlowsResponse()
    status.node_status.state_change = 2
    status.node_status.node_names.extend(["a", "b"])
    status.node_status.message = "gone"
    out = []
    for m in (r, lost, status):
        d = json_format.MessageToDict(m, preserving_proto_field_name=True)
        out.append(json.dumps(d, separators=(",", ":"), ensure_ascii=False))
        out.append(json_format.MessageToJson(m, indent=None))  # camelCase names, spaces
    return out


CAPTURE_LINES = [line for p in capture_files() for line in p.read_text().splitlines() if line]
BASES = rich_lines() + CAPTURE_LINES[::37]


def fast(line: bytes) -> tuple[observer_pb2.GetFlowsResponse | None, str | None]:
    """(message, cluster) from the C path alone, (None, None) when it leaves the line."""
    rows, _, clusters, bails, _ = _jsonpb.convert(json_spec().compiled, line, 1)
    if not rows:
        return None, None
    return observer_pb2.GetFlowsResponse.FromString(rows[0]), clusters[0]


def protobuf(line: bytes) -> observer_pb2.GetFlowsResponse | None:
    """What json_format.Parse makes of the line (None when it refuses it)."""
    try:
        return json_format.Parse(line, observer_pb2.GetFlowsResponse())
    except (json_format.ParseError, UnicodeDecodeError):
        return None


def routed(line: bytes) -> bool:
    """A JSON object holding a flow, node_status or lost_events: a line json_format decides."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and bool(obj.keys() & json_spec().response_keys)


def check(line: bytes) -> str:
    """The C path converts only what json_format accepts, into the same message; the reader as a
    whole (C path plus json_format) agrees with json_format on every routed line."""
    if b"\n" in line or not line.strip():
        return "blank"
    got, cluster = fast(line)
    want = protobuf(line)
    if got is not None:
        assert routed(line) and want is not None, line
        assert got == want, line
        assert cluster == jsonpb.cluster_of(want)
    conv = jsonpb.convert(line)
    if routed(line):
        if want is None:
            assert conv.rows == [] and len(conv.errors) == 1, line
        else:
            assert conv.errors == [] and len(conv.rows) == 1, line
            assert observer_pb2.GetFlowsResponse.FromString(conv.rows[0]) == want
            assert conv.clusters == [jsonpb.cluster_of(want)]
    else:
        assert conv.rows == [] or "time" in json.loads(line)  # bare flows are wrapped
    return "fast path" if got is not None else "json_format"


def test_real_captures_take_the_fast_path_and_equal_json_format():
    for line in CAPTURE_LINES:
        got, _ = fast(line.encode())
        assert got is not None and got == protobuf(line.encode()), line


def test_rich_lines_take_the_fast_path():
    for line in rich_lines():
        got, cluster = fast(line.encode())
        assert got is not None and got == protobuf(line.encode()), line
        assert cluster == jsonpb.cluster_of(got)


@pytest.mark.parametrize(
    "line, fast_path",
    [
        ('{"flow":{"verdict":"DROPPED"}}', True),
        ('{"flow":{"verdict":2}}', False),  # an enum number: json_format's rules
        ('{"flow":{"proxy_port":"15001"}}', True),  # a quoted integer
        ('{"flow":{"proxy_port":15001.0}}', False),  # json_format takes it; C leaves it
        ('{"flow":{"proxy_port":-1}}', False),  # out of range: an error
        ('{"flow":{"socket_cookie":"18446744073709551616"}}', False),  # 2**64
        ('{"flow":{"nodeName":"c/n","node_name":"c/m"}}', False),  # one field twice
        ('{"flow":{"uuid":"a"},"flow":{}}', False),  # a duplicate key: an error
        ('{"flow":{"time":"2024-02-29T00:00:00.5Z"}}', True),
        ('{"flow":{"time":"2023-02-29T00:00:00Z"}}', False),  # no such day
        ('{"flow":{"time":"2024-01-01T00:00:00+01:00"}}', False),  # an offset
        ('{"flow":{"l4":{"TCP":{},"UDP":{}}}}', False),  # two members of a oneof
        ('{"flow":{"Summary":"\\ud83d\\ude00 \\u00e9\\/"}}', True),
        ('{"flow":{"Summary":"\\ud83d"}}', False),  # an unpaired surrogate: an error
        ('{"flow":{"Summary":null}}', False),
        ('{"flow":{"is_reply":true,"isReply":false}}', False),
        (' {"node_name":"x", "flow" : { } } \r', True),
        ('{"flow":{}} x', False),
        ('{"agent_event":{}}', False),  # skipped by the reader, not converted
    ],
)
def test_cases(line, fast_path):
    got, _ = fast(line.encode())
    assert (got is not None) == fast_path
    check(line.encode())


VALUES = st.sampled_from(
    [
        None, True, False, 0, 1, -1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**32 - 1, 2**32,
        2**63 - 1, 2**63, 2**64 - 1, 2**64, 1.0, 1.5, -0.0, 1e3, "", "x", "0", "123", "-5",
        "007", "1e2", " 1", "+1", "1.0", "true", "NaN", "FORWARDED", "DROPPED",
        "VERDICT_UNKNOWN", "TO_STACK", "INGRESS", "L7", "POLICY_DENIED", "2021-10-04T14:28:38Z",
        "2021-10-04T14:28:38.735173594Z", "2021-10-04T14:28:38.7Z", "2021-10-04T14:28:38.Z",
        "2021-10-04T14:28:38+01:00", "2020-02-29T00:00:00Z", "2021-02-29T00:00:00Z",
        "0001-01-01T00:00:00Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z",
        "1969-12-31T23:59:59.999999999Z", "2021-10-04t14:28:38Z", "2021-1-4T14:28:38Z",
        "2021-10-04T24:00:00Z", "\ud800", "é", "\x00", 'a"b\\', "c1/node", "/node", "bad name/n",
        {}, [], [0], [""], ["a", "b"], [{}], [None], {"x": 1}, {"ID": 5}, {"name": "p"},
    ]
).map(copy.deepcopy)  # fmt: skip
ALIKE = {
    str: st.text(max_size=12),
    int: st.integers(0, 2**32) | st.integers(-(2**63), 2**64),
    bool: st.booleans(),
}
FIELD_NAMES = sorted(
    {
        name
        for d in (
            flow_pb2.Flow.DESCRIPTOR,
            flow_pb2.Endpoint.DESCRIPTOR,
            flow_pb2.Layer4.DESCRIPTOR,
            observer_pb2.GetFlowsResponse.DESCRIPTOR,
        )
        for f in d.fields
        for name in (f.name, f.json_name)
    }
)


def _containers(obj, out):
    if isinstance(obj, dict):
        out.append(obj)
        for v in obj.values():
            _containers(v, out)
    elif isinstance(obj, list):
        out.append(obj)
        for v in obj:
            _containers(v, out)
    return out


EDGE_DATES = [(2021, 2, 29), (2020, 2, 29), (1900, 2, 29), (2000, 2, 29), (2100, 2, 29)]
EDGE_DATES += [(2021, 4, 31), (2021, 12, 31), (2021, 13, 1), (2021, 0, 1), (2021, 1, 0)]
EDGE_DATES += [(0, 1, 1), (1, 1, 1), (1969, 12, 31), (9999, 12, 31), (10000, 1, 1)]
TIMESTAMPS = st.builds(
    lambda date, h, mi, sec, frac, tz: (
        f"{date[0]:04d}-{date[1]:02d}-{date[2]:02d}T{h:02d}:{mi:02d}:{sec:02d}{frac}{tz}"
    ),
    st.sampled_from(EDGE_DATES) | st.dates().map(lambda d: (d.year, d.month, d.day)),
    st.sampled_from([0, 23, 24]) | st.integers(0, 23),
    st.sampled_from([0, 59, 60]) | st.integers(0, 59),
    st.sampled_from([0, 59, 60, 61]) | st.integers(0, 59),
    st.sampled_from(["", "."]) | st.from_regex(r"\.[0-9]{1,10}", fullmatch=True),
    st.sampled_from(["Z", "Z", "z", "+00:00", "-01:30", ""]),
)
NUMBERS = st.integers(-(2**65), 2**65) | st.sampled_from([0, -1, 2**31, 2**32, 2**63, 2**64])
# fields of each kind in the bases: (flow or response) -> names
TIMES = ["time"]
INTEGERS = ["proxy_port", "socket_cookie", "cgroup_id", "policy_match_type", "drop_reason"]


@st.composite
def json_mutants(draw) -> bytes:
    """A base line with one to three of its JSON values replaced, keys renamed, added or dropped."""
    obj = json.loads(draw(st.sampled_from(BASES)))
    flow = obj.get("flow") if isinstance(obj.get("flow"), dict) else obj
    if draw(st.booleans()):  # a timestamp or an integer of every shape, where one belongs
        if draw(st.booleans()):
            flow[draw(st.sampled_from(TIMES))] = draw(TIMESTAMPS)
        else:
            number = draw(NUMBERS)
            flow[draw(st.sampled_from(INTEGERS))] = str(number) if draw(st.booleans()) else number
        return json.dumps(obj).encode()
    for _ in range(draw(st.sampled_from([1, 1, 2, 3]))):
        spots = _containers(obj, [])
        spot = draw(st.sampled_from(spots))
        if isinstance(spot, list):
            if spot:
                spot[draw(st.integers(0, len(spot) - 1))] = draw(VALUES)
            continue
        op = draw(st.sampled_from(["alike", "alike", "value", "value", "rename", "add", "drop"]))
        key = draw(st.sampled_from(sorted(spot))) if spot else None
        if op == "alike" and key is not None:  # often still valid: the fast path's share
            spot[key] = draw(ALIKE.get(type(spot[key]), VALUES))
        elif op == "value" and key is not None:
            spot[key] = draw(VALUES | st.text(max_size=8) | st.integers())
        elif op == "rename" and key is not None:
            camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)
            spot[draw(st.sampled_from([camel, key.upper(), key + "x"]))] = spot.pop(key)
        elif op == "add":
            spot[draw(st.sampled_from(FIELD_NAMES))] = draw(VALUES)
        elif key is not None:
            del spot[key]
    # surrogatepass: a lone surrogate becomes invalid UTF-8, which json_format refuses too
    return json.dumps(obj, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


@st.composite
def byte_mutants(draw) -> bytes:
    """A base line with bytes inserted, deleted or replaced, escapes or a duplicate key added."""
    line = bytearray(draw(st.sampled_from(BASES)).encode())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(line) - 1))
        op = draw(st.sampled_from(["insert", "delete", "replace", "space", "escape", "dup"]))
        if op == "insert":
            line[at:at] = bytes([draw(st.integers(0, 255).filter(lambda b: b != 10))])
        elif op == "delete":
            del line[at]
        elif op == "replace":
            line[at] = draw(st.integers(0, 255).filter(lambda b: b != 10))
        elif op == "space":
            line[at:at] = draw(st.sampled_from([b" ", b"\t", b"\r", b"\x0b", b"\x0c"]))
        elif op == "escape" and 0x20 < line[at] < 0x7F:
            line[at : at + 1] = f"\\u{line[at]:04x}".encode()
        elif op == "dup":
            brace = line.find(b"{", at)
            if brace >= 0:
                line[brace + 1 : brace + 1] = draw(
                    st.sampled_from([b'"node_name":"x",', b'"time":"2021-10-04T14:28:38Z",'])
                )
    return bytes(line)


SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(json_mutants())
def test_fast_path_agrees_with_json_format_on_json_mutants(line):
    event(check(line))


@SETTINGS
@given(byte_mutants())
def test_fast_path_agrees_with_json_format_on_byte_mutants(line):
    event(check(line))


def test_lines_are_numbered_and_blank_ones_skipped():
    good = CAPTURE_LINES[0]
    chunk = f"{good}\n\n  \t\n{{bad\n{good}\r\n{good}".encode()
    conv = jsonpb.convert(chunk, 10)
    assert list(conv.lines) == [10, 14, 15] and conv.count == 6
    assert [n for n, _ in conv.errors] == [13] and "not JSON" in conv.errors[0][1]
    slow = jsonpb.convert(chunk, 10, fast=False)
    parse = observer_pb2.GetFlowsResponse.FromString
    assert [parse(r) for r in slow.rows] == [parse(r) for r in conv.rows]
    assert list(slow.lines) == list(conv.lines)
    assert slow.errors == conv.errors and slow.count == conv.count
