"""Issue 16.3: partial nftables updates as one netlink batch, without nft's cache.

* the batch gives the kernel exactly what ``nft -f`` of the same update gives (the
  ``nft -j list table`` of two namespaces, handles included), for updates of every shape
  the Proxier writes, in both families; the ones holding a statement the translation does
  not cover go through ``nft -f`` (and still match);
* a batch the kernel refuses, early or at its last message, leaves the table as it was,
  and the error names the refused line;
* the Proxier's partial syncs in a namespace take the netlink path.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pyroute2 import netns as pr_netns

from dataplane.errors import ApplyError
from dataplane.runtime import nftnl
from dataplane.runtime.netns import NETNS_DIR, apply_nftables, apply_nftables_partial, run_in
from nft_partial_cases import updates

pytestmark = pytest.mark.netns

#: The steps whose update holds a statement the batch does not translate (an anonymous set).
THROUGH_NFT = {"local-policy-lb-firewall", "many-endpoints"}


@pytest.fixture
def namespaces():
    """Two bare namespaces, removed after the test."""
    names = [f"t{uuid.uuid4().hex[:7]}-{side}" for side in ("nft", "nl")]
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


def listing(ns: str, family: str) -> list:
    """The table as ``nft -j list table`` gives it, without the metainfo header."""
    out = run_in(ns, ["nft", "-j", "list", "table", "ip" if family == "IPv4" else "ip6", "kube-proxy"]).stdout
    return [item for item in json.loads(out)["nftables"] if "metainfo" not in item]


@pytest.mark.parametrize("family", ["IPv4", "IPv6"])
def test_batch_gives_the_kernel_what_nft_gives(namespaces, family):
    by_nft, by_netlink = namespaces
    paths = {}
    for name, text in updates(family):
        apply_nftables(by_nft, text)
        if name == "full":
            apply_nftables(by_netlink, text)
        else:
            paths[name] = apply_nftables_partial(by_netlink, text)
        assert listing(by_netlink, family) == listing(by_nft, family), f"after {name}"
    assert {n for n, path in paths.items() if path == "nft"} == THROUGH_NFT
    assert len(paths) > len(THROUGH_NFT) + 5


def _loaded(ns: str) -> str:
    """Load the full table of the IPv4 cases into ``ns``; returns the first partial update."""
    steps = updates("IPv4")
    apply_nftables(ns, next(steps)[1])
    name, update = next(steps)
    assert name == "endpoint-moved"
    return update


@pytest.mark.parametrize("bad, refused", [
    # refused at its own message, after the update's flushes and rules
    ("add element ip kube-proxy service-ips { 10.96.0.200 . tcp . 80 : goto no-such-chain }", "no-such-chain"),
    # refused at the last message: a chain still referenced
    ("delete chain ip kube-proxy mark-for-masquerade", "delete chain ip kube-proxy mark-for-masquerade"),
])
def test_refused_batch_changes_nothing(namespaces, bad, refused):
    ns = namespaces[1]
    update = _loaded(ns) + bad + "\n"
    nftnl.compile_update(update)  # translated: the netlink path is the one refused
    before = listing(ns, "IPv4")
    with pytest.raises(ApplyError) as e:
        apply_nftables_partial(ns, update)
    assert "nf_tables batch refused" in str(e.value) and refused in str(e.value)
    assert "nothing was changed" in str(e.value)
    assert listing(ns, "IPv4") == before
    # and the update without the bad line still applies on top
    assert apply_nftables_partial(ns, update.replace(bad + "\n", "")) == "netlink"
    assert listing(ns, "IPv4") != before


def test_update_for_a_missing_set_falls_back_to_nft_and_fails_there(namespaces):
    """A set the batch would write into but the kernel does not hold: nothing is sent, and
    ``nft -f`` reports the error (nothing is changed either way)."""
    ns = namespaces[1]
    _loaded(ns)
    before = listing(ns, "IPv4")
    with pytest.raises(ApplyError) as e:
        apply_nftables_partial(ns, "add element ip kube-proxy no-such-map { 10.96.0.1 . tcp . 80 : drop }\n")
    assert "nft -f failed" in str(e.value)
    assert listing(ns, "IPv4") == before


def test_proxier_partial_syncs_take_the_netlink_path(namespaces, monkeypatch):
    from dataplane.runtime import netns as netns_module
    from dataplane.runtime.proxier import NetnsRunner, Proxier
    from nft_partial_cases import base_cluster, steps

    ns = namespaces[1]
    taken = []
    original = netns_module.apply_nftables_partial

    def spy(name, text, **kw):
        taken.append(original(name, text, **kw))
        return taken[-1]

    monkeypatch.setattr(netns_module, "apply_nftables_partial", spy)
    proxier = Proxier("n1", mode="nftables", cluster=base_cluster("IPv4"), runner=NetnsRunner(ns))
    assert proxier.sync().kind == "full"
    for name, change in steps("IPv4")[:4]:
        change(proxier)
        assert proxier.sync().kind == "partial", name
    assert taken == ["netlink"] * 4
    # the table the updates built holds what a fresh full sync of the same cluster loads
    fresh = Proxier("n1", mode="nftables", cluster=proxier.cluster(), runner=NetnsRunner(namespaces[0]))
    assert fresh.sync().kind == "full"
    assert _canonical(listing(ns, "IPv4")) == _canonical(listing(namespaces[0], "IPv4"))


def _canonical(items: list) -> list[str]:
    """The objects, sorted, without handles (numbered in creation order, which differs between
    a table built by updates and one loaded at once); set elements sorted; each rule with its
    position in its chain."""
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


def test_bench_script_measures_both_loaders(tmp_path):
    """scripts/bench-nft-update at a small size: both loaders and both probes report times."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench-nft-update"
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(script), "--services", "200", "--updates", "2", "--repeats", "1",
                           "--workdir", str(tmp_path), "--json", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["services"] == 200 and r["chains"] > 200 * 4
    assert len(r["nft_update_runs"]) == len(r["netlink_update_runs"]) == 2
    assert r["netlink_messages"] > 10 and r["netlink_compile_ms"] >= 0
    assert set(r["probes_ms"]) == {"nft plain", "netlink plain", "nft goto", "netlink goto"}
    assert r["layout_chains"] == {"per-endpoint chains": 200 * 11 + 2, "per-endpoint chains, 2 base chains": 200 * 11 + 3,
                                  "inline dnat": 202, "inline dnat, 2 base chains": 203}
    assert set(r["layout_goto_probe_ms"]) == set(r["layout_chains"])
