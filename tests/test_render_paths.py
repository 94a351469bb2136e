"""Every way of rendering a plan gives the same text: the one-shot render (names of all service
ports hashed in batches, iptables' top-level sections rendered for all ports in one template call
each), the same from parts rendered separately (as the sharded compile does), and the
per-service-port fragments a Proxier renders and caches."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dataplane.backends import iptables as ipt
from dataplane.backends import nftables as nft
from dataplane.compiler import render
from dataplane.input.cluster import load_cluster
from dataplane.model import (
    Cluster,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    Node,
    NodeAddress,
    ProxyConfig,
    Service,
    ServicePort,
)
from dataplane.plan import NodePlan, build_plan

CASES = Path(__file__).parent / "cases"
NODE = "n1"


def _by_fragments(plan: NodePlan) -> str:
    if plan.mode == "iptables":
        r = ipt.Renderer()
        large = ipt.is_large_cluster(plan)
        frags = [r.render_fragment(p, plan, large) for p in plan.services]
        return ipt.render_file(plan, frags, frags, stale=(), jumps=True)
    frags = [nft.Renderer().render_fragment(p, plan) for p in plan.services]
    return nft.render_full(plan, frags)


def _by_parts(plan: NodePlan, n: int) -> str:
    """The service ports rendered in ``n`` parts (some empty when n is large), laid out together."""
    ports = plan.services
    cuts = [len(ports) * k // n for k in range(n + 1)]
    if plan.mode == "iptables":
        large = ipt.is_large_cluster(plan)
        return ipt.render_parts(plan, [ipt.render_ports(plan, ports[a:b], large) for a, b in zip(cuts, cuts[1:])])
    return nft.render_parts(plan, [nft.render_ports(plan, ports[a:b]) for a, b in zip(cuts, cuts[1:])])


def _node(case: Path) -> str:
    return next(line.split(":", 1)[1].strip() for line in case.read_text().splitlines()
                if line.startswith("# node:"))


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("case", sorted(CASES.glob("*.yaml")), ids=lambda c: c.stem)
def test_cases_render_alike(case: Path, family: str, mode: str) -> None:
    plan = build_plan(load_cluster([str(case)]).cluster, _node(case), family=family, mode=mode)
    text = render(plan)
    assert text == _by_fragments(plan)
    assert _by_parts(plan, 3) == text


def _big_cluster() -> Cluster:
    """30 Services of 40 endpoints (past nftables' cascade and iptables' large-cluster limits),
    with session affinity, half of them with externalTrafficPolicy Local (a local policy chain
    beside the cluster one) and endpoints half on this node."""
    services, slices = [], []
    for i in range(30):
        local = i % 2 == 1
        services.append(Service(
            "ns", f"s{i}", type="NodePort" if local else "ClusterIP", cluster_ips=(f"10.96.0.{i + 1}",),
            ports=(ServicePort(80, "TCP", "p", node_port=30000 + i if local else None),),
            external_traffic_policy="Local" if local else "Cluster", session_affinity="ClientIP"))
        endpoints = tuple(Endpoint((f"10.244.{i}.{j}",), EndpointConditions(True, True, False),
                                   node_name=NODE if j % 2 else "n2") for j in range(40, 0, -1))
        slices.append(EndpointSlice("ns", f"s{i}-1", f"s{i}", "IPv4", endpoints,
                                    (EndpointPort(8080, "TCP", "p"),)))
    return Cluster(services=tuple(services), endpoint_slices=tuple(slices),
                   nodes=(Node(NODE, (NodeAddress("InternalIP", "192.0.2.1"),)),),
                   proxy_config=ProxyConfig(cluster_cidrs=("10.244.0.0/16",)))


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_big_cluster_renders_alike(mode: str) -> None:
    plan = build_plan(_big_cluster(), NODE, mode=mode)
    assert sum(p.uses_local_chain for p in plan.services) == 15
    if mode == "iptables":
        assert ipt.is_large_cluster(plan)
    else:
        assert len(plan.services[0].cluster_endpoints) > nft.CASCADE_MAX
    text = render(plan)
    assert text == _by_fragments(plan)
    for n in (2, 4, 64):  # 64: more parts than service ports (empty parts)
        assert _by_parts(plan, n) == text


def _nodeport_cluster() -> Cluster:
    """A NodePort Service with one endpoint on this node and one without endpoints."""
    services = tuple(Service("ns", name, type="NodePort", cluster_ips=(f"10.96.0.{k}",),
                             ports=(ServicePort(80, "TCP", "p", node_port=30000 + k),))
                     for k, name in enumerate(("served", "empty"), start=1))
    slices = (EndpointSlice("ns", "served-1", "served", "IPv4",
                            (Endpoint(("10.244.0.5",), EndpointConditions(True, True, False), node_name=NODE),),
                            (EndpointPort(8080, "TCP", "p"),)),)
    return Cluster(services=services, endpoint_slices=slices,
                   nodes=(Node(NODE, (NodeAddress("InternalIP", "192.0.2.1"),)),),
                   proxy_config=ProxyConfig(cluster_cidrs=("10.244.0.0/16",), node_port_addresses=("primary",)))


def _renders(plan: NodePlan) -> list[str]:
    """Every way of rendering ``plan``, all alike."""
    text = render(plan)
    assert _by_fragments(plan) == text and _by_parts(plan, 2) == text
    return text.splitlines()


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_backends_follow_the_plans_nodeport_filter_scope(mode: str) -> None:
    plan = build_plan(_nodeport_cluster(), NODE, mode=mode)
    assert plan.nodeports.ips == ("192.0.2.1",) and plan.nodeports.filter_match_all == (mode == "iptables")
    flipped = replace(plan, nodeports=replace(plan.nodeports, filter_match_all=not plan.nodeports.filter_match_all))
    for p, every_local in ((plan, mode == "iptables"), (flipped, mode != "iptables")):
        lines = _renders(p)
        if mode == "iptables":
            rule = [line for line in lines if line.startswith("-A KUBE-EXTERNAL-SERVICES ")]
            assert len(rule) == 1 and "--dport 30002 -j REJECT" in rule[0]
            assert ("-m addrtype --dst-type LOCAL" in rule[0]) is every_local
            assert rule[0].startswith("-A KUBE-EXTERNAL-SERVICES -d 192.0.2.1/32 ") is not every_local
        else:
            match = "fib daddr type local" if every_local else "ip daddr @nodeport-ips"
            assert f"\t\t{match} meta l4proto . th dport vmap @no-endpoint-nodeports" in lines


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_backends_follow_the_plans_loopback_exclusion(mode: str) -> None:
    plan = build_plan(_nodeport_cluster(), NODE, mode=mode)
    every = replace(plan, nodeports=replace(plan.nodeports, match_all=True, ips=(), excluded="127.0.0.0/8"))
    lines = _renders(every)
    if mode == "iptables":
        assert any(line.startswith("-A KUBE-SERVICES ! -d 127.0.0.0/8 ") and "-j KUBE-NODEPORTS" in line
                   for line in lines)
    else:
        assert "\t\tfib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports" \
            in lines
    lines = _renders(replace(every, nodeports=replace(every.nodeports, excluded=None)))
    if mode == "iptables":
        assert any(line.startswith("-A KUBE-SERVICES -m comment ") and "-j KUBE-NODEPORTS" in line
                   for line in lines)
    else:
        assert "\t\tfib daddr type local meta l4proto . th dport vmap @service-nodeports" in lines


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_backends_follow_the_plans_hairpin_masquerade(mode: str) -> None:
    plan = build_plan(_nodeport_cluster(), NODE, mode=mode)

    def is_hairpin(line: str) -> bool:
        if mode == "iptables":
            return line.startswith("-A KUBE-SEP-") and " -s 10.244.0.5/32 " in line and line.endswith(" KUBE-MARK-MASQ")
        return line == "\t\tip saddr 10.244.0.5 jump mark-for-masquerade"

    def hairpin_rules(p: NodePlan) -> list[str]:
        return [line for line in _renders(p) if is_hairpin(line)]

    assert len(hairpin_rules(plan)) == 1
    without = replace(plan, services=tuple(replace(p, hairpin_masquerade=False) for p in plan.services))
    assert hairpin_rules(without) == []
