"""The flowpipe command group and the conventions every command shares: exit codes, one-line
errors, stop signals, options given twice refused, the store option."""

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


def window_options(fn):
    """--since and --until: the window of stored flows a command reads."""
    fn = click.option("--until", help="End of the window, same forms as --since. Default: now.")(fn)
    return click.option(
        "--since",
        help="Start of the window: a duration before now (15m, 24h, 7d) or RFC 3339. "
        "Default: the first stored flow.",
    )(fn)


rule_timeout_option = click.option(
    "--rule-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds one rule may run on one cluster.",
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


# Arrow's allocator for the program and its children, read when pyarrow first allocates. The
# system allocator returns freed batches to the OS: `flowpipe import` of two files peaked at
# 238 MB with it against 287 MB with the default (mimalloc in pyarrow 26), and took less CPU
# (6.9 s against 8.0 s). A user's own ARROW_DEFAULT_MEMORY_POOL wins.
ARROW_POOL = ("ARROW_DEFAULT_MEMORY_POOL", "system")


def run() -> None:
    """The program: stop signals are held from the first moment until a command takes them."""
    os.environ.setdefault(*ARROW_POOL)
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, _hold)
    main()


def setup_logging(quiet: bool) -> None:
    import logging

    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
