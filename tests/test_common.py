"""common/: SQL literals checked by a real DuckDB, one-line errors, JSON of query values."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowpipe.common.sql import (
    MAX_NS,
    MIN_NS,
    date_literal,
    datetime_ns,
    quote,
    quote_list,
    timestamp_literal,
)
from flowpipe.common.text import first_line, json_default


@pytest.fixture(scope="module")
def con():
    c = duckdb.connect()
    yield c
    c.close()


@pytest.mark.parametrize("text", ["", "plain", "it's", "''", "a'; DROP TABLE x; --", "é\n\t\\"])
def test_quote_round_trips(con, text):
    assert con.execute(f"SELECT {quote(text)}").fetchone()[0] == text
    assert con.execute(f"SELECT {quote_list([text, 'b'])}").fetchone()[0] == [text, "b"]


def test_quote_refuses_nul():
    with pytest.raises(ValueError, match="NUL"):
        quote("a\x00b")


@pytest.mark.parametrize(
    "ns",
    [0, 1, 999_999_999, 1_700_000_000_123_456_789, -1, -1_500_000_000_000_000_001, MAX_NS, MIN_NS],
)
def test_timestamp_literal_is_exact_to_the_nanosecond(con, ns):
    got, typ = con.execute(
        f"SELECT epoch_ns({timestamp_literal(ns)}), typeof({timestamp_literal(ns)})"
    ).fetchone()
    assert (got, typ) == (ns, "TIMESTAMPTZ_NS")


def test_timestamp_literal_compares_exactly_with_the_stored_column(con, tmp_path):
    ns = 1_700_000_000_000_000_001
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"time": pa.array([ns], pa.timestamp("ns", tz="UTC"))}), path)
    got = con.execute(
        f"SELECT count(*) FILTER (WHERE time = {timestamp_literal(ns)}), "
        f"count(*) FILTER (WHERE time = {timestamp_literal(ns + 1)}), "
        f"count(*) FILTER (WHERE time < {timestamp_literal(ns + 1)}) FROM '{path}'"
    ).fetchone()
    assert got == (1, 0, 1)


def test_out_of_range_bounds_are_clamped_not_errors(con):
    low, high = timestamp_literal(-(10**20)), timestamp_literal(10**20)
    assert con.execute(f"SELECT epoch_ns({low}), epoch_ns({high})").fetchone() == (MIN_NS, MAX_NS)
    last_day = dt.datetime.fromtimestamp(MAX_NS // 10**9, dt.UTC).date()
    assert con.execute(f"SELECT {date_literal(10**20)}").fetchone()[0] == last_day


def test_date_literal_is_the_utc_day(con):
    assert con.execute(f"SELECT {date_literal(-1)}").fetchone()[0] == dt.date(1969, 12, 31)
    assert con.execute(f"SELECT {date_literal(86_400 * 10**9)}").fetchone()[0] == dt.date(
        1970, 1, 2
    )


def test_datetime_ns_is_exact():
    when = dt.datetime(2025, 10, 2, 14, 0, 0, 123456, tzinfo=dt.UTC)
    assert datetime_ns(when) == 1_759_413_600_123_456_000
    before = dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)
    assert datetime_ns(before) == -1000


def test_first_line_of_duckdb_errors(con):
    with pytest.raises(duckdb.Error) as err:
        con.execute("SELECT x FROM range(3) t(a)")
    assert "\n" in str(err.value)  # DuckDB adds context lines
    assert first_line(err.value) == 'Binder Error: Referenced column "x" not found in FROM clause!'
    assert first_line(ValueError("\n\n  second line  \nthird")) == "second line"
    assert first_line(KeyError()) == "KeyError"
    assert first_line("") == ""


def test_json_default_covers_duckdb_values():
    row = {
        "t": dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "d": dt.date(2025, 1, 2),
        "tod": dt.time(3, 4),
        "n": decimal.Decimal("1.50"),
        "u": uuid.UUID(int=1),
        "b": b"\x00\xff",
        "ba": bytearray(b"\x01"),
        "mv": memoryview(b"\x02"),
        "iv": dt.timedelta(minutes=1, microseconds=5),
        "other": object,
    }
    doc = json.loads(json.dumps(row, default=json_default))
    assert doc["t"] == "2025-01-02T03:04:05+00:00" and doc["d"] == "2025-01-02"
    assert doc["tod"] == "03:04:00" and doc["n"] == "1.50"
    assert doc["u"] == "00000000-0000-0000-0000-000000000001"
    assert (doc["b"], doc["ba"], doc["mv"]) == ("00ff", "01", "02")
    assert doc["iv"] == 60.000005 and doc["other"] == "<class 'object'>"
