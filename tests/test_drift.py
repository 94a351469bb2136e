"""Drift detection (dataplane.runtime.drift) without a kernel: fingerprints of iptables-save text, the
objects an nftables update touches, the wording, and when the kernel is read at all.
(netns_tests/test_apply_safety.py flushes real rules and repairs them.)"""
from __future__ import annotations

import struct

import pytest

from dataplane.runtime import drift
from dataplane.model import (
    Cluster,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    Node,
    NodeAddress,
    ProxyConfig,
    Service,
    ServicePort,
)
from dataplane.runtime.proxier import Proxier

SAVE = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:OTHER - [0:0]
-A FORWARD -j OTHER
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A OTHER -s 198.51.100.7/32 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AAAA - [0:0]
:KUBE-SEP-BBBB - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-AAAA
-A KUBE-SVC-AAAA -j KUBE-SEP-BBBB
-A KUBE-SEP-BBBB -p tcp -m tcp -j DNAT --to-destination 10.244.1.10:8080
COMMIT
"""


def test_iptables_objects_are_our_chains_and_the_jumps_to_them():
    objects = drift.iptables_objects(SAVE)
    assert sorted(objects) == ["filter FORWARD jumps", "filter chain KUBE-FORWARD", "nat PREROUTING jumps",
                               "nat chain KUBE-SEP-BBBB", "nat chain KUBE-SERVICES", "nat chain KUBE-SVC-AAAA"]


def test_a_flushed_chain_changes_only_its_digest():
    before = drift.iptables_objects(SAVE)
    flushed = drift.iptables_objects(SAVE.replace(
        "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-AAAA\n", ""))
    assert {k for k in before if before[k] != flushed.get(k)} == {"nat chain KUBE-SERVICES"}
    assert drift.describe(before, flushed) == "nat chain KUBE-SERVICES changed"


def test_other_programs_rules_are_not_ours():
    before = drift.iptables_objects(SAVE)
    foreign = SAVE.replace("-A OTHER -s 198.51.100.7/32 -j DROP\n", "").replace(
        ":KUBE-KUBELET-CANARY - [0:0]\n", "").replace("-A FORWARD -j OTHER\n", "")
    assert drift.iptables_objects(foreign) == before


def test_a_deleted_jump_and_chain_are_named():
    before = drift.iptables_objects(SAVE)
    cut = SAVE.replace('-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n', "")
    cut = cut.replace(":KUBE-SEP-BBBB - [0:0]\n", "").replace(
        "-A KUBE-SEP-BBBB -p tcp -m tcp -j DNAT --to-destination 10.244.1.10:8080\n", "")
    assert drift.describe(before, drift.iptables_objects(cut)) == \
        "nat PREROUTING jumps, nat chain KUBE-SEP-BBBB gone"


def test_describe_shortens_long_lists():
    before = {f"chain c{i}": b"x" for i in range(6)}
    now = {**{f"chain c{i}": b"y" for i in range(5)}, "map extra": b"z"}
    assert drift.describe(before, now) == ("chain c0, chain c1, chain c2 and 2 more changed; chain c5 gone; "
                                           "map extra added by someone else")
    assert drift.describe(before, dict(before)) == ""


def _attr(kind: int, data: bytes) -> bytes:
    size = 4 + len(data)
    return struct.pack("=HH", size, kind) + data + b"\0" * (-size % 4)


def _expr(name: bytes, data: bytes) -> bytes:
    return _attr(1, _attr(1, name + b"\0") + _attr(2, data))  # NFTA_LIST_ELEM{NFTA_EXPR_NAME, NFTA_EXPR_DATA}


def _rule(handle: int, packets: int) -> bytes:
    exprs = _expr(b"payload", b"\x01\x02") + _expr(b"counter", struct.pack(">QQ", packets, packets * 60))
    return (_attr(1, b"kube-proxy\0") + _attr(2, b"services\0") + _attr(3, struct.pack(">Q", handle))
            + _attr(4 | 0x8000, exprs))


def test_rule_digests_ignore_handles_and_counters_but_not_expressions():
    assert drift._rule_bytes(_rule(5, 0)) == drift._rule_bytes(_rule(9, 1234))
    other = _rule(5, 0).replace(b"\x01\x02", b"\x01\x03")
    assert drift._rule_bytes(other) != drift._rule_bytes(_rule(5, 0))


def _nft_proxier() -> Proxier:
    node = Node("n1", (NodeAddress("InternalIP", "192.0.2.1"),))
    svc = Service("ns", "web", type="ClusterIP", cluster_ips=("10.96.0.10",), ports=(ServicePort(80, "TCP", "p"),))
    eps = EndpointSlice("ns", "web-1", "web", "IPv4",
                        (Endpoint(("10.244.1.10",), EndpointConditions(True, True, False), node_name="n1"),),
                        (EndpointPort(8080, "TCP", "p"),))
    return Proxier("n1", mode="nftables", cluster=Cluster(services=(svc,), endpoint_slices=(eps,), nodes=(node,),
                                                         proxy_config=ProxyConfig(cluster_cidrs=("10.244.0.0/16",))))


def test_touched_objects_of_an_nftables_update():
    p = _nft_proxier()
    p.sync()
    p.set_service(Service("ns", "db", type="ClusterIP", cluster_ips=("10.96.0.20",),
                          ports=(ServicePort(5432, "TCP", "p"),)))
    added = p.sync()
    assert added.kind == "partial"
    chains, sets = drift.touched_objects(added.text)
    assert {"cluster-ips", "no-endpoint-services"} <= sets  # its ClusterIP, its reject element
    assert not any("web" in c for c in chains)
    p.delete_service("ns", "web")
    removed = p.sync()
    chains, sets = drift.touched_objects(removed.text)
    assert any("ns/web/" in c for c in chains) and {"service-ips", "cluster-ips"} <= sets


class FakeKernel:
    """Stands in for the reads drift.check and drift.after_sync make."""

    def __init__(self, generations: list[int], objects: dict[str, bytes]) -> None:
        self.generations = list(generations)
        self.objects = objects
        self.reads: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(drift, "_generation_covers", lambda ns, mode, family: True)
        monkeypatch.setattr(drift, "generation", lambda ns: self.generations.pop(0))
        monkeypatch.setattr(drift, "fingerprint", self.fingerprint)
        monkeypatch.setattr(drift, "refresh", self.refresh)

    def fingerprint(self, ns, mode, family):
        self.reads.append("all")
        return dict(self.objects)

    def refresh(self, ns, family, objects, update):
        self.reads.append("touched")
        return {**objects, "chain new": b"n"}


def test_an_unchanged_generation_skips_reading_the_rules(monkeypatch):
    k = FakeKernel([7], {"map service-ips": b"a"})
    k.install(monkeypatch)
    assert drift.check("ns", "nftables", "ipv4", drift.Fingerprint({"map service-ips": b"OLD"}, 7)) == ("", 7)
    assert k.reads == []  # nothing was read: nothing can have changed


def test_a_changed_generation_compares_contents(monkeypatch):
    k = FakeKernel([8, 8], {"map service-ips": b"a"})
    k.install(monkeypatch)
    assert drift.check("ns", "nftables", "ipv4", drift.Fingerprint({"map service-ips": b"a"}, 7)) == ("", 8)
    k = FakeKernel([8, 8], {"map service-ips": b"flushed"})
    k.install(monkeypatch)
    assert drift.check("ns", "nftables", "ipv4", drift.Fingerprint({"map service-ips": b"a"}, 7)) == \
        ("map service-ips changed", 8)
    k = FakeKernel([8, 9], {"map service-ips": b"a"})  # changed while being read: not trusted
    k.install(monkeypatch)
    assert drift.check("ns", "nftables", "ipv4", drift.Fingerprint({"map service-ips": b"a"}, 7))[0]


def test_after_an_incremental_nft_sync_only_touched_objects_are_read(monkeypatch):
    base = drift.Fingerprint({"map service-ips": b"a"}, 7)
    k = FakeKernel([8, 8], {})
    k.install(monkeypatch)
    after = drift.after_sync("ns", "nftables", "ipv4", base=base, checked=7, update="add chain ...", full=False)
    assert k.reads == ["touched"] and after == drift.Fingerprint({"map service-ips": b"a", "chain new": b"n"}, 8)


@pytest.mark.parametrize("generations, full, mode", [
    ([9, 9], False, "nftables"),  # someone else committed too: read everything
    ([8, 8], True, "nftables"),  # a full sync
    ([8, 8], False, "iptables"),  # iptables-save is read whole anyway
])
def test_otherwise_everything_is_read_again(monkeypatch, generations, full, mode):
    k = FakeKernel(generations, {"x": b"1"})
    k.install(monkeypatch)
    after = drift.after_sync("ns", mode, "ipv4", base=drift.Fingerprint({}, 7), checked=7, update="u", full=full)
    assert k.reads == ["all"] and after.objects == {"x": b"1"} and after.generation == generations[-1]


def test_a_generation_that_moves_while_reading_is_not_stored(monkeypatch):
    k = FakeKernel([8, 10], {"x": b"1"})
    k.install(monkeypatch)
    after = drift.after_sync("ns", "nftables", "ipv4", base=None, checked=None, update="u", full=True)
    assert after.generation is None  # the next apply compares contents
