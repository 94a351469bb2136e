"""The tracer's ``nft -f`` parser: tokens (:mod:`.nft_lexer`) to tables (:mod:`.nft_model`).

Reads the block form the project emits and ``nft list ruleset`` prints
(``table FAMILY NAME { set … map … chain … }``), plus the command form
(``add|create|insert|delete|flush|destroy table|chain|set|map|element|rule …``)
that ``knftables`` transactions use. ``delete table`` drops a table defined
earlier in the script, as the kernel would. Rules become the expressions listed
in :mod:`.nftables`; anything else is a TraceError naming the line.
"""
from __future__ import annotations

from typing import Callable, Optional

from .model import PROTO_NUMBERS, TraceError, is_address_spec, parse_nat_target
from .nft_lexer import Tok, tokenize
from .nft_model import (
    FAMILIES,
    NAMED_PRIORITIES,
    VERDICT_WORDS,
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

_CT_STATES = frozenset({"new", "established", "related", "invalid", "untracked"})
_ADDR_TYPES = frozenset({"local", "unicast", "multicast", "broadcast", "unspec"})


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

    def parse(self) -> list[NftTable]:
        while True:
            self.skip_separators()
            tok = self.peek()
            if tok is None:
                break
            self.command()
        return list(self.tables.values())

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
                    [port_value(part) for part in literal.split("-", 1)]
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


def parse_tables(text: str) -> list[NftTable]:
    """The tables an ``nft -f`` script leaves; raises TraceError naming the offending line."""
    return _Parser(text).parse()
