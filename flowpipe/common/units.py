"""The one grammar of durations (1h30m, 250ms, 7d, 2w, bare seconds) and of sizes (64MB, 512k)."""

from __future__ import annotations

import re

from flowpipe.errors import ConfigError

DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NUMBER = r"\d+(?:\.\d+)?"
_DURATION_RE = re.compile(rf"^(?:{_NUMBER}(?:ms|s|m|h|d|w))+$")
_PART_RE = re.compile(rf"({_NUMBER})(ms|s|m|h|d|w)")
_BARE_RE = re.compile(rf"^{_NUMBER}$")
DURATION_HINT = "use e.g. 250ms, 30s, 5m, 1h30m, 7d, 2w or a number of seconds"

SIZE_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE_RE = re.compile(rf"^({_NUMBER})\s*(?:([kmgt])i?b?|(b))?$", re.IGNORECASE)
SIZE_HINT = "use e.g. 512KB, 64MB, 1GB or a number of bytes"


def is_duration(text: str) -> bool:
    """True when text follows the duration grammar (units required; bare numbers excluded)."""
    return bool(_DURATION_RE.match(text.strip()))


def parse_duration(value: str | float | int, what: str = "duration") -> float:
    """'30s', '5m', '1h30m', '7d', '2w', '250ms' or a number of seconds -> seconds (>= 0)."""
    if isinstance(value, bool):
        raise ConfigError(f"invalid {what} {value!r}: {DURATION_HINT}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"invalid {what} {value!r}: a duration cannot be negative")
        return float(value)
    text = str(value).strip().lower()
    if _BARE_RE.match(text):
        return float(text)
    if not _DURATION_RE.match(text):
        raise ConfigError(f"invalid {what} {value!r}: {DURATION_HINT}")
    return sum(float(n) * DURATION_UNITS[u] for n, u in _PART_RE.findall(text))


def parse_size(value: str | int, what: str = "size") -> int:
    """'64MB', '512k', '1GiB', '100b' or a number of bytes -> bytes (binary units: 1k = 1024)."""
    if isinstance(value, bool):
        raise ConfigError(f"invalid {what} {value!r}: {SIZE_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"invalid {what} {value!r}: a size cannot be negative")
        return value
    m = _SIZE_RE.match(str(value).strip())
    if not m:
        raise ConfigError(f"invalid {what} {value!r}: {SIZE_HINT}")
    unit = (m.group(2) or m.group(3) or "b").lower()
    return int(float(m.group(1)) * SIZE_UNITS[unit])
