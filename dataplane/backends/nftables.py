"""nftables backend: a :class:`NodePlan` as an ``nft -f`` script.

The script replaces one table of its own per family (``ip kube-proxy`` or
``ip6 kube-proxy``) in a single transaction, with kube-proxy's nftables-mode
layout: one verdict-map lookup per packet (``service-ips``,
``service-nodeports``), per-service ``service-``/``local-``/``external-``/
``firewall-`` chains and per-endpoint ``endpoint-`` chains.

This module only translates plan decisions into nft vocabulary; the text is
laid out by ``templates/nftables/`` (``full.j2``, ``service.j2``, ``update.j2``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
import functools
import itertools
from socket import AF_INET, AF_INET6, inet_pton
from typing import Iterable, NamedTuple, Optional, Sequence

from .. import ruletext
from ..naming import nft_endpoint_bases, nft_service_bases
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


# An endpoint as the templates need it: (chain, affinity set, ip, dnat target "ip:port" /
# "[ip6]:port"). The one view made per endpoint of the cluster, so a plain tuple: as a named
# tuple read by field name in the templates it made the render about 30% slower (10k Services x
# 10 endpoints, same run); the templates unpack it into names instead
# (``for chain, affinity_set, ip, target in ...``).
EndpointView = tuple[str, str, str, str]


class PolicyView(NamedTuple):
    """A policy chain (``service-…``/``local-…``)."""

    chain: str
    masquerade: Optional[str]  # extra match of the ClusterIP masquerade rule ("" = all), or None
    endpoints: tuple[EndpointView, ...]
    # (match, endpoint) per rule, a plain pair like EndpointView: match "numgen random mod K 0 "
    # or "" for the last; empty = vmap. An iterator, read once by the template: no pair per
    # endpoint is kept.
    cascade: Iterable[tuple[str, EndpointView]]


@dataclass(slots=True)
class StepView:
    match: str  # "" or a match followed by a space
    verdict: str
    comment: Optional[str]


@dataclass(slots=True)
class ServiceView:
    plan: ServicePortPlan
    proto: str
    external_chain: str
    firewall_chain: str
    internal_verdict: Optional[str]
    policies: tuple[PolicyView, ...]
    steps: tuple[StepView, ...]
    endpoints: tuple[EndpointView, ...]  # sorted by address
    firewall_sources: str  # "{ a, b }"


class Names(NamedTuple):
    """A service port's names: the base of its chain names, its endpoints (``p.endpoints``) and
    their views, in that order."""

    base: str
    endpoints: tuple[PlanEndpoint, ...]
    views: tuple[EndpointView, ...]


def _detector_match(addr: str, d: LocalDetector, local: bool) -> str:
    """kube-proxy's IfLocal / IfNotLocal expression for the local-traffic detector."""
    op = "" if local else "!= "
    if d.kind == "cidr":
        return f"{addr} saddr {op}{ruletext.address(d.value, 'local-traffic CIDR')}"
    if d.kind == "interface-prefix":
        prefix = ruletext.interface(d.value, prefix=True, what="detectLocal.interfaceNamePrefix")
        return f"iifname {op}{ruletext.nft_string(prefix + '*', 'detectLocal.interfaceNamePrefix')}"
    if d.kind == "bridge":
        bridge = ruletext.interface(d.value, prefix=False, what="detectLocal.bridgeInterface")
        return f"iifname {op}{ruletext.nft_string(bridge, 'detectLocal.bridgeInterface')}"
    raise ValueError("no local-traffic detector")


_STEP_COMMENTS = {
    ("pod", "cluster"): "short-circuit pod traffic",
    ("host", "masquerade"): "masquerade local traffic",
    ("host", "cluster"): "short-circuit local traffic",
}


def _filter_verdict(v: Optional[str]) -> Optional[str]:
    return {"reject": "goto reject-chain", "drop": "drop", None: None}[v]


@functools.lru_cache(maxsize=None)
def _cascade_matches(n: int) -> tuple[str, ...]:
    """The match of each rule of an ``n``-endpoint cascade: rule i picks its endpoint with
    probability 1/(n-i) (``""``: the last rule takes what is left)."""
    return tuple(f"numgen random mod {n - i} 0 " for i in range(n - 1)) + ("",)


def _names(ports: Sequence[ServicePortPlan]) -> list[Names]:
    """The names of each service port; those of all ports are hashed in two batches. Raises
    :class:`~dataplane.ruletext.RuleTextError` for a port with a value that cannot be written
    into rules."""
    for p in ports:
        ruletext.check_port(p)
    endpoints = [p.endpoints for p in ports]
    bases = nft_service_bases([(p.namespace, p.name, p.protocol, p.port_name) for p in ports])
    ep_bases = nft_endpoint_bases([(p.namespace, p.name, p.protocol, p.port_name, eps)
                                   for p, eps in zip(ports, endpoints)])
    views = iter([("endpoint-" + b, "affinity-" + b, e.ip, e.address)
                  for b, e in zip(ep_bases, itertools.chain.from_iterable(endpoints))])
    return [Names(base, eps, tuple(itertools.islice(views, len(eps)))) for base, eps in zip(bases, endpoints)]


def _member_views(members: tuple[PlanEndpoint, ...], names: Names) -> tuple[EndpointView, ...]:
    """The views of ``members``, some of the endpoints of ``names``, in their order."""
    if members == names.endpoints:  # the usual case: a port with one policy chain
        return names.views
    by_address = {e.address: v for e, v in zip(names.endpoints, names.views)}
    return tuple([by_address[e.address] for e in members])


@dataclass(frozen=True, slots=True)
class NodeView:
    """What every service port's view takes from the node-level part of the plan."""

    plan: NodePlan
    addr: str  # "ip" / "ip6"
    addr_type: str  # "ipv4_addr" / "ipv6_addr"
    masquerade: Optional[str]  # extra match of ClusterIP masquerade rules ("" = all), or None


def _node_view(plan: NodePlan) -> NodeView:
    """The node-level values of ``plan``."""
    addr = "ip6" if plan.family == "ipv6" else "ip"
    masq: Optional[str] = None
    if plan.cluster_ip_masquerade == "all":
        masq = ""
    elif plan.cluster_ip_masquerade == "non-local":
        masq = _detector_match(addr, plan.local_detector, local=False) + " "
    return NodeView(plan, addr, "ipv6_addr" if plan.family == "ipv6" else "ipv4_addr", masq)


def _policy(chain: str, internal: bool, members: tuple[PlanEndpoint, ...], names: Names,
            node: NodeView) -> PolicyView:
    """A policy chain picking one of ``members``; ``internal``: ClusterIP traffic goes to it."""
    views = _member_views(members, names)
    n = len(views)
    cascade = zip(_cascade_matches(n), views) if n <= CASCADE_MAX else ()
    return PolicyView(chain, node.masquerade if internal else None, views, cascade)


def _service_view(p: ServicePortPlan, names: Names, node: NodeView) -> ServiceView:
    """The view of a service port, given its :func:`_names`."""
    base = names.base
    chains = {"cluster": f"service-{base}", "local": f"local-{base}"}
    policies = []
    if p.uses_cluster_chain:
        policies.append(_policy(chains["cluster"], p.internal_chain == "cluster", p.cluster_endpoints,
                                names, node))
    if p.uses_local_chain:
        policies.append(_policy(chains["local"], p.internal_chain == "local", p.local_endpoints, names, node))

    steps = []
    for s in p.external_steps:
        if s.source == "pod":
            match = _detector_match(node.addr, node.plan.local_detector, local=True) + " "
        elif s.source == "host":
            match = "fib saddr type local "
        else:
            match = ""
        verdict = "jump mark-for-masquerade" if s.action == "masquerade" else f"goto {chains[s.action]}"
        steps.append(StepView(match=match, verdict=verdict, comment=_STEP_COMMENTS.get((s.source, s.action))))

    sources = p.source_ranges + (p.load_balancer_ips if p.firewall_allows_lb_ips else ())
    return ServiceView(
        plan=p,
        proto=p.protocol,
        external_chain=f"external-{base}",
        firewall_chain=f"firewall-{base}",
        internal_verdict=f"goto {chains[p.internal_chain]}" if p.internal_chain else None,
        policies=tuple(policies),
        steps=tuple(steps),
        endpoints=names.views,
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


class ElementView(NamedTuple):
    """A map or set element as the table template needs it (an :class:`Element` serves too)."""

    map: str
    key: str
    verdict: Optional[str]
    comment: Optional[str]


def _elements(v: ServiceView) -> list[ElementView]:
    """The map and set elements of one service port, from its plan decisions."""
    p, proto = v.plan, v.proto
    out: list[ElementView] = [ElementView("cluster-ips", p.cluster_ip, None, None)]
    if v.internal_verdict:
        out.append(ElementView("service-ips", f"{p.cluster_ip} . {proto} . {p.port}", v.internal_verdict, None))
    elif p.internal_filter:
        out.append(ElementView("no-endpoint-services", f"{p.cluster_ip} . {proto} . {p.port}",
                               _filter_verdict(p.internal_filter), p.spn))
    for ip in p.external_ips + p.load_balancer_ips:
        if p.external_forward:
            out.append(ElementView("service-ips", f"{ip} . {proto} . {p.port}", f"goto {v.external_chain}", None))
        if p.external_filter:
            out.append(ElementView("no-endpoint-services", f"{ip} . {proto} . {p.port}",
                                   _filter_verdict(p.external_filter), p.spn))
    if p.firewall:
        for ip in p.load_balancer_ips:
            out.append(ElementView("firewall-ips", f"{ip} . {proto} . {p.port}", f"goto {v.firewall_chain}", None))
    if p.node_port:
        if p.external_forward:
            out.append(ElementView("service-nodeports", f"{proto} . {p.node_port}", f"goto {v.external_chain}", None))
        if p.external_filter:
            out.append(ElementView("no-endpoint-nodeports", f"{proto} . {p.node_port}",
                                   _filter_verdict(p.external_filter), p.spn))
    return out


# The chains every table has; all others belong to one service port.
FIXED_CHAINS = frozenset({
    "filter-prerouting-pre-dnat", "filter-output-pre-dnat", "filter-forward", "filter-input", "filter-output",
    "nat-prerouting", "nat-output", "nat-postrouting", "cluster-ips-check", "firewall-check",
    "mark-for-masquerade", "masquerading", "nodeport-endpoints-check", "reject-chain",
    "service-endpoints-check", "services",
})

MAPS = ("service-ips", "service-nodeports", "firewall-ips", "no-endpoint-services", "no-endpoint-nodeports")


#: Written by ``service.j2`` before each set and chain of a fragment rendered for a long-lived
#: caller (never in rules text: :mod:`dataplane.ruletext` refuses control characters).
_PIECE = "\x1e"


@dataclass(frozen=True, slots=True)
class ServiceFragment:
    """What one service port contributes to the table, rendered once: each of its chains and
    affinity sets by name with its own text (table-block syntax), so that a partial update can
    rewrite only the chains whose text changed."""

    chains: tuple[str, ...]
    bodies: tuple[str, ...]  # the text of each chain, in the order of ``chains``
    sets: tuple[tuple[str, int], ...]  # affinity sets and their timeouts
    set_texts: tuple[str, ...]  # the declaration of each set, in the order of ``sets``
    elements: tuple[Element, ...]

    @property
    def text(self) -> str:
        """Its sets and chains in table-block syntax, as the full table lays them out."""
        return "".join(self.set_texts) + "".join(self.bodies)



def _fragment_setstate(self: ServiceFragment, state: Sequence) -> None:
    """Unpickle a :class:`ServiceFragment` (a saved incremental record); a fragment of another
    layout is refused with :class:`TypeError`, so that the record is dropped and the next sync is
    a full one."""
    names = [f.name for f in fields(self)]
    if not isinstance(state, (list, tuple)) or len(state) != len(names):
        raise TypeError("nftables fragment of another version")
    for name, value in zip(names, state):
        object.__setattr__(self, name, value)


# Set after the decorator: before Python 3.11.4 (Debian 12 has 3.11.2), dataclass(frozen=True,
# slots=True) replaced a class's own __setstate__ with its generic one (gh-104035).
ServiceFragment.__setstate__ = _fragment_setstate  # type: ignore[method-assign]

def _context(plan: NodePlan) -> tuple:
    """Node-level settings every fragment depends on; a change means a full sync."""
    return (plan.family, plan.local_detector, plan.cluster_ip_masquerade, plan.masquerade_mark,
            plan.nodeports, plan.reject_unknown_cluster_ip_ports)


class Renderer:
    """Renders plans to nft scripts, caching each service port's fragment."""

    def __init__(self) -> None:
        self._cache: dict[tuple, ServiceFragment] = {}
        self._module = template("nftables/service.j2").module

    def render_fragment(self, p: ServicePortPlan, plan: NodePlan) -> ServiceFragment:
        """Render one service port's fragment (no caching): the template marks where each set
        and chain starts, so each one's text is kept under its name."""
        node = _node_view(plan)
        v = _service_view(p, _names((p,))[0], node)
        pieces = self._module.service(v, node.addr, node.addr_type, _PIECE).split(_PIECE)
        chains: list[str] = []
        if p.firewall:
            chains.append(v.firewall_chain)
        if p.uses_external_chain:
            chains.append(v.external_chain)
        chains += [pol.chain for pol in v.policies]
        chains += [chain for chain, _, _, _ in v.endpoints]
        sets = tuple((aff, p.affinity_timeout) for _, aff, _, _ in v.endpoints) if p.affinity_timeout else ()
        if pieces[0] or len(pieces) != 1 + len(sets) + len(chains):
            raise ValueError(f"service.j2 gave {len(pieces) - 1} pieces for {len(sets)} sets "
                             f"and {len(chains)} chains of {p.spn}")
        owner = (p.namespace, p.name)
        elements = tuple([Element(*e, owner=owner) for e in _elements(v)])
        cut = 1 + len(sets)
        return ServiceFragment(tuple(chains), tuple(pieces[cut:]), sets, tuple(pieces[1:cut]), elements)

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


def render_full(plan: NodePlan, frags: Sequence[ServiceFragment]) -> str:
    """The script that replaces the whole table in one transaction."""
    return _render_table(plan, [f.elements for f in frags], [f.text for f in frags])


def _nft_prefix(cidr: str) -> str:
    """A CIDR as nft lists it: a prefix of one address is that address."""
    address, _, length = cidr.partition("/")
    return address if length == ("128" if ":" in address else "32") else cidr


def _render_table(plan: NodePlan, elements: Iterable[Iterable[ElementView | Element]], own: Sequence[str]) -> str:
    """The whole table: the map and set ``elements`` of each service port (in plan order), and
    ``own``, the sets and chains of each, already rendered."""
    if plan.mode != "nftables":
        raise ValueError(f"plan was built for {plan.mode} mode, not nftables")
    node = _node_view(plan)
    addr = node.addr
    by_map: dict[str, dict[str, ElementView | Element]] = {m: {} for m in ("cluster-ips", *MAPS)}  # by key
    for service_elements in elements:
        for e in service_elements:
            by_map[e.map].setdefault(e.key, e)  # a frontend two Services claim: the first keeps it
    # every ClusterIP is of the plan's family: sorted by its packed bytes, numerically
    ip_key = functools.partial(inet_pton, AF_INET6 if plan.family == "ipv6" else AF_INET)
    nodeports = plan.nodeports
    if nodeports.match_all:
        nodeport_match = "fib daddr type local"
        if nodeports.excluded:
            excluded = _nft_prefix(ruletext.address(nodeports.excluded, "NodePort exclusion"))
            nodeport_match += f" {addr} daddr != {excluded}"
    else:
        nodeport_match = f"{addr} daddr @nodeport-ips"
        for ip in nodeports.ips:  # the template writes them into the set nodeport-ips
            ruletext.address(ip, "NodePort address")
    return template("nftables/full.j2").render(
        plan=plan,
        family=table_family(plan.family),
        table=TABLE,
        addr=addr,
        addr_type=node.addr_type,
        cluster_ips=sorted(by_map["cluster-ips"], key=ip_key),
        maps={m: list(by_map[m].values()) for m in MAPS},
        own=own,
        nodeport_match=nodeport_match,
        nodeport_filter_match="fib daddr type local" if nodeports.filter_match_all else nodeport_match,
        service_cidrs=[ruletext.address(c, "service CIDR") for c in plan.service_cidrs],
        mark="0x%08x" % int(plan.masquerade_mark, 16),
    )


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
        for counts, keys in ((self.chains, f.chains), (self.sets, f.sets)):
            for key in keys:
                n = counts[key] - 1
                if n:
                    counts[key] = n
                else:
                    del counts[key]
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
        """Replace the ``removed`` fragments (what the kernel holds) by the ``added`` ones; what
        the table must change, chain by chain.

        A chain of ``added`` is rewritten (added, flushed, refilled) only when it is new or its
        text differs from what ``removed`` held under its name, or when it names a set this
        update deletes; every other chain keeps its rules (and their handles). An affinity set
        is declared only when it is new (with its timeout): a set that stays keeps its entries.
        Chains and sets no longer held are flushed and deleted; map elements are deleted and
        added only where the element a full render would hold changed."""
        touched = {(e.map, e.key) for f in (*removed, *added) for e in f.elements}
        before = {k: self.element(k) for k in touched}
        old_bodies: dict[str, str] = {}
        for f in removed:
            old_bodies.update(zip(f.chains, f.bodies))
        old_sets = {st for f in removed for st in f.sets}
        for f in removed:
            self._remove(f)
        for f in added:
            self._add(f)
        after = {k: self.element(k) for k in touched}
        stale_sets = {name for name, t in old_sets if (name, t) not in self.sets}
        rewrite: dict[str, None] = {}
        declared: dict[str, None] = {}
        own: list[str] = []
        for f in added:
            # a set made again (a new timeout) is deleted first: the chains naming it (its own
            # fragment's) must be rewritten even when their text stays
            remade = [f"@{name}" for name, _ in f.sets if name in stale_sets] if stale_sets else ()
            for st, text in zip(f.sets, f.set_texts):
                if st not in old_sets and st[0] not in declared:
                    declared[st[0]] = None
                    own.append(text)
            for chain, body in zip(f.chains, f.bodies):
                if chain in rewrite or (old_bodies.get(chain) == body
                                        and not (remade and any(r in body for r in remade))):
                    continue
                rewrite[chain] = None
                own.append(body)
        return TableDiff(
            flush_chains=tuple(sorted(rewrite)),
            stale_chains=tuple(sorted(c for c in old_bodies if c not in self.chains)),
            stale_sets=tuple(sorted(stale_sets)),
            delete=tuple(sorted((e for k, e in before.items() if e is not None and after[k] != e),
                                key=lambda e: (e.map, e.key))),
            add=tuple(sorted((e for k, e in after.items() if e is not None and before[k] != e),
                             key=lambda e: (e.map, e.key))),
            own="".join(own),
        )


@dataclass(frozen=True, slots=True)
class TableDiff:
    """What a partial update changes: chains rewritten or gone, sets new or gone, elements out
    and in."""

    flush_chains: tuple[str, ...]  # chains (re)written: new ones, and those whose rules changed
    stale_chains: tuple[str, ...]
    stale_sets: tuple[str, ...]
    delete: tuple[Element, ...]
    add: tuple[Element, ...]
    own: str  # the new sets and the rewritten chains, in table-block syntax

    def __bool__(self) -> bool:
        return bool(self.flush_chains or self.stale_chains or self.stale_sets or self.delete or self.add
                    or self.own)


def render_diff(family: str, diff: TableDiff) -> str:
    """A transaction applying ``diff`` to the ``family`` (plan family) table; empty for no change.

    Chains that are new or whose rules changed are added, flushed and refilled
    (the others are not named), new affinity sets declared, map elements added
    and deleted one by one, chains and sets that are gone flushed, then deleted.
    The node-level part of the table must not change (otherwise use
    :func:`render_full`).
    """
    if not diff:
        return ""
    return template("nftables/update.j2").render(
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


# What render_ports gives for some service ports: the text of each one's chains and sets, and
# each one's map elements.
Part = tuple[list[str], list[list[ElementView]]]


def render_ports(plan: NodePlan, ports: Sequence[ServicePortPlan]) -> Part:
    """The chains, sets and map elements of ``ports`` (service ports of a plan with the node
    settings of ``plan``), to be laid out by :func:`render_parts`."""
    node = _node_view(plan)
    service = template("nftables/service.j2").module.service
    views = [_service_view(p, names, node) for p, names in zip(ports, _names(ports))]
    return [service(v, node.addr, node.addr_type) for v in views], [_elements(v) for v in views]


def render_parts(plan: NodePlan, parts: Sequence[Part]) -> str:
    """The complete script from the parts of every service port, in plan order."""
    own = [text for texts, _ in parts for text in texts]
    return _render_table(plan, [e for _, elements in parts for e in elements], own)


def render(plan: NodePlan) -> str:
    """The complete ``nft -f`` script for a plan: it replaces the table atomically.

    One-shot: no fragments to keep (their chains and sets are not needed).
    """
    return render_parts(plan, [render_ports(plan, plan.services)])
