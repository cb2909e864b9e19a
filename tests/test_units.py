"""The one duration and size grammar, and every flag that takes a duration speaks it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from flowpipe import cli
from flowpipe.common import units
from flowpipe.errors import ConfigError
from flowpipe.ingest import config


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("5s", 5),
        ("250ms", 0.25),
        ("2m", 120),
        ("1.5h", 5400),
        ("1h30m", 5400),
        ("7d", 604800),
        ("1w", 604800),
        ("2w1d", 1296000),
        ("1m30s500ms", 90.5),
        (" 10S ", 10),
        ("30", 30),
        ("0.5", 0.5),
        (3, 3),
        (2.5, 2.5),
    ],
)
def test_durations(text, seconds):
    assert units.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "", "5 s", "-5s", "1h-30m", "5x", "s", "1.h", True, -1])
def test_bad_durations_name_the_flag(text):
    with pytest.raises(ConfigError, match=r"^invalid --keep .*(250ms|negative)"):
        units.parse_duration(text, "--keep")


@pytest.mark.parametrize(
    "text, size",
    [
        ("64MB", 64 << 20),
        ("512k", 512 << 10),
        ("512KiB", 512 << 10),
        ("1G", 1 << 30),
        ("1.5gb", 3 << 29),
        ("100b", 100),
        ("100", 100),
        ("64 MB", 64 << 20),
        (4096, 4096),
    ],
)
def test_sizes(text, size):
    assert units.parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "64XB", "-1MB", "MB", -5])
def test_bad_sizes(text):
    with pytest.raises(ConfigError, match="^invalid --max-buffer"):
        units.parse_size(text, "--max-buffer")


def test_keep_takes_weeks_like_since(store):
    """`--since 1w` worked and `--keep 1w` did not: one grammar for both now."""
    res = CliRunner().invoke(cli.main, ["compact", "--store", str(store.root), "--keep", "1w"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(
        cli.main, ["check", "stage1", "--store", str(store.root), "--since", "1w"]
    )
    assert "invalid --since" not in res.output
    cfg = config.load(relays=("c1=127.0.0.1:4245",), keep="1w", resume_overlap="1m30s")
    assert cfg.keep == 604800 and cfg.resume_overlap == 90
    cfg = config.from_dict({"keep": "2w", "relays": []})
    assert cfg.keep == 2 * 604800
