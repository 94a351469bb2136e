"""Issue 17: chain-granular partial nftables updates (no kernel needed; netns_tests/
test_nft_chain_granular.py proves them in a kernel).

A changed service port's update rewrites only the chains that are new or whose rules changed,
declares only new affinity sets, and sends only the map elements that changed. A small model of
an nft table (what ``add``/``flush``/``delete`` and a table block do to chains, sets and
elements, refusing what the kernel refuses: flushing or deleting a missing chain, deleting a
chain that still has rules, adding an element that exists) replays every update, and the table
it ends with must equal the model of a fresh full script of the same cluster.
"""
from __future__ import annotations

import dataclasses
import pickle
import random
import re
from typing import Iterator

import pytest

from dataplane.backends import nftables as nft
from dataplane.runtime import nftnl
from dataplane.runtime.proxier import Proxier, RecordingRunner
from nft_partial_cases import _slice, _svc, base_cluster, steps


class Table:
    """Chains (name -> rules), sets (name -> declaration) and elements ((set, key) -> text)."""

    def __init__(self) -> None:
        self.chains: dict[str, list[str]] = {}
        self.sets: dict[str, tuple[str, ...]] = {}
        self.elements: dict[tuple[str, str], str] = {}

    def state(self) -> tuple:
        return self.chains, self.sets, self.elements

    def apply(self, text: str) -> None:
        lines = iter(text.splitlines())
        for raw in lines:
            line = raw.strip()
            if not line or re.fullmatch(r"table ip6? kube-proxy", line):
                continue
            if line.startswith("delete table"):
                self.__init__()
                continue
            if re.fullmatch(r"table ip6? kube-proxy \{", line):
                self._block(lines)
                continue
            m = re.fullmatch(r"(add|flush|delete) (chain|set|element) ip6? kube-proxy (\S+)(?: (.*))?", line)
            assert m, line
            op, kind, name, rest = m.groups()
            if kind == "chain":
                if op == "add":
                    self.chains.setdefault(name, [])
                elif op == "flush":
                    assert name in self.chains, f"flush of a missing chain: {line}"
                    self.chains[name] = []
                else:
                    assert self.chains.get(name) == [], f"delete of a missing or non-empty chain: {line}"
                    del self.chains[name]
            elif kind == "set":
                assert op == "delete" and name in self.sets, line
                assert not any("@" + name in r for rules in self.chains.values() for r in rules), \
                    f"delete of a set a rule still names: {line}"
                del self.sets[name]
            else:
                element = rest[2:-2]
                key = _key(element)
                if op == "add":
                    assert (name, key) not in self.elements, f"element exists: {line}"
                    self.elements[(name, key)] = element
                else:
                    assert (name, key) in self.elements, f"delete of a missing element: {line}"
                    del self.elements[(name, key)]

    def _block(self, lines: Iterator[str]) -> None:
        for raw in lines:
            line = raw.strip()
            if line == "}":
                return
            m = re.fullmatch(r"(chain|set|map) (\S+) \{", line)
            if not m:
                assert not line or line.startswith("comment "), line
                continue
            kind, name = m.groups()
            body, elements = [], []
            for inner in lines:
                inner = inner.strip()
                if inner == "}":
                    break
                if inner.startswith("elements = {"):
                    text = inner[len("elements = {"):]
                    while not text.endswith("}"):
                        text += " " + next(lines).strip()
                    elements += [e.strip() for e in text[:-1].split(",")]
                elif inner:
                    body.append(inner)
            if kind == "chain":
                self.chains.setdefault(name, []).extend(body)
            else:
                if name in self.sets:  # the kernel keeps an existing set if it is declared the same
                    assert self.sets[name] == tuple(body), f"set {name} declared differently"
                self.sets[name] = tuple(body)
                for e in elements:
                    self.elements[(name, _key(e))] = e


def _key(element: str) -> str:
    return element.split(" comment ")[0].split(" : ")[0].strip()


def loaded(text: str) -> Table:
    t = Table()
    t.apply(text)
    return t


def named_chains(update: str) -> set[str]:
    return set(re.findall(r"^(?:add|flush|delete) chain \S+ \S+ (\S+)$", update, re.M))


@pytest.mark.parametrize("family", ["IPv4", "IPv6"])
def test_every_step_leaves_the_table_a_full_load_gives(family):
    runner = RecordingRunner()
    proxier = Proxier("n1", mode="nftables", family="ipv4" if family == "IPv4" else "ipv6",
                      cluster=base_cluster(family), runner=runner)
    table = loaded(proxier.sync().text)
    for name, change in steps(family):
        change(proxier)
        r = proxier.sync()
        assert r.kind == "partial", name
        table.apply(r.text)
        fresh = Proxier("n1", mode="nftables", family=proxier.family, cluster=proxier.cluster()).sync().text
        assert table.state() == loaded(fresh).state(), f"after {name}"


def test_random_churn_keeps_the_table_equal_to_a_full_load():
    """Endpoints moved, added, removed, made not ready; Services with ClientIP affinity whose
    timeout changes; Services deleted and added back; several at once per sync."""
    rng = random.Random(17)
    family = "IPv4"
    proxier = Proxier("n1", mode="nftables", cluster=base_cluster(family), runner=RecordingRunner())
    table = loaded(proxier.sync().text)
    pool = [f"10.244.{b}.{c}" for b in (3, 4) for c in range(1, 40)]
    for sync in range(40):
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(10)
            kind = rng.random()
            if kind < 0.6:
                ips = tuple(sorted(rng.sample(pool, rng.randint(0, 5))))
                not_ready = tuple(ip for ip in ips if rng.random() < 0.3)
                proxier.set_endpoint_slice(_slice(f"s{i}", family, ips, not_ready=not_ready))
            elif kind < 0.85:
                timeout = rng.choice((None, 300, 600))
                extra = {"session_affinity": "ClientIP", "affinity_timeout_seconds": timeout} if timeout else {}
                proxier.set_service(_svc(f"s{i}", family, i + 1, **extra))
            elif kind < 0.95:
                proxier.delete_service("ns", f"s{i}")
            else:
                proxier.set_service(_svc(f"s{i}", family, i + 1))
        r = proxier.sync()
        if r.kind == "none":
            continue
        assert r.kind == "partial"
        table.apply(r.text)
        fresh = Proxier("n1", mode="nftables", cluster=proxier.cluster()).sync().text
        assert table.state() == loaded(fresh).state(), f"sync {sync}"


def _ten_endpoints() -> tuple[Proxier, list[str]]:
    ips = [f"10.244.1.{k}" for k in range(1, 11)]
    cluster = dataclasses.replace(base_cluster("IPv4"), endpoint_slices=(_slice("s0", "IPv4", tuple(ips)),))
    proxier = Proxier("n1", mode="nftables", cluster=cluster, runner=RecordingRunner())
    assert proxier.sync().kind == "full"
    return proxier, ips


def test_one_endpoint_moved_rewrites_the_service_chain_and_the_new_endpoint_chain_only():
    proxier, ips = _ten_endpoints()
    moved = (*ips[:9], "10.244.2.99")
    proxier.set_endpoint_slice(_slice("s0", "IPv4", moved))
    r = proxier.sync()
    named = named_chains(r.text)
    assert len(named) == 3 and sum(c.startswith("service-") for c in named) == 1
    assert {c.split("__")[1] for c in named if c.startswith("endpoint-")} == {"10.244.2.99/8080", "10.244.1.10/8080"}
    flushed = re.findall(r"^flush chain \S+ \S+ (\S+)$", r.text, re.M)
    deleted = re.findall(r"^delete chain \S+ \S+ (\S+)$", r.text, re.M)
    assert len(flushed) == 3 and deleted == [c for c in flushed if c.endswith("__10.244.1.10/8080")]
    assert "element" not in r.text  # the map still sends the ClusterIP to the same chain
    batch = nftnl.compile_update(r.text)
    # service chain (add, flush, 11 rules), new endpoint chain (add, flush, 2 rules), the old
    # one (flush, delete); before issue 17's chain-granular updates, 66
    assert len(batch.messages) == 19


def test_an_endpoint_that_is_no_longer_ready_only_rewrites_the_service_chain():
    proxier, ips = _ten_endpoints()
    proxier.set_endpoint_slice(_slice("s0", "IPv4", tuple(ips), not_ready=(ips[3],)))
    r = proxier.sync()
    written = re.findall(r"^\tchain (\S+) \{$", r.text, re.M)
    assert len(written) == 1 and written[0].startswith("service-")
    (stale,) = re.findall(r"^delete chain \S+ \S+ (\S+)$", r.text, re.M)
    assert stale.endswith(f"__{ips[3]}/8080")
    assert named_chains(r.text) == {written[0], stale}


def test_affinity_sets_that_stay_are_not_declared_again():
    p = Proxier("n1", mode="nftables", cluster=base_cluster("IPv4"), runner=RecordingRunner())
    p.sync()
    p.set_service(_svc("aff", "IPv4", 60, session_affinity="ClientIP", affinity_timeout_seconds=600))
    p.set_endpoint_slice(_slice("aff", "IPv4", ("10.244.6.1", "10.244.6.2")))
    first = p.sync().text
    assert len(re.findall(r"^\tset affinity-", first, re.M)) == 2
    p.set_endpoint_slice(_slice("aff", "IPv4", ("10.244.6.1", "10.244.6.2", "10.244.6.3")))
    added = p.sync().text
    declared = re.findall(r"^\tset (affinity-\S+) \{", added, re.M)
    assert len(declared) == 1 and declared[0].endswith("__10.244.6.3/8080")
    assert "delete set" not in added
    # a new timeout: each set is deleted and declared again, and every chain naming one is
    # rewritten first (the kernel refuses to delete a set a rule still names)
    p.set_service(_svc("aff", "IPv4", 60, session_affinity="ClientIP", affinity_timeout_seconds=900))
    timeout = p.sync().text
    assert len(re.findall(r"^delete set ", timeout, re.M)) == 3
    assert len(re.findall(r"^\tset affinity-\S+ \{", timeout, re.M)) == 3
    assert "timeout 900s" in timeout
    rewritten = set(re.findall(r"^flush chain \S+ \S+ (\S+)$", timeout, re.M))
    assert len(rewritten) == 4 and sum(c.startswith("endpoint-") for c in rewritten) == 3


def test_an_unchanged_service_writes_nothing_and_a_changed_one_only_its_changed_elements():
    p = Proxier("n1", mode="nftables", cluster=base_cluster("IPv4"), runner=RecordingRunner())
    p.sync()
    p.set_service(_svc("s1", "IPv4", 2))  # the same Service again
    assert p.sync().kind == "none"
    p.set_endpoint_slice(_slice("s1", "IPv4", ()))  # no endpoints: service-ips out, reject in
    gone = p.sync().text
    assert re.findall(r"^(add|delete) element \S+ \S+ (\S+)", gone, re.M) == [
        ("delete", "service-ips"), ("add", "no-endpoint-services")]


def test_fragments_keep_each_chain_and_set_text_and_render_the_full_text():
    plan = Proxier("n1", mode="nftables", cluster=base_cluster("IPv4")).plan()
    renderer = nft.Renderer()
    frag = renderer.render_fragment(plan.services[0], plan)
    assert len(frag.chains) == len(frag.bodies) == 4  # service chain and three endpoint chains
    for name, body in zip(frag.chains, frag.bodies):
        assert body.startswith(f"\n\tchain {name} {{\n") and body.endswith("\t}\n")
        assert body.count("\tchain ") == 1
    assert frag.text == "".join(frag.bodies)
    assert nft.render_full(plan, renderer.fragments(plan)) == nft.render(plan)


def test_a_saved_fragment_round_trips_and_one_of_another_layout_is_refused():
    plan = Proxier("n1", mode="nftables", cluster=base_cluster("IPv4")).plan()
    frag = nft.Renderer().render_fragment(plan.services[0], plan)
    assert pickle.loads(pickle.dumps(frag)) == frag
    # the layout before chain-granular updates: (text, chains, sets, elements)
    blank = object.__new__(nft.ServiceFragment)
    with pytest.raises(TypeError):
        blank.__setstate__(["".join(frag.bodies), frag.chains, frag.sets, frag.elements])
