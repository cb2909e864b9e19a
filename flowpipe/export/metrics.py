"""Every Prometheus metric flowpipe exposes, declared here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

NAMESPACE = "flowpipe"


@dataclass(frozen=True)
class InstrumentSpec:
    """One metric of `flowpipe collect`: a live prometheus_client instrument, labelled by cluster."""

    name: str  # without the flowpipe_ prefix (counters without _total)
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ("cluster",)
    buckets: tuple[float, ...] = ()  # histograms only

    def create(self, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
        """The instrument, registered in registry."""
        cls = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[self.kind]
        extra = {"buckets": self.buckets} if self.buckets else {}
        return cls(
            self.name,
            self.help,
            list(self.labels),
            namespace=NAMESPACE,
            registry=registry,
            **extra,
        )


# attribute of CollectorMetrics -> spec
COLLECTOR_METRICS: dict[str, InstrumentSpec] = {
    "flows_received": InstrumentSpec(
        "collector_flows_received", "counter", "Flows received from Relay."
    ),
    "flows_stored": InstrumentSpec(
        "collector_flows_stored", "counter", "Flows committed to the store."
    ),
    "duplicates": InstrumentSpec(
        "collector_duplicate_flows",
        "counter",
        "Flows dropped as duplicates (overlap after a resume).",
    ),
    "malformed": InstrumentSpec(
        "collector_malformed_responses",
        "counter",
        "GetFlows responses that could not be decoded.",
    ),
    "lost_events": InstrumentSpec(
        "collector_lost_events",
        "counter",
        "Events Relay/Hubble reported lost (LostEvent.num_events_lost), by source.",
        ("cluster", "source"),
    ),
    "node_status": InstrumentSpec(
        "collector_node_status_events",
        "counter",
        "Relay node status events, by state.",
        ("cluster", "state"),
    ),
    "relay_connected": InstrumentSpec(
        "collector_relay_connected",
        "gauge",
        "1 while the GetFlows stream of the cluster's relay is open.",
    ),
    "reconnects": InstrumentSpec(
        "collector_reconnects", "counter", "Times the stream was re-dialled."
    ),
    "attempts_without_progress": InstrumentSpec(
        "collector_attempts_without_progress",
        "gauge",
        "Stream attempts in a row that the relay or network cut before they brought a new flow "
        "(0 after any progress); 3 or more: the relay is not getting past what is stored.",
    ),
    "stream_errors": InstrumentSpec(
        "collector_stream_errors",
        "counter",
        "Stream failures by gRPC status code (or 'idle' for the watchdog).",
        ("cluster", "code"),
    ),
    "flush_errors": InstrumentSpec(
        "collector_flush_errors",
        "counter",
        "Failed commits to the store (e.g. disk full); the flows stay buffered and are retried.",
    ),
    "buffered": InstrumentSpec(
        "collector_buffered_flows", "gauge", "Flows received but not yet committed."
    ),
    "last_flush": InstrumentSpec(
        "collector_last_flush_timestamp_seconds",
        "gauge",
        "When flows of the cluster were last committed.",
    ),
    "newest_flow": InstrumentSpec(
        "collector_newest_flow_timestamp_seconds",
        "gauge",
        "Time of the newest flow committed for the cluster.",
    ),
    "flush_seconds": InstrumentSpec(
        "collector_flush_duration_seconds",
        "histogram",
        "Time to decode, deduplicate and commit one batch.",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    ),
    "store_bytes": InstrumentSpec(
        "collector_store_written_bytes", "counter", "Bytes of Parquet committed to the store."
    ),
}


class CollectorMetrics:
    """The instruments of COLLECTOR_METRICS as attributes (metrics.flows_stored.labels(c).inc())."""

    def __init__(self, registry: CollectorRegistry):
        for attr, spec in COLLECTOR_METRICS.items():
            setattr(self, attr, spec.create(registry))

    def init_cluster(self, cluster: str) -> None:
        """Create the cluster's series at zero so dashboards see them before the first event
        (not the timestamps: a zero there would read as 'last flush in 1970')."""
        for attr, spec in COLLECTOR_METRICS.items():
            if (
                spec.labels == ("cluster",)
                and spec.kind != "histogram"
                and not spec.name.endswith("_timestamp_seconds")
            ):
                getattr(self, attr).labels(cluster)


# ---- `flowpipe export`: families rebuilt after every evaluation (see flowpipe/export.py)


@dataclass(frozen=True)
class MetricSpec:
    """One exporter metric: name without the flowpipe_ prefix (counters without _total)."""

    name: str
    kind: str  # gauge | counter
    help: str
    labels: tuple[str, ...]

    @property
    def full_name(self) -> str:
        return f"{NAMESPACE}_{self.name}" + ("_total" if self.kind == "counter" else "")

    def family(self) -> GaugeMetricFamily | CounterMetricFamily:
        """An empty family to add samples to (counters get their _total suffix here)."""
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        return cls(f"{NAMESPACE}_{self.name}", self.help, labels=list(self.labels))


_S, _RC = ("stage", "rule", "cluster"), ("cluster",)
EXPORTER_METRICS: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        # conformance, from the last evaluation of every rule file over the --window
        MetricSpec(
            "rule_status",
            "gauge",
            "1 for the rule's current status (pass, warn, fail, error), 0 for the others.",
            (*_S, "status"),
        ),
        MetricSpec(
            "rule_evidence_flows",
            "gauge",
            "Flows in the rule's scope in the window (rows of its SELECT).",
            _S,
        ),
        MetricSpec("rule_violation_flows", "gauge", "Flows in the window that break the rule.", _S),
        MetricSpec(
            "rule_duration_seconds", "gauge", "Time the rule took in the last evaluation.", _S
        ),
        MetricSpec(
            "stage_conformant",
            "gauge",
            "1 when every error-severity rule of the stage passes on the cluster, 0 on a failure or error.",
            ("stage", "cluster"),
        ),
        MetricSpec(
            "evaluation_duration_seconds",
            "gauge",
            "Time the last evaluation (rules and store scan) took.",
            (),
        ),
        MetricSpec(
            "evaluation_last_success_timestamp_seconds",
            "gauge",
            "When the last evaluation finished without error.",
            (),
        ),
        MetricSpec(
            "evaluation_window_seconds",
            "gauge",
            "Width of the time window rules are evaluated over (--window).",
            (),
        ),
        MetricSpec("evaluations", "counter", "Evaluations run since the exporter started.", ()),
        MetricSpec(
            "evaluation_errors",
            "counter",
            "Evaluation errors: kind=rule (a rule could not run), check (rule files unusable), store (flow counting failed).",
            ("kind",),
        ),
        # store health, from file listings and Parquet statistics
        MetricSpec(
            "store_flows", "gauge", "Flows currently in the store (retention lowers it).", _RC
        ),
        MetricSpec("store_files", "gauge", "Parquet files of flows currently in the store.", _RC),
        MetricSpec(
            "store_newest_flow_timestamp_seconds", "gauge", "Time of the newest stored flow.", _RC
        ),
        MetricSpec(
            "store_last_flush_timestamp_seconds",
            "gauge",
            "Modification time of the newest file of the cluster (last commit).",
            _RC,
        ),
        MetricSpec(
            "store_lost_events",
            "counter",
            "Events Hubble/Relay reported lost (sum of LostEvent.num_events_lost in the store), by source.",
            (*_RC, "source"),
        ),
        # flow counters with Hubble's label meanings (hubble_* metrics of pkg/hubble/metrics)
        MetricSpec(
            "flows_processed",
            "counter",
            "Flows stored, like hubble_flows_processed_total: type L7/Drop/Capture/Trace/PolicyVerdict/Unknown.",
            (*_RC, "type", "subtype", "verdict", "protocol"),
        ),
        MetricSpec(
            "drop",
            "counter",
            "Dropped flows by drop reason and protocol, like hubble_drop_total.",
            (*_RC, "reason", "protocol"),
        ),
        MetricSpec(
            "tcp_flags",
            "counter",
            "Forwarded/redirected TCP flows by flag (FIN, SYN, SYN-ACK, RST) and family, like hubble_tcp_flags_total.",
            (*_RC, "flag", "family"),
        ),
        MetricSpec(
            "port_distribution",
            "counter",
            "Forwarded/redirected non-reply flows by destination port (first 100 per cluster, then port=other), like hubble_port_distribution_total.",
            (*_RC, "protocol", "port"),
        ),
        MetricSpec(
            "l7_flows",
            "counter",
            "L7 flows by protocol (HTTP, DNS, Kafka) and type (REQUEST, RESPONSE, SAMPLE).",
            (*_RC, "protocol", "type"),
        ),
        MetricSpec(
            "http_responses",
            "counter",
            "HTTP responses by method and status code, like hubble_http_responses_total.",
            (*_RC, "method", "status"),
        ),
        MetricSpec(
            "policy_verdicts",
            "counter",
            "Policy verdicts by direction, match and action (lowercase), like hubble_policy_verdicts_total.",
            (*_RC, "direction", "match", "action"),
        ),
    )
}


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
