"""Issue 3, proven with packets in both backends and both families: Service externalIPs.

Topology (``Topology.simple(nodes=2, pods_per_node=2, clients=1, ipv6=True)``): node1
(192.0.2.1 / 2001:db8::1, the node under test) and node2 route the pod CIDRs; client1
(192.0.2.100 / 2001:db8::100) is outside the cluster and its default route goes via node1, so
the external IPs (198.51.100.0/24, 2001:db8:ee::/64, routed to the cluster by the network)
reach node1. The Services are dual-stack; node1's rules are compiled and applied for one
family per test.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from dataplane.input.cluster import load_cluster
from dataplane.lab import Topology
from dataplane.runtime.proxier import NetnsRunner, Proxier
from svc_lab import (
    BACKEND_FAMILIES,
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

SLICE_PORTS = "[{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]"


def service(name: str, index: int, extra_spec: str = "") -> str:
    """A dual-stack ClusterIP Service shop/<name> with ClusterIPs 10.96.2.<index> /
    fd00:10:96::2:<index> and externalIPs 198.51.100.<index> / 2001:db8:ee::<index>."""
    return (
        "apiVersion: v1\n"
        "kind: Service\n"
        f"metadata: {{name: {name}, namespace: shop}}\n"
        "spec:\n"
        "  ipFamilyPolicy: RequireDualStack\n"
        "  ipFamilies: [IPv4, IPv6]\n"
        f"  clusterIP: 10.96.2.{index}\n"
        f"  clusterIPs: [10.96.2.{index}, 'fd00:10:96::2:{index}']\n"
        f"  externalIPs: [198.51.100.{index}, '2001:db8:ee::{index}']\n"
        "  ports:\n"
        "  - {name: http, port: 80, protocol: TCP, targetPort: 8080}\n"
        "  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}\n"
        + "".join(f"  {line}\n" for line in extra_spec.strip().splitlines())
    )


SERVICES = [
    # eTP Cluster (the default): masqueraded, any endpoint.
    service("front", 10),
    dual_stack_slices("shop", "front", SLICE_PORTS, ["pod1-1", "pod2-1"]),
    # No endpoints at all (the slices exist but are empty): rejected.
    service("gone", 11),
    dual_stack_slices("shop", "gone", SLICE_PORTS, []),
    # eTP Local: the node's own endpoint only, the client's address preserved.
    service("keep-source", 12, "externalTrafficPolicy: Local"),
    dual_stack_slices("shop", "keep-source", SLICE_PORTS, ["pod1-2", "pod2-1"]),
]


class Env:
    def __init__(self, lab, backend: str, family: str) -> None:
        self.lab, self.backend, self.family = lab, backend, family
        self.node1 = node_ip(1, family)
        self.client1 = client_ip(1, family)

    def eip(self, index: int) -> str:
        return f"2001:db8:ee::{index}" if self.family == "ipv6" else f"198.51.100.{index}"


@pytest.fixture(params=BACKEND_FAMILIES, ids=backend_family_id)
def env(request, make_lab, tmp_path) -> Env:
    """The lab with node1's rules applied for one (backend, family), and pod servers running."""
    backend, family = request.param
    lab = make_lab(Topology.simple(nodes=2, pods_per_node=2, clients=1, ipv6=True))
    for pod in ("pod1-1", "pod1-2", "pod2-1", "pod2-2"):
        lab.serve(pod, tcp_ports=(8080,), udp_ports=(5353,))
    manifest = write_manifests(
        tmp_path, proxy_config_yaml(cluster_cidr=DUAL_STACK_CLUSTER_CIDR), nodes_yaml(2, ipv6=True), *SERVICES
    )
    result = compile_and_apply(lab, manifest, backend, family=family)
    assert result.warnings == (), result.warnings
    return Env(lab, backend, family)


def test_external_ip_reachable_and_masqueraded(env):
    lab, eip = env.lab, env.eip(10)
    for _ in range(6):  # both endpoints (local and remote); eTP Cluster: masqueraded
        r = lab.tcp_probe("client1", eip, 80)
        assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=8080, vip=(eip, 80), src=env.node1)
    r = lab.udp_probe("client1", eip, 53)
    assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=5353, vip=(eip, 53), src=env.node1)
    # eTP Cluster marks every packet to an external destination, pod sources included
    r = lab.tcp_probe("pod1-2", eip, 80)
    assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=8080, vip=(eip, 80), src=env.node1)
    # an externalIP gives the Service no NodePort: port 80 on node1 itself is not DNATed
    assert lab.tcp_probe("client1", env.node1, 80).outcome == "refused"


def test_external_ip_without_endpoints_is_rejected(env):
    lab, eip = env.lab, env.eip(11)
    assert lab.tcp_probe("client1", eip, 80).outcome == "refused"
    assert lab.udp_probe("client1", eip, 53).outcome == "refused"
    assert lab.tcp_probe("pod1-1", eip, 80).outcome == "refused"


def test_external_ip_local_policy_preserves_the_client_address(env):
    lab, eip = env.lab, env.eip(12)
    for _ in range(6):  # never the remote endpoint pod2-1, never masqueraded
        r = lab.tcp_probe("client1", eip, 80)
        assert_reached(r, pods={"pod1-2"}, dst_port=8080, vip=(eip, 80), src=env.client1)
    r = lab.udp_probe("client1", eip, 53)
    assert_reached(r, pods={"pod1-2"}, dst_port=5353, vip=(eip, 53), src=env.client1)
    # pods short-circuit to the cluster-wide endpoints, keeping their own address
    seen = set()
    for _ in range(12):
        r = lab.tcp_probe("pod1-1", eip, 80)
        assert_reached(r, pods={"pod1-2", "pod2-1"}, dst_port=8080, vip=(eip, 80),
                       src=pod_ip("pod1-1", env.family))
        seen.add(r.pod)
    assert seen == {"pod1-2", "pod2-1"}, seen  # p(miss) = 2 * 2^-12


@pytest.mark.parametrize("param", BACKEND_FAMILIES, ids=backend_family_id)
def test_external_ip_two_services_claim_goes_to_the_first(param, make_lab, tmp_path):
    """The API server does not keep externalIPs unique. Both backends send such packets to the
    first Service in namespace/name order (kube-proxy's iptables rule order), with a warning;
    the nftables table still loads (a map cannot hold the key twice)."""
    backend, family = param
    lab = make_lab(Topology.simple(nodes=2, pods_per_node=2, clients=1, ipv6=True))
    for pod in ("pod1-1", "pod2-2"):
        lab.serve(pod, tcp_ports=(8080,), udp_ports=(5353,))
    beta = service("beta", 21).replace("externalIPs: [198.51.100.21, '2001:db8:ee::21']",
                                       "externalIPs: [198.51.100.20, '2001:db8:ee::20']")
    manifest = write_manifests(
        tmp_path, proxy_config_yaml(cluster_cidr=DUAL_STACK_CLUSTER_CIDR), nodes_yaml(2, ipv6=True),
        service("alpha", 20), dual_stack_slices("shop", "alpha", SLICE_PORTS, ["pod1-1"]),
        beta, dual_stack_slices("shop", "beta", SLICE_PORTS, ["pod2-2"]),
    )
    result = compile_and_apply(lab, manifest, backend, family=family)
    assert len(result.warnings) == 2 and all("also a frontend of Service shop/alpha" in w for w in result.warnings)
    env = Env(lab, backend, family)
    eip = env.eip(20)
    for _ in range(4):
        assert_reached(lab.tcp_probe("client1", eip, 80), pods={"pod1-1"}, dst_port=8080, vip=(eip, 80))
    assert_reached(lab.udp_probe("client1", eip, 53), pods={"pod1-1"}, dst_port=5353, vip=(eip, 53))
    # beta itself still works through its own ClusterIP
    cip = "fd00:10:96::2:21" if family == "ipv6" else "10.96.2.21"
    assert_reached(lab.tcp_probe("pod1-1", cip, 80), pods={"pod2-2"}, dst_port=8080, vip=(cip, 80))

    # Live updates keep it with alpha: a Proxier takes over the node, alpha's endpoint moves to
    # pod1-2 in a partial sync (alpha's rules rewritten, beta's untouched), and the address still
    # leads to alpha's (new) endpoint
    lab.serve("pod1-2", tcp_ports=(8080,), udp_ports=(5353,))
    cluster = load_cluster([str(manifest)]).cluster
    proxier = Proxier("node1", mode=backend, family=family, cluster=cluster, runner=NetnsRunner(lab.ns("node1")))
    assert proxier.sync(full=True).kind == "full"
    for es in cluster.endpoint_slices:
        if es.service_name == "alpha":
            moved = dataclasses.replace(es.endpoints[0], addresses=(pod_ip("pod1-2", es.address_type.lower()),))
            proxier.set_endpoint_slice(dataclasses.replace(es, endpoints=(moved,)))
    assert proxier.sync().kind == "partial"
    for _ in range(4):
        assert_reached(lab.tcp_probe("client1", eip, 80), pods={"pod1-2"}, dst_port=8080, vip=(eip, 80))


# ------------------------------------------------ issue 12.8: who may use an address


def dual_stack_service(namespace: str, name: str, cluster_ips: tuple[str, str], extra_spec: str = "") -> str:
    """A dual-stack ClusterIP Service with ports http 80/TCP and dns 53/UDP."""
    return (
        "apiVersion: v1\n"
        "kind: Service\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        "spec:\n"
        "  ipFamilyPolicy: RequireDualStack\n"
        "  ipFamilies: [IPv4, IPv6]\n"
        f"  clusterIP: {cluster_ips[0]}\n"
        f"  clusterIPs: [{cluster_ips[0]}, '{cluster_ips[1]}']\n"
        "  ports:\n"
        "  - {name: http, port: 80, protocol: TCP, targetPort: 8080}\n"
        "  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}\n"
        + "".join(f"  {line}\n" for line in extra_spec.strip().splitlines())
    )


DNS_IPS = ("10.96.0.10", "fd00:10:96::a")
KUBE_DNS = dual_stack_service("kube-system", "kube-dns", DNS_IPS)
EVIL = dual_stack_service("aaa", "evil", ("10.96.6.66", "fd00:10:96::6:66"),
                          f"externalIPs: [{DNS_IPS[0]}, '{DNS_IPS[1]}']")


@pytest.mark.parametrize("param", BACKEND_FAMILIES, ids=backend_family_id)
def test_an_external_ip_never_captures_another_services_cluster_ip(param, make_lab, tmp_path):
    """CVE-2020-8554: aaa/evil (first in namespace/name order) lists kube-dns's ClusterIPs as
    externalIPs. The allocated ClusterIP wins, with a warning: pods and outside clients still
    reach kube-dns's pod. A Proxier keeps it so across partial syncs: with kube-dns gone evil
    may use the address (kube-proxy's behaviour), and kube-dns coming back takes it again,
    though only kube-dns changed."""
    backend, family = param
    lab = make_lab(Topology.simple(nodes=2, pods_per_node=2, clients=1, ipv6=True))
    for pod in ("pod1-1", "pod2-2"):
        lab.serve(pod, tcp_ports=(8080,), udp_ports=(5353,))
    manifest = write_manifests(
        tmp_path, proxy_config_yaml(cluster_cidr=DUAL_STACK_CLUSTER_CIDR), nodes_yaml(2, ipv6=True),
        EVIL, dual_stack_slices("aaa", "evil", SLICE_PORTS, ["pod2-2"]),
        KUBE_DNS, dual_stack_slices("kube-system", "kube-dns", SLICE_PORTS, ["pod1-1"]),
    )
    result = compile_and_apply(lab, manifest, backend, family=family)
    dns = DNS_IPS[1] if family == "ipv6" else DNS_IPS[0]
    assert result.warnings == (
        f"{manifest}: document 4: Service aaa/evil: spec.externalIPs: {dns} is the ClusterIP of Service "
        "kube-system/kube-dns; ignored, as an allocated ClusterIP always wins over a claimed address",)
    for src in ("pod1-2", "client1"):  # (only node1 has rules)
        assert_reached(lab.tcp_probe(src, dns, 80), pods={"pod1-1"}, dst_port=8080, vip=(dns, 80))
        assert_reached(lab.udp_probe(src, dns, 53), pods={"pod1-1"}, dst_port=5353, vip=(dns, 53))

    cluster = load_cluster([str(manifest)]).cluster
    proxier = Proxier("node1", mode=backend, family=family, cluster=cluster, runner=NetnsRunner(lab.ns("node1")))
    assert proxier.sync(full=True).kind == "full"
    kube_dns = next(s for s in cluster.services if s.name == "kube-dns")
    proxier.delete_service("kube-system", "kube-dns")
    assert proxier.sync().kind == "partial"
    for _ in range(3):
        assert_reached(lab.tcp_probe("client1", dns, 80), pods={"pod2-2"}, dst_port=8080, vip=(dns, 80))
    proxier.set_service(kube_dns)
    assert proxier.sync().kind == "partial"
    for src in ("pod1-2", "client1"):
        for _ in range(3):
            assert_reached(lab.tcp_probe(src, dns, 80), pods={"pod1-1"}, dst_port=8080, vip=(dns, 80))


@pytest.mark.parametrize("param", BACKEND_FAMILIES, ids=backend_family_id)
def test_an_external_ip_outside_the_allow_list_is_not_dnated(param, make_lab, tmp_path):
    """externalIPCIDRs in the configuration (a kube-dataplane extension) lets 198.51.100.30 /
    2001:db8:ee::30 through and ignores 198.51.100.200 / 2001:db8:ee::1:30, with a warning;
    `dataplane apply --external-ip-cidrs` overrides it (a partial sync) and the roles swap."""
    backend, family = param
    lab = make_lab(Topology.simple(nodes=2, pods_per_node=2, clients=1, ipv6=True))
    lab.serve("pod1-1", tcp_ports=(8080,), udp_ports=(5353,))
    config = proxy_config_yaml("externalIPCIDRs: [198.51.100.0/25, '2001:db8:ee::/120']\n",
                               cluster_cidr=DUAL_STACK_CLUSTER_CIDR)
    web = dual_stack_service("shop", "web", ("10.96.3.30", "fd00:10:96::3:30"),
                             "externalIPs: [198.51.100.30, 198.51.100.200, '2001:db8:ee::30', '2001:db8:ee::1:30']")
    manifest = write_manifests(tmp_path, config, nodes_yaml(2, ipv6=True),
                               web, dual_stack_slices("shop", "web", SLICE_PORTS, ["pod1-1"]))
    allowed, denied = ("2001:db8:ee::30", "2001:db8:ee::1:30") if family == "ipv6" else ("198.51.100.30",
                                                                                           "198.51.100.200")
    apply = [sys.executable, "-I", "-m", "dataplane", "apply", "-f", str(manifest), "--node", "node1",
             "--netns", lab.ns("node1"), "--backend", backend, "--ip-family", family]
    run = subprocess.run(apply, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"spec.externalIPs: {denied} is outside the allowed external IP CIDRs" in run.stderr, run.stderr
    assert_reached(lab.tcp_probe("client1", allowed, 80), pods={"pod1-1"}, dst_port=8080, vip=(allowed, 80))
    assert_reached(lab.udp_probe("client1", allowed, 53), pods={"pod1-1"}, dst_port=5353, vip=(allowed, 53))
    assert lab.tcp_probe("client1", denied, 80, timeout=0.3).outcome == "timeout"  # not DNATed: no route
    assert not lab.udp_probe("client1", denied, 53, timeout=0.3).ok

    run = subprocess.run([*apply, "--external-ip-cidrs", "198.51.100.128/25,2001:db8:ee::1:0/112"],
                         capture_output=True, text=True)
    assert run.returncode == 0 and "partial sync" in run.stderr, run.stderr
    assert f"spec.externalIPs: {allowed} is outside the allowed external IP CIDRs" in run.stderr, run.stderr
    assert_reached(lab.tcp_probe("client1", denied, 80), pods={"pod1-1"}, dst_port=8080, vip=(denied, 80))
    assert lab.tcp_probe("client1", allowed, 80, timeout=0.3).outcome == "timeout"
