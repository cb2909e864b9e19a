"""`python -m flowpipe.cli`: the program, as the `flowpipe` script runs it."""

from flowpipe.cli import run

run()
