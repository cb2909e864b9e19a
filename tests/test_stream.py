"""The relay stream's error classification, against a real gRPC server returning each status code."""

from __future__ import annotations

import threading

import grpc
import pytest
from relays import ScriptedRelay
from test_collect import make_responses, wait_for

from flowpipe.ingest import stream
from flowpipe.ingest.config import CollectConfig, RelayConfig, TLSConfig
from flowpipe.ingest.resume import Attempt

C = grpc.StatusCode
# What the stream does with each status a relay (or a proxy in front of it) can end GetFlows with,
# and why. Retried: asking again may work. Fatal: the request or the credentials are wrong, and
# asking again would fail the same way, so the collector stops with one line.
EXPECTED = {
    C.UNAVAILABLE: "retry",  # relay restarting, connection refused or cut, proxy hung up
    C.DEADLINE_EXCEEDED: "retry",  # a proxy's stream timeout
    C.RESOURCE_EXHAUSTED: "retry",  # relay overloaded, or too many streams for now
    C.ABORTED: "retry",  # relay aborted the stream (e.g. node buffer reset)
    C.INTERNAL: "retry",  # HTTP/2 stream reset (RST_STREAM) by a proxy
    C.UNKNOWN: "retry",  # an error the relay did not classify
    C.CANCELLED: "retry",  # cancelled by the server side or a proxy
    C.INVALID_ARGUMENT: "fatal",  # a filter the relay refuses
    C.NOT_FOUND: "fatal",
    C.ALREADY_EXISTS: "fatal",
    C.PERMISSION_DENIED: "fatal",  # authorised client certificate missing
    C.FAILED_PRECONDITION: "fatal",
    C.OUT_OF_RANGE: "fatal",
    C.UNIMPLEMENTED: "fatal",  # not an Observer (wrong port)
    C.DATA_LOSS: "fatal",
    C.UNAUTHENTICATED: "fatal",
}


def test_every_status_code_is_classified():
    assert set(EXPECTED) == set(C) - {C.OK}
    assert {c.name for c, what in EXPECTED.items() if what == "retry"} == stream.RETRYABLE


def _config(address: str) -> tuple[RelayConfig, CollectConfig]:
    relay = RelayConfig("c1", address, tls=TLSConfig(enabled=False))
    cfg = CollectConfig(relays=[relay], backoff_initial=0.02, backoff_max=0.05)
    return relay, cfg


@pytest.mark.parametrize("code", sorted(EXPECTED, key=lambda c: c.name), ids=lambda c: c.name)
def test_status_is_retried_or_fatal(code):
    response = make_responses(1)[0].SerializeToString()

    def get_flows(request, context, n):
        yield response  # the stream was up: the code ends it mid-way, as a cut would
        context.abort(code, f"scripted {code.name}")

    events: list[tuple[str, str]] = []
    attempts: list[Attempt | None] = []
    with ScriptedRelay(get_flows) as relay:
        rc, cfg = _config(relay.address)
        fs = stream.FlowStream(
            rc,
            cfg,
            resume_since=lambda last: attempts.append(last) or None,
            on_messages=lambda batch: None,
            on_event=lambda kind, detail: events.append((kind, detail)),
        )
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                fs.run()
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        if EXPECTED[code] == "retry":
            wait_for(lambda: relay.calls >= 3, timeout=20, what="three attempts")
            fs.stop()
            t.join(10)
            assert outcome == [None]
            errors = [d for k, d in events if k == "error"]
            assert errors and errors[0] == f"{code.name}|scripted {code.name}"
            # each retried attempt is reported as cut after the response it delivered
            assert any(a is not None and a.cut and a.received == 1 for a in attempts)
        else:
            t.join(20)
            assert not t.is_alive(), "a fatal status was retried"
            assert relay.calls == 1
            [exc] = outcome
            assert isinstance(exc, stream.FatalStreamError)
            assert str(exc) == f"relay c1 ({relay.address}): {code.name}: scripted {code.name}"


def test_stop_during_a_stream_is_not_an_error():
    response = make_responses(1)[0].SerializeToString()
    held = threading.Event()

    def get_flows(request, context, n):
        yield response
        held.wait(10)  # the relay stays open; the collector stops

    events: list[tuple[str, str]] = []
    with ScriptedRelay(get_flows) as relay:
        rc, cfg = _config(relay.address)
        fs = stream.FlowStream(
            rc,
            cfg,
            resume_since=lambda last: None,
            on_messages=lambda batch: fs.stop(),
            on_event=lambda kind, detail: events.append((kind, detail)),
        )
        fs.run()
        held.set()
    assert [k for k, _ in events] == ["connected", "disconnected"]
    assert fs.last_attempt == Attempt(received=1, cut=False)
