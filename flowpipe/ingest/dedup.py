"""Duplicate suppression by flow key: the uuid, or the content fingerprint of uuid-less flows."""

from __future__ import annotations

import threading

import pyarrow as pa


def keys(flows: pa.Table) -> list[int]:
    """One key per row: a hash of the uuid when set, else the content fingerprint.

    Keys are ints, not uuid strings, because at 30k flows/s a window of strings alone would
    cost hundreds of MB. hash() is per process, which is all an in-memory set needs."""
    uuids = flows.column("uuid").to_pylist()
    fps = flows.column("_fp").to_pylist()
    return [hash(u) if u else f for u, f in zip(uuids, fps)]


class Deduper:
    """Remembers keys of flows and drops repeats. Safe to share between threads (the collector's
    stream thread remembers stored keys while its flusher filters, forgets and clears)."""

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, known: set[int] | list[int]) -> None:
        """Add keys already stored (e.g. loaded from the store on resume)."""
        with self._lock:
            self._seen.update(known)

    def filter(self, flows: pa.Table) -> tuple[pa.Table, int, list[int]]:
        """flows without rows whose key was seen before (or earlier in this table), how many went,
        and the keys of the rows kept (to forget() if they are never stored)."""
        if flows.num_rows == 0:
            return flows, 0, []
        ks = keys(flows)
        mask = []
        fresh: list[int] = []
        with self._lock:
            seen = self._seen
            for k in ks:
                if k in seen:
                    mask.append(False)
                else:
                    seen.add(k)
                    fresh.append(k)
                    mask.append(True)
        dropped = len(mask) - len(fresh)
        return (flows.filter(pa.array(mask)) if dropped else flows), dropped, fresh

    def forget(self, keys: list[int]) -> None:
        """Keys of flows that were not stored after all: a resend must not count as a duplicate."""
        if keys:
            with self._lock:
                self._seen.difference_update(keys)

    def clear(self) -> None:
        """Forget every key."""
        with self._lock:
            self._seen = set()
