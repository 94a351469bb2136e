"""A network namespace's conntrack table over ctnetlink, as structured records.

:func:`list_entries` dumps a table as :class:`~dataplane.runtime.conntrack.ConntrackEntry`
records, :func:`delete_matching` deletes the entries that
:class:`~dataplane.runtime.conntrack.ConntrackDelete` filters select (kube-proxy's stale
UDP/SCTP cleanup), :func:`create_entries` adds entries (``conntrack -I``; the lab and the
benchmarks) and :func:`flush` empties a table. No ``conntrack`` process is spawned and no
text is parsed; the messages are built and read by :mod:`dataplane.runtime.ctwire`.

Cost of the cleanup: the kernel does the selecting. For a few filters each gets its own
dump that the kernel filters (``CTA_FILTER``: family, protocol, original destination port,
``IPS_DST_NAT``, and for IPv4 the original destination address and the DNAT target; see
:func:`ctwire.filter_attrs` for IPv6), so (for IPv4) only the entries to delete cross into
userspace; for many filters one dump per family and protocol returns only that protocol's
entries, which are peeked at raw (:func:`ctwire.peek`) and decoded only when a filter may
match. Deletes go out in batches, one ``sendmsg`` each.

The netlink socket is opened in the namespace (:func:`dataplane.runtime.netns.in_netns`
switches only the calling thread, for the ``socket()`` call) and keeps that namespace
for life; one socket serves a whole dump-and-delete pass. Calls block; they work the
same from inside a running event loop.
"""
from __future__ import annotations

import errno
import itertools
import os
import socket
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional, Sequence

from . import ctwire
from .conntrack import IPS_DST_NAT, ConntrackDelete, ConntrackEntry
from ..errors import ApplyError
from .netns import in_netns

__all__ = ["list_entries", "delete_matching", "create_entries", "flush", "STRATEGIES"]

#: How :func:`delete_matching` reads the entries to delete: ``"filtered"`` one kernel-filtered
#: dump per filter, ``"protocol"`` one dump per family and protocol with the matching done here,
#: ``"auto"`` filtered dumps while they cost less than the protocol dump would, and the protocol
#: dump straight away when a filter cannot be narrowed by the kernel (:func:`ctwire.kernel_selects`).
STRATEGIES = ("auto", "filtered", "protocol")

#: Estimated seconds per table entry of a protocol dump (the kernel writing it, this process
#: reading and peeking at it: about 4 + 2 us, scripts/bench-conntrack); a filtered dump costs
#: a walk of the whole table in the kernel, measured as it runs.
PROTOCOL_DUMP_ENTRY_COST = 6e-6

_BATCH = 64  # requests per sendmsg: their acks (~1 KiB of receive buffer each) fit the default buffer
_RECV = 1 << 20


class _Session:
    """One ctnetlink socket in a namespace: requests, acks and dumps (blocking)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      ctwire.NETLINK_NETFILTER)
        try:
            self.sock.bind((0, 0))
            self.sock.setsockopt(ctwire.SOL_NETLINK, ctwire.NETLINK_CAP_ACK, 1)
        except OSError:
            self.sock.close()
            raise
        self.buf = bytearray(_RECV)
        self.seq = itertools.count(1)

    def close(self) -> None:
        self.sock.close()

    def _fail(self, what: str, code: int) -> ApplyError:
        return ApplyError(f"conntrack netlink {what} failed in network namespace {self.ns}: "
                          f"{errno.errorcode.get(code, code)} ({os.strerror(code)})")

    def _recv(self) -> memoryview:
        size = self.sock.recv_into(self.buf)
        return memoryview(self.buf)[:size]

    def dump(self, family: int, attrs: bytes = b"",
             wanted: Optional[Callable[[bytes, int, int], bool]] = None) -> list[ConntrackEntry]:
        """The entries a dump of ``family`` filtered by ``attrs`` returns; with ``wanted``, only
        those for which ``wanted(data, start, end)`` (called on the raw message) is true."""
        seq = next(self.seq)
        self.sock.send(ctwire.dump_request(seq, family, attrs))
        out: list[ConntrackEntry] = []
        decode = ctwire.decode_entry
        while True:
            data = bytes(self._recv())  # one copy per datagram: slicing and indexing bytes is faster
            for kind, _, mseq, start, end in ctwire.messages(data, len(data)):
                if mseq != seq:
                    continue
                if kind == ctwire.CT_NEW:
                    if wanted is None or wanted(data, start, end):
                        out.append(decode(data, start, end))
                elif kind == ctwire.NLMSG_DONE:
                    return out
                elif kind == ctwire.NLMSG_ERROR:
                    code = ctwire.error_code(data, start)
                    if code:
                        raise self._fail("dump", code)
                    return out

    def count(self) -> int:
        """How many entries the namespace's table holds (all families and protocols)."""
        seq = next(self.seq)
        self.sock.send(ctwire.stats_request(seq))
        count = None
        while True:
            data = bytes(self._recv())
            for kind, _, mseq, start, end in ctwire.messages(data, len(data)):
                if mseq != seq:
                    continue
                if kind == ctwire.CT_GET_STATS:
                    count = ctwire.decode_stats(data, start, end)
                elif kind == ctwire.NLMSG_ERROR:
                    code = ctwire.error_code(data, start)
                    if code:
                        raise self._fail("statistics request", code)
                    if count is None:
                        raise ApplyError(f"conntrack statistics of network namespace {self.ns} have no entry count")
                    return count

    def requests(self, what: str, messages: Sequence[bytes], seqs: Sequence[int],
                 ignore: frozenset[int] = frozenset()) -> list[int]:
        """Send acknowledged requests in batches; the errno of each (0: done), in order.
        Codes other than those in ``ignore`` raise :class:`ApplyError`."""
        codes: dict[int, int] = {}
        for lo in range(0, len(messages), _BATCH):
            batch = seqs[lo:lo + _BATCH]
            self.sock.send(b"".join(messages[lo:lo + _BATCH]))
            want = set(batch)
            while want:
                data = bytes(self._recv())
                for kind, _, mseq, start, _end in ctwire.messages(data, len(data)):
                    if kind == ctwire.NLMSG_ERROR and mseq in want:
                        want.discard(mseq)
                        codes[mseq] = ctwire.error_code(data, start)
        bad = [c for c in codes.values() if c and c not in ignore]
        if bad:
            raise self._fail(what, bad[0])
        return [codes[s] for s in seqs]


@contextmanager
def _session(ns: str) -> Iterator[_Session]:
    try:
        session = _Session(ns)
    except OSError as e:
        raise ApplyError(f"cannot open a conntrack netlink socket in network namespace {ns}: {e}") from e
    try:
        yield session
    except OSError as e:
        raise ApplyError(f"conntrack netlink request failed in network namespace {ns}: {e}") from e
    finally:
        session.close()


def list_entries(ns: str, family: str = "ipv4", protocol: Optional[str] = None) -> list[ConntrackEntry]:
    """The entries of ``ns``'s conntrack table of one family (``"ipv4"``/``"ipv6"``), of one
    protocol (``"tcp"``, ``"udp"``, ``"sctp"``, ...; the kernel filters) or of all."""
    known = protocol in ctwire.PROTONUMS or (protocol or "").isdigit()
    attrs = ctwire.protocol_filter_attrs(protocol) if protocol is not None and known else b""
    with _session(ns) as s:
        entries = s.dump(ctwire.FAMILIES[family], attrs)
    return [e for e in entries if protocol is None or e.protocol == protocol]


def _candidates(s: _Session, family: str, filters: Sequence[ConntrackDelete], strategy: str) -> list[ConntrackEntry]:
    """The entries of ``family`` any of ``filters`` matches (:meth:`ConntrackDelete.matches`
    decides), each once, read with the kernel filtering (see :data:`STRATEGIES`)."""
    af = ctwire.FAMILIES[family]
    seen: dict[tuple, ConntrackEntry] = {}
    by_protocol: dict[str, list[ConntrackDelete]] = defaultdict(list)
    for f in filters:
        by_protocol[f.protocol].append(f)
    budget = s.count() * PROTOCOL_DUMP_ENTRY_COST if strategy == "auto" else float("inf")
    for protocol, pending in sorted(by_protocol.items()):
        if strategy == "auto" and not all(ctwire.kernel_selects(f) for f in pending):
            pass  # the protocol dump is needed anyway: it serves every filter of the protocol
        elif strategy != "protocol":
            spent, done = 0.0, 0
            while pending and (done == 0 or spent / done * len(pending) <= budget):
                f = pending.pop(0)
                attrs = ctwire.filter_attrs(f)
                if attrs is None:
                    continue  # can match nothing of this family
                match = _Matcher(af, protocol, [f])  # the kernel may return more (ctwire.filter_attrs)
                began = time.perf_counter()
                for e in s.dump(af, attrs, match.wanted):
                    if match(e):
                        seen.setdefault((e.protocol, e.orig, e.id), e)
                spent += time.perf_counter() - began
                done += 1
        if pending:
            match = _Matcher(af, protocol, pending)
            for e in s.dump(af, ctwire.protocol_filter_attrs(protocol), match.wanted):
                if match(e):
                    seen.setdefault((e.protocol, e.orig, e.id), e)
    return list(seen.values())


class _Matcher:
    """Whether any of many filters of one family and protocol matches an entry (``__call__``: the
    same answer as ``any(f.matches(e) for f in filters)``, trying only the filters indexed under
    the entry's original destination address, original destination port and reply source), and
    a cheap test on an entry's raw message that is true for every entry a filter may match
    (:meth:`wanted`), so that only those are decoded."""

    def __init__(self, family: int, protocol: str, filters: Iterable[ConntrackDelete]) -> None:
        self.family, self.protonum = family, ctwire.protonum(protocol)
        self.by_dst: dict[bytes, list[ConntrackDelete]] = defaultdict(list)
        self.by_port: dict[int, list[ConntrackDelete]] = defaultdict(list)
        self.by_nat: dict[bytes, list[ConntrackDelete]] = defaultdict(list)  # filters on dst_nat alone
        self.rest: list[ConntrackDelete] = []  # filters on the protocol alone: every entry
        # per key of by_dst / by_port: the DNAT targets its filters need, None when one needs none
        self.dst_nats: dict[bytes, Optional[set[bytes]]] = {}
        self.port_nats: dict[int, Optional[set[bytes]]] = {}
        for f in filters:
            nat = ctwire.packed_address(family, f.dst_nat) if f.dst_nat else None
            if f.dst_nat and nat is None:
                continue  # a DNAT target of the other family: matches nothing of this one
            if f.orig_dst:
                raw = ctwire.packed_address(family, f.orig_dst)
                if raw is not None:  # else it matches nothing of this family
                    self._index(self.by_dst, self.dst_nats, raw, f, nat)
            elif f.orig_port_dst:
                self._index(self.by_port, self.port_nats, f.orig_port_dst, f, nat)
            elif nat is not None:
                self.by_nat[nat].append(f)
            else:
                self.rest.append(f)

    @staticmethod
    def _index(index: dict, nats: dict, key: object, f: ConntrackDelete, nat: Optional[bytes]) -> None:
        index[key].append(f)
        if nat is None:
            nats[key] = None
        elif nats.setdefault(key, set()) is not None:
            nats[key].add(nat)

    def wanted(self, data: bytes, start: int, end: int) -> bool:
        """False only for an entry no filter can match (read from the raw message)."""
        if self.rest:
            return True
        seen = ctwire.peek(data, start, end)
        if seen is None:
            return True  # not the usual layout: decode it and let __call__ decide
        num, dst, dport, src, status = seen
        if data[start] != self.family or num != self.protonum:
            return False
        dnat = status & IPS_DST_NAT
        for key, nats in ((dst, self.dst_nats), (dport, self.port_nats)):
            if key in nats:
                need = nats[key]
                if need is None or (dnat and src in need):
                    return True
        return bool(dnat and src in self.by_nat)

    def __call__(self, e: ConntrackEntry) -> bool:
        try:
            dst, src = socket.inet_pton(self.family, e.orig.dst), socket.inet_pton(self.family, e.reply.src)
        except OSError:  # not an address of this family (cannot come from a dump): try them all
            filters: Iterable[ConntrackDelete] = itertools.chain(*self.by_dst.values(), *self.by_port.values(),
                                                                 *self.by_nat.values(), self.rest)
        else:
            filters = itertools.chain(self.by_dst.get(dst, ()), self.by_port.get(e.orig.dport, ()),  # type: ignore[arg-type]
                                      self.by_nat.get(src, ()), self.rest)
        return any(f.matches(e) for f in filters)


def _delete(s: _Session, entries: Sequence[ConntrackEntry]) -> list[ConntrackEntry]:
    """Delete ``entries`` by original tuple and id; those the kernel deleted (the others had
    gone already: expired, or deleted by someone else)."""
    seqs = [next(s.seq) for _ in entries]
    codes = s.requests("delete", [ctwire.delete_request(q, e) for q, e in zip(seqs, entries)], seqs,
                       ignore=frozenset({errno.ENOENT}))
    return [e for e, code in zip(entries, codes) if code == 0]


def delete_matching(ns: str, filters: Sequence[ConntrackDelete], strategy: str = "auto") -> list[ConntrackEntry]:
    """Delete the entries of ``ns`` that any of ``filters`` matches (:meth:`ConntrackDelete.matches`);
    returns those deleted, each once. ``strategy`` (:data:`STRATEGIES`) changes only the cost.

    The kernel selects: each filter is a kernel-filtered dump that returns only the entries it
    matches, while that costs less than one dump per family and protocol (estimated from the
    table's size) and while the kernel can narrow every filter of the protocol; else the
    protocol's dump serves the rest, its entries peeked at raw and only candidates decoded. Then one delete per entry (by original tuple and id), sent in batches,
    all over one socket (``conntrack -D`` dumps the whole table once per filter).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    deleted: list[ConntrackEntry] = []
    if not filters:
        return deleted
    with _session(ns) as s:
        for family in sorted({f.family for f in filters}):
            mine = [f for f in filters if f.family == family]
            deleted += _delete(s, _candidates(s, family, mine, strategy))
    return deleted


def create_entries(ns: str, entries: Sequence[ConntrackEntry], timeout: int = 600) -> None:
    """Create conntrack entries in ``ns`` (``conntrack -I``; see :func:`ctwire.create_request`):
    ``timeout`` seconds to live; an entry with ``IPS_DST_NAT`` is set up DNATed to its reply's
    source, so what :func:`list_entries` read can be put back. Raises :class:`ApplyError` if one
    exists or is refused."""
    with _session(ns) as s:
        seqs = [next(s.seq) for _ in entries]
        s.requests("create", [ctwire.create_request(q, e, timeout) for q, e in zip(seqs, entries)], seqs)


def flush(ns: str) -> None:
    """Empty ``ns``'s conntrack table (both families), as ``conntrack -F`` does."""
    with _session(ns) as s:
        seq = next(s.seq)
        s.requests("flush", [ctwire.flush_request(seq)], [seq])
