"""iptables backend: a :class:`NodePlan` as ``iptables-restore --noflush`` input.

The layout, chain names and rule text are kube-proxy's iptables mode, written
in the canonical form ``iptables-save`` prints (address options first, then
matches in order, comments quoted the way iptables-save quotes them), so the
output can be compared with what the kernel holds.

This module only translates plan decisions into iptables vocabulary (chain
names, match options, probabilities); ``templates/iptables.j2`` lays the text out.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Optional, Sequence

from ..naming import iptables_endpoint_chain, iptables_service_hash
from ..plan import LocalDetector, NodePlan, PlanEndpoint, ServicePortPlan
from ._jinja import template

MARK_MASQ = "KUBE-MARK-MASQ"
LARGE_CLUSTER_ENDPOINTS = 1000  # kube-proxy's largeClusterEndpointsThreshold

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
    """Quote a string the way iptables-save does (only when it holds other characters)."""
    if _UNQUOTED(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'") + '"'


@lru_cache(maxsize=4096)
def probability(n: int) -> str:
    """``1/n`` as iptables-save prints it after kube-proxy wrote it with ``%0.10f``.

    The statistic match stores ``round(2^31 * p)`` and prints it back with 11 decimals.
    """
    written = float("%0.10f" % (1.0 / n))
    stored = math.floor(0x80000000 * written + 0.5)
    return "%.11f" % (stored / 0x80000000)


@dataclass(frozen=True, slots=True)
class Jump:
    builtin: str
    match: str
    comment: str
    chain: str


class EndpointView(NamedTuple):
    """One endpoint chain (``KUBE-SEP-…``); a tuple, so that templates unpack it without lookups."""

    chain: str
    address: str  # DNAT target
    source: str  # "-s ip/32" for the hairpin rule
    jump_comment: str  # comment of the policy chain's jump to it ("" in large clusters)


@dataclass(frozen=True, slots=True)
class PolicyView:
    """A policy chain (``KUBE-SVC-…`` or ``KUBE-SVL-…``) and its endpoint jumps."""

    chain: str
    masquerade: Optional[str]  # source match of the ClusterIP masquerade rule ("" = all), or None
    jumps: tuple[tuple[EndpointView, Optional[str]], ...]  # (endpoint, probability or None)


@dataclass(frozen=True, slots=True)
class StepView:
    pre: str  # address options (before -p / -m comment)
    post: str  # matches after the comment
    comment: str  # "-m comment --comment … " or ""
    target: str


@dataclass(frozen=True, slots=True)
class ServiceView:
    """What the template needs for one service port."""

    plan: ServicePortPlan
    spn: str
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
    comments: dict[str, str]  # "-m comment --comment … " texts, by use
    internal_filter_target: str  # "REJECT --reject-with …" / "DROP" / ""
    external_filter_target: str
    ep_comment: str  # comment of the endpoint chains' rules ("" in large clusters)


def _host(ip: str) -> str:
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


def _detector_match(d: LocalDetector, local: bool) -> str:
    """kube-proxy's IfLocal / IfNotLocal match for the local-traffic detector."""
    neg = "" if local else "! "
    if d.kind == "cidr":
        return f"{neg}-s {d.value}"
    if d.kind == "interface-prefix":
        return f"{neg}-i {d.value}+"
    if d.kind == "bridge":
        return f"{neg}-i {d.value}"
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


def _service_view(p: ServicePortPlan, plan: NodePlan, large: bool = False) -> ServiceView:
    spn = p.spn
    h = iptables_service_hash(spn, p.protocol)
    svc_chain, svl_chain = f"KUBE-SVC-{h}", f"KUBE-SVL-{h}"
    ext_chain, fw_chain = f"KUBE-EXT-{h}", f"KUBE-FW-{h}"
    chain_of = {"cluster": svc_chain, "local": svl_chain, "masquerade": MARK_MASQ}

    ep_views: dict[str, EndpointView] = {
        ep.address: EndpointView(
            chain=iptables_endpoint_chain(spn, p.protocol, ep.address),
            address=ep.address,
            source=f"-s {_host(ep.ip)}",
            jump_comment="" if large else _comment(f"{spn} -> {ep.address}"),
        )
        for ep in p.endpoints
    }

    def policy(chain: str, eps: tuple[PlanEndpoint, ...], internal: bool) -> PolicyView:
        masq: Optional[str] = None
        if internal:
            if plan.cluster_ip_masquerade == "all":
                masq = ""
            elif plan.cluster_ip_masquerade == "non-local":
                masq = _detector_match(plan.local_detector, local=False)
        n = len(eps)
        jumps = tuple(
            (ep_views[ep.address], probability(n - i) if i < n - 1 else None) for i, ep in enumerate(eps)
        )
        return PolicyView(chain=chain, masquerade=masq, jumps=jumps)

    policies = []
    if p.uses_cluster_chain:
        policies.append(policy(svc_chain, p.cluster_endpoints, p.internal_chain == "cluster"))
    if p.uses_local_chain:
        policies.append(policy(svl_chain, p.local_endpoints, p.internal_chain == "local"))

    steps = []
    for s in p.external_steps:
        pre = post = ""
        if s.source == "pod":
            pre = _detector_match(plan.local_detector, local=True) + " "
        elif s.source == "host":
            post = "-m addrtype --src-type LOCAL "
        template_text = _STEP_COMMENTS.get((s.source, s.action))
        steps.append(StepView(pre=pre, post=post, comment=_comment(template_text.format(spn)) if template_text else "",
                              target=chain_of[s.action]))

    ipv6 = plan.family == "ipv6"
    reject_with = "icmp6-port-unreachable" if ipv6 else "icmp-port-unreachable"
    return ServiceView(
        plan=p,
        spn=spn,
        proto=p.protocol,
        cluster_dst=_host(p.cluster_ip),
        ext_chain=ext_chain,
        fw_chain=fw_chain,
        internal_target=chain_of[p.internal_chain] if p.internal_chain else None,
        lb_target=fw_chain if p.firewall else ext_chain,
        external_ips=tuple(_host(ip) for ip in p.external_ips),
        lb_ips=tuple(_host(ip) for ip in p.load_balancer_ips),
        source_ranges=p.source_ranges,
        fw_allowed_lb=tuple(_host(ip) for ip in p.load_balancer_ips) if p.firewall_allows_lb_ips else (),
        policies=tuple(policies),
        steps=tuple(steps),
        endpoints=tuple(ep_views[a] for a in sorted(ep_views)),
        affinity_mask="ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" if ipv6 else "255.255.255.255",
        comments={
            "cluster_ip": _comment(spn + " cluster IP"),
            "external_ip": _comment(spn + " external IP"),
            "lb_ip": _comment(spn + " loadbalancer IP"),
            "spn": _comment(spn),
            "internal_filter": _why(spn, p.internal_filter),
            "external_filter": _why(spn, p.external_filter),
            "health_check": _comment(spn + " health check node port"),
            "firewall_drop": _comment(f"{spn} traffic not accepted by {fw_chain}"),
            "firewall_end": _comment(f"other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL").rstrip(),
        },
        internal_filter_target=_filter_target(p.internal_filter, reject_with),
        external_filter_target=_filter_target(p.external_filter, reject_with),
        ep_comment="" if large else _comment(spn),
    )


SECTIONS = ("filter_services", "filter_external", "filter_nodeports", "filter_firewall",
            "nat_services", "nat_nodeports")


@dataclass(frozen=True, slots=True)
class ServiceFragment:
    """What one service port contributes to the file, rendered once."""

    sections: tuple[str, ...]  # text for each of SECTIONS (top-level chains)
    chains: tuple[str, ...]  # its own nat chains, in declaration order
    rules: str  # the rules of its own chains


def _context(plan: NodePlan, large: bool) -> tuple:
    return (plan.family, plan.local_detector, plan.cluster_ip_masquerade, large)


class Renderer:
    """Renders plans to iptables-restore text, caching each service port's fragment.

    A fragment depends only on its :class:`ServicePortPlan` and a few node-level
    settings, so after a change only the service ports whose plan changed are
    rendered again. One renderer serves one node and family.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple, ServiceFragment] = {}
        self._module = template("iptables_service.j2").module

    def render_fragment(self, p: ServicePortPlan, plan: NodePlan, large: bool) -> ServiceFragment:
        """Render one service port's fragment (no caching)."""
        v = _service_view(p, plan, large)
        m = self._module
        sections = tuple(str(getattr(m, name)(v)) for name in SECTIONS)
        chains: list[str] = []
        if p.uses_external_chain:
            chains.append(v.ext_chain)
        if p.firewall:
            chains.append(v.fw_chain)
        chains += [pol.chain for pol in v.policies]
        chains += [ep.chain for ep in v.endpoints]
        return ServiceFragment(sections, tuple(chains), str(m.own_chains(v)))

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
    """kube-proxy drops per-endpoint comments above this many endpoints."""
    return sum(len(p.endpoints) for p in plan.services) > LARGE_CLUSTER_ENDPOINTS


def render_file(plan: NodePlan, frags: Sequence[ServiceFragment], own: Sequence[ServiceFragment],
                *, stale: Sequence[str], jumps: bool) -> str:
    """Lay out a restore file: top-level chains from every fragment in ``frags``, the own
    chains of the fragments in ``own``, deletion of the ``stale`` chains, and (when
    ``jumps``) the jumps from the built-in chains."""
    if plan.mode != "iptables":
        raise ValueError(f"plan was built for {plan.mode} mode, not iptables")
    localhost_firewall = plan.nodeports.localhost
    filter_jumps = [Jump(*j) for j in _FILTER_JUMPS]
    if localhost_firewall:
        filter_jumps += [Jump(*j) for j in _FIREWALL_JUMPS]
    filter_chains = sorted(FILTER_CHAINS + (("KUBE-FIREWALL",) if localhost_firewall else ()))
    # (address options, matches) of the final KUBE-SERVICES -> KUBE-NODEPORTS rule(s)
    if plan.nodeports.match_all:
        if plan.family == "ipv6":
            exclude = "! -d ::1/128 "
        elif not plan.nodeports.localhost:
            exclude = "! -d 127.0.0.0/8 "
        else:
            exclude = ""
        nodeport_rules = [(exclude, "-m addrtype --dst-type LOCAL ")]
    else:
        nodeport_rules = [(f"-d {_host(ip)} ", "") for ip in plan.nodeports.ips]
    columns = list(zip(*[f.sections for f in frags])) or [()] * len(SECTIONS)  # one per section
    sections = {name: "".join(column) for name, column in zip(SECTIONS, columns)}
    return template("iptables.j2").render(
        plan=plan,
        sections=sections,
        own_chains=[c for f in own for c in f.chains],
        own_rules="".join(f.rules for f in own),
        stale=list(stale),
        filter_chains=filter_chains,
        nat_chains=list(NAT_CHAINS),
        filter_jumps=filter_jumps if jumps else [],
        nat_jumps=[Jump(*j) for j in _NAT_JUMPS] if jumps else [],
        nodeport_rules=nodeport_rules,
        mark=plan.masquerade_mark,
        q=quote,
    )


def render(plan: NodePlan) -> str:
    """The complete ``iptables-restore --noflush`` (or ``ip6tables-restore``) input for a plan."""
    r = Renderer()  # one-shot: no cache to fill
    large = is_large_cluster(plan)
    frags = [r.render_fragment(p, plan, large) for p in plan.services]
    return render_file(plan, frags, frags, stale=(), jumps=True)
