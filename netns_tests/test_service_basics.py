"""Issue 2, proven with packets for both backends and both IP families: ClusterIP and NodePort
Services over TCP, UDP and SCTP, multi-port Services, several slices, balancing, masquerade,
hairpin, REJECT.

Topology: node1 (192.0.2.1, the node under test) and node2 (192.0.2.2) route the pod CIDRs
10.244.1.0/24 and 10.244.2.0/24; client1 (192.0.2.100) is outside the cluster CIDR. For IPv6
the lab is ``Topology.simple(..., ipv6=True)``: node1 2001:db8::1, node2 2001:db8::2, pods
fd00:10:244:<i>::<9+j>, client1 2001:db8::100; the manifest is single-stack IPv6 (ClusterIPs in
fd00:10:96::/112, IPv6 EndpointSlices, Nodes with IPv6 InternalIPs) and the rules are compiled
for ``family="ipv6"`` (ip6tables / the ``ip6 kube-proxy`` table).
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from string import Template

import pytest

from dataplane.compiler import CompileResult
from dataplane.lab import Lab, Topology
from dataplane.runtime.netns import cleanup, read_back
from svc_lab import (
    BACKEND_FAMILIES,
    BACKENDS,
    DUAL_STACK_CLUSTER_CIDR,
    assert_reached,
    backend_family_id,
    client_ip,
    compile_and_apply,
    node_ip,
    nodes_yaml,
    pod_ip,
    proxy_config_yaml,
    spread,
    write_manifests,
)

pytestmark = pytest.mark.netns

# $<service>: its ClusterIP; $<service>_fam: the family fields of a single-stack IPv6 Service
# (none for IPv4: the Service defaults to the cluster's primary family); $pod<i>_<j>: a pod's
# address; $address_type: the EndpointSlices' addressType.
SERVICES = Template("""
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: '$web'$web_fam
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}
  - {name: metrics, port: 9090, protocol: TCP, targetPort: 9091, nodePort: 30090}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: $address_type
ports: [{name: http, port: 8080, protocol: TCP}, {name: metrics, port: 9091, protocol: TCP}]
endpoints:
- {addresses: ['$pod1_1'], nodeName: node1}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-2, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: $address_type
ports: [{name: http, port: 8080, protocol: TCP}, {name: metrics, port: 9091, protocol: TCP}]
endpoints:
- {addresses: ['$pod2_1'], nodeName: node2}
- {addresses: ['$pod1_2'], nodeName: node1, conditions: {ready: false}}
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  type: NodePort
  clusterIP: '$dns'$dns_fam
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 5353, nodePort: 30053}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}
addressType: $address_type
ports: [{name: dns, port: 5353, protocol: UDP}, {name: dns-tcp, port: 5353, protocol: TCP}]
endpoints:
- {addresses: ['$pod2_1'], nodeName: node2}
---
apiVersion: v1
kind: Service
metadata: {name: self, namespace: shop}
spec:
  clusterIP: '$self'$self_fam
  ports: [{port: 8000, protocol: TCP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: self-1, namespace: shop, labels: {kubernetes.io/service-name: self}}
addressType: $address_type
ports: [{port: 8080, protocol: TCP}]
endpoints:
- {addresses: ['$pod1_1'], nodeName: node1}
---
apiVersion: v1
kind: Service
metadata: {name: diameter, namespace: telco}
spec:
  type: NodePort
  clusterIP: '$diameter'$diameter_fam
  ports: [{name: sctp, port: 3868, protocol: SCTP, targetPort: 3869, nodePort: 31868}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: diameter-1, namespace: telco, labels: {kubernetes.io/service-name: diameter}}
addressType: $address_type
ports: [{name: sctp, port: 3869, protocol: SCTP}]
endpoints:
- {addresses: ['$pod1_2'], nodeName: node1}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec:
  type: NodePort
  clusterIP: '$empty'$empty_fam
  ports:
  - {name: https, port: 443, protocol: TCP, targetPort: 8443, nodePort: 30443}
  - {name: udp, port: 4000, protocol: UDP, targetPort: 4000, nodePort: 30400}
""")

# ClusterIPs: 10.96.0.<n> / fd00:10:96::<n>
VIP_SUFFIX = {"web": "80", "dns": "10", "self": "81", "diameter": "38", "empty": "44"}
PODS = ("pod1-1", "pod1-2", "pod2-1", "pod2-2")


def cluster_ip(service: str, family: str) -> str:
    return ("fd00:10:96::" if family == "ipv6" else "10.96.0.") + VIP_SUFFIX[service]


def services_yaml(family: str) -> str:
    subst = {"address_type": "IPv6" if family == "ipv6" else "IPv4"}
    for pod in PODS:
        subst[pod.replace("-", "_")] = pod_ip(pod, family)
    for svc in VIP_SUFFIX:
        ip = subst[svc] = cluster_ip(svc, family)
        subst[f"{svc}_fam"] = (
            f"\n  clusterIPs: ['{ip}']\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]"
            if family == "ipv6" else ""
        )
    return SERVICES.substitute(subst)


@dataclass(frozen=True)
class Cluster:
    """node1's rules for one (backend, family) applied in the lab, and the family's addresses."""

    lab: Lab
    result: CompileResult
    backend: str
    family: str

    def vip(self, service: str, port: int) -> tuple[str, int]:
        return cluster_ip(service, self.family), port

    def pod(self, name: str) -> str:
        return pod_ip(name, self.family)

    @property
    def node1(self) -> str:
        """node1's underlay address: the masquerade source (the kernel's choice for both the
        underlay and the pod veths, whose own addresses are link scope)."""
        return node_ip(1, self.family)

    @property
    def client(self) -> str:
        return client_ip(1, self.family)


@pytest.fixture(params=BACKEND_FAMILIES, ids=backend_family_id)
def cluster(request, make_lab, tmp_path) -> Cluster:
    """The lab with node1's rules applied for one backend and family, and pod servers running."""
    backend, family = request.param
    ipv6 = family == "ipv6"
    lab = make_lab(Topology.simple(nodes=2, pods_per_node=2, clients=1, ipv6=ipv6))
    for pod in PODS:
        lab.serve(pod, tcp_ports=(8080, 9091, 5353), udp_ports=(5353, 4000, 8080))
    config = proxy_config_yaml(cluster_cidr=DUAL_STACK_CLUSTER_CIDR if ipv6 else "10.244.0.0/16")
    manifest = write_manifests(tmp_path, config, nodes_yaml(2, ipv6=ipv6), services_yaml(family))
    result = compile_and_apply(lab, manifest, backend, family=family)
    assert result.plan.family == family and not result.warnings, result.warnings
    assert {s.cluster_ip for s in result.plan.services} == {cluster_ip(s, family) for s in VIP_SUFFIX}
    return Cluster(lab, result, backend, family)


def test_clusterip_from_a_pod_keeps_the_pod_source(cluster):
    lab, web = cluster.lab, cluster.vip("web", 80)
    r = lab.tcp_probe("pod1-2", *web)
    assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=8080, vip=web, src=cluster.pod("pod1-2"))


def test_clusterip_from_the_node_itself(cluster):
    lab, web = cluster.lab, cluster.vip("web", 80)
    r = lab.tcp_probe("node1", *web)
    assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=8080, vip=web)


def test_clusterip_from_outside_the_cluster_cidr_is_masqueraded(cluster):
    lab, web = cluster.lab, cluster.vip("web", 80)
    for _ in range(6):  # both endpoints (local and remote) are masqueraded
        r = lab.tcp_probe("client1", *web)
        assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=8080, vip=web, src=cluster.node1)


def test_nodeport_from_outside(cluster):
    lab, node1 = cluster.lab, cluster.node1
    for _ in range(6):
        r = lab.tcp_probe("client1", node1, 30080)
        assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=8080, vip=(node1, 30080), src=node1)


def test_multi_port_service_ports_matched_by_name(cluster):
    lab, node1, metrics = cluster.lab, cluster.node1, cluster.vip("web", 9090)
    r = lab.tcp_probe("pod1-2", *metrics)
    assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=9091, vip=metrics)
    r = lab.tcp_probe("client1", node1, 30090)
    assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=9091, vip=(node1, 30090), src=node1)


def test_equal_balancing_over_ready_endpoints_of_both_slices(cluster):
    lab = cluster.lab
    seen = spread(lab, "pod1-2", *cluster.vip("web", 80), count=60)
    # pod1-2 (10.244.1.11 / fd00:10:244:1::11) is listed but not ready: it must never be chosen.
    assert set(seen) == {"pod1-1", "pod2-1"}, seen
    assert min(seen.values()) >= 12, f"unbalanced: {seen}"  # p(fail) < 1e-5 for fair 50/50


def test_udp_clusterip_and_nodeport(cluster):
    lab, node1, dns = cluster.lab, cluster.node1, cluster.vip("dns", 53)
    r = lab.udp_probe("pod1-1", *dns)
    assert_reached(r, pods={"pod2-1"}, dst_port=5353, vip=dns, src=cluster.pod("pod1-1"))
    r = lab.udp_probe("client1", node1, 30053)
    assert_reached(r, pods={"pod2-1"}, dst_port=5353, vip=(node1, 30053), src=node1)
    # the same number over TCP goes through its own service port
    r = lab.tcp_probe("client1", node1, 30053)
    assert_reached(r, pods={"pod2-1"}, dst_port=5353, vip=(node1, 30053), src=node1)


def test_protocol_only_matches_its_own_port(cluster):
    lab = cluster.lab
    # web:80 is TCP only; UDP to it is not DNATed (kube-proxy: a port only matches its protocol).
    # The endpoints do answer UDP on the target port 8080, so a UDP DNAT would be noticed.
    assert lab.udp_probe("pod1-2", cluster.pod("pod1-1"), 8080).ok
    r = lab.udp_probe("pod1-2", *cluster.vip("web", 80), timeout=0.5)
    assert not r.ok, f"UDP to the TCP-only port was answered by {r.pod}"


def test_hairpin_pod_reaching_itself_is_masqueraded(cluster):
    lab, svc = cluster.lab, cluster.vip("self", 8000)
    r = lab.tcp_probe("pod1-1", *svc)
    # The only endpoint is the client itself: without SNAT the reply would bypass the node.
    assert_reached(r, pods={"pod1-1"}, dst_port=8080, vip=svc, src=cluster.node1)


def test_service_without_endpoints_is_rejected(cluster):
    lab, node1, empty = cluster.lab, cluster.node1, cluster_ip("empty", cluster.family)
    assert lab.tcp_probe("pod1-1", empty, 443).outcome == "refused"
    assert lab.tcp_probe("node1", empty, 443).outcome == "refused"
    assert lab.tcp_probe("client1", empty, 443).outcome == "refused"
    assert lab.udp_probe("pod1-1", empty, 4000).outcome == "refused"
    assert lab.tcp_probe("client1", node1, 30443).outcome == "refused"
    assert lab.udp_probe("client1", node1, 30400).outcome == "refused"


def test_sctp_clusterip_and_nodeport_dnat_seen_by_pod_and_conntrack(cluster):
    lab, node1, family = cluster.lab, cluster.node1, cluster.family
    vip, endpoint = cluster_ip("diameter", family), cluster.pod("pod1-2")
    destinations = ((vip, 3868), (node1, 31868))
    for dst, port in destinations:
        seen = lab.sctp_probe("client1", cluster.client, dst, port, capture=("pod1-2", "eth0"))
        assert seen is not None, f"SCTP INIT to {dst}:{port} never reached the endpoint"
        assert (seen.dst, seen.dport, seen.src) == (endpoint, 3869, node1), seen
    entries = lab.conntrack_entries("node1", "sctp", family=family)
    flows = {(e.orig.src, e.orig.dst, e.orig.dport): e.reply for e in entries}
    for dst, port in destinations:
        reply = flows.get((cluster.client, dst, port))
        assert reply is not None, f"no conntrack entry for {cluster.client} -> {dst}:{port}: {entries}"
        assert (reply.src, reply.sport, reply.dst) == (endpoint, 3869, node1), reply


def test_rules_in_the_kernel_match_the_compiled_rules_and_reapply_is_idempotent(cluster):
    lab, result, backend, family = cluster.lab, cluster.result, cluster.backend, cluster.family
    ipv6 = family == "ipv6"
    node = lab.ns("node1")
    before = read_back(node, backend, ipv6=ipv6)
    if backend == "iptables":
        saved = set(before.splitlines())
        for line in result.text.splitlines():
            if line.startswith("-A "):
                assert line in saved, f"not in {'ip6' if ipv6 else 'ip'}tables-save output: {line}"
        assert cluster_ip("web", family) in before
    else:
        assert f"table {'ip6' if ipv6 else 'ip'} kube-proxy" in before
        assert cluster_ip("web", family) in before
    # nothing was written to the other family
    assert "KUBE-" not in read_back(node, backend, ipv6=not ipv6)
    assert "kube-proxy" not in read_back(node, backend, ipv6=not ipv6)
    from dataplane.runtime.apply import apply_compiled
    apply_compiled(node, result)
    assert read_back(node, backend, ipv6=ipv6) == before
    # and traffic still flows after the re-apply
    node1 = cluster.node1
    assert_reached(lab.tcp_probe("client1", node1, 30080), pods={"pod1-1", "pod2-1"}, dst_port=8080,
                   vip=(node1, 30080), src=node1)


WEB = ("10.96.0.80", 80)


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
    cli = [sys.executable, "-I", "-m", "dataplane"]
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
