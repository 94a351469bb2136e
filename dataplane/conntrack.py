"""Stale conntrack entries after a sync, as kube-proxy clears them (UDP, and SCTP).

Connection tracking keeps NAT bindings for connectionless flows alive as long as
packets keep coming, so after an endpoint is removed a UDP client keeps
reaching it, and a client that cached a REJECT keeps getting it. After each
sync kube-proxy deletes:

* for every endpoint of a UDP/SCTP service port that was serving (or ready) and
  is now gone or has changed its serving state: the entries of each of the
  port's frontends (ClusterIP, external IPs, load-balancer IPs) DNATed to that
  endpoint, and those of its NodePort DNATed to it. An endpoint that turns
  terminating but keeps serving keeps its flows (graceful shutdown);
* for every UDP/SCTP service port that had no endpoint and now has one: every
  entry to its frontends (they may cache the REJECT).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from .plan import NodePlan, ServicePortPlan

TRACKED = ("udp", "sctp")


@dataclass(frozen=True, slots=True)
class ConntrackDelete:
    """One ``conntrack -D`` filter."""

    family: str  # "ipv4" | "ipv6"
    protocol: str  # "udp" | "sctp"
    orig_dst: Optional[str] = None  # a service IP
    orig_port_dst: Optional[int] = None  # a NodePort
    dst_nat: Optional[str] = None  # the endpoint IP it was DNATed to

    def argv(self) -> list[str]:
        """The ``conntrack`` command line."""
        argv = ["conntrack", "-D", "-f", self.family, "-p", self.protocol]
        if self.orig_dst:
            argv += ["--orig-dst", self.orig_dst]
        if self.orig_port_dst:
            argv += ["--orig-port-dst", str(self.orig_port_dst)]
        if self.dst_nat:
            argv += ["--dst-nat", self.dst_nat]
        return argv


def _key(p: ServicePortPlan) -> tuple[str, str, str, str]:
    return (p.namespace, p.name, p.port_name, p.protocol)


def _stale_ips(was: ServicePortPlan, now: Optional[ServicePortPlan]) -> set[str]:
    """IPs of endpoints that may have flows and are gone or changed serving state."""
    current = {(e.ip, e.port): e.serving for e in now.known_endpoints} if now else {}
    stale = set()
    for e in was.known_endpoints:
        if not (e.serving or e.ready):
            continue  # nothing was sent to it
        if current.get((e.ip, e.port)) != e.serving:
            stale.add(e.ip)
    return stale


def _frontends(p: ServicePortPlan) -> list[str]:
    return [p.cluster_ip, *p.external_ips, *p.load_balancer_ips]


def stale_entries(old: Optional[NodePlan], new: NodePlan) -> list[ConntrackDelete]:
    """The conntrack deletions a sync from ``old`` to ``new`` calls for (sorted, no duplicates)."""
    if old is None:
        return []
    return stale_changes(new.family, old.services, new.services)


def stale_changes(family: str, old: Iterable[ServicePortPlan], new: Iterable[ServicePortPlan]) -> list[ConntrackDelete]:
    """The conntrack deletions for service ports ``old`` becoming ``new`` (each side: every port of
    the Services that changed, or of the whole node), sorted, no duplicates."""
    before = {_key(p): p for p in old if p.protocol in TRACKED}
    after = {_key(p): p for p in new if p.protocol in TRACKED}
    out: set[ConntrackDelete] = set()
    for key, was in before.items():
        now = after.get(key)
        for ip in sorted(_stale_ips(was, now)):
            for front in _frontends(was):
                out.add(ConntrackDelete(family, was.protocol, orig_dst=front, dst_nat=ip))
            if was.node_port:
                out.add(ConntrackDelete(family, was.protocol, orig_port_dst=was.node_port, dst_nat=ip))
    for key, now in after.items():
        was = before.get(key)
        if now.has_endpoints and (was is None or not was.has_endpoints):
            for front in _frontends(now):
                out.add(ConntrackDelete(family, now.protocol, orig_dst=front))
            if now.node_port:
                out.add(ConntrackDelete(family, now.protocol, orig_port_dst=now.node_port))
    return sorted(out, key=lambda f: (f.protocol, f.orig_dst or "", f.orig_port_dst or 0, f.dst_nat or ""))


def filters_text(filters: Sequence[ConntrackDelete]) -> str:
    """The deletions as shell command lines (for dry runs and logs)."""
    return "".join(" ".join(f.argv()) + "\n" for f in filters)
