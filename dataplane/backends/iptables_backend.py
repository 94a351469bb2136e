"""The iptables :class:`~dataplane.backends.base.Backend`: ``iptables-restore`` files, KEP-3453's
partial restore, kube-proxy's large-cluster mode. Rendering is :mod:`dataplane.backends.iptables`;
loading, reading back and cleaning up delegate to :mod:`dataplane.runtime.netns` and
:mod:`dataplane.runtime.ownership` (imported when used: they need pyroute2)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

from ..plan import Family, NodePlan, ServicePortPlan, large_cluster
from . import iptables as ipt
from . import rule_counts
from .base import Backend, FragmentRenderer

if TYPE_CHECKING:
    from ..trace import Engine


class IptablesRenderer(FragmentRenderer):
    """Fragments and restore files: a partial update rewrites the top-level chains and the
    changed service ports' chains, and deletes the chains that are gone."""

    def __init__(self) -> None:
        self._renderer = ipt.Renderer()

    def fragment(self, p: ServicePortPlan, plan: NodePlan, large: bool) -> ipt.ServiceFragment:
        return self._renderer.render_fragment(p, plan, large)

    def full_text(self, plan: NodePlan, frags: Sequence[ipt.ServiceFragment],
                  installed: Optional[Mapping[Any, Sequence[ipt.ServiceFragment]]]) -> str:
        """Everything, deleting the chains of ``installed`` that ``frags`` no longer have (when
        ``installed`` is unknown the applier finds stale chains in the kernel itself)."""
        stale: list[str] = []
        if installed is not None:
            keep = {c for f in frags for c in f.chains}
            stale = sorted({c for held in installed.values() for f in held for c in f.chains} - keep)
        return ipt.render_file(plan, frags, frags, stale=stale, jumps=True)

    def partial_text(self, plan: NodePlan, current: Callable[[], Sequence[ipt.ServiceFragment]],
                     installed: Mapping[Any, Sequence[ipt.ServiceFragment]],
                     removed: Sequence[ipt.ServiceFragment], added: Sequence[ipt.ServiceFragment]) -> str:
        if not removed and not added:
            return ""
        stale = sorted({c for f in removed for c in f.chains} - {c for f in added for c in f.chains})
        return ipt.render_file(plan, current(), added, stale=stale, jumps=False)

    def synced(self, frags: Sequence[ipt.ServiceFragment]) -> None:
        """Nothing to remember: every update is built from the fragments alone."""

    def refused(self) -> None:
        """Nothing to forget."""


class IptablesBackend(Backend):
    """kube-proxy's iptables mode."""

    name = "iptables"
    refreshes_touched_objects = False  # iptables-save is read whole anyway

    def render(self, plan: NodePlan) -> str:
        return ipt.render(plan)

    def renderer(self) -> IptablesRenderer:
        return IptablesRenderer()

    def large_cluster(self, endpoint_count: int) -> bool:
        """kube-proxy's large-cluster mode (see :func:`dataplane.plan.large_cluster`)."""
        return large_cluster(endpoint_count)

    def settled(self, endpoint_count: int) -> bool:
        """Once large, always large; below the threshold more endpoints may still make it large."""
        return self.large_cluster(endpoint_count)

    def render_ports(self, plan: NodePlan, ports: Sequence[ServicePortPlan], large: bool) -> ipt.Part:
        return ipt.render_ports(plan, ports, large)

    def render_parts(self, plan: NodePlan, parts: Sequence[ipt.Part]) -> str:
        return ipt.render_parts(plan, parts)

    def count_rules(self, text: str) -> dict[str, int]:
        """Rules and chains in total and per table (``filter_rules``, ``nat_chains``...)."""
        return rule_counts.iptables_counts(text)

    def load(self, ns: str, text: str, *, family: Family, full: bool) -> None:
        """``iptables-restore --noflush`` (``ip6tables-restore``), rolled back on failure."""
        from ..runtime import netns

        netns.apply_iptables(ns, text, ipv6=family == "ipv6", partial=not full)

    def read_back(self, ns: str, *, ipv6: bool) -> str:
        from ..runtime import netns

        return netns.read_back_iptables(ns, ipv6=ipv6)

    def transaction(self, ns: str, text: str, *, family: Family, full: bool) -> str:
        """``text`` as :func:`~dataplane.runtime.netns.apply_iptables` rewrites it for the tables
        ``ns`` holds now (built-in chain declarations and jumps already there dropped, stale
        per-service chains deleted by a full update)."""
        from ..runtime import diff

        return diff.iptables_transaction(ns, text, ipv6=family == "ipv6", full=full)

    def diff_views(self, ns: str, text: str, *, family: Family) -> tuple[str, str]:
        """Chains, and jumps from built-in chains, of ours per table: ``text`` loaded into an
        empty private namespace and read back, and ``ns``'s (ours by the ownership record,
        kube-proxy's fixed chains and what ``text`` declares)."""
        from ..runtime import diff

        return diff.iptables_views(ns, text, ipv6=family == "ipv6")

    def installed_chains(self, ns: str, *, ipv6: bool) -> set[str]:
        """The nat table's KUBE-* chains."""
        from ..runtime import netns

        return netns.iptables_installed_chains(ns, ipv6=ipv6)

    def fingerprint(self, ns: str, family: Family) -> dict[str, bytes]:
        from ..runtime import drift

        return drift.iptables_objects(self.read_back(ns, ipv6=family == "ipv6"))

    def generation_counts_changes(self, ns: str, family: Family) -> bool:
        """Only with iptables-nft (legacy iptables does not go through nf_tables)."""
        from ..runtime import netns

        return netns._iptables_is_nft(ns, family == "ipv6")

    def remove_leftovers(self, ns: str, family: Family, *, keep_sysctls: Sequence[str] = ()) -> list[str]:
        """The nftables table an earlier apply left, as kube-proxy's iptables mode does at startup."""
        from ..runtime import ownership

        return ownership.remove_nftables_leftovers(ns, family, keep_sysctls=keep_sysctls)

    def forget_affinity(self, ns: str, family: Family) -> None:
        """Empty every ``-m recent`` list (``/proc/net/xt_recent``)."""
        from ..runtime import netns

        with netns.in_netns(ns):
            directory = "/proc/thread-self/net/xt_recent"
            for name in os.listdir(directory) if os.path.isdir(directory) else ():
                with open(os.path.join(directory, name), "w") as f:
                    f.write("/\n")

    def parse_trace(self, rules_text: str) -> "Engine":
        from ..trace import iptables

        return iptables.parse(rules_text)
