"""The addresses a lab layout picks (dataplane.lab.layout.derive_layout), pinned.

The expected choices below were computed by the address allocator before it moved to
netaddr IP sets (it scanned candidate addresses one by one); the IP-set allocator must
choose exactly the same: same pools and networks in the same order, hosts from the same end.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from dataplane.controllers.allocation import allocate_cluster
from dataplane.controllers.endpointslices import with_derived_slices
from dataplane.input.cluster import load_cluster
from dataplane.lab.addresses import Space, free_host, free_subnet
from dataplane.lab.layout import derive_layout, families_in_use
from dataplane.model import (
    Cluster,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    LoadBalancerIngress,
    Node,
    NodeAddress,
    Service,
    ServicePort,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cluster.yaml"


def node(name: str, *ips: str, cidrs: tuple[str, ...] = ()) -> Node:
    return Node(name=name, addresses=tuple(NodeAddress("InternalIP", ip) for ip in ips), pod_cidrs=tuple(cidrs))


def lb(name: str, cip: str, ingress: str, ranges: tuple[str, ...], fam: str = "IPv4") -> Service:
    return Service("default", name, type="LoadBalancer", cluster_ips=(cip,), ip_families=(fam,),
                   ports=(ServicePort(80, name="http", target_port=8080, node_port=30080),),
                   load_balancer_ingress=(LoadBalancerIngress(ip=ingress),), load_balancer_source_ranges=ranges)


def ep_slice(svc: str, fam: str, *eps: tuple[str, str, str]) -> EndpointSlice:
    """A slice of ``svc`` with endpoints (address, node, pod name)."""
    return EndpointSlice("default", f"{svc}-x", svc, fam,
                         tuple(Endpoint((ip,), node_name=n, target_ref_name=ref) for ip, n, ref in eps),
                         (EndpointPort(8080, name="http"),))


def example() -> Cluster:
    c = load_cluster([str(EXAMPLE)]).cluster
    return with_derived_slices(allocate_cluster(c, seed=1).cluster)


CASES = {
    "example": example,
    # nodes without addresses or podCIDRs: underlay and pod CIDRs come from the pools, around an
    # externalIP in the first pool network and a podCIDR holding the second
    "pools": lambda: Cluster(
        nodes=(node("a"), node("b", cidrs=("198.18.1.0/24",)), node("c")),
        services=(Service("default", "web", cluster_ips=("10.96.0.10",), external_ips=("198.18.0.5",),
                          ports=(ServicePort(80, name="http", target_port=8080),)),)),
    # source ranges: one inside the underlay (allowed source from its end), one covering the
    # whole underlay (the denied client comes from a pool)
    "ranges": lambda: Cluster(
        nodes=(node("a", "192.0.2.1"), node("b", "192.0.2.2", cidrs=("10.244.2.0/24",))),
        services=(lb("in", "10.96.0.20", "203.0.113.7", ("192.0.2.128/25",)),
                  lb("all", "10.96.0.21", "203.0.113.8", ("192.0.2.0/24", "198.51.100.0/24"))),
        endpoint_slices=(ep_slice("in", "IPv4", ("10.244.1.9", "a", "in-0"), ("10.244.2.9", "b", "in-1")),)),
    # dual stack: IPv6 pods get an IPv4 address for the plumbing, IPv6 ranges outside the underlay
    "dual": lambda: Cluster(
        nodes=(node("a", "192.0.2.1", "2001:db8::1", cidrs=("10.244.1.0/24", "fd00:1::/64")), node("b")),
        services=(lb("v6", "fd00:96::1", "2001:db8:5::99", ("2001:db8:f::/64",), "IPv6"),
                  lb("v4", "10.96.0.1", "203.0.113.9", ("0.0.0.0/0",))),
        endpoint_slices=(ep_slice("v6", "IPv6", ("fd00:1::10", "a", "v6-0"), ("fd00:1::11", "a", "v6-1")),)),
}


def summary(layout) -> dict:
    """Every address and network the layout chose."""
    t = layout.topology
    return {
        "underlay": (t.underlay, t.gateway, t.underlay6, t.gateway6),
        "nodes": [(n.member, n.addresses, n.pod_cidrs) for n in layout.nodes],
        "pods": [(p.member, p.addresses) for p in (*layout.pods, *layout.probes)],
        "clients": [(c.member, c.addresses, c.aliases) for c in layout.clients],
    }


EXPECTED = {
    "example": {
        "underlay": ("192.0.2.0/24", "192.0.2.254", "2001:db8::/64", None),
        "nodes": [("node-a", ("192.0.2.1",), ("10.244.1.0/24",)), ("node-b", ("192.0.2.2",), ("10.244.2.0/24",))],
        "pods": [("web-5d9c7b6f4-x2kqp", ("10.244.1.10",)), ("web-5d9c7b6f4-7hmzt", ("10.244.2.10",)),
                 ("coredns-76f75df574-pq8vd", ("10.244.2.53",)), ("diameter-0", ("10.244.1.11",)),
                 ("node-a-probe", ("10.244.1.254",)), ("node-b-probe", ("10.244.2.254",))],
        "clients": [("client", ("192.0.2.253",), ()), ("client-denied", ("192.0.2.252",), ())],
    },
    "pools": {
        "underlay": ("198.18.4.0/24", "198.18.4.254", "2001:db8::/64", None),
        "nodes": [("a", ("198.18.4.253",), ("198.18.2.0/24",)), ("b", ("198.18.4.252",), ("198.18.1.0/24",)),
                  ("c", ("198.18.4.251",), ("198.18.3.0/24",))],
        "pods": [("a-probe", ("198.18.2.254",)), ("b-probe", ("198.18.1.254",)), ("c-probe", ("198.18.3.254",))],
        "clients": [("client", ("198.18.4.250",), ()), ("client-denied", ("198.18.4.249",), ())],
    },
    "ranges": {
        "underlay": ("192.0.2.0/24", "192.0.2.254", "2001:db8::/64", None),
        "nodes": [("a", ("192.0.2.1",), ("10.244.1.0/24",)), ("b", ("192.0.2.2",), ("10.244.2.0/24",))],
        "pods": [("in-0", ("10.244.1.9",)), ("in-1", ("10.244.2.9",)),
                 ("a-probe", ("10.244.1.254",)), ("b-probe", ("10.244.2.254",))],
        "clients": [("client", ("192.0.2.253",), ()),
                    ("client-denied", ("192.0.2.252", "192.0.2.127", "198.18.0.1"), ("192.0.2.127", "198.18.0.1"))],
    },
    "dual": {
        "underlay": ("192.0.2.0/24", "192.0.2.254", "2001:db8::/64", "2001:db8::fffe"),
        "nodes": [("a", ("192.0.2.1", "2001:db8::1"), ("10.244.1.0/24", "fd00:1::/64")),
                  ("b", ("192.0.2.253", "2001:db8::fffd"), ("198.18.0.0/24", "fd00:dada::/64"))],
        "pods": [("v6-0", ("10.244.1.2", "fd00:1::10")), ("v6-1", ("10.244.1.3", "fd00:1::11")),
                 ("a-probe", ("10.244.1.254", "fd00:1::fffe")), ("b-probe", ("198.18.0.254", "fd00:dada::fffe"))],
        "clients": [("client", ("192.0.2.252", "2001:db8::fffc", "2001:db8:f::1"), ("2001:db8:f::1",)),
                    ("client-denied", ("192.0.2.251", "2001:db8::fffb"), ())],
    },
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_layout_chooses_what_the_scanning_allocator_chose(name):
    cluster = CASES[name]()
    assert summary(derive_layout(cluster, families_in_use(cluster))) == EXPECTED[name]


def net(text: str):
    return ipaddress.ip_network(text)


def test_free_host_takes_from_either_end_around_used_reserved_and_avoided_addresses():
    space = Space()
    space.use([ipaddress.ip_address("192.0.2.254"), ipaddress.ip_address("192.0.2.1")])
    space.nets.append(net("192.0.2.240/29"))  # reserved for something else: 192.0.2.240-247
    underlay = net("192.0.2.0/24")
    assert str(free_host(underlay, space)) == "192.0.2.253"
    assert str(free_host(underlay, space, from_end=False)) == "192.0.2.2"
    assert str(free_host(underlay, space, avoid=[net("192.0.2.248/29")])) == "192.0.2.239"
    assert free_host(net("192.0.2.0/31"), space) is None  # no host addresses
    # a reserved network is usable from inside itself
    assert str(free_host(net("192.0.2.240/29"), space)) == "192.0.2.246"
    # "the end" of an IPv6 /64 is the end of its first 2^16 addresses
    assert str(free_host(net("fd00:1::/64"), space)) == "fd00:1::fffe"
    # the special ranges are never handed out
    assert free_host(net("169.254.1.0/24"), space) is None


def test_free_subnet_skips_reserved_and_used_networks_in_pool_order():
    space = Space()
    space.nets.append(net("198.18.0.0/23"))
    space.use([ipaddress.ip_address("198.18.2.7")])
    assert str(free_subnet(4, space)) == "198.18.3.0/24"
    assert str(free_subnet(4, space)) == "198.18.4.0/24"  # now reserved by the first call
    space.nets.append(net("198.18.0.0/15"))  # the first pool is full: the second one
    assert str(free_subnet(4, space)) == "100.64.0.0/24"
    space.nets.append(net("fd00:dada::/49"))
    assert str(free_subnet(6, space)) == "fd00:dada:0:8000::/64"
