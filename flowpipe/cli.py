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
