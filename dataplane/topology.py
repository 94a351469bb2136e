"""Which endpoints a node's service port uses: kube-proxy's ``CategorizeEndpoints``.

The plan (:mod:`dataplane.plan`) calls :func:`categorize` once per service port.
Cluster endpoints are the ready ones, narrowed by topology hints when every
ready endpoint carries them (:func:`topology_mode`); with none ready, the
serving and terminating ones, topology ignored. Local endpoints are this
node's ready ones, else its serving and terminating ones, never narrowed by
hints.
"""
from __future__ import annotations

from typing import Literal, Optional, Protocol, Sequence, TypeVar

from .model import Endpoint

TopologyMode = Literal["", "PreferSameNode", "PreferSameZone"]


class Categorizable(Protocol):
    """What :func:`categorize` reads of a planned endpoint."""

    @property
    def ready(self) -> bool: ...

    @property
    def serving(self) -> bool: ...

    @property
    def terminating(self) -> bool: ...

    @property
    def is_local(self) -> bool: ...


E = TypeVar("E", bound=Categorizable)


def topology_mode(endpoints: Sequence[Endpoint], node_name: str, zone: Optional[str]) -> TopologyMode:
    """kube-proxy's ``topologyModeFromHints`` over the given (ready) endpoints.

    ``PreferSameNode`` when every endpoint has a node hint and one names ``node_name``;
    else ``PreferSameZone`` when every endpoint has a zone hint and one names ``zone``
    (a node without a zone label never filters); else ``""``: use every endpoint.
    """
    if not endpoints:
        return ""
    if all(ep.hints_for_nodes for ep in endpoints) and any(
        node_name in (ep.hints_for_nodes or ()) for ep in endpoints
    ):
        return "PreferSameNode"
    if zone and all(ep.hints_for_zones for ep in endpoints) and any(
        zone in (ep.hints_for_zones or ()) for ep in endpoints
    ):
        return "PreferSameZone"
    return ""


def available_for_topology(endpoint: Endpoint, mode: TopologyMode, node_name: str, zone: Optional[str]) -> bool:
    """kube-proxy's ``availableForTopology``: whether ``endpoint`` is hinted for this node (or zone)."""
    if mode == "PreferSameNode":
        return node_name in (endpoint.hints_for_nodes or ())
    if mode == "PreferSameZone":
        return zone in (endpoint.hints_for_zones or ())
    return True


def cluster_endpoints(pairs: Sequence[tuple[E, Endpoint]], node_name: str, zone: Optional[str]) -> list[E]:
    """The ready endpoints this node may use for cluster traffic, topology applied."""
    ready = [(planned, ep) for planned, ep in pairs if planned.ready]
    mode = topology_mode([ep for _, ep in ready], node_name, zone)
    return [planned for planned, ep in ready if available_for_topology(ep, mode, node_name, zone)]


def categorize(
    pairs: Sequence[tuple[E, Endpoint]],
    *,
    node_name: str,
    zone: Optional[str],
    use_cluster: bool,
    use_local: bool,
) -> tuple[list[E], list[E], bool]:
    """``(cluster endpoints, local endpoints, any endpoint usable)`` of one service port.

    ``pairs`` holds each planned endpoint with the EndpointSlice endpoint it came from
    (whose hints are read). Cluster endpoints are computed only when ``use_cluster``,
    local ones only when ``use_local``; each falls back to the serving and terminating
    endpoints separately, and the fallback ignores topology.
    """
    planned = [p for p, _ in pairs]
    fallback = [p for p in planned if p.serving and p.terminating]
    has_any = any(p.ready for p in planned) or bool(fallback)
    cluster: list[E] = []
    local: list[E] = []
    if use_cluster:
        cluster = cluster_endpoints(pairs, node_name, zone) or fallback
    if use_local:
        local = [p for p in planned if p.is_local and p.ready]
        if not local:
            local = [p for p in fallback if p.is_local]
    return cluster, local, has_any
