"""flowpipe on Apache Spark: the same rule files and queries give what DuckDB gives, on a real
Spark cluster (a master and two workers on loopback, Spark Connect; see conftest.spark_remote).
"""

from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner
from conftest import capture_files, free_port, load_capture
from google.protobuf.timestamp_pb2 import Timestamp

from flowpipe import cli
from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2
from flowpipe.api.relay import relay_pb2
from flowpipe.codec import decode, storage
from flowpipe.errors import QueryError, RuleError
from flowpipe.lab import generate as lab
from flowpipe.rules import check, report
from flowpipe.rules import spark as rules_spark
from flowpipe.store.layout import Store
from flowpipe.views import catalog, spark
from flowpipe.views import query as query_mod
from flowpipe.views import translate as tr
from flowpipe.views.macros import RULE_MACROS

CLUSTERS = ("cluster1", "cluster2")
VARIANTS = ("allow-all-left", "l4-ingress-left", "no-allow-dns", "no-traffic")
DATASETS = [(stage, None) for stage in (1, 2, 3, 4, 5)] + [(5, v) for v in VARIANTS]
STAGE_FILES = [f"stage{i}.sql" for i in (1, 2, 3, 4, 5)]


def _cluster(stage: int, variant: str | None, cluster: str) -> str:
    return f"s{stage}-{variant or 'ok'}-{cluster}"


@pytest.fixture(scope="module")
def lab_store(tmp_path_factory) -> Store:
    """Every lab dataset (stages 1-5 and the broken stage-5 variants) in one store, each dataset's
    clusters under their own names; both engines read it as written (store format 2)."""
    store = Store(tmp_path_factory.mktemp("lab") / "store")
    store.ensure()
    for stage, variant in DATASETS:
        got = lab.generate_lab(stage, clusters=CLUSTERS, seed=7, variant=variant)
        for cluster, responses in got.items():
            if responses:
                flows, events = decode.split_responses(
                    decode.decode_responses([r.SerializeToString() for r in responses])
                )
                store.write(_cluster(stage, variant, cluster), storage.to_storage(flows), events)
    flows, events = decode.split_responses(
        decode.decode_responses([r.SerializeToString() for r in _relay_events(1759416400)])
    )
    store.write(_cluster(5, None, "cluster1"), storage.to_storage(flows), events)
    # real Hubble captures: fields the lab never sets (tunnels, ICMP, workloads, ...)
    for i, path in enumerate(capture_files()):
        flows, events = decode.split_responses(
            decode.decode_responses([r.SerializeToString() for r in load_capture(path)])
        )
        store.write(f"capture{i}", storage.to_storage(flows), events)
    return store


def _relay_events(start_s: int) -> list[observer_pb2.GetFlowsResponse]:
    """Lost events and node status as Relay reports them (the lab produces none)."""
    out = []
    for i in range(6):
        t = Timestamp(seconds=start_s + i, nanos=123_456_789 * (i % 2))
        if i % 3:
            ev = flow_pb2.LostEvent(source=1 + i % 3, num_events_lost=10 * i)
            ev.cpu.value = i
            ev.first.CopyFrom(Timestamp(seconds=start_s - 5, nanos=7))
            ev.last.CopyFrom(t)
            out.append(observer_pb2.GetFlowsResponse(lost_events=ev, node_name=f"n{i}", time=t))
        else:
            st = relay_pb2.NodeStatusEvent(
                state_change=1 + i % 4, node_names=[f"n{i}", "n9"], message="" if i else "gone"
            )
            out.append(observer_pb2.GetFlowsResponse(node_status=st, node_name="relay", time=t))
    return out


def _timeless(text: str):
    """A JSON report without its run times (the only field that differs between runs)."""
    doc = json.loads(text)
    for r in doc["results"]:
        r.pop("duration_s")
    return doc


def _all_clusters() -> list[str]:
    return [_cluster(s, v, c) for s, v in DATASETS for c in CLUSTERS]


def _results(rep: check.CheckReport) -> list[tuple]:
    return [
        (r.rule, r.cluster, r.status, r.evidence, r.violations, r.message, r.samples)
        for r in rep.results
    ]


# ------------------------------------------------------------------ the equality


@pytest.mark.parametrize("stage_file", STAGE_FILES)
def test_every_stage_file_on_every_lab_variant_equals_duckdb(lab_store, spark_remote, stage_file):
    """Status, evidence, violations, message and sample flows per rule and cluster, and the
    rendered report, for every stage file over every lab dataset."""
    clusters = _all_clusters()
    want = check.run_check(lab_store, [stage_file], clusters=clusters, samples=3)
    got = check.run_check(
        lab_store,
        [stage_file],
        clusters=clusters,
        samples=3,
        engine="spark",
        spark_remote=spark_remote,
    )
    assert _results(got) == _results(want)
    assert report.render_text(got) == report.render_text(want)
    assert _timeless(report.render_json(got)) == _timeless(report.render_json(want))
    # not vacuous: the datasets make every stage file both pass and fail somewhere, with samples
    statuses = {r.status for r in want.results}
    assert {"pass", "fail"} <= statuses
    assert any(r.samples for r in want.results)


def test_time_window_equals_duckdb(lab_store, spark_remote):
    """--since/--until cut the same flows on both engines (Spark filters the stored times)."""
    clusters = [_cluster(5, None, "cluster1"), _cluster(5, "allow-all-left", "cluster2")]
    (since, until), *_ = query_mod.fetch(  # the lab's traffic comes in bursts: by quantiles
        lab_store,
        "SELECT quantile_disc(time, 0.25), quantile_disc(time, 0.75) FROM flows "
        "WHERE cluster LIKE 's5-%'",
    )[1]
    whole = check.run_check(lab_store, ["stage5.sql"], clusters=clusters)
    want = check.run_check(lab_store, ["stage5.sql"], clusters=clusters, since=since, until=until)
    got = check.run_check(
        lab_store,
        ["stage5.sql"],
        clusters=clusters,
        since=since,
        until=until,
        engine="spark",
        spark_remote=spark_remote,
    )
    assert _results(got) == _results(want)
    assert 0 < sum(r.evidence for r in want.results) < sum(r.evidence for r in whole.results)


OTHER_RULES = """\
-- flowpipe: stage=x title="rules that are more than a row filter"

-- rule: policies-per-pod
-- why: a CTE, GROUP BY and HAVING
-- expect: none
WITH per AS (
  SELECT src_pod, count(DISTINCT dst_port) AS ports, count(*) AS n
  FROM policy_verdicts WHERE src_namespace = 'shop' GROUP BY ALL
)
SELECT * FROM per WHERE ports > 1 AND n > 3;

-- rule: drops-joined-to-verdicts
-- why: a join of two views and a window function
-- expect: at_least 1
SELECT d.time, d.uuid, d.src_pod, v.verdict,
       row_number() OVER (PARTITION BY d.src_pod ORDER BY d.time, d.uuid) AS nth
FROM drops d JOIN policy_verdicts v ON d.src_pod = v.src_pod AND d.dst_port = v.dst_port
QUALIFY nth <= 2;

-- rule: dns-answers
-- why: list functions, lambdas and a subquery
-- expect: all
-- min_flows: 0
-- assert: len(dns_ips) > 0 OR dns_rcode <> 0
-- assert: list_has_any(dns_qtypes, ['A', 'AAAA'])
-- assert: len(list_filter(dns_ips, lambda ip: ip LIKE '10.%')) = len(dns_ips)
SELECT * FROM l7_dns
WHERE l7_type = 'RESPONSE' AND src_pod IN (SELECT src_pod FROM flows WHERE src_namespace = 'kube-system');
"""


def test_rules_beyond_row_filters_equal_duckdb(lab_store, spark_remote, tmp_path):
    """Rules run one by one per cluster (CTEs, joins, windows) give the same on both engines."""
    path = tmp_path / "other.sql"
    path.write_text(OTHER_RULES)
    clusters = [_cluster(5, None, "cluster1"), _cluster(5, "allow-all-left", "cluster2")]
    want = check.run_check(lab_store, [str(path)], clusters=clusters)
    got = check.run_check(
        lab_store, [str(path)], clusters=clusters, engine="spark", spark_remote=spark_remote
    )
    assert not want.errors(), [r.message for r in want.errors()]
    assert _results(got) == _results(want)
    assert any(r.evidence for r in want.results)


# Every construct the translation accepts, and every rewrite, over real lab flows: each query
# runs on both engines and must give the same rows (ORDER BY makes the order part of it).
EQUAL_QUERIES = [
    # strings
    """SELECT uuid, lower(verdict), upper(event), rtrim(dns_query, '.'), ltrim(src_pod, 'f'),
              trim(summary), substr(summary, 2, 5), substr(summary, -3), strpos(summary, 'TCP'),
              starts_with(src_pod, 'front'), ends_with(dns_query, '.'), len(summary),
              length(src_pod), replace(summary, ' ', '_'), contains(summary, 'Flags'),
              split_part(src_pod, '-', 1), split_part(src_pod, '-', -1), split_part(src_pod, '-', 9),
              regexp_matches(summary, 'SYN|ACK'), summary ~ 'TCP',
              regexp_extract(http_url, '/([a-z]+)/', 1), regexp_extract(http_url, '[0-9]+'),
              concat(src_pod, '/', src_port), src_pod || '/' || dst_pod,
              summary LIKE '%Flags%', summary ILIKE '%flags%', summary NOT LIKE 'x%'
       FROM flows ORDER BY cluster, uuid""",
    # lists and the macros
    """SELECT uuid, len(src_labels), array_length(tcp_flags), len(dns_ips),
              contains(src_labels, 'k8s:app=frontend'), list_contains(src_labels, 'k8s:app=backend'),
              list_has_any(src_labels, ['k8s:app=frontend', 'nope']), list_has_all(tcp_flags, ['SYN']),
              list_filter(src_labels, lambda l: l LIKE 'k8s:app=%'), list_transform(src_labels, lambda l: upper(l)),
              src_labels[1], src_labels[-1], src_labels[0], src_labels[100], src_labels[src_port % 3],
              [src_pod, dst_pod], ingress_allowed_by_detail[1].name,
              array_to_string(src_labels, ','), array_to_string(dns_ips, '; '),
              has_label(src_labels, 'app=frontend'), has_label(src_labels, 'any:app=frontend'),
              has_label(dst_labels, 'k8s:app=backend'), has_label(src_labels, 'reserved:host'),
              allowed_by(egress_allowed_by, 'allow-dns'), denied_by(ingress_denied_by, 'x'),
              is_world(dst_labels), has_tcp_flags(tcp_flags, ['SYN', 'ACK']),
              connects(src_labels, dst_labels, 'app=frontend', 'app=backend'),
              http_status_class(http_code)
       FROM flows ORDER BY cluster, uuid""",
    # NULLs inside and around lists: DuckDB skips NULL elements
    """SELECT list_contains(['a', NULL], 'b'), list_contains(NULL::VARCHAR[], 'a'),
              list_has_any(['a', NULL], ['b']), list_has_any(['a', NULL], [NULL]), list_has_any(NULL::VARCHAR[], ['a']),
              list_has_all(['a'], [NULL]), list_has_all(['a', NULL], ['a', 'b']), len(NULL::VARCHAR[]),
              ['x', 'y'][2], ['x', 'y'][-2], array_to_string(['a', NULL, 'b'], ','),
              array_to_string(NULL::VARCHAR[], ',')""",
    # numbers, times, conditions, casts
    """SELECT uuid, coalesce(http_code, 0), nullif(src_port, 80), greatest(src_port, dst_port),
              least(src_port, dst_port), abs(CAST(src_port AS BIGINT) - 40000), round(src_port / 7, 2),
              floor(src_port / 7), ceil(src_port / 7), src_port // 7, src_port % 7, -CAST(src_port AS BIGINT),
              src_port / 4, extract(hour FROM time), extract(minute FROM time),
              date_trunc('minute', time), time > '2025-10-02 14:47:00+00'::TIMESTAMPTZ,
              epoch_ns(time) // 1000, CAST(src_port AS VARCHAR), CAST(is_reply AS VARCHAR),
              CAST(dst_port AS BIGINT), TRY_CAST(src_pod AS INTEGER),
              CASE WHEN verdict = 'DROPPED' THEN 1 WHEN verdict = 'FORWARDED' THEN 2 ELSE 3 END,
              if(is_reply, 'reply', 'request'), is_reply IS NOT DISTINCT FROM NULL,
              src_port BETWEEN 1000 AND 50000, dst_port IN (53, 80), (http_code = 200) IS NOT TRUE
       FROM flows ORDER BY cluster, uuid""",
    # aggregates, FILTER, DuckDB's min(x, n)
    """SELECT cluster, count(*), count(DISTINCT src_pod), sum(dst_port), avg(dst_port), min(time),
              max(src_port), count(*) FILTER (WHERE verdict = 'DROPPED'), count_if(is_reply),
              bool_and(dst_port > 0), bool_or(has_label(src_labels, 'app=frontend')),
              min(epoch_ns(time) // 1000, 3), max(dst_port, 2)
       FROM flows GROUP BY cluster ORDER BY cluster""",
    # windows, QUALIFY, ORDER BY with NULLs, LIMIT/OFFSET
    """SELECT cluster, uuid, row_number() OVER (PARTITION BY lower(cluster) ORDER BY time, uuid) AS n,
              rank() OVER (PARTITION BY lower(cluster) ORDER BY dst_port) AS r,
              dense_rank() OVER (PARTITION BY lower(cluster) ORDER BY dst_port) AS d,
              lag(dst_port) OVER (PARTITION BY lower(cluster) ORDER BY time, uuid) AS prev,
              lead(dst_port, 2) OVER (PARTITION BY lower(cluster) ORDER BY time, uuid) AS next2
       FROM flows QUALIFY n <= 20 ORDER BY cluster, n""",
    """SELECT cluster, uuid, http_code FROM flows ORDER BY http_code DESC, cluster, uuid LIMIT 30 OFFSET 5""",
    """SELECT cluster, uuid, http_code FROM flows ORDER BY http_code NULLS FIRST, cluster, uuid LIMIT 30""",
    # joins, set operations, subqueries, CTEs
    """WITH fe AS (SELECT uuid, src_pod, dst_port FROM flows WHERE has_label(src_labels, 'app=frontend'))
       SELECT f.uuid, d.verdict FROM fe f JOIN drops d ON f.uuid = d.uuid
       UNION ALL SELECT uuid, verdict FROM l7_http WHERE uuid IN (SELECT uuid FROM l7_http WHERE http_code = 200)
       EXCEPT SELECT uuid, verdict FROM flows WHERE verdict = 'FORWARDED'
       ORDER BY 1, 2""",
    """SELECT p.uuid FROM policy_verdicts p SEMI JOIN drops d ON p.src_pod = d.src_pod
       WHERE NOT EXISTS (SELECT 1 FROM l7_dns x WHERE x.uuid = p.uuid) ORDER BY 1""",
    """SELECT cluster, kind, count(*), sum(num_events_lost), min(lost_first), max(lost_last),
              list_contains(node_names, 'n9'), node_state, lost_source
       FROM events GROUP BY ALL ORDER BY ALL""",
]


@pytest.fixture(scope="module")
def both(lab_store, spark_remote):
    """A DuckDB connection and a Spark session with flowpipe's views over the lab stores."""
    con = catalog.connect(lab_store)
    con.execute("SET TimeZone = 'UTC'")
    views = spark.SparkViews(spark_remote, lab_store)
    views.define(spark.store_files(lab_store))
    yield con, views
    views.close()
    con.close()


@pytest.mark.parametrize("sql", EQUAL_QUERIES, ids=range(len(EQUAL_QUERIES)))
def test_translated_constructs_give_duckdbs_rows(both, sql):
    con, views = both
    want = con.execute(sql).fetchall()
    _, got = views.run(views.translate(sql))
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert tuple(g) == tuple(w)


def test_every_allowed_function_is_exercised():
    """The allowlist grows only with a case in EQUAL_QUERIES (or the views, for Cast)."""
    import sqlglot

    seen = set()
    for sql in EQUAL_QUERIES:
        seen |= {type(n).__name__ for n in sqlglot.parse_one(sql, read="duckdb").walk()}
    assert tr._FUNCTIONS - seen <= {"Cast"}, tr._FUNCTIONS - seen


def test_views_have_duckdbs_columns_and_rows(both):
    """Every column of flows and events, every row: the view definitions translate faithfully."""
    con, views = both
    for view in ("flows", "events"):
        sql = (
            f"SELECT * FROM {view} ORDER BY cluster, time, uuid"
            if view == "flows"
            else (f"SELECT * FROM {view} ORDER BY cluster, time")
        )
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        want = cur.fetchall()
        got_names, got = views.run(views.translate(sql))
        assert got_names == names
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert dict(zip(names, g)) == dict(zip(names, w))


def test_every_macro_has_a_spark_signature():
    assert set(spark.SIGNATURES) == set(RULE_MACROS)
    for name, (args, _) in RULE_MACROS.items():
        assert len(spark.SIGNATURES[name][0]) == len(args.strip("()").split(","))


# ------------------------------------------------------------------ refusals (no cluster needed)

REFUSED = [
    ("SELECT list_reduce(src_labels, lambda a, b: a || b) FROM flows", "function list_reduce()"),
    ("SELECT src_labels[1:2] FROM flows", "list slice"),
    ("SELECT list_filter(src_labels, lambda l, i: i > 1) FROM flows", "index parameter"),
    ("SELECT * FROM range(3)", "table function"),
    ("SELECT regexp_replace(summary, 'a', 'b') FROM flows", "regexp_replace"),
    ("SELECT CAST(1.5 AS INTEGER)", "DuckDB rounds, Spark truncates"),
    ("SELECT CAST(time AS VARCHAR) FROM flows", "engines format it differently"),
    ("SELECT extract(second FROM time) FROM flows", "extract(second)"),
    ("SELECT strftime(time, '%H') FROM flows", "strftime"),
    (
        "SELECT * FROM flows WHERE time > '2025-10-02 14:47:00.123456789+00'::TIMESTAMPTZ_NS",
        "finer than Spark's microseconds",
    ),
    ("SELECT fp_lsrc('k8s:a=b')", "function fp_lsrc()"),
    ("SELECT len(x) FROM (SELECT has_label(src_labels, 'a') AS x FROM flows)", "list or a string"),
    ("SELECT * FROM flows f ASOF JOIN drops d ON f.time >= d.time", "JOIN"),
    ("SELECT a FROM flows UNION BY NAME SELECT a FROM drops", "UNION BY NAME"),
    ("SELECT has_label(src_labels) FROM flows", "has_label() takes 2 arguments"),
    (
        "SELECT sum(src_port) OVER (ORDER BY time ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM flows",
        "window frame",
    ),
]


@pytest.mark.parametrize("sql,construct", REFUSED, ids=[c for _, c in REFUSED])
def test_untranslatable_sql_is_refused_naming_the_construct(lab_store, sql, construct):
    schema = spark.duck_schema(lab_store)
    with pytest.raises(tr.Untranslatable) as exc:
        tr.to_spark(sql, schema, functions=spark.macro_arity())
    assert construct in str(exc.value)


HOSTILE_SPARK = [
    "SELECT reflect('java.lang.System', 'getenv', 'HOME')",
    "SELECT java_method('java.lang.Runtime', 'getRuntime')",
    "SELECT * FROM parquet.`/etc/passwd`",
    "SELECT * FROM json.`/tmp/x`",
    "SELECT input_file_name() FROM flows",
    "SELECT current_user()",
    "SELECT * FROM __fp_flows",
    "SELECT * FROM default.flows",
    "SELECT * FROM read_files('/etc')",
    "CREATE TEMPORARY VIEW x AS SELECT 1",
    "SET spark.sql.ansi.enabled = false",
    "SELECT 1; SELECT 2",
    "SELECT some_udf(verdict) FROM flows",
]


@pytest.mark.parametrize("sql", HOSTILE_SPARK)
def test_spark_side_sandbox_refuses(sql):
    with pytest.raises(RuleError, match="refused on Spark|unreadable"):
        rules_spark.check_spark_sql(sql, "rule x")


def test_spark_sandbox_accepts_what_translation_gives(lab_store):
    schema = spark.duck_schema(lab_store)
    for sql in EQUAL_QUERIES:
        rules_spark.check_spark_sql(
            tr.to_spark(sql, schema, functions=spark.macro_arity()), "rule x"
        )


def test_check_refuses_an_untranslatable_rule_before_connecting(lab_store, tmp_path):
    path = tmp_path / "bad.sql"
    path.write_text(
        "-- rule: ok\n-- why: fine\n-- expect: none\nSELECT * FROM drops;\n\n"
        "-- rule: reduced\n-- why: no Spark form\n-- expect: none\n"
        "SELECT * FROM flows WHERE list_reduce(src_labels, lambda a, b: a || b) = 'x';\n"
    )
    with pytest.raises(RuleError) as exc:
        check.run_check(lab_store, [str(path)], engine="spark", spark_remote="sc://127.0.0.1:9")
    assert str(exc.value).startswith(f"{path}:9: rule reduced: cannot run on Spark:")
    assert "list_reduce()" in str(exc.value)


def test_cli_refusal_and_unreachable_server_are_one_line(lab_store, tmp_path):
    store = lab_store
    bad = tmp_path / "bad.sql"
    bad.write_text(
        "-- rule: r\n-- why: w\n-- expect: none\nSELECT * FROM flows WHERE reflect('a', 'b') = 1;\n"
    )
    runner = CliRunner()
    res = runner.invoke(
        cli.main,
        [
            "check",
            str(bad),
            "--store",
            str(store.root),
            "--engine",
            "spark",
            "--spark-remote",
            "sc://127.0.0.1:9",
        ],
    )
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        f"flowpipe: error: {bad}:4: rule r: cannot run on Spark: function reflect() (no Spark translation)"
    )
    port = free_port()
    res = runner.invoke(
        cli.main,
        [
            "check",
            "stage5.sql",
            "--store",
            str(store.root),
            "--engine",
            "spark",
            "--spark-remote",
            f"sc://127.0.0.1:{port}",
        ],
    )
    assert res.exit_code == 2
    assert res.stderr.startswith(
        f"flowpipe: error: cannot reach Spark Connect at sc://127.0.0.1:{port}:"
    )
    assert len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(
        cli.main,
        ["query", "SELECT 1", "--store", str(store.root), "--engine", "spark"],
        env={"SPARK_REMOTE": ""},
    )
    assert res.exit_code == 2 and "--spark-remote" in res.stderr


# ------------------------------------------------------------------ the CLI on Spark


def test_cli_check_and_query_on_spark(lab_store, spark_remote, tmp_path):
    cluster = _cluster(5, "allow-all-left", "cluster2")
    runner = CliRunner()
    args = ["check", "stage5.sql", "--cluster", cluster, "--format", "json", "--samples", "1"]
    want = runner.invoke(cli.main, [*args, "--store", str(lab_store.root)])
    got = runner.invoke(
        cli.main,
        [*args, "--store", str(lab_store.root), "--engine", "spark"],
        env={"SPARK_REMOTE": spark_remote},
    )
    assert want.exit_code == got.exit_code == 1
    assert _timeless(got.stdout) == _timeless(want.stdout)
    sql = "SELECT cluster, verdict, count(*), max(src_port) FROM flows GROUP BY ALL ORDER BY ALL"
    want = runner.invoke(
        cli.main, ["query", sql, "--store", str(lab_store.root), "--format", "csv"]
    )
    got = runner.invoke(
        cli.main,
        [
            "query",
            sql,
            "--store",
            str(lab_store.root),
            "--format",
            "csv",
            "--engine",
            "spark",
            "--spark-remote",
            spark_remote,
        ],
    )
    assert got.exit_code == want.exit_code == 0, got.output
    assert got.stdout == want.stdout and len(want.stdout.splitlines()) > 10


def test_query_errors_on_spark_are_one_line(lab_store, spark_remote):
    store = lab_store
    with pytest.raises(QueryError) as exc:
        spark.fetch(store, "SELECT no_such_column FROM flows", spark_remote)
    assert str(exc.value).startswith("query failed on Spark: ")
    assert "\n" not in str(exc.value)
    with pytest.raises(QueryError, match="query cannot run on Spark: function list_reduce"):
        query_mod.run(
            store,
            "SELECT list_reduce(src_labels, lambda a, b: a) FROM flows",
            out=io.StringIO(),
            engine="spark",
            spark_remote=spark_remote,
        )


def test_rule_timeout_interrupts_spark(lab_store, spark_remote, tmp_path):
    """A rule slower than --rule-timeout is interrupted on the cluster and reported as error."""
    path = tmp_path / "slow.sql"
    path.write_text(
        "-- rule: cross\n-- why: too slow\n-- expect: none\n"
        "SELECT a.uuid FROM flows a, flows b, flows c, flows d WHERE a.src_port + b.src_port + "
        "c.src_port + d.src_port = -1;\n"
    )
    cluster = _cluster(5, None, "cluster1")
    rep = check.run_check(
        lab_store,
        [str(path)],
        clusters=[cluster],
        rule_timeout=3,
        engine="spark",
        spark_remote=spark_remote,
    )
    (res,) = rep.results
    assert res.status == "error"
    assert "interrupted after 3 s (--rule-timeout)" in res.message
    assert res.duration_s < 60
