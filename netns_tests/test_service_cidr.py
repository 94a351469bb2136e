"""Issue 15 item 4, proven with packets in both backends: ServiceCIDR objects and kube-proxy's
nftables-only ClusterIP hygiene (anchors §5.2, chain ``cluster-ips-check``).

Topology (``Topology.simple(nodes=1, pods_per_node=1, clients=1)``): node1 (192.0.2.1) runs the
rules; pod1-1 (10.244.1.10) serves TCP 8080 and is the endpoint of Service shop/web (ClusterIP
10.96.5.10, port 80 -> 8080); client1 (192.0.2.100) routes via node1. The ServiceCIDR
``kubernetes`` is 10.96.0.0/16.

So that "not dropped by our rules" is visible as an answer, pod1-1 also owns 10.96.5.77 (an
address of the service CIDR that is no ClusterIP) and 10.96.5.10, and node1 routes both to it:
whatever our rules let through reaches pod1-1's server on 8080.

* nftables mode: a new connection to 10.96.5.77 is dropped (no answer: timeout), from a client
  (forward hook) and from node1 itself (output hook); the ClusterIP on a port it does not
  serve (8080) is rejected (refused); the ClusterIP's port 80 still works.
* iptables mode (``OnServiceCIDRsChanged`` is a no-op): the same packets reach pod1-1.
"""
from __future__ import annotations

import pytest

from dataplane.lab import Lab, Topology
from svc_lab import BACKENDS, assert_reached, compile_and_apply, nodes_yaml, proxy_config_yaml, write_manifests

pytestmark = pytest.mark.netns

UNALLOCATED = "10.96.5.77"
CLUSTER_IP = "10.96.5.10"

MANIFESTS = (
    """
    apiVersion: networking.k8s.io/v1
    kind: ServiceCIDR
    metadata: {name: kubernetes}
    spec: {cidrs: [10.96.0.0/16]}
    status:
      conditions: [{type: Ready, status: "True", reason: "", message: "", lastTransitionTime: "2025-01-01T00:00:00Z"}]
    """,
    f"""
    apiVersion: v1
    kind: Service
    metadata: {{name: web, namespace: shop}}
    spec:
      clusterIP: {CLUSTER_IP}
      ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]
    """,
    """
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata:
      name: web-1
      namespace: shop
      labels: {kubernetes.io/service-name: web}
    addressType: IPv4
    ports: [{name: http, port: 8080, protocol: TCP}]
    endpoints: [{addresses: [10.244.1.10], nodeName: node1}]
    """,
)


@pytest.fixture(params=BACKENDS)
def lab_backend(request, make_lab, tmp_path) -> tuple[Lab, str]:
    backend = request.param
    lab = make_lab(Topology.simple(nodes=1, pods_per_node=1, clients=1))
    lab.serve("pod1-1", tcp_ports=(8080,))
    for ip in (UNALLOCATED, CLUSTER_IP):
        lab.run("pod1-1", ["ip", "-4", "addr", "add", f"{ip}/32", "dev", "eth0"])
        lab.run("node1", ["ip", "-4", "route", "add", f"{ip}/32", "dev", lab.pod_ifname("pod1-1")])
    manifest = write_manifests(tmp_path, proxy_config_yaml(), nodes_yaml(1), *MANIFESTS)
    result = compile_and_apply(lab, manifest, backend)
    assert result.warnings == (), result.warnings
    assert result.plan.service_cidrs == (("10.96.0.0/16",) if backend == "nftables" else ())
    return lab, backend


def test_cluster_ip_port_works(lab_backend):
    lab, _ = lab_backend
    for ns in ("client1", "node1"):
        r = lab.tcp_probe(ns, CLUSTER_IP, 80)
        assert_reached(r, pods={"pod1-1"}, dst_port=8080, vip=(CLUSTER_IP, 80))


@pytest.mark.parametrize("sender", ["client1", "node1"])
def test_unallocated_service_ip(lab_backend, sender):
    """nftables drops it (forwarded and node-originated); iptables lets it through."""
    lab, backend = lab_backend
    r = lab.tcp_probe(sender, UNALLOCATED, 8080, timeout=0.5)
    if backend == "nftables":
        assert r.outcome == "timeout", r
    else:
        assert_reached(r, pods={"pod1-1"}, dst_port=8080, vip=(UNALLOCATED, 8080))
        assert r.server_saw_dst == (UNALLOCATED, 8080), r


@pytest.mark.parametrize("sender", ["client1", "node1"])
def test_cluster_ip_on_a_port_it_does_not_serve(lab_backend, sender):
    """nftables rejects it; iptables lets it through (here to pod1-1, which owns the address)."""
    lab, backend = lab_backend
    r = lab.tcp_probe(sender, CLUSTER_IP, 8080, timeout=0.5)
    if backend == "nftables":
        assert r.outcome == "refused", r
    else:
        assert_reached(r, pods={"pod1-1"}, dst_port=8080, vip=(CLUSTER_IP, 8080))
