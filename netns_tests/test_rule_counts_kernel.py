"""Backend.count_rules agrees with the kernel: every golden file is loaded into a bare namespace
and its rules, chains, sets and elements are counted from what the kernel lists
(``nft -j list table``, ``iptables-save``), not from the text."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataplane.backends import get_backend
from dataplane.runtime import netns

pytestmark = pytest.mark.netns

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"
GOLDENS = sorted(GOLDEN.glob("*/*.txt"))


def _kernel_nftables(ns: str, family: str) -> dict[str, int]:
    listing = json.loads(netns.run_in(ns, ["nft", "-j", "list", "table", "ip6" if family == "ipv6" else "ip",
                                            "kube-proxy"]).stdout)
    counts = {"rules": 0, "chains": 0, "sets": 0, "maps": 0, "elements": 0}
    for obj in listing["nftables"]:
        for kind, plural in (("rule", "rules"), ("chain", "chains"), ("set", "sets"), ("map", "maps")):
            if kind in obj:
                counts[plural] += 1
                counts["elements"] += len(obj[kind].get("elem", ())) if kind in ("set", "map") else 0
    return counts


def _kernel_iptables(ns: str, family: str) -> dict[str, int]:
    saved = netns.run_in(ns, ["ip6tables-save" if family == "ipv6" else "iptables-save"]).stdout
    counts = {"rules": 0, "chains": 0}
    table = ""
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":") and " - [" in line:  # built-in chains have a policy, ours "-"
            counts["chains"] += 1
            counts[f"{table}_chains"] = counts.get(f"{table}_chains", 0) + 1
        elif line.startswith("-A "):
            counts["rules"] += 1
            counts[f"{table}_rules"] = counts.get(f"{table}_rules", 0) + 1
    return counts


@pytest.mark.parametrize("golden", GOLDENS, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_counts_of_a_golden_file_equal_the_kernels(golden: Path, bare_ns: str) -> None:
    mode, family = golden.stem.split("-")
    backend = get_backend(mode)
    text = golden.read_text()
    backend.load(bare_ns, text, family=family, full=True)  # type: ignore[arg-type]
    kernel = (_kernel_nftables if mode == "nftables" else _kernel_iptables)(bare_ns, family)
    assert backend.count_rules(text) == kernel
