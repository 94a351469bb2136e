"""The ``v1`` Service builder: ``spec`` and ``status.loadBalancer`` validated like ``ValidateService``."""
from __future__ import annotations

from typing import Optional

from .. import ipaddrs
from ..model import LoadBalancerIngress, Service, ServicePort
from .validation import (
    IP_ADDRESS_MSG,
    Checker,
    dns1035_label_errors,
    dns1123_label_errors,
    dns1123_subdomain_errors,
    field_path,
    index_path,
    object_meta,
    port_name_errors,
    port_number_errors,
    qualified_name_errors,
)


# ======================================================================
# Service
# ======================================================================

SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
_TRAFFIC_POLICIES = ("Cluster", "Local")
_IP_FAMILIES = ("IPv4", "IPv6")
_IP_FAMILY_POLICIES = ("PreferDualStack", "RequireDualStack", "SingleStack")
_SESSION_AFFINITIES = ("ClientIP", "None")
_IP_MODES = ("Proxy", "VIP")
TRAFFIC_DISTRIBUTIONS = ("PreferClose", "PreferSameNode", "PreferSameZone")
ANNOTATION_TOPOLOGY_AWARE_HINTS = "service.kubernetes.io/topology-aware-hints"  # deprecated, read first
ANNOTATION_TOPOLOGY_MODE = "service.kubernetes.io/topology-mode"
DEFAULT_AFFINITY_TIMEOUT = 10800
MAX_AFFINITY_TIMEOUT = 86400


def parse_service(c: Checker, obj: dict) -> Service:
    """A ``v1`` Service, validated like ``ValidateService`` after v1 defaulting."""
    meta = object_meta(c, obj, True, dns1035_label_errors)
    spec = c.get_map(obj, "spec", "spec")
    svc_type = c.one_of(spec, "type", "spec.type", SERVICE_TYPES, "ClusterIP")
    families = _service_ip_families(c, spec, svc_type)
    cluster_ips = _service_cluster_ips(c, spec, svc_type, families)
    headless = cluster_ips == ("None",)
    ports = _service_ports(c, spec, svc_type)
    if not spec.get("ports") and not headless and svc_type != "ExternalName":
        c.required("spec.ports")
    external_ips = _service_external_ips(c, spec)
    etp = _external_traffic_policy(c, spec, svc_type, bool(external_ips))
    affinity, timeout = _session_affinity(c, spec)
    return Service(
        namespace=meta.namespace,
        name=meta.name,
        type=svc_type,
        cluster_ips=cluster_ips,
        ports=ports,
        selector=c.labels(spec, "selector", "spec.selector") or None,
        labels=meta.labels,
        external_ips=external_ips,
        load_balancer_ingress=_load_balancer_ingress(c, obj),
        load_balancer_source_ranges=_source_ranges(c, spec, svc_type),
        external_traffic_policy=etp,
        internal_traffic_policy=c.one_of(
            spec, "internalTrafficPolicy", "spec.internalTrafficPolicy", _TRAFFIC_POLICIES, "Cluster"
        ),
        health_check_node_port=_health_check_node_port(c, spec, svc_type, etp),
        session_affinity=affinity,
        affinity_timeout_seconds=timeout,
        allocate_load_balancer_node_ports=_allocate_lb_node_ports(c, spec, svc_type),
        ip_families=families,
        ip_family_policy=_ip_family_policy(c, spec, svc_type),
        publish_not_ready_addresses=bool(
            c.get_bool(spec, "publishNotReadyAddresses", "spec.publishNotReadyAddresses", False)
        ),
        external_name=_external_name(c, spec, svc_type),
        traffic_distribution=_traffic_distribution(c, spec),
        topology_mode_auto=_topology_mode_auto(c, meta.metadata),
        ref=c.ref(),
    )


def _traffic_distribution(c: Checker, spec: dict) -> Optional[str]:
    """``spec.trafficDistribution``: PreferClose, PreferSameZone or PreferSameNode; None when unset."""
    path = "spec.trafficDistribution"
    value = c.get_str(spec, "trafficDistribution", path, default=None)
    if value is None:
        return None
    if value not in TRAFFIC_DISTRIBUTIONS:
        c.unsupported(path, value, TRAFFIC_DISTRIBUTIONS)
        return None
    return value


def _topology_mode_auto(c: Checker, metadata: dict) -> bool:
    """Whether Topology Aware Routing is on: the annotation ``topology-aware-hints`` if present,
    else ``topology-mode``, is ``Auto`` or ``auto`` (the EndpointSlice controller's ``hintsEnabled``)."""
    annotations = c.get_map(metadata, "annotations", "metadata.annotations")
    for key in (ANNOTATION_TOPOLOGY_AWARE_HINTS, ANNOTATION_TOPOLOGY_MODE):
        if key in annotations:
            return annotations[key] in ("Auto", "auto")
    return False


def _service_ip_families(c: Checker, spec: dict, svc_type: str) -> tuple:
    """``spec.ipFamilies``: each IPv4 or IPv6, no repeats; not for ExternalName."""
    families = c.get_strs(spec, "ipFamilies", "spec.ipFamilies") or []
    if families and svc_type == "ExternalName":
        c.forbidden("spec.ipFamilies", "may not be set for ExternalName services")
        return ()
    seen: set[str] = set()
    for i, family in enumerate(families):
        path = index_path("spec.ipFamilies", i)
        if family not in _IP_FAMILIES:
            c.unsupported(path, family, _IP_FAMILIES)
        if family in seen:
            c.duplicate(path, family)
        seen.add(family)
    return tuple(families)


def _ip_family_policy(c: Checker, spec: dict, svc_type: str) -> Optional[str]:
    """``spec.ipFamilyPolicy`` (None when unset); not for ExternalName."""
    policy = c.get_str(spec, "ipFamilyPolicy", "spec.ipFamilyPolicy", default=None)
    if policy is None:
        return None
    if svc_type == "ExternalName":
        c.forbidden("spec.ipFamilyPolicy", "may not be set for ExternalName services")
    elif policy not in _IP_FAMILY_POLICIES:
        c.unsupported("spec.ipFamilyPolicy", policy, _IP_FAMILY_POLICIES)
    return policy


def _service_cluster_ips(c: Checker, spec: dict, svc_type: str, families: tuple) -> tuple[str, ...]:
    """``spec.clusterIP``/``clusterIPs`` (``ValidateServiceClusterIPsRelatedFields``), canonical.

    As the API server's strategy does, a lone ``clusterIP`` fills ``clusterIPs``.
    Returns ``()`` when unset or invalid, ``("None",)`` for a headless Service.
    """
    cluster_ip = c.get_str(spec, "clusterIP", "spec.clusterIP")
    ips = c.get_strs(spec, "clusterIPs", "spec.clusterIPs")
    if cluster_ip is None or ips is None:
        return ()
    if cluster_ip and not ips:
        ips = [cluster_ip]
    elif cluster_ip and ips[0] != cluster_ip:
        c.invalid("spec.clusterIPs", ips, "first value must match `clusterIP`")
    if svc_type == "ExternalName":
        if ips:
            c.forbidden("spec.clusterIPs", "may not be set for ExternalName services")
        return ()
    if not _cluster_ips_valid(c, ips):
        return ()
    if ips == ["None"]:
        if svc_type in ("LoadBalancer", "NodePort"):
            c.invalid("spec.clusterIPs[0]", "None", f"may not be set to 'None' for {svc_type} services")
        return ("None",)
    _check_ips_match_families(c, ips, families)
    return tuple(ipaddrs.canonical_ip(ip) for ip in ips)


def _cluster_ips_valid(c: Checker, ips: list[str]) -> bool:
    """Each entry an IP (or a lone leading "None"), at most 2, one per family."""
    valid = True
    for i, ip in enumerate(ips):
        if i == 0 and ip == "None":
            if len(ips) > 1:
                valid = False
                c.invalid("spec.clusterIPs", ips, "'None' must be the first and only value")
            continue
        if not ipaddrs.is_ip(ip):
            valid = False
            c.invalid(index_path("spec.clusterIPs", i), ip, IP_ADDRESS_MSG)
    if len(ips) > 2:
        c.invalid("spec.clusterIPs", ips, "may only hold up to 2 values")
    if not valid:
        return False
    if len(ips) > 1 and not ipaddrs.is_dual_stack([ipaddrs.ip_family(ip) for ip in ips]):
        c.invalid("spec.clusterIPs", ips, "may specify no more than one IP for each IP family")
    return True


def _check_ips_match_families(c: Checker, ips: list[str], families: tuple) -> None:
    """``clusterIPs[i]`` must be of the family ``ipFamilies[i]`` says."""
    for i, (ip, family) in enumerate(zip(ips, families)):
        if family in _IP_FAMILIES and ipaddrs.ip_family(ip) != family:
            c.invalid(
                index_path("spec.clusterIPs", i), ip, f"expected an {family} value as indicated by `ipFamilies[{i}]`"
            )


def _service_ports(c: Checker, spec: dict, svc_type: str) -> tuple[ServicePort, ...]:
    """``spec.ports``: each port valid, names and (port, protocol) and (protocol, nodePort) unique."""
    raw = c.get_list(spec, "ports", "spec.ports")
    require_name = len(raw) > 1
    names: set[str] = set()
    seen_ports: set[tuple[int, str]] = set()
    seen_node_ports: set[tuple[str, int]] = set()
    ports = []
    for path, item in c.each_map(raw, "spec.ports"):
        port = _service_port(c, path, item, require_name, names, svc_type)
        if port.port and (port.port, port.protocol) in seen_ports:
            c.duplicate(path, f"{port.port}/{port.protocol}")
        seen_ports.add((port.port, port.protocol))
        if port.node_port and (port.protocol, port.node_port) in seen_node_ports:
            c.duplicate(field_path(path, "nodePort"), port.node_port)
        if port.node_port:
            seen_node_ports.add((port.protocol, port.node_port))
        ports.append(port)
    return tuple(ports)


def _service_port(
    c: Checker, path: str, item: dict, require_name: bool, names: set[str], svc_type: str
) -> ServicePort:
    """One ``spec.ports[i]`` (``validateServicePort``), defaults applied."""
    name = c.get_str(item, "name", field_path(path, "name"))
    if name == "" and require_name:
        c.required(field_path(path, "name"))
    elif name:
        c.all_invalid(field_path(path, "name"), name, dns1123_label_errors(name))
        if name in names:
            c.duplicate(field_path(path, "name"), name)
        names.add(name)
    port = c.port_number(item, "port", field_path(path, "port"))
    return ServicePort(
        port=port or 0,
        protocol=c.protocol(item, field_path(path, "protocol")),
        name=name or "",
        target_port=_target_port(c, item, field_path(path, "targetPort")),
        node_port=_node_port(c, item, field_path(path, "nodePort"), svc_type),
        app_protocol=app_protocol(c, item, field_path(path, "appProtocol")),
    )


def app_protocol(c: Checker, item: dict, path: str) -> Optional[str]:
    """``appProtocol`` (None when unset): a qualified name such as ``http`` or ``kubernetes.io/h2c``."""
    value = c.get_str(item, "appProtocol", path, default=None)
    if value is not None:
        c.all_invalid(path, value, qualified_name_errors(value))
    return value


def _target_port(c: Checker, item: dict, path: str) -> int | str | None:
    """``targetPort``: a port number (digits in a string count) or an IANA_SVC_NAME; 0/"" unset."""
    value = item.get("targetPort")
    if isinstance(value, bool) or not isinstance(value, (int, str, type(None))):
        c.invalid(path, value, "must be an integer or a string")
        return None
    if not value:  # unset, 0 or "": defaulted to the port by the API server
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        value = int(value)
    if isinstance(value, int):
        c.all_invalid(path, value, port_number_errors(value))
        return value
    c.all_invalid(path, value, port_name_errors(value))
    return value


def _node_port(c: Checker, item: dict, path: str, svc_type: str) -> Optional[int]:
    """``nodePort`` (0 = unset): only for NodePort and LoadBalancer Services."""
    node_port = c.get_int(item, "nodePort", path, default=0)
    if not node_port:
        return None
    if svc_type not in ("NodePort", "LoadBalancer"):
        c.forbidden(path, f"may not be used when `type` is '{svc_type}'")
    else:
        c.all_invalid(path, node_port, port_number_errors(node_port))
    return node_port


def _service_external_ips(c: Checker, spec: dict) -> tuple[str, ...]:
    """``spec.externalIPs``: valid, non-special IPs, canonical."""
    result = []
    for i, value in enumerate(c.get_strs(spec, "externalIPs", "spec.externalIPs") or []):
        path = index_path("spec.externalIPs", i)
        canonical = c.ip(path, value)
        if canonical is not None and c.endpoint_ip(path, value):
            result.append(canonical)
    return tuple(result)


def _source_ranges(c: Checker, spec: dict, svc_type: str) -> tuple[str, ...]:
    """``spec.loadBalancerSourceRanges``: CIDRs (space padding allowed), LoadBalancer only.

    The API server reports this field as ``spec.LoadBalancerSourceRanges``
    (capital L, a historical accident); so do we.
    """
    ranges = c.get_strs(spec, "loadBalancerSourceRanges", "spec.loadBalancerSourceRanges") or []
    path = "spec.LoadBalancerSourceRanges"
    if ranges and svc_type != "LoadBalancer":
        c.forbidden(path, "may only be used when `type` is 'LoadBalancer'")
    result = []
    for i, value in enumerate(ranges):
        canonical = c.cidr(index_path(path, i), value.strip())
        if canonical is not None:
            result.append(canonical)
    return tuple(result)


def _external_traffic_policy(c: Checker, spec: dict, svc_type: str, has_external_ips: bool) -> str:
    """``spec.externalTrafficPolicy``; only meaningful for externally-accessible Services.

    A value on a Service that is not externally accessible (kubectl never
    prints one, but hand-written manifests have them) is accepted and ignored.
    """
    policy = c.one_of(spec, "externalTrafficPolicy", "spec.externalTrafficPolicy", _TRAFFIC_POLICIES, "Cluster")
    externally_accessible = svc_type in ("NodePort", "LoadBalancer") or (
        svc_type == "ClusterIP" and has_external_ips
    )
    return policy if externally_accessible else "Cluster"


def _health_check_node_port(c: Checker, spec: dict, svc_type: str, etp: str) -> Optional[int]:
    """``spec.healthCheckNodePort``: a port, only for LoadBalancer Services with policy Local."""
    path = "spec.healthCheckNodePort"
    port = c.get_int(spec, "healthCheckNodePort", path, default=0)
    if not port:
        return None
    if svc_type != "LoadBalancer" or etp != "Local":
        c.invalid(path, port, "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'")
    else:
        c.all_invalid(path, port, port_number_errors(port))
    return port


def _session_affinity(c: Checker, spec: dict) -> tuple[str, int]:
    """``spec.sessionAffinity`` and its ClientIP timeout (default 10800 s, at most 86400 s)."""
    affinity = c.one_of(spec, "sessionAffinity", "spec.sessionAffinity", _SESSION_AFFINITIES, "None")
    config_path = "spec.sessionAffinityConfig"
    if affinity == "None":
        if spec.get("sessionAffinityConfig") is not None:
            c.forbidden(config_path, "must not be set when session affinity is None")
        return affinity, DEFAULT_AFFINITY_TIMEOUT
    client_ip = c.get_map(c.get_map(spec, "sessionAffinityConfig", config_path), "clientIP", f"{config_path}.clientIP")
    timeout_path = f"{config_path}.clientIP.timeoutSeconds"
    timeout = c.get_int(client_ip, "timeoutSeconds", timeout_path, DEFAULT_AFFINITY_TIMEOUT)
    if timeout is None:
        return affinity, DEFAULT_AFFINITY_TIMEOUT
    if not 0 < timeout <= MAX_AFFINITY_TIMEOUT:
        c.invalid(timeout_path, timeout, f"must be greater than 0 and less than {MAX_AFFINITY_TIMEOUT}")
    return affinity, timeout


def _allocate_lb_node_ports(c: Checker, spec: dict, svc_type: str) -> bool:
    """``spec.allocateLoadBalancerNodePorts`` (default true), LoadBalancer only."""
    path = "spec.allocateLoadBalancerNodePorts"
    value = c.get_bool(spec, "allocateLoadBalancerNodePorts", path, None)
    if value is not None and svc_type != "LoadBalancer":
        c.forbidden(path, "may only be used when `type` is 'LoadBalancer'")
    return True if value is None else value


def _external_name(c: Checker, spec: dict, svc_type: str) -> Optional[str]:
    """``spec.externalName``: required for (and only kept for) ExternalName Services."""
    if svc_type != "ExternalName":
        return None
    path = "spec.externalName"
    name = c.get_str(spec, "externalName", path)
    if name is None:
        return None
    cname = name[:-1] if name.endswith(".") else name
    if not cname:
        c.required(path)
        return None
    c.all_invalid(path, cname, dns1123_subdomain_errors(cname))
    return name


def _load_balancer_ingress(c: Checker, obj: dict) -> tuple[LoadBalancerIngress, ...]:
    """``status.loadBalancer.ingress`` (``ValidateLoadBalancerStatus``); ipMode defaults to VIP."""
    status = c.get_map(obj, "status", "status")
    balancer = c.get_map(status, "loadBalancer", "status.loadBalancer")
    return tuple(
        _ingress(c, path, item) for path, item in c.get_maps(balancer, "ingress", "status.loadBalancer.ingress")
    )


def _ingress(c: Checker, path: str, item: dict) -> LoadBalancerIngress:
    """One ingress point: an IP (canonical) and/or a DNS name; ipMode only with an IP."""
    ip = c.get_str(item, "ip", field_path(path, "ip")) or None
    canonical_ip = c.ip(field_path(path, "ip"), ip) if ip else None
    hostname = c.get_str(item, "hostname", field_path(path, "hostname")) or None
    if hostname:
        c.all_invalid(field_path(path, "hostname"), hostname, dns1123_subdomain_errors(hostname))
        if ipaddrs.is_ip(hostname):
            c.invalid(field_path(path, "hostname"), hostname, "must be a DNS name, not an IP address")
    mode_path = field_path(path, "ipMode")
    ip_mode = c.get_str(item, "ipMode", mode_path, default=None)
    if ip_mode is not None and not ip:
        c.forbidden(mode_path, "may not be specified when `ip` is not set")
    elif ip_mode is not None and ip_mode not in _IP_MODES:
        c.unsupported(mode_path, ip_mode, _IP_MODES)
    elif ip_mode is None and ip:
        ip_mode = "VIP"
    return LoadBalancerIngress(ip=canonical_ip, hostname=hostname, ip_mode=ip_mode)
