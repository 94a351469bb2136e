"""The offline packet tracer (``dataplane trace``), checked like upstream's runPacketFlowTests.

Every flow is traced through the rules the backends render from tests/cases/*.yaml
(and a few inline manifests), for both backends. The cross-check at the end traces
every service port of every plan and compares the endpoints reached with the plan's
own decision: that is what catches a backend rendering a plan wrongly.
"""
from __future__ import annotations

import ipaddress
import json
import textwrap
from functools import lru_cache
from pathlib import Path
from typing import Optional

import pytest

from dataplane.backends.nftables import CASCADE_MAX
from dataplane.compiler import compile_rules
from dataplane.controllers.endpointslices import with_derived_slices
from dataplane.input.cluster import load_cluster
from dataplane.plan import NodePlan, ServicePortPlan
from dataplane.trace import Packet, TraceError, TraceResult, trace
from dataplane.trace.cli import main as trace_main

HERE = Path(__file__).parent
CASES = HERE / "cases"
BACKENDS = ("iptables", "nftables")

# node-a (192.0.2.11) in cluster CIDR 10.244.0.0/16: the start of the inline cases
NODE_A = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clusterCIDR: 10.244.0.0/16
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.0.2.11}]}
---
"""

# Inline cases for policies the golden cases do not cover.
POLICIES = NODE_A + """\
apiVersion: v1
kind: Service
metadata: {name: etp-remote, namespace: pol}
spec:
  type: NodePort
  clusterIP: 10.96.5.1
  externalTrafficPolicy: Local
  externalIPs: [198.51.100.70]
  ports: [{port: 80, protocol: TCP, nodePort: 30501}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: etp-remote-1, namespace: pol, labels: {kubernetes.io/service-name: etp-remote}}
addressType: IPv4
ports: [{port: 80, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.60], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: itp-local, namespace: pol}
spec:
  clusterIP: 10.96.5.2
  internalTrafficPolicy: Local
  ports: [{port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: itp-local-1, namespace: pol, labels: {kubernetes.io/service-name: itp-local}}
addressType: IPv4
ports: [{port: 80, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.61], nodeName: node-a}
- {addresses: [10.244.2.61], nodeName: node-b}
"""

INTERFACE_DETECTOR = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
detectLocalMode: InterfaceNamePrefix
detectLocal: {interfaceNamePrefix: veth}
iptables: {masqueradeAll: false}
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.0.2.11}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ifc}
spec:
  clusterIP: 10.96.6.1
  ports: [{port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: ifc, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 80, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.70], nodeName: node-b}
"""

BOTH_LOCAL = NODE_A + """\
apiVersion: v1
kind: Service
metadata: {name: both, namespace: pol}
spec:
  type: NodePort
  clusterIP: 10.96.7.1
  internalTrafficPolicy: Local
  externalTrafficPolicy: Local
  ports: [{port: 80, protocol: TCP, nodePort: 30701}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: both-1, namespace: pol, labels: {kubernetes.io/service-name: both}}
addressType: IPv4
ports: [{port: 80, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.80], nodeName: node-a}
- {addresses: [10.244.2.80], nodeName: node-b}
"""

def large_case(count: int) -> str:
    """A ClusterIP Service with ``count`` endpoints (and session affinity) on node-a."""
    return NODE_A + """\
apiVersion: v1
kind: Service
metadata: {name: large, namespace: big}
spec:
  clusterIP: 10.96.8.1
  sessionAffinity: ClientIP
  ports: [{port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: large-1, namespace: big, labels: {kubernetes.io/service-name: large}}
addressType: IPv4
ports: [{port: 80, protocol: TCP}]
endpoints:
""" + "".join(f"- {{addresses: [10.244.3.{i}]}}\n" for i in range(1, count + 1))


INLINE = {"policies": POLICIES, "interface": INTERFACE_DETECTOR, "both-local": BOTH_LOCAL}


# ------------------------------------------------------------------- helpers


def _settings(path: Path) -> dict[str, str]:
    """The ``# node:`` / ``# families:`` header of a case file."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


@pytest.fixture(scope="session")
def inline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("trace-cases")
    for name, text in INLINE.items():
        (directory / f"{name}.yaml").write_text(textwrap.dedent(text))
    return directory


@lru_cache(maxsize=None)
def _compiled(path: str, node: str, backend: str, family: str) -> tuple[str, NodePlan]:
    cluster = with_derived_slices(load_cluster([path]).cluster)
    result = compile_rules(cluster, node, backend=backend, family=family)  # type: ignore[arg-type]
    return result.text, result.plan


def compiled(case: str, backend: str, family: str = "ipv4", directory: Optional[Path] = None) -> tuple[str, NodePlan]:
    """The rules and plan of a case (a tests/cases stem, or an inline case in ``directory``)."""
    path = (directory or CASES) / f"{case}.yaml"
    return _compiled(str(path), "node-a", backend, family)


def run(case: str, backend: str, src: str, dst: str, dport: int, proto: str = "tcp",
        directory: Optional[Path] = None, **kw) -> TraceResult:
    family = "ipv6" if ":" in dst else "ipv4"
    text, plan = compiled(case, backend, family, directory)
    return trace(text, backend, Packet(src, dst, dport, proto, **kw), local_ips=plan.node_ips)


def endpoints(result: TraceResult) -> dict[str, float]:
    return dict(result.endpoints)


def assert_dnat(result: TraceResult, expected: dict[str, float], masquerade: bool) -> None:
    assert result.verdict == "dnat", "\n".join(result.path_lines())
    assert endpoints(result) == pytest.approx(expected, abs=1e-6), "\n".join(result.path_lines())
    assert result.masquerade is masquerade, "\n".join(result.path_lines())


def assert_verdict(result: TraceResult, verdict: str) -> None:
    assert result.verdict == verdict, "\n".join(result.path_lines())
    assert result.endpoints == () and result.masquerade is False


# ------------------------------------------------------------- flow tests

LB_EPS = {"10.244.1.20:8443": 0.5, "10.244.2.20:8443": 0.5}
WEB_EPS = {"10.244.1.10:8080": 1 / 3, "10.244.2.10:8080": 1 / 3, "10.244.2.11:8080": 1 / 3}


@pytest.mark.parametrize("backend", BACKENDS)
class TestFlows:
    def test_cluster_ip_from_a_pod(self, backend: str) -> None:
        assert_dnat(run("features", backend, "10.244.3.5", "10.96.2.1", 443), LB_EPS, masquerade=False)

    def test_cluster_ip_from_outside_the_cluster_cidr_is_masqueraded(self, backend: str) -> None:
        assert_dnat(run("features", backend, "203.0.113.9", "10.96.2.1", 443), LB_EPS, masquerade=True)

    def test_cluster_ip_from_the_node_is_masqueraded(self, backend: str) -> None:
        result = run("features", backend, "192.0.2.11", "10.96.2.1", 443)
        assert_dnat(result, LB_EPS, masquerade=True)
        assert "hook output" in result.path_lines() and "hook prerouting" not in result.path_lines()

    def test_from_node_flag_takes_the_output_path(self, backend: str) -> None:
        result = run("nodeport", backend, "10.9.9.9", "10.96.1.80", 80, from_node=True)
        assert "hook output" in result.path_lines()
        assert_dnat(result, WEB_EPS, masquerade=True)

    def test_nodeport_from_outside(self, backend: str) -> None:
        assert_dnat(run("nodeport", backend, "203.0.113.9", "192.0.2.11", 30080), WEB_EPS, masquerade=True)

    def test_nodeport_on_a_secondary_node_ip(self, backend: str) -> None:
        # iptables: every local address (addrtype LOCAL); nftables: the primary IP only.
        result = run("nodeport", backend, "203.0.113.9", "198.51.100.11", 30080)
        if backend == "iptables":
            assert_dnat(result, WEB_EPS, masquerade=True)
        else:
            assert_verdict(result, "none")

    def test_udp_nodeport_and_protocol_mismatch(self, backend: str) -> None:
        udp = {"10.244.1.10:5514": 1 / 3, "10.244.2.10:5514": 1 / 3, "10.244.2.11:5514": 1 / 3}
        assert_dnat(run("nodeport", backend, "203.0.113.9", "192.0.2.11", 30514, "udp"), udp, masquerade=True)
        assert_verdict(run("nodeport", backend, "203.0.113.9", "192.0.2.11", 30514, "tcp"), "none")

    def test_etp_local_from_outside_reaches_local_endpoints_unmasqueraded(self, backend: str) -> None:
        local = {"10.244.1.20:8443": 1.0}
        assert_dnat(run("features", backend, "203.0.113.5", "198.51.100.50", 443), local, masquerade=False)
        # NodePorts are not subject to loadBalancerSourceRanges
        assert_dnat(run("features", backend, "8.8.8.8", "192.0.2.11", 31443), local, masquerade=False)

    def test_etp_local_from_a_pod_short_circuits_to_all_endpoints(self, backend: str) -> None:
        assert_dnat(run("features", backend, "10.244.3.5", "192.0.2.11", 31443), LB_EPS, masquerade=False)

    def test_etp_local_from_the_node_is_masqueraded_to_all_endpoints(self, backend: str) -> None:
        assert_dnat(run("features", backend, "192.0.2.11", "192.0.2.11", 31443), LB_EPS, masquerade=True)

    def test_etp_local_without_local_endpoints_drops_outside_traffic(self, backend: str, inline_dir: Path) -> None:
        for dst, port in (("192.0.2.11", 30501), ("198.51.100.70", 80)):
            assert_verdict(run("policies", backend, "203.0.113.9", dst, port, directory=inline_dir), "drop")
        remote = {"10.244.2.60:80": 1.0}
        pod = run("policies", backend, "10.244.1.5", "192.0.2.11", 30501, directory=inline_dir)
        assert_dnat(pod, remote, masquerade=False)
        node = run("policies", backend, "192.0.2.11", "192.0.2.11", 30501, directory=inline_dir)
        assert_dnat(node, remote, masquerade=True)

    def test_itp_local(self, backend: str, inline_dir: Path) -> None:
        local = run("policies", backend, "10.244.1.5", "10.96.5.2", 80, directory=inline_dir)
        assert_dnat(local, {"10.244.1.61:80": 1.0}, masquerade=False)
        assert_verdict(run("features", backend, "10.244.1.5", "10.96.2.2", 80), "drop")

    def test_no_endpoints_rejects(self, backend: str) -> None:
        assert_verdict(run("clusterip", backend, "10.244.1.5", "10.96.0.30", 443), "reject")
        assert_verdict(run("nodeport", backend, "203.0.113.9", "192.0.2.11", 30081), "reject")
        assert_verdict(run("nodeport", backend, "10.244.1.5", "10.96.1.81", 80), "reject")

    def test_undefined_cluster_ip_port(self, backend: str) -> None:
        result = run("clusterip", backend, "10.244.1.5", "10.96.0.20", 9999)
        assert_verdict(result, "none" if backend == "iptables" else "reject")

    def test_load_balancer_source_ranges(self, backend: str) -> None:
        local = {"10.244.1.20:8443": 1.0}
        assert_dnat(run("features", backend, "203.0.113.100", "198.51.100.50", 443), local, masquerade=False)
        assert_verdict(run("features", backend, "203.0.113.200", "198.51.100.50", 443), "drop")
        assert_verdict(run("features", backend, "8.8.8.8", "198.51.100.50", 443), "drop")
        # a range holds the node IP, so the LB IP itself is an allowed source (a VIP bound locally)
        assert_dnat(run("features", backend, "198.51.100.50", "198.51.100.50", 443), local, masquerade=False)
        # the node itself is inside 192.0.2.0/24: host traffic goes to every endpoint, masqueraded
        assert_dnat(run("features", backend, "192.0.2.11", "198.51.100.50", 443), LB_EPS, masquerade=True)

    def test_external_ip(self, backend: str) -> None:
        ext = {"10.244.2.30:80": 1.0}
        assert_dnat(run("features", backend, "203.0.113.9", "198.51.100.60", 80), ext, masquerade=True)
        assert_dnat(run("features", backend, "10.244.1.5", "198.51.100.60", 80), ext, masquerade=True)

    def test_hairpin_is_masqueraded(self, backend: str) -> None:
        result = run("clusterip", backend, "10.244.1.2", "10.96.0.20", 80)
        assert_dnat(result, {"10.244.1.2:8080": 1 / 3, "10.244.1.3:8080": 1 / 3, "10.244.2.2:8080": 1 / 3},
                    masquerade=True)
        assert "  p=0.3333: DNAT to 10.244.1.2:8080, masquerade" in result.path_lines()
        assert "  p=0.3333: DNAT to 10.244.1.3:8080" in result.path_lines()

    @pytest.mark.parametrize("proto,port,target", [("udp", 53, 5353), ("sctp", 3868, 3868), ("tcp", 80, 8080)])
    def test_protocols(self, backend: str, proto: str, port: int, target: int) -> None:
        eps = {f"{ip}:{target}": 1 / 3 for ip in ("10.244.1.2", "10.244.1.3", "10.244.2.2")}
        assert_dnat(run("clusterip", backend, "10.244.3.5", "10.96.0.20", port, proto), eps, masquerade=False)

    def test_ipv6(self, backend: str) -> None:
        dns = run("dualstack", backend, "fd00:10:244:1::5", "fd00:96::3:2", 53, "udp")
        assert_dnat(dns, {"[fd00:10:244:2::53]:53": 1.0}, masquerade=False)
        outside = run("dualstack", backend, "2001:db8:ff::9", "fd00:96::3:2", 53, "udp")
        assert_dnat(outside, {"[fd00:10:244:2::53]:53": 1.0}, masquerade=True)
        nodeport = run("dualstack", backend, "2001:db8:ff::9", "2001:db8::11", 30800)
        assert_dnat(nodeport, {"[fd00:10:244:1::2]:8080": 1.0}, masquerade=True)

    def test_session_affinity_is_reported_and_missed(self, backend: str) -> None:
        result = run("features", backend, "10.244.3.5", "10.96.2.1", 443)
        notes = [line for line in result.path_lines() if "affinity: a returning client may stick to" in line]
        assert len(notes) == 2 and "(10.244.1.20:8443)" in notes[0] and "(10.244.2.20:8443)" in notes[1]

    def test_local_traffic_detector_by_interface(self, backend: str, inline_dir: Path) -> None:
        eps = {"10.244.2.70:80": 1.0}
        pod = run("interface", backend, "10.1.2.3", "10.96.6.1", 80, directory=inline_dir, in_interface="veth12ab")
        assert_dnat(pod, eps, masquerade=False)
        other = run("interface", backend, "10.1.2.3", "10.96.6.1", 80, directory=inline_dir, in_interface="eth0")
        assert_dnat(other, eps, masquerade=True)

    def test_path_ends_with_the_verdict(self, backend: str) -> None:
        result = run("nodeport", backend, "203.0.113.9", "192.0.2.11", 30080)
        lines = result.render().splitlines()
        assert lines[0].startswith("packet tcp 203.0.113.9 -> 192.0.2.11:30080")
        assert lines[-1].startswith("verdict: DNAT to 10.244.1.10:8080 (p=0.3333)")
        assert lines[-1].endswith("masquerade: yes")


class TestModeDifferences:
    def test_health_check_node_port_is_accepted_by_iptables_only(self) -> None:
        assert_verdict(run("features", "iptables", "203.0.113.9", "192.0.2.11", 32000), "accept")
        assert_verdict(run("features", "nftables", "203.0.113.9", "192.0.2.11", 32000), "none")

    def test_localhost_nodeports_are_iptables_only(self) -> None:
        assert_dnat(run("nodeport", "iptables", "127.0.0.1", "127.0.0.1", 30080), WEB_EPS, masquerade=True)
        assert_verdict(run("nodeport", "nftables", "127.0.0.1", "127.0.0.1", 30080), "none")

    def test_martian_localhost_packets_are_dropped(self) -> None:
        # KUBE-FIREWALL: from elsewhere to 127.0.0.0/8 and not DNATed
        assert_verdict(run("nodeport", "iptables", "203.0.113.9", "127.0.0.1", 22), "drop")


# -------------------------------------------------- cross-check with the plan


def _all_targets():
    for case in sorted(CASES.glob("*.yaml")):
        for family in _settings(case).get("families", "ipv4").split():
            for backend in BACKENDS:
                yield pytest.param(case.stem, backend, family, id=f"{case.stem}-{backend}-{family}")


def _outside_source(family: str) -> str:
    return "203.0.113.77" if family == "ipv4" else "2001:db8:ffff::77"


def _denied_source(p: ServicePortPlan, family: str) -> str:
    """An outside address that no loadBalancerSourceRange of ``p`` holds."""
    candidates = ("198.18.0.1", "192.0.0.9") if family == "ipv4" else ("2001:db8:eeee::1", "fd99::1")
    ranges = [ipaddress.ip_network(r.strip()) for r in p.source_ranges]
    return next(c for c in candidates if not any(ipaddress.ip_address(c) in r for r in ranges))


def _pod_source(plan: NodePlan) -> str:
    """An address the local-traffic detector counts as a pod, and no endpoint has."""
    assert plan.local_detector.kind == "cidr"
    net = ipaddress.ip_network(plan.local_detector.value)
    return str(net.broadcast_address - 1)


def _policy_endpoints(p: ServicePortPlan, chain: str) -> dict[str, float]:
    eps = p.cluster_endpoints if chain == "cluster" else p.local_endpoints
    return {ep.address: 1 / len(eps) for ep in eps}


def _expected_external(p: ServicePortPlan, origin: str, *, filtered: bool = True) -> tuple[str, dict[str, float], bool]:
    """What traffic from ``origin`` ("outside", "pod", "host") to an external destination of ``p``
    should get, per the plan's external steps (evaluated in order, as the external chain is).

    ``filtered``: whether the drop/reject filter for external destinations sees the packet.
    """
    masq = False
    for step in p.external_steps:
        if step.source not in ("any", origin):
            continue
        if step.action == "masquerade":
            masq = True
        else:
            return "dnat", _policy_endpoints(p, step.action), masq
    return (p.external_filter if filtered and p.external_filter else "none"), {}, False


def _external_destinations(p: ServicePortPlan, plan: NodePlan) -> list[tuple[str, int]]:
    destinations = [(ip, p.port) for ip in p.external_ips + p.load_balancer_ips]
    if p.node_port:
        destinations.append((plan.nodeports.ips[0] if plan.nodeports.ips else plan.node_ips[0], p.node_port))
    return destinations


def _check(result: TraceResult, verdict: str, eps: dict[str, float], masq: bool, what: str) -> None:
    where = f"{what}\n" + "\n".join(result.path_lines())
    assert result.verdict == verdict, where
    assert endpoints(result) == pytest.approx(eps, abs=1e-6), where
    assert result.masquerade is masq, where


@pytest.mark.parametrize("case,backend,family", list(_all_targets()))
def test_tracer_agrees_with_the_plan(case: str, backend: str, family: str) -> None:
    """For every service port, the endpoints the rules reach are the ones the plan chose."""
    text, plan = compiled(case, backend, family)
    _agree_with_plan(text, plan, backend, family)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tracer_agrees_with_the_plan_on_traffic_policies(backend: str, inline_dir: Path) -> None:
    text, plan = compiled("policies", backend, "ipv4", inline_dir)
    _agree_with_plan(text, plan, backend, "ipv4")


def _agree_with_plan(text: str, plan: NodePlan, backend: str, family: str) -> None:
    """Trace ClusterIP and external traffic of every service port from a pod, from outside
    and from the node, and compare with what the plan decided."""
    sources = {"pod": _pod_source(plan), "outside": _outside_source(family), "host": plan.node_ips[0]}

    def check(origin: str, dst: str, port: int, p: ServicePortPlan, expected: tuple[str, dict[str, float], bool],
              src: Optional[str] = None) -> None:
        src = src or sources[origin]
        result = trace(text, backend, Packet(src, dst, port, p.protocol), local_ips=plan.node_ips)
        _check(result, *expected, f"{p.spn}: {origin} {src} -> {dst}:{port}")

    for p in plan.services:
        for origin in ("pod", "outside", "host"):
            masq = plan.cluster_ip_masquerade == "all" or (origin != "pod" and plan.cluster_ip_masquerade != "none")
            if p.internal_chain:
                expected = ("dnat", _policy_endpoints(p, p.internal_chain), masq)
            else:
                expected = (p.internal_filter or "none", {}, False)
            check(origin, p.cluster_ip, p.port, p, expected)
        for dst, port in _external_destinations(p, plan):
            if p.firewall and dst in p.load_balancer_ips:  # only sources in the ranges get through
                allowed = str(ipaddress.ip_network(p.source_ranges[0].strip()).network_address + 1)
                check("outside", dst, port, p, _expected_external(p, "outside"), src=allowed)
                check("outside", dst, port, p, ("drop", {}, False), src=_denied_source(p, family))
                continue
            for origin in ("pod", "outside", "host"):
                # iptables: KUBE-EXTERNAL-SERVICES hangs off INPUT and FORWARD only, so the node's own
                # packets to a non-local external IP skip it; nftables checks them in filter-output.
                filtered = not (backend == "iptables" and origin == "host" and dst not in plan.node_ips)
                check(origin, dst, port, p, _expected_external(p, origin, filtered=filtered))


def _break_iptables(text: str) -> str:
    """A wrong rendering: the second endpoint of a 3-endpoint service gets the first one's chain."""
    lines = text.splitlines(keepends=True)
    jumps = [i for i, line in enumerate(lines) if "--probability 0.50000000000" in line]
    first = next(i for i, line in enumerate(lines) if "--probability 0.33333333349" in line)
    lines[jumps[0]] = lines[jumps[0]].rsplit("-j ", 1)[0] + "-j " + lines[first].rsplit("-j ", 1)[1]
    return "".join(lines)


def _break_nftables(text: str) -> str:
    """A wrong rendering: the first step of a three-endpoint cascade taken half of the time, not a third."""
    return text.replace("numgen random mod 3 0 goto", "numgen random mod 2 0 goto", 1)


@pytest.mark.parametrize("backend,breaker", [("iptables", _break_iptables), ("nftables", _break_nftables)])
def test_cross_check_catches_a_wrong_rendering(backend: str, breaker) -> None:
    text, plan = compiled("clusterip", backend)
    broken = breaker(text)
    assert broken != text
    p = next(s for s in plan.services if len(s.cluster_endpoints) == 3)
    packet = Packet(_pod_source(plan), p.cluster_ip, p.port, p.protocol)
    good = trace(text, backend, packet, local_ips=plan.node_ips)
    bad = trace(broken, backend, packet, local_ips=plan.node_ips)
    assert endpoints(good) == pytest.approx(_policy_endpoints(p, "cluster"))
    assert endpoints(bad) != pytest.approx(_policy_endpoints(p, "cluster"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_itp_and_etp_local_together(backend: str, inline_dir: Path) -> None:
    both = {"10.244.1.80:80": 0.5, "10.244.2.80:80": 0.5}
    pod = run("both-local", backend, "10.244.1.5", "192.0.2.11", 30701, directory=inline_dir)
    assert_dnat(pod, both, masquerade=False)
    outside = run("both-local", backend, "203.0.113.9", "192.0.2.11", 30701, directory=inline_dir)
    assert_dnat(outside, {"10.244.1.80:80": 1.0}, masquerade=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("count", [1, 2, 7, 32, 33, 40])
def test_equal_chance_for_every_endpoint_in_both_nft_forms(backend: str, count: int, inline_dir: Path) -> None:
    """Up to CASCADE_MAX endpoints nftables picks with a rule cascade, above with one numgen vmap;
    iptables always cascades. Every form gives each endpoint 1/N."""
    case = f"large-{count}"
    (inline_dir / f"{case}.yaml").write_text(large_case(count))
    rules, _ = compiled(case, backend, directory=inline_dir)
    if backend == "nftables":
        assert (f"numgen random mod {count} vmap" in rules) is (count > CASCADE_MAX)
    result = run(case, backend, "10.244.1.5", "10.96.8.1", 80, directory=inline_dir)
    assert_dnat(result, {f"10.244.3.{i}:80": 1 / count for i in range(1, count + 1)}, masquerade=False)


def test_nft_numgen_match_branches(tmp_path: Path) -> None:
    """A numgen comparison splits the flow: the matching share runs the rest of the rule."""
    rules = """\
table ip t {
	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		numgen random mod 4 { 0, 2 } dnat to 10.0.0.1
		numgen random mod 4 != 3 dnat to 10.0.0.2
		dnat to 10.0.0.3
	}
}
"""
    result = trace(rules, "nftables", Packet("192.0.2.1", "192.0.2.2", 80, "tcp"), local_ips=("192.0.2.2",))
    # 1/2 to .1; of the rest, 3/4 to .2 and 1/4 to .3
    assert endpoints(result) == pytest.approx({"10.0.0.1:80": 0.5, "10.0.0.2:80": 0.375, "10.0.0.3:80": 0.125})


# --------------------------------------------------------- interpreter details

IPT_MINI = """\
*filter
:INPUT DROP [0:0]
:CHK - [0:0]
-A INPUT -p udp -m udp --dport 53 -j ACCEPT
-A INPUT -j CHK
-A CHK -s 10.0.0.0/8 -j RETURN
-A CHK -p tcp -m multiport --dports 22,80:90 -j ACCEPT
COMMIT
"""


def test_iptables_policy_return_and_multiport() -> None:
    assert trace(IPT_MINI, "iptables", Packet("8.8.8.8", "192.0.2.1", 85), local_ips=["192.0.2.1"]).verdict == "accept"
    assert trace(IPT_MINI, "iptables", Packet("10.1.1.1", "192.0.2.1", 85), local_ips=["192.0.2.1"]).verdict == "drop"
    assert trace(IPT_MINI, "iptables", Packet("8.8.8.8", "192.0.2.1", 53, "udp"),
                 local_ips=["192.0.2.1"]).verdict == "accept"


NFT_COMMANDS = """\
add table inet t
add chain inet t pre { type nat hook prerouting priority dstnat; policy accept; }
add chain inet t pick
add chain inet t filt { type filter hook forward priority filter; policy accept; }
add map inet t svc { type ipv4_addr . inet_proto . inet_service : verdict; flags interval; }
add element inet t svc { 10.96.0.0/24 . tcp . 80-89 : goto pick }
add rule inet t pre ip daddr . meta l4proto . th dport vmap @svc
add rule inet t pick numgen random mod 4 vmap { 0-2 : jump a, 3 : jump b }
add chain inet t a
add chain inet t b
add rule inet t a meta mark set 0x10 dnat ip to 10.244.0.1:8080
add rule inet t b dnat ip to 10.244.0.2
add rule inet t filt meta mark & 0x10 != 0 ct state { new, established } drop
"""


def test_nft_command_form_intervals_ranges_and_marks() -> None:
    result = trace(NFT_COMMANDS, "nftables", Packet("8.8.8.8", "10.96.0.9", 85), local_ips=[])
    # 3/4 of the flows are marked and dropped in forward; 1/4 reach 10.244.0.2:85
    assert result.verdict == "dnat" and endpoints(result) == pytest.approx({"10.244.0.2:85": 0.25})
    assert any("branches end differently" in line for line in result.path_lines())
    miss = trace(NFT_COMMANDS, "nftables", Packet("8.8.8.8", "10.96.0.9", 90), local_ips=[])
    assert miss.verdict == "none"


def _long_iptables(n: int) -> str:
    chains = "".join(f":SEP{i} - [0:0]\n" for i in range(n))
    jumps = "".join(f"-A SVC -m statistic --mode random --probability {1 / (n - i):.11f} -j SEP{i}\n"
                    for i in range(n - 1)) + f"-A SVC -j SEP{n - 1}\n"
    seps = "".join(f"-A SEP{i} -p tcp -m tcp -j DNAT --to-destination 10.{i // 250}.{i % 250}.1:80\n"
                   for i in range(n))
    return (f"*nat\n:SVC - [0:0]\n{chains}-A PREROUTING -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j SVC\n"
            f"{jumps}{seps}COMMIT\n")


def _long_nftables(n: int) -> str:
    vips = ", ".join(f"10.96.{i // 250}.{i % 250 + 1}" for i in range(n))
    vmap = ", ".join(f"{i} : goto ep{i}" for i in range(n))
    eps = "".join(f"\tchain ep{i} {{\n\t\tdnat to 10.{i // 250}.{i % 250}.1:80\n\t}}\n" for i in range(n))
    return (
        "table ip t {\n"
        f"\tset vips {{\n\t\ttype ipv4_addr\n\t\telements = {{ {vips} }}\n\t}}\n"
        "\tchain pre {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        f"\t\tip daddr @vips tcp dport 80 numgen random mod {n} vmap {{ {vmap} }}\n\t}}\n"
        f"{eps}}}\n"
    )


@pytest.mark.parametrize("backend,render", [("iptables", _long_iptables), ("nftables", _long_nftables)])
def test_thousands_of_endpoints(backend: str, render) -> None:
    """Long random-probability chains and big maps: no recursion limit, probabilities sum to 1."""
    result = trace(render(1500), backend, Packet("8.8.8.8", "10.96.0.1", 80), local_ips=[])
    assert result.verdict == "dnat" and len(result.endpoints) == 1500
    assert sum(p for _, p in result.endpoints) == pytest.approx(1.0)
    assert endpoints(result)["10.5.249.1:80"] == pytest.approx(1 / 1500, rel=1e-6)


NFT_EDITS = """\
table ip t {
\tset s {
\t\ttype ipv4_addr . inet_service
\t\telements = { 10.0.0.1 . 80, 10.0.0.2 . 80 }
\t}
\tchain c {
\t\ttype filter hook input priority filter; policy drop;
\t\tip daddr . tcp dport @s accept
\t\tdrop
\t}
}
delete element ip t s { 10.0.0.2 . 80 }
flush chain ip t c
add rule ip t c ip daddr . tcp dport @s accept
insert rule ip t c ip saddr 192.0.2.0/24 drop
"""


def test_nft_edits_and_policy() -> None:
    def verdict(src: str, dst: str) -> str:
        return trace(NFT_EDITS, "nftables", Packet(src, dst, 80), local_ips=[dst]).verdict

    assert verdict("8.8.8.8", "10.0.0.1") == "accept"
    assert verdict("8.8.8.8", "10.0.0.2") == "drop"  # element deleted: falls to the chain policy
    assert verdict("192.0.2.7", "10.0.0.1") == "drop"  # the inserted rule comes first


@pytest.mark.parametrize("backend,text,where", [
    ("iptables", "*nat\n:KUBE-X - [0:0]\n-A KUBE-X -m frobnicate -j ACCEPT\nCOMMIT\n", "line 3: unsupported match"),
    ("iptables", "*nat\n-A KUBE-X -j ACCEPT\nCOMMIT\n", "line 2: no chain 'KUBE-X'"),
    ("iptables", "*nat\n:A - [0:0]\n-A A -j KUBE-NOPE\nCOMMIT\n", "line 3: unknown target or chain 'KUBE-NOPE'"),
    ("iptables", "*nat\n:A - [0:0]\n-A A -j DNAT --to-destination 10.0.0.1:1-5\nCOMMIT\n", "line 3"),
    ("iptables", "*filter\n-A INPUT -j ACCEPT\n", "missing COMMIT"),
    ("nftables", "table ip t {\n\tchain c {\n\t\tip daddr 10.0.0.1 flowtable @f\n\t}\n}\n", "line 3: unsupported"),
    ("nftables", "table ip t {\n\tchain c {\n\t\tjump nowhere\n\t}\n}\n", "line 3: no chain 'nowhere'"),
    ("nftables", "table ip t {\n\tchain c {\n\t\tip daddr @nope accept\n\t}\n}\n", "line 3: no set or map 'nope'"),
    ("nftables", "table ip t {\n\tchain c {\n\t\tip daddr 10.0.0.300 accept\n\t}\n}\n", "line 3: invalid address"),
    ("nftables", "table ip t {\n\tfrobnicate\n}\n", "line 2: unsupported table item"),
])
def test_unknown_syntax_is_a_clear_error(backend: str, text: str, where: str) -> None:
    with pytest.raises(TraceError, match=where):
        trace(text, backend, Packet("10.0.0.1", "10.0.0.2", 80), local_ips=[])


def test_packet_validation() -> None:
    with pytest.raises(TraceError, match="not an IP address"):
        Packet("nope", "10.0.0.1", 80)
    with pytest.raises(TraceError, match="different IP families"):
        Packet("10.0.0.1", "::1", 80)
    with pytest.raises(TraceError, match="between 1 and 65535"):
        Packet("10.0.0.1", "10.0.0.2", 0)
    with pytest.raises(TraceError, match="unsupported protocol"):
        Packet("10.0.0.1", "10.0.0.2", 80, "icmp")
    assert Packet("fd00::0:1", "FD00::2", 80).family == "ipv6" and Packet("fd00::0:1", "fd00::2", 80).src == "fd00::1"


# --------------------------------------------------------------------- CLI


def test_cli_json_is_exactly_one_object(capsys: pytest.CaptureFixture[str]) -> None:
    code = trace_main(["-f", str(CASES / "features.yaml"), "--node", "node-a", "--backend", "nftables",
                       "--src", "10.244.3.5", "--dst", "10.96.2.1", "--dport", "443", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert set(data) == {"verdict", "endpoints", "masquerade", "path"}
    assert data["verdict"] == "dnat" and data["endpoints"] == ["10.244.1.20:8443", "10.244.2.20:8443"]
    assert data["masquerade"] is False and all(isinstance(line, str) for line in data["path"])


def test_cli_rules_file_and_node_ips(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text, _ = compiled("nodeport", "iptables")
    rules = tmp_path / "rules.txt"
    rules.write_text(text)
    argv = ["--rules", str(rules), "--backend", "iptables", "--src", "203.0.113.9", "--dst", "192.0.2.11",
            "--dport", "30080"]
    assert trace_main(argv) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines()[-1] == "verdict: untouched (no rule of ours decided anything); masquerade: no"
    assert trace_main([*argv, "--node-ip", "192.0.2.11"]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines()[-1].startswith("verdict: DNAT to 10.244.1.10:8080 (p=0.3333)")


@pytest.mark.parametrize("argv,message", [
    (["--rules", "x.txt", "--src", "1.1.1.1", "--dst", "2.2.2.2", "--dport", "80"], "--backend is required"),
    (["--rules", "x.txt", "--backend", "iptables", "--node", "n", "--src", "1.1.1.1", "--dst", "2.2.2.2",
      "--dport", "80"], "--node cannot be used with --rules"),
    (["-f", "x.yaml", "--src", "1.1.1.1", "--dst", "2.2.2.2", "--dport", "80"], "--node is required"),
    (["--rules", "/nonexistent/rules", "--backend", "nftables", "--src", "1.1.1.1", "--dst", "2.2.2.2",
      "--dport", "80"], "No such file"),
    (["-f", str(CASES / "features.yaml"), "--node", "node-a", "--src", "1.1.1.1", "--dst", "2.2.2.2",
      "--dport", "99999"], "between 1 and 65535"),
])
def test_cli_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert trace_main(argv) == 1
    _, err = capsys.readouterr()
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_cli_parse_error_names_the_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rules = tmp_path / "bad.nft"
    rules.write_text("table ip t {\n\tchain c {\n\t\tip frob 1 accept\n\t}\n}\n")
    assert trace_main(["--rules", str(rules), "--backend", "nftables", "--src", "1.1.1.1", "--dst", "2.2.2.2",
                       "--dport", "80"]) == 1
    _, err = capsys.readouterr()
    assert err.startswith("error: line 3: unsupported expression") and "ip frob 1 accept" in err
