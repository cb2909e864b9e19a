"""Command line: parse arguments, call one library function, map errors to exit codes."""

from __future__ import annotations

import functools
import sys

import click

from flowpipe import __version__
from flowpipe.errors import FlowpipeError
from flowpipe.store import ENV as STORE_ENV
from flowpipe.store import Store

# Exit codes shared by every command.
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and found a problem (e.g. a rule failed)
EXIT_ERROR = 2  # the command could not do its job (bad input, no store, unreachable relay)


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    click.echo(f"flowpipe: error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn):
    """Turn library errors into one readable line and an exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FlowpipeError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:
            sys.exit(0)

    return wrapper


store_option = click.option(
    "--store",
    "store_path",
    envvar=STORE_ENV,
    metavar="PATH",
    help=f"Store directory (or ${STORE_ENV}).",
)


def open_store(path: str | None, create: bool = False) -> Store:
    return Store.open(path, create=create)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="flowpipe")
def main() -> None:
    """flowpipe: Hubble flow analytics for Cilium zero-trust rollouts.

    Collect flows from Hubble Relay into a Parquet store, check policy stages with SQL
    rules, and export conformance as Prometheus metrics.
    """


# ---------------------------------------------------------------- query


@main.command()
@click.argument("sql")
@store_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--max-rows", type=int, default=1000, show_default=True, help="Rows printed in table format.")
@handle_errors
def query(sql: str, store_path: str | None, fmt: str, max_rows: int) -> None:
    """Run SQL over the store's views and print the result.

    Views: flows, policy_verdicts, drops, l7_http, l7_dns, events, lost_events, node_status
    (and flows_proto, the stored protobuf columns). `flowpipe columns` lists the columns.

    Example:

        flowpipe query --store ./store "SELECT cluster, verdict, count(*) FROM flows GROUP BY ALL"
    """
    from flowpipe import query as q

    store = open_store(store_path)
    q.run(store, sql, fmt=fmt, out=sys.stdout, max_rows=max_rows)


@main.command()
@click.option("--view", type=click.Choice(["flows", "events"]), default="flows", show_default=True)
@handle_errors
def columns(view: str) -> None:
    """List the columns of the flows (or events) view, for writing queries and rules.

    Example:

        flowpipe columns --view flows
    """
    from flowpipe import schema

    cols = schema.flat_columns() if view == "flows" else schema.event_columns()
    width = max(len(n) for n, _, _ in cols)
    for name, _, doc in cols:
        click.echo(f"{name:<{width}}  {doc}")


# ---- collect / compact


def setup_logging(quiet: bool) -> None:
    import logging

    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


@main.command()
@click.option("--relay", "relays", multiple=True, metavar="CLUSTER=HOST:PORT", help="A Hubble Relay and the cluster it serves (repeatable).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML or TOML file with relays and settings.")
@store_option
@click.option("--plaintext", is_flag=True, help="Connect to --relay addresses without TLS (e.g. after `cilium hubble port-forward`).")
@click.option("--tls-ca-cert-files", "ca_files", multiple=True, help="CA certificate(s) to verify the relay (default: system roots).")
@click.option("--tls-client-cert-file", "cert_file", help="Client certificate for mTLS.")
@click.option("--tls-client-key-file", "key_file", help="Client key for mTLS.")
@click.option("--tls-server-name", "server_name", help="Name expected in the relay certificate, e.g. ui.hubble-relay.cilium.io.")
@click.option("--allow", "allow", help="Server-side allowlist: JSON FlowFilter(s) as `hubble observe --print-raw-filters` prints, or a file.")
@click.option("--deny", "deny", help="Server-side denylist, same forms as --allow.")
@click.option("--since", help="First start only: how far back to ask Relay (e.g. 1h, 'now'); default: all it holds.")
@click.option("--flush-interval", help="Commit buffered flows at least this often (default 2s, max 5s).")
@click.option("--flush-rows", type=int, help="Commit earlier when this many flows are buffered (default 100000).")
@click.option("--keepalive", help="HTTP/2 ping interval to notice dead connections (default 30s).")
@click.option("--idle-timeout", help="Re-dial a stream that delivers nothing for this long (default off).")
@click.option("--backoff-max", help="Longest wait between reconnect attempts (default 30s).")
@click.option("--resume-overlap", help="On resume, ask Relay for this much before the newest stored flow (default 10s).")
@click.option("--metrics-listen", metavar="HOST:PORT", help="Serve the collector's Prometheus /metrics here.")
@click.option("--keep", help="Retention for automatic compaction, e.g. 7d (default: keep all).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines, warnings and errors only.")
@handle_errors
def collect(relays, config_file, store_path, plaintext, ca_files, cert_file, key_file, server_name, allow, deny,
            since, flush_interval, flush_rows, keepalive, idle_timeout, backoff_max, resume_overlap, metrics_listen,
            keep, quiet) -> None:
    """Stream flows from every cluster's Hubble Relay into the store until Ctrl-C.

    Resumes after errors and restarts from the newest stored flow of each cluster, dropping
    the duplicates the overlap causes. SIGINT/SIGTERM flush and exit 0.

    Example:

        cilium hubble port-forward &
        flowpipe collect --store ./store --plaintext --relay cluster1=localhost:4245
    """
    from flowpipe import collect as collect_mod
    from flowpipe import config as cfgmod

    cfg = cfgmod.from_dict(cfgmod.load_file(config_file), config_file) if config_file else cfgmod.CollectConfig()
    tls = cfgmod.TLSConfig(enabled=not plaintext, ca_files=list(ca_files), cert_file=cert_file, key_file=key_file, server_name=server_name)
    allow_f = cfgmod.parse_filters(allow, "--allow") if allow else []
    deny_f = cfgmod.parse_filters(deny, "--deny") if deny else []
    for text in relays:
        cluster, address = cfgmod.parse_relay(text)
        cfg.relays.append(cfgmod.RelayConfig(cluster, address, tls=tls, allow=allow_f, deny=deny_f))
    for name, value in (("flush_interval", flush_interval), ("keepalive", keepalive), ("idle_timeout", idle_timeout),
                        ("backoff_max", backoff_max), ("resume_overlap", resume_overlap), ("keep", keep)):
        if value is not None:
            setattr(cfg, name, cfgmod.parse_duration(value, f"--{name.replace('_', '-')}"))
    if flush_rows is not None:
        cfg.flush_rows = flush_rows
    cfg.since = since if since is not None else cfg.since
    cfg.metrics_listen = metrics_listen or cfg.metrics_listen
    cfg.quiet = quiet or cfg.quiet
    cfg.store = store_path or cfg.store
    cfgmod.validate(cfg)
    setup_logging(cfg.quiet)
    store = open_store(cfg.store, create=True)
    collector = collect_mod.Collector(cfg, store)
    if cfg.metrics_listen:
        from flowpipe import metrics

        metrics.serve(collector.registry, cfg.metrics_listen)
    unstored = collector.run()
    if unstored:
        _fail(f"{unstored} flows could not be stored (see the errors above)", EXIT_FAILED)


@main.command()
@store_option
@click.option("--keep", help="Remove hour partitions older than this, e.g. 7d.")
@click.option("--grace", default="2m", show_default=True, help="Leave hours that ended less than this ago.")
@handle_errors
def compact(store_path: str | None, keep: str | None, grace: str) -> None:
    """Merge the small files of closed hours into large ones, and apply retention.

    Safe while collect writes and queries run: files are swapped atomically.

    Example:

        flowpipe compact --store ./store --keep 7d
    """
    from flowpipe import compact as compact_mod
    from flowpipe.config import parse_duration

    store = open_store(store_path)
    report = compact_mod.compact(
        store,
        keep=parse_duration(keep, "--keep") if keep else None,
        grace_s=parse_duration(grace, "--grace"),
    )
    click.echo(report.summary())


# ---- import


@main.command("import")
@click.argument("files", nargs=-1, required=True)
@store_option
@click.option("--cluster", help="Cluster name for every flow (default: from node_name 'cluster/node', else 'default').")
@click.option("--strict", is_flag=True, help="Abort on the first malformed line; nothing is written.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@handle_errors
def import_cmd(files: tuple[str, ...], store_path: str | None, cluster: str | None, strict: bool, quiet: bool) -> None:
    """Load hubble jsonpb captures or Hubble exporter logs (plain, .gz, or - for stdin).

    Malformed lines are reported as FILE:LINE with the reason (and make the exit code 1);
    duplicates of flows already stored are dropped, so importing a file twice adds nothing.

    Example:

        hubble observe -o jsonpb --last 1000 > flows.json
        flowpipe import --store ./store --cluster cluster1 flows.json
    """
    from flowpipe import importer

    store = open_store(store_path, create=True)
    show_bar = not quiet and sys.stderr.isatty() and "-" not in files
    if show_bar:
        with click.progressbar(length=0, label="importing", file=sys.stderr, show_pos=True) as bar:
            report = importer.import_files(store, list(files), cluster=cluster, strict=strict, on_progress=bar.update)
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


if __name__ == "__main__":  # pragma: no cover
    main()
