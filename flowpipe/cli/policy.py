"""Commands of policy what-if and suggestions: policy whatif, policy suggest."""

from __future__ import annotations

import sys

import click

from flowpipe.cli.base import handle_errors, main, open_store, store_option, window_options


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
@window_options
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
@window_options
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
