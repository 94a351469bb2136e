"""Issue 17: chain-granular partial nftables updates in a kernel.

* after every partial sync of the Proxier (every shape of netns_tests/nft_partial_cases.py, both
  families, through the netlink batch or ``nft -f``), the kernel holds what a fresh full load of
  the same cluster gives (handles aside);
* a one-endpoint change leaves every other chain alone: the rules of the Service's unchanged
  endpoint chains, and of every other Service, keep their handles; only the service chain and
  the new endpoint chain are written;
* ClientIP affinity entries of the sets that stay survive a partial update (the sets are not
  made again); a new timeout makes the sets again, and the update goes in.
"""
from __future__ import annotations


import pytest

from dataplane.runtime import netns as netns_module
from dataplane.runtime.netns import run_in
from dataplane.runtime.proxier import NetnsRunner, Proxier
from nft_netns import THROUGH_NFT, canonical, listing, namespace_pair
from nft_partial_cases import _slice, _svc, base_cluster, steps

pytestmark = pytest.mark.netns


@pytest.fixture
def namespaces():
    """Two bare namespaces, removed after the test."""
    with namespace_pair(("inc", "full")) as names:
        yield names


def rule_handles(ns: str) -> dict[str, list[int]]:
    """Per chain, the handles of its rules in order."""
    out: dict[str, list[int]] = {}
    for item in listing(ns):
        if "chain" in item:
            out.setdefault(item["chain"]["name"], [])
        elif "rule" in item:
            out[item["rule"]["chain"]].append(item["rule"]["handle"])
    return out


@pytest.mark.parametrize("family", ["IPv4", "IPv6"])
def test_every_partial_sync_leaves_what_a_full_load_gives(namespaces, family, monkeypatch):
    inc, full = namespaces
    taken: dict[str, str] = {}
    original = netns_module.apply_nftables_partial
    current = [""]

    def spy(name, text, **kw):
        taken[current[0]] = original(name, text, **kw)
        return taken[current[0]]

    monkeypatch.setattr(netns_module, "apply_nftables_partial", spy)
    ipf = "ipv4" if family == "IPv4" else "ipv6"
    proxier = Proxier("n1", mode="nftables", family=ipf, cluster=base_cluster(family), runner=NetnsRunner(inc))
    assert proxier.sync().kind == "full"
    for name, change in steps(family):
        current[0] = name
        change(proxier)
        assert proxier.sync().kind == "partial", name
        fresh = Proxier("n1", mode="nftables", family=ipf, cluster=proxier.cluster(), runner=NetnsRunner(full))
        assert fresh.sync().kind == "full"
        assert canonical(listing(inc, family)) == canonical(listing(full, family)), f"after {name}"
    assert {n for n, path in taken.items() if path == "nft"} == THROUGH_NFT
    assert len(taken) == len(steps(family))


def test_a_one_endpoint_change_leaves_every_other_chain_alone(namespaces):
    ns = namespaces[0]
    proxier = Proxier("n1", mode="nftables", cluster=base_cluster("IPv4"), runner=NetnsRunner(ns))
    proxier.sync()
    before = rule_handles(ns)
    # s1 had 10.244.1.11-13: .13 moves to .99
    proxier.set_endpoint_slice(_slice("s1", "IPv4", ("10.244.1.11", "10.244.1.12", "10.244.1.99")))
    r = proxier.sync()
    assert r.kind == "partial"
    after = rule_handles(ns)
    gone = {c for c in before if c not in after}
    new = {c for c in after if c not in before}
    assert [c.split("__")[1] for c in gone] == ["10.244.1.13/8080"]
    assert [c.split("__")[1] for c in new] == ["10.244.1.99/8080"]
    rewritten = {c for c in before if c in after and before[c] != after[c]}
    assert len(rewritten) == 1 and next(iter(rewritten)).startswith("service-") and "/s1/" in next(iter(rewritten))
    (service,) = rewritten
    assert min(after[service]) > max(h for hs in before.values() for h in hs)  # its rules are new
    # the two unchanged endpoint chains of s1 and every chain of the other Services kept their rules
    kept = [c for c in after if c not in new and c not in rewritten]
    assert sum("/s1/" in c for c in kept) == 2
    assert all(after[c] == before[c] for c in kept)


def _affinity_sets(ns: str) -> dict[str, dict]:
    return {item["set"]["name"]: item["set"] for item in listing(ns)
            if "set" in item and item["set"]["name"].startswith("affinity-")}


def test_affinity_entries_survive_a_partial_update(namespaces):
    ns = namespaces[0]
    proxier = Proxier("n1", mode="nftables", cluster=base_cluster("IPv4"), runner=NetnsRunner(ns))
    proxier.sync()
    proxier.set_service(_svc("aff", "IPv4", 60, session_affinity="ClientIP", affinity_timeout_seconds=600))
    proxier.set_endpoint_slice(_slice("aff", "IPv4", ("10.244.6.1", "10.244.6.2")))
    assert proxier.sync().kind == "partial"
    sets = _affinity_sets(ns)
    assert len(sets) == 2
    remembered = next(name for name in sets if name.endswith("__10.244.6.1/8080"))
    # a client the kernel remembers for that endpoint (as `update @set` would add it)
    run_in(ns, ["nft", "add", "element", "ip", "kube-proxy", remembered, "{ 192.0.2.77 }"])

    def entries(name: str) -> list:
        found = _affinity_sets(ns).get(name)
        return [] if found is None else [e["elem"]["val"] if isinstance(e, dict) else e
                                         for e in found.get("elem", [])]

    assert entries(remembered) == ["192.0.2.77"]
    proxier.set_endpoint_slice(_slice("aff", "IPv4", ("10.244.6.1", "10.244.6.2", "10.244.6.3")))
    r = proxier.sync()
    assert r.kind == "partial" and f"set {remembered} {{" not in r.text
    assert len(_affinity_sets(ns)) == 3
    assert entries(remembered) == ["192.0.2.77"]  # the set stayed, and what it remembered
    # a new timeout: the sets are made again (so the entry goes), and the kernel takes the update
    # (the chains naming the sets are rewritten before the sets are deleted)
    proxier.set_service(_svc("aff", "IPv4", 60, session_affinity="ClientIP", affinity_timeout_seconds=900))
    assert proxier.sync().kind == "partial"
    assert {s["timeout"] for s in _affinity_sets(ns).values()} == {900}
    assert entries(remembered) == []
