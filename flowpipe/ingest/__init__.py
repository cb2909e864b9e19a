"""Ingest: flows into the store, from Hubble Relays (collect) or from files (import).

stream: one resumable GetFlows stream per relay (its calls made by a receiver process);
collector: buffering, dedup and commits;
config, tls: relays and settings; dedup: duplicate keys; importer: jsonpb and exporter logs.
"""
