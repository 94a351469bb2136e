"""TCP and UDP probes from a namespace: connect or send, read a :class:`~dataplane.lab.server.Server`
reply, and classify what happened (ok, refused, timeout, error)."""
from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Literal, Optional

from ..runtime.netns import in_netns
from .server import HostPort, host_port, parse_reply

__all__ = ["Outcome", "ProbeResult", "socket_family", "tcp_probe", "udp_probe"]

Outcome = Literal["ok", "refused", "timeout", "error"]
_IP_RECVERR, _IPV6_RECVERR = 11, 25  # Linux values; not exported by Python 3.11
_SOCK_EE = struct.Struct("=IBBBBII")  # struct sock_extended_err


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one TCP/UDP probe saw.

    ``peer`` is the client's ``getpeername()`` (still the VIP when replies are
    un-NATed), ``local`` its ``getsockname()``; ``server_saw_src``/``server_saw_dst``
    are what the pod's server reported as the connection's peer and local address
    (the post-NAT tuple) and ``pod`` the name of the pod that answered.
    """

    outcome: Outcome
    peer: Optional[HostPort] = None
    local: Optional[HostPort] = None
    server_saw_src: Optional[HostPort] = None
    server_saw_dst: Optional[HostPort] = None
    pod: Optional[str] = None
    reply: Optional[str] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def socket_family(dst: str) -> int:
    """``AF_INET`` or ``AF_INET6`` for a destination address (a ``%zone`` suffix allowed)."""
    return socket.AF_INET6 if ipaddress.ip_address(dst.split("%")[0]).version == 6 else socket.AF_INET


def _errqueue_errno(s: socket.socket) -> int:
    """The errno of the first ICMP error queued on ``s`` (``IP_RECVERR``), or 0."""
    while True:
        try:
            _data, anc, _flags, _addr = s.recvmsg(1, 512, socket.MSG_ERRQUEUE)
        except (BlockingIOError, InterruptedError):
            return 0
        for level, type_, cdata in anc:
            if (level, type_) in ((socket.IPPROTO_IP, _IP_RECVERR), (socket.IPPROTO_IPV6, _IPV6_RECVERR)):
                ee_errno = _SOCK_EE.unpack_from(cdata)[0]
                if ee_errno != errno.EMSGSIZE:  # PMTU news is not a failure
                    return ee_errno


def _tcp_connect(s: socket.socket, addr: tuple[str, int], deadline: float) -> None:
    """Non-blocking connect that also honours ICMP errors the kernel records only as
    "soft": an ICMP error (e.g. from an instant REJECT one hop away) that arrives while
    connect() still holds the socket lock would otherwise surface only after SYN
    retransmissions, i.e. as a timeout. ``IP_RECVERR`` queues it, poll() sees POLLERR."""
    if s.family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
    else:
        s.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
    s.setblocking(False)
    rc = s.connect_ex(addr)
    if rc == 0:
        return
    if rc != errno.EINPROGRESS:
        raise OSError(rc, os.strerror(rc))
    poller = select.poll()
    poller.register(s, select.POLLOUT | select.POLLERR)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        events = poller.poll(max(1, int(left * 1000)))
        if not events:
            continue
        err = _errqueue_errno(s) or s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))  # ECONNREFUSED -> ConnectionRefusedError
        if any(ev & select.POLLOUT for _, ev in events):
            return
        time.sleep(0.001)  # POLLERR for an ignored queue entry: poll again


def _probe(
    kind: int, ns: str, dst: str, port: int, timeout: float, src: Optional[str], sport: Optional[int],
    payload: bytes, mark: Optional[int] = None,
) -> ProbeResult:
    fam = socket_family(dst)
    with in_netns(ns):
        s = socket.socket(fam, kind)
    peer = local = None
    send_error: Optional[OSError] = None
    deadline = time.monotonic() + timeout
    with s:
        try:
            s.settimeout(timeout)
            if mark is not None:  # for policy routing (``ip rule fwmark``) in the sending namespace
                s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            if src is not None or sport is not None:
                s.bind((src or ("::" if fam == socket.AF_INET6 else "0.0.0.0"), sport or 0))
            if kind == socket.SOCK_STREAM:
                _tcp_connect(s, (dst, port), deadline)
                s.settimeout(max(deadline - time.monotonic(), 0.001))
            else:
                s.connect((dst, port))
            peer, local = host_port(s.getpeername()), host_port(s.getsockname())
            chunks: list[bytes] = []
            if kind == socket.SOCK_DGRAM:
                try:
                    s.send(payload)
                except PermissionError as e:
                    # dropped by a local OUTPUT rule; for a REJECT the ICMP error
                    # arrives right after and turns the recv below into ECONNREFUSED
                    send_error = e
                chunks.append(s.recv(4096))
            else:
                while True:
                    s.settimeout(max(deadline - time.monotonic(), 0.001))
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except ConnectionRefusedError:
            return ProbeResult("refused", peer, local, error="connection refused")
        except (TimeoutError, socket.timeout):
            if send_error is not None:
                return ProbeResult("error", peer, local, error=send_error.strerror)
            return ProbeResult("timeout", peer, local, error="timed out")
        except OSError as e:
            return ProbeResult("error", peer, local, error=e.strerror or str(e))
    reply = b"".join(chunks).decode(errors="replace")
    try:
        saw_src, saw_dst, pod = parse_reply(reply)
    except ValueError:
        return ProbeResult("error", peer, local, reply=reply, error=f"unexpected reply {reply!r}")
    return ProbeResult("ok", peer, local, saw_src, saw_dst, pod, reply)


def tcp_probe(
    ns: str, dst: str, port: int, timeout: float = 1.0, *, src: Optional[str] = None,
    sport: Optional[int] = None, mark: Optional[int] = None,
) -> ProbeResult:
    """Connect from namespace ``ns`` to ``dst:port`` and read a :class:`Server` reply.

    ``refused`` means ECONNREFUSED (a RST, or ICMP port-unreachable from a REJECT
    rule); ``timeout`` that nothing answered within ``timeout`` seconds in total.
    ``mark``: the socket's ``SO_MARK`` (to pick a route with ``ip rule fwmark``).
    """
    return _probe(socket.SOCK_STREAM, ns, dst, port, timeout, src, sport, b"", mark)


def udp_probe(
    ns: str, dst: str, port: int, timeout: float = 1.0, *, src: Optional[str] = None,
    sport: Optional[int] = None, payload: bytes = b"probe", mark: Optional[int] = None,
) -> ProbeResult:
    """Send one datagram from a *connected* UDP socket in ``ns`` and read the reply.

    A connected socket only accepts replies from ``dst:port``, so ``ok`` also
    proves the reply was un-NATed; ICMP port-unreachable gives ``refused``.
    ``mark``: the socket's ``SO_MARK`` (to pick a route with ``ip rule fwmark``).
    """
    return _probe(socket.SOCK_DGRAM, ns, dst, port, timeout, src, sport, payload, mark)
