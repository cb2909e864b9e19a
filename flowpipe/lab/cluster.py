"""The lab's clusters as the guide shows them (pods, identities, nodes) and its policy decisions."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field

from flowpipe.api.flow import flow_pb2
from flowpipe.errors import ConfigError

NAMESPACE = "shop"
BACKEND_HOST = "backend.shop.svc.cluster.local"
WORLD = 2  # reserved:world


@dataclass(frozen=True)
class Peer:
    """One side of a packet: a pod (node set) or an address outside the cluster."""

    ip: str
    identity: int
    labels: tuple[str, ...]
    namespace: str = ""
    pod: str = ""
    node: str = ""  # short node name; "" for addresses outside the cluster
    endpoint_id: int = 0
    workload: str = ""
    cluster: str = ""
    service: str = ""  # the Service whose port this pod serves (destination_service)
    service_port: int = 0

    @property
    def lxc(self) -> str:
        return "lxc" + hashlib.sha1(self.pod.encode()).hexdigest()[:11]

    @property
    def ifindex(self) -> int:
        return 10 + self.endpoint_id % 40

    def endpoint(self, seen_from: str) -> flow_pb2.Endpoint:
        """The Endpoint Hubble reports for this peer on node seen_from (ID/workloads only if local)."""
        ep = flow_pb2.Endpoint(
            identity=self.identity,
            cluster_name=self.cluster,
            namespace=self.namespace,
            labels=list(self.labels),
            pod_name=self.pod,
        )
        if self.node and self.node == seen_from:
            ep.ID = self.endpoint_id
            if self.workload:
                ep.workloads.add(name=self.workload, kind="Deployment")
        return ep


def world(ip: str) -> Peer:
    """An address outside the cluster (identity reserved:world)."""
    return Peer(ip=ip, identity=WORLD, labels=("reserved:world",))


def _pod_labels(cluster: str, namespace: str, app_key: str, app: str, sa: str) -> tuple[str, ...]:
    return tuple(
        sorted(
            [
                f"k8s:{app_key}={app}",
                f"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name={namespace}",
                f"k8s:io.cilium.k8s.policy.cluster={cluster}",
                f"k8s:io.cilium.k8s.policy.serviceaccount={sa}",
                f"k8s:io.kubernetes.pod.namespace={namespace}",
            ]
        )
    )


@dataclass(frozen=True)
class Cluster:
    """One GKE cluster of the lab."""

    name: str
    nodes: tuple[str, ...]
    frontend: Peer
    backend: Peer
    kube_dns: tuple[Peer, ...]
    backend_service_ip: str
    proxy_ports: dict[str, int] = field(default_factory=dict)

    def node_name(self, node: str) -> str:
        """Hubble's node_name: <cluster>/<node>."""
        return f"{self.name}/{node}"


def _cluster(
    name: str,
    pool: str,
    subnet: str,
    service_ip: str,
    fe: tuple[str, int, int],
    be: tuple[str, int, int],
    dns: tuple[tuple[str, int, int, int], ...],
    dns_identity: int,
    ports: dict[str, int],
) -> Cluster:
    nodes = tuple(f"gke-{name}-default-pool-{pool}-{s}" for s in ("5m2q", "k9xw", "t4hz"))
    shop = dict(namespace=NAMESPACE, node=nodes[0], cluster=name)

    def shop_pod(app: str, spec: tuple[str, int, int], host: int, svc: str, port: int) -> Peer:
        pod, identity, ep_id = spec
        labels = _pod_labels(name, NAMESPACE, "app", app, "default")
        return Peer(
            ip=f"{subnet}.0.{host}",
            identity=identity,
            labels=labels,
            pod=pod,
            endpoint_id=ep_id,
            workload=app,
            service=svc,
            service_port=port,
            **shop,
        )

    kube_dns = tuple(
        Peer(
            ip=f"{subnet}.{node}.{host}",
            identity=dns_identity,
            labels=_pod_labels(name, "kube-system", "k8s-app", "kube-dns", "kube-dns"),
            namespace="kube-system",
            pod=pod,
            node=nodes[node],
            endpoint_id=ep_id,
            workload="kube-dns",
            cluster=name,
            service="kube-dns",
            service_port=53,
        )
        for pod, node, host, ep_id in dns
    )
    return Cluster(
        name=name,
        nodes=nodes,
        frontend=shop_pod("frontend", fe, 14, "", 0),
        backend=shop_pod("backend", be, 17, "backend", 80),
        kube_dns=kube_dns,
        backend_service_ip=service_ip,
        proxy_ports=ports,
    )


# Pod names, identities and service IPs are the ones the guide's hubble output shows.
CLUSTERS = {
    "cluster1": _cluster(
        "cluster1",
        "8c7d2f41",
        "10.60",
        "34.118.239.118",
        ("frontend-79f5dbfc6c-d6gb7", 114060, 1187),
        ("backend-6c4c67dc75-g22jn", 69364, 2014),
        (("kube-dns-75df64b86-xrfwz", 1, 5, 3407), ("kube-dns-75df64b86-wjls9", 2, 4, 1562)),
        67025,
        {"dns": 36417, "http": 13589},
    ),
    "cluster2": _cluster(
        "cluster2",
        "2d7e41b0",
        "10.84",
        "34.118.228.223",
        ("frontend-79f5dbfc6c-r56dx", 135917, 612),
        ("backend-6c4c67dc75-mqm9j", 163287, 3290),
        (("kube-dns-55899b7fc-2rdqk", 1, 6, 2745),),
        156453,
        {"dns": 40123, "http": 17452},
    ),
}


def cluster(name: str) -> Cluster:
    """The lab cluster called name, or a ConfigError naming the known ones."""
    try:
        return CLUSTERS[name]
    except KeyError:
        raise ConfigError(f"unknown lab cluster {name!r} (known: {', '.join(CLUSTERS)})") from None


# ------------------------------------------------------------------ policies

ALLOW_ALL, ALLOW_DNS = "allow-all", "allow-dns"
FE_TO_BE, FE_EGRESS, FE_L7, DEFAULT_DENY = (
    "allow-frontend-to-backend",
    "allow-frontend-egress",
    "allow-frontend-l7",
    "default-deny",
)

STAGE_POLICIES: dict[int, frozenset[str]] = {
    1: frozenset({ALLOW_ALL}),
    2: frozenset({ALLOW_ALL, ALLOW_DNS}),
    3: frozenset({ALLOW_ALL, ALLOW_DNS, FE_TO_BE, FE_EGRESS}),
    4: frozenset({ALLOW_ALL, ALLOW_DNS, FE_EGRESS, FE_L7}),
    5: frozenset({ALLOW_DNS, FE_EGRESS, FE_L7, DEFAULT_DENY}),
}
# Policy repository revision after each stage's kubectl apply/delete steps.
STAGE_REVISION = {1: 2, 2: 3, 3: 5, 4: 7, 5: 9}

MATCH_NONE, MATCH_L3_L4, MATCH_ALL = 0, 2, 4


def policy(cluster_name: str, name: str, revision: int) -> flow_pb2.Policy:
    """The Policy record Hubble attaches to a policy verdict."""
    uid = uuid.uuid5(uuid.NAMESPACE_URL, f"{cluster_name}/{NAMESPACE}/{name}")
    return flow_pb2.Policy(
        name=name,
        namespace=NAMESPACE,
        kind="CiliumNetworkPolicy",
        revision=revision,
        labels=[
            "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
            f"k8s:io.cilium.k8s.policy.name={name}",
            f"k8s:io.cilium.k8s.policy.namespace={NAMESPACE}",
            f"k8s:io.cilium.k8s.policy.uid={uid}",
        ],
    )


@dataclass(frozen=True)
class Decision:
    """What the datapath decides for the first packet of a connection in one direction."""

    allowed: bool
    match: int = MATCH_NONE
    by: tuple[str, ...] = ()
    redirect: bool = False  # to the L7 proxy (DNS proxy on egress, Envoy on ingress)
    l7_allow_all: bool = True  # an L3/L4 rule on the same peer/port wildcards the L7 rules

    def http_allows(self, method: str, path: str) -> bool:
        """allow-frontend-l7's rule: GET ^/status/200$, unless wildcarded."""
        return self.l7_allow_all or (method == "GET" and path == "/status/200")


DENY = Decision(allowed=False)


def egress(policies: frozenset[str], peer: str) -> Decision:
    """Frontend egress to 'kube-dns' (UDP 53), 'backend' (TCP 80) or 'world'."""
    if peer == "kube-dns" and ALLOW_DNS in policies:
        return Decision(True, MATCH_L3_L4, (ALLOW_DNS,), redirect=True)
    if peer == "backend" and FE_EGRESS in policies:
        return Decision(True, MATCH_L3_L4, (FE_EGRESS,))
    if ALLOW_ALL in policies:
        return Decision(True, MATCH_ALL, (ALLOW_ALL,))
    return DENY


def ingress_backend(policies: frozenset[str]) -> Decision:
    """Backend ingress from the frontend on TCP 80."""
    if FE_L7 in policies:
        by = tuple(sorted({FE_L7} | ({FE_TO_BE} & policies)))
        wildcard = bool({FE_TO_BE, ALLOW_ALL} & policies)
        return Decision(True, MATCH_L3_L4, by, redirect=True, l7_allow_all=wildcard)
    if FE_TO_BE in policies:
        return Decision(True, MATCH_L3_L4, (FE_TO_BE,))
    if ALLOW_ALL in policies:
        return Decision(True, MATCH_ALL, (ALLOW_ALL,))
    return DENY
