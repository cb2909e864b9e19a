"""`flowpipe collect` against real gRPC replay servers on loopback: nothing lost, nothing twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pyarrow.parquet as pq
import pytest
from conftest import capture_files, free_port

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2
from flowpipe.codec import storage
from flowpipe.ingest.collector import CollectError, Collector
from flowpipe.ingest.config import CollectConfig, RelayConfig, TLSConfig
from flowpipe.serve.replay import ReplayServer
from flowpipe.store.layout import Store


def make_responses(
    n: int,
    *,
    start_ns: int | None = None,
    step_ns: int = 20_000_000,
    node: str = "node-1",
    seed: int = 0,
) -> list[observer_pb2.GetFlowsResponse]:
    """n distinct flows step_ns apart with uuids, ports and pods that vary."""
    start_ns = start_ns or time.time_ns() - n * step_ns - 60_000_000_000
    out = []
    for i in range(n):
        r = observer_pb2.GetFlowsResponse()
        f = r.flow
        f.uuid = str(uuid.UUID(int=(seed << 64) + i + 1))
        f.time.seconds, f.time.nanos = divmod(start_ns + i * step_ns, 1_000_000_000)
        f.verdict = 1 + (i % 7 == 0)
        f.node_name = node
        f.Type = 1
        f.event_type.type = 4
        f.source.namespace = "shop"
        f.source.pod_name = f"frontend-{i % 3}"
        f.source.labels.extend(["k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=shop"])
        f.destination.namespace = "shop"
        f.destination.pod_name = "backend-0"
        f.IP.source, f.IP.destination, f.IP.ipVersion = f"10.0.0.{i % 200}", "10.0.1.5", 1
        f.l4.TCP.source_port, f.l4.TCP.destination_port = 30000 + i % 20000, 80
        f.l4.TCP.flags.SYN = True
        f.Summary = "TCP Flags: SYN"
        r.node_name = node
        r.time.CopyFrom(f.time)
        out.append(r)
    return out


def stored(store: Store, cluster: str | None = None) -> list:
    flows = []
    for p in store.files(cluster=cluster):
        flows += storage.flows_from_columns(pq.read_table(p))
    return flows


def config(*relays: tuple[str, str], **kw) -> CollectConfig:
    cfg = CollectConfig(
        relays=[RelayConfig(c, a, tls=TLSConfig(enabled=False)) for c, a in relays],
        flush_interval=0.3,
        backoff_initial=0.05,
        backoff_max=0.5,
        resume_overlap=1.0,
        compact_every=0,
        quiet=True,
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


class Running:
    """A Collector in a background thread."""

    def __init__(self, cfg: CollectConfig, store: Store):
        self.collector = Collector(cfg, store)
        self.result: object = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result = self.collector.run(install_signals=False)
        except Exception as exc:  # surfaced by stop()
            self.result = exc

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self):
        self.collector.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "collector did not stop"
        return self.result

    def metric(self, name: str, **labels) -> float:
        return self.collector.registry.get_sample_value(name, labels) or 0.0


def wait_for(pred, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stored_count(run: Running, cluster: str) -> float:
    return run.metric("flowpipe_collector_flows_stored_total", cluster=cluster)


def test_two_relays_two_clusters_stored_exactly(store):
    a = make_responses(1500, node="a-node", seed=1)
    b = make_responses(900, node="b-node", seed=2)
    with ReplayServer(responses=a, follow=True) as ra, ReplayServer(responses=b, follow=True) as rb:
        with Running(config(("cluster1", ra.address), ("cluster2", rb.address)), store) as run:
            wait_for(
                lambda: (
                    stored_count(run, "cluster1") == 1500 and stored_count(run, "cluster2") == 900
                ),
                what="all flows stored",
            )
            assert run.stop() == 0
    for cluster, sent in (("cluster1", a), ("cluster2", b)):
        got = stored(store, cluster)
        assert len(got) == len(sent)
        by_uuid = {f.uuid: f for f in got}
        assert all(by_uuid[r.flow.uuid] == r.flow for r in sent), "a flow changed on the round trip"


def test_aborted_streams_lose_and_repeat_nothing(store):
    sent = make_responses(6000, step_ns=50_000_000)  # 300 s of flows; each stream dies after 700
    with ReplayServer(responses=sent, follow=True, abort_after=700) as relay:
        with Running(config(("c1", relay.address)), store) as run:
            wait_for(lambda: stored_count(run, "c1") >= 6000, timeout=60, what="6000 flows")
            time.sleep(0.5)
            reconnects = run.metric("flowpipe_collector_reconnects_total", cluster="c1")
            dups = run.metric("flowpipe_collector_duplicate_flows_total", cluster="c1")
            run.stop()
    got = stored(store)
    assert len(got) == 6000 and len({f.uuid for f in got}) == 6000
    assert reconnects >= 8
    assert dups > 0  # the resume overlap was re-sent and dropped, not stored twice


def test_background_compaction_while_collecting_loses_and_repeats_nothing(store, caplog):
    from flowpipe.store import compact

    caplog.set_level("INFO", logger="flowpipe.collect")
    # a live relay (fresh uuids, times now: the open hour) at 2,000 flows/s, committed every 50 ms;
    # the collector starts `flowpipe compact` in a child process every 0.5 s
    with ReplayServer(responses=make_responses(200), follow=True, rate=2000) as relay:
        cfg = config(
            ("c1", relay.address), flush_interval=0.05, compact_every=0.5, compact_settle=0.0
        )
        with Running(cfg, store) as run:
            wait_for(
                lambda: sum(compact.level(f) > 0 for f in store.files()) >= 2,
                timeout=90,
                what="two merges of the open hour",
            )
            run.stop()
            committed = stored_count(run, "c1")
    got = stored(store)
    assert committed > 0 and len(got) == committed and len({f.uuid for f in got}) == len(got)
    assert any("compaction: merged 16 files into 1" in r.getMessage() for r in caplog.records)
    assert not list(
        (store.root / ".incoming").glob("*.tmp")
    )  # a stopped child leaves nothing behind


def test_real_captures_through_replay_come_back_equal(store):
    paths = [str(p) for p in capture_files()]
    with ReplayServer(paths, follow=True, cluster="lab") as relay:
        expected = relay.imported
        with Running(config(("lab", relay.address)), store) as run:
            wait_for(lambda: stored_count(run, "lab") >= expected, what="captures stored")
            run.stop()
    from conftest import load_capture

    want = {
        r.flow.SerializeToString(deterministic=True)
        for p in capture_files()
        for r in load_capture(p)
    }
    got = {f.SerializeToString(deterministic=True) for f in stored(store)}
    assert got == want  # no uuids in these captures: deduplicated by fingerprint, nothing lost


def test_lost_events_are_stored_and_counted(store):
    sent = make_responses(500)
    with ReplayServer(responses=sent, follow=True, lost_events_every=100) as relay:
        with Running(config(("c1", relay.address)), store) as run:
            wait_for(lambda: stored_count(run, "c1") == 500, what="flows")
            wait_for(
                lambda: (
                    run.metric(
                        "flowpipe_collector_lost_events_total",
                        cluster="c1",
                        source="OBSERVER_EVENTS_QUEUE",
                    )
                    >= 5
                ),
                what="lost events",
            )
            run.stop()
    from flowpipe.views import query

    _, rows = query.fetch(
        store, "SELECT sum(num_events_lost) FROM lost_events WHERE cluster = 'c1'"
    )
    assert rows[0][0] >= 5


def test_resume_after_restart_asks_since_last_stored(store):
    first = make_responses(400, seed=3)
    with ReplayServer(responses=first, follow=True) as relay:
        with Running(config(("c1", relay.address)), store) as run:
            wait_for(lambda: stored_count(run, "c1") == 400, what="first batch")
            run.stop()
        relay.feed(make_responses(300, start_ns=time.time_ns() - 30_000_000_000, seed=4))
        with Running(config(("c1", relay.address)), store) as run:
            wait_for(lambda: stored_count(run, "c1") >= 300, what="second batch")
            time.sleep(0.5)
            run.stop()
    got = stored(store)
    assert len(got) == 700 and len({f.uuid for f in got}) == 700


def test_relay_outage_reconnects(store):
    sent = make_responses(300)
    with ReplayServer(responses=sent, follow=True) as relay:
        with Running(config(("c1", relay.address)), store) as run:
            wait_for(lambda: stored_count(run, "c1") == 300, what="flows")
            relay.stop()
            wait_for(
                lambda: run.metric("flowpipe_collector_relay_connected", cluster="c1") == 0,
                what="disconnect",
            )
            relay.feed(make_responses(200, start_ns=time.time_ns() - 5_000_000_000, seed=9))
            relay.restart()
            wait_for(lambda: stored_count(run, "c1") == 500, what="flows after the outage")
            assert run.metric("flowpipe_collector_relay_connected", cluster="c1") == 1
            assert run.metric("flowpipe_collector_reconnects_total", cluster="c1") >= 1
            run.stop()


def test_unreachable_relay_is_reported_and_retried(store, caplog):
    port = free_port()
    with Running(config(("c1", f"127.0.0.1:{port}")), store) as run:
        wait_for(
            lambda: (
                run.metric(
                    "flowpipe_collector_stream_errors_total", cluster="c1", code="UNAVAILABLE"
                )
                >= 2
            ),
            what="retries",
        )
        assert run.metric("flowpipe_collector_relay_connected", cluster="c1") == 0
        assert run.stop() == 0
    assert any(
        "[c1] relay 127.0.0.1" in r.getMessage() and "UNAVAILABLE" in r.getMessage()
        for r in caplog.records
    )


def test_missing_tls_file_is_one_clear_fatal_line(store, tmp_path):
    cfg = config(("c1", f"127.0.0.1:{free_port()}"))
    cfg.relays[0].tls = TLSConfig(enabled=True, ca_files=[str(tmp_path / "nope.crt")])
    run = Running(cfg, store)
    with run:
        run.thread.join(10)
    assert isinstance(run.result, CollectError)
    assert (
        str(run.result)
        == f"relay c1 (127.0.0.1:{cfg.relays[0].address.split(':')[1]}): cannot read CA file {tmp_path / 'nope.crt'}: No such file or directory"
    )


def _collect_cmd(store: Store, address: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "flowpipe.cli",
        "collect",
        "--store",
        str(store.root),
        "--plaintext",
        "--relay",
        f"c1={address}",
        "--flush-interval",
        "0.2s",
        "--backoff-max",
        "0.5s",
        "--resume-overlap",
        "1s",
        "--quiet",
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_and_restart_lose_nothing(store):
    sent = make_responses(20000, step_ns=5_000_000)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with ReplayServer(responses=sent, follow=True) as relay:
        for kill_after in (0.8, 1.3, 1.1):
            proc = subprocess.Popen(
                _collect_cmd(store, relay.address), env=env, stderr=subprocess.PIPE
            )
            time.sleep(kill_after)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
        proc = subprocess.Popen(_collect_cmd(store, relay.address), env=env, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(stored(store)) < 20000:
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=30)[1].decode()
        assert proc.returncode == 0, err
    got = stored(store)  # reads every file: none is truncated
    assert len(got) == 20000 and len({f.uuid for f in got}) == 20000
    # the killed writers' temporary files were removed by the collector that followed them
    assert not list((store.root / ".incoming").glob("*.tmp"))
    assert all(p.suffix == ".parquet" for p in store.files())


def test_server_side_allow_and_deny_filters(store):
    from flowpipe.ingest.config import parse_filters

    sent = make_responses(300, seed=81)  # pods frontend-0/1/2, every 7th flow DROPPED
    with ReplayServer(responses=sent, follow=True) as relay:
        cfg = config(("c1", relay.address))
        # the shape `hubble observe --print-raw-filters` prints
        cfg.relays[0].allow = parse_filters(
            'allowlist:\n- \'{"source_pod":["shop/frontend-1"]}\'\n', "--allow"
        )
        cfg.relays[0].deny = parse_filters('[{"verdict":["DROPPED"]}]', "--deny")
        want = [
            r.flow.uuid
            for r in sent
            if r.flow.source.pod_name == "frontend-1" and r.flow.verdict != 2
        ]
        with Running(cfg, store) as run:
            wait_for(lambda: stored_count(run, "c1") == len(want), what="filtered flows")
            time.sleep(0.5)
            run.stop()
    assert sorted(f.uuid for f in stored(store)) == sorted(want)


# ---- filters, as `hubble observe` means them (issue: a second --allow silently replaced the first)


def _pod_matches(endpoint, selector: str) -> bool:
    """Hubble's namespace/pod-prefix match, written out here independently of serve's SQL."""
    namespace, _, prefix = selector.partition("/")
    return endpoint.namespace == namespace and endpoint.pod_name.startswith(prefix)


def test_collect_cli_with_two_allow_and_one_deny_filters(store):
    from conftest import load_capture

    allow = ['{"source_pod":["bookinfo/ratings"]}', '{"destination_pod":["bookinfo/details"]}']
    deny = '{"verdict":["REDIRECTED"]}'
    flows = [r.flow for p in capture_files() for r in load_capture(p)]
    # kept: matches any allow filter and no deny filter
    want = {
        f.SerializeToString(deterministic=True)
        for f in flows
        if (
            _pod_matches(f.source, "bookinfo/ratings")
            or _pod_matches(f.destination, "bookinfo/details")
        )
        and f.verdict != flow_pb2.REDIRECTED
    }
    only_second = {
        f.SerializeToString(deterministic=True)
        for f in flows
        if _pod_matches(f.destination, "bookinfo/details") and f.verdict != flow_pb2.REDIRECTED
    }
    assert 0 < len(only_second) < len(want)  # the old last-flag-wins request would store fewer
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with ReplayServer([str(p) for p in capture_files()], follow=True, cluster="lab") as relay:
        args = ["--allow", allow[0], "--allow", allow[1], "--deny", deny]
        proc = subprocess.Popen(
            _collect_cmd(store, relay.address, *args), env=env, stderr=subprocess.PIPE
        )
        try:
            wait_for(lambda: len(stored(store)) >= len(want), timeout=60, what="filtered flows")
            time.sleep(1.0)  # anything beyond the filters would arrive now
        finally:
            proc.send_signal(signal.SIGTERM)
            err = proc.communicate(timeout=30)[1].decode()
    assert proc.returncode == 0, err
    got = [f.SerializeToString(deterministic=True) for f in stored(store)]
    assert len(got) == len(set(got)) and set(got) == want
    assert "with 2 allow and 1 deny filters" not in err  # --quiet: no INFO lines


def test_sigterm_during_start_up_is_a_clean_stop(store, tmp_path):
    """SIGTERM before the collector is running (here: while it reads its config file) used to
    kill it with the default action (exit -15, seen in the crash suite); it is a clean stop."""
    fifo = tmp_path / "collect.yaml"
    os.mkfifo(fifo)
    with ReplayServer(responses=make_responses(10), follow=True) as relay:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowpipe.cli", "collect", "--config", str(fifo), "--quiet"],
            stderr=subprocess.PIPE,
        )
        try:
            fd = None
            deadline = time.monotonic() + 60
            while fd is None:  # the collector has opened the file for reading: it is in collect
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline
                    time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            text = f"store: {store.root}\nrelays:\n  - {{cluster: c1, address: '{relay.address}', plaintext: true}}\n"
            os.write(fd, text.encode())
            os.close(fd)
            err = proc.communicate(timeout=60)[1].decode()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_lost_events_are_one_line_per_interval_with_exact_counts(store, caplog):
    """A relay reporting a loss every 25 flows: 20 reports, one WARNING while collecting and one
    with the totals at the stop; the metric and the store count all 20."""
    caplog.set_level("INFO", logger="flowpipe.collect")
    sent = make_responses(500, seed=15)
    with ReplayServer(responses=sent, follow=True, lost_events_every=25) as relay:
        with Running(config(("c1", relay.address), log_every=600.0), store) as run:
            wait_for(lambda: stored_count(run, "c1") == 500, what="flows")
            lost = "flowpipe_collector_lost_events_total"
            wait_for(
                lambda: run.metric(lost, cluster="c1", source="OBSERVER_EVENTS_QUEUE") == 20,
                what="20 lost events counted",
            )
            during = [r.getMessage() for r in caplog.records if "events lost" in r.getMessage()]
            assert run.stop() == 0
    lines = [r.getMessage() for r in caplog.records if "events lost" in r.getMessage()]
    assert during == [
        "[c1] relay reports 1 events lost (OBSERVER_EVENTS_QUEUE); further reports are summed, a line per interval"
    ]
    assert lines[1:] == [
        "[c1] relay reports 19 events lost (OBSERVER_EVENTS_QUEUE) in 19 reports since the last line; 20 since start"
    ]
    from flowpipe.views import query

    _, rows = query.fetch(
        store, "SELECT count(*), sum(num_events_lost) FROM lost_events WHERE cluster = 'c1'"
    )
    assert rows == [(20, 20)]
