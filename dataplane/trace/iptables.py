"""``iptables-restore`` input: parser and interpreter for the packet tracer.

Reads the format ``iptables-save`` prints and ``iptables-restore --noflush``
accepts: ``*table`` sections, ``:CHAIN POLICY [p:b]`` declarations, ``-A``/``-I``
(optionally with a position), ``-N``/``-X``/``-F`` and ``COMMIT``. Built-in
chains need no declaration; their rules are the ``-I``/``-A`` lines of the file
(``-I`` inserts at the top, so the last ``-I`` line runs first, as in the kernel).

Matches understood: ``-s``/``-d`` (addresses, CIDRs, lists), ``-p``, ``-i``
(``+`` wildcard), and the modules comment, tcp/udp/sctp (``--dport``, ``--syn``),
multiport, addrtype, conntrack/state, mark, statistic (random), recent, nfacct.
Targets: ACCEPT, DROP, REJECT, RETURN, DNAT, SNAT, MASQUERADE, MARK, LOG and user
chains (``-j`` and ``-g``). Anything else is a TraceError naming the line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
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
    endpoint_text,
    is_address_spec,
    parse_nat_target,
)

BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}
# Tables registered at each hook, in priority order (raw -300, mangle -150,
# nat -100 for destination NAT / +100 for source NAT, filter 0, security 50).
HOOK_TABLES = {
    "prerouting": ("raw", "mangle", "nat"),
    "input": ("mangle", "filter", "security", "nat"),
    "forward": ("mangle", "filter", "security"),
    "output": ("raw", "mangle", "nat", "filter", "security"),
    "postrouting": ("mangle", "nat"),
}
STANDARD_TARGETS = frozenset({"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "SNAT", "MASQUERADE", "MARK", "LOG"})
MAX_DEPTH = 64

# Options each match module takes: name -> number of arguments.
MODULE_OPTIONS: dict[str, dict[str, int]] = {
    "comment": {"--comment": 1},
    "tcp": {"--dport": 1, "--destination-port": 1, "--syn": 0},
    "udp": {"--dport": 1, "--destination-port": 1},
    "sctp": {"--dport": 1, "--destination-port": 1},
    "multiport": {"--dports": 1, "--destination-ports": 1},
    "addrtype": {"--src-type": 1, "--dst-type": 1},
    "conntrack": {"--ctstate": 1},
    "state": {"--state": 1},
    "mark": {"--mark": 1},
    "statistic": {"--mode": 1, "--probability": 1},
    "recent": {"--name": 1, "--set": 0, "--rcheck": 0, "--update": 0, "--remove": 0, "--seconds": 1,
               "--reap": 0, "--hitcount": 1, "--mask": 1, "--rsource": 0, "--rdest": 0, "--rttl": 0},
    "nfacct": {"--nfacct-name": 1},
}
TARGET_OPTIONS: dict[str, dict[str, int]] = {
    "DNAT": {"--to-destination": 1, "--random": 0, "--persistent": 0, "--random-fully": 0},
    "SNAT": {"--to-source": 1, "--random": 0, "--persistent": 0, "--random-fully": 0},
    "MASQUERADE": {"--to-ports": 1, "--random": 0, "--random-fully": 0},
    "MARK": {"--set-xmark": 1, "--set-mark": 1, "--or-mark": 1, "--and-mark": 1, "--xor-mark": 1},
    "REJECT": {"--reject-with": 1},
    "LOG": {"--log-prefix": 1, "--log-level": 1, "--log-uid": 0, "--log-ip-options": 0,
            "--log-tcp-options": 0, "--log-tcp-sequence": 0},
}
_ADDR_TYPES = frozenset({"local", "unicast", "multicast", "broadcast", "unspec"})
_CT_STATES = frozenset({"new", "established", "related", "invalid", "untracked", "snat", "dnat"})
_OPTION_ALIASES = {"--source": "-s", "--src": "-s", "--destination": "-d", "--dst": "-d", "--protocol": "-p",
                   "--in-interface": "-i", "--match": "-m", "--jump": "-j", "--goto": "-g"}


# ------------------------------------------------------------------ data model


@dataclass(frozen=True, slots=True)
class Cond:
    """One match of a rule; ``test`` gets the flow and the context."""

    text: str
    negate: bool
    test: Callable[[Flow, Context], bool]

    def holds(self, flow: Flow, ctx: Context) -> bool:
        return self.test(flow, ctx) != self.negate


@dataclass(frozen=True, slots=True)
class Recent:
    """``-m recent``: the operation and list name."""

    op: str  # "set" | "rcheck" | "update" | "remove"
    name: str
    negate: bool


@dataclass(frozen=True, slots=True)
class Rule:
    """One parsed rule: matches, optional branch probability / recent list, target."""

    line: int
    text: str
    conds: tuple[Cond, ...]
    probability: Optional[float]
    recent: Optional[Recent]
    target: Optional[str]
    goto: bool
    options: tuple[tuple[str, str], ...]

    def option(self, name: str) -> Optional[str]:
        return next((v for k, v in self.options if k == name), None)


@dataclass
class Table:
    """A table's chains (rule lists) and the built-in chains' policies."""

    name: str
    chains: dict[str, list[Rule]] = field(default_factory=dict)
    policies: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------- parser


def _fail(line: int, message: str, text: str) -> TraceError:
    return TraceError(f"line {line}: {message}: {text.strip()}")


class _RuleParser:
    """Parses the option words of one ``-A``/``-I`` line into a :class:`Rule`."""

    def __init__(self, words: list[str], line: int, text: str) -> None:
        self.words, self.line, self.text = words, line, text
        self.i = 0
        self.conds: list[Cond] = []
        self.modules: list[str] = []
        self.proto: Optional[str] = None
        self.probability: Optional[float] = None
        self.recent: dict[str, str] = {}
        self.recent_negate = False
        self.target: Optional[str] = None
        self.goto = False
        self.options: list[tuple[str, str]] = []

    def error(self, message: str) -> TraceError:
        return _fail(self.line, message, self.text)

    def take(self, option: str) -> str:
        if self.i >= len(self.words):
            raise self.error(f"option {option} needs a value")
        value = self.words[self.i]
        self.i += 1
        return value

    def parse(self) -> Rule:
        negate = False
        while self.i < len(self.words):
            word = self.words[self.i]
            self.i += 1
            if word == "!":
                negate = True
                continue
            word = _OPTION_ALIASES.get(word, word)
            if self.target is not None:
                self.target_option(word, negate)
            elif word in ("-s", "-d", "-p", "-i", "-o"):
                self.basic(word, self.take(word), negate)
            elif word == "-m":
                if negate:
                    raise self.error("'!' cannot negate -m")
                self.module(self.take(word))
            elif word in ("-j", "-g"):
                self.target, self.goto = self.take(word), word == "-g"
            elif word.startswith("--"):
                self.module_option(word, negate)
            else:
                raise self.error(f"unsupported option {word!r}")
            negate = False
        recent = None
        if self.recent:
            op = next((k for k in ("set", "rcheck", "update", "remove") if k in self.recent), None)
            if op is None:
                raise self.error("-m recent needs one of --set, --rcheck, --update, --remove")
            recent = Recent(op, self.recent.get("name", "DEFAULT"), self.recent_negate)
        self.check_target()
        return Rule(self.line, self.text.strip(), tuple(self.conds), self.probability, recent,
                    self.target, self.goto, tuple(self.options))

    # -- matches -----------------------------------------------------------

    def basic(self, option: str, value: str, negate: bool) -> None:
        text = f"{'! ' if negate else ''}{option} {value}"
        if option in ("-s", "-d"):
            specs = tuple(value.split(","))
            bad = [s for s in specs if not is_address_spec(s)]
            if bad:
                raise self.error(f"invalid address {bad[0]!r} (host names are not supported)")
            pick = (lambda f: f.src) if option == "-s" else (lambda f: f.dst)
            self.conds.append(Cond(text, negate, lambda f, _c: any(address_matches(pick(f), s) for s in specs)))
        elif option == "-p":
            proto = _protocol_name(value)
            if proto is None:
                raise self.error(f"unknown protocol {value!r}")
            self.proto = None if negate else proto
            self.conds.append(Cond(text, negate, lambda f, _c: proto == "all" or f.proto == proto))
        elif option == "-i":
            self.conds.append(Cond(text, negate, lambda f, _c: _interface_matches(f.iif, value)))
        else:
            raise self.error("-o (output interface) is not modelled")

    def module(self, name: str) -> None:
        if name not in MODULE_OPTIONS:
            raise self.error(f"unsupported match module {name!r}")
        if name in ("tcp", "udp", "sctp") and self.proto != name:
            raise self.error(f"-m {name} needs -p {name} before it")
        self.modules.append(name)

    def module_option(self, option: str, negate: bool) -> None:
        module = next((m for m in reversed(self.modules) if option in MODULE_OPTIONS[m]), None)
        if module is None:
            raise self.error(f"unsupported option {option!r}")
        value = self.take(option) if MODULE_OPTIONS[module][option] else ""
        text = f"{'! ' if negate else ''}{option} {value}".strip()
        handler = getattr(self, "m_" + module)
        handler(option, value, negate, text)

    def m_comment(self, option: str, value: str, negate: bool, text: str) -> None:
        """Comments never affect matching."""

    def m_nfacct(self, option: str, value: str, negate: bool, text: str) -> None:
        """An accounting object: always matches."""

    def _ports(self, option: str, value: str, negate: bool, text: str, separator: str) -> None:
        ranges = []
        for part in value.split(separator):
            lo, _, hi = part.partition(":")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise self.error(f"invalid port {part!r}")
            ranges.append((int(lo), int(hi or lo)))
        proto = self.proto
        self.conds.append(Cond(text, negate, lambda f, _c: (proto is None or f.proto == proto)
                               and any(lo <= f.dport <= hi for lo, hi in ranges)))

    def m_tcp(self, option: str, value: str, negate: bool, text: str) -> None:
        if option == "--syn":  # a first TCP packet is a SYN
            self.conds.append(Cond(text, negate, lambda f, _c: f.proto == "tcp"))
        else:
            self._ports(option, value, negate, text, ",")

    m_udp = m_tcp
    m_sctp = m_tcp

    def m_multiport(self, option: str, value: str, negate: bool, text: str) -> None:
        self._ports(option, value, negate, text, ",")

    def m_addrtype(self, option: str, value: str, negate: bool, text: str) -> None:
        types = frozenset(t.lower() for t in value.split(","))
        unknown = types - _ADDR_TYPES
        if unknown:
            raise self.error(f"unsupported address type {sorted(unknown)[0].upper()!r}")
        pick = (lambda f: f.src) if option == "--src-type" else (lambda f: f.dst)
        self.conds.append(Cond(text, negate, lambda f, c: bool(addr_types(pick(f), c) & types)))

    def m_conntrack(self, option: str, value: str, negate: bool, text: str) -> None:
        states = frozenset(s.lower() for s in value.split(","))
        unknown = states - _CT_STATES
        if unknown:
            raise self.error(f"unsupported conntrack state {sorted(unknown)[0].upper()!r}")
        self.conds.append(Cond(text, negate, lambda f, _c: bool(f.ct_states & states)))

    m_state = m_conntrack

    def m_mark(self, option: str, value: str, negate: bool, text: str) -> None:
        want, mask = _value_mask(value, self.error)
        self.conds.append(Cond(text, negate, lambda f, _c: f.mark & mask == want))

    def m_statistic(self, option: str, value: str, negate: bool, text: str) -> None:
        if option == "--mode":
            if value != "random":
                raise self.error(f"statistic mode {value!r} is not supported (only random)")
            return
        try:
            p = float(value)
        except ValueError:
            raise self.error(f"invalid probability {value!r}") from None
        self.probability = 1.0 - p if negate else p

    def m_recent(self, option: str, value: str, negate: bool, text: str) -> None:
        key = option[2:]
        if key in ("set", "rcheck", "update", "remove"):
            self.recent_negate = negate
        self.recent[key] = value

    # -- target ------------------------------------------------------------

    def check_target(self) -> None:
        """Options a target cannot do without must be there and well formed."""
        options = dict(self.options)
        if self.target == "DNAT":
            if "--to-destination" not in options:
                raise self.error("DNAT needs --to-destination")
            try:
                parse_nat_target(options["--to-destination"], 1)
            except TraceError as e:
                raise self.error(str(e)) from None
        if self.target == "MARK":
            if len(options) != 1:
                raise self.error("MARK needs exactly one of --set-xmark, --set-mark, --or-mark, --and-mark, --xor-mark")
            _value_mask(next(iter(options.values())), self.error)

    def target_option(self, option: str, negate: bool) -> None:
        assert self.target is not None
        allowed = TARGET_OPTIONS.get(self.target, {})
        if negate or option not in allowed:
            raise self.error(f"unsupported option {option!r} for target {self.target}")
        value = self.take(option) if allowed[option] else ""
        self.options.append((option, value))


def _protocol_name(value: str) -> Optional[str]:
    value = value.lower()
    if value in ("all", "0"):
        return "all"
    if value in PROTO_NUMBERS:
        return value
    by_number = {str(n): name for name, n in PROTO_NUMBERS.items()}
    return by_number.get(value)


def _interface_matches(iif: str, pattern: str) -> bool:
    """iptables interface match: a trailing ``+`` is a prefix wildcard."""
    if pattern.endswith("+"):
        return iif.startswith(pattern[:-1]) and bool(iif)
    return iif == pattern


def _value_mask(value: str, error: Callable[[str], TraceError]) -> tuple[int, int]:
    """``V[/M]`` (hex or decimal); the mask defaults to all ones."""
    v, _, m = value.partition("/")
    try:
        return int(v, 0), int(m, 0) if m else 0xFFFFFFFF
    except ValueError:
        raise error(f"invalid mark {value!r}") from None


_WORD = re.compile(r'"((?:\\.|[^"\\])*)"|([^\s"]+)|(")')
_ESCAPE = re.compile(r"\\(.)")


def split_words(line: str, number: int) -> list[str]:
    """Split a line the way iptables-restore does: whitespace, double quotes, backslash escapes."""
    words = []
    for quoted, plain, stray in _WORD.findall(line):
        if stray:
            raise _fail(number, "unbalanced quote", line)
        words.append(_ESCAPE.sub(r"\1", quoted) if not plain else plain)
    return words


class _FileParser:
    """Builds the tables from the lines of an ``iptables-restore`` file."""

    def __init__(self) -> None:
        self.tables: dict[str, Table] = {}
        self.table: Optional[Table] = None

    def parse(self, text: str) -> "Ruleset":
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            self.line(number, line)
        if self.table is not None:
            raise TraceError(f"table {self.table.name}: missing COMMIT at end of input")
        ruleset = Ruleset(self.tables)
        ruleset.check_targets()
        return ruleset

    def line(self, number: int, line: str) -> None:
        if line.startswith("*"):
            name = line[1:].strip()
            if name not in BUILTIN_CHAINS:
                raise _fail(number, f"unknown table {name!r}", line)
            self.table = self.tables.setdefault(name, Table(name))
            return
        if self.table is None:
            raise _fail(number, "rule outside a *table section", line)
        if line == "COMMIT":
            self.table = None
        elif line.startswith(":"):
            self.declare(number, line)
        else:
            self.command(number, line)

    def declare(self, number: int, line: str) -> None:
        assert self.table is not None
        parts = line[1:].split()
        if len(parts) < 2:
            raise _fail(number, "bad chain declaration", line)
        name, policy = parts[0], parts[1]
        if name in BUILTIN_CHAINS[self.table.name]:
            if policy not in ("ACCEPT", "DROP"):
                raise _fail(number, f"bad policy {policy!r}", line)
            self.table.policies[name] = policy
        elif policy != "-":
            raise _fail(number, "a user chain has no policy", line)
        self.table.chains[name] = []  # declaring a chain flushes it

    def command(self, number: int, line: str) -> None:
        assert self.table is not None
        words = split_words(line, number)
        verb, args = words[0], words[1:]
        chains = self.table.chains
        if verb in ("-A", "--append", "-I", "--insert"):
            if not args:
                raise _fail(number, f"{verb} needs a chain", line)
            chain, rest = args[0], args[1:]
            position = 0
            if verb in ("-I", "--insert") and rest and rest[0].isdigit():
                position, rest = int(rest[0]) - 1, rest[1:]
            if chain not in chains and chain not in BUILTIN_CHAINS[self.table.name]:
                raise _fail(number, f"no chain {chain!r} in table {self.table.name}", line)
            rule = _RuleParser(rest, number, line).parse()
            rules = chains.setdefault(chain, [])
            if verb in ("-A", "--append"):
                rules.append(rule)
            else:
                rules.insert(min(position, len(rules)), rule)
        elif verb in ("-N", "--new-chain") and len(args) == 1:
            chains.setdefault(args[0], [])
        elif verb in ("-X", "--delete-chain") and len(args) <= 1:
            for name in args or [c for c in chains if c not in BUILTIN_CHAINS[self.table.name]]:
                chains.pop(name, None)
        elif verb in ("-F", "--flush") and len(args) <= 1:
            for name in args or list(chains):
                chains[name] = []
        else:
            raise _fail(number, f"unsupported command {verb!r}", line)


# ----------------------------------------------------------------- interpreter


@dataclass
class Ruleset:
    """Parsed tables; runs the base chains of a hook."""

    tables: dict[str, Table]

    def check_targets(self) -> None:
        """Every jump target must be a standard target or a chain of the same table."""
        for table in self.tables.values():
            for rules in table.chains.values():
                for rule in rules:
                    t = rule.target
                    if t is not None and t not in STANDARD_TARGETS and t not in table.chains:
                        raise _fail(rule.line, f"unknown target or chain {t!r}", rule.text)
                    if rule.goto and t in STANDARD_TARGETS:
                        raise _fail(rule.line, f"-g needs a chain, not {t}", rule.text)

    def base_chains(self, hook: str, version: int, ctx: Context) -> list[BaseChain]:
        """The built-in chains of ``hook`` that hold rules, in table priority order."""
        out = []
        for name in HOOK_TABLES[hook]:
            table = self.tables.get(name)
            chain = hook.upper()
            if table is None or not (table.chains.get(chain) or chain in table.policies):
                continue
            out.append(BaseChain(label=f"{name} {chain}", nat=name == "nat",
                                 policy="drop" if table.policies.get(chain) == "DROP" else "accept",
                                 run=_Runner(table, ctx).entry(chain), table=name, chain=chain))
        return out


@dataclass(frozen=True, slots=True)
class _Runner:
    """Runs chains of one table."""

    table: Table
    ctx: Context

    def entry(self, chain: str) -> Callable[[Flow, Log], list[Outcome]]:
        """Run the built-in chain ``chain``."""
        def run_base(flow: Flow, log: Log) -> list[Outcome]:
            return self.run(chain, flow, log, ())
        return run_base

    def run(self, chain: str, flow: Flow, log: Log, stack: tuple[str, ...]) -> list[Outcome]:
        """All outcomes of ``chain`` for ``flow`` (END when it falls off the end)."""
        if len(stack) > MAX_DEPTH or chain in stack:
            raise TraceError(f"table {self.table.name}: jump loop through chain {chain}")
        return self._from(chain, 0, flow, log, stack + (chain,))

    def _from(self, chain: str, start: int, flow: Flow, log: Log, stack: tuple[str, ...]) -> list[Outcome]:
        """Run ``chain`` from rule ``start``. Branches (random matches, subchains that return) wait
        in a work list, so a long run of probability rules needs no recursion."""
        rules = self.table.chains.get(chain, [])
        results: list[Outcome] = []
        pending: list[tuple[int, Flow]] = [(start, flow)]
        while pending:
            index, flow = pending.pop()
            index = self._first_match(rules, index, flow, log)
            if index == len(rules):
                results.append((flow, Ctl.END))
                continue
            rule = rules[index]
            log(f"[{rule.line}] {rule.text}", rule=rule.text, line=rule.line)
            with log.indent():
                if rule.probability is None:
                    outcomes = self._target(rule, flow, log, stack)
                else:
                    taken, missed = rule.probability * flow.prob, (1.0 - rule.probability) * flow.prob
                    log(f"random: taken with p={rule.probability:.4f} (branch p={taken:.4f})")
                    outcomes = self._target(rule, replace(flow, prob=taken), log, stack)
                    log(f"random: not taken (branch p={missed:.4f}), next rule")
                    pending.append((index + 1, replace(flow, prob=missed)))
            results += [(f, ctl) for f, ctl in outcomes if ctl is not Ctl.NEXT]
            pending += [(index + 1, f) for f, ctl in reversed(outcomes) if ctl is Ctl.NEXT]
        return results

    def _first_match(self, rules: list[Rule], index: int, flow: Flow, log: Log) -> int:
        """Index of the first rule from ``index`` whose matches hold (``len(rules)`` if none)."""
        while index < len(rules):
            rule = rules[index]
            if all(c.holds(flow, self.ctx) for c in rule.conds) and (
                    rule.recent is None or self._recent(rule, flow, log)):
                return index
            index += 1
        return index

    def _recent(self, rule: Rule, flow: Flow, log: Log) -> bool:
        """``-m recent`` for a first packet: lists are empty, so checks miss and --set matches."""
        assert rule.recent is not None
        op, name = rule.recent.op, rule.recent.name
        if op == "set":
            hit = True
        else:
            hit = False
            if rule.target and rule.target in self.table.chains:
                log(f"[{rule.line}] affinity: a returning client may stick to {rule.target}"
                    f"{self._endpoint_hint(rule.target)}; the first packet misses (-m recent --{op} --name {name})",
                    rule=rule.text, line=rule.line)
        return hit != rule.recent.negate

    def _endpoint_hint(self, chain: str) -> str:
        target = next((r.option("--to-destination") for r in self.table.chains.get(chain, [])
                       if r.target == "DNAT"), None)
        return f" ({target})" if target else ""

    def _target(self, rule: Rule, flow: Flow, log: Log, stack: tuple[str, ...]) -> list[Outcome]:
        """Apply a matched rule's target."""
        if rule.recent is not None and rule.recent.op == "set":
            log(f"affinity: remember the source in list {rule.recent.name}")
        target = rule.target
        if target is None:
            return [(flow, Ctl.NEXT)]
        if target in self.table.chains:
            return self._jump(rule, target, flow, log, stack)
        handler = _TARGETS[target]
        return handler(self, rule, flow, log)

    def _jump(self, rule: Rule, chain: str, flow: Flow, log: Log, stack: tuple[str, ...]) -> list[Outcome]:
        log(f"{self.table.name} {chain}", verdict="goto" if rule.goto else "jump", enter=(self.table.name, chain))
        with log.indent():
            outcomes = self.run(chain, flow, log, stack)
        back = Ctl.RETURN if rule.goto else Ctl.NEXT
        return [(f, back if ctl in (Ctl.END, Ctl.RETURN) else ctl) for f, ctl in outcomes]

    # -- standard targets ----------------------------------------------------

    def t_accept(self, rule: Rule, flow: Flow, log: Log) -> list[Outcome]:
        log("ACCEPT", verdict="accept")
        return [(replace(flow, accepted=flow.accepted or self.table.name == "filter"), Ctl.ACCEPT)]

    def t_drop(self, rule: Rule, flow: Flow, log: Log) -> list[Outcome]:
        log("DROP", verdict="drop")
        return [(flow, Ctl.DROP)]

    def t_reject(self, rule: Rule, flow: Flow, log: Log) -> list[Outcome]:
        log(f"REJECT ({rule.option('--reject-with') or 'icmp-port-unreachable'})", verdict="reject")
        return [(flow, Ctl.REJECT)]

    def t_return(self, rule: Rule, flow: Flow, log: Log) -> list[Outcome]:
        log("RETURN", verdict="return")
        return [(flow, Ctl.RETURN)]

    def t_dnat(self, rule: Rule, flow: Flow, log: Log) -> list[Outcome]:
        target = rule.option("--to-destination")
        assert target is not None  # checked when parsed
        ip, port = parse_nat_target(target, flow.dport)
        log(f"DNAT to {endpoint_text(ip, port)}", verdict="dnat")
        return [(flow.after_dnat(ip, port), Ctl.ACCEPT)]

    def t_snat(self, rule: Rule, flow: Flow, log: Log) -> list[Outcome]:
        log(f"SNAT to {rule.option('--to-source')}", verdict="snat")
        return [(replace(flow, masquerade=True), Ctl.ACCEPT)]

    def t_masquerade(self, rule: Rule, flow: Flow, log: Log) -> list[Outcome]:
        log("MASQUERADE", verdict="masquerade")
        return [(replace(flow, masquerade=True), Ctl.ACCEPT)]

    def t_mark(self, rule: Rule, flow: Flow, log: Log) -> list[Outcome]:
        mark = flow.mark
        for option, value in rule.options:
            v, m = _value_mask(value, lambda msg: _fail(rule.line, msg, rule.text))
            if option == "--set-xmark":
                mark = (mark & ~m & 0xFFFFFFFF) ^ v
            elif option == "--set-mark":
                mark = (mark & ~m & 0xFFFFFFFF) | v
            elif option == "--or-mark":
                mark |= v
            elif option == "--and-mark":
                mark &= v
            elif option == "--xor-mark":
                mark ^= v
        log(f"mark 0x{flow.mark:x} -> 0x{mark:x}")
        return [(replace(flow, mark=mark), Ctl.NEXT)]

    def t_log(self, rule: Rule, flow: Flow, log: Log) -> list[Outcome]:
        log("LOG (no effect on the packet)")
        return [(flow, Ctl.NEXT)]


_TARGETS: dict[str, Callable[[_Runner, Rule, Flow, Log], list[Outcome]]] = {
    "ACCEPT": _Runner.t_accept,
    "DROP": _Runner.t_drop,
    "REJECT": _Runner.t_reject,
    "RETURN": _Runner.t_return,
    "DNAT": _Runner.t_dnat,
    "SNAT": _Runner.t_snat,
    "MASQUERADE": _Runner.t_masquerade,
    "MARK": _Runner.t_mark,
    "LOG": _Runner.t_log,
}


def parse(text: str) -> Ruleset:
    """Parse ``iptables-restore`` input; raises TraceError naming the offending line."""
    return _FileParser().parse(text)
