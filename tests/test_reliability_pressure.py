"""Reliability 6 and 9: a runaway rule, and check + 50 scrapers while collect writes at full speed."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import free_port
from test_collect import Running, config, make_responses, stored, stored_count, wait_for

from flowpipe.export import exporter as export
from flowpipe.lab import generate as lab
from flowpipe.rules import check
from flowpipe.serve.replay import ReplayServer

pytestmark = pytest.mark.reliability

RUNAWAY = """-- flowpipe: stage=runaway
-- rule: cross-join
-- why: a careless rule that multiplies the store by itself three times
-- expect: none
SELECT a.time FROM flows a, flows b, flows c WHERE a.verdict <> b.verdict OR b.node <> c.node;
"""
TRIVIAL = """-- flowpipe: stage=trivial
-- rule: any
-- why: a baseline for memory
-- expect: at_least 1
SELECT * FROM flows;
"""


def peak_rss_of_check(
    store, rule_file, timeout: float, limit: str
) -> tuple[float, float, str, int]:
    """(seconds, peak RSS in MB, output, exit code) of `flowpipe check` in its own process."""
    cmd = [
        sys.executable,
        "-m",
        "flowpipe.cli",
        "check",
        str(rule_file),
        "--store",
        str(store.root),
        "--since",
        "1d",
        "--rule-timeout",
        str(timeout),
        "--memory-limit",
        limit,
        "--format",
        "json",
    ]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.02)
    out = proc.stdout.read().decode()
    return time.monotonic() - started, peak / 1024, out, proc.returncode


def test_runaway_rule_is_interrupted_while_collection_goes_on(store, tmp_path):
    start = time.time_ns() - 1_800_000_000_000
    history = make_responses(20_000, start_ns=start, step_ns=50_000_000, seed=71)
    live = make_responses(
        3000, start_ns=time.time_ns() - 60_000_000_000, step_ns=10_000_000, seed=72
    )
    runaway, trivial = tmp_path / "runaway.sql", tmp_path / "trivial.sql"
    runaway.write_text(RUNAWAY)
    trivial.write_text(TRIVIAL)
    with ReplayServer(responses=history, follow=True) as relay:
        with Running(config(("c1", relay.address)), store) as run:
            wait_for(lambda: stored_count(run, "c1") == 20_000, timeout=60, what="history stored")
            _, base_mb, _, _ = peak_rss_of_check(store, trivial, 30, "256MB")
            feeder = threading.Thread(
                target=lambda: [
                    relay.feed(live[i : i + 300]) or time.sleep(0.3)
                    for i in range(0, len(live), 300)
                ]
            )
            feeder.start()
            seconds, peak_mb, out, code = peak_rss_of_check(store, runaway, 2.0, "256MB")
            feeder.join()
            wait_for(
                lambda: stored_count(run, "c1") == 23_000,
                timeout=60,
                what="flows collected meanwhile",
            )
            run.stop()
    guard = "memory limit" if "out of memory" in out else "timeout"
    print(
        f"\nrunaway: stopped by the {guard}; process took {seconds:.2f}s with --rule-timeout 2; peak RSS {peak_mb:.0f} MB "
        f"(baseline check {base_mb:.0f} MB, --memory-limit 256MB)"
    )
    assert code == 2, out  # the rule could not run: an error, not a pass or a fail
    assert '"rule": "cross-join"' in out, out
    # whichever guard fires first (the timeout, or the memory limit when DuckDB fills it sooner)
    # must stop it with its reason named
    assert '"status": "error"' in out and (
        "timeout" in out.lower() or "out of memory (--memory-limit 256MB)" in out
    ), out
    assert peak_mb <= base_mb + 256, (peak_mb, base_mb)
    assert len({f.uuid for f in stored(store)}) == 23_000


def test_check_and_fifty_scrapers_while_collect_writes(tmp_path):
    from flowpipe.store.layout import Store

    store = Store(tmp_path / "store")
    store.ensure()
    now = time.time_ns()
    lab_flows = [
        r for rs in lab.generate_lab(5, start_ns=now - 400 * 10**9, seed=73).values() for r in rs
    ]
    with ReplayServer(responses=lab_flows, follow=True, rate=4000) as relay:
        cfg = config(("cluster1", relay.address), flush_interval=0.2)
        with Running(cfg, store) as run:
            wait_for(lambda: stored_count(run, "cluster1") > 2000, what="collection under way")
            exporter = export.Exporter(store, ["stage5"], interval=0.5, window=3600)
            listen = exporter.serve(f"127.0.0.1:{free_port()}")
            exporter.start()
            stop = threading.Event()
            scrapes: list[int] = []
            failures: list[str] = []
            served = [0] * 50  # scrapes answered, per scraper

            def scraper(i: int) -> None:
                while not stop.is_set():
                    try:
                        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as resp:
                            resp.read()
                            scrapes.append(resp.status)
                            served[i] += 1
                    except Exception as exc:  # any failure is a finding
                        failures.append(repr(exc))

            checks = []
            with ThreadPoolExecutor(50) as pool:
                for i in range(50):
                    pool.submit(scraper, i)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    checks.append(check.run_check(store, ["stage5"], since="1h"))
                stop.set()
            exporter.stop()
            stored_before_stop = stored_count(run, "cluster1")
            run.stop()
    print(
        f"\npressure: {len(scrapes)} scrapes by 50 scrapers in 10 s, {len(failures)} failed; "
        f"{len(checks)} checks, {stored_before_stop} flows collected meanwhile"
    )
    # every scraper was answered, every answer a 200: none starved or refused while check ran
    assert failures == [] and min(served) > 0 and set(scrapes) == {200}
    assert checks and all(r.status != "error" for rep in checks for r in rep.results), [
        r.message for rep in checks for r in rep.results if r.status == "error"
    ]
    assert exporter.errors == {"rule": 0, "check": 0, "store": 0}
    assert stored_before_stop > 2000
