"""The node-local service plan: what one node must do with service traffic.

``build_plan`` turns the cluster state into a backend-neutral :class:`NodePlan`
for one node, one IP family and one proxy mode. Every semantic decision is
taken here, once, the way kube-proxy takes it:

* which Services and ports get rules at all (``ShouldSkipService``);
* which endpoints each traffic class may use (``CategorizeEndpoints``:
  ready, then serving+terminating fallback; node-local endpoints; topology hints);
* where each frontend goes (the cluster or local policy chain), or whether it
  is rejected (no endpoints at all) or dropped (a Local policy with no local
  endpoint);
* what gets masqueraded (off-cluster sources, external traffic, hairpin).

Backends only render a plan; they never look at the model.
Where kube-proxy's iptables and nftables modes differ, the plan is built for
the given ``mode`` and records the difference as data.
"""
from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Iterable, Literal, Mapping, Optional, Sequence, Union, get_args

from . import ipaddrs
from .controllers.endpointslices import with_derived_slices
from .errors import UsageError
from .model import (
    LABEL_HEADLESS,
    LABEL_SERVICE_PROXY_NAME,
    Cluster,
    Endpoint,
    EndpointSlice,
    Node,
    ProxyConfig,
    Service,
    ServicePort,
    labels_get,
)
from .topology import categorize

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

Family = Literal["ipv4", "ipv6"]
Mode = Literal["iptables", "nftables"]
FilterVerdict = Literal["reject", "drop"]

_ADDRESS_TYPE = {"ipv4": "IPv4", "ipv6": "IPv6"}
_VERSION = {"ipv4": 4, "ipv6": 6}


# ------------------------------------------------------------------ plan types


@dataclass(frozen=True, slots=True)
class PlanEndpoint:
    """One usable endpoint of a service port."""

    ip: str
    port: int
    is_local: bool
    ready: bool
    serving: bool
    terminating: bool
    address: str = ""  # ``ip:port``, brackets around IPv6 addresses (as in a DNAT target); derived

    def __post_init__(self) -> None:
        if not self.address:
            object.__setattr__(self, "address",
                               f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}")


@dataclass(frozen=True, slots=True)
class LocalDetector:
    """How to tell traffic from this node's pods (kube-proxy's local-traffic detector)."""

    kind: Literal["none", "cidr", "interface-prefix", "bridge"]
    value: str = ""  # the CIDR, the interface name prefix or the bridge name

    def matches(self, src: str, in_interface: str = "") -> bool:
        """Whether a packet from ``src`` arriving on ``in_interface`` ("" when the node itself
        sends it) is taken for one from this node's pods (kube-proxy's ``IsImplemented`` and
        ``IfLocal``; no detector matches nothing)."""
        if self.kind == "cidr":
            return ipaddress.ip_address(src) in ipaddress.ip_network(self.value, strict=False)
        if self.kind == "interface-prefix":
            return bool(in_interface) and in_interface.startswith(self.value)
        if self.kind == "bridge":
            return in_interface == self.value
        return False


@dataclass(frozen=True, slots=True)
class ExternalStep:
    """One rule of a service port's external chain (``KUBE-EXT-…`` / ``external-…``).

    ``source``: which packets the step applies to: all, those from this node's
    pods (needs a local detector) or those from the node itself.
    ``action``: mark for masquerade, or hand over to the cluster or local policy chain.
    """

    source: Literal["any", "pod", "host"]
    action: Literal["masquerade", "cluster", "local"]


@dataclass(frozen=True, slots=True)
class ServicePortPlan:
    """Everything one node does for one (Service, port) in one family."""

    namespace: str
    name: str
    port_name: str
    protocol: str  # "tcp" | "udp" | "sctp"
    port: int
    cluster_ip: str
    node_port: Optional[int]
    external_ips: tuple[str, ...]
    load_balancer_ips: tuple[str, ...]
    source_ranges: tuple[str, ...]  # loadBalancerSourceRanges of this family
    firewall: bool  # LB IPs are filtered by source_ranges
    firewall_allows_lb_ips: bool  # a range holds a node IP: LB IPs are allowed sources too
    health_check_node_port: Optional[int]
    affinity_timeout: Optional[int]  # seconds, when sessionAffinity is ClientIP
    cluster_endpoints: tuple[PlanEndpoint, ...]  # endpoints of the cluster policy chain
    local_endpoints: tuple[PlanEndpoint, ...]  # endpoints of the local policy chain
    uses_cluster_chain: bool
    uses_local_chain: bool
    uses_external_chain: bool
    internal_chain: Optional[Literal["cluster", "local"]]  # where ClusterIP traffic goes
    internal_filter: Optional[FilterVerdict]  # what happens to ClusterIP traffic otherwise
    external_forward: bool  # external destinations (nodePort, externalIPs, LB IPs) are captured
    external_filter: Optional[FilterVerdict]  # external traffic not DNATed is dropped/rejected
    external_steps: tuple[ExternalStep, ...]
    # traffic an endpoint sends to itself through the service is masqueraded (otherwise it would
    # see its own address as the source and answer around the DNAT)
    hairpin_masquerade: bool
    has_endpoints: bool
    known_endpoints: tuple[PlanEndpoint, ...] = ()  # every endpoint of the slices, used or not

    @property
    def spn(self) -> str:
        """kube-proxy's service port name: ``ns/name:port`` (``ns/name`` for an unnamed port)."""
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port_name}" if self.port_name else base

    @property
    def endpoints(self) -> tuple[PlanEndpoint, ...]:
        """Every endpoint that needs its own chain: those of the chains in use, sorted."""
        seen: dict[str, PlanEndpoint] = {}
        if self.uses_cluster_chain:
            for ep in self.cluster_endpoints:
                seen[ep.address] = ep
        if self.uses_local_chain:
            for ep in self.local_endpoints:
                seen.setdefault(ep.address, ep)
        return tuple(sorted(seen.values(), key=lambda e: e.address))

    def hairpin(self, endpoint: PlanEndpoint, src: str) -> bool:
        """Whether a flow from ``src`` DNATed to ``endpoint`` is masqueraded as hairpin traffic."""
        return self.hairpin_masquerade and endpoint.ip == src

    def firewall_admits(self, src: str) -> bool:
        """Whether the load-balancer firewall lets traffic from ``src`` through to the LB IPs
        (always, without a firewall)."""
        if not self.firewall:
            return True
        if self.firewall_allows_lb_ips and src in self.load_balancer_ips:
            return True
        addr = ipaddress.ip_address(src)
        return any(addr in ipaddress.ip_network(r, strict=False) for r in self.source_ranges)


@dataclass(frozen=True, slots=True)
class NodePortDestinations:
    """Which destination addresses accept NodePort traffic on this node."""

    match_all: bool  # every local address (iptables addrtype LOCAL / nft fib daddr type local)
    ips: tuple[str, ...] = ()  # otherwise, these node IPs
    localhost: bool = False  # 127.0.0.0/8 accepts NodePorts (iptables IPv4, route_localnet)
    excluded: Optional[str] = None  # with match_all: the loopback CIDR that does not accept them
    # the drop / reject of NodePorts without (local) endpoints matches every local address
    # (iptables mode's KUBE-EXTERNAL-SERVICES), not only the destinations above
    filter_match_all: bool = False

    def accepts(self, ip: str) -> bool:
        """Whether NodePort traffic to ``ip``, one of the node's local addresses, is taken."""
        if self.match_all:
            return self.excluded is None or ipaddress.ip_address(ip) not in ipaddress.ip_network(self.excluded)
        return ip in self.ips

    def filters(self, ip: str) -> bool:
        """Whether the drop / reject of a NodePort without (local) endpoints applies to traffic to
        ``ip``, one of the node's local addresses."""
        return self.filter_match_all or self.accepts(ip)


@dataclass(frozen=True, slots=True)
class NodePlan:
    """The whole node-local service state for one node, family and mode."""

    node: str
    family: Family
    mode: Mode
    node_ips: tuple[str, ...]
    masquerade_mark: str  # e.g. "0x4000"
    local_detector: LocalDetector
    cluster_ip_masquerade: Literal["all", "non-local", "none"]
    nodeports: NodePortDestinations
    drop_invalid: bool  # drop conntrack INVALID packets in forwarding (iptables mode)
    reject_unknown_cluster_ip_ports: bool  # nftables mode's cluster-ips-check
    services: tuple[ServicePortPlan, ...]
    sysctls: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # nftables mode: this family's ServiceCIDRs, whose unallocated IPs cluster-ips-check drops
    service_cidrs: tuple[str, ...] = ()

    @property
    def cluster_ips(self) -> tuple[str, ...]:
        """Every active ClusterIP, sorted."""
        return tuple(sorted({s.cluster_ip for s in self.services}, key=_ip_sort_key))

    def cluster_ip_masquerades(self, src: str, in_interface: str = "") -> bool:
        """Whether ClusterIP traffic from ``src`` arriving on ``in_interface`` ("" when the node
        sends it) is masqueraded (hairpin aside: see :meth:`ServicePortPlan.hairpin`)."""
        if self.cluster_ip_masquerade == "all":
            return True
        if self.cluster_ip_masquerade == "non-local":
            return not self.local_detector.matches(src, in_interface)
        return False


LARGE_CLUSTER_ENDPOINTS = 1000  # kube-proxy's largeClusterEndpointsThreshold


def large_cluster(endpoint_count: int) -> bool:
    """Whether a node whose service ports have ``endpoint_count`` endpoints (those of their policy
    chains, ``ServicePortPlan.endpoints``) is a large cluster: iptables mode then writes no
    per-endpoint comments (kube-proxy: more than LARGE_CLUSTER_ENDPOINTS)."""
    return endpoint_count > LARGE_CLUSTER_ENDPOINTS


# ------------------------------------------------------------------- helpers


def _ip_sort_key(ip: str) -> tuple[int, int]:
    addr = ipaddress.ip_address(ip)
    return (addr.version, int(addr))


def family_of(ip: str) -> Family:
    """Family of an IP literal or CIDR. Model IPs are validated and canonical (see
    dataplane.model), so a ':' means IPv6."""
    return "ipv6" if ":" in ip else "ipv4"


def _cidr_family(cidr: str) -> Optional[Family]:
    try:
        return "ipv6" if ipaddress.ip_network(cidr, strict=False).version == 6 else "ipv4"
    except ValueError:
        return None


def should_skip_service(svc: Service) -> Optional[str]:
    """Why kube-proxy ignores this Service, or None if it handles it."""
    if svc.type == "ExternalName":
        return "type ExternalName"
    if svc.is_headless:
        return "headless (clusterIP None)"
    if not svc.cluster_ips or svc.cluster_ips[0] == "":
        return "no clusterIP"
    if labels_get(svc.labels, LABEL_SERVICE_PROXY_NAME) is not None:
        return f"label {LABEL_SERVICE_PROXY_NAME} (another proxy owns it)"
    if labels_get(svc.labels, LABEL_HEADLESS) is not None:
        return f"label {LABEL_HEADLESS}"
    return None


def _local_detector(config: ProxyConfig, node: Node, family: Family, warnings: list[str]) -> LocalDetector:
    mode = config.detect_local_mode
    if mode in ("ClusterCIDR", "NodeCIDR"):
        cidrs = config.cluster_cidrs if mode == "ClusterCIDR" else node.pod_cidrs
        mine = [c for c in cidrs if _cidr_family(c) == family]
        if not mine:
            return LocalDetector("none")
        if len(mine) > 1:
            warnings.append(
                f"{mode}: using {mine[0]} to detect local traffic; kube-proxy uses one CIDR per family, "
                f"ignoring {', '.join(mine[1:])}"
            )
        return LocalDetector("cidr", mine[0])
    if mode == "InterfaceNamePrefix" and config.interface_name_prefix:
        return LocalDetector("interface-prefix", config.interface_name_prefix)
    if mode == "BridgeInterface" and config.bridge_interface:
        return LocalDetector("bridge", config.bridge_interface)
    return LocalDetector("none")


def _node_ips(node: Node, family: Family) -> tuple[str, ...]:
    """The node's IPs of this family, InternalIPs first (the first one is the primary IP)."""
    ordered = [a.address for a in node.addresses if a.type == "InternalIP"]
    ordered += [a.address for a in node.addresses if a.type == "ExternalIP"]
    out: list[str] = []
    for ip in ordered:
        if family_of(ip) == family and ip not in out:
            out.append(ip)
    return tuple(out)


def _nodeport_destinations(
    config: ProxyConfig, node_ips: Sequence[str], family: Family, mode: Mode
) -> NodePortDestinations:
    """kube-proxy's nodePortAddresses handling, per mode.

    Unset means every local address in iptables mode and ``primary`` in
    nftables mode; ``primary`` stands for the node's primary IP of each family.
    A family left without any CIDR (none of its family listed, or no primary IP
    of that family) matches every local address, as kube-proxy's
    ``NewNodePortAddresses`` falls back to ``0.0.0.0/0`` / ``::/0``.
    The node's addresses stand in for the addresses of its interfaces.
    """
    entries = config.node_port_addresses
    if not entries and mode == "nftables":
        entries = ("primary",)
    if "primary" in entries:
        cidrs = [f"{node_ips[0]}/{128 if family == 'ipv6' else 32}"] if node_ips else []
    else:
        cidrs = [c for c in entries if _cidr_family(c) == family]
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    match_all = not nets or any(n.prefixlen == 0 for n in nets)
    loopback = ipaddress.ip_network("127.0.0.0/8")
    localhost = (
        mode == "iptables"
        and family == "ipv4"
        and config.iptables_localhost_node_ports
        and (match_all or any(n.overlaps(loopback) for n in nets))
    )
    # iptables mode's KUBE-EXTERNAL-SERVICES matches NodePorts on every local address
    filter_match_all = mode == "iptables"
    if match_all:
        # loopback addresses take NodePorts only where iptables' localhost NodePorts allow them
        excluded = None if localhost else ("::1/128" if family == "ipv6" else str(loopback))
        return NodePortDestinations(match_all=True, localhost=localhost, excluded=excluded,
                                    filter_match_all=filter_match_all)
    ips = [ip for ip in node_ips if any(ipaddress.ip_address(ip) in n for n in nets)]
    if localhost:
        ips.append("127.0.0.1")
    return NodePortDestinations(match_all=False, ips=tuple(ips), localhost=localhost,
                                filter_match_all=filter_match_all)


# -------------------------------------------------------- endpoint selection


def _slice_index(slices: Iterable[EndpointSlice], family: Family) -> dict[tuple[str, str], list[EndpointSlice]]:
    index: dict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
    want = _ADDRESS_TYPE[family]
    for s in slices:
        # kube-proxy watches EndpointSlices (like Services) with a label selector
        # that leaves out those labelled service-proxy-name or headless.
        if labels_get(s.labels, LABEL_SERVICE_PROXY_NAME) is not None or labels_get(s.labels, LABEL_HEADLESS) is not None:
            continue
        if s.service_name and s.address_type == want:
            index[(s.namespace, s.service_name)].append(s)
    for lst in index.values():
        lst.sort(key=lambda s: s.name)
    return index


def collect_endpoints(
    slices: Sequence[EndpointSlice], port: ServicePort, node_name: str, family: Family, warnings: list[str]
) -> list[tuple[PlanEndpoint, Endpoint]]:
    """The endpoints of one service port, from all its slices, each counted once.

    A slice port matches the service port by name and protocol; the target is
    the endpoint's first address and the slice port's number. When the same
    ``ip:port`` appears twice, a ready copy wins over a not-ready one.
    Result sorted by ``ip:port`` string, as kube-proxy keeps them.
    """
    found: dict[str, tuple[PlanEndpoint, Endpoint]] = {}
    want = _ADDRESS_TYPE[family]
    ipv6 = family == "ipv6"
    for s in slices:
        numbers = [p.port for p in s.ports if p.name == port.name and p.protocol == port.protocol and p.port]
        if not numbers:
            continue
        number = numbers[0]
        for ep in s.endpoints:
            if not ep.addresses:
                continue
            ip = ep.addresses[0]
            if (":" in ip) is not ipv6:  # family_of, inline
                warnings.append(
                    f"{s.ref.where() if s.ref.source != '<memory>' else 'EndpointSlice ' + s.namespace + '/' + s.name}: "
                    f"skipping endpoint {ip}: not an {want} address"
                )
                continue
            address = f"[{ip}]:{number}" if ":" in ip else f"{ip}:{number}"
            c = ep.conditions
            old = found.get(address)
            if old is None or (c.ready and not old[0].ready):
                found[address] = (
                    PlanEndpoint(ip, number, ep.node_name == node_name, c.ready, c.serving, c.terminating, address),
                    ep,
                )
    return [found[k] for k in sorted(found)]


# ----------------------------------------------------------- per service port


def _in_family(values: Iterable[str], family: Family, what: str, svc: Service, warnings: list[str],
               other_family_expected: bool, is_cidr: bool = False) -> tuple[str, ...]:
    out = []
    for v in values:
        fam = _cidr_family(v) if is_cidr else family_of(v)
        if fam == family:
            out.append(v)
        elif not other_family_expected:
            warnings.append(
                f"{svc.ref.where()}: {what}: skipping {v}: not an {_ADDRESS_TYPE[family]} "
                f"address and the Service is single-stack"
            )
    return tuple(out)


def plan_service_port(
    svc: Service,
    port: ServicePort,
    slices: Sequence[EndpointSlice],
    *,
    node: Node,
    node_ips: Sequence[str],
    family: Family,
    mode: Mode,
    detector: LocalDetector,
    warnings: list[str],
) -> Optional[ServicePortPlan]:
    """Plan one service port on one node, or None if it gets no rules in this family."""
    cluster_ip = next((ip for ip in svc.cluster_ips if family_of(ip) == family), None)
    if cluster_ip is None:
        return None
    families = {family_of(ip) for ip in svc.cluster_ips}
    dual = len(families) > 1
    external_ips = _in_family(svc.external_ips, family, "spec.externalIPs", svc, warnings, dual)
    lb_ips = _in_family(
        [i.ip for i in svc.load_balancer_ingress if i.ip and i.ip_mode != "Proxy"],
        family, "status.loadBalancer.ingress", svc, warnings, dual,
    ) if svc.type == "LoadBalancer" else ()
    ranges = _in_family(svc.load_balancer_source_ranges, family, "spec.loadBalancerSourceRanges",
                        svc, warnings, dual, is_cidr=True)
    node_port = port.node_port if svc.type in ("NodePort", "LoadBalancer") else None
    hcnp = svc.health_check_node_port if (
        svc.type == "LoadBalancer" and svc.external_traffic_policy == "Local"
    ) else None

    externally_accessible = bool(node_port or external_ips or lb_ips)
    internal_local = svc.internal_traffic_policy == "Local"
    external_local = svc.external_traffic_policy == "Local" and externally_accessible
    # Cluster endpoints are needed for iTP Cluster, and for any externally reachable
    # service even with eTP Local (pod and host traffic is short-circuited to them).
    uses_cluster_eps = not internal_local or externally_accessible
    uses_local_eps = internal_local or external_local

    pairs = collect_endpoints(slices, port, node.name, family, warnings)
    cluster_eps, local_eps, has_endpoints = categorize(
        pairs, node_name=node.name, zone=node.zone, use_cluster=uses_cluster_eps, use_local=uses_local_eps
    )
    uses_cluster_chain = bool(cluster_eps) and uses_cluster_eps
    uses_local_chain = bool(local_eps) and uses_local_eps

    has_internal = has_endpoints and (bool(local_eps) if internal_local else True)
    has_external = has_endpoints and (bool(local_eps) if external_local else True)
    internal_chain: Optional[Literal["cluster", "local"]] = None
    if has_internal:
        internal_chain = "local" if internal_local else "cluster"

    def verdict(has_these: bool) -> Optional[FilterVerdict]:
        if not has_endpoints:
            return "reject"
        return None if has_these else "drop"

    uses_external_chain = has_endpoints and externally_accessible
    steps: list[ExternalStep] = []
    if uses_external_chain:
        if not external_local:
            steps.append(ExternalStep("any", "masquerade"))
        else:
            if detector.kind != "none":
                steps.append(ExternalStep("pod", "cluster"))
            steps.append(ExternalStep("host", "masquerade"))
            steps.append(ExternalStep("host", "cluster"))
        if has_external:
            steps.append(ExternalStep("any", "local" if external_local else "cluster"))

    firewall = bool(lb_ips and ranges) and (has_endpoints or mode == "nftables")
    allows_lb = firewall and any(
        ipaddress.ip_address(ip) in ipaddress.ip_network(r) for r in ranges for ip in node_ips
    )
    return ServicePortPlan(
        namespace=svc.namespace,
        name=svc.name,
        port_name=port.name,
        protocol=port.protocol.lower(),
        port=port.port,
        cluster_ip=cluster_ip,
        node_port=node_port,
        external_ips=external_ips,
        load_balancer_ips=lb_ips,
        source_ranges=ranges if firewall else (),
        firewall=firewall,
        firewall_allows_lb_ips=allows_lb,
        health_check_node_port=hcnp,
        affinity_timeout=svc.affinity_timeout_seconds if svc.session_affinity == "ClientIP" else None,
        cluster_endpoints=tuple(cluster_eps) if uses_cluster_eps else (),
        local_endpoints=tuple(local_eps) if uses_local_eps else (),
        uses_cluster_chain=uses_cluster_chain,
        uses_local_chain=uses_local_chain,
        uses_external_chain=uses_external_chain,
        internal_chain=internal_chain,
        internal_filter=verdict(has_internal),
        external_forward=has_endpoints,
        external_filter=verdict(has_external),
        external_steps=tuple(steps),
        hairpin_masquerade=True,  # kube-proxy marks every endpoint's own traffic, in both modes
        has_endpoints=has_endpoints,
        known_endpoints=tuple(pe for pe, _ in pairs),
    )


# ------------------------------------------------------------------ the plan


@dataclass(frozen=True, slots=True)
class NodeContext:
    """The node-level part of a plan: everything that is not about one Service."""

    node: Node
    family: Family
    mode: Mode
    node_ips: tuple[str, ...]
    masquerade_mark: str
    local_detector: LocalDetector
    cluster_ip_masquerade: Literal["all", "non-local", "none"]
    nodeports: NodePortDestinations
    sysctls: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # the CIDRs spec.externalIPs may use (canonical, every family); None: any external IP
    external_ip_cidrs: Optional[tuple[str, ...]] = None
    external_ip_networks: tuple[IPNetwork, ...] = field(default=(), compare=False)  # of external_ip_cidrs
    service_cidrs: tuple[str, ...] = ()  # see NodePlan.service_cidrs


def external_ip_cidrs_of(values: Iterable[str], what: str = "external_ip_cidrs") -> tuple[str, ...]:
    """``values`` as canonical CIDRs (sloppy forms accepted, as in manifests); raises
    :class:`UsageError` naming ``what`` and the first value that is not a CIDR."""
    out = []
    for value in values:
        try:
            out.append(ipaddrs.canonical_cidr(value.strip() if isinstance(value, str) else value))
        except ValueError:
            raise UsageError(f"{what}: {value!r} is not a CIDR (e.g. 203.0.113.0/24 or 2001:db8::/64)") from None
    return tuple(out)


def node_context(cluster: Cluster, node_name: str, *, family: Family = "ipv4",
                 mode: Optional[Mode] = None,
                 external_ip_cidrs: Optional[Sequence[str]] = None) -> NodeContext:
    """Decide the node-level settings. Raises :class:`UsageError` for an unknown node.

    ``external_ip_cidrs`` overrides the configuration's ``externalIPCIDRs`` (a kube-dataplane
    extension): Services' externalIPs outside these CIDRs get no rules (an empty sequence allows
    none); unset in both, every external IP is used, as kube-proxy does. An invalid CIDR
    raises :class:`UsageError`.
    """
    allowed = (cluster.proxy_config.external_ip_cidrs if external_ip_cidrs is None
               else external_ip_cidrs_of(external_ip_cidrs))
    node = cluster.node(node_name)
    if node is None:
        known = ", ".join(sorted(n.name for n in cluster.nodes)) or "none"
        raise UsageError(f"node {node_name!r} is not in the input (Nodes given: {known})")
    config = cluster.proxy_config
    mode = mode or ("nftables" if config.mode == "nftables" else "iptables")
    warnings: list[str] = []
    node_ips = _node_ips(node, family)
    if not node_ips:
        warnings.append(f"{node.ref.where()}: status.addresses: no {_ADDRESS_TYPE[family]} address; "
                        "NodePorts are only reachable through addresses the rules match locally")
    detector = _local_detector(config, node, family, warnings)
    masq_all = config.nftables_masquerade_all if mode == "nftables" else config.iptables_masquerade_all
    masq_bit = config.nftables_masquerade_bit if mode == "nftables" else config.iptables_masquerade_bit
    if masq_all:
        cluster_ip_masquerade: Literal["all", "non-local", "none"] = "all"
    elif detector.kind != "none":
        cluster_ip_masquerade = "non-local"
    else:
        cluster_ip_masquerade = "none"
    nodeports = _nodeport_destinations(config, node_ips, family, mode)
    sysctls = [("net.ipv4.ip_forward" if family == "ipv4" else "net.ipv6.conf.all.forwarding", "1")]
    if nodeports.localhost:
        sysctls.append(("net.ipv4.conf.all.route_localnet", "1"))
    return NodeContext(
        node=node, family=family, mode=mode, node_ips=node_ips, masquerade_mark=hex(1 << masq_bit),
        local_detector=detector, cluster_ip_masquerade=cluster_ip_masquerade, nodeports=nodeports,
        sysctls=tuple(sysctls), warnings=tuple(warnings), external_ip_cidrs=allowed,
        external_ip_networks=tuple(ipaddress.ip_network(c, strict=False) for c in allowed or ()),
        service_cidrs=service_cidrs_of(cluster, family) if mode == "nftables" else (),
    )


def service_cidrs_of(cluster: Cluster, family: Family) -> tuple[str, ...]:
    """The union of the cluster's ServiceCIDRs' ``spec.cidrs`` (any status) of one family, sorted:
    what kube-proxy's nftables mode drops unallocated addresses of (iptables mode ignores them)."""
    cidrs = {c for sc in cluster.service_cidrs for c in sc.cidrs if _cidr_family(c) == family}
    return tuple(sorted(cidrs, key=lambda c: (ipaddress.ip_network(c).network_address, c)))


# ---------------------------------------------------- claimed external addresses


Owners = Mapping[str, tuple[str, str]]  # ClusterIP -> (namespace, name) of the Service it is allocated to


def allocated_cluster_ips(svc: Service) -> tuple[str, ...]:
    """The ClusterIPs the API server allocated to ``svc`` (none for headless and ExternalName)."""
    if svc.type == "ExternalName" or svc.is_headless:
        return ()
    return tuple(ip for ip in svc.cluster_ips if ip)


def claimed_ips(svc: Service) -> tuple[str, ...]:
    """The addresses ``svc`` claims rather than is allocated: its externalIPs and the IPs of its
    load-balancer status (any that may get rules)."""
    lb = tuple(i.ip for i in svc.load_balancer_ingress if i.ip) if svc.type == "LoadBalancer" else ()
    return svc.external_ips + lb if lb else svc.external_ips


def cluster_ip_owners(services: Iterable[Service]) -> dict[str, tuple[str, str]]:
    """Every allocated ClusterIP and its Service (of two holding one, the first in namespace/name order)."""
    owners: dict[str, tuple[str, str]] = {}
    for svc in services:
        for ip in allocated_cluster_ips(svc):
            old = owners.get(ip)
            if old is None or svc.key < old:
                owners[ip] = svc.key
    return owners


def _who(svc: Service) -> str:
    return svc.ref.where() if svc.ref.source != "<memory>" else f"Service {svc.namespace}/{svc.name}"


def _without_lost_claims(svc: Service, ctx: NodeContext, owners: Owners, warnings: list[str]) -> Service:
    """``svc`` without the externalIPs and load-balancer IPs of the context's family it may not
    use on this node, each with a warning:

    * an externalIP outside the node's ``externalIPCIDRs`` (when set; the idea of the
      ``DenyServiceExternalIPs`` admission plugin and kubernetes-sigs/externalip-webhook);
    * an externalIP or load-balancer IP that is another Service's ClusterIP: an allocated
      ClusterIP always wins over a claimed address (CVE-2020-8554), whatever the names.
    """
    if not svc.external_ips and not (svc.type == "LoadBalancer" and svc.load_balancer_ingress):
        return svc
    family = ctx.family

    def lost(ip: str, field_path: str, allow_list: bool) -> bool:
        if family_of(ip) != family:
            return False  # the other family's plan decides
        if allow_list and ctx.external_ip_cidrs is not None:
            address = ipaddress.ip_address(ip)
            if not any(address in net for net in ctx.external_ip_networks):
                allowed = ", ".join(ctx.external_ip_cidrs) or "none"
                warnings.append(f"{_who(svc)}: {field_path}: {ip} is outside the allowed external IP CIDRs "
                                f"(externalIPCIDRs / --external-ip-cidrs: {allowed}); ignored")
                return True
        owner = owners.get(ip)
        if owner is not None and owner != svc.key:
            warnings.append(f"{_who(svc)}: {field_path}: {ip} is the ClusterIP of Service {owner[0]}/{owner[1]}; "
                            f"ignored, as an allocated ClusterIP always wins over a claimed address")
            return True
        return False

    external = tuple(ip for ip in svc.external_ips if not lost(ip, "spec.externalIPs", True))
    ingress = tuple(i for i in svc.load_balancer_ingress
                    if not (i.ip and svc.type == "LoadBalancer" and i.ip_mode != "Proxy"
                            and lost(i.ip, "status.loadBalancer.ingress", False)))
    if external == svc.external_ips and ingress == svc.load_balancer_ingress:
        return svc
    return replace(svc, external_ips=external, load_balancer_ingress=ingress)


def _open_family_warning(svc: Service, plans: Sequence[ServicePortPlan], family: Family) -> Optional[str]:
    """A warning when ``svc``'s loadBalancerSourceRanges restrict only the other family: its
    load-balancer IPs of ``family`` then accept every source (kube-proxy filters each family by
    that family's ranges alone, and so do we)."""
    if not plans or not svc.load_balancer_source_ranges or not plans[0].load_balancer_ips:
        return None
    if any(_cidr_family(r) == family for r in svc.load_balancer_source_ranges):
        return None
    fam = _ADDRESS_TYPE[family]
    return (f"{_who(svc)}: spec.loadBalancerSourceRanges: no {fam} range, so {fam} stays open: its {fam} "
            f"load-balancer IPs ({', '.join(plans[0].load_balancer_ips)}) accept traffic from any source "
            f"(as kube-proxy does); add an {fam} range to restrict them")


def plan_service(svc: Service, slices: Sequence[EndpointSlice], ctx: NodeContext, *,
                 owners: Owners) -> tuple[tuple[ServicePortPlan, ...], tuple[str, ...]]:
    """Plan every port of one Service on the node: (port plans, warnings).

    ``slices`` are the Service's EndpointSlices of the context's family; ``owners`` maps every
    allocated ClusterIP of the cluster to its Service (:func:`cluster_ip_owners`): an externalIP
    or load-balancer IP that is another Service's ClusterIP gets no rules.
    """
    warnings: list[str] = []
    why = should_skip_service(svc)
    if why == "no clusterIP":
        warnings.append(f"{svc.ref.where()}: spec.clusterIP: not set, so the Service gets no rules "
                        "(kube-proxy skips it); `--allocate` fills it in as the API server would")
    if why:
        return (), tuple(warnings)
    svc = _without_lost_claims(svc, ctx, owners, warnings)
    plans = []
    for port in svc.ports:
        p = plan_service_port(
            svc, port, slices, node=ctx.node, node_ips=ctx.node_ips, family=ctx.family, mode=ctx.mode,
            detector=ctx.local_detector, warnings=warnings,
        )
        if p is not None:
            plans.append(p)
    plans.sort(key=lambda p: (p.port_name, p.protocol))
    if svc.type == "LoadBalancer":
        open_family = _open_family_warning(svc, plans, ctx.family)
        if open_family:
            warnings.append(open_family)
    return tuple(plans), tuple(warnings)


def assemble(ctx: NodeContext, services: Iterable[ServicePortPlan], warnings: Iterable[str] = ()) -> NodePlan:
    """A :class:`NodePlan` from a node context and service port plans (already in order)."""
    return NodePlan(
        node=ctx.node.name,
        family=ctx.family,
        mode=ctx.mode,
        node_ips=ctx.node_ips,
        masquerade_mark=ctx.masquerade_mark,
        local_detector=ctx.local_detector,
        cluster_ip_masquerade=ctx.cluster_ip_masquerade,
        nodeports=ctx.nodeports,
        drop_invalid=ctx.mode == "iptables",
        reject_unknown_cluster_ip_ports=ctx.mode == "nftables",
        services=tuple(services),
        sysctls=ctx.sysctls,
        warnings=ctx.warnings + tuple(warnings),
        service_cidrs=ctx.service_cidrs,
    )


def slices_by_service(slices: Iterable[EndpointSlice], family: Family) -> dict[tuple[str, str], list[EndpointSlice]]:
    """The EndpointSlices of one family, by (namespace, service name), each list sorted by slice name."""
    return _slice_index(slices, family)


def chosen_backend(backend: Optional[str], mode: Optional[str]) -> Optional[Mode]:
    """The value of a public ``backend=`` keyword, or of ``mode=``, its former name (kept
    because the README's Library example and proxies written against it pass it); None when
    neither is given (or empty). :class:`UsageError` for an unknown name or both keywords at once."""
    if mode is not None and backend is not None:
        raise UsageError("give the backend as backend= only (mode= is its former name)")
    name = mode if backend is None else backend
    if not name:
        return None
    if name not in get_args(Mode):
        raise UsageError(f"unknown backend {name!r}: use one of {', '.join(get_args(Mode))}")
    return name  # type: ignore[return-value]


def build_plan(
    cluster: Cluster,
    node: str,
    *,
    backend: Optional[Mode] = None,
    family: Family = "ipv4",
    external_ip_cidrs: Optional[Sequence[str]] = None,
    mode: Optional[Mode] = None,
) -> NodePlan:
    """Plan ``node`` (a Node's name) for one IP family.

    ``backend`` defaults to the KubeProxyConfiguration's mode (``mode=`` is accepted as its
    former name, see :func:`chosen_backend`); ``external_ip_cidrs`` overrides its
    ``externalIPCIDRs`` (see :func:`node_context`). Raises :class:`UsageError` when the node is
    not in the input, the backend unknown or a CIDR invalid. Services with a selector and no
    EndpointSlices get those the EndpointSlice controller derives from the cluster's Pods, as
    every command does (:func:`dataplane.prepare.prepare_cluster`).
    """
    backend = chosen_backend(backend, mode)
    cluster = with_derived_slices(cluster)
    ctx = node_context(cluster, node, family=family, mode=backend, external_ip_cidrs=external_ip_cidrs)
    index = _slice_index(cluster.endpoint_slices, family)
    owners = cluster_ip_owners(cluster.services)
    services: list[ServicePortPlan] = []
    warnings: list[str] = []
    for svc in sorted(cluster.services, key=lambda s: (s.namespace, s.name)):
        plans, w = plan_service(svc, index.get(svc.key, ()), ctx, owners=owners)
        services.extend(plans)
        warnings.extend(w)
    warnings.extend(frontend_conflicts(services))
    return assemble(ctx, services, warnings)


def frontend_conflicts(services: Iterable[ServicePortPlan]) -> list[str]:
    """Warnings for frontends (IP, protocol, port; or NodePort) that two Services claim.

    The API server keeps ClusterIPs and NodePorts unique but not external IPs (nor
    load-balancer IPs that a controller wrote twice). An external or load-balancer IP that
    is another Service's ClusterIP never gets here (:func:`plan_service` drops it: the
    allocated ClusterIP wins). Among claims of one kind, kube-proxy's iptables rules send
    the packets to the first Service in rule order; both backends do the same (the
    nftables maps keep the first element)."""
    return claim_conflicts(frontend_claims(p) for p in services)


Claims = tuple[str, tuple[tuple[tuple, str], ...]]


def frontend_claims(p: ServicePortPlan) -> Claims:
    """The owner (``namespace/name``) and frontends of a service port: (key, text) pairs."""
    proto = p.protocol.upper()
    claims = [(("ip", ip, p.protocol, p.port), f"{ip}:{p.port}/{proto}")
              for ip in (p.cluster_ip, *p.external_ips, *p.load_balancer_ips) if ip]
    if p.node_port:
        claims.append((("nodePort", p.protocol, p.node_port), f"nodePort {p.node_port}/{proto}"))
    return f"{p.namespace}/{p.name}", tuple(claims)


def claim_conflicts(claims: Iterable[Claims]) -> list[str]:
    """:func:`frontend_conflicts`, given the :func:`frontend_claims` of every service port in plan order."""
    seen: dict[tuple, str] = {}
    out: list[str] = []
    for owner, frontends in claims:
        for key, text in frontends:
            first = seen.setdefault(key, owner)
            if first != owner:
                out.append(f"Service {owner}: {text} is also a frontend of Service {first}; "
                           f"its packets go to {first} (the first in namespace/name order)")
    return out
