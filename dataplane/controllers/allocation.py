"""Fill in what the API server assigns on Service creation: ClusterIPs, NodePorts, healthCheckNodePorts.

:func:`allocate_cluster` treats every Service of the input as if it were
created against an API server configured with ``--service-cluster-ip-range``
and ``--service-node-port-range``, in three passes so the outcome does not
depend on which Service happens to come first:

1. values an earlier run (the :class:`AllocationState`) gave a Service, and
   that the Service still asks for, are registered first, so a Service never
   loses what it holds to a newcomer;
2. every other value the manifests name (``clusterIPs``, ``nodePort``,
   ``healthCheckNodePort``) is registered, Services in ``namespace/name``
   order, the later of two claimants getting the API server's error;
3. what is still missing is allocated, again in ``namespace/name`` order, with
   the allocators of :mod:`.portallocator` and :mod:`.ipallocator`.

The per-Service rules are those of the API server's ``storage/alloc.go``:
IP families from ``ipFamilyPolicy``/``ipFamilies``/``clusterIPs``; one NodePort
pool for all protocols; ports of one Service that share a ``port`` number
share a nodePort; ``allocateLoadBalancerNodePorts: false`` only stops
*dynamic* allocation; a healthCheckNodePort for LoadBalancers with
``externalTrafficPolicy: Local``. With a state, a value the input leaves
empty is taken from the state (nodePorts matched by port name, as the API
server patches them on update), and Services missing from the input give
their values back.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Any, Iterator, Mapping, Optional, Sequence

from ..errors import InputError, Problem
from ..input.loader import Document
from ..ipaddrs import IPNetwork, ip_family, is_canonical_ipv4, parse_cidr, parse_ip
from ..model import Cluster, ObjectRef, Service
from .allocation_state import (  # (re-exported: the state is part of this module's API)
    DEFAULT_NODE_PORT_RANGE,
    DEFAULT_SERVICE_CIDRS,
    OTHER_FAMILY,
    STATE_KIND,
    STATE_VERSION,
    AllocationState,
    HeldNodePort,
    HeldValues,
    parse_node_port_range,
    parse_service_cidrs,
)
from .ipallocator import MetaAllocator
from .portallocator import AllocatorError, NotInRangeError, PortAllocator, PortRange

__all__ = [
    "DEFAULT_NODE_PORT_RANGE", "DEFAULT_SERVICE_CIDRS", "STATE_KIND", "STATE_VERSION", "SINGLE_STACK",
    "PREFER_DUAL_STACK", "REQUIRE_DUAL_STACK", "AllocationResult", "AllocationState", "HeldNodePort", "HeldValues",
    "ServiceAllocation", "allocate_cluster", "cluster_service_ranges", "fill_documents", "parse_node_port_range",
    "parse_service_cidrs",
]

SINGLE_STACK = "SingleStack"
PREFER_DUAL_STACK = "PreferDualStack"
REQUIRE_DUAL_STACK = "RequireDualStack"


# ------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ServiceAllocation:
    """The allocated fields of one Service after :func:`allocate_cluster`.

    ``node_ports`` has one entry per ``spec.ports`` index (None: no nodePort).
    ``filled`` lists the field paths whose value did not come from the input
    (allocated now, or kept from the state).
    """

    namespace: str
    name: str
    cluster_ips: tuple[str, ...] = ()
    ip_families: tuple[str, ...] = ()
    ip_family_policy: Optional[str] = None
    node_ports: tuple[Optional[int], ...] = ()
    health_check_node_port: Optional[int] = None
    filled: tuple[str, ...] = ()
    ref: ObjectRef = field(default_factory=lambda: ObjectRef("Service", "", ""), compare=False)

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class AllocationResult:
    """The filled-in cluster, what each Service got (keyed ``namespace/name``) and the new state."""

    cluster: Cluster
    services: Mapping[str, ServiceAllocation]
    state: AllocationState


# ------------------------------------------------------------------- planning


@dataclass(slots=True)
class _Request:
    """One value a Service needs: a given one (``value``) or any (``value`` None)."""

    field: str
    value: Optional[int | str] = None
    held: bool = False  # the state says this Service holds ``value``
    family: Optional[str] = None  # ClusterIP requests only
    result: Optional[int | str] = None


@dataclass(slots=True)
class _Plan:
    """What one Service asks of the allocators, and how it went."""

    svc: Service
    key: str = ""  # namespace/name
    policy: Optional[str] = None
    families: tuple[str, ...] = ()
    ip_requests: list[_Request] = field(default_factory=list)
    port_requests: list[_Request] = field(default_factory=list)
    port_assign: list[Optional[_Request]] = field(default_factory=list)
    hc_request: Optional[_Request] = None
    problems: list[Problem] = field(default_factory=list)
    failed: bool = False

    def problem(self, field_path: str, message: str) -> None:
        """Record a problem about this Service; it then gets no dynamic allocation."""
        ref = self.svc.ref
        display = ref.display if ref.name else f"{self.svc.namespace}/{self.svc.name}"
        self.problems.append(Problem(ref.source, ref.index, f"Service {display}", field_path, message, ref.unit))
        self.failed = True


def _needs_node_ports(svc: Service) -> bool:
    return svc.type in ("NodePort", "LoadBalancer")


def _should_allocate_node_ports(svc: Service) -> bool:
    if svc.type == "NodePort":
        return True
    return svc.type == "LoadBalancer" and svc.allocate_load_balancer_node_ports


def _needs_health_check(svc: Service) -> bool:
    return svc.type == "LoadBalancer" and svc.external_traffic_policy == "Local"


def _go_strings(values: Sequence[str]) -> str:
    """Go's ``%#v`` of a ``[]string``, as field errors print it."""
    return "[]string{" + ", ".join(json.dumps(v) for v in values) + "}"


def _requested_ips(svc: Service, held: Optional[HeldValues]) -> tuple[str, ...]:
    """The input's clusterIPs or, when it has none, those held in the state that still fit."""
    given = svc.cluster_ips
    if "" in given:
        given = tuple([ip for ip in given if ip])
    if given or held is None or not held.cluster_ips:
        return given
    kept: list[str] = []
    for i, ip in enumerate(held.cluster_ips):
        if i < len(svc.ip_families) and svc.ip_families[i] != ip_family(ip):
            break
        kept.append(ip)
    if (svc.ip_family_policy or SINGLE_STACK) == SINGLE_STACK:
        kept = kept[:1]
    return tuple(kept)


def _resolve_families(plan: _Plan, ips: tuple[str, ...], configured: Sequence[str]) -> None:
    """Set ``plan.policy``/``plan.families`` the way ``initIPFamilyFields`` defaults them (or
    record the problems)."""
    svc = plan.svc
    # The common case first: one IPv4 ClusterIP in canonical form, at most the IPv4 family and
    # SingleStack named, IPv4 configured: SingleStack IPv4, as the general rules below conclude.
    if (
        len(ips) == 1
        and svc.ip_family_policy in _SINGLE_OR_UNSET
        and svc.ip_families in _IPV4_OR_UNSET
        and "IPv4" in configured
        and is_canonical_ipv4(ips[0])
    ):
        plan.policy, plan.families = SINGLE_STACK, _IPV4_ONLY
        return
    _resolve_families_generally(plan, ips, configured)


_SINGLE_OR_UNSET = (None, SINGLE_STACK)
_IPV4_ONLY = ("IPv4",)
_IPV4_OR_UNSET = ((), _IPV4_ONLY)


def _resolve_families_generally(plan: _Plan, ips: tuple[str, ...], configured: Sequence[str]) -> None:
    """:func:`_resolve_families` for any Service."""
    svc = plan.svc
    headless = ips[:1] == ("None",)
    selectorless = not svc.selector
    policy = svc.ip_family_policy or (REQUIRE_DUAL_STACK if headless and selectorless else SINGLE_STACK)
    families = list(svc.ip_families)
    start = len(plan.problems)
    if policy == SINGLE_STACK:
        multiple = "must be 'RequireDualStack' or 'PreferDualStack' when multiple"
        if len(ips) == 2:
            plan.problem("spec.ipFamilyPolicy", f'Invalid value: "{policy}": {multiple} cluster IPs are specified')
        if len(families) == 2:
            plan.problem("spec.ipFamilyPolicy", f'Invalid value: "{policy}": {multiple} IP families are specified')
    for i, ip in enumerate(ips):
        if ip == "None":
            break
        try:
            family = ip_family(ip)
        except ValueError:
            plan.problem(f"spec.clusterIPs[{i}]", f'Invalid value: "{ip}": must be a valid IP address')
            continue
        if i >= len(families):
            if family in configured:
                families.append(family)
            else:
                plan.problem(
                    f"spec.clusterIPs[{i}]",
                    f"Invalid value: {_go_strings(ips)}: {family} is not configured on this cluster",
                )
        elif families[i] != family:
            plan.problem(
                f"spec.clusterIPs[{i}]",
                f'Invalid value: "{ip}": expected an {families[i]} value as indicated by `ipFamilies[{i}]`',
            )
    if len(plan.problems) > start:
        return
    if headless and selectorless:
        families = families or [configured[0]]
        if len(families) < 2 and policy != SINGLE_STACK:
            families.append(OTHER_FAMILY[families[0]])
        plan.policy, plan.families = policy, tuple(families)
        return
    if policy == REQUIRE_DUAL_STACK and len(configured) < 2:
        plan.problem(
            "spec.ipFamilyPolicy",
            f'Invalid value: "{policy}": this cluster is not configured for dual-stack services',
        )
    for i, family in enumerate(families):
        if family not in configured:
            plan.problem(f"spec.ipFamilies[{i}]", f'Invalid value: "{family}": not configured on this cluster')
    if len(plan.problems) > start:
        return
    families = families or [configured[0]]
    if policy != SINGLE_STACK and len(families) == 1 and len(configured) == 2:
        families.append(OTHER_FAMILY[families[0]])
    plan.policy, plan.families = policy, tuple(families)


def _plan_ips(plan: _Plan, held: Optional[HeldValues], configured: Sequence[str]) -> None:
    """Work out the Service's IP families and the ClusterIP requests."""
    svc = plan.svc
    if svc.type == "ExternalName":
        return
    ips = _requested_ips(svc, held)
    _resolve_families(plan, ips, configured)
    if plan.failed or ips[:1] == ("None",):
        return
    for i, family in enumerate(plan.families):
        value = ips[i] if i < len(ips) else None
        if value is not None and not is_canonical_ipv4(value):
            value = str(parse_ip(value))
        is_held = value is not None and held is not None and held.holds_ip(value)
        plan.ip_requests.append(_Request(_CLUSTER_IP_FIELDS[i], value, is_held, family))


_CLUSTER_IP_FIELDS = ("spec.clusterIPs[0]", "spec.clusterIPs[1]")  # (one ClusterIP per family)


def _requested_node_ports(svc: Service, held: Optional[HeldValues]) -> list[Optional[int]]:
    """The input's nodePorts, gaps filled from the state by port name (as the API server patches updates)."""
    values = [p.node_port or None for p in svc.ports]
    if held is None or not held.node_ports:
        return values
    by_name = {h.name: h.node_port for h in held.node_ports}
    taken = {v for v in values if v} & {h.node_port for h in held.node_ports}
    for i, port in enumerate(svc.ports):
        old = by_name.get(port.name)
        if values[i] is None and old is not None and old not in taken:
            values[i] = old
    return values


def _plan_node_ports(plan: _Plan, held: Optional[HeldValues]) -> None:
    """NodePort requests, following ``initNodePorts``: one nodePort per distinct ``port`` number
    (``plan.port_assign``: the request each port takes its nodePort from, for NodePort and
    LoadBalancer Services)."""
    svc = plan.svc
    plan.port_assign = [None] * len(svc.ports)
    if not _needs_node_ports(svc):
        return
    values = _requested_node_ports(svc, held)
    allocate = _should_allocate_node_ports(svc)
    by_port: dict[int, _Request] = {}
    assign = plan.port_assign
    for i, port in enumerate(svc.ports):
        value = values[i]
        if value is None and not allocate:
            continue
        shared = by_port.get(port.port)
        if shared is None:
            # the first nodePort given to a port of this number (none before this one: it would
            # have made the request)
            wanted = value or next((values[j] for j, p in enumerate(svc.ports) if p.port == port.port and values[j]),
                                   None)
            shared = by_port[port.port] = assign[i] = _node_port_request(plan, held, i, wanted)
        elif value is None or value == shared.value:
            assign[i] = shared
        else:
            assign[i] = _node_port_request(plan, held, i, value)


def _node_port_request(plan: _Plan, held: Optional[HeldValues], i: int, value: Optional[int]) -> _Request:
    """A new request for the nodePort of ``spec.ports[i]`` (``value`` None: any)."""
    is_held = value is not None and held is not None and held.holds_port(value)
    made = _Request(f"spec.ports[{i}].nodePort", value, is_held)
    plan.port_requests.append(made)
    return made


def _plan_health_check(plan: _Plan, held: Optional[HeldValues]) -> None:
    """The healthCheckNodePort request of a LoadBalancer with ``externalTrafficPolicy: Local``."""
    svc = plan.svc
    if not _needs_health_check(svc):
        return
    value = svc.health_check_node_port or (held.health_check_node_port if held else None)
    is_held = value is not None and held is not None and held.holds_port(value)
    plan.hc_request = _Request("spec.healthCheckNodePort", value, is_held)


def _plan_service(svc: Service, key: str, held: Optional[HeldValues], configured: Sequence[str]) -> _Plan:
    """Everything one Service (``key``: namespace/name) asks of the allocators."""
    plan = _Plan(svc, key)
    _plan_ips(plan, held, configured)
    if _needs_node_ports(svc):
        _plan_node_ports(plan, held)
        _plan_health_check(plan, held)
    return plan


# ------------------------------------------------------------------ executing


@dataclass
class _Pools:
    ports: PortAllocator
    ips: dict[str, MetaAllocator]
    hint: str = ""  # added to "not in the valid range" errors: where else the range could come from


def _register(plan: _Plan, pools: _Pools, *, held: bool) -> None:
    """Reserve the specific values the Service asks for whose ``held`` flag matches."""
    for req in plan.ip_requests:
        if req.value is None or req.held != held:
            continue
        try:
            pools.ips[req.family or ""].allocate(str(req.value))
            req.result = req.value
        except AllocatorError as err:
            hint = pools.hint if isinstance(err, NotInRangeError) else ""
            svc_ips = [r.value or "" for r in plan.ip_requests]
            plan.problem(
                "spec.clusterIPs",
                f"Invalid value: {_go_strings(svc_ips)}: failed to allocate IP {req.value}: {err}{hint}",
            )
    for req in plan.port_requests:
        if req.value is None or req.held != held:
            continue
        try:
            pools.ports.allocate(int(req.value))
            req.result = req.value
        except AllocatorError as err:
            plan.problem(req.field, f"Invalid value: {req.value}: {err}")
    req = plan.hc_request
    if req is not None and req.value is not None and req.held == held:
        try:
            pools.ports.allocate(int(req.value))
            req.result = req.value
        except AllocatorError as err:
            plan.problem(req.field, f"failed to allocate requested HealthCheck NodePort {req.value}: {err}")


def _allocate_dynamic(plan: _Plan, pools: _Pools) -> None:
    """Allocate every value the Service still lacks: ClusterIPs, nodePorts, healthCheckNodePort."""
    for req in plan.ip_requests:
        if req.value is None:
            try:
                req.result = pools.ips[req.family or ""].allocate_next()
            except AllocatorError as err:
                plan.problem(req.field, f"failed to allocate a serviceIP: {err}")
    for req in plan.port_requests:
        if req.value is None:
            try:
                req.result = pools.ports.allocate_next()
            except AllocatorError as err:
                plan.problem(req.field, f"failed to allocate a nodePort: {err}")
    req = plan.hc_request
    if req is not None and req.value is None:
        try:
            req.result = pools.ports.allocate_next()
        except AllocatorError as err:
            # The API server prints the (zero) port it failed to get.
            plan.problem(req.field, f"failed to allocate a HealthCheck NodePort 0: {err}")


# --------------------------------------------------------------------- result


def _allocation_of(plan: _Plan) -> ServiceAllocation:
    """The record of what ``plan``'s Service holds once everything succeeded."""
    svc = plan.svc
    if svc.type == "ExternalName":
        return ServiceAllocation(
            svc.namespace, svc.name, node_ports=tuple([p.node_port for p in svc.ports]), ref=svc.ref
        )
    filled: list[str] = []
    requests = plan.ip_requests
    if requests:
        cluster_ips = tuple([str(r.result) for r in requests])
        given = svc.cluster_ips
        if "" in given:
            given = tuple([ip for ip in given if ip])
        if len(requests) > len(given):
            filled += [r.field for r in requests[len(given):]]
    else:
        cluster_ips = svc.cluster_ips
    node_ports: list[Optional[int]]
    if _needs_node_ports(svc):
        node_ports = []
        for i, (port, req) in enumerate(zip(svc.ports, plan.port_assign)):
            value = int(req.result) if req is not None and req.result is not None else port.node_port
            if port.node_port is None and value is not None:
                filled.append(f"spec.ports[{i}].nodePort")
            node_ports.append(value)
    else:  # (the input's, unchanged)
        node_ports = [port.node_port for port in svc.ports]
    hc = svc.health_check_node_port
    if plan.hc_request is not None and plan.hc_request.result is not None:
        hc = int(plan.hc_request.result)
        if svc.health_check_node_port is None:
            filled.append("spec.healthCheckNodePort")
    return ServiceAllocation(
        svc.namespace, svc.name, cluster_ips, plan.families, plan.policy, tuple(node_ports), hc, tuple(filled), svc.ref
    )


def _filled_service(svc: Service, alloc: ServiceAllocation) -> Service:
    """``svc`` with the allocated fields written in (``svc`` itself when it had them all)."""
    if svc.type == "ExternalName" or (
        alloc.cluster_ips == svc.cluster_ips
        and alloc.ip_families == svc.ip_families
        and alloc.ip_family_policy == svc.ip_family_policy
        and alloc.health_check_node_port == svc.health_check_node_port
        and all(port.node_port == value for port, value in zip(svc.ports, alloc.node_ports))
    ):
        return svc
    ports = tuple(
        port if port.node_port == value else replace(port, node_port=value)
        for port, value in zip(svc.ports, alloc.node_ports)
    )
    return replace(
        svc,
        cluster_ips=alloc.cluster_ips,
        ip_families=alloc.ip_families,  # type: ignore[arg-type]
        ip_family_policy=alloc.ip_family_policy,
        ports=ports,
        health_check_node_port=alloc.health_check_node_port,
    )


def _held_of(svc: Service, alloc: ServiceAllocation) -> Optional[HeldValues]:
    """What the state should remember for one Service; None if nothing."""
    ips = alloc.cluster_ips
    if "" in ips or "None" in ips:
        ips = tuple([ip for ip in ips if ip and ip != "None"])
    needs_node_ports = _needs_node_ports(svc)
    node_ports = tuple(
        HeldNodePort(port.name, port.port, port.protocol, value)
        for port, value in zip(svc.ports, alloc.node_ports)
        if value is not None
    ) if needs_node_ports else ()
    hc = alloc.health_check_node_port if _needs_health_check(svc) else None
    if not ips and not node_ports and hc is None:
        return None
    return HeldValues(ips, alloc.ip_families if ips else (), node_ports, hc)


# ----------------------------------------------------------------------- main


_DEFAULT_RANGE_HINT = (
    " (the range is the default 10.96.0.0/12: give the cluster's range with --service-cluster-ip-range, "
    "or include its ServiceCIDR objects (kubectl get servicecidrs -o yaml) or kubeadm ClusterConfiguration)"
)


def cluster_service_ranges(cluster: Cluster) -> tuple[tuple[IPNetwork, ...], tuple[bool, ...], str]:
    """The ClusterIP ranges of ``cluster`` when no ``--service-cluster-ip-range`` is given: the
    union of its ServiceCIDRs' ``spec.cidrs`` (``kubernetes``, the default one, first: its first
    family is the primary one), else kubeadm's ``networking.serviceSubnet``, else 10.96.0.0/12.
    Returns (networks, whether each is ready for new ClusterIPs, a hint for range errors)."""
    if cluster.service_cidrs:
        ordered = sorted(cluster.service_cidrs, key=lambda s: (s.name != "kubernetes", s.name))
        seen: dict[str, bool] = {}  # CIDR -> ready (an owning ServiceCIDR is ready)
        for sc in ordered:
            for cidr in sc.cidrs:
                key = str(parse_cidr(cidr))
                seen[key] = seen.get(key, False) or sc.ready
        return tuple(parse_cidr(c) for c in seen), tuple(seen.values()), ""
    if cluster.service_subnet:
        return parse_service_cidrs(cluster.service_subnet), (True,) * len(cluster.service_subnet), ""
    return parse_service_cidrs(DEFAULT_SERVICE_CIDRS), (True,), _DEFAULT_RANGE_HINT


def allocate_cluster(
    cluster: Cluster,
    *,
    service_cidrs: Optional[Sequence[str] | str] = None,
    node_port_range: str = DEFAULT_NODE_PORT_RANGE,
    state: Optional[AllocationState] = None,
    seed: Optional[int] = None,
) -> AllocationResult:
    """Assign ClusterIPs, nodePorts and healthCheckNodePorts as the API server would on create.

    ``service_cidrs`` (``--service-cluster-ip-range``: one CIDR per family) defaults to the
    cluster's own ranges (:func:`cluster_service_ranges`: its ServiceCIDRs, else kubeadm's
    serviceSubnet, else 10.96.0.0/12). Raise UsageError for invalid ranges or a state made for
    other ranges, and InputError listing every Service whose values cannot be honoured or
    allocated (in input order). ``seed`` makes dynamic allocation reproducible.
    """
    port_range = parse_node_port_range(node_port_range)
    if service_cidrs is None:
        networks, ready, hint = cluster_service_ranges(cluster)
    else:
        networks = parse_service_cidrs(service_cidrs)
        ready, hint = (True,) * len(networks), ""
    if state is not None:
        state.check_ranges(port_range, networks)
    rng = random.Random(seed)
    by_family: dict[str, tuple[list[IPNetwork], list[bool]]] = {}
    for network, is_ready in zip(networks, ready):
        nets, flags = by_family.setdefault("IPv4" if network.version == 4 else "IPv6", ([], []))
        nets.append(network)
        flags.append(is_ready)
    pools = _Pools(
        ports=PortAllocator(port_range, rng=rng),
        ips={family: MetaAllocator(nets, flags, rng=rng) for family, (nets, flags) in by_family.items()},
        hint=hint,
    )
    configured = tuple(pools.ips)
    holdings = state.services if state is not None else {}
    plans, duplicates = _plans(cluster.services, holdings, configured)
    for held_pass in (True, False) if holdings else (False,):  # (without a state, nothing is held)
        for plan in plans:
            _register(plan, pools, held=held_pass)
    for plan in plans:
        if not plan.failed:
            _allocate_dynamic(plan, pools)
    if duplicates or any(plan.failed for plan in plans):
        position = {id(svc): i for i, svc in enumerate(cluster.services)}
        in_input_order = sorted(duplicates + plans, key=lambda plan: position[id(plan.svc)])
        raise InputError([p for plan in in_input_order for p in plan.problems])
    return _result(cluster, plans, port_range, networks, state)


_BY_NAME = attrgetter("namespace", "name")


def _plans(
    services: Sequence[Service], holdings: Mapping[str, HeldValues], configured: Sequence[str]
) -> tuple[list[_Plan], list[_Plan]]:
    """Plans for the Services in ``namespace/name`` order, and problem-only plans for duplicates."""
    plans: list[_Plan] = []
    duplicates: list[_Plan] = []
    seen: set[tuple[str, str]] = set()
    for svc in sorted(services, key=_BY_NAME):
        ident = (svc.namespace, svc.name)
        if ident in seen:
            duplicate = _Plan(svc)
            duplicate.problem("metadata.name", f'services "{svc.name}" already exists')
            duplicates.append(duplicate)
            continue
        seen.add(ident)
        key = f"{svc.namespace}/{svc.name}"
        plans.append(_plan_service(svc, key, holdings.get(key) if holdings else None, configured))
    return plans, duplicates


def _result(
    cluster: Cluster,
    plans: Sequence[_Plan],
    port_range: PortRange,
    networks: Sequence[IPNetwork],
    state: Optional[AllocationState],
) -> AllocationResult:
    """Assemble the filled-in cluster, the per-Service records and the new state. ``plans`` are
    those of every Service of ``cluster`` (one each: a duplicate is an error before)."""
    records: dict[str, ServiceAllocation] = {}
    changed: dict[int, Service] = {}  # id of an input Service -> the Service filled in
    for plan in plans:
        svc = plan.svc
        record = records[plan.key] = _allocation_of(plan)
        filled = _filled_service(svc, record)
        if filled is not svc:
            changed[id(svc)] = filled
    services = tuple(changed.get(id(svc), svc) for svc in cluster.services) if changed else cluster.services
    held = _HeldByService(records, [plan.svc for plan in plans])
    new_state = AllocationState(
        str(port_range), tuple(str(n) for n in networks), held, state.path if state is not None else None
    )
    return AllocationResult(replace(cluster, services=services), records, new_state)


class _HeldByService(Mapping[str, HeldValues]):
    """The new state's ``services``: what each Service holds (:func:`_held_of`), keyed
    ``namespace/name``, Services that hold nothing left out. Worked out from the allocation
    records when first read: a run that saves no state never needs it."""

    __slots__ = ("_records", "_services", "_held")

    def __init__(self, records: Mapping[str, ServiceAllocation], services: Sequence[Service]) -> None:
        """``services``: the Service of each record, in the records' order."""
        self._records: Optional[Mapping[str, ServiceAllocation]] = records
        self._services: Sequence[Service] = services
        self._held: Optional[dict[str, HeldValues]] = None

    def _values(self) -> dict[str, HeldValues]:
        if self._held is None:
            assert self._records is not None
            held = {}
            for (key, record), svc in zip(self._records.items(), self._services):
                values = _held_of(svc, record)
                if values is not None:
                    held[key] = values
            self._held, self._records, self._services = held, None, ()
        return self._held

    def __getitem__(self, key: str) -> HeldValues:
        return self._values()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())

    def __repr__(self) -> str:
        return repr(self._values())


# ------------------------------------------------------------------ documents


def fill_documents(docs: Sequence[Document], result: AllocationResult) -> list[dict[str, Any]]:
    """The input objects, Services showing their allocated fields as the API server would.

    A Service that gets values is a new object (its spec and ports copied, then patched); every
    other object, and every part of a Service the patch does not touch, is the input's own (not
    copied: the output is printed, never changed), so the input stays as it was.
    """
    by_ref = {(a.ref.source, a.ref.index, a.ref.unit): a for a in result.services.values() if a.ref.index}
    by_name = {(a.namespace, a.name): a for a in result.services.values()}
    out: list[dict[str, Any]] = []
    for doc in docs:
        obj = doc.obj
        if _is_service(obj):
            alloc = by_ref.get((doc.source, doc.index, doc.unit)) or by_name.get(_manifest_key(obj))
            if alloc is not None:
                obj = _copy_patched_parts(obj)
                _patch_service_manifest(obj, alloc)
        out.append(obj)
    return out


def _copy_patched_parts(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Service manifest whose parts :func:`_patch_service_manifest` writes to (the
    object, its spec, the spec's ports list and each port mapping) are new; the rest is shared."""
    obj = dict(obj)
    spec = obj.get("spec")
    if isinstance(spec, dict):
        spec = obj["spec"] = dict(spec)
        ports = spec.get("ports")
        if isinstance(ports, list):
            spec["ports"] = [dict(port) if isinstance(port, dict) else port for port in ports]
    return obj


def _is_service(obj: dict[str, Any]) -> bool:
    return obj.get("kind") == "Service" and obj.get("apiVersion") == "v1"


def _manifest_key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    return (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))


def _patch_service_manifest(obj: dict[str, Any], alloc: ServiceAllocation) -> None:
    """Write ``alloc`` into a Service manifest in place."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        spec = obj["spec"] = {}
    if alloc.cluster_ips:
        spec["clusterIP"] = alloc.cluster_ips[0]
        spec["clusterIPs"] = list(alloc.cluster_ips)
    if alloc.ip_families:
        spec["ipFamilies"] = list(alloc.ip_families)
    if alloc.ip_family_policy:
        spec["ipFamilyPolicy"] = alloc.ip_family_policy
    ports = spec.get("ports")
    if isinstance(ports, list):
        for i, value in enumerate(alloc.node_ports):
            if value is not None and i < len(ports) and isinstance(ports[i], dict):
                ports[i]["nodePort"] = value
    if alloc.health_check_node_port is not None:
        spec["healthCheckNodePort"] = alloc.health_check_node_port
