"""The ``v1`` Node and Pod builders: addresses, pod CIDRs and IPs, readiness, container ports."""
from __future__ import annotations

from typing import Callable, Optional

from .. import ipaddrs
from ..model import ContainerPort, Node, NodeAddress, Pod
from .fastpod import fast_pod
from .validation import (
    Checker,
    dns1123_subdomain_errors,
    field_path,
    index_path,
    object_meta,
    port_name_errors,
    port_number_errors,
)


# ======================================================================
# Node and Pod
# ======================================================================

_NODE_IP_ADDRESS_TYPES = ("InternalIP", "ExternalIP")
POD_PHASES = ("Failed", "Pending", "Running", "Succeeded", "Unknown")


def parse_node(c: Checker, obj: dict) -> Node:
    """A ``v1`` Node: addresses (IPs canonical), labels and pod CIDRs."""
    meta = object_meta(c, obj, False, dns1123_subdomain_errors)
    return Node(
        name=meta.name,
        addresses=_node_addresses(c, obj),
        labels=meta.labels,
        pod_cidrs=_pod_cidrs(c, c.get_map(obj, "spec", "spec")),
        ref=c.ref(),
    )


def _node_addresses(c: Checker, obj: dict) -> tuple[NodeAddress, ...]:
    """``status.addresses``; InternalIP/ExternalIP addresses must be IPs and are canonicalised."""
    status = c.get_map(obj, "status", "status")
    result = []
    for path, item in c.get_maps(status, "addresses", "status.addresses"):
        kind = c.get_str(item, "type", field_path(path, "type"))
        address = c.get_str(item, "address", field_path(path, "address"))
        if kind == "":
            c.required(field_path(path, "type"))
        if address == "":
            c.required(field_path(path, "address"))
        if not kind or not address:
            continue
        if kind in _NODE_IP_ADDRESS_TYPES:
            address = c.ip(field_path(path, "address"), address)
        if address is not None:
            result.append(NodeAddress(type=kind, address=address))
    return tuple(result)


def _pod_cidrs(c: Checker, spec: dict) -> tuple[str, ...]:
    """``spec.podCIDRs`` (or the older ``spec.podCIDR``): CIDRs, at most one per family, canonical."""
    path = "spec.podCIDRs"
    entries: list[tuple[str, Optional[str]]] = [
        (index_path(path, i), value) for i, value in enumerate(c.get_strs(spec, "podCIDRs", path) or [])
    ]
    single = c.get_str(spec, "podCIDR", "spec.podCIDR")
    if not entries and single:
        entries = [("spec.podCIDR", single)]
    return _one_per_family(c, path, entries, c.cidr, ipaddrs.cidr_family, "CIDR")


def _one_per_family(
    c: Checker,
    path: str,
    entries: list[tuple[str, Optional[str]]],
    canonical: Callable[[str, str], Optional[str]],
    family: Callable[[str], str],
    noun: str,
) -> tuple[str, ...]:
    """Canonical forms of ``(path, value)`` entries that must all be valid, at most one per IP family.

    A None value (already reported as the wrong type) or an invalid one yields ``()``.
    """
    if any(value is None for _, value in entries):
        return ()
    result = [canonical(entry_path, value) for entry_path, value in entries if value is not None]
    if None in result:
        return ()
    values = [value for _, value in entries]
    if len(result) > 1 and (len(result) > 2 or not ipaddrs.is_dual_stack([family(x) for x in result if x])):
        c.invalid(path, values, f"may specify no more than one {noun} for each IP family")
    return tuple(x for x in result if x is not None)


def parse_pod(c: Checker, obj: dict) -> Pod:
    """A ``v1`` Pod: placement, IPs, readiness, container ports and native sidecars' ports.

    A Pod without problems is read by :func:`.fastpod.fast_pod`; the rest of this module
    reads the others, reporting each problem with its field path."""
    pod = fast_pod(c, obj)
    if pod is not None:
        return pod
    meta = object_meta(c, obj, True, dns1123_subdomain_errors)
    spec = c.get_map(obj, "spec", "spec")
    status = c.get_map(obj, "status", "status")
    return Pod(
        namespace=meta.namespace,
        name=meta.name,
        labels=meta.labels,
        node_name=c.node_name(spec, "nodeName", "spec.nodeName") or None,
        pod_ips=_pod_ips(c, status),
        ready=_pod_ready(c, status),
        terminating=meta.metadata.get("deletionTimestamp") is not None,
        phase=c.one_of(status, "phase", "status.phase", POD_PHASES, "Running"),
        hostname=c.dns_label(spec, "hostname", "spec.hostname") or None,
        subdomain=c.dns_label(spec, "subdomain", "spec.subdomain") or None,
        container_ports=_container_ports(c, spec),
        sidecar_ports=_sidecar_ports(c, spec),
        ref=c.ref(),
    )


def _pod_ips(c: Checker, status: dict) -> tuple[str, ...]:
    """``status.podIPs[].ip`` (or ``status.podIP``): IPs, at most one per family, canonical."""
    entries = [
        (field_path(path, "ip"), c.get_str(item, "ip", field_path(path, "ip")))
        for path, item in c.get_maps(status, "podIPs", "status.podIPs")
    ]
    if not entries:
        single = c.get_str(status, "podIP", "status.podIP")
        entries = [("status.podIP", single)] if single else []
    return _one_per_family(c, "status.podIPs", entries, c.ip, ipaddrs.ip_family, "IP")


def _pod_ready(c: Checker, status: dict) -> bool:
    """True if ``status.conditions`` has type Ready with status "True"."""
    ready = False
    for path, condition in c.get_maps(status, "conditions", "status.conditions"):
        kind = c.get_str(condition, "type", field_path(path, "type"))
        state = c.get_str(condition, "status", field_path(path, "status"))
        ready = ready or (kind == "Ready" and state == "True")
    return ready


def _container_ports(c: Checker, spec: dict) -> tuple[ContainerPort, ...]:
    """Ports of every regular container, in order."""
    result: list[ContainerPort] = []
    for container_path, container in c.get_maps(spec, "containers", "spec.containers"):
        result.extend(_ports_of(c, container, container_path))
    return tuple(result)


def _sidecar_ports(c: Checker, spec: dict) -> tuple[ContainerPort, ...]:
    """Ports of the native sidecars: ``initContainers`` with ``restartPolicy: Always``, in order.

    ``restartPolicy`` is the only value an init container may set (``validateInitContainers``);
    the ports of the other init containers are read (and checked) but never serve a Service.
    """
    result: list[ContainerPort] = []
    for container_path, container in c.get_maps(spec, "initContainers", "spec.initContainers"):
        policy_path = field_path(container_path, "restartPolicy")
        policy = c.get_str(container, "restartPolicy", policy_path, default=None)
        if policy is not None and policy != "Always":
            c.unsupported(policy_path, policy, ("Always",))
        ports = _ports_of(c, container, container_path)
        if policy == "Always":
            result.extend(ports)
    return tuple(result)


def _ports_of(c: Checker, container: dict, container_path: str) -> list[ContainerPort]:
    """One container's ``ports`` (``validateContainerPorts``: names unique per container)."""
    result = []
    names: set[str] = set()
    for path, item in c.get_maps(container, "ports", field_path(container_path, "ports")):
        name_path = field_path(path, "name")
        name = c.get_str(item, "name", name_path) or ""
        if name and c.all_invalid(name_path, name, port_name_errors(name)):
            if name in names:
                c.duplicate(name_path, name)
            names.add(name)
        port_path = field_path(path, "containerPort")
        port = c.get_int(item, "containerPort", port_path, default=0)
        if port == 0:
            c.required(port_path)
        elif port is not None:
            c.all_invalid(port_path, port, port_number_errors(port))
        protocol = c.protocol(item, field_path(path, "protocol"))
        result.append(ContainerPort(container_port=port or 0, protocol=protocol, name=name))
    return result
