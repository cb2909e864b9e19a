"""Dedup keys of what a cluster already has in the store, looked up by time span."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from flowpipe.errors import StoreError
from flowpipe.store.layout import FLOWS, Store, time_spans

HOUR_NS = 3_600_000_000_000
CACHE_KEYS = 600_000  # keys of recently read row groups kept (~40 MB)
SCAN_HOURS = 48  # a wider batch looks only at the hours that exist


class StoredKeys:
    """Keys of one cluster's stored flows (and of files staged by this process, see note), read
    per row group whose time statistics overlap the span asked for, the recent ones cached: an
    import checks each batch against the store without holding the store's keys in memory.

    Each hour directory is listed and its footers read once, and again when the directory
    changes (a collector or compaction writing to the same store)."""

    def __init__(self, store: Store, cluster: str):
        self.store = store
        self.cluster = cluster
        self.files: dict[int, dict[Path, list]] = {}  # hour -> file -> time_spans
        self.listed: dict[int, object] = {}  # hour -> the store's listing token when listed
        self.cache: OrderedDict[tuple[Path, int], set[int]] = OrderedDict()
        self.cached = 0

    def note(self, path: Path) -> None:
        """Index a file this process just wrote (published, or staged under .incoming/)."""
        spans = time_spans(path, self.store)
        oldest = min((lo for _, lo, _ in spans if lo is not None), default=0)
        self.files.setdefault(oldest // HOUR_NS * HOUR_NS, {})[path] = spans

    def sets(self, lo_ns: int | None, hi_ns: int | None, with_untimed: bool) -> list[set[int]]:
        """Key sets of the stored row groups that may hold flows timed in [lo_ns, hi_ns] (None:
        no timed flows) and, with_untimed, flows without a time (stored in hour 1970-01-01 00)."""
        try:
            return self._sets(lo_ns, hi_ns, with_untimed)
        except FileNotFoundError:  # compaction replaced a file since the listing: list again
            self.listed.clear()
            return self._sets(lo_ns, hi_ns, with_untimed)

    def _sets(self, lo_ns: int | None, hi_ns: int | None, with_untimed: bool) -> list[set[int]]:
        hours: list[int] = []
        if lo_ns is not None and hi_ns is not None:
            first, last = lo_ns // HOUR_NS * HOUR_NS, hi_ns // HOUR_NS * HOUR_NS
            if (last - first) // HOUR_NS <= SCAN_HOURS:
                hours = list(range(first, last + HOUR_NS, HOUR_NS))
            else:
                hours = sorted(h for h in self._existing_hours() if first <= h <= last)
        if with_untimed and 0 not in hours:
            hours.append(0)
        out = []
        for hour in hours:
            for path, spans in self._hour(hour).items():
                for rg, oldest, newest in spans:
                    unknown = hour == 0 or oldest is None or lo_ns is None  # untimed flows
                    if unknown or (oldest <= hi_ns and newest >= lo_ns):
                        out.append(self._keys(path, rg))
        return out

    def _existing_hours(self) -> set[int]:
        return set(self.files) | self.store.hours(FLOWS, self.cluster)

    def _hour(self, hour: int) -> dict[Path, list]:
        d = self.store.partition_dir(FLOWS, self.cluster, hour)
        known = self.files.setdefault(hour, {})
        token, present = self.store.hour_files(FLOWS, self.cluster, hour, self.listed.get(hour))
        if present is not None:  # changed since listed
            for path in [p for p in known if p.parent == d and p not in present]:
                del known[path]  # compacted away
            for path in present - known.keys():
                known[path] = time_spans(path, self.store)
            self.listed[hour] = token
        return known

    def _keys(self, path: Path, rg: int) -> set[int]:
        hit = self.cache.get((path, rg))
        if hit is not None:
            self.cache.move_to_end((path, rg))
            return hit
        if not self.store.exists(path):
            raise FileNotFoundError(path)
        try:
            keys = set(self.store.keys_in(path, row_groups=[rg]))
        except StoreError:
            if not self.store.exists(path):
                raise FileNotFoundError(path) from None
            raise
        self.cache[(path, rg)] = keys
        self.cached += len(keys)
        while self.cached > CACHE_KEYS and len(self.cache) > 1:
            _, old = self.cache.popitem(last=False)
            self.cached -= len(old)
        return keys
