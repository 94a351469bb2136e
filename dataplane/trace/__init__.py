"""Offline packet tracer: what the emitted rules do to the first packet of a new connection.

The tracer *interprets the rules text* (``iptables-restore`` input or an ``nft -f``
script, the subset this project emits plus what ``iptables-save`` / ``nft list``
print for it); it never looks at the plan, so it catches a backend that renders a
plan wrongly. No privileges are needed.

Model (for one NEW packet, like upstream kube-proxy's test tracers, but following
netfilter's hook order):

* **Origin.** A packet whose source is a local address (a node IP or loopback), or
  one traced with ``from_node=True``, is sent by the node itself: it crosses the
  ``output`` hook, then ``postrouting``, and when its (possibly DNATed) destination
  is local it loops back through ``prerouting`` (NAT is not consulted again) and
  ``input``. Any other packet comes from another host (or a pod behind a veth):
  ``prerouting``, then routing decides ``input`` (local destination) or
  ``forward`` + ``postrouting``.
* **Hook order.** Within a hook, base chains run by priority (iptables tables by
  their fixed priorities: raw, mangle, nat, filter, security). An ``accept``
  only ends its own base chain; ``drop``/``reject`` end the packet. Chains that run
  after a DNAT see the new destination.
* **First packet.** ``ct state``/``--ctstate`` is NEW (plus the ``DNAT`` status once
  the destination was translated); ``RELATED``/``ESTABLISHED``/``INVALID`` are false.
  Affinity lookups (``-m recent --rcheck``, ``ip saddr @affinity-…``) miss, and the
  path notes which endpoint a returning client may stick to.
* **Load balancing.** ``-m statistic --mode random`` rules and ``numgen random mod N``
  maps split the trace into branches; an endpoint's probability is the product of
  the probabilities along its branch.
* **Marks and SNAT.** The packet mark is tracked bit by bit (``MARK``,
  ``meta mark set``), and ``postrouting`` really runs, so ``masquerade`` is true
  only when a MASQUERADE rule is reached.

Verdicts: ``dnat`` (sent to ``endpoints``), ``drop``, ``reject``, ``accept`` (one of
our rules explicitly accepted an untranslated packet, e.g. a health-check node
port), ``none`` (no rule decided anything). When branches end differently (which
the project's layouts never do), the verdict is the first of dnat, drop, reject,
accept, none that some branch reached, and the path says so.
"""
from __future__ import annotations

import ipaddress
import json
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import lru_cache
from typing import Callable, Iterator, Literal, Optional, Protocol, Sequence, Union

from ..errors import DataplaneError

__all__ = ["Packet", "TraceResult", "TraceError", "trace", "Verdict"]

Verdict = Literal["dnat", "drop", "reject", "accept", "none"]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

PROTOCOLS = ("tcp", "udp", "sctp")
PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58, "ipv6-icmp": 58}
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_VERDICT_ORDER: tuple[Verdict, ...] = ("dnat", "drop", "reject", "accept", "none")
MAX_LABELS = 4  # branches named on a line shared by several identical branches


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
class TraceResult:
    """What the rules do to a packet.

    ``endpoints``: every ``ip:port`` (``[ip6]:port``) the packet may be DNATed to,
    with its probability. ``path``: the chains, rules and map entries hit, as
    indented lines.
    """

    verdict: Verdict
    endpoints: tuple[tuple[str, float], ...]
    masquerade: bool
    path: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        """The JSON object ``dataplane trace --json`` prints."""
        return {
            "verdict": self.verdict,
            "endpoints": [address for address, _ in self.endpoints],
            "masquerade": self.masquerade,
            "path": list(self.path),
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
        return "\n".join([*self.path, self.verdict_line()]) + "\n"


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
    """The trace path: indented lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, text: str) -> None:
        self.lines.append("  " * self.depth + text)

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


class Engine(Protocol):
    """A parsed ruleset that can run the base chains of a hook."""

    def base_chains(self, hook: str, version: int, ctx: Context) -> list[BaseChain]:
        """The base chains of ``hook`` that see packets of IP ``version``, in priority order."""
        ...


@dataclass
class _Walk:
    """One trace in progress."""

    engine: Engine
    ctx: Context
    log: Log = field(default_factory=Log)

    def hook(self, name: str, flows: list[Flow], *, nat: bool = True) -> list[Flow]:
        """Run every base chain of a hook on the live flows; terminated flows pass through unchanged."""
        for version in sorted({f.version for f in flows}):
            for chain in self.engine.base_chains(name, version, self.ctx):
                if chain.nat and not nat:
                    continue
                live = [f for f in flows if f.version == version and not f.verdict]
                rest = [f for f in flows if f.version != version or f.verdict]
                flows = rest + self._base(chain, live)
        return flows

    def _base(self, chain: BaseChain, flows: list[Flow]) -> list[Flow]:
        """Run one base chain for each flow; branches whose paths are identical are shown once."""
        out: list[Flow] = []
        shown: dict[tuple[str, ...], list[Flow]] = {}
        for flow in flows:
            sub = Log()
            sub.depth = self.log.depth + 1
            out += self._run_base(chain, flow, sub)
            shown.setdefault(tuple(sub.lines), []).append(flow)
        for lines, group in shown.items():
            branches = "; ".join(f.label() for f in group[:MAX_LABELS])
            if len(group) > MAX_LABELS:
                branches = f"{len(group)} branches: {branches}; …"
            self.log(chain.label + (f"  [branch {branches}]" if len(flows) > 1 else ""))
            self.log.lines += lines
        return out

    def _run_base(self, chain: BaseChain, flow: Flow, log: Log) -> list[Flow]:
        out = []
        for f, ctl in chain.run(flow, log):
            if ctl is Ctl.DROP or ctl is Ctl.REJECT:
                f = replace(f, verdict=ctl.value)
            elif ctl is not Ctl.ACCEPT and chain.policy == "drop":
                log(f"policy DROP of {chain.label}")
                f = replace(f, verdict="drop")
            out.append(f)
        return out

    def route(self, flows: list[Flow], here: str, elsewhere: str) -> tuple[list[Flow], list[Flow]]:
        """Split live flows into (local destination, elsewhere), logging the routing decision."""
        live = [f for f in flows if not f.verdict]
        local = [f for f in live if self.ctx.is_local(f.dst)]
        remote = [f for f in live if not self.ctx.is_local(f.dst)]
        for group, what, hook in ((local, "local", here), (remote, "not local", elsewhere)):
            if group:
                addresses = ", ".join(dict.fromkeys(str(f.dst) for f in group))
                self.log(f"routing: {addresses} {'is' if ',' not in addresses else 'are'} {what} -> {hook}")
        return local, remote


def _walk_from_elsewhere(walk: _Walk, flow: Flow) -> list[Flow]:
    """prerouting, routing, then input or forward + postrouting."""
    walk.log("hook prerouting")
    with walk.log.indent():
        flows = walk.hook("prerouting", [flow])
    done = [f for f in flows if f.verdict]
    local, remote = walk.route(flows, "input", "forward")
    if local:
        walk.log("hook input")
        with walk.log.indent():
            done += walk.hook("input", local)
    if remote:
        walk.log("hook forward")
        with walk.log.indent():
            forwarded = walk.hook("forward", remote)
        done += [f for f in forwarded if f.verdict]
        live = [f for f in forwarded if not f.verdict]
        if live:
            walk.log("hook postrouting")
            with walk.log.indent():
                done += walk.hook("postrouting", live)
    return done


def _walk_from_node(walk: _Walk, flow: Flow) -> list[Flow]:
    """output, postrouting, and for a local destination the loopback prerouting (no NAT) + input."""
    walk.log("hook output")
    with walk.log.indent():
        flows = walk.hook("output", [flow])
    done = [f for f in flows if f.verdict]
    live = [f for f in flows if not f.verdict]
    if live:
        walk.log("hook postrouting")
        with walk.log.indent():
            live = walk.hook("postrouting", live)
        done += [f for f in live if f.verdict]
        local, remote = walk.route(live, "loopback", "sent out")
        done += remote
        if local:
            looped = [replace(f, iif="lo") for f in local]
            walk.log("loopback: hook prerouting (NAT already decided)")
            with walk.log.indent():
                looped = walk.hook("prerouting", looped, nat=False)
            done += [f for f in looped if f.verdict]
            live = [f for f in looped if not f.verdict]
            if live:
                walk.log("hook input")
                with walk.log.indent():
                    done += walk.hook("input", live)
    return done


def _outcome(flow: Flow) -> Verdict:
    if flow.verdict:
        return flow.verdict
    if flow.dnat:
        return "dnat"
    return "accept" if flow.accepted else "none"


def _summarize(flows: list[Flow], log: Log) -> tuple[Verdict, tuple[tuple[str, float], ...], bool]:
    """The verdict, the endpoints with their probabilities and masquerade, from every branch."""
    kinds = {_outcome(f) for f in flows}
    verdict = next(v for v in _VERDICT_ORDER if v in kinds)
    if len(flows) > 1:
        log("outcome per branch")
        with log.indent():
            for f in flows:
                masq = ", masquerade" if f.masquerade else ""
                log(f"p={f.prob:.4f}: {_outcome(f).upper()}{' to ' + f.dnat if f.dnat and not f.verdict else ''}{masq}")
    if len(kinds) > 1:
        log(f"note: branches end differently ({', '.join(sorted(kinds))}); reporting {verdict}")
    chosen = [f for f in flows if _outcome(f) == verdict]
    endpoints: dict[str, float] = {}
    if verdict == "dnat":
        for f in chosen:
            assert f.dnat is not None
            endpoints[f.dnat] = endpoints.get(f.dnat, 0.0) + f.prob
    masquerade = verdict not in ("drop", "reject") and any(f.masquerade for f in chosen)
    return verdict, tuple(endpoints.items()), masquerade


@lru_cache(maxsize=32)
def parse_rules(rules_text: str, backend: str) -> Engine:
    """Parse a rules file for ``backend`` ("iptables" or "nftables"); raises TraceError naming the line."""
    if backend == "iptables":
        from . import iptables

        return iptables.parse(rules_text)
    if backend == "nftables":
        from . import nftables

        return nftables.parse(rules_text)
    raise TraceError(f"unknown backend {backend!r} (iptables or nftables)")


def local_context(local_ips: Sequence[str]) -> Context:
    """The node's local addresses (loopback is always local)."""
    return Context(frozenset(parse_ip(ip, "node IP") for ip in local_ips))


def trace(rules_text: str, backend: str, packet: Packet, *, local_ips: Sequence[str]) -> TraceResult:
    """Interpret ``rules_text`` (``iptables-restore`` input or an ``nft -f`` script) for ``packet``.

    ``local_ips``: the node's addresses (loopback is added); they decide
    ``addrtype LOCAL`` / ``fib … type local`` and whether the packet is sent by the node.
    """
    engine = parse_rules(rules_text, backend)
    ctx = local_context(local_ips)
    src, dst = parse_ip(packet.src), parse_ip(packet.dst)
    from_node = packet.from_node or ctx.is_local(src)
    iif = "" if from_node else (packet.in_interface or "")
    flow = Flow(src=src, dst=dst, dport=packet.dport, proto=packet.proto, iif=iif)
    walk = _Walk(engine, ctx)
    origin = "sent by the node" if from_node else "from another host" + (f" on {iif}" if iif else "")
    walk.log(f"packet {packet.proto} {src} -> {endpoint_text(dst, packet.dport)} ({packet.family}), {origin}")
    flows = _walk_from_node(walk, flow) if from_node else _walk_from_elsewhere(walk, flow)
    verdict, endpoints, masquerade = _summarize(flows, walk.log)
    return TraceResult(verdict=verdict, endpoints=endpoints, masquerade=masquerade, path=tuple(walk.log.lines))
