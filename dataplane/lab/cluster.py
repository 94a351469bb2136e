"""A whole cluster in network namespaces: a :class:`~dataplane.lab.layout.Layout` built with
:class:`~dataplane.lab.namespaces.Lab`, every node's own rules loaded with
:func:`~dataplane.runtime.apply.apply_cluster`, and the reply servers started."""
from __future__ import annotations

import ipaddress
import os
import time
from typing import Any, Optional

from ..runtime.apply import STATE_DIR, apply_cluster, forget
from ..backends import backend_for, get_backend
from ..errors import LabError
from ..model import Cluster
from ..plan import Family, Mode, NodePlan, family_of
from .layout import Layout
from .namespaces import Lab
from .server import Server

__all__ = ["ClusterLab", "forget_namespace"]

_ROUTE_MARK = 0x1000  # clients' socket marks / routing tables: this + the node's position (no 0x4000 bit)


class ClusterLab:
    """A :class:`Layout` built in namespaces, with each node's rules loaded.

    >>> with ClusterLab(layout, backend="nftables") as cl:   # doctest: +SKIP
    ...     cl.apply(cluster)
    ...     cl.lab.tcp_probe(cl.layout.client("allowed").member, "192.0.2.1", 30080)

    ``start(serve=True)`` also starts the reply servers in this process (see
    :meth:`server_specs` for running them elsewhere). :meth:`apply` loads (or
    reloads) a cluster's rules on every node; :meth:`rules` reads back what a
    node's kernel holds.
    """

    def __init__(self, layout: Layout, *, backend: Optional[Mode] = None, prefix: Optional[str] = None,
                 state_file: Optional[str] = None) -> None:
        """An unknown ``backend`` raises :class:`~dataplane.errors.UsageError` at once."""
        if backend:
            get_backend(backend)  # rejected here, not at the first apply
        self.layout = layout
        self.backend = backend
        self.lab = Lab(layout.topology, prefix=prefix, state_file=state_file)
        self.plans: dict[tuple[str, Family], NodePlan] = {}
        self.mode: Optional[Mode] = None
        self.warnings: list[str] = []
        self._rules: dict[tuple[str, Family], str] = {}
        self._host_servers: list[Server] = []
        self._applied = False

    def __enter__(self) -> "ClusterLab":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, serve: bool = True) -> None:
        """Build the namespaces, the clients' extra addresses and routes, and (``serve``) start
        the servers. Everything is removed again on failure."""
        self.lab.start()
        try:
            self._configure_clients()
            if serve:
                self.serve()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the servers and remove every namespace and apply record (idempotent)."""
        for srv in self._host_servers:
            srv.close()
        self._host_servers.clear()
        for node in self.layout.nodes:
            forget_namespace(self.lab.ns(node.member))
        self.lab.close()

    def serve(self) -> None:
        """Start the reply servers in this process (closed with the lab)."""
        ipv6 = os.path.exists("/proc/sys/net/ipv6")
        for spec in self.server_specs():
            member = spec["member"]
            if any(p.member == member for p in self.layout.pods):
                self.lab.serve(member, tcp_ports=spec["tcp"], udp_ports=spec["udp"])
            else:
                self._host_servers.append(
                    Server(self.lab.ns(member), member, tcp_ports=spec["tcp"], udp_ports=spec["udp"], ipv6=ipv6))

    def server_specs(self) -> list[dict[str, Any]]:
        """Which servers the lab needs: ``{"member", "ns", "tcp", "udp"}`` per pod or node."""
        specs = []
        for item in (*self.layout.pods, *self.layout.nodes):
            if item.tcp_ports or item.udp_ports:
                specs.append({"member": item.member, "ns": self.lab.ns(item.member),
                              "tcp": list(item.tcp_ports), "udp": list(item.udp_ports)})
        return specs

    def _configure_clients(self) -> None:
        """Add the clients' extra addresses (the nodes route them back to their client) and one
        routing table per node: a client socket marked :meth:`mark` sends everything through
        that node, as a load balancer or router in front of the cluster would."""
        underlays = [ipaddress.ip_network(self.layout.topology.underlay)]
        if self.layout.topology.gateway6:
            underlays.append(ipaddress.ip_network(self.layout.topology.underlay6))
        for client in self.layout.clients:
            cmds: dict[str, list[str]] = {"-4": [], "-6": []}
            for a in client.aliases:
                cmds["-6" if ":" in a else "-4"].append(
                    f"addr add {a}/{128 if ':' in a else 32} dev eth0" + (" nodad" if ":" in a else ""))
            for node in self.layout.nodes:
                mark = self.mark(node.name)
                for address in node.addresses:
                    fam = "-6" if ":" in address else "-4"
                    cmds[fam].append(f"rule add fwmark {mark:#x} lookup {mark}")
                    cmds[fam].append(f"route add default via {address} table {mark}")
            for fam, lines in cmds.items():
                if lines:
                    self.lab.run(client.member, ["ip", fam, "-batch", "-"], input="\n".join(lines) + "\n")
            for a in client.aliases:
                if ":" in a:
                    self._wait_local_route(client.member, a)
            routes = [f"route replace {a} via {client.sources(family_of(a))[0]}" for a in client.aliases
                      if not any(ipaddress.ip_address(a) in u for u in underlays)]
            if routes:
                for node in self.layout.nodes:
                    self.lab.run(node.member, ["ip", "-batch", "-"], input="\n".join(routes) + "\n")

    def _wait_local_route(self, member: str, address: str, timeout: float = 2.0) -> None:
        """IPv6 installs an address's local route a moment after the address."""
        deadline = time.monotonic() + timeout
        while not self.lab.run(member, ["ip", "-6", "route", "show", "table", "local", address]).stdout.strip():
            if time.monotonic() > deadline:
                raise LabError(f"{member}: address {address} did not become usable")
            time.sleep(0.005)

    def mark(self, node: str) -> int:
        """The socket mark (``SO_MARK``) that makes a client send through ``node`` (a Node
        object's name): also its routing table's number in the clients."""
        return _ROUTE_MARK + [n.name for n in self.layout.nodes].index(node) + 1

    # ------------------------------------------------------------------ rules
    def apply(self, cluster: Cluster) -> None:
        """Load each node's own rules for ``cluster`` (every family of the layout).

        Nodes of the layout that ``cluster`` lacks lose their rules. On a reload the
        nodes' conntrack tables and session-affinity memories are emptied, so earlier
        flows cannot steer new ones.
        """
        from ..runtime import ctnetlink

        backend = backend_for(self.backend, cluster.proxy_config)
        mode = backend.name
        switching = self.mode is not None and mode != self.mode  # the other backend's rules must go
        self.plans.clear()
        self._rules.clear()
        for node in self.layout.nodes:
            ns = self.lab.ns(node.member)
            if self._applied:
                ctnetlink.flush(ns)
            present = cluster.node(node.name) is not None
            if switching or not present:
                self._remove_rules(ns)
            if not present:
                continue
            for fam in self.layout.families:
                result = apply_cluster(ns, cluster, node.name, backend=mode, family=fam)
                self.plans[(node.name, fam)] = result.plan
                self.warnings.extend(w for w in result.plan.warnings if w not in self.warnings)
                if self._applied:
                    backend.forget_affinity(ns, fam)
                # read back now: once flows ran, nft affinity sets hold their sources
                self._rules[(node.name, fam)] = backend.read_back(ns, ipv6=fam == "ipv6")
        self.mode = mode
        self._applied = True

    def _remove_rules(self, ns: str) -> None:
        from ..runtime import netns

        netns.cleanup(ns)
        netns.cleanup(ns, ipv6=True)
        forget(ns)

    def rules(self, node: str, family: Family) -> str:
        """The rules node ``node`` held for ``family`` right after :meth:`apply`, read back
        from its kernel (before any flow could add elements to affinity sets)."""
        try:
            return self._rules[(node, family)]
        except KeyError:
            raise LabError(f"no {family} rules were applied on node {node}") from None

    def local_ips(self, node: str) -> tuple[str, ...]:
        """Every address the lab gives node ``node``: underlay addresses and pod gateways."""
        n = self.layout.node(node)
        spec = self.layout.topology.node(n.member)
        extra = [spec.pod_gateway] + (["fe80::1"] if spec.ip6 else [])
        return (*n.addresses, *extra)


def forget_namespace(ns: str) -> None:
    """Drop the incremental-apply and ownership records of ``ns`` and their directory."""
    from ..runtime.ownership import discard

    forget(ns)
    discard(ns)
    try:
        os.rmdir(os.path.join(STATE_DIR, ns.replace("/", "_")))
    except OSError:
        pass
