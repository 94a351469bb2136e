"""Issue 15: ``spec.trafficDistribution`` end to end, and native sidecars' named ports, proven with
packets in both backends and both families.

The input holds Pods, not EndpointSlices: the EndpointSlice controller
(:mod:`dataplane.controllers.endpointslices`) derives the slices and their hints, and each
node's rules categorise the endpoints as kube-proxy does.

Topology (``Topology.simple(nodes=4, pods_per_node=2, clients=0, ipv6=True)``): node1 and node2 are
in zone ``zone-a``, node3 in ``zone-b``, node4 in ``zone-c``. Endpoints: pod1-1 (node1), pod2-1
(node2), pod3-1 (node3). Clients: pod1-2 on node1, pod3-2 on node3, pod4-1 on node4, each
node's rules compiled for it and applied in its own namespace. The Services are dual-stack;
the rules are compiled and applied for one family per test.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from dataplane.lab import Lab, Topology
from svc_lab import (
    BACKEND_FAMILIES,
    DUAL_STACK_CLUSTER_CIDR,
    assert_reached,
    backend_family_id,
    compile_and_apply,
    pod_ip,
    proxy_config_yaml,
    write_manifests,
)

pytestmark = pytest.mark.netns

ZONES = {"node1": "zone-a", "node2": "zone-a", "node3": "zone-b", "node4": "zone-c"}
# pod -> the Services selecting it (a label per Service) and whether it runs the istio-proxy
# native sidecar that defines the named port http-envoy-prom
ENDPOINT_PODS = {
    "pod1-1": ("istiod", "ring", "sidecar"),
    "pod2-1": ("ring", "fallback"),
    "pod3-1": ("istiod", "ring", "fallback", "nosidecar"),
}
XDS, PROM = 15012, 15090


def nodes() -> str:
    return "\n---\n".join(textwrap.dedent(f"""\
        apiVersion: v1
        kind: Node
        metadata: {{name: {node}, labels: {{topology.kubernetes.io/zone: {zone}}}}}
        spec: {{podCIDR: 10.244.{node[4:]}.0/24}}
        status: {{addresses: [{{type: InternalIP, address: 192.0.2.{node[4:]}}},
                              {{type: InternalIP, address: '2001:db8::{node[4:]}'}}]}}""")
        for node, zone in ZONES.items())


def pod(name: str, groups: tuple[str, ...]) -> str:
    """A Ready Pod ``istio-system/<name>`` on its lab node; ``grpc-xds`` on port 8080 in its
    container; the ``sidecar`` group also runs a native sidecar with ``http-envoy-prom``."""
    i, j = name[3:].split("-")
    labels = ", ".join(f"{g}: 'yes'" for g in groups if g != "nosidecar")
    sidecar = ""
    if "sidecar" in groups:
        sidecar = ("  initContainers:\n"
                   "  - {name: istio-proxy, image: proxyv2, restartPolicy: Always,\n"
                   "     ports: [{name: http-envoy-prom, containerPort: 15090}]}\n")
    return (
        "apiVersion: v1\nkind: Pod\n"
        f"metadata: {{name: {name}, namespace: istio-system, labels: {{{labels}}}}}\n"
        "spec:\n"
        f"  nodeName: node{i}\n"
        "  containers:\n"
        "  - {name: discovery, image: pilot, ports: [{name: grpc-xds, containerPort: 8080}]}\n"
        + sidecar +
        "status:\n"
        f"  phase: Running\n  podIP: {pod_ip(name, 'ipv4')}\n"
        f"  podIPs: [{{ip: {pod_ip(name, 'ipv4')}}}, {{ip: '{pod_ip(name, 'ipv6')}'}}]\n"
        "  conditions: [{type: Ready, status: 'True'}]\n"
    )


def service(name: str, index: int, selector: str, distribution: str = "", *, port: int = XDS,
            target: str = "grpc-xds") -> str:
    td = f"  trafficDistribution: {distribution}\n" if distribution else ""
    return (
        "apiVersion: v1\nkind: Service\n"
        f"metadata: {{name: {name}, namespace: istio-system}}\n"
        "spec:\n"
        "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n"
        f"  clusterIP: 10.96.7.{index}\n  clusterIPs: [10.96.7.{index}, 'fd00:10:96::7:{index}']\n"
        f"  selector: {{{selector}: 'yes'}}\n"
        f"  ports: [{{name: grpc, port: {port}, targetPort: {target}, appProtocol: grpc}}]\n"
        + td
    )


SERVICES = (
    # istio's own istiod Service: PreferClose, Pods in zone-a (pod1-1) and zone-b (pod3-1)
    service("istiod", 10, "istiod", "PreferClose"),
    # pod1-1, pod2-1 (both zone-a) and pod3-1 (zone-b)
    service("zonal", 20, "ring", "PreferSameZone"),
    service("local-first", 30, "ring", "PreferSameNode"),
    # pod2-1 (zone-a) and pod3-1 (zone-b): nothing on node1 or node4
    service("fallback", 40, "fallback", "PreferSameNode"),
    # a named targetPort defined only on pod1-1's native sidecar; pod3-1 has no such port
    service("envoy-prom", 50, "istiod", port=PROM, target="http-envoy-prom"),
)


def manifest(tmp: Path) -> Path:
    pods = [pod(name, groups) for name, groups in ENDPOINT_PODS.items()]
    return write_manifests(tmp, proxy_config_yaml(cluster_cidr=DUAL_STACK_CLUSTER_CIDR), nodes(), *pods, *SERVICES)


@dataclass
class Env:
    lab: Lab
    family: str

    def vip(self, index: int, port: int = XDS) -> tuple[str, int]:
        return (f"fd00:10:96::7:{index}" if self.family == "ipv6" else f"10.96.7.{index}", port)

    def answered(self, client: str, index: int, count: int, *, pods: set[str], port: int = XDS,
                 dst_port: int = 8080) -> set[str]:
        """``count`` connections from ``client`` to Service ``index``; each must reach one of
        ``pods`` on ``dst_port`` (client source kept). Returns the pods that answered."""
        got = set()
        dst = self.vip(index, port)
        for _ in range(count):
            r = self.lab.tcp_probe(client, *dst)
            assert_reached(r, pods=pods, dst_port=dst_port, vip=dst, src=pod_ip(client, self.family))
            got.add(r.pod)
        return got


@pytest.fixture(params=BACKEND_FAMILIES, ids=backend_family_id)
def env(request, make_lab, tmp_path) -> Env:
    """The lab with every endpoint serving and node1, node3 and node4 running their own rules."""
    backend, family = request.param
    lab = make_lab(Topology.simple(nodes=4, pods_per_node=2, clients=0, ipv6=True))
    for name in ENDPOINT_PODS:
        lab.serve(name, tcp_ports=(8080, PROM))
    path = manifest(tmp_path)
    for node in ("node1", "node3", "node4"):
        result = compile_and_apply(lab, path, backend, node=node, family=family)
        assert result.warnings == (), result.warnings
    return Env(lab, family)


def test_prefer_close_keeps_each_zone_on_its_own_pod(env):
    """istiod: a zone-a node sends every connection to the zone-a pod, a zone-b node to the
    zone-b pod; a zone-c node, with no endpoint hinted for it, uses both."""
    assert env.answered("pod1-2", 10, 20, pods={"pod1-1"}) == {"pod1-1"}
    assert env.answered("pod3-2", 10, 20, pods={"pod3-1"}) == {"pod3-1"}
    # 2 candidates, 20 probes: P(one never answers) = 2^-19
    assert env.answered("pod4-1", 10, 20, pods={"pod1-1", "pod3-1"}) == {"pod1-1", "pod3-1"}


def test_prefer_same_zone_spans_the_zones_nodes(env):
    """The zone is the unit: node1 uses zone-a's pods on node1 and node2, never zone-b's."""
    assert env.answered("pod1-2", 20, 20, pods={"pod1-1", "pod2-1"}) == {"pod1-1", "pod2-1"}


def test_prefer_same_node_prefers_the_node_local_pod(env):
    """Same Pods as ``zonal``: PreferSameNode keeps node1's traffic on pod1-1; node4 (no
    endpoint on the node, none in its zone) uses all three."""
    assert env.answered("pod1-2", 30, 20, pods={"pod1-1"}) == {"pod1-1"}
    # 3 candidates, 36 probes: P(one never answers) < 3 * (2/3)^36 = 1.4e-6
    got = env.answered("pod4-1", 30, 36, pods={"pod1-1", "pod2-1", "pod3-1"})
    assert got == {"pod1-1", "pod2-1", "pod3-1"}


def test_prefer_same_node_falls_back_to_the_zone(env):
    """No endpoint on node1: its zone-a peer pod2-1 takes every connection; node4 uses both."""
    assert env.answered("pod1-2", 40, 20, pods={"pod2-1"}) == {"pod2-1"}
    assert env.answered("pod4-1", 40, 20, pods={"pod2-1", "pod3-1"}) == {"pod2-1", "pod3-1"}


def test_named_port_on_native_sidecar(env):
    """envoy-prom's targetPort is defined only on pod1-1's restartPolicy=Always init container:
    every connection reaches pod1-1 on 15090; pod3-1 (no such port) is no endpoint."""
    assert env.answered("pod4-1", 50, 12, pods={"pod1-1"}, port=PROM, dst_port=PROM) == {"pod1-1"}
