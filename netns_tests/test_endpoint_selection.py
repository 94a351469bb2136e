"""Issue 3, proven with packets in both backends and both families: which endpoints a Service
uses (kube-proxy's CategorizeEndpoints): endpoint conditions, the serving+terminating fallback
(computed separately for cluster and local traffic) and topology hints.

Topology (``Topology.simple(nodes=2, pods_per_node=3, clients=1, ipv6=True)``): node1 (zone
``zone-1``, 192.0.2.1 / 2001:db8::1) is the node under test, node2 (``zone-2``) only routes
its pods. pod1-3 (10.244.1.12 / fd00:10:244:1::12) is a pod on node1 that is no endpoint: it
plays the in-cluster client; client1 (192.0.2.100 / 2001:db8::100) is outside the cluster and
routes via node1. Endpoints are pod1-1, pod1-2 (node1) and pod2-1, pod2-2 (node2). The
Services are dual-stack; node1's rules are compiled and applied for one family per test.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from dataplane.compiler import CompileResult
from dataplane.lab import Lab, Topology
from svc_lab import (
    BACKEND_FAMILIES,
    DUAL_STACK_CLUSTER_CIDR,
    assert_reached,
    backend_family_id,
    client_ip,
    compile_and_apply,
    dual_stack_endpoint_slices,
    node_ip,
    nodes_yaml,
    pod_ip,
    proxy_config_yaml,
    write_manifests,
)

pytestmark = pytest.mark.netns

SLICE_PORTS = "[{name: http, port: 8080, protocol: TCP}]"
PODS = ("pod1-1", "pod1-2", "pod2-1", "pod2-2")

# Endpoint conditions as the EndpointSlice controller writes them.
READY = "conditions: {ready: true, serving: true, terminating: false}"
NOT_READY = "conditions: {ready: false, serving: false, terminating: false}"
TERMINATING_SERVING = "conditions: {ready: false, serving: true, terminating: true}"
TERMINATING_NOT_SERVING = "conditions: {ready: false, serving: false, terminating: true}"


def hints(*zones: str) -> str:
    return "hints: {forZones: [" + ", ".join(f"{{name: {z}}}" for z in zones) + "]}"


def service(name: str, index: int, spec: str = "", *, node_port: bool = False) -> str:
    """A dual-stack Service shop/<name> with ClusterIPs 10.96.5.<index> / fd00:10:96::5:<index>,
    port http 80 -> 8080 (NodePort 30500 + index when ``node_port``)."""
    np = f", nodePort: {30500 + index}" if node_port else ""
    return (
        "apiVersion: v1\n"
        "kind: Service\n"
        f"metadata: {{name: {name}, namespace: shop}}\n"
        "spec:\n"
        f"  type: {'NodePort' if node_port else 'ClusterIP'}\n"
        f"  selector: {{app: {name}}}\n"
        "  ipFamilyPolicy: RequireDualStack\n"
        "  ipFamilies: [IPv4, IPv6]\n"
        f"  clusterIP: 10.96.5.{index}\n"
        f"  clusterIPs: [10.96.5.{index}, 'fd00:10:96::5:{index}']\n"
        f"  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080{np}}}]\n"
        + "".join(f"  {line}\n" for line in spec.strip().splitlines())
    )


def slices(name: str, *endpoints: tuple[str, str]) -> str:
    return dual_stack_endpoint_slices("shop", name, SLICE_PORTS, endpoints)


SERVICES = [
    # Ready endpoints exist: only they are used; not-ready ones never, and a
    # serving+terminating one not either (it is only a fallback).
    service("mixed", 10),
    slices("mixed", ("pod1-1", READY), ("pod1-2", NOT_READY), ("pod2-1", READY),
           ("pod2-2", TERMINATING_SERVING)),
    # No endpoint is ready: the serving+terminating ones are used, the others not.
    service("draining", 20),
    slices("draining", ("pod1-1", TERMINATING_SERVING), ("pod1-2", NOT_READY),
           ("pod2-1", TERMINATING_SERVING), ("pod2-2", TERMINATING_NOT_SERVING)),
    # Only terminating endpoints that no longer serve: none is usable, the Service rejects.
    service("drained", 30),
    slices("drained", ("pod1-1", TERMINATING_NOT_SERVING), ("pod2-1", TERMINATING_NOT_SERVING)),
    # eTP Local: node1's only endpoint is terminating (but serving), node2's is ready. The
    # local fallback and the cluster choice are made separately.
    service("per-class", 40, "externalTrafficPolicy: Local", node_port=True),
    slices("per-class", ("pod1-1", TERMINATING_SERVING), ("pod2-1", READY)),
    # Topology hints: every ready endpoint is hinted, two of them for node1's zone-1 (one of
    # those runs in zone-2: the controller shares endpoints out by zone capacity). The
    # not-ready pod1-2 has no hints, which does not matter: only ready endpoints count.
    service("zonal", 50),
    slices("zonal", ("pod1-1", f"{READY}, {hints('zone-1')}"), ("pod1-2", NOT_READY),
           ("pod2-1", f"{READY}, {hints('zone-1')}"), ("pod2-2", f"{READY}, {hints('zone-2')}")),
    # One ready endpoint without hints: hints are ignored, every ready endpoint is used.
    service("partly-hinted", 60),
    slices("partly-hinted", ("pod1-1", f"{READY}, {hints('zone-1')}"),
           ("pod2-1", f"{READY}, {hints('zone-1')}"), ("pod2-2", READY)),
]


@dataclass
class Env:
    lab: Lab
    backend: str
    family: str
    result: CompileResult

    def cluster_ip(self, index: int) -> tuple[str, int]:
        return (f"fd00:10:96::5:{index}" if self.family == "ipv6" else f"10.96.5.{index}", 80)

    @property
    def node1(self) -> str:
        return node_ip(1, self.family)

    def pod(self, name: str) -> str:
        return pod_ip(name, self.family)

    def plan(self, name: str):
        (p,) = [p for p in self.result.plan.services if p.name == name]
        return p

    def spread(self, ns: str, dst: tuple[str, int], count: int, *, pods, src: str) -> set[str]:
        """``count`` connections from ``ns``; each must reach one of ``pods`` with source
        ``src``. Returns the set of pods that answered."""
        answered = set()
        for _ in range(count):
            r = self.lab.tcp_probe(ns, *dst)
            assert_reached(r, pods=pods, dst_port=8080, vip=dst, src=src)
            answered.add(r.pod)
        return answered


@pytest.fixture(params=BACKEND_FAMILIES, ids=backend_family_id)
def env(request, make_lab, tmp_path) -> Env:
    backend, family = request.param
    lab = make_lab(Topology.simple(nodes=2, pods_per_node=3, clients=1, ipv6=True))
    for pod in PODS:
        lab.serve(pod, tcp_ports=(8080,))
    manifest = write_manifests(
        tmp_path, proxy_config_yaml(cluster_cidr=DUAL_STACK_CLUSTER_CIDR), nodes_yaml(2, ipv6=True), *SERVICES
    )
    result = compile_and_apply(lab, manifest, backend, family=family)
    assert result.warnings == (), result.warnings
    return Env(lab, backend, family, result)


# ------------------------------------------------------------------ endpoint conditions


def test_only_ready_endpoints_are_used(env):
    # 2 candidates, 20 probes: P(one of them never answers) = 2^-19
    got = env.spread("pod1-3", env.cluster_ip(10), 20, pods={"pod1-1", "pod2-1"}, src=env.pod("pod1-3"))
    assert got == {"pod1-1", "pod2-1"}, got


def test_serving_terminating_endpoints_are_the_fallback(env):
    got = env.spread("pod1-3", env.cluster_ip(20), 20, pods={"pod1-1", "pod2-1"}, src=env.pod("pod1-3"))
    assert got == {"pod1-1", "pod2-1"}, got
    # terminating endpoints that are not serving are never a fallback: no usable endpoint
    assert env.plan("drained").internal_filter == "reject"
    assert env.lab.tcp_probe("pod1-3", *env.cluster_ip(30)).outcome == "refused"
    # control: the same pod answers through a Service that may use it
    r = env.lab.tcp_probe("pod1-3", *env.cluster_ip(10))
    assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=8080, vip=env.cluster_ip(10))


def test_terminating_fallback_is_per_traffic_class(env):
    """eTP Local, node1 has only a terminating (serving) endpoint, node2 a ready one:
    external traffic to node1's NodePort uses the local fallback pod1-1 (client source kept),
    ClusterIP traffic uses the ready pod2-1 only."""
    p = env.plan("per-class")
    assert [e.ip for e in p.local_endpoints] == [env.pod("pod1-1")]
    assert [e.ip for e in p.cluster_endpoints] == [env.pod("pod2-1")]
    np = (env.node1, 30540)
    env.spread("client1", np, 8, pods={"pod1-1"}, src=client_ip(1, env.family))
    env.spread("pod1-3", env.cluster_ip(40), 12, pods={"pod2-1"}, src=env.pod("pod1-3"))
    env.spread("client1", env.cluster_ip(40), 4, pods={"pod2-1"}, src=env.node1)


# ------------------------------------------------------------------ topology hints


def test_topology_hints_keep_traffic_in_the_zone(env):
    """node1 is in zone-1: only the endpoints hinted for zone-1 are used (pod2-1 among them,
    although it runs on node2), never pod2-2 (hinted for zone-2)."""
    for ns, src in (("pod1-3", env.pod("pod1-3")), ("client1", env.node1)):
        got = env.spread(ns, env.cluster_ip(50), 20, pods={"pod1-1", "pod2-1"}, src=src)
        assert got == {"pod1-1", "pod2-1"}, (ns, got)


def test_topology_hints_ignored_when_a_ready_endpoint_has_none(env):
    # 3 candidates, 36 probes: P(one of them never answers) < 3 * (2/3)^36 = 1.4e-6
    got = env.spread("pod1-3", env.cluster_ip(60), 36, pods={"pod1-1", "pod2-1", "pod2-2"},
                     src=env.pod("pod1-3"))
    assert got == {"pod1-1", "pod2-1", "pod2-2"}, got
