"""LogThrottle: the first event at once, then one line per interval with exact totals."""

from __future__ import annotations

from flowpipe.common.throttle import LogThrottle, Tally


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_at_once_then_one_line_per_interval_with_totals():
    clock = Clock()
    t = LogThrottle(30, clock=clock)
    assert t.add("HUBBLE_RING_BUFFER", 3) == Tally(amount=3, calls=1, total=3, last_line=None)
    for _ in range(19):
        clock.now += 1
        assert t.add("HUBBLE_RING_BUFFER", 2) is None  # within the interval: counted, not logged
    clock.now += 12  # 31 s after the first line
    assert t.add("HUBBLE_RING_BUFFER", 1) == Tally(amount=39, calls=20, total=42, last_line=1000.0)
    assert t.add("HUBBLE_RING_BUFFER", 5) is None
    assert t.pending() == [("HUBBLE_RING_BUFFER", Tally(5, 1, 47, 1031.0))]
    assert t.pending() == []  # reported once


def test_keys_are_independent_and_reset_logs_at_once():
    clock = Clock()
    t = LogThrottle(30, clock=clock)
    assert t.add(("lost", "A")) and t.add(("lost", "B"))
    assert t.add(("lost", "A")) is None
    t.reset(("lost", "A"))
    assert t.add(("lost", "A")) == Tally(1, 1, 1, None)


def test_only_the_newest_keys_are_kept():
    t = LogThrottle(30, clock=Clock(), max_keys=2)
    for key in ("a", "b", "c"):
        assert t.add(key)
    assert t.add("c") is None and t.add("b") is None
    assert t.add("a") == Tally(1, 1, 1, None)  # forgotten, so logged again
