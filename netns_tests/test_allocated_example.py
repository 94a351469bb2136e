"""Issue 4, proven with packets: the bundled example, written as a user writes manifests (no
clusterIP, no nodePort, Pods instead of EndpointSlices), is allocated and its EndpointSlices derived
as the API server and its controllers would, then compiled; the NodePorts allocated here reach the
right Pods, on the ports their named targetPorts resolve to.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dataplane.runtime.apply import apply_compiled
from dataplane.compiler import compile_rules
from dataplane.controllers.allocation import allocate_cluster
from dataplane.controllers.endpointslices import with_derived_slices
from dataplane.input.cluster import load_cluster
from dataplane.lab import ClientSpec, NodeSpec, PodSpec, Topology
from svc_lab import BACKENDS, assert_reached

pytestmark = pytest.mark.netns

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cluster.yaml"

TOPOLOGY = Topology(
    nodes=(NodeSpec(name="node-a", ip="192.0.2.1", pod_cidr="10.244.1.0/24"),
           NodeSpec(name="node-b", ip="192.0.2.2", pod_cidr="10.244.2.0/24")),
    pods=(
        PodSpec(name="web-5d9c7b6f4-x2kqp", node="node-a", ip="10.244.1.10"),
        PodSpec(name="web-5d9c7b6f4-7hmzt", node="node-b", ip="10.244.2.10"),
        PodSpec(name="coredns-76f75df574-pq8vd", node="node-b", ip="10.244.2.53"),
        PodSpec(name="diameter-0", node="node-a", ip="10.244.1.11"),
    ),
    clients=(ClientSpec(name="outside", ip="192.0.2.100", via="node-a"),),
)
WEB_PODS = {"web-5d9c7b6f4-x2kqp", "web-5d9c7b6f4-7hmzt"}


def _allocated_services(seed: int) -> dict[str, dict]:
    """What `dataplane allocate` prints, by Service name."""
    run = subprocess.run([sys.executable, "-I", "-m", "dataplane", "allocate", "-f", str(EXAMPLE), "--seed", str(seed)],
                         capture_output=True, text=True, check=True)
    return {d["metadata"]["name"]: d for d in yaml.safe_load_all(run.stdout) if d and d["kind"] == "Service"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_allocated_nodeports_reach_the_right_pods(make_lab, backend):
    lab = make_lab(TOPOLOGY)
    for pod in WEB_PODS:
        lab.serve(pod, tcp_ports=(8080, 9090))
    lab.serve("coredns-76f75df574-pq8vd", tcp_ports=(53,), udp_ports=(53,))

    seed = 7
    services = _allocated_services(seed)
    web = services["web"]["spec"]
    http_np, metrics_np = (p["nodePort"] for p in web["ports"])
    assert 30000 <= http_np <= 32767 and 30000 <= metrics_np <= 32767 and http_np != metrics_np
    # the same allocation in memory, as `compile --allocate --seed 7` does
    cluster = load_cluster([str(EXAMPLE)]).cluster
    allocated = allocate_cluster(cluster, seed=seed).cluster
    result = compile_rules(with_derived_slices(allocated), "node-a", backend=backend)
    apply_compiled(lab.ns("node-a"), result)

    node_a = "192.0.2.1"
    for _ in range(4):
        r = lab.tcp_probe("outside", node_a, http_np)
        assert_reached(r, pods=WEB_PODS, dst_port=8080, vip=(node_a, http_np), src=node_a)
    r = lab.tcp_probe("outside", node_a, metrics_np)
    assert_reached(r, pods=WEB_PODS, dst_port=9090, vip=(node_a, metrics_np), src=node_a)

    cluster_ip = services["web"]["spec"]["clusterIP"]
    r = lab.tcp_probe("diameter-0", cluster_ip, 80)
    assert_reached(r, pods=WEB_PODS, dst_port=8080, vip=(cluster_ip, 80), src="10.244.1.11")

    dns_ip = services["kube-dns"]["spec"]["clusterIP"]
    r = lab.udp_probe("web-5d9c7b6f4-x2kqp", dns_ip, 53)
    assert_reached(r, pods={"coredns-76f75df574-pq8vd"}, dst_port=53, vip=(dns_ip, 53), src="10.244.1.10")

    reports_ip = services["reports"]["spec"]["clusterIP"]
    assert lab.tcp_probe("diameter-0", reports_ip, 443).outcome == "refused"
