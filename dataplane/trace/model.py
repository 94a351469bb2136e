"""The tracer's shared types: the packet and the result, the flow one branch follows, the engine protocol.

:mod:`dataplane.trace` walks a packet through the hooks; :mod:`.iptables` and
:mod:`.nftables` parse and run one backend's rules; all of them meet here.
"""
from __future__ import annotations

import ipaddress
import json
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum
from functools import lru_cache
from typing import Callable, Iterator, Literal, Optional, Protocol, Union

from ..errors import DataplaneError

Verdict = Literal["dnat", "drop", "reject", "accept", "none"]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

PROTOCOLS = ("tcp", "udp", "sctp")
PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58, "ipv6-icmp": 58}
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class TraceError(DataplaneError):
    """The rules text cannot be interpreted, or the packet is invalid."""


# ---------------------------------------------------------------- public types


@dataclass(frozen=True, slots=True)
class Packet:
    """The first packet of a new connection.

    ``family`` ("ipv4"/"ipv6") is inferred from the addresses when not given.
    ``from_node`` forces the node-originated path even when ``src`` is not one
    of the node's addresses (a source that is local implies it anyway).
    ``in_interface`` is the interface a packet from elsewhere arrives on
    (matched by ``-i``/``iifname``); None means "not known", which matches no
    interface name.
    """

    src: str
    dst: str
    dport: int
    proto: str = "tcp"
    from_node: bool = False
    in_interface: Optional[str] = None
    family: Optional[str] = None

    def __post_init__(self) -> None:
        src, dst = parse_ip(self.src, "source"), parse_ip(self.dst, "destination")
        if src.version != dst.version:
            raise TraceError(f"source {src} and destination {dst} are of different IP families")
        family = "ipv6" if dst.version == 6 else "ipv4"
        if self.family is not None and self.family != family:
            raise TraceError(f"packet family {self.family} does not match its addresses ({family})")
        proto = self.proto.lower()
        if proto not in PROTOCOLS:
            raise TraceError(f"unsupported protocol {self.proto!r} (one of {', '.join(PROTOCOLS)})")
        if not isinstance(self.dport, int) or not 1 <= self.dport <= 65535:
            raise TraceError(f"destination port {self.dport!r} must be between 1 and 65535")
        object.__setattr__(self, "src", str(src))
        object.__setattr__(self, "dst", str(dst))
        object.__setattr__(self, "proto", proto)
        object.__setattr__(self, "family", family)


@dataclass(frozen=True, slots=True)
class TraceStep:
    """One step of a trace's path: a hook, a base chain, a rule that matched, what it did.

    ``table`` and ``chain`` name the chain the step is in (empty outside any chain: hooks,
    routing, the outcome), ``rule`` and ``line`` the rule it belongs to (its text as the
    rules file has it, and its 1-based line there; empty and 0 when none). ``verdict`` is
    set on a step that decides: accept, drop, reject, dnat, snat, masquerade, return, jump
    or goto. ``text`` and ``depth`` are the step's line and indentation in the text path
    (:meth:`render`).
    """

    text: str
    depth: int = 0
    table: str = ""
    chain: str = ""
    rule: str = ""
    line: int = 0
    verdict: str = ""

    def render(self) -> str:
        """The step as a line of the text path: ``text`` indented two spaces per level."""
        return "  " * self.depth + self.text


@dataclass(frozen=True, slots=True)
class TraceResult:
    """What the rules do to a packet.

    ``endpoints``: every ``ip:port`` (``[ip6]:port``) the packet may be DNATed to,
    with its probability. ``path``: the chains, rules and map entries hit, as
    :class:`TraceStep` s (:meth:`path_lines` renders them as indented lines).
    """

    verdict: Verdict
    endpoints: tuple[tuple[str, float], ...]
    masquerade: bool
    path: tuple[TraceStep, ...]

    def path_lines(self) -> tuple[str, ...]:
        """The path as indented text lines (what ``dataplane trace`` prints above the verdict)."""
        return tuple(step.render() for step in self.path)

    def to_dict(self) -> dict[str, object]:
        """The JSON object ``dataplane trace --json`` prints."""
        return {
            "verdict": self.verdict,
            "endpoints": [address for address, _ in self.endpoints],
            "masquerade": self.masquerade,
            "path": list(self.path_lines()),
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as one JSON object."""
        return json.dumps(self.to_dict(), indent=2)

    def verdict_line(self) -> str:
        """One line summing the verdict up."""
        if self.verdict == "dnat":
            targets = ", ".join(f"{a} (p={p:.4f})" for a, p in self.endpoints)
            head = f"DNAT to {targets}"
        elif self.verdict == "none":
            head = "untouched (no rule of ours decided anything)"
        else:
            head = self.verdict.upper()
        return f"verdict: {head}; masquerade: {'yes' if self.masquerade else 'no'}"

    def render(self) -> str:
        """Human output: the indented path, then the verdict line."""
        return "\n".join([*self.path_lines(), self.verdict_line()]) + "\n"


# ------------------------------------------------------------- address helpers


def parse_ip(text: str, what: str = "address") -> IPAddress:
    """An IP address, or a TraceError naming ``what`` was wrong."""
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise TraceError(f"invalid {what} {text!r}: not an IP address") from None


@lru_cache(maxsize=4096)
def address_spec(spec: str) -> tuple[int, int, int]:
    """``(version, first, last)`` of an address, CIDR, dotted-mask network or ``a-b`` range.

    Raises ValueError for anything else (callers turn it into a located TraceError).
    """
    spec = spec.strip()
    if "-" in spec and "/" not in spec:
        lo_text, hi_text = spec.split("-", 1)
        lo, hi = ipaddress.ip_address(lo_text), ipaddress.ip_address(hi_text)
        if lo.version != hi.version or int(lo) > int(hi):
            raise ValueError(spec)
        return lo.version, int(lo), int(hi)
    net = ipaddress.ip_network(spec, strict=False)
    return net.version, int(net.network_address), int(net.broadcast_address)


def address_matches(ip: IPAddress, spec: str) -> bool:
    """Whether ``ip`` is in the address/CIDR/range ``spec`` (another family never matches)."""
    version, lo, hi = address_spec(spec)
    return ip.version == version and lo <= int(ip) <= hi


def is_address_spec(spec: str) -> bool:
    """Whether ``spec`` parses as an address, CIDR or range."""
    try:
        address_spec(spec)
    except ValueError:
        return False
    return True


def endpoint_text(ip: IPAddress, port: int) -> str:
    """``ip:port``, with brackets around an IPv6 address (the DNAT target notation)."""
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def parse_nat_target(text: str, default_port: int) -> tuple[IPAddress, int]:
    """The address and port of a DNAT target ``ip[:port]`` / ``[ip6][:port]`` / ``ip6``."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port_number(rest[1:], text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port_number(port_text, text)
    if "-" in host:
        raise TraceError(f"NAT target {text!r}: address ranges are not supported")
    return parse_ip(host, "NAT target address"), port


def _port_number(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise TraceError(f"NAT target {whole!r}: invalid port {text!r} (port ranges are not supported)")
    return int(text)


def addr_types(ip: IPAddress, ctx: "Context") -> frozenset[str]:
    """The routing address types of ``ip`` on this node, lowercase (``local``, ``unicast``…)."""
    if ctx.is_local(ip):
        return frozenset({"local"})
    if ip.is_multicast:
        return frozenset({"multicast"})
    if ip.version == 4 and int(ip) == 0xFFFFFFFF:
        return frozenset({"broadcast"})
    if ip.is_unspecified:
        return frozenset({"unspec"})
    return frozenset({"unicast"})


# -------------------------------------------------------------- trace machinery


@dataclass(frozen=True, slots=True)
class Context:
    """What the tracer knows about the node: its local addresses."""

    local_ips: frozenset[IPAddress]

    def is_local(self, ip: IPAddress) -> bool:
        """A node address or a loopback address."""
        return ip in self.local_ips or any(ip in net for net in _LOOPBACK if net.version == ip.version)


@dataclass(frozen=True, slots=True)
class Flow:
    """The packet as one branch of the trace sees it."""

    src: IPAddress
    dst: IPAddress
    dport: int
    proto: str
    iif: str  # "" when there is no input interface (or it is not known)
    prob: float = 1.0
    mark: int = 0
    dnat: Optional[str] = None  # the endpoint after DNAT
    masquerade: bool = False
    accepted: bool = False  # a filter rule of ours accepted it explicitly
    verdict: Optional[Literal["drop", "reject"]] = None

    @property
    def version(self) -> int:
        return self.dst.version

    @property
    def ct_states(self) -> frozenset[str]:
        """conntrack states (and NAT status) of a first packet, lowercase."""
        return frozenset({"new", "dnat"}) if self.dnat else frozenset({"new"})

    def label(self) -> str:
        """How the path names this branch."""
        where = self.dnat or endpoint_text(self.dst, self.dport)
        return f"{where}, p={self.prob:.4f}"

    def after_dnat(self, ip: IPAddress, port: int) -> "Flow":
        return replace(self, dst=ip, dport=port, dnat=endpoint_text(ip, port))


class Ctl(Enum):
    """How evaluation goes on after a rule or chain."""

    NEXT = "next"  # the rule did not decide: go on with the next rule
    END = "end"  # fell off the end of a chain
    RETURN = "return"  # returned from a chain
    ACCEPT = "accept"  # ends the base chain (DNAT and MASQUERADE too)
    DROP = "drop"
    REJECT = "reject"


Outcome = tuple[Flow, Ctl]


class Log:
    """The trace path being recorded: :class:`TraceStep` s.

    A step's table, chain and rule come from the steps it is indented under: a step that
    enters a chain (``enter``) puts the deeper steps in that chain, a rule step (``line``)
    gives them its rule. ``table`` and ``chain``: the chain of steps under no such step.
    """

    def __init__(self, depth: int = 0, table: str = "", chain: str = "") -> None:
        self.steps: list[TraceStep] = []
        self.depth = depth
        self._outer = (table, chain, "", 0)
        self._scopes: list[tuple[int, tuple[str, str, str, int]]] = []  # (depth, (table, chain, rule, line))

    def __call__(self, text: str, *, rule: str = "", line: int = 0, verdict: str = "",
                 enter: Optional[tuple[str, str]] = None, table: str = "", chain: str = "") -> None:
        """Record a step. ``rule``/``line``: the step is (about) that rule; ``verdict``: it decides
        (see :class:`TraceStep`); ``enter``: the (table, chain) the steps indented under it run
        in; ``table``/``chain``: the step's own chain, when not the one it is indented under."""
        while self._scopes and self._scopes[-1][0] >= self.depth:
            self._scopes.pop()
        scope = self._scopes[-1][1] if self._scopes else self._outer
        if line:
            scope = (scope[0], scope[1], rule, line)
        here = (table, chain) if table else scope[:2]
        self.steps.append(TraceStep(text, self.depth, here[0], here[1], scope[2], scope[3], verdict))
        if enter is not None:
            self._scopes.append((self.depth, (enter[0], enter[1], "", 0)))
        elif line:
            self._scopes.append((self.depth, scope))

    @contextmanager
    def indent(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


@dataclass(frozen=True, slots=True)
class BaseChain:
    """A chain attached to a hook: label for the path, whether it is a NAT chain, its policy, how to run it."""

    label: str
    nat: bool
    policy: Literal["accept", "drop"]
    run: Callable[[Flow, Log], list[Outcome]]
    table: str = ""  # the table and chain, as the path's steps name them (TraceStep)
    chain: str = ""


class Engine(Protocol):
    """A parsed ruleset that can run the base chains of a hook."""

    def base_chains(self, hook: str, version: int, ctx: Context) -> list[BaseChain]:
        """The base chains of ``hook`` that see packets of IP ``version``, in priority order."""
        ...
