"""Commands over the views: query, columns."""

from __future__ import annotations

import sys

import click

from flowpipe.cli.base import (
    engine_option,
    handle_errors,
    main,
    open_store,
    spark_remote_option,
    store_option,
)


@main.command()
@click.argument("sql")
@store_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--max-rows", type=int, default=1000, show_default=True, help="Rows printed in table format."
)
@engine_option
@spark_remote_option
@handle_errors
def query(
    sql: str,
    store_path: str | None,
    fmt: str,
    max_rows: int,
    engine: str,
    spark_remote: str | None,
) -> None:
    """Run SQL over the store's views and print the result.

    Views: flows, policy_verdicts, drops, l7_http, l7_dns, events, lost_events, node_status
    (and flows_proto, the stored protobuf columns). `flowpipe columns` lists the columns.

    Example:

    \b
        flowpipe query --store ./store "SELECT cluster, verdict, count(*) FROM flows GROUP BY ALL"
        flowpipe query --engine spark --spark-remote sc://localhost:15002 "SELECT count(*) FROM drops"
    """
    from flowpipe.views import query as q

    store = open_store(store_path)
    q.run(
        store,
        sql,
        fmt=fmt,
        out=sys.stdout,
        max_rows=max_rows,
        engine=engine,
        spark_remote=spark_remote,
    )


@main.command()
@click.option("--view", type=click.Choice(["flows", "events"]), default="flows", show_default=True)
@handle_errors
def columns(view: str) -> None:
    """List the columns of the flows (or events) view, for writing queries and rules.

    Example:

        flowpipe columns --view flows
    """
    from flowpipe.views import columns

    cols = columns.flat_columns() if view == "flows" else columns.event_columns()
    width = max(len(n) for n, _, _ in cols)
    for name, _, doc in cols:
        click.echo(f"{name:<{width}}  {doc}")
