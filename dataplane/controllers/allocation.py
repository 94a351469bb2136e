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
from typing import Any, Mapping, Optional, Sequence

from ..errors import InputError, Problem, UsageError
from ..input.loader import Document
from ..ipaddrs import IPNetwork, ip_family, parse_cidr, parse_ip
from ..model import Cluster, ObjectRef, Service
from .ipallocator import MetaAllocator
from .portallocator import AllocatorError, NotInRangeError, PortAllocator, PortRange

DEFAULT_SERVICE_CIDRS: tuple[str, ...] = ("10.96.0.0/12",)
DEFAULT_NODE_PORT_RANGE = "30000-32767"

SINGLE_STACK = "SingleStack"
PREFER_DUAL_STACK = "PreferDualStack"
REQUIRE_DUAL_STACK = "RequireDualStack"

STATE_KIND = "AllocationState"
STATE_VERSION = 1

_OTHER_FAMILY = {"IPv4": "IPv6", "IPv6": "IPv4"}


# ------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class HeldNodePort:
    """A nodePort a Service holds, with the Service port it belongs to."""

    name: str
    port: int
    protocol: str
    node_port: int


@dataclass(frozen=True, slots=True)
class HeldValues:
    """What one Service holds from the allocators."""

    cluster_ips: tuple[str, ...] = ()
    ip_families: tuple[str, ...] = ()
    node_ports: tuple[HeldNodePort, ...] = ()
    health_check_node_port: Optional[int] = None

    def holds_ip(self, ip: str) -> bool:
        """True if ``ip`` is one of the held ClusterIPs."""
        return ip in self.cluster_ips

    def holds_port(self, port: int) -> bool:
        """True if ``port`` is a held nodePort or the held healthCheckNodePort."""
        return port == self.health_check_node_port or any(h.node_port == port for h in self.node_ports)


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
class AllocationState:
    """What every Service holds, for the ranges it was made with; JSON-serialisable.

    ``path`` (not serialised) names the file the state came from, for messages.
    """

    node_port_range: str
    service_cidrs: tuple[str, ...]
    services: Mapping[str, HeldValues] = field(default_factory=dict)
    path: Optional[str] = field(default=None, compare=False)

    @classmethod
    def new(
        cls,
        node_port_range: str = DEFAULT_NODE_PORT_RANGE,
        service_cidrs: Sequence[str] = DEFAULT_SERVICE_CIDRS,
        *,
        path: Optional[str] = None,
    ) -> "AllocationState":
        """An empty state for the given ranges (UsageError if they are invalid)."""
        port_range = parse_node_port_range(node_port_range)
        networks = parse_service_cidrs(service_cidrs)
        return cls(str(port_range), tuple(str(n) for n in networks), {}, path)

    def check_ranges(self, port_range: PortRange, networks: Sequence[IPNetwork]) -> None:
        """UsageError unless the state was made for exactly these ranges."""
        where = f"state file {self.path}" if self.path else "allocation state"
        if self.node_port_range != str(port_range):
            raise UsageError(
                f"{where} was made for service-node-port-range {self.node_port_range}, "
                f"not {port_range}; remove it or use the same range"
            )
        wanted = ",".join(str(n) for n in networks)
        held = ",".join(self.service_cidrs)
        if held != wanted:
            raise UsageError(
                f"{where} was made for service-cluster-ip-range {held}, not {wanted}; "
                "remove it or use the same range"
            )

    def to_json(self) -> dict[str, Any]:
        """The state as a JSON-ready dict."""
        return {
            "kind": STATE_KIND,
            "version": STATE_VERSION,
            "serviceNodePortRange": self.node_port_range,
            "serviceClusterIPRange": list(self.service_cidrs),
            "services": {key: _held_to_json(self.services[key]) for key in sorted(self.services)},
        }

    @classmethod
    def from_json(cls, data: Any, *, path: Optional[str] = None) -> "AllocationState":
        """Rebuild a state from :meth:`to_json` output; UsageError if it is malformed."""
        where = f"state file {path}" if path else "allocation state"
        try:
            return _state_from_json(data, path)
        except (TypeError, ValueError, KeyError) as err:
            raise UsageError(f"{where}: {err}") from None

    @classmethod
    def load(cls, path: str) -> "AllocationState":
        """Read a state file; UsageError if it cannot be read or is malformed."""
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as err:
            raise UsageError(f"cannot read state file {path}: {err.strerror or err}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(
                f"state file {path}: line {err.lineno}, column {err.colno}: cannot parse JSON: {err.msg}"
            ) from None
        return cls.from_json(data, path=path)

    def save(self, path: Optional[str] = None) -> None:
        """Write the state as JSON to ``path`` (default: where it was loaded from), atomically."""
        target = path or self.path
        if not target:
            raise UsageError("no path to save the allocation state to")
        text = json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"
        from ..output import OutputError, write_output

        try:
            write_output(text, target)
        except OutputError as err:
            raise UsageError(f"cannot write state file {target}: {err.reason}") from None


@dataclass(frozen=True)
class AllocationResult:
    """The filled-in cluster, what each Service got (keyed ``namespace/name``) and the new state."""

    cluster: Cluster
    services: Mapping[str, ServiceAllocation]
    state: AllocationState


# ------------------------------------------------------------ state (de)coding


def _held_to_json(held: HeldValues) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if held.cluster_ips:
        out["clusterIPs"] = list(held.cluster_ips)
    if held.ip_families:
        out["ipFamilies"] = list(held.ip_families)
    if held.node_ports:
        out["nodePorts"] = [
            {"name": h.name, "port": h.port, "protocol": h.protocol, "nodePort": h.node_port}
            for h in held.node_ports
        ]
    if held.health_check_node_port is not None:
        out["healthCheckNodePort"] = held.health_check_node_port
    return out


def _state_from_json(data: Any, path: Optional[str]) -> AllocationState:
    """Decode a state dict; TypeError/ValueError/KeyError describe what is wrong."""
    if not isinstance(data, dict):
        raise TypeError("must be a JSON object")
    if data.get("kind") != STATE_KIND or data.get("version") != STATE_VERSION:
        raise ValueError(f"not a version {STATE_VERSION} {STATE_KIND} (kind/version fields)")
    port_range = PortRange.parse(_expect(data, "serviceNodePortRange", str))
    cidrs = _expect(data, "serviceClusterIPRange", list)
    networks = tuple(str(parse_cidr(_typed(c, str, "serviceClusterIPRange entry"))) for c in cidrs)
    services = {
        _typed(key, str, "service key"): _held_from_json(key, _typed(value, dict, f"services[{key}]"))
        for key, value in _expect(data, "services", dict).items()
    }
    return AllocationState(str(port_range), networks, services, path)


def _held_from_json(key: str, data: dict[str, Any]) -> HeldValues:
    ips = tuple(str(parse_ip(_typed(ip, str, f"{key} clusterIPs entry"))) for ip in data.get("clusterIPs", []))
    families = tuple(_typed(f, str, f"{key} ipFamilies entry") for f in data.get("ipFamilies", []))
    if any(f not in _OTHER_FAMILY for f in families):
        raise ValueError(f"{key}: ipFamilies must be IPv4 or IPv6")
    ports = tuple(
        HeldNodePort(
            name=_expect(entry, "name", str),
            port=_expect(entry, "port", int),
            protocol=_expect(entry, "protocol", str),
            node_port=_expect(entry, "nodePort", int),
        )
        for entry in (_typed(e, dict, f"{key} nodePorts entry") for e in data.get("nodePorts", []))
    )
    hc = data.get("healthCheckNodePort")
    if hc is not None:
        _typed(hc, int, f"{key} healthCheckNodePort")
    return HeldValues(ips, families, ports, hc)


def _expect(data: dict[str, Any], key: str, kind: type) -> Any:
    if key not in data:
        raise KeyError(f"missing field {key}")
    return _typed(data[key], kind, key)


def _typed(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{what} must be a JSON {_JSON_NAMES[kind]}")
    return value


_JSON_NAMES = {str: "string", int: "integer", list: "array", dict: "object"}


# ------------------------------------------------------------ range arguments


def parse_node_port_range(text: str | PortRange) -> PortRange:
    """The ``--service-node-port-range`` value; UsageError if it is invalid."""
    if isinstance(text, PortRange):
        return text
    try:
        return PortRange.parse(text)
    except ValueError as err:
        raise UsageError(f"invalid service-node-port-range: {err}") from None


def parse_service_cidrs(cidrs: Sequence[str] | str) -> tuple[IPNetwork, ...]:
    """The ``--service-cluster-ip-range`` CIDRs (one per family, comma lists allowed); UsageError if invalid."""
    items = [cidrs] if isinstance(cidrs, str) else list(cidrs)
    texts = [part.strip() for item in items for part in item.split(",") if part.strip()]
    if not texts:
        raise UsageError("service-cluster-ip-range: at least one CIDR is required")
    if len(texts) > 2:
        raise UsageError("service-cluster-ip-range: at most two CIDRs (one IPv4, one IPv6) may be given")
    networks = []
    for text in texts:
        try:
            networks.append(parse_cidr(text))
        except ValueError:
            raise UsageError(f"service-cluster-ip-range: {text!r} is not a valid CIDR") from None
    if len(networks) == 2 and networks[0].version == networks[1].version:
        raise UsageError("service-cluster-ip-range: the two CIDRs must be of different IP families")
    return tuple(networks)


# ------------------------------------------------------------------- planning


@dataclass
class _Request:
    """One value a Service needs: a given one (``value``) or any (``value`` None)."""

    field: str
    value: Optional[int | str] = None
    held: bool = False  # the state says this Service holds ``value``
    family: Optional[str] = None  # ClusterIP requests only
    result: Optional[int | str] = None


@dataclass
class _Plan:
    """What one Service asks of the allocators, and how it went."""

    svc: Service
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
    given = tuple(ip for ip in svc.cluster_ips if ip)
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
    """Set ``plan.policy``/``plan.families`` the way ``initIPFamilyFields`` defaults them."""
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
            families.append(_OTHER_FAMILY[families[0]])
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
        families.append(_OTHER_FAMILY[families[0]])
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
        if value is not None:
            value = str(parse_ip(value))
        is_held = value is not None and held is not None and held.holds_ip(value)
        plan.ip_requests.append(_Request(f"spec.clusterIPs[{i}]", value, is_held, family))


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
    """NodePort requests, following ``initNodePorts``: one nodePort per distinct ``port`` number."""
    svc = plan.svc
    plan.port_assign = [None] * len(svc.ports)
    if not _needs_node_ports(svc):
        return
    values = _requested_node_ports(svc, held)
    allocate = _should_allocate_node_ports(svc)
    by_port: dict[int, _Request] = {}

    def request(i: int, value: Optional[int]) -> _Request:
        is_held = value is not None and held is not None and held.holds_port(value)
        made = _Request(f"spec.ports[{i}].nodePort", value, is_held)
        plan.port_requests.append(made)
        return made

    for i, port in enumerate(svc.ports):
        value = values[i]
        if value is None and not allocate:
            continue
        shared = by_port.get(port.port)
        if shared is None:
            wanted = next((values[j] for j, p in enumerate(svc.ports) if p.port == port.port and values[j]), None)
            shared = by_port[port.port] = request(i, wanted)
            plan.port_assign[i] = shared
        elif value is None or value == shared.value:
            plan.port_assign[i] = shared
        else:
            plan.port_assign[i] = request(i, value)


def _plan_health_check(plan: _Plan, held: Optional[HeldValues]) -> None:
    """The healthCheckNodePort request of a LoadBalancer with ``externalTrafficPolicy: Local``."""
    svc = plan.svc
    if not _needs_health_check(svc):
        return
    value = svc.health_check_node_port or (held.health_check_node_port if held else None)
    is_held = value is not None and held is not None and held.holds_port(value)
    plan.hc_request = _Request("spec.healthCheckNodePort", value, is_held)


def _plan_service(svc: Service, held: Optional[HeldValues], configured: Sequence[str]) -> _Plan:
    """Everything one Service asks of the allocators."""
    plan = _Plan(svc)
    _plan_ips(plan, held, configured)
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
    svc_ips = [r.value or "" for r in plan.ip_requests]
    for req in plan.ip_requests:
        if req.value is None or req.held != held:
            continue
        try:
            pools.ips[req.family or ""].allocate(str(req.value))
            req.result = req.value
        except AllocatorError as err:
            hint = pools.hint if isinstance(err, NotInRangeError) else ""
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
    filled: list[str] = []
    if svc.type == "ExternalName":
        return ServiceAllocation(
            svc.namespace, svc.name, node_ports=tuple(p.node_port for p in svc.ports), ref=svc.ref
        )
    if plan.ip_requests:
        cluster_ips = tuple(str(r.result) for r in plan.ip_requests)
        given = [ip for ip in svc.cluster_ips if ip]
        filled += [r.field for i, r in enumerate(plan.ip_requests) if i >= len(given)]
    else:
        cluster_ips = svc.cluster_ips
    node_ports: list[Optional[int]] = []
    for i, port in enumerate(svc.ports):
        req = plan.port_assign[i] if _needs_node_ports(svc) else None
        value = int(req.result) if req is not None and req.result is not None else port.node_port
        if port.node_port is None and value is not None:
            filled.append(f"spec.ports[{i}].nodePort")
        node_ports.append(value)
    hc = svc.health_check_node_port
    if plan.hc_request is not None and plan.hc_request.result is not None:
        hc = int(plan.hc_request.result)
        if svc.health_check_node_port is None:
            filled.append("spec.healthCheckNodePort")
    return ServiceAllocation(
        namespace=svc.namespace,
        name=svc.name,
        cluster_ips=cluster_ips,
        ip_families=plan.families,
        ip_family_policy=plan.policy,
        node_ports=tuple(node_ports),
        health_check_node_port=hc,
        filled=tuple(filled),
        ref=svc.ref,
    )


def _filled_service(svc: Service, alloc: ServiceAllocation) -> Service:
    """``svc`` with the allocated fields written in."""
    if svc.type == "ExternalName":
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


def _held_of(svc: Service, alloc: ServiceAllocation) -> HeldValues:
    """What the state should remember for one Service."""
    ips = tuple(ip for ip in alloc.cluster_ips if ip and ip != "None")
    node_ports = tuple(
        HeldNodePort(port.name, port.port, port.protocol, value)
        for port, value in zip(svc.ports, alloc.node_ports)
        if value is not None and _needs_node_ports(svc)
    )
    hc = alloc.health_check_node_port if _needs_health_check(svc) else None
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
    for held_pass in (True, False):
        for plan in plans:
            _register(plan, pools, held=held_pass)
    for plan in plans:
        if not plan.failed:
            _allocate_dynamic(plan, pools)
    position = {id(svc): i for i, svc in enumerate(cluster.services)}
    in_input_order = sorted(duplicates + plans, key=lambda plan: position[id(plan.svc)])
    problems = [p for plan in in_input_order for p in plan.problems]
    if problems:
        raise InputError(problems)
    return _result(cluster, plans, port_range, networks, state)


def _plans(
    services: Sequence[Service], holdings: Mapping[str, HeldValues], configured: Sequence[str]
) -> tuple[list[_Plan], list[_Plan]]:
    """Plans for the Services in ``namespace/name`` order, and problem-only plans for duplicates."""
    plans: list[_Plan] = []
    duplicates: list[_Plan] = []
    seen: set[tuple[str, str]] = set()
    for svc in sorted(services, key=lambda s: (s.namespace, s.name)):
        if svc.key in seen:
            duplicate = _Plan(svc)
            duplicate.problem("metadata.name", f'services "{svc.name}" already exists')
            duplicates.append(duplicate)
            continue
        seen.add(svc.key)
        plans.append(_plan_service(svc, holdings.get(f"{svc.namespace}/{svc.name}"), configured))
    return plans, duplicates


def _result(
    cluster: Cluster,
    plans: Sequence[_Plan],
    port_range: PortRange,
    networks: Sequence[IPNetwork],
    state: Optional[AllocationState],
) -> AllocationResult:
    """Assemble the filled-in cluster, the per-Service records and the new state."""
    records = {f"{p.svc.namespace}/{p.svc.name}": _allocation_of(p) for p in plans}
    services = tuple(_filled_service(svc, records[f"{svc.namespace}/{svc.name}"]) for svc in cluster.services)
    held = {}
    for plan in plans:
        key = f"{plan.svc.namespace}/{plan.svc.name}"
        values = _held_of(plan.svc, records[key])
        if values != HeldValues():
            held[key] = values
    new_state = AllocationState(
        str(port_range), tuple(str(n) for n in networks), held, state.path if state is not None else None
    )
    return AllocationResult(replace(cluster, services=services), records, new_state)


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
