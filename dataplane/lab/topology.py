"""The declarative shape of a lab: nodes, pods and external clients, and their addresses.

Topology (defaults of :meth:`Topology.simple`; every address exists only inside
the lab's namespaces)::

                         fabric ns: bridge br0 + "gw" 192.0.2.254 / 2001:db8::254
           (underlay 192.0.2.0/24, 2001:db8::/64; blackhole default: a silent dead end)
          +-----------------------+----------------------------+
      eth0 192.0.2.1          eth0 192.0.2.2             eth0 192.0.2.100
      node1 (ip_forward=1)    node2                      client1 (default via node1)
      veth1 10.244.1.1/32 scope link, fe80::1   ...
          |
      eth0 10.244.1.10/32, fd00:10:244:1::10/128   pod1-1 (default via 10.244.1.1 / fe80::1)

* Nodes: underlay address on ``eth0``; default route via the fabric gateway
  (so node-originated traffic to a VIP has a route, as on a real node);
  routes to the other nodes' pod CIDRs via their underlay address; forwarding on.
* Pods: one namespace each with one veth to their node. The node side carries
  the pod CIDR's first address as a ``/32 scope link`` gateway (and ``fe80::1``);
  the node routes the pod's ``/32``/``/128`` to that veth. Because the gateway
  address is link-scoped, MASQUERADE towards a pod picks the node's underlay IP.
* Clients: a namespace on the underlay whose default route points at one node,
  so Service VIPs route to it.
* Every namespace: ``lo`` up, ``rp_filter=0``, ICMP error rate limits off (so a
  REJECT answers every probe), IPv6 DAD off (addresses usable at once).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import UsageError

__all__ = ["FABRIC", "POD_GATEWAY6", "NodeSpec", "PodSpec", "ClientSpec", "Topology"]

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
_BRIDGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
FABRIC = "fabric"
POD_GATEWAY6 = "fe80::1"


def _ip(value: str, version: int, what: str) -> str:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError as e:
        raise UsageError(f"{what}: {e}") from None
    if addr.version != version:
        raise UsageError(f"{what}: {value} is not an IPv{version} address")
    return str(addr)


def _net(value: str, version: int, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(value)
    except ValueError as e:
        raise UsageError(f"{what}: {e}") from None
    if net.version != version:
        raise UsageError(f"{what}: {value} is not an IPv{version} network")
    return net


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    """A node: its underlay address(es) and pod CIDR(s).

    ``pod_bridge`` (opt-in): attach this node's pods to a Linux bridge of that
    name, which carries the pods' gateway addresses, instead of routing each
    pod's own veth (as bridge CNI plugins and kubenet's ``cbr0`` do).
    """

    name: str
    ip: str
    pod_cidr: str
    ip6: Optional[str] = None
    pod_cidr6: Optional[str] = None
    pod_bridge: Optional[str] = None

    @property
    def pod_gateway(self) -> str:
        """The first address of the pod CIDR: the pods' default gateway on this node."""
        return str(ipaddress.ip_network(self.pod_cidr)[1])


@dataclass(frozen=True, slots=True, kw_only=True)
class PodSpec:
    """A pod on ``node`` with an address from the node's pod CIDR(s)."""

    name: str
    node: str
    ip: str
    ip6: Optional[str] = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSpec:
    """An external client on the underlay whose default route goes ``via`` a node."""

    name: str
    ip: str
    via: str
    ip6: Optional[str] = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """Nodes on one underlay L2 segment, pods behind nodes, external clients.

    ``gateway``/``gateway6`` is an address in the fabric namespace that nodes use
    as default route; the fabric does not forward, so it is a dead end (packets
    to a VIP without rules vanish there instead of being refused).
    """

    nodes: tuple[NodeSpec, ...]
    pods: tuple[PodSpec, ...] = ()
    clients: tuple[ClientSpec, ...] = ()
    underlay: str = "192.0.2.0/24"
    underlay6: str = "2001:db8::/64"
    gateway: Optional[str] = "192.0.2.254"
    gateway6: Optional[str] = "2001:db8::254"

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "pods", tuple(self.pods))
        object.__setattr__(self, "clients", tuple(self.clients))
        self.validate()

    @classmethod
    def simple(
        cls, nodes: int = 1, pods_per_node: int = 1, clients: int = 1, *, ipv6: bool = False
    ) -> "Topology":
        """The conventional lab: ``node<i>`` 192.0.2.<i> with pods ``pod<i>-<j>`` at
        10.244.<i>.<9+j> (``fd00:10:244:<i>::<9+j>``) and ``client<k>`` at
        192.0.2.<99+k> (``2001:db8::<99+k>``) routed via ``node1``."""
        if not 1 <= nodes <= 99 or pods_per_node < 0 or pods_per_node > 200 or clients > 100:
            raise UsageError("Topology.simple: unsupported size")
        ns_, ps, cs = [], [], []
        for i in range(1, nodes + 1):
            ns_.append(
                NodeSpec(
                    name=f"node{i}",
                    ip=f"192.0.2.{i}",
                    pod_cidr=f"10.244.{i}.0/24",
                    ip6=f"2001:db8::{i}" if ipv6 else None,
                    pod_cidr6=f"fd00:10:244:{i}::/64" if ipv6 else None,
                )
            )
            for j in range(1, pods_per_node + 1):
                ps.append(
                    PodSpec(
                        name=f"pod{i}-{j}",
                        node=f"node{i}",
                        ip=f"10.244.{i}.{9 + j}",
                        ip6=f"fd00:10:244:{i}::{9 + j}" if ipv6 else None,
                    )
                )
        for k in range(1, clients + 1):
            cs.append(
                ClientSpec(
                    name=f"client{k}",
                    ip=f"192.0.2.{99 + k}",
                    ip6=f"2001:db8::{99 + k}" if ipv6 else None,
                    via="node1",
                )
            )
        return cls(nodes=tuple(ns_), pods=tuple(ps), clients=tuple(cs))


    # ------------------------------------------------------------------ lookups
    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in the topology")

    def pod(self, name: str) -> PodSpec:
        for p in self.pods:
            if p.name == name:
                return p
        raise KeyError(f"no pod {name!r} in the topology")

    def client(self, name: str) -> ClientSpec:
        for c in self.clients:
            if c.name == name:
                return c
        raise KeyError(f"no client {name!r} in the topology")

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`UsageError` for names or addresses that cannot work."""
        if not self.nodes:
            raise UsageError("topology: at least one node is needed")
        ul = _net(self.underlay, 4, "topology.underlay")
        ul6 = _net(self.underlay6, 6, "topology.underlay6")
        names: set[str] = set()
        used: set[str] = set()

        def claim_name(name: str, what: str) -> None:
            if not _NAME.match(name) or name == FABRIC:
                raise UsageError(
                    f"{what} {name!r}: names must be lower-case alphanumerics and '-', "
                    f"at most 40 characters, and not {FABRIC!r}"
                )
            if name in names:
                raise UsageError(f"{what} {name!r}: name used twice")
            names.add(name)

        def claim_ip(value: str, version: int, what: str, within=None) -> str:
            addr = _ip(value, version, what)
            if addr in used:
                raise UsageError(f"{what}: address {addr} used twice")
            if within is not None and ipaddress.ip_address(addr) not in within:
                raise UsageError(f"{what}: {addr} is not in {within}")
            used.add(addr)
            return addr

        if self.gateway:
            claim_ip(self.gateway, 4, "topology.gateway", ul)
        if self.gateway6:
            claim_ip(self.gateway6, 6, "topology.gateway6", ul6)
        cidrs: list[Any] = []
        for n in self.nodes:
            claim_name(n.name, "node")
            if n.pod_bridge is not None and (
                not _BRIDGE_NAME.match(n.pod_bridge) or n.pod_bridge in ("eth0", "lo")
                or re.fullmatch(r"veth\d+", n.pod_bridge)
            ):
                raise UsageError(
                    f"node {n.name}: pod_bridge {n.pod_bridge!r}: 1-15 characters (letters, digits, "
                    "'-', '_', '.'), not eth0, lo or vethN"
                )
            claim_ip(n.ip, 4, f"node {n.name}: ip", ul)
            pc = _net(n.pod_cidr, 4, f"node {n.name}: pod_cidr")
            if pc.prefixlen > 30:
                raise UsageError(f"node {n.name}: pod_cidr {pc} is too small")
            claim_ip(str(pc[1]), 4, f"node {n.name}: pod gateway")
            cidrs.append(pc)
            if n.ip6:
                claim_ip(n.ip6, 6, f"node {n.name}: ip6", ul6)
            if n.pod_cidr6:
                cidrs.append(_net(n.pod_cidr6, 6, f"node {n.name}: pod_cidr6"))
        for i, a in enumerate(cidrs):
            for b in cidrs[i + 1 :]:
                if a.version == b.version and a.overlaps(b):
                    raise UsageError(f"topology: pod CIDRs {a} and {b} overlap")
        node_names = {n.name for n in self.nodes}
        for p in self.pods:
            claim_name(p.name, "pod")
            if p.node not in node_names:
                raise UsageError(f"pod {p.name}: unknown node {p.node!r}")
            node = self.node(p.node)
            claim_ip(p.ip, 4, f"pod {p.name}: ip", ipaddress.ip_network(node.pod_cidr))
            if p.ip6:
                if not node.pod_cidr6:
                    raise UsageError(f"pod {p.name}: node {node.name} has no pod_cidr6")
                claim_ip(p.ip6, 6, f"pod {p.name}: ip6", ipaddress.ip_network(node.pod_cidr6))
        for c in self.clients:
            claim_name(c.name, "client")
            if c.via not in node_names:
                raise UsageError(f"client {c.name}: unknown node {c.via!r}")
            claim_ip(c.ip, 4, f"client {c.name}: ip", ul)
            if c.ip6:
                if not self.node(c.via).ip6:
                    raise UsageError(f"client {c.name}: node {c.via} has no ip6 to route via")
                claim_ip(c.ip6, 6, f"client {c.name}: ip6", ul6)
