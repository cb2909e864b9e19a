"""Where each (re)dial of a relay asks from: the overlap, and the guarantee that attempts progress."""

from __future__ import annotations

from dataclasses import dataclass

RESEND_SLACK_NS = 2_000_000_000  # flows of a resend can arrive this far out of time order


@dataclass
class Attempt:
    """How one dial of the stream ended, as the stream saw it."""

    received: int = 0  # responses delivered
    cut: bool = False  # ended by the relay or the network (not by our watchdog, pause or stop)


class ResumePoint:
    """The newest flows of one cluster, and the `since` of its next GetFlows request.

    A resume normally asks for the overlap again (newest decoded flow minus `overlap_ns`): Relay
    merges many nodes, so a flow can reach it after newer ones were sent; asking again for the
    overlap catches such late flows, and the duplicates it brings are dropped by key.

    Progress guarantee: an attempt that the relay or the network cut before it brought a new
    flow (a proxy that cuts streams after K responses, with more than K flows in the overlap)
    makes the next attempt ask from exactly the newest flow, inclusive: that attempt brings new
    flows at once, so at least every second attempt stores up to K new flows, however dense the
    data. The limit: more flows sharing one nanosecond than a stream carries.

    `stuck` counts the attempts in a row that were cut before they even got back to the newest
    flow already had (so: before anything new could come): a relay that lost its history, or
    sends more node events than the stream carries. The collector warns and exports it."""

    def __init__(self, newest_ns: int | None, overlap_ns: int):
        self.overlap_ns = overlap_ns
        self.newest_ns = newest_ns  # newest flow decoded (or committed, after a store failure)
        self.committed_ns = newest_ns  # newest flow committed
        self.resend_until: int | None = None  # keep dedup keys until flows pass this time
        self.stuck = 0  # attempts in a row cut before they got back to the newest flow
        self.narrow = False  # the next attempt asks from the newest flow, without the overlap
        self._dial_newest: int | None = None  # newest_ns when the current attempt was dialled
        self._attempt_newest: int | None = None  # newest flow decoded in the current attempt
        self._attempt_new = 0  # flows decoded in the current attempt that were not duplicates

    def decoded(self, newest_ns: int | None, new: int) -> None:
        """Flows of the current attempt were decoded: newest time among them, how many were new."""
        self._attempt_new += new
        if new:
            self.stuck, self.narrow = 0, False  # progress: the overlap is asked for again
        if newest_ns is None:
            return
        if self.newest_ns is None or newest_ns > self.newest_ns:
            self.newest_ns = newest_ns
        if self._attempt_newest is None or newest_ns > self._attempt_newest:
            self._attempt_newest = newest_ns

    def committed(self, newest_ns: int | None) -> bool:
        """Flows up to newest_ns were committed; True when that moved the committed point."""
        if newest_ns is None or (self.committed_ns is not None and newest_ns <= self.committed_ns):
            return False
        self.committed_ns = newest_ns
        return True

    def rewind(self) -> None:
        """Uncommitted flows were dropped (store failure): resume after the last committed one."""
        self.newest_ns = self.committed_ns

    def resend_over(self) -> bool:
        """Whether the current attempt is past what earlier ones had (dedup keys can go)."""
        if self.resend_until is not None and (self._attempt_newest or 0) > self.resend_until:
            self.resend_until = None
        return self.resend_until is None

    def judge(self, last: Attempt | None) -> None:
        """Judge the attempt that just ended (every flow of it decoded): progress or not."""
        if last is None or not last.cut or last.received == 0 or self._dial_newest is None:
            return  # nothing to judge: first dial, refused, paused, idle or stopped
        if self._attempt_new:
            self.stuck, self.narrow = 0, False
            return
        self.narrow = True  # cut before anything new: the next attempt skips the overlap
        caught_up = self._attempt_newest is not None and self._attempt_newest >= self._dial_newest
        self.stuck = 0 if caught_up else self.stuck + 1

    def next_since(self) -> int | None:
        """`since` of the next attempt (None: nothing stored yet); starts counting that attempt."""
        since = self.resend_until = None
        if self.newest_ns is not None:
            since = self.newest_ns - (0 if self.narrow else self.overlap_ns)
            # Relay sends again what it sent after `since`: keep dedup keys until the new
            # stream is past what we had (plus slack for flows out of time order)
            self.resend_until = self.newest_ns + RESEND_SLACK_NS
        self._dial_newest = self.newest_ns
        self._attempt_newest = None
        self._attempt_new = 0
        return since
