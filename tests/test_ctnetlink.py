"""Conntrack records and filters (dataplane.runtime.conntrack), ctnetlink messages (dataplane.runtime.ctwire)
and the index the one-dump-per-protocol cleanup matches with (dataplane.runtime.ctnetlink).

The dumps below are real kernel bytes: one ctnetlink dump reply per family, read in a
node namespace after a TCP connection and an SCTP INIT to ClusterIP 10.96.0.53 /
fd00:10:96::53 were DNATed to pod1-1 and masqueraded (``--random-fully``) by
kube-dataplane's nftables rules (netns_tests/test_ns_ctnetlink.py builds the same). pyroute2's
generic ctnetlink parser reads them too, as an independent witness of the decoder.
"""
from __future__ import annotations

import socket

import pytest
from pyroute2.netlink.nfnetlink.nfctsocket import AsyncNFCTSocket
from pyroute2.netlink.nlsocket import Marshal

from dataplane.runtime import ctwire
from dataplane.runtime.conntrack import IPS_DST_NAT, ConntrackDelete, ConntrackEntry, FlowTuple, select

DUMP_V4 = bytes.fromhex(
    "d400000000012200ff000000f93e000002000000340001801400018008000100c0000264080002000a6000351c000280"
    "050001000600000006000200dc2c000006000300005000003400028014000180080001000af4010a08000200c0000201"
    "1c0002800500010006000000060002001f90000006000300fb8e000008000300000001be080008000000000008000c00"
    "fa8420d408000b00000000010800070000000077300004802c0001800500010007000000050002000a00000005000300"
    "0a00000006000400230000000600050027000000c400000000012200ff000000f93e0000020000003400018014000180"
    "08000100c0000264080002000a6000351c0002800500010084000000060002009a090000060003000f1c000034000280"
    "14000180080001000af4010a08000200c00002011c0002800500010084000000060002000f1d000006000300a21f0000"
    "08000300000001b8080008000000000008000c0003273f2108000b00000000010800070000000009200004801c000380"
    "0500010001000000080002000000000008000300786541a5"
)

DUMP_V6 = bytes.fromhex(
    "0401000000012200ff000000f93e00000a0000004c0001802c0001801400030020010db8000000000000000000000100"
    "14000400fd0000100096000000000000000000531c0002800500010006000000060002009fd400000600030000500000"
    "4c0002802c00018014000300fd0000100244000100000000000000101400040020010db8000000000000000000000001"
    "1c0002800500010006000000060002001f90000006000300f565000008000300000001be080008000000000008000c00"
    "b9c90bff08000b00000000010800070000000077300004802c0001800500010007000000050002000a00000005000300"
    "0a00000006000400230000000600050027000000f400000000012200ff000000f93e00000a0000004c0001802c000180"
    "1400030020010db800000000000000000000010014000400fd0000100096000000000000000000531c00028005000100"
    "8400000006000200a44c0000060003000f1c00004c0002802c00018014000300fd000010024400010000000000000010"
    "1400040020010db80000000000000000000000011c0002800500010084000000060002000f1d000006000300b1610000"
    "08000300000001b8080008000000000008000c00c8f8694708000b00000000010800070000000009200004801c000380"
    "0500010001000000080002000000000008000300319923f5"
)


def decode(buffer: bytes) -> list[ConntrackEntry]:
    """The records of a ctnetlink dump reply, as dataplane.runtime.ctwire decodes them."""
    return ctwire.decode_dump(buffer)


def witness(buffer: bytes) -> list[tuple]:
    """The same dump parsed by pyroute2's ctnetlink message policy (an independent decoder): per
    entry family, protocol, both tuples, status, timeout and id."""
    marshal = Marshal()
    marshal.msg_map.update(AsyncNFCTSocket.policy)
    out = []
    for msg in marshal.parse(buffer):
        family = msg["nfgen_family"]
        v = "V6" if family == socket.AF_INET6 else "V4"
        flows = []
        for which in ("CTA_TUPLE_ORIG", "CTA_TUPLE_REPLY"):
            t = msg.get_attr(which)
            ip, proto = t.get_attr("CTA_TUPLE_IP"), t.get_attr("CTA_TUPLE_PROTO")
            flows.append(FlowTuple(ip.get_attr(f"CTA_IP_{v}_SRC"), ip.get_attr(f"CTA_IP_{v}_DST"),
                                   proto.get_attr("CTA_PROTO_SRC_PORT"), proto.get_attr("CTA_PROTO_DST_PORT")))
        num = msg.get_attr("CTA_TUPLE_ORIG").get_attr("CTA_TUPLE_PROTO").get_attr("CTA_PROTO_NUM")
        out.append((family, num, *flows, msg.get_attr("CTA_STATUS"), msg.get_attr("CTA_TIMEOUT"),
                    msg.get_attr("CTA_ID")))
    return out


@pytest.mark.parametrize("dump", [DUMP_V4, DUMP_V6], ids=["ipv4", "ipv6"])
def test_decoder_agrees_with_pyroute2(dump):
    mine = [(ctwire.FAMILIES[e.family], ctwire.protonum(e.protocol), e.orig, e.reply, e.status, e.timeout, e.id)
            for e in decode(dump)]
    assert mine == witness(dump) and len(mine) == 2


def test_kernel_dump_ipv4_decodes_to_records():
    tcp, sctp = decode(DUMP_V4)
    assert (tcp.family, tcp.protocol, tcp.state) == ("ipv4", "tcp", "TIME_WAIT")
    assert tcp.orig == FlowTuple("192.0.2.100", "10.96.0.53", 56364, 80)
    assert tcp.reply == FlowTuple("10.244.1.10", "192.0.2.1", 8080, 64398)  # random-fully source port
    assert tcp.dst_nat and tcp.src_nat and tcp.replied and tcp.timeout == 119
    assert (sctp.protocol, sctp.state, sctp.id) == ("sctp", "CLOSED", 52903713)
    assert sctp.orig == FlowTuple("192.0.2.100", "10.96.0.53", 39433, 3868)  # SCTP keeps its ports
    assert sctp.reply == FlowTuple("10.244.1.10", "192.0.2.1", 3869, 41503)
    assert sctp.dst_nat and not sctp.replied


def test_kernel_dump_ipv6_decodes_to_records():
    tcp, sctp = decode(DUMP_V6)
    assert (tcp.family, tcp.protocol, tcp.state) == ("ipv6", "tcp", "TIME_WAIT")
    assert tcp.orig == FlowTuple("2001:db8::100", "fd00:10:96::53", 40916, 80)
    assert tcp.reply == FlowTuple("fd00:10:244:1::10", "2001:db8::1", 8080, 62821)
    assert (sctp.family, sctp.protocol, sctp.state) == ("ipv6", "sctp", "CLOSED")
    assert sctp.orig == FlowTuple("2001:db8::100", "fd00:10:96::53", 42060, 3868)
    assert sctp.reply.src == "fd00:10:244:1::10" and sctp.dst_nat


def entry(protocol: str = "udp", *, family: str = "ipv4", dst: str = "10.96.0.10", dport: int = 53,
          endpoint: str = "10.244.1.10", dnat: bool = True) -> ConntrackEntry:
    return ConntrackEntry(family, protocol, FlowTuple("192.0.2.100", dst, 40000, dport),
                          FlowTuple(endpoint, "192.0.2.100", 5353, 40000), status=IPS_DST_NAT if dnat else 0)


@pytest.mark.parametrize("flt, e, expected", [
    (ConntrackDelete("ipv4", "udp", orig_dst="10.96.0.10"), entry(), True),
    (ConntrackDelete("ipv4", "udp", orig_dst="10.96.0.10"), entry(dst="10.96.0.11"), False),  # another VIP
    (ConntrackDelete("ipv4", "udp", orig_dst="10.96.0.10"), entry("tcp"), False),
    (ConntrackDelete("ipv4", "sctp", orig_dst="10.96.0.10"), entry("sctp"), True),
    (ConntrackDelete("ipv6", "udp", orig_dst="10.96.0.10"), entry(), False),
    (ConntrackDelete("ipv4", "udp", orig_dst="10.96.0.10", dst_nat="10.244.1.10"), entry(), True),
    (ConntrackDelete("ipv4", "udp", orig_dst="10.96.0.10", dst_nat="10.244.1.11"), entry(), False),
    # --dst-nat means "DNATed to": a flow straight to the endpoint is not one
    (ConntrackDelete("ipv4", "udp", dst_nat="10.244.1.10"), entry(dnat=False), False),
    (ConntrackDelete("ipv4", "udp", orig_port_dst=30053, dst_nat="10.244.1.10"),
     entry(dst="192.0.2.1", dport=30053), True),
    (ConntrackDelete("ipv4", "udp", orig_port_dst=30053, dst_nat="10.244.1.10"),
     entry(dst="192.0.2.1", dport=30054), False),
    # IPv6 addresses compare as addresses, not as text
    (ConntrackDelete("ipv6", "udp", orig_dst="fd00:10:96:0::0a", dst_nat="fd00:10:244:1:0::10"),
     entry(family="ipv6", dst="fd00:10:96::a", endpoint="fd00:10:244:1::10"), True),
])
def test_filter_matches_like_conntrack_delete(flt, e, expected):
    assert flt.matches(e) is expected


def test_select_keeps_only_matching_entries_in_order():
    a, b, other = entry(), entry("sctp", dst="10.96.0.10", endpoint="10.244.1.11"), entry(dst="10.96.0.99")
    filters = [ConntrackDelete("ipv4", "sctp", orig_dst="10.96.0.10"), ConntrackDelete("ipv4", "udp", orig_dst="10.96.0.10")]
    assert select(filters, [a, other, b]) == [a, b]
    assert select([], [a, b]) == []


# --------------------------------------------------------------------------- wire format and fast paths


def kernel_message(e: ConntrackEntry, seq: int = 1) -> bytes:
    """``e`` as a dump message laid out as the kernel's ctnetlink_fill_info lays it out: the
    original tuple, the reply tuple, the status, then the rest (timeout, id)."""
    family, num = ctwire.FAMILIES[e.family], ctwire.protonum(e.protocol)
    attrs = (ctwire._tuple_attr(ctwire.CTA_TUPLE_ORIG, family, num, e.orig)
             + ctwire._tuple_attr(ctwire.CTA_TUPLE_REPLY, family, num, e.reply)
             + ctwire._attr(ctwire.CTA_STATUS, e.status.to_bytes(4, "big"))
             + ctwire._attr(ctwire.CTA_TIMEOUT, (e.timeout or 0).to_bytes(4, "big"))
             + ctwire._attr(ctwire.CTA_ID, (e.id or 0).to_bytes(4, "big")))
    return ctwire.message(ctwire.CT_NEW, ctwire.NLM_F_MULTI, seq, family, attrs)


@pytest.mark.parametrize("dump", [DUMP_V4, DUMP_V6], ids=["ipv4", "ipv6"])
def test_peek_reads_the_kernel_layout_as_the_decoder_does(dump):
    for kind, _, _, start, end in ctwire.messages(dump, len(dump)):
        e = ctwire.decode_entry(dump, start, end)
        af = ctwire.FAMILIES[e.family]
        assert ctwire.peek(dump, start, end) == (ctwire.protonum(e.protocol), socket.inet_pton(af, e.orig.dst),
                                                 e.orig.dport, socket.inet_pton(af, e.reply.src), e.status)


def test_peek_declines_other_layouts_and_the_decoder_still_reads_them():
    e = ConntrackEntry("ipv4", "icmp", FlowTuple("192.0.2.1", "10.96.0.10"), FlowTuple("10.96.0.10", "192.0.2.1"),
                       status=8, timeout=30, id=7)  # no ports
    raw = kernel_message(e)
    [(_, _, _, start, end)] = ctwire.messages(raw, len(raw))
    assert ctwire.peek(raw, start, end) is None
    assert ctwire.decode_entry(raw, start, end) == e


def random_entry(rng, family: str) -> ConntrackEntry:
    v6 = family == "ipv6"
    ip = (lambda net, n: f"fd00:{net}::{n:x}") if v6 else (lambda net, n: f"10.{net}.0.{n}")
    dst = ip(96, rng.randint(1, 4)) if rng.random() < 0.8 else ip(1, 1)  # a VIP, or the node
    dport = rng.choice((53, 54, 30053, 30054))
    return ConntrackEntry(family, rng.choice(("udp", "udp", "sctp", "tcp")),
                          FlowTuple(ip(2, rng.randint(1, 3)), dst, rng.randint(1024, 1030), dport),
                          FlowTuple(ip(244, rng.randint(1, 4)), ip(2, 1), 5353, rng.randint(1024, 1030)),
                          status=rng.choice((0, IPS_DST_NAT, IPS_DST_NAT | 8 | 2, 8)), timeout=rng.randint(1, 99),
                          id=rng.randint(0, 2**32 - 1))


def random_filter(rng, family: str) -> ConntrackDelete:
    v6 = family == "ipv6"
    ip = (lambda net, n: f"fd00:{net}:0::{n:x}") if v6 else (lambda net, n: f"10.{net}.0.{n}")
    other = "10.96.0.1" if v6 else "fd00:96::1"  # an address of the other family: matches nothing
    pick = rng.random()
    return ConntrackDelete(family, rng.choice(("udp", "sctp")),
                           orig_dst=ip(96, rng.randint(1, 4)) if pick < 0.45 else other if pick < 0.5 else None,
                           orig_port_dst=rng.choice((None, 30053, 30054, 53)),
                           dst_nat=rng.choice((None, ip(244, rng.randint(1, 4)), ip(244, rng.randint(1, 4)))))


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_matcher_selects_exactly_what_the_filters_match(family):
    """The protocol path's index (dataplane.runtime.ctnetlink._Matcher) against ConntrackDelete.matches,
    over random tables and filter sets: ``wanted`` (on the raw message) never drops an entry a filter
    matches, and the matcher's answer is exactly ``any(f.matches(e))``."""
    import random

    from dataplane.runtime.ctnetlink import _Matcher

    rng = random.Random(17)
    checked = wanted_only = 0
    for _ in range(200):
        entries = [random_entry(rng, family) for _ in range(30)]
        filters = [random_filter(rng, family) for _ in range(rng.randint(1, 6))]
        for protocol in ("udp", "sctp"):
            mine = [f for f in filters if f.protocol == protocol]
            match = _Matcher(ctwire.FAMILIES[family], protocol, mine)
            for e in entries:
                raw = kernel_message(e)
                [(_, _, _, start, end)] = ctwire.messages(raw, len(raw))
                assert ctwire.decode_entry(raw, start, end) == e
                expected = any(f.matches(e) for f in mine)
                assert match(e) is expected
                wanted = match.wanted(raw, start, end)
                assert wanted or not expected, (e, mine)
                checked += expected
                wanted_only += wanted and not expected
    assert checked > 100 and wanted_only < checked  # the test saw matches, and the raw test prunes


@pytest.mark.parametrize("flt", [
    ConntrackDelete("ipv4", "udp", orig_dst="fd00::1"),
    ConntrackDelete("ipv6", "udp", orig_dst="fd00::1", dst_nat="10.244.1.10"),
    ConntrackDelete("ipv4", "udp", orig_dst="not-an-ip"),
])
def test_filters_that_can_match_nothing_ask_the_kernel_for_nothing(flt):
    # an entry of a family holds addresses of that family: none equals the filter's
    v6 = flt.family == "ipv6"
    entries = [entry(family=flt.family, dst=dst, endpoint=ep)
               for dst in (("fd00::1", "fd00::a") if v6 else ("10.96.0.10", "0.0.0.0"))
               for ep in (("fd00:10:244:1::10", "::") if v6 else ("10.244.1.10", "0.0.0.0"))]
    assert ctwire.filter_attrs(flt) is None and select([flt], entries) == []


def test_filter_request_names_each_field_the_filter_has():
    def attrs(flt):
        raw = ctwire.dump_request(1, ctwire.FAMILIES[flt.family], ctwire.filter_attrs(flt))
        top = ctwire._nested(raw, 20, len(raw))
        flags = ctwire._nested(raw, *top[ctwire.CTA_FILTER])
        orig_flags = int.from_bytes(raw[slice(*flags[ctwire.CTA_FILTER_ORIG_FLAGS])], "little")
        reply_flags = (int.from_bytes(raw[slice(*flags[ctwire.CTA_FILTER_REPLY_FLAGS])], "little")
                       if ctwire.CTA_FILTER_REPLY_FLAGS in flags else 0)
        return raw, top, orig_flags, reply_flags

    raw, top, orig_flags, reply_flags = attrs(ConntrackDelete("ipv4", "udp", orig_dst="10.96.0.10",
                                                              dst_nat="10.244.1.10"))
    assert orig_flags == ctwire.FILTER_PROTO_NUM | ctwire.FILTER_IP_DST and reply_flags == ctwire.FILTER_IP_SRC
    orig_ip = ctwire._nested(raw, *ctwire._nested(raw, *top[ctwire.CTA_TUPLE_ORIG])[ctwire.CTA_TUPLE_IP])
    assert raw[slice(*orig_ip[ctwire.CTA_IP_V4_DST])] == socket.inet_pton(socket.AF_INET, "10.96.0.10")
    reply_ip = ctwire._nested(raw, *ctwire._nested(raw, *top[ctwire.CTA_TUPLE_REPLY])[ctwire.CTA_TUPLE_IP])
    assert raw[slice(*reply_ip[ctwire.CTA_IP_V4_SRC])] == socket.inet_pton(socket.AF_INET, "10.244.1.10")
    assert int.from_bytes(raw[slice(*top[ctwire.CTA_STATUS])], "big") == IPS_DST_NAT
    assert int.from_bytes(raw[slice(*top[ctwire.CTA_STATUS_MASK])], "big") == IPS_DST_NAT

    # IPv6 addresses stay out of the kernel's filter (it inverts their comparison); the status stays in
    raw, top, orig_flags, reply_flags = attrs(ConntrackDelete("ipv6", "udp", orig_dst="fd00:10:96::a",
                                                              dst_nat="fd00:10:244:1::10"))
    assert (orig_flags, reply_flags) == (ctwire.FILTER_PROTO_NUM, 0) and ctwire.CTA_TUPLE_REPLY not in top
    assert int.from_bytes(raw[slice(*top[ctwire.CTA_STATUS])], "big") == IPS_DST_NAT

    raw, top, orig_flags, reply_flags = attrs(ConntrackDelete("ipv4", "sctp", orig_port_dst=30053))
    assert (orig_flags, reply_flags) == (ctwire.FILTER_PROTO_NUM | ctwire.FILTER_PROTO_DST_PORT, 0)
    assert ctwire.CTA_STATUS not in top
    proto = ctwire._nested(raw, *ctwire._nested(raw, *top[ctwire.CTA_TUPLE_ORIG])[ctwire.CTA_TUPLE_PROTO])
    assert raw[proto[ctwire.CTA_PROTO_NUM][0]] == socket.IPPROTO_SCTP
    assert raw[slice(*proto[ctwire.CTA_PROTO_DST_PORT])] == (30053).to_bytes(2, "big")
