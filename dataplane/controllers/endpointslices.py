"""EndpointSlices derived from Pods, as the EndpointSlice controller would create them.

For every Service with a selector (and not ``type: ExternalName``) that has no
EndpointSlice in the input, :func:`derive_endpoint_slices` builds the slices
the controller would create from scratch:

* the Pods of the Service's namespace whose labels carry every ``key=value``
  of the selector, leaving out Pods in phase Succeeded or Failed;
* one set of slices per address family the Service uses (its ``ipFamilies``,
  else the families of its ``clusterIPs``, else IPv4), each Pod contributing
  its IP of that family, if it has one;
* endpoint conditions ``serving`` = the Pod's Ready condition,
  ``terminating`` = deletionTimestamp set, ``ready`` = serving and not
  terminating (always true with ``publishNotReadyAddresses``);
* ``nodeName``, the zone from the Node's ``topology.kubernetes.io/zone``
  label, the hostname when the Pod's ``subdomain`` is the Service's name, and a
  Pod ``targetRef``;
* topology hints from ``spec.trafficDistribution`` (the controller's
  ``trafficdist`` heuristic): with PreferClose or PreferSameZone each ready
  endpoint whose Pod's Node has a zone gets ``forZones: [its zone]``, with
  PreferSameNode also ``forNodes: [its nodeName]``; unset, other values and
  endpoints that are not ready get no hints;
* ports named, typed and ``appProtocol``-tagged like the Service ports, the
  number being the ``targetPort`` resolved for each Pod (a named port is
  looked up among the Pod's regular containers' ports, then its native
  sidecars' (``initContainers`` with ``restartPolicy: Always``), name and
  protocol matching, first match winning; a Pod without it gets no entry for
  that port), Pods grouped by their resolved port list, at most 100 endpoints
  per slice;
* a placeholder slice without ports or endpoints when a family has no
  endpoints at all.

Differences from the live controller, all deliberate: slice names end in five
characters derived from a hash of the slice (the API server picks them at
random), so runs are reproducible; Pods on Nodes the input does not describe
are kept (the controller skips them until their Node appears), since an input
usually describes only some Nodes; and a Service without any clusterIP is not
labelled headless (only ``clusterIP: None`` is), since such a Service has merely
not been allocated yet.

Not modelled: Topology Aware Routing. When the annotation
``service.kubernetes.io/topology-aware-hints`` (or ``topology-mode``) is ``Auto``
the live controller ignores trafficDistribution and hints endpoints in
proportion to each zone's allocatable CPU, or removes all hints when that
heuristic cannot apply; the derived slices of such a Service carry no hints,
the outcome when the heuristic does not apply (every node then uses every
endpoint).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
from dataclasses import replace
from typing import Any, Iterable, Optional, Sequence

from ..ipaddrs import ip_family
from ..model import (
    LABEL_HEADLESS,
    LABEL_SERVICE_NAME,
    Cluster,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    Labels,
    Node,
    ObjectRef,
    Pod,
    Service,
    ServicePort,
)
from .podindex import PodIndex, selects

__all__ = ["PodIndex", "selects"]  # re-exported: selection lives in .podindex

LABEL_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
MAX_ENDPOINTS_PER_SLICE = 100

# The API server's generateName: base cut to 63 - 5 characters, then 5 characters
# from this alphabet (no vowels, no confusable digits).
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_NAME_SUFFIX_LENGTH = 5
_MAX_NAME_BASE = 63 - _NAME_SUFFIX_LENGTH
_RESERVED_LABELS = frozenset({LABEL_SERVICE_NAME, LABEL_MANAGED_BY, LABEL_HEADLESS})
_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
# every (ready, serving, terminating): endpoints share these (equal to one made anew)
_CONDITIONS = {(r, s, t): EndpointConditions(ready=r, serving=s, terminating=t)
               for r in (False, True) for s in (False, True) for t in (False, True)}

PortList = tuple[EndpointPort, ...]


# ------------------------------------------------------------------ selection


def wants_slices(svc: Service) -> bool:
    """True if the controller manages slices for ``svc``: it has a selector and is not ExternalName."""
    return bool(svc.selector) and svc.type != "ExternalName"


def pod_is_eligible(pod: Pod) -> bool:
    """True unless the Pod has finished (phase Succeeded or Failed) or has no IP at all."""
    return pod.phase not in _TERMINAL_PHASES and bool(pod.pod_ips)


def address_families(svc: Service) -> tuple[str, ...]:
    """The address types of the Service's slices: its ipFamilies, else its clusterIPs' families, else IPv4."""
    if svc.ip_families:
        return tuple(dict.fromkeys(svc.ip_families))
    families: list[str] = []
    for ip in svc.cluster_ips:
        try:
            families.append(ip_family(ip))
        except ValueError:
            continue  # "None", "" or garbage: says nothing about the family
    return tuple(dict.fromkeys(families)) or ("IPv4",)


# ---------------------------------------------------------------------- ports


def resolve_target_port(svc_port: ServicePort, pod: Pod) -> Optional[int]:
    """The Pod port a Service port leads to, or None if a named targetPort is not on the Pod.

    A name is looked up (name and protocol matching, first match winning) among the regular
    containers' ports, then the native sidecars' (``FindPort``, 1.33's EndpointSlice controller).
    """
    target = svc_port.target_port
    if target is None or target == 0 or target == "":
        return svc_port.port
    if isinstance(target, int):
        return target
    for container_port in pod.container_ports + pod.sidecar_ports:
        if container_port.name == target and container_port.protocol == svc_port.protocol:
            return container_port.container_port
    return None


def endpoint_ports(svc: Service, pod: Pod) -> PortList:
    """The slice ports for ``pod``, in Service port order, without ports the Pod cannot resolve."""
    ports = []
    for svc_port in svc.ports:
        number = resolve_target_port(svc_port, pod)
        if number is not None:
            ports.append(EndpointPort(port=number, protocol=svc_port.protocol, name=svc_port.name,
                                      app_protocol=svc_port.app_protocol))
    return tuple(ports)


# ------------------------------------------------------------------ endpoints


def pod_endpoint(pod: Pod, svc: Service, family: str, node: Optional[Node]) -> Optional[Endpoint]:
    """The endpoint ``pod`` contributes to ``svc``'s slices of ``family``; None if it has no such IP."""
    return _endpoint(pod, svc, family, (node.zone or None) if node is not None else None)


def _endpoint(pod: Pod, svc: Service, family: str, zone: Optional[str]) -> Optional[Endpoint]:
    """:func:`pod_endpoint` with the zone of the Pod's Node (None: no zone, or no such Node) given."""
    ips = pod.pod_ips
    if len(ips) == 1:  # the common case: the Pod's one IP is of the family, or it has none of it
        addresses = ips if _family_or_none(ips[0]) == family else ()
    else:
        addresses = tuple(ip for ip in ips if _family_or_none(ip) == family)
    if not addresses:
        return None
    serving = pod.ready
    terminating = pod.terminating
    ready = svc.publish_not_ready_addresses or (serving and not terminating)
    hostname = pod.hostname if pod.hostname and pod.subdomain == svc.name else None
    node_name = pod.node_name or None
    if svc.traffic_distribution is None:  # (the common case: no hints; see topology_hints)
        for_zones = for_nodes = None
    else:
        for_zones, for_nodes = topology_hints(svc, ready, zone, node_name)
    if type(ready) is bool and type(serving) is bool and type(terminating) is bool:
        conditions = _CONDITIONS[ready, serving, terminating]
    else:  # (a Pod built by a library caller)
        conditions = EndpointConditions(ready=ready, serving=serving, terminating=terminating)
    # (positional: faster than by keyword; the order is Endpoint's, which tests/test_pod_index.py pins)
    return Endpoint(addresses, conditions, node_name, zone, for_zones, for_nodes, hostname, pod.name)


def topology_hints(
    svc: Service, ready: bool, zone: Optional[str], node_name: Optional[str]
) -> tuple[Optional[tuple[str, ...]], Optional[tuple[str, ...]]]:
    """``(forZones, forNodes)`` names for one endpoint of ``svc`` (None: no such hints).

    The controller's ``trafficdist`` heuristics: PreferClose (a deprecated alias) and
    PreferSameZone hint a ready endpoint for its own zone, PreferSameNode also for its own
    node; an endpoint without a zone (node name) gets no zone (node) hint. Any other value,
    no value, and Topology Aware Routing (the Auto annotation) give no hints.
    """
    if svc.topology_mode_auto or not ready:
        return None, None
    if svc.traffic_distribution in ("PreferClose", "PreferSameZone"):
        return ((zone,) if zone else None), None
    if svc.traffic_distribution == "PreferSameNode":
        return ((zone,) if zone else None), ((node_name,) if node_name else None)
    return None, None


def _family_or_none(ip: str) -> Optional[str]:
    try:
        return ip_family(ip)
    except ValueError:
        return None


def _endpoint_order(endpoint: Endpoint) -> tuple[int, int, str]:
    """Sort key: first address numerically (IPv4 before IPv6), then the Pod name."""
    text = endpoint.addresses[0]
    try:  # the addresses were validated when read: the C parser gives ipaddress's number
        key = (4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"))
    except OSError:
        try:
            key = (6, int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big"))
        except OSError:
            address = ipaddress.ip_address(text)
            key = (address.version, int(address))
    return (*key, endpoint.target_ref_name or "")


def _ports_order(ports: PortList) -> tuple[tuple[str, str, int], ...]:
    return tuple((p.name, p.protocol, p.port or 0) for p in ports)


# --------------------------------------------------------------------- slices


def slice_labels(svc: Service) -> Labels:
    """The labels of ``svc``'s slices: its own labels minus the reserved ones, plus the controller's."""
    labels = {key: value for key, value in svc.labels if key not in _RESERVED_LABELS}
    if svc.is_headless:
        labels[LABEL_HEADLESS] = ""
    labels[LABEL_SERVICE_NAME] = svc.name
    labels[LABEL_MANAGED_BY] = CONTROLLER_NAME
    return tuple(sorted(labels.items()))


def slice_name(svc: Service, family: str, ports: PortList, endpoints: Sequence[Endpoint], attempt: int = 0) -> str:
    """``<service>-<5 characters>``, the characters derived from a hash of the slice's content
    (:func:`_content_text`)."""
    content = _content_text(svc, family, ports, endpoints, attempt)
    digest = hashlib.sha256(content.encode()).digest()
    suffix = "".join(_NAME_ALPHABET[b % len(_NAME_ALPHABET)] for b in digest[:_NAME_SUFFIX_LENGTH])
    return f"{svc.name}-"[:_MAX_NAME_BASE] + suffix


def _content_json(svc: Service, family: str, ports: PortList, endpoints: Sequence[Endpoint],
                  attempt: int) -> dict[str, Any]:
    """What a slice's name is derived from, as a JSON object."""
    return {
        "namespace": svc.namespace,
        "service": svc.name,
        "addressType": family,
        "ports": [[p.name, p.protocol, p.port] for p in ports],
        "endpoints": [_endpoint_json(e, svc.namespace) for e in endpoints],
        "attempt": attempt,
    }


_dumps = json.JSONEncoder(sort_keys=True).encode  # json.dumps(value, sort_keys=True)
_quoted = json.encoder.encode_basestring_ascii  # json.dumps' text of a str
_BOOLS = {True: "true", False: "false"}


def _content_text(svc: Service, family: str, ports: PortList, endpoints: Sequence[Endpoint], attempt: int) -> str:
    """``json.dumps(_content_json(...), sort_keys=True)``, the same text written directly (the
    keys in sorted order): the slice's name is its hash, so not a character may differ. Values of
    types other than the model's (a library caller's) go through ``json.dumps`` itself."""
    namespace, name = svc.namespace, svc.name
    if not (type(namespace) is str and type(name) is str and type(family) is str and type(attempt) is int):
        return _dumps(_content_json(svc, family, ports, endpoints, attempt))
    ref_tail = ', "namespace": ' + _quoted(namespace) + "}"
    texts = []
    for e in endpoints:
        text = _endpoint_text(e, ref_tail)
        texts.append(_dumps(_endpoint_json(e, namespace)) if text is None else text)
    port_texts = []
    for p in ports:
        if type(p.name) is str and type(p.protocol) is str and (p.port is None or type(p.port) is int):
            port_texts.append(f"[{_quoted(p.name)}, {_quoted(p.protocol)}, {'null' if p.port is None else p.port}]")
        else:
            port_texts.append(_dumps([p.name, p.protocol, p.port]))
    return (f'{{"addressType": {_quoted(family)}, "attempt": {attempt}, "endpoints": [{", ".join(texts)}], '
            f'"namespace": {_quoted(namespace)}, "ports": [{", ".join(port_texts)}], "service": {_quoted(name)}}}')


def _endpoint_text(e: Endpoint, ref_tail: str) -> Optional[str]:
    """``json.dumps(_endpoint_json(e, namespace), sort_keys=True)`` (``ref_tail``: the end of its
    targetRef, which names the namespace); None for a value of another type than the model's."""
    c = e.conditions
    if type(c.ready) is not bool or type(c.serving) is not bool or type(c.terminating) is not bool:
        return None
    ready, serving, terminating = _BOOLS[c.ready], _BOOLS[c.serving], _BOOLS[c.terminating]
    try:  # (_quoted raises TypeError for anything but a str)
        return _endpoint_parts(e, ref_tail, ready, serving, terminating)
    except TypeError:
        return None


def _endpoint_parts(e: Endpoint, ref_tail: str, ready: str, serving: str, terminating: str) -> str:
    """:func:`_endpoint_text` once the conditions are read; TypeError for a value not a str."""
    addresses = e.addresses
    text = ('{"addresses": [' + (_quoted(addresses[0]) if len(addresses) == 1 else ", ".join(map(_quoted, addresses)))
            + '], "conditions": {"ready": ' + ready + ', "serving": ' + serving + ', "terminating": '
            + terminating + "}")
    if e.hints_for_nodes is not None or e.hints_for_zones is not None:
        kinds = []
        if e.hints_for_nodes is not None:
            kinds.append('"forNodes": [' + ", ".join('{"name": ' + _quoted(n) + "}" for n in e.hints_for_nodes) + "]")
        if e.hints_for_zones is not None:
            kinds.append('"forZones": [' + ", ".join('{"name": ' + _quoted(z) + "}" for z in e.hints_for_zones) + "]")
        text += ', "hints": {' + ", ".join(kinds) + "}"
    if e.hostname is not None:
        text += ', "hostname": ' + _quoted(e.hostname)
    if e.node_name is not None:
        text += ', "nodeName": ' + _quoted(e.node_name)
    if e.target_ref_name is not None:
        text += ', "targetRef": {"kind": "Pod", "name": ' + _quoted(e.target_ref_name) + ref_tail
    if e.zone is not None:
        text += ', "zone": ' + _quoted(e.zone)
    return text + "}"


def _unique_name(
    svc: Service, family: str, ports: PortList, endpoints: Sequence[Endpoint], taken: set[tuple[str, str]]
) -> str:
    """A slice name not yet used in the Service's namespace; records it in ``taken``."""
    attempt = 0
    name = slice_name(svc, family, ports, endpoints)
    while (svc.namespace, name) in taken:
        attempt += 1
        name = slice_name(svc, family, ports, endpoints, attempt)
    taken.add((svc.namespace, name))
    return name


def _make_slice(
    svc: Service, family: str, ports: PortList, endpoints: Sequence[Endpoint], taken: set[tuple[str, str]]
) -> EndpointSlice:
    name = _unique_name(svc, family, ports, endpoints, taken)
    return EndpointSlice(
        namespace=svc.namespace,
        name=name,
        service_name=svc.name,
        address_type=family,
        endpoints=tuple(endpoints),
        ports=ports,
        labels=slice_labels(svc),
        ref=ObjectRef("EndpointSlice", svc.namespace, name, source=svc.ref.source, index=0),
    )


def _chunks(items: Sequence[Endpoint], size: int) -> Iterable[Sequence[Endpoint]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def slices_for_service(
    svc: Service,
    pods: Iterable[Pod],
    nodes: dict[str, Node],
    taken: set[tuple[str, str]],
) -> list[EndpointSlice]:
    """The slices the controller creates for one Service from ``pods`` (any namespace; filtered here)."""
    selector = svc.selector or ()
    selected = (p for p in pods if p.namespace == svc.namespace and selects(selector, p))
    zones = {name: node.zone or None for name, node in nodes.items()}
    return _slices_from_selected(svc, selected, zones, taken)


def _pod_name(pod: Pod) -> str:
    return pod.name


def _zones(nodes: Iterable[Node]) -> dict[str, Optional[str]]:
    """Each Node's zone (None: none), by name; a name given twice counts with its last Node."""
    return {node.name: node.zone or None for node in nodes}


def _slices_from_selected(
    svc: Service,
    selected: Iterable[Pod],
    zones: dict[str, Optional[str]],
    taken: set[tuple[str, str]],
) -> list[EndpointSlice]:
    """The slices for ``svc`` from the Pods its selector selects (in input order; eligibility checked
    here); ``zones`` holds each Node's zone (:func:`_zones`)."""
    # (pod_is_eligible, inlined)
    members = sorted([p for p in selected if p.pod_ips and p.phase not in _TERMINAL_PHASES], key=_pod_name)
    # Without a named targetPort, every Pod gets the same ports: resolve them once.
    named = any(isinstance(p.target_port, str) and p.target_port for p in svc.ports)
    fixed = None if named or not members else endpoint_ports(svc, members[0])
    slices: list[EndpointSlice] = []
    for family in address_families(svc):
        groups: dict[PortList, list[Endpoint]] = {}
        if fixed is not None:  # one group: no port list to look up per Pod
            found = [e for e in (_endpoint(pod, svc, family, zones.get(pod.node_name) if pod.node_name else None)
                                 for pod in members) if e is not None]
            if found:
                groups[fixed] = found
        else:
            # Pods whose container ports are the same objects (a Deployment's, read by the fast
            # reader) resolve to the same group: resolve and look it up once per such pair
            by_ports: dict[tuple[int, int], list[Endpoint]] = {}
            for pod in members:
                endpoint = _endpoint(pod, svc, family, zones.get(pod.node_name) if pod.node_name else None)
                if endpoint is not None:
                    same = (id(pod.container_ports), id(pod.sidecar_ports))  # (members keep them alive)
                    group = by_ports.get(same)
                    if group is None:
                        group = by_ports[same] = groups.setdefault(endpoint_ports(svc, pod), [])
                    group.append(endpoint)
        if not groups:
            slices.append(_make_slice(svc, family, (), (), taken))
            continue
        for ports in sorted(groups, key=_ports_order):
            endpoints = sorted(groups[ports], key=_endpoint_order)
            for chunk in _chunks(endpoints, MAX_ENDPOINTS_PER_SLICE):
                slices.append(_make_slice(svc, family, ports, chunk, taken))
    return slices


def derive_endpoint_slices(cluster: Cluster) -> tuple[EndpointSlice, ...]:
    """Slices for every selector Service without EndpointSlices in the input, in namespace/name order.

    The Pods are indexed by namespace and label (:class:`PodIndex`, built only if some Service
    needs slices), so each Service costs what its selector matches, not its namespace's size.
    """
    covered = {(s.namespace, s.service_name) for s in cluster.endpoint_slices if s.service_name}
    wanting = [svc for svc in cluster.services if wants_slices(svc) and svc.key not in covered]
    if not wanting:
        return ()
    taken = {(s.namespace, s.name) for s in cluster.endpoint_slices}
    zones = _zones(cluster.nodes)
    index = PodIndex(cluster.pods)
    out: list[EndpointSlice] = []
    for svc in sorted(wanting, key=lambda s: (s.namespace, s.name)):
        if svc.key in covered:
            continue
        covered.add(svc.key)  # a duplicated Service gets its slices once
        selected = index.select(svc.namespace, svc.selector or ())
        out.extend(_slices_from_selected(svc, selected, zones, taken))
    return tuple(out)


def topology_auto_warnings(services: Iterable[Service], slices: Iterable[EndpointSlice]) -> list[str]:
    """A warning for each Service whose slices are derived here while its Topology Aware Routing
    annotation is ``Auto``: that heuristic is not modelled, so its derived slices carry no hints."""
    covered = {(s.namespace, s.service_name) for s in slices if s.service_name}
    warnings = []
    for svc in services:
        if svc.topology_mode_auto and wants_slices(svc) and svc.key not in covered:
            covered.add(svc.key)
            warnings.append(
                f"{svc.ref.where()}: Topology Aware Routing (annotation topology-mode or topology-aware-hints "
                "'Auto') is not simulated: the EndpointSlices derived from its Pods carry no hints, so every "
                "node uses every endpoint; include its EndpointSlices to use the hints the cluster wrote"
            )
    return warnings


def with_derived_slices(cluster: Cluster) -> Cluster:
    """``cluster`` with :func:`derive_endpoint_slices` appended to its EndpointSlices."""
    derived = derive_endpoint_slices(cluster)
    if not derived:
        return cluster
    return replace(cluster, endpoint_slices=cluster.endpoint_slices + derived)


# ------------------------------------------------------------------ manifests


def _endpoint_json(endpoint: Endpoint, namespace: str) -> dict[str, Any]:
    """One ``endpoints[]`` entry as the API shows it."""
    out: dict[str, Any] = {
        "addresses": list(endpoint.addresses),
        "conditions": {
            "ready": endpoint.conditions.ready,
            "serving": endpoint.conditions.serving,
            "terminating": endpoint.conditions.terminating,
        },
    }
    if endpoint.hostname is not None:
        out["hostname"] = endpoint.hostname
    if endpoint.target_ref_name is not None:
        out["targetRef"] = {"kind": "Pod", "namespace": namespace, "name": endpoint.target_ref_name}
    if endpoint.node_name is not None:
        out["nodeName"] = endpoint.node_name
    if endpoint.zone is not None:
        out["zone"] = endpoint.zone
    hints: dict[str, Any] = {}
    if endpoint.hints_for_zones is not None:
        hints["forZones"] = [{"name": zone} for zone in endpoint.hints_for_zones]
    if endpoint.hints_for_nodes is not None:
        hints["forNodes"] = [{"name": node} for node in endpoint.hints_for_nodes]
    if hints:
        out["hints"] = hints
    return out


def _port_json(port: EndpointPort) -> dict[str, Any]:
    out: dict[str, Any] = {"name": port.name, "protocol": port.protocol}
    if port.port is not None:
        out["port"] = port.port
    if port.app_protocol is not None:
        out["appProtocol"] = port.app_protocol
    return out


def slice_to_manifest(eps: EndpointSlice) -> dict[str, Any]:
    """One EndpointSlice as a ``discovery.k8s.io/v1`` object."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": eps.name, "namespace": eps.namespace, "labels": dict(eps.labels)},
        "addressType": eps.address_type,
        "endpoints": [_endpoint_json(e, eps.namespace) for e in eps.endpoints],
        "ports": [_port_json(p) for p in eps.ports],
    }


def slices_to_manifests(slices: Iterable[EndpointSlice]) -> list[dict[str, Any]]:
    """EndpointSlices as ``discovery.k8s.io/v1`` objects, in the given order."""
    return [slice_to_manifest(eps) for eps in slices]
