"""Duplicate suppression by flow key: the uuid, or the content fingerprint of uuid-less flows."""

from __future__ import annotations

from collections import deque

import pyarrow as pa
import pyarrow.compute as pc


def keys(flows: pa.Table) -> list[int]:
    """One key per row: a hash of the uuid when set, else the content fingerprint.

    Keys are ints, not uuid strings, because at 30k flows/s a window of strings alone would
    cost hundreds of MB. hash() is per process, which is all an in-memory set needs."""
    uuids = flows.column("uuid").to_pylist()
    fps = flows.column("_fp").to_pylist()
    return [hash(u) if u else f for u, f in zip(uuids, fps)]


class Deduper:
    """Remembers keys of flows (with their newest time) and drops repeats; evict() forgets old ones."""

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._order: deque[tuple[int, list[int]]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, known: set[int] | list[int], at_ns: int = 0) -> None:
        """Add keys already stored (e.g. loaded from the store on resume)."""
        batch = [k for k in known if k not in self._seen]
        self._seen.update(batch)
        self._order.append((at_ns, batch))

    def filter(self, flows: pa.Table) -> tuple[pa.Table, int, list[int]]:
        """flows without rows whose key was seen before (or earlier in this table), how many went,
        and the keys of the rows kept (to forget() if they are never stored)."""
        if flows.num_rows == 0:
            return flows, 0, []
        mask = []
        fresh: list[int] = []
        seen = self._seen
        for k in keys(flows):
            if k in seen:
                mask.append(False)
            else:
                seen.add(k)
                fresh.append(k)
                mask.append(True)
        newest = pc.max(flows.column("time")).value
        self._order.append((newest or 0, fresh))
        dropped = len(mask) - len(fresh)
        return (flows.filter(pa.array(mask)) if dropped else flows), dropped, fresh

    def forget(self, keys: list[int]) -> None:
        """Keys of flows that were not stored after all: a resend must not count as a duplicate."""
        if not keys:
            return
        gone = set(keys)
        self._seen.difference_update(gone)
        self._order = deque((t, [k for k in ks if k not in gone]) for t, ks in self._order)

    def evict(self, horizon_ns: int) -> None:
        """Forget batches whose newest flow is older than horizon_ns (they cannot be re-sent)."""
        while len(self._order) > 1 and self._order[0][0] < horizon_ns:
            _, old = self._order.popleft()
            self._seen.difference_update(old)

    def clear(self) -> None:
        """Forget every key."""
        self._seen = set()
        self._order = deque()
