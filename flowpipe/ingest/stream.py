"""A resumable GetFlows(follow) stream from one relay, with an explicit list of retryable errors."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flowpipe.api.observer import observer_pb2
from flowpipe.errors import ConfigError
from flowpipe.ingest import tls
from flowpipe.ingest.config import CollectConfig, RelayConfig
from flowpipe.ingest.receiver import End, Receiver, ReceiverGone
from flowpipe.ingest.resume import Attempt

log = logging.getLogger("flowpipe.collect")

# gRPC status codes (by name) after which asking again may work: the relay restarted, the
# network blinked, the stream was cut by a proxy, or our watchdog cancelled a silent stream.
RETRYABLE = frozenset(
    {
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "ABORTED",
        "INTERNAL",
        "UNKNOWN",
        "CANCELLED",
    }
)
# Everything else (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT, UNIMPLEMENTED, ...)
# means the request or credentials are wrong: asking again would fail the same way.

_TLS_HINTS = (
    "ssl",
    "tls",
    "handshake",
    "certificate",
    "wrong_version_number",
    "peer name",
    "alpn",
    "verification",
    "hostname",
)


def is_tls_failure(details: str) -> bool:
    """True when a connection failure came from the TLS handshake (not from reachability)."""
    low = details.lower()
    return any(h in low for h in _TLS_HINTS)


class FatalStreamError(Exception):
    """The relay refused us for a reason retrying cannot fix (one line, names the relay)."""


class RetryLater(Exception):
    """resume_since cannot say where to resume just now (e.g. the store could not be read):
    the attempt is reported as an error and retried after the backoff."""


@dataclass
class StreamState:
    connected: bool = False
    ever_connected: bool = False
    attempts: int = 0
    last_message_at: float = 0.0
    last_error: str = ""


class FlowStream:
    """GetFlows(follow=true) that re-dials with capped, jittered backoff and resumes from `since`.

    The calls are made by a child process (receiver.Receiver); responses come in batches."""

    def __init__(
        self,
        relay: RelayConfig,
        cfg: CollectConfig,
        *,
        resume_since: Callable[[Attempt | None], int | None],
        on_messages: Callable[[list[bytes]], None],
        on_event: Callable[[str, str], None] = lambda kind, detail: None,
        receiver: Receiver | None = None,
    ):
        self.relay = relay
        self.cfg = cfg
        # ns to ask from at each (re)connect, given how the last attempt went; None = only new
        # flows; may raise RetryLater
        self.resume_since = resume_since
        self.on_messages = on_messages  # a batch of serialized GetFlowsResponse, in order
        self.on_event = on_event  # ("connected"|"disconnected"|"error", detail)
        self.state = StreamState()
        self._stop = threading.Event()
        self._receiver = receiver or Receiver(relay.name)  # run() starts it unless it runs
        self._call: int | None = None  # id of the receiver's current call
        self._idle_cancelled = False
        self._pausing = False
        self._resume_at = 0.0
        self._lock = threading.Lock()
        self.last_attempt: Attempt | None = None  # None before the first dial

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        """Stop after the current message; safe from any thread."""
        self._stop.set()
        with self._lock:
            if self._call is not None:
                self._receiver.cancel(self._call)

    def pause(self, seconds: float) -> None:
        """Hang up now and dial again after seconds (the collector could not store what it got).

        A pause asked for while the next dial is being prepared cancels that dial too."""
        self._resume_at = time.monotonic() + seconds
        with self._lock:
            if self._call is not None:
                self._pausing = True
                self._receiver.cancel(self._call)

    def close(self) -> None:
        """End the receiving process (run() does so when it returns; this is for a stream
        that never ran)."""
        self._receiver.close()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def request(self) -> observer_pb2.GetFlowsRequest:
        """The request for the next attempt: follow, since the resume point, with the relay's filters."""
        req = observer_pb2.GetFlowsRequest(follow=True)
        since = self.resume_since(self.last_attempt)
        if since is not None:
            req.since.seconds, req.since.nanos = divmod(max(since, 1_000_000_000), 1_000_000_000)
        req.whitelist.extend(self.relay.allow)
        req.blacklist.extend(self.relay.deny)
        return req

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Stream until stop(); raise FatalStreamError when retrying cannot help."""
        try:
            if not self._receiver.alive:
                self._receiver.start()
            self._run()
        finally:
            self._receiver.close()

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            wait = self._resume_at - time.monotonic()
            if wait > 0:
                self._stop.wait(wait)
                continue
            received = self._attempt()
            if self._stop.is_set():
                break
            if self._resume_at > time.monotonic():
                continue  # paused: no backoff on top
            attempt = 0 if received else attempt + 1
            delay = random.uniform(
                0, min(self.cfg.backoff_max, self.cfg.backoff_initial * 2**attempt)
            )
            delay = max(delay, self.cfg.backoff_initial / 2)
            self._stop.wait(delay)

    def _attempt(self) -> int:
        """One dial and stream; return how many messages it delivered."""
        st = self.state
        st.attempts += 1
        try:
            pems = tls.credential_pems(self.relay)
        except ConfigError as exc:
            # unreadable TLS files: fatal at start, retried later (they may be mid-rotation)
            if not st.ever_connected:
                raise FatalStreamError(str(exc)) from exc
            self._report_error("tls-files", str(exc))
            self.last_attempt = Attempt()
            return 0
        options = [
            ("grpc.keepalive_time_ms", int(self.cfg.keepalive * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.cfg.keepalive_timeout * 1000)),
            ("grpc.http2.ping_timeout_ms", int(self.cfg.keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", 200),
            *tls.channel_options(self.relay),
        ]
        try:
            request = self.request().SerializeToString()
        except RetryLater as exc:
            self._report_error("resume", str(exc))
            self.last_attempt = Attempt()
            return 0
        received = 0
        cut = False  # ended by the relay or the network
        try:
            with self._lock:
                if self._stop.is_set() or self._resume_at > time.monotonic():
                    return 0  # stopped, or paused while the resume point was worked out
                call_id = self._receiver.dial(self.relay.address, request, options, pems)
                self._call, self._pausing = call_id, False
            self._idle_cancelled = False
            st.last_message_at = time.monotonic()
            if self.cfg.idle_timeout > 0:
                threading.Thread(target=self._watch_idle, args=(call_id,), daemon=True).start()
            while not isinstance(item := self._receiver.next(), End):
                if received == 0:
                    self._connected()
                received += len(item)
                st.last_message_at = time.monotonic()
                self.on_messages(item)
            if item.code is not None:
                cut = self._handle_status(item.code, item.details)
            elif not self._stop.is_set():
                # A follow stream that ends cleanly means the relay closed it (e.g. restart).
                cut = True
                self._report_error("closed", "relay ended the stream")
        except ReceiverGone as exc:
            if not st.ever_connected:
                raise FatalStreamError(f"relay {self.relay.name}: {exc}") from exc
            self._report_error("receiver", f"{exc}; starting it again")
        finally:
            self.last_attempt = Attempt(received=received, cut=cut)
            with self._lock:
                self._call = None
            if st.connected:
                st.connected = False
                self.on_event("disconnected", "")
        return received

    def _connected(self) -> None:
        st = self.state
        st.connected = True
        first = not st.ever_connected
        st.ever_connected = True
        self.on_event("connected", "first" if first else "resumed")

    def _handle_status(self, code: str, details: str) -> bool:
        """Report a retryable status (by name) and return whether the relay or network cut the
        stream; raise FatalStreamError for the others."""
        if self._stop.is_set():
            return False
        if code == "CANCELLED" and self._pausing:
            self._pausing = False
            return False
        if code == "CANCELLED" and self._idle_cancelled:
            self._report_error("idle", f"no message for {self.cfg.idle_timeout:g}s, re-dialling")
            return False
        if code not in RETRYABLE:
            raise FatalStreamError(f"relay {self.relay.name}: {code}: {details}")
        if code == "UNAVAILABLE" and is_tls_failure(details) and not self.state.ever_connected:
            raise FatalStreamError(
                f"relay {self.relay.name}: TLS handshake failed: {_short(details)}"
            )
        self._report_error(code, _short(details))
        return True

    def _report_error(self, code: str, detail: str) -> None:
        self.state.last_error = f"{code}: {detail}"
        self.on_event("error", f"{code}|{detail}")

    def _watch_idle(self, call_id: int) -> None:
        limit = self.cfg.idle_timeout
        while not self._stop.is_set():
            with self._lock:
                if self._call != call_id:
                    return
                idle = time.monotonic() - self.state.last_message_at
                if idle >= limit:
                    self._idle_cancelled = True
                    self._receiver.cancel(call_id)
                    return
            self._stop.wait(min(limit - idle, 1.0) + 0.01)


def _short(details: str) -> str:
    """The useful tail of a gRPC connection error."""
    details = details.strip()
    marker = "last error:"
    if marker in details:
        details = details.split(marker, 1)[1].strip()
    return details[:300]
