"""`flowpipe replay` in its own process, for tests that kill and restart a relay."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from flowpipe.errors import ConfigError


class ReplayProcess:
    """`flowpipe replay` as a subprocess on 127.0.0.1:port, for tests that kill and restart a relay."""

    def __init__(
        self, paths: Sequence[str], port: int, *, extra_args: Sequence[str] = (), **options
    ):
        self.paths = [str(p) for p in paths]
        self.port = port
        self.args = list(extra_args)
        for name, value in options.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                self.args.append(flag)
            elif value not in (None, False, 0):
                self.args += [flag, str(value)]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> ReplayProcess:
        """Spawn and wait until the port accepts connections."""
        cmd = [
            sys.executable,
            "-m",
            "flowpipe.cli",
            "replay",
            *self.paths,
            "--listen",
            f"127.0.0.1:{self.port}",
            "--plaintext",
            *self.args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (
                    self.proc.stderr.read().decode(errors="replace").strip()
                    if self.proc.stderr
                    else ""
                )
                raise ConfigError(f"replay exited with {self.proc.returncode}: {err}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.stop()
        raise ConfigError(f"replay did not listen on 127.0.0.1:{self.port} within {timeout:.0f}s")

    def stop(self) -> None:
        """Terminate (SIGTERM, then SIGKILL) and wait."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self, delay: float = 0.0) -> None:
        self.stop()
        time.sleep(delay)
        self.start()

    def __enter__(self) -> ReplayProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
