"""Partial nftables updates sent as one nf_tables netlink batch, without ``nft``.

``nft -f`` (1.0.6) fetches every chain of every table into its cache before it adds a
rule or a map element: at 10k Services (120k chains) that listing alone costs about half
a second, whatever the update. A partial update only names its own chains, sets and map
elements, so it needs no cache: :func:`compile_update` translates the text our nft
backend renders for a partial sync (``add``/``flush``/``delete chain``, ``delete set``,
``add``/``delete element`` and a ``table ... { chain ... }`` block) into nf_tables
messages, and :func:`send` commits them as one batch: the kernel applies all of it or,
on any error, nothing.

Only the statements the backend's templates write are understood (payload matches on
addresses and ports, ``meta l4proto``, ``iifname``, ``fib saddr type local``, ``numgen``,
``@set`` lookups, ``update @set``, ``dnat to``, verdicts, comments; set elements with
address / protocol / port keys and verdict data). Anything else raises
:class:`Unsupported`, and the caller loads the text with ``nft -f`` instead; the messages
encode exactly what nft 1.0.6 sends for the same text (checked against ``nft
--debug=netlink`` and by the netns tests comparing both kernels' tables).
"""
from __future__ import annotations

import errno
import functools
import ipaddress
import os
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterator, NoReturn, Optional

from ..errors import ApplyError

__all__ = ["Unsupported", "Batch", "compile_update", "send", "MAX_BATCH_BYTES"]

#: Larger batches go through ``nft -f`` (its cache costs little next to such an update,
#: and a netlink message must fit in the socket's send buffer). At 10k Services an update of
#: 1,000 changed Services is about 5 MB of messages.
MAX_BATCH_BYTES = 32 << 20

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE, NLM_F_APPEND = 0x1, 0x4, 0x400, 0x800
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000

(MSG_NEWCHAIN, MSG_DELCHAIN, MSG_NEWRULE, MSG_DELRULE, MSG_NEWSET, MSG_GETSET, MSG_DELSET,
 MSG_NEWSETELEM, MSG_DELSETELEM, MSG_GETGEN) = 3, 5, 6, 8, 9, 10, 11, 12, 14, 16

_FAMILIES = {"ip": socket.AF_INET, "ip6": socket.AF_INET6}  # NFPROTO_IPV4 = 2, NFPROTO_IPV6 = 10

# verdict codes
_VERDICTS = {"accept": 1, "drop": 0, "return": -5, "continue": -1}
_NFT_JUMP, _NFT_GOTO = -3, -4
_NFT_DATA_VERDICT = 0xFFFFFF00
_SET_INTERVAL, _SET_MAP, _SET_TIMEOUT, _SET_EVAL = 0x4, 0x8, 0x10, 0x20

_PROTOS = {"tcp": 6, "udp": 17, "sctp": 132}
_META_IIFNAME, _META_L4PROTO = 6, 16
_BASE_NETWORK, _BASE_TRANSPORT = 1, 2
_REG_VERDICT, _REG_1, _REG_2 = 0, 1, 2
_CMP_EQ, _CMP_NEQ = 0, 1
_IFNAMSIZ = 16
_ADDR_OFFSETS = {("ip", "saddr"): (12, 4), ("ip", "daddr"): (16, 4),
                 ("ip6", "saddr"): (8, 16), ("ip6", "daddr"): (24, 16)}
_PORT_OFFSETS = {"sport": 0, "dport": 2}
_KEY_TYPES = {"ipv4_addr": (7, 4), "ipv6_addr": (8, 16)}
_BYTEORDER_BIG_ENDIAN = 2


class Unsupported(Exception):
    """The update holds something this module does not translate; load it with ``nft -f``."""


# --------------------------------------------------------------------------- netlink encoding


def _attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _nest(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


@functools.lru_cache(maxsize=4096)
def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack(">I", value))


def _s32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack(">i", value))


@functools.lru_cache(maxsize=4096)
def _str(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _value(kind: int, data: bytes) -> bytes:
    """An ``NFTA_*_DATA``-style attribute holding ``NFTA_DATA_VALUE``."""
    return _nest(kind, _attr(1, data))


@functools.lru_cache(maxsize=4096)
def _verdict(kind: int, code: int, chain: Optional[str] = None) -> bytes:
    """An attribute holding ``NFTA_DATA_VERDICT`` (code, and chain for jump/goto)."""
    inner = _s32(1, code) + (_str(2, chain) if chain is not None else b"")
    return _nest(kind, _nest(2, inner))


def _udata_comment(text: str) -> bytes:
    """nftnl user data holding a comment (type 0: rule / element comment), NUL-terminated."""
    raw = text.encode() + b"\0"
    if len(raw) > 128:
        raise Unsupported("comment longer than nft allows")
    return bytes((0, len(raw))) + raw


def _message(msg_type: int, family: int, flags: int, seq: int, attrs: bytes, res_id: int = 0) -> bytes:
    """One nfnetlink message (netlink header + nfgenmsg + attributes)."""
    body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + attrs
    return struct.pack("=IHHII", 16 + len(body), msg_type, flags, seq, 0) + body


def _expr(name: str, *attrs: bytes) -> bytes:
    """One rule expression (``NFTA_LIST_ELEM`` holding name and data)."""
    return _nest(1, _str(1, name), _nest(2, *attrs))


@functools.lru_cache(maxsize=4096)
def _payload(base: int, offset: int, length: int) -> bytes:
    return _expr("payload", _u32(1, _REG_1), _u32(2, base), _u32(3, offset), _u32(4, length))


@functools.lru_cache(maxsize=4096)
def _cmp(op: int, data: bytes) -> bytes:
    return _expr("cmp", _u32(1, _REG_1), _u32(2, op), _value(3, data))


@functools.lru_cache(maxsize=4096)
def _meta(key: int) -> bytes:
    return _expr("meta", _u32(1, _REG_1), _u32(2, key))


# --------------------------------------------------------------------------- the update text


_TOKEN = re.compile(r'"[^"]*"|\S+')
_HEAD = re.compile(r"^(add|flush|delete) (chain|set|element) (ip6?) (\S+) (\S+)(?: (.*))?$")
_BLOCK = re.compile(r"^table (ip6?) (\S+) \{$")


@dataclass
class Batch:
    """The messages of one transaction and, per message, the line of the update it came from."""

    family: str  # "ip" / "ip6"
    table: str
    messages: list[tuple[int, int, bytes, str]] = field(default_factory=list)  # (type, flags, attrs, line)
    sets: set[str] = field(default_factory=set)  # sets whose elements are added or deleted
    created_sets: set[str] = field(default_factory=set)
    added_chains: set[str] = field(default_factory=set)  # by an ``add chain`` line, not deleted since
    keys: dict[str, list[int]] = field(default_factory=dict)  # set -> key lengths used

    def add(self, msg_type: int, flags: int, attrs: bytes, line: str) -> None:
        self.messages.append((msg_type, flags, attrs, line))

    def size(self) -> int:
        return sum(36 + len(a) for _, _, a, _ in self.messages) + 40


def compile_update(text: str) -> Batch:
    """The nf_tables batch equivalent to the partial-update script ``text`` (one table).

    Pure: no I/O. Raises :class:`Unsupported` for anything outside the statements the nft
    backend writes into a partial update (the caller then uses ``nft -f``)."""
    batch: Optional[Batch] = None
    lines = iter(text.splitlines())
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _BLOCK.match(line)
        if m:
            batch = _table(batch, m.group(1), m.group(2))
            _block(batch, lines)
            continue
        m = _HEAD.match(line)
        if not m:
            raise Unsupported(f"statement not translated: {line[:80]}")
        op, kind, family, table, name, rest = m.groups()
        batch = _table(batch, family, table)
        if kind == "chain" and rest is None:
            _chain_op(batch, op, name, line)
        elif kind == "set" and op == "delete" and rest is None:
            batch.add(MSG_DELSET, 0, _str(1, table) + _str(2, name), line)
        elif kind == "element" and op in ("add", "delete") and rest is not None:
            _elements(batch, op, name, rest, line)
        else:
            raise Unsupported(f"statement not translated: {line[:80]}")
    if batch is None:
        raise Unsupported("empty update")
    return batch


def _table(batch: Optional[Batch], family: str, table: str) -> Batch:
    if batch is None:
        return Batch(family, table)
    if (batch.family, batch.table) != (family, table):
        raise Unsupported("more than one table")
    return batch


def _chain_op(batch: Batch, op: str, name: str, line: str) -> None:
    ident = _str(1, batch.table) + _str(3, name)
    if op == "add":
        batch.add(MSG_NEWCHAIN, NLM_F_CREATE, ident, line)
        batch.added_chains.add(name)
    elif op == "flush":
        batch.add(MSG_DELRULE, 0, _str(1, batch.table) + _str(2, name), line)
    else:
        batch.add(MSG_DELCHAIN, 0, ident, line)
        batch.added_chains.discard(name)


def _block(batch: Batch, lines: Iterator[str]) -> None:
    """``table F T { chain X { rules } set S { ... } }``: in nft's order, the chains are
    added (existing ones keep their rules), then the sets created, then each chain's rules
    appended (so that the kernel numbers the objects as it does for ``nft -f``). A chain an
    ``add chain`` line of the same batch already added is not added again: nft sends that
    message, but for an existing chain it changes nothing (and numbers nothing)."""
    chains: list[tuple[str, str, list[str]]] = []
    sets: list[tuple[str, str, list[str]]] = []
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line == "}":
            break
        m = re.match(r"^(chain|set) (\S+) \{$", line)
        if not m:
            raise Unsupported(f"table block statement not translated: {line[:80]}")
        kind, name = m.groups()
        body = []
        for inner in lines:
            inner = inner.strip()
            if inner == "}":
                break
            if inner:
                body.append(inner)
        else:
            raise Unsupported("unterminated block")
        (chains if kind == "chain" else sets).append((name, line, body))
    else:
        raise Unsupported("unterminated table block")
    for name, line, _ in chains:
        if name not in batch.added_chains:
            batch.add(MSG_NEWCHAIN, NLM_F_CREATE, _str(1, batch.table) + _str(3, name), line)
    for name, line, body in sets:
        batch.add(MSG_NEWSET, NLM_F_CREATE, _set(batch, name, body), line)
        batch.created_sets.add(name)
    for name, _, body in chains:
        for rule in body:
            batch.add(MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, _rule(batch, name, rule), rule)


def _set(batch: Batch, name: str, body: list[str]) -> bytes:
    """A named set of addresses as the backend declares them (``type``, ``flags
    dynamic,timeout``, ``timeout Ns``), encoded as nft 1.0.6 does."""
    key: Optional[tuple[int, int]] = None
    flags, timeout = 0, None
    for stmt in body:
        words = stmt.rstrip(";").split()
        if words[0] == "type" and len(words) == 2 and words[1] in _KEY_TYPES:
            key = _KEY_TYPES[words[1]]
        elif words[0] == "flags" and len(words) == 2:
            for f in words[1].split(","):
                flags |= {"dynamic": _SET_EVAL, "timeout": _SET_TIMEOUT}.get(f) or _unsupported(stmt)
        elif words[0] == "timeout" and len(words) == 2 and re.fullmatch(r"\d+s", words[1]):
            timeout = int(words[1][:-1]) * 1000
        else:
            _unsupported(stmt)
    if key is None:
        raise Unsupported(f"set {name} without a type")
    attrs = _str(1, batch.table) + _str(2, name) + _u32(3, flags) + _u32(4, key[0]) + _u32(5, key[1])
    attrs += _u32(10, len(batch.created_sets) + 1)
    if timeout is not None:
        attrs += _attr(11, struct.pack(">Q", timeout))
    # user data: NFTNL_UDATA_SET_KEYBYTEORDER = big endian (addresses)
    attrs += _attr(13, bytes((0, 4)) + struct.pack("=I", _BYTEORDER_BIG_ENDIAN))
    return attrs


def _unsupported(stmt: str) -> NoReturn:
    raise Unsupported(f"not translated: {stmt[:80]}")


# --------------------------------------------------------------------------- rules


@functools.lru_cache(maxsize=4096)
def _address(text: str, family: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise Unsupported(f"not an address: {text}") from None
    if (net.version == 4) != (family == "ip"):
        raise Unsupported(f"address {text} of the other family")
    return net


#: A policy chain's pick of an endpoint (most rules of a partial update): translated without
#: the general tokenizer, to the same expressions.
_CASCADE = re.compile(r"(?:numgen random mod (\d+) (\d+) )?(goto|jump) ([^\s\"]+)")


def _rule(batch: Batch, chain: str, text: str) -> bytes:
    """``NFTA_RULE_*`` attributes of one rule of ``chain`` (see the module docstring)."""
    m = _CASCADE.fullmatch(text)
    if m:
        modulus, value, verb, target = m.groups()
        jump = _jump(_NFT_JUMP if verb == "jump" else _NFT_GOTO, target)
        pick = (_numgen(_int(modulus), 0, _int(value)),) if modulus else ()
        return _str(1, batch.table) + _str(2, chain) + _nest(4, *pick, jump)
    tokens = _TOKEN.findall(text)
    exprs: list[bytes] = []
    comment: Optional[str] = None
    i = 0

    def take() -> str:
        nonlocal i
        if i >= len(tokens):
            raise Unsupported(f"rule ends early: {text[:80]}")
        i += 1
        return tokens[i - 1]

    while i < len(tokens):
        word = take()
        if word in ("ip", "ip6"):
            if word != batch.family:
                raise Unsupported(f"{word} match in an {batch.family} table")
            field_ = take()
            if (word, field_) not in _ADDR_OFFSETS:
                raise Unsupported(f"not translated: {word} {field_}")
            offset, length = _ADDR_OFFSETS[word, field_]
            value = take()
            op = _CMP_EQ
            if value == "!=":
                op, value = _CMP_NEQ, take()
            if value.startswith("@"):
                exprs.append(_payload(_BASE_NETWORK, offset, length))
                exprs.append(_expr("lookup", _str(1, value[1:]), _u32(2, _REG_1),
                                   *([_u32(5, 1)] if op == _CMP_NEQ else [])))
                continue
            net = _address(value, word)
            bits, addr = net.prefixlen, net.network_address.packed
            if bits == length * 8:
                exprs += [_payload(_BASE_NETWORK, offset, length), _cmp(op, addr)]
            elif bits % 8 == 0 and bits > 0:  # nft loads only the prefix's bytes
                exprs += [_payload(_BASE_NETWORK, offset, bits // 8), _cmp(op, addr[:bits // 8])]
            elif bits > 0:
                mask = int(net.netmask).to_bytes(length, "big")
                exprs += [_payload(_BASE_NETWORK, offset, length),
                          _expr("bitwise", _u32(1, _REG_1), _u32(2, _REG_1), _u32(3, length),
                                _value(4, mask), _value(5, b"\0" * length)),
                          _cmp(op, addr)]
            else:
                raise Unsupported(f"not translated: {value}")
        elif word in _PROTOS:
            field_ = take()
            if field_ not in _PORT_OFFSETS:
                raise Unsupported(f"not translated: {word} {field_}")
            value = take()
            op = _CMP_EQ
            if value == "!=":
                op, value = _CMP_NEQ, take()
            exprs += [_meta(_META_L4PROTO), _cmp(_CMP_EQ, bytes((_PROTOS[word],))),
                      _payload(_BASE_TRANSPORT, _PORT_OFFSETS[field_], 2), _cmp(op, _port(value))]
        elif word == "meta":
            key = take()
            if key != "l4proto":
                raise Unsupported(f"not translated: meta {key}")
            proto = take()
            if proto not in _PROTOS:
                raise Unsupported(f"not translated: meta l4proto {proto}")
            exprs += [_meta(_META_L4PROTO), _cmp(_CMP_EQ, bytes((_PROTOS[proto],)))]
        elif word == "iifname":
            value = take()
            op = _CMP_EQ
            if value == "!=":
                op, value = _CMP_NEQ, take()
            if not (len(value) >= 2 and value[0] == value[-1] == '"'):
                raise Unsupported(f"not translated: iifname {value}")
            name = value[1:-1].encode()
            if name.endswith(b"*") and b"*" not in name[:-1] and b"\\" not in name:
                data = name[:-1]  # a wildcard compares the prefix only
            elif b"*" not in name and b"\\" not in name and len(name) < _IFNAMSIZ:
                data = name.ljust(_IFNAMSIZ, b"\0")
            else:
                raise Unsupported(f"not translated: iifname {value}")
            if not data:
                raise Unsupported(f"not translated: iifname {value}")
            exprs += [_meta(_META_IIFNAME), _cmp(op, data)]
        elif word == "fib":
            if tokens[i:i + 3] != ["saddr", "type", "local"]:
                raise Unsupported(f"not translated: {text[:80]}")
            i += 3
            # NFTA_FIB_DREG, NFTA_FIB_RESULT = ADDRTYPE, NFTA_FIB_FLAGS = SADDR; RTN_LOCAL in host order
            exprs += [_expr("fib", _u32(1, _REG_1), _u32(2, 3), _u32(3, 1)), _cmp(_CMP_EQ, struct.pack("=I", 2))]
        elif word == "numgen":
            if take() != "random" or take() != "mod":
                raise Unsupported(f"not translated: {text[:80]}")
            modulus, offset = _int(take()), 0
            if i < len(tokens) and tokens[i] == "offset":
                i += 1
                offset = _int(take())
            exprs.append(_numgen(modulus, offset, _int(take())))
        elif word == "update":
            target = take()
            if not (target.startswith("@") and tokens[i:i + 4] == ["{", batch.family, "saddr", "}"]):
                raise Unsupported(f"not translated: {text[:80]}")
            i += 4
            offset, length = _ADDR_OFFSETS[batch.family, "saddr"]
            exprs += [_payload(_BASE_NETWORK, offset, length),
                      _expr("dynset", _u32(4, _REG_1), _u32(3, 1), _str(1, target[1:]))]
        elif word == "dnat":
            if take() != "to":
                raise Unsupported(f"not translated: {text[:80]}")
            addr, port = _nat_target(take(), batch.family)
            nfproto = _FAMILIES[batch.family]
            exprs += [_expr("immediate", _u32(1, _REG_1), _value(2, addr)),
                      _expr("immediate", _u32(1, _REG_2), _value(2, port)),
                      _expr("nat", _u32(1, 1), _u32(2, nfproto), _u32(3, _REG_1), _u32(5, _REG_2), _u32(7, 2))]
        elif word in ("jump", "goto"):
            exprs.append(_jump(_NFT_JUMP if word == "jump" else _NFT_GOTO, take()))
        elif word in _VERDICTS:
            exprs.append(_expr("immediate", _u32(1, _REG_VERDICT), _verdict(2, _VERDICTS[word])))
        elif word == "comment":
            value = take()
            if not (len(value) >= 2 and value[0] == value[-1] == '"') or i != len(tokens):
                raise Unsupported(f"not translated: {text[:80]}")
            comment = value[1:-1]
        else:
            raise Unsupported(f"not translated: {word!r} in {text[:80]}")
    attrs = _str(1, batch.table) + _str(2, chain) + _nest(4, *exprs)
    if comment is not None:
        attrs += _attr(7, _udata_comment(comment))
    return attrs


@functools.lru_cache(maxsize=1024)
def _numgen(modulus: int, offset: int, value: int) -> bytes:
    """``numgen random mod M [offset O] V``: the number, and its comparison with ``V``."""
    return (_expr("numgen", _u32(1, _REG_1), _u32(2, modulus), _u32(3, 1), _u32(4, offset))
            + _cmp(_CMP_EQ, struct.pack("=I", value)))


@functools.lru_cache(maxsize=4096)
def _jump(code: int, target: str) -> bytes:
    """A ``jump``/``goto`` to chain ``target``."""
    return _expr("immediate", _u32(1, _REG_VERDICT), _verdict(2, code, target))


def _int(text: str) -> int:
    if not text.isdigit():
        raise Unsupported(f"not a number: {text}")
    return int(text)


def _port(text: str) -> bytes:
    value = _int(text)
    if value > 65535:
        raise Unsupported(f"not a port: {text}")
    return struct.pack(">H", value)


def _nat_target(text: str, family: str) -> tuple[bytes, bytes]:
    """``ip:port`` / ``[ip6]:port`` as register values."""
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)" if family == "ip6" else r"([0-9.]+):(\d+)", text)
    if not m:
        raise Unsupported(f"dnat target not translated: {text}")
    net = _address(m.group(1), family)
    if net.num_addresses != 1:
        raise Unsupported(f"dnat target not translated: {text}")
    return net.network_address.packed, _port(m.group(2))


# --------------------------------------------------------------------------- set elements


_ELEMENTS = re.compile(r"^\{ (.*?)(?: comment (\"[^\"]*\"))?(?: : (.*?))? \}$")


def _elements(batch: Batch, op: str, name: str, rest: str, line: str) -> None:
    """One ``add``/``delete element`` line holding one element (as the template writes them)."""
    m = _ELEMENTS.match(rest)
    if not m or "," in m.group(1) or "{" in m.group(1):
        raise Unsupported(f"element statement not translated: {line[:80]}")
    key_text, comment, data = m.groups()
    key = _key(key_text, batch.family)
    elem = _nest(1, _attr(1, key))  # NFTA_SET_ELEM_KEY holding NFTA_DATA_VALUE
    if op == "add":
        if data is not None:
            elem += _element_verdict(data)
        if comment is not None:
            elem += _attr(6, _udata_comment(comment[1:-1]))
    batch.sets.add(name)
    batch.keys.setdefault(name, []).append(len(key))
    attrs = _str(1, batch.table) + _str(2, name) + _nest(3, _nest(1, elem))
    batch.add(MSG_NEWSETELEM if op == "add" else MSG_DELSETELEM, NLM_F_CREATE if op == "add" else 0, attrs, line)


def _element_verdict(text: str) -> bytes:
    words = text.split()
    if len(words) == 2 and words[0] in ("goto", "jump"):
        return _verdict(2, _NFT_GOTO if words[0] == "goto" else _NFT_JUMP, words[1])
    if len(words) == 1 and words[0] in _VERDICTS:
        return _verdict(2, _VERDICTS[words[0]])
    raise Unsupported(f"element data not translated: {text}")


def _key(text: str, family: str) -> bytes:
    """An element key: addresses, protocol names and port numbers, ``.``-concatenated (each
    field of a concatenation padded to 4 bytes, as nft does)."""
    parts = [p.strip() for p in text.split(" . ")]
    fields = []
    for part in parts:
        if part in _PROTOS:
            fields.append(bytes((_PROTOS[part],)))
        elif part.isdigit():
            fields.append(_port(part))
        else:
            net = _address(part, family)
            if net.num_addresses != 1:
                raise Unsupported(f"element key not translated: {text}")
            fields.append(net.network_address.packed)
    if len(fields) == 1:
        return fields[0]
    return b"".join(f + b"\0" * (-len(f) % 4) for f in fields)


# --------------------------------------------------------------------------- sending


def _attrs(data: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, pos)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[pos + 4:pos + length]
        pos += (length + 3) & ~3
    return out


class _Socket:
    """A netfilter netlink socket in the caller's network namespace."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def receive(self, until: int, on_message: Callable[[int, int, bytes], None]) -> None:
        """Read messages, handing each (type, seq, payload) to ``on_message``, until the
        acknowledgement or error of message ``until`` arrived."""
        while True:
            data = self.sock.recv(1 << 20)
            pos = 0
            while pos + 16 <= len(data):
                length, msg_type, _flags, seq, _pid = struct.unpack_from("=IHHII", data, pos)
                payload = data[pos + 16:pos + length]
                pos += (length + 3) & ~3
                on_message(msg_type, seq, payload)
                if seq == until and msg_type in (NLMSG_ERROR, NLMSG_DONE):
                    return


def _set_info(sock: _Socket, family: int, table: str, name: str) -> Optional[dict[int, bytes]]:
    """The kernel's attributes of one set (``NFT_MSG_GETSET``), or None if it does not exist."""
    seq = sock.next_seq()
    msg = _message((NFNL_SUBSYS_NFTABLES << 8) | MSG_GETSET, family, NLM_F_REQUEST | NLM_F_ACK, seq,
                   _str(1, table) + _str(2, name))
    sock.sock.send(msg)
    found: list[dict[int, bytes]] = []
    error: list[int] = []

    def seen(msg_type: int, s: int, payload: bytes) -> None:
        if s != seq:
            return
        if msg_type == NLMSG_ERROR:
            error.append(struct.unpack_from("=i", payload)[0])
        elif msg_type & 0xFF == MSG_NEWSET:
            found.append(_attrs(payload[4:]))

    sock.receive(seq, seen)
    if error and error[0] not in (0, -2):
        raise OSError(-error[0], os.strerror(-error[0]))
    return found[0] if found else None


def _check_sets(sock: _Socket, batch: Batch, family: int) -> None:
    """Element keys must fit the kernel's sets (key length; no interval sets, whose elements
    nft writes as ranges; map data must be verdicts)."""
    for name in sorted(batch.sets):
        if name in batch.created_sets:
            raise Unsupported(f"elements of set {name} created by the same update")
        info = _set_info(sock, family, batch.table, name)
        if info is None:
            raise Unsupported(f"set {name} is not in the kernel")
        flags = struct.unpack(">I", info.get(3, b"\0\0\0\0"))[0]
        key_len = struct.unpack(">I", info.get(5, b"\0\0\0\0"))[0]
        if flags & _SET_INTERVAL:
            raise Unsupported(f"set {name} is an interval set")
        if flags & _SET_MAP and struct.unpack(">I", info.get(6, b"\0\0\0\0"))[0] != _NFT_DATA_VERDICT:
            raise Unsupported(f"map {name} does not map to verdicts")
        if any(k != key_len for k in batch.keys[name]):
            raise Unsupported(f"element keys do not fit set {name}")


def _buffers(sock: socket.socket, size: int) -> None:
    """Make the socket's buffers hold the batch (and the errors it could bring back): forced
    past the system's limits where allowed (CAP_NET_ADMIN over the host), else as large as
    they are allowed; :class:`Unsupported` when the batch still does not fit."""
    want = max(1 << 20, 2 * size)
    for forced, plain, value in ((32, socket.SO_SNDBUF, want), (33, socket.SO_RCVBUF, 2 * want)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, value)  # SO_SNDBUFFORCE / SO_RCVBUFFORCE
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, value)
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < size + 4096:
        raise Unsupported("update larger than the socket's send buffer")


def send(batch: Batch, describe: str = "") -> None:
    """Commit ``batch`` as one transaction through a netlink socket opened in the calling
    thread's network namespace (enter the target namespace first, see
    :func:`dataplane.runtime.netns.in_netns`).

    Raises :class:`Unsupported` before sending anything when a set the batch writes elements
    into is not one the translation can address (the caller uses ``nft -f``), and
    :class:`~dataplane.errors.ApplyError` naming the failing line when the kernel refused the
    batch: then nothing of it was committed."""
    family = _FAMILIES[batch.family]
    if batch.size() > MAX_BATCH_BYTES:
        raise Unsupported("update too large for one netlink message")
    sock = _Socket()
    try:
        _buffers(sock.sock, batch.size())
        _check_sets(sock, batch, family)
        res = NFNL_SUBSYS_NFTABLES
        first = sock.next_seq()
        parts = [_message(NFNL_MSG_BATCH_BEGIN, socket.AF_UNSPEC, NLM_F_REQUEST, first, b"", res)]
        lines: dict[int, str] = {}
        for msg_type, flags, attrs, line in batch.messages:
            seq = sock.next_seq()
            lines[seq] = line
            # No NLM_F_ACK: the kernel reports every refused message anyway, and a
            # successful batch then answers nothing that could overflow the socket.
            parts.append(_message((NFNL_SUBSYS_NFTABLES << 8) | msg_type, family,
                                  NLM_F_REQUEST | flags, seq, attrs))
        parts.append(_message(NFNL_MSG_BATCH_END, socket.AF_UNSPEC, NLM_F_REQUEST, sock.next_seq(), b"", res))
        sock.sock.send(b"".join(parts))
        # The kernel answers the batch while handling the send; a request sent after it is
        # answered after every acknowledgement and error of the batch.
        marker = sock.next_seq()
        sock.sock.send(_message((NFNL_SUBSYS_NFTABLES << 8) | MSG_GETGEN, socket.AF_UNSPEC,
                                NLM_F_REQUEST | NLM_F_ACK, marker, b""))
        errors: list[tuple[int, int]] = []

        def seen(msg_type: int, seq: int, payload: bytes) -> None:
            if msg_type == NLMSG_ERROR and seq != marker:
                code = struct.unpack_from("=i", payload)[0]
                if code:
                    errors.append((seq, -code))

        try:
            sock.receive(marker, seen)
        except OSError as e:
            if e.errno != errno.ENOBUFS:  # (ENOBUFS: errors overflowed the socket: refused)
                raise ApplyError(f"nf_tables batch{describe}: the kernel's answer could not be read "
                                 f"({e.strerror}): the update may or may not be in force") from e
            errors.append((first, e.errno))
    finally:
        sock.close()
    if errors:
        seq, code = errors[0]
        where = lines.get(seq, "the commit")
        raise ApplyError(f"nf_tables batch refused{describe}: {os.strerror(code)} at: {where[:160]}; "
                         "nothing was changed")
