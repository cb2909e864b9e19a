"""Helpers shared by the benchmarks: templates, the Node peer, free ports, RSS, results files."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEER = BENCH / "peer"
RESULTS = BENCH / ".results"
TEMPLATES = 20_000  # distinct flow templates the peer cycles through (uuid and time differ)

sys.path.insert(0, str(BENCH))
import mix  # noqa: E402


def templates(n: int = TEMPLATES, seed: int = 1, observed_by: str | None = None) -> Path:
    """A cached template file for the peer (rebuilt when mix.py changes)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"templates-{n}-{seed}-{observed_by or 'all'}.bin"
    if not path.exists() or path.stat().st_mtime < Path(mix.__file__).stat().st_mtime:
        tmp = path.with_suffix(".tmp")
        mix.write_templates(tmp, n, seed=seed, observed_by=[observed_by] if observed_by else None)
        os.replace(tmp, path)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_peer_installed() -> None:
    """Exit with a hint when node or the peer's node_modules are missing."""
    if not shutil.which("node"):
        sys.exit("bench: node (Node.js >= 18) is not installed")
    if not (PEER / "node_modules" / "@grpc" / "grpc-js").is_dir():
        sys.exit("bench: run `make bench-deps` first (npm ci in bench/peer)")


class Peer:
    """The Node.js fake Relay (bench/peer/server.js) as a child process."""

    def __init__(
        self,
        template_file: Path,
        flows: int,
        *,
        rate: float = 0,
        end: bool = False,
        instance: str | None = None,
        sim_rate: int = mix.RATE,
        start_ns: int | None = None,
    ):
        check_peer_installed()
        cmd = [
            "node",
            str(PEER / "server.js"),
            "--templates",
            str(template_file),
            "--flows",
            str(flows),
            "--port",
            "0",
            "--sim-rate",
            str(sim_rate),
        ]
        if rate:
            cmd += ["--rate", str(rate)]
        if end:
            cmd.append("--end")
        if instance:
            cmd += ["--instance", instance]
        if start_ns is not None:
            cmd += ["--start-ns", str(start_ns)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            err = self.proc.stderr.read()
            raise RuntimeError(f"peer did not start: {line.strip()} {err.strip()}")
        self.port = int(line.split()[1])
        self.address = f"127.0.0.1:{self.port}"
        self.stderr_lines: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip())

    def send_rate(self) -> float | None:
        """The msgs/s the peer reported (after it sent everything or was stopped)."""
        for line in reversed(self.stderr_lines):
            if "msgs/s" in line:
                return float(line.rsplit("=", 1)[1].split()[0])
        return None

    def stop(self) -> None:
        """SIGTERM the peer and wait for its report."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of pid in bytes (empty when it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used by pid so far."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _stat_fields(path: str) -> list[str]:
    with open(path) as fh:
        return fh.read().rsplit(")", 1)[1].split()


def descendants(pid: int) -> list[int]:
    """pid's live child processes, their children, and so on."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(_stat_fields(str(stat))[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kind(pid: int) -> str:
    """What a collector's process is, from its command line."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    if "flowpipe.ingest.receiver" in args:
        return "receiver"
    if "compact" in args:
        return "compaction"
    if "collect" in args:
        return "collector"
    if "-c" in args:
        return "views database"
    return Path(args[0]).name


class TreeUsage:
    """CPU seconds of a process and its descendants (receivers, compaction), per process kind
    and per thread, and peak RSS of the process and of all of them together, from /proc."""

    def __init__(self, pid: int):
        self.pid = pid
        self.threads: dict[tuple[int, int], float] = {}  # (pid, tid) -> CPU seconds
        self.procs: dict[int, tuple[str, float]] = {}  # pid -> (kind, CPU seconds), last sample
        self.rss = 0  # the process alone, at the last sample
        self.tree_rss = 0  # the process and its descendants, at the last sample
        self.peak_rss = 0  # the process alone (its high-water mark)
        self.peak_tree_rss = 0  # the process and its descendants at one moment
        self.total = 0.0

    def sample(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        total_rss = 0
        total = 0.0
        procs = {}
        for pid in [self.pid, *descendants(self.pid)]:
            try:
                fields = _stat_fields(f"/proc/{pid}/stat")
            except (OSError, IndexError):
                continue
            own, reaped = (
                (int(fields[11]) + int(fields[12])) / tick,
                (int(fields[13]) + int(fields[14])) / tick,
            )
            total += own + reaped
            procs[pid] = (self.procs.get(pid, ("",))[0] or _kind(pid), own)
            if reaped:  # children it waited for: finished compactions, the views database
                procs[-pid] = ("finished children", reaped)
            status = proc_status(pid)
            total_rss += status.get("VmRSS", 0)
            if pid == self.pid:
                self.rss = status.get("VmRSS", 0)
                self.peak_rss = max(self.peak_rss, status.get("VmHWM", 0))
            for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
                try:
                    tf = _stat_fields(str(stat))
                except (OSError, IndexError):
                    continue
                self.threads[(pid, int(stat.parent.name))] = (int(tf[11]) + int(tf[12])) / tick
        if total >= self.total:
            self.total, self.procs = total, procs
        self.tree_rss = total_rss
        self.peak_tree_rss = max(self.peak_tree_rss, total_rss)

    def cpu(self) -> float:
        """CPU seconds of the whole tree at the last sample."""
        return self.total

    def by_kind(self) -> dict[str, float]:
        """CPU seconds per process kind at the last sample."""
        out: dict[str, float] = {}
        for kind, cpu in self.procs.values():
            out[kind] = out.get(kind, 0.0) + cpu
        return out

    def free_cores_seconds(self) -> float:
        """Seconds the work would take with every core free: its CPU spread over the cores, but
        never less than its busiest process (a pipeline is as fast as its slowest stage, and a
        Python process counts as one stage: its threads take turns holding the GIL)."""
        busiest = max((cpu for _, cpu in self.procs.values()), default=0.0)
        return max(busiest, self.total / (os.cpu_count() or 1))


def save_result(name: str, figures: dict) -> None:
    """Write a benchmark's figures to bench/.results/<name>.json for bench/run.py."""
    RESULTS.mkdir(exist_ok=True)
    figures = {"benchmark": name, "at": time.strftime("%Y-%m-%d %H:%M:%S"), **figures}
    (RESULTS / f"{name}.json").write_text(json.dumps(figures, indent=1) + "\n")


def load_note() -> str:
    """One line on how busy the machine is (other work skews every figure here)."""
    one, five, _ = os.getloadavg()
    note = f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"
    if one > 0.7 * (os.cpu_count() or 1):
        note += " -- BUSY: figures will be low and noisy"
    return note


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"
