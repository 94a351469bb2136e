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
import ipaddress
from typing import Optional, Sequence

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
    """One element of a map (``verdict`` set) or a plain set (``verdict`` None)."""

    map: str
    key: str
    verdict: Optional[str]
    comment: Optional[str] = None


def _elements(v: ServiceView) -> tuple[Element, ...]:
    """The map and set elements of one service port, from its plan decisions."""
    p, proto = v.plan, v.proto
    out = [Element("cluster-ips", p.cluster_ip, None)]
    if v.internal_verdict:
        out.append(Element("service-ips", f"{p.cluster_ip} . {proto} . {p.port}", v.internal_verdict))
    elif p.internal_filter:
        out.append(Element("no-endpoint-services", f"{p.cluster_ip} . {proto} . {p.port}",
                           _filter_verdict(p.internal_filter), v.spn))
    for ip in p.external_ips + p.load_balancer_ips:
        if p.external_forward:
            out.append(Element("service-ips", f"{ip} . {proto} . {p.port}", f"goto {v.external_chain}"))
        if p.external_filter:
            out.append(Element("no-endpoint-services", f"{ip} . {proto} . {p.port}",
                               _filter_verdict(p.external_filter), v.spn))
    if p.firewall:
        for ip in p.load_balancer_ips:
            out.append(Element("firewall-ips", f"{ip} . {proto} . {p.port}", f"goto {v.firewall_chain}"))
    if p.node_port:
        if p.external_forward:
            out.append(Element("service-nodeports", f"{proto} . {p.node_port}", f"goto {v.external_chain}"))
        if p.external_filter:
            out.append(Element("no-endpoint-nodeports", f"{proto} . {p.node_port}",
                               _filter_verdict(p.external_filter), v.spn))
    return tuple(out)


# The chains every table has; all others belong to one service port.
FIXED_CHAINS = frozenset({
    "filter-prerouting-pre-dnat", "filter-output-pre-dnat", "filter-forward", "filter-input", "filter-output",
    "nat-prerouting", "nat-output", "nat-postrouting", "cluster-ips-check", "firewall-check",
    "mark-for-masquerade", "masquerading", "nodeport-endpoints-check", "reject-chain",
    "service-endpoints-check", "services",
})

MAPS = ("service-ips", "service-nodeports", "firewall-ips", "no-endpoint-services", "no-endpoint-nodeports")


@dataclass(frozen=True, slots=True)
class ServiceFragment:
    """What one service port contributes to the table, rendered once."""

    text: str  # its sets and chains, in table-block syntax
    chains: tuple[str, ...]
    sets: tuple[tuple[str, int], ...]  # affinity sets and their timeouts
    elements: tuple[Element, ...]


def _context(plan: NodePlan) -> tuple:
    """Node-level settings every fragment depends on; a change means a full sync."""
    return (plan.family, plan.local_detector, plan.cluster_ip_masquerade, plan.masquerade_mark,
            plan.nodeports, plan.reject_unknown_cluster_ip_ports)


class Renderer:
    """Renders plans to nft scripts, caching each service port's fragment."""

    def __init__(self) -> None:
        self._cache: dict[tuple, ServiceFragment] = {}
        self._module = template("nftables_service.j2").module

    def fragment(self, p: ServicePortPlan, plan: NodePlan) -> ServiceFragment:
        key = (p, _context(plan))
        frag = self._cache.get(key)
        if frag is None:
            addr = "ip6" if plan.family == "ipv6" else "ip"
            v = _service_view(p, plan, addr)
            text = str(self._module.service(v, addr, _addr_type(plan)))
            chains: list[str] = []
            if p.firewall:
                chains.append(v.firewall_chain)
            if p.uses_external_chain:
                chains.append(v.external_chain)
            chains += [pol.chain for pol in v.policies]
            chains += [ep.chain for ep in v.endpoints]
            sets = tuple((ep.affinity_set, p.affinity_timeout) for ep in v.endpoints) if p.affinity_timeout else ()
            frag = ServiceFragment(text, tuple(chains), sets, _elements(v))
            self._cache[key] = frag
        return frag

    def fragments(self, plan: NodePlan) -> list[ServiceFragment]:
        frags = [self.fragment(p, plan) for p in plan.services]
        if len(self._cache) > 2 * len(frags) + 1024:
            keep = {(p, _context(plan)) for p in plan.services}
            self._cache = {k: f for k, f in self._cache.items() if k in keep}
        return frags

    def render(self, plan: NodePlan) -> str:
        return render_full(plan, self.fragments(plan))


def _addr_type(plan: NodePlan) -> str:
    return "ipv6_addr" if plan.family == "ipv6" else "ipv4_addr"


def render_full(plan: NodePlan, frags: Sequence[ServiceFragment]) -> str:
    """The script that replaces the whole table in one transaction."""
    if plan.mode != "nftables":
        raise ValueError(f"plan was built for {plan.mode} mode, not nftables")
    addr = "ip6" if plan.family == "ipv6" else "ip"
    maps: dict[str, list[Element]] = {m: [] for m in MAPS}
    cluster_ips: set[str] = set()
    for f in frags:
        for e in f.elements:
            if e.map == "cluster-ips":
                cluster_ips.add(e.key)
            else:
                maps[e.map].append(e)
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
        addr_type=_addr_type(plan),
        cluster_ips=sorted(cluster_ips, key=_ip_key),
        maps=maps,
        own="".join(f.text for f in frags),
        nodeport_match=nodeport_match,
        mark="0x%08x" % int(plan.masquerade_mark, 16),
    )


def _ip_key(ip: str) -> tuple[int, int]:
    a = ipaddress.ip_address(ip)
    return (a.version, int(a))


def render_update(plan: NodePlan, old: Sequence[ServiceFragment], new: Sequence[ServiceFragment]) -> str:
    """A transaction that turns a table holding ``old`` into one holding ``new``.

    Only the chains and sets of service ports whose fragment changed are
    rewritten; map elements are added and deleted one by one; chains and sets
    that are gone are flushed, then deleted. The node-level part of the table
    must be the same for both (otherwise use :func:`render_full`). Empty when
    nothing changed.
    """
    old_set, new_set = set(old), set(new)
    removed = [f for f in old if f not in new_set]
    added = [f for f in new if f not in old_set]
    if not removed and not added:
        return ""
    new_chains = {c for f in added for c in f.chains}
    kept_chains = {c for f in new for c in f.chains}
    stale_chains = sorted({c for f in removed for c in f.chains} - kept_chains)
    # an affinity set survives (with its entries) unless it is gone or its timeout changed
    new_sets = {s for f in new for s in f.sets}
    stale_sets = sorted({name for f in removed for name, t in f.sets if (name, t) not in new_sets})
    old_el = {(e.map, e.key): e for f in old for e in f.elements}
    new_el = {(e.map, e.key): e for f in new for e in f.elements}
    delete = [e for k, e in old_el.items() if new_el.get(k) != e]
    add = [e for k, e in new_el.items() if old_el.get(k) != e]
    return template("nftables_update.j2").render(
        family=table_family(plan.family),
        table=TABLE,
        flush_chains=sorted(new_chains),
        stale_chains=stale_chains,
        stale_sets=stale_sets,
        delete=sorted(delete, key=lambda e: (e.map, e.key)),
        add=sorted(add, key=lambda e: (e.map, e.key)),
        own="".join(f.text for f in added),
    )


def render(plan: NodePlan) -> str:
    """The complete ``nft -f`` script for a plan: it replaces the table atomically."""
    return Renderer().render(plan)
