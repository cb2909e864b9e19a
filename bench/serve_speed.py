"""`flowpipe serve` over a big store (bench/bigstore.py): time to first flow and flows/s of GetFlows.

The server runs as `flowpipe serve --plaintext` on a loopback port; the client is plain Python
grpcio with the single-threaded unary-stream channel option and no response deserializer (it
counts raw GetFlowsResponse bytes), so the figures are the server's. `--since` is relative to
the store's newest flow (the cached store's flows lie in the past). Each query is bounded by
--max-flows and --max-seconds; --profile samples the server with py-spy during one query.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import bigstore
import grpc
import grpc.experimental
from common import free_port, load_note, save_result

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2

Req = observer_pb2.GetFlowsRequest
F = flow_pb2.FlowFilter
SEC = 1_000_000_000

# name, whitelist (hubble observe flags they stand for)
FILTERS = {
    "none": [],
    # --namespace shop --label app=frontend: frontend pods of shop, either direction
    "shop+label": [
        F(source_pod=["shop/"], source_label=["app=frontend"]),
        F(destination_pod=["shop/"], destination_label=["app=frontend"]),
    ],
    "dropped": [F(verdict=[flow_pb2.DROPPED])],  # --verdict DROPPED
}


def start_server(store_root: Path, port: int, timeout: float = 120.0) -> subprocess.Popen:
    """`flowpipe serve` on 127.0.0.1:port, returned once it listens."""
    exe = shutil.which("flowpipe", path=str(Path(sys.executable).parent)) or "flowpipe"
    proc = subprocess.Popen(
        [exe, "serve", "--store", str(store_root), "--listen", f"127.0.0.1:{port}", "--plaintext"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "listening" in line or not line:
            break
    if "listening" not in line:
        proc.kill()
        raise SystemExit(f"serve_speed: flowpipe serve did not start: {line.strip()}")
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining
    return proc


def query(address: str, req: Req, max_flows: int, max_seconds: float) -> dict:
    """Seconds to the first response, responses and bytes received, and responses/s after the first."""
    options = [(grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)]
    with grpc.insecure_channel(address, options=options) as channel:
        call = channel.unary_stream(
            "/observer.Observer/GetFlows",
            request_serializer=Req.SerializeToString,
            response_deserializer=None,
        )
        started = time.perf_counter()
        first = None
        n = size = 0
        stream = call(req, timeout=max_seconds)  # a query that sends nothing for that long ends too
        try:
            for raw in stream:
                if first is None:
                    first = time.perf_counter()
                n += 1
                size += len(raw)
                if n >= max_flows or time.perf_counter() - started > max_seconds:
                    stream.cancel()
                    break
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
        end = time.perf_counter()
    rate = (n - 1) / (end - first) if first is not None and n > 1 and end > first else 0.0
    return {
        "first_s": round(first - started, 3) if first else None,
        "flows": n,
        "total_s": round(end - started, 2),
        "flows_per_s": round(rate),
        "bytes_per_flow": round(size / n) if n else 0,
        "truncated": n >= max_flows or end - started >= max_seconds,
    }


def profile(pid: int, seconds: float, out: Path) -> str:
    """Top frames of the server while it answers (py-spy), as a few lines."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not spy:
        return "py-spy not installed"
    subprocess.run(
        [
            spy,
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(seconds)),
            "-r",
            "100",
            "-f",
            "raw",
            "-o",
            str(out),
        ],
        capture_output=True,
        timeout=seconds + 60,
    )
    if not out.exists():
        return "py-spy recorded nothing (ptrace not permitted?)"
    own: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not count.isdigit() or any(
            "wait" in f or "_worker" in f.split(" ")[0] for f in frames[-1:]
        ):
            continue
        total += int(count)
        for f in dict.fromkeys(frames):
            own[f] = own.get(f, 0) + int(count)
    top = sorted(own.items(), key=lambda kv: -kv[1])
    keep = [
        f"{100 * c / total:5.1f}% {f}" for f, c in top if "flowpipe/" in f or "duckdb" in f.lower()
    ][:12]
    return "\n".join(keep)


class Profiler:
    """profile() in a thread, started now."""

    def __init__(self, pid: int, seconds: float, out: Path):
        out.unlink(missing_ok=True)
        self.text = ""
        self.thread = threading.Thread(target=self._run, args=(pid, seconds, out), daemon=True)
        self.thread.start()

    def _run(self, pid: int, seconds: float, out: Path) -> None:
        self.text = profile(pid, seconds, out)

    def result(self) -> str:
        self.thread.join(timeout=180)
        return self.text


def main(argv: list[str] | None = None) -> int:
    """Run the queries against flowpipe serve over store-<N> and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=10_000_000, help="store size (bench/bigstore.py)")
    ap.add_argument(
        "--since", action="append", help="windows before the newest flow (default 1h and 10m)"
    )
    ap.add_argument(
        "--filter", action="append", choices=list(FILTERS), help="filters (default all)"
    )
    ap.add_argument(
        "--max-flows", type=int, default=200_000, help="stop a query after this many flows"
    )
    ap.add_argument("--max-seconds", type=float, default=60.0, help="stop a query after this long")
    ap.add_argument(
        "--profile", action="store_true", help="py-spy the server during the unfiltered 10m query"
    )
    args = ap.parse_args(argv)
    store, meta = bigstore.build(args.flows)
    print(load_note(), flush=True)
    port = free_port()
    t0 = time.perf_counter()
    server = start_server(store.root, port)
    print(
        f"flowpipe serve over store-{args.flows} ({meta.total:,} flows, {meta.files:,} files) on 127.0.0.1:{port}: "
        f"listening after {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    address = f"127.0.0.1:{port}"
    results = []
    try:
        windows = args.since or ["1h", "10m"]
        for since in windows:
            secs = int(since[:-1]) * {"s": 1, "m": 60, "h": 3600}[since[-1]]
            for name in args.filter or list(FILTERS):
                req = Req(whitelist=FILTERS[name])
                req.since.FromNanoseconds(meta.end_ns - secs * SEC)
                spy = None
                if args.profile and name == "none" and since == windows[-1]:
                    spy = Profiler(
                        server.pid, min(args.max_seconds, 20), bigstore.BASE / "serve-profile.txt"
                    )
                r = query(address, req, args.max_flows, args.max_seconds)
                prof = spy.result() if spy else None
                r.update(since=since, filter=name)
                results.append(r)
                more = " (stopped: --max-flows/--max-seconds)" if r["truncated"] else ""
                print(
                    f"since {since:>3} filter {name:<10}: first flow {r['first_s']} s, {r['flows']:,} flows in "
                    f"{r['total_s']} s = {r['flows_per_s']:,} flows/s{more}",
                    flush=True,
                )
                if prof:
                    print("server profile (share of samples, inclusive):\n" + prof, flush=True)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
    save_result("serve_speed", {"flows": meta.total, "results": results})
    print(load_note(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
