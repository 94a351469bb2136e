"""Namespace helpers shared by the nft partial-update tests (netns_tests/test_nft_partial_apply.py,
netns_tests/test_nft_chain_granular.py): a pair of bare namespaces and a table listing."""
from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from typing import Iterator

from pyroute2 import netns as pr_netns

from dataplane.runtime.netns import NETNS_DIR, run_in

#: The steps of nft_partial_cases whose update holds a statement the netlink batch does not
#: translate (an anonymous set), so it goes through ``nft -f``.
THROUGH_NFT = {"local-policy-lb-firewall", "many-endpoints"}


@contextmanager
def namespace_pair(sides: tuple[str, str]) -> Iterator[list[str]]:
    """Two bare namespaces named after ``sides``, removed afterwards even on failure."""
    names = [f"t{uuid.uuid4().hex[:7]}-{side}" for side in sides]
    created = []
    try:
        for name in names:
            pr_netns.create(name)
            created.append(name)
        yield names
    finally:
        for name in created:
            if os.path.exists(os.path.join(NETNS_DIR, name)):
                pr_netns.remove(name)


def listing(ns: str, family: str = "IPv4") -> list:
    """The table as ``nft -j list table`` gives it, without the metainfo header."""
    out = run_in(ns, ["nft", "-j", "list", "table", "ip" if family == "IPv4" else "ip6", "kube-proxy"]).stdout
    return [item for item in json.loads(out)["nftables"] if "metainfo" not in item]


def canonical(items: list) -> list[str]:
    """A :func:`listing`'s objects, sorted, without handles (numbered in creation order, which
    differs between a table built by updates and one loaded at once); set elements sorted; each
    rule with its position in its chain."""
    out, position = [], {}
    for item in items:
        ((kind, body),) = item.items()
        body = {k: v for k, v in body.items() if k != "handle"}
        if "elem" in body:
            body["elem"] = sorted(body["elem"], key=lambda e: json.dumps(e, sort_keys=True))
        if kind == "rule":
            body["position"] = position[body["chain"]] = position.get(body["chain"], -1) + 1
        out.append(json.dumps({kind: body}, sort_keys=True))
    return sorted(out)
