"""Helpers every stage shares, one for each job: durations and time points, SQL text, messages."""
