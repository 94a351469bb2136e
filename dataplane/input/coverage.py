"""Services the input leaves without endpoints, and what to add to it.

A real application's manifests (a Deployment and its Service, as ``kubectl apply``
reads them) hold no Pods and no EndpointSlices: in a cluster the Deployment's Pods
exist and the EndpointSlice controller makes the slices, but offline the dataplane
sees a Service with a selector that selects nothing, and the rules reject its
traffic as kube-proxy does for a Service without endpoints. That is right for the
input and surprising for the user, so it is said once per such Service.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from ..controllers.endpointslices import wants_slices
from ..controllers.podindex import PodIndex
from ..model import EndpointSlice, Pod, Service


def services_without_endpoints(services: Iterable[Service], slices: Iterable[EndpointSlice],
                               pods: Sequence[Pod]) -> list[str]:
    """A warning for each Service with a selector (not ExternalName) that has no EndpointSlice
    in the input and selects no Pod of it, in input order, once per Service."""
    covered = {(s.namespace, s.service_name) for s in slices if s.service_name}
    index = None  # Pods by namespace and label, built for the first Service that needs it
    warnings = []
    for svc in services:
        if not wants_slices(svc) or svc.key in covered:
            continue
        covered.add(svc.key)  # once, even for a Service given twice
        index = index or PodIndex(pods)
        if index.selects_any(svc.namespace, svc.selector or ()):
            continue
        warnings.append(
            f"{svc.ref.where()}: selects no Pod and has no EndpointSlice in the input, so it has no "
            "endpoints and its rules reject all traffic to it; to get its endpoints, include its Pods "
            "(kubectl get pods -o yaml) or its EndpointSlices (kubectl get endpointslices -o yaml)"
        )
    return warnings
