"""``nft -f`` scripts for the packet tracer: :func:`parse` and the interpreter that runs what it gives.

The script is split by :mod:`.nft_lexer` and parsed by :mod:`.nft_parser` into the
tables of :mod:`.nft_model`; a :class:`Ruleset` runs their base chains for the tracer.

Expressions understood in rules: ``ip``/``ip6 saddr|daddr``, ``meta l4proto``,
``meta mark``/``mark``, ``iifname``, ``th|tcp|udp|sctp dport``, ``fib saddr|daddr
type``, ``ct state``, concatenations with ``.``, comparisons (``==``/``!=``,
masks with ``&``), anonymous sets ``{ a, b }`` (addresses, CIDRs, ranges), named
set lookups ``@set`` and verdict maps ``vmap @map`` / ``vmap { k : verdict }``,
``numgen random mod N``. Statements: ``jump``, ``goto``, ``return``, ``accept``,
``drop``, ``continue``, ``reject``, ``dnat to``, ``snat to``, ``masquerade``,
``meta mark set``, ``update|add @set``, ``counter``, ``log``, ``comment``.
Anything else is a TraceError naming the line.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Callable, Optional

from .model import (
    PROTO_NUMBERS,
    BaseChain,
    Context,
    Ctl,
    Flow,
    Log,
    Outcome,
    TraceError,
    addr_types,
    address_matches,
    address_spec,
    endpoint_text,
    parse_nat_target,
)
from .nft_model import (
    FAMILY_VERSIONS,
    Compare,
    Element,
    Expr,
    Lookup,
    Nat,
    NftChain,
    NftSet,
    NftTable,
    Note,
    Reject,
    Rule,
    Selector,
    SetMark,
    Verdict,
    Vmap,
    port_value,
)
from .nft_parser import parse_tables

MAX_DEPTH = 64
Value = object  # what a selector reads from the packet (see read)


def read(sel: Selector, flow: Flow, ctx: Context) -> Value:
    """What ``sel`` reads from the packet; None when it does not apply (the rule then fails)."""
    if sel.version is not None and sel.version != flow.version:
        return None
    if sel.proto is not None and sel.proto != flow.proto:
        return None
    kind = sel.kind
    if kind == "saddr":
        return flow.src
    if kind == "daddr":
        return flow.dst
    if kind == "l4proto":
        return flow.proto
    if kind == "dport":
        return flow.dport
    if kind == "mark":
        return flow.mark
    if kind == "iifname":
        return flow.iif
    if kind == "fib-saddr":
        return addr_types(flow.src, ctx)
    if kind == "fib-daddr":
        return addr_types(flow.dst, ctx)
    if kind == "ct-state":
        return flow.ct_states
    if kind == "nfproto":
        return "ipv6" if flow.version == 6 else "ipv4"
    raise TraceError(f"{sel.text} cannot be evaluated")  # pragma: no cover (rejected when parsed)


def literal_matches(sel: Selector, value: Value, literal: str) -> bool:
    """Whether the packet's ``value`` for ``sel`` matches one literal (address, CIDR, range, name…)."""
    kind = sel.kind
    if kind in ("saddr", "daddr"):
        return address_matches(value, literal)  # type: ignore[arg-type]
    if kind == "l4proto":
        return literal == value or literal == str(PROTO_NUMBERS.get(str(value)))
    if kind in ("dport", "numgen"):
        lo, _, hi = literal.partition("-")
        lo_n, hi_n = port_value(lo), port_value(hi or lo)
        return lo_n <= int(value) <= hi_n  # type: ignore[call-overload]
    if kind == "mark":
        return int(literal, 0) == value
    if kind == "iifname":
        if literal.endswith("*"):  # prefix wildcard
            return str(value).startswith(literal[:-1])
        return value == literal
    if kind in ("fib-saddr", "fib-daddr", "ct-state"):
        return literal in value  # type: ignore[operator]
    if kind == "nfproto":
        return literal == value
    raise TraceError(f"cannot compare {sel.text}")


def _exact_literal(sel: Selector, literal: str) -> Optional[object]:
    """A hashable form of a literal that matches exactly one value, or None (CIDR, range, wildcard…)."""
    kind = sel.kind
    try:
        if kind in ("saddr", "daddr"):
            version, lo, hi = address_spec(literal)
            return (version, lo) if lo == hi and "-" not in literal else None
        if kind == "l4proto":
            return PROTO_NUMBERS.get(literal, int(literal) if literal.isdigit() else None)
        if kind == "dport":
            return None if "-" in literal else port_value(literal)
        if kind == "mark":
            return int(literal, 0)
    except (ValueError, TraceError):
        return None
    return None


def _exact_value(sel: Selector, value: object) -> Optional[object]:
    """The packet's value in the form :func:`_exact_literal` gives (None when not indexable)."""
    kind = sel.kind
    if kind in ("saddr", "daddr"):
        assert isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address))
        return (value.version, int(value))
    if kind == "l4proto":
        return PROTO_NUMBERS.get(str(value))
    if kind in ("dport", "mark"):
        return value
    return None


def _build_index(sels: tuple[Selector, ...], elements: list[Element]) -> tuple[dict[tuple[object, ...], int], list[int]]:
    exact: dict[tuple[object, ...], int] = {}
    others: list[int] = []
    for position, element in enumerate(elements):
        key = tuple(_exact_literal(sel, k) for sel, k in zip(sels, element.key))
        if len(element.key) == len(sels) and None not in key:
            exact.setdefault(key, position)
        else:
            others.append(position)
    return exact, others


def _numgen_share(key: tuple[str, ...], modulus: int) -> int:
    """How many of the values 0..modulus-1 a numgen map key (``N`` or ``A-B``) covers."""
    lo, _, hi = key[0].partition("-")
    first, last = max(port_value(lo), 0), min(port_value(hi or lo), modulus - 1)
    return max(0, last - first + 1)


def key_matches(sels: tuple[Selector, ...], values: tuple[Value, ...], key: tuple[str, ...]) -> bool:
    """Whether a concatenated key matches the packet's values component by component."""
    return len(key) == len(sels) and all(literal_matches(s, v, k) for s, v, k in zip(sels, values, key))


def find(nft_set: NftSet, sels: tuple[Selector, ...], values: tuple[Value, ...]) -> Optional[Element]:
    """The first element of ``nft_set`` whose key matches the packet's values (exact keys through an index)."""
    kinds = tuple(sel.kind for sel in sels)
    if kinds not in nft_set.lookup_index:
        nft_set.lookup_index[kinds] = _build_index(sels, nft_set.elements)
    exact, others = nft_set.lookup_index[kinds]
    wanted = tuple(_exact_value(sel, value) for sel, value in zip(sels, values))
    best = exact.get(wanted) if None not in wanted else None
    for position in others:
        if best is not None and position > best:
            break
        if key_matches(sels, values, nft_set.elements[position].key):
            best = position
            break
    return None if best is None else nft_set.elements[best]



@dataclass(frozen=True)
class Ruleset:
    """The parsed tables; runs the base chains of a hook."""

    tables: list[NftTable]

    def check(self) -> None:
        """Every jump/goto target and every @set must exist in its table."""
        for table in self.tables:
            for chain in table.chains.values():
                for rule in chain.rules:
                    for e in rule.exprs:
                        self._check_expr(table, rule, e)
            for nft_set in table.sets.values():
                for element in nft_set.elements:
                    if element.verdict:
                        self._check_verdict(table, element.verdict, element.line, f"@{nft_set.name}")

    def _check_expr(self, table: NftTable, rule: Rule, e: Expr) -> None:
        name = e.set_name if isinstance(e, Lookup) else e.map_name if isinstance(e, Vmap) else None
        if name is not None and name not in table.sets:
            raise TraceError(f"line {rule.line}: no set or map {name!r}: {rule.text}")
        if isinstance(e, Vmap):
            if name is not None and not table.sets[name].is_map:
                raise TraceError(f"line {rule.line}: @{name} is a set, not a verdict map: {rule.text}")
            for element in e.inline:
                self._check_verdict(table, element.verdict, rule.line, rule.text)
        if isinstance(e, Verdict):
            self._check_verdict(table, e, rule.line, rule.text)

    @staticmethod
    def _check_verdict(table: NftTable, verdict: Optional[Verdict], line: int, where: str) -> None:
        if verdict is not None and verdict.chain is not None and verdict.chain not in table.chains:
            raise TraceError(f"line {line}: no chain {verdict.chain!r} in table {table.family} {table.name}: {where}")

    def base_chains(self, hook: str, version: int, ctx: Context) -> list[BaseChain]:
        """Base chains on ``hook`` of tables that see IP ``version``, by priority (then file order)."""
        found: list[tuple[int, int, BaseChain]] = []
        order = 0
        for table in self.tables:
            if version not in FAMILY_VERSIONS.get(table.family, ()):
                continue
            for chain in table.chains.values():
                if chain.hook != hook:
                    continue
                runner = _Runner(table, ctx, chain.ctype or "filter")
                label = f"{table.family} {table.name} {chain.name} (type {chain.ctype}, priority {chain.priority})"
                base = BaseChain(label=label, nat=chain.ctype == "nat",
                                 policy="drop" if chain.policy == "drop" else "accept",
                                 run=runner.entry(chain.name), table=f"{table.family} {table.name}",
                                 chain=chain.name)
                found.append((chain.priority, order, base))
                order += 1
        return [b for _, _, b in sorted(found, key=lambda t: (t[0], t[1]))]


@dataclass(frozen=True)
class _Runner:
    """Runs the chains of one table for a base chain of type ``ctype``."""

    table: NftTable
    ctx: Context
    ctype: str

    def entry(self, name: str) -> Callable[[Flow, Log], list[Outcome]]:
        """Run the base chain ``name``."""
        def run_base(flow: Flow, log: Log) -> list[Outcome]:
            return self.run(name, flow, log, ())
        return run_base

    def run(self, name: str, flow: Flow, log: Log, stack: tuple[str, ...]) -> list[Outcome]:
        """All outcomes of chain ``name`` for ``flow`` (END when it falls off the end)."""
        if len(stack) > MAX_DEPTH or name in stack:
            raise TraceError(f"table {self.table.family} {self.table.name}: jump loop through chain {name}")
        return self._from(self.table.chains[name], 0, flow, log, stack + (name,))

    def _from(self, chain: NftChain, start: int, flow: Flow, log: Log, stack: tuple[str, ...]) -> list[Outcome]:
        """Run ``chain`` from rule ``start``; branches that go on with the next rule wait in a work list."""
        results: list[Outcome] = []
        pending: list[tuple[int, Flow]] = [(start, flow)]
        while pending:
            index, flow = pending.pop()
            while index < len(chain.rules):
                outcomes = self._rule(chain.rules[index], flow, log, stack)
                index += 1
                if len(outcomes) == 1 and outcomes[0][1] is Ctl.NEXT:
                    flow = outcomes[0][0]
                    continue
                results += [(f, ctl) for f, ctl in outcomes if ctl is not Ctl.NEXT]
                pending += [(index, f) for f, ctl in reversed(outcomes) if ctl is Ctl.NEXT]
                break
            else:
                results.append((flow, Ctl.END))
        return results

    def _rule(self, rule: Rule, flow: Flow, log: Log, stack: tuple[str, ...], start: int = 0,
              shown: bool = False) -> list[Outcome]:
        """Evaluate one rule left to right from expression ``start``: matches may stop it, statements
        act, a verdict decides. A ``numgen`` match splits the flow into a matching and a missing branch."""

        def show() -> None:
            nonlocal shown
            if not shown:
                log(f"[{rule.line}] {rule.text}", rule=rule.text, line=rule.line)
                shown = True

        for position in range(start, len(rule.exprs)):
            e = rule.exprs[position]
            if isinstance(e, Compare) and e.sels[0].kind == "numgen":
                return self._numgen_match(e, rule, position, flow, log, stack, show)
            if isinstance(e, Compare):
                if not self._compare(e, flow):
                    return [(flow, Ctl.NEXT)]
            elif isinstance(e, Lookup):
                if not self._lookup(e, rule, flow, log):
                    return [(flow, Ctl.NEXT)]
            elif isinstance(e, Note):
                if e.show:
                    show()
                    with log.indent():
                        log(e.text)
            elif isinstance(e, SetMark):
                show()
                flow = self._set_mark(e, flow, log)
            elif isinstance(e, Vmap):
                return self._vmap(e, rule, flow, log, stack, show)
            else:
                show()
                with log.indent():
                    return self._act(e, flow, log, stack)
        return [(flow, Ctl.NEXT)]

    def _numgen_match(self, e: Compare, rule: Rule, position: int, flow: Flow, log: Log,
                      stack: tuple[str, ...], show: Callable[[], None]) -> list[Outcome]:
        """``numgen random mod N V``: the rest of the rule runs for the share of 0..N-1 that matches
        (with that probability); the other share goes on with the next rule."""
        modulus = e.sels[0].modulus
        count = sum(_numgen_share(value, modulus) for value in e.values)
        count = min(count, modulus)
        if e.negate:
            count = modulus - count
        results: list[Outcome] = []
        show()
        with log.indent():
            if count:
                hit = replace(flow, prob=flow.prob * count / modulus)
                log(f"random {count} of {modulus} match (branch p={hit.prob:.4f})")
                results += self._rule(rule, hit, log, stack, position + 1, shown=True)
            if count < modulus:
                miss = replace(flow, prob=flow.prob * (modulus - count) / modulus)
                log(f"random {modulus - count} of {modulus} miss (branch p={miss.prob:.4f}), next rule")
                results.append((miss, Ctl.NEXT))
        return results

    def _compare(self, e: Compare, flow: Flow) -> bool:
        values = tuple(read(s, flow, self.ctx) for s in e.sels)
        if any(v is None for v in values):
            return False
        if e.mask is not None:
            values = tuple(int(v) & e.mask for v in values)  # type: ignore[call-overload]
        hit = any(key_matches(e.sels, values, value) for value in e.values)
        return hit != e.negate

    def _lookup(self, e: Lookup, rule: Rule, flow: Flow, log: Log) -> bool:
        values = tuple(read(s, flow, self.ctx) for s in e.sels)
        if any(v is None for v in values):
            return False
        nft_set = self.table.sets[e.set_name]
        hit = find(nft_set, e.sels, values) is not None
        if not hit and nft_set.dynamic and not e.negate:
            target = next((x for x in rule.exprs if isinstance(x, Verdict) and x.chain), None)
            if target is not None:
                log(f"[{rule.line}] affinity: a returning client may stick to {target.chain}"
                    f"{self._endpoint_hint(target.chain)}; the first packet is not in @{e.set_name} yet",
                    rule=rule.text, line=rule.line)
        return hit != e.negate

    def _endpoint_hint(self, chain: Optional[str]) -> str:
        rules = self.table.chains[chain].rules if chain in self.table.chains else []
        target = next((x.target for r in rules for x in r.exprs if isinstance(x, Nat) and x.kind == "dnat"), None)
        return f" ({target})" if target else ""

    def _set_mark(self, e: SetMark, flow: Flow, log: Log) -> Flow:
        mark = {"set": lambda m: e.value, "or": lambda m: m | e.value,
                "and": lambda m: m & e.value, "xor": lambda m: m ^ e.value}[e.op](flow.mark)
        with log.indent():
            log(f"mark 0x{flow.mark:x} -> 0x{mark:x}")
        return replace(flow, mark=mark)

    def _vmap(self, e: Vmap, rule: Rule, flow: Flow, log: Log, stack: tuple[str, ...],
              show: Callable[[], None]) -> list[Outcome]:
        """A verdict-map lookup; ``numgen`` keys branch over every element."""
        elements = self.table.sets[e.map_name].elements if e.map_name else list(e.inline)
        where = f"@{e.map_name}" if e.map_name else "the map"
        if e.sels[0].kind == "numgen":
            return self._numgen(e.sels[0].modulus, elements, rule, flow, log, stack, show)
        values = tuple(read(s, flow, self.ctx) for s in e.sels)
        if any(v is None for v in values):
            return [(flow, Ctl.NEXT)]
        if e.map_name:
            element = find(self.table.sets[e.map_name], e.sels, values)
        else:
            element = next((el for el in elements if key_matches(e.sels, values, el.key)), None)
        if element is None or element.verdict is None:
            return [(flow, Ctl.NEXT)]
        show()
        with log.indent():
            log(f"{where}: {' . '.join(element.key)} : {element.verdict}")
            with log.indent():
                return self._act(element.verdict, flow, log, stack)

    def _numgen(self, modulus: int, elements: list[Element], rule: Rule, flow: Flow, log: Log,
                stack: tuple[str, ...], show: Callable[[], None]) -> list[Outcome]:
        show()
        results: list[Outcome] = []
        covered = 0
        with log.indent():
            for element in elements:
                count = _numgen_share(element.key, modulus)
                if not count or element.verdict is None:
                    continue
                covered += count
                p = count / modulus
                branch = replace(flow, prob=flow.prob * p)
                log(f"random {' . '.join(element.key)} of {modulus}: {element.verdict} (branch p={branch.prob:.4f})")
                with log.indent():
                    results += self._act(element.verdict, branch, log, stack)
            if covered < modulus:
                rest = replace(flow, prob=flow.prob * (modulus - covered) / modulus)
                log(f"random: no element (branch p={rest.prob:.4f}), next rule")
                results.append((rest, Ctl.NEXT))
        return results

    def _act(self, e: Expr, flow: Flow, log: Log, stack: tuple[str, ...]) -> list[Outcome]:
        """Run a statement that ends the rule: a verdict, NAT or reject."""
        if isinstance(e, Verdict):
            return self._verdict(e, flow, log, stack)
        if isinstance(e, Nat):
            return self._nat(e, flow, log)
        if isinstance(e, Reject):
            log(f"REJECT ({e.how})", verdict="reject")
            return [(flow, Ctl.REJECT)]
        raise TraceError(f"unexpected expression {e!r}")  # pragma: no cover

    def _verdict(self, v: Verdict, flow: Flow, log: Log, stack: tuple[str, ...]) -> list[Outcome]:
        if v.kind == "accept":
            log("ACCEPT", verdict="accept")
            return [(replace(flow, accepted=flow.accepted or self.ctype == "filter"), Ctl.ACCEPT)]
        if v.kind == "drop":
            log("DROP", verdict="drop")
            return [(flow, Ctl.DROP)]
        if v.kind == "return":
            return [(flow, Ctl.RETURN)]
        if v.kind == "continue":
            return [(flow, Ctl.NEXT)]
        assert v.chain is not None
        log(f"chain {v.chain}", verdict=v.kind, enter=(f"{self.table.family} {self.table.name}", v.chain))
        with log.indent():
            outcomes = self.run(v.chain, flow, log, stack)
        back = Ctl.NEXT if v.kind == "jump" else Ctl.RETURN
        return [(f, back if ctl in (Ctl.END, Ctl.RETURN) else ctl) for f, ctl in outcomes]

    def _nat(self, e: Nat, flow: Flow, log: Log) -> list[Outcome]:
        if e.kind == "masquerade":
            log("MASQUERADE", verdict="masquerade")
            return [(replace(flow, masquerade=True), Ctl.ACCEPT)]
        if e.kind == "snat":
            log(f"SNAT to {e.target}", verdict="snat")
            return [(replace(flow, masquerade=True), Ctl.ACCEPT)]
        assert e.target is not None
        ip, port = parse_nat_target(e.target, flow.dport)
        log(f"DNAT to {endpoint_text(ip, port)}", verdict="dnat")
        return [(flow.after_dnat(ip, port), Ctl.ACCEPT)]


def parse(text: str) -> Ruleset:
    """Parse an ``nft -f`` script; raises TraceError naming the offending line."""
    ruleset = Ruleset(parse_tables(text))
    ruleset.check()
    return ruleset
