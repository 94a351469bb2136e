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

The deletions are :class:`ConntrackDelete` filters; :meth:`ConntrackDelete.matches`
applies one to a :class:`ConntrackEntry`, the structured record
:mod:`dataplane.runtime.ctnetlink` reads from a namespace's table over netlink.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from ..plan import NodePlan, ServicePortPlan

TRACKED = ("udp", "sctp")

#: ``enum ip_conntrack_status`` bits (linux/netfilter/nf_conntrack_common.h).
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5


@dataclass(frozen=True, slots=True)
class FlowTuple:
    """One direction of a tracked connection; ports are None for protocols without them."""

    src: str
    dst: str
    sport: Optional[int] = None
    dport: Optional[int] = None


@dataclass(frozen=True, slots=True)
class ConntrackEntry:
    """One entry of a conntrack table, as the kernel reports it (see :mod:`dataplane.runtime.ctnetlink`).

    ``orig`` is the tuple of the first packet (before NAT), ``reply`` the tuple the
    answers carry: after DNAT ``reply.src`` is the endpoint the flow was sent to.
    """

    family: str  # "ipv4" | "ipv6"
    protocol: str  # "tcp", "udp", "sctp", "icmp", "icmpv6", else the protocol number
    orig: FlowTuple
    reply: FlowTuple
    status: int = 0  # IPS_* bits
    timeout: Optional[int] = None  # seconds left
    state: Optional[str] = None  # TCP/SCTP protocol state, e.g. "ESTABLISHED", "COOKIE_WAIT"
    id: Optional[int] = None  # the kernel's entry id (CTA_ID)

    @property
    def dst_nat(self) -> bool:
        """Whether the flow was DNATed."""
        return bool(self.status & IPS_DST_NAT)

    @property
    def src_nat(self) -> bool:
        """Whether the flow was SNATed (masqueraded)."""
        return bool(self.status & IPS_SRC_NAT)

    @property
    def replied(self) -> bool:
        """Whether a packet was seen in the reply direction (conntrack -L's ``[UNREPLIED]`` otherwise)."""
        return bool(self.status & IPS_SEEN_REPLY)


def _same_ip(a: str, b: str) -> bool:
    """Address equality whatever the spelling (``fd00::0a`` and ``fd00::a``)."""
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


@dataclass(frozen=True, slots=True)
class ConntrackDelete:
    """One deletion filter: the entries of a family and protocol matching every field given.

    Backend-neutral: :meth:`matches` applies it to structured entries (what
    :func:`dataplane.runtime.ctnetlink.delete_matching` does over netlink), :meth:`argv`
    spells it for conntrack-tools (dry runs and logs).
    """

    family: str  # "ipv4" | "ipv6"
    protocol: str  # "udp" | "sctp"
    orig_dst: Optional[str] = None  # a service IP
    orig_port_dst: Optional[int] = None  # a NodePort
    dst_nat: Optional[str] = None  # the endpoint IP it was DNATed to

    def matches(self, entry: ConntrackEntry) -> bool:
        """Whether ``entry`` is one this filter deletes, with ``conntrack -D``'s meaning of each
        option: ``--orig-dst`` the original destination address, ``--orig-port-dst`` the original
        destination port, ``--dst-nat IP`` a DNATed entry whose reply comes from ``IP``."""
        if entry.family != self.family or entry.protocol != self.protocol:
            return False
        if self.orig_dst and not _same_ip(entry.orig.dst, self.orig_dst):
            return False
        if self.orig_port_dst and entry.orig.dport != self.orig_port_dst:
            return False
        if self.dst_nat and not (entry.dst_nat and _same_ip(entry.reply.src, self.dst_nat)):
            return False
        return True

    def argv(self) -> list[str]:
        """The equivalent ``conntrack`` command line."""
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


def select(filters: Sequence[ConntrackDelete], entries: Iterable[ConntrackEntry]) -> list[ConntrackEntry]:
    """The entries any of ``filters`` matches, in their order."""
    return [e for e in entries if any(f.matches(e) for f in filters)]
