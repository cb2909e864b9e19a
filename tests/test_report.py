"""rules.report: the text, JSON and JUnit renderings of a check and its exit code."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import xml.etree.ElementTree as ET

import pytest

from flowpipe.rules import report
from flowpipe.rules.check import CheckReport, RuleResult
from flowpipe.rules.status import Status

T0 = dt.datetime(2025, 10, 2, 14, 0, tzinfo=dt.UTC)
FLOW = {  # a row of the flows view, as check's samples hold them
    "time": T0,
    "verdict": "DROPPED",
    "event_type": 1,
    "src_ip": "10.0.0.1",
    "dst_ip": "10.0.0.2",
    "src_namespace": "shop",
    "src_pod": "frontend-1",
    "dst_port": 80,
    "src_identity": 100,
    "dst_identity": 2,
}


def result(rule: str, cluster: str, status: Status, **kw) -> RuleResult:
    fields = {
        "file": "stage9.sql",
        "stage": "9",
        "severity": "warn" if status == Status.WARN else "error",
        "evidence": 10,
        "violations": 0,
        "why": f"{rule} matters",
        "message": "ok",
        "duration_s": 0.25,
    }
    fields.update(kw)
    return RuleResult(rule=rule, cluster=cluster, status=status, **fields)


def make(*results: RuleResult, clusters=("c1", "c2")) -> CheckReport:
    return CheckReport(list(results), list(clusters), T0, T0 + dt.timedelta(minutes=30))


@pytest.fixture
def mixed() -> CheckReport:
    no_evidence = "0 flows in scope; need at least 1 (no evidence in the window?)"
    return make(
        result("ok", "c1", Status.PASS),
        result("ok", "c2", Status.PASS),
        result("evidence", "c1", Status.FAIL, evidence=0, message=no_evidence),
        result("evidence", "c2", Status.FAIL, evidence=0, message=no_evidence),
        result(
            "no-drops",
            "c1",
            Status.FAIL,
            violations=4,
            message="4 flows match; expected none",
            samples=[FLOW, {**FLOW, "src_pod": "frontend-2"}],
        ),
        result("soft", "c2", Status.WARN, violations=1, message="1 flow matches; expected none"),
    )


def test_text_is_a_table_then_one_block_per_finding(mixed):
    text = report.render_text(mixed)
    lines = text.splitlines()
    assert lines[0] == (
        "flowpipe check: stage9.sql on c1, c2; flows from 2025-10-02T14:00:00Z to 2025-10-02T14:30:00Z"
    )
    assert lines[2].split() == ["RULE", "CLUSTER", "STATUS", "EVIDENCE", "VIOLATIONS"]
    assert lines[3].split() == ["ok", "c1", "pass", "10", "0"]
    assert lines[7].split() == ["no-drops", "c1", "FAIL", "10", "4"]
    # the same finding on two clusters is one block; samples as hubble lines, then how many more
    assert text.count("FAIL evidence on c1, c2 (stage9.sql): 0 flows in scope") == 1
    block = text[text.index("FAIL no-drops on c1") :].splitlines()
    assert block[1] == "  why: no-drops matters"
    assert "shop/frontend-1" in block[2] and "DROPPED" in block[2]
    assert "shop/frontend-2" in block[3]
    assert block[4] == "  ... and 2 more (paste the rule's SELECT into flowpipe query)"
    assert "WARN soft on c2 (stage9.sql): 1 flow matches; expected none" in text
    # a warning does not fail a stage
    assert "stage 9: c1 fail, c2 fail" in text
    assert lines[-1] == "result: FAIL (2 passed, 1 warnings, 3 failed, 0 errors)"


def test_text_names_the_file_when_there_are_several():
    rep = make(
        result("a", "c1", Status.PASS, file="one.sql"),
        result("b", "c1", Status.PASS, file="two.sql", stage="8"),
        clusters=("c1",),
    )
    rep.since = rep.until = None
    text = report.render_text(rep)
    assert "one.sql, two.sql on c1; all stored flows" in text
    assert "one.sql/a" in text and "two.sql/b" in text
    assert "stage 9: c1 pass" in text and "stage 8: c1 pass" in text
    assert text.endswith("result: PASS (2 passed, 0 warnings, 0 failed, 0 errors)\n")


def test_exit_codes():
    ok, warn = result("a", "c1", Status.PASS), result("w", "c1", Status.WARN)
    fail, err = result("f", "c1", Status.FAIL), result("e", "c1", Status.ERROR)
    assert report.exit_code(make(ok, warn)) == report.EXIT_OK == 0
    assert report.exit_code(make(ok, fail, warn)) == report.EXIT_FAILED == 1
    assert report.exit_code(make(fail, err)) == report.EXIT_ERROR == 2


def test_json_holds_any_value_a_rule_selects(mixed):
    odd = {
        "n": decimal.Decimal("2.5"),
        "raw": memoryview(b"\x01\x02"),
        "b": b"\xff",
        "when": T0,
        "gap": dt.timedelta(seconds=3),
    }
    mixed.results[4].samples.append(odd)
    doc = json.loads(report.render(mixed, "json"))
    assert doc["exit_code"] == 1 and doc["passed"] is False
    assert doc["counts"] == {"pass": 2, "warn": 1, "fail": 3, "error": 0}
    assert {(s["cluster"], s["status"]) for s in doc["stages"]} == {("c1", "fail"), ("c2", "fail")}
    sample = doc["results"][4]["samples"][2]
    assert sample == {
        "n": "2.5",
        "raw": "0102",
        "b": "ff",
        "when": "2025-10-02T14:00:00+00:00",
        "gap": 3.0,
    }
    lines = doc["results"][4]["sample_lines"]
    assert "shop/frontend-1" in lines[0] and json.loads(lines[2])["n"] == "2.5"


def test_a_row_of_odd_columns_is_shown_as_json_not_lost():
    rows = [
        {"cluster": "c1", "drops": 3},  # a rule's own aggregate
        {"time": "not a time", "verdict": 5, "src_ip": 1, "dst_ip": None, "src_namespace": 7},
    ]
    rep = make(
        result("agg", "c1", Status.FAIL, violations=2, samples=rows, message="m"),
        clusters=("c1",),
    )
    text = report.render_text(rep)
    assert '  {"cluster": "c1", "drops": 3}' in text
    assert '"time": "not a time"' in text


def test_junit_is_valid_xml_whatever_the_messages_hold():
    rep = make(
        result("bad", "c1", Status.FAIL, message="bell\x07 and \x00 nul", violations=1),
        result("err", "c1", Status.ERROR, message="SQL error: x", duration_s=1.0),
        result("soft", "c1", Status.WARN, message="careful"),
        result("ok", "c1", Status.PASS),
        clusters=("c1",),
    )
    root = ET.fromstring(report.render(rep, "junit"))
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "1")
    assert root.get("time") == "1.750"
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases["bad"].find("failure").get("message") == "bell? and ? nul"
    assert cases["err"].find("error").get("message") == "SQL error: x"
    assert cases["soft"].find("failure") is None
    assert cases["soft"].find("system-out").text.startswith("WARNING: careful")
    assert list(cases["ok"]) == []
    assert cases["ok"].get("classname") == "flowpipe.9.c1"


def test_render_knows_every_format(mixed):
    assert set(report.FORMATS) == {"text", "json", "junit"}
    assert report.render(mixed, "text") == report.render_text(mixed)
