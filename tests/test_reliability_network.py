"""Reliability 2 and 3: a relay gone for 60 s, and a peer that goes silent without closing."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from test_collect import Running, config, make_responses, stored, stored_count, wait_for

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2
from flowpipe.serve.replay import ReplayServer
from flowpipe.views import query

pytestmark = pytest.mark.reliability


@pytest.mark.slow
def test_relay_outage_of_60s(store):
    backoff_cap = 2.0
    start = time.time_ns() - 120_000_000_000
    before = make_responses(2000, start_ns=start, step_ns=5_000_000, seed=21)
    with ReplayServer(responses=before, follow=True) as relay:
        cfg = config(("c1", relay.address), backoff_max=backoff_cap)
        with Running(cfg, store) as run:
            wait_for(lambda: stored_count(run, "c1") == 2000, what="flows before the outage")
            relay.stop()
            down_at = time.monotonic()
            wait_for(
                lambda: run.metric("flowpipe_collector_relay_connected", cluster="c1") == 0,
                what="disconnect",
            )
            # while it is down, the relay's node buffer overflows: it will report the loss
            lost = observer_pb2.GetFlowsResponse(
                lost_events=flow_pb2.LostEvent(
                    source=flow_pb2.HUBBLE_RING_BUFFER, num_events_lost=1234
                ),
                node_name="c1-node",
            )
            lost.time.FromNanoseconds(time.time_ns() - 30_000_000_000)
            relay.feed(
                [lost, *make_responses(500, start_ns=time.time_ns() - 20_000_000_000, seed=22)]
            )
            errors = "flowpipe_collector_stream_errors_total"
            time.sleep(max(0.0, 50 - (time.monotonic() - down_at)))
            tried_by_50s = run.metric(errors, cluster="c1", code="UNAVAILABLE")
            time.sleep(max(0.0, 60 - (time.monotonic() - down_at)))
            tried_by_60s = run.metric(errors, cluster="c1", code="UNAVAILABLE")
            relay.restart()
            back_at = time.monotonic()
            wait_for(
                lambda: run.metric("flowpipe_collector_relay_connected", cluster="c1") == 1,
                timeout=60,
                what="reconnect after the relay came back",
            )
            reconnect_s = time.monotonic() - back_at
            wait_for(lambda: stored_count(run, "c1") == 2500, what="flows after the outage")
            wait_for(
                lambda: (
                    run.metric(
                        "flowpipe_collector_lost_events_total",
                        cluster="c1",
                        source="HUBBLE_RING_BUFFER",
                    )
                    == 1234
                ),
                what="lost events counted",
            )
            run.stop()
    print(
        f"\noutage: reconnected {reconnect_s:.2f}s after the relay returned (cap {backoff_cap}s), "
        f"{tried_by_60s:.0f} failed attempts during 60 s"
    )
    # it kept trying to the end of the outage (it never gives up), and reconnected on its own
    assert 0 < tried_by_50s < tried_by_60s
    _, rows = query.fetch(
        store, "SELECT lost_source, num_events_lost FROM lost_events WHERE cluster = 'c1'"
    )
    assert rows == [("HUBBLE_RING_BUFFER", 1234)]
    assert len({f.uuid for f in stored(store)}) == 2500


class FreezingProxy:
    """A TCP forwarder on loopback that can stop forwarding while keeping both sockets open."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.frozen = threading.Event()
        self.connections = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            upstream = socket.create_connection(self.target)
            frozen_at_accept = self.frozen.is_set()
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pipe, args=(a, b, frozen_at_accept), daemon=True
                ).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, born_frozen: bool) -> None:
        src.settimeout(0.2)
        while not self._stop.is_set():
            if self.frozen.is_set() and not born_frozen:
                time.sleep(0.05)  # hold the bytes: no data, no ping answers, no FIN
                continue
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def test_stalled_peer_is_noticed_and_redialled(store):
    keepalive, timeout = 1.0, 1.0
    start = time.time_ns() - 60_000_000_000
    with ReplayServer(responses=make_responses(300, start_ns=start, seed=31), follow=True) as relay:
        proxy = FreezingProxy(("127.0.0.1", relay.port))
        try:
            cfg = config(("c1", proxy.address), keepalive=keepalive, keepalive_timeout=timeout)
            with Running(cfg, store) as run:
                wait_for(lambda: stored_count(run, "c1") == 300, what="flows before the stall")
                proxy.frozen.set()  # the old connection goes silent; new ones work
                frozen_at = time.monotonic()
                relay.feed(make_responses(200, start_ns=time.time_ns() - 10_000_000_000, seed=32))
                wait_for(
                    lambda: run.metric("flowpipe_collector_reconnects_total", cluster="c1") >= 1,
                    timeout=60,
                    what="re-dial after the stall",
                )
                noticed_s = time.monotonic() - frozen_at
                wait_for(lambda: stored_count(run, "c1") == 500, what="flows after the re-dial")
                # the keepalive found the dead connection (the idle watchdog is off here)
                errors = "flowpipe_collector_stream_errors_total"
                assert run.metric(errors, cluster="c1", code="UNAVAILABLE") >= 1
                assert run.metric(errors, cluster="c1", code="idle") == 0
                run.stop()
        finally:
            proxy.close()
    print(
        f"\nstall: noticed and re-dialled {noticed_s:.2f}s after the peer went silent "
        f"(keepalive {keepalive}s + ping timeout {timeout}s)"
    )
    assert proxy.connections >= 2  # a new connection, while the frozen one was never closed
    assert len({f.uuid for f in stored(store)}) == len(stored(store)) == 500


def test_silent_but_alive_peer_caught_by_idle_watchdog(store):
    """A peer that answers pings but never sends flows is re-dialled after --idle-timeout."""
    with ReplayServer(responses=make_responses(50, seed=41), follow=True) as relay:
        cfg = config(("c1", relay.address), idle_timeout=1.0)
        with Running(cfg, store) as run:
            wait_for(lambda: stored_count(run, "c1") == 50, what="flows")
            wait_for(
                lambda: (
                    run.metric("flowpipe_collector_stream_errors_total", cluster="c1", code="idle")
                    >= 2
                ),
                timeout=15,
                what="idle re-dials",
            )
            run.stop()
    assert len(stored(store)) == 50
