"""Services with many endpoints: each endpoint is equally likely, whatever form the backend
uses to pick one (iptables' probability cascade; nftables' cascade of ``numgen`` rules up to
``CASCADE_MAX`` endpoints, one anonymous ``numgen random mod N vmap`` above it).

Topology: node1 (192.0.2.1) with 40 pods ``pod1-1``..``pod1-40`` (10.244.1.10..49) serving TCP
8080, and client1 outside the cluster CIDR.
"""
from __future__ import annotations

import collections

import pytest

from dataplane.backends.nftables import CASCADE_MAX
from dataplane.lab import Topology
from svc_lab import BACKENDS, compile_and_apply, nodes_yaml, pod_ip, proxy_config_yaml, write_manifests

pytestmark = pytest.mark.netns


def _service(name: str, ip: str, pods: list[str]) -> str:
    endpoints = "\n".join(f"- {{addresses: ['{pod_ip(p, 'ipv4')}'], conditions: {{ready: true}}, nodeName: node1}}"
                          for p in pods)
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: big}}
spec:
  clusterIP: {ip}
  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: big, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{endpoints}
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_endpoint_of_a_large_service_is_reachable_with_equal_chance(backend, make_lab, tmp_path):
    count = 40
    assert count > CASCADE_MAX  # the nftables vmap form
    lab = make_lab(Topology.simple(nodes=1, pods_per_node=count, clients=1))
    pods = [f"pod1-{j}" for j in range(1, count + 1)]
    for pod in pods:
        lab.serve(pod, tcp_ports=(8080,))
    manifest = write_manifests(tmp_path, proxy_config_yaml(), nodes_yaml(1),
                               _service("large", "10.96.0.40", pods), _service("small", "10.96.0.5", pods[:5]))
    result = compile_and_apply(lab, manifest, backend)
    if backend == "nftables":
        assert "numgen random mod 40 vmap" in result.text and "numgen random mod 5 0 goto" in result.text

    def spread(vip: str, probes: int) -> collections.Counter:
        seen: collections.Counter = collections.Counter()
        for _ in range(probes):
            r = lab.tcp_probe("client1", vip, 80)
            seen[r.pod if r.ok else r.outcome] += 1
        return seen

    large = spread("10.96.0.40", 240)
    assert set(large) <= set(pods), large
    # 240 draws over 40 equally likely endpoints: all but a few are seen (P(<30 distinct) < 1e-9)
    assert len(large) >= 30, large
    small = spread("10.96.0.5", 100)
    assert set(small) == set(pods[:5]), small
    # fair 1/5 each: P(any endpoint < 6 of 100) < 1e-4
    assert min(small.values()) >= 6, small
