"""A whole cluster in network namespaces, built from manifests (``dataplane lab up/down``).

:func:`derive_layout` turns a :class:`~dataplane.model.Cluster` into a lab
:class:`Layout` (pure, no privileges needed):

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

:class:`ClusterLab` builds a layout with :class:`~dataplane.lab.Lab`, loads
every node's own rules with :func:`~dataplane.apply.apply_cluster` and starts
the reply servers. ``dataplane lab up`` keeps such a lab running after it
exits: the servers live in a small background process, and everything the lab
made is recorded in ``/run/kube-dataplane/labs/<name>.json`` so that
``dataplane lab down`` (or the next ``up`` of the same name, after a crash)
removes all of it.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Optional, Sequence, Union

from netaddr import IPRange, IPSet

from .apply import STATE_DIR, apply_cluster, forget
from .errors import DataplaneError
from .lab import FABRIC, ClientSpec, Lab, NodeSpec, PodSpec, Server, Topology
from .model import Cluster, Node
from .netns import NETNS_DIR
from .plan import Family, Mode, NodePlan, family_of

__all__ = [
    "LABS_DIR",
    "LabError",
    "LabNode",
    "LabPod",
    "LabClient",
    "Layout",
    "ClusterLab",
    "derive_layout",
    "families_in_use",
    "lab_up",
    "lab_down",
    "state_path",
    "add_commands",
]

IPAddr = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNet = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Role = Literal["allowed", "denied"]

LABS_DIR = os.path.join(STATE_DIR, "labs")
DEFAULT_LAB_NAME = "lab"
_LAB_NAME = re.compile(r"^[a-z][a-z0-9]{1,15}$")
_VERIFY_LAB = re.compile(r"^dpv[0-9a-f]{6}$")  # labs of `dataplane verify` runs
_MEMBER = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
_FAMILY: dict[int, Family] = {4: "ipv4", 6: "ipv6"}
_MAX_PREFIX = {4: 24, 6: 64}  # the underlay and derived pod CIDRs are at least this large
_MIN_PREFIX = {4: 16, 6: 48}  # ... and at most this large
_POOLS = {4: ("198.18.0.0/15", "100.64.0.0/10"), 6: ("fd00:dada::/48", "fd00:dadb::/48")}
_SPECIAL = {  # never handed out
    4: IPSet(["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"]),
    6: IPSet(["::/127", "fe80::/10", "ff00::/8", "::ffff:0:0/96"]),
}
_READY_TIMEOUT = 20.0
_ROUTE_MARK = 0x1000  # clients' socket marks / routing tables: this + the node's position (no 0x4000 bit)


class LabError(DataplaneError):
    """A lab cannot be built from the input, or a lab operation failed."""


# =========================================================================== layout


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


def _ipset(items: Iterable[Union[IPAddr, IPNet]]) -> IPSet:
    """A netaddr IP set of ``ipaddress`` addresses and networks."""
    return IPSet(str(i) for i in items)


class _Space:
    """Addresses and networks already spoken for while laying a lab out: the reserved
    networks (pod CIDRs, underlays) and the set of used addresses."""

    def __init__(self) -> None:
        self.nets: list[IPNet] = []
        self.used = IPSet()

    def use(self, ips: Iterable[IPAddr]) -> None:
        """Mark addresses used; many at once are merged in one go (an insert each costs a
        compaction of the set)."""
        new = [str(ip) for ip in ips]
        if len(new) > 16:
            self.used = self.used | IPSet(new)
        else:
            for ip in new:
                self.used.add(ip)

    def is_used(self, ip: IPAddr) -> bool:
        return str(ip) in self.used

    def clear_net(self, net: IPNet) -> bool:
        return not any(net.overlaps(n) for n in self.nets if n.version == net.version)

    def free(self, candidates: IPSet, version: int, *, inside: Optional[IPNet] = None) -> IPSet:
        """The usable host addresses among ``candidates``: unused, not special and in no
        reserved network (other than ``inside``)."""
        reserved = _ipset(n for n in self.nets if n.version == version and n != inside)
        return candidates - self.used - _SPECIAL[version] - reserved

    def take(self, free: IPSet, version: int, *, from_end: bool) -> Optional[IPAddr]:
        """The highest (``from_end``) or lowest address of ``free``, marked used; None if it is empty."""
        if not free:
            return None
        cidrs = free.iter_cidrs()  # sorted
        value = cidrs[-1].last if from_end else cidrs[0].first
        ip: IPAddr = ipaddress.IPv6Address(value) if version == 6 else ipaddress.IPv4Address(value)
        self.used.add(str(ip))
        return ip


def _hosts(net: IPNet) -> IPSet:
    """The addresses of ``net`` a lab hands out: all but its first and last, and of a network
    larger than 2^16 addresses only its first 2^16 (so "the end" of ``fd00:1::/64`` is
    ``fd00:1::fffe``, not ``fd00:1:0:0:ffff:ffff:ffff:fffe``)."""
    last = min(net.num_addresses, 1 << 16) - 1
    if last < 2:
        return IPSet()
    return IPSet(IPRange(str(net[1]), str(net[last - 1])))


def _free_host(net: IPNet, space: _Space, *, from_end: bool = True, avoid: Sequence[IPNet] = ()) -> Optional[IPAddr]:
    """The last (``from_end``) or first free host address of ``net`` in none of ``avoid``, marked used."""
    free = space.free(_hosts(net), net.version, inside=net) - _ipset(a for a in avoid if a.version == net.version)
    return space.take(free, net.version, from_end=from_end)


def _free_subnet(version: int, space: _Space) -> IPNet:
    """The first network of the default size in the lab pools that overlaps nothing reserved
    and holds no used address."""
    size = _MAX_PREFIX[version]
    reserved = _ipset(n for n in space.nets if n.version == version)
    for pool in _POOLS[version]:
        # the free space is a list of maximal aligned blocks: the first one of the default
        # size or larger starts with the first free network of that size
        for block in (IPSet([pool]) - reserved - space.used).iter_cidrs():
            if block.prefixlen <= size:
                net = ipaddress.ip_network(f"{block.network}/{size}")
                space.nets.append(net)
                return net
    raise LabError(f"no free IPv{version} network left for the lab")


def _covering(ips: Sequence[IPAddr], what: str) -> IPNet:
    """The smallest network of at least the default size that holds every one of ``ips``."""
    version = ips[0].version
    prefix = min(_MAX_PREFIX[version], ips[0].max_prefixlen)
    net = ipaddress.ip_network(f"{ips[0]}/{prefix}", strict=False)
    while not all(ip in net for ip in ips):
        net = net.supernet()
    if net.prefixlen < _MIN_PREFIX[version]:
        raise LabError(
            f"{what} {', '.join(str(i) for i in ips)} span {net}: a lab puts them on one segment "
            f"of at most /{_MIN_PREFIX[version]}"
        )
    return net


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
        self.space = _Space()
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
                    self.cidrs[n.name][v] = _free_subnet(v, self.space)
                    continue
                net = _covering(ips, f"Node {n.name}: pod addresses")
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
                net = _covering(real, f"the nodes' IPv{v} addresses")
                if not self.space.clear_net(net):
                    raise LabError(f"the nodes' network {net} overlaps a pod CIDR")
                self.space.nets.append(net)
            else:
                net = _free_subnet(v, self.space)
            self.underlay[v] = net
            self.gateways[v] = _free_host(net, self.space)
        for n in self.cluster.nodes:
            self.node_ips[n.name] = {}
            for v in self.versions:
                ip = self.real_ips[n.name].get(v) or _free_host(self.underlay[v], self.space)
                if ip is None:
                    raise LabError(f"no free address for node {n.name} in {self.underlay[v]}")
                self.node_ips[n.name][v] = ip

    def give_ipv4(self, drafts: Sequence[_Draft]) -> None:
        """A lab pod always has an IPv4 address: IPv6-only pods get a free one for the plumbing."""
        for d in drafts:
            if 4 not in d.ips:
                net = self.cidrs[d.node][4]  # type: ignore[index]
                ip = _free_host(net, self.space, from_end=False)
                if ip is None:
                    raise LabError(f"pod {d.ref}: no free address in {net}")
                d.ips[4] = str(ip)

    def nodes_and_probes(self, host_ports: dict[str, set[tuple[str, int]]]) -> tuple[list[LabNode], list[LabPod]]:
        """The lab nodes, and a probe pod per node at the end of its pod CIDRs."""
        nodes, probes = [], []
        for n in self.cluster.nodes:
            probe_ips = []
            for v in self.versions:
                ip = _free_host(self.cidrs[n.name][v], self.space)
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
             underlay: dict[int, IPNet], space: _Space, warnings: list[str]) -> list[LabClient]:
    """The allowed and the denied client, with extra addresses where source ranges need them."""
    ranges = _source_ranges(cluster, fams)
    addrs: dict[Role, list[IPAddr]] = {"allowed": [], "denied": []}
    for v in versions:
        own = [r for rs in ranges for r in rs if r.version == v]
        for role in ("allowed", "denied"):
            ip = _free_host(underlay[v], space, avoid=own if role == "denied" else ())
            ip = ip or _free_host(underlay[v], space)
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


def _pick_inside(ranges: Sequence[IPNet], underlay: IPNet, space: _Space) -> Optional[IPAddr]:
    """A free source address inside one of ``ranges``: on the underlay if a range meets it."""
    for r in ranges:
        if r.overlaps(underlay):
            inner = r if r.prefixlen >= underlay.prefixlen else underlay  # inside both
            ip = space.take(space.free(_hosts(inner), r.version, inside=underlay), r.version, from_end=True)
            if ip is not None:
                return ip
    for r in ranges:
        ip = _free_host(r, space, from_end=False)
        if ip is not None:
            return ip
    return None


def _pick_outside(ranges: Sequence[IPNet], underlay: IPNet, space: _Space) -> Optional[IPAddr]:
    """A free source address outside every one of ``ranges``."""
    ip = _free_host(underlay, space, avoid=ranges)
    if ip is not None:
        return ip
    for pool in _POOLS[underlay.version]:
        ip = _free_host(ipaddress.ip_network(pool), space, from_end=False, avoid=ranges)
        if ip is not None:
            return ip
    return None


# =========================================================================== running labs


class ClusterLab:
    """A :class:`Layout` built in namespaces, with each node's rules loaded.

    >>> with ClusterLab(layout, backend="nftables") as cl:   # doctest: +SKIP
    ...     cl.apply(cluster)
    ...     cl.lab.tcp_probe(cl.layout.client("allowed").member, "192.0.2.1", 30080)

    ``start(serve=True)`` also starts the reply servers in this process (see
    :meth:`server_specs` for running them elsewhere). :meth:`apply` loads (or
    reloads) a cluster's rules on every node; :meth:`rules` reads back what a
    node's kernel holds.
    """

    def __init__(self, layout: Layout, *, backend: Optional[Mode] = None, prefix: Optional[str] = None,
                 state_file: Optional[str] = None) -> None:
        self.layout = layout
        self.backend = backend
        self.lab = Lab(layout.topology, prefix=prefix, state_file=state_file)
        self.plans: dict[tuple[str, Family], NodePlan] = {}
        self.mode: Optional[Mode] = None
        self.warnings: list[str] = []
        self._rules: dict[tuple[str, Family], str] = {}
        self._host_servers: list[Server] = []
        self._applied = False

    def __enter__(self) -> "ClusterLab":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, serve: bool = True) -> None:
        """Build the namespaces, the clients' extra addresses and routes, and (``serve``) start
        the servers. Everything is removed again on failure."""
        self.lab.start()
        try:
            self._configure_clients()
            if serve:
                self.serve()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the servers and remove every namespace and apply record (idempotent)."""
        for srv in self._host_servers:
            srv.close()
        self._host_servers.clear()
        for node in self.layout.nodes:
            forget_namespace(self.lab.ns(node.member))
        self.lab.close()

    def serve(self) -> None:
        """Start the reply servers in this process (closed with the lab)."""
        ipv6 = os.path.exists("/proc/sys/net/ipv6")
        for spec in self.server_specs():
            member = spec["member"]
            if any(p.member == member for p in self.layout.pods):
                self.lab.serve(member, tcp_ports=spec["tcp"], udp_ports=spec["udp"])
            else:
                self._host_servers.append(
                    Server(self.lab.ns(member), member, tcp_ports=spec["tcp"], udp_ports=spec["udp"], ipv6=ipv6))

    def server_specs(self) -> list[dict[str, Any]]:
        """Which servers the lab needs: ``{"member", "ns", "tcp", "udp"}`` per pod or node."""
        specs = []
        for item in (*self.layout.pods, *self.layout.nodes):
            if item.tcp_ports or item.udp_ports:
                specs.append({"member": item.member, "ns": self.lab.ns(item.member),
                              "tcp": list(item.tcp_ports), "udp": list(item.udp_ports)})
        return specs

    def _configure_clients(self) -> None:
        """Add the clients' extra addresses (the nodes route them back to their client) and one
        routing table per node: a client socket marked :meth:`mark` sends everything through
        that node, as a load balancer or router in front of the cluster would."""
        underlays = [ipaddress.ip_network(self.layout.topology.underlay)]
        if self.layout.topology.gateway6:
            underlays.append(ipaddress.ip_network(self.layout.topology.underlay6))
        for client in self.layout.clients:
            cmds: dict[str, list[str]] = {"-4": [], "-6": []}
            for a in client.aliases:
                cmds["-6" if ":" in a else "-4"].append(
                    f"addr add {a}/{128 if ':' in a else 32} dev eth0" + (" nodad" if ":" in a else ""))
            for node in self.layout.nodes:
                mark = self.mark(node.name)
                for address in node.addresses:
                    fam = "-6" if ":" in address else "-4"
                    cmds[fam].append(f"rule add fwmark {mark:#x} lookup {mark}")
                    cmds[fam].append(f"route add default via {address} table {mark}")
            for fam, lines in cmds.items():
                if lines:
                    self.lab.run(client.member, ["ip", fam, "-batch", "-"], input="\n".join(lines) + "\n")
            for a in client.aliases:
                if ":" in a:
                    self._wait_local_route(client.member, a)
            routes = [f"route replace {a} via {client.sources(family_of(a))[0]}" for a in client.aliases
                      if not any(ipaddress.ip_address(a) in u for u in underlays)]
            if routes:
                for node in self.layout.nodes:
                    self.lab.run(node.member, ["ip", "-batch", "-"], input="\n".join(routes) + "\n")

    def _wait_local_route(self, member: str, address: str, timeout: float = 2.0) -> None:
        """IPv6 installs an address's local route a moment after the address."""
        deadline = time.monotonic() + timeout
        while not self.lab.run(member, ["ip", "-6", "route", "show", "table", "local", address]).stdout.strip():
            if time.monotonic() > deadline:
                raise LabError(f"{member}: address {address} did not become usable")
            time.sleep(0.005)

    def mark(self, node: str) -> int:
        """The socket mark (``SO_MARK``) that makes a client send through ``node`` (a Node
        object's name): also its routing table's number in the clients."""
        return _ROUTE_MARK + [n.name for n in self.layout.nodes].index(node) + 1

    # ------------------------------------------------------------------ rules
    def apply(self, cluster: Cluster) -> None:
        """Load each node's own rules for ``cluster`` (every family of the layout).

        Nodes of the layout that ``cluster`` lacks lose their rules. On a reload the
        nodes' conntrack tables and session-affinity memories are emptied, so earlier
        flows cannot steer new ones.
        """
        from . import ctnetlink, netns

        mode: Mode = self.backend or ("nftables" if cluster.proxy_config.mode == "nftables" else "iptables")
        switching = self.mode is not None and mode != self.mode  # the other backend's rules must go
        self.plans.clear()
        self._rules.clear()
        for node in self.layout.nodes:
            ns = self.lab.ns(node.member)
            if self._applied:
                ctnetlink.flush(ns)
            present = cluster.node(node.name) is not None
            if switching or not present:
                self._remove_rules(ns)
            if not present:
                continue
            for fam in self.layout.families:
                result = apply_cluster(ns, cluster, node.name, mode=mode, family=fam)
                self.plans[(node.name, fam)] = result.plan
                self.warnings.extend(w for w in result.plan.warnings if w not in self.warnings)
                if self._applied:
                    _forget_affinity(ns, mode, fam)
                # read back now: once flows ran, nft affinity sets hold their sources
                self._rules[(node.name, fam)] = netns.read_back(ns, mode, ipv6=fam == "ipv6")
        self.mode = mode
        self._applied = True

    def _remove_rules(self, ns: str) -> None:
        from . import netns

        netns.cleanup(ns)
        netns.cleanup(ns, ipv6=True)
        forget(ns)

    def rules(self, node: str, family: Family) -> str:
        """The rules node ``node`` held for ``family`` right after :meth:`apply`, read back
        from its kernel (before any flow could add elements to affinity sets)."""
        try:
            return self._rules[(node, family)]
        except KeyError:
            raise LabError(f"no {family} rules were applied on node {node}") from None

    def local_ips(self, node: str) -> tuple[str, ...]:
        """Every address the lab gives node ``node``: underlay addresses and pod gateways."""
        n = self.layout.node(node)
        spec = self.layout.topology.node(n.member)
        extra = [spec.pod_gateway] + (["fe80::1"] if spec.ip6 else [])
        return (*n.addresses, *extra)


_NFT_AFFINITY_SET = re.compile(r"^\s*set (affinity-\S+) \{", re.M)


def _forget_affinity(ns: str, mode: Mode, family: Family) -> None:
    """Empty the session-affinity memories of a node: the nft ``affinity-*`` sets of the
    family's table, or every ``-m recent`` list (``/proc/net/xt_recent``)."""
    from . import netns

    if mode == "nftables":
        table = f"{'ip6' if family == 'ipv6' else 'ip'} kube-proxy"
        names = _NFT_AFFINITY_SET.findall(netns.read_back(ns, mode, ipv6=family == "ipv6"))
        if names:
            netns.run_in(ns, ["nft", "-f", "-"], input="".join(f"flush set {table} {n}\n" for n in names))
        return
    with netns.in_netns(ns):
        directory = "/proc/thread-self/net/xt_recent"
        for name in os.listdir(directory) if os.path.isdir(directory) else ():
            with open(os.path.join(directory, name), "w") as f:
                f.write("/\n")


def forget_namespace(ns: str) -> None:
    """Drop the incremental-apply and ownership records of ``ns`` and their directory."""
    from .ownership import discard

    forget(ns)
    discard(ns)
    try:
        os.rmdir(os.path.join(STATE_DIR, ns.replace("/", "_")))
    except OSError:
        pass


# =========================================================================== state, up, down


def require_root() -> None:
    """Labs create network namespaces: refuse early, with one line, without the privileges."""
    if os.geteuid() != 0:
        raise LabError("building or removing a lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), for example "
                       "`sudo`, or `unshare --user --map-root-user --net --mount` for a private sandbox")


def state_path(name: str) -> str:
    """The state file of lab ``name``."""
    check_name(name)
    return os.path.join(LABS_DIR, f"{name}.json")


def check_name(name: str) -> str:
    """``name`` if it is a valid lab name (it prefixes every namespace of the lab)."""
    if not _LAB_NAME.match(name):
        raise LabError(f"lab name {name!r}: 2-16 lower-case letters and digits, starting with a letter")
    return name


def read_state(path: str) -> Optional[dict[str, Any]]:
    """A lab state file's content, None if there is none; LabError if it is not one."""
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LabError(f"{path}: unreadable lab state: {e}") from None
    if not isinstance(state, dict) or state.get("kind") != "kube-dataplane-lab":
        raise LabError(f"{path}: not a kube-dataplane lab state file")
    return state


def update_state(path: str, **values: Any) -> None:
    """Merge ``values`` into a lab's state file (atomically)."""
    state = read_state(path)
    if state is None:
        raise LabError(f"{path}: the lab's state file disappeared")
    state.update(values)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_server(pid: int, path: str) -> bool:
    """Whether process ``pid`` is the server process of the lab whose state is ``path``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"dataplane.labctl" in argv and os.fsencode(path) in argv


def _stop_server(state: dict[str, Any], path: str) -> None:
    """End the lab's server process (recorded pid, checked to be ours): TERM, then KILL."""
    pid = state.get("server_pid")
    if not isinstance(pid, int) or not _is_our_server(pid, path):
        return
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _is_our_server(pid, path):
                return
            time.sleep(0.01)


def remove_lab(path: str) -> list[str]:
    """Remove everything the lab recorded in ``path``: its server process, namespaces,
    apply records and the state file. Returns the namespaces removed."""
    state = read_state(path)
    if state is None:
        return []
    _stop_server(state, path)
    removed = Lab.destroy_from_state(path)
    for ns in state.get("namespaces", []):
        if isinstance(ns, str) and "/" not in ns:
            forget_namespace(ns)
    return removed


def sweep_orphans() -> list[str]:
    """Remove the labs of ``dataplane verify`` runs whose process is gone (killed mid-run)."""
    removed: list[str] = []
    try:
        entries = sorted(os.listdir(LABS_DIR))
    except FileNotFoundError:
        return removed
    for entry in entries:
        path = os.path.join(LABS_DIR, entry)
        try:
            state = read_state(path)
        except LabError:
            continue
        if state and _VERIFY_LAB.match(entry.removesuffix(".json")) and isinstance(state.get("pid"), int) \
                and not _alive(state["pid"]):
            removed += remove_lab(path)
    return removed


@dataclass(frozen=True, slots=True)
class UpResult:
    """What ``lab up`` built."""

    name: str
    state_file: str
    server_pid: Optional[int]
    leftovers: tuple[str, ...]  # namespaces of a crashed earlier lab of the same name, removed first
    lab: ClusterLab


def _clear_leftovers(name: str, path: str) -> list[str]:
    """Remove a crashed lab of this name; refuse if a healthy one is up."""
    state = read_state(path)
    if state is None:
        return []
    pid = state.get("server_pid")
    healthy = state.get("ready") and (
        (isinstance(pid, int) and _is_our_server(pid, path)) or (pid is None and not state.get("servers")))
    if healthy and all(os.path.exists(os.path.join(NETNS_DIR, ns)) for ns in state.get("namespaces", [])):
        raise LabError(f"lab {name} is already up; remove it first with: dataplane lab down --name {name}")
    return remove_lab(path)


def _spawn_server(path: str) -> subprocess.Popen:
    """Start the process that keeps the lab's servers running, detached from this one."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-m", "dataplane.labctl", "serve", path],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        start_new_session=True, env=env, close_fds=True,
    )


def _await_ready(proc: subprocess.Popen) -> None:
    """Wait for the server process's "ready" line; LabError with its message otherwise."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], _READY_TIMEOUT)
    line = proc.stdout.readline().decode(errors="replace").strip() if ready else ""
    proc.stdout.close()
    if line != "ready":
        raise LabError(f"the lab's server process did not start: {line or 'no answer'}")


def lab_up(cluster: Cluster, *, name: str = DEFAULT_LAB_NAME, backend: Optional[Mode] = None,
           families: Optional[Sequence[Family]] = None) -> UpResult:
    """Build a lab for ``cluster`` that outlives this process (see the module doc).

    A crashed lab of the same name is removed first; a running one is an error.
    On failure (or SIGTERM/SIGINT) everything built so far is removed again.
    """
    check_name(name)
    require_root()
    path = state_path(name)
    os.makedirs(LABS_DIR, exist_ok=True)
    leftovers = _clear_leftovers(name, path)
    layout = derive_layout(cluster, families or families_in_use(cluster))
    cl = ClusterLab(layout, backend=backend, prefix=name, state_file=path)
    for ns in cl.lab.namespaces:
        if os.path.exists(os.path.join(NETNS_DIR, ns)):
            raise LabError(f"network namespace {ns} exists and is not part of lab {name}; "
                           "choose another --name")
    proc: Optional[subprocess.Popen] = None
    try:
        cl.start(serve=False)
        cl.apply(cluster)
        specs = cl.server_specs()
        update_state(path, lab=name, backend=cl.mode, families=list(layout.families), servers=specs,
                     ready=False, summary=layout_summary(cl))
        if specs:
            proc = _spawn_server(path)
            update_state(path, server_pid=proc.pid)
            _await_ready(proc)
        update_state(path, ready=True)
    except BaseException:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        cl.close()
        raise
    return UpResult(name, path, proc.pid if proc else None, tuple(leftovers), cl)


def lab_down(name: str = DEFAULT_LAB_NAME) -> list[str]:
    """Remove lab ``name`` (from any process); returns the namespaces removed."""
    path = state_path(name)
    require_root()
    if read_state(path) is None:
        raise LabError(f"no lab named {name} is up (no {path})")
    return remove_lab(path)


# =========================================================================== the server process


def _serve(path: str) -> int:
    """Body of ``python -m dataplane.labctl serve STATE``: run the lab's servers until told
    to stop (SIGTERM/SIGINT/SIGHUP) or until the state file stops naming this process."""
    signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # the servers' threads inherit the mask
    servers: list[Server] = []
    try:
        state = read_state(path)
        if state is None:
            raise LabError(f"{path} does not exist")
        ipv6 = os.path.exists("/proc/sys/net/ipv6")
        for spec in state.get("servers", []):
            servers.append(Server(spec["ns"], spec["member"], tcp_ports=spec["tcp"], udp_ports=spec["udp"],
                                  ipv6=ipv6))
    except Exception as e:  # reported to `lab up`, which removes the lab
        for srv in servers:
            srv.close()
        print(f"{type(e).__name__}: {e}", flush=True)
        return 1
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        while signal.sigtimedwait(signals, 1.0) is None:
            try:
                current = read_state(path)
            except LabError:
                current = None
            if current is None or current.get("server_pid") not in (None, os.getpid()):
                break
    finally:
        for srv in servers:
            srv.close()
    return 0


# =========================================================================== output


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, indent: str = "") -> str:
    """Left-aligned columns separated by two spaces (the last column is not padded)."""
    widths = [max(len(str(r[i])) for r in (headers, *rows)) for i in range(len(headers))]
    lines = []
    for r in (headers, *rows):
        cells = [str(c).ljust(w) for c, w in zip(r[:-1], widths)] + [str(r[-1])]
        lines.append(indent + "  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _serves(p: LabPod | LabNode) -> str:
    parts = [f"tcp/{n}" for n in p.tcp_ports] + [f"udp/{n}" for n in p.udp_ports]
    if isinstance(p, LabPod):
        parts += [f"sctp/{n} (captured)" for n in p.sctp_ports]
    return " ".join(parts) or "-"


def layout_summary(cl: ClusterLab) -> dict[str, Any]:
    """The lab as plain data (kept in the state file, printed by ``lab up``)."""
    layout = cl.layout
    rules = {n.name: {fam: len(cl.plans[(n.name, fam)].services) for fam in layout.families
                      if (n.name, fam) in cl.plans} for n in layout.nodes}
    return {
        "nodes": [{"name": n.name, "netns": cl.lab.ns(n.member), "addresses": list(n.addresses),
                   "pod_cidrs": list(n.pod_cidrs), "service_ports": rules[n.name], "serves": _serves(n)}
                  for n in layout.nodes],
        "pods": [{"pod": p.ref, "netns": cl.lab.ns(p.member), "node": p.node, "addresses": list(p.addresses),
                  "serves": _serves(p)} for p in layout.pods],
        "probe_pods": [{"node": p.node, "netns": cl.lab.ns(p.member), "addresses": list(p.addresses)}
                       for p in layout.probes],
        "clients": [{"role": c.role, "netns": cl.lab.ns(c.member), "addresses": list(c.addresses),
                     "via": layout.nodes[0].name} for c in layout.clients],
        "services": _services_summary(cl),
    }


def _services_summary(cl: ClusterLab) -> list[dict[str, Any]]:
    """Each service port once per family: its frontends and endpoints (as every node sees them)."""
    seen: dict[tuple[str, str, int, str], dict[str, Any]] = {}
    for (_node, family), plan in sorted(cl.plans.items()):
        for sp in plan.services:
            seen.setdefault((sp.spn, sp.protocol, sp.port, family), {
                "service": sp.spn, "protocol": sp.protocol, "port": sp.port, "cluster_ip": sp.cluster_ip,
                "node_port": sp.node_port, "external": [*sp.external_ips, *sp.load_balancer_ips],
                "endpoints": [e.address for e in sp.known_endpoints]})
    return list(seen.values())


def render_summary(result: UpResult) -> str:
    """Human summary of a lab that is up."""
    cl = result.lab
    s = layout_summary(cl)
    fams = ", ".join(cl.layout.families)
    out = [f"lab {result.name} is up: {len(s['nodes'])} node(s), {len(s['pods'])} pod(s), "
           f"{len(s['clients'])} clients; {cl.mode} rules, {fams}\n"]
    if result.leftovers:
        out.append(f"(removed {len(result.leftovers)} namespace(s) left by an earlier crashed lab {result.name})\n")
    out.append("\nnodes:\n")
    out.append(format_table(
        ["NODE", "NETNS", "ADDRESSES", "POD CIDRS", "RULES", "SERVES"],
        [[n["name"], n["netns"], ",".join(n["addresses"]), ",".join(n["pod_cidrs"]),
          ", ".join(f"{c} service ports ({f})" for f, c in n["service_ports"].items()) or "none", n["serves"]]
         for n in s["nodes"]], indent="  "))
    out.append("\npods:\n")
    rows = [[p["pod"], p["netns"], p["node"], ",".join(p["addresses"]), p["serves"]] for p in s["pods"]]
    rows += [[f"(probe pod of {p['node']})", p["netns"], p["node"], ",".join(p["addresses"]), "-"]
             for p in s["probe_pods"]]
    out.append(format_table(["POD", "NETNS", "NODE", "ADDRESSES", "SERVES"], rows, indent="  "))
    out.append("\nclients:\n")
    out.append(format_table(
        ["CLIENT", "NETNS", "ADDRESSES", "ROUTES"],
        [[c["role"], c["netns"], ",".join(c["addresses"]), f"default via {c['via']}"] for c in s["clients"]],
        indent="  "))
    if s["services"]:
        out.append("\nservices:\n")
        out.append(format_table(
            ["SERVICE PORT", "CLUSTER IP", "NODE PORT", "EXTERNAL", "ENDPOINTS"],
            [[f"{v['service']} {v['protocol']}/{v['port']}", v["cluster_ip"], str(v["node_port"] or "-"),
              ",".join(v["external"]) or "-", ",".join(v["endpoints"]) or "-"] for v in s["services"]],
            indent="  "))
    pid = f"; reply servers run in process {result.server_pid}" if result.server_pid else ""
    out.append(f"\nstate: {result.state_file}{pid}\n")
    tcp = next((v for v in s["services"] if v["protocol"] == "tcp" and v["endpoints"]), None)
    if tcp is not None:
        probe = s["probe_pods"][0]["netns"]
        out.append(f"try:    ip netns exec {probe} bash -c 'cat </dev/tcp/{tcp['cluster_ip']}/{tcp['port']}'"
                   "   # a reply server answers 'SOURCE DESTINATION POD'\n")
    out.append(f"remove: dataplane lab down --name {result.name}\n")
    return "".join(out)


# =========================================================================== CLI

EXAMPLES = {
    "up": """examples:
  dataplane lab up -f examples/cluster.yaml --allocate --seed 1
  dataplane lab up -f cluster.yaml --backend nftables --ip-family ipv6 --name demo
  ip netns exec lab-client curl -s http://192.0.2.1:30080/     # reply servers answer with what they saw
  dataplane lab down""",
    "down": """examples:
  dataplane lab down
  dataplane lab down --name demo""",
}


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``lab up`` and ``lab down`` on the ``dataplane`` subcommand parser."""
    from .cli import _add_allocate, _add_input

    lab = sub.add_parser("lab", help="build a whole cluster from manifests in network namespaces",
                         description="Build (up) or remove (down) a lab: every Node, endpoint Pod and two "
                                     "external clients in network namespaces, each node with its own rules.")
    lsub = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    p = lsub.add_parser(
        "up", help="build the lab and leave it running",
        description="Build a lab from the manifests: one namespace per Node (its own rules loaded, as kube-proxy "
                    "would on it), one per endpoint Pod with TCP/UDP reply servers on every port the Services "
                    "target, a probe pod per node and two external clients, on a shared underlay. The reply "
                    "servers keep running in a background process; everything is recorded in "
                    f"{LABS_DIR}/NAME.json for `dataplane lab down`. A lab of the same name left by a crash is "
                    "removed first.",
        epilog=EXAMPLES["up"], formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_input(p)
    _add_lab_options(p)
    _add_allocate(p)
    p.add_argument("--name", default=DEFAULT_LAB_NAME, metavar="LAB",
                   help=f"lab name, prefix of its namespaces (default {DEFAULT_LAB_NAME})")
    p.set_defaults(func=cmd_lab_up)
    p = lsub.add_parser("down", help="remove a lab and everything it made",
                        description="Stop the lab's server process and remove its namespaces, rules records "
                                    "and state file; works from any process, also for a lab whose `up` crashed.",
                        epilog=EXAMPLES["down"], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default=DEFAULT_LAB_NAME, metavar="LAB", help=f"lab name (default {DEFAULT_LAB_NAME})")
    p.set_defaults(func=cmd_lab_down)


def _add_lab_options(p: argparse.ArgumentParser) -> None:
    from .cli import _add_external_ip_cidrs

    p.add_argument("--backend", choices=("iptables", "nftables"),
                   help="rule backend (default: the KubeProxyConfiguration's mode, else iptables)")
    p.add_argument("--ip-family", choices=("ipv4", "ipv6"),
                   help="only this IP family (default: every family the Services use)")
    _add_external_ip_cidrs(p)


def load_input(args: argparse.Namespace) -> tuple[Cluster, tuple[Family, ...]]:
    """The cluster the arguments describe (allocated and with derived EndpointSlices, warnings
    printed) and the families to build."""
    from .cli import _allocate, _warn, _with_external_ip_cidrs
    from .controllers.endpointslices import with_derived_slices
    from .parse import load_cluster

    loaded = load_cluster(args.files, stdin=sys.stdin)
    _warn(loaded.warnings)
    cluster = loaded.cluster
    if args.allocate:
        cluster = _allocate(cluster, args).cluster
    cluster = _with_external_ip_cidrs(with_derived_slices(cluster), args)
    families = (args.ip_family,) if args.ip_family else families_in_use(cluster)
    return cluster, families  # type: ignore[return-value]



def _raise_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def cmd_lab_up(args: argparse.Namespace) -> int:
    """``dataplane lab up``: build, print the summary, leave it running."""
    from .cli import _warn

    cluster, families = load_input(args)
    previous = signal.signal(signal.SIGTERM, _raise_exit)  # a killed `up` cleans up after itself
    try:
        result = lab_up(cluster, name=args.name, backend=args.backend, families=families)
    finally:
        signal.signal(signal.SIGTERM, previous)
    _warn(result.lab.layout.warnings)
    _warn(result.lab.warnings)
    sys.stdout.write(render_summary(result))
    return 0


def cmd_lab_down(args: argparse.Namespace) -> int:
    """``dataplane lab down``: remove the lab."""
    removed = lab_down(args.name)
    print(f"lab {args.name} is down: removed {len(removed)} network namespace(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        sys.exit(_serve(sys.argv[2]))
    print("usage: python -m dataplane.labctl serve STATE_FILE (started by `dataplane lab up`)", file=sys.stderr)
    sys.exit(2)
