"""A realistic busy-cluster Hubble flow mix (GetFlowsResponse messages) shared by the benchmarks."""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import struct
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format

from flowpipe.api.flow import flow_pb2
from flowpipe.api.observer import observer_pb2

RATE = 30_000  # flows per second of simulated time
HUBBLE_VERSION = "1.16.3+g4a0a65f5"

# Template file (read by bench/peer/server.js), little-endian:
#   b"FPT1", u32 count, then per message:
#   u32 length, u32 uuid_off, u32 flow_sec_off, u32 flow_nanos_off, u32 resp_sec_off,
#   u32 resp_nanos_off, then the serialized GetFlowsResponse.
# uuid_off is the offset of the 36-char uuid string; *_sec_off / *_nanos_off those of the
# 5-byte varints of Timestamp.seconds / .nanos (of flow.time and of the response's time).
TEMPLATE_MAGIC = b"FPT1"
TEMPLATE_RECORD = struct.Struct("<6I")
# Seconds since 1978 and nanos >= 2**28 both encode as 5-byte varints, so the peer can
# overwrite them in place without moving any byte.
NANOS_MIN = 1 << 28
NANOS_SPAN = 1_000_000_000 - NANOS_MIN

# namespace, app, kind, replicas, port, protocol
APPS: list[tuple[str, str, str, int, int, str]] = [
    ("kube-system", "coredns", "Deployment", 3, 53, "dns"),
    ("kube-system", "metrics-server", "Deployment", 2, 10250, "https"),
    ("kube-system", "hubble-relay", "Deployment", 1, 4245, "grpc"),
    ("monitoring", "prometheus", "StatefulSet", 2, 9090, "http"),
    ("monitoring", "grafana", "Deployment", 2, 3000, "http"),
    ("monitoring", "alertmanager", "StatefulSet", 3, 9093, "http"),
    ("monitoring", "kube-state-metrics", "Deployment", 1, 8080, "http"),
    ("ingress-nginx", "ingress-nginx-controller", "Deployment", 4, 443, "https"),
    ("cert-manager", "cert-manager", "Deployment", 1, 9402, "http"),
    ("cert-manager", "cert-manager-webhook", "Deployment", 2, 10250, "https"),
    ("argocd", "argocd-server", "Deployment", 2, 8080, "http"),
    ("argocd", "argocd-repo-server", "Deployment", 2, 8081, "grpc"),
    ("argocd", "argocd-application-controller", "StatefulSet", 1, 8082, "http"),
    ("shop-frontend", "frontend", "Deployment", 16, 8080, "http"),
    ("checkout", "checkout", "Deployment", 8, 8080, "http"),
    ("payments", "payments", "Deployment", 6, 8080, "http"),
    ("payments", "payments-worker", "Deployment", 4, 8080, "http"),
    ("catalog", "catalog", "Deployment", 12, 8080, "http"),
    ("catalog", "catalog-db", "StatefulSet", 3, 5432, "postgres"),
    ("search", "search-api", "Deployment", 8, 8080, "http"),
    ("search", "elasticsearch", "StatefulSet", 5, 9200, "http"),
    ("recommendations", "recommender", "Deployment", 6, 8080, "http"),
    ("recommendations", "redis", "StatefulSet", 3, 6379, "redis"),
    ("users", "users", "Deployment", 6, 8080, "http"),
    ("users", "users-db", "StatefulSet", 3, 5432, "postgres"),
    ("auth", "auth", "Deployment", 6, 8080, "http"),
    ("auth", "keycloak", "StatefulSet", 2, 8080, "http"),
    ("orders", "orders", "Deployment", 8, 8080, "http"),
    ("orders", "orders-db", "StatefulSet", 3, 5432, "postgres"),
    ("shipping", "shipping", "Deployment", 4, 8080, "http"),
    ("inventory", "inventory", "Deployment", 6, 8080, "http"),
    ("inventory", "inventory-cache", "StatefulSet", 3, 6379, "redis"),
    ("notifications", "notifier", "Deployment", 4, 8080, "http"),
    ("analytics", "analytics-ingest", "Deployment", 6, 8080, "http"),
    ("analytics", "kafka", "StatefulSet", 3, 9092, "kafka"),
    ("data-platform", "etl-runner", "Deployment", 4, 8080, "http"),
    ("data-platform", "airflow-scheduler", "Deployment", 2, 8793, "http"),
    ("logging", "loki", "StatefulSet", 3, 3100, "http"),
    ("logging", "fluent-bit", "DaemonSet", 0, 2020, "http"),  # one per node
    ("messaging", "rabbitmq", "StatefulSet", 3, 5672, "amqp"),
    ("messaging", "mail-relay", "Deployment", 2, 8080, "http"),
]

HELM_NAMESPACES = {
    "kube-system",
    "monitoring",
    "ingress-nginx",
    "cert-manager",
    "argocd",
    "logging",
    "messaging",
}

# client app -> server app (or world:<name>), weight, HTTP paths when the edge has L7 visibility
EDGES: list[tuple[str, str, int, tuple[str, ...]]] = [
    ("ingress-nginx-controller", "frontend", 30, ("/", "/products", "/cart", "/api/session")),
    (
        "frontend",
        "catalog",
        25,
        ("/api/v1/products", "/api/v1/products/{id}", "/api/v1/categories"),
    ),
    ("frontend", "search-api", 12, ("/api/v1/search?q={q}",)),
    ("frontend", "recommender", 10, ("/api/v1/recommendations/{id}",)),
    ("frontend", "checkout", 6, ("/api/v1/checkout", "/api/v1/cart/{id}")),
    ("frontend", "users", 6, ("/api/v1/users/{id}", "/api/v1/users/{id}/addresses")),
    ("frontend", "auth", 8, ("/oauth2/token", "/oauth2/introspect")),
    ("checkout", "payments", 5, ("/api/v1/charges", "/api/v1/refunds/{id}")),
    ("checkout", "orders", 5, ("/api/v1/orders", "/api/v1/orders/{id}")),
    ("checkout", "inventory", 5, ("/api/v1/reservations", "/api/v1/stock/{id}")),
    ("checkout", "shipping", 3, ("/api/v1/quotes",)),
    ("orders", "orders-db", 8, ()),
    ("orders", "kafka", 5, ()),
    ("catalog", "catalog-db", 14, ()),
    ("search-api", "elasticsearch", 10, ()),
    ("recommender", "redis", 10, ()),
    ("users", "users-db", 6, ()),
    ("auth", "keycloak", 6, ("/realms/shop/protocol/openid-connect/token",)),
    ("keycloak", "users-db", 3, ()),
    ("inventory", "inventory-cache", 8, ()),
    ("payments-worker", "rabbitmq", 3, ()),
    ("payments", "rabbitmq", 3, ()),
    ("notifier", "rabbitmq", 3, ()),
    ("notifier", "mail-relay", 2, ("/v1/send",)),
    ("analytics-ingest", "kafka", 8, ()),
    ("etl-runner", "kafka", 3, ()),
    ("etl-runner", "orders-db", 2, ()),
    ("airflow-scheduler", "etl-runner", 1, ("/api/v1/dags/{id}/dagRuns",)),
    ("prometheus", "*", 10, ("/metrics",)),
    ("grafana", "prometheus", 3, ("/api/v1/query_range", "/api/v1/query")),
    ("grafana", "loki", 2, ("/loki/api/v1/query_range",)),
    ("fluent-bit", "loki", 8, ("/loki/api/v1/push",)),
    ("argocd-application-controller", "argocd-repo-server", 1, ()),
    ("argocd-server", "argocd-repo-server", 1, ()),
    ("hubble-relay", "*hubble", 1, ()),
    ("payments", "world:api.stripe.com", 3, ()),
    ("shipping", "world:api.ups.com", 1, ()),
    ("mail-relay", "world:smtp.sendgrid.net", 1, ()),
    ("argocd-repo-server", "world:github.com", 1, ()),
    ("etl-runner", "world:s3.eu-west-1.amazonaws.com", 3, ()),
    ("cert-manager", "world:acme-v02.api.letsencrypt.org", 1, ()),
    ("cert-manager", "kube-apiserver", 1, ()),
    ("argocd-application-controller", "kube-apiserver", 2, ()),
    ("prometheus", "kube-apiserver", 1, ()),
]

# source app -> server app (or "world"), port: traffic that policy denies
DENIED: list[tuple[str, str, int]] = [
    ("analytics-ingest", "payments", 8080),
    ("frontend", "users-db", 5432),
    ("etl-runner", "payments", 8080),
    ("recommender", "orders-db", 5432),
    ("world", "catalog", 8080),
    ("world", "grafana", 3000),
    ("search-api", "world", 443),
]

EXTERNAL_IPS = {
    "api.stripe.com": ["54.187.174.169", "54.187.205.235", "54.187.216.72"],
    "api.ups.com": ["153.2.228.76"],
    "smtp.sendgrid.net": ["167.89.123.124", "167.89.115.56"],
    "github.com": ["140.82.121.3", "140.82.121.4"],
    "s3.eu-west-1.amazonaws.com": ["52.218.106.139", "52.92.2.146", "3.5.68.132"],
    "acme-v02.api.letsencrypt.org": ["172.65.32.248"],
    "registry-1.docker.io": ["54.227.20.253", "3.216.34.172"],
    "oauth2.googleapis.com": ["142.250.179.138"],
}

# kind of event, weight (per mille)
KINDS = [
    ("trace", 560),
    ("trace-dns", 60),
    ("policy-verdict", 90),
    ("drop", 45),
    ("http", 120),
    ("dns", 90),
    ("host", 35),
]

OTHER_DROPS = [  # (reason, weight)
    (flow_pb2.CT_MAP_INSERTION_FAILED, 2),
    (flow_pb2.STALE_OR_UNROUTABLE_IP, 3),
    (flow_pb2.UNSUPPORTED_L3_PROTOCOL, 3),
    (flow_pb2.INVALID_SOURCE_IP, 1),
    (flow_pb2.SERVICE_BACKEND_NOT_FOUND, 2),
    (flow_pb2.AUTH_REQUIRED, 1),
    (flow_pb2.CT_MISSING_TCP_ACK_FLAG, 1),
    (flow_pb2.POLICY_DENY, 3),
]

TCP_SEQUENCE = [  # (flags, is_reply, weight): a connection's life, as observed
    (("SYN",), False, 10),
    (("SYN", "ACK"), True, 9),
    (("ACK",), False, 14),
    (("ACK", "PSH"), False, 22),
    (("ACK", "PSH"), True, 22),
    (("ACK",), True, 10),
    (("ACK", "FIN"), False, 6),
    (("ACK", "FIN"), True, 5),
    (("ACK", "RST"), False, 1),
]
TCP_ORDER = ("SYN", "ACK", "RST", "FIN", "PSH", "URG", "ECE", "CWR", "NS")

HTTP_CODES = [
    (200, 80),
    (201, 4),
    (204, 3),
    (304, 3),
    (400, 2),
    (401, 2),
    (403, 1),
    (404, 3),
    (500, 1),
    (503, 1),
]
USER_AGENTS = [
    "Go-http-client/1.1",
    "okhttp/4.12.0",
    "python-requests/2.31.0",
    "Prometheus/2.53.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15",
    "axios/1.7.2",
]
RCODE_TEXT = {0: "No Error", 2: "Server Failure", 3: "Non-Existent Domain"}


@dataclass
class Pod:
    """One pod: its identity, addresses and the Endpoint message Hubble reports for it."""

    cluster: str
    namespace: str
    app: str
    name: str
    ip: str
    node: str
    port: int
    protocol: str
    endpoint: flow_pb2.Endpoint
    mac: str
    lxc: tuple[int, str]


@dataclass
class Cluster:
    """One cluster of the mesh: nodes, pods by app, node labels."""

    name: str
    index: int
    nodes: list[str] = field(default_factory=list)
    node_ips: dict[str, str] = field(default_factory=dict)
    node_labels: dict[str, list[str]] = field(default_factory=dict)
    pods: dict[str, list[Pod]] = field(default_factory=dict)


def _hexdigest(*parts: object, n: int = 10) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:n]


def _mac(*parts: object) -> str:
    h = _hexdigest(*parts, n=10)
    return "ae:" + ":".join(h[i : i + 2] for i in range(0, 10, 2))


def _labels(cluster: str, ns: str, app: str, kind: str) -> list[str]:
    if ns in HELM_NAMESPACES:  # charts label with app.kubernetes.io/*, teams with app=
        labels = [f"k8s:app.kubernetes.io/instance={ns}", f"k8s:app.kubernetes.io/name={app}"]
    else:
        labels = [f"k8s:app={app}"] + (["k8s:version=v1"] if kind == "Deployment" else [])
    labels += [
        f"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name={ns}",
        f"k8s:io.cilium.k8s.policy.cluster={cluster}",
        f"k8s:io.cilium.k8s.policy.serviceaccount={app}",
        f"k8s:io.kubernetes.pod.namespace={ns}",
    ]
    return sorted(labels)


def _identity(cluster: str, ns: str, app: str) -> int:
    return 10_000 + int(_hexdigest(cluster, ns, app, n=8), 16) % 55_000


def _reserved(name: str, identity: int, cluster: str) -> flow_pb2.Endpoint:
    return flow_pb2.Endpoint(
        identity=identity,
        labels=[f"reserved:{name}"],
        cluster_name=cluster if name != "world" else "",
    )


def _policy(name: str, ns: str, revision: int) -> flow_pb2.Policy:
    labels = [
        "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
        f"k8s:io.cilium.k8s.policy.name={name}",
        f"k8s:io.cilium.k8s.policy.namespace={ns}",
        f"k8s:io.cilium.k8s.policy.uid={uuid.UUID(_hexdigest(name, ns, n=32))}",
    ]
    return flow_pb2.Policy(
        name=name, namespace=ns, labels=labels, revision=revision, kind="CiliumNetworkPolicy"
    )


class World:
    """Namespaces, pods, identities, services and policies of a clustermesh (deterministic by seed)."""

    def __init__(self, clusters: Sequence[str], seed: int = 1):
        rng = random.Random(f"world-{seed}")
        self.clusters: dict[str, Cluster] = {}
        self.apps = {a[1]: a for a in APPS}
        for ci, cname in enumerate(clusters):
            cl = Cluster(cname, ci + 1)
            zones = ["a", "b", "c"]
            for n in range(14):
                node = f"ip-172-{16 + ci}-{n // 4}-{10 + n * 7 % 240}.eu-west-1.compute.internal"
                cl.nodes.append(node)
                cl.node_ips[node] = f"172.{16 + ci}.{n // 4}.{10 + n * 7 % 240}"
                cl.node_labels[node] = [
                    "kubernetes.io/arch=amd64",
                    f"kubernetes.io/hostname={node}",
                    "node.kubernetes.io/instance-type=m6i.4xlarge",
                    f"topology.kubernetes.io/zone=eu-west-1{zones[n % 3]}",
                ]
            next_ip = {node: 10 for node in cl.nodes}
            for ns, app, kind, replicas, port, proto in APPS:
                labels = _labels(cname, ns, app, kind)
                identity = _identity(cname, ns, app)
                count = len(cl.nodes) if kind == "DaemonSet" else replicas
                rs = _hexdigest(cname, app, n=10)
                pods = []
                for r in range(count):
                    node = cl.nodes[r] if kind == "DaemonSet" else rng.choice(cl.nodes)
                    if kind == "Deployment":
                        name = f"{app}-{rs}-{_hexdigest(cname, app, r, n=5)}"
                    elif kind == "StatefulSet":
                        name = f"{app}-{r}"
                    else:
                        name = f"{app}-{_hexdigest(cname, app, r, n=5)}"
                    ni = cl.nodes.index(node)
                    ip = f"10.{ci * 32 + ni // 2}.{(ni % 2) * 128 + next_ip[node] // 250}.{next_ip[node] % 250 + 2}"
                    next_ip[node] += 1
                    ep = flow_pb2.Endpoint(
                        ID=rng.randrange(100, 4096),
                        identity=identity,
                        cluster_name=cname,
                        namespace=ns,
                        labels=labels,
                        pod_name=name,
                        workloads=[flow_pb2.Workload(name=app, kind=kind)],
                    )
                    lxc = (rng.randrange(8, 400), f"lxc{_hexdigest(cname, name, n=12)}")
                    pods.append(
                        Pod(cname, ns, app, name, ip, node, port, proto, ep, _mac(cname, name), lxc)
                    )
                cl.pods[app] = pods
            self.clusters[cname] = cl
        self.world = _reserved("world", 2, "")
        self.kube_apiserver = {c: _reserved("kube-apiserver", 7, c) for c in clusters}
        self.host = {c: _reserved("host", 1, c) for c in clusters}
        self.remote_node = {c: _reserved("remote-node", 6, c) for c in clusters}
        self.health = {c: _reserved("health", 4, c) for c in clusters}
        self.policies: dict[str, list[flow_pb2.Policy]] = {}
        for ns in sorted({a[0] for a in APPS}):
            self.policies[ns] = [
                _policy("default-deny", ns, 3),
                _policy("allow-dns", ns, 7),
                _policy(f"{ns}-ingress", ns, 12 + len(ns)),
                _policy(f"{ns}-egress", ns, 9 + len(ns) % 5),
            ]
        self.deny_policies = {ns: _policy("deny-cross-team", ns, 2) for ns in self.policies}
        self.edges = [e for e in EDGES if e[1] != "*hubble"]
        self.edge_weights = [e[2] for e in self.edges]
        self.http_edges = [e for e in self.edges if e[3]]
        self.http_weights = [e[2] for e in self.http_edges]
        self.metrics_targets = [
            a[1] for a in APPS if a[5] in ("http", "https") and a[1] != "prometheus"
        ]


def _flags_summary(flags: Sequence[str]) -> str:
    return "TCP Flags: " + ", ".join(f for f in TCP_ORDER if f in flags)


class _Gen:
    """Builds one flow at a time; rng and world are fixed at construction."""

    def __init__(
        self, world: World, rng: random.Random, clusters: Sequence[str], observed_by: Sequence[str]
    ):
        self.w = world
        self.rng = rng
        self.clusters = list(clusters)
        self.observed_by = list(observed_by)
        self.kinds = [k for k, _ in KINDS]
        self.kind_weights = [w for _, w in KINDS]
        self.tcp = TCP_SEQUENCE
        self.tcp_weights = [w for *_, w in TCP_SEQUENCE]
        self.codes = [c for c, _ in HTTP_CODES]
        self.code_weights = [w for _, w in HTTP_CODES]
        self.other_drops = [r for r, _ in OTHER_DROPS]
        self.other_drop_weights = [w for _, w in OTHER_DROPS]

    # -------------------------------------------------------------- picking

    def pod(self, cluster: str, app: str) -> Pod:
        return self.rng.choice(self.w.clusters[cluster].pods[app])

    def remote_cluster(self, cluster: str) -> str:
        if len(self.clusters) > 1 and self.rng.random() < 0.06:
            return self.rng.choice([c for c in self.clusters if c != cluster])
        return cluster

    def edge(self, cluster: str) -> tuple[Pod, Pod | str, str]:
        """(client pod, server pod or world name, L7 path template or '')."""
        client_app, server_app, _, paths = self.rng.choices(self.w.edges, self.w.edge_weights)[0]
        client = self.pod(cluster, client_app)
        if server_app == "*":
            server_app = self.rng.choice(self.w.metrics_targets)
        if server_app.startswith("world:") or server_app == "kube-apiserver":
            return client, server_app, ""
        return (
            client,
            self.pod(self.remote_cluster(cluster), server_app),
            self.rng.choice(paths) if paths else "",
        )

    def ephemeral(self) -> int:
        return self.rng.randrange(32768, 61000)

    # -------------------------------------------------------------- building

    def base(self, r: observer_pb2.GetFlowsResponse, cluster: str, node: str) -> flow_pb2.Flow:
        f = r.flow
        f.uuid = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        full = f"{cluster}/{node}"
        f.node_name = full
        r.node_name = full
        f.node_labels.extend(self.w.clusters[cluster].node_labels[node])
        f.emitter.name = "Hubble"
        f.emitter.version = HUBBLE_VERSION
        return f

    def set_ip(self, f: flow_pb2.Flow, src: str, dst: str) -> None:
        f.IP.source = src
        f.IP.destination = dst
        f.IP.ipVersion = flow_pb2.IPv4

    def tcp_l4(self, f: flow_pb2.Flow, sport: int, dport: int, flags: Sequence[str]) -> None:
        f.l4.TCP.source_port = sport
        f.l4.TCP.destination_port = dport
        for name in flags:
            setattr(f.l4.TCP.flags, name, True)

    def service(self, f: flow_pb2.Flow, pod: Pod, side: str) -> None:
        svc = getattr(f, f"{side}_service")
        svc.name = pod.app
        svc.namespace = pod.namespace

    def world_ep(self, name: str) -> tuple[flow_pb2.Endpoint, str]:
        return self.w.world, self.rng.choice(EXTERNAL_IPS[name])

    def flow(self, r: observer_pb2.GetFlowsResponse) -> None:
        cluster = self.rng.choice(self.observed_by)
        kind = self.rng.choices(self.kinds, self.kind_weights)[0]
        getattr(self, "k_" + kind.replace("-", "_"))(r, cluster)

    def _endpoints(self, cluster: str) -> tuple[Pod, flow_pb2.Endpoint, str, int, Pod | None, str]:
        """client, server endpoint, server ip, server port, server pod (None off-cluster), world name."""
        client, server, path = self.edge(cluster)
        if isinstance(server, Pod):
            return client, server.endpoint, server.ip, server.port, server, ""
        if server == "kube-apiserver":
            return (
                client,
                self.w.kube_apiserver[cluster],
                f"172.{15 + self.w.clusters[cluster].index}.0.2",
                6443,
                None,
                "",
            )
        name = server.split(":", 1)[1]
        ep, ip = self.world_ep(name)
        return client, ep, ip, 443, None, name

    def k_trace(self, r: observer_pb2.GetFlowsResponse, cluster: str) -> None:
        rng = self.rng
        client, sep, sip, sport_srv, spod, wname = self._endpoints(cluster)
        flags, reply, _ = rng.choices(self.tcp, self.tcp_weights)[0]
        eph = self.ephemeral()
        # where it is observed: leaving the client, or arriving at the server (same cluster only)
        at_server = spod is not None and spod.cluster == cluster and rng.random() < 0.45
        node = spod.node if at_server else client.node
        f = self.base(r, cluster, node)
        f.verdict = flow_pb2.FORWARDED
        f.Type = flow_pb2.L3_L4
        f.event_type.type = 4
        if reply:
            src_ep, dst_ep, sip_, dip_, sp, dp = (
                sep,
                client.endpoint,
                sip,
                client.ip,
                sport_srv,
                eph,
            )
        else:
            src_ep, dst_ep, sip_, dip_, sp, dp = (
                client.endpoint,
                sep,
                client.ip,
                sip,
                eph,
                sport_srv,
            )
        f.source.CopyFrom(src_ep)
        f.destination.CopyFrom(dst_ep)
        self.set_ip(f, sip_, dip_)
        self.tcp_l4(f, sp, dp, flags)
        if wname:
            (f.source_names if reply else f.destination_names).append(wname)
        if spod is not None and not reply:
            self.service(f, spod, "destination")
        elif spod is not None:
            self.service(f, spod, "source")
        local = spod if at_server else client
        cross_node = spod is None or spod.node != client.node or spod.cluster != client.cluster
        if at_server:
            f.trace_observation_point = flow_pb2.TO_ENDPOINT
            f.traffic_direction = flow_pb2.INGRESS
            f.interface.index, f.interface.name = local.lxc
        elif cross_node and spod is not None and rng.random() < 0.5:
            f.trace_observation_point = flow_pb2.TO_OVERLAY
            f.event_type.sub_type = 4
            f.traffic_direction = flow_pb2.EGRESS
            f.interface.index, f.interface.name = 6, "cilium_vxlan"
        else:
            f.trace_observation_point = flow_pb2.TO_STACK
            f.event_type.sub_type = 3
            f.traffic_direction = flow_pb2.EGRESS
        if not at_server:
            f.ethernet.source = client.mac
            f.ethernet.destination = _mac(cluster, client.node)
        else:
            f.ethernet.source = _mac(cluster, spod.node)
            f.ethernet.destination = spod.mac
        if reply:
            f.traffic_direction = flow_pb2.INGRESS if not at_server else flow_pb2.EGRESS
        f.trace_reason = (
            flow_pb2.REPLY
            if reply
            else (flow_pb2.NEW if flags == ("SYN",) else flow_pb2.ESTABLISHED)
        )
        f.is_reply.value = reply
        f.reply = reply
        f.Summary = _flags_summary(flags)

    def k_trace_dns(self, r: observer_pb2.GetFlowsResponse, cluster: str) -> None:
        rng = self.rng
        client = self.pod(cluster, rng.choice([a[1] for a in APPS if a[2] != "DaemonSet"]))
        dns = self.pod(cluster, "coredns")
        reply = rng.random() < 0.48
        f = self.base(r, cluster, client.node)
        f.verdict = flow_pb2.FORWARDED
        f.Type = flow_pb2.L3_L4
        f.event_type.type = 4
        f.event_type.sub_type = 1 if not reply else 0
        eph = self.ephemeral()
        if reply:
            f.source.CopyFrom(dns.endpoint)
            f.destination.CopyFrom(client.endpoint)
            self.set_ip(f, dns.ip, client.ip)
            f.l4.UDP.source_port, f.l4.UDP.destination_port = 53, eph
            f.trace_observation_point = flow_pb2.TO_ENDPOINT
            f.source_service.name, f.source_service.namespace = "kube-dns", "kube-system"
        else:
            f.source.CopyFrom(client.endpoint)
            f.destination.CopyFrom(dns.endpoint)
            self.set_ip(f, client.ip, dns.ip)
            f.l4.UDP.source_port, f.l4.UDP.destination_port = eph, 53
            f.trace_observation_point = flow_pb2.TO_PROXY
            f.proxy_port = 40_017 + self.w.clusters[cluster].index
            f.destination_service.name, f.destination_service.namespace = "kube-dns", "kube-system"
        f.ethernet.source, f.ethernet.destination = client.mac, _mac(cluster, client.node)
        f.traffic_direction = flow_pb2.EGRESS
        f.trace_reason = flow_pb2.REPLY if reply else flow_pb2.NEW
        f.is_reply.value = reply
        f.reply = reply
        f.Summary = "UDP"

    def k_policy_verdict(self, r: observer_pb2.GetFlowsResponse, cluster: str) -> None:
        rng = self.rng
        client, sep, sip, port, spod, wname = self._endpoints(cluster)
        ingress = spod is not None and spod.cluster == cluster and rng.random() < 0.5
        f = self.base(r, cluster, spod.node if ingress else client.node)
        redirected = spod is not None and spod.protocol == "http" and rng.random() < 0.35
        f.verdict = flow_pb2.REDIRECTED if redirected else flow_pb2.FORWARDED
        f.Type = flow_pb2.L3_L4
        f.event_type.type = 5
        f.source.CopyFrom(client.endpoint)
        f.destination.CopyFrom(sep)
        self.set_ip(f, client.ip, sip)
        self.tcp_l4(f, self.ephemeral(), port, ("SYN",))
        if wname:
            f.destination_names.append(wname)
        if spod is not None:
            self.service(f, spod, "destination")
        f.ethernet.source, f.ethernet.destination = client.mac, _mac(cluster, client.node)
        f.policy_match_type = rng.choices([1, 2, 3, 4], [25, 60, 10, 5])[0]
        pols = self.w.policies
        if ingress:
            f.traffic_direction = flow_pb2.INGRESS
            f.ingress_allowed_by.append(pols[spod.namespace][2])
        else:
            f.traffic_direction = flow_pb2.EGRESS
            f.egress_allowed_by.append(pols[client.namespace][3])
            if rng.random() < 0.2:
                f.egress_allowed_by.append(pols[client.namespace][1])
        f.is_reply.value = False
        f.Summary = "TCP Flags: SYN"

    def k_drop(self, r: observer_pb2.GetFlowsResponse, cluster: str) -> None:
        rng = self.rng
        src_app, dst_app, port = rng.choice(DENIED)
        if src_app == "world":
            src_ep, sip = (
                self.w.world,
                f"{rng.randrange(1, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            )
            dst = self.pod(cluster, dst_app)
            dst_ep, dip, node, ns = dst.endpoint, dst.ip, dst.node, dst.namespace
            mac_src, mac_dst = _mac(cluster, dst.node), dst.mac
        else:
            src = self.pod(cluster, src_app)
            src_ep, sip, node, ns = src.endpoint, src.ip, src.node, src.namespace
            if dst_app == "world":
                dst_ep, dip = self.world_ep(rng.choice(sorted(EXTERNAL_IPS)))
            else:
                dst = self.pod(self.remote_cluster(cluster), dst_app)
                dst_ep, dip = dst.endpoint, dst.ip
            mac_src, mac_dst = src.mac, _mac(cluster, src.node)
        policy = rng.random() < 0.8
        if policy:
            reason = flow_pb2.POLICY_DENIED
        else:
            reason = rng.choices(self.other_drops, self.other_drop_weights)[0]
        as_verdict = policy and rng.random() < 0.5  # policy-verdict event, else a drop notification
        f = self.base(r, cluster, node)
        f.verdict = flow_pb2.DROPPED
        f.Type = flow_pb2.L3_L4
        f.drop_reason = reason
        f.drop_reason_desc = reason
        f.source.CopyFrom(src_ep)
        f.destination.CopyFrom(dst_ep)
        self.set_ip(f, sip, dip)
        self.tcp_l4(f, self.ephemeral(), port, ("SYN",))
        f.ethernet.source, f.ethernet.destination = mac_src, mac_dst
        egress = src_app != "world"
        f.traffic_direction = flow_pb2.EGRESS if egress else flow_pb2.INGRESS
        if as_verdict:
            f.event_type.type = 5
            f.policy_match_type = 0
        else:
            f.event_type.type = 1
            f.event_type.sub_type = reason
            f.file.name = "bpf_lxc.c"
            f.file.line = rng.choice([1342, 2013, 2290])
        if reason == flow_pb2.POLICY_DENY:
            (f.egress_denied_by if egress else f.ingress_denied_by).append(self.w.deny_policies[ns])
        f.is_reply.value = False
        f.Summary = "TCP Flags: SYN"

    def k_http(self, r: observer_pb2.GetFlowsResponse, cluster: str) -> None:
        rng = self.rng
        client_app, server_app, _, paths = rng.choices(self.w.http_edges, self.w.http_weights)[0]
        client = self.pod(cluster, client_app)
        if server_app == "*":
            server_app = rng.choice(self.w.metrics_targets)
        server = self.pod(self.remote_cluster(cluster), server_app)
        path = (
            rng.choice(paths)
            .replace("{id}", str(rng.randrange(1, 200_000)))
            .replace("{q}", rng.choice(["shoes", "red+dress", "laptop", "usb-c"]))
        )
        method = (
            "GET"
            if path == "/metrics" or rng.random() < 0.7
            else rng.choice(["POST", "PUT", "DELETE", "PATCH"])
        )
        response = rng.random() < 0.5
        f = self.base(r, cluster, client.node)
        f.verdict = flow_pb2.FORWARDED
        f.Type = flow_pb2.L7
        f.event_type.type = 129
        f.traffic_direction = flow_pb2.EGRESS
        host = f"{server.app}.{server.namespace}.svc.cluster.local:{server.port}"
        url = f"http://{host}{path}"
        eph = self.ephemeral()
        l7 = f.l7
        h = l7.http
        h.method, h.url, h.protocol = method, url, "HTTP/1.1"
        h.headers.add(key=":authority", value=host)
        h.headers.add(key="user-agent", value=rng.choice(USER_AGENTS))
        h.headers.add(key="x-request-id", value=str(uuid.UUID(int=rng.getrandbits(128), version=4)))
        if response:
            code = rng.choices(self.codes, self.code_weights)[0]
            latency = int(rng.lognormvariate(15.2, 1.0))  # median ~4ms
            l7.type = flow_pb2.RESPONSE
            l7.latency_ns = latency
            h.code = code
            f.source.CopyFrom(server.endpoint)
            f.destination.CopyFrom(client.endpoint)
            self.set_ip(f, server.ip, client.ip)
            self.tcp_l4(f, server.port, eph, ())
            self.service(f, server, "source")
            f.is_reply.value = True
            f.reply = True
            f.Summary = f"HTTP/1.1 {code} {latency // 1_000_000}ms ({method} {url})"
        else:
            l7.type = flow_pb2.REQUEST
            f.source.CopyFrom(client.endpoint)
            f.destination.CopyFrom(server.endpoint)
            self.set_ip(f, client.ip, server.ip)
            self.tcp_l4(f, eph, server.port, ())
            self.service(f, server, "destination")
            f.is_reply.value = False
            f.Summary = f"HTTP/1.1 {method} {url}"

    def k_dns(self, r: observer_pb2.GetFlowsResponse, cluster: str) -> None:
        rng = self.rng
        client = self.pod(cluster, rng.choice([a[1] for a in APPS if a[2] != "DaemonSet"]))
        dns = self.pod(cluster, "coredns")
        roll = rng.random()
        if roll < 0.55:
            target = rng.choice(APPS)
            query = f"{target[1]}.{target[0]}.svc.cluster.local."
            ips = [f"10.96.{len(target[1])}.{sum(map(ord, target[1])) % 250 + 1}"]
            rcode, ttl = 0, 30
        elif roll < 0.8:
            name = rng.choice(sorted(EXTERNAL_IPS))
            query = name + "."
            ips = EXTERNAL_IPS[name][: rng.randrange(1, len(EXTERNAL_IPS[name]) + 1)]
            rcode, ttl = 0, rng.choice([20, 60, 300])
        else:  # search-path expansion of an external name
            name = rng.choice(sorted(EXTERNAL_IPS))
            query = f"{name}.{client.namespace}.svc.cluster.local."
            ips, rcode, ttl = [], 3, 4294967295
        qtype = "AAAA" if rng.random() < 0.3 else "A"
        if qtype == "AAAA" and rcode == 0:
            ips = []
        response = rng.random() < 0.5
        f = self.base(r, cluster, client.node)
        f.verdict = flow_pb2.FORWARDED
        f.Type = flow_pb2.L7
        f.event_type.type = 129
        f.traffic_direction = flow_pb2.EGRESS
        eph = self.ephemeral()
        d = f.l7.dns
        d.query = query
        d.observation_source = "proxy"
        d.qtypes.append(qtype)
        if response:
            f.l7.type = flow_pb2.RESPONSE
            f.l7.latency_ns = int(rng.lognormvariate(13.0, 0.8))
            d.rcode, d.ttl = rcode, ttl
            d.ips.extend(ips)
            if ips:
                d.rrtypes.extend([qtype] * len(ips))
            f.source.CopyFrom(dns.endpoint)
            f.destination.CopyFrom(client.endpoint)
            self.set_ip(f, dns.ip, client.ip)
            f.l4.UDP.source_port, f.l4.UDP.destination_port = 53, eph
            f.source_service.name, f.source_service.namespace = "kube-dns", "kube-system"
            f.is_reply.value = True
            f.reply = True
            if rcode == 0:
                answer = '"' + ",".join(ips) + '"'
                f.Summary = f"DNS Answer {answer} TTL: {ttl} (Proxy {query} {qtype})"
            else:
                f.Summary = (
                    f"DNS Answer RCode: {RCODE_TEXT[rcode]} TTL: {ttl} (Proxy {query} {qtype})"
                )
        else:
            f.l7.type = flow_pb2.REQUEST
            f.source.CopyFrom(client.endpoint)
            f.destination.CopyFrom(dns.endpoint)
            self.set_ip(f, client.ip, dns.ip)
            f.l4.UDP.source_port, f.l4.UDP.destination_port = eph, 53
            f.destination_service.name, f.destination_service.namespace = "kube-dns", "kube-system"
            f.is_reply.value = False
            f.Summary = f"DNS Query {query} {qtype}"

    def k_host(self, r: observer_pb2.GetFlowsResponse, cluster: str) -> None:
        """kubelet probes, node-to-node health checks and remote-node traffic."""
        rng = self.rng
        cl = self.w.clusters[cluster]
        app = rng.choice([a[1] for a in APPS])
        pod = self.pod(cluster, app)
        f = self.base(r, cluster, pod.node)
        f.verdict = flow_pb2.FORWARDED
        f.Type = flow_pb2.L3_L4
        f.event_type.type = 4
        flags, reply, _ = rng.choices(self.tcp, self.tcp_weights)[0]
        eph = self.ephemeral()
        if rng.random() < 0.7:
            peer_ep, peer_ip, port = self.w.host[cluster], cl.node_ips[pod.node], pod.port
        elif rng.random() < 0.5:
            other = rng.choice(cl.nodes)
            peer_ep, peer_ip, port = self.w.remote_node[cluster], cl.node_ips[other], pod.port
        else:
            other = rng.choice(cl.nodes)
            peer_ep, peer_ip, port = (
                self.w.health[cluster],
                f"10.{(cl.index - 1) * 32}.{cl.nodes.index(other)}.1",
                4240,
            )
        if reply:
            f.source.CopyFrom(pod.endpoint)
            f.destination.CopyFrom(peer_ep)
            self.set_ip(f, pod.ip, peer_ip)
            self.tcp_l4(f, port, eph, flags)
            f.trace_observation_point = flow_pb2.TO_STACK
            f.event_type.sub_type = 3
            f.traffic_direction = flow_pb2.INGRESS
        else:
            f.source.CopyFrom(peer_ep)
            f.destination.CopyFrom(pod.endpoint)
            self.set_ip(f, peer_ip, pod.ip)
            self.tcp_l4(f, eph, port, flags)
            f.trace_observation_point = flow_pb2.TO_ENDPOINT
            f.traffic_direction = flow_pb2.INGRESS
            f.interface.index, f.interface.name = pod.lxc
        f.ethernet.source, f.ethernet.destination = _mac(cluster, pod.node), pod.mac
        f.trace_reason = (
            flow_pb2.REPLY
            if reply
            else (flow_pb2.NEW if flags == ("SYN",) else flow_pb2.ESTABLISHED)
        )
        f.is_reply.value = reply
        f.reply = reply
        f.Summary = _flags_summary(flags)


def generate(
    n: int,
    *,
    seed: int,
    clusters: Sequence[str] = ("cluster1", "cluster2"),
    start_ns: int | None = None,
    rate: float = RATE,
    observed_by: Sequence[str] | None = None,
) -> Iterator[observer_pb2.GetFlowsResponse]:
    """n distinct GetFlowsResponse flows (uuid4, increasing time at `rate` flows/s) of a busy mesh."""
    world = World(clusters, seed=1)  # the same mesh for every seed: seeds vary the traffic
    rng = random.Random(seed)
    gen = _Gen(world, rng, clusters, observed_by or clusters)
    step = 1e9 / rate
    if start_ns is None:
        start_ns = time.time_ns() - int(n * step)
    for i in range(n):
        r = observer_pb2.GetFlowsResponse()
        gen.flow(r)
        t = start_ns + int(i * step + rng.random() * step * 0.9)
        r.flow.time.seconds, r.flow.time.nanos = divmod(t, 1_000_000_000)
        r.time.seconds, r.time.nanos = r.flow.time.seconds, r.flow.time.nanos
        yield r


def to_jsonpb(resp: observer_pb2.GetFlowsResponse) -> str:
    """One line as `hubble observe -o jsonpb` prints it (proto field names, compact)."""
    return json.dumps(
        json_format.MessageToDict(resp, preserving_proto_field_name=True), separators=(",", ":")
    )


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def template_offsets(
    data: bytes, flow_uuid: str, seconds: int, nanos: int
) -> tuple[int, int, int, int, int]:
    """(uuid, flow seconds, flow nanos, response seconds, response nanos) byte offsets in data."""
    u = data.find(flow_uuid.encode())
    if u < 0 or data.find(flow_uuid.encode(), u + 1) >= 0:
        raise ValueError("uuid not found exactly once")
    ts = b"\x08" + _varint(seconds) + b"\x10" + _varint(nanos)
    if len(ts) != 12:
        raise ValueError("timestamp varints are not 5 bytes wide")
    flow_ts = b"\x0a\x0c" + ts  # Flow.time (field 1), 12 bytes
    resp_ts = b"\xca\x3e\x0c" + ts  # GetFlowsResponse.time (field 1001), 12 bytes
    f = data.find(flow_ts)
    r = data.find(resp_ts)
    if f < 0 or r < 0 or data.count(ts) != 2:
        raise ValueError("timestamps not found exactly once each")
    f += 2
    r += 3
    return u, f + 1, f + 7, r + 1, r + 7


def write_templates(
    path: str | Path,
    n: int,
    *,
    seed: int = 1,
    clusters: Sequence[str] = ("cluster1", "cluster2"),
    observed_by: Sequence[str] | None = None,
) -> int:
    """Write n flow templates for bench/peer (format above); return the mean message size."""
    total = 0
    out = bytearray(TEMPLATE_MAGIC + struct.pack("<I", n))
    base = 1_700_000_000
    for i, r in enumerate(
        generate(n, seed=seed, clusters=clusters, start_ns=0, observed_by=observed_by)
    ):
        seconds = base + i
        nanos = NANOS_MIN + (i * 7919) % NANOS_SPAN
        r.flow.time.seconds, r.flow.time.nanos = seconds, nanos
        r.time.seconds, r.time.nanos = seconds, nanos
        data = r.SerializeToString()
        offs = template_offsets(data, r.flow.uuid, seconds, nanos)
        out += TEMPLATE_RECORD.pack(len(data), *offs) + data
        total += len(data)
    Path(path).write_bytes(bytes(out))
    return total // max(n, 1)


def main(argv: list[str] | None = None) -> int:
    """Write a template file, or print sample flows as jsonpb."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--templates", metavar="PATH", help="write peer templates here")
    ap.add_argument("-n", type=int, default=20_000, help="number of flows")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cluster", action="append", help="cluster names (repeatable)")
    ap.add_argument("--observed-by", action="append", help="only flows observed by these clusters")
    ap.add_argument("--jsonpb", action="store_true", help="print n flows as jsonpb lines")
    args = ap.parse_args(argv)
    clusters = tuple(args.cluster or ("cluster1", "cluster2"))
    if args.templates:
        t0 = time.perf_counter()
        size = write_templates(
            args.templates, args.n, seed=args.seed, clusters=clusters, observed_by=args.observed_by
        )
        print(
            f"wrote {args.n} templates to {args.templates} (mean {size} bytes) in {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )
    if args.jsonpb:
        for r in generate(args.n, seed=args.seed, clusters=clusters, observed_by=args.observed_by):
            print(to_jsonpb(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
