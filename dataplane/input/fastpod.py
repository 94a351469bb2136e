"""The Pod fast path: a Pod without any problem, read without the :class:`.validation.Checker`'s readers.

A cluster given as Pods holds about ten of them per Service, and nearly all are
valid. :func:`fast_pod` reads exactly the fields :func:`.node.parse_pod` reads
(``metadata.name/namespace/labels/deletionTimestamp``, ``spec.nodeName/hostname/
subdomain``, the ports of ``spec.containers`` and ``spec.initContainers`` with
their ``restartPolicy``, ``status.podIPs/podIP/phase/conditions``) and accepts
only input on which that validator would report nothing, building the same
:class:`~dataplane.model.Pod`; anything unusual (a wrong type, an invalid or
missing value, two IPs of one family, an IPv4 address spelled with leading
zeros...) gives None, and the full validator then phrases the problem with its
file, object and field.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional

import orjson

from .. import ipaddrs
from ..model import PROTOCOLS, ContainerPort, Labels, Pod
from .validation import (
    Checker,
    is_dns1123_label,
    is_dns1123_subdomain,
    is_name_dns1123_subdomain,
    label_map,
    port_name_errors,
)

_PHASES = frozenset(("Failed", "Pending", "Running", "Succeeded", "Unknown"))  # node.POD_PHASES
_PROTOCOLS = frozenset(PROTOCOLS)


@lru_cache(maxsize=4096)
def _is_port_name(value: str) -> bool:  # cached: a cluster names few ports
    return not port_name_errors(value)


@lru_cache(maxsize=4096)
def _is_namespace(value: str) -> bool:  # cached: namespaces repeat in every object
    return is_dns1123_label(value)


@lru_cache(maxsize=1 << 16)
def _is_dns_label(value: str) -> bool:  # hostnames and subdomains: few distinct ones
    return is_dns1123_label(value)


# (name, containerPort, protocol as written) of one port -> the shared ContainerPort: a
# Deployment's Pods repeat their ports, so most Pods build none
_PORTS: dict[tuple[Any, Any, Any], ContainerPort] = {}
_MAX_SHARED_PORTS = 1 << 16

# A label map's (key, value) pairs as written -> the Labels label_map makes of them (only maps it
# accepts): a Deployment's Pods repeat their labels, so most Pods validate and sort none, and
# share one tuple
_LABELS: dict[tuple, Labels] = {}
# spec.containers / spec.initContainers as orjson writes them -> their ports (lists _ports_of_all
# accepts): a Deployment's Pods repeat their containers, so most Pods read no ports
_CONTAINERS: dict[tuple[bool, bytes], tuple[ContainerPort, ...]] = {}
_MAX_SHARED = 1 << 16
# orjson refuses (instead of writing as JSON) what a JSON or YAML reader does not make
_STRICT = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS


def fast_pod(c: Checker, obj: dict) -> Optional[Pod]:
    """The Pod :func:`.node.parse_pod` builds from ``obj`` when it would report nothing (``c``
    is then told the Pod's identity, as :func:`.validation.object_meta` tells it), else None
    with ``c`` untouched, for the full validator to report the problems."""
    metadata = obj.get("metadata")
    if type(metadata) is not dict:
        return None
    name = metadata.get("name")
    if type(name) is not str or not name or not is_name_dns1123_subdomain(name):
        return None
    namespace = metadata.get("namespace")
    if namespace is None or namespace == "":
        namespace = "default"
    elif type(namespace) is not str or not _is_namespace(namespace):
        return None
    labels = _labels(metadata.get("labels"))
    if labels is None:
        return None

    spec = obj.get("spec")
    if spec is None:
        spec = {}
    elif type(spec) is not dict:
        return None
    node_name = spec.get("nodeName")
    if node_name is not None and not (type(node_name) is str and is_dns1123_subdomain(node_name)):
        return None
    hostname = spec.get("hostname")
    if hostname is not None and not (type(hostname) is str and _is_dns_label(hostname)):
        return None
    subdomain = spec.get("subdomain")
    if subdomain is not None and not (type(subdomain) is str and _is_dns_label(subdomain)):
        return None
    container_ports = _container_ports(spec.get("containers"), False)
    if container_ports is None:
        return None
    sidecar_ports = _container_ports(spec.get("initContainers"), True)
    if sidecar_ports is None:
        return None

    status = obj.get("status")
    if status is None:
        status = {}
    elif type(status) is not dict:
        return None
    pod_ips = _one_ipv4(status.get("podIPs"))  # the common case
    if pod_ips is None:
        pod_ips = _pod_ips(status)
        if pod_ips is None:
            return None
    phase = status.get("phase")
    if phase is None or phase == "":
        phase = "Running"
    elif type(phase) is not str or phase not in _PHASES:
        return None
    ready = _ready(status.get("conditions"))
    if ready is None:
        return None

    c.identify(namespace, name)
    # (positional: a third faster than by keyword; the order is Pod's, which tests/test_fast_pod.py pins)
    return Pod(namespace, name, labels, node_name or None, pod_ips, ready,
               metadata.get("deletionTimestamp") is not None, phase, hostname or None, subdomain or None,
               container_ports, sidecar_ports, c.ref())


def _labels(value: Any) -> Optional[Labels]:
    """:func:`.validation.label_map` of ``value``, the same tuple for every map with the same
    pairs in the same order."""
    if value is None:
        return ()
    if type(value) is not dict:
        return None
    try:
        key = tuple(value.items())
        shared = _LABELS.get(key)
    except TypeError:  # an unhashable value: a problem for the validator
        return None
    if shared is not None:  # (only maps of str keys and values are kept: 1 == True cannot match)
        return shared
    labels = label_map(value)
    if labels is not None and len(_LABELS) < _MAX_SHARED:
        _LABELS[key] = labels
    return labels


def _container_ports(containers: Any, init: bool) -> Optional[tuple[ContainerPort, ...]]:
    """:func:`_ports_of_all` of ``containers``, looked up by their JSON text: the same text is the
    same value, types included (80 and 80.0, 1 and true are written differently); text with a
    null is not looked up, as orjson writes NaN and infinities as null too."""
    if containers is None:
        return ()
    try:
        key = (init, orjson.dumps(containers, option=_STRICT))
    except orjson.JSONEncodeError:  # not plain JSON values (subclasses, dates...): read them
        return _ports_of_all(containers, init)
    if b"null" in key[1]:
        return _ports_of_all(containers, init)
    shared = _CONTAINERS.get(key)
    if shared is not None:
        return shared
    ports = _ports_of_all(containers, init)
    if ports is not None and len(_CONTAINERS) < _MAX_SHARED:
        _CONTAINERS[key] = ports
    return ports


def _one_ipv4(items: Any) -> Optional[tuple[str]]:
    """``(ip,)`` when ``status.podIPs`` is one entry whose ip is a canonical IPv4 address (what
    :func:`_pod_ips` gives then); None for anything else, which :func:`_pod_ips` reads."""
    if type(items) is list and len(items) == 1:
        item = items[0]
        if type(item) is dict:
            ip = item.get("ip")
            if type(ip) is str and ipaddrs.is_canonical_ipv4(ip):
                return (ip,)
    return None


def _pod_ips(status: dict) -> Optional[tuple[str, ...]]:
    """``status.podIPs[].ip`` (else ``status.podIP``), canonical, at most one per family; None
    for anything the validator reports (or that is not already canonical IPv4 or valid IPv6)."""
    items = status.get("podIPs")
    if items is None or items == []:
        single = status.get("podIP")
        if single is None or single == "":
            return ()
        raw: list = [single]
    elif type(items) is list:
        raw = []
        for item in items:
            if type(item) is not dict:
                return None
            raw.append(item.get("ip"))
    else:
        return None
    if len(raw) > 2:
        return None
    families = []
    result = []
    for ip in raw:
        if type(ip) is not str:
            return None
        if ipaddrs.is_canonical_ipv4(ip):
            families.append("IPv4")
            result.append(ip)
        elif ":" in ip:
            try:
                canonical = ipaddrs.canonical_ip(ip)
                family = ipaddrs.ip_family(canonical)
            except ValueError:
                return None
            families.append(family)
            result.append(canonical)
        else:
            return None
    if len(result) == 2 and families[0] == families[1]:
        return None  # two of one family: the validator says so
    return tuple(result)


def _ready(conditions: Any) -> Optional[bool]:
    """Whether ``status.conditions`` has type Ready with status "True"; None if an entry, its
    type or its status has the wrong type."""
    if conditions is None:
        return False
    if type(conditions) is not list:
        return None
    ready = False
    for condition in conditions:
        if type(condition) is not dict:
            return None
        kind, state = condition.get("type"), condition.get("status")
        if not ((kind is None or type(kind) is str) and (state is None or type(state) is str)):
            return None
        if kind == "Ready" and state == "True":
            ready = True
    return ready


def _ports_of_all(containers: Any, init: bool) -> Optional[tuple[ContainerPort, ...]]:
    """The ports of every container of ``spec.containers`` (``init``: of the native sidecars among
    ``spec.initContainers``, whose ``restartPolicy`` must be unset or Always), in order; None
    for anything the validator reports."""
    if containers is None:
        return ()
    if type(containers) is not list:
        return None
    result: list[ContainerPort] = []
    for container in containers:
        if type(container) is not dict:
            return None
        keep = True
        if init:
            policy = container.get("restartPolicy")
            if policy is not None and policy != "Always":
                return None
            keep = policy == "Always"
        ports = container.get("ports")
        if ports is None:
            continue
        if type(ports) is not list:
            return None
        names: set[str] = set()
        for item in ports:
            port = _port(item)
            if port is None:
                return None
            if port.name:
                if port.name in names:
                    return None
                names.add(port.name)
            if keep:
                result.append(port)
    return tuple(result)


def _port(item: Any) -> Optional[ContainerPort]:
    """One ``ports[]`` entry as a ContainerPort, or None if the validator reports anything in it."""
    if type(item) is not dict:
        return None
    name, number, protocol = item.get("name"), item.get("containerPort"), item.get("protocol")
    key = (name, number, protocol)
    try:
        shared = _PORTS.get(key)
    except TypeError:  # an unhashable value: a problem for the validator
        return None
    if shared is not None and type(number) is int and type(name) in (str, type(None)):
        return shared  # (1 == 1.0 == True as keys: the types are checked again)
    if name is None or name == "":
        name = ""
    elif type(name) is not str or not _is_port_name(name):
        return None
    if type(number) is not int or not 1 <= number <= 65535:
        return None
    if protocol is None or protocol == "":
        protocol = "TCP"
    elif type(protocol) is not str or protocol not in _PROTOCOLS:
        return None
    port = ContainerPort(container_port=number, protocol=protocol, name=name)
    if len(_PORTS) < _MAX_SHARED_PORTS:
        _PORTS[key] = port
    return port
