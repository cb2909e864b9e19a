"""Commands of the lab simulator: lab generate, lab list, demo."""

from __future__ import annotations

import click

from flowpipe.cli.base import handle_errors, main


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
