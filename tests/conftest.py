"""Shared fixtures: real Hubble captures, temporary stores, loopback ports."""

from __future__ import annotations

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
