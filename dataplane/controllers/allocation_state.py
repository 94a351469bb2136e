"""What ``dataplane allocate`` remembers between runs: the values each Service holds
(:class:`HeldValues`) in an :class:`AllocationState` for the ranges it was made with, read from
and written to a JSON state file, and the range arguments (``--service-node-port-range``,
``--service-cluster-ip-range``) it is checked against. :mod:`.allocation` uses and re-exports it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from ..errors import UsageError
from ..ipaddrs import IPNetwork, parse_cidr, parse_ip
from .portallocator import PortRange

DEFAULT_SERVICE_CIDRS: tuple[str, ...] = ("10.96.0.0/12",)
DEFAULT_NODE_PORT_RANGE = "30000-32767"

STATE_KIND = "AllocationState"
STATE_VERSION = 1

OTHER_FAMILY = {"IPv4": "IPv6", "IPv6": "IPv4"}


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
    if any(f not in OTHER_FAMILY for f in families):
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
