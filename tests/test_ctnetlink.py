"""Conntrack records and filters (dataplane.runtime.conntrack) and ctnetlink decoding (dataplane.runtime.ctnetlink).

The dumps below are real kernel bytes: one ctnetlink dump reply per family, read in a
node namespace after a TCP connection and an SCTP INIT to ClusterIP 10.96.0.53 /
fd00:10:96::53 were DNATed to pod1-1 and masqueraded (``--random-fully``) by
kube-dataplane's nftables rules (netns_tests/test_ctnetlink.py builds the same).
"""
from __future__ import annotations

import pytest
from pyroute2.netlink.nfnetlink.nfctsocket import AsyncNFCTSocket
from pyroute2.netlink.nlsocket import Marshal

from dataplane.runtime.conntrack import IPS_DST_NAT, ConntrackDelete, ConntrackEntry, FlowTuple, select
from dataplane.runtime.ctnetlink import entry_from_msg

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
    """The records of a ctnetlink dump reply, parsed with pyroute2's ctnetlink message policy."""
    marshal = Marshal()
    marshal.msg_map.update(AsyncNFCTSocket.policy)
    return [entry_from_msg(msg) for msg in marshal.parse(buffer)]


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
