"""A long-lived proxier for embedding: takes changes, syncs the smallest update.

:class:`Proxier` keeps the cluster state one node needs (Services,
EndpointSlices, its Node, the proxy settings). Changes mark Services in a
:class:`~dataplane.runtime.changes.ChangeTracker` (kube-proxy's change trackers:
per Service what it was at the last sync and what it is now, a change undone
before the sync dropping out); :meth:`Proxier.sync` re-plans the marked
Services, re-renders only those that changed, and produces

* nftables: a transaction that rewrites only the changed service ports'
  chains and adds/deletes only the map elements that changed (kube-proxy's
  partial sync); a full sync replaces the whole table;
* iptables: a restore file that rewrites the top-level chains and only the
  changed service ports' chains, and deletes the chains that are gone
  (KEP-3453's partial restore); a full sync writes everything.

A :class:`Runner` carries updates to the kernel. If applying fails, the
previous rules stay in force (the appliers are atomic per transaction) and
the next sync is a full one. A full sync can be forced at any time and yields
the same kernel state.
"""
from __future__ import annotations

import hashlib
import time
from itertools import chain
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Protocol, Sequence

from ..backends import DEFAULT_BACKEND, get_backend
from .changes import ChangeTracker
from .conntrack import ConntrackDelete, stale_changes, stale_entries
from ..errors import DataplaneError
from .nslock import DEFAULT_LOCK_TIMEOUT
from ..model import Cluster, EndpointSlice, Node, ProxyConfig, Service, ServiceCIDR
from ..plan import (
    Family,
    Mode,
    NodeContext,
    NodePlan,
    ServicePortPlan,
    allocated_cluster_ips,
    assemble,
    chosen_backend,
    claimed_ips,
    external_ip_cidrs_of,
    node_context,
    plan_service,
)

SyncKind = Literal["full", "partial", "none"]

#: Seconds after which :meth:`Proxier.sync` does a full sync again (kube-proxy's FullSyncPeriod).
FULL_SYNC_PERIOD = 3600.0


class Runner(Protocol):
    """Where updates go. ``apply`` must be atomic: all of ``text`` or nothing."""

    def apply(self, mode: Mode, family: Family, text: str, *, full: bool, sysctls: Sequence[tuple[str, str]]) -> None: ...

    def delete_conntrack(self, filters: Sequence[ConntrackDelete]) -> None: ...


@dataclass
class RecordingRunner:
    """A runner that only records what it was asked to do (for tests and dry runs)."""

    applied: list[tuple[Mode, Family, str, bool]] = field(default_factory=list)
    conntrack: list[ConntrackDelete] = field(default_factory=list)
    fail_next: bool = False

    def apply(self, mode, family, text, *, full, sysctls=()):
        if self.fail_next:
            self.fail_next = False
            raise DataplaneError("injected failure")
        self.applied.append((mode, family, text, full))

    def delete_conntrack(self, filters):
        self.conntrack.extend(filters)


class NetnsRunner:
    """Applies updates inside a network namespace with the standard tools; deletes stale
    conntrack entries over ctnetlink (:mod:`dataplane.runtime.ctnetlink`)."""

    def __init__(self, ns: str, *, lock_timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT) -> None:
        """``lock_timeout``: seconds each apply waits for the namespace's lock while another
        apply or cleanup holds it (None: for ever)."""
        from . import netns

        netns.require_netns(ns)
        self.ns = ns
        self.lock_timeout = lock_timeout

    def apply(self, mode, family, text, *, full, sysctls=()):
        """Apply ``text`` and set ``sysctls`` under the namespace's lock (one unit)."""
        from .nslock import netns_lock

        if not text:
            return
        with netns_lock(self.ns, self.lock_timeout):
            get_backend(mode).load(self.ns, text, family=family, full=full)
            if sysctls:
                from . import ownership

                ownership.set_sysctls(self.ns, dict(sysctls))  # records the values they had, for cleanup

    def delete_conntrack(self, filters: Sequence[ConntrackDelete]) -> None:
        """Delete the namespace's conntrack entries the filters match, over ctnetlink."""
        from . import ctnetlink  # enters the namespace: only when there is something to delete

        if filters:
            ctnetlink.delete_matching(self.ns, filters)


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one sync did."""

    kind: SyncKind
    text: str  # the update sent to the kernel ("" when nothing changed)
    plan: NodePlan
    changed: int  # service ports whose rules were rewritten (all of them on a full sync)
    conntrack: tuple[ConntrackDelete, ...] = ()
    leftovers: tuple[str, ...] = ()  # what an earlier apply of the other backend left and was removed
    drift: str = ""  # "drift repaired: ..." when the kernel's copy had changed (see dataplane.runtime.apply)
    #: seconds (wall clock) spent in each phase of the sync, in order: ("plan", s) re-planning the
    #: changed Services and assembling the node plan, ("render", s) their fragments and the update
    #: text, ("apply", s) the runner's apply (the kernel), ("conntrack", s) finding and deleting
    #: stale conntrack entries
    phases: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class _Installed:
    """What the kernel holds after the last successful sync."""

    context: tuple
    plan: NodePlan
    by_service: dict  # (namespace, name) -> that Service's backend fragments, in port order

    @property
    def fragments(self) -> tuple:
        """Every backend fragment, in plan order."""
        return tuple(f for key in sorted(self.by_service) for f in self.by_service[key])


_Key = tuple[str, str]
_Plans = tuple[tuple[ServicePortPlan, ...], tuple[str, ...]]  # a Service's port plans and warnings


class Proxier:
    """Node-local service proxy state with incremental syncs (see the module doc)."""

    def __init__(self, node: str, *, backend: Optional[Mode] = None, family: Family = "ipv4",
                 cluster: Optional[Cluster] = None, runner: Optional[Runner] = None,
                 external_ip_cidrs: Optional[Sequence[str]] = None,
                 sync_period: Optional[float] = FULL_SYNC_PERIOD,
                 clock: Callable[[], float] = time.monotonic, mode: Optional[Mode] = None) -> None:
        """``backend`` defaults to DEFAULT_BACKEND (``mode=`` is accepted as its former name,
        see :func:`dataplane.plan.chosen_backend`). ``external_ip_cidrs`` overrides the configuration's ``externalIPCIDRs`` (see
        :func:`dataplane.plan.node_context`); an invalid CIDR raises :class:`UsageError`.
        ``sync_period``: seconds (by ``clock``) after a full sync at which :meth:`sync`
        does a full one again, repairing whatever changed behind its back, as kube-proxy
        does every FullSyncPeriod (None: never). An unknown backend raises :class:`UsageError`
        naming the valid ones."""
        mode = chosen_backend(backend, mode) or DEFAULT_BACKEND
        self.backend = get_backend(mode)
        if sync_period is not None and sync_period <= 0:
            raise ValueError(f"sync_period must be positive (or None): {sync_period!r}")
        self.sync_period = sync_period
        self._clock = clock
        self._last_full: Optional[float] = None  # clock() at the last successful full sync
        self.node_name = node
        self._external_ip_cidrs = None if external_ip_cidrs is None else external_ip_cidrs_of(external_ip_cidrs)
        self.mode: Mode = mode
        self.family: Family = family
        self.runner = runner
        self._services: dict[tuple[str, str], Service] = {}
        self._slices: dict[tuple[str, str], EndpointSlice] = {}
        self._slices_by_service: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._nodes: dict[str, Node] = {}
        self._config = ProxyConfig()
        self._service_cidrs: tuple[ServiceCIDR, ...] = ()
        # A Service's plan depends on other Services through one thing: an externalIP or
        # load-balancer IP that is another's ClusterIP is dropped. These indexes find the
        # Services to re-plan when a ClusterIP comes or goes.
        self._cluster_ip_holders: dict[str, set[_Key]] = {}  # ClusterIP -> Services allocated it
        self._owners: dict[str, _Key] = {}  # ClusterIP -> its Service (the first holder by key)
        self._claimants: dict[str, set[_Key]] = {}  # externalIP / LB IP -> Services claiming it
        # Services marked by changes (pending), and per Service its plans at the last sync and
        # now; all_changed: the node context changed, every Service counts as changed
        self._changes: ChangeTracker[_Key, _Plans] = ChangeTracker()
        self._plans: dict[_Key, _Plans] = {}
        self._order: Optional[list[_Key]] = None  # sorted keys of _plans
        self._endpoints = 0  # endpoints over every service port (the backend's large-cluster rule)
        # the rendered fragments of the plans at the last sync, and the render context they are for
        self._frags: dict[_Key, tuple] = {}
        self._frag_context: Optional[tuple] = None
        self._ctx: Optional[NodeContext] = None
        self._base: Optional[NodePlan] = None  # the node-level plan (no services) of _ctx
        self._installed: Optional[_Installed] = None
        self._renderer = self.backend.renderer()
        if cluster is not None:
            self.load(cluster)

    # ------------------------------------------------------------------ changes
    def load(self, cluster: Cluster) -> None:
        """Replace the whole state (the next sync is a full one)."""
        self._services = {s.key: s for s in cluster.services}
        self._cluster_ip_holders, self._owners, self._claimants = {}, {}, {}
        for svc in self._services.values():
            self._reindex(svc.key, None, svc)
        self._slices = {}
        self._slices_by_service = {}
        for s in cluster.endpoint_slices:
            self.set_endpoint_slice(s)
        self._nodes = {n.name: n for n in cluster.nodes}
        self._config = cluster.proxy_config
        self._service_cidrs = cluster.service_cidrs
        self._invalidate()

    def set_service(self, svc: Service) -> None:
        self._reindex(svc.key, self._services.get(svc.key), svc)
        self._services[svc.key] = svc
        self._changes.mark(svc.key)

    def delete_service(self, namespace: str, name: str) -> None:
        old = self._services.pop((namespace, name), None)
        if old is not None:
            self._reindex(old.key, old, None)
        self._changes.mark((namespace, name))

    def _reindex(self, key: _Key, old: Optional[Service], new: Optional[Service]) -> None:
        """Update the ClusterIP and claim indexes for a Service going from ``old`` to ``new``
        (None: absent); the Services claiming a ClusterIP that came or went are re-planned."""
        was = allocated_cluster_ips(old) if old is not None else ()
        now = allocated_cluster_ips(new) if new is not None else ()
        if was != now:
            for ip in set(was).symmetric_difference(now):
                holders = self._cluster_ip_holders.setdefault(ip, set())
                if ip in now:
                    holders.add(key)
                else:
                    holders.discard(key)
                if holders:
                    self._owners[ip] = min(holders)
                else:
                    del self._cluster_ip_holders[ip]
                    self._owners.pop(ip, None)
                self._changes.mark_many(self._claimants.get(ip, ()))
        was = claimed_ips(old) if old is not None else ()
        now = claimed_ips(new) if new is not None else ()
        if was != now:
            for ip in set(was).difference(now):
                claimants = self._claimants[ip]
                claimants.discard(key)
                if not claimants:
                    del self._claimants[ip]
            for ip in now:
                self._claimants.setdefault(ip, set()).add(key)

    def set_endpoint_slice(self, eps: EndpointSlice) -> None:
        key = (eps.namespace, eps.name)
        old = self._slices.get(key)
        if old is not None and old.service_name:
            self._unlink(key, old)
        self._slices[key] = eps
        if eps.service_name:
            svc = (eps.namespace, eps.service_name)
            self._slices_by_service.setdefault(svc, set()).add(key)
            self._changes.mark(svc)

    def delete_endpoint_slice(self, namespace: str, name: str) -> None:
        old = self._slices.pop((namespace, name), None)
        if old is not None and old.service_name:
            self._unlink((namespace, name), old)

    def _unlink(self, key: tuple[str, str], eps: EndpointSlice) -> None:
        svc = (eps.namespace, eps.service_name or "")
        self._slices_by_service.get(svc, set()).discard(key)
        self._changes.mark(svc)

    def set_node(self, node: Node) -> None:
        """A Node changed; this node's addresses or labels change everything."""
        self._nodes[node.name] = node
        if node.name == self.node_name:
            self._invalidate()

    def set_config(self, config: ProxyConfig) -> None:
        self._config = config
        self._invalidate()

    def set_service_cidrs(self, service_cidrs: Sequence[ServiceCIDR]) -> None:
        """Replace the ServiceCIDRs (all of them, as kube-proxy takes their union); nftables
        mode's drop of unallocated service IPs changes at the next sync, a full one."""
        self._service_cidrs = tuple(service_cidrs)
        self._ctx = None
        self._base = None

    def _invalidate(self) -> None:
        self._ctx = None
        self._base = None
        self._changes.mark_all(set(self._services) | set(self._plans))

    def cluster(self) -> Cluster:
        """The current state as a :class:`Cluster`."""
        return Cluster(services=tuple(self._services.values()), endpoint_slices=tuple(self._slices.values()),
                       nodes=tuple(self._nodes.values()), proxy_config=self._config,
                       service_cidrs=self._service_cidrs)

    # --------------------------------------------------------------------- sync
    def _context(self) -> NodeContext:
        if self._ctx is None:
            self._ctx = node_context(
                Cluster(nodes=tuple(self._nodes.values()), proxy_config=self._config,
                        service_cidrs=self._service_cidrs),
                self.node_name, family=self.family, mode=self.mode, external_ip_cidrs=self._external_ip_cidrs)
            self._base = assemble(self._ctx, ())
        return self._ctx

    def _replan(self, ctx: NodeContext) -> None:
        """Plan the pending Services again and record each in the change tracker (which keeps
        what it was at the last sync and drops a change that came back to it)."""
        from ..plan import slices_by_service

        for key in self._changes.pending:
            svc = self._services.get(key)
            new: Optional[_Plans] = None
            if svc is not None:  # planned before anything changes: planning may raise
                slices = [self._slices[k] for k in sorted(self._slices_by_service.get(key, ()), key=lambda k: k[1])]
                fam = slices_by_service(slices, self.family).get(key, [])
                new = plan_service(svc, fam, ctx, owners=self._owners)
            old = self._plans.pop(key, None)
            if old is not None:
                self._endpoints -= sum(len(p.endpoints) for p in old[0])
            if new is not None:
                self._plans[key] = new
                self._endpoints += sum(len(p.endpoints) for p in new[0])
            if (old is None) != (new is None):
                self._order = None
            self._changes.update(key, old, new)

    def _keys(self) -> list[_Key]:
        if self._order is None:
            self._order = sorted(self._plans)
        return self._order

    def _assemble(self, ctx: NodeContext) -> NodePlan:
        planned = list(map(self._plans.__getitem__, self._keys()))
        services = chain.from_iterable([ports for ports, _ in planned])
        warnings = chain.from_iterable([w for _, w in planned if w])
        return assemble(ctx, services, warnings)

    def plan(self) -> NodePlan:
        """The node plan for the current state."""
        ctx = self._context()
        self._replan(ctx)
        return self._assemble(ctx)

    def _render(self, key: _Key, large: bool) -> tuple:
        base = self._base
        assert base is not None
        return tuple(self._renderer.fragment(p, base, large) for p in self._plans[key][0])

    def _render_changes(self, context: tuple) -> dict[_Key, tuple]:
        """The fragments of the Services the tracker holds as changed (``()``: gone), or of every
        Service when the render context changed. Nothing is kept: :meth:`_commit` keeps them
        once the sync has its text, so a sync that raises leaves the fragments of the last one."""
        large = self.backend.large_cluster(self._endpoints)
        if context != self._frag_context:
            return {key: self._render(key, large) for key in self._plans}
        return {key: self._render(key, large) if key in self._plans else () for key in self._changes.changes()}

    def _commit(self, context: tuple, fresh: dict[_Key, tuple]) -> None:
        """Keep the fragments :meth:`_render_changes` gave for ``context``."""
        if context != self._frag_context:
            self._frags, self._frag_context = fresh, context
            return
        for key, frags in fresh.items():
            if key in self._plans:
                self._frags[key] = frags
            else:
                self._frags.pop(key, None)

    def sync(self, *, full: bool = False) -> SyncResult:
        """Bring the kernel to the current state with the smallest update.

        A partial sync costs time in the size of the change (plus joining the
        top-level iptables chains), not in the number of Services. Raises
        whatever the runner raises; the kernel then keeps its previous rules and
        the next sync is a full one.
        """
        t_start = time.perf_counter()
        ctx = self._context()
        self._replan(ctx)
        plan = self._assemble(ctx)
        t_planned = time.perf_counter()
        context = self._render_context(plan)
        fresh = self._render_changes(context)
        replaced = context != self._frag_context

        def frags_of(key: _Key) -> tuple:
            """A planned Service's current fragments."""
            return fresh[key] if replaced or key in fresh else self._frags[key]

        def all_fragments() -> tuple:
            """Every current fragment, in plan order."""
            current = fresh if replaced else self._frags | fresh if fresh else self._frags
            return tuple(chain.from_iterable(map(current.__getitem__, self._keys())))

        old = self._installed
        changes = self._changes.changes()
        all_changed = self._changes.all_changed
        full = full or old is None or old.context != context or self._resync_due()
        if full:
            frags = all_fragments()
            kind: SyncKind = "full"
            text = self._renderer.full_text(plan, frags, old.by_service if old is not None else None)
            changed = len(frags)
            t_rendered = time.perf_counter()
            conntrack = tuple(stale_entries(old.plan if old else None, plan))
        else:
            assert old is not None
            # after load() or a node change every Service may differ from what the kernel holds
            keys = set(self._plans) | set(old.by_service) if all_changed else changes
            removed, added = [], []
            for key in sorted(keys):  # in key order: the same update in every process (apply --dry-run)
                was = old.by_service.get(key, ())
                now = frags_of(key) if key in self._plans else ()
                if was is not now:
                    removed += [f for f in was if f not in now]
                    added += [f for f in now if f not in was]
            text = self._renderer.partial_text(plan, all_fragments, old.by_service, removed, added)
            kind = "partial" if text else "none"
            changed = len(added)
            t_rendered = time.perf_counter()
            if all_changed:
                conntrack = tuple(stale_entries(old.plan, plan))
            else:
                before = [p for c in changes.values() if c.previous is not None for p in c.previous[0]]
                after = [p for c in changes.values() if c.current is not None for p in c.current[0]]
                conntrack = tuple(stale_changes(plan.family, before, after))
        t_found = time.perf_counter()  # stale conntrack entries found
        self._commit(context, fresh)
        self._changes.checkout()
        if self.runner is not None and text:
            self._installed = None  # if apply fails (or is interrupted), resync fully next time
            try:
                self.runner.apply(self.mode, self.family, text, full=full, sysctls=plan.sysctls)
            except BaseException:
                self._renderer.refused()
                raise
        t_applied = time.perf_counter()
        self._installed = _Installed(context, plan, dict(self._frags))
        if full:
            self._last_full = self._clock()
            self._renderer.synced(frags)
        t_kept = time.perf_counter()
        if self.runner is not None and conntrack:
            self.runner.delete_conntrack(conntrack)
        phases = (("plan", t_planned - t_start), ("render", t_rendered - t_planned + t_kept - t_applied),
                  ("apply", t_applied - t_found),
                  ("conntrack", t_found - t_rendered + time.perf_counter() - t_kept))
        return SyncResult(kind, text, plan, changed, conntrack, phases=phases)

    def _resync_due(self) -> bool:
        """Whether ``sync_period`` has passed since the last full sync."""
        return (self.sync_period is not None and self._last_full is not None
                and self._clock() - self._last_full >= self.sync_period)

    def _render_context(self, plan: NodePlan) -> tuple:
        base = (plan.family, plan.mode, plan.node_ips, plan.masquerade_mark, plan.local_detector,
                plan.cluster_ip_masquerade, plan.nodeports, plan.service_cidrs)
        return base + self.backend.render_context(self._endpoints)

    # ------------------------------------------------------------ persistence
    def installed(self):
        """An opaque record of what the kernel holds after the last successful sync."""
        return self._installed

    def restore_installed(self, record) -> None:
        """Trust that the kernel holds ``record`` (from :meth:`installed` of an earlier
        proxier for the same node, mode and family): the next sync is then partial."""
        self._installed = record

    def state_digest(self) -> Optional[str]:
        """A digest of what was last installed (None before the first sync)."""
        if self._installed is None:
            return None
        h = hashlib.sha256(repr(self._installed.context).encode())
        for f in self._installed.fragments:
            h.update(repr(f).encode())
        return h.hexdigest()
