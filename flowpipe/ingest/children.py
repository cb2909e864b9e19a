"""The collector's child processes: compaction every minute, the views database at start.

Both run DuckDB or merge Parquet: seconds to minutes of CPU and 50-150 MB of memory that stay
out of the collector (no GIL contention with receiving, memory back to the OS at exit)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys

from flowpipe.store.layout import Store

log = logging.getLogger("flowpipe.collect")


class Compactor:
    """`flowpipe compact --no-wait` in a child process, one at a time; outcomes go to the log."""

    def __init__(self, store: Store, *, settle: float, keep: float | None):
        self.cmd = [sys.executable, "-m", "flowpipe.cli", "compact", "--store", store.url]
        self.cmd += ["--no-wait", "--settle", f"{settle}s"]
        if keep is not None:
            self.cmd += ["--keep", f"{keep}s"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start a compaction unless one still runs."""
        if self.proc is not None:
            if self.proc.poll() is None:
                return
            self.reap()
        try:
            self.proc = subprocess.Popen(
                self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        except OSError as exc:
            log.error("compaction could not start: %s", exc)

    def poll(self) -> None:
        """Log the outcome of a compaction that has finished."""
        if self.proc is not None and self.proc.poll() is not None:
            self.reap()

    def reap(self) -> None:
        """Wait for the child and log how it went."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        out, err = proc.communicate()
        if proc.returncode == 0:
            summary = out.strip().splitlines()[-1] if out.strip() else ""
            if summary and not summary.startswith(("merged 0 files into 0", "skipped")):
                log.info("compaction: %s", summary)
        else:
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            log.error("compaction failed: %s", lines[-1] if lines else f"exit {proc.returncode}")

    def stop(self) -> None:
        """Ask a running compaction to stop (it drops its unfinished merge) and wait."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.reap()


def start_database(store: Store) -> subprocess.Popen:
    """Refresh <store>/flowpipe.duckdb (the views, for the duckdb CLI) in a child process."""
    code = "import sys; from flowpipe.store.layout import Store; from flowpipe.views import catalog; catalog.write_database(Store.open(sys.argv[1]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, store.url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def database_error(proc: subprocess.Popen, store: Store) -> str | None:
    """Wait for the database child: None when it succeeded, else its error as one line."""
    err = proc.communicate()[1]
    if proc.returncode == 0:
        return None
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return lines[-1].split(": ", 1)[-1] if lines else f"cannot write {store.url}/flowpipe.duckdb"
