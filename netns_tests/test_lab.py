"""dataplane.lab: topology, lifecycle, servers and probes (no NAT rules involved)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from pyroute2 import netns as pr_netns

from dataplane.runtime.conntrack import FlowTuple
from dataplane.errors import UsageError
from dataplane.lab import (
    ClientSpec,
    Lab,
    NodeSpec,
    PodSpec,
    Topology,
)
from dataplane.runtime.netns import NETNS_DIR, in_netns, run_in


def _exists(ns: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, ns))


def _sysctl(ns: str, key: str) -> str:
    with in_netns(ns), open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


# --------------------------------------------------------------------------- no privileges needed


def test_simple_topology_conventions():
    t = Topology.simple(nodes=2, pods_per_node=2, clients=1, ipv6=True)
    assert [(n.name, n.ip, n.ip6, n.pod_cidr, n.pod_cidr6, n.pod_gateway) for n in t.nodes] == [
        ("node1", "192.0.2.1", "2001:db8::1", "10.244.1.0/24", "fd00:10:244:1::/64", "10.244.1.1"),
        ("node2", "192.0.2.2", "2001:db8::2", "10.244.2.0/24", "fd00:10:244:2::/64", "10.244.2.1"),
    ]
    assert [(p.name, p.node, p.ip, p.ip6) for p in t.pods] == [
        ("pod1-1", "node1", "10.244.1.10", "fd00:10:244:1::10"),
        ("pod1-2", "node1", "10.244.1.11", "fd00:10:244:1::11"),
        ("pod2-1", "node2", "10.244.2.10", "fd00:10:244:2::10"),
        ("pod2-2", "node2", "10.244.2.11", "fd00:10:244:2::11"),
    ]
    assert [(c.name, c.ip, c.ip6, c.via) for c in t.clients] == [
        ("client1", "192.0.2.100", "2001:db8::100", "node1")]
    assert Topology.simple().pods[0].ip6 is None


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(pods=(PodSpec(name="p", node="n1", ip="10.244.9.5"),)), "not in 10.244.1.0/24"),
        (dict(pods=(PodSpec(name="p", node="nx", ip="10.244.1.5"),)), "unknown node"),
        (dict(pods=(PodSpec(name="n1", node="n1", ip="10.244.1.5"),)), "name used twice"),
        (dict(pods=(PodSpec(name="p", node="n1", ip="10.244.1.1"),)), "used twice"),  # the pod gateway
        (dict(pods=(PodSpec(name="fabric", node="n1", ip="10.244.1.5"),)), "names must be"),
        (dict(pods=(PodSpec(name="p", node="n1", ip="10.244.1.5", ip6="fd00::5"),)), "no pod_cidr6"),
        (dict(clients=(ClientSpec(name="c", ip="198.51.100.1", via="n1"),)), "not in 192.0.2.0/24"),
        (dict(clients=(ClientSpec(name="c", ip="192.0.2.1", via="n1"),)), "used twice"),
        (dict(clients=(ClientSpec(name="c", ip="192.0.2.9", via="n1", ip6="2001:db8::9"),)), "no ip6"),
    ],
)
def test_topology_validation(kw, msg):
    node = NodeSpec(name="n1", ip="192.0.2.1", pod_cidr="10.244.1.0/24")
    with pytest.raises(UsageError, match=msg):
        Topology(nodes=(node,), **kw)


def test_overlapping_pod_cidrs_are_rejected():
    with pytest.raises(UsageError, match="overlap"):
        Topology(nodes=(NodeSpec(name="a", ip="192.0.2.1", pod_cidr="10.244.0.0/16"),
                        NodeSpec(name="b", ip="192.0.2.2", pod_cidr="10.244.1.0/24")))


# --------------------------------------------------------------------------- namespaces


@pytest.mark.netns
def test_lab_builds_dual_stack_topology(make_lab):
    lab = make_lab(Topology.simple(nodes=2, pods_per_node=1, clients=1, ipv6=True))
    assert all(_exists(ns) for ns in lab.namespaces)
    assert all(ns.startswith(lab.prefix + "-") for ns in lab.namespaces)
    assert lab.ns("node1") == f"{lab.prefix}-node1" and lab.ns(lab.ns("node1")) == lab.ns("node1")
    assert lab.pod_ifname("pod1-1") == "veth1" and lab.fabric_port("client1") == "ul3"
    with pytest.raises(KeyError):
        lab.ns("node9")

    assert _sysctl(lab.ns("node1"), "net.ipv4.ip_forward") == "1"
    assert _sysctl(lab.ns("node1"), "net.ipv6.conf.all.forwarding") == "1"
    assert _sysctl(lab.ns("pod1-1"), "net.ipv4.ip_forward") == "0"
    assert _sysctl(lab.ns("client1"), "net.ipv6.conf.eth0.accept_dad") == "0"
    assert _sysctl(lab.ns("fabric"), "net.ipv4.ip_forward") == "0"
    routes = run_in(lab.ns("node1"), ["ip", "route"]).stdout
    assert "default via 192.0.2.254" in routes and "10.244.2.0/24 via 192.0.2.2" in routes
    assert "10.244.1.10 dev veth1" in routes
    routes6 = run_in(lab.ns("node1"), ["ip", "-6", "route"]).stdout
    assert "fd00:10:244:2::/64 via 2001:db8::2" in routes6
    assert "default via 10.244.1.1 dev eth0" in run_in(lab.ns("pod1-1"), ["ip", "route"]).stdout
    assert "default via fe80::1 dev eth0" in run_in(lab.ns("pod1-1"), ["ip", "-6", "route"]).stdout
    addrs = run_in(lab.ns("pod1-1"), ["ip", "-6", "addr", "show", "dev", "eth0"]).stdout
    assert "fd00:10:244:1::10/128" in addrs and "tentative" not in addrs

    for pod in ("pod1-1", "pod2-1"):
        lab.serve(pod, tcp_ports=[8080], udp_ports=[5353])
    # every namespace kind reaches every pod, unNATed, over both families and across nodes
    cases = [
        ("client1", "192.0.2.100", "10.244.1.10", "pod1-1"),
        ("client1", "192.0.2.100", "10.244.2.10", "pod2-1"),  # routed by node1 to node2
        ("client1", "2001:db8::100", "fd00:10:244:2::10", "pod2-1"),
        ("node1", "192.0.2.1", "10.244.1.10", "pod1-1"),
        ("node2", "2001:db8::2", "fd00:10:244:1::10", "pod1-1"),
        ("pod1-1", "10.244.1.10", "10.244.2.10", "pod2-1"),
        ("pod2-1", "fd00:10:244:2::10", "fd00:10:244:1::10", "pod1-1"),
        ("pod1-1", "10.244.1.10", "10.244.1.10", "pod1-1"),
    ]
    for src_ns, src_ip, dst, pod in cases:
        for probe, port in ((lab.tcp_probe, 8080), (lab.udp_probe, 5353)):
            r = probe(src_ns, dst, port)
            assert r.outcome == "ok", (src_ns, dst, r)
            assert r.pod == pod and r.server_saw_dst == (dst, port) and r.peer == (dst, port)
            assert r.server_saw_src == r.local and r.local[0] == src_ip


@pytest.mark.netns
def test_probe_outcomes(lab: Lab):
    srv = lab.serve("pod1-1", tcp_ports=[8080], udp_ports=[5353])
    assert lab.tcp_probe("client1", "10.244.1.10", 8080).ok
    assert lab.udp_probe("client1", "10.244.1.10", 5353, sport=40053).server_saw_src == ("192.0.2.100", 40053)
    assert [(s.proto, s.local) for s in srv.seen] == [("tcp", ("10.244.1.10", 8080)), ("udp", ("10.244.1.10", 5353))]
    assert lab.tcp_probe("client1", "10.244.1.10", 9).outcome == "refused"  # RST
    assert lab.udp_probe("client1", "10.244.1.10", 9).outcome == "refused"  # ICMP port unreachable
    # an IPv4-only lab: no IPv6 route anywhere
    r = lab.tcp_probe("client1", "fd00:10:96::10", 80)
    assert r.outcome == "error" and r.error == "Network is unreachable"
    # a VIP without rules goes to the nodes' default gateway, a dead end
    assert lab.tcp_probe("client1", "10.96.0.10", 80, timeout=0.2).outcome == "timeout"
    assert lab.udp_probe("node1", "10.96.0.10", 53, timeout=0.2).outcome == "timeout"


@pytest.mark.netns
def test_parallel_labs_are_isolated(make_lab):
    a = make_lab(Topology.simple())
    b = make_lab(Topology.simple())
    assert a.prefix != b.prefix and not set(a.namespaces) & set(b.namespaces)
    sa = a.serve("pod1-1", tcp_ports=[8080])
    sb = b.serve("pod1-1", tcp_ports=[8080])
    assert a.tcp_probe("client1", "10.244.1.10", 8080).ok
    assert [len(sa.seen), len(sb.seen)] == [1, 0]
    assert b.tcp_probe("client1", "10.244.1.10", 8080).ok
    assert [len(sa.seen), len(sb.seen)] == [1, 1]


@pytest.mark.netns
def test_everything_is_removed_after_an_exception(tmp_path, ns_prefix):
    state = tmp_path / "lab.json"
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(Topology.simple(nodes=2), prefix=ns_prefix, state_file=state) as lab:
            names = lab.namespaces
            assert all(_exists(ns) for ns in names) and state.exists()
            lab.serve("pod1-1", tcp_ports=[8080])
            raise RuntimeError("boom")
    assert not any(_exists(ns) for ns in names)
    assert not state.exists()


@pytest.mark.netns
def test_failed_build_removes_only_what_it_created(ns_prefix):
    prefix = ns_prefix
    squatter = f"{prefix}-pod1-1"  # exists already: not ours, must survive
    pr_netns.create(squatter)
    try:
        lab = Lab(Topology.simple(nodes=1), prefix=prefix)
        with pytest.raises(Exception):
            lab.start()
        assert _exists(squatter)
        assert [ns for ns in lab.namespaces if _exists(ns)] == [squatter]
    finally:
        pr_netns.remove(squatter)


@pytest.mark.netns
def test_destroy_from_state_removes_a_crashed_labs_leftovers(tmp_path, ns_prefix):
    state = tmp_path / "lab.json"
    prefix = ns_prefix
    code = textwrap.dedent(f"""
        import os
        from dataplane.lab import Lab, Topology
        lab = Lab(Topology.simple(nodes=2), prefix={prefix!r}, state_file={str(state)!r})
        lab.start()
        print(" ".join(lab.namespaces), flush=True)
        os._exit(1)  # crash: no teardown
    """)
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    names = proc.stdout.split()
    assert len(names) == 6 and all(_exists(ns) for ns in names)
    assert sorted(Lab.destroy_from_state(state)) == sorted(names)
    assert not any(_exists(ns) for ns in names) and not state.exists()
    assert Lab.destroy_from_state(state) == []  # nothing left to do


@pytest.mark.netns
def test_sctp_probe_and_conntrack_without_nat(make_lab):
    lab = make_lab(Topology.simple(nodes=1, pods_per_node=2, clients=1))
    # conntrack only hooks into a namespace once some rule needs it
    lab.run("node1", ["nft", "add table ip t; add chain ip t c { type filter hook prerouting priority 0; }; "
                              "add rule ip t c ct state new counter"])
    seen = lab.sctp_probe("client1", "192.0.2.100", "10.244.1.10", 9, capture=("pod1-1", "eth0"), sport=4000)
    assert seen is not None
    assert (seen.src, seen.dst, seen.sport, seen.dport) == ("192.0.2.100", "10.244.1.10", 4000, 9)
    assert lab.sctp_probe("client1", "192.0.2.100", "10.244.1.10", 9, capture=("pod1-2", "eth0"),
                          timeout=0.2) is None  # the other pod never sees it
    [entry] = [e for e in lab.conntrack_entries("node1", "sctp") if e.orig.sport == 4000]
    assert entry.orig == FlowTuple("192.0.2.100", "10.244.1.10", 4000, 9)
    assert entry.reply == FlowTuple("10.244.1.10", "192.0.2.100", 9, 4000)
    assert not entry.dst_nat
    assert entry.state in ("COOKIE_WAIT", "CLOSED")  # CLOSED once the pod's kernel ABORTs the INIT
    assert lab.conntrack_entries("node1", "sctp", family="ipv6") == []
