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

from dataclasses import dataclass, field
import ipaddress
from typing import Iterable, NamedTuple, Optional, Sequence

from ..naming import nft_endpoint_base, nft_service_base
from ..plan import LocalDetector, NodePlan, PlanEndpoint, ServicePortPlan
from ._jinja import template

TABLE = "kube-proxy"

#: Up to this many endpoints, a policy chain picks one with a cascade of rules
#: (``numgen random mod N-i 0 goto endpoint-i`` for i = 0..N-2, then ``goto``
#: the last: each endpoint has probability 1/N, as iptables mode's
#: ``--probability`` cascade); above it, with kube-proxy's single anonymous
#: ``numgen random mod N vmap { ... }``. The kernel names and finds anonymous
#: sets by walking every set of the table, so one anonymous map per service
#: makes a full load quadratic in the number of Services (17 s for 3,000
#: Services here, 2.4 s with cascades); the cascade costs a new connection at
#: most this many rule evaluations.
CASCADE_MAX = 32


def table_family(plan_family: str) -> str:
    """nft address family of the table for a plan family."""
    return "ip6" if plan_family == "ipv6" else "ip"


class EndpointView(NamedTuple):
    """An endpoint as the template needs it (a tuple: templates unpack it without attribute lookups)."""

    chain: str
    affinity_set: str
    ip: str
    target: str  # dnat target "ip:port" / "[ip6]:port"


@dataclass(frozen=True, slots=True)
class PolicyView:
    chain: str
    masquerade: Optional[str]  # extra match of the ClusterIP masquerade rule ("" = all), or None
    endpoints: tuple[EndpointView, ...]
    cascade: tuple[tuple[str, str], ...]  # (match, endpoint chain) per rule: "numgen random mod K 0 " or ""; () = vmap


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
        views = tuple(eps[e.address] for e in members)
        n = len(views)
        cascade = tuple((f"numgen random mod {n - i} 0 " if i < n - 1 else "", v.chain)
                        for i, v in enumerate(views)) if n <= CASCADE_MAX else ()
        return PolicyView(chain=chains[kind], masquerade=masq, endpoints=views, cascade=cascade)

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
    # (namespace, name) of its Service: when two Services claim a key, the first keeps it
    owner: tuple[str, str] = field(default=("", ""), compare=False)


def _elements(v: ServiceView) -> tuple[Element, ...]:
    """The map and set elements of one service port, from its plan decisions."""
    p, proto = v.plan, v.proto
    owner = (p.namespace, p.name)

    def el(map_: str, key: str, verdict: Optional[str], comment: Optional[str] = None) -> Element:
        return Element(map_, key, verdict, comment, owner)

    out = [el("cluster-ips", p.cluster_ip, None)]
    if v.internal_verdict:
        out.append(el("service-ips", f"{p.cluster_ip} . {proto} . {p.port}", v.internal_verdict))
    elif p.internal_filter:
        out.append(el("no-endpoint-services", f"{p.cluster_ip} . {proto} . {p.port}",
                      _filter_verdict(p.internal_filter), v.spn))
    for ip in p.external_ips + p.load_balancer_ips:
        if p.external_forward:
            out.append(el("service-ips", f"{ip} . {proto} . {p.port}", f"goto {v.external_chain}"))
        if p.external_filter:
            out.append(el("no-endpoint-services", f"{ip} . {proto} . {p.port}",
                          _filter_verdict(p.external_filter), v.spn))
    if p.firewall:
        for ip in p.load_balancer_ips:
            out.append(el("firewall-ips", f"{ip} . {proto} . {p.port}", f"goto {v.firewall_chain}"))
    if p.node_port:
        if p.external_forward:
            out.append(el("service-nodeports", f"{proto} . {p.node_port}", f"goto {v.external_chain}"))
        if p.external_filter:
            out.append(el("no-endpoint-nodeports", f"{proto} . {p.node_port}",
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

    def render_fragment(self, p: ServicePortPlan, plan: NodePlan) -> ServiceFragment:
        """Render one service port's fragment (no caching)."""
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
        return ServiceFragment(text, tuple(chains), sets, _elements(v))

    def fragment(self, p: ServicePortPlan, plan: NodePlan) -> ServiceFragment:
        """One service port's fragment, rendered once per plan and node settings."""
        key = (p, _context(plan))
        frag = self._cache.get(key)
        if frag is None:
            frag = self.render_fragment(p, plan)
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
    keys: set[tuple[str, str]] = set()
    for f in frags:
        for e in f.elements:
            if e.map == "cluster-ips":
                cluster_ips.add(e.key)
            elif (e.map, e.key) not in keys:  # a frontend two Services claim: the first keeps it
                keys.add((e.map, e.key))
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


class TableIndex:
    """Which fragments hold each chain, affinity set and map element of a table.

    A partial update must not delete what an unchanged fragment still holds (a
    ClusterIP in ``cluster-ips`` is shared by every port of a Service), so the
    index counts holders. :meth:`update` costs time in the size of the change,
    not of the table.
    """

    def __init__(self, frags: Iterable[ServiceFragment] = ()) -> None:
        self.chains: dict[str, int] = {}
        self.sets: dict[tuple[str, int], int] = {}
        self.elements: dict[tuple[str, str], list[Element]] = {}
        for f in frags:
            self._add(f)

    def _add(self, f: ServiceFragment) -> None:
        for c in f.chains:
            self.chains[c] = self.chains.get(c, 0) + 1
        for st in f.sets:
            self.sets[st] = self.sets.get(st, 0) + 1
        for e in f.elements:
            self.elements.setdefault((e.map, e.key), []).append(e)

    def _remove(self, f: ServiceFragment) -> None:
        for c in f.chains:
            n = self.chains[c] - 1
            if n:
                self.chains[c] = n
            else:
                del self.chains[c]
        for st in f.sets:
            n = self.sets[st] - 1
            if n:
                self.sets[st] = n
            else:
                del self.sets[st]
        for e in f.elements:
            holders = self.elements[(e.map, e.key)]
            holders.remove(e)
            if not holders:
                del self.elements[(e.map, e.key)]

    def element(self, key: tuple[str, str]) -> Optional[Element]:
        """The element the table holds under ``key``: that of the first Service (in namespace/name
        order, as a full render keeps it) among those holding it, if any."""
        holders = self.elements.get(key)
        if not holders:
            return None
        return holders[0] if len(holders) == 1 else min(holders, key=lambda e: e.owner)

    def update(self, removed: Sequence[ServiceFragment], added: Sequence[ServiceFragment]) -> "TableDiff":
        """Replace the ``removed`` fragments by the ``added`` ones; what the table must change."""
        touched = {(e.map, e.key) for f in (*removed, *added) for e in f.elements}
        before = {k: self.element(k) for k in touched}
        old_chains = {c for f in removed for c in f.chains}
        old_sets = {st for f in removed for st in f.sets}
        for f in removed:
            self._remove(f)
        for f in added:
            self._add(f)
        after = {k: self.element(k) for k in touched}
        return TableDiff(
            flush_chains=tuple(sorted({c for f in added for c in f.chains})),
            stale_chains=tuple(sorted(c for c in old_chains if c not in self.chains)),
            stale_sets=tuple(sorted({name for name, t in old_sets if (name, t) not in self.sets})),
            delete=tuple(sorted((e for k, e in before.items() if e is not None and after[k] != e),
                                key=lambda e: (e.map, e.key))),
            add=tuple(sorted((e for k, e in after.items() if e is not None and before[k] != e),
                             key=lambda e: (e.map, e.key))),
            own="".join(f.text for f in added),
        )


@dataclass(frozen=True, slots=True)
class TableDiff:
    """What a partial update changes: chains rewritten or gone, sets gone, elements out and in."""

    flush_chains: tuple[str, ...]
    stale_chains: tuple[str, ...]
    stale_sets: tuple[str, ...]
    delete: tuple[Element, ...]
    add: tuple[Element, ...]
    own: str  # the sets and chains of the added fragments, in table-block syntax

    def __bool__(self) -> bool:
        return bool(self.flush_chains or self.stale_chains or self.stale_sets or self.delete or self.add)


def render_diff(family: str, diff: TableDiff) -> str:
    """A transaction applying ``diff`` to the ``family`` (plan family) table; empty for no change.

    Chains of changed service ports are flushed and refilled, map elements
    added and deleted one by one, chains and sets that are gone flushed, then
    deleted. The node-level part of the table must not change (otherwise use
    :func:`render_full`).
    """
    if not diff:
        return ""
    return template("nftables_update.j2").render(
        family=table_family(family),
        table=TABLE,
        flush_chains=diff.flush_chains,
        stale_chains=diff.stale_chains,
        stale_sets=diff.stale_sets,
        delete=diff.delete,
        add=diff.add,
        own=diff.own,
    )


def render_update(plan: NodePlan, old: Sequence[ServiceFragment], new: Sequence[ServiceFragment]) -> str:
    """A transaction that turns a table holding ``old`` into one holding ``new`` (see
    :func:`render_diff`). Costs time in the size of the table; a long-lived caller keeps a
    :class:`TableIndex` and passes only the changed fragments to :meth:`TableIndex.update`."""
    old_set, new_set = set(old), set(new)
    removed = [f for f in old if f not in new_set]
    added = [f for f in new if f not in old_set]
    return render_diff(plan.family, TableIndex(old).update(removed, added))


def render(plan: NodePlan) -> str:
    """The complete ``nft -f`` script for a plan: it replaces the table atomically."""
    r = Renderer()  # one-shot: no cache to fill
    return render_full(plan, [r.render_fragment(p, plan) for p in plan.services])
