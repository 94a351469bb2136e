"""Typed, immutable model of the Kubernetes API objects the compiler reads.

Only the fields that matter for a node's service dataplane are kept. Every
object is a frozen, slotted dataclass holding tuples (never lists or dicts),
so objects are hashable and can key caches. Objects are built by
:mod:`dataplane.input`, which validates the raw manifests first; code that
builds them directly (tests, embedding proxies) is trusted to pass values in
canonical form (IP literals canonical, protocols upper-case).

Each object carries an :class:`ObjectRef` naming where it came from, so any
later stage can report a problem precisely. ``ref`` never takes part in
equality or hashing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

Protocol = Literal["TCP", "UDP", "SCTP"]
IPFamily = Literal["IPv4", "IPv6"]
Labels = tuple[tuple[str, str], ...]

PROTOCOLS: tuple[str, ...] = ("TCP", "UDP", "SCTP")

# Labels kube-proxy looks at.
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_SERVICE_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
LABEL_HEADLESS = "service.kubernetes.io/headless"
LABEL_ZONE = "topology.kubernetes.io/zone"


def labels_get(labels: Labels, key: str) -> Optional[str]:
    """Return the value of ``key`` in a label tuple, or None."""
    for k, v in labels:
        if k == key:
            return v
    return None


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """Where an object came from: the file, the document's position, kind and name."""

    kind: str
    namespace: str
    name: str
    source: str = "<memory>"
    index: int = 0  # 1-based position of the document (or List item) in the source
    unit: str = "document"  # what ``index`` counts: "object" for objects given as dicts

    @property
    def display(self) -> str:
        """``namespace/name`` (or just ``name`` for cluster-scoped objects)."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def where(self) -> str:
        """Human prefix for messages: ``FILE: document N: Kind ns/name`` (``object N``: see ``unit``)."""
        return f"{self.source}: {self.unit} {self.index}: {self.kind} {self.display}"


def _noref(kind: str) -> ObjectRef:
    return ObjectRef(kind=kind, namespace="", name="")


# --------------------------------------------------------------------- Service


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One entry of ``spec.ports``."""

    port: int
    protocol: Protocol = "TCP"
    name: str = ""
    target_port: int | str | None = None  # number, IANA_SVC_NAME, or unset
    node_port: Optional[int] = None
    app_protocol: Optional[str] = None  # ``appProtocol``, copied into derived EndpointSlices


@dataclass(frozen=True, slots=True)
class LoadBalancerIngress:
    """One entry of ``status.loadBalancer.ingress``."""

    ip: Optional[str] = None
    hostname: Optional[str] = None
    ip_mode: Optional[str] = None  # "VIP", "Proxy" or unset


@dataclass(frozen=True, slots=True)
class Service:
    """A ``v1`` Service, reduced to what a service proxy and the allocators read."""

    namespace: str
    name: str
    type: str = "ClusterIP"  # ClusterIP | NodePort | LoadBalancer | ExternalName
    cluster_ips: tuple[str, ...] = ()  # ("None",) for headless
    ports: tuple[ServicePort, ...] = ()
    selector: Optional[Labels] = None
    labels: Labels = ()
    external_ips: tuple[str, ...] = ()
    load_balancer_ingress: tuple[LoadBalancerIngress, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    external_traffic_policy: str = "Cluster"  # Cluster | Local
    internal_traffic_policy: str = "Cluster"  # Cluster | Local
    health_check_node_port: Optional[int] = None
    session_affinity: str = "None"  # None | ClientIP
    affinity_timeout_seconds: int = 10800
    allocate_load_balancer_node_ports: bool = True
    ip_families: tuple[IPFamily, ...] = ()
    ip_family_policy: Optional[str] = None
    publish_not_ready_addresses: bool = False
    external_name: Optional[str] = None
    # ``spec.trafficDistribution`` (PreferClose, PreferSameZone, PreferSameNode) or None: how
    # the EndpointSlice controller hints the endpoints it derives
    traffic_distribution: Optional[str] = None
    # the annotation ``service.kubernetes.io/topology-aware-hints`` (or, when absent,
    # ``service.kubernetes.io/topology-mode``) is ``Auto``/``auto``: the controller uses its
    # Topology Aware Routing heuristic instead of trafficDistribution's
    topology_mode_auto: bool = False
    ref: ObjectRef = field(default_factory=lambda: _noref("Service"), compare=False, hash=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def is_headless(self) -> bool:
        return self.cluster_ips[:1] == ("None",)


# --------------------------------------------------------------- EndpointSlice


@dataclass(frozen=True, slots=True)
class EndpointConditions:
    """Resolved endpoint conditions (API defaults already applied).

    ``ready`` unset counts as true, ``serving`` unset equals ``ready``,
    ``terminating`` unset is false.
    """

    ready: bool = True
    serving: bool = True
    terminating: bool = False


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One entry of an EndpointSlice's ``endpoints``."""

    addresses: tuple[str, ...]
    conditions: EndpointConditions = EndpointConditions()
    node_name: Optional[str] = None
    zone: Optional[str] = None
    hints_for_zones: Optional[tuple[str, ...]] = None  # ``hints.forZones[].name``; None: no zone hints
    hints_for_nodes: Optional[tuple[str, ...]] = None  # ``hints.forNodes[].name``; None: no node hints
    hostname: Optional[str] = None
    target_ref_name: Optional[str] = None


@dataclass(frozen=True, slots=True)
class EndpointPort:
    """One entry of an EndpointSlice's ``ports``. ``port`` None means "all ports"."""

    port: Optional[int]
    protocol: Protocol = "TCP"
    name: str = ""
    app_protocol: Optional[str] = None


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    """A ``discovery.k8s.io/v1`` EndpointSlice."""

    namespace: str
    name: str
    service_name: Optional[str]  # label kubernetes.io/service-name
    address_type: str  # IPv4 | IPv6 | FQDN
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()
    labels: Labels = ()
    ref: ObjectRef = field(default_factory=lambda: _noref("EndpointSlice"), compare=False, hash=False)


# ------------------------------------------------------------------ Node, Pod


@dataclass(frozen=True, slots=True)
class NodeAddress:
    type: str  # InternalIP | ExternalIP | Hostname | ...
    address: str


@dataclass(frozen=True, slots=True)
class Node:
    """A ``v1`` Node: its addresses, labels and pod CIDRs."""

    name: str
    addresses: tuple[NodeAddress, ...] = ()
    labels: Labels = ()
    pod_cidrs: tuple[str, ...] = ()
    ref: ObjectRef = field(default_factory=lambda: _noref("Node"), compare=False, hash=False)

    @property
    def zone(self) -> Optional[str]:
        return labels_get(self.labels, LABEL_ZONE)


@dataclass(frozen=True, slots=True)
class ContainerPort:
    container_port: int
    protocol: Protocol = "TCP"
    name: str = ""


@dataclass(frozen=True, slots=True)
class Pod:
    """A ``v1`` Pod, for the EndpointSlice controller."""

    namespace: str
    name: str
    labels: Labels = ()
    node_name: Optional[str] = None
    pod_ips: tuple[str, ...] = ()
    ready: bool = False
    terminating: bool = False  # metadata.deletionTimestamp set
    phase: str = "Running"
    hostname: Optional[str] = None
    subdomain: Optional[str] = None
    container_ports: tuple[ContainerPort, ...] = ()  # of ``spec.containers``, in order
    # of the ``spec.initContainers`` with ``restartPolicy: Always`` (native sidecars), in order
    sidecar_ports: tuple[ContainerPort, ...] = ()
    ref: ObjectRef = field(default_factory=lambda: _noref("Pod"), compare=False, hash=False)


# ---------------------------------------------------------------- node config


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """The parts of a ``kubeproxy.config.k8s.io/v1alpha1`` KubeProxyConfiguration we use.

    Defaults are kube-proxy's.
    """

    mode: str = "iptables"  # iptables | nftables
    cluster_cidrs: tuple[str, ...] = ()  # clusterCIDR, comma separated upstream
    detect_local_mode: str = "ClusterCIDR"  # ClusterCIDR | NodeCIDR | BridgeInterface | InterfaceNamePrefix | ""
    bridge_interface: str = ""
    interface_name_prefix: str = ""
    node_port_addresses: tuple[str, ...] = ()  # CIDRs and/or "primary"
    iptables_masquerade_all: bool = False
    iptables_masquerade_bit: int = 14
    iptables_localhost_node_ports: bool = True
    nftables_masquerade_all: bool = False
    nftables_masquerade_bit: int = 14
    # kube-dataplane extension ``externalIPCIDRs`` (not a kube-proxy field): the CIDRs that
    # spec.externalIPs may use on this node (canonical); None (unset): any external IP
    external_ip_cidrs: Optional[tuple[str, ...]] = None
    ref: ObjectRef = field(
        default_factory=lambda: _noref("KubeProxyConfiguration"), compare=False, hash=False
    )


# ------------------------------------------------------------- ServiceCIDR


@dataclass(frozen=True, slots=True)
class ServiceCIDR:
    """A ``networking.k8s.io/v1`` ServiceCIDR: ranges ClusterIPs are allocated from.

    ``ready`` is False when its ``Ready`` condition is False or it is being deleted: the
    API server then allocates no new ClusterIP from it (no condition counts as ready).
    """

    name: str
    cidrs: tuple[str, ...]  # canonical, at most one per family
    ready: bool = True
    ref: ObjectRef = field(default_factory=lambda: _noref("ServiceCIDR"), compare=False, hash=False)


# -------------------------------------------------------------------- Cluster


@dataclass(frozen=True, slots=True)
class Cluster:
    """Everything read from the input: the API objects plus the node settings."""

    services: tuple[Service, ...] = ()
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    nodes: tuple[Node, ...] = ()
    pods: tuple[Pod, ...] = ()
    proxy_config: ProxyConfig = ProxyConfig()
    proxy_config_given: bool = False
    service_cidrs: tuple[ServiceCIDR, ...] = ()
    # kubeadm ClusterConfiguration ``networking.serviceSubnet`` (canonical CIDRs), when given:
    # the API server's --service-cluster-ip-range, so the range ``--allocate`` uses by default
    service_subnet: Optional[tuple[str, ...]] = None

    def node(self, name: str) -> Optional[Node]:
        for n in self.nodes:
            if n.name == name:
                return n
        return None
