"""The objects the agent has been told about, by kind/namespace/name, feeding the Proxiers.

:class:`ObjectStore` applies watch events as an informer's cache does: ``ADDED``
and ``MODIFIED`` store the object (with its ``resourceVersion``), ``DELETED``
removes it, ``BOOKMARK`` only advances the source's resourceVersion, ``ERROR``
starts a relist of the source. Each object is validated as every other command
validates it (:func:`dataplane.parse_object`); a bad one is reported in one line
naming the source, the event or document, the object and the field, and skipped:
the store keeps what it had for that object, so other Services' rules never
change because of it.

A relist (after an ``ERROR``, a kubectl watch that ended, or a snapshot read
again) marks what the source said before as stale; what the new listing does not
mention again is deleted when the source has caught up (:meth:`ObjectStore.caught_up`).

Changes go to every attached :class:`~dataplane.Proxier` (one per IP family, as
kube-proxy's metaproxier) through its ``set_*``/``delete_*`` methods, and are
counted for the next sync's log line and ``record_pending``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

from ..errors import InputError, UsageError, report_lines
from ..input.cluster import parse_object
from ..model import Cluster, EndpointSlice, Node, ProxyConfig, Service, ServiceCIDR
from .events import WatchEvent, status_text

_Key = tuple[str, str, str]  # kind, namespace, name of the object as the API names it


class Target(Protocol):
    """What the store feeds: :class:`~dataplane.Proxier`'s change methods."""

    def load(self, cluster: Cluster) -> None: ...
    def set_service(self, svc: Service) -> None: ...
    def delete_service(self, namespace: str, name: str) -> None: ...
    def set_endpoint_slice(self, eps: EndpointSlice) -> None: ...
    def delete_endpoint_slice(self, namespace: str, name: str) -> None: ...
    def set_node(self, node: Node) -> None: ...
    def set_config(self, config: ProxyConfig) -> None: ...
    def set_service_cidrs(self, service_cidrs: Sequence[ServiceCIDR]) -> None: ...


@dataclass(slots=True)
class _Entry:
    resource_version: str
    value: Any  # the model object (Service, EndpointSlice, Node, ProxyConfig, ServiceCIDR)
    source: str
    stale: bool = False


@dataclass
class Pending:
    """What changed since the last sync: keys of Services and EndpointSlices, other objects, events."""

    services: set = dataclasses.field(default_factory=set)
    endpoints: set = dataclasses.field(default_factory=set)
    other: int = 0
    events: int = 0

    def __bool__(self) -> bool:
        return bool(self.services or self.endpoints or self.other)


_USED = (Service, EndpointSlice, Node, ProxyConfig, ServiceCIDR)


#: kinds that are configuration files rather than API objects: one of each, without a name
_SINGLETON_KINDS = ("KubeProxyConfiguration", "ClusterConfiguration")


def _identity(obj: dict) -> Optional[_Key]:
    """(kind, namespace, name) of a raw object, None when it has none."""
    meta = obj.get("metadata")
    kind = obj.get("kind")
    if kind in _SINGLETON_KINDS:
        return (kind, "", "")
    if not isinstance(meta, dict) or not isinstance(kind, str) or not isinstance(meta.get("name"), str):
        return None
    namespace = meta.get("namespace")
    return (kind, namespace if isinstance(namespace, str) else "", meta["name"])


@dataclass(frozen=True, slots=True)
class Parsed:
    """An object validated ahead of the store (by the thread that read it): the model object, or
    its problems, or ``unused`` for a kind the dataplane does not read."""

    value: Any = None
    problems: tuple = ()
    unused: bool = False


def preparse(obj: Any, source: str) -> Parsed:
    """Validate ``obj`` as :meth:`ObjectStore.put` would (thread-safe; for reader threads, so that
    the sync loop's thread only swaps objects)."""
    try:
        return Parsed(parse_object(obj, source=source))
    except InputError as err:
        return Parsed(problems=tuple(err.problems))
    except UsageError:
        return Parsed(unused=True)


def preparse_event(event: WatchEvent) -> Optional[Parsed]:
    """:func:`preparse` of an ADDED or MODIFIED event's object (None for other events)."""
    return preparse(event.obj, event.source) if event.type in ("ADDED", "MODIFIED") else None


def _resource_version(obj: dict) -> str:
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return rv if isinstance(rv, str) else ""


class ObjectStore:
    """The agent's view of the cluster (see the module doc)."""

    def __init__(self, *, warn: Callable[[str], None], on_event: Optional[Callable[[str, str], None]] = None,
                 on_error: Optional[Callable[[str], None]] = None) -> None:
        """``warn``: prints one line; ``on_event(kind, type)`` and ``on_error(reason)`` count
        events and skipped objects (SyncStatus.record_event / record_error)."""
        self._warn = warn
        self._on_event = on_event or (lambda kind, event_type: None)
        self._on_error = on_error or (lambda reason: None)
        self._objects: dict[_Key, _Entry] = {}
        self._targets: list[Target] = []
        self.bookmarks: dict[str, str] = {}  # source -> the last resourceVersion it reported
        self.pending = Pending()
        self._ignored_kinds: set[tuple[str, str]] = set()  # (source, kind) warned about once

    # ------------------------------------------------------------- targets
    def attach(self, target: Target) -> None:
        """Give ``target`` everything stored now, and every change from now on."""
        target.load(self.cluster())
        self._targets.append(target)

    def cluster(self) -> Cluster:
        """The stored objects as a :class:`~dataplane.Cluster`."""
        values = [e.value for e in self._objects.values()]
        configs = [v for v in values if isinstance(v, ProxyConfig)]
        return Cluster(
            services=tuple(v for v in values if isinstance(v, Service)),
            endpoint_slices=tuple(v for v in values if isinstance(v, EndpointSlice)),
            nodes=tuple(v for v in values if isinstance(v, Node)),
            proxy_config=configs[0] if configs else ProxyConfig(),
            proxy_config_given=bool(configs),
            service_cidrs=self._service_cidrs(),
        )

    def _service_cidrs(self) -> tuple[ServiceCIDR, ...]:
        return tuple(sorted((e.value for e in self._objects.values() if isinstance(e.value, ServiceCIDR)),
                            key=lambda s: s.name))

    def take_pending(self) -> Pending:
        """What changed since the last call (and start counting again)."""
        pending, self.pending = self.pending, Pending()
        return pending

    # -------------------------------------------------------------- events
    def apply(self, event: WatchEvent, parsed: Optional[Parsed] = None) -> bool:
        """Apply one event (``parsed``: its object already validated by :func:`preparse`); True
        when an object changed. ``ERROR`` starts a relist of the event's source (see :meth:`relist`)."""
        source = event.source
        self.pending.events += 1
        kind = event.obj.get("kind") if isinstance(event.obj.get("kind"), str) else "?"
        self._on_event(kind, event.type)
        rv = _resource_version(event.obj)
        if event.type == "BOOKMARK":
            if rv:
                self.bookmarks[source] = rv
            return False
        if event.type == "ERROR":
            self._warn(f"{event.where}: watch error {status_text(event.obj)}; relisting {source}")
            self._on_error("watch error")
            self.relist(source)
            return False
        key = _identity(event.obj)
        if key is None:
            self._skip(f"{event.where}: metadata.name: Required value (the object cannot be identified)")
            return False
        if rv:
            self.bookmarks[source] = rv
        if event.type == "DELETED":
            return self._delete(key)
        return self.put(event.obj, source, "event", event.index, parsed)

    def put(self, obj: dict, source: str, unit: str, index: int, parsed: Optional[Parsed] = None) -> bool:
        """Store one object (ADDED, MODIFIED, or the ``index``-th ``unit`` of a listing: "event",
        "document", "item"); True when it changed."""
        where = f"{source}: {unit} {index}"
        key = _identity(obj)
        if key is None:
            self._skip(f"{where}: metadata.name: Required value (the object cannot be identified)")
            return False
        rv = _resource_version(obj)
        old = self._objects.get(key)
        if old is not None and rv and old.resource_version == rv:
            old.stale = False
            return False
        if parsed is None:
            parsed = preparse(obj, source)
        if parsed.problems:
            lines = report_lines([dataclasses.replace(p, source=source, index=index, unit=unit)
                                  for p in parsed.problems], "problem")
            for line in lines:
                self._skip(f"{line} (skipped)")
            if old is not None:
                old.stale = False  # the previous version stays in force
            return False
        value = parsed.value
        if parsed.unused or not isinstance(value, _USED):
            self._ignore(source, key[0])
            return False
        self._objects[key] = _Entry(rv, value, source)
        if old is not None and old.value == value:
            return False
        self._send_set(value)
        return True

    def _delete(self, key: _Key) -> bool:
        entry = self._objects.pop(key, None)
        if entry is None:
            return False
        self._send_delete(entry.value)
        return True

    # -------------------------------------------------------------- relists
    def relist(self, source: str) -> None:
        """A new full listing of ``source`` begins: what it said before is stale until listed again."""
        for entry in self._objects.values():
            if entry.source == source:
                entry.stale = True

    def caught_up(self, source: str) -> int:
        """``source`` has delivered its listing: delete what it did not list again; how many."""
        gone = [k for k, e in self._objects.items() if e.source == source and e.stale]
        for key in gone:
            self._delete(key)
        return len(gone)

    # ------------------------------------------------------------ feeding
    def _send_set(self, value: Any) -> None:
        for t in self._targets:
            if isinstance(value, Service):
                t.set_service(value)
            elif isinstance(value, EndpointSlice):
                t.set_endpoint_slice(value)
            elif isinstance(value, Node):
                t.set_node(value)
            elif isinstance(value, ProxyConfig):
                t.set_config(value)
            else:
                t.set_service_cidrs(self._service_cidrs())
        self._count(value)

    def _send_delete(self, value: Any) -> None:
        for t in self._targets:
            if isinstance(value, Service):
                t.delete_service(value.namespace, value.name)
            elif isinstance(value, EndpointSlice):
                t.delete_endpoint_slice(value.namespace, value.name)
            elif isinstance(value, ProxyConfig):
                t.set_config(ProxyConfig())
            elif isinstance(value, ServiceCIDR):
                t.set_service_cidrs(self._service_cidrs())
            # a deleted Node: kube-proxy keeps using what it knew of its own node
        self._count(value)

    def _count(self, value: Any) -> None:
        if isinstance(value, Service):
            self.pending.services.add(value.key)
        elif isinstance(value, EndpointSlice):
            self.pending.endpoints.add((value.namespace, value.name))
        else:
            self.pending.other += 1

    # ------------------------------------------------------------ messages
    def _skip(self, line: str) -> None:
        self._warn(line)
        self._on_error("invalid object")

    def _ignore(self, source: str, kind: str) -> None:
        if (source, kind) not in self._ignored_kinds:
            self._ignored_kinds.add((source, kind))
            self._warn(f"{source}: ignoring {kind} objects (the agent reads Services, EndpointSlices, Nodes, "
                       "ServiceCIDRs and kube-proxy's configuration)")

