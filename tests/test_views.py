"""The views every command shares: friendly columns, macros, the .duckdb file."""

from __future__ import annotations

import duckdb
from conftest import capture_files

from flowpipe.ingest import importer
from flowpipe.views import catalog as views
from flowpipe.views import columns, query


def test_views_work_on_empty_store(store):
    _, rows = query.fetch(store, "SELECT count(*) FROM flows")
    assert rows == [(0,)]
    _, rows = query.fetch(store, "SELECT count(*) FROM events")
    assert rows == [(0,)]


def test_every_documented_column_exists(store):
    names, _ = query.fetch(store, "SELECT * FROM flows LIMIT 0")
    assert names == [n for n, _, _ in columns.flat_columns()]


def test_friendly_columns_on_real_captures(store):
    importer.import_files(store, [str(p) for p in capture_files()], cluster="lab")
    _, rows = query.fetch(
        store,
        "SELECT verdict, event, policy_match, traffic_direction, count(*) FROM policy_verdicts GROUP BY ALL",
    )
    assert rows and all(r[0] == "REDIRECTED" and r[1] == "policy-verdict" for r in rows)
    _, rows = query.fetch(
        store,
        "SELECT dns_query, l7_type, src_port, dst_port FROM l7_dns WHERE l7_type = 'REQUEST' LIMIT 1",
    )
    assert rows[0][0].endswith(".") and rows[0][3] == 53
    _, rows = query.fetch(
        store,
        "SELECT http_method, http_path, http_code FROM l7_http WHERE http_code IS NOT NULL LIMIT 1",
    )
    assert rows[0][0] in ("GET", "POST") and rows[0][1].startswith("/") and 100 <= rows[0][2] < 600
    _, rows = query.fetch(store, "SELECT tcp_flags FROM flows WHERE 'SYN' = ANY(tcp_flags) LIMIT 1")
    assert "SYN" in rows[0][0]


def test_macros():
    con = duckdb.connect()
    for name, (args, body) in views.MACROS.items():
        con.execute(f"CREATE MACRO {name}{args} AS {body}")
    labels = "['k8s:app=frontend', 'k8s:io.kubernetes.pod.namespace=shop', 'reserved:host']"
    q = lambda sel: con.execute(f"SELECT has_label({labels}, '{sel}')").fetchone()[0]  # noqa: E731
    assert q("app=frontend") and q("k8s:app=frontend") and q("io.kubernetes.pod.namespace=shop")
    assert (
        q("reserved:host")
        and not q("app=backend")
        and not q("namespace=shop")
        and q("any:app=frontend")
    )
    assert con.execute(
        "SELECT allowed_by(['allow-dns'], 'allow-dns'), http_status_class(403)"
    ).fetchone() == (True, "4xx")


def test_database_file_opens_in_duckdb(store):
    importer.import_files(store, [str(capture_files()[0])], cluster="c1")
    path = views.write_database(store)
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT count(*) FROM flows").fetchone()[0] == 10
    con.close()
    # nothing keeps it open: it can be replaced while a reader had it open before
    views.write_database(store)


def test_same_schema_compares_footers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flowpipe.store.layout import PARQUET_OPTIONS

    base = pa.table(
        {
            "a": pa.array([1, 2], pa.int64()),
            "b": pa.array([{"x": "s"}, None], pa.struct([("x", pa.string())])),
        }
    )
    paths = []
    for i, table in enumerate([base, base.slice(1), base.slice(0, 1)]):
        paths.append(str(tmp_path / f"same-{i}.parquet"))
        pq.write_table(table, paths[-1], **PARQUET_OPTIONS)
    assert views.same_schema(paths)  # other rows and row counts, the same schema
    wider = str(tmp_path / "wider.parquet")
    pq.write_table(base.append_column("c", pa.array([True, False])), wider, **PARQUET_OPTIONS)
    renamed = str(tmp_path / "renamed.parquet")
    pq.write_table(base.rename_columns(["a", "B"]), renamed, **PARQUET_OPTIONS)
    retyped = str(tmp_path / "retyped.parquet")
    pq.write_table(
        base.set_column(0, "a", pa.array([1, 2], pa.int32())), retyped, **PARQUET_OPTIONS
    )
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    for other in (wider, renamed, retyped, str(broken), str(tmp_path / "missing.parquet")):
        assert not views.same_schema([paths[0], other]), other
    # and DuckDB agrees: the files it would read without union_by_name give the same rows
    con = duckdb.connect()
    got = con.execute(f"SELECT count(*) FROM read_parquet({paths})").fetchone()
    assert got == (4,)


def test_l4_protocol_of_empty_records(store):
    """l4_protocol reads one leaf per record: a record present with every field at its default
    (TCP{} without ports) still names its protocol."""
    from flowpipe.api.observer import observer_pb2
    from flowpipe.codec import decode, storage

    kinds = ("TCP", "UDP", "SCTP", "ICMPv4", "ICMPv6", "VRRP", "IGMP", None)
    raw = []
    for i, kind in enumerate(kinds):
        r = observer_pb2.GetFlowsResponse()
        r.flow.time.seconds, r.flow.node_name = 1_700_000_000 + i, "c/n"
        if kind:
            getattr(r.flow.l4, kind).SetInParent()
        raw.append(r.SerializeToString())
    flows, events = decode.split_responses(decode.decode_responses(raw))
    store.write("c", storage.to_storage(flows), events)
    _, rows = query.fetch(store, "SELECT l4_protocol FROM flows ORDER BY time")
    assert [r[0] for r in rows] == list(kinds)


def test_stored_times_and_uuids_come_back_typed_to_the_nanosecond(store, captures):
    from flowpipe.codec import decode, storage

    raw = []
    for i, r in enumerate(captures[:50]):
        r = type(r).FromString(r.SerializeToString())
        r.flow.uuid = f"0b1c2d3e-4f50-4617-8293-{i:012x}"
        r.flow.time.nanos = r.flow.time.nanos - r.flow.time.nanos % 1000 + 7  # not whole µs
        raw.append(r.SerializeToString())
    flows, _ = decode.split_responses(decode.decode_responses(raw))
    store.write("c1", storage.to_storage(flows))
    want = sorted(
        (f.uuid, f.time.seconds * 10**9 + f.time.nanos)
        for f in (type(captures[0]).FromString(b).flow for b in raw)
    )
    con = views.connect(store)
    con.execute("SET TimeZone = 'America/New_York'")  # the conversion must not depend on it
    rows = con.execute(
        "SELECT uuid, epoch_ns(time), typeof(time), typeof(uuid) FROM flows ORDER BY ALL"
    ).fetchall()
    assert [(u, t) for u, t, *_ in rows] == want
    assert {r[2:] for r in rows} == {("TIMESTAMPTZ_NS", "VARCHAR")}
    assert con.execute(
        "SELECT bool_and(_time_ns = epoch_ns(time)), min(typeof(_uuid)) FROM flows_proto"
    ).fetchall() == [(True, "UUID")]
