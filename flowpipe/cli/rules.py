"""Commands of the rules: check, rules."""

from __future__ import annotations

import sys

import click

from flowpipe.cli.base import (
    _fail,
    engine_option,
    handle_errors,
    main,
    open_store,
    rule_timeout_option,
    spark_remote_option,
    store_option,
    window_options,
)


@main.command()
@click.argument("files", nargs=-1, required=True)
@store_option
@window_options
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
@rule_timeout_option
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
