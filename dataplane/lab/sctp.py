"""SCTP probes without SCTP sockets: a crafted INIT sent through a raw socket, looked for on
capture interfaces (AF_PACKET) and in the sender's ICMP errors; netfilter tracks and NATs SCTP
on its own."""
from __future__ import annotations

import secrets
import selectors
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from ..runtime.netns import in_netns
from .icmp import sctp_icmp_error
from .probes import Outcome, socket_family

__all__ = ["SctpSeen", "SctpProbeResult", "sctp_probe", "sctp_probe_any", "sctp_frame_seen"]

_ETH_P_ALL = 0x0003


@dataclass(frozen=True, slots=True)
class SctpSeen:
    """The SCTP INIT as captured on the pod's interface (after any NAT)."""

    src: str
    dst: str
    sport: int
    dport: int
    init_tag: int


@dataclass(frozen=True, slots=True)
class SctpProbeResult:
    """What :func:`sctp_probe_any` saw.

    ``ok``: the INIT arrived at ``capture`` (a ``(namespace, ifname)`` pair) as
    ``seen``; ``refused``: no capture saw it and an ICMP error quoting it came
    back to the sender (``error`` names it, e.g. a REJECT's port unreachable);
    ``error``: sending failed (``EPERM``: a rule of the sending namespace dropped
    it) and no ICMP error came; ``timeout``: none of these happened.
    """

    outcome: Outcome
    seen: Optional[SctpSeen] = None
    capture: Optional[tuple[str, str]] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def sctp_probe(
    client_ns: str,
    src_ip: str,
    dst: str,
    dport: int,
    capture: tuple[str, str],
    *,
    sport: Optional[int] = None,
    init_tag: Optional[int] = None,
    timeout: float = 1.0,
) -> Optional[SctpSeen]:
    """Send a crafted SCTP INIT from ``client_ns`` and report how it arrived at ``capture``.

    The INIT (built with scapy, sent through a raw IP socket opened in
    ``client_ns``) is looked for on ``capture = (namespace, ifname)`` with an
    AF_PACKET socket, identified by its initiate tag, which NAT leaves alone.
    Returns what that interface saw, or None if it did not arrive within
    ``timeout``. No SCTP socket support is needed anywhere: netfilter tracks and
    NATs SCTP on its own.
    """
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.sctp import SCTP, SCTPChunkInit

    fam = socket_family(dst)
    tag = init_tag if init_tag is not None else secrets.randbits(32) or 1
    sp = sport if sport is not None else 32768 + secrets.randbelow(28000)
    l3 = IPv6(src=src_ip, dst=dst) if fam == socket.AF_INET6 else IP(src=src_ip, dst=dst)
    pkt = l3 / SCTP(sport=sp, dport=dport, tag=0) / SCTPChunkInit(
        init_tag=tag, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=1
    )
    p = send_and_capture(client_ns, bytes(pkt), dst, capture,
                         lambda f: SCTP in f and SCTPChunkInit in f and f[SCTPChunkInit].init_tag == tag,
                         timeout=timeout)
    if p is None:
        return None
    l3p = p[IPv6] if IPv6 in p else p[IP]
    return SctpSeen(str(l3p.src), str(l3p.dst), int(p[SCTP].sport), int(p[SCTP].dport), tag)


def send_and_capture(sender_ns: str, packet: bytes, dst: str, capture: tuple[str, str],
                     match: Callable[[Any], bool], *, timeout: float = 1.0) -> Optional[Any]:
    """Send one crafted IPv4/IPv6 ``packet`` (built with scapy) to ``dst`` through a raw IP socket
    opened in namespace ``sender_ns``, and return the first frame received on ``capture =
    (namespace, ifname)`` (an AF_PACKET socket; parsed as scapy ``Ether``) for which
    ``match(frame)`` is true, or None when none arrives within ``timeout``. Frames the
    interface sends are ignored. scapy only builds and parses; the sockets are the stdlib's."""
    from scapy.layers.l2 import Ether

    fam = socket_family(dst)
    cap_ns, ifname = capture
    with in_netns(cap_ns):
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    with cap:
        cap.bind((ifname, 0))
        with in_netns(sender_ns):
            raw = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
        with raw:
            raw.sendto(packet, (dst, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            cap.settimeout(left)
            try:
                frame, addr = cap.recvfrom(65535)
            except (TimeoutError, socket.timeout):
                return None
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            p = Ether(frame)
            if match(p):
                return p
    return None


def sctp_frame_seen(frame: bytes, tag: int) -> Optional[SctpSeen]:
    """The INIT with initiate tag ``tag`` in an Ethernet frame, or None."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.layers.sctp import SCTP, SCTPChunkInit

    p = Ether(frame)
    if SCTP not in p or SCTPChunkInit not in p or p[SCTPChunkInit].init_tag != tag:
        return None
    l3p = p[IPv6] if IPv6 in p else p[IP]
    return SctpSeen(str(l3p.src), str(l3p.dst), int(p[SCTP].sport), int(p[SCTP].dport), tag)


def sctp_probe_any(
    client_ns: str,
    src_ip: str,
    dst: str,
    dport: int,
    captures: Sequence[tuple[str, str]],
    *,
    sport: Optional[int] = None,
    init_tag: Optional[int] = None,
    timeout: float = 1.0,
    mark: Optional[int] = None,
) -> SctpProbeResult:
    """Like :func:`sctp_probe`, but watching several interfaces at once and the sender's ICMP errors.

    The INIT is looked for on every ``(namespace, ifname)`` of ``captures`` (so a
    load-balanced VIP can be probed without knowing which endpoint it picks); a
    raw ICMP socket in ``client_ns`` catches errors quoting the INIT (a REJECT).
    An arrival wins over an error (a pod without SCTP support answers the INIT
    with an ICMP error of its own). ``mark``: the sending socket's ``SO_MARK``.
    """
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.sctp import SCTP, SCTPChunkInit

    fam = socket_family(dst)
    version = 6 if fam == socket.AF_INET6 else 4
    tag = init_tag if init_tag is not None else secrets.randbits(32) or 1
    sp = sport if sport is not None else 32768 + secrets.randbelow(28000)
    l3 = IPv6(src=src_ip, dst=dst) if version == 6 else IP(src=src_ip, dst=dst)
    pkt = l3 / SCTP(sport=sp, dport=dport, tag=0) / SCTPChunkInit(
        init_tag=tag, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=1
    )
    socks: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    try:
        for cap_ns, ifname in captures:
            with in_netns(cap_ns):
                cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
            socks.append(cap)
            cap.bind((ifname, 0))
            cap.setblocking(False)
            sel.register(cap, selectors.EVENT_READ, (cap_ns, ifname))
        with in_netns(client_ns):
            icmp = socket.socket(
                fam, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if version == 6 else socket.IPPROTO_ICMP
            )
            socks.append(icmp)
            raw = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
            socks.append(raw)
        if mark is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        icmp.setblocking(False)
        sel.register(icmp, selectors.EVENT_READ, None)
        send_error: Optional[str] = None
        with raw:
            try:
                raw.sendto(bytes(pkt), (dst, 0))
            except PermissionError as e:  # dropped (or rejected) by an OUTPUT rule of client_ns itself
                send_error = e.strerror
        deadline = time.monotonic() + timeout
        error: Optional[str] = None
        while error is None and (left := deadline - time.monotonic()) > 0:
            for key, _ in sorted(sel.select(left), key=lambda kv: kv[0].data is None):
                if key.data is None:
                    error = error or _drain_icmp(key.fileobj, version, sp, tag)  # type: ignore[arg-type]
                    continue
                found = _drain_capture(key.fileobj, tag)  # type: ignore[arg-type]
                if found is not None:
                    return SctpProbeResult("ok", found, key.data)
        if error is not None:
            # the INIT may have arrived just before the error it caused: look once more
            for key in list(sel.get_map().values()):
                if key.data is not None and (found := _drain_capture(key.fileobj, tag)) is not None:  # type: ignore[arg-type]
                    return SctpProbeResult("ok", found, key.data)
            return SctpProbeResult("refused", error=error)
        if send_error is not None:
            return SctpProbeResult("error", error=send_error)
        return SctpProbeResult("timeout", error="timed out")
    finally:
        sel.close()
        for s in socks:
            s.close()


def _drain_capture(cap: socket.socket, tag: int) -> Optional[SctpSeen]:
    """Read every queued frame of a capture socket; the INIT with ``tag`` if among them."""
    while True:
        try:
            frame, addr = cap.recvfrom(65535)
        except (BlockingIOError, InterruptedError):
            return None
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        seen = sctp_frame_seen(frame, tag)
        if seen is not None:
            return seen


def _drain_icmp(icmp: socket.socket, version: int, sport: int, tag: int) -> Optional[str]:
    """Read every queued ICMP message; the first error about our INIT, if any."""
    while True:
        try:
            data = icmp.recv(65535)
        except (BlockingIOError, InterruptedError):
            return None
        error = sctp_icmp_error(data, version, sport, tag)
        if error is not None:
            return error
