"""A reusable network-namespace lab: Kubernetes-like nodes, pods and external clients.

A :class:`Lab` builds a small declarative :class:`Topology` out of network
namespaces (pyroute2 + veth only; no dummy links, no IPVS), lets tests and
``dataplane lab`` start reply servers in pods, and probes services with real
TCP/UDP sockets or crafted SCTP packets. Everything it creates is removed on
exit, even after an exception, and can also be recorded in a JSON state file so
that another process can remove leftovers (:meth:`Lab.destroy_from_state`).

Topology (defaults of :meth:`Topology.simple`; every address exists only inside
the lab's namespaces)::

                         fabric ns: bridge br0 + "gw" 192.0.2.254 / 2001:db8::254
           (underlay 192.0.2.0/24, 2001:db8::/64; blackhole default: a silent dead end)
          +-----------------------+----------------------------+
      eth0 192.0.2.1          eth0 192.0.2.2             eth0 192.0.2.100
      node1 (ip_forward=1)    node2                      client1 (default via node1)
      veth1 10.244.1.1/32 scope link, fe80::1   ...
          |
      eth0 10.244.1.10/32, fd00:10:244:1::10/128   pod1-1 (default via 10.244.1.1 / fe80::1)

* Nodes: underlay address on ``eth0``; default route via the fabric gateway
  (so node-originated traffic to a VIP has a route, as on a real node);
  routes to the other nodes' pod CIDRs via their underlay address; forwarding on.
* Pods: one namespace each with one veth to their node. The node side carries
  the pod CIDR's first address as a ``/32 scope link`` gateway (and ``fe80::1``);
  the node routes the pod's ``/32``/``/128`` to that veth. Because the gateway
  address is link-scoped, MASQUERADE towards a pod picks the node's underlay IP.
* Clients: a namespace on the underlay whose default route points at one node,
  so Service VIPs route to it.
* Every namespace: ``lo`` up, ``rp_filter=0``, ICMP error rate limits off (so a
  REJECT answers every probe), IPv6 DAD off (addresses usable at once).

Names: namespaces are ``<prefix>-<name>`` (``<prefix>-fabric`` for the bridge),
the prefix is unique per lab (``dpl`` + 6 hex digits) so labs can run in
parallel. Interface names are fixed per namespace (``eth0``, ``vethN``,
``br0``, ``ulN``) and created from inside the namespaces, so they never
collide. The created-side veth ends get explicit ifindexes that differ from
their peers' (the kernel otherwise delays their carrier by up to a second) and
every link is polled until its operstate is UP.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import secrets
import select
import selectors
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, Optional, Sequence

if TYPE_CHECKING:
    from pyroute2 import IPRoute

from dataplane.conntrack import ConntrackEntry
from dataplane.errors import UsageError
from dataplane.netns import NETNS_DIR, in_netns, run_in, set_sysctls

__all__ = [
    "NodeSpec",
    "PodSpec",
    "ClientSpec",
    "Topology",
    "Lab",
    "Server",
    "Seen",
    "ProbeResult",
    "SctpSeen",
    "tcp_probe",
    "udp_probe",
    "sctp_probe",
    "sctp_probe_any",
    "SctpProbeResult",
    "conntrack_entries",
]

Outcome = Literal["ok", "refused", "timeout", "error"]
HostPort = tuple[str, int]

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
_PREFIX = re.compile(r"^[a-z][a-z0-9]{1,15}$")
_BRIDGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
FABRIC = "fabric"
POD_GATEWAY6 = "fe80::1"
_STATE_KIND = "kube-dataplane-lab"
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python 3.11 lacks the constant
_ETH_P_ALL = 0x0003
_IFA_F_NODAD = 0x02
_IP_RECVERR, _IPV6_RECVERR = 11, 25  # Linux values; not exported by Python 3.11
_SOCK_EE = struct.Struct("=IBBBBII")  # struct sock_extended_err


# =========================================================================== topology


def _ip(value: str, version: int, what: str) -> str:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError as e:
        raise UsageError(f"{what}: {e}") from None
    if addr.version != version:
        raise UsageError(f"{what}: {value} is not an IPv{version} address")
    return str(addr)


def _net(value: str, version: int, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(value)
    except ValueError as e:
        raise UsageError(f"{what}: {e}") from None
    if net.version != version:
        raise UsageError(f"{what}: {value} is not an IPv{version} network")
    return net


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    """A node: its underlay address(es) and pod CIDR(s).

    ``pod_bridge`` (opt-in): attach this node's pods to a Linux bridge of that
    name, which carries the pods' gateway addresses, instead of routing each
    pod's own veth (as bridge CNI plugins and kubenet's ``cbr0`` do).
    """

    name: str
    ip: str
    pod_cidr: str
    ip6: Optional[str] = None
    pod_cidr6: Optional[str] = None
    pod_bridge: Optional[str] = None

    @property
    def pod_gateway(self) -> str:
        """The first address of the pod CIDR: the pods' default gateway on this node."""
        return str(ipaddress.ip_network(self.pod_cidr)[1])


@dataclass(frozen=True, slots=True, kw_only=True)
class PodSpec:
    """A pod on ``node`` with an address from the node's pod CIDR(s)."""

    name: str
    node: str
    ip: str
    ip6: Optional[str] = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSpec:
    """An external client on the underlay whose default route goes ``via`` a node."""

    name: str
    ip: str
    via: str
    ip6: Optional[str] = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """Nodes on one underlay L2 segment, pods behind nodes, external clients.

    ``gateway``/``gateway6`` is an address in the fabric namespace that nodes use
    as default route; the fabric does not forward, so it is a dead end (packets
    to a VIP without rules vanish there instead of being refused).
    """

    nodes: tuple[NodeSpec, ...]
    pods: tuple[PodSpec, ...] = ()
    clients: tuple[ClientSpec, ...] = ()
    underlay: str = "192.0.2.0/24"
    underlay6: str = "2001:db8::/64"
    gateway: Optional[str] = "192.0.2.254"
    gateway6: Optional[str] = "2001:db8::254"

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "pods", tuple(self.pods))
        object.__setattr__(self, "clients", tuple(self.clients))
        self.validate()

    @classmethod
    def simple(
        cls, nodes: int = 1, pods_per_node: int = 1, clients: int = 1, *, ipv6: bool = False
    ) -> "Topology":
        """The conventional lab: ``node<i>`` 192.0.2.<i> with pods ``pod<i>-<j>`` at
        10.244.<i>.<9+j> (``fd00:10:244:<i>::<9+j>``) and ``client<k>`` at
        192.0.2.<99+k> (``2001:db8::<99+k>``) routed via ``node1``."""
        if not 1 <= nodes <= 99 or pods_per_node < 0 or pods_per_node > 200 or clients > 100:
            raise UsageError("Topology.simple: unsupported size")
        ns_, ps, cs = [], [], []
        for i in range(1, nodes + 1):
            ns_.append(
                NodeSpec(
                    name=f"node{i}",
                    ip=f"192.0.2.{i}",
                    pod_cidr=f"10.244.{i}.0/24",
                    ip6=f"2001:db8::{i}" if ipv6 else None,
                    pod_cidr6=f"fd00:10:244:{i}::/64" if ipv6 else None,
                )
            )
            for j in range(1, pods_per_node + 1):
                ps.append(
                    PodSpec(
                        name=f"pod{i}-{j}",
                        node=f"node{i}",
                        ip=f"10.244.{i}.{9 + j}",
                        ip6=f"fd00:10:244:{i}::{9 + j}" if ipv6 else None,
                    )
                )
        for k in range(1, clients + 1):
            cs.append(
                ClientSpec(
                    name=f"client{k}",
                    ip=f"192.0.2.{99 + k}",
                    ip6=f"2001:db8::{99 + k}" if ipv6 else None,
                    via="node1",
                )
            )
        return cls(nodes=tuple(ns_), pods=tuple(ps), clients=tuple(cs))

    @classmethod
    def from_cluster(cls, cluster: Any, families: Sequence[str] = ("ipv4",)) -> "Topology":
        """The topology of a lab built from a :class:`~dataplane.model.Cluster`: its Nodes on
        their InternalIPs, its endpoint Pods, a probe pod per node and two clients (see
        :func:`dataplane.labctl.derive_layout`, which also says what each member is)."""
        from dataplane.labctl import derive_layout

        return derive_layout(cluster, families).topology  # type: ignore[arg-type]

    # ------------------------------------------------------------------ lookups
    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in the topology")

    def pod(self, name: str) -> PodSpec:
        for p in self.pods:
            if p.name == name:
                return p
        raise KeyError(f"no pod {name!r} in the topology")

    def client(self, name: str) -> ClientSpec:
        for c in self.clients:
            if c.name == name:
                return c
        raise KeyError(f"no client {name!r} in the topology")

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`UsageError` for names or addresses that cannot work."""
        if not self.nodes:
            raise UsageError("topology: at least one node is needed")
        ul = _net(self.underlay, 4, "topology.underlay")
        ul6 = _net(self.underlay6, 6, "topology.underlay6")
        names: set[str] = set()
        used: set[str] = set()

        def claim_name(name: str, what: str) -> None:
            if not _NAME.match(name) or name == FABRIC:
                raise UsageError(
                    f"{what} {name!r}: names must be lower-case alphanumerics and '-', "
                    f"at most 40 characters, and not {FABRIC!r}"
                )
            if name in names:
                raise UsageError(f"{what} {name!r}: name used twice")
            names.add(name)

        def claim_ip(value: str, version: int, what: str, within=None) -> str:
            addr = _ip(value, version, what)
            if addr in used:
                raise UsageError(f"{what}: address {addr} used twice")
            if within is not None and ipaddress.ip_address(addr) not in within:
                raise UsageError(f"{what}: {addr} is not in {within}")
            used.add(addr)
            return addr

        if self.gateway:
            claim_ip(self.gateway, 4, "topology.gateway", ul)
        if self.gateway6:
            claim_ip(self.gateway6, 6, "topology.gateway6", ul6)
        cidrs: list[Any] = []
        for n in self.nodes:
            claim_name(n.name, "node")
            if n.pod_bridge is not None and (
                not _BRIDGE_NAME.match(n.pod_bridge) or n.pod_bridge in ("eth0", "lo")
                or re.fullmatch(r"veth\d+", n.pod_bridge)
            ):
                raise UsageError(
                    f"node {n.name}: pod_bridge {n.pod_bridge!r}: 1-15 characters (letters, digits, "
                    "'-', '_', '.'), not eth0, lo or vethN"
                )
            claim_ip(n.ip, 4, f"node {n.name}: ip", ul)
            pc = _net(n.pod_cidr, 4, f"node {n.name}: pod_cidr")
            if pc.prefixlen > 30:
                raise UsageError(f"node {n.name}: pod_cidr {pc} is too small")
            claim_ip(str(pc[1]), 4, f"node {n.name}: pod gateway")
            cidrs.append(pc)
            if n.ip6:
                claim_ip(n.ip6, 6, f"node {n.name}: ip6", ul6)
            if n.pod_cidr6:
                cidrs.append(_net(n.pod_cidr6, 6, f"node {n.name}: pod_cidr6"))
        for i, a in enumerate(cidrs):
            for b in cidrs[i + 1 :]:
                if a.version == b.version and a.overlaps(b):
                    raise UsageError(f"topology: pod CIDRs {a} and {b} overlap")
        node_names = {n.name for n in self.nodes}
        for p in self.pods:
            claim_name(p.name, "pod")
            if p.node not in node_names:
                raise UsageError(f"pod {p.name}: unknown node {p.node!r}")
            node = self.node(p.node)
            claim_ip(p.ip, 4, f"pod {p.name}: ip", ipaddress.ip_network(node.pod_cidr))
            if p.ip6:
                if not node.pod_cidr6:
                    raise UsageError(f"pod {p.name}: node {node.name} has no pod_cidr6")
                claim_ip(p.ip6, 6, f"pod {p.name}: ip6", ipaddress.ip_network(node.pod_cidr6))
        for c in self.clients:
            claim_name(c.name, "client")
            if c.via not in node_names:
                raise UsageError(f"client {c.name}: unknown node {c.via!r}")
            claim_ip(c.ip, 4, f"client {c.name}: ip", ul)
            if c.ip6:
                if not self.node(c.via).ip6:
                    raise UsageError(f"client {c.name}: node {c.via} has no ip6 to route via")
                claim_ip(c.ip6, 6, f"client {c.name}: ip6", ul6)


# =========================================================================== results


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


@dataclass(frozen=True, slots=True)
class SctpSeen:
    """The SCTP INIT as captured on the pod's interface (after any NAT)."""

    src: str
    dst: str
    sport: int
    dport: int
    init_tag: int


@dataclass(frozen=True, slots=True)
class Seen:
    """One connection/datagram a :class:`Server` answered."""

    proto: Literal["tcp", "udp"]
    peer: HostPort
    local: HostPort


# =========================================================================== servers


def _hp(addr: Sequence[Any]) -> HostPort:
    return (str(addr[0]), int(addr[1]))


def _fmt(hp: HostPort) -> str:
    return f"{hp[0]}:{hp[1]}"


def _parse_hp(text: str) -> HostPort:
    host, _, port = text.rpartition(":")
    return (host, int(port))


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
            msg = self._record("tcp", _hp(peer), _hp(conn.getsockname()))
            conn.sendall(msg)

    def _serve_udp(self, s: Any) -> None:
        data, anc, _flags, peer = s.recvmsg(2048, socket.CMSG_SPACE(64))
        port = s.getsockname()[1]
        if s.family == socket.AF_INET6:
            for level, type_, cdata in anc:
                if level == socket.IPPROTO_IPV6 and type_ == socket.IPV6_PKTINFO:
                    addr, ifindex = struct.unpack("=16sI", cdata[:20])
                    local_ip = socket.inet_ntop(socket.AF_INET6, addr)
                    msg = self._record("udp", _hp(peer), (local_ip, port))
                    s.sendmsg([msg], [(level, type_, struct.pack("=16sI", addr, ifindex))], 0, peer)
                    return
        else:
            for level, type_, cdata in anc:
                if level == socket.IPPROTO_IP and type_ == _IP_PKTINFO:
                    _ifindex, _spec, addr = struct.unpack("=I4s4s", cdata[:12])
                    local_ip = socket.inet_ntop(socket.AF_INET, addr)
                    msg = self._record("udp", _hp(peer), (local_ip, port))
                    reply_info = struct.pack("=I4s4s", 0, addr, b"\0\0\0\0")
                    s.sendmsg([msg], [(level, type_, reply_info)], 0, peer)
                    return
        msg = self._record("udp", _hp(peer), _hp(s.getsockname()))
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


# =========================================================================== probes


def _family(dst: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(dst.split("%")[0]).version == 6 else socket.AF_INET


def _parse_reply(text: str) -> tuple[HostPort, HostPort, str]:
    src, dst, pod = text.strip().split(" ", 2)
    return _parse_hp(src), _parse_hp(dst), pod


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
    fam = _family(dst)
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
            peer, local = _hp(s.getpeername()), _hp(s.getsockname())
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
        saw_src, saw_dst, pod = _parse_reply(reply)
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
    from scapy.layers.l2 import Ether
    from scapy.layers.sctp import SCTP, SCTPChunkInit

    fam = _family(dst)
    tag = init_tag if init_tag is not None else secrets.randbits(32) or 1
    sp = sport if sport is not None else 32768 + secrets.randbelow(28000)
    l3 = IPv6(src=src_ip, dst=dst) if fam == socket.AF_INET6 else IP(src=src_ip, dst=dst)
    pkt = l3 / SCTP(sport=sp, dport=dport, tag=0) / SCTPChunkInit(
        init_tag=tag, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=1
    )
    cap_ns, ifname = capture
    with in_netns(cap_ns):
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    with cap:
        cap.bind((ifname, 0))
        with in_netns(client_ns):
            raw = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
        with raw:
            raw.sendto(bytes(pkt), (dst, 0))
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
            if SCTP not in p or SCTPChunkInit not in p or p[SCTPChunkInit].init_tag != tag:
                continue
            l3p = p[IPv6] if IPv6 in p else p[IP]
            return SctpSeen(str(l3p.src), str(l3p.dst), int(p[SCTP].sport), int(p[SCTP].dport), tag)
    return None


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


def _icmp_error_quote(data: bytes, version: int) -> Optional[tuple[Any, Any]]:
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


def _sctp_icmp_error(data: bytes, version: int, sport: int, tag: int) -> Optional[str]:
    """``"ICMP type T code C"`` if ``data`` (read from a raw ICMP/ICMPv6 socket) is an
    error quoting our INIT: an SCTP packet from ``sport`` whose INIT chunk carries the
    initiate tag ``tag`` (a quote cut short before the chunk is judged by the port)."""
    from scapy.layers.sctp import SCTP, SCTPChunkInit, SCTPerror

    found = _icmp_error_quote(data, version)
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


def _sctp_frame_seen(frame: bytes, tag: int) -> Optional[SctpSeen]:
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

    fam = _family(dst)
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
        seen = _sctp_frame_seen(frame, tag)
        if seen is not None:
            return seen


def _drain_icmp(icmp: socket.socket, version: int, sport: int, tag: int) -> Optional[str]:
    """Read every queued ICMP message; the first error about our INIT, if any."""
    while True:
        try:
            data = icmp.recv(65535)
        except (BlockingIOError, InterruptedError):
            return None
        error = _sctp_icmp_error(data, version, sport, tag)
        if error is not None:
            return error


def conntrack_entries(
    ns: str, proto: str = "sctp", *, family: Literal["ipv4", "ipv6"] = "ipv4"
) -> list[ConntrackEntry]:
    """The conntrack table of ``ns`` for one protocol and family, read over ctnetlink
    (:func:`dataplane.ctnetlink.list_entries`)."""
    from dataplane import ctnetlink  # imports pyroute2's conntrack: only when used

    return ctnetlink.list_entries(ns, family, proto)


# =========================================================================== the lab


def _write_json_atomic(path: str, data: Mapping[str, Any]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _remove_netns(name: str) -> bool:
    if not os.path.exists(os.path.join(NETNS_DIR, name)):
        return False
    from pyroute2 import netns as _pr_netns  # imported when used: it costs a CLI start 0.1 s

    _pr_netns.remove(name)
    return True


def _wait_oper_up(ipr: IPRoute, ifnames: Sequence[str], deadline: float) -> None:
    pending = set(ifnames)
    while pending:
        # One RTM_GETLINK per link rather than a dump: recent kernels then apply
        # that link's pending link-watch event at once (a bridge's carrier is
        # otherwise reported up to ~1 s late, and its IPv6 addresses stay unusable).
        for name in sorted(pending):
            links = ipr.link("get", ifname=name)
            if links and links[0].get("operstate") == "UP":
                pending.discard(name)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"links not UP: {sorted(pending)}")
        time.sleep(0.002)


class Lab:
    """A running topology of namespaces; use as a context manager.

    >>> with Lab(Topology.simple(nodes=2, ipv6=True)) as lab:   # doctest: +SKIP
    ...     lab.serve("pod1-1", tcp_ports=[8080])
    ...     lab.tcp_probe("client1", "10.244.1.10", 8080).server_saw_src
    ('192.0.2.100', 40312)

    Names accepted wherever a namespace is expected: node, pod and client names,
    ``"fabric"``, or the full namespace name of one of them.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        prefix: Optional[str] = None,
        state_file: Optional[str | os.PathLike[str]] = None,
        timeout: float = 5.0,
    ) -> None:
        self.topology = topology
        self.prefix = prefix or f"dpl{secrets.token_hex(3)}"
        if not _PREFIX.match(self.prefix):
            raise UsageError(f"lab prefix {self.prefix!r}: 2-16 lower-case alphanumerics")
        self.state_file = os.fspath(state_file) if state_file is not None else None
        self.timeout = timeout
        self._ns: dict[str, str] = {FABRIC: f"{self.prefix}-{FABRIC}"}
        for group in (topology.nodes, topology.pods, topology.clients):
            for item in group:
                self._ns[item.name] = f"{self.prefix}-{item.name}"
        self._pod_if: dict[str, str] = {}
        self._port_if: dict[str, str] = {}
        self._created: list[str] = []
        self._servers: list[Server] = []
        self._running = False

    # ------------------------------------------------------------------ naming
    def ns(self, name: str) -> str:
        """The namespace of a node/pod/client (or ``"fabric"``); full names pass through."""
        if name in self._ns:
            return self._ns[name]
        if name in self._ns.values():
            return name
        raise KeyError(f"{name!r} is not part of lab {self.prefix}")

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace of the lab (fabric first)."""
        return tuple(self._ns.values())

    def pod_ifname(self, pod: str) -> str:
        """The node-side veth of a pod (the pod side is always ``eth0``)."""
        self.topology.pod(pod)
        return self._pod_if[pod]

    def fabric_port(self, member: str) -> str:
        """The bridge port in the fabric namespace that a node or client hangs off."""
        return self._port_if[member]

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Lab":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Build every namespace, link, address and route; tears down again on failure."""
        if self._running:
            raise UsageError(f"lab {self.prefix} is already running")
        self._running = True
        try:
            self._write_state()
            self._build()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop servers and remove every namespace the lab created (idempotent)."""
        errors: list[BaseException] = []
        for srv in self._servers:
            try:
                srv.close()
            except Exception as e:  # keep tearing down
                errors.append(e)
        self._servers.clear()
        for name in reversed(self._created):
            try:
                _remove_netns(name)
            except Exception as e:
                errors.append(e)
        self._created.clear()
        if self.state_file and not errors:
            try:
                os.unlink(self.state_file)
            except FileNotFoundError:
                pass
        self._running = False
        if errors:
            raise errors[0]

    def _write_state(self) -> None:
        if not self.state_file:
            return
        _write_json_atomic(
            self.state_file,
            {
                "kind": _STATE_KIND,
                "version": 1,
                "prefix": self.prefix,
                "pid": os.getpid(),
                "created": time.time(),
                "namespaces": list(self.namespaces),
            },
        )

    @staticmethod
    def destroy_from_state(path: str | os.PathLike[str]) -> list[str]:
        """Remove the namespaces a (possibly crashed) lab recorded in its state file.

        Only namespaces named ``<prefix>-...`` with the file's prefix are touched.
        Returns the namespaces that existed and were removed; the file is deleted.
        """
        path = os.fspath(path)
        try:
            with open(path) as f:
                state = json.load(f)
        except FileNotFoundError:
            return []
        if state.get("kind") != _STATE_KIND or not _PREFIX.match(str(state.get("prefix", ""))):
            raise UsageError(f"{path}: not a kube-dataplane lab state file")
        prefix = state["prefix"]
        removed = []
        for name in state.get("namespaces", []):
            if isinstance(name, str) and name.startswith(prefix + "-") and "/" not in name:
                if _remove_netns(name):
                    removed.append(name)
        os.unlink(path)
        return removed

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        topo = self.topology
        v6 = os.path.exists("/proc/sys/net/ipv6")
        deadline = time.monotonic() + self.timeout
        for name in self.namespaces:
            from pyroute2 import netns as _pr_netns

            _pr_netns.create(name)
            self._created.append(name)

        # ICMP errors are rate limited per destination (and on this kernel even the
        # first one was dropped): REJECT and closed ports must answer every probe.
        base = {
            "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0",
            "net.ipv4.icmp_ratelimit": "0",
        }
        if v6:
            base.update(
                {
                    "net.ipv6.icmp.ratelimit": "0",
                    "net.ipv6.conf.all.disable_ipv6": "0",
                    "net.ipv6.conf.default.disable_ipv6": "0",
                    "net.ipv6.conf.all.accept_dad": "0",
                    "net.ipv6.conf.default.accept_dad": "0",
                }
            )
        node_names = {n.name for n in topo.nodes}
        for name, ns in self._ns.items():
            values = dict(base)
            forward = "1" if name in node_names else "0"
            values["net.ipv4.ip_forward"] = forward
            if v6:
                values["net.ipv6.conf.all.forwarding"] = forward
            set_sysctls(ns, values)

        iprs: dict[str, IPRoute] = {}
        try:
            for name, ns in self._ns.items():
                with in_netns(ns):
                    from pyroute2 import IPRoute

                    iprs[name] = IPRoute()
                iprs[name].link("set", index=1, state="up")
            self._build_fabric(iprs, v6)
            for n in topo.nodes:
                self._build_node(iprs, n, v6)
            for c in topo.clients:
                self._build_client(iprs[c.name], c, v6)
            waits: dict[str, list[str]] = {FABRIC: ["gw", "gw-br", *self._port_if.values()]}
            for n in topo.nodes:
                waits[n.name] = ["eth0"] + [self._pod_if[p.name] for p in topo.pods if p.node == n.name]
                if n.pod_bridge and any(p.node == n.name for p in topo.pods):
                    waits[n.name].append(n.pod_bridge)
            for p in topo.pods:
                waits[p.name] = ["eth0"]
            for c in topo.clients:
                waits[c.name] = ["eth0"]
            for name, ifnames in waits.items():
                _wait_oper_up(iprs[name], ifnames, deadline)
        finally:
            for ipr in iprs.values():
                ipr.close()

    @staticmethod
    def _addr(ipr: IPRoute, index: int, address: str, prefixlen: int, **kw: Any) -> None:
        if ":" in address:
            kw.setdefault("flags", _IFA_F_NODAD)
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen, **kw)

    def _build_fabric(self, iprs: dict[str, IPRoute], v6: bool) -> None:
        topo = self.topology
        ipr = iprs[FABRIC]
        ipr.link(
            "add", ifname="br0", index=10, kind="bridge",
            br_stp_state=0, br_forward_delay=0, br_mcast_snooping=0,
        )
        ipr.link("set", index=10, state="up")
        # The gateway address lives on a veth whose peer is a bridge port: the
        # bridge device's own carrier is reported up to ~1 s late by the kernel.
        ipr.link("add", ifname="gw", index=20, kind="veth", peer={"ifname": "gw-br"})
        gw_br = ipr.link_lookup(ifname="gw-br")[0]
        ipr.link("set", index=gw_br, master=10, state="up")
        ul = ipaddress.ip_network(topo.underlay)
        ul6 = ipaddress.ip_network(topo.underlay6)
        if topo.gateway:
            self._addr(ipr, 20, topo.gateway, ul.prefixlen)
        if topo.gateway6 and v6:
            self._addr(ipr, 20, topo.gateway6, ul6.prefixlen)
        ipr.link("set", index=20, state="up")
        # The gateway is a silent dead end for both families (IPv6 would otherwise
        # answer "no route" with ICMPv6 while IPv4, not forwarding, drops silently).
        ipr.route("add", dst="0.0.0.0/0", type="blackhole")
        if v6:
            ipr.route("add", dst="::/0", type="blackhole")
        members = [n.name for n in topo.nodes] + [c.name for c in topo.clients]
        for k, member in enumerate(members, start=1):
            port = f"ul{k}"
            ipr.link(
                "add", ifname=port, index=100 + k, kind="veth",
                peer={"ifname": "eth0", "net_ns_fd": self._ns[member]},
            )
            ipr.link("set", index=100 + k, master=10, state="up")
            self._port_if[member] = port

    def _build_node(self, iprs: dict[str, IPRoute], n: NodeSpec, v6: bool) -> None:
        topo = self.topology
        ipr = iprs[n.name]
        ul = ipaddress.ip_network(topo.underlay)
        ul6 = ipaddress.ip_network(topo.underlay6)
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        self._addr(ipr, eth0, n.ip, ul.prefixlen)
        if n.ip6 and v6:
            self._addr(ipr, eth0, n.ip6, ul6.prefixlen)
        ipr.link("set", index=eth0, state="up")
        if topo.gateway:
            ipr.route("add", dst="0.0.0.0/0", gateway=topo.gateway)
        if topo.gateway6 and n.ip6 and v6:
            ipr.route("add", dst="::/0", gateway=topo.gateway6)
        for other in topo.nodes:
            if other.name == n.name:
                continue
            ipr.route("add", dst=other.pod_cidr, gateway=other.ip)
            if other.pod_cidr6 and other.ip6 and n.ip6 and v6:
                ipr.route("add", dst=other.pod_cidr6, gateway=other.ip6)
        pods = [p for p in topo.pods if p.node == n.name]
        bridge = None
        if n.pod_bridge:
            # The bridge holds the gateway addresses the veths hold otherwise;
            # the pods' veths are its ports, and pod routes point at it.
            bridge = 90
            ipr.link(
                "add", ifname=n.pod_bridge, index=bridge, kind="bridge",
                br_stp_state=0, br_forward_delay=0, br_mcast_snooping=0,
            )
            self._addr(ipr, bridge, n.pod_gateway, 32, scope=253)
            if v6:
                self._addr(ipr, bridge, POD_GATEWAY6, 64)
            ipr.link("set", index=bridge, state="up")
        for j, p in enumerate(pods, start=1):
            ifname, index = f"veth{j}", 100 + j
            ipr.link(
                "add", ifname=ifname, index=index, kind="veth",
                peer={"ifname": "eth0", "net_ns_fd": self._ns[p.name]},
            )
            self._pod_if[p.name] = ifname
            if bridge is not None:
                ipr.link("set", index=index, master=bridge, state="up")
                ipr.route("add", dst=f"{p.ip}/32", oif=bridge)
                if p.ip6 and v6:
                    ipr.route("add", dst=f"{p.ip6}/128", oif=bridge)
                self._build_pod(iprs[p.name], n, p, v6)
                continue
            # scope link: usable as the pods' gateway and ARP source, never picked
            # as a MASQUERADE/source address (the underlay IP is).
            self._addr(ipr, index, n.pod_gateway, 32, scope=253)
            if v6:
                self._addr(ipr, index, POD_GATEWAY6, 64)
            ipr.link("set", index=index, state="up")
            ipr.route("add", dst=f"{p.ip}/32", oif=index)
            if p.ip6 and v6:
                ipr.route("add", dst=f"{p.ip6}/128", oif=index)
            self._build_pod(iprs[p.name], n, p, v6)

    def _build_pod(self, ipr: IPRoute, n: NodeSpec, p: PodSpec, v6: bool) -> None:
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        self._addr(ipr, eth0, p.ip, 32)
        if p.ip6 and v6:
            self._addr(ipr, eth0, p.ip6, 128)
        ipr.link("set", index=eth0, state="up")
        ipr.route("add", dst=f"{n.pod_gateway}/32", oif=eth0, scope=253)
        ipr.route("add", dst="0.0.0.0/0", gateway=n.pod_gateway)
        if p.ip6 and v6:
            ipr.route("add", dst="::/0", gateway=POD_GATEWAY6, oif=eth0)

    def _build_client(self, ipr: IPRoute, c: ClientSpec, v6: bool) -> None:
        topo = self.topology
        via = topo.node(c.via)
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        self._addr(ipr, eth0, c.ip, ipaddress.ip_network(topo.underlay).prefixlen)
        if c.ip6 and v6:
            self._addr(ipr, eth0, c.ip6, ipaddress.ip_network(topo.underlay6).prefixlen)
        ipr.link("set", index=eth0, state="up")
        ipr.route("add", dst="0.0.0.0/0", gateway=via.ip)
        if c.ip6 and via.ip6 and v6:
            ipr.route("add", dst="::/0", gateway=via.ip6)

    # ------------------------------------------------------------------ using the lab
    def run(
        self, ns: str, argv: Sequence[str], input: Optional[str] = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        """:func:`dataplane.netns.run_in` in one of the lab's namespaces."""
        return run_in(self.ns(ns), argv, input=input, check=check)

    def set_sysctls(self, ns: str, values: Mapping[str, str]) -> None:
        """:func:`dataplane.netns.set_sysctls` in one of the lab's namespaces."""
        set_sysctls(self.ns(ns), values)

    def serve(
        self, pod: str, tcp_ports: Iterable[int] = (), udp_ports: Iterable[int] = ()
    ) -> Server:
        """Start reply servers in a pod (IPv4 and IPv6 wildcard); stopped on lab exit."""
        self.topology.pod(pod)
        srv = Server(
            self.ns(pod), pod, tcp_ports=tcp_ports, udp_ports=udp_ports,
            ipv6=os.path.exists("/proc/sys/net/ipv6"),
        )
        self._servers.append(srv)
        return srv

    def tcp_probe(self, ns: str, dst: str, port: int, timeout: float = 1.0, **kw: Any) -> ProbeResult:
        """:func:`tcp_probe` from one of the lab's namespaces."""
        return tcp_probe(self.ns(ns), dst, port, timeout, **kw)

    def udp_probe(self, ns: str, dst: str, port: int, timeout: float = 1.0, **kw: Any) -> ProbeResult:
        """:func:`udp_probe` from one of the lab's namespaces."""
        return udp_probe(self.ns(ns), dst, port, timeout, **kw)

    def sctp_probe(
        self,
        client_ns: str,
        src_ip: str,
        dst: str,
        dport: int,
        capture: tuple[str, str],
        **kw: Any,
    ) -> Optional[SctpSeen]:
        """:func:`sctp_probe` with lab names, e.g. ``capture=("pod1-1", "eth0")``."""
        cap_ns, ifname = capture
        return sctp_probe(self.ns(client_ns), src_ip, dst, dport, (self.ns(cap_ns), ifname), **kw)

    def sctp_probe_any(
        self,
        client_ns: str,
        src_ip: str,
        dst: str,
        dport: int,
        captures: Sequence[tuple[str, str]],
        **kw: Any,
    ) -> SctpProbeResult:
        """:func:`sctp_probe_any` with lab names; ``capture`` of the result uses lab names too."""
        full = [(self.ns(cap_ns), ifname) for cap_ns, ifname in captures]
        result = sctp_probe_any(self.ns(client_ns), src_ip, dst, dport, full, **kw)
        if result.capture is not None:
            result = SctpProbeResult(result.outcome, result.seen, captures[full.index(result.capture)], result.error)
        return result

    def conntrack_entries(
        self, ns: str, proto: str = "sctp", *, family: Literal["ipv4", "ipv6"] = "ipv4"
    ) -> list[ConntrackEntry]:
        """:func:`conntrack_entries` of one of the lab's namespaces."""
        return conntrack_entries(self.ns(ns), proto, family=family)
