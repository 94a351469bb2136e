"""ICMP/ICMPv6 errors read from a raw socket, decoded with scapy: which packet they quote."""
from __future__ import annotations

import socket
from typing import Any, Optional

__all__ = ["icmp_error_quote", "sctp_icmp_error"]


def icmp_error_quote(data: bytes, version: int) -> Optional[tuple[Any, Any]]:
    """The ICMP/ICMPv6 error layer and the packet it quotes (scapy's ``IPerror``/``IPerror6``
    with its ``TCPerror``/``UDPerror``/``SCTPerror``...) of a message read from a raw
    ICMP/ICMPv6 socket, or None if it is no error message.

    Errors: destination unreachable, time exceeded, parameter problem (not
    redirects, echo replies, or ICMPv6's packet-too-big and neighbour discovery).
    """
    from scapy.layers.inet import ICMP, IP, IPerror
    from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6ParamProblem, ICMPv6TimeExceeded, IPerror6, IPv6

    if version == 4:  # a raw IPv4 socket returns the IP header too
        pkt = IP(data)
        error = pkt.getlayer(ICMP)
        if error is None or error.type not in (3, 11, 12):
            return None
        quote = error.getlayer(IPerror)
    else:  # ... a raw IPv6 socket only the ICMPv6 message: dissect it behind a neutral IPv6 header
        pkt = IPv6(bytes(IPv6(nh=socket.IPPROTO_ICMPV6, plen=len(data))) + data)
        error = pkt.payload
        if not isinstance(error, (ICMPv6DestUnreach, ICMPv6TimeExceeded, ICMPv6ParamProblem)):
            return None
        quote = error.getlayer(IPerror6)
    return None if quote is None else (error, quote)


def sctp_icmp_error(data: bytes, version: int, sport: int, tag: int) -> Optional[str]:
    """``"ICMP type T code C"`` if ``data`` (read from a raw ICMP/ICMPv6 socket) is an
    error quoting our INIT: an SCTP packet from ``sport`` whose INIT chunk carries the
    initiate tag ``tag`` (a quote cut short before the chunk is judged by the port)."""
    from scapy.layers.sctp import SCTP, SCTPChunkInit, SCTPerror

    found = icmp_error_quote(data, version)
    if found is None:
        return None
    error, quote = found
    sctp = quote.getlayer(SCTPerror)  # under IPerror; scapy dissects IPerror6's as plain SCTP
    if sctp is None:
        sctp = quote.getlayer(SCTP)
    if sctp is None or sctp.sport != sport:
        return None
    init = sctp.getlayer(SCTPChunkInit)
    if init is not None and init.init_tag != tag:
        return None
    return f"ICMP{'v6' if version == 6 else ''} type {error.type} code {error.code}"
