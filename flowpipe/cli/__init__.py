"""Command line: parse arguments, call one library function, map errors to exit codes. One
module per pipeline stage (ingest, store, views, rules, policy, serve, export, lab); base holds
the group and what every command shares."""

# importing each stage's module registers its commands on main
from flowpipe.cli import export, ingest, lab, policy, rules, serve, store, views  # noqa: F401
from flowpipe.cli.base import STORE_ENV, main, run

__all__ = ["STORE_ENV", "main", "run"]
