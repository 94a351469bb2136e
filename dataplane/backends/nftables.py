"""nftables backend: a :class:`NodePlan` as an ``nft -f`` script.

The script replaces one table of its own per family (``ip kube-proxy`` or
``ip6 kube-proxy``) in a single transaction, with kube-proxy's nftables-mode
layout: one verdict-map lookup per packet (``service-ips``,
``service-nodeports``), per-service ``service-``/``local-``/``external-``/
``firewall-`` chains and per-endpoint ``endpoint-`` chains.

This module only translates plan decisions into nft vocabulary; the text is
laid out by ``templates/nftables.j2``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..naming import nft_endpoint_base, nft_service_base
from ..plan import LocalDetector, NodePlan, PlanEndpoint, ServicePortPlan
from ._jinja import template

TABLE = "kube-proxy"


def table_family(plan_family: str) -> str:
    """nft address family of the table for a plan family."""
    return "ip6" if plan_family == "ipv6" else "ip"


@dataclass(frozen=True, slots=True)
class EndpointView:
    chain: str
    affinity_set: str
    ip: str
    target: str  # dnat target "ip:port" / "[ip6]:port"


@dataclass(frozen=True, slots=True)
class PolicyView:
    chain: str
    masquerade: Optional[str]  # extra match of the ClusterIP masquerade rule ("" = all), or None
    endpoints: tuple[EndpointView, ...]


@dataclass(frozen=True, slots=True)
class StepView:
    match: str  # "" or a match followed by a space
    verdict: str
    comment: Optional[str]


@dataclass(frozen=True, slots=True)
class ServiceView:
    plan: ServicePortPlan
    spn: str
    proto: str
    external_chain: str
    firewall_chain: str
    internal_verdict: Optional[str]
    policies: tuple[PolicyView, ...]
    steps: tuple[StepView, ...]
    endpoints: tuple[EndpointView, ...]
    firewall_sources: str  # "{ a, b }"


def _detector_match(addr: str, d: LocalDetector, local: bool) -> str:
    """kube-proxy's IfLocal / IfNotLocal expression for the local-traffic detector."""
    op = "" if local else "!= "
    if d.kind == "cidr":
        return f"{addr} saddr {op}{d.value}"
    if d.kind == "interface-prefix":
        return f'iifname {op}"{d.value}*"'
    if d.kind == "bridge":
        return f'iifname {op}"{d.value}"'
    raise ValueError("no local-traffic detector")


_STEP_COMMENTS = {
    ("pod", "cluster"): "short-circuit pod traffic",
    ("host", "masquerade"): "masquerade local traffic",
    ("host", "cluster"): "short-circuit local traffic",
}


def _filter_verdict(v: Optional[str]) -> Optional[str]:
    return {"reject": "goto reject-chain", "drop": "drop", None: None}[v]


def _service_view(p: ServicePortPlan, plan: NodePlan, addr: str) -> ServiceView:
    base = nft_service_base(p.namespace, p.name, p.protocol, p.port_name)
    chains = {"cluster": f"service-{base}", "local": f"local-{base}"}

    def ep_view(ep: PlanEndpoint) -> EndpointView:
        eb = nft_endpoint_base(p.namespace, p.name, p.protocol, p.port_name, ep.ip, ep.port)
        return EndpointView(chain=f"endpoint-{eb}", affinity_set=f"affinity-{eb}", ip=ep.ip, target=ep.address)

    eps = {ep.address: ep_view(ep) for ep in p.endpoints}

    def policy(kind: str, members: tuple[PlanEndpoint, ...]) -> PolicyView:
        masq: Optional[str] = None
        if p.internal_chain == kind:
            if plan.cluster_ip_masquerade == "all":
                masq = ""
            elif plan.cluster_ip_masquerade == "non-local":
                masq = _detector_match(addr, plan.local_detector, local=False) + " "
        return PolicyView(chain=chains[kind], masquerade=masq, endpoints=tuple(eps[e.address] for e in members))

    policies = []
    if p.uses_cluster_chain:
        policies.append(policy("cluster", p.cluster_endpoints))
    if p.uses_local_chain:
        policies.append(policy("local", p.local_endpoints))

    steps = []
    for s in p.external_steps:
        if s.source == "pod":
            match = _detector_match(addr, plan.local_detector, local=True) + " "
        elif s.source == "host":
            match = "fib saddr type local "
        else:
            match = ""
        verdict = "jump mark-for-masquerade" if s.action == "masquerade" else f"goto {chains[s.action]}"
        steps.append(StepView(match=match, verdict=verdict, comment=_STEP_COMMENTS.get((s.source, s.action))))

    sources = list(p.source_ranges) + (list(p.load_balancer_ips) if p.firewall_allows_lb_ips else [])
    return ServiceView(
        plan=p,
        spn=p.spn,
        proto=p.protocol,
        external_chain=f"external-{base}",
        firewall_chain=f"firewall-{base}",
        internal_verdict=f"goto {chains[p.internal_chain]}" if p.internal_chain else None,
        policies=tuple(policies),
        steps=tuple(steps),
        endpoints=tuple(eps[a] for a in sorted(eps)),
        firewall_sources="{ " + ", ".join(sources) + " }",
    )


@dataclass(frozen=True, slots=True)
class Element:
    key: str
    verdict: str
    comment: Optional[str] = None


def _elements(views: list[ServiceView]) -> dict[str, list[Element]]:
    """The elements of every map, from the services' plan decisions."""
    m: dict[str, list[Element]] = {
        "service-ips": [], "service-nodeports": [], "firewall-ips": [],
        "no-endpoint-services": [], "no-endpoint-nodeports": [],
    }
    for v in views:
        p, proto = v.plan, v.proto
        if v.internal_verdict:
            m["service-ips"].append(Element(f"{p.cluster_ip} . {proto} . {p.port}", v.internal_verdict))
        elif p.internal_filter:
            m["no-endpoint-services"].append(
                Element(f"{p.cluster_ip} . {proto} . {p.port}", _filter_verdict(p.internal_filter), v.spn))
        for ip in p.external_ips + p.load_balancer_ips:
            if p.external_forward:
                m["service-ips"].append(Element(f"{ip} . {proto} . {p.port}", f"goto {v.external_chain}"))
            if p.external_filter:
                m["no-endpoint-services"].append(
                    Element(f"{ip} . {proto} . {p.port}", _filter_verdict(p.external_filter), v.spn))
        if p.firewall:
            for ip in p.load_balancer_ips:
                m["firewall-ips"].append(Element(f"{ip} . {proto} . {p.port}", f"goto {v.firewall_chain}"))
        if p.node_port:
            if p.external_forward:
                m["service-nodeports"].append(Element(f"{proto} . {p.node_port}", f"goto {v.external_chain}"))
            if p.external_filter:
                m["no-endpoint-nodeports"].append(
                    Element(f"{proto} . {p.node_port}", _filter_verdict(p.external_filter), v.spn))
    return m


def render(plan: NodePlan) -> str:
    """The complete ``nft -f`` script for a plan: it replaces the table atomically."""
    if plan.mode != "nftables":
        raise ValueError(f"plan was built for {plan.mode} mode, not nftables")
    addr = "ip6" if plan.family == "ipv6" else "ip"
    views = [_service_view(p, plan, addr) for p in plan.services]
    if plan.nodeports.match_all:
        loopback = "::1" if plan.family == "ipv6" else "127.0.0.0/8"
        nodeport_match = f"fib daddr type local {addr} daddr != {loopback}"
    else:
        nodeport_match = f"{addr} daddr @nodeport-ips"
    return template("nftables.j2").render(
        plan=plan,
        family=table_family(plan.family),
        table=TABLE,
        addr=addr,
        addr_type="ipv6_addr" if plan.family == "ipv6" else "ipv4_addr",
        views=views,
        maps=_elements(views),
        nodeport_match=nodeport_match,
        mark="0x%08x" % int(plan.masquerade_mark, 16),
    )
