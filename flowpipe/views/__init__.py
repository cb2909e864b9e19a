"""Views over the store: the SQL every consumer reads (DuckDB), and `flowpipe query`.

catalog: every view and macro (build_views); columns: the SQL of the friendly columns of
`flows` and `events`; query: running SQL and rendering results.
"""
