"""Every Prometheus metric flowpipe exposes, declared here and nowhere else."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

NAMESPACE = "flowpipe"


class CollectorMetrics:
    """Metrics of `flowpipe collect`, labelled by cluster (and a small fixed second label)."""

    def __init__(self, registry: CollectorRegistry):
        ns = NAMESPACE
        self.flows_received = Counter(
            "collector_flows_received", "Flows received from Relay.", ["cluster"], namespace=ns, registry=registry
        )
        self.flows_stored = Counter(
            "collector_flows_stored", "Flows committed to the store.", ["cluster"], namespace=ns, registry=registry
        )
        self.duplicates = Counter(
            "collector_duplicate_flows",
            "Flows dropped as duplicates (overlap after a resume).",
            ["cluster"],
            namespace=ns,
            registry=registry,
        )
        self.malformed = Counter(
            "collector_malformed_responses",
            "GetFlows responses that could not be decoded.",
            ["cluster"],
            namespace=ns,
            registry=registry,
        )
        self.lost_events = Counter(
            "collector_lost_events",
            "Events Relay/Hubble reported lost (LostEvent.num_events_lost), by source.",
            ["cluster", "source"],
            namespace=ns,
            registry=registry,
        )
        self.node_status = Counter(
            "collector_node_status_events",
            "Relay node status events, by state.",
            ["cluster", "state"],
            namespace=ns,
            registry=registry,
        )
        self.relay_connected = Gauge(
            "collector_relay_connected",
            "1 while the GetFlows stream of the cluster's relay is open.",
            ["cluster"],
            namespace=ns,
            registry=registry,
        )
        self.reconnects = Counter(
            "collector_reconnects", "Times the stream was re-dialled.", ["cluster"], namespace=ns, registry=registry
        )
        self.stream_errors = Counter(
            "collector_stream_errors",
            "Stream failures by gRPC status code (or 'idle' for the watchdog).",
            ["cluster", "code"],
            namespace=ns,
            registry=registry,
        )
        self.flush_errors = Counter(
            "collector_flush_errors",
            "Failed commits to the store (e.g. disk full); the flows stay buffered and are retried.",
            ["cluster"],
            namespace=ns,
            registry=registry,
        )
        self.buffered = Gauge(
            "collector_buffered_flows",
            "Flows received but not yet committed.",
            ["cluster"],
            namespace=ns,
            registry=registry,
        )
        self.last_flush = Gauge(
            "collector_last_flush_timestamp_seconds",
            "When flows of the cluster were last committed.",
            ["cluster"],
            namespace=ns,
            registry=registry,
        )
        self.newest_flow = Gauge(
            "collector_newest_flow_timestamp_seconds",
            "Time of the newest flow committed for the cluster.",
            ["cluster"],
            namespace=ns,
            registry=registry,
        )
        self.flush_seconds = Histogram(
            "collector_flush_duration_seconds",
            "Time to decode, deduplicate and commit one batch.",
            ["cluster"],
            namespace=ns,
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.store_bytes = Counter(
            "collector_store_written_bytes",
            "Bytes of Parquet committed to the store.",
            ["cluster"],
            namespace=ns,
            registry=registry,
        )

    def init_cluster(self, cluster: str) -> None:
        """Create the cluster's series at zero so dashboards see them before the first event."""
        for m in (
            self.flows_received,
            self.flows_stored,
            self.duplicates,
            self.malformed,
            self.reconnects,
            self.flush_errors,
            self.store_bytes,
        ):
            m.labels(cluster)
        self.relay_connected.labels(cluster).set(0)
        self.buffered.labels(cluster).set(0)


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9965' or ':9965' -> (host, port)."""
    from flowpipe.errors import ConfigError

    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"invalid listen address {listen!r}: expected HOST:PORT")
    return host or "0.0.0.0", int(port)


def serve(registry: CollectorRegistry, listen: str):
    """Serve registry on http://listen/metrics in a background thread; return the server."""
    from prometheus_client import start_http_server

    from flowpipe.errors import ConfigError

    host, port = parse_listen(listen)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    return server
