"""Helpers shared by tests: fixtures that are not part of flowpipe."""
