"""ICMP/ICMPv6 errors about a lab probe, decoded with scapy's layers (dataplane.lab.icmp).

The messages are real kernel bytes, read from raw ICMP/ICMPv6 sockets in a client
namespace after kube-dataplane's nftables rules rejected an SCTP INIT (source port
40777, initiate tag 0x5ca1ab1e) and a UDP datagram (source port 40053) sent to a
ClusterIP without endpoints (10.96.0.53 / fd00:10:96::53) through node 192.0.2.1 /
2001:db8::1. IPv4 raw sockets return the IP header too, IPv6 ones only the ICMPv6 message.
"""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, UDPerror
from scapy.layers.inet6 import IPerror6

from dataplane.lab.icmp import icmp_error_quote, sctp_icmp_error

V4_SCTP_REJECT = bytes.fromhex(
    "45c00050c9e2000040012ba5c0000201c00002640303fa580000000045000034000100003f84ae4cc00002640a600035"
    "9f490f1c000000007662d504010000145ca1ab1e0000ffff0001000100000001"
)
V4_UDP_REJECT = bytes.fromhex(
    "45c00039c9e3000040012bbbc0000201c000026403032235000000004500001d877b40003f11e75bc00002640a600035"
    "9c7500350009cd1371"
)
V6_SCTP_REJECT = bytes.fromhex(
    "01048e4700000000600000000020843f20010db8000000000000000000000100fd000010009600000000000000000053"
    "9f490f1c000000007662d504010000145ca1ab1e0000ffff0001000100000001"
)
V6_UDP_REJECT = bytes.fromhex(
    "010465e300000000600763ae0009113f20010db8000000000000000000000100fd000010009600000000000000000053"
    "9c75003500092ccd71"
)
V6_NEIGHBOUR_ADVERT = bytes.fromhex("88004868e000000020010db80000000000000000000000010201bea3ed9716d2")
TAG = 0x5CA1AB1E


@pytest.mark.parametrize("data, version, expected", [
    (V4_SCTP_REJECT, 4, "ICMP type 3 code 3"),  # port unreachable
    (V6_SCTP_REJECT, 6, "ICMPv6 type 1 code 4"),  # port unreachable
])
def test_reject_of_our_init_is_recognised(data, version, expected):
    assert sctp_icmp_error(data, version, 40777, TAG) == expected


@pytest.mark.parametrize("data, version", [(V4_SCTP_REJECT, 4), (V6_SCTP_REJECT, 6)])
def test_errors_about_another_init_are_not_ours(data, version):
    assert sctp_icmp_error(data, version, 40778, TAG) is None  # another source port
    assert sctp_icmp_error(data, version, 40777, TAG + 1) is None  # another initiate tag


@pytest.mark.parametrize("data, version", [(V4_UDP_REJECT, 4), (V6_UDP_REJECT, 6), (V6_NEIGHBOUR_ADVERT, 6)])
def test_other_messages_are_not_ours(data, version):
    assert sctp_icmp_error(data, version, 40053, TAG) is None  # a UDP quote has that port, but is no SCTP


def test_quote_layers_are_scapy_error_layers():
    error, quote = icmp_error_quote(V4_UDP_REJECT, 4)
    assert (error.type, error.code, quote.src, quote.dst) == (3, 3, "192.0.2.100", "10.96.0.53")
    assert (quote[UDPerror].sport, quote[UDPerror].dport) == (40053, 53)
    error6, quote6 = icmp_error_quote(V6_UDP_REJECT, 6)
    assert isinstance(quote6, IPerror6) and (quote6.src, quote6.dst) == ("2001:db8::100", "fd00:10:96::53")
    assert (quote6[UDPerror].sport, quote6[UDPerror].dport) == (40053, 53)
    assert icmp_error_quote(V6_NEIGHBOUR_ADVERT, 6) is None
    echo_reply = bytes(IP(src="192.0.2.1", dst="192.0.2.100") / ICMP(type=0) / b"ping")
    assert icmp_error_quote(echo_reply, 4) is None


def test_quote_cut_before_the_init_chunk_is_judged_by_port():
    # routers may quote only the first bytes: IP header (20) + SCTP common header (12)
    short = V4_SCTP_REJECT[:20 + 8 + 20 + 12]
    assert sctp_icmp_error(short, 4, 40777, TAG) == "ICMP type 3 code 3"
    assert sctp_icmp_error(short, 4, 40778, TAG) is None
