"""iptables backend: a :class:`NodePlan` as ``iptables-restore --noflush`` input.

The layout, chain names and rule text are kube-proxy's iptables mode, written
in the canonical form ``iptables-save`` prints (address options first, then
matches in order, comments quoted the way iptables-save quotes them), so the
output can be compared with what the kernel holds.

This module only translates plan decisions into iptables vocabulary (chain
names, match options, probabilities); the templates in ``templates/iptables/``
(``full.j2``, ``service.j2``) lay the text out.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Iterable, NamedTuple, Optional, Sequence

from .. import ruletext
from ..naming import iptables_endpoint_chains, iptables_service_hashes
from ..plan import LocalDetector, NodePlan, NodePortDestinations, PlanEndpoint, ServicePortPlan, large_cluster
from ._jinja import template

MARK_MASQ = "KUBE-MARK-MASQ"

# Jumps from built-in chains, in kube-proxy's order (each is inserted at the
# top of its chain, as kube-proxy's EnsureRule(Prepend) does).
_FILTER_JUMPS = (
    ("INPUT", "-m conntrack --ctstate NEW ", "kubernetes externally-visible service portals", "KUBE-EXTERNAL-SERVICES"),
    ("FORWARD", "-m conntrack --ctstate NEW ", "kubernetes externally-visible service portals", "KUBE-EXTERNAL-SERVICES"),
    ("INPUT", "", "kubernetes health check service ports", "KUBE-NODEPORTS"),
    ("FORWARD", "-m conntrack --ctstate NEW ", "kubernetes service portals", "KUBE-SERVICES"),
    ("OUTPUT", "-m conntrack --ctstate NEW ", "kubernetes service portals", "KUBE-SERVICES"),
    ("FORWARD", "", "kubernetes forwarding rules", "KUBE-FORWARD"),
    ("INPUT", "-m conntrack --ctstate NEW ", "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
    ("OUTPUT", "-m conntrack --ctstate NEW ", "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
    ("FORWARD", "-m conntrack --ctstate NEW ", "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
)
_FIREWALL_JUMPS = (  # kubelet's jumps, which kube-proxy ensures too (no comment)
    ("INPUT", "", "", "KUBE-FIREWALL"),
    ("OUTPUT", "", "", "KUBE-FIREWALL"),
)
_NAT_JUMPS = (
    ("OUTPUT", "", "kubernetes service portals", "KUBE-SERVICES"),
    ("PREROUTING", "", "kubernetes service portals", "KUBE-SERVICES"),
    ("POSTROUTING", "", "kubernetes postrouting rules", "KUBE-POSTROUTING"),
)
FILTER_CHAINS = ("KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL", "KUBE-SERVICES")
NAT_CHAINS = ("KUBE-MARK-MASQ", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-SERVICES")
# Chains that belong to one service port; anything else named KUBE-* is top-level.
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")

_NO_QUOTE = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


_UNQUOTED = re.compile(r"[-\w]+", re.ASCII).fullmatch  # exactly the characters of _NO_QUOTE


def quote(text: str) -> str:
    """Quote a string the way iptables-save does (only when it holds other characters).

    Raises :class:`~dataplane.ruletext.RuleTextError` for text holding a character that a
    restore file cannot carry as it is (a newline ends the rule) or that only an escape could
    (a quote or a backslash): rule text from such input is refused, never escaped silently.
    """
    if _UNQUOTED(text):
        return text
    bad = ruletext.unquotable(text)
    if bad is not None:
        raise ruletext.RuleTextError(f"comment {ruletext.shown(text)}: cannot be written into "
                                     f"iptables-restore input: it holds {ruletext.shown(bad)}")
    return '"' + text.replace("'", "\\'") + '"'


def probability(n: int) -> str:
    """``1/n`` as iptables-save prints it after kube-proxy wrote it with ``%0.10f``.

    The statistic match stores ``round(2^31 * p)`` and prints it back with 11 decimals.
    """
    written = float("%0.10f" % (1.0 / n))
    stored = math.floor(0x80000000 * written + 0.5)
    return "%.11f" % (stored / 0x80000000)


@lru_cache(maxsize=4096)
def _probabilities(n: int) -> tuple[str, ...]:
    """The probability of each random jump of an ``n``-endpoint policy chain: jump i picks its
    endpoint with probability 1/(n-i); the last endpoint takes what is left (no jump of these)."""
    return tuple(probability(n - i) for i in range(n - 1))


@dataclass(frozen=True, slots=True)
class Jump:
    builtin: str
    match: str
    comment: str
    chain: str


# One endpoint chain (``KUBE-SEP-…``): (chain, DNAT target address, "-s ip/32" of the hairpin
# rule, comment of the policy chain's jump to it ("" in large clusters)). The one view made per
# endpoint of the cluster, so a plain tuple: as a named tuple read by field name in the templates
# it made the render 40-50% slower (10k Services x 10 endpoints, same run); the templates unpack
# it into names instead (``for chain, address, source, jump_comment in ...``).
EndpointView = tuple[str, str, str, str]


class NodePortMatch(NamedTuple):
    """The options that match one destination accepting NodePorts."""

    addresses: str  # address options (before -p / -m comment)
    matches: str  # matches after the comment


class PolicyView(NamedTuple):
    """A policy chain (``KUBE-SVC-…`` or ``KUBE-SVL-…``) and its endpoint jumps."""

    chain: str
    masquerade: Optional[str]  # source match of the ClusterIP masquerade rule ("" = all), or None
    endpoints: tuple[EndpointView, ...]
    # (endpoint, probability) of all but the last endpoint, a plain pair like EndpointView; an
    # iterator, read once by the template: no pair per endpoint is kept
    random_jumps: Iterable[tuple[EndpointView, str]]


@dataclass(slots=True)
class StepView:
    pre: str  # address options (before -p / -m comment)
    post: str  # matches after the comment
    comment: str  # "-m comment --comment … " or ""
    target: str


@dataclass(slots=True)
class ServiceView:
    """What the template needs for one service port."""

    plan: ServicePortPlan
    proto: str
    cluster_dst: str
    ext_chain: str
    fw_chain: str
    internal_target: Optional[str]
    lb_target: str
    external_ips: tuple[str, ...]
    lb_ips: tuple[str, ...]
    source_ranges: tuple[str, ...]
    fw_allowed_lb: tuple[str, ...]
    policies: tuple[PolicyView, ...]
    steps: tuple[StepView, ...]
    endpoints: tuple[EndpointView, ...]
    affinity_mask: str
    comments: Comments
    internal_filter_target: str  # "REJECT --reject-with …" / "DROP" / ""
    external_filter_target: str
    nodeport_filter: tuple[NodePortMatch, ...]  # see NodeView
    ep_comment: str  # comment of the endpoint chains' rules ("" in large clusters)


def _host(ip: str) -> str:
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


def _detector_match(d: LocalDetector, local: bool) -> str:
    """kube-proxy's IfLocal / IfNotLocal match for the local-traffic detector."""
    neg = "" if local else "! "
    if d.kind == "cidr":
        return f"{neg}-s {ruletext.address(d.value, 'local-traffic CIDR')}"
    if d.kind == "interface-prefix":
        return f"{neg}-i {ruletext.interface(d.value, prefix=True, what='detectLocal.interfaceNamePrefix')}+"
    if d.kind == "bridge":
        return f"{neg}-i {ruletext.interface(d.value, prefix=False, what='detectLocal.bridgeInterface')}"
    raise ValueError("no local-traffic detector")


_STEP_COMMENTS = {
    ("any", "masquerade"): "masquerade traffic for {} external destinations",
    ("pod", "cluster"): "pod traffic for {} external destinations",
    ("host", "masquerade"): "masquerade LOCAL traffic for {} external destinations",
    ("host", "cluster"): "route LOCAL traffic for {} external destinations",
}


def _comment(text: str) -> str:
    return f"-m comment --comment {quote(text)} "


def _filter_target(verdict: Optional[str], reject_with: str) -> str:
    if verdict == "reject":
        return f"REJECT --reject-with {reject_with}"
    return "DROP" if verdict == "drop" else ""


def _why(spn: str, verdict: Optional[str]) -> str:
    return _comment(spn + (" has no endpoints" if verdict == "reject" else " has no local endpoints"))


class Comments:
    """The ``-m comment --comment … `` texts of a service port's rules, by use. Each is made when
    a template first asks for it: most service ports have only a few of these rules."""

    def __init__(self, p: ServicePortPlan, spn: str, fw_chain: str) -> None:
        self._plan, self._spn, self._fw_chain = p, spn, fw_chain

    @cached_property
    def cluster_ip(self) -> str:
        return _comment(self._spn + " cluster IP")

    @cached_property
    def external_ip(self) -> str:
        return _comment(self._spn + " external IP")

    @cached_property
    def lb_ip(self) -> str:
        return _comment(self._spn + " loadbalancer IP")

    @cached_property
    def spn(self) -> str:
        return _comment(self._spn)

    @cached_property
    def internal_filter(self) -> str:
        return _why(self._spn, self._plan.internal_filter)

    @cached_property
    def external_filter(self) -> str:
        return _why(self._spn, self._plan.external_filter)

    @cached_property
    def health_check(self) -> str:
        return _comment(self._spn + " health check node port")

    @cached_property
    def firewall_drop(self) -> str:
        return _comment(f"{self._spn} traffic not accepted by {self._fw_chain}")

    @cached_property
    def firewall_end(self) -> str:
        return _comment(f"other traffic to {self._spn} will be dropped by KUBE-PROXY-FIREWALL").rstrip()


class Names(NamedTuple):
    """A service port's names: the hash of its chain names, its endpoints (``p.endpoints``) and
    their views, in that order."""

    hash: str
    endpoints: tuple[PlanEndpoint, ...]
    views: tuple[EndpointView, ...]


def _names(ports: Sequence[ServicePortPlan], endpoints: Sequence[tuple[PlanEndpoint, ...]],
           large: bool) -> list[Names]:
    """The names of each service port, given its ``endpoints`` (``p.endpoints``); those of all
    ports are hashed in two batches. Raises :class:`~dataplane.ruletext.RuleTextError` for a
    port with a value that cannot be written into rules."""
    for p in ports:
        ruletext.check_port(p)
    spns = [p.spn for p in ports]
    hashes = iptables_service_hashes([(spn, p.protocol) for spn, p in zip(spns, ports)])
    chains = iter(iptables_endpoint_chains([(spn, p.protocol, eps)
                                            for spn, p, eps in zip(spns, ports, endpoints)]))
    out = []
    for spn, h, eps in zip(spns, hashes, endpoints):
        # eps first: zip stops at its end without taking a chain of the next port
        views = tuple([(chain, e.address, f"-s {e.ip}/128" if ":" in e.ip else f"-s {e.ip}/32",
                        "" if large else _comment(f"{spn} -> {e.address}")) for e, chain in zip(eps, chains)])
        out.append(Names(h, eps, views))
    return out


@dataclass(frozen=True, slots=True)
class NodeView:
    """What every service port's view takes from the node-level part of the plan."""

    plan: NodePlan
    large: bool  # a large cluster: no per-endpoint comments
    masquerade: Optional[str]  # source match of ClusterIP masquerade rules ("" = all), or None
    reject_with: str
    affinity_mask: str
    # the matches of each KUBE-EXTERNAL-SERVICES rule of a NodePort without endpoints
    nodeport_filter: tuple[NodePortMatch, ...]


_LOCAL_DST = "-m addrtype --dst-type LOCAL "


def _nodeport_matches(nodeports: NodePortDestinations) -> tuple[NodePortMatch, ...]:
    """The matches of one rule per destination that accepts NodePorts."""
    if nodeports.match_all:
        excluded = nodeports.excluded
        return (NodePortMatch(f"! -d {ruletext.address(excluded, 'NodePort exclusion')} " if excluded else "",
                              _LOCAL_DST),)
    return tuple([NodePortMatch(f"-d {_host(ruletext.address(ip, 'NodePort address'))} ", "")
                  for ip in nodeports.ips])


def _node_view(plan: NodePlan, large: bool) -> NodeView:
    """The node-level values of ``plan`` (``large``: see :func:`is_large_cluster`)."""
    masq: Optional[str] = None
    if plan.cluster_ip_masquerade == "all":
        masq = ""
    elif plan.cluster_ip_masquerade == "non-local":
        masq = _detector_match(plan.local_detector, local=False)
    nodeports = plan.nodeports
    nodeport_filter = (NodePortMatch("", _LOCAL_DST),) if nodeports.filter_match_all else _nodeport_matches(nodeports)
    if plan.family == "ipv6":
        return NodeView(plan, large, masq, "icmp6-port-unreachable", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                        nodeport_filter)
    return NodeView(plan, large, masq, "icmp-port-unreachable", "255.255.255.255", nodeport_filter)


def _member_views(members: tuple[PlanEndpoint, ...], names: Names) -> tuple[EndpointView, ...]:
    """The views of ``members``, some of the endpoints of ``names``, in their order."""
    if members == names.endpoints:  # the usual case: a port with one policy chain
        return names.views
    by_address = {e.address: v for e, v in zip(names.endpoints, names.views)}
    return tuple([by_address[e.address] for e in members])


def _policy(chain: str, internal: bool, members: tuple[PlanEndpoint, ...], names: Names,
            node: NodeView) -> PolicyView:
    """A policy chain picking one of ``members``; ``internal``: ClusterIP traffic goes to it."""
    views = _member_views(members, names)
    random_jumps = zip(views, _probabilities(len(views)))
    return PolicyView(chain, node.masquerade if internal else None, views, random_jumps)


def _service_view(p: ServicePortPlan, names: Names, node: NodeView) -> ServiceView:
    """The view of a service port, given its :func:`_names`."""
    spn, h = p.spn, names.hash
    svc_chain, svl_chain = f"KUBE-SVC-{h}", f"KUBE-SVL-{h}"
    ext_chain, fw_chain = f"KUBE-EXT-{h}", f"KUBE-FW-{h}"
    chain_of = {"cluster": svc_chain, "local": svl_chain, "masquerade": MARK_MASQ}

    policies = []
    if p.uses_cluster_chain:
        policies.append(_policy(svc_chain, p.internal_chain == "cluster", p.cluster_endpoints, names, node))
    if p.uses_local_chain:
        policies.append(_policy(svl_chain, p.internal_chain == "local", p.local_endpoints, names, node))

    steps = []
    for s in p.external_steps:
        pre = post = ""
        if s.source == "pod":
            pre = _detector_match(node.plan.local_detector, local=True) + " "
        elif s.source == "host":
            post = "-m addrtype --src-type LOCAL "
        template_text = _STEP_COMMENTS.get((s.source, s.action))
        steps.append(StepView(pre=pre, post=post, comment=_comment(template_text.format(spn)) if template_text else "",
                              target=chain_of[s.action]))

    lb_ips = tuple(map(_host, p.load_balancer_ips))
    return ServiceView(
        plan=p,
        proto=p.protocol,
        cluster_dst=_host(p.cluster_ip),
        ext_chain=ext_chain,
        fw_chain=fw_chain,
        internal_target=chain_of[p.internal_chain] if p.internal_chain else None,
        lb_target=fw_chain if p.firewall else ext_chain,
        external_ips=tuple(map(_host, p.external_ips)),
        lb_ips=lb_ips,
        source_ranges=p.source_ranges,
        fw_allowed_lb=lb_ips if p.firewall_allows_lb_ips else (),
        policies=tuple(policies),
        steps=tuple(steps),
        endpoints=names.views,
        affinity_mask=node.affinity_mask,
        comments=Comments(p, spn, fw_chain),
        internal_filter_target=_filter_target(p.internal_filter, node.reject_with),
        external_filter_target=_filter_target(p.external_filter, node.reject_with),
        nodeport_filter=node.nodeport_filter,
        ep_comment="" if node.large else _comment(spn),
    )


def _own_chains(v: ServiceView) -> list[str]:
    """The nat chains of a service port, in declaration order."""
    p = v.plan
    chains: list[str] = []
    if p.uses_external_chain:
        chains.append(v.ext_chain)
    if p.firewall:
        chains.append(v.fw_chain)
    chains += [pol.chain for pol in v.policies]
    chains += [chain for chain, _, _, _ in v.endpoints]
    return chains


SECTIONS = ("filter_services", "filter_external", "filter_nodeports", "filter_firewall",
            "nat_services", "nat_nodeports")


@dataclass(frozen=True, slots=True)
class ServiceFragment:
    """What one service port contributes to the file, rendered once."""

    sections: tuple[str, ...]  # text for each of SECTIONS (top-level chains)
    chains: tuple[str, ...]  # its own nat chains, in declaration order
    rules: str  # the rules of its own chains


def _context(plan: NodePlan, large: bool) -> tuple:
    return (plan.family, plan.local_detector, plan.cluster_ip_masquerade, plan.nodeports, large)


class Renderer:
    """Renders plans to iptables-restore text, caching each service port's fragment.

    A fragment depends only on its :class:`ServicePortPlan` and a few node-level
    settings, so after a change only the service ports whose plan changed are
    rendered again. One renderer serves one node and family.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple, ServiceFragment] = {}
        self._module = template("iptables/service.j2").module

    def render_fragment(self, p: ServicePortPlan, plan: NodePlan, large: bool) -> ServiceFragment:
        """Render one service port's fragment (no caching)."""
        v = _service_view(p, _names((p,), (p.endpoints,), large)[0], _node_view(plan, large))
        m, one = self._module, (v,)
        sections = tuple([getattr(m, name)(one) for name in SECTIONS])
        return ServiceFragment(sections, tuple(_own_chains(v)), m.own_chains(v))

    def fragment(self, p: ServicePortPlan, plan: NodePlan, large: bool) -> ServiceFragment:
        """One service port's fragment, rendered once per plan and node settings."""
        key = (p, _context(plan, large))
        frag = self._cache.get(key)
        if frag is None:
            frag = self.render_fragment(p, plan, large)
            self._cache[key] = frag
        return frag

    def fragments(self, plan: NodePlan) -> list[ServiceFragment]:
        """The fragments of every service port of the plan, in plan order."""
        large = is_large_cluster(plan)
        frags = [self.fragment(p, plan, large) for p in plan.services]
        if len(self._cache) > 2 * len(frags) + 1024:  # forget fragments of plans long gone
            keep = {(p, _context(plan, large)) for p in plan.services}
            self._cache = {k: f for k, f in self._cache.items() if k in keep}
        return frags

    def render(self, plan: NodePlan) -> str:
        """The complete file: every chain, and the jumps from the built-in chains."""
        frags = self.fragments(plan)
        return render_file(plan, frags, frags, stale=(), jumps=True)


def is_large_cluster(plan: NodePlan) -> bool:
    """Whether ``plan`` is a large cluster (see :func:`dataplane.plan.large_cluster`): its
    endpoint chains then carry no comments."""
    return large_cluster(sum(len(p.endpoints) for p in plan.services))


def render_file(plan: NodePlan, frags: Sequence[ServiceFragment], own: Sequence[ServiceFragment],
                *, stale: Sequence[str], jumps: bool) -> str:
    """Lay out a restore file: top-level chains from every fragment in ``frags``, the own
    chains of the fragments in ``own``, deletion of the ``stale`` chains, and (when
    ``jumps``) the jumps from the built-in chains."""
    columns = list(zip(*[f.sections for f in frags])) or [()] * len(SECTIONS)  # one per section
    sections = {name: "".join(column) for name, column in zip(SECTIONS, columns)}
    return _render_file(plan, sections, [c for f in own for c in f.chains], [f.rules for f in own],
                        stale=stale, jumps=jumps)


def _render_file(plan: NodePlan, sections: dict[str, str], own_chains: list[str], own_rules: Sequence[str],
                 *, stale: Sequence[str], jumps: bool) -> str:
    """:func:`render_file`, given the text of each of SECTIONS and the own chains and rules."""
    if plan.mode != "iptables":
        raise ValueError(f"plan was built for {plan.mode} mode, not iptables")
    localhost_firewall = plan.nodeports.localhost
    filter_jumps = [Jump(*j) for j in _FILTER_JUMPS]
    if localhost_firewall:
        filter_jumps += [Jump(*j) for j in _FIREWALL_JUMPS]
    filter_chains = sorted(FILTER_CHAINS + (("KUBE-FIREWALL",) if localhost_firewall else ()))
    return template("iptables/full.j2").render(
        plan=plan,
        sections=sections,
        own_chains=own_chains,
        own_rules=own_rules,
        stale=list(stale),
        filter_chains=filter_chains,
        nat_chains=list(NAT_CHAINS),
        filter_jumps=filter_jumps if jumps else [],
        nat_jumps=[Jump(*j) for j in _NAT_JUMPS] if jumps else [],
        nodeport_rules=_nodeport_matches(plan.nodeports),  # the final KUBE-SERVICES -> KUBE-NODEPORTS rule(s)
        mark=ruletext.mark(plan.masquerade_mark),
        q=quote,
    )


# What render_ports gives for some service ports: the text of each of SECTIONS, the names of
# their own chains, and the rules of each one's own chains.
Part = tuple[list[str], list[str], list[str]]


def render_ports(plan: NodePlan, ports: Sequence[ServicePortPlan], large: bool) -> Part:
    """The rules of ``ports`` (service ports of a plan with the node settings of ``plan``;
    ``large``: see :func:`is_large_cluster`), to be laid out by :func:`render_parts`."""
    node = _node_view(plan, large)
    eps = [p.endpoints for p in ports]
    views = [_service_view(p, n, node) for p, n in zip(ports, _names(ports, eps, large))]
    m = template("iptables/service.j2").module
    return ([str(getattr(m, name)(views)) for name in SECTIONS],
            [c for v in views for c in _own_chains(v)],
            [str(m.own_chains(v)) for v in views])


def render_parts(plan: NodePlan, parts: Sequence[Part]) -> str:
    """The complete file from the parts of every service port, in plan order."""
    sections = {name: "".join(texts[k] for texts, _, _ in parts) for k, name in enumerate(SECTIONS)}
    own_chains = [c for _, chains, _ in parts for c in chains]
    own_rules = [r for _, _, rules in parts for r in rules]
    return _render_file(plan, sections, own_chains, own_rules, stale=(), jumps=True)


def render(plan: NodePlan) -> str:
    """The complete ``iptables-restore --noflush`` (or ``ip6tables-restore``) input for a plan.

    One-shot: no fragments to keep, so each top-level section is rendered for all service
    ports in one template call.
    """
    return render_parts(plan, [render_ports(plan, plan.services, is_large_cluster(plan))])
