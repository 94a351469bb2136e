"""Mirroring ``v1`` Endpoints into EndpointSlices, as the API server's mirroring controller does.

kube-proxy only reads EndpointSlices. For an Endpoints object written by hand
(typically for a Service without a selector) the control plane's
EndpointSlice *mirroring* controller creates the slices; this module does the
same offline:

* the subsets are first repacked into canonical form (one subset per distinct
  set of addresses, an address listed both ready and not-ready counting as
  ready);
* each address becomes an endpoint whose only condition is ``ready`` (true for
  ``addresses``, false for ``notReadyAddresses``; ``serving`` therefore equals
  ``ready`` and ``terminating`` is false), keeping ``nodeName``, ``hostname``
  and the target reference;
* addresses are split by IP family into one slice per (family, ports), with at
  most :data:`MAX_ENDPOINTS_PER_SUBSET` addresses mirrored per subset;
* slices are labelled like the controller's: the Endpoints' labels, plus
  ``kubernetes.io/service-name`` and ``endpointslice.kubernetes.io/managed-by``,
  and named ``<endpoints-name>-<k>`` (the controller uses a random suffix).

The controller never mirrors an Endpoints labelled
``endpointslice.kubernetes.io/skip-mirror: "true"`` or one that is a
leader-election lock; :func:`mirror_skip_reason` says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Iterator, Optional

from ..ipaddrs import ip_family
from ..model import (
    LABEL_SERVICE_NAME,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    Labels,
    ObjectRef,
    labels_get,
)

LABEL_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
LABEL_SKIP_MIRROR = "endpointslice.kubernetes.io/skip-mirror"
MIRRORING_CONTROLLER = "endpointslicemirroring-controller.k8s.io"
ANNOTATION_LEADER = "control-plane.alpha.kubernetes.io/leader"

# The mirroring controller's --mirroring-max-endpoints-per-subset default.
MAX_ENDPOINTS_PER_SUBSET = 1000
# The API server truncates generateName bases to this length (63 - 5 random chars).
_MAX_NAME_BASE = 58


@dataclass(frozen=True, slots=True)
class EndpointAddress:
    """One entry of a subset's ``addresses`` or ``notReadyAddresses`` (IP canonical)."""

    ip: str
    hostname: Optional[str] = None
    node_name: Optional[str] = None
    target_ref_name: Optional[str] = None
    target_ref_uid: Optional[str] = None


@dataclass(frozen=True, slots=True)
class EndpointSubset:
    """One entry of ``subsets``; ports use the EndpointSlice port type (``port`` always set)."""

    addresses: tuple[EndpointAddress, ...] = ()
    not_ready_addresses: tuple[EndpointAddress, ...] = ()
    ports: tuple[EndpointPort, ...] = ()


@dataclass(frozen=True, slots=True)
class Endpoints:
    """A validated ``v1`` Endpoints object."""

    namespace: str
    name: str
    subsets: tuple[EndpointSubset, ...] = ()
    labels: Labels = ()
    is_leader_lock: bool = False  # has the leader-election annotation
    ref: ObjectRef = field(
        default_factory=lambda: ObjectRef("Endpoints", "", ""), compare=False, hash=False
    )


def mirror_skip_reason(endpoints: Endpoints) -> Optional[str]:
    """Why the mirroring controller would leave ``endpoints`` alone, or None if it mirrors it."""
    if labels_get(endpoints.labels, LABEL_SKIP_MIRROR) == "true":
        return f'it is labelled {LABEL_SKIP_MIRROR}="true"'
    if endpoints.is_leader_lock:
        return f"it is a leader-election lock (annotation {ANNOTATION_LEADER})"
    return None


def endpoints_to_slices(
    endpoints: Endpoints, taken_names: Collection[str] = ()
) -> tuple[EndpointSlice, ...]:
    """The EndpointSlices mirroring ``endpoints``; slice names avoid ``taken_names`` (same namespace)."""
    groups = _group_by_family_and_ports(repack_subsets(endpoints.subsets))
    labels = _slice_labels(endpoints)
    names = _slice_names(endpoints.name, taken_names)
    slices = []
    for (family, ports), members in groups.items():
        name = next(names)
        slices.append(
            EndpointSlice(
                namespace=endpoints.namespace,
                name=name,
                service_name=endpoints.name,
                address_type=family,
                endpoints=tuple(members),
                ports=ports,
                labels=labels,
                ref=ObjectRef(
                    "EndpointSlice", endpoints.namespace, name, endpoints.ref.source, endpoints.ref.index,
                    endpoints.ref.unit,
                ),
            )
        )
    return tuple(slices)


def unmirrored_address_count(endpoints: Endpoints) -> int:
    """How many addresses exceed :data:`MAX_ENDPOINTS_PER_SUBSET` and are not mirrored."""
    total = 0
    for subset in repack_subsets(endpoints.subsets):
        size = len(subset.addresses) + len(subset.not_ready_addresses)
        total += max(0, size - MAX_ENDPOINTS_PER_SUBSET)
    return total


# ------------------------------------------------------------------ repacking

_AddressKey = tuple[str, Optional[str]]  # (ip, target UID): distinct endpoints


def repack_subsets(subsets: tuple[EndpointSubset, ...]) -> tuple[EndpointSubset, ...]:
    """Canonical subsets: one per distinct address set, each port listed once (``RepackSubsets``).

    An address that is ready for a port in any subset is ready for that port.
    Order is deterministic: groups and ports in order of first appearance,
    addresses sorted by IP.
    """
    first_seen: dict[_AddressKey, EndpointAddress] = {}
    readiness_by_port: dict[Optional[EndpointPort], dict[_AddressKey, bool]] = {}
    for subset in subsets:
        ports: tuple[Optional[EndpointPort], ...] = subset.ports or (None,)
        for port in ports:
            readiness = readiness_by_port.setdefault(port, {})
            for address, ready in _addresses_with_readiness(subset):
                key = (address.ip, address.target_ref_uid)
                first_seen.setdefault(key, address)
                readiness[key] = readiness.get(key, False) or ready
    ports_by_address_set: dict[frozenset, list[EndpointPort]] = {}
    for port, readiness in readiness_by_port.items():
        entry = ports_by_address_set.setdefault(frozenset(readiness.items()), [])
        if port is not None:
            entry.append(port)
    return tuple(
        _subset_from(address_set, tuple(ports), first_seen)
        for address_set, ports in ports_by_address_set.items()
    )


def _addresses_with_readiness(subset: EndpointSubset) -> list[tuple[EndpointAddress, bool]]:
    return [(a, True) for a in subset.addresses] + [(a, False) for a in subset.not_ready_addresses]


def _subset_from(
    address_set: frozenset,
    ports: tuple[EndpointPort, ...],
    first_seen: dict[_AddressKey, EndpointAddress],
) -> EndpointSubset:
    ordered = sorted(address_set, key=lambda item: (item[0][0], item[0][1] or ""))
    ready = tuple(first_seen[key] for key, is_ready in ordered if is_ready)
    not_ready = tuple(first_seen[key] for key, is_ready in ordered if not is_ready)
    return EndpointSubset(addresses=ready, not_ready_addresses=not_ready, ports=ports)


# ------------------------------------------------------------- slice building

_GroupKey = tuple[str, tuple[EndpointPort, ...]]


def _group_by_family_and_ports(subsets: tuple[EndpointSubset, ...]) -> dict[_GroupKey, list[Endpoint]]:
    """Distinct endpoints grouped by (address family, ports), at most MAX_ENDPOINTS_PER_SUBSET per subset."""
    groups: dict[_GroupKey, dict[Endpoint, None]] = {}
    for subset in subsets:
        mirrored = _addresses_with_readiness(subset)[:MAX_ENDPOINTS_PER_SUBSET]
        for address, ready in mirrored:
            key = (ip_family(address.ip), subset.ports)
            groups.setdefault(key, {})[_endpoint(address, ready)] = None
    return {key: list(members) for key, members in groups.items()}


def _endpoint(address: EndpointAddress, ready: bool) -> Endpoint:
    """The slice endpoint for one address: only ``ready`` is set, so serving == ready."""
    return Endpoint(
        addresses=(address.ip,),
        conditions=EndpointConditions(ready=ready, serving=ready, terminating=False),
        node_name=address.node_name,
        hostname=address.hostname,
        target_ref_name=address.target_ref_name,
    )


def _slice_labels(endpoints: Endpoints) -> Labels:
    """The Endpoints' labels with the service-name and managed-by labels set."""
    labels = dict(endpoints.labels)
    labels[LABEL_SERVICE_NAME] = endpoints.name
    labels[LABEL_MANAGED_BY] = MIRRORING_CONTROLLER
    return tuple(sorted(labels.items()))


def _slice_names(endpoints_name: str, taken: Collection[str]) -> Iterator[str]:
    """``name-1``, ``name-2``, ... skipping names already in use."""
    base = f"{endpoints_name}-"[:_MAX_NAME_BASE]
    k = 0
    while True:
        k += 1
        name = f"{base}{k}"
        if name not in taken:
            yield name
