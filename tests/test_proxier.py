"""The long-lived Proxier: incremental syncs, full resyncs, failures, conntrack cleanup."""
from __future__ import annotations

import dataclasses

import pytest

from dataplane.runtime.conntrack import ConntrackDelete
from dataplane.errors import DataplaneError
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
from dataplane.runtime.proxier import Proxier, RecordingRunner

NODE = Node("n1", (NodeAddress("InternalIP", "192.0.2.1"),))
CONFIG = ProxyConfig(cluster_cidrs=("10.244.0.0/16",))
MODES = ("iptables", "nftables")


def svc(name: str, ip: str, proto="TCP", node_port=None) -> Service:
    return Service("ns", name, type="NodePort" if node_port else "ClusterIP", cluster_ips=(ip,),
                   ports=(ServicePort(80, proto, "p", node_port=node_port),))


def eps(name: str, *ips: str, proto="TCP", ready=True) -> EndpointSlice:
    return EndpointSlice("ns", f"{name}-1", name, "IPv4",
                         tuple(Endpoint((ip,), EndpointConditions(ready, ready, False), node_name="n1") for ip in ips),
                         (EndpointPort(8080, proto, "p"),))


def cluster(n: int = 20) -> Cluster:
    services = tuple(svc(f"s{i}", f"10.96.0.{i + 1}") for i in range(n))
    slices = tuple(eps(f"s{i}", f"10.244.1.{i + 1}", f"10.244.2.{i + 1}") for i in range(n))
    return Cluster(services=services, endpoint_slices=slices, nodes=(NODE,), proxy_config=CONFIG)


@pytest.mark.parametrize("mode", MODES)
def test_first_sync_full_then_nothing(mode):
    p = Proxier("n1", mode=mode, cluster=cluster())
    first = p.sync()
    assert first.kind == "full" and first.changed == 20
    again = p.sync()
    assert again.kind == "none" and again.text == ""


@pytest.mark.parametrize("mode", MODES)
def test_one_endpoint_change_rewrites_only_that_service(mode):
    p = Proxier("n1", mode=mode, cluster=cluster())
    p.sync()
    p.set_endpoint_slice(eps("s7", "10.244.1.8", "10.244.2.8", "10.244.3.8"))
    r = p.sync()
    assert r.kind == "partial" and r.changed == 1
    if mode == "nftables":
        assert "10.244.3.8" in r.text and "ns/s7/" in r.text
        assert not any(f"ns/s{i}/" in r.text for i in range(20) if i != 7)
        assert "delete table" not in r.text
    else:
        own = [ln for ln in r.text.splitlines() if ln.startswith((":KUBE-SVC-", ":KUBE-SEP-"))]
        assert own and all(ln.endswith("- [0:0]") for ln in own)
        chains = {ln.split()[0][1:] for ln in own}
        assert len(chains) == 1 + 3  # KUBE-SVC-… and its three KUBE-SEP-… chains
        assert "-I PREROUTING" not in r.text  # jumps from built-in chains only on full syncs


@pytest.mark.parametrize("mode", MODES)
def test_incremental_state_equals_full_resync(mode):
    p = Proxier("n1", mode=mode, cluster=cluster())
    p.sync()
    p.delete_service("ns", "s3")
    p.set_service(svc("new", "10.96.1.1", node_port=30100))
    p.set_endpoint_slice(eps("new", "10.244.1.200"))
    p.delete_endpoint_slice("ns", "s5-1")
    assert p.sync().kind == "partial"
    forced = p.sync(full=True)
    fresh = Proxier("n1", mode=mode, cluster=p.cluster()).sync()
    assert forced.kind == "full" and forced.text == fresh.text


@pytest.mark.parametrize("mode", MODES)
def test_failed_apply_makes_the_next_sync_full(mode):
    runner = RecordingRunner()
    p = Proxier("n1", mode=mode, cluster=cluster(), runner=runner)
    p.sync()
    p.set_endpoint_slice(eps("s1", "10.244.9.9"))
    runner.fail_next = True
    with pytest.raises(DataplaneError):
        p.sync()
    r = p.sync()
    assert r.kind == "full" and runner.applied[-1][3] is True


@pytest.mark.parametrize("mode", MODES)
def test_node_or_config_change_means_full_sync(mode):
    p = Proxier("n1", mode=mode, cluster=cluster())
    p.sync()
    p.set_config(dataclasses.replace(CONFIG, iptables_masquerade_all=True, nftables_masquerade_all=True))
    assert p.sync().kind == "full"
    p.set_node(Node("n1", (NodeAddress("InternalIP", "192.0.2.9"),)))
    assert p.sync().kind == "full"
    p.set_node(Node("other", ()))  # another node: nothing to do
    assert p.sync().kind == "none"


def test_udp_endpoint_removal_and_first_endpoint_clear_conntrack():
    c = Cluster(services=(svc("dns", "10.96.0.10", proto="UDP", node_port=30053), svc("web", "10.96.0.80")),
                endpoint_slices=(eps("dns", "10.244.1.53", "10.244.2.53", proto="UDP"), eps("web", "10.244.1.80")),
                nodes=(NODE,), proxy_config=CONFIG)
    runner = RecordingRunner()
    p = Proxier("n1", mode="nftables", cluster=c, runner=runner)
    assert p.sync().conntrack == ()
    p.set_endpoint_slice(eps("dns", "10.244.2.53", proto="UDP"))
    p.set_endpoint_slice(eps("web", "10.244.9.80"))  # TCP: nothing to clear
    r = p.sync()
    assert set(r.conntrack) == {
        ConntrackDelete("ipv4", "udp", orig_dst="10.96.0.10", dst_nat="10.244.1.53"),
        ConntrackDelete("ipv4", "udp", orig_port_dst=30053, dst_nat="10.244.1.53"),
    }
    assert runner.conntrack[-2:] == list(r.conntrack)
    p.set_endpoint_slice(eps("dns", proto="UDP"))  # no endpoints: REJECT
    p.sync()
    p.set_endpoint_slice(eps("dns", "10.244.3.53", proto="UDP"))  # first endpoint again
    r = p.sync()
    assert ConntrackDelete("ipv4", "udp", orig_dst="10.96.0.10") in r.conntrack
    assert ConntrackDelete("ipv4", "udp", orig_port_dst=30053) in r.conntrack
    assert ConntrackDelete("ipv4", "udp", orig_dst="10.96.0.10").argv() == [
        "conntrack", "-D", "-f", "ipv4", "-p", "udp", "--orig-dst", "10.96.0.10"]


def test_plan_changes_only_for_dirty_services():
    p = Proxier("n1", mode="iptables", cluster=cluster(50))
    first = p.plan()
    p.set_endpoint_slice(eps("s10", "10.244.7.7"))
    second = p.plan()
    changed = [a for a, b in zip(first.services, second.services) if a is not b]
    assert len(changed) == 1 and changed[0].name == "s10"


def test_a_shared_external_ip_stays_with_the_first_service_across_partial_syncs():
    """Two Services claim 203.0.113.7:80 (the API server allows it): a full render keeps the first
    Service's element; partial syncs that rewrite the first Service must not hand it to the second."""
    a = dataclasses.replace(svc("a", "10.96.0.1"), external_ips=("203.0.113.7",))
    b = dataclasses.replace(svc("b", "10.96.0.2"), external_ips=("203.0.113.7",))
    c = Cluster(services=(a, b), endpoint_slices=(eps("a", "10.244.1.1"), eps("b", "10.244.1.2")),
                nodes=(NODE,), proxy_config=CONFIG)
    p = Proxier("n1", mode="nftables", cluster=c)
    full = p.sync().text
    first = [ln.strip() for ln in full.splitlines() if "203.0.113.7 . tcp . 80" in ln]
    assert len(first) == 1 and "ns/a/" in first[0], first
    for n in range(3):  # the first Service changes again and again
        p.set_endpoint_slice(eps("a", f"10.244.1.{10 + n}"))
        r = p.sync()
        assert r.kind == "partial"
        assert "203.0.113.7" not in r.text, r.text  # its element never moves
    p.delete_service("ns", "a")  # now the second Service takes the address
    r = p.sync()
    assert "delete element ip kube-proxy service-ips { 203.0.113.7 . tcp . 80 }" in r.text
    assert any(ln.startswith("add element ip kube-proxy service-ips { 203.0.113.7 . tcp . 80") and "ns/b/" in ln
               for ln in r.text.splitlines()), r.text


@pytest.mark.parametrize("mode", MODES)
def test_a_cluster_ip_that_comes_and_goes_moves_the_external_ip_claiming_it(mode):
    """aaa/evil claims 10.96.0.10 as an externalIP. While no Service holds that ClusterIP evil
    has it (kube-proxy's behaviour); kube-dns arriving with it takes it in a partial sync,
    though only kube-dns changed, and leaving gives it back: after each sync the plan and a
    forced full resync are those of a fresh compile."""
    from dataplane.plan import build_plan

    evil = Service("aaa", "evil", cluster_ips=("10.96.7.7",), external_ips=("10.96.0.10",),
                   ports=(ServicePort(80, "TCP", "p"),))
    dns = Service("kube-system", "kube-dns", cluster_ips=("10.96.0.10",), ports=(ServicePort(80, "TCP", "p"),))
    dns_slice = dataclasses.replace(eps("kube-dns", "10.244.9.53"), namespace="kube-system")
    base = cluster(5)
    evil_slice = dataclasses.replace(eps("evil", "10.244.6.66"), namespace="aaa")
    p = Proxier("n1", mode=mode, cluster=dataclasses.replace(
        base, services=(*base.services, evil), endpoint_slices=(*base.endpoint_slices, evil_slice)))
    p.sync()

    def check(expect_evil_has_it: bool) -> None:
        plan = p.plan()
        fresh = build_plan(p.cluster(), "n1", mode=mode)
        assert plan.services == fresh.services
        assert [w for w in plan.warnings if "is the ClusterIP of" in w] == [
            w for w in fresh.warnings if "is the ClusterIP of" in w]
        mine = next(s for s in plan.services if s.name == "evil")
        assert mine.external_ips == (("10.96.0.10",) if expect_evil_has_it else ())
        assert p.sync(full=True).text == Proxier("n1", mode=mode, cluster=p.cluster()).sync().text

    check(True)
    p.set_service(dns)
    p.set_endpoint_slice(dns_slice)
    r = p.sync()
    assert r.kind == "partial"
    assert any("aaa/evil: spec.externalIPs: 10.96.0.10 is the ClusterIP of Service kube-system/kube-dns" in w
               for w in r.plan.warnings)
    if mode == "nftables":
        assert "delete element ip kube-proxy service-ips { 10.96.0.10 . tcp . 80 }" in r.text
        assert any(ln.startswith("add element ip kube-proxy service-ips { 10.96.0.10 . tcp . 80")
                   and "kube-system/kube-dns" in ln for ln in r.text.splitlines()), r.text
    else:  # a partial restore rewrites KUBE-SERVICES whole
        to_dns = [ln for ln in r.text.splitlines() if ln.startswith("-A KUBE-SERVICES -d 10.96.0.10/32")]
        assert len(to_dns) == 1 and "kube-system/kube-dns:p cluster IP" in to_dns[0], to_dns
    check(False)
    p.set_service(dataclasses.replace(dns, cluster_ips=("10.96.0.11",)))  # a new ClusterIP frees the old one
    assert p.sync().kind == "partial"
    check(True)
    p.set_service(dns)
    p.sync()
    p.delete_service("kube-system", "kube-dns")
    assert p.sync().kind == "partial"
    check(True)


def test_the_proxier_takes_an_external_ip_allow_list():
    a = dataclasses.replace(svc("a", "10.96.0.1"), external_ips=("203.0.113.7", "198.51.100.7"))
    c = Cluster(services=(a,), endpoint_slices=(eps("a", "10.244.1.1"),), nodes=(NODE,), proxy_config=CONFIG)
    p = Proxier("n1", mode="nftables", cluster=c, external_ip_cidrs=["203.0.113.0/24"])
    assert p.plan().services[0].external_ips == ("203.0.113.7",)
    p.set_config(dataclasses.replace(CONFIG, external_ip_cidrs=("198.51.100.0/24",)))  # the keyword wins
    assert p.plan().services[0].external_ips == ("203.0.113.7",)
    q = Proxier("n1", mode="nftables", cluster=c)
    q.sync()
    q.set_config(dataclasses.replace(CONFIG, external_ip_cidrs=("198.51.100.0/24",)))
    r = q.sync()  # the node-level part of the table is the same: only the elements change
    assert r.kind == "partial" and "delete element ip kube-proxy service-ips { 203.0.113.7 . tcp . 80 }" in r.text
    assert "198.51.100.7" not in r.text  # allowed before and after: its element stays
    assert q.sync(full=True).text == Proxier("n1", mode="nftables", cluster=q.cluster()).sync().text
