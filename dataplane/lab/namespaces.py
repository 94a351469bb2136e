"""A running lab: a :class:`~dataplane.lab.topology.Topology` built in network namespaces.

A :class:`Lab` builds a small declarative :class:`Topology` out of network
namespaces (pyroute2 + veth only; no dummy links, no IPVS), lets tests and
``dataplane lab`` start reply servers in pods, and probes services with real
TCP/UDP sockets or crafted SCTP packets. Everything it creates is removed on
exit, even after an exception, and can also be recorded in a JSON state file so
that another process can remove leftovers (:meth:`Lab.destroy_from_state`).

Names: namespaces are ``<prefix>-<name>`` (``<prefix>-fabric`` for the bridge),
the prefix is unique per lab (``dpl`` + 6 hex digits) so labs can run in
parallel. Interface names are fixed per namespace (``eth0``, ``vethN``,
``br0``, ``ulN``) and created from inside the namespaces, so they never
collide. The created-side veth ends get explicit ifindexes that differ from
their peers' (the kernel otherwise delays their carrier by up to a second) and
every link is polled until its operstate is UP.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import subprocess
import time
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, Optional, Sequence

if TYPE_CHECKING:
    from pyroute2 import IPRoute

from ..runtime.conntrack import ConntrackEntry
from ..errors import UsageError
from ..runtime.netns import NETNS_DIR, in_netns, run_in, set_sysctls
from .probes import ProbeResult, tcp_probe, udp_probe
from .sctp import SctpProbeResult, SctpSeen, sctp_probe, sctp_probe_any
from .server import Server
from .topology import FABRIC, POD_GATEWAY6, ClientSpec, NodeSpec, PodSpec, Topology

__all__ = ["STATE_KIND", "Lab", "conntrack_entries"]

STATE_KIND = "kube-dataplane-lab"  # the "kind" of every lab state file
_PREFIX = re.compile(r"^[a-z][a-z0-9]{1,15}$")
_IFA_F_NODAD = 0x02


def conntrack_entries(
    ns: str, proto: str = "sctp", *, family: Literal["ipv4", "ipv6"] = "ipv4"
) -> list[ConntrackEntry]:
    """The conntrack table of ``ns`` for one protocol and family, read over ctnetlink
    (:func:`dataplane.runtime.ctnetlink.list_entries`)."""
    from ..runtime import ctnetlink  # imports pyroute2's conntrack: only when used

    return ctnetlink.list_entries(ns, family, proto)


def write_json_atomic(path: str, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON to ``path``: a temporary file renamed over it, so a reader sees the old
    or the new content, never a part."""
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
        write_json_atomic(
            self.state_file,
            {
                "kind": STATE_KIND,
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
        if state.get("kind") != STATE_KIND or not _PREFIX.match(str(state.get("prefix", ""))):
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
        """:func:`dataplane.runtime.netns.run_in` in one of the lab's namespaces."""
        return run_in(self.ns(ns), argv, input=input, check=check)

    def set_sysctls(self, ns: str, values: Mapping[str, str]) -> None:
        """:func:`dataplane.runtime.netns.set_sysctls` in one of the lab's namespaces."""
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
