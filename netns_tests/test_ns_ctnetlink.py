"""Conntrack over netlink (dataplane.runtime.ctnetlink), proven against conntrack-tools as a witness.

Real UDP, TCP and crafted SCTP flows through a node's DNAT rules fill its conntrack
table; a proxier sync that removes an endpoint deletes that endpoint's UDP and SCTP
entries over ctnetlink. ``conntrack -L -o xml`` (an independent reader) shows that
exactly those entries went: the same Service's TCP flows and every flow of another
Service survive.
"""
from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import pytest

from dataplane.runtime import ctnetlink
from dataplane.runtime.conntrack import ConntrackDelete
from dataplane.lab import Lab, Topology
from dataplane.model import (
    Cluster,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Node,
    NodeAddress,
    ProxyConfig,
    Service,
    ServicePort,
)
from dataplane.runtime.proxier import NetnsRunner, Proxier
from svc_lab import FAMILIES, client_ip, node_ip, pod_ip

pytestmark = pytest.mark.netns

PORTS = (ServicePort(53, "UDP", "dns", 5353), ServicePort(3868, "SCTP", "diameter", 3869),
         ServicePort(80, "TCP", "http", 8080))
NODE_PORTS = {"a": {"UDP": 30053, "SCTP": 31868, "TCP": 30080}, "b": {"UDP": 30054, "SCTP": 31869, "TCP": 30081}}

Flow = tuple[str, str, str, int, int, str, int]  # proto, orig src, dst, sport, dport, reply src, sport


def vip(name: str, family: str) -> str:
    last = {"a": 53, "b": 54}[name]
    return f"fd00:10:96::{last}" if family == "ipv6" else f"10.96.0.{last}"


def cluster(family: str, endpoints: dict[str, str]) -> Cluster:
    """Services a and b (UDP 53, SCTP 3868, TCP 80, NodePorts) on ``endpoints`` (service -> pod)."""
    services, slices = [], []
    for name in ("a", "b"):
        ports = tuple(ServicePort(p.port, p.protocol, p.name, p.target_port, NODE_PORTS[name][p.protocol])
                      for p in PORTS)
        services.append(Service("default", name, type="NodePort", cluster_ips=(vip(name, family),), ports=ports,
                                ip_families=("IPv6" if family == "ipv6" else "IPv4",)))
        pod = endpoints.get(name)
        eps = (Endpoint((pod_ip(pod, family),), node_name="node1"),) if pod else ()
        slices.append(EndpointSlice("default", f"{name}-1", name, "IPv6" if family == "ipv6" else "IPv4", eps,
                                    tuple(EndpointPort(p.target_port, p.protocol, p.name) for p in PORTS)))
    node = Node("node1", (NodeAddress("InternalIP", node_ip(1, "ipv4")), NodeAddress("InternalIP", node_ip(1, "ipv6"))))
    return Cluster(services=tuple(services), endpoint_slices=tuple(slices), nodes=(node,),
                   proxy_config=ProxyConfig(cluster_cidrs=("10.244.0.0/16", "fd00:10:244::/48")))


def witness(lab: Lab, ns: str, family: str) -> set[Flow]:
    """The node's conntrack table as conntrack-tools reads it (``conntrack -L -o xml``)."""
    out = lab.run(ns, ["conntrack", "-L", "-f", family, "-o", "xml"]).stdout
    flows: set[Flow] = set()
    for flow in ET.fromstring(out).iter("flow") if out.strip() else ():  # an empty table prints nothing
        tuples = {}
        for meta in flow.iter("meta"):
            if meta.get("direction") in ("original", "reply"):
                l3, l4 = meta.find("layer3"), meta.find("layer4")
                tuples[meta.get("direction")] = (l4.get("protoname"), l3.findtext("src"), l3.findtext("dst"),
                                                 int(l4.findtext("sport") or 0), int(l4.findtext("dport") or 0))
        (proto, src, dst, sport, dport), reply = tuples["original"], tuples["reply"]
        flows.add((proto, src, dst, sport, dport, reply[1], reply[3]))
    return flows


def as_flow(e) -> Flow:
    return (e.protocol, e.orig.src, e.orig.dst, e.orig.sport, e.orig.dport, e.reply.src, e.reply.sport)


@pytest.mark.parametrize("family", FAMILIES)
def test_stale_udp_and_sctp_entries_are_deleted_over_netlink_and_nothing_else(make_lab, family):
    lab = make_lab(Topology.simple(nodes=1, pods_per_node=2, clients=1, ipv6=family == "ipv6"))
    node, client = lab.ns("node1"), client_ip(1, family)
    # an SCTP INIT nobody answers stays in COOKIE_WAIT, which times out after 3 s by default
    lab.set_sysctls("node1", {"net.netfilter.nf_conntrack_sctp_timeout_cookie_wait": "120"})
    for pod in ("pod1-1", "pod1-2"):
        lab.serve(pod, tcp_ports=[8080], udp_ports=[5353])
    proxier = Proxier("node1", mode="nftables", family=family, cluster=cluster(family, {"a": "pod1-1", "b": "pod1-2"}),
                      runner=NetnsRunner(node))
    assert proxier.sync().kind == "full"

    for name in ("a", "b"):
        for dst, ports in ((vip(name, family), {p.protocol: p.port for p in PORTS}),
                           (node_ip(1, family), NODE_PORTS[name])):
            assert lab.udp_probe("client1", dst, ports["UDP"]).ok
            assert lab.tcp_probe("client1", dst, ports["TCP"]).ok
            seen = lab.sctp_probe("client1", client, dst, ports["SCTP"], capture=("pod1-1" if name == "a" else "pod1-2",
                                                                                 "eth0"))
            assert seen is not None, f"SCTP INIT to {dst} never arrived"

    before = witness(lab, node, family)
    listed = ctnetlink.list_entries(node, family)
    assert {as_flow(e) for e in listed} == before  # netlink and conntrack-tools read the same table
    assert all(e.dst_nat and e.family == family for e in listed if e.protocol in ("udp", "sctp"))
    pod_a, pod_b = pod_ip("pod1-1", family), pod_ip("pod1-2", family)
    stale = {f for f in before if f[0] in ("udp", "sctp") and f[5] == pod_a}
    assert len(stale) == 4  # UDP and SCTP, to the ClusterIP and to the NodePort

    # a's endpoint moves to pod1-2: the sync deletes a's UDP and SCTP entries DNATed to pod1-1
    proxier.set_endpoint_slice(cluster(family, {"a": "pod1-2", "b": "pod1-2"}).endpoint_slices[0])
    result = proxier.sync()
    assert {f.protocol for f in result.conntrack} == {"udp", "sctp"}
    after = witness(lab, node, family)
    assert after == before - stale
    assert any(f[0] == "tcp" and f[5] == pod_a for f in after)  # TCP flows are left alone

    # also from inside a running event loop (pyroute2's asyncio core): b's UDP NodePort entry only
    only = ConntrackDelete(family, "udp", orig_port_dst=NODE_PORTS["b"]["UDP"], dst_nat=pod_b)

    async def inside_a_loop():
        return ctnetlink.delete_matching(node, [only])

    deleted = asyncio.run(inside_a_loop())
    [gone] = [f for f in after if f[0] == "udp" and f[4] == NODE_PORTS["b"]["UDP"]]
    assert [as_flow(e) for e in deleted] == [gone]
    assert witness(lab, node, family) == after - {gone}
    assert ctnetlink.delete_matching(node, [only]) == []  # nothing left to match

    ctnetlink.flush(node)
    assert witness(lab, node, "ipv4") == witness(lab, node, "ipv6") == set()
