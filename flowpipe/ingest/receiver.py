"""The GetFlows calls of one relay, made by a child process that hands the raw responses over in
batches: grpcio's per-message Python (~8 us a message, GIL held) runs beside decoding and
writing on the other core instead of taking turns with them.

The child only receives. Every decision (where to resume, what is retried, when to stop) stays
with FlowStream in the collector: it sends a dial or a cancel, and reads batches of responses
and then the end of each call (the gRPC status, or none for a stream the relay ended).

Frames on both pipes: a 4-byte little-endian length, then a pickle. Collector to child:
("dial", id, target, request bytes, channel options, (ca, key, cert) PEMs or None) and
("cancel", id); closing the pipe ends the child. Child to collector: a list of responses, or
("end", id, status code name or None, details)."""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

HEADER = struct.Struct("<I")
PIPE_BYTES = 1 << 20  # the data pipe's buffer (Linux default 64 KB; 1 MB is allowed unprivileged)
BATCH_ROWS = 1024  # responses per batch at most...
BATCH_BYTES = 96 * 1024  # ...and bytes (below malloc's mmap threshold: no page faults per batch)
BATCH_WAIT = 0.02  # seconds a response may wait for its batch to fill (a slow relay)
CLOSE_WAIT = 5.0  # seconds the child gets to leave after its pipe closed


@dataclass
class End:
    """How one call ended: code None when the relay ended the stream cleanly."""

    id: int
    code: str | None
    details: str


class ReceiverGone(Exception):
    """The child process exited (killed, or a bug): the call it made is gone with it."""


def _write_frame(fd: int, obj) -> None:
    data = pickle.dumps(obj, protocol=5)
    head = HEADER.pack(len(data))
    done = os.writev(fd, [head, data])  # one system call, no copy of data to prepend the header
    view = memoryview(head + data)[done:] if done < len(head) + len(data) else None
    while view:
        view = view[os.write(fd, view) :]


def _read_frame(read):
    """The next frame through read(n) (which returns n bytes, fewer only at end of file), or
    None at end of file."""
    head = read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    data = read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


def _read_exact(fd: int, n: int) -> bytes:
    """n bytes from fd, unbuffered (fewer at end of file): select() then sees every frame."""
    parts = []
    while n > 0:
        chunk = os.read(fd, n)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


class Receiver:
    """The collector's side: starts the child, dials, cancels, and reads what it receives."""

    def __init__(self, name: str):
        self.name = name
        self.proc: subprocess.Popen | None = None
        self._ctl = -1  # write end of the control pipe
        self._data = -1  # read end of the data pipe
        self._buf = bytearray(2 * BATCH_BYTES)  # reused for every frame that fits
        self._ids = 0
        self._lock = threading.Lock()  # dial and cancel come from different threads

    def start(self) -> None:
        """Start the child (again, after it exited)."""
        self.close()
        ctl_r, ctl_w = os.pipe()
        data_r, data_w = os.pipe()
        with contextlib.suppress(OSError):  # a smaller pipe only means more wake-ups
            import fcntl

            fcntl.fcntl(data_w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        cmd = [sys.executable, "-m", "flowpipe.ingest.receiver", str(ctl_r), str(data_w)]
        env = dict(os.environ)
        # grpcio's EventEngine client reads sockets on its own threads and hands each message
        # over to the iterating thread: ~11.5 us of CPU a message here, against ~8.5 us when
        # the iterating thread polls and reads itself (iomgr, what grpcio used before)
        env.setdefault("GRPC_EXPERIMENTS", "-event_engine_client")
        try:
            self.proc = subprocess.Popen(
                cmd, pass_fds=(ctl_r, data_w), stdin=subprocess.DEVNULL, env=env
            )
        finally:
            os.close(ctl_r)
            os.close(data_w)
        self._ctl = ctl_w
        self._data = data_r

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def dial(self, target: str, request: bytes, options: list, pems: tuple | None) -> int:
        """Ask the child to call GetFlows; return the call's id."""
        if not self.alive:
            self.start()
        with self._lock:
            self._ids += 1
            try:
                _write_frame(self._ctl, ("dial", self._ids, target, request, options, pems))
            except OSError as exc:
                raise ReceiverGone(self._gone()) from exc
            return self._ids

    def cancel(self, call_id: int) -> None:
        """Cancel a call (the child still sends its end)."""
        with self._lock, contextlib.suppress(OSError):
            _write_frame(self._ctl, ("cancel", call_id))

    def next(self) -> list[bytes] | End:
        """The next batch of responses, or the end of a call; ReceiverGone if the child exited."""
        head = _read_exact(self._data, HEADER.size)
        if len(head) < HEADER.size:
            raise ReceiverGone(self._gone())
        (size,) = HEADER.unpack(head)
        if size > len(self._buf):
            self._buf = bytearray(size)
        view = memoryview(self._buf)[:size]
        got = 0
        while got < size:
            n = os.readv(self._data, [view[got:]])
            if n == 0:
                raise ReceiverGone(self._gone())
            got += n
        frame = pickle.loads(view)
        if isinstance(frame, list):
            return frame
        return End(*frame[1:])

    def _gone(self) -> str:
        code = None
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(timeout=1)
        return f"the receiving process of {self.name} exited (code {code})"

    def close(self) -> None:
        """End the child: it cancels its call and exits once the control pipe closes."""
        if self._ctl >= 0:
            with contextlib.suppress(OSError):
                os.close(self._ctl)
            self._ctl = -1
        if self.proc is not None:
            try:
                self.proc.wait(timeout=CLOSE_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._data >= 0:
            os.close(self._data)
            self._data = -1


# ---------------------------------------------------------------------- the child


class _Child:
    """Runs in the child process: one call at a time, responses batched to the data pipe."""

    def __init__(self, ctl_fd: int, data_fd: int):
        import queue

        self.ctl = ctl_fd
        self.data_fd = data_fd
        self.dials: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()  # the pending batch and the data pipe
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.pending_since = 0.0
        self.call = None
        self.call_id = 0
        self.cancelled: set[int] = set()
        self.call_lock = threading.Lock()  # call, call_id, cancelled

    def run(self) -> None:
        threading.Thread(target=self._control, daemon=True).start()
        while (item := self.dials.get()) is not None:
            self._call(*item)

    def _control(self) -> None:
        """Read dials and cancels; flush a batch that waited BATCH_WAIT while no response came."""
        fd = self.ctl
        while True:
            ready, _, _ = select.select([fd], [], [], BATCH_WAIT)
            if ready:
                frame = _read_frame(lambda n: _read_exact(fd, n))
                if frame is None:  # the collector closed the pipe, or died
                    self._cancel(None)
                    self.dials.put(None)
                    return
                if frame[0] == "dial":
                    self.dials.put(frame[1:])
                elif frame[0] == "cancel":
                    self._cancel(frame[1])
            elif (
                self.pending
                and time.monotonic() - self.pending_since >= BATCH_WAIT
                # not while the receiving thread holds the batch (it may wait on a full pipe)
                and self.lock.acquire(blocking=False)
            ):
                try:
                    self._flush()
                finally:
                    self.lock.release()

    def _cancel(self, call_id: int | None) -> None:
        with self.call_lock:
            if (call_id is None or call_id == self.call_id) and self.call is not None:
                self.call.cancel()
            if call_id is not None and call_id > self.call_id:
                self.cancelled.add(call_id)  # cancelled before it was dialled

    def _call(self, call_id: int, target: str, request: bytes, options: list, pems) -> None:
        import grpc
        import grpc.experimental

        code: str | None = None
        details = ""
        channel = None
        try:
            options = [(grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1), *options]
            if pems is None:
                channel = grpc.insecure_channel(target, options=options)
            else:
                ca, key, cert = pems
                creds = grpc.ssl_channel_credentials(
                    root_certificates=ca, private_key=key, certificate_chain=cert
                )
                channel = grpc.secure_channel(target, creds, options=options)
            method = channel.unary_stream(
                "/observer.Observer/GetFlows", request_serializer=None, response_deserializer=None
            )
            call = method(request, timeout=None, wait_for_ready=False)
            with self.call_lock:
                self.call, self.call_id = call, call_id
                if call_id in self.cancelled:
                    self.cancelled.discard(call_id)
                    call.cancel()
            for raw in call:
                with self.lock:
                    if not self.pending:
                        self.pending_since = time.monotonic()
                    self.pending.append(raw)
                    self.pending_bytes += len(raw)
                    if len(self.pending) >= BATCH_ROWS or self.pending_bytes >= BATCH_BYTES:
                        self._flush()
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            details = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
        except Exception as exc:  # not a status: a client-side failure retrying cannot fix
            code, details = "CLIENT_ERROR", f"{type(exc).__name__}: {exc}"
        finally:
            with self.call_lock:
                self.call = None
                self.call_id = max(self.call_id, call_id)
            if channel is not None:
                channel.close()
        with self.lock:
            self._flush()
            _write_frame(self.data_fd, ("end", call_id, code, details))

    def _flush(self) -> None:
        if self.pending:
            batch, self.pending, self.pending_bytes = self.pending, [], 0
            _write_frame(self.data_fd, batch)


def main(argv: list[str]) -> None:
    """Child entry point: python -m flowpipe.ingest.receiver CTL_FD DATA_FD."""
    # the collector decides when to stop (a terminal's Ctrl-C or a service manager's SIGTERM
    # reaches every process of the group); the child leaves when its control pipe closes
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        _Child(int(argv[0]), int(argv[1])).run()
    except BrokenPipeError:
        pass  # the collector is gone: nobody to hand responses to
    os._exit(0)  # without waiting for grpc's threads


if __name__ == "__main__":
    main(sys.argv[1:])
