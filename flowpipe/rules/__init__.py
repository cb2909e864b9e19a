"""Rules: SQL rule files judged per cluster (`flowpipe check`).

rulefile: the rule file format; sandbox: the locked DuckDB connection rules run in; check:
evaluation (shared scans); report: text, JSON and JUnit output.
"""
