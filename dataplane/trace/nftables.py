"""``nft -f`` scripts: parser and interpreter for the packet tracer.

Reads the block form the project emits and ``nft list ruleset`` prints
(``table FAMILY NAME { set … map … chain … }``), plus the command form
(``add|create|insert|delete|flush|destroy table|chain|set|map|element|rule …``)
that ``knftables`` transactions use. ``delete table`` drops a table defined
earlier in the script, as the kernel would.

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
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Union

from . import (
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
    is_address_spec,
    parse_nat_target,
)

FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
FAMILY_VERSIONS = {"ip": (4,), "ip6": (6,), "inet": (4, 6)}
HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
NAMED_PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
VERDICT_WORDS = ("accept", "drop", "return", "continue")
MAX_DEPTH = 64
_SERVICES = {"http": 80, "https": 443, "domain": 53, "ssh": 22, "ntp": 123, "smtp": 25}
_CT_STATES = frozenset({"new", "established", "related", "invalid", "untracked"})
_ADDR_TYPES = frozenset({"local", "unicast", "multicast", "broadcast", "unspec"})


# ---------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class Tok:
    """A token: a word, a quoted string (``quoted``), or one of ``{ } ; , :`` and newline ``\\n``."""

    text: str
    line: int
    quoted: bool = False

    def is_(self, *words: str) -> bool:
        return not self.quoted and self.text in words


_TOKEN = re.compile(r"""
    (?P<nl>\n)
  | (?P<space>[ \t\r]+ | \\\n)
  | (?P<comment>\#[^\n]*)
  | "(?P<string>[^"\n]*)"
  | (?P<single>[{};,])
  | (?P<word>[^ \t\r\n"\#{};,]+)
  | (?P<bad>")
""", re.VERBOSE)


def tokenize(text: str) -> list[Tok]:
    """Split an nft script into tokens; ``#`` comments are dropped, newlines kept."""
    toks: list[Tok] = []
    line = 1
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "nl":
            toks.append(Tok("\n", line))
            line += 1
        elif kind == "space":
            line += m.group().count("\n")
        elif kind == "string":
            toks.append(Tok(m.group("string"), line, quoted=True))
        elif kind == "single":
            toks.append(Tok(m.group(), line))
        elif kind == "word":
            word = m.group()
            if word.endswith(":") and word[:-1].isdigit():  # "0:" in a map literal
                toks += [Tok(word[:-1], line), Tok(":", line)]
            else:
                toks.append(Tok(word, line))
        elif kind == "bad":
            raise TraceError(f"line {line}: unterminated string")
    return toks


# ------------------------------------------------------------------ data model


@dataclass(frozen=True, slots=True)
class Selector:
    """Something a rule reads from the packet (``ip daddr``, ``th dport``, ``fib saddr type``…)."""

    kind: str  # saddr daddr l4proto dport mark iifname oifname fib-saddr fib-daddr ct-state nfproto numgen
    text: str
    version: Optional[int] = None  # ip / ip6 selectors only see their family
    proto: Optional[str] = None  # tcp/udp/sctp dport imply that protocol
    modulus: int = 0  # numgen


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: str  # accept drop return continue jump goto
    chain: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.kind} {self.chain}" if self.chain else self.kind


@dataclass(frozen=True, slots=True)
class Element:
    """A set or map element: key components (literal text) and, for a verdict map, the verdict."""

    key: tuple[str, ...]
    verdict: Optional[Verdict]
    line: int


@dataclass(frozen=True, slots=True)
class Compare:
    """``SEL [& mask] [==|!=] value | { values }``."""

    sels: tuple[Selector, ...]
    negate: bool
    values: tuple[tuple[str, ...], ...]
    mask: Optional[int] = None


@dataclass(frozen=True, slots=True)
class Lookup:
    """``SEL [!=] @set``."""

    sels: tuple[Selector, ...]
    negate: bool
    set_name: str


@dataclass(frozen=True, slots=True)
class Vmap:
    """``SEL vmap @map`` or ``SEL vmap { key : verdict, … }``."""

    sels: tuple[Selector, ...]
    map_name: Optional[str]
    inline: tuple[Element, ...]


@dataclass(frozen=True, slots=True)
class SetMark:
    op: str  # "set" | "or" | "and" | "xor"
    value: int


@dataclass(frozen=True, slots=True)
class Nat:
    kind: str  # "dnat" | "snat" | "masquerade"
    target: Optional[str]


@dataclass(frozen=True, slots=True)
class Reject:
    how: str


@dataclass(frozen=True, slots=True)
class Note:
    """A statement with no effect on the trace (counter, log, set update), shown in the path."""

    text: str
    show: bool


Expr = Union[Compare, Lookup, Vmap, SetMark, Nat, Reject, Note, Verdict]


@dataclass(frozen=True, slots=True)
class Rule:
    line: int
    text: str
    exprs: tuple[Expr, ...]


@dataclass
class NftSet:
    """A named set or map."""

    name: str
    is_map: bool
    line: int
    flags: set[str] = field(default_factory=set)
    elements: list[Element] = field(default_factory=list)
    # per selector kinds: (exact key -> position of its first element, positions of the others)
    _index: dict[tuple[str, ...], tuple[dict[tuple[object, ...], int], list[int]]] = field(
        default_factory=dict, repr=False, compare=False)

    @property
    def dynamic(self) -> bool:
        return bool(self.flags & {"dynamic", "timeout"})

    def find(self, sels: tuple["Selector", ...], values: tuple[object, ...]) -> Optional[Element]:
        """The first element whose key matches the packet's values (exact keys through an index)."""
        kinds = tuple(sel.kind for sel in sels)
        if kinds not in self._index:
            self._index[kinds] = _build_index(sels, self.elements)
        exact, others = self._index[kinds]
        wanted = tuple(_exact_value(sel, value) for sel, value in zip(sels, values))
        best = exact.get(wanted) if None not in wanted else None
        for position in others:
            if best is not None and position > best:
                break
            if key_matches(sels, values, self.elements[position].key):
                best = position
                break
        return None if best is None else self.elements[best]


@dataclass
class NftChain:
    name: str
    line: int
    ctype: Optional[str] = None
    hook: Optional[str] = None
    priority: int = 0
    policy: str = "accept"
    rules: list[Rule] = field(default_factory=list)


@dataclass
class NftTable:
    family: str
    name: str
    chains: dict[str, NftChain] = field(default_factory=dict)
    sets: dict[str, NftSet] = field(default_factory=dict)


# ---------------------------------------------------------------------- parser


class _Parser:
    """Recursive-descent parser over the token list."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.toks = tokenize(text)
        self.i = 0
        self.tables: dict[tuple[str, str], NftTable] = {}

    # -- token helpers -------------------------------------------------------

    def peek(self, ahead: int = 0) -> Optional[Tok]:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else None

    def line_no(self) -> int:
        tok = self.peek() or (self.toks[-1] if self.toks else Tok("", 1))
        return tok.line

    def error(self, message: str, line: Optional[int] = None) -> TraceError:
        n = line or self.line_no()
        text = self.lines[n - 1].strip() if 0 < n <= len(self.lines) else ""
        return TraceError(f"line {n}: {message}: {text}")

    def next(self, what: str = "a word") -> Tok:
        tok = self.peek()
        if tok is None or tok.is_("\n", ";"):
            raise self.error(f"expected {what}")
        self.i += 1
        return tok

    def expect(self, text: str) -> Tok:
        tok = self.peek()
        if tok is None or not tok.is_(text):
            raise self.error(f"expected {text!r}")
        self.i += 1
        return tok

    def skip_separators(self) -> None:
        while (tok := self.peek()) is not None and tok.is_("\n", ";"):
            self.i += 1

    def end_of_statement(self) -> None:
        tok = self.peek()
        if tok is not None and not tok.is_("\n", ";", "}"):
            raise self.error(f"unexpected {tok.text!r}")

    def statement_tokens(self) -> list[Tok]:
        """Tokens up to the end of the statement (newline or ``;`` outside braces)."""
        out: list[Tok] = []
        depth = 0
        while (tok := self.peek()) is not None:
            if depth == 0 and (tok.is_("\n", ";") or tok.is_("}")):
                break
            if tok.is_("{"):
                depth += 1
            elif tok.is_("}"):
                depth -= 1
            self.i += 1
            if not tok.is_("\n"):
                out.append(tok)
        if depth:
            raise self.error("unbalanced braces")
        return out

    # -- top level -----------------------------------------------------------

    def parse(self) -> "Ruleset":
        while True:
            self.skip_separators()
            tok = self.peek()
            if tok is None:
                break
            self.command()
        ruleset = Ruleset(list(self.tables.values()))
        ruleset.check()
        return ruleset

    def family_and_name(self) -> tuple[str, str]:
        tok = self.next("a table name")
        if tok.is_(*FAMILIES):
            return tok.text, self.next("a table name").text
        return "ip", tok.text

    def table_ref(self) -> NftTable:
        family, name = self.family_and_name()
        table = self.tables.get((family, name))
        if table is None:
            raise self.error(f"no table {family} {name}")
        return table

    def command(self) -> None:
        tok = self.next()
        if tok.is_("table"):
            self.table_statement()
        elif tok.is_("add", "create"):
            self.add_command()
        elif tok.is_("insert"):
            self.expect("rule")
            self.rule_command(insert=True)
        elif tok.is_("delete", "destroy"):
            self.delete_command()
        elif tok.is_("flush"):
            self.flush_command()
        else:
            raise self.error(f"unsupported command {tok.text!r}", tok.line)

    def table_statement(self) -> None:
        family, name = self.family_and_name()
        table = self.tables.setdefault((family, name), NftTable(family, name))
        if (tok := self.peek()) is not None and tok.is_("{"):
            self.i += 1
            self.table_body(table)
            self.expect("}")
        self.end_of_statement()

    def add_command(self) -> None:
        kind = self.next("an object type")
        if kind.is_("table"):
            self.table_statement()
        elif kind.is_("chain"):
            table = self.table_ref()
            self.chain_def(table, self.next("a chain name"))
        elif kind.is_("set", "map"):
            table = self.table_ref()
            self.set_def(table, self.next("a set name"), kind.text == "map")
        elif kind.is_("element"):
            table = self.table_ref()
            nft_set = self.set_of(table, self.next("a set name").text)
            nft_set.elements += self.element_list(nft_set.is_map)
            self.end_of_statement()
        elif kind.is_("rule"):
            self.rule_command(insert=False)
        else:
            raise self.error(f"unsupported object {kind.text!r}", kind.line)

    def rule_command(self, insert: bool) -> None:
        table = self.table_ref()
        chain = self.chain_of(table, self.next("a chain name").text)
        line = self.line_no()
        rule = self.rule(self.statement_tokens(), line)
        if rule is None:
            raise self.error("empty rule", line)
        if insert:
            chain.rules.insert(0, rule)
        else:
            chain.rules.append(rule)

    def delete_command(self) -> None:
        kind = self.next("an object type")
        if kind.is_("table"):
            family, name = self.family_and_name()
            self.tables.pop((family, name), None)
        elif kind.is_("chain"):
            self.table_ref().chains.pop(self.next("a chain name").text, None)
        elif kind.is_("set", "map"):
            self.table_ref().sets.pop(self.next("a set name").text, None)
        elif kind.is_("element"):
            table = self.table_ref()
            nft_set = self.set_of(table, self.next("a set name").text)
            gone = {e.key for e in self.element_list(None)}
            nft_set.elements = [e for e in nft_set.elements if e.key not in gone]
        else:
            raise self.error(f"unsupported object {kind.text!r}", kind.line)
        self.statement_tokens()

    def flush_command(self) -> None:
        kind = self.next("an object type")
        if kind.is_("ruleset"):
            self.tables.clear()
        elif kind.is_("table"):
            for chain in self.table_ref().chains.values():
                chain.rules.clear()
        elif kind.is_("chain"):
            self.chain_of(self.table_ref(), self.next("a chain name").text).rules.clear()
        elif kind.is_("set", "map"):
            self.set_of(self.table_ref(), self.next("a set name").text).elements.clear()
        else:
            raise self.error(f"unsupported object {kind.text!r}", kind.line)
        self.end_of_statement()

    def chain_of(self, table: NftTable, name: str) -> NftChain:
        chain = table.chains.get(name)
        if chain is None:
            raise self.error(f"no chain {name!r} in table {table.family} {table.name}")
        return chain

    def set_of(self, table: NftTable, name: str) -> NftSet:
        nft_set = table.sets.get(name)
        if nft_set is None:
            raise self.error(f"no set or map {name!r} in table {table.family} {table.name}")
        return nft_set

    # -- table body ----------------------------------------------------------

    def table_body(self, table: NftTable) -> None:
        while True:
            self.skip_separators()
            tok = self.peek()
            if tok is None or tok.is_("}"):
                return
            self.i += 1
            if tok.is_("comment"):
                self.next("a comment")
            elif tok.is_("flags"):
                self.statement_tokens()
            elif tok.is_("chain"):
                self.chain_def(table, self.next("a chain name"))
            elif tok.is_("set", "map"):
                self.set_def(table, self.next("a set name"), tok.text == "map")
            else:
                raise self.error(f"unsupported table item {tok.text!r}", tok.line)

    def set_def(self, table: NftTable, name: Tok, is_map: bool) -> None:
        nft_set = table.sets.setdefault(name.text, NftSet(name.text, is_map, name.line))
        if (tok := self.peek()) is None or not tok.is_("{"):
            self.end_of_statement()
            return
        self.i += 1
        while True:
            self.skip_separators()
            tok = self.next("a set property or '}'")
            if tok.is_("}"):
                break
            if tok.is_("type", "typeof", "timeout", "gc-interval", "size", "policy", "comment", "counter",
                       "auto-merge"):
                self.statement_tokens()
            elif tok.is_("flags"):
                nft_set.flags |= {t.text for t in self.statement_tokens() if not t.is_(",")}
            elif tok.is_("elements"):
                self.expect("=")
                nft_set.elements += self.element_list(is_map)
            else:
                raise self.error(f"unsupported set property {tok.text!r}", tok.line)
        self.end_of_statement()

    def element_list(self, is_map: Optional[bool]) -> list[Element]:
        """``{ elem, elem, … }`` (newlines allowed inside)."""
        self.expect("{")
        body: list[Tok] = []
        depth = 1
        while depth:
            tok = self.peek()
            if tok is None:
                raise self.error("unterminated element list")
            self.i += 1
            depth += tok.is_("{") - tok.is_("}")
            if depth and not tok.is_("\n"):
                body.append(tok)
        return parse_elements(body, is_map, self.error)

    def chain_def(self, table: NftTable, name: Tok) -> None:
        chain = table.chains.setdefault(name.text, NftChain(name.text, name.line))
        if (tok := self.peek()) is None or not tok.is_("{"):
            self.end_of_statement()
            return
        self.i += 1
        while True:
            self.skip_separators()
            tok = self.peek()
            if tok is None:
                raise self.error("unterminated chain")
            if tok.is_("}"):
                self.i += 1
                break
            line = tok.line
            words = self.statement_tokens()
            if words[0].is_("type"):
                self.base_chain_spec(chain, words, line)
            elif words[0].is_("policy") and len(words) == 2:
                if not words[1].is_("accept", "drop"):
                    raise self.error(f"bad policy {words[1].text!r}", line)
                chain.policy = words[1].text
            elif words[0].is_("comment") and len(words) == 2:
                continue  # the chain's own comment
            elif words[0].is_("devices", "device"):
                continue
            else:
                rule = self.rule(words, line)
                if rule is not None:
                    chain.rules.append(rule)
        self.end_of_statement()

    def base_chain_spec(self, chain: NftChain, words: list[Tok], line: int) -> None:
        """``type T hook H [device D] priority P``."""
        texts = [w.text for w in words]
        try:
            chain.ctype = texts[1]
            chain.hook = texts[texts.index("hook") + 1]
            prio = texts[texts.index("priority") + 1:]
        except (IndexError, ValueError):
            raise self.error("bad base chain specification", line) from None
        if chain.ctype not in ("filter", "nat", "route"):
            raise self.error(f"unsupported chain type {chain.ctype!r}", line)
        chain.priority = _priority(prio, lambda m: self.error(m, line))

    # -- rules ---------------------------------------------------------------

    def rule(self, words: list[Tok], line: int) -> Optional["Rule"]:
        if not words:
            return None
        last = words[-1].line
        text = " ".join(l.strip() for l in self.lines[line - 1:last]) if last >= line else words[0].text
        exprs = _RuleParser(words, lambda m: self.error(m, line)).parse()
        return Rule(line, text, tuple(exprs))


def _priority(words: list[str], error: Callable[[str], TraceError]) -> int:
    """``-110``, ``dstnat``, ``filter + 10``…"""
    if not words:
        raise error("missing priority")
    base = words[0]
    value = NAMED_PRIORITIES.get(base)
    if value is None:
        try:
            value = int(base)
        except ValueError:
            raise error(f"unknown priority {base!r}") from None
    if len(words) == 3 and words[1] in ("+", "-") and words[2].isdigit():
        value += int(words[2]) if words[1] == "+" else -int(words[2])
    elif len(words) != 1:
        raise error(f"unsupported priority {' '.join(words)!r}")
    return value


def _split(toks: list[Tok], sep: str) -> list[list[Tok]]:
    """Split a token list at ``sep`` tokens outside braces."""
    parts: list[list[Tok]] = [[]]
    depth = 0
    for tok in toks:
        depth += tok.is_("{") - tok.is_("}")
        if depth == 0 and tok.is_(sep):
            parts.append([])
        else:
            parts[-1].append(tok)
    return parts


def parse_elements(body: list[Tok], verdicts: Optional[bool],
                   error: Callable[[str, int], TraceError]) -> list[Element]:
    """The elements of ``{ … }``: ``k1 . k2 [comment "x"] [timeout 1s] [: verdict]``.

    ``verdicts``: True for a verdict map, False for a set, None when either is fine.
    ``error(message, line)`` builds the error for a bad element.
    """
    out = []
    for part in _split(body, ","):
        if not part:
            continue
        line = part[0].line
        key_toks, _, verdict_toks = _partition(part, ":")
        key: list[str] = []
        words = iter(key_toks)
        for tok in words:
            if tok.is_("comment", "timeout", "expires"):
                next(words, None)
            elif tok.is_("counter"):
                continue
            elif not tok.is_("."):
                key.append(tok.text)
        if not key:
            raise error("empty element", line)
        verdict = None
        if verdicts and not verdict_toks:
            raise error(f"map element {' . '.join(key)} has no verdict", line)
        if verdict_toks:
            if verdicts is False:
                raise error("a set element has no verdict", line)
            verdict = _verdict(verdict_toks, lambda m: error(m, line))
        out.append(Element(tuple(key), verdict, line))
    return out


def _partition(toks: list[Tok], sep: str) -> tuple[list[Tok], Optional[Tok], list[Tok]]:
    for j, tok in enumerate(toks):
        if tok.is_(sep):
            return toks[:j], tok, toks[j + 1:]
    return toks, None, []


def _verdict(toks: list[Tok], error: Callable[[str], TraceError]) -> Verdict:
    words = [t.text for t in toks]
    if len(words) == 1 and words[0] in VERDICT_WORDS:
        return Verdict(words[0])
    if len(words) == 2 and words[0] in ("jump", "goto"):
        return Verdict(words[0], words[1])
    raise error(f"unsupported verdict {' '.join(words)!r}")


class _RuleParser:
    """Turns a rule's tokens into expressions, left to right."""

    def __init__(self, toks: list[Tok], error: Callable[[str], TraceError]) -> None:
        self.toks, self.error = toks, error
        self.i = 0

    def peek(self, ahead: int = 0) -> Optional[Tok]:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else None

    def at(self, *words: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.is_(*words)

    def take(self, what: str = "a value") -> Tok:
        tok = self.peek()
        if tok is None:
            raise self.error(f"expected {what}")
        self.i += 1
        return tok

    def parse(self) -> list[Expr]:
        exprs: list[Expr] = []
        while self.peek() is not None:
            exprs.append(self.expression())
        return exprs

    def expression(self) -> Expr:
        tok = self.take()
        word = tok.text
        if tok.quoted:
            raise self.error(f"unexpected string {word!r}")
        if word in VERDICT_WORDS:
            return Verdict(word)
        if word in ("jump", "goto"):
            return Verdict(word, self.take("a chain name").text)
        if word == "reject":
            return self.reject()
        if word in ("dnat", "snat"):
            return self.nat(word)
        if word == "masquerade":
            self.skip_options(("fully-random", "random", "persistent", ","))
            return Nat("masquerade", None)
        if word == "counter":
            self.skip_counter()
            return Note("counter", show=False)
        if word == "comment":
            self.take("a comment")
            return Note("comment", show=False)
        if word == "log":
            self.skip_log()
            return Note("log (no effect on the packet)", show=True)
        nxt = self.peek()
        if word in ("update", "add") and nxt is not None and nxt.text.startswith("@"):
            return self.update(word)
        if word in ("meta", "mark") and self._mark_set(word):
            return self.set_mark()
        self.i -= 1
        return self.match()

    # -- statements ------------------------------------------------------------

    def reject(self) -> Reject:
        how = "icmp port-unreachable"
        if self.at("with"):
            self.i += 1
            kind = self.take("a reject type").text
            if kind in ("icmp", "icmpv6", "icmp6") and self.at("type"):
                self.i += 1
            how = f"{kind} {self.take('a reject code').text}"
        return Reject(how)

    def nat(self, kind: str) -> Nat:
        if self.at("ip", "ip6"):
            self.i += 1
        if not self.at("to"):
            raise self.error(f"{kind}: only '{kind} to ADDRESS' is supported")
        self.i += 1
        target = self.take("a NAT target").text
        try:
            parse_nat_target(target, 1)
        except TraceError as e:
            raise self.error(str(e)) from None
        self.skip_options(("fully-random", "random", "persistent", ","))
        return Nat(kind, target)

    def skip_options(self, words: tuple[str, ...]) -> None:
        while self.at(*words):
            self.i += 1

    def skip_counter(self) -> None:
        while self.at("packets", "bytes"):
            self.i += 2

    def skip_log(self) -> None:
        while self.at("prefix", "level", "group", "snaplen", "queue-threshold", "flags"):
            self.i += 2

    def update(self, word: str) -> Note:
        name = self.take().text[1:]
        self.take_braced()
        if self.at("timeout"):
            self.i += 2
        return Note(f"affinity: remember the source in @{name}", show=True)

    def take_braced(self) -> list[Tok]:
        """The tokens inside the ``{ … }`` that comes next."""
        if not self.at("{"):
            raise self.error("expected '{'")
        depth, start = 0, self.i
        while (tok := self.take("'}'")) is not None:
            depth += tok.is_("{") - tok.is_("}")
            if depth == 0:
                return self.toks[start + 1:self.i - 1]
        raise self.error("expected '}'")  # pragma: no cover

    def _mark_set(self, word: str) -> bool:
        if word == "meta":
            return bool(self.at("mark")) and (nxt := self.peek(1)) is not None and nxt.is_("set")
        return self.at("set")

    def set_mark(self) -> SetMark:
        if self.at("mark"):
            self.i += 1
        self.i += 1  # "set"
        if self.at("meta"):
            self.i += 1
        if self.at("mark"):
            self.i += 1
            op = {"|": "or", "or": "or", "^": "xor", "xor": "xor", "&": "and", "and": "and"}.get(self.take().text)
            if op is None:
                raise self.error("unsupported mark expression")
            return SetMark(op, self.number(self.take("a mark value").text))
        return SetMark("set", self.number(self.take("a mark value").text))

    def number(self, text: str) -> int:
        try:
            return int(text, 0)
        except ValueError:
            raise self.error(f"invalid number {text!r}") from None

    # -- matches ---------------------------------------------------------------

    def match(self) -> Expr:
        sels = [self.selector()]
        while self.at("."):
            self.i += 1
            sels.append(self.selector())
        sels_t = tuple(sels)
        if self.at("vmap"):
            self.i += 1
            return self.vmap(sels_t)
        negate, mask = False, None
        if self.at("&", "and"):
            self.i += 1
            mask = self.number(self.take("a mask").text)
        if self.at("!="):
            negate, self.i = True, self.i + 1
        elif self.at("==", "eq"):
            self.i += 1
        tok = self.peek()
        if tok is None:
            raise self.error(f"{' . '.join(s.text for s in sels)} needs a value")
        if tok.text.startswith("@") and not tok.quoted:
            self.i += 1
            return Lookup(sels_t, negate, tok.text[1:])
        if tok.is_("{"):
            elements = parse_elements(self.take_braced(), False, lambda m, _line: self.error(m))
            values = tuple(e.key for e in elements)
        else:
            values = (self.concat_value(len(sels)),)
            while sels[0].kind == "ct-state" and self.at(","):
                self.i += 1
                values += (self.concat_value(1),)
        for value in values:
            self.check_value(sels_t, value)
        return Compare(sels_t, negate, values, mask)

    def concat_value(self, n: int) -> tuple[str, ...]:
        parts = [self.take().text]
        for _ in range(n - 1):
            if not self.at("."):
                raise self.error("a concatenation needs a value for each part")
            self.i += 1
            parts.append(self.take().text)
        return tuple(parts)

    def check_value(self, sels: tuple[Selector, ...], value: tuple[str, ...]) -> None:
        if len(value) != len(sels):
            raise self.error(f"value {' . '.join(value)} does not fit {' . '.join(s.text for s in sels)}")
        for sel, literal in zip(sels, value):
            if sel.kind in ("saddr", "daddr") and not is_address_spec(literal):
                raise self.error(f"invalid address {literal!r}")
            if sel.kind == "ct-state" and literal not in _CT_STATES:
                raise self.error(f"unsupported conntrack state {literal!r}")
            if sel.kind.startswith("fib-") and literal not in _ADDR_TYPES:
                raise self.error(f"unsupported address type {literal!r}")
            if sel.kind == "l4proto" and literal not in PROTO_NUMBERS and not literal.isdigit():
                raise self.error(f"unknown protocol {literal!r}")
            if sel.kind in ("dport", "numgen"):
                try:
                    [_port(part) for part in literal.split("-", 1)]
                except TraceError as e:
                    raise self.error(str(e)) from None
            if sel.kind == "mark":
                self.number(literal)

    def vmap(self, sels: tuple[Selector, ...]) -> Vmap:
        tok = self.take("@map or '{'")
        if tok.text.startswith("@"):
            return Vmap(sels, tok.text[1:], ())
        if tok.is_("{"):
            self.i -= 1
            elements = tuple(parse_elements(self.take_braced(), True, lambda m, _line: self.error(m)))
            for e in elements:
                self.check_value(sels, e.key)
            return Vmap(sels, None, elements)
        raise self.error("vmap needs @map or '{ … }'")

    def selector(self) -> Selector:
        tok = self.take("an expression")
        word = tok.text
        nxt = self.peek()
        pair = f"{word} {nxt.text}" if nxt is not None else word
        simple = _SELECTORS.get(pair)
        if simple is not None:
            self.i += 1
            kind, version, proto = simple
            return Selector(kind=kind, text=pair, version=version, proto=proto)
        if word in ("mark", "iifname"):
            return Selector(kind=word, text=word)
        if word == "oifname" or pair == "meta oifname":
            raise self.error("the output interface (oifname) is not modelled")
        if word == "fib" and nxt is not None and nxt.text in ("saddr", "daddr"):
            self.i += 1
            if not self.at("type"):
                raise self.error(f"only 'fib {nxt.text} type' is supported")
            self.i += 1
            return Selector(kind=f"fib-{nxt.text}", text=f"fib {nxt.text} type")
        if word == "numgen":
            mode = self.take("random or inc").text
            if mode not in ("random", "inc") or not self.at("mod"):
                raise self.error("expected 'numgen random mod N'")
            self.i += 1
            modulus = self.number(self.take("a modulus").text)
            if self.at("offset"):
                raise self.error("numgen offset is not supported")
            if modulus <= 0:
                raise self.error("numgen modulus must be positive")
            return Selector(kind="numgen", text=f"numgen {mode} mod {modulus}", modulus=modulus)
        raise self.error(f"unsupported expression {word!r}")


# "word word" selectors: (kind, IP version it is limited to, protocol it implies)
_SELECTORS: dict[str, tuple[str, Optional[int], Optional[str]]] = {
    "ip saddr": ("saddr", 4, None),
    "ip daddr": ("daddr", 4, None),
    "ip6 saddr": ("saddr", 6, None),
    "ip6 daddr": ("daddr", 6, None),
    "ip protocol": ("l4proto", 4, None),
    "ip6 nexthdr": ("l4proto", 6, None),
    "meta l4proto": ("l4proto", None, None),
    "meta mark": ("mark", None, None),
    "meta iifname": ("iifname", None, None),
    "meta nfproto": ("nfproto", None, None),
    "th dport": ("dport", None, None),
    "tcp dport": ("dport", None, "tcp"),
    "udp dport": ("dport", None, "udp"),
    "sctp dport": ("dport", None, "sctp"),
    "ct state": ("ct-state", None, None),
}


# ----------------------------------------------------------------- evaluation

Value = object


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
        lo_n, hi_n = _port(lo), _port(hi or lo)
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


def _port(text: str) -> int:
    if text.isdigit():
        return int(text)
    if text in _SERVICES:
        return _SERVICES[text]
    raise TraceError(f"unknown port or service name {text!r}")


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
            return None if "-" in literal else _port(literal)
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
    first, last = max(_port(lo), 0), min(_port(hi or lo), modulus - 1)
    return max(0, last - first + 1)


def key_matches(sels: tuple[Selector, ...], values: tuple[Value, ...], key: tuple[str, ...]) -> bool:
    """Whether a concatenated key matches the packet's values component by component."""
    return len(key) == len(sels) and all(literal_matches(s, v, k) for s, v, k in zip(sels, values, key))


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
                                 run=runner.entry(chain.name))
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
                log(f"[{rule.line}] {rule.text}")
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
        hit = nft_set.find(e.sels, values) is not None
        if not hit and nft_set.dynamic and not e.negate:
            target = next((x for x in rule.exprs if isinstance(x, Verdict) and x.chain), None)
            if target is not None:
                log(f"[{rule.line}] affinity: a returning client may stick to {target.chain}"
                    f"{self._endpoint_hint(target.chain)}; the first packet is not in @{e.set_name} yet")
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
            element = self.table.sets[e.map_name].find(e.sels, values)
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
            log(f"REJECT ({e.how})")
            return [(flow, Ctl.REJECT)]
        raise TraceError(f"unexpected expression {e!r}")  # pragma: no cover

    def _verdict(self, v: Verdict, flow: Flow, log: Log, stack: tuple[str, ...]) -> list[Outcome]:
        if v.kind == "accept":
            log("ACCEPT")
            return [(replace(flow, accepted=flow.accepted or self.ctype == "filter"), Ctl.ACCEPT)]
        if v.kind == "drop":
            log("DROP")
            return [(flow, Ctl.DROP)]
        if v.kind == "return":
            return [(flow, Ctl.RETURN)]
        if v.kind == "continue":
            return [(flow, Ctl.NEXT)]
        assert v.chain is not None
        log(f"chain {v.chain}")
        with log.indent():
            outcomes = self.run(v.chain, flow, log, stack)
        back = Ctl.NEXT if v.kind == "jump" else Ctl.RETURN
        return [(f, back if ctl in (Ctl.END, Ctl.RETURN) else ctl) for f, ctl in outcomes]

    def _nat(self, e: Nat, flow: Flow, log: Log) -> list[Outcome]:
        if e.kind == "masquerade":
            log("MASQUERADE")
            return [(replace(flow, masquerade=True), Ctl.ACCEPT)]
        if e.kind == "snat":
            log(f"SNAT to {e.target}")
            return [(replace(flow, masquerade=True), Ctl.ACCEPT)]
        assert e.target is not None
        ip, port = parse_nat_target(e.target, flow.dport)
        log(f"DNAT to {endpoint_text(ip, port)}")
        return [(flow.after_dnat(ip, port), Ctl.ACCEPT)]


def parse(text: str) -> Ruleset:
    """Parse an ``nft -f`` script; raises TraceError naming the offending line."""
    return _Parser(text).parse()
