"""Issue 3, proven with packets in both backends and both families: sessionAffinity ClientIP.

Topology (``Topology.simple(nodes=2, pods_per_node=2, clients=2, ipv6=True)``): node1 is the
node under test; the Service's four endpoints are pod1-1, pod1-2 (node1) and pod2-1, pod2-2
(node2). The clients are client1 and client2 (192.0.2.100-101 / 2001:db8::100-101), outside
the cluster and routed via node1; client1 also holds ten more underlay addresses
(192.0.2.150-159 / 2001:db8::150-159), each one another client source address.

kube-proxy keys affinity on the source address, per service port, whichever of the Service's
addresses is used (anchors "Session affinity"): iptables ``-m recent`` lists per endpoint
chain, nftables one ``affinity-…`` set per endpoint. An entry lives ``timeoutSeconds`` after
the client's last new connection (default 10800).
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass

import pytest

from dataplane.compiler import compile_rules
from dataplane.input.cluster import load_cluster
from dataplane.lab import Lab, Topology
from dataplane.runtime.netns import read_back
from dataplane.runtime.apply import apply_compiled
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
    proxy_config_yaml,
    write_manifests,
)

pytestmark = pytest.mark.netns

PODS = ("pod1-1", "pod1-2", "pod2-1", "pod2-2")
SLICE_PORTS = "[{name: http, port: 8080, protocol: TCP}]"


def service(name: str, index: int, affinity: str) -> str:
    """A dual-stack NodePort Service shop/<name> (ClusterIPs 10.96.4.<index> /
    fd00:10:96::4:<index>, port 80 -> 8080, nodePort 30400 + index) with session affinity."""
    return (
        "apiVersion: v1\n"
        "kind: Service\n"
        f"metadata: {{name: {name}, namespace: shop}}\n"
        "spec:\n"
        "  type: NodePort\n"
        f"  selector: {{app: {name}}}\n"
        "  ipFamilyPolicy: RequireDualStack\n"
        "  ipFamilies: [IPv4, IPv6]\n"
        f"  clusterIP: 10.96.4.{index}\n"
        f"  clusterIPs: [10.96.4.{index}, 'fd00:10:96::4:{index}']\n"
        f"  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: {30400 + index}}}]\n"
        + "".join(f"  {line}\n" for line in affinity.strip().splitlines())
    )


SERVICES = [
    service("sticky", 10, "sessionAffinity: ClientIP\nsessionAffinityConfig: {clientIP: {timeoutSeconds: 2}}"),
    dual_stack_endpoint_slices("shop", "sticky", SLICE_PORTS, [(p, "") for p in PODS]),
    # timeoutSeconds unset: kube-proxy's (and the API server's) default, 10800 s.
    service("sticky-default", 20, "sessionAffinity: ClientIP"),
    dual_stack_endpoint_slices("shop", "sticky-default", SLICE_PORTS, [(p, "") for p in PODS]),
]

EXTRA_SOURCES = 10


@dataclass
class Env:
    lab: Lab
    backend: str
    family: str

    def ip(self, v4: str, v6: str) -> str:
        return v6 if self.family == "ipv6" else v4

    @property
    def node1(self) -> str:
        return node_ip(1, self.family)

    def sources(self) -> list[tuple[str, str]]:
        """(namespace, source address) of every client source: client1, client2 and the
        extra addresses of client1."""
        out = [("client1", client_ip(1, self.family)), ("client2", client_ip(2, self.family))]
        for i in range(EXTRA_SOURCES):
            out.append(("client1", self.ip(f"192.0.2.{150 + i}", f"2001:db8::{150 + i}")))
        return out


def _manifest(tmp_path):
    return write_manifests(
        tmp_path, proxy_config_yaml(cluster_cidr=DUAL_STACK_CLUSTER_CIDR), nodes_yaml(2, ipv6=True), *SERVICES
    )


@pytest.fixture(params=BACKEND_FAMILIES, ids=backend_family_id)
def env(request, make_lab, tmp_path) -> Env:
    backend, family = request.param
    lab = make_lab(Topology.simple(nodes=2, pods_per_node=2, clients=2, ipv6=True))
    for pod in PODS:
        lab.serve(pod, tcp_ports=(8080,))
    e = Env(lab, backend, family)
    for _, src in e.sources()[2:]:
        add_address(lab, "client1", src)
    result = compile_and_apply(lab, _manifest(tmp_path), backend, family=family)
    assert result.warnings == (), result.warnings
    return e


def sticky_pod(env: Env, ns: str, src: str, dst: tuple[str, int], count: int) -> str:
    """Open ``count`` connections from ``src`` to ``dst``; all must reach one pod: return it."""
    answered = collections.Counter()
    for _ in range(count):
        r = env.lab.tcp_probe(ns, *dst, src=src)
        assert_reached(r, pods=PODS, dst_port=8080, vip=dst, src=env.node1)  # masqueraded (off-cluster)
        assert r.local[0] == src, r
        answered[r.pod] += 1
    assert len(answered) == 1, f"{src} -> {dst}: not sticky: {dict(answered)}"
    return next(iter(answered))


def test_affinity_same_client_same_endpoint(env):
    """20 connections from one client all reach one of the four endpoints, through the
    ClusterIP and through the NodePort alike; different clients are spread."""
    cip = (env.ip("10.96.4.10", "fd00:10:96::4:10"), 80)
    np = (env.node1, 30410)
    (ns, src), *others = env.sources()
    pod = sticky_pod(env, ns, src, cip, 20)
    assert sticky_pod(env, ns, src, np, 5) == pod, "the NodePort did not share the ClusterIP's affinity"
    chosen = {pod} | {sticky_pod(env, ns_, src_, cip, 3) for ns_, src_ in others}
    # with 12 sources choosing freely among 4 endpoints, P(all choose the same) = 4^-11
    assert len(chosen) > 1, f"every client got {chosen}: affinity is not per client"


def test_affinity_expires_after_timeout(env):
    """timeoutSeconds: 2. After 3 s without a new connection the choice is free again: over
    12 sources, some source changes endpoint and the fresh choices spread over more than one
    endpoint (either fails with probability < 1e-6 when expiry works). Each fresh choice is
    sticky again."""
    cip = (env.ip("10.96.4.10", "fd00:10:96::4:10"), 80)
    sources = env.sources()
    first = {src: sticky_pod(env, ns, src, cip, 3) for ns, src in sources}
    time.sleep(3.0)
    second = {src: sticky_pod(env, ns, src, cip, 3) for ns, src in sources}
    changed = [src for src in first if first[src] != second[src]]
    assert changed, f"no source changed endpoint after the timeout: {first}"
    assert len(set(second.values())) > 1, f"fresh choices all went to one endpoint: {second}"


@pytest.mark.parametrize("backend_family", BACKEND_FAMILIES, ids=backend_family_id)
def test_affinity_timeout_defaults_to_10800(backend_family, bare_ns, tmp_path):
    """timeoutSeconds unset: the plan, the rendered rules and the rules the kernel holds all
    carry kube-proxy's default of 10800 s (3 h). Not a packet test."""
    backend, family = backend_family
    cluster = load_cluster([str(_manifest(tmp_path))]).cluster
    result = compile_rules(cluster, "node1", backend=backend, family=family)
    timeouts = {p.name: p.affinity_timeout for p in result.plan.services}
    assert timeouts == {"sticky": 2, "sticky-default": 10800}, timeouts
    apply_compiled(bare_ns, result)
    kernel = read_back(bare_ns, backend, ipv6=family == "ipv6")
    if backend == "iptables":
        # one rcheck per endpoint in the service's KUBE-SVC-… chain
        assert result.text.count("--rcheck --seconds 10800 --reap") == 4, result.text
        assert kernel.count("--rcheck --seconds 10800 --reap") == 4, kernel
        assert kernel.count("--rcheck --seconds 2 --reap") == 4, kernel
    else:
        # one affinity set per endpoint
        assert result.text.count("timeout 10800s") == 4, result.text
        assert kernel.count("timeout 3h") == 4, kernel  # nft prints 10800 s as 3h
        assert kernel.count("timeout 2s") == 4, kernel
