"""Canonical text of rules read back from a kernel, so that two readings can be compared line by
line (``dataplane diff``): what a compiled file becomes once loaded, and what a namespace holds.

* iptables (:func:`canonical_iptables`): per table, the chains selected (declared without
  policy or counters, sorted), then the selected rules of built-in chains, then each selected
  chain's rules in kernel order; ``[pkts:bytes]`` counters dropped.
* nftables (:func:`canonical_nftables`): one table as ``nft list table`` prints it, its chains,
  sets and maps sorted by kind and name, the elements of each set or map one per line and sorted,
  counters' values dropped, and the elements of sets that packets fill (``dynamic`` or
  ``timeout``: session affinity) left out.

Pure text functions: reading the kernel is :mod:`dataplane.runtime.diff`'s job.
"""
from __future__ import annotations

import re
from typing import Callable, Iterator, Mapping

__all__ = ["BUILTIN_ORDER", "parse_save", "canonical_iptables", "canonical_nftables"]

#: The built-in chains in the order packets meet them; their rules come first in a table.
BUILTIN_ORDER = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
_COUNTERS = re.compile(r"^\[\d+:\d+\]\s+")
_NFT_COUNTER = re.compile(r"\bcounter packets \d+ bytes \d+")
_BLOCK = re.compile(r"^\t(chain|set|map|flowtable|counter|quota|ct \w+|limit|secmark|synproxy) (\S+) \{$")


def parse_save(text: str) -> dict[str, tuple[list[str], list[str]]]:
    """``iptables-save`` text per table: (the chains it declares, its ``-A`` rules without
    counters), in the order printed."""
    tables: dict[str, tuple[list[str], list[str]]] = {}
    current: tuple[list[str], list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], ([], []))
        elif line == "COMMIT":
            current = None
        elif current is not None and line.startswith(":"):
            current[0].append(line[1:].split()[0])
        elif current is not None:
            line = _COUNTERS.sub("", line)
            if line.startswith("-A "):
                current[1].append(line)
    return tables


def canonical_iptables(tables: Mapping[str, tuple[list[str], list[str]]],
                       chains: Mapping[str, set[str]],
                       builtin_rule: Callable[[str, str], bool]) -> str:
    """The canonical text of ``tables`` (see :func:`parse_save`) showing, per table, the chains
    ``chains[table]`` (their declarations and rules) and the rules of built-in chains for which
    ``builtin_rule(table, rule)`` holds. Tables with nothing to show are left out."""
    out: list[str] = []
    for name in sorted(tables):
        declared, rules = tables[name]
        ours = sorted(c for c in declared if c in chains.get(name, ()) and c not in BUILTIN_ORDER)
        by_chain: dict[str, list[str]] = {}
        for rule in rules:
            by_chain.setdefault(rule.split()[1], []).append(rule)
        builtin = [r for b in BUILTIN_ORDER for r in by_chain.get(b, ()) if builtin_rule(name, r)]
        if not ours and not builtin:
            continue
        out.append(f"*{name}")
        out.extend(f":{c}" for c in ours)
        out.extend(builtin)
        for chain in ours:
            out.extend(by_chain.get(chain, ()))
        out.append("COMMIT")
    return "".join(line + "\n" for line in out)


def _split_elements(text: str) -> list[str]:
    """The comma-separated elements of an ``elements = { ... }`` body (commas inside quotes or
    braces do not split)."""
    items: list[str] = []
    depth, quoted, start = 0, False, 0
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [" ".join(item.split()) for item in items if item.strip()]


def _block_lines(lines: list[str]) -> Iterator[str]:
    """One chain, set or map's lines (without its braces), canonical: elements one per line and
    sorted (none for a set that packets fill), counters' values dropped."""
    filled = any(ln.strip().startswith("flags ") and ("dynamic" in ln or "timeout" in ln) for ln in lines)
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if line.startswith("elements = {"):
            body = line[len("elements = {"):]
            while not body.rstrip().endswith("}") and i < len(lines):
                body += " " + lines[i].strip()
                i += 1
            if filled:
                continue
            yield "elements = {"
            yield from (f"  {e}" for e in sorted(_split_elements(body.rstrip()[:-1])))
            yield "}"
            continue
        if line:
            yield _NFT_COUNTER.sub("counter", line)


def canonical_nftables(listing: str) -> str:
    """The canonical text of one table as ``nft list table FAMILY NAME`` prints it ("" for "")."""
    lines = listing.splitlines()
    if not any(ln.strip() for ln in lines):
        return ""
    head: list[str] = []
    blocks: list[tuple[str, str, list[str]]] = []
    current: list[str] | None = None
    for line in lines:
        match = _BLOCK.match(line)
        if current is None and match:
            current = []
            blocks.append((match.group(1), match.group(2), current))
        elif current is not None and line == "\t}":
            current = None
        elif current is not None:
            current.append(line)
        elif line.strip() and line.strip() != "}":
            head.append(line.strip())
    out = head[:]
    for kind, name, body in sorted(blocks, key=lambda b: (b[0], b[1])):
        out.append(f"{kind} {name} {{")
        out.extend(f"  {ln}" for ln in _block_lines(body))
        out.append("}")
    out.append("}")
    return "".join(line + "\n" for line in out)
