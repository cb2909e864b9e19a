"""Rate-limited log lines: one line per key per interval, with what happened in between counted."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass
class Tally:
    """What a due line reports: amounts and calls since the previous line of its key, and in all."""

    amount: int = 0  # summed since the previous line (this call included)
    calls: int = 0  # add() calls since the previous line (this call included)
    total: int = 0  # summed since the throttle was made
    last_line: float | None = None  # when the previous line of the key was let through


class LogThrottle:
    """Lets the first event of a key through at once, then at most one per interval; counts the rest.

    Counts stay exact whatever is logged: a caller logs the Tally add() returns, and pending()
    gives what was counted after the last line (for a closing line at shutdown). Thread-safe."""

    def __init__(
        self,
        interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 64,
    ):
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys  # keys are e.g. error texts: keep the newest few, not all
        self._keys: OrderedDict[Hashable, Tally] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, key: Hashable, amount: int = 1) -> Tally | None:
        """Count amount under key; return the Tally to log when a line is due, else None."""
        with self._lock:
            return self._add(key, amount, self.clock())

    def _add(self, key: Hashable, amount: int, now: float) -> Tally | None:
        t = self._keys.get(key)
        if t is None:
            t = self._keys[key] = Tally()
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        self._keys.move_to_end(key)
        t.amount += amount
        t.calls += 1
        t.total += amount
        if t.last_line is not None and now - t.last_line < self.interval:
            return None
        due = Tally(t.amount, t.calls, t.total, t.last_line)
        t.amount, t.calls, t.last_line = 0, 0, now
        return due

    def pending(self) -> list[tuple[Hashable, Tally]]:
        """Keys with events counted since their last line, and those counts (which are then reset)."""
        out = []
        with self._lock:
            for key, t in self._keys.items():
                if t.calls:
                    out.append((key, Tally(t.amount, t.calls, t.total, t.last_line)))
                    t.amount, t.calls, t.last_line = 0, 0, self.clock()
        return out

    def reset(self, key: Hashable) -> None:
        """Forget key: its next event is logged at once (e.g. after the condition cleared)."""
        with self._lock:
            self._keys.pop(key, None)
