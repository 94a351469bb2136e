"""Deriving a lab :class:`Layout` from a :class:`~dataplane.model.Cluster` (pure, no privileges needed):

* one node per Node object, on one underlay segment: the node's InternalIP (or
  ExternalIP) of each family, the segment the smallest network holding them all
  (at most a /24, /64);
* one pod per endpoint Pod: the Pod objects (with an IP and a node) and the
  EndpointSlice endpoints with no Pod object (placed by ``nodeName``, else by
  the pod CIDR holding their address), each serving TCP and UDP on every port
  an EndpointSlice or a ``containerPort`` names (SCTP is only captured, never
  served). An endpoint whose address is a node's serves on that node itself
  (a host-network endpoint);
* one *probe pod* per node (a pod that is nobody's endpoint, to send pod
  traffic from), and two external clients: ``client`` (sources that
  ``loadBalancerSourceRanges`` allow) and ``client-denied`` (sources they do
  not), each with extra addresses where the ranges need them;
* addresses the input lacks (a Node without a pod CIDR, an IPv6-only cluster's
  IPv4 plumbing) are taken from ranges nothing in the input uses.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable, Literal, Optional, Sequence

from ..errors import LabError
from ..model import Cluster, Node
from ..plan import Family, family_of
from .addresses import POOLS, IPAddr, IPNet, Space, covering, free_host, free_subnet, hosts
from .topology import FABRIC, ClientSpec, NodeSpec, PodSpec, Topology

__all__ = ["Role", "LabNode", "LabPod", "LabClient", "Layout", "derive_layout", "families_in_use"]

Role = Literal["allowed", "denied"]
_MEMBER = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
_FAMILY: dict[int, Family] = {4: "ipv4", 6: "ipv6"}


@dataclass(frozen=True, slots=True)
class LabNode:
    """A Node object as a lab node.

    ``addresses``: its underlay addresses in the lab (IPv4 first); ``probe``: the
    member name of its probe pod; ``tcp_ports``/``udp_ports``: served on the node
    itself, for endpoints whose address is the node's.
    """

    name: str
    member: str
    addresses: tuple[str, ...]
    pod_cidrs: tuple[str, ...]
    probe: str
    tcp_ports: tuple[int, ...] = ()
    udp_ports: tuple[int, ...] = ()

    def address(self, family: str) -> Optional[str]:
        """The node's lab address of ``family`` ("ipv4"/"ipv6"), if it has one."""
        return next((a for a in self.addresses if family_of(a) == family), None)


@dataclass(frozen=True, slots=True)
class LabPod:
    """An endpoint pod (or a node's probe pod, with ``ref`` "" and no ports)."""

    member: str
    ref: str  # "namespace/name" of the Pod, or the endpoint's address when it names no Pod
    node: str  # the Node object's name
    addresses: tuple[str, ...]  # IPv4 first
    tcp_ports: tuple[int, ...] = ()
    udp_ports: tuple[int, ...] = ()
    sctp_ports: tuple[int, ...] = ()

    def address(self, family: str) -> Optional[str]:
        """The pod's address of ``family``, if it has one."""
        return next((a for a in self.addresses if family_of(a) == family), None)


@dataclass(frozen=True, slots=True)
class LabClient:
    """An external client: ``addresses`` (primary ones first, then ``aliases``)."""

    member: str
    role: Role
    addresses: tuple[str, ...]
    aliases: tuple[str, ...] = ()

    def sources(self, family: str) -> tuple[str, ...]:
        """Every source address of ``family`` it can send from, primary first."""
        return tuple(a for a in self.addresses if family_of(a) == family)


@dataclass(frozen=True, slots=True)
class Layout:
    """What a lab built from a cluster consists of (see the module doc)."""

    topology: Topology
    families: tuple[Family, ...]
    nodes: tuple[LabNode, ...]
    pods: tuple[LabPod, ...]
    probes: tuple[LabPod, ...]
    clients: tuple[LabClient, ...]
    warnings: tuple[str, ...] = ()

    def node(self, name: str) -> LabNode:
        """The lab node of the Node object ``name``."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in the lab")

    def client(self, role: Role) -> LabClient:
        """The client with ``role``."""
        return next(c for c in self.clients if c.role == role)


def families_in_use(cluster: Cluster) -> tuple[Family, ...]:
    """The IP families of the Services' ClusterIPs (IPv4 when there are none)."""
    found = {family_of(ip) for s in cluster.services for ip in s.cluster_ips if ip and ip != "None"}
    return tuple(f for f in ("ipv4", "ipv6") if f in found) or ("ipv4",)


class _Names:
    """Hands out unique lab member names (lower-case alphanumerics and '-', at most 40)."""

    def __init__(self) -> None:
        self.taken: set[str] = {FABRIC}

    @staticmethod
    def clean(text: str) -> str:
        name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
        return name[:40].rstrip("-") or "x"

    def take(self, *wanted: str) -> str:
        """The first of ``wanted`` (cleaned) that is free, else the first with a number appended."""
        options = [self.clean(w) for w in wanted]
        for name in options:
            if name not in self.taken and _MEMBER.match(name):
                self.taken.add(name)
                return name
        for i in range(2, 10_000):
            name = f"{options[0][:34].rstrip('-')}-{i}"
            if name not in self.taken:
                self.taken.add(name)
                return name
        raise LabError(f"cannot find a free lab name for {wanted[0]!r}")


@dataclass
class _Draft:
    """A pod being collected from Pod objects and EndpointSlices."""

    ref: str
    node: Optional[str]
    wanted: tuple[str, ...]  # preferred member names
    ips: dict[int, str] = field(default_factory=dict)
    ports: set[tuple[str, int]] = field(default_factory=set)


def _node_ip(node: Node, version: int) -> Optional[IPAddr]:
    """The node's primary address of a version: its first InternalIP, else its first ExternalIP."""
    for kind in ("InternalIP", "ExternalIP"):
        for a in node.addresses:
            if a.type == kind:
                ip = ipaddress.ip_address(a.address)
                if ip.version == version:
                    return ip
    return None


def _frontends(cluster: Cluster, families: Sequence[Family]) -> tuple[list[IPAddr], list[IPAddr]]:
    """(ClusterIPs, externalIPs + load-balancer IPs) of the Services, in ``families``."""
    cluster_ips: list[IPAddr] = []
    outside: list[IPAddr] = []
    for s in cluster.services:
        for ip in s.cluster_ips:
            if ip and ip != "None" and family_of(ip) in families:
                cluster_ips.append(ipaddress.ip_address(ip))
        lbs = [i.ip for i in s.load_balancer_ingress if i.ip] if s.type == "LoadBalancer" else []
        for ip in [*s.external_ips, *lbs]:
            if family_of(ip) in families and ipaddress.ip_address(ip) not in outside:
                outside.append(ipaddress.ip_address(ip))
    return cluster_ips, outside


def _source_ranges(cluster: Cluster, families: Sequence[Family]) -> list[list[IPNet]]:
    """The loadBalancerSourceRanges of every LoadBalancer Service with load-balancer IPs, per family."""
    out: list[list[IPNet]] = []
    for s in cluster.services:
        if s.type != "LoadBalancer" or not any(i.ip for i in s.load_balancer_ingress):
            continue
        for fam in families:
            nets = [ipaddress.ip_network(r, strict=False) for r in s.load_balancer_source_ranges if family_of(r) == fam]
            if nets and nets not in out:
                out.append(nets)
    return out


def _collect_pods(cluster: Cluster, families: Sequence[Family], node_names: set[str],
                  node_of_ip: dict[IPAddr, str], warnings: list[str]
                  ) -> tuple[list[_Draft], dict[str, set[tuple[str, int]]]]:
    """Endpoint pods (Pod objects first, then EndpointSlice endpoints without one) and the
    ports served on nodes for endpoints whose address is a node's."""
    drafts: list[_Draft] = []
    by_ip: dict[IPAddr, _Draft] = {}
    by_ref: dict[str, _Draft] = {}
    host: dict[str, set[tuple[str, int]]] = {}
    for pod in cluster.pods:
        ips = [ipaddress.ip_address(ip) for ip in pod.pod_ips if family_of(ip) in families]
        if not ips or pod.phase in ("Succeeded", "Failed"):
            continue
        ref = f"{pod.namespace}/{pod.name}"
        ports = {(c.protocol.lower(), c.container_port) for c in pod.container_ports}
        if pod.node_name not in node_names:
            warnings.append(f"Pod {ref}: node {pod.node_name or '(none)'} is not in the input; not built")
            continue
        if any(ip in node_of_ip for ip in ips):  # hostNetwork: serves on its node
            host.setdefault(pod.node_name, set()).update(ports)
            continue
        if any(ip in by_ip for ip in ips):
            warnings.append(f"Pod {ref}: address {ips[0]} already belongs to {by_ip[ips[0]].ref}; not built")
            continue
        d = _Draft(ref, pod.node_name, (pod.name, f"{pod.namespace}-{pod.name}"))
        for ip in ips:
            d.ips.setdefault(ip.version, str(ip))
            by_ip[ip] = d
        d.ports |= ports
        drafts.append(d)
        by_ref[ref] = d
    for s in cluster.endpoint_slices:
        if s.address_type not in ("IPv4", "IPv6") or _FAMILY[4 if s.address_type == "IPv4" else 6] not in families:
            continue
        ports = {(p.protocol.lower(), p.port) for p in s.ports if p.port}
        for ep in s.endpoints:
            if not ep.addresses:
                continue
            ip = ipaddress.ip_address(ep.addresses[0])  # the plan uses the first address only
            if ip in node_of_ip:
                host.setdefault(node_of_ip[ip], set()).update(ports)
                continue
            d = by_ip.get(ip)
            ref = f"{s.namespace}/{ep.target_ref_name}" if ep.target_ref_name else str(ip)
            if d is None and ep.target_ref_name:
                d = by_ref.get(ref)
                if d is not None and ip.version in d.ips:
                    warnings.append(f"EndpointSlice {s.namespace}/{s.name}: {ref} has a second IPv{ip.version} "
                                    f"address {ip}; not built")
                    continue
            if d is None:
                node = ep.node_name if ep.node_name in node_names else None
                wanted = (ep.target_ref_name, f"{s.namespace}-{ep.target_ref_name}") if ep.target_ref_name \
                    else (f"ep-{ip}",)
                d = _Draft(ref, node, wanted)
                drafts.append(d)
                if ep.target_ref_name:
                    by_ref[ref] = d
            d.ips.setdefault(ip.version, str(ip))
            by_ip[ip] = d
            d.ports |= ports
    return drafts, host


def _place(drafts: list[_Draft], cidrs: dict[str, dict[int, IPNet]], warnings: list[str]) -> list[_Draft]:
    """Give every draft without a node the node whose pod CIDR holds its address; drop the rest."""
    placed = []
    for d in drafts:
        if d.node is None:
            for node, nets in cidrs.items():
                if any(ipaddress.ip_address(ip) in nets[v] for v, ip in d.ips.items() if v in nets):
                    d.node = node
                    break
        if d.node is None:
            warnings.append(f"endpoint {d.ref}: no nodeName and no Node's podCIDR holds "
                            f"{', '.join(d.ips.values())}; not built (flows to it cannot succeed)")
            continue
        placed.append(d)
    return placed


def _ports(d: Iterable[tuple[str, int]], proto: str) -> tuple[int, ...]:
    return tuple(sorted({port for p, port in d if p == proto}))


def derive_layout(cluster: Cluster, families: Sequence[Family] = ("ipv4",)) -> Layout:
    """Lay out a lab for ``cluster`` with addresses of ``families`` (see the module doc).

    Raises :class:`LabError` when the input cannot be built (no Node objects, node
    addresses too far apart, pod addresses outside their node's pod CIDR...).
    """
    if not cluster.nodes:
        raise LabError("the input has no Node objects: a lab needs at least one node")
    return _LayoutBuilder(cluster, tuple(f for f in ("ipv4", "ipv6") if f in families)).build()


class _LayoutBuilder:
    """The steps of :func:`derive_layout`, sharing the addresses spoken for so far.

    Order matters: what the input fixes (node addresses, pod CIDRs, pod addresses,
    Service addresses) is reserved before anything is made up.
    """

    def __init__(self, cluster: Cluster, fams: tuple[Family, ...]) -> None:
        self.cluster = cluster
        self.fams = fams
        self.versions = [4] + ([6] if "ipv6" in fams else [])
        self.warnings: list[str] = []
        self.names = _Names()
        self.members = {n.name: self.names.take(n.name, "node") for n in cluster.nodes}
        self.client_members = {"allowed": self.names.take("client"), "denied": self.names.take("client-denied")}
        self.probes = {n.name: self.names.take(f"{self.members[n.name]}-probe") for n in cluster.nodes}
        self.space = Space()
        cluster_ips, self.outside = _frontends(cluster, fams)
        self.space.use([*cluster_ips, *self.outside])
        self.real_ips: dict[str, dict[int, IPAddr]] = {n.name: {} for n in cluster.nodes}
        self.node_of_ip: dict[IPAddr, str] = {}
        self.cidrs: dict[str, dict[int, IPNet]] = {n.name: {} for n in cluster.nodes}
        self.underlay: dict[int, IPNet] = {}
        self.gateways: dict[int, Optional[IPAddr]] = {}
        self.node_ips: dict[str, dict[int, IPAddr]] = {}

    def build(self) -> Layout:
        self.reserve_node_addresses()
        self.reserve_pod_cidrs()
        drafts, host_ports = _collect_pods(self.cluster, self.fams, set(self.members), self.node_of_ip,
                                           self.warnings)
        drafts = _place(drafts, {k: v for k, v in self.cidrs.items() if v}, self.warnings)
        self.space.use(ipaddress.ip_address(ip) for d in drafts for ip in d.ips.values())
        self.complete_pod_cidrs(drafts)
        self.lay_underlay()
        self.give_ipv4(drafts)
        clients = _clients(self.cluster, self.fams, self.versions, self.client_members, self.underlay, self.space,
                           self.warnings)
        nodes, probes = self.nodes_and_probes(host_ports)
        pods = [
            LabPod(self.names.take(*d.wanted), d.ref, d.node, tuple(d.ips[v] for v in sorted(d.ips)),  # type: ignore[arg-type]
                   _ports(d.ports, "tcp"), _ports(d.ports, "udp"), _ports(d.ports, "sctp"))
            for d in drafts
        ]
        topology = self.topology(nodes, [*pods, *probes], clients)
        return Layout(topology, self.fams, tuple(nodes), tuple(pods), tuple(probes), tuple(clients),
                      tuple(self.warnings))

    def reserve_node_addresses(self) -> None:
        """Each node's own address per family (InternalIP, else ExternalIP)."""
        for n in self.cluster.nodes:
            for a in n.addresses:
                if a.type in ("InternalIP", "ExternalIP"):
                    self.node_of_ip.setdefault(ipaddress.ip_address(a.address), n.name)
            for v in self.versions:
                ip = _node_ip(n, v)
                if ip is None:
                    continue
                if self.space.is_used(ip) and ip not in self.outside:  # externalIPs may be node addresses
                    raise LabError(f"Node {n.name}: address {ip} is also used by a Service or another Node")
                self.space.use([ip])
                self.real_ips[n.name][v] = ip

    def reserve_pod_cidrs(self) -> None:
        """The pod CIDRs the Nodes give (the first of each family)."""
        for n in self.cluster.nodes:
            for c in n.pod_cidrs:
                net = ipaddress.ip_network(c, strict=False)
                if net.version not in self.versions or net.version in self.cidrs[n.name]:
                    continue
                if not self.space.clear_net(net):
                    raise LabError(f"Node {n.name}: podCIDR {net} overlaps another node's")
                self.cidrs[n.name][net.version] = net
                self.space.nets.append(net)

    def complete_pod_cidrs(self, drafts: Sequence[_Draft]) -> None:
        """Pod CIDRs the Nodes do not give: the smallest network around their pods, else a free
        one; then check every pod is inside its node's."""
        for n in self.cluster.nodes:
            for v in self.versions:
                if v in self.cidrs[n.name]:
                    continue
                ips = [ipaddress.ip_address(d.ips[v]) for d in drafts if d.node == n.name and v in d.ips]
                if not ips:
                    self.cidrs[n.name][v] = free_subnet(v, self.space)
                    continue
                net = covering(ips, f"Node {n.name}: pod addresses")
                if not self.space.clear_net(net):
                    raise LabError(f"Node {n.name} has no podCIDR and the network around its pods, {net}, "
                                   "overlaps another node's")
                self.space.nets.append(net)
                self.cidrs[n.name][v] = net
        for d in drafts:
            for v, ip in d.ips.items():
                net = self.cidrs[d.node][v]  # type: ignore[index]
                if ipaddress.ip_address(ip) not in net:
                    raise LabError(f"endpoint {d.ref}: address {ip} is not in the podCIDR {net} of its node {d.node}")
        for nets in self.cidrs.values():
            self.space.use(net[1] for net in nets.values())  # the pods' gateway on each node

    def lay_underlay(self) -> None:
        """The nodes' segment (around their own addresses, else a free network), its gateway
        and an address for every node that has none of a family."""
        for v in self.versions:
            real = [ips[v] for ips in self.real_ips.values() if v in ips]
            if real:
                net = covering(real, f"the nodes' IPv{v} addresses")
                if not self.space.clear_net(net):
                    raise LabError(f"the nodes' network {net} overlaps a pod CIDR")
                self.space.nets.append(net)
            else:
                net = free_subnet(v, self.space)
            self.underlay[v] = net
            self.gateways[v] = free_host(net, self.space)
        for n in self.cluster.nodes:
            self.node_ips[n.name] = {}
            for v in self.versions:
                ip = self.real_ips[n.name].get(v) or free_host(self.underlay[v], self.space)
                if ip is None:
                    raise LabError(f"no free address for node {n.name} in {self.underlay[v]}")
                self.node_ips[n.name][v] = ip

    def give_ipv4(self, drafts: Sequence[_Draft]) -> None:
        """A lab pod always has an IPv4 address: IPv6-only pods get a free one for the plumbing."""
        for d in drafts:
            if 4 not in d.ips:
                net = self.cidrs[d.node][4]  # type: ignore[index]
                ip = free_host(net, self.space, from_end=False)
                if ip is None:
                    raise LabError(f"pod {d.ref}: no free address in {net}")
                d.ips[4] = str(ip)

    def nodes_and_probes(self, host_ports: dict[str, set[tuple[str, int]]]) -> tuple[list[LabNode], list[LabPod]]:
        """The lab nodes, and a probe pod per node at the end of its pod CIDRs."""
        nodes, probes = [], []
        for n in self.cluster.nodes:
            probe_ips = []
            for v in self.versions:
                ip = free_host(self.cidrs[n.name][v], self.space)
                if ip is None:
                    raise LabError(f"Node {n.name}: no free address for its probe pod in {self.cidrs[n.name][v]}")
                probe_ips.append(str(ip))
            probes.append(LabPod(self.probes[n.name], "", n.name, tuple(probe_ips)))
            hp = host_ports.get(n.name, set())
            nodes.append(LabNode(
                name=n.name, member=self.members[n.name],
                addresses=tuple(str(self.node_ips[n.name][v]) for v in self.versions),
                pod_cidrs=tuple(str(self.cidrs[n.name][v]) for v in self.versions), probe=self.probes[n.name],
                tcp_ports=_ports(hp, "tcp"), udp_ports=_ports(hp, "udp")))
        return nodes, probes

    def topology(self, nodes: Sequence[LabNode], pods: Sequence[LabPod], clients: Sequence[LabClient]) -> Topology:
        """The :class:`~dataplane.lab.Topology` of the layout; clients go via the first node."""
        six = 6 in self.versions
        bridge = _pod_bridge(self.cluster, self.warnings)
        extra6 = ({"underlay6": str(self.underlay[6]), "gateway6": _text(self.gateways[6])} if six
                  else {"gateway6": None})
        return Topology(
            nodes=tuple(
                NodeSpec(name=ln.member, ip=ln.addresses[0], pod_cidr=ln.pod_cidrs[0],
                         ip6=ln.address("ipv6"), pod_cidr6=ln.pod_cidrs[1] if six else None,
                         **({"pod_bridge": bridge} if bridge else {}))
                for ln in nodes
            ),
            pods=tuple(PodSpec(name=p.member, node=self.members[p.node], ip=p.addresses[0], ip6=p.address("ipv6"))
                       for p in pods),
            clients=tuple(
                ClientSpec(name=c.member, ip=c.sources("ipv4")[0], via=nodes[0].member,
                           ip6=c.sources("ipv6")[0] if six else None)
                for c in clients
            ),
            underlay=str(self.underlay[4]),
            gateway=_text(self.gateways[4]),
            **extra6,  # type: ignore[arg-type]
        )


def _text(ip: Optional[IPAddr]) -> Optional[str]:
    return str(ip) if ip is not None else None


def _pod_bridge(cluster: Cluster, warnings: list[str]) -> Optional[str]:
    """The bridge to hang pods off when kube-proxy detects local traffic by bridge name."""
    config = cluster.proxy_config
    if config.detect_local_mode != "BridgeInterface" or not config.bridge_interface:
        return None
    if "pod_bridge" not in NodeSpec.__dataclass_fields__:  # older lab: pods keep their own veths
        warnings.append("detectLocalMode BridgeInterface: the lab cannot attach pods to a bridge; "
                        "their traffic is not detected as local")
        return None
    return config.bridge_interface


def _clients(cluster: Cluster, fams: Sequence[Family], versions: Sequence[int], members: dict[str, str],
             underlay: dict[int, IPNet], space: Space, warnings: list[str]) -> list[LabClient]:
    """The allowed and the denied client, with extra addresses where source ranges need them."""
    ranges = _source_ranges(cluster, fams)
    addrs: dict[Role, list[IPAddr]] = {"allowed": [], "denied": []}
    for v in versions:
        own = [r for rs in ranges for r in rs if r.version == v]
        for role in ("allowed", "denied"):
            ip = free_host(underlay[v], space, avoid=own if role == "denied" else ())
            ip = ip or free_host(underlay[v], space)
            if ip is None:
                raise LabError(f"no free address for the {role} client in {underlay[v]}")
            addrs[role].append(ip)  # type: ignore[index]
    aliases: dict[Role, list[IPAddr]] = {"allowed": [], "denied": []}
    for rs in ranges:
        def inside(ip: IPAddr) -> bool:
            return any(ip in r for r in rs)

        v = rs[0].version
        if not any(inside(ip) for ip in addrs["allowed"] + aliases["allowed"] if ip.version == v):
            ip = _pick_inside(rs, underlay[v], space)
            if ip is None:
                warnings.append(f"loadBalancerSourceRanges {', '.join(map(str, rs))}: no usable source address "
                                "inside them; allowed sources are not probed")
            else:
                aliases["allowed"].append(ip)
        if not any(not inside(ip) for ip in addrs["denied"] + aliases["denied"] if ip.version == v):
            ip = _pick_outside(rs, underlay[v], space)
            if ip is None:
                warnings.append(f"loadBalancerSourceRanges {', '.join(map(str, rs))}: every address is allowed; "
                                "denied sources are not probed")
            else:
                aliases["denied"].append(ip)
    return [
        LabClient(members[role], role,  # type: ignore[arg-type]
                  tuple(str(ip) for ip in addrs[role] + aliases[role]),  # type: ignore[index]
                  tuple(str(ip) for ip in aliases[role]))  # type: ignore[index]
        for role in ("allowed", "denied")
    ]


def _pick_inside(ranges: Sequence[IPNet], underlay: IPNet, space: Space) -> Optional[IPAddr]:
    """A free source address inside one of ``ranges``: on the underlay if a range meets it."""
    for r in ranges:
        if r.overlaps(underlay):
            inner = r if r.prefixlen >= underlay.prefixlen else underlay  # inside both
            ip = space.take(space.free(hosts(inner), r.version, inside=underlay), r.version, from_end=True)
            if ip is not None:
                return ip
    for r in ranges:
        ip = free_host(r, space, from_end=False)
        if ip is not None:
            return ip
    return None


def _pick_outside(ranges: Sequence[IPNet], underlay: IPNet, space: Space) -> Optional[IPAddr]:
    """A free source address outside every one of ``ranges``."""
    ip = free_host(underlay, space, avoid=ranges)
    if ip is not None:
        return ip
    for pool in POOLS[underlay.version]:
        ip = free_host(ipaddress.ip_network(pool), space, from_end=False, avoid=ranges)
        if ip is not None:
            return ip
    return None
