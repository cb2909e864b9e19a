"""Text for people and scripts: the one line of an error, and JSON of query results."""

from __future__ import annotations

import datetime as _dt
import decimal
import uuid
from typing import Any


def first_line(error: BaseException | str) -> str:
    """The first non-blank line of an error's message, stripped (its type name when it has none).

    DuckDB's messages go on with context lines (LINE 1: ..., a caret) that make no sense in one
    line of a log or a CLI error."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__ if isinstance(error, BaseException) else ""


def json_default(value: Any) -> Any:
    """json.dumps default for values of DuckDB rows: times ISO 8601, bytes hex, intervals in seconds."""
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    return str(value)
