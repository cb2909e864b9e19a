"""The command tree, walked: every command shows an example, no option drops a repetition."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from flowpipe import cli


def walk(group: click.Group = cli.main, path: tuple[str, ...] = ()):
    """(path, command) for the group itself and every command and subgroup under it."""
    yield path, group
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            yield from walk(cmd, (*path, name))
        else:
            yield (*path, name), cmd


COMMANDS = list(walk())


def test_the_walk_finds_every_command():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"", "collect", "check", "serve", "export", "lab", "lab generate"} <= names
    assert len(names) >= 14


@pytest.mark.parametrize(
    "path, cmd", COMMANDS, ids=[" ".join(p) or "flowpipe" for p, _ in COMMANDS]
)
def test_help_has_an_example(path, cmd):
    res = CliRunner().invoke(cli.main, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Example:" in res.output, f"`flowpipe {' '.join(path)} --help` has no Example:"
    example = res.output.split("Example:", 1)[1]
    assert f"flowpipe {' '.join(path)}".strip() in example  # an example of this very command


def _value(param: click.Parameter) -> str:
    """A value the parameter's type accepts."""
    t = param.type
    if isinstance(t, click.Choice):
        return str(t.choices[0])
    if isinstance(t, click.IntRange):
        return str(t.min if t.min is not None else 1)
    return "1"


def _required(cmd: click.Command, skip: click.Parameter | None = None) -> list[str]:
    """Arguments for the command's required parameters (so that a parse can get to the end)."""
    args: list[str] = []
    for p in cmd.params:
        if p is skip or not p.required:
            continue
        if isinstance(p, click.Option):
            args += [p.opts[0], _value(p)]
        else:
            args.append(_value(p))
    return args


SINGLE = [
    (path, cmd, p)
    for path, cmd in COMMANDS
    for p in cmd.params
    if isinstance(p, click.Option) and not p.multiple and not p.count and not p.is_eager
]


def _id(item) -> str:
    path, _, p = item
    return f"{' '.join(path) or 'flowpipe'} {p.opts[0]}"


def test_every_command_has_single_valued_options_to_check():
    assert {" ".join(path) for path, _, _ in SINGLE} >= {"collect", "check", "export", "compact"}


@pytest.mark.parametrize("item", SINGLE, ids=[_id(i) for i in SINGLE])
def test_repeated_option_is_refused_or_meaningful(item):
    """click keeps the last of two values without a word; flowpipe refuses the second with one
    line, and a flag given twice means what it means once."""
    path, cmd, opt = item
    base = _required(cmd, skip=opt)
    if opt.is_flag:
        once = cmd.make_context(path[-1] if path else "flowpipe", [*base, opt.opts[0]])
        twice = cmd.make_context(
            path[-1] if path else "flowpipe", [*base, opt.opts[0], opt.opts[0]]
        )
        assert twice.params == once.params
        return
    value = _value(opt)
    res = CliRunner().invoke(cli.main, [*path, *base, opt.opts[0], value, opt.opts[-1], value])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2, res.output
    assert lines == [
        f"flowpipe: error: {max(opt.opts, key=len)} given more than once; give it once "
        "(it takes one value)"
    ]


def test_repeatable_options_keep_every_value():
    ctx = cli.main.get_command(click.Context(cli.main), "collect").make_context(
        "collect", ["--allow", "a", "--allow", "b", "--deny", "c", "--relay", "x", "--relay", "y"]
    )
    assert ctx.params["allow"] == ("a", "b") and ctx.params["deny"] == ("c",)
    assert ctx.params["relays"] == ("x", "y")


def test_print_raw_filters():
    res = CliRunner().invoke(
        cli.main,
        [
            "collect",
            "--relay",
            "c1=127.0.0.1:4245",
            "--plaintext",
            "--allow",
            '{"source_pod":["bookinfo/"]}',
            "--allow",
            '{"destination_pod":["bookinfo/"]}',
            "--print-raw-filters",
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.output == (
        "# relay c1 (127.0.0.1:4245)\n"
        "allowlist:\n"
        '    - \'{"source_pod":["bookinfo/"]}\'\n'
        '    - \'{"destination_pod":["bookinfo/"]}\'\n'
    )


def test_store_env_is_the_stores():
    from flowpipe.store import layout

    assert cli.STORE_ENV == layout.ENV


@pytest.mark.parametrize("given, used", [(None, "system"), ("jemalloc", "jemalloc")])
def test_the_program_uses_arrows_system_allocator_unless_told(given, used):
    """run() picks the allocator before pyarrow allocates (it returns freed batches to the OS:
    bench/RESULTS.md); a user's own ARROW_DEFAULT_MEMORY_POOL wins, and children inherit it."""
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if given:
        env["ARROW_DEFAULT_MEMORY_POOL"] = given
    code = (
        "import sys, subprocess\n"
        "from flowpipe.cli import run\n"
        "sys.argv = ['flowpipe', '--version']\n"
        "try:\n    run()\nexcept SystemExit:\n    pass\n"
        "import pyarrow as pa\n"
        "child = subprocess.run([sys.executable, '-c', 'import pyarrow as pa; "
        "print(pa.default_memory_pool().backend_name)'], capture_output=True, text=True)\n"
        "print(pa.default_memory_pool().backend_name, child.stdout.strip())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == [used, used]
