"""Commands that maintain the store: compact (and retention), migrate."""

from __future__ import annotations

import sys
import threading

import click

from flowpipe.cli.base import (
    EXIT_FAILED,
    handle_errors,
    main,
    on_stop_signal,
    open_store,
    store_option,
)


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
