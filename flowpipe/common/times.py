"""The one parser of time points: 'now', a duration before now ('15m', '1h30m') or RFC 3339."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

from flowpipe.common import units
from flowpipe.common.sql import datetime_ns
from flowpipe.errors import ConfigError

NS = 1_000_000_000
_RFC3339_RE = re.compile(
    r"^(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2})?)(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:?\d{2})?$"
)
HINT = "use now, a duration before now (15m, 2h, 7d) or RFC 3339 (2024-05-01T12:00:00Z)"


def parse_time_ns(
    value: str | int | datetime, what: str = "time", *, now_ns: int | None = None
) -> int:
    """'now', '15m' (that long before now), or RFC 3339 (nanoseconds kept) -> ns since the epoch, UTC."""
    if isinstance(value, datetime):
        return _datetime_ns(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # already ns since the epoch
    now_ns = time.time_ns() if now_ns is None else now_ns
    text = str(value).strip()
    if text.lower() == "now":
        return now_ns
    try:
        return now_ns - round(units.parse_duration(text, what) * NS)
    except ConfigError:
        pass
    m = _RFC3339_RE.match(text)
    try:
        if m:
            base, frac, zone = m.groups()
            zone = "+00:00" if zone in (None, "Z", "z") else zone
            dt = datetime.fromisoformat(base.replace("t", "T") + zone)
            return _datetime_ns(dt) + int((frac or "0").ljust(9, "0"))
        return _datetime_ns(datetime.fromisoformat(text))
    except ValueError:
        raise ConfigError(f"invalid {what} {value!r}: {HINT}") from None


def parse_time(
    value: str | int | datetime, what: str = "time", *, now: datetime | None = None
) -> datetime:
    """The same as parse_time_ns, as an aware UTC datetime (microseconds)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    now_ns = None if now is None else _datetime_ns(now)
    ns = parse_time_ns(value, what, now_ns=now_ns)
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)


def _datetime_ns(dt: datetime) -> int:
    """An aware or naive (taken as UTC) datetime -> ns since the epoch."""
    return datetime_ns(dt.astimezone(UTC) if dt.tzinfo else dt.replace(tzinfo=UTC))
