"""The one time-point parser: 'now', a duration before now, or RFC 3339 (to the nanosecond)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flowpipe.common import times
from flowpipe.errors import ConfigError

NOW = datetime(2025, 10, 2, 12, 30, tzinfo=UTC)
NOW_NS = int(NOW.timestamp()) * 1_000_000_000


@pytest.mark.parametrize(
    "text,expected",
    [
        ("15m", NOW - timedelta(minutes=15)),
        ("2h", NOW - timedelta(hours=2)),
        ("7d", NOW - timedelta(days=7)),
        ("1w", NOW - timedelta(weeks=1)),
        ("1h30m", NOW - timedelta(minutes=90)),
        ("90", NOW - timedelta(seconds=90)),
        ("now", NOW),
        ("NOW", NOW),
        ("2025-10-02T12:00:00Z", datetime(2025, 10, 2, 12, tzinfo=UTC)),
        ("2025-10-02t12:00:00z", datetime(2025, 10, 2, 12, tzinfo=UTC)),
        ("2025-10-02T21:00:00+09:00", datetime(2025, 10, 2, 12, tzinfo=UTC)),
        ("2025-10-02T12:00:00", datetime(2025, 10, 2, 12, tzinfo=UTC)),
        ("2025-10-02 12:00:00.25Z", datetime(2025, 10, 2, 12, 0, 0, 250000, tzinfo=UTC)),
        ("2025-10-02", datetime(2025, 10, 2, tzinfo=UTC)),
        (datetime(2025, 10, 2, 12), datetime(2025, 10, 2, 12, tzinfo=UTC)),
    ],
)
def test_parse_time(text, expected: datetime):
    assert times.parse_time(text, now=NOW) == expected


def test_nanoseconds_survive():
    ns = times.parse_time_ns("2025-10-02T12:00:00.123456789Z")
    assert ns % 1_000_000_000 == 123456789
    assert ns // 1_000_000_000 == int(datetime(2025, 10, 2, 12, tzinfo=UTC).timestamp())
    assert times.parse_time_ns("1h", now_ns=NOW_NS) == NOW_NS - 3600 * 1_000_000_000
    assert times.parse_time_ns("250ms", now_ns=NOW_NS) == NOW_NS - 250_000_000


@pytest.mark.parametrize("text", ["yesterday", "-5m", "2025-13-01T00:00:00Z", "12:00", ""])
def test_bad_time_names_the_flag(text):
    with pytest.raises(ConfigError, match=r"^invalid --since .*RFC 3339"):
        times.parse_time(text, "--since")
