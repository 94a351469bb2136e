"""The ``discovery.k8s.io/v1`` EndpointSlice builder (the full validator) and the ``v1`` Endpoints builder.

Each endpoint of a slice goes through :func:`.fastpath.fast_endpoint` first; only one
that has some problem is read here, field by field, so that every problem is reported.
Endpoints are read for :mod:`dataplane.controllers.mirror`.
"""
from __future__ import annotations

from typing import Callable, Optional

from .. import ipaddrs
from ..controllers.mirror import ANNOTATION_LEADER, EndpointAddress, Endpoints, EndpointSubset
from ..model import LABEL_SERVICE_NAME, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, labels_get
from .fastpath import fast_endpoint
from .service import app_protocol
from .validation import (
    MAX_ENDPOINT_ADDRESSES,
    Checker,
    dns1123_label_errors,
    dns1123_subdomain_errors,
    field_path,
    index_path,
    label_value_errors,
    object_meta,
)


# ======================================================================
# EndpointSlice
# ======================================================================

ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")
MAX_SLICE_ENDPOINTS = 1000
MAX_SLICE_PORTS = 20000
MAX_ZONE_HINTS = 8
MAX_NODE_HINTS = 8


def parse_endpoint_slice(c: Checker, obj: dict) -> EndpointSlice:
    """A ``discovery.k8s.io/v1`` EndpointSlice (``ValidateEndpointSlice``), conditions resolved."""
    meta = object_meta(c, obj, True, dns1123_subdomain_errors)
    address_type = c.get_str(obj, "addressType", "addressType")
    if address_type == "":
        c.required("addressType")
    elif address_type is not None and address_type not in ADDRESS_TYPES:
        c.unsupported("addressType", address_type, ADDRESS_TYPES)
    raw_endpoints = c.get_list(obj, "endpoints", "endpoints")
    if len(raw_endpoints) > MAX_SLICE_ENDPOINTS:
        c.too_many("endpoints", len(raw_endpoints), MAX_SLICE_ENDPOINTS)
        endpoints: tuple[Endpoint, ...] = ()
    else:
        endpoints = _slice_endpoints(c, raw_endpoints, address_type or "")
    return EndpointSlice(
        namespace=meta.namespace,
        name=meta.name,
        service_name=labels_get(meta.labels, LABEL_SERVICE_NAME),
        address_type=address_type or "",
        endpoints=endpoints,
        ports=_slice_ports(c, obj),
        labels=meta.labels,
        ref=c.ref(),
    )


def _slice_endpoints(c: Checker, items: list, address_type: str) -> tuple[Endpoint, ...]:
    """``endpoints``: each item through the fast path, or (if it has any problem) the full one."""
    result = []
    for i, item in enumerate(items):
        endpoint = fast_endpoint(item, address_type) if type(item) is dict else None
        if endpoint is None:
            path = index_path("endpoints", i)
            if not isinstance(item, dict):
                c.invalid(path, item, "must be a mapping")
                continue
            endpoint = _slice_endpoint(c, path, item, address_type)
        result.append(endpoint)
    return tuple(result)


def _slice_endpoint(c: Checker, path: str, item: dict, address_type: str) -> Endpoint:
    """One ``endpoints[i]``."""
    conditions = c.get_map(item, "conditions", field_path(path, "conditions"))
    cond_path = field_path(path, "conditions")
    ready = c.get_bool(conditions, "ready", field_path(cond_path, "ready"), True)
    serving = c.get_bool(conditions, "serving", field_path(cond_path, "serving"), ready)
    terminating = c.get_bool(conditions, "terminating", field_path(cond_path, "terminating"), False)
    target_ref = c.get_map(item, "targetRef", field_path(path, "targetRef"))
    return Endpoint(
        addresses=_slice_addresses(c, item, field_path(path, "addresses"), address_type),
        conditions=EndpointConditions(ready=bool(ready), serving=bool(serving), terminating=bool(terminating)),
        node_name=c.node_name(item, "nodeName", field_path(path, "nodeName")),
        zone=c.get_str(item, "zone", field_path(path, "zone"), default=None),
        hints_for_zones=_hints(c, item, field_path(path, "hints"), "forZones", MAX_ZONE_HINTS,
                               label_value_errors),
        hints_for_nodes=_hints(c, item, field_path(path, "hints"), "forNodes", MAX_NODE_HINTS,
                               dns1123_subdomain_errors),
        hostname=c.dns_label(item, "hostname", field_path(path, "hostname")),
        target_ref_name=c.get_str(target_ref, "name", field_path(path, "targetRef.name"), default=None),
    )


def _slice_addresses(c: Checker, item: dict, path: str, address_type: str) -> tuple[str, ...]:
    """``addresses``: 1..100 entries of the slice's address type, IPs canonical."""
    addresses = c.get_strs(item, "addresses", path)
    if addresses is None:
        return ()
    if not addresses:
        c.required(path, "must contain at least 1 address")
    elif len(addresses) > MAX_ENDPOINT_ADDRESSES:
        c.too_many(path, len(addresses), MAX_ENDPOINT_ADDRESSES)
    return tuple(_slice_address(c, index_path(path, i), value, address_type) for i, value in enumerate(addresses))


def _slice_address(c: Checker, path: str, value: str, address_type: str) -> str:
    """One address: an IP of the slice's family that is not special, or a non-empty FQDN."""
    if address_type == "FQDN":
        if not value:
            c.required(path)
        return value
    if address_type not in ("IPv4", "IPv6"):
        return value
    try:
        family = ipaddrs.ip_family(value)
    except ValueError:
        family = None
    if family != address_type:
        c.invalid(path, value, f"must be a valid {address_type} address")
        return value
    c.endpoint_ip(path, value)
    return ipaddrs.canonical_ip(value)


def _hints(c: Checker, item: dict, path: str, key: str, limit: int,
           errors: Callable[[str], list[str]]) -> Optional[tuple[str, ...]]:
    """``hints.<key>[].name`` (``forZones``: label values; ``forNodes``: node names), None when
    there are none: at most ``limit``, distinct, each valid by ``errors``."""
    list_path = field_path(path, key)
    raw = c.get_list(c.get_map(item, "hints", path), key, list_path)
    if len(raw) > limit:
        c.too_many(list_path, len(raw), limit)
        return None
    names: list[str] = []
    for hint_path, hint in c.each_map(raw, list_path):
        name_path = field_path(hint_path, "name")
        name = c.get_str(hint, "name", name_path)
        if name is None:
            continue
        if name in names:
            c.duplicate(name_path, name)
        c.all_invalid(name_path, name, errors(name))
        names.append(name)
    return tuple(names) or None


def _slice_ports(c: Checker, obj: dict) -> tuple[EndpointPort, ...]:
    """``ports``: unique names (unset = ""), protocol defaulted to TCP, port 1..65535 or null."""
    raw = c.get_list(obj, "ports", "ports")
    if len(raw) > MAX_SLICE_PORTS:
        c.too_many("ports", len(raw), MAX_SLICE_PORTS)
        return ()
    names: set[str] = set()
    ports = []
    for path, item in c.each_map(raw, "ports"):
        name_path = field_path(path, "name")
        name = c.get_str(item, "name", name_path) or ""
        if name:
            c.all_invalid(name_path, name, dns1123_label_errors(name))
        if name in names:
            c.duplicate(name_path, name)
        names.add(name)
        port = c.port_number(item, "port", field_path(path, "port"), default=None)
        protocol = c.protocol(item, field_path(path, "protocol"))
        ports.append(EndpointPort(port=port, protocol=protocol, name=name,
                                  app_protocol=app_protocol(c, item, field_path(path, "appProtocol"))))
    return tuple(ports)


# ======================================================================
# Endpoints (mirrored into EndpointSlices)
# ======================================================================


def parse_endpoints(c: Checker, obj: dict) -> Endpoints:
    """A ``v1`` Endpoints (``ValidateEndpoints``), for :mod:`dataplane.controllers.mirror`."""
    meta = object_meta(c, obj, True, dns1123_subdomain_errors)
    annotations = c.get_map(meta.metadata, "annotations", "metadata.annotations")
    return Endpoints(
        namespace=meta.namespace,
        name=meta.name,
        subsets=tuple(_endpoint_subset(c, path, item) for path, item in c.get_maps(obj, "subsets", "subsets")),
        labels=meta.labels,
        is_leader_lock=ANNOTATION_LEADER in annotations,
        ref=c.ref(),
    )


def _endpoint_subset(c: Checker, path: str, subset: dict) -> EndpointSubset:
    """One ``subsets[i]``: some addresses, ports named when there are several."""
    ready = _endpoint_addresses(c, subset, "addresses", path)
    not_ready = _endpoint_addresses(c, subset, "notReadyAddresses", path)
    if not subset.get("addresses") and not subset.get("notReadyAddresses"):
        c.required(path, "must specify `addresses` or `notReadyAddresses`")
    raw_ports = c.get_list(subset, "ports", field_path(path, "ports"))
    require_name = len(raw_ports) > 1
    ports = []
    for port_path, item in c.each_map(raw_ports, field_path(path, "ports")):
        name = c.get_str(item, "name", field_path(port_path, "name")) or ""
        if require_name and not name:
            c.required(field_path(port_path, "name"))
        elif name:
            c.all_invalid(field_path(port_path, "name"), name, dns1123_label_errors(name))
        port = c.port_number(item, "port", field_path(port_path, "port"))
        ports.append(EndpointPort(port=port, protocol=c.protocol(item, field_path(port_path, "protocol")), name=name))
    return EndpointSubset(addresses=ready, not_ready_addresses=not_ready, ports=tuple(ports))


def _endpoint_addresses(c: Checker, subset: dict, key: str, subset_path: str) -> tuple[EndpointAddress, ...]:
    """``addresses`` or ``notReadyAddresses`` (``validateEndpointAddress``)."""
    result = []
    for path, item in c.get_maps(subset, key, field_path(subset_path, key)):
        ip_path = field_path(path, "ip")
        ip = c.get_str(item, "ip", ip_path)
        canonical = c.ip(ip_path, ip) if ip is not None else None
        if canonical is not None:
            c.endpoint_ip(ip_path, ip)
        target_ref = c.get_map(item, "targetRef", field_path(path, "targetRef"))
        result.append(
            EndpointAddress(
                ip=canonical or "",
                hostname=c.dns_label(item, "hostname", field_path(path, "hostname")) or None,
                node_name=c.node_name(item, "nodeName", field_path(path, "nodeName")),
                target_ref_name=c.get_str(target_ref, "name", field_path(path, "targetRef.name"), default=None),
                target_ref_uid=c.get_str(target_ref, "uid", field_path(path, "targetRef.uid"), default=None),
            )
        )
    return tuple(result)
