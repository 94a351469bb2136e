"""ctnetlink messages as bytes: the requests :mod:`dataplane.runtime.ctnetlink` sends and the
decoding of the entries a dump returns. Pure functions, no sockets.

Only what the stale-entry cleanup, the lab and the benchmarks need: dump requests
(optionally with a kernel-side filter: ``CTA_FILTER`` on the original and reply
tuples plus ``CTA_STATUS``/``CTA_STATUS_MASK``, so the kernel returns only the
entries a :class:`~dataplane.runtime.conntrack.ConntrackDelete` selects, or for IPv6
a superset: see :func:`filter_attrs`), deletes by original tuple and id, a flush, the
table's entry count, and creation of entries (``conntrack -I``). :func:`peek` reads the
few fields the filters test straight from a message laid out as the kernel lays it out.

Decoding is done here with :mod:`struct` because pyroute2's generic message parser
costs about 0.85 ms per entry (measured on the kernel bytes of ``tests/test_ctnetlink.py``),
which made a dump of 50,000 entries take tens of seconds; this decoder reads only
the attributes a :class:`~dataplane.runtime.conntrack.ConntrackEntry` holds.

Numbers are those of ``linux/netfilter/nfnetlink_conntrack.h``, ``linux/netfilter/nfnetlink.h``
and ``linux/netlink.h``.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Iterator, Optional

from .conntrack import IPS_DST_NAT, ConntrackDelete, ConntrackEntry, FlowTuple

# netlink
NETLINK_NETFILTER = 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x2, 0x4, 0x300
NLM_F_CREATE, NLM_F_EXCL = 0x400, 0x200
NLA_F_NESTED = 0x8000
_NLA_TYPE_MASK = 0x3FFF
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # acks without a copy of the request

# nfnetlink / ctnetlink message types: (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_*
_SUBSYS = 1 << 8
CT_NEW, CT_GET, CT_DELETE, CT_GET_STATS = _SUBSYS | 0, _SUBSYS | 1, _SUBSYS | 2, _SUBSYS | 5
CTA_STATS_GLOBAL_ENTRIES = 1  # enum ctattr_stats_global

# enum ctattr_type
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_TIMEOUT, CTA_ID, CTA_NAT_DST, CTA_FILTER, CTA_STATUS_MASK = 7, 12, 13, 25, 26
# enum ctattr_tuple, ctattr_ip, ctattr_l4proto
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
# enum ctattr_protoinfo and its TCP / SCTP parts
CTA_PROTOINFO_TCP, CTA_PROTOINFO_SCTP = 1, 3
CTA_PROTOINFO_TCP_STATE, CTA_PROTOINFO_SCTP_STATE = 1, 1
# enum ctattr_nat (CTA_NAT_DST's contents)
CTA_NAT_V4_MINIP, CTA_NAT_V4_MAXIP, CTA_NAT_V6_MINIP, CTA_NAT_V6_MAXIP = 1, 2, 4, 5
# enum ctattr_filter and the CTA_FILTER_FLAG_* bits
CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 1, 2
FILTER_IP_SRC, FILTER_IP_DST, FILTER_PROTO_NUM, FILTER_PROTO_DST_PORT = 1 << 0, 1 << 1, 1 << 3, 1 << 5

FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
FAMILY_NAMES = {v: k for k, v in FAMILIES.items()}
PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_SCTP: "sctp",
             socket.IPPROTO_ICMP: "icmp", socket.IPPROTO_ICMPV6: "icmpv6"}
PROTONUMS = {v: k for k, v in PROTOCOLS.items()}
#: ``enum tcp_conntrack`` (linux/netfilter/nf_conntrack_tcp.h), as conntrack -L names them.
TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
              "TIME_WAIT", "CLOSE", "SYN_SENT2")
#: ``enum sctp_conntrack`` (linux/netfilter/nf_conntrack_sctp.h).
SCTP_STATES = ("NONE", "CLOSED", "COOKIE_WAIT", "COOKIE_ECHOED", "ESTABLISHED", "SHUTDOWN_SENT",
               "SHUTDOWN_RECD", "SHUTDOWN_ACK_SENT", "HEARTBEAT_SENT", "HEARTBEAT_ACKED")

_HDR = struct.Struct("=IHHII")  # struct nlmsghdr
_NFGEN = struct.Struct("!BBH")  # struct nfgenmsg: family, version, res_id (big endian)
_NLA = struct.Struct("=HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_HOST_U32 = struct.Struct("=I")
_ERR = struct.Struct("=i")


# --------------------------------------------------------------------------- encoding


def _attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    size = 4 + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size & 3)


def _nest(kind: int, *parts: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(parts))


def message(kind: int, flags: int, seq: int, family: int, attrs: bytes = b"") -> bytes:
    """A ctnetlink request: netlink header, ``nfgenmsg`` for ``family`` (AF_UNSPEC: all) and ``attrs``."""
    body = _NFGEN.pack(family, 0, 0) + attrs
    return _HDR.pack(16 + len(body), kind, flags, seq, 0) + body


def _ip_attr(family: int, which: str, address: str) -> bytes:
    """``CTA_IP_V{4,6}_{SRC,DST}`` for ``address`` (which: ``"src"`` or ``"dst"``)."""
    return _raw_ip_attr(family, which, socket.inet_pton(family, address))


def _tuple_attr(kind: int, family: int, protonum: int, flow: FlowTuple) -> bytes:
    """A full ``CTA_TUPLE_*`` (addresses, protocol, and the ports when the flow has them)."""
    proto = [_attr(CTA_PROTO_NUM, bytes((protonum,)))]
    if flow.sport is not None:
        proto.append(_attr(CTA_PROTO_SRC_PORT, _U16.pack(flow.sport)))
    if flow.dport is not None:
        proto.append(_attr(CTA_PROTO_DST_PORT, _U16.pack(flow.dport)))
    return _nest(kind, _nest(CTA_TUPLE_IP, _ip_attr(family, "src", flow.src), _ip_attr(family, "dst", flow.dst)),
                 _nest(CTA_TUPLE_PROTO, *proto))


def protonum(protocol: str) -> int:
    """The IP protocol number of a :class:`ConntrackEntry` protocol name (or number as text)."""
    return PROTONUMS[protocol] if protocol in PROTONUMS else int(protocol)


def delete_request(seq: int, entry: ConntrackEntry) -> bytes:
    """Delete ``entry`` by original tuple and, when known, id (an entry that expired and came
    back meanwhile has another id and is left alone); acknowledged."""
    family = FAMILIES[entry.family]
    attrs = _tuple_attr(CTA_TUPLE_ORIG, family, protonum(entry.protocol), entry.orig)
    if entry.id is not None:
        attrs += _attr(CTA_ID, _U32.pack(entry.id))
    return message(CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, family, attrs)


def flush_request(seq: int, family: int = socket.AF_UNSPEC) -> bytes:
    """Delete every entry of ``family`` (AF_UNSPEC: both), as ``conntrack -F`` does; acknowledged."""
    return message(CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, family)


CTA_NAT_PROTO, CTA_PROTONAT_PORT_MIN, CTA_PROTONAT_PORT_MAX = 3, 1, 2


def create_request(seq: int, entry: ConntrackEntry, timeout: int) -> bytes:
    """Create ``entry`` (``conntrack -I``) with ``timeout`` seconds to live: when it has
    ``IPS_DST_NAT`` the kernel sets it up as DNATed to its reply's source address and port
    (``--dst-nat``), else with its reply tuple as given. Its other status bits are the kernel's
    (this kernel refuses a status on creation with EBUSY). Acknowledged; fails if it exists.
    An entry :func:`decode_entry` read comes back with the same tuples and DNAT."""
    family, num = FAMILIES[entry.family], protonum(entry.protocol)
    orig, reply = entry.orig, entry.reply
    dnat = b""
    if entry.status & IPS_DST_NAT:
        raw = socket.inet_pton(family, reply.src)
        v6 = family == socket.AF_INET6
        parts = [_attr(CTA_NAT_V6_MINIP if v6 else CTA_NAT_V4_MINIP, raw),
                 _attr(CTA_NAT_V6_MAXIP if v6 else CTA_NAT_V4_MAXIP, raw)]
        if reply.sport is not None:
            port = _U16.pack(reply.sport)
            parts.append(_nest(CTA_NAT_PROTO, _attr(CTA_PROTONAT_PORT_MIN, port), _attr(CTA_PROTONAT_PORT_MAX, port)))
        dnat = _nest(CTA_NAT_DST, *parts)
        # the kernel derives the reply from the NAT binding: given the un-NATed one, it rewrites it
        reply = FlowTuple(orig.dst, reply.dst, orig.dport, reply.dport)
    attrs = (_tuple_attr(CTA_TUPLE_ORIG, family, num, orig) + _tuple_attr(CTA_TUPLE_REPLY, family, num, reply)
             + _attr(CTA_TIMEOUT, _U32.pack(timeout)))
    return message(CT_NEW, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq, family, attrs + dnat)


def stats_request(seq: int) -> bytes:
    """Ask for the table's global statistics (``IPCTNL_MSG_CT_GET_STATS``: the entry count)."""
    return message(CT_GET_STATS, NLM_F_REQUEST | NLM_F_ACK, seq, socket.AF_UNSPEC)


def decode_stats(buf: bytes, start: int, end: int) -> int:
    """The number of entries in a ``IPCTNL_MSG_CT_GET_STATS`` reply (the namespace's table)."""
    span = _nested(buf, start + 4, end).get(CTA_STATS_GLOBAL_ENTRIES)
    if span is None:
        raise ValueError("conntrack statistics without an entry count")
    return _U32.unpack_from(buf, span[0])[0]


def packed_address(family: int, address: str) -> Optional[bytes]:
    """``address`` as the kernel holds it if it is an address of ``family``, else None: no
    entry of that family can have it, as :meth:`ConntrackDelete.matches` sees it."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return ip.packed if ip.version == (6 if family == socket.AF_INET6 else 4) else None


def _raw_ip_attr(family: int, which: str, raw: bytes) -> bytes:
    v6 = family == socket.AF_INET6
    kind = (CTA_IP_V6_SRC if v6 else CTA_IP_V4_SRC) if which == "src" else (CTA_IP_V6_DST if v6 else CTA_IP_V4_DST)
    return _attr(kind, raw)


def filter_attrs(flt: ConntrackDelete) -> Optional[bytes]:
    """The attributes of a dump request that make the kernel return the entries of the
    request's family that ``flt`` may select, and few others: the protocol, the original
    destination port, the ``IPS_DST_NAT`` status bit, and for IPv4 the original destination
    address and the reply's source (the DNAT target), each when ``flt`` has it. None when
    ``flt`` can select nothing of its family (an address of the other family or none at all,
    which :meth:`ConntrackDelete.matches` never equals to an entry's).

    IPv6 addresses are not given to the kernel: ctnetlink_filter_match_tuple compares them
    with ``!ipv6_addr_cmp(...)``, which drops the entries that *equal* the filter's address and
    keeps the others (seen on Linux 6.18 here; its IPv4 comparison is right). Callers apply
    :meth:`ConntrackDelete.matches` to what comes back, since the kernel returns more than
    ``flt`` selects (IPv6; a kernel without status filtering, before Linux 5.19).
    """
    family = FAMILIES[flt.family]
    v4 = family == socket.AF_INET
    orig_flags, reply_flags = FILTER_PROTO_NUM, 0
    orig_ip, proto = b"", [_attr(CTA_PROTO_NUM, bytes((protonum(flt.protocol),)))]
    attrs = b""
    if flt.orig_dst:
        dst = packed_address(family, flt.orig_dst)
        if dst is None:
            return None
        if v4:
            orig_flags |= FILTER_IP_DST
            orig_ip = _nest(CTA_TUPLE_IP, _raw_ip_attr(family, "dst", dst))
    if flt.orig_port_dst:
        orig_flags |= FILTER_PROTO_DST_PORT
        proto.append(_attr(CTA_PROTO_DST_PORT, _U16.pack(flt.orig_port_dst)))
    attrs += _nest(CTA_TUPLE_ORIG, orig_ip, _nest(CTA_TUPLE_PROTO, *proto))
    if flt.dst_nat:
        target = packed_address(family, flt.dst_nat)
        if target is None:
            return None
        if v4:
            reply_flags |= FILTER_IP_SRC
            attrs += _nest(CTA_TUPLE_REPLY, _nest(CTA_TUPLE_IP, _raw_ip_attr(family, "src", target)))
        attrs += _attr(CTA_STATUS, _U32.pack(IPS_DST_NAT)) + _attr(CTA_STATUS_MASK, _U32.pack(IPS_DST_NAT))
    flags = _attr(CTA_FILTER_ORIG_FLAGS, _HOST_U32.pack(orig_flags))
    if reply_flags:
        flags += _attr(CTA_FILTER_REPLY_FLAGS, _HOST_U32.pack(reply_flags))
    return attrs + _nest(CTA_FILTER, flags)


def kernel_selects(flt: ConntrackDelete) -> bool:
    """Whether :func:`filter_attrs` narrows a dump beyond the protocol and the DNAT bit: by
    original destination port, or (IPv4 only) by address. A dump filtered only by those costs
    about what a dump of the whole protocol costs."""
    return bool(flt.orig_port_dst) or (flt.family == "ipv4" and bool(flt.orig_dst or flt.dst_nat))


def protocol_filter_attrs(protocol: str) -> bytes:
    """Dump-request attributes that make the kernel return only entries of ``protocol``."""
    return (_nest(CTA_TUPLE_ORIG, _nest(CTA_TUPLE_PROTO, _attr(CTA_PROTO_NUM, bytes((protonum(protocol),)))))
            + _nest(CTA_FILTER, _attr(CTA_FILTER_ORIG_FLAGS, _HOST_U32.pack(FILTER_PROTO_NUM))))


def dump_request(seq: int, family: int, attrs: bytes = b"") -> bytes:
    """A dump of the entries of ``family`` (AF_UNSPEC: all) that ``attrs`` (a filter) select."""
    return message(CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, family, attrs)


# --------------------------------------------------------------------------- decoding


def messages(buf: bytes | memoryview, size: int) -> Iterator[tuple[int, int, int, int, int]]:
    """The netlink messages in ``buf[:size]``: (type, flags, seq, payload start, end)."""
    off = 0
    while off + 16 <= size:
        length, kind, flags, seq, _ = _HDR.unpack_from(buf, off)
        if length < 16:
            raise ValueError(f"netlink message of length {length}")
        yield kind, flags, seq, off + 16, off + length
        off += (length + 3) & ~3


def error_code(buf: bytes | memoryview, start: int) -> int:
    """The (positive) errno of an ``NLMSG_ERROR`` message whose payload starts at ``start``; 0 for an ack."""
    return -_ERR.unpack_from(buf, start)[0]


def _nested(buf: bytes, off: int, end: int) -> dict[int, tuple[int, int]]:
    """The attributes in ``buf[off:end]``: type -> (payload start, payload end)."""
    out = {}
    unpack = _NLA.unpack_from
    while off + 4 <= end:
        size, kind = unpack(buf, off)
        if size < 4:
            break
        out[kind & _NLA_TYPE_MASK] = (off + 4, off + size)
        off += (size + 3) & ~3
    return out


def _flow_slow(buf: bytes, start: int, end: int, family: int) -> tuple[FlowTuple, int]:
    """A ``CTA_TUPLE_*`` payload as a :class:`FlowTuple`, and its protocol number (any layout)."""
    tup = _nested(buf, start, end)
    ip = _nested(buf, *tup[CTA_TUPLE_IP])
    if family == socket.AF_INET6:
        (s0, s1), (d0, d1) = ip[CTA_IP_V6_SRC], ip[CTA_IP_V6_DST]
    else:
        (s0, s1), (d0, d1) = ip[CTA_IP_V4_SRC], ip[CTA_IP_V4_DST]
    proto = _nested(buf, *tup[CTA_TUPLE_PROTO])
    sport = dport = None
    if (p := proto.get(CTA_PROTO_SRC_PORT)) is not None:
        sport = _U16.unpack_from(buf, p[0])[0]
    if (p := proto.get(CTA_PROTO_DST_PORT)) is not None:
        dport = _U16.unpack_from(buf, p[0])[0]
    num = buf[proto[CTA_PROTO_NUM][0]]
    return FlowTuple(socket.inet_ntop(family, buf[s0:s1]), socket.inet_ntop(family, buf[d0:d1]), sport, dport), num


#: A tuple as the kernel lays out one with ports (ctnetlink_dump_tuples: the addresses, then
#: protocol number, source and destination port), every header to check: read in one unpack.
_PORTS_TUPLE = {socket.AF_INET: struct.Struct("=HHHH4sHH4sHHHHB3xHHH2xHHH2x"),
                socket.AF_INET6: struct.Struct("=HHHH16sHH16sHHHHB3xHHH2xHHH2x")}
_PORTS_HEADERS = {socket.AF_INET: (20, CTA_TUPLE_IP | NLA_F_NESTED, 8, CTA_IP_V4_SRC, 8, CTA_IP_V4_DST,
                                   28, CTA_TUPLE_PROTO | NLA_F_NESTED, 5, CTA_PROTO_NUM, 6, CTA_PROTO_SRC_PORT,
                                   6, CTA_PROTO_DST_PORT),
                  socket.AF_INET6: (44, CTA_TUPLE_IP | NLA_F_NESTED, 20, CTA_IP_V6_SRC, 20, CTA_IP_V6_DST,
                                    28, CTA_TUPLE_PROTO | NLA_F_NESTED, 5, CTA_PROTO_NUM, 6, CTA_PROTO_SRC_PORT,
                                    6, CTA_PROTO_DST_PORT)}


def _flow(buf: bytes, start: int, end: int, family: int) -> tuple[FlowTuple, int]:
    """A ``CTA_TUPLE_*`` payload as a :class:`FlowTuple`, and its protocol number: in one
    unpack when it has the kernel's layout with ports (TCP, UDP, SCTP...), else attribute by attribute."""
    layout = _PORTS_TUPLE.get(family)
    if layout is not None and end - start >= layout.size:
        (a, b, c, d, src, e, f, dst, g, h, i, j, num, k, m, sport, n, o, dport) = layout.unpack_from(buf, start)
        if (a, b, c, d, e, f, g, h, i, j, k, m, n, o) == _PORTS_HEADERS[family]:
            return FlowTuple(socket.inet_ntop(family, src), socket.inet_ntop(family, dst),
                             socket.ntohs(sport), socket.ntohs(dport)), num
    return _flow_slow(buf, start, end, family)


def _state(buf: bytes, span: tuple[int, int], num: int) -> Optional[str]:
    """The TCP or SCTP state in a ``CTA_PROTOINFO`` payload, if it has one."""
    info = _nested(buf, *span)
    kind, names, key = ((CTA_PROTOINFO_TCP, TCP_STATES, CTA_PROTOINFO_TCP_STATE) if num == socket.IPPROTO_TCP else
                        (CTA_PROTOINFO_SCTP, SCTP_STATES, CTA_PROTOINFO_SCTP_STATE) if num == socket.IPPROTO_SCTP else
                        (None, (), 0))
    if kind is None or kind not in info:
        return None
    state = _nested(buf, *info[kind]).get(key)
    if state is None:
        return None
    value = buf[state[0]]
    return names[value] if value < len(names) else str(value)


def _peek_layout(family: int) -> tuple[int, int, int, int, int, int, int, int]:
    """Where :func:`peek` finds its fields in the first bytes of an entry's attributes, laid out as
    ctnetlink_fill_info writes them (original tuple with ports, reply tuple with ports, status):
    (size, mask, template, orig dst, protocol number, orig dport, reply src, status offsets).
    The region masked equals the template when every attribute header is the expected one."""
    layout, headers = _PORTS_TUPLE[family], _PORTS_HEADERS[family]
    alen = 4 if family == socket.AF_INET else 16
    tuple_size = 4 + layout.size

    def region(head: tuple) -> bytes:
        """The region with these header fields and every variable field zero."""
        fields = iter(head)
        parts = []
        for _ in range(2):  # the original and the reply tuple
            outer = [next(fields), next(fields)]
            h = [next(fields) for _ in range(14)]
            zero = bytes(alen)
            values = [*h[:4], zero, h[4], h[5], zero, *h[6:10], 0, h[10], h[11], 0, h[12], h[13], 0]
            parts.append(struct.pack("=HH" + layout.format[1:], *outer, *values))
        parts.append(struct.pack("=HHI", next(fields), next(fields), 0))
        return b"".join(parts)

    expected = (tuple_size, CTA_TUPLE_ORIG | NLA_F_NESTED, *headers, tuple_size, CTA_TUPLE_REPLY | NLA_F_NESTED,
                *headers, 8, CTA_STATUS)
    ones = tuple(0xFFFF for _ in expected)
    template, mask = region(expected), region(ones)
    num = 16 + 2 * (4 + alen)
    return (len(template), int.from_bytes(mask, "big"), int.from_bytes(template, "big"),
            16 + alen, num, num + 16, tuple_size + 12, 2 * tuple_size + 4)


_PEEKS = {family: _peek_layout(family) for family in _PORTS_TUPLE}


def peek(buf: bytes, start: int, end: int) -> Optional[tuple[int, bytes, int, bytes, int]]:
    """What the stale-entry filters look at, without decoding the whole entry: protocol number,
    original destination address (packed) and port, reply source address (packed) and status.
    None when the entry is not laid out as the kernel lays out one with ports (decode it)."""
    family = buf[start]
    layout = _PEEKS.get(family)
    if layout is None:
        return None
    size, mask, template, dst, num, dport, src, status = layout
    first = start + 4
    if end - first < size or int.from_bytes(buf[first:first + size], "big") & mask != template:
        return None
    alen = 4 if family == socket.AF_INET else 16
    return (buf[first + num], buf[first + dst:first + dst + alen], (buf[first + dport] << 8) | buf[first + dport + 1],
            buf[first + src:first + src + alen], _U32.unpack_from(buf, first + status)[0])


def decode_entry(buf: bytes, start: int, end: int) -> ConntrackEntry:
    """The entry in one ``IPCTNL_MSG_CT_NEW`` message (payload ``buf[start:end]``, nfgenmsg first)."""
    family = buf[start]
    orig = reply = info = None
    status, timeout, ident = 0, None, None
    unpack, u32 = _NLA.unpack_from, _U32.unpack_from
    off = start + 4
    while off + 4 <= end:
        size, kind = unpack(buf, off)
        if size < 4:
            break
        kind &= _NLA_TYPE_MASK
        if kind == CTA_TUPLE_ORIG:
            orig = _flow(buf, off + 4, off + size, family)
        elif kind == CTA_TUPLE_REPLY:
            reply = _flow(buf, off + 4, off + size, family)
        elif kind == CTA_STATUS:
            status = u32(buf, off + 4)[0]
        elif kind == CTA_TIMEOUT:
            timeout = u32(buf, off + 4)[0]
        elif kind == CTA_ID:
            ident = u32(buf, off + 4)[0]
        elif kind == CTA_PROTOINFO:
            info = (off + 4, off + size)
        off += (size + 3) & ~3
    if orig is None or reply is None:
        raise ValueError("conntrack entry without both tuples")
    num = orig[1]
    return ConntrackEntry(FAMILY_NAMES.get(family, str(family)), PROTOCOLS.get(num, str(num)), orig[0], reply[0],
                          status=status, timeout=timeout, state=None if info is None else _state(buf, info, num),
                          id=ident)


def decode_dump(buf: bytes) -> list[ConntrackEntry]:
    """The entries of the ``IPCTNL_MSG_CT_NEW`` messages in a dump reply (other messages skipped)."""
    return [decode_entry(buf, start, end) for kind, _, _, start, end in messages(buf, len(buf)) if kind == CT_NEW]
