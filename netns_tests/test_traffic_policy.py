"""Issue 3, proven with packets in both backends and both families: externalTrafficPolicy and
internalTrafficPolicy.

Topology (``Topology.simple(nodes=2, pods_per_node=3, clients=2, ipv6=True)``): node1
(192.0.2.1 / 2001:db8::1) is the node under test, node2 (192.0.2.2 / 2001:db8::2) only routes
its pods. pod1-3 (10.244.1.12 / fd00:10:244:1::12) is a pod on node1 that is no endpoint: it
plays the in-cluster client. client1 and client2 (192.0.2.100-101 / 2001:db8::100-101) are
outside the cluster and route via node1. The Services are dual-stack; node1's rules are
compiled and applied for one family per test.

What kube-proxy does (anchors "Traffic policies"):
* eTP=Local: external traffic goes to node1's own endpoints only, source preserved; pods and
  the node itself are short-circuited to all endpoints (pods not masqueraded, the node
  masqueraded); with no local endpoint, external traffic is dropped.
* eTP=Cluster: every endpoint, every external packet masqueraded.
* iTP=Local: ClusterIP traffic goes to node1's endpoints only, dropped when there is none.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from dataplane.compiler import CompileResult
from dataplane.lab import Lab, Topology
from svc_lab import (
    BACKEND_FAMILIES,
    DUAL_STACK_CLUSTER_CIDR,
    add_address,
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
READY = ""  # an endpoint with the controller's defaults (ready)


def service(name: str, index: int, spec: str, *, node_port: bool) -> str:
    """A dual-stack Service shop/<name> with ClusterIPs 10.96.3.<index> / fd00:10:96::3:<index>,
    port http 80 -> 8080 (NodePort 30300 + index when ``node_port``)."""
    np = f", nodePort: {30300 + index}" if node_port else ""
    return (
        "apiVersion: v1\n"
        "kind: Service\n"
        f"metadata: {{name: {name}, namespace: shop}}\n"
        "spec:\n"
        f"  type: {'NodePort' if node_port else 'ClusterIP'}\n"
        "  selector: {app: " + name + "}\n"
        "  ipFamilyPolicy: RequireDualStack\n"
        "  ipFamilies: [IPv4, IPv6]\n"
        f"  clusterIP: 10.96.3.{index}\n"
        f"  clusterIPs: [10.96.3.{index}, 'fd00:10:96::3:{index}']\n"
        f"  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080{np}}}]\n"
        + "".join(f"  {line}\n" for line in spec.strip().splitlines())
    )


def slices(name: str, pods) -> str:
    return dual_stack_endpoint_slices("shop", name, SLICE_PORTS, [(p, READY) for p in pods])


ALL_PODS = ("pod1-1", "pod1-2", "pod2-1", "pod2-2")
LOCAL_PODS = {"pod1-1", "pod1-2"}
REMOTE_PODS = {"pod2-1", "pod2-2"}

SERVICES = [
    # eTP Local with endpoints on both nodes.
    service("local-web", 10, "externalTrafficPolicy: Local", node_port=True),
    slices("local-web", ALL_PODS),
    # eTP Local whose endpoints all run on node2: node1 has no local endpoint.
    service("remote-web", 20, "externalTrafficPolicy: Local", node_port=True),
    slices("remote-web", sorted(REMOTE_PODS)),
    # eTP Cluster (the default, written out).
    service("cluster-web", 30, "externalTrafficPolicy: Cluster", node_port=True),
    slices("cluster-web", ALL_PODS),
    # iTP Local with one endpoint on node1 and two on node2.
    service("node-cache", 40, "internalTrafficPolicy: Local", node_port=False),
    slices("node-cache", ("pod1-1", "pod2-1", "pod2-2")),
    # iTP Local whose endpoints all run on node2.
    service("remote-cache", 50, "internalTrafficPolicy: Local", node_port=False),
    slices("remote-cache", sorted(REMOTE_PODS)),
]

PROBES = 16  # P(a given one of 2 equally likely endpoints never answers) = 2^-15


@dataclass
class Env:
    lab: Lab
    backend: str
    family: str
    result: CompileResult

    def ip(self, v4: str, v6: str) -> str:
        return v6 if self.family == "ipv6" else v4

    def cluster_ip(self, index: int) -> str:
        return self.ip(f"10.96.3.{index}", f"fd00:10:96::3:{index}")

    @property
    def node1(self) -> str:
        return node_ip(1, self.family)

    def pod(self, name: str) -> str:
        return pod_ip(name, self.family)

    def client(self, k: int) -> str:
        return client_ip(k, self.family)

    def plan(self, name: str):
        (p,) = [p for p in self.result.plan.services if p.name == name]
        return p

    def conntrack_to(self, ip: str) -> list:
        """node1's TCP conntrack entries whose original destination is ``ip``."""
        return [e for e in self.lab.conntrack_entries("node1", "tcp", family=self.family)
                if e.orig.dst == ip]


@pytest.fixture(params=BACKEND_FAMILIES, ids=backend_family_id)
def env(request, make_lab, tmp_path) -> Env:
    backend, family = request.param
    lab = make_lab(Topology.simple(nodes=2, pods_per_node=3, clients=2, ipv6=True))
    for pod in ALL_PODS:
        lab.serve(pod, tcp_ports=(8080,))
    manifest = write_manifests(
        tmp_path, proxy_config_yaml(cluster_cidr=DUAL_STACK_CLUSTER_CIDR), nodes_yaml(2, ipv6=True), *SERVICES
    )
    result = compile_and_apply(lab, manifest, backend, family=family)
    assert result.warnings == (), result.warnings
    return Env(lab, backend, family, result)


def probe_many(env: Env, ns: str, dst: str, port: int, count: int = PROBES, **kw) -> list:
    rs = [env.lab.tcp_probe(ns, dst, port, **kw) for _ in range(count)]
    bad = [r for r in rs if not r.ok]
    assert not bad, f"{ns} -> {dst}:{port}: {bad[0]}"
    return rs


# ------------------------------------------------------------------ externalTrafficPolicy: Local


def test_etp_local_preserves_source(env):
    """External clients reach only node1's own endpoints, and the pod sees the client's address."""
    np = (env.node1, 30310)
    for k in (1, 2):
        rs = probe_many(env, f"client{k}", *np)
        for r in rs:
            assert_reached(r, pods=LOCAL_PODS, dst_port=8080, vip=np, src=env.client(k))
        assert {r.pod for r in rs} == LOCAL_PODS, "both local endpoints are used"


def test_etp_local_pod_and_host_traffic_is_short_circuited_to_all_endpoints(env):
    """A pod on node1 and node1 itself are not external clients: they use every endpoint."""
    np = (env.node1, 30310)
    rs = probe_many(env, "pod1-3", *np, count=24)
    for r in rs:  # pod traffic: not masqueraded
        assert_reached(r, pods=ALL_PODS, dst_port=8080, vip=np, src=env.pod("pod1-3"))
    assert {r.pod for r in rs} & REMOTE_PODS, f"no remote endpoint answered: {[r.pod for r in rs]}"
    # Host traffic from a second node address: masqueraded to node1's primary address.
    second = env.ip("192.0.2.51", "2001:db8::51")
    add_address(env.lab, "node1", second, deprecated=True)
    rs = probe_many(env, "node1", *np, count=24, src=second)
    for r in rs:
        assert r.local == (second, r.local[1]), r
        assert_reached(r, pods=ALL_PODS, dst_port=8080, vip=np, src=env.node1)
    assert {r.pod for r in rs} & REMOTE_PODS, f"no remote endpoint answered: {[r.pod for r in rs]}"


def test_etp_local_without_local_endpoints_drops_external_traffic(env):
    """No endpoint on node1: external traffic to the NodePort is dropped (no answer at all,
    not refused) while the same client reaches the Service through its ClusterIP."""
    p = env.plan("remote-web")
    assert (p.external_filter, p.local_endpoints) == ("drop", ())
    for k in (1, 2):
        r = env.lab.tcp_probe(f"client{k}", env.node1, 30320, timeout=0.3)
        assert r.outcome == "timeout", r
    # allowed paths: the ClusterIP (iTP Cluster) from the same client, and another
    # eTP Local NodePort of the same node that does have local endpoints
    cip = (env.cluster_ip(20), 80)
    r = env.lab.tcp_probe("client1", *cip)
    assert_reached(r, pods=REMOTE_PODS, dst_port=8080, vip=cip, src=env.node1)
    r = env.lab.tcp_probe("client1", env.node1, 30310)
    assert_reached(r, pods=LOCAL_PODS, dst_port=8080, vip=(env.node1, 30310), src=env.client(1))


def test_etp_local_without_local_endpoints_pods_and_host_use_cluster_endpoints(env):
    """No endpoint on node1: pods (not masqueraded) and the node (masqueraded) still reach
    every endpoint through the NodePort."""
    np = (env.node1, 30320)
    rs = probe_many(env, "pod1-3", *np)
    for r in rs:
        assert_reached(r, pods=REMOTE_PODS, dst_port=8080, vip=np, src=env.pod("pod1-3"))
    assert {r.pod for r in rs} == REMOTE_PODS
    second = env.ip("192.0.2.51", "2001:db8::51")
    add_address(env.lab, "node1", second, deprecated=True)
    rs = probe_many(env, "node1", *np, src=second)
    for r in rs:
        assert r.local == (second, r.local[1]), r
        assert_reached(r, pods=REMOTE_PODS, dst_port=8080, vip=np, src=env.node1)
    assert {r.pod for r in rs} == REMOTE_PODS


# ------------------------------------------------------------------ externalTrafficPolicy: Cluster


def test_etp_cluster_reaches_every_endpoint_masqueraded(env):
    np = (env.node1, 30330)
    rs = probe_many(env, "client1", *np, count=48)  # P(an endpoint never answers) < 4 * (3/4)^48 = 4e-6
    for r in rs:
        assert_reached(r, pods=ALL_PODS, dst_port=8080, vip=np, src=env.node1)
    assert {r.pod for r in rs} == set(ALL_PODS), sorted(r.pod for r in rs)
    # external destinations are masqueraded whoever the sender is, a pod of node1 included
    for r in probe_many(env, "pod1-3", *np, count=8):
        assert_reached(r, pods=ALL_PODS, dst_port=8080, vip=np, src=env.node1)


# ------------------------------------------------------------------ internalTrafficPolicy: Local


def test_itp_local_uses_only_local_endpoints(env):
    cip = (env.cluster_ip(40), 80)
    for r in probe_many(env, "pod1-3", *cip, count=12):
        assert_reached(r, pods={"pod1-1"}, dst_port=8080, vip=cip, src=env.pod("pod1-3"))
    # from outside the cluster CIDR: the same local endpoint, masqueraded
    for r in probe_many(env, "client1", *cip, count=4):
        assert_reached(r, pods={"pod1-1"}, dst_port=8080, vip=cip, src=env.node1)


def test_itp_local_without_local_endpoints_drops(env):
    """No endpoint on node1: ClusterIP traffic is dropped on node1 (no answer, and it never
    left the node: no conntrack entry), while the same endpoints answer through a Service
    without the policy."""
    p = env.plan("remote-cache")
    assert (p.internal_filter, p.internal_chain) == ("drop", None)
    cip = env.cluster_ip(50)
    r = env.lab.tcp_probe("pod1-3", cip, 80, timeout=0.3)
    assert r.outcome == "timeout", r
    r = env.lab.tcp_probe("node1", cip, 80, timeout=0.3)
    assert r.outcome == "timeout", r
    assert env.conntrack_to(cip) == [], "the packets were forwarded instead of dropped on node1"
    # control: an address no rule matches also times out, but leaves node1 (conntrack entry)
    unused = env.cluster_ip(99)
    assert env.lab.tcp_probe("pod1-3", unused, 80, timeout=0.3).outcome == "timeout"
    assert env.conntrack_to(unused), "control probe left no conntrack entry"
    # allowed path: the same two endpoints through remote-web's ClusterIP (iTP Cluster)
    via = (env.cluster_ip(20), 80)
    rs = probe_many(env, "pod1-3", *via)
    for r in rs:
        assert_reached(r, pods=REMOTE_PODS, dst_port=8080, vip=via, src=env.pod("pod1-3"))
