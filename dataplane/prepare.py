"""One preparation path from validated input to the cluster a node's rules are built from.

What the manifests leave out, the control plane fills in before kube-proxy sees
it. :func:`prepare_cluster` does the same offline, in the control plane's
order, for the library and for every ``dataplane`` command alike:

1. ``allocate=True``: ClusterIPs, nodePorts and healthCheckNodePorts, as the
   API server assigns them on create (:func:`dataplane.controllers.allocation.allocate_cluster`);
2. the EndpointSlices the EndpointSlice controller derives from Pods, for
   Services with a selector and no EndpointSlices in the input
   (:func:`dataplane.controllers.endpointslices.derive_endpoint_slices`).

``v1`` Endpoints are mirrored into EndpointSlices while parsing
(:func:`dataplane.input.cluster.parse_cluster`), where the Endpoints objects
are at hand. Deriving is idempotent (a Service with slices gets none), and
:func:`dataplane.plan.build_plan` derives too, so a cluster that skipped this
step still gets the rules the CLI prints; allocation happens only when asked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

from .controllers.allocation import (
    DEFAULT_NODE_PORT_RANGE,
    AllocationResult,
    AllocationState,
    allocate_cluster,
)
from .controllers.endpointslices import with_derived_slices
from .errors import UsageError
from .input.cluster import ParseResult
from .model import Cluster


@dataclass(frozen=True, slots=True)
class PreparedCluster:
    """The cluster ready for planning, the input's warnings, and the allocation (None unless asked)."""

    cluster: Cluster
    warnings: tuple[str, ...] = ()
    allocation: Optional[AllocationResult] = None


def prepare_cluster(
    cluster: Union[Cluster, ParseResult],
    *,
    allocate: bool = False,
    service_cidrs: Union[str, Sequence[str], None] = None,
    node_port_range: str = DEFAULT_NODE_PORT_RANGE,
    seed: Optional[int] = None,
    state: Optional[AllocationState] = None,
) -> PreparedCluster:
    """``cluster`` as the control plane would hand it to kube-proxy (see the module doc).

    ``cluster`` may be a :class:`~dataplane.input.cluster.ParseResult` (from
    :func:`~dataplane.load_cluster` or :func:`~dataplane.cluster_from_objects`), whose
    warnings are carried over. With ``allocate``, ``service_cidrs`` (one CIDR per family,
    comma lists allowed; None: the cluster's ServiceCIDRs, else kubeadm's serviceSubnet, else
    10.96.0.0/12), ``node_port_range``, ``seed`` (reproducible dynamic allocation)
    and ``state`` (what an earlier run allocated) are those of ``dataplane allocate``;
    invalid ranges raise :class:`~dataplane.errors.UsageError`, Services whose values
    cannot be allocated :class:`~dataplane.errors.InputError`. ``state`` or ``seed``
    without ``allocate`` is a UsageError (they would be silently unused).
    """
    warnings: tuple[str, ...] = ()
    if isinstance(cluster, ParseResult):
        cluster, warnings = cluster.cluster, cluster.warnings
    allocation = None
    if allocate:
        allocation = allocate_cluster(cluster, service_cidrs=service_cidrs, node_port_range=node_port_range,
                                      state=state, seed=seed)
        cluster = allocation.cluster
    elif state is not None or seed is not None:
        raise UsageError("state and seed are used only with allocate=True")
    return PreparedCluster(with_derived_slices(cluster), warnings, allocation)
