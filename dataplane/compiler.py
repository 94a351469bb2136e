"""Compile a cluster into one node's rules file: plan, then render with a backend."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from .backends import get_backend
from .model import Cluster
from .plan import Family, Mode, NodePlan, build_plan


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
    return get_backend(plan.mode).render(plan)


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
    :func:`dataplane.plan.node_context`). An unknown ``backend`` raises
    :class:`~dataplane.errors.UsageError` naming the valid ones, before any planning. Selector
    Services without EndpointSlices get those derived from the Pods (see :func:`build_plan`).
    """
    plan = build_plan(cluster, node, backend=backend, family=family, external_ip_cidrs=external_ip_cidrs)
    return CompileResult(text=render(plan), plan=plan)
