"""A lab as plain data (kept in its state file, printed by ``lab up``), and text tables."""
from __future__ import annotations

from typing import Any, Sequence

from .cluster import ClusterLab
from .layout import LabNode, LabPod

__all__ = ["format_table", "layout_summary"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, indent: str = "") -> str:
    """Left-aligned columns separated by two spaces (the last column is not padded)."""
    widths = [max(len(str(r[i])) for r in (headers, *rows)) for i in range(len(headers))]
    lines = []
    for r in (headers, *rows):
        cells = [str(c).ljust(w) for c, w in zip(r[:-1], widths)] + [str(r[-1])]
        lines.append(indent + "  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _serves(p: LabPod | LabNode) -> str:
    parts = [f"tcp/{n}" for n in p.tcp_ports] + [f"udp/{n}" for n in p.udp_ports]
    if isinstance(p, LabPod):
        parts += [f"sctp/{n} (captured)" for n in p.sctp_ports]
    return " ".join(parts) or "-"


def layout_summary(cl: ClusterLab) -> dict[str, Any]:
    """The lab as plain data (kept in the state file, printed by ``lab up``)."""
    layout = cl.layout
    rules = {n.name: {fam: len(cl.plans[(n.name, fam)].services) for fam in layout.families
                      if (n.name, fam) in cl.plans} for n in layout.nodes}
    return {
        "nodes": [{"name": n.name, "netns": cl.lab.ns(n.member), "addresses": list(n.addresses),
                   "pod_cidrs": list(n.pod_cidrs), "service_ports": rules[n.name], "serves": _serves(n)}
                  for n in layout.nodes],
        "pods": [{"pod": p.ref, "netns": cl.lab.ns(p.member), "node": p.node, "addresses": list(p.addresses),
                  "serves": _serves(p)} for p in layout.pods],
        "probe_pods": [{"node": p.node, "netns": cl.lab.ns(p.member), "addresses": list(p.addresses)}
                       for p in layout.probes],
        "clients": [{"role": c.role, "netns": cl.lab.ns(c.member), "addresses": list(c.addresses),
                     "via": layout.nodes[0].name} for c in layout.clients],
        "services": _services_summary(cl),
    }


def _services_summary(cl: ClusterLab) -> list[dict[str, Any]]:
    """Each service port once per family: its frontends and endpoints (as every node sees them)."""
    seen: dict[tuple[str, str, int, str], dict[str, Any]] = {}
    for (_node, family), plan in sorted(cl.plans.items()):
        for sp in plan.services:
            seen.setdefault((sp.spn, sp.protocol, sp.port, family), {
                "service": sp.spn, "protocol": sp.protocol, "port": sp.port, "cluster_ip": sp.cluster_ip,
                "node_port": sp.node_port, "external": [*sp.external_ips, *sp.load_balancer_ips],
                "endpoints": [e.address for e in sp.known_endpoints]})
    return list(seen.values())
