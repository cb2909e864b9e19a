"""The export command: rules on a schedule as Prometheus metrics."""

from __future__ import annotations

import click

from flowpipe.cli.base import (
    handle_errors,
    main,
    open_store,
    rule_timeout_option,
    setup_logging,
    store_option,
)


@main.command()
@click.option(
    "--rules",
    "rule_files",
    multiple=True,
    required=True,
    metavar="PATH",
    help="Rule file, directory of them, or shipped stage name (repeatable).",
)
@store_option
@click.option(
    "--listen",
    default="0.0.0.0:9965",
    show_default=True,
    metavar="HOST:PORT",
    help="Serve /metrics and /healthz here.",
)
@click.option(
    "--interval",
    default="30s",
    show_default=True,
    help="Evaluate the rules and count new flows this often.",
)
@click.option(
    "--window",
    default="5m",
    show_default=True,
    help="Rules look at the flows of this last stretch of time.",
)
@rule_timeout_option
@click.option(
    "--memory-limit",
    default="1GB",
    show_default=True,
    help="DuckDB memory limit for rules and counting.",
)
@click.option(
    "--collect-config",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Also run `flowpipe collect` with this config in this process; its metrics join /metrics.",
)
@click.option("--quiet", "-q", is_flag=True, help="Warnings and errors only.")
@handle_errors
def export(
    rule_files,
    store_path,
    listen,
    interval,
    window,
    rule_timeout,
    memory_limit,
    collect_config,
    quiet,
) -> None:
    """Serve rule conformance, store health and flow counters as Prometheus metrics.

    Rules are evaluated in the background every --interval over the last --window; a scrape
    returns the last results at once. /healthz answers 503 when the last good evaluation is
    older than three intervals. Flow counters never go backwards (state in <store>/.export-state.json).

    Example:

    \b
        flowpipe export --rules queries/ --store ./store --listen 0.0.0.0:9965 --interval 30s --window 5m
        curl -s localhost:9965/metrics | grep flowpipe_stage_conformant
    """
    from flowpipe.common.units import parse_duration
    from flowpipe.export import exporter as export_mod

    setup_logging(quiet)
    store = open_store(store_path, create=bool(collect_config))
    export_mod.run(
        store,
        list(rule_files),
        listen=listen,
        interval=parse_duration(interval, "--interval"),
        window=parse_duration(window, "--window"),
        rule_timeout=rule_timeout,
        memory_limit=memory_limit,
        collect_config=collect_config,
        on_ready=lambda text: click.echo(f"flowpipe export: {text}", err=True),
    )
