"""Shared helpers for the service-dataplane namespace tests: manifests in, rules applied, packets out.

The standard lab (``Topology.simple``): ``node<i>`` at 192.0.2.<i> with pod CIDR
10.244.<i>.0/24, pods ``pod<i>-<j>`` at 10.244.<i>.<9+j>, and external clients
``client<k>`` at 192.0.2.<99+k> routed via node1. Rules are compiled for
``node1`` from the manifests and applied in its namespace, as kube-proxy would on
that node; the other nodes only route.
"""
from __future__ import annotations

import collections
import textwrap
from pathlib import Path
from typing import Iterable, Optional

from dataplane.apply import apply_compiled
from dataplane.compiler import CompileResult, compile_rules
from dataplane.lab import Lab, ProbeResult
from dataplane.parse import load_cluster

BACKENDS = ("iptables", "nftables")


def nodes_yaml(count: int, *, ipv6: bool = False) -> str:
    """Node objects matching ``Topology.simple(nodes=count)``."""
    docs = []
    for i in range(1, count + 1):
        v6 = f"\n  - {{type: InternalIP, address: '2001:db8::{i}'}}" if ipv6 else ""
        docs.append(textwrap.dedent(f"""\
            apiVersion: v1
            kind: Node
            metadata:
              name: node{i}
              labels: {{topology.kubernetes.io/zone: zone-{i}}}
            spec: {{podCIDR: 10.244.{i}.0/24}}
            status:
              addresses:
              - {{type: InternalIP, address: 192.0.2.{i}}}""") + v6)
    return "\n---\n".join(docs) + "\n"


def proxy_config_yaml(extra: str = "", *, cluster_cidr: str = "10.244.0.0/16") -> str:
    return textwrap.dedent(f"""\
        apiVersion: kubeproxy.config.k8s.io/v1alpha1
        kind: KubeProxyConfiguration
        clusterCIDR: {cluster_cidr}
        """) + textwrap.dedent(extra)


def write_manifests(tmp: Path, *docs: str) -> Path:
    path = tmp / "cluster.yaml"
    path.write_text("\n---\n".join(textwrap.dedent(d).strip() for d in docs) + "\n")
    return path


def compile_and_apply(lab: Lab, manifest: Path, backend: str, *, node: str = "node1",
                      family: str = "ipv4") -> CompileResult:
    """Compile ``manifest`` for ``node`` and load it into that node's namespace."""
    cluster = load_cluster([str(manifest)]).cluster
    result = compile_rules(cluster, node, backend=backend, family=family)
    apply_compiled(lab.ns(node), result)
    return result


def spread(lab: Lab, ns: str, dst: str, port: int, *, count: int = 40, proto: str = "tcp") -> collections.Counter:
    """Open ``count`` connections (or datagrams) and count which pod answered each."""
    probe = lab.tcp_probe if proto == "tcp" else lab.udp_probe
    seen: collections.Counter = collections.Counter()
    for _ in range(count):
        r = probe(ns, dst, port)
        seen[r.pod if r.ok else r.outcome] += 1
    return seen


def host(hp: Optional[tuple[str, int]]) -> Optional[str]:
    return hp[0] if hp else None


def assert_reached(r: ProbeResult, *, pods: Iterable[str], dst_port: int, vip: tuple[str, int],
                   src: Optional[str] = None) -> None:
    """The flow reached one of ``pods`` on ``dst_port``, replies came back from ``vip``,
    and (when given) the pod saw source address ``src``."""
    assert r.ok, f"probe failed: {r.outcome} {r.error}"
    assert r.pod in set(pods), f"answered by {r.pod}"
    assert r.server_saw_dst is not None and r.server_saw_dst[1] == dst_port, r.server_saw_dst
    assert r.peer == vip, f"reply came from {r.peer}, not the service address {vip}"
    if src is not None:
        assert host(r.server_saw_src) == src, f"pod saw source {r.server_saw_src}, expected {src}"
