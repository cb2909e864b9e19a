"""SQL text built one way everywhere: string literals, and time and date literals from nanoseconds."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

SECOND = 1_000_000_000
# the range of DuckDB's TIMESTAMP_NS (years 1677 to 2262): bounds outside it are clamped to it
MIN_NS, MAX_NS = -9_000_000_000_000_000_000, 9_200_000_000_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def quote(text: str) -> str:
    """text as a SQL string literal (quotes doubled); ValueError for a NUL, which DuckDB cannot hold."""
    if "\x00" in text:
        raise ValueError(f"{text[:80]!r} contains a NUL character")
    return "'" + text.replace("'", "''") + "'"


def quote_list(items: Iterable[str]) -> str:
    """A SQL list literal of strings: ['a', 'b']."""
    return "[" + ", ".join(map(quote, items)) + "]"


def _utc(ns: int) -> tuple[datetime, int]:
    sec, frac = divmod(min(max(ns, MIN_NS), MAX_NS), SECOND)
    return _EPOCH + timedelta(seconds=sec), frac


def timestamp_literal(ns: int) -> str:
    """A TIMESTAMPTZ_NS literal of ns since the epoch (clamped to DuckDB's range), the type of
    the views' `time`. Over the stored BIGINT time (`_time_ns`, or `time` in a reader's WHERE)
    use ns_literal: only that comparison prunes Parquet row groups."""
    when, frac = _utc(ns)
    return f"'{when:%Y-%m-%d %H:%M:%S}.{frac:09d}+00'::TIMESTAMPTZ_NS"


def ns_literal(ns: int) -> str:
    """An integer literal of ns since the epoch (clamped like timestamp_literal), to compare with
    the stored time: a BIGINT, so DuckDB pushes the comparison into the Parquet scan."""
    return str(min(max(int(ns), MIN_NS), MAX_NS))


def date_literal(ns: int) -> str:
    """A DATE literal of the UTC day of ns since the epoch (the store's `date` partition)."""
    return f"DATE '{_utc(ns)[0]:%Y-%m-%d}'"


def datetime_ns(dt: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime (exact: datetimes hold microseconds)."""
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000
