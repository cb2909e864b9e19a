"""Commands that bring flows in: collect (from Relays), import (from jsonpb files)."""

from __future__ import annotations

import sys
import threading

import click

from flowpipe.cli.base import (
    EXIT_FAILED,
    _fail,
    handle_errors,
    main,
    on_stop_signal,
    open_store,
    setup_logging,
    store_option,
)


@main.command(graceful=True)
@click.option(
    "--relay",
    "relays",
    multiple=True,
    metavar="CLUSTER=HOST:PORT",
    help="A Hubble Relay and the cluster it serves (repeatable).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="YAML or TOML file with relays and settings.",
)
@store_option
@click.option(
    "--plaintext",
    is_flag=True,
    help="Connect to --relay addresses without TLS (e.g. after `cilium hubble port-forward`).",
)
@click.option(
    "--tls-ca-cert-files",
    "ca_files",
    multiple=True,
    help="CA certificate(s) to verify the relay (default: system roots).",
)
@click.option("--tls-client-cert-file", "cert_file", help="Client certificate for mTLS.")
@click.option("--tls-client-key-file", "key_file", help="Client key for mTLS.")
@click.option(
    "--tls-server-name",
    "server_name",
    help="Name expected in the relay certificate, e.g. ui.hubble-relay.cilium.io.",
)
@click.option(
    "--allow",
    "allow",
    multiple=True,
    metavar="FILTERS",
    help="Server-side allowlist (repeatable): JSON FlowFilter(s), a JSON list, "
    "`hubble observe --print-raw-filters` output, or a file of them. A flow is kept if it "
    "matches any allow filter and no deny filter.",
)
@click.option(
    "--deny",
    "deny",
    multiple=True,
    metavar="FILTERS",
    help="Server-side denylist (repeatable), same forms as --allow.",
)
@click.option(
    "--print-raw-filters",
    is_flag=True,
    help="Print the allowlist and denylist each relay is asked for, as hubble prints them, and exit.",
)
@click.option(
    "--since",
    help="First start only: how far back to ask Relay (1h, 'now' or RFC 3339); default: all it holds.",
)
@click.option(
    "--flush-interval", help="Commit buffered flows at least this often (default 2s, max 5s)."
)
@click.option(
    "--flush-rows",
    type=int,
    help="Commit earlier when this many flows are buffered (default 30000).",
)
@click.option(
    "--max-buffer",
    help="Per cluster, stop reading the relay while this much is buffered (default 32MB).",
)
@click.option("--keepalive", help="HTTP/2 ping interval to notice dead connections (default 30s).")
@click.option(
    "--idle-timeout", help="Re-dial a stream that delivers nothing for this long (default off)."
)
@click.option("--backoff-max", help="Longest wait between reconnect attempts (default 30s).")
@click.option(
    "--resume-overlap",
    help="On resume, ask Relay for this much before the newest stored flow (default 10s).",
)
@click.option(
    "--metrics-listen", metavar="HOST:PORT", help="Serve the collector's Prometheus /metrics here."
)
@click.option("--keep", help="Retention for automatic compaction, e.g. 7d (default: keep all).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines, warnings and errors only.")
@handle_errors
def collect(config_file, store_path, print_raw_filters, **flags) -> None:
    """Stream flows from every cluster's Hubble Relay into the store until Ctrl-C.

    Resumes after errors and restarts from the newest stored flow of each cluster, dropping
    the duplicates the overlap causes. SIGINT/SIGTERM flush and exit 0. Durations: 250ms,
    30s, 5m, 1h30m, 7d, 2w or seconds.

    Example:

    \b
        cilium hubble port-forward &
        flowpipe collect --store ./store --plaintext --relay cluster1=localhost:4245
        flowpipe collect --relay c1=localhost:4245 --plaintext --print-raw-filters \\
            --allow '{"source_pod":["shop/"]}' --allow '{"destination_pod":["shop/"]}'
    """
    stop = threading.Event()
    on_stop_signal(stop.set)  # from here on a stop signal is a clean stop, even during start-up
    from flowpipe.ingest import collector as collect_mod
    from flowpipe.ingest import config as cfgmod

    cfg = cfgmod.load(config_file, store=store_path, **flags)
    if print_raw_filters:
        click.echo(cfgmod.raw_filters_yaml(cfg.relays), nl=False)
        return
    setup_logging(cfg.quiet)
    store = open_store(cfg.store, create=True)
    collector = collect_mod.Collector(cfg, store, stop=stop)
    if cfg.metrics_listen:
        from flowpipe.export import metrics

        metrics.serve(collector.registry, cfg.metrics_listen)
    unstored = collector.run(install_signals=False)
    if unstored:
        _fail(f"{unstored} flows could not be stored (see the errors above)", EXIT_FAILED)


@main.command("import")
@click.argument("files", nargs=-1, required=True)
@store_option
@click.option(
    "--cluster",
    help="Cluster name for every flow (default: from node_name 'cluster/node', else 'default').",
)
@click.option(
    "--strict", is_flag=True, help="Abort on the first malformed line; nothing is written."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@handle_errors
def import_cmd(
    files: tuple[str, ...], store_path: str | None, cluster: str | None, strict: bool, quiet: bool
) -> None:
    """Load hubble jsonpb captures or Hubble exporter logs (plain, .gz, or - for stdin).

    Malformed lines are reported as FILE:LINE with the reason (and make the exit code 1);
    duplicates of flows already stored are dropped, so importing a file twice adds nothing.

    Example:

        hubble observe -o jsonpb --last 1000 > flows.json
        flowpipe import --store ./store --cluster cluster1 flows.json
    """
    from flowpipe.ingest import importer

    store = open_store(store_path, create=True)
    show_bar = not quiet and sys.stderr.isatty() and "-" not in files
    if show_bar:
        with click.progressbar(length=0, label="importing", file=sys.stderr, show_pos=True) as bar:
            report = importer.import_files(
                store, list(files), cluster=cluster, strict=strict, on_progress=bar.update
            )
    else:
        report = importer.import_files(store, list(files), cluster=cluster, strict=strict)
    for err in report.errors:
        click.echo(f"flowpipe: {err}", err=True)
    if not quiet:
        click.echo(
            f"imported {report.flows} flows, {report.events} events from {report.files} file(s); "
            f"{report.duplicates} duplicates dropped, {report.skipped} agent/debug events skipped, "
            f"{len(report.errors)} bad lines",
            err=True,
        )
    if report.errors:
        sys.exit(EXIT_FAILED)
