"""Duplicate suppression by flow key: the uuid, or the content fingerprint of uuid-less flows."""

from __future__ import annotations

from collections import deque

import pyarrow as pa
import pyarrow.compute as pc


def keys(flows: pa.Table) -> list[str | int]:
    """One key per row: the uuid string when set, else the fingerprint (an int)."""
    uuids = flows.column("uuid").to_pylist()
    fps = flows.column("_fp").to_pylist()
    return [u if u else f for u, f in zip(uuids, fps)]


class Deduper:
    """Remembers keys seen in the last `window_ns` of flow time and drops repeats."""

    def __init__(self, window_ns: int | None = None):
        self.window_ns = window_ns
        self._seen: set[str | int] = set()
        self._order: deque[tuple[int, list[str | int]]] = deque()
        self.newest_ns: int | None = None

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, known: set[str] | set[int] | list, at_ns: int = 0) -> None:
        """Add keys already stored (e.g. loaded from the store on resume)."""
        batch = [k for k in known if k not in self._seen]
        self._seen.update(batch)
        self._order.append((at_ns, batch))

    def filter(self, flows: pa.Table) -> tuple[pa.Table, int]:
        """flows without rows whose key was seen before (or earlier in this table); and how many went."""
        if flows.num_rows == 0:
            return flows, 0
        mask = []
        fresh: list[str | int] = []
        seen = self._seen
        for k in keys(flows):
            if k in seen:
                mask.append(False)
            else:
                seen.add(k)
                fresh.append(k)
                mask.append(True)
        newest = pc.max(flows.column("time")).value
        if newest is not None:
            self.newest_ns = newest if self.newest_ns is None else max(self.newest_ns, newest)
        self._order.append((newest or 0, fresh))
        self._evict()
        dropped = len(mask) - len(fresh)
        return (flows.filter(pa.array(mask)) if dropped else flows), dropped

    def _evict(self) -> None:
        if self.window_ns is None or self.newest_ns is None:
            return
        horizon = self.newest_ns - self.window_ns
        while len(self._order) > 1 and self._order[0][0] < horizon:
            _, old = self._order.popleft()
            self._seen.difference_update(old)
