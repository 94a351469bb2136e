"""Compile a cluster into one node's rules file: plan, then render with a backend."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from .backends import iptables as _iptables
from .backends import nftables as _nftables
from .model import Cluster
from .plan import Family, Mode, NodePlan, build_plan

BACKENDS: dict[str, Callable[[NodePlan], str]] = {
    "iptables": _iptables.render,
    "nftables": _nftables.render,
}


@dataclass(frozen=True, slots=True)
class CompileResult:
    """The rules text, the plan it renders and the warnings met on the way."""

    text: str
    plan: NodePlan

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.plan.warnings


def render(plan: NodePlan) -> str:
    """Render a plan with the backend of its mode."""
    return BACKENDS[plan.mode](plan)


def compile_rules(
    cluster: Cluster,
    node: str,
    *,
    backend: Optional[Mode] = None,
    family: Family = "ipv4",
    external_ip_cidrs: Optional[Sequence[str]] = None,
) -> CompileResult:
    """The complete rules file for ``node``: ``iptables-restore --noflush`` input
    (``ip6tables-restore`` for IPv6) or an ``nft -f`` script.

    ``backend`` defaults to the KubeProxyConfiguration's ``mode``; ``external_ip_cidrs``
    overrides its ``externalIPCIDRs``, the CIDRs Services' externalIPs may use (see
    :func:`dataplane.plan.node_context`).
    """
    plan = build_plan(cluster, node, family=family, mode=backend, external_ip_cidrs=external_ip_cidrs)
    return CompileResult(text=render(plan), plan=plan)
