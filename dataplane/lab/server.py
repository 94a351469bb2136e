"""Reply servers for lab pods and nodes: each TCP connection and UDP datagram is answered
with what the server saw of it (``"<peer> <local> <name>"``), so a probe learns the post-NAT tuple."""
from __future__ import annotations

import selectors
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

from ..runtime.netns import in_netns

__all__ = ["HostPort", "Seen", "Server", "host_port", "parse_reply"]

HostPort = tuple[str, int]
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python 3.11 lacks the constant


@dataclass(frozen=True, slots=True)
class Seen:
    """One connection/datagram a :class:`Server` answered."""

    proto: Literal["tcp", "udp"]
    peer: HostPort
    local: HostPort


def host_port(addr: Sequence[Any]) -> HostPort:
    """A socket address as ``(host, port)``."""
    return (str(addr[0]), int(addr[1]))


def _fmt(hp: HostPort) -> str:
    return f"{hp[0]}:{hp[1]}"


def _parse_hp(text: str) -> HostPort:
    host, _, port = text.rpartition(":")
    return (host, int(port))


def parse_reply(text: str) -> tuple[HostPort, HostPort, str]:
    """A :class:`Server` reply split into (peer, local, name); ValueError if it is none."""
    src, dst, pod = text.strip().split(" ", 2)
    return _parse_hp(src), _parse_hp(dst), pod


class Server:
    """TCP and UDP reply servers in one namespace, served by one thread.

    Each TCP connection and each UDP datagram is answered with
    ``"<peerip>:<peerport> <localip>:<localport> <name>"``. Sockets are bound to
    the IPv4 and the IPv6 wildcard address; UDP replies are sent from the
    address the datagram was sent to (``IP_PKTINFO``), as a real service would.
    """

    def __init__(
        self,
        ns: str,
        name: str,
        *,
        tcp_ports: Iterable[int] = (),
        udp_ports: Iterable[int] = (),
        ipv6: bool = True,
    ) -> None:
        self.ns = ns
        self.name = name
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._socks: list[socket.socket] = []
        self._wake_r, self._wake_w = socket.socketpair()
        families = [socket.AF_INET] + ([socket.AF_INET6] if ipv6 else [])
        try:
            with in_netns(ns):
                for port in tcp_ports:
                    for fam in families:
                        self._add(self._listen(fam, socket.SOCK_STREAM, port), "tcp")
                for port in udp_ports:
                    for fam in families:
                        self._add(self._listen(fam, socket.SOCK_DGRAM, port), "udp")
        except BaseException:
            self._close_sockets()
            raise
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name=f"lab-server-{name}", daemon=True)
        self._thread.start()

    @staticmethod
    def _listen(family: int, type_: int, port: int) -> socket.socket:
        s = socket.socket(family, type_)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if type_ == socket.SOCK_DGRAM:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                s.bind(("::", port))
            else:
                if type_ == socket.SOCK_DGRAM:
                    s.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
                s.bind(("0.0.0.0", port))
            if type_ == socket.SOCK_STREAM:
                s.listen(64)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        return s

    def _add(self, s: socket.socket, proto: str) -> None:
        self._socks.append(s)
        self._sel.register(s, selectors.EVENT_READ, proto)

    def _loop(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select():
                if key.data == "wake":
                    return
                try:
                    if key.data == "tcp":
                        self._serve_tcp(key.fileobj)
                    else:
                        self._serve_udp(key.fileobj)
                except (BlockingIOError, InterruptedError, ConnectionError, TimeoutError):
                    pass
                except OSError:
                    if self._stop:
                        return

    def _record(self, proto: str, peer: HostPort, local: HostPort) -> bytes:
        with self._lock:
            self.seen.append(Seen(proto, peer, local))  # type: ignore[arg-type]
        return f"{_fmt(peer)} {_fmt(local)} {self.name}".encode()

    def _serve_tcp(self, lsock: Any) -> None:
        conn, peer = lsock.accept()
        with conn:
            conn.settimeout(1.0)
            msg = self._record("tcp", host_port(peer), host_port(conn.getsockname()))
            conn.sendall(msg)

    def _serve_udp(self, s: Any) -> None:
        data, anc, _flags, peer = s.recvmsg(2048, socket.CMSG_SPACE(64))
        port = s.getsockname()[1]
        if s.family == socket.AF_INET6:
            for level, type_, cdata in anc:
                if level == socket.IPPROTO_IPV6 and type_ == socket.IPV6_PKTINFO:
                    addr, ifindex = struct.unpack("=16sI", cdata[:20])
                    local_ip = socket.inet_ntop(socket.AF_INET6, addr)
                    msg = self._record("udp", host_port(peer), (local_ip, port))
                    s.sendmsg([msg], [(level, type_, struct.pack("=16sI", addr, ifindex))], 0, peer)
                    return
        else:
            for level, type_, cdata in anc:
                if level == socket.IPPROTO_IP and type_ == _IP_PKTINFO:
                    _ifindex, _spec, addr = struct.unpack("=I4s4s", cdata[:12])
                    local_ip = socket.inet_ntop(socket.AF_INET, addr)
                    msg = self._record("udp", host_port(peer), (local_ip, port))
                    reply_info = struct.pack("=I4s4s", 0, addr, b"\0\0\0\0")
                    s.sendmsg([msg], [(level, type_, reply_info)], 0, peer)
                    return
        msg = self._record("udp", host_port(peer), host_port(s.getsockname()))
        s.sendto(msg, peer)

    def _close_sockets(self) -> None:
        for s in self._socks:
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        self._socks.clear()

    def close(self) -> None:
        """Stop the thread and close every socket (idempotent)."""
        if getattr(self, "_thread", None) is not None and self._thread.is_alive():
            self._stop = True
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
            self._thread.join(timeout=5)
        self._close_sockets()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
