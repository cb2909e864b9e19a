"""rules.status: one enum and one ranking, used by check, report, export and the demo."""

from __future__ import annotations

import json

import pytest

from flowpipe.rules.status import STATUSES, Status, rank, stage_verdict, worst


def test_ranking_is_pass_warn_fail_error():
    assert [str(s) for s in STATUSES] == ["pass", "warn", "fail", "error"]
    assert [rank(s) for s in ("pass", "warn", "fail", "error")] == [0, 1, 2, 3]
    assert worst([]) == Status.PASS
    assert worst(["pass", "warn"]) == Status.WARN
    assert worst(["warn", "error", "fail"]) == Status.ERROR
    assert worst([Status.FAIL, "pass"]) == Status.FAIL


def test_stage_verdict_lets_warnings_pass():
    assert stage_verdict(["pass", "warn"]) == Status.PASS
    assert stage_verdict(["warn", "fail"]) == Status.FAIL
    assert stage_verdict(["fail", "error", "warn"]) == Status.ERROR
    assert stage_verdict([]) == Status.PASS


def test_a_status_is_its_name_in_text_json_and_dicts():
    assert Status.FAIL == "fail" and f"{Status.FAIL}" == "fail" and Status.FAIL.upper() == "FAIL"
    assert json.dumps({"status": Status.WARN}) == '{"status": "warn"}'
    assert {Status.ERROR: 1}["error"] == 1


def test_unknown_status_is_refused():
    with pytest.raises(ValueError):
        worst(["pass", "skipped"])
