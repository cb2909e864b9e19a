"""The status of a rule on a cluster (pass, warn, fail, error) and the one ranking of them."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Status(StrEnum):
    """A rule's outcome, best first: it compares and prints as its lowercase name."""

    PASS = "pass"
    WARN = "warn"  # a warn-severity rule failed: reported, but it does not fail the check
    FAIL = "fail"
    ERROR = "error"  # the rule could not run (SQL error, timeout, memory limit)


STATUSES = tuple(Status)  # in rank order, best first
_RANK = {s: i for i, s in enumerate(STATUSES)}


def rank(status: str) -> int:
    """0 for pass up to 3 for error."""
    return _RANK[Status(status)]


def worst(statuses: Iterable[str]) -> Status:
    """The worst of statuses (pass when there are none)."""
    return max((Status(s) for s in statuses), key=rank, default=Status.PASS)


def stage_verdict(statuses: Iterable[str]) -> Status:
    """A stage's status on a cluster from its rules': pass, fail or error (a warning passes)."""
    return worst(Status.PASS if s == Status.WARN else s for s in statuses)
