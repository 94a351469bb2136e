"""What the tracer's nft parser builds: tables, chains, sets and maps, rules as expressions.

:mod:`.nft_parser` builds these from an ``nft -f`` script; :mod:`.nftables` runs them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from .model import TraceError

FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
FAMILY_VERSIONS = {"ip": (4,), "ip6": (6,), "inet": (4, 6)}
NAMED_PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
VERDICT_WORDS = ("accept", "drop", "return", "continue")
_SERVICES = {"http": 80, "https": 443, "domain": 53, "ssh": 22, "ntp": 123, "smtp": 25}


@dataclass(frozen=True, slots=True)
class Selector:
    """Something a rule reads from the packet (``ip daddr``, ``th dport``, ``fib saddr type``…)."""

    kind: str  # saddr daddr l4proto dport mark iifname oifname fib-saddr fib-daddr ct-state nfproto numgen
    text: str
    version: Optional[int] = None  # ip / ip6 selectors only see their family
    proto: Optional[str] = None  # tcp/udp/sctp dport imply that protocol
    modulus: int = 0  # numgen


@dataclass(frozen=True, slots=True)
class Verdict:
    """A verdict statement, or the verdict of a map element."""

    kind: str  # accept drop return continue jump goto
    chain: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.kind} {self.chain}" if self.chain else self.kind


@dataclass(frozen=True, slots=True)
class Element:
    """A set or map element: key components (literal text) and, for a verdict map, the verdict."""

    key: tuple[str, ...]
    verdict: Optional[Verdict]
    line: int


@dataclass(frozen=True, slots=True)
class Compare:
    """``SEL [& mask] [==|!=] value | { values }``."""

    sels: tuple[Selector, ...]
    negate: bool
    values: tuple[tuple[str, ...], ...]
    mask: Optional[int] = None


@dataclass(frozen=True, slots=True)
class Lookup:
    """``SEL [!=] @set``."""

    sels: tuple[Selector, ...]
    negate: bool
    set_name: str


@dataclass(frozen=True, slots=True)
class Vmap:
    """``SEL vmap @map`` or ``SEL vmap { key : verdict, … }``."""

    sels: tuple[Selector, ...]
    map_name: Optional[str]
    inline: tuple[Element, ...]


@dataclass(frozen=True, slots=True)
class SetMark:
    """``meta mark set …``."""

    op: str  # "set" | "or" | "and" | "xor"
    value: int


@dataclass(frozen=True, slots=True)
class Nat:
    """``dnat to …``, ``snat to …`` or ``masquerade``."""

    kind: str  # "dnat" | "snat" | "masquerade"
    target: Optional[str]


@dataclass(frozen=True, slots=True)
class Reject:
    """``reject [with …]``."""

    how: str


@dataclass(frozen=True, slots=True)
class Note:
    """A statement with no effect on the trace (counter, log, set update), shown in the path."""

    text: str
    show: bool


Expr = Union[Compare, Lookup, Vmap, SetMark, Nat, Reject, Note, Verdict]


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: its line and text (for the path) and its expressions, left to right."""

    line: int
    text: str
    exprs: tuple[Expr, ...]


@dataclass
class NftSet:
    """A named set or map."""

    name: str
    is_map: bool
    line: int
    flags: set[str] = field(default_factory=set)
    elements: list[Element] = field(default_factory=list)
    # the evaluator's index, per selector kinds: (exact key -> position of its first element,
    # positions of the others); built on a set's first lookup by those kinds
    lookup_index: dict[tuple[str, ...], tuple[dict[tuple[object, ...], int], list[int]]] = field(
        default_factory=dict, repr=False, compare=False)

    @property
    def dynamic(self) -> bool:
        """Whether elements are added at run time (``dynamic`` or ``timeout``), like the affinity sets."""
        return bool(self.flags & {"dynamic", "timeout"})


@dataclass
class NftChain:
    """A chain; a base chain has a type, hook, priority and policy."""

    name: str
    line: int
    ctype: Optional[str] = None
    hook: Optional[str] = None
    priority: int = 0
    policy: str = "accept"
    rules: list[Rule] = field(default_factory=list)


@dataclass
class NftTable:
    """A table: its chains and its named sets and maps."""

    family: str
    name: str
    chains: dict[str, NftChain] = field(default_factory=dict)
    sets: dict[str, NftSet] = field(default_factory=dict)


def port_value(text: str) -> int:
    """A port number or a service name (``http``, ``domain``…) as a number."""
    if text.isdigit():
        return int(text)
    if text in _SERVICES:
        return _SERVICES[text]
    raise TraceError(f"unknown port or service name {text!r}")
