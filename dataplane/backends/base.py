"""The interface every rule backend implements (kube-proxy's ``Provider``, knftables' ``Interface``).

A :class:`Backend` holds everything that differs between iptables and nftables:
rendering (a whole file, per-Service fragments, shards of a parallel compile),
partial updates, the cache key of rendered fragments, the large-cluster rule,
loading into a network namespace, reading back, the drift fingerprint, removing
what the other backend left, forgetting session affinity and parsing rules for
the tracer. Callers look a backend up by name (:func:`dataplane.backends.get_backend`)
and never compare names.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Optional, Sequence

from ..plan import Family, Mode, NodePlan, ServicePortPlan

if TYPE_CHECKING:
    from ..trace import Engine

#: What a backend renders for one service port (its ``ServiceFragment``); opaque to callers.
Fragment = Any
#: What a backend renders for some service ports in a shard of a parallel compile; opaque to callers.
Part = Any


class FragmentRenderer(ABC):
    """A long-lived caller's rendering state for one backend (one per :class:`~dataplane.runtime.proxier.Proxier`):
    per-service-port fragments, and the full and partial update texts built from them."""

    @abstractmethod
    def fragment(self, p: ServicePortPlan, plan: NodePlan, large: bool) -> Fragment:
        """Render one service port (``plan`` gives the node settings; ``large``: the large-cluster
        rule's verdict, see :meth:`Backend.large_cluster`)."""

    @abstractmethod
    def full_text(self, plan: NodePlan, frags: Sequence[Fragment],
                  installed: Optional[Mapping[Any, Sequence[Fragment]]]) -> str:
        """The update that replaces everything of ours with ``frags`` (in plan order);
        ``installed``: the fragments the kernel holds per Service, None when unknown."""

    @abstractmethod
    def partial_text(self, plan: NodePlan, current: Callable[[], Sequence[Fragment]],
                     installed: Mapping[Any, Sequence[Fragment]],
                     removed: Sequence[Fragment], added: Sequence[Fragment]) -> str:
        """The update that takes the kernel from ``installed`` (per Service) to the current
        fragments (``current()``, every one in plan order) by replacing ``removed`` with
        ``added``; "" when nothing changes."""

    @abstractmethod
    def synced(self, frags: Sequence[Fragment]) -> None:
        """A full update went in: the kernel holds exactly ``frags``."""

    @abstractmethod
    def refused(self) -> None:
        """The kernel refused the last update: forget what was derived from it."""


class Backend(ABC):
    """One rule backend. Stateless: one instance per backend, shared (see :mod:`dataplane.backends`)."""

    #: The backend's name, as the CLI and ``KubeProxyConfiguration.mode`` spell it.
    name: ClassVar[Mode]
    #: Whether a sync that changed only some Services may read back only the objects the update
    #: named for the drift fingerprint (see :func:`dataplane.runtime.drift.after_sync`).
    refreshes_touched_objects: ClassVar[bool]

    # ------------------------------------------------------------------ rendering
    @abstractmethod
    def render(self, plan: NodePlan) -> str:
        """The complete rules file for ``plan``."""

    @abstractmethod
    def renderer(self) -> FragmentRenderer:
        """Fresh rendering state for a long-lived caller."""

    @abstractmethod
    def large_cluster(self, endpoint_count: int) -> bool:
        """Whether a node with ``endpoint_count`` endpoints over every service port renders in
        large-cluster mode (kube-proxy's iptables: shorter rules above a threshold)."""

    @abstractmethod
    def settled(self, endpoint_count: int) -> bool:
        """Whether, with at least ``endpoint_count`` endpoints over every service port, more
        endpoints elsewhere can no longer change how one service port renders (a shard of a
        parallel compile then renders without waiting for the others' counts)."""

    def render_context(self, endpoint_count: int) -> tuple:
        """What, besides the plan's node settings, the rendered fragments depend on: part of
        the key under which they are reused."""
        return (self.large_cluster(endpoint_count),)

    @abstractmethod
    def render_ports(self, plan: NodePlan, ports: Sequence[ServicePortPlan], large: bool) -> Part:
        """One shard's part of the file (``ports`` with the node settings of ``plan``)."""

    @abstractmethod
    def render_parts(self, plan: NodePlan, parts: Sequence[Part]) -> str:
        """The complete file from every shard's part, in plan order."""

    @abstractmethod
    def count_rules(self, text: str) -> dict[str, int]:
        """How much ``text`` (a full file or a partial update this backend rendered) writes:
        at least ``"rules"`` and ``"chains"``, plus backend-specific counts (for the agent's
        metrics, see :mod:`dataplane.backends.rule_counts`)."""

    # ------------------------------------------------------------------ the kernel
    @abstractmethod
    def load(self, ns: str, text: str, *, family: Family, full: bool) -> None:
        """Load ``text`` (a full file, or a partial update when not ``full``) into network
        namespace ``ns`` atomically; on failure the namespace keeps its rules
        (:class:`~dataplane.errors.ApplyError`)."""

    @abstractmethod
    def read_back(self, ns: str, *, ipv6: bool) -> str:
        """The rules of ours ``ns`` holds, normalised for comparison ("" when none)."""

    @abstractmethod
    def installed_chains(self, ns: str, *, ipv6: bool) -> set[str]:
        """The names of the chains of ours ``ns`` holds."""

    @abstractmethod
    def fingerprint(self, ns: str, family: Family) -> dict[str, bytes]:
        """Per object of ours in ``ns``, a digest of its content (see :mod:`dataplane.runtime.drift`)."""

    @abstractmethod
    def generation_counts_changes(self, ns: str, family: Family) -> bool:
        """Whether the nf_tables ruleset generation of ``ns`` counts changes to our rules."""

    @abstractmethod
    def remove_leftovers(self, ns: str, family: Family, *, keep_sysctls: Sequence[str] = ()) -> list[str]:
        """Remove what an earlier apply of another backend left in ``ns`` for ``family`` (and
        restore the recorded sysctls but ``keep_sysctls``); one note per removal."""

    @abstractmethod
    def forget_affinity(self, ns: str, family: Family) -> None:
        """Empty the session-affinity memories our rules keep in ``ns``."""

    # ------------------------------------------------------------------ the tracer
    @abstractmethod
    def parse_trace(self, rules_text: str) -> "Engine":
        """Parse a rules file of this backend for the tracer (:mod:`dataplane.trace`)."""

    # ------------------------------------------------------------------ dry runs and diffs
    @abstractmethod
    def transaction(self, ns: str, text: str, *, family: Family, full: bool) -> str:
        """The exact input :meth:`load` would give the kernel's tool for ``text`` if it ran now
        (read from ``ns``; nothing is changed)."""

    @abstractmethod
    def diff_views(self, ns: str, text: str, *, family: Family) -> tuple[str, str]:
        """(``text``, a complete rules file of this backend, as the kernel would hold it; what of
        ours ``ns`` holds now for ``family``), both in the same canonical text (see
        :mod:`dataplane.backends.canonical`): counters left out, objects in a fixed order, and
        only our own objects (other programs' tables, chains and rules never appear)."""
