"""Issue 2, proven with packets for both backends: ClusterIP and NodePort Services over TCP,
UDP and SCTP, multi-port Services, several slices, balancing, masquerade, hairpin, REJECT.

Topology: node1 (192.0.2.1, the node under test) and node2 (192.0.2.2) route the pod CIDRs
10.244.1.0/24 and 10.244.2.0/24; client1 (192.0.2.100) is outside the cluster CIDR.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from dataplane.lab import Topology
from dataplane.netns import cleanup, read_back
from svc_lab import (
    BACKENDS,
    assert_reached,
    compile_and_apply,
    nodes_yaml,
    proxy_config_yaml,
    spread,
    write_manifests,
)

pytestmark = pytest.mark.netns

SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.80
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}
  - {name: metrics, port: 9090, protocol: TCP, targetPort: 9091, nodePort: 30090}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: metrics, port: 9091, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node1}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-2, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: metrics, port: 9091, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.10], nodeName: node2}
- {addresses: [10.244.1.11], nodeName: node1, conditions: {ready: false}}
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 5353, nodePort: 30053}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: UDP}, {name: dns-tcp, port: 5353, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.10], nodeName: node2}
---
apiVersion: v1
kind: Service
metadata: {name: self, namespace: shop}
spec:
  clusterIP: 10.96.0.81
  ports: [{port: 8000, protocol: TCP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: self-1, namespace: shop, labels: {kubernetes.io/service-name: self}}
addressType: IPv4
ports: [{port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node1}
---
apiVersion: v1
kind: Service
metadata: {name: diameter, namespace: telco}
spec:
  type: NodePort
  clusterIP: 10.96.0.38
  ports: [{name: sctp, port: 3868, protocol: SCTP, targetPort: 3869, nodePort: 31868}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: diameter-1, namespace: telco, labels: {kubernetes.io/service-name: diameter}}
addressType: IPv4
ports: [{name: sctp, port: 3869, protocol: SCTP}]
endpoints:
- {addresses: [10.244.1.11], nodeName: node1}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.44
  ports:
  - {name: https, port: 443, protocol: TCP, targetPort: 8443, nodePort: 30443}
  - {name: udp, port: 4000, protocol: UDP, targetPort: 4000, nodePort: 30400}
"""

WEB = ("10.96.0.80", 80)
NODE1 = "192.0.2.1"
CLIENT = "192.0.2.100"


@pytest.fixture(params=BACKENDS)
def cluster(request, make_lab, tmp_path):
    """The lab with node1's rules applied for one backend, and pod servers running."""
    lab = make_lab(Topology.simple(nodes=2, pods_per_node=2, clients=1))
    for pod in ("pod1-1", "pod1-2", "pod2-1", "pod2-2"):
        lab.serve(pod, tcp_ports=(8080, 9091, 5353), udp_ports=(5353, 4000))
    manifest = write_manifests(tmp_path, proxy_config_yaml(), nodes_yaml(2), SERVICES)
    result = compile_and_apply(lab, manifest, request.param)
    return lab, result, request.param


def test_clusterip_from_a_pod_keeps_the_pod_source(cluster):
    lab, _, _ = cluster
    r = lab.tcp_probe("pod1-2", *WEB)
    assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=8080, vip=WEB, src="10.244.1.11")


def test_clusterip_from_the_node_itself(cluster):
    lab, _, _ = cluster
    r = lab.tcp_probe("node1", *WEB)
    assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=8080, vip=WEB)


def test_clusterip_from_outside_the_cluster_cidr_is_masqueraded(cluster):
    lab, _, _ = cluster
    for _ in range(6):  # both endpoints (local and remote) are masqueraded
        r = lab.tcp_probe("client1", *WEB)
        assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=8080, vip=WEB, src=NODE1)


def test_nodeport_from_outside(cluster):
    lab, _, _ = cluster
    for _ in range(6):
        r = lab.tcp_probe("client1", NODE1, 30080)
        assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=8080, vip=(NODE1, 30080), src=NODE1)


def test_multi_port_service_ports_matched_by_name(cluster):
    lab, _, _ = cluster
    r = lab.tcp_probe("pod1-2", "10.96.0.80", 9090)
    assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=9091, vip=("10.96.0.80", 9090))
    r = lab.tcp_probe("client1", NODE1, 30090)
    assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=9091, vip=(NODE1, 30090), src=NODE1)


def test_equal_balancing_over_ready_endpoints_of_both_slices(cluster):
    lab, _, _ = cluster
    seen = spread(lab, "pod1-2", *WEB, count=60)
    # pod1-2 (10.244.1.11) is listed but not ready: it must never be chosen.
    assert set(seen) == {"pod1-1", "pod2-1"}, seen
    assert min(seen.values()) >= 12, f"unbalanced: {seen}"  # p(fail) < 1e-5 for fair 50/50


def test_udp_clusterip_and_nodeport(cluster):
    lab, _, _ = cluster
    r = lab.udp_probe("pod1-1", "10.96.0.10", 53)
    assert_reached(r, pods={"pod2-1"}, dst_port=5353, vip=("10.96.0.10", 53), src="10.244.1.10")
    r = lab.udp_probe("client1", NODE1, 30053)
    assert_reached(r, pods={"pod2-1"}, dst_port=5353, vip=(NODE1, 30053), src=NODE1)
    # the same number over TCP goes through its own service port
    r = lab.tcp_probe("client1", NODE1, 30053)
    assert_reached(r, pods={"pod2-1"}, dst_port=5353, vip=(NODE1, 30053), src=NODE1)


def test_protocol_only_matches_its_own_port(cluster):
    lab, _, backend = cluster
    # web:80 is TCP only; UDP to it is not DNATed (kube-proxy: a port only matches its protocol).
    r = lab.udp_probe("pod1-2", "10.96.0.80", 80, timeout=0.5)
    assert not r.ok


def test_hairpin_pod_reaching_itself_is_masqueraded(cluster):
    lab, _, _ = cluster
    r = lab.tcp_probe("pod1-1", "10.96.0.81", 8000)
    # The only endpoint is the client itself: without SNAT the reply would bypass the node.
    assert_reached(r, pods={"pod1-1"}, dst_port=8080, vip=("10.96.0.81", 8000), src=NODE1)


def test_service_without_endpoints_is_rejected(cluster):
    lab, _, _ = cluster
    assert lab.tcp_probe("pod1-1", "10.96.0.44", 443).outcome == "refused"
    assert lab.tcp_probe("node1", "10.96.0.44", 443).outcome == "refused"
    assert lab.tcp_probe("client1", "10.96.0.44", 443).outcome == "refused"
    assert lab.udp_probe("pod1-1", "10.96.0.44", 4000).outcome == "refused"
    assert lab.tcp_probe("client1", NODE1, 30443).outcome == "refused"
    assert lab.udp_probe("client1", NODE1, 30400).outcome == "refused"


def test_sctp_clusterip_and_nodeport_dnat_seen_by_pod_and_conntrack(cluster):
    lab, _, _ = cluster
    seen = lab.sctp_probe("client1", CLIENT, "10.96.0.38", 3868, capture=("pod1-2", "eth0"))
    assert seen is not None, "SCTP INIT to the ClusterIP never reached the endpoint"
    assert (seen.dst, seen.dport, seen.src) == ("10.244.1.11", 3869, NODE1)
    seen = lab.sctp_probe("client1", CLIENT, NODE1, 31868, capture=("pod1-2", "eth0"))
    assert seen is not None, "SCTP INIT to the NodePort never reached the endpoint"
    assert (seen.dst, seen.dport, seen.src) == ("10.244.1.11", 3869, NODE1)
    entries = lab.conntrack_entries("node1", "sctp")
    text = repr(entries)
    assert "10.96.0.38" in text and "10.244.1.11" in text, entries


def test_rules_in_the_kernel_match_the_compiled_rules_and_reapply_is_idempotent(cluster):
    lab, result, backend = cluster
    before = read_back(lab.ns("node1"), backend)
    if backend == "iptables":
        saved = set(before.splitlines())
        for line in result.text.splitlines():
            if line.startswith("-A "):
                assert line in saved, f"not in iptables-save output: {line}"
    else:
        assert "table ip kube-proxy" in before
    from dataplane.apply import apply_compiled
    apply_compiled(lab.ns("node1"), result)
    assert read_back(lab.ns("node1"), backend) == before
    # and traffic still flows after the re-apply
    assert lab.tcp_probe("client1", NODE1, 30080).ok


def test_cli_apply_and_bad_input_changes_nothing(make_lab, tmp_path):
    lab = make_lab(Topology.simple(nodes=1, pods_per_node=1, clients=1))
    lab.serve("pod1-1", tcp_ports=(8080,))
    good = write_manifests(tmp_path, proxy_config_yaml(), nodes_yaml(1), """
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: default}
        spec:
          clusterIP: 10.96.0.80
          ports: [{port: 80, targetPort: 8080}]
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
        addressType: IPv4
        ports: [{port: 8080}]
        endpoints: [{addresses: [10.244.1.10]}]
        """)
    cli = [sys.executable, "-m", "dataplane"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("port: 80,", "port: 80, nodePort: 70000,"))
    node = lab.ns("node1")
    for backend in BACKENDS:
        run = subprocess.run(cli + ["apply", "-f", str(good), "--node", "node1", "--netns", node,
                                    "--backend", backend], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert lab.tcp_probe("client1", *WEB).ok
        before = read_back(node, backend)
        run = subprocess.run(cli + ["apply", "-f", str(bad), "--node", "node1", "--netns", node,
                                    "--backend", backend], capture_output=True, text=True)
        assert run.returncode == 1
        assert "Traceback" not in run.stderr and "spec.ports[0].nodePort" in run.stderr, run.stderr
        assert read_back(node, backend) == before
        assert lab.tcp_probe("client1", *WEB).ok
        cleanup(node)
        assert not lab.tcp_probe("client1", *WEB, timeout=0.5).ok
    missing = subprocess.run(cli + ["apply", "-f", str(good), "--node", "node1", "--netns", "no-such-netns"],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "does not exist" in missing.stderr, missing.stderr
