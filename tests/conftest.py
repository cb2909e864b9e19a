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
