"""Command line: parse arguments, call one library function, map errors to exit codes."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading

import click

from flowpipe import __version__
from flowpipe.errors import FlowpipeError

STORE_ENV = "FLOWPIPE_STORE"  # read by Store.open too; kept here so that start-up stays light

# Exit codes shared by every command.
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and found a problem (e.g. a rule failed)
EXIT_ERROR = 2  # the command could not do its job (bad input, no store, unreachable relay)


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    click.echo(f"flowpipe: error: {message}", err=True)
    sys.exit(code)


class OneLineUsageError(click.UsageError):
    """A usage error shown as one line (click's own take three), exit 2."""

    def show(self, file=None) -> None:
        click.echo(f"flowpipe: error: {self.format_message()}", err=True)


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
        except Exception as exc:  # a bug: one line for the user, the traceback on request
            if os.environ.get("FLOWPIPE_DEBUG"):
                raise
            _fail(
                f"internal error: {type(exc).__name__}: {exc} (set FLOWPIPE_DEBUG=1 for the traceback)"
            )

    return wrapper


# ---- stop signals during start-up

_held_signals: list[int] = []
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _hold(signum, frame) -> None:
    _held_signals.append(signum)


def on_stop_signal(callback) -> None:
    """Call callback at SIGINT/SIGTERM, and now if one arrived while the program was starting."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: callback())
    if _held_signals:
        callback()


def _default_signals() -> None:
    """Default handling again; a stop signal held during start-up takes effect now."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _held_signals:
        os.kill(os.getpid(), _held_signals[0])


# ---- commands: repeated options are refused, never silently reduced to the last one


class Command(click.Command):
    """A flowpipe command: a single-valued option given twice is an error, not 'the last wins'.

    graceful=True: the command stops cleanly on SIGINT/SIGTERM and takes the signals held since
    the program started (on_stop_signal); other commands get the default handling back."""

    def __init__(self, *args, graceful: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.graceful = graceful

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        _refuse_repeats(self, ctx, args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        if not self.graceful and signal.getsignal(signal.SIGTERM) is _hold:
            _default_signals()
        return super().invoke(ctx)


class Group(click.Group):
    """A flowpipe command group: its commands and subgroups are flowpipe Commands and Groups."""

    command_class = Command
    group_class = type  # subgroups are Groups too

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        _refuse_repeats(self, ctx, args)
        return super().parse_args(ctx, args)


def _refuse_repeats(cmd: click.Command, ctx: click.Context, args: list[str]) -> None:
    """Raise a one-line usage error when a single-valued option (not a flag) is given twice."""
    if ctx.resilient_parsing:
        return
    parser = cmd.make_parser(ctx)
    try:
        _, _, order = parser.parse_args(args=list(args))
    except click.UsageError:
        return  # click reports it in the real parse
    seen: set[str] = set()
    for param in order:
        if not isinstance(param, click.Option) or param.multiple or param.count:
            continue
        if param.is_flag:
            continue  # --quiet --quiet still means quiet
        if param.name in seen:
            name = max(param.opts, key=len)
            raise OneLineUsageError(
                f"{name} given more than once; give it once (it takes one value)", ctx
            )
        seen.add(param.name)


store_option = click.option(
    "--store",
    "store_path",
    envvar=STORE_ENV,
    metavar="PATH",
    help=f"Store directory, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (or ${STORE_ENV}).",
)


engine_option = click.option(
    "--engine",
    type=click.Choice(["duckdb", "spark"]),
    default="duckdb",
    show_default=True,
    help="Where the SQL runs: DuckDB here, or a Spark cluster through Spark Connect "
    "(same SQL, translated; needs flowpipe[spark]).",
)
spark_remote_option = click.option(
    "--spark-remote",
    envvar="SPARK_REMOTE",
    metavar="URL",
    help="Spark Connect endpoint for --engine spark, e.g. sc://spark.example:15002 (or "
    "$SPARK_REMOTE). Every Spark process must see the store's path.",
)


def open_store(path: str | None, create: bool = False, check_format: bool = True):
    from flowpipe.store.layout import Store

    return Store.open(path, create=create, check_format=check_format)


@click.group(
    cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="flowpipe")
def main() -> None:
    """flowpipe: Hubble flow analytics for Cilium zero-trust rollouts.

    Collect flows from Hubble Relay into a Parquet store, check policy stages with SQL
    rules, and export conformance as Prometheus metrics.

    Example:

    \b
        flowpipe collect --store ./store --plaintext --relay cluster1=localhost:4245
        flowpipe check stage5.sql --store ./store --since 15m
    """


def run() -> None:
    """The program: stop signals are held from the first moment until a command takes them."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, _hold)
    main()


# ---------------------------------------------------------------- query


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


# ---- collect / compact


def setup_logging(quiet: bool) -> None:
    import logging

    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
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


@main.command(graceful=True)
@store_option
@click.option("--keep", help="Remove hour partitions older than this, e.g. 7d.")
@click.option(
    "--grace", default="2m", show_default=True, help="Leave hours that ended less than this ago."
)
@click.option(
    "--settle",
    default="30s",
    show_default=True,
    help="Open hours: merge only files committed longer ago than this.",
)
@click.option(
    "--no-wait", is_flag=True, help="Do nothing if another compaction of the store is running."
)
@handle_errors
def compact(
    store_path: str | None, keep: str | None, grace: str, settle: str, no_wait: bool
) -> None:
    """Merge small files (closed hours into large ones, open hours 16 at a time), and apply retention.

    Safe while collect writes and queries run: files are swapped atomically.

    Example:

        flowpipe compact --store ./store --keep 7d
    """
    stop = threading.Event()  # SIGTERM/SIGINT: drop the unfinished merge, keep what is swapped
    on_stop_signal(stop.set)
    from flowpipe.common.units import parse_duration
    from flowpipe.store import compact as compact_mod

    store = open_store(store_path)
    report = compact_mod.compact(
        store,
        keep=parse_duration(keep, "--keep") if keep else None,
        grace_s=parse_duration(grace, "--grace"),
        settle_s=parse_duration(settle, "--settle"),
        wait=not no_wait,
        stop=stop,
    )
    click.echo(report.summary())


@main.command()
@store_option
@handle_errors
def migrate(store_path: str | None) -> None:
    """Convert a store written by an older flowpipe to the current format, in place.

    Every file is rewritten and renamed over itself atomically; an interrupted run resumes where
    it stopped. Stop collectors writing to the store first; readers that meet a store still being
    migrated ask for this command again.

    Example:

        flowpipe migrate --store ./store
    """
    stop = threading.Event()  # SIGTERM/SIGINT: finish the file being converted, then stop
    on_stop_signal(stop.set)
    from flowpipe.store import migrate as migrate_mod
    from flowpipe.views import catalog

    store = open_store(store_path, check_format=False)
    report = migrate_mod.migrate(store, stop=stop)
    if not report.stopped and store.local and (store.root / catalog.DB_FILE).exists():
        catalog.write_database(store)  # its views read the stored columns of the new format
    click.echo(report.summary(store.url))
    if report.stopped:
        sys.exit(EXIT_FAILED)


# ---- import


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


# ---- check / rules


@main.command()
@click.argument("files", nargs=-1, required=True)
@store_option
@click.option(
    "--since",
    help="Start of the window: a duration before now (15m, 2h, 7d) or RFC3339. Default: all.",
)
@click.option("--until", help="End of the window, same forms as --since. Default: now.")
@click.option(
    "--cluster",
    "clusters",
    multiple=True,
    help="Cluster to check (repeatable). Default: every cluster in the store.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "junit"]),
    default="text",
    show_default=True,
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the report to this file instead of stdout.",
)
@click.option(
    "--rule-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds one rule may run on one cluster.",
)
@click.option(
    "--memory-limit",
    default="1GB",
    show_default=True,
    help="DuckDB memory limit for rule queries (not used by --engine spark).",
)
@click.option(
    "--samples",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Offending flows shown per failing rule and cluster.",
)
@engine_option
@spark_remote_option
@handle_errors
def check(
    files,
    store_path,
    since,
    until,
    clusters,
    fmt,
    output,
    rule_timeout,
    memory_limit,
    samples,
    engine,
    spark_remote,
) -> None:
    """Check that the stored flows are the flows a policy stage must produce.

    FILE is a rule file, a directory of them, or the name of a shipped stage file
    (stage1 ... stage5; `flowpipe rules` lists them). Every rule runs on every cluster, so
    a cluster without flows in the window fails the rules that need evidence.
    Exit 0: all rules pass (warnings allowed); 1: a rule failed; 2: the check could not run.

    Example:

    \b
        flowpipe check stage5.sql --store ./store --since 15m
        flowpipe check ./my-rules/ --cluster cluster1 --format junit -o check.xml
        flowpipe check stage5.sql --engine spark --spark-remote sc://spark.example:15002
    """
    from flowpipe.rules import check as check_mod
    from flowpipe.rules import report
    from flowpipe.rules.status import STATUSES

    store = open_store(store_path)
    result = check_mod.run_check(
        store,
        list(files),
        since=since,
        until=until,
        clusters=clusters or None,
        rule_timeout=rule_timeout,
        memory_limit=memory_limit,
        samples=samples,
        engine=engine,
        spark_remote=spark_remote,
    )
    text = report.render(result, fmt)
    code = report.exit_code(result)
    if output:
        try:
            with open(output, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            _fail(f"cannot write {output}: {exc.strerror or exc}")
        counts = {str(s): sum(r.status == s for r in result.results) for s in STATUSES}
        click.echo(f"flowpipe check: {counts} -> {output}", err=True)
    else:
        click.echo(text, nl=False)
    sys.exit(code)


@main.command("rules")
@click.argument("files", nargs=-1)
@handle_errors
def rules_cmd(files: tuple[str, ...]) -> None:
    """List rule files and their rules (default: the stage files shipped with flowpipe).

    Example:

    \b
        flowpipe rules
        flowpipe rules ./my-rules/extra.sql
    """
    from flowpipe.rules import rulefile as rules_mod

    if files:
        parsed = rules_mod.load(list(files))
    else:
        parsed = [rules_mod.parse_file(p, display=p.name) for p in rules_mod.shipped_files()]
    width = max((len(r.name) for rf in parsed for r in rf.rules), default=0)
    for rf in parsed:
        click.echo(f"{rf.path}  (stage {rf.stage}){': ' + rf.title if rf.title else ''}")
        for r in rf.rules:
            expect = f"at_least {r.min_flows}" if r.expect == "at_least" else r.expect
            click.echo(f"  {r.name:<{width}}  {r.severity:<5}  {expect:<10}  {r.why}")


# ---- policy


@main.group()
def policy() -> None:
    """Network policies against the stored flows: what-if before applying, least-privilege suggestions.

    Example:

    \b
        flowpipe policy whatif deploy/kubernetes/lab/stage5/ --store ./store --since 24h
        flowpipe policy suggest --namespace shop --store ./store --since 24h --out ./suggested
    """


@policy.command("whatif")
@click.argument("paths", nargs=-1, required=True, metavar="POLICY_FILE_OR_DIR...")
@store_option
@click.option("--since", help="Start of the window: a duration before now (24h, 7d) or RFC3339.")
@click.option("--until", help="End of the window, same forms as --since. Default: now.")
@click.option(
    "--cluster",
    "clusters",
    multiple=True,
    help="Cluster to decide (repeatable). Default: every cluster in the store.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@handle_errors
def policy_whatif(paths, store_path, since, until, clusters, fmt) -> None:
    """Decide every stored connection with the policies of POLICY_FILE_OR_DIR (not applied anywhere).

    Reads CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and NetworkPolicy YAML (files,
    directories, multi-document files, kustomize output; - reads stdin). Connections that were
    allowed and would be denied come first, then those newly allowed, then a summary per
    cluster. --format json writes one JSON object per decision and line.
    Exit 0: nothing observed as allowed would be denied; 1: something would; 2: could not run.

    Example:

    \b
        flowpipe policy whatif deploy/kubernetes/lab/stage2 deploy/kubernetes/lab/stage5 --store ./store --since 24h
        kustomize build overlays/prod | flowpipe policy whatif - --format json | jq 'select(.change == "denied")'
    """
    from flowpipe.policy import report, whatif

    result = whatif.run_whatif(
        open_store(store_path),
        list(paths),
        since=since,
        until=until,
        clusters=clusters or None,
        examples=0 if fmt == "json" else 20,  # JSON has no example flows
    )
    click.echo(report.render(result, fmt), nl=False)
    if fmt == "json":
        for note in result.notes:
            click.echo(f"flowpipe: note: {note}", err=True)
        for u in result.unsupported:
            click.echo(f"flowpipe: unsupported: {u.text()}", err=True)
    sys.exit(report.exit_code(result))


@policy.command("suggest")
@click.option("--namespace", "-n", required=True, help="Namespace whose workloads get policies.")
@store_option
@click.option("--since", help="Start of the window: a duration before now (24h, 7d) or RFC3339.")
@click.option("--until", help="End of the window, same forms as --since. Default: now.")
@click.option(
    "--cluster", "clusters", multiple=True, help="Cluster whose flows count (repeatable)."
)
@click.option(
    "--l7", is_flag=True, help="Add HTTP rules (methods and paths seen) on ports a proxy saw."
)
@click.option(
    "--out", "out_dir", required=True, metavar="DIR", help="Directory for the YAML files."
)
@handle_errors
def policy_suggest(namespace, store_path, since, until, clusters, l7, out_dir) -> None:
    """Write least-privilege CiliumNetworkPolicies for NAMESPACE's workloads from the allowed flows.

    One policy per workload and direction (DIR/<workload>-egress.yaml, -ingress.yaml), selecting
    by workload labels; DNS through kube-dns with a DNS rule; toFQDNs for world destinations
    reached by name. Rerunning over the same flows changes no byte.

    Example:

    \b
        flowpipe policy suggest --namespace shop --store ./store --since 24h --l7 --out ./suggested
        flowpipe policy whatif ./suggested --store ./store --since 24h
    """
    from flowpipe.policy import suggest as suggest_mod

    result = suggest_mod.suggest(
        open_store(store_path),
        namespace,
        out_dir,
        since=since,
        until=until,
        clusters=clusters or None,
        l7=l7,
    )
    for path in result.files:
        state = "written" if path in result.written else "unchanged"
        click.echo(f"{path}: {state}", err=True)
    for note in result.notes:
        click.echo(f"flowpipe: note: {note}", err=True)


# ---- serve / replay


def _server_tls(plaintext: bool, cert: str | None, key: str | None, client_ca: str | None):
    from flowpipe.serve.server import ServerTLS

    if plaintext:
        if cert or key or client_ca:
            _fail(
                "--plaintext cannot be combined with --tls-server-cert-file/--tls-server-key-file/--tls-client-ca-file"
            )
        return None
    if not (cert and key):
        _fail(
            "give --tls-server-cert-file and --tls-server-key-file, or --plaintext to serve without TLS"
        )
    return ServerTLS(cert, key, client_ca)


def _on_sigterm() -> None:
    import signal

    def stop(signum, frame):
        raise SystemExit(0)  # run the cleanup (temporary store) instead of dying mid-way

    signal.signal(signal.SIGTERM, stop)


def server_options(fn):
    """--listen and the TLS options shared by serve and replay."""
    opts = [
        click.option(
            "--listen",
            default="127.0.0.1:4245",
            show_default=True,
            metavar="HOST:PORT",
            help="Address to serve the Hubble Observer API on.",
        ),
        click.option(
            "--plaintext", is_flag=True, help="Serve without TLS (hubble observe without --tls)."
        ),
        click.option(
            "--tls-server-cert-file", "tls_cert", metavar="FILE", help="Server certificate (PEM)."
        ),
        click.option(
            "--tls-server-key-file", "tls_key", metavar="FILE", help="Server private key (PEM)."
        ),
        click.option(
            "--tls-client-ca-file",
            "tls_client_ca",
            metavar="FILE",
            help="Require client certificates signed by this CA (mTLS).",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@main.command()
@store_option
@server_options
@handle_errors
def serve(store_path, listen, plaintext, tls_cert, tls_key, tls_client_ca) -> None:
    """Serve the store's flows over the Hubble Observer API, for `hubble observe`.

    Answers GetFlows like Hubble Relay (--last/--first/--since/--until/--follow and every
    filter flag) over all stored history and clusters; --follow streams newly collected flows.
    TLS is required unless --plaintext is given.

    Example:

    \b
        flowpipe serve --store ./store --listen 127.0.0.1:4245 --plaintext
        hubble observe --server localhost:4245 --since 2h --cluster cluster1 --verdict DROPPED
    """
    from flowpipe.serve import server as srv

    tls = _server_tls(plaintext, tls_cert, tls_key, tls_client_ca)
    store = open_store(store_path)
    setup_logging(quiet=False)  # a failed call is one ERROR line
    _on_sigterm()
    srv.serve(
        store,
        listen,
        tls=tls,
        on_ready=lambda port: click.echo(f"flowpipe serve: listening on port {port}", err=True),
    )


@main.command()
@click.argument("files", nargs=-1, required=True)
@server_options
@click.option(
    "--cluster",
    help="Cluster of every flow (default: node_name prefix 'cluster/node', else 'default').",
)
@click.option(
    "--follow",
    is_flag=True,
    help="Every GetFlows gets all recorded flows, then stays open for new ones.",
)
@click.option(
    "--rate",
    type=float,
    default=0.0,
    metavar="N",
    help="Also play recorded flows at ~N flows/s, with new uuids and times.",
)
@click.option(
    "--abort-after",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Fault: end each GetFlows with UNAVAILABLE after N responses.",
)
@click.option(
    "--lost-events-every",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Fault: send a LostEvent (OBSERVER_EVENTS_QUEUE) after every N flows.",
)
@handle_errors
def replay(
    files,
    listen,
    plaintext,
    tls_cert,
    tls_key,
    tls_client_ca,
    cluster,
    follow,
    rate,
    abort_after,
    lost_events_every,
) -> None:
    """Play `hubble observe -o jsonpb` files back as a fake Hubble Relay (serve over a temporary store).

    Example:

    \b
        flowpipe replay capture.jsonl.gz --listen 127.0.0.1:4245 --plaintext --follow --rate 500
        hubble observe --server localhost:4245 --follow
    """
    from flowpipe.serve import replay as rp

    tls = _server_tls(plaintext, tls_cert, tls_key, tls_client_ca)
    _on_sigterm()
    rp.replay(
        list(files),
        listen,
        tls=tls,
        cluster=cluster,
        follow=follow,
        rate=rate,
        abort_after=abort_after,
        lost_events_every=lost_events_every,
        on_ready=lambda rs: click.echo(
            f"flowpipe replay: {rs.imported} flows on {rs.address}", err=True
        ),
    )


# ---- lab


@main.group()
def lab() -> None:
    """Simulated Hubble flows of the zero-trust lab guide (two GKE clusters, five stages).

    Example:

        flowpipe lab list
    """


@lab.command("generate")
@click.option("--stage", type=click.IntRange(1, 5), required=True, help="Guide stage, 1 to 5.")
@click.option("--variant", help="A broken stage 5 (see `flowpipe lab list`).")
@click.option(
    "--broken-cluster",
    "broken",
    multiple=True,
    metavar="CLUSTER",
    help="Apply --variant to this cluster only (repeatable; default: every cluster).",
)
@click.option("--seed", type=int, help="Reproducible ports, timings and uuids.")
@click.option(
    "--start",
    default="guide",
    show_default=True,
    help="When the stage starts: 'guide' (the guide's own timestamps), 'now' (traffic of the "
    "last 5 minutes, ready for `check --since 15m`) or an RFC 3339 time.",
)
@click.option(
    "--out", "out_dir", required=True, metavar="DIR", help="Directory for <cluster>.jsonl files."
)
@handle_errors
def lab_generate(
    stage: int,
    variant: str | None,
    broken: tuple[str, ...],
    seed: int | None,
    start: str,
    out_dir: str,
) -> None:
    """Write each cluster's flows of a stage as `hubble observe -o jsonpb` lines (DIR/<cluster>.jsonl).

    Example:

    \b
        flowpipe lab generate --stage 5 --start now --out ./lab5
        flowpipe import --store ./store ./lab5/cluster1.jsonl ./lab5/cluster2.jsonl
        flowpipe check stage5.sql --store ./store --since 15m
    """
    from flowpipe.lab import generate as lab_sim

    start_ns = lab_sim.parse_start(start)
    written = lab_sim.write_lab(
        out_dir,
        stage,
        variant=variant,
        broken_clusters=broken or None,
        seed=seed,
        start_ns=start_ns,
    )
    for cluster, (path, count) in written.items():
        click.echo(f"{path}: {count} flows ({cluster})", err=True)


@lab.command("list")
@handle_errors
def lab_list() -> None:
    """List the guide's stages and the broken stage-5 variants.

    Example:

        flowpipe lab list
    """
    from flowpipe.lab import generate as lab_sim

    for line in lab_sim.catalog():
        click.echo(line)


# ---- export / demo


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
@click.option(
    "--rule-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds one rule may run on one cluster.",
)
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


@main.command()
@click.option(
    "--dir",
    "work_dir",
    default="demo-store",
    show_default=True,
    metavar="DIR",
    help="Where the demo keeps its store, lab files, logs and Prometheus data.",
)
@click.option(
    "--stage",
    type=click.IntRange(1, 5),
    default=5,
    show_default=True,
    help="The stage the simulated clusters are at now.",
)
@click.option(
    "--variant", help="Break the live stage 5 (see `flowpipe lab list`), e.g. allow-all-left."
)
@click.option(
    "--broken-cluster",
    "broken",
    multiple=True,
    metavar="CLUSTER",
    help="Apply --variant to this cluster only.",
)
@click.option(
    "--rate",
    type=float,
    default=20.0,
    show_default=True,
    help="Live flows per second per simulated relay.",
)
@click.option("--duration", help="Stop after this long (e.g. 60s); default: until Ctrl-C.")
@click.option(
    "--prometheus",
    "prometheus_bin",
    default="prometheus",
    show_default=True,
    metavar="PATH",
    help="Prometheus binary (skipped when not found).",
)
@handle_errors
def demo(work_dir, stage, variant, broken, rate, duration, prometheus_bin) -> None:
    """The whole pipeline on this machine, no cluster: lab -> relays -> collect -> check -> export -> Prometheus.

    Two simulated Hubble Relays (cluster1, cluster2) play the lab guide's flows; collect stores
    them; every stage is checked; the exporter serves conformance and flow metrics, scraped by a
    local Prometheus. Ctrl-C stops every process it started.

    Example:

    \b
        flowpipe demo
        flowpipe demo --variant allow-all-left --broken-cluster cluster2 --duration 120s
    """
    from flowpipe.common.units import parse_duration
    from flowpipe.lab import demo as demo_mod

    demo_mod.run(
        work_dir,
        stage=stage,
        variant=variant,
        broken_clusters=list(broken) or None,
        rate=rate,
        duration=parse_duration(duration, "--duration") if duration else None,
        prometheus=prometheus_bin,
        say=lambda text: click.echo(text),
    )


if __name__ == "__main__":  # pragma: no cover
    run()
