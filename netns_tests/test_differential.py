"""Issue 5, part 2: differential testing of the tracer against the kernel (and both against the plan).

Hypothesis generates small random clusters -- 1 or 2 nodes, 1 to 4 Services of type ClusterIP,
NodePort or LoadBalancer (with or without externalIPs, load-balancer source ranges and session
affinity), external and internal traffic policies, endpoints that are ready, serving and
terminating, or neither, TCP, UDP and SCTP ports, IPv4, IPv6 and dual-stack, and proxy settings
(masqueradeAll, local-traffic detection by cluster CIDR, node CIDR, interface name or not at
all, nodePortAddresses) -- and for each one ``dataplane verify``'s machinery sends every flow
(ClusterIP from a pod and from the node, NodePort, externalIPs and load-balancer IPs from
allowed and denied sources, on every node) and requires the kernel, :func:`dataplane.trace.trace`
on the rules read back from the kernel, and the plan to agree flow by flow.

One lab is built per test function (two nodes with two pods each, dual-stack; every pod serves
TCP and UDP on the two target ports the generated Services use; SCTP is captured) and each
example only reloads the nodes' rules (and empties their conntrack tables and affinity
memories), so an example costs well under a second.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.lab import ClusterLab, Layout, derive_layout
from dataplane.model import (
    Cluster,
    ContainerPort,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    LoadBalancerIngress,
    Node,
    NodeAddress,
    Pod,
    ProxyConfig,
    Service,
    ServicePort,
)
from dataplane.verify import Report, verify_lab
from svc_lab import BACKENDS

pytestmark = pytest.mark.netns

TARGET_PORTS = (8080, 8081)
CLUSTER_CIDRS = ("10.244.0.0/16", "fd00:10:244::/48")
NODES = tuple(
    Node(name=f"node{i}",
         addresses=(NodeAddress("InternalIP", f"192.0.2.{i}"), NodeAddress("InternalIP", f"2001:db8::{i}")),
         pod_cidrs=(f"10.244.{i}.0/24", f"fd00:10:244:{i}::/64"))
    for i in (1, 2)
)
PODS = tuple(
    Pod(namespace="default", name=f"pod{i}-{j}", node_name=f"node{i}",
        pod_ips=(f"10.244.{i}.{9 + j}", f"fd00:10:244:{i}::{9 + j}"), ready=True,
        container_ports=tuple(ContainerPort(p, proto) for p in TARGET_PORTS for proto in ("TCP", "UDP")))
    for i in (1, 2) for j in (1, 2)
)
CONDITIONS = {
    "ready": EndpointConditions(ready=True, serving=True, terminating=False),
    "serving-terminating": EndpointConditions(ready=False, serving=True, terminating=True),
    "terminating": EndpointConditions(ready=False, serving=False, terminating=True),
    "not-ready": EndpointConditions(ready=False, serving=False, terminating=False),
}
FAMILY_ADDRESS = {"IPv4": 0, "IPv6": 1}


@dataclass(frozen=True)
class PortSpec:
    protocol: str
    target: int


@dataclass(frozen=True)
class ServiceSpec:
    type: str
    families: tuple[str, ...]
    ports: tuple[PortSpec, ...]
    external_ip: bool
    source_ranges: bool
    etp: str
    itp: str
    affinity: bool
    endpoints: tuple[tuple[str, str], ...]  # (pod name, condition)


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int
    masquerade_all: bool
    detect_local: str  # detectLocalMode, "none" for ClusterCIDR without a clusterCIDR
    node_port_addresses: tuple[str, ...]
    services: tuple[ServiceSpec, ...]


@st.composite
def service_specs(draw, nodes: int) -> ServiceSpec:
    svc_type = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
    families = draw(st.sampled_from([("IPv4",), ("IPv6",), ("IPv4", "IPv6"), ("IPv6", "IPv4")]))
    ports = tuple(draw(st.lists(st.builds(PortSpec, st.sampled_from(["TCP", "UDP", "SCTP"]), st.sampled_from(TARGET_PORTS)),
                                min_size=1, max_size=2)))
    external_ip = draw(st.booleans())
    external = svc_type != "ClusterIP" or external_ip
    pods = [p.name for p in PODS if int(p.node_name[-1]) <= nodes]
    endpoints = tuple(draw(st.lists(st.tuples(st.sampled_from(pods), st.sampled_from(sorted(CONDITIONS))),
                                    max_size=4, unique_by=lambda e: e[0])))
    return ServiceSpec(
        type=svc_type, families=families, ports=ports, external_ip=external_ip,
        source_ranges=svc_type == "LoadBalancer" and draw(st.booleans()),
        etp=draw(st.sampled_from(["Cluster", "Local"])) if external else "Cluster",
        itp=draw(st.sampled_from(["Cluster", "Local"])),
        affinity=draw(st.booleans()),
        endpoints=endpoints,
    )


@st.composite
def cluster_specs(draw) -> ClusterSpec:
    nodes = draw(st.integers(1, 2))
    services = tuple(draw(st.lists(service_specs(nodes), min_size=1, max_size=4)))
    return ClusterSpec(
        nodes=nodes, masquerade_all=draw(st.booleans()),
        detect_local=draw(st.sampled_from(["ClusterCIDR", "NodeCIDR", "InterfaceNamePrefix", "none"])),
        node_port_addresses=draw(st.sampled_from([(), ("primary",), ("192.0.2.1/32", "2001:db8::2/128")])),
        services=services)


def build_cluster(spec: ClusterSpec, layout: Layout) -> Cluster:
    """The cluster a spec describes. Load-balancer source ranges are the allowed client's own
    addresses, so the lab's clients need no extra addresses."""
    allowed = layout.client("allowed")
    ranges = (f"{allowed.sources('ipv4')[0]}/32", f"{allowed.sources('ipv6')[0]}/128")
    pods = {p.name: p for p in PODS}
    services, slices = [], []
    for i, s in enumerate(spec.services):
        idx = [FAMILY_ADDRESS[f] for f in s.families]
        name = f"svc{i}"
        ports = tuple(
            ServicePort(port=80 + k, protocol=p.protocol, name=f"p{k}", target_port=p.target,  # type: ignore[arg-type]
                        node_port=30000 + 10 * i + k if s.type != "ClusterIP" else None)
            for k, p in enumerate(s.ports)
        )
        services.append(Service(
            namespace="default", name=name, type=s.type,
            cluster_ips=tuple((f"10.96.0.{10 + i}", f"fd00:96::{10 + i}")[x] for x in idx),
            ip_families=s.families,  # type: ignore[arg-type]
            ip_family_policy="RequireDualStack" if len(s.families) == 2 else "SingleStack",
            ports=ports,
            external_ips=tuple((f"198.51.100.{10 + i}", f"2001:db8:2::{10 + i}")[x] for x in idx)
            if s.external_ip else (),
            load_balancer_ingress=tuple(LoadBalancerIngress(ip=(f"203.0.113.{10 + i}", f"2001:db8:3::{10 + i}")[x])
                                        for x in idx) if s.type == "LoadBalancer" else (),
            load_balancer_source_ranges=ranges if s.source_ranges else (),
            external_traffic_policy=s.etp, internal_traffic_policy=s.itp,
            health_check_node_port=32000 + i if s.type == "LoadBalancer" and s.etp == "Local" else None,
            session_affinity="ClientIP" if s.affinity else "None",
        ))
        for family in s.families:
            x = FAMILY_ADDRESS[family]
            slices.append(EndpointSlice(
                namespace="default", name=f"{name}-{family.lower()}", service_name=name, address_type=family,
                endpoints=tuple(Endpoint(addresses=(pods[pod].pod_ips[x],), conditions=CONDITIONS[cond],
                                         node_name=pods[pod].node_name, target_ref_name=pod)
                                for pod, cond in s.endpoints),
                ports=tuple(EndpointPort(port=p.target, protocol=p.protocol, name=f"p{k}")  # type: ignore[arg-type]
                            for k, p in enumerate(s.ports)),
            ))
    config = ProxyConfig(
        cluster_cidrs=() if spec.detect_local == "none" else CLUSTER_CIDRS,
        detect_local_mode="ClusterCIDR" if spec.detect_local == "none" else spec.detect_local,
        interface_name_prefix="veth",  # the node side of the lab's pod links
        node_port_addresses=spec.node_port_addresses,
        iptables_masquerade_all=spec.masquerade_all, nftables_masquerade_all=spec.masquerade_all)
    return Cluster(services=tuple(services), endpoint_slices=tuple(slices), nodes=NODES[:spec.nodes],
                   pods=PODS, proxy_config=config)


@pytest.fixture
def diff_lab() -> Iterator[ClusterLab]:
    """One dual-stack lab (two nodes, four pods) for all the examples of a test function."""
    skeleton = Cluster(nodes=NODES, pods=PODS, proxy_config=ProxyConfig(cluster_cidrs=CLUSTER_CIDRS))
    cl = ClusterLab(derive_layout(skeleton, ("ipv4", "ipv6")), prefix="d" + os.urandom(4).hex())
    cl.start()
    try:
        yield cl
    finally:
        cl.close()


def test_the_skeleton_lab_matches_the_generated_clusters():
    layout = derive_layout(Cluster(nodes=NODES, pods=PODS, proxy_config=ProxyConfig(cluster_cidrs=CLUSTER_CIDRS)),
                           ("ipv4", "ipv6"))
    assert {p.ref: p.addresses for p in layout.pods} == {f"default/{p.name}": p.pod_ips for p in PODS}
    assert all(p.tcp_ports == TARGET_PORTS and p.udp_ports == TARGET_PORTS for p in layout.pods)
    assert [n.addresses for n in layout.nodes] == [("192.0.2.1", "2001:db8::1"), ("192.0.2.2", "2001:db8::2")]


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=cluster_specs())
def test_kernel_tracer_and_plan_agree_flow_by_flow(diff_lab, backend, spec):
    diff_lab.backend = backend
    cluster = build_cluster(spec, diff_lab.layout)
    diff_lab.apply(cluster)
    assert diff_lab.mode == backend
    rows = verify_lab(diff_lab, timeout=0.3)
    # every service port gets a ClusterIP flow from a pod and from the node on every node
    ports = sum(len(s.ports) * len(s.families) for s in spec.services)
    assert sum(r.flow.frontend == "clusterIP" for r in rows) == 2 * ports * spec.nodes
    bad = tuple(r for r in rows if not r.ok)
    report = Report(bad, backend, ("ipv4", "ipv6"), spec.nodes, 0.0)
    assert not bad, f"{len(bad)} of {len(rows)} flows disagree for {spec}:\n{report.render()}"
