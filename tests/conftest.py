"""Shared fixtures: real Hubble captures, temporary stores, loopback ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from google.protobuf import json_format

from flowpipe.api.observer import observer_pb2
from flowpipe.store.layout import Store

DATA = Path(__file__).parent / "data"
CAPTURES = DATA / "hubble-otel"


def capture_files() -> list[Path]:
    """The real hubble-otel captures (hubble observe -o jsonpb), sorted by name."""
    return sorted(CAPTURES.glob("*.jsonl"))


def load_capture(path: Path) -> list[observer_pb2.GetFlowsResponse]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(json_format.Parse(line, observer_pb2.GetFlowsResponse()))
    return out


@pytest.fixture(scope="session")
def captures() -> list[observer_pb2.GetFlowsResponse]:
    """Every response of every real capture, in file order."""
    out = []
    for path in capture_files():
        out += load_capture(path)
    return out


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store")
    s.ensure()
    return s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One SeaweedFS S3 server for the session (tests use fresh prefixes of its bucket)."""
    from tests.support import seaweed

    server = seaweed.start(tmp_path_factory.mktemp("seaweed"))
    yield server
    seaweed.stop(server.proc)


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The S3 server, with the standard AWS environment pointing at it (for this test)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


# ---------------------------------------------------------------- Spark

_spark_clusters: list = []


@pytest.fixture(scope="session")
def spark_remote(tmp_path_factory) -> str:
    """sc://127.0.0.1:PORT of a real Spark cluster on loopback (a master, two workers, Spark
    Connect), started once per test session; its logs are attached to failing tests."""
    from tests.support.spark_cluster import SparkCluster, SparkClusterError
    from tests.support.tools import require

    if os.environ.get("FLOWPIPE_TEST_SPARK_REMOTE"):  # a running cluster, while iterating
        yield os.environ["FLOWPIPE_TEST_SPARK_REMOTE"]
        return
    require("java", "openjdk-17-jre-headless")
    cluster = SparkCluster(tmp_path_factory.mktemp("spark"), workers=2)
    _spark_clusters.append(cluster)
    try:
        cluster.start()
    except SparkClusterError as exc:
        pytest.fail(f"cannot start the test Spark cluster: {exc}", pytrace=False)
    yield cluster.remote
    cluster.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _spark_clusters and "spark_remote" in getattr(item, "fixturenames", ()):
        rep.sections.append(("spark cluster logs", _spark_clusters[-1].logs()))


def pytest_collection_modifyitems(config, items):
    for item in items:  # `-m "not spark"` skips the tests that need the cluster
        if "spark_remote" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.spark)
            # the first one also waits for the cluster to start (JVMs on a busy machine)
            item.add_marker(pytest.mark.timeout(900))
