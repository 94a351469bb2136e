"""Issue 3, proven with packets: IPv6 output (ip6tables-restore, the ``ip6 kube-proxy`` table),
dual-stack Services served in both families at once, addresses of the wrong family skipped
with a warning, and SCTP through ClusterIP, NodePort and externalIPs in both families.

Topology (``Topology.simple(nodes=1, pods_per_node=2, clients=1, ipv6=True)``): node1
(192.0.2.1 / 2001:db8::1) is the node under test, with pods pod1-1 (10.244.1.10 /
fd00:10:244:1::10) and pod1-2 (.11 / ::11); client1 (192.0.2.100 / 2001:db8::100) is outside
the cluster and routes everything via node1, so the external IPs (198.51.100.0/24,
2001:db8:ee::/64) reach node1.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from dataplane.runtime.apply import apply_compiled
from dataplane.compiler import compile_rules
from dataplane.input.cluster import load_cluster
from dataplane.lab import Topology
from dataplane.runtime.netns import read_back
from svc_lab import (
    BACKEND_FAMILIES,
    BACKENDS,
    DUAL_STACK_CLUSTER_CIDR,
    assert_reached,
    backend_family_id,
    client_ip,
    compile_and_apply,
    dual_stack_slices,
    node_ip,
    nodes_yaml,
    pod_ip,
    proxy_config_yaml,
    write_manifests,
)

pytestmark = pytest.mark.netns

MATRIX = pytest.mark.parametrize(
    "backend,family", BACKEND_FAMILIES, ids=[backend_family_id(p) for p in BACKEND_FAMILIES]
)
CLI = [sys.executable, "-I", "-m", "dataplane"]
VIP = {"ipv4": "10.96.0.80", "ipv6": "fd00:10:96::80"}

WEB = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.0.80
  clusterIPs: [10.96.0.80, 'fd00:10:96::80']
  selector: {app: web}
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}]
---
""" + dual_stack_slices("shop", "web", "[{name: http, port: 8080, protocol: TCP}]", ["pod1-2"])


def make(make_lab, tmp_path, backend, *docs):
    lab = make_lab(Topology.simple(nodes=1, pods_per_node=2, clients=1, ipv6=True))
    manifest = write_manifests(tmp_path, proxy_config_yaml(f"mode: {backend}\n", cluster_cidr=DUAL_STACK_CLUSTER_CIDR),
                               nodes_yaml(1, ipv6=True), *docs)
    return lab, manifest


def assert_web_works(lab, family: str) -> None:
    """ClusterIP from outside (masqueraded) and from a pod (not), and the NodePort, in ``family``."""
    vip, node1 = (VIP[family], 80), node_ip(1, family)
    assert_reached(lab.tcp_probe("client1", *vip), pods={"pod1-2"}, dst_port=8080, vip=vip, src=node1)
    assert_reached(lab.tcp_probe("pod1-1", *vip), pods={"pod1-2"}, dst_port=8080, vip=vip,
                   src=pod_ip("pod1-1", family))
    assert_reached(lab.tcp_probe("client1", node1, 30080), pods={"pod1-2"}, dst_port=8080,
                   vip=(node1, 30080), src=node1)


# ----------------------------------------------------------------------------- IPv6 output


@pytest.mark.parametrize("backend", BACKENDS, ids=[f"{b}-ipv6" for b in BACKENDS])
def test_ipv6_rules_go_to_ip6tables_or_the_ip6_table(make_lab, tmp_path, backend):
    """``--ip-family ipv6`` output is ip6tables-restore input (iptables) or the ``ip6
    kube-proxy`` table (nftables); applied with the CLI it serves IPv6 and leaves IPv4 alone."""
    lab, manifest = make(make_lab, tmp_path, backend, WEB)
    lab.serve("pod1-2", tcp_ports=(8080,))
    target = ["--node", "node1", "--backend", backend, "--ip-family", "ipv6"]
    out = subprocess.run(CLI + ["compile", "-f", str(manifest), *target], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    if backend == "iptables":
        assert "-A KUBE-SERVICES -d fd00:10:96::80/128 -p tcp" in out.stdout
        assert "--to-destination [fd00:10:244:1::11]:8080" in out.stdout
    else:
        assert out.stdout.startswith("table ip6 kube-proxy\n")
        assert "dnat to [fd00:10:244:1::11]:8080" in out.stdout
    assert "10.96.0.80" not in out.stdout and "10.244.1.11" not in out.stdout

    node = lab.ns("node1")
    run = subprocess.run(CLI + ["apply", "-f", str(manifest), *target, "--netns", node],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    if backend == "iptables":
        assert "-A KUBE-SERVICES -d fd00:10:96::80/128" in lab.run("node1", ["ip6tables-save", "-t", "nat"]).stdout
        assert "KUBE-" not in lab.run("node1", ["iptables-save"]).stdout
    else:
        tables = lab.run("node1", ["nft", "list", "tables"]).stdout.split("\n")
        assert "table ip6 kube-proxy" in tables and "table ip kube-proxy" not in tables, tables
    assert_web_works(lab, "ipv6")
    assert lab.tcp_probe("client1", VIP["ipv4"], 80, timeout=0.2).outcome == "timeout"


# ----------------------------------------------------------------------------- both families at once


@pytest.mark.parametrize("backend", BACKENDS, ids=[f"{b}-dualstack" for b in BACKENDS])
def test_dual_stack_service_served_in_both_families_at_once(make_lab, tmp_path, backend):
    """A Service with ClusterIPs of both families: node1 gets the IPv4 and the IPv6 rules,
    which coexist (applying one family again leaves the other in place)."""
    lab, manifest = make(make_lab, tmp_path, backend, WEB)
    lab.serve("pod1-2", tcp_ports=(8080,))
    v4 = compile_and_apply(lab, manifest, backend, family="ipv4")
    v6 = compile_and_apply(lab, manifest, backend, family="ipv6")
    assert v4.plan.services[0].cluster_ip == VIP["ipv4"] and v6.plan.services[0].cluster_ip == VIP["ipv6"]
    for family in ("ipv4", "ipv6"):
        assert_web_works(lab, family)
    node = lab.ns("node1")
    before = {f: read_back(node, backend, ipv6=f == "ipv6") for f in ("ipv4", "ipv6")}
    assert VIP["ipv4"] in before["ipv4"] and VIP["ipv6"] in before["ipv6"]
    for family, result in (("ipv4", v4), ("ipv6", v6)):  # a later sync of one family
        apply_compiled(node, result)
        assert {f: read_back(node, backend, ipv6=f == "ipv6") for f in ("ipv4", "ipv6")} == before
        for f in ("ipv4", "ipv6"):
            assert_web_works(lab, f)


# ----------------------------------------------------------------------------- wrong family


@MATRIX
def test_wrong_family_addresses_skipped_with_a_warning(make_lab, tmp_path, backend, family):
    """An externalIP of the other family on a single-stack Service, and an endpoint address of
    the other family in an EndpointSlice, are skipped with a warning; the rest works."""
    other = "ipv6" if family == "ipv4" else "ipv4"
    kind = {"ipv4": "IPv4", "ipv6": "IPv6"}
    eip = {"ipv4": "198.51.100.90", "ipv6": "2001:db8:ee::90"}
    vip = {"ipv4": "10.96.0.90", "ipv6": "fd00:10:96::90"}[family]
    single = f"""
        apiVersion: v1
        kind: Service
        metadata: {{name: single, namespace: shop}}
        spec:
          ipFamilyPolicy: SingleStack
          ipFamilies: [{kind[family]}]
          clusterIP: '{vip}'
          clusterIPs: ['{vip}']
          externalIPs: ['{eip[family]}', '{eip[other]}']
          selector: {{app: single}}
          ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {{name: single-1, namespace: shop, labels: {{kubernetes.io/service-name: single}}}}
        addressType: {kind[family]}
        ports: [{{name: http, port: 8080, protocol: TCP}}]
        endpoints:
        - {{addresses: ['{pod_ip("pod1-2", family)}'], nodeName: node1}}
        """
    lab, manifest = make(make_lab, tmp_path, backend, single)
    for pod in ("pod1-1", "pod1-2"):
        lab.serve(pod, tcp_ports=(8080,))
    eip_warning = (f"Service shop/single: spec.externalIPs: skipping {eip[other]}: not an {kind[family]} "
                   "address and the Service is single-stack")
    out = subprocess.run(CLI + ["compile", "-f", str(manifest), "--node", "node1", "--backend", backend,
                                "--ip-family", family], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"warning: {manifest}: " in out.stderr and eip_warning in out.stderr, out.stderr

    # An EndpointSlice holding an address of the other family never passes API validation
    # (nor our loader, which validates the same way) ...
    bad = tmp_path / "bad.yaml"
    bad.write_text(manifest.read_text().replace(
        f"- {{addresses: ['{pod_ip('pod1-2', family)}'], nodeName: node1}}",
        f"- {{addresses: ['{pod_ip('pod1-2', family)}'], nodeName: node1}}\n"
        f"- {{addresses: ['{pod_ip('pod1-1', other)}'], nodeName: node1}}"))
    out = subprocess.run(CLI + ["compile", "-f", str(bad), "--node", "node1", "--backend", backend,
                                "--ip-family", family], capture_output=True, text=True)
    assert out.returncode == 1 and f"must be a valid {kind[family]} address" in out.stderr, out.stderr
    # ... but a proxy embedding the library may hand one over: kube-proxy's rule applies,
    # the endpoint is skipped with a warning.
    cluster = load_cluster([str(manifest)]).cluster
    slices = tuple(
        dataclasses.replace(s, endpoints=s.endpoints + (dataclasses.replace(s.endpoints[0], addresses=(
            pod_ip("pod1-1", other),)),)) if s.name == "single-1" else s
        for s in cluster.endpoint_slices
    )
    result = compile_rules(dataclasses.replace(cluster, endpoint_slices=slices), "node1",
                           backend=backend, family=family)
    ep_warning = f"EndpointSlice shop/single-1: skipping endpoint {pod_ip('pod1-1', other)}: not an {kind[family]} address"
    assert any(w.endswith(ep_warning) for w in result.warnings), result.warnings
    assert eip_warning in "\n".join(result.warnings)
    assert [e.ip for e in result.plan.services[0].cluster_endpoints] == [pod_ip("pod1-2", family)]
    apply_compiled(lab.ns("node1"), result)

    for dst in (vip, eip[family]):
        for _ in range(5):
            assert_reached(lab.tcp_probe("client1", dst, 80), pods={"pod1-2"}, dst_port=8080, vip=(dst, 80),
                           src=node_ip(1, family))


# ----------------------------------------------------------------------------- SCTP


@MATRIX
def test_sctp_clusterip_nodeport_and_external_ip(make_lab, tmp_path, backend, family):
    """SCTP INITs to the ClusterIP, the NodePort and an external IP are DNATed to the endpoint
    (masqueraded from outside, not from a pod), and node1's conntrack holds the NATed flows."""
    lab, manifest = make(make_lab, tmp_path, backend, """
        apiVersion: v1
        kind: Service
        metadata: {name: diameter, namespace: telco}
        spec:
          type: NodePort
          ipFamilyPolicy: RequireDualStack
          ipFamilies: [IPv4, IPv6]
          clusterIP: 10.96.0.38
          clusterIPs: [10.96.0.38, 'fd00:10:96::38']
          externalIPs: [198.51.100.38, '2001:db8:ee::38']
          selector: {app: diameter}
          ports: [{name: diameter, port: 3868, protocol: SCTP, targetPort: 3869, nodePort: 31868}]
        """, dual_stack_slices("telco", "diameter", "[{name: diameter, port: 3869, protocol: SCTP}]", ["pod1-1"]))
    compile_and_apply(lab, manifest, backend, family=family)
    vip = {"ipv4": "10.96.0.38", "ipv6": "fd00:10:96::38"}[family]
    eip = {"ipv4": "198.51.100.38", "ipv6": "2001:db8:ee::38"}[family]
    node1, endpoint = node_ip(1, family), pod_ip("pod1-1", family)
    capture = ("pod1-1", "eth0")
    destinations = ((vip, 3868), (node1, 31868), (eip, 3868))
    for dst, port in destinations:
        seen = lab.sctp_probe("client1", client_ip(1, family), dst, port, capture=capture)
        assert seen is not None, f"SCTP INIT to {dst}:{port} never reached the endpoint"
        assert (seen.src, seen.dst, seen.dport) == (node1, endpoint, 3869), seen
    seen = lab.sctp_probe("pod1-2", pod_ip("pod1-2", family), vip, 3868, capture=capture)
    assert seen is not None and (seen.src, seen.dst, seen.dport) == (pod_ip("pod1-2", family), endpoint, 3869), seen
    # SCTP to a port the Service does not have is not DNATed
    assert lab.sctp_probe("client1", client_ip(1, family), vip, 3870, capture=capture, timeout=0.2) is None

    flows = {(e.orig.src, e.orig.dst, e.orig.dport): e.reply
             for e in lab.conntrack_entries("node1", "sctp", family=family)}
    expected = {(client_ip(1, family), dst, port): node1 for dst, port in destinations}
    expected[(pod_ip("pod1-2", family), vip, 3868)] = pod_ip("pod1-2", family)  # not masqueraded
    for key, reply_dst in expected.items():
        reply = flows.get(key)
        assert reply is not None, f"no conntrack entry for {key}: {flows}"
        assert (reply.src, reply.sport, reply.dst) == (endpoint, 3869, reply_dst), reply
