"""Export: Prometheus metrics (`flowpipe export` and the collector's /metrics).

metrics: every metric, declared once; counters: Hubble-style flow counters from the store;
exporter: scheduled rule evaluation and the /metrics endpoint.
"""
