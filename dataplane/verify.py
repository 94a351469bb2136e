"""``dataplane verify``: prove every Service frontend with packets, against the plan and the tracer.

A lab is built from the manifests (:mod:`dataplane.lab`), every node's own
rules are loaded, and for every service port of every node's plan one *flow*
is sent per frontend and source:

* the ClusterIP, from the node's probe pod and from the node itself;
* the NodePort on the node's address, from the external client;
* every externalIP and load-balancer IP, from the external client routed
  through that node; for load-balancer IPs with ``loadBalancerSourceRanges``
  from an allowed and from a denied source.

Each flow is judged three ways, and must agree all three ways:

* **expected**, from the node's :class:`~dataplane.plan.ServicePortPlan`: the
  endpoints it may reach and whether it is masqueraded, or ``refused``
  (reject, or nothing listening on the node) or ``timeout`` (drop);
* **kernel**: what a real socket saw: the endpoint that answered (the address
  and port the reply server saw the flow arrive on) and the source address it
  saw (the node's address when masqueraded); SCTP, which nothing serves, is
  captured on the pods' interfaces instead;
* **trace**: :func:`dataplane.trace.trace` on the rules read back from the
  node's kernel: the same verdict, the kernel's endpoint among its endpoints,
  the plan's endpoints and masquerade decision.

Masquerade is not visible for flows the node sends itself (the source is the
node's address either way); for those only the tracer's decision is compared
with the plan's.

A flow to an endpoint the lab cannot build (an address in no Node's pod CIDR and
on no known node, as a selectorless Service's Endpoints pointing outside the
cluster) is **skipped**: the kernel is not judged, since nothing can answer
there, and the row says why; the tracer is still compared with the plan. Only
mismatches fail ``verify``.
"""
from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import secrets
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Sequence, TextIO

from .backends import DEFAULT_BACKEND
from .errors import DataplaneError, LabError
from .lab.cluster import ClusterLab
from .lab.layout import Layout, derive_layout, families_in_use
from .lab.state import LABS_DIR, require_root, state_path, sweep_orphans
from .lab.summary import format_table
from .model import Cluster
from .plan import Family, Mode, NodePlan, PlanEndpoint, ServicePortPlan

__all__ = [
    "Flow",
    "Expected",
    "Observed",
    "Traced",
    "Row",
    "Report",
    "plan_flows",
    "expect",
    "verify_lab",
    "verify_cluster",
    "add_commands",
]

Outcome = Literal["ok", "refused", "timeout", "error"]
FrontendKind = Literal["clusterIP", "nodePort", "externalIP", "loadBalancer"]
SourceKind = Literal["pod", "node", "client", "denied"]

DEFAULT_TIMEOUT = 0.4  # seconds a probe waits: what a dropped flow costs
_FILTER_OUTCOME: dict[str, Outcome] = {"reject": "refused", "drop": "timeout"}


# =========================================================================== flows


@dataclass(frozen=True, slots=True)
class Flow:
    """One probe: a source sending to one frontend of a service port, handled by ``node``'s rules.

    ``member`` is the lab member that sends (pod, node or client); ``src`` the
    source address (the client binds it); ``via`` the node a client sends
    externalIP and load-balancer IP flows through (its socket carries that
    node's :meth:`~dataplane.lab.cluster.ClusterLab.mark`); ``in_interface`` where
    the packet enters the node (for the tracer; "" when the node sends it).
    """

    node: str
    family: Family
    service: str
    protocol: str
    port: int
    frontend: FrontendKind
    dst: str
    dport: int
    source: SourceKind
    member: str
    src: str
    via: Optional[str] = None
    in_interface: str = ""
    sp: Optional[ServicePortPlan] = field(default=None, compare=False, repr=False)

    @property
    def from_node(self) -> bool:
        return self.source == "node"

    @property
    def bind(self) -> bool:
        """Clients bind their source address (they may have several)."""
        return self.source in ("client", "denied")

    @property
    def service_label(self) -> str:
        return f"{self.service} {self.protocol}/{self.port}"

    @property
    def frontend_label(self) -> str:
        return f"{self.frontend} {_hostport(self.dst, self.dport)}"

    @property
    def source_label(self) -> str:
        return f"{self.source} {self.src}"


@dataclass(frozen=True, slots=True)
class Expected:
    """What the plan predicts: an outcome and, for ``ok``, each endpoint with whether
    the flow is masqueraded when it goes there."""

    outcome: Outcome
    endpoints: tuple[tuple[str, bool], ...] = ()

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(a for a, _ in self.endpoints)

    def masquerade(self, address: str) -> bool:
        return dict(self.endpoints)[address]

    def describe(self) -> str:
        if self.outcome != "ok":
            return self.outcome
        masq = {m for _, m in self.endpoints}
        tail = " masq" if masq == {True} else (" masq(hairpin)" if len(masq) > 1 else "")
        return _endpoint_list(self.addresses) + tail


@dataclass(frozen=True, slots=True)
class Observed:
    """What the kernel did: the outcome, the endpoint that answered and the source it saw."""

    outcome: Outcome
    endpoint: Optional[str] = None
    seen_src: Optional[str] = None
    pod: Optional[str] = None
    detail: str = ""

    def describe(self) -> str:
        if self.outcome == "ok":
            return f"{self.endpoint} from {self.seen_src}"
        return self.outcome if self.outcome != "error" else f"error: {self.detail}"


@dataclass(frozen=True, slots=True)
class Traced:
    """What the tracer says the node's rules do."""

    verdict: str
    outcome: Outcome
    endpoints: tuple[str, ...] = ()
    masquerade: bool = False
    path: tuple[str, ...] = ()
    error: Optional[str] = None

    def describe(self) -> str:
        if self.error:
            return "error"
        if self.verdict == "dnat":
            return f"dnat {_endpoint_list(self.endpoints)}" + (" masq" if self.masquerade else "")
        return self.verdict


@dataclass(frozen=True, slots=True)
class Row:
    """One flow with its three judgements and what disagrees."""

    flow: Flow
    expected: Expected
    kernel: Observed
    traced: Traced
    problems: tuple[str, ...]
    skipped: Optional[str] = None  # why the kernel's answer is not judged (the lab cannot build the flow)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def result(self) -> str:
        """``OK``, ``MISMATCH``, or ``skipped`` (nothing disagrees, but the kernel was not judged)."""
        if self.problems:
            return "MISMATCH"
        return "skipped" if self.skipped else "OK"

    def to_dict(self) -> dict[str, Any]:
        f = self.flow
        return {
            "node": f.node, "family": f.family, "service": f.service, "protocol": f.protocol, "port": f.port,
            "frontend": {"kind": f.frontend, "address": f.dst, "port": f.dport},
            "source": {"kind": f.source, "address": f.src, "via": f.via},
            "expected": {"outcome": self.expected.outcome,
                         "endpoints": [{"address": a, "masquerade": m} for a, m in self.expected.endpoints]},
            "kernel": {"outcome": self.kernel.outcome, "endpoint": self.kernel.endpoint,
                       "source_seen": self.kernel.seen_src, "pod": self.kernel.pod, "detail": self.kernel.detail},
            "trace": {"verdict": self.traced.verdict, "endpoints": list(self.traced.endpoints),
                      "masquerade": self.traced.masquerade, "error": self.traced.error},
            "ok": self.ok,
            "result": self.result.lower(),
            "skipped": self.skipped,
            "problems": list(self.problems),
        }


def _hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _canonical_endpoint(text: str) -> str:
    """``ip:port`` / ``[ip6]:port`` with the address in canonical form."""
    host, _, port = text.rpartition(":")
    return _hostport(str(ipaddress.ip_address(host.strip("[]"))), int(port))


def _endpoint_list(addresses: Sequence[str]) -> str:
    return "|".join(addresses) if len(addresses) <= 2 else f"{len(addresses)} endpoints"


def plan_flows(cl: ClusterLab) -> list[Flow]:
    """Every flow to probe, from the plans of the lab's nodes (see the module doc)."""
    flows: list[Flow] = []
    for (node, family), plan in sorted(cl.plans.items()):
        for sp in plan.services:
            flows += _cluster_ip_flows(cl, node, family, sp)
            flows += _external_flows(cl, node, family, sp)
    return flows


def _base(node: str, family: Family, sp: ServicePortPlan) -> dict[str, Any]:
    return dict(node=node, family=family, service=sp.spn, protocol=sp.protocol, port=sp.port, sp=sp)


def _cluster_ip_flows(cl: ClusterLab, node: str, family: Family, sp: ServicePortPlan) -> list[Flow]:
    """The ClusterIP from the node's probe pod (arriving on its veth or bridge) and from the node."""
    ln = cl.layout.node(node)
    probe = next(p for p in cl.layout.probes if p.node == node)
    spec = cl.layout.topology.node(ln.member)
    pod_iif = getattr(spec, "pod_bridge", None) or cl.lab.pod_ifname(probe.member)
    base = _base(node, family, sp)
    flows = []
    probe_ip, node_ip = probe.address(family), ln.address(family)
    if probe_ip:
        flows.append(Flow(**base, frontend="clusterIP", dst=sp.cluster_ip, dport=sp.port, source="pod",
                          member=probe.member, src=probe_ip, in_interface=pod_iif))
    if node_ip:
        flows.append(Flow(**base, frontend="clusterIP", dst=sp.cluster_ip, dport=sp.port, source="node",
                          member=ln.member, src=node_ip))
    return flows


def _external_flows(cl: ClusterLab, node: str, family: Family, sp: ServicePortPlan) -> list[Flow]:
    """The NodePort on the node's address, and the externalIPs and load-balancer IPs through the
    node, from the clients (load-balancer IPs with source ranges from an allowed and a denied
    source, when the lab has them)."""
    layout = cl.layout
    ln = layout.node(node)
    allowed, denied = layout.client("allowed"), layout.client("denied")
    client_src = next(iter(allowed.sources(family)), None)
    node_ip = ln.address(family)
    if client_src is None:
        return []
    base = dict(_base(node, family, sp), in_interface="eth0")
    flows = []
    if sp.node_port and node_ip:
        flows.append(Flow(**base, frontend="nodePort", dst=node_ip, dport=sp.node_port, source="client",
                          member=allowed.member, src=client_src))
    others = {a for n in layout.nodes if n.name != node for a in n.addresses}
    for ip in sp.external_ips:
        if ip not in others:  # another node's own address only ever reaches that node
            flows.append(Flow(**base, frontend="externalIP", dst=ip, dport=sp.port, source="client",
                              member=allowed.member, src=client_src, via=node))
    sources: list[tuple[SourceKind, str, str]] = [("client", allowed.member, client_src)]
    if sp.firewall:
        ok = [a for a in allowed.sources(family) if sp.firewall_admits(a)]
        bad = [a for a in denied.sources(family) if not sp.firewall_admits(a)]
        sources = [("client", allowed.member, a) for a in ok[:1]] + [("denied", denied.member, a) for a in bad[:1]]
    for ip in sp.load_balancer_ips:
        if ip in others:
            continue
        for kind, member, src in sources:
            flows.append(Flow(**base, frontend="loadBalancer", dst=ip, dport=sp.port, source=kind, member=member,
                              src=src, via=node))
    return flows


# =========================================================================== the plan's prediction


def _ok(sp: ServicePortPlan, endpoints: Sequence[PlanEndpoint], base_masq: bool, src: str) -> Expected:
    """An ``ok`` prediction for a flow from ``src`` to one of ``endpoints`` of ``sp``, masqueraded
    when ``base_masq`` or as hairpin traffic (:meth:`~dataplane.plan.ServicePortPlan.hairpin`)."""
    if not endpoints:
        return Expected("timeout")
    return Expected("ok", tuple((ep.address, base_masq or sp.hairpin(ep, src)) for ep in endpoints))


def expect(flow: Flow, plan: NodePlan) -> Expected:
    """What ``plan`` (the node's plan) predicts for ``flow``."""
    sp = flow.sp
    assert sp is not None
    if flow.frontend == "clusterIP":
        if sp.internal_chain is None:
            return Expected(_FILTER_OUTCOME[sp.internal_filter or "drop"])
        eps = sp.cluster_endpoints if sp.internal_chain == "cluster" else sp.local_endpoints
        return _ok(sp, eps, plan.cluster_ip_masquerades(flow.src, flow.in_interface), flow.src)
    if flow.frontend == "loadBalancer" and not sp.firewall_admits(flow.src):
        return Expected("timeout")  # the load balancer's firewall drops it
    if flow.frontend == "nodePort" and not plan.nodeports.accepts(flow.dst):
        if sp.external_filter and plan.nodeports.filters(flow.dst):
            return Expected(_FILTER_OUTCOME[sp.external_filter])
        return Expected("refused")  # no rule takes it: nothing listens on the node
    if not sp.external_forward:
        return Expected(_FILTER_OUTCOME[sp.external_filter or "reject"])
    masq = False
    for step in sp.external_steps:  # an external client is neither a local pod nor the node
        if step.source != "any":
            continue
        if step.action == "masquerade":
            masq = True
            continue
        return _ok(sp, sp.cluster_endpoints if step.action == "cluster" else sp.local_endpoints, masq, flow.src)
    return Expected(_FILTER_OUTCOME[sp.external_filter or "drop"])


# =========================================================================== kernel and tracer


def probe(cl: ClusterLab, flow: Flow, timeout: float = DEFAULT_TIMEOUT) -> Observed:
    """Send ``flow`` with a real socket (SCTP: a crafted INIT captured on every pod)."""
    lab = cl.lab
    refs = {p.member: p.ref for p in cl.layout.pods}
    mark = cl.mark(flow.via) if flow.via else None
    if flow.protocol == "sctp":
        captures = [(p.member, "eth0") for p in cl.layout.pods]
        r = lab.sctp_probe_any(flow.member, flow.src, flow.dst, flow.dport, captures, timeout=timeout, mark=mark)
        if r.ok and r.seen is not None and r.capture is not None:
            return Observed("ok", _canonical_endpoint(_hostport(r.seen.dst, r.seen.dport)),
                            str(ipaddress.ip_address(r.seen.src)), refs.get(r.capture[0], r.capture[0]))
        return _failed(flow, r.outcome, r.error or "")
    send = lab.tcp_probe if flow.protocol == "tcp" else lab.udp_probe
    res = send(flow.member, flow.dst, flow.dport, timeout, src=flow.src if flow.bind else None, mark=mark)
    if res.ok and res.server_saw_dst is not None and res.server_saw_src is not None:
        return Observed("ok", _canonical_endpoint(_hostport(*res.server_saw_dst)),
                        str(ipaddress.ip_address(res.server_saw_src[0])), refs.get(res.pod or "", res.pod))
    return _failed(flow, res.outcome, res.error or "")


def _probe_safely(cl: ClusterLab, flow: Flow, timeout: float) -> Observed:
    """:func:`probe`, with an unexpected socket error reported as the flow's outcome."""
    try:
        return probe(cl, flow, timeout)
    except OSError as e:
        return Observed("error", detail=f"{type(e).__name__}: {e}")


def _failed(flow: Flow, outcome: Outcome, error: str) -> Observed:
    """A probe that was not answered. A datagram (UDP, a raw SCTP INIT) that the node's own
    OUTPUT rules drop fails to send with EPERM: for a flow the node sends, that is a drop."""
    if outcome == "error" and flow.from_node and error == os.strerror(errno.EPERM):
        return Observed("timeout", detail="dropped on the node (send: EPERM)")
    return Observed(outcome, detail=error)


def trace_flow(cl: ClusterLab, flow: Flow) -> Traced:
    """The tracer's verdict for ``flow`` on the rules the node's kernel holds."""
    from .trace import Packet, trace

    local = cl.local_ips(flow.node)
    try:
        packet = Packet(src=flow.src, dst=flow.dst, dport=flow.dport, proto=flow.protocol,
                        from_node=flow.from_node, in_interface=flow.in_interface or None)
        res = trace(cl.rules(flow.node, flow.family), cl.mode or DEFAULT_BACKEND, packet, local_ips=local)
    except DataplaneError as e:
        return Traced("error", "error", error=str(e))
    dst_local = flow.dst in local
    outcome: Outcome = {"dnat": "ok", "reject": "refused", "drop": "timeout"}.get(  # type: ignore[assignment]
        res.verdict, "refused" if dst_local else "timeout")
    return Traced(res.verdict, outcome, tuple(_canonical_endpoint(a) for a, _ in res.endpoints),
                  res.masquerade, res.path_lines())


def _yes(b: bool) -> str:
    return "masquerade" if b else "no masquerade"


def compare(flow: Flow, expected: Expected, kernel: Observed, traced: Traced, masq_src: str,
            judge_kernel: bool = True) -> tuple[str, ...]:
    """Everything on which the plan, the kernel and the tracer disagree (empty: all agree).

    ``masq_src`` is the address a masqueraded flow arrives from (the node's). Without
    ``judge_kernel`` (a flow the lab cannot build) only the tracer is compared with the plan.
    """
    problems: list[str] = []
    observable = not flow.from_node
    if not judge_kernel:
        pass
    elif kernel.outcome != expected.outcome:
        problems.append(f"kernel: {kernel.describe()}; the plan predicts {expected.describe()}")
    elif kernel.outcome == "ok" and kernel.endpoint not in expected.addresses:
        problems.append(f"kernel: answered by {kernel.endpoint}, not one of the plan's endpoints "
                        f"{', '.join(expected.addresses)}")
    elif kernel.outcome == "ok" and observable:
        masq = expected.masquerade(kernel.endpoint or "")
        want = masq_src if masq else flow.src
        if kernel.seen_src != want:
            problems.append(f"kernel: {kernel.endpoint} saw source {kernel.seen_src}; the plan predicts "
                            f"{want} ({_yes(masq)})")
    if traced.error:
        return (*problems, f"trace: {traced.error}")
    if traced.outcome != expected.outcome:
        problems.append(f"trace: {traced.describe()}; the plan predicts {expected.describe()}")
    elif traced.outcome == "ok":
        if set(traced.endpoints) != set(expected.addresses):
            problems.append(f"trace: endpoints {', '.join(traced.endpoints)}; the plan's are "
                            f"{', '.join(expected.addresses)}")
        if traced.masquerade != any(m for _, m in expected.endpoints):
            problems.append(f"trace: {_yes(traced.masquerade)}; the plan predicts "
                            f"{_yes(any(m for _, m in expected.endpoints))}")
    if not judge_kernel:
        pass
    elif traced.outcome != kernel.outcome:
        problems.append(f"trace: {traced.describe()}; the kernel: {kernel.describe()}")
    elif kernel.outcome == "ok" and kernel.endpoint not in traced.endpoints:
        problems.append(f"trace: endpoints {', '.join(traced.endpoints)} do not include {kernel.endpoint}, "
                        "which answered")
    elif kernel.outcome == "ok" and observable and traced.masquerade != (kernel.seen_src != flow.src) \
            and len({m for _, m in expected.endpoints}) == 1:
        problems.append(f"trace: {_yes(traced.masquerade)}; the kernel's flow arrived from {kernel.seen_src}")
    return tuple(dict.fromkeys(problems))


# =========================================================================== running


class Progress:
    """A one-line progress bar on a terminal (stderr); silent when it is not one."""

    def __init__(self, total: int, stream: Optional[TextIO] = None, enabled: Optional[bool] = None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or sys.stderr
        if enabled is None:
            from .cli_common import is_quiet

            enabled = self.stream.isatty() and not is_quiet()  # nothing with --quiet
        self.enabled = enabled

    def advance(self, label: str = "") -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = width * self.done // self.total
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {label[:60]:<60}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()


def verify_lab(cl: ClusterLab, *, timeout: float = DEFAULT_TIMEOUT,
               progress: Optional[Callable[[int], Progress]] = None) -> list[Row]:
    """Probe (all flows at once), trace and compare every flow of the lab's current rules."""
    flows = plan_flows(cl)
    bar = progress(len(flows)) if progress else None
    with ThreadPoolExecutor(max_workers=min(64, max(len(flows), 1))) as pool:
        futures = [pool.submit(_probe_safely, cl, f, timeout) for f in flows]
        observed = []
        for f, fut in zip(flows, futures):
            observed.append(fut.result())
            if bar:
                bar.advance(f"{f.service_label} {f.frontend_label}")
    if bar:
        bar.close()
    built = built_addresses(cl.layout)
    rows = []
    for f, seen in zip(flows, observed):
        exp = expect(f, cl.plans[(f.node, f.family)])
        traced = trace_flow(cl, f)
        masq_src = cl.layout.node(f.node).address(f.family) or ""
        skipped = unbuilt_reason(exp, built)
        rows.append(Row(f, exp, seen, traced, compare(f, exp, seen, traced, masq_src, skipped is None), skipped))
    return rows


def built_addresses(layout: Layout) -> frozenset[str]:
    """Every address something in the lab answers on: its endpoint pods' and its nodes'."""
    return frozenset(str(ipaddress.ip_address(a)) for member in (*layout.pods, *layout.nodes)
                     for a in member.addresses)


def unbuilt_reason(expected: Expected, built: frozenset[str]) -> Optional[str]:
    """Why the kernel's answer to a flow with ``expected`` cannot be judged: the endpoints the
    plan may send it to that the lab did not build (None: all are built)."""
    missing = [a for a in expected.addresses if _endpoint_ip(a) not in built]
    if not missing:
        return None
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return (f"the lab cannot build endpoint{'s' if len(missing) > 1 else ''} {shown} (on no Node of the "
            "input, in no Node's pod CIDR): nothing there can answer")


def _endpoint_ip(address: str) -> str:
    """The canonical IP of an ``ip:port`` / ``[ip6]:port`` endpoint."""
    return str(ipaddress.ip_address(address.rpartition(":")[0].strip("[]")))


@dataclass(frozen=True, slots=True)
class Report:
    """The result of ``dataplane verify``."""

    rows: tuple[Row, ...]
    backend: str
    families: tuple[str, ...]
    nodes: int
    seconds: float
    warnings: tuple[str, ...] = ()

    @property
    def mismatches(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if not r.ok)

    @property
    def skipped(self) -> tuple[Row, ...]:
        """The flows the lab cannot build (nothing disagrees, the kernel was not judged)."""
        return tuple(r for r in self.rows if r.result == "skipped")

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "backend": self.backend, "families": list(self.families), "nodes": self.nodes,
                "flows": len(self.rows), "mismatches": len(self.mismatches), "skipped": len(self.skipped),
                "seconds": round(self.seconds, 3),
                "warnings": list(self.warnings), "results": [r.to_dict() for r in self.rows]}

    def summary(self) -> str:
        what = f"{len(self.rows)} flows on {self.nodes} node(s) ({self.backend}, {', '.join(self.families)})"
        skipped = f", {len(self.skipped)} skipped (the lab cannot build them)" if self.skipped else ""
        if self.ok:
            verdict = f"all OK{skipped}" if not self.skipped else f"{len(self.rows) - len(self.skipped)} OK{skipped}"
            return f"verify: {what}: {verdict} in {self.seconds:.1f} s"
        return f"verify: {what}: {len(self.mismatches)} MISMATCH{skipped} in {self.seconds:.1f} s"

    def render(self, *, color: bool = False) -> str:
        """The table, the details of every mismatch, and the summary line."""
        def result(row: Row) -> str:
            word = row.result
            if not color:
                return word
            return {"OK": f"\033[32m{word}\033[0m", "skipped": f"\033[33m{word}\033[0m"}.get(
                word, f"\033[1;31m{word}\033[0m")

        table = format_table(
            ["NODE", "SERVICE PORT", "FRONTEND", "SOURCE", "EXPECTED", "KERNEL", "TRACE", "RESULT"],
            [[r.flow.node, r.flow.service_label, r.flow.frontend_label, r.flow.source_label,
              r.expected.describe(), r.kernel.describe(), r.traced.describe(), result(r)] for r in self.rows])
        out = [table] if self.rows else []
        if self.skipped:
            out.append("\nskipped:\n")
            for r in self.skipped:
                f = r.flow
                out.append(f"  {f.node}: {f.service_label} {f.frontend_label} from {f.source_label}: {r.skipped}\n")
        if self.mismatches:
            out.append("\nmismatches:\n")
            for r in self.mismatches:
                f = r.flow
                via = f" via {f.via}" if f.via else ""
                out.append(f"  {f.node}: {f.service_label} {f.frontend_label} from {f.source_label}{via}\n")
                out.extend(f"    - {p}\n" for p in r.problems)
                if r.traced.path:
                    out.append("    trace:\n")
                    out.extend(f"      {line}\n" for line in r.traced.path)
        out.append(self.summary() + "\n")
        return "".join(out)


def verify_cluster(cluster: Cluster, *, backend: Optional[Mode] = None,
                   families: Optional[Sequence[Family]] = None, timeout: float = DEFAULT_TIMEOUT,
                   progress: Optional[Callable[[int], Progress]] = None) -> Report:
    """Build a lab for ``cluster``, verify every flow, remove the lab (always) and report."""
    started = time.monotonic()
    require_root()
    sweep_orphans()
    layout = derive_layout(cluster, families or families_in_use(cluster))
    name = "dpv" + secrets.token_hex(3)
    os.makedirs(LABS_DIR, exist_ok=True)
    with ClusterLab(layout, backend=backend, prefix=name, state_file=state_path(name)) as cl:
        cl.apply(cluster)
        rows = verify_lab(cl, timeout=timeout, progress=progress)
        mode = cl.mode or backend or DEFAULT_BACKEND
        warnings = (*layout.warnings, *cl.warnings)
    return Report(tuple(rows), mode, layout.families, len(layout.nodes), time.monotonic() - started,
                  tuple(dict.fromkeys(warnings)))


# =========================================================================== CLI

EXAMPLES = """examples:
  dataplane verify -f examples/cluster.yaml --allocate --seed 1
  dataplane verify -f examples/cluster.yaml --allocate --backend nftables --ip-family ipv4
  dataplane verify -f examples/cluster.yaml --allocate --json > report.json

exit status: 0 when every flow agrees with the plan and the tracer, 1 on any mismatch (or error); flows
the lab cannot build (endpoints outside every node) are reported as skipped, with the reason, and do
not fail it."""


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``verify`` on the ``dataplane`` subcommand parser."""
    from .cli_common import add_allocate, add_input
    from .lab.cli import add_lab_options

    p = sub.add_parser(
        "verify", help="prove every Service frontend with packets in a lab",
        description="Build a lab from the manifests (see `dataplane lab up`), send a flow to every frontend of "
                    "every Service port on every node (ClusterIP from a pod and from the node, NodePort from "
                    "outside, externalIPs and load-balancer IPs from allowed and denied sources), and check that "
                    "the kernel does what the plan predicts and what `dataplane trace` says. Prints a table "
                    "(a progress bar on a terminal); the lab is removed at the end.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input(p)
    add_lab_options(p)
    add_allocate(p)
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"how long a probe waits for an answer (default {DEFAULT_TIMEOUT})")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of the table")
    p.set_defaults(func=cmd_verify)


def _use_color(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR")


def cmd_verify(args: argparse.Namespace) -> int:
    """``dataplane verify``: exit 0 when every flow agrees, 1 otherwise."""
    from .cli_common import warn
    from .lab.cli import load_input, raise_exit

    if args.timeout <= 0:
        raise LabError("--timeout must be positive")
    cluster, families = load_input(args)
    previous = signal.signal(signal.SIGTERM, raise_exit)  # a killed verify removes its lab
    try:
        report = verify_cluster(cluster, backend=args.backend, families=families, timeout=args.timeout,
                                progress=lambda n: Progress(n))
    finally:
        signal.signal(signal.SIGTERM, previous)
    warn(report.warnings)
    if not report.rows:
        warn([f"no service port has rules in {', '.join(report.families)}: nothing was verified"])
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(report.render(color=_use_color(sys.stdout)))
    return 0 if report.ok else 1
