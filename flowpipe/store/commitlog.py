"""The commit log of a cluster on object storage: which data objects are committed (docs/object-storage.md).

Each writer (a process: collector, import, compact) appends small JSON entries numbered 1, 2, 3
... under `_log/<cluster>/<writer>-<seq>.json`. An entry adds data objects, and may remove
others (compaction: remove the inputs, add the output, in one PUT; retention: remove only). A
reader applies, per writer, only the contiguous prefix of its sequence (a lagging LIST never
shows entry 7 without 6), an entry only once it has applied the entries that added what it
removes (`after`), and an entry that removes anything no longer live not at all (another
compaction or retention took it first: its outputs stay unreferenced). So every snapshot holds
each committed row exactly once."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

LOG = "_log"
CHECKPOINTS = "_checkpoint"
_ENTRY = re.compile(r"^(?P<writer>[A-Za-z0-9._-]+)-(?P<seq>\d{12})\.json$")


def entry_name(writer: str, seq: int) -> str:
    return f"{writer}-{seq:012d}.json"


def parse_name(name: str) -> tuple[str, int] | None:
    """(writer, seq) of a log entry's object name; None for anything else."""
    m = _ENTRY.match(name)
    return (m.group("writer"), int(m.group("seq"))) if m else None


@dataclass
class Added:
    """A data object an entry commits, with what readers need without opening it."""

    path: str  # relative to the store root: flows/cluster=c/date=d/hour=h/part-....parquet
    rows: int
    min_ns: int | None  # time span of its flows (None: no time column / no rows)
    max_ns: int | None
    bytes: int

    def to_json(self) -> list:
        return [self.path, self.rows, self.min_ns, self.max_ns, self.bytes]

    @classmethod
    def from_json(cls, v: list) -> Added:
        return cls(v[0], int(v[1]), v[2], v[3], int(v[4]))


@dataclass
class Entry:
    writer: str
    seq: int
    time_ns: int  # when the writer wrote it (for settling and safe ages; never for order)
    add: list[Added] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    after: dict[str, int] = field(default_factory=dict)  # writer -> seq that must be applied first

    def encode(self) -> bytes:
        return json.dumps(
            {
                "writer": self.writer,
                "seq": self.seq,
                "time_ns": self.time_ns,
                "add": [a.to_json() for a in self.add],
                "remove": self.remove,
                "after": self.after,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        v = json.loads(data)
        return cls(
            v["writer"],
            int(v["seq"]),
            int(v["time_ns"]),
            [Added.from_json(a) for a in v["add"]],
            list(v["remove"]),
            {k: int(s) for k, s in v["after"].items()},
        )


@dataclass
class Snapshot:
    """The committed objects of one cluster as of the entries applied so far."""

    applied: dict[str, int] = field(default_factory=dict)  # writer -> last seq applied
    live: dict[str, tuple[Added, str, int, int]] = field(
        default_factory=dict
    )  # path -> (object, writer, seq, entry time) of the entry that added it
    removed: dict[str, int] = field(default_factory=dict)  # path -> when an entry removed it
    skipped: int = 0  # entries whose removals another entry had done first

    def apply(self, entries: dict[tuple[str, int], Entry]) -> int:
        """Apply every entry that can be (see the module doc); return how many were applied."""
        by_writer: dict[str, dict[int, Entry]] = {}
        for (writer, seq), e in entries.items():
            if seq > self.applied.get(writer, 0):
                by_writer.setdefault(writer, {})[seq] = e
        done = 0
        progress = True
        while progress:  # an entry may wait for another writer's entry applied later
            progress = False
            for writer in sorted(by_writer):
                todo = by_writer[writer]
                while (e := todo.get(self.applied.get(writer, 0) + 1)) is not None:
                    if any(self.applied.get(w, 0) < s for w, s in e.after.items()):
                        break  # what it removes is not visible yet: wait (LIST lag)
                    self._apply(e)
                    done += 1
                    progress = True
        return done

    def _apply(self, e: Entry) -> None:
        self.applied[e.writer] = e.seq
        if any(p not in self.live for p in e.remove):
            self.skipped += 1  # lost the race: another compaction/retention removed one first
            return
        for p in e.remove:
            del self.live[p]
            self.removed[p] = e.time_ns
        for a in e.add:
            self.live[a.path] = (a, e.writer, e.seq, e.time_ns)

    def copy(self) -> Snapshot:
        return Snapshot(dict(self.applied), dict(self.live), dict(self.removed), self.skipped)

    def after_for(self, paths: list[str]) -> dict[str, int]:
        """The `after` of an entry removing paths: the entries that added them."""
        out: dict[str, int] = {}
        for p in paths:
            _, writer, seq, _ = self.live[p]
            out[writer] = max(out.get(writer, 0), seq)
        return out

    def encode(self, time_ns: int) -> bytes:
        return json.dumps(
            {
                "time_ns": time_ns,
                "applied": self.applied,
                "live": [[a.to_json(), w, s, t] for a, w, s, t in self.live.values()],
                "removed": self.removed,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Snapshot:
        v = json.loads(data)
        snap = cls({k: int(s) for k, s in v["applied"].items()})
        for a, w, s, t in v["live"]:
            added = Added.from_json(a)
            snap.live[added.path] = (added, w, int(s), int(t))
        snap.removed = {k: int(t) for k, t in v["removed"].items()}
        return snap
