"""Offline packet tracer: what the emitted rules do to the first packet of a new connection.

The tracer *interprets the rules text* (``iptables-restore`` input or an ``nft -f``
script, the subset this project emits plus what ``iptables-save`` / ``nft list``
print for it); it never looks at the plan, so it catches a backend that renders a
plan wrongly. No privileges are needed.

Model (for one NEW packet, like upstream kube-proxy's test tracers, but following
netfilter's hook order):

* **Origin.** A packet whose source is a local address (a node IP or loopback), or
  one traced with ``from_node=True``, is sent by the node itself: it crosses the
  ``output`` hook, then ``postrouting``, and when its (possibly DNATed) destination
  is local it loops back through ``prerouting`` (NAT is not consulted again) and
  ``input``. Any other packet comes from another host (or a pod behind a veth):
  ``prerouting``, then routing decides ``input`` (local destination) or
  ``forward`` + ``postrouting``.
* **Hook order.** Within a hook, base chains run by priority (iptables tables by
  their fixed priorities: raw, mangle, nat, filter, security). An ``accept``
  only ends its own base chain; ``drop``/``reject`` end the packet. Chains that run
  after a DNAT see the new destination.
* **First packet.** ``ct state``/``--ctstate`` is NEW (plus the ``DNAT`` status once
  the destination was translated); ``RELATED``/``ESTABLISHED``/``INVALID`` are false.
  Affinity lookups (``-m recent --rcheck``, ``ip saddr @affinity-…``) miss, and the
  path notes which endpoint a returning client may stick to.
* **Load balancing.** ``-m statistic --mode random`` rules and ``numgen random mod N``
  maps split the trace into branches; an endpoint's probability is the product of
  the probabilities along its branch.
* **Marks and SNAT.** The packet mark is tracked bit by bit (``MARK``,
  ``meta mark set``), and ``postrouting`` really runs, so ``masquerade`` is true
  only when a MASQUERADE rule is reached.

Verdicts: ``dnat`` (sent to ``endpoints``), ``drop``, ``reject``, ``accept`` (one of
our rules explicitly accepted an untranslated packet, e.g. a health-check node
port), ``none`` (no rule decided anything). When branches end differently (which
the project's layouts never do), the verdict is the first of dnat, drop, reject,
accept, none that some branch reached, and the path says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Sequence

from ..errors import UsageError
from .model import (
    BaseChain,
    Context,
    Ctl,
    Engine,
    Flow,
    Log,
    Packet,
    TraceError,
    TraceResult,
    TraceStep,
    Verdict,
    endpoint_text,
    parse_ip,
)

__all__ = ["Packet", "TraceResult", "TraceStep", "TraceError", "trace", "Verdict"]

_VERDICT_ORDER: tuple[Verdict, ...] = ("dnat", "drop", "reject", "accept", "none")
MAX_LABELS = 4  # branches named on a line shared by several identical branches


@dataclass
class _Walk:
    """One trace in progress."""

    engine: Engine
    ctx: Context
    log: Log = field(default_factory=Log)

    def hook(self, name: str, flows: list[Flow], *, nat: bool = True) -> list[Flow]:
        """Run every base chain of a hook on the live flows; terminated flows pass through unchanged."""
        for version in sorted({f.version for f in flows}):
            for chain in self.engine.base_chains(name, version, self.ctx):
                if chain.nat and not nat:
                    continue
                live = [f for f in flows if f.version == version and not f.verdict]
                rest = [f for f in flows if f.version != version or f.verdict]
                flows = rest + self._base(chain, live)
        return flows

    def _base(self, chain: BaseChain, flows: list[Flow]) -> list[Flow]:
        """Run one base chain for each flow; branches whose paths are identical are shown once."""
        out: list[Flow] = []
        shown: dict[tuple[str, ...], list[Flow]] = {}
        for flow in flows:
            sub = Log(self.log.depth + 1, chain.table, chain.chain)
            out += self._run_base(chain, flow, sub)
            shown.setdefault(tuple(sub.steps), []).append(flow)
        for steps, group in shown.items():
            branches = "; ".join(f.label() for f in group[:MAX_LABELS])
            if len(group) > MAX_LABELS:
                branches = f"{len(group)} branches: {branches}; …"
            self.log(chain.label + (f"  [branch {branches}]" if len(flows) > 1 else ""),
                     table=chain.table, chain=chain.chain)
            self.log.steps += steps
        return out

    def _run_base(self, chain: BaseChain, flow: Flow, log: Log) -> list[Flow]:
        out = []
        for f, ctl in chain.run(flow, log):
            if ctl is Ctl.DROP or ctl is Ctl.REJECT:
                f = replace(f, verdict=ctl.value)
            elif ctl is not Ctl.ACCEPT and chain.policy == "drop":
                log(f"policy DROP of {chain.label}", verdict="drop")
                f = replace(f, verdict="drop")
            out.append(f)
        return out

    def route(self, flows: list[Flow], here: str, elsewhere: str) -> tuple[list[Flow], list[Flow]]:
        """Split live flows into (local destination, elsewhere), logging the routing decision."""
        live = [f for f in flows if not f.verdict]
        local = [f for f in live if self.ctx.is_local(f.dst)]
        remote = [f for f in live if not self.ctx.is_local(f.dst)]
        for group, what, hook in ((local, "local", here), (remote, "not local", elsewhere)):
            if group:
                addresses = ", ".join(dict.fromkeys(str(f.dst) for f in group))
                self.log(f"routing: {addresses} {'is' if ',' not in addresses else 'are'} {what} -> {hook}")
        return local, remote


def _walk_from_elsewhere(walk: _Walk, flow: Flow) -> list[Flow]:
    """prerouting, routing, then input or forward + postrouting."""
    walk.log("hook prerouting")
    with walk.log.indent():
        flows = walk.hook("prerouting", [flow])
    done = [f for f in flows if f.verdict]
    local, remote = walk.route(flows, "input", "forward")
    if local:
        walk.log("hook input")
        with walk.log.indent():
            done += walk.hook("input", local)
    if remote:
        walk.log("hook forward")
        with walk.log.indent():
            forwarded = walk.hook("forward", remote)
        done += [f for f in forwarded if f.verdict]
        live = [f for f in forwarded if not f.verdict]
        if live:
            walk.log("hook postrouting")
            with walk.log.indent():
                done += walk.hook("postrouting", live)
    return done


def _walk_from_node(walk: _Walk, flow: Flow) -> list[Flow]:
    """output, postrouting, and for a local destination the loopback prerouting (no NAT) + input."""
    walk.log("hook output")
    with walk.log.indent():
        flows = walk.hook("output", [flow])
    done = [f for f in flows if f.verdict]
    live = [f for f in flows if not f.verdict]
    if live:
        walk.log("hook postrouting")
        with walk.log.indent():
            live = walk.hook("postrouting", live)
        done += [f for f in live if f.verdict]
        local, remote = walk.route(live, "loopback", "sent out")
        done += remote
        if local:
            looped = [replace(f, iif="lo") for f in local]
            walk.log("loopback: hook prerouting (NAT already decided)")
            with walk.log.indent():
                looped = walk.hook("prerouting", looped, nat=False)
            done += [f for f in looped if f.verdict]
            live = [f for f in looped if not f.verdict]
            if live:
                walk.log("hook input")
                with walk.log.indent():
                    done += walk.hook("input", live)
    return done


def _outcome(flow: Flow) -> Verdict:
    if flow.verdict:
        return flow.verdict
    if flow.dnat:
        return "dnat"
    return "accept" if flow.accepted else "none"


def _summarize(flows: list[Flow], log: Log) -> tuple[Verdict, tuple[tuple[str, float], ...], bool]:
    """The verdict, the endpoints with their probabilities and masquerade, from every branch."""
    kinds = {_outcome(f) for f in flows}
    verdict = next(v for v in _VERDICT_ORDER if v in kinds)
    if len(flows) > 1:
        log("outcome per branch")
        with log.indent():
            for f in flows:
                masq = ", masquerade" if f.masquerade else ""
                log(f"p={f.prob:.4f}: {_outcome(f).upper()}{' to ' + f.dnat if f.dnat and not f.verdict else ''}{masq}")
    if len(kinds) > 1:
        log(f"note: branches end differently ({', '.join(sorted(kinds))}); reporting {verdict}")
    chosen = [f for f in flows if _outcome(f) == verdict]
    endpoints: dict[str, float] = {}
    if verdict == "dnat":
        for f in chosen:
            assert f.dnat is not None
            endpoints[f.dnat] = endpoints.get(f.dnat, 0.0) + f.prob
    masquerade = verdict not in ("drop", "reject") and any(f.masquerade for f in chosen)
    return verdict, tuple(endpoints.items()), masquerade


@lru_cache(maxsize=32)
def parse_rules(rules_text: str, backend: str) -> Engine:
    """Parse a rules file for ``backend`` (a name, see :mod:`dataplane.backends`); raises
    TraceError naming the line, or naming the valid backends."""
    from ..backends import get_backend

    try:
        parser = get_backend(backend)
    except UsageError as e:
        raise TraceError(str(e)) from None
    return parser.parse_trace(rules_text)


def local_context(local_ips: Sequence[str]) -> Context:
    """The node's local addresses (loopback is always local)."""
    return Context(frozenset(parse_ip(ip, "node IP") for ip in local_ips))


def trace(rules_text: str, backend: str, packet: Packet, *, local_ips: Sequence[str]) -> TraceResult:
    """Interpret ``rules_text`` (``iptables-restore`` input or an ``nft -f`` script) for ``packet``.

    ``local_ips``: the node's addresses (loopback is added); they decide
    ``addrtype LOCAL`` / ``fib … type local`` and whether the packet is sent by the node.
    """
    engine = parse_rules(rules_text, backend)
    ctx = local_context(local_ips)
    src, dst = parse_ip(packet.src), parse_ip(packet.dst)
    from_node = packet.from_node or ctx.is_local(src)
    iif = "" if from_node else (packet.in_interface or "")
    flow = Flow(src=src, dst=dst, dport=packet.dport, proto=packet.proto, iif=iif)
    walk = _Walk(engine, ctx)
    origin = "sent by the node" if from_node else "from another host" + (f" on {iif}" if iif else "")
    walk.log(f"packet {packet.proto} {src} -> {endpoint_text(dst, packet.dport)} ({packet.family}), {origin}")
    flows = _walk_from_node(walk, flow) if from_node else _walk_from_elsewhere(walk, flow)
    verdict, endpoints, masquerade = _summarize(flows, walk.log)
    return TraceResult(verdict=verdict, endpoints=endpoints, masquerade=masquerade, path=tuple(walk.log.steps))
