"""Notice when the kernel's copy of kube-dataplane's rules changed behind its back (drift).

:func:`~dataplane.runtime.apply.apply_cluster` sends only what changed since the last
sync, trusting that the kernel still holds what that sync left. Someone running
``iptables -t nat -F KUBE-SERVICES`` or ``nft flush map ip kube-proxy service-ips``
breaks that trust. So right after each sync a :class:`Fingerprint` of our
objects is stored with the record, and the next apply compares:

* nftables: per named chain of the ``ip|ip6 kube-proxy`` table a digest of its
  definition and rules, per named set or map a digest of its definition and
  (sorted) elements; the elements of sets that packets fill (``dynamic`` or
  ``timeout`` flags: session affinity) are left out. Read over netlink
  directly: ``nft list table`` at 10k Services takes 46 s (``nft -j`` about a
  minute), because the kernel's one big rule dump restarts its walk over every
  rule for each 32 KiB it returns; one small dump per chain takes seconds.
* iptables: per chain of ours (kube-proxy's fixed chains and the per-service
  ``KUBE-SVC/SVL/EXT/FW/SEP-*``) in the nat and filter tables a digest of its
  normalised ``iptables-save`` lines, and per built-in chain a digest of its
  rules that jump to those chains.

Reading all that back costs time at 10k Services, so it is skipped when it
cannot have changed: the nf_tables ruleset *generation* (one netlink request)
counts every committed transaction in the namespace, so an unchanged generation
proves nothing changed (iptables only when it is iptables-nft). After an
incremental nftables sync only the chains and sets the update named are read
again.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping, Optional

from ..backends import get_backend
from ..errors import ApplyError

__all__ = ["Fingerprint", "generation", "fingerprint", "nftables_objects", "refresh", "touched_objects", "describe",
           "check", "after_sync"]

Family = Literal["ipv4", "ipv6"]

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_NFTABLES = 10
_GETCHAIN, _GETRULE, _GETSET, _GETSETELEM, _NEWGEN, _GETGEN = 4, 7, 10, 13, 15, 16
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_DUMP = 0x1, 0x4, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NFPROTO = {"ipv4": 2, "ipv6": 10}
_TABLE = b"kube-proxy"

# attributes left out of digests: handles, reference counts, counters, padding, transaction ids
_CHAIN_SKIP = frozenset({2, 6, 8, 9, 11})  # NFTA_CHAIN_HANDLE, USE, COUNTERS, PAD, ID
_RULE_KEEP = (4, 5, 7)  # NFTA_RULE_EXPRESSIONS, COMPAT, USERDATA
_SET_SKIP = frozenset({10, 14, 16})  # NFTA_SET_ID, PAD, HANDLE
_SET_ANONYMOUS, _SET_MAP, _SET_TIMEOUT, _SET_EVAL = 0x1, 0x8, 0x10, 0x20
_COUNTER = b"counter\x00"


@dataclass(frozen=True)
class Fingerprint:
    """Digests of our objects as the kernel held them, and the nf_tables generation then
    (None: unknown, or our objects may have changed after it was read)."""

    objects: Mapping[str, bytes] = field(default_factory=dict)
    generation: Optional[int] = None


# --------------------------------------------------------------------------- netlink


def _attr(kind: int, data: bytes) -> bytes:
    size = 4 + len(data)
    return struct.pack("=HH", size, kind) + data + b"\0" * (-size % 4)


def _attrs(buf: bytes, offset: int = 0) -> list[tuple[int, bytes]]:
    """The (type, payload) netlink attributes in ``buf`` from ``offset`` (flag bits masked)."""
    out = []
    end = len(buf)
    while offset + 4 <= end:
        size, kind = struct.unpack_from("=HH", buf, offset)
        if size < 4:
            break
        out.append((kind & 0x3FFF, buf[offset + 4: offset + size]))
        offset += (size + 3) & ~3
    return out


class _Nftables:
    """A netlink socket speaking nf_tables in one namespace (read-only requests)."""

    def __init__(self, ns: str) -> None:
        from .netns import in_netns

        with in_netns(ns):  # the socket belongs to ns for life
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
        try:
            self.sock.bind((0, 0))
        except OSError:
            self.sock.close()
            raise
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "_Nftables":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, msg: int, family: int, attrs: bytes = b"", *, dump: bool = False) -> list[bytes]:
        """Send one request; the payloads (after ``nfgenmsg``) of the answers. A kernel error
        raises :class:`OSError` with its errno."""
        self.seq += 1
        body = struct.pack("=BBH", family, 0, 0) + attrs
        flags = _NLM_F_REQUEST | (_NLM_F_DUMP if dump else _NLM_F_ACK)
        self.sock.send(struct.pack("=IHHII", 16 + len(body), (_NFNL_SUBSYS_NFTABLES << 8) | msg, flags,
                                   self.seq, 0) + body)
        out: list[bytes] = []
        while True:
            data = self.sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(data):
                size, kind, _flags, seq = struct.unpack_from("=IHHI", data, offset)
                if size < 16:
                    raise ApplyError("malformed nf_tables netlink answer")
                if seq == self.seq:
                    if kind in (_NLMSG_DONE, _NLMSG_ERROR):  # both carry an errno (0: fine)
                        (err,) = struct.unpack_from("=i", data, offset + 16) if size >= 20 else (0,)
                        if err:
                            raise OSError(-err, os.strerror(-err))
                        return out
                    out.append(data[offset + 20: offset + size])
                offset += (size + 3) & ~3


def generation(ns: str) -> Optional[int]:
    """The nf_tables ruleset generation of ``ns``: it changes with every committed
    transaction (nft, iptables-nft). None when nf_tables cannot be asked."""
    try:
        with _Nftables(ns) as nl:
            answers = nl.request(_GETGEN, 0)
    except OSError:
        return None
    for payload in answers:
        for kind, value in _attrs(payload):
            if kind == 1 and len(value) == 4:  # NFTA_GEN_ID, big endian
                return struct.unpack(">I", value)[0]
    return None


def _digest(parts: Iterable[bytes]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(struct.pack("=I", len(p)))
        h.update(p)
    return h.digest()


def _rule_bytes(payload: bytes) -> bytes:
    """A rule's expressions, compat info and comment, without handle, position or counters."""
    keep = []
    for kind, value in _attrs(payload):
        if kind not in _RULE_KEEP:
            continue
        if kind == 4 and _COUNTER in value:  # NFTA_RULE_EXPRESSIONS: drop "counter" expressions
            value = b"".join(_attr(k, v) for k, v in _attrs(value)
                             if not any(n == 1 and v2 == _COUNTER for n, v2 in _attrs(v)))
        keep.append(_attr(kind, value))
    return b"".join(keep)


def _chain_digest(nl: _Nftables, family: int, chain_attrs: list[tuple[int, bytes]], name: bytes
                  ) -> Optional[bytes]:
    """The digest of one chain (definition and rules); None if it no longer exists."""
    try:
        rules = nl.request(_GETRULE, family, _attr(1, _TABLE + b"\0") + _attr(2, name + b"\0"), dump=True)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    head = b"".join(_attr(k, v) for k, v in chain_attrs if k not in _CHAIN_SKIP)
    return _digest([head, *map(_rule_bytes, rules)])


def _set_digest(nl: _Nftables, family: int, set_attrs: list[tuple[int, bytes]], name: bytes) -> bytes:
    head = b"".join(_attr(k, v) for k, v in set_attrs if k not in _SET_SKIP)
    flags = _set_flags(set_attrs)
    elements: list[bytes] = []
    if not flags & (_SET_TIMEOUT | _SET_EVAL):  # packets fill those: their elements are not ours
        try:
            answers = nl.request(_GETSETELEM, family, _attr(1, _TABLE + b"\0") + _attr(2, name + b"\0"),
                                 dump=True)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
            answers = []
        for payload in answers:
            for kind, value in _attrs(payload):
                if kind == 3:  # NFTA_SET_ELEM_LIST_ELEMENTS: a list of NFTA_LIST_ELEM
                    elements.extend(v for _, v in _attrs(value))
    return _digest([head, *sorted(elements)])


def _set_flags(set_attrs: list[tuple[int, bytes]]) -> int:
    for kind, value in set_attrs:
        if kind == 3 and len(value) == 4:  # NFTA_SET_FLAGS
            return struct.unpack(">I", value)[0]
    return 0


def _name(attrs: list[tuple[int, bytes]], kind: int) -> bytes:
    for k, v in attrs:
        if k == kind:
            return v.rstrip(b"\0")
    return b""


def _nft_chains(nl: _Nftables, family: int) -> dict[bytes, list[tuple[int, bytes]]]:
    out = {}
    for payload in nl.request(_GETCHAIN, family, dump=True):
        attrs = _attrs(payload)
        if _name(attrs, 1) == _TABLE:  # NFTA_CHAIN_TABLE
            out[_name(attrs, 3)] = attrs  # NFTA_CHAIN_NAME
    return out


def _nft_sets(nl: _Nftables, family: int) -> dict[bytes, list[tuple[int, bytes]]]:
    out = {}
    for payload in nl.request(_GETSET, family, _attr(1, _TABLE + b"\0"), dump=True):
        attrs = _attrs(payload)
        if _name(attrs, 1) == _TABLE and not _set_flags(attrs) & _SET_ANONYMOUS:
            out[_name(attrs, 2)] = attrs  # NFTA_SET_NAME
    return out


def _set_key(name: bytes, attrs: list[tuple[int, bytes]]) -> str:
    return ("map " if _set_flags(attrs) & _SET_MAP else "set ") + name.decode(errors="replace")


def _nft_fingerprint(ns: str, family: Family, only: Optional[tuple[set[str], set[str]]] = None
                     ) -> dict[str, Optional[bytes]]:
    """Digests of the table's chains and named sets: all of them, or (``only``: chain and set
    names) just those, None for one that does not exist."""
    fam = _NFPROTO[family]
    out: dict[str, Optional[bytes]] = {}
    with _Nftables(ns) as nl:
        try:
            sets = _nft_sets(nl, fam)
        except OSError as e:
            if e.errno != errno.ENOENT:  # no table: no objects
                raise
            sets = {}
        if only is None:
            for name, attrs in _nft_chains(nl, fam).items():
                out["chain " + name.decode(errors="replace")] = _chain_digest(nl, fam, attrs, name)
            for name, attrs in sets.items():
                out[_set_key(name, attrs)] = _set_digest(nl, fam, attrs, name)
            return {k: v for k, v in out.items() if v is not None}
        chains, set_names = only
        for name in sorted(chains):
            raw = name.encode()
            try:
                answer = nl.request(_GETCHAIN, fam, _attr(1, _TABLE + b"\0") + _attr(3, raw + b"\0"))
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
                answer = []
            attrs = _attrs(answer[0]) if answer else None
            out["chain " + name] = _chain_digest(nl, fam, attrs, raw) if attrs is not None else None
        for name in sorted(set_names):
            for prefix in ("set ", "map "):
                out[prefix + name] = None
            attrs = sets.get(name.encode())
            if attrs is not None:
                out[_set_key(name.encode(), attrs)] = _set_digest(nl, fam, attrs, name.encode())
    return out


# --------------------------------------------------------------------------- iptables


def _ours_iptables(table: str, chain: str) -> bool:
    from ..backends import iptables as ipt

    fixed = {"nat": ipt.NAT_CHAINS, "filter": (*ipt.FILTER_CHAINS, "KUBE-FIREWALL")}.get(table, ())
    return chain in fixed or (table == "nat" and chain.startswith(ipt.SERVICE_CHAIN_PREFIXES))


def iptables_objects(text: str) -> dict[str, bytes]:
    """Per-object digests of normalised ``iptables-save`` text (as :func:`dataplane.runtime.netns.read_back`
    gives it): each of our chains of nat and filter, and per built-in chain its jumps to ours."""
    from .netns import BUILTIN_CHAINS

    lines: dict[str, list[str]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            chain = line[1:].split()[0]
            if _ours_iptables(table, chain):
                lines.setdefault(f"{table} chain {chain}", [])
        elif line.startswith("-A "):
            parts = line.split()
            chain = parts[1]
            if _ours_iptables(table, chain):
                lines.setdefault(f"{table} chain {chain}", []).append(line)
            elif chain in BUILTIN_CHAINS:
                target = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p in ("-j", "-g")), "")
                if _ours_iptables(table, target):
                    lines.setdefault(f"{table} {chain} jumps", []).append(line)
    return {key: _digest(ln.encode() for ln in body) for key, body in lines.items()}


# --------------------------------------------------------------------------- comparing


def nftables_objects(ns: str, family: Family) -> dict[str, bytes]:
    """Per-object digests of the ``kube-proxy`` table of ``family`` in ``ns``."""
    return {k: v for k, v in _nft_fingerprint(ns, family).items() if v is not None}


def fingerprint(ns: str, mode: str, family: Family) -> dict[str, bytes]:
    """Digests of every object of ours that ``ns`` holds for backend ``mode`` and ``family``."""
    return get_backend(mode).fingerprint(ns, family)


_NFT_CHAIN_NAMED = re.compile(r"^(?:add|flush|delete) chain \S+ \S+ (\S+)$|^\s*chain (\S+) \{", re.M)
_NFT_SET_NAMED = re.compile(r"^(?:add|delete) element \S+ \S+ (\S+) \{|^delete set \S+ \S+ (\S+)$"
                            r"|^\s*(?:set|map) (\S+) \{", re.M)


def touched_objects(update: str) -> tuple[set[str], set[str]]:
    """The chains and the sets/maps an nftables update (as :mod:`dataplane.runtime.proxier` renders
    it) creates, changes or deletes."""
    chains = {a or b for a, b in _NFT_CHAIN_NAMED.findall(update)}
    sets = {a or b or c for a, b, c in _NFT_SET_NAMED.findall(update)}
    return chains, sets


def refresh(ns: str, family: Family, objects: Mapping[str, bytes], update: str) -> dict[str, bytes]:
    """``objects`` (an nftables fingerprint) after ``update`` was applied: only the chains and
    sets the update names are read again."""
    new = dict(objects)
    for key, digest in _nft_fingerprint(ns, family, touched_objects(update)).items():
        if digest is None:
            new.pop(key, None)
        else:
            new[key] = digest
    return new


def describe(before: Mapping[str, bytes], now: Mapping[str, bytes], *, limit: int = 3) -> str:
    """What differs between two fingerprints, in a few words ("" when nothing does)."""
    parts = []
    for what, keys in (("changed", [k for k in before if k in now and before[k] != now[k]]),
                       ("gone", [k for k in before if k not in now]),
                       ("added by someone else", [k for k in now if k not in before])):
        if keys:
            keys.sort()
            shown = ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
            parts.append(f"{shown} {what}")
    return "; ".join(parts)


def _generation_covers(ns: str, mode: str, family: Family) -> bool:
    """Whether the nf_tables generation counts changes to ``mode``'s rules (not legacy iptables)."""
    return get_backend(mode).generation_counts_changes(ns, family)


def check(ns: str, mode: str, family: Family, seen: Fingerprint) -> tuple[str, Optional[int]]:
    """Compare the kernel with ``seen`` (stored after the last sync): (what drifted, "" if
    nothing; the generation the comparison holds for, None if unknown)."""
    covered = _generation_covers(ns, mode, family)
    before = generation(ns) if covered else None
    if before is not None and before == seen.generation:
        return "", before
    now = fingerprint(ns, mode, family)
    after = generation(ns) if covered else None
    if before != after:  # it changed while being read
        return describe(seen.objects, now) or "the rules changed while being compared", None
    return describe(seen.objects, now), after


def after_sync(ns: str, mode: str, family: Family, *, base: Optional[Fingerprint], checked: Optional[int],
               update: str, full: bool) -> Fingerprint:
    """The fingerprint of ``ns`` right after a sync that sent ``update``.

    ``base`` is the fingerprint the kernel was found to match before (at generation
    ``checked``); after an incremental nftables sync that was the only transaction
    since (the generation moved by one, or not at all for an empty update), only the
    objects the update names are read again. Otherwise everything is read.
    """
    covered = _generation_covers(ns, mode, family)
    start = generation(ns) if covered else None
    expected = None if checked is None else checked + (1 if update else 0)
    if get_backend(mode).refreshes_touched_objects and not full and base is not None and start is not None and start == expected:
        objects = refresh(ns, family, base.objects, update) if update else dict(base.objects)
    else:
        objects = fingerprint(ns, mode, family)
    end = generation(ns) if covered else None
    return Fingerprint(objects, end if start == end else None)
