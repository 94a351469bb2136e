"""The nftables :class:`~dataplane.backends.base.Backend`: one ``kube-proxy`` table per family,
replaced whole by a full sync and changed by element and chain in a partial one (kube-proxy's
partial sync). Rendering is :mod:`dataplane.backends.nftables`; loading, reading back and
cleaning up delegate to :mod:`dataplane.runtime.netns` and :mod:`dataplane.runtime.ownership` (imported when
used: they need pyroute2)."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

from ..plan import Family, NodePlan, ServicePortPlan
from . import nftables as nft
from . import rule_counts
from .base import Backend, FragmentRenderer

if TYPE_CHECKING:
    from ..trace import Engine

_AFFINITY_SET = re.compile(r"^\s*set (affinity-\S+) \{", re.M)


class NftablesRenderer(FragmentRenderer):
    """Fragments and nft transactions; a partial update is the :class:`~dataplane.backends.nftables.TableIndex`
    diff of the changed fragments (the index is built when first needed and kept in step with
    what the kernel took)."""

    def __init__(self) -> None:
        self._renderer = nft.Renderer()
        self._index: Optional[nft.TableIndex] = None  # of the installed table

    def fragment(self, p: ServicePortPlan, plan: NodePlan, large: bool) -> nft.ServiceFragment:
        return self._renderer.render_fragment(p, plan)

    def full_text(self, plan: NodePlan, frags: Sequence[nft.ServiceFragment],
                  installed: Optional[Mapping[Any, Sequence[nft.ServiceFragment]]]) -> str:
        """The script that replaces the whole table."""
        return nft.render_full(plan, frags)

    def partial_text(self, plan: NodePlan, current: Callable[[], Sequence[nft.ServiceFragment]],
                     installed: Mapping[Any, Sequence[nft.ServiceFragment]],
                     removed: Sequence[nft.ServiceFragment], added: Sequence[nft.ServiceFragment]) -> str:
        if not removed and not added:
            return ""
        if self._index is None:
            self._index = nft.TableIndex(f for frags in installed.values() for f in frags)
        return nft.render_diff(plan.family, self._index.update(removed, added))

    def synced(self, frags: Sequence[nft.ServiceFragment]) -> None:
        """The index is rebuilt (a partial update already updated it)."""
        self._index = nft.TableIndex(frags)

    def refused(self) -> None:
        """The index already holds the update the kernel refused."""
        self._index = None


class NftablesBackend(Backend):
    """kube-proxy's nftables mode."""

    name = "nftables"
    refreshes_touched_objects = True

    def render(self, plan: NodePlan) -> str:
        return nft.render(plan)

    def renderer(self) -> NftablesRenderer:
        return NftablesRenderer()

    def large_cluster(self, endpoint_count: int) -> bool:
        """Never: kube-proxy's nftables mode has no large-cluster mode."""
        return False

    def settled(self, endpoint_count: int) -> bool:
        """Always: rendering never depends on the endpoint count."""
        return True

    def render_context(self, endpoint_count: int) -> tuple:
        return ()

    def render_ports(self, plan: NodePlan, ports: Sequence[ServicePortPlan], large: bool) -> nft.Part:
        return nft.render_ports(plan, ports)

    def render_parts(self, plan: NodePlan, parts: Sequence[nft.Part]) -> str:
        return nft.render_parts(plan, parts)

    def count_rules(self, text: str) -> dict[str, int]:
        """Rules, chains, sets, maps and set/map elements."""
        return rule_counts.nftables_counts(text)

    def load(self, ns: str, text: str, *, family: Family, full: bool) -> None:
        """One transaction: a full script (it replaces its own table) with ``nft -f``; a partial
        update as one nf_tables netlink batch, without nft's cache of every chain (``nft -f``
        when it holds a statement the batch translation does not cover)."""
        from ..runtime import netns

        if full:
            netns.apply_nftables(ns, text)
        else:
            netns.apply_nftables_partial(ns, text)

    def read_back(self, ns: str, *, ipv6: bool) -> str:
        from ..runtime import netns

        return netns.read_back_nftables(ns, ipv6=ipv6)

    def transaction(self, ns: str, text: str, *, family: Family, full: bool) -> str:
        """The script itself: ``nft -f`` gets it as it is."""
        return text

    def diff_views(self, ns: str, text: str, *, family: Family) -> tuple[str, str]:
        """The family's ``kube-proxy`` table (the only one of ours): ``text`` loaded into an empty
        private namespace and listed, and ``ns``'s listed."""
        from ..runtime import diff

        return diff.nftables_views(ns, text, ipv6=family == "ipv6")

    def installed_chains(self, ns: str, *, ipv6: bool) -> set[str]:
        """The chains of the ``kube-proxy`` table."""
        from ..runtime import netns

        return netns.nftables_installed_chains(ns, ipv6=ipv6)

    def fingerprint(self, ns: str, family: Family) -> dict[str, bytes]:
        from ..runtime import drift

        return drift.nftables_objects(ns, family)

    def generation_counts_changes(self, ns: str, family: Family) -> bool:
        return True

    def remove_leftovers(self, ns: str, family: Family, *, keep_sysctls: Sequence[str] = ()) -> list[str]:
        """The iptables rules an earlier apply left, as kube-proxy's nftables mode does at startup."""
        from ..runtime import ownership

        return ownership.remove_iptables_leftovers(ns, family, keep_sysctls=keep_sysctls)

    def forget_affinity(self, ns: str, family: Family) -> None:
        """Flush the ``affinity-*`` sets of the family's table."""
        from ..runtime import netns

        table = f"{nft.table_family(family)} {nft.TABLE}"
        names = _AFFINITY_SET.findall(self.read_back(ns, ipv6=family == "ipv6"))
        if names:
            netns.run_in(ns, ["nft", "-f", "-"], input="".join(f"flush set {table} {n}\n" for n in names))

    def parse_trace(self, rules_text: str) -> "Engine":
        from ..trace import nftables

        return nftables.parse(rules_text)
