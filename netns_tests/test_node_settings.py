"""Issue 3, proven with packets in both backends and both families: the node settings of the
KubeProxyConfiguration (nodePortAddresses, localhostNodePorts, masqueradeAll, masqueradeBit,
detectLocalMode) and the conntrack-INVALID drop in forwarding.

Topology (``Topology.simple(..., ipv6=True)``): node1 (192.0.2.1 / 2001:db8::1) is the node
under test; its pods pod1-1 (10.244.1.10 / fd00:10:244:1::10) and pod1-2 (.11 / ::11) sit
behind veth1/veth2 (or behind the bridge cbr0 for BridgeInterface); client1 (192.0.2.100 /
2001:db8::100) is outside the cluster and routes everything via node1. The Service
shop/web (ClusterIPs 10.96.0.80 / fd00:10:96::80, NodePort 30080) has one endpoint, pod1-2;
node1's rules are compiled and applied for one family per test.
"""
from __future__ import annotations

import dataclasses
import secrets

import pytest

from dataplane.lab import Topology
from dataplane.runtime.netns import read_back
from svc_lab import (
    BACKEND_FAMILIES,
    DUAL_STACK_CLUSTER_CIDR,
    add_address,
    assert_reached,
    backend_family_id,
    client_ip,
    compile_and_apply,
    dual_stack_slices,
    node_ip,
    pod_ip,
    send_and_capture,
    write_manifests,
)

pytestmark = pytest.mark.netns

MATRIX = pytest.mark.parametrize(
    "backend,family", BACKEND_FAMILIES, ids=[backend_family_id(p) for p in BACKEND_FAMILIES]
)
NODE_PORT = 30080

WEB = (
    """
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
"""
    + dual_stack_slices("shop", "web", "[{name: http, port: 8080, protocol: TCP}]", ["pod1-2"])
)


def vip(family: str) -> str:
    return "fd00:10:96::80" if family == "ipv6" else "10.96.0.80"


def nodes(count: int = 1, extra_addresses: dict[int, list[str]] | None = None) -> str:
    """Node objects for ``Topology.simple(nodes=count, ipv6=True)``: dual-stack pod CIDRs and
    InternalIPs, plus ExternalIPs from ``extra_addresses`` (node index -> addresses)."""
    docs = []
    for i in range(1, count + 1):
        extra = "".join(
            f"\n  - {{type: ExternalIP, address: '{a}'}}" for a in (extra_addresses or {}).get(i, ())
        )
        docs.append(
            "apiVersion: v1\n"
            "kind: Node\n"
            f"metadata: {{name: node{i}, labels: {{topology.kubernetes.io/zone: zone-{i}}}}}\n"
            f"spec: {{podCIDR: 10.244.{i}.0/24, podCIDRs: [10.244.{i}.0/24, 'fd00:10:244:{i}::/64']}}\n"
            "status:\n"
            "  addresses:\n"
            f"  - {{type: InternalIP, address: 192.0.2.{i}}}\n"
            f"  - {{type: InternalIP, address: '2001:db8::{i}'}}" + extra
        )
    return "\n---\n".join(docs) + "\n"


def proxy_config(backend: str, extra: str = "", *, cluster_cidr: str | None = DUAL_STACK_CLUSTER_CIDR) -> str:
    text = f"apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: {backend}\n"
    if cluster_cidr:
        text += f"clusterCIDR: {cluster_cidr}\n"
    return text + extra


def apply(lab, tmp_path, backend, family, config_extra="", *, cluster_cidr=DUAL_STACK_CLUSTER_CIDR,
          node_docs=None, services=WEB):
    manifest = write_manifests(
        tmp_path, proxy_config(backend, config_extra, cluster_cidr=cluster_cidr), node_docs or nodes(), services
    )
    return compile_and_apply(lab, manifest, backend, family=family)


def sysctl(lab, member: str, key: str) -> str:
    return lab.run(member, ["cat", "/proc/sys/" + key.replace(".", "/")]).stdout.strip()


def lab_with_web(make_lab, nodes_: int = 1, pods: int = 2):
    lab = make_lab(Topology.simple(nodes=nodes_, pods_per_node=pods, clients=1, ipv6=True))
    lab.serve("pod1-2", tcp_ports=(8080,))
    return lab


# ----------------------------------------------------------------------------- nodePortAddresses


@MATRIX
def test_node_port_addresses(make_lab, tmp_path, backend, family):
    """NodePorts answer on node addresses inside nodePortAddresses only; unset means every local
    address (iptables) or the primary IP (nftables); "primary" is the first InternalIP; a family
    without any CIDR of its own matches every local address."""
    lab = lab_with_web(make_lab)
    second = {"ipv4": "192.0.2.51", "ipv6": "2001:db8::51"}
    for address in second.values():  # node1's second address, listed as an ExternalIP
        add_address(lab, "node1", address, deprecated=True)  # (never picked as a source address)
    node_docs = nodes(1, {1: list(second.values())})
    primary = node_ip(1, family)
    second_cidr = {"ipv4": "192.0.2.48/28", "ipv6": "2001:db8::50/124"}
    other = "ipv6" if family == "ipv4" else "ipv4"

    def outcomes(config_extra: str) -> tuple[str, str]:
        apply(lab, tmp_path, backend, family, config_extra, node_docs=node_docs)
        out = []
        for address in (primary, second[family]):
            r = lab.tcp_probe("client1", address, NODE_PORT)
            if r.ok:
                assert_reached(r, pods={"pod1-2"}, dst_port=8080, vip=(address, NODE_PORT),
                               src=node_ip(1, family))
            out.append(r.outcome)  # "refused": node1's own stack answered, nothing was DNATed
        return tuple(out)

    expected_default = ("ok", "ok") if backend == "iptables" else ("ok", "refused")
    assert outcomes("") == expected_default
    cidrs = f"nodePortAddresses: ['{second_cidr['ipv4']}', '{second_cidr['ipv6']}']\n"
    assert outcomes(cidrs) == ("refused", "ok")
    assert outcomes("nodePortAddresses: [primary]\n") == ("ok", "refused")
    # Only a CIDR of the other family: kube-proxy falls back to 0.0.0.0/0 (::/0) for this one.
    assert outcomes(f"nodePortAddresses: ['{second_cidr[other]}']\n") == ("ok", "ok")


# ----------------------------------------------------------------------------- localhostNodePorts


@MATRIX
def test_localhost_node_ports(make_lab, tmp_path, backend, family):
    """``127.0.0.1:<nodePort>`` from the node itself works in iptables mode over IPv4 (apply sets
    route_localnet), not with ``iptables.localhostNodePorts: false``, never in nftables mode,
    never over IPv6 (``[::1]``)."""
    lab = lab_with_web(make_lab)
    key = "net.ipv4.conf.all.route_localnet"
    lab.set_sysctls("node1", {key: "0"})  # new namespaces may inherit the host's IPv4 value
    result = apply(lab, tmp_path, backend, family)
    loopback = "::1" if family == "ipv6" else "127.0.0.1"
    # NodePorts on the node's own address work from the node in every case.
    r = lab.tcp_probe("node1", node_ip(1, family), NODE_PORT)
    assert_reached(r, pods={"pod1-2"}, dst_port=8080, vip=(node_ip(1, family), NODE_PORT))

    if (backend, family) == ("iptables", "ipv4"):
        assert (key, "1") in result.plan.sysctls
        assert sysctl(lab, "node1", key) == "1"
        r = lab.tcp_probe("node1", loopback, NODE_PORT)
        # host traffic to a NodePort is masqueraded: the pod sees node1's address
        assert_reached(r, pods={"pod1-2"}, dst_port=8080, vip=(loopback, NODE_PORT), src=node_ip(1, family))
        result = apply(lab, tmp_path, backend, family, "iptables: {localhostNodePorts: false}\n")
        assert (key, "1") not in result.plan.sysctls
        assert sysctl(lab, "node1", key) == "1"  # kube-proxy never resets it: only the rules decide now
    else:
        assert key not in dict(result.plan.sysctls)
        assert sysctl(lab, "node1", key) == "0"
        if family == "ipv4":
            lab.set_sysctls("node1", {key: "1"})  # so that only the rules decide
    r = lab.tcp_probe("node1", loopback, NODE_PORT)
    assert r.outcome == "refused", r  # not DNATed: node1's own stack answered on lo
    r = lab.tcp_probe("node1", node_ip(1, family), NODE_PORT)
    assert_reached(r, pods={"pod1-2"}, dst_port=8080, vip=(node_ip(1, family), NODE_PORT))


# ----------------------------------------------------------------------------- masquerading


@MATRIX
def test_masquerade_all(make_lab, tmp_path, backend, family):
    """ClusterIP traffic from a pod is masqueraded only with the mode's own masqueradeAll."""
    lab = lab_with_web(make_lab)
    other = "nftables" if backend == "iptables" else "iptables"

    def pod_sees() -> str:
        r = lab.tcp_probe("pod1-1", vip(family), 80)
        assert_reached(r, pods={"pod1-2"}, dst_port=8080, vip=(vip(family), 80))
        return r.server_saw_src[0]

    apply(lab, tmp_path, backend, family)
    assert pod_sees() == pod_ip("pod1-1", family)
    apply(lab, tmp_path, backend, family, f"{other}: {{masqueradeAll: true}}\n")
    assert pod_sees() == pod_ip("pod1-1", family)
    apply(lab, tmp_path, backend, family, f"{backend}: {{masqueradeAll: true}}\n")
    assert pod_sees() == node_ip(1, family)


@MATRIX
def test_masquerade_bit(make_lab, tmp_path, backend, family):
    """masqueradeBit 9 marks with 0x200 (not 0x4000), and masquerading still works."""
    lab = lab_with_web(make_lab)
    apply(lab, tmp_path, backend, family, f"{backend}: {{masqueradeBit: 9}}\n")
    text = read_back(lab.ns("node1"), backend, ipv6=family == "ipv6")
    if backend == "iptables":
        for rule in ("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x200/0x200",
                     "-A KUBE-POSTROUTING -m mark ! --mark 0x200/0x200 -j RETURN",
                     "-A KUBE-POSTROUTING -j MARK --set-xmark 0x200/0x0"):
            assert rule in text.splitlines(), rule
        assert "0x4000" not in text
    else:
        assert "meta mark set meta mark | 0x00000200" in text
        assert "meta mark & 0x00000200 == 0x00000000 return" in text
        assert "0x00004000" not in text
    node1 = node_ip(1, family)
    r = lab.tcp_probe("client1", vip(family), 80)
    assert_reached(r, pods={"pod1-2"}, dst_port=8080, vip=(vip(family), 80), src=node1)
    r = lab.tcp_probe("client1", node1, NODE_PORT)
    assert_reached(r, pods={"pod1-2"}, dst_port=8080, vip=(node1, NODE_PORT), src=node1)
    r = lab.tcp_probe("pod1-1", vip(family), 80)
    assert_reached(r, pods={"pod1-2"}, dst_port=8080, vip=(vip(family), 80), src=pod_ip("pod1-1", family))


# ----------------------------------------------------------------------------- detectLocalMode
# Three sources reach the ClusterIP through node1: pod1-1 (a pod of node1), pod2-1 (a pod of
# node2, whose service traffic node2 routes to node1) and client1 (outside the cluster).
# Whether the endpoint (pod1-2) sees the source or node1's address shows what the local-traffic
# detector took for "local".


def detect_local_lab(make_lab, *, bridge: bool = False):
    topo = Topology.simple(nodes=2, pods_per_node=2, clients=1, ipv6=True)
    if bridge:
        topo = dataclasses.replace(topo, nodes=(dataclasses.replace(topo.nodes[0], pod_bridge="cbr0"),
                                                *topo.nodes[1:]))
    lab = make_lab(topo)
    lab.serve("pod1-2", tcp_ports=(8080,))
    lab.run("node2", ["ip", "-4", "route", "add", "10.96.0.0/16", "via", "192.0.2.1"])
    lab.run("node2", ["ip", "-6", "route", "add", "fd00:10:96::/64", "via", "2001:db8::1"])
    return lab


def assert_masquerade(lab, family: str, expected: dict[str, bool]) -> None:
    seen = {}
    for source in expected:
        r = lab.tcp_probe(source, vip(family), 80)
        assert_reached(r, pods={"pod1-2"}, dst_port=8080, vip=(vip(family), 80))
        seen[source] = r.server_saw_src[0]
    own = {"pod1-1": pod_ip("pod1-1", family), "pod2-1": pod_ip("pod2-1", family),
           "client1": client_ip(1, family)}
    want = {s: node_ip(1, family) if masq else own[s] for s, masq in expected.items()}
    assert seen == want


@MATRIX
def test_detect_local_cluster_cidr(make_lab, tmp_path, backend, family):
    lab = detect_local_lab(make_lab)
    apply(lab, tmp_path, backend, family, "detectLocalMode: ClusterCIDR\n", node_docs=nodes(2))
    assert_masquerade(lab, family, {"pod1-1": False, "pod2-1": False, "client1": True})


@MATRIX
def test_detect_local_node_cidr(make_lab, tmp_path, backend, family):
    """Only node1's spec.podCIDRs count as local: node2's pods are masqueraded."""
    lab = detect_local_lab(make_lab)
    apply(lab, tmp_path, backend, family, "detectLocalMode: NodeCIDR\n", node_docs=nodes(2))
    assert_masquerade(lab, family, {"pod1-1": False, "pod2-1": True, "client1": True})


@MATRIX
def test_detect_local_interface_name_prefix(make_lab, tmp_path, backend, family):
    """Traffic entering through an interface named veth* (node1's pod veths) is local."""
    lab = detect_local_lab(make_lab)
    apply(lab, tmp_path, backend, family,
          "detectLocalMode: InterfaceNamePrefix\ndetectLocal: {interfaceNamePrefix: veth}\n", node_docs=nodes(2))
    assert_masquerade(lab, family, {"pod1-1": False, "pod2-1": True, "client1": True})


@MATRIX
def test_detect_local_bridge_interface(make_lab, tmp_path, backend, family):
    """node1's pods hang off the bridge cbr0: traffic entering through cbr0 is local."""
    lab = detect_local_lab(make_lab, bridge=True)
    apply(lab, tmp_path, backend, family,
          "detectLocalMode: BridgeInterface\ndetectLocal: {bridgeInterface: cbr0}\n", node_docs=nodes(2))
    assert_masquerade(lab, family, {"pod1-1": False, "pod2-1": True, "client1": True})


@MATRIX
def test_no_local_detector(make_lab, tmp_path, backend, family):
    """detectLocalMode ClusterCIDR without a clusterCIDR: no detector, so ClusterIP traffic from
    outside the cluster is not masqueraded either (client1's address reaches the pod)."""
    lab = detect_local_lab(make_lab)
    result = apply(lab, tmp_path, backend, family, "detectLocalMode: ClusterCIDR\n", cluster_cidr=None,
                   node_docs=nodes(2))
    assert result.plan.local_detector.kind == "none"
    assert_masquerade(lab, family, {"pod1-1": False, "pod2-1": False, "client1": False})


# ----------------------------------------------------------------------------- conntrack INVALID


@MATRIX
def test_conntrack_invalid_dropped_in_forwarding(make_lab, tmp_path, backend, family):
    """A stray TCP ACK (no connection) forwarded through node1 to a pod: with
    nf_conntrack_tcp_loose=0 it is INVALID and iptables mode drops it (KUBE-FORWARD);
    kube-proxy's nftables mode has no such rule and forwards it."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    lab = lab_with_web(make_lab)
    result = apply(lab, tmp_path, backend, family)
    assert ("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP" in result.text) == (backend == "iptables")
    pod, client = pod_ip("pod1-2", family), client_ip(1, family)
    l3 = IPv6 if family == "ipv6" else IP

    def stray_ack_reaches_pod() -> bool:
        sport, seq = 20000 + secrets.randbelow(20000), secrets.randbits(32)
        pkt = l3(src=client, dst=pod) / TCP(sport=sport, dport=8080, flags="A", seq=seq, ack=1)
        seen = send_and_capture(
            lab, "client1", bytes(pkt), pod, ("pod1-2", "eth0"),
            lambda p: TCP in p and p[TCP].sport == sport and p[TCP].seq == seq, timeout=0.3,
        )
        return seen is not None

    # Control: conntrack picks up a mid-stream ACK (tcp_loose=1): not INVALID, forwarded anyway.
    lab.set_sysctls("node1", {"net.netfilter.nf_conntrack_tcp_loose": "1"})
    assert stray_ack_reaches_pod()
    lab.set_sysctls("node1", {"net.netfilter.nf_conntrack_tcp_loose": "0"})
    assert stray_ack_reaches_pod() == (backend == "nftables")
    # A real connection through the same path still works.
    r = lab.tcp_probe("client1", pod, 8080)
    assert r.ok and r.pod == "pod1-2" and r.server_saw_src[0] == client, r
