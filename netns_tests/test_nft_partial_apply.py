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
import subprocess
import sys
from pathlib import Path

import pytest

from dataplane.errors import ApplyError
from dataplane.runtime import nftnl
from dataplane.runtime.netns import apply_nftables, apply_nftables_partial
from nft_netns import THROUGH_NFT, canonical, listing, namespace_pair
from nft_partial_cases import updates

pytestmark = pytest.mark.netns


@pytest.fixture
def namespaces():
    """Two bare namespaces, removed after the test."""
    with namespace_pair(("nft", "nl")) as names:
        yield names


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
    assert canonical(listing(ns, "IPv4")) == canonical(listing(namespaces[0], "IPv4"))


def test_bench_script_measures_both_loaders(tmp_path):
    """scripts/bench-nft-update at a small size: both loaders and both probes report times."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench-nft-update"
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(script), "--services", "200", "--updates", "2", "--repeats", "2",
                           "--changed", "1,20", "--workdir", str(tmp_path), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["services"] == 200 and r["chains"] > 200 * 4
    assert len(r["nft_update_runs"]) == len(r["netlink_update_runs"]) == 2
    assert r["netlink_messages"] > 10 and r["netlink_compile_ms"] >= 0
    assert set(r["probes_ms"]) == {"nft plain", "netlink plain", "nft goto", "netlink goto"}
    assert r["layout_chains"] == {"per-endpoint chains": 200 * 11 + 2, "per-endpoint chains, 2 base chains": 200 * 11 + 3,
                                  "inline dnat": 202, "inline dnat, 2 base chains": 203}
    assert set(r["layout_goto_probe_ms"]) == set(r["layout_chains"])
    # --changed: the update of 1 and of 20 Services, as rendered now and before chain-granular diffs
    assert set(r["changed"]) == {"1", "20"}
    for n, c in r["changed"].items():
        assert len(c["send_runs_now"]) == len(c["send_runs_before"]) == 2
        # one endpoint of ten changed: the service chain and one endpoint chain, not all eleven
        assert c["messages_now"] * 2 < c["messages_before"] and c["bytes_now"] * 2 < c["bytes_before"], n
    assert r["changed"]["20"]["messages_now"] > 10 * r["changed"]["1"]["messages_now"]
