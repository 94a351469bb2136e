"""How much a rules text writes: rules, chains, sets and elements, for the agent's metrics
(:meth:`dataplane.backends.base.Backend.count_rules`).

The counts are read from the text the backend rendered (a full file or a partial update),
so they cost one pass over it and need no kernel: a full text gives what the kernel holds
after loading it, a partial update what that sync wrote (deletions are not counted).
"""
from __future__ import annotations

import re

__all__ = ["iptables_counts", "nftables_counts"]

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def iptables_counts(text: str) -> dict[str, int]:
    """The chains declared (``:NAME`` lines, less those the text deletes with ``-X``) and the
    rules written (``-A`` / ``-I`` lines) of an ``iptables-restore`` input: ``"<table>_chains"``
    and ``"<table>_rules"`` for each table it names (kube-proxy's ``sync_proxy_rules_iptables_total``
    is per table), and the totals ``"chains"`` and ``"rules"``."""
    rules: dict[str, int] = {}
    chains: dict[str, set[str]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            rules.setdefault(table, 0)
            chains.setdefault(table, set())
        elif line.startswith(":"):
            chains.setdefault(table, set()).add(line[1:].split(None, 1)[0] if len(line) > 1 else "")
        elif line.startswith(("-A ", "-I ")):
            rules[table] = rules.get(table, 0) + 1
        elif line.startswith("-X "):
            chains.setdefault(table, set()).discard(line[3:].strip())
    counts = {"rules": sum(rules.values()), "chains": sum(len(c) for c in chains.values())}
    for name in sorted(set(rules) | set(chains)):
        counts[f"{name}_rules"] = rules.get(name, 0)
        counts[f"{name}_chains"] = len(chains.get(name, ()))
    return counts


def _count_elements(inner: str) -> int:
    """The elements of an ``elements = { ... }`` / ``add element ... { ... }`` body (strings removed)."""
    return sum(1 for item in inner.split(",") if item.strip())


_CHAIN_SETTINGS = ("type ", "policy ", "comment ")


def nftables_counts(text: str) -> dict[str, int]:
    """The ``rules``, ``chains``, ``sets``, ``maps`` and ``elements`` an ``nft -f`` script writes:
    the chains, sets and maps defined in its ``table ... { }`` blocks with the rules and
    elements in them, plus ``add element`` and ``add rule`` / ``insert rule`` commands (a
    partial update). Chain settings (``type ... hook``, ``policy``, ``comment``) are no rules."""
    counts = {"rules": 0, "chains": 0, "sets": 0, "maps": 0, "elements": 0}
    blocks: list[str] = []  # kinds of the open blocks: table, chain, set, map, other
    collecting: list[str] = []  # an elements = { ... } body spread over lines
    in_elements = False
    for raw in text.splitlines():
        line = (_QUOTED.sub('""', raw) if '"' in raw else raw).strip()
        if in_elements:
            body, closed, _ = line.partition("}")
            collecting.append(body)
            if closed:
                counts["elements"] += _count_elements(" ".join(collecting))
                in_elements = False
            continue
        if not line or line.startswith("#"):
            continue
        word = line.split(None, 1)[0]
        if word == "elements" and "{" in line:
            body, closed, _ = line.partition("{")[2].partition("}")
            if closed:
                counts["elements"] += _count_elements(body)
            else:
                collecting, in_elements = [body], True
        elif line.endswith("{"):
            kind = word if word in ("table", "chain", "set", "map") else "other"
            blocks.append(kind)
            if kind in ("chain", "set", "map"):
                counts[f"{kind}s"] += 1
        elif line == "}":
            if blocks:
                blocks.pop()
        elif blocks and blocks[-1] == "chain":
            if not line.startswith(_CHAIN_SETTINGS):
                counts["rules"] += 1
        elif not blocks:
            command = line.split(None, 2)[:2]
            if command == ["add", "element"] and "{" in line:
                counts["elements"] += _count_elements(line.partition("{")[2].rpartition("}")[0])
            elif command in (["add", "rule"], ["insert", "rule"]):
                counts["rules"] += 1
    return counts
