"""The quick paths of the allocation (dataplane/controllers/allocation.py, ipallocator.py) give
what the general ones give: the IP-family shortcut, Services returned as they came when they
gain nothing, the new state worked out when read, addresses as integers and IPv4 text made
without address objects."""
from __future__ import annotations

import ipaddress
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.controllers import allocation
from dataplane.controllers.allocation import AllocationState, HeldNodePort, HeldValues, allocate_cluster
from dataplane.controllers.ipallocator import IPAllocator, MetaAllocator, ip_value
from dataplane.controllers.portallocator import AlreadyAllocatedError, NotInRangeError
from dataplane.ipaddrs import parse_cidr, parse_ip
from dataplane.model import Cluster, ObjectRef, Service, ServicePort


def svc(name: str, type_: str = "ClusterIP", **kw) -> Service:
    ref = ObjectRef("Service", "default", name, source="svc.yaml", index=1)
    kw.setdefault("ports", (ServicePort(80, "TCP", "http"),))
    kw.setdefault("selector", (("app", name),))
    return Service("default", name, type=type_, ref=ref, **kw)


# ------------------------------------------------------------ IP families


IPS = st.sampled_from(["10.96.0.5", "010.96.0.5", "10.96.0.256", "fd00::5", "::ffff:10.96.0.7", "None", "x"])
POLICIES = st.sampled_from([None, "SingleStack", "PreferDualStack", "RequireDualStack"])
FAMILIES = st.sampled_from([(), ("IPv4",), ("IPv6",), ("IPv4", "IPv6"), ("IPv6", "IPv4"), ("IPv4", "IPv4")])
CONFIGURED = st.sampled_from([("IPv4",), ("IPv6",), ("IPv4", "IPv6"), ("IPv6", "IPv4")])


def _families_of(resolve, service: Service, ips: tuple[str, ...], configured) -> tuple:
    plan = allocation._Plan(service, "default/s")
    resolve(plan, ips, configured)
    return plan.policy, plan.families, [str(p) for p in plan.problems], plan.failed


@settings(max_examples=400, deadline=None)
@given(ips=st.lists(IPS, max_size=2).map(tuple), policy=POLICIES, families=FAMILIES, configured=CONFIGURED,
       selector=st.booleans())
def test_the_family_shortcut_agrees_with_the_general_rules(ips, policy, families, configured, selector):
    service = svc("s", cluster_ips=ips, ip_family_policy=policy, ip_families=families,
                  selector=(("app", "s"),) if selector else None)
    assert _families_of(allocation._resolve_families, service, ips, configured) == _families_of(
        allocation._resolve_families_generally, service, ips, configured)


def test_the_family_shortcut_is_taken_for_a_plain_ipv4_service(monkeypatch):
    """(else the test above would compare the general rules with themselves)"""
    def general(*args):
        raise AssertionError("the general rules were used")

    monkeypatch.setattr(allocation, "_resolve_families_generally", general)
    service = svc("s", cluster_ips=("10.96.0.5",), ip_families=("IPv4",), ip_family_policy="SingleStack")
    assert _families_of(allocation._resolve_families, service, ("10.96.0.5",), ("IPv4",))[:2] == (
        "SingleStack", ("IPv4",))
    with pytest.raises(AssertionError):
        _families_of(allocation._resolve_families, service, ("fd00::5",), ("IPv4", "IPv6"))


# ------------------------------------------------------------ the result


def test_a_service_that_gains_nothing_is_the_input_object_and_others_are_new():
    complete = svc("complete", "NodePort", cluster_ips=("10.96.0.10",), ip_families=("IPv4",),
                   ip_family_policy="SingleStack", ports=(ServicePort(80, "TCP", "http", node_port=30080),))
    bare = svc("bare", "NodePort")
    no_policy = svc("nopolicy", cluster_ips=("10.96.0.11",), ip_families=("IPv4",))
    external = svc("ext", "ExternalName", external_name="example.com")
    cluster = Cluster(services=(complete, bare, no_policy, external))
    result = allocate_cluster(cluster, seed=1)
    got = dict(zip(("complete", "bare", "nopolicy", "ext"), result.cluster.services))
    assert got["complete"] is complete and got["ext"] is external
    assert got["bare"] is not bare and got["nopolicy"] is not no_policy
    assert got["nopolicy"] == replace(no_policy, ip_family_policy="SingleStack")
    record = result.services["default/bare"]
    assert got["bare"] == replace(bare, cluster_ips=record.cluster_ips, ip_families=("IPv4",),
                                  ip_family_policy="SingleStack",
                                  ports=(replace(bare.ports[0], node_port=record.node_ports[0]),))
    assert record.filled == ("spec.clusterIPs[0]", "spec.ports[0].nodePort")
    assert result.services["default/complete"].filled == ()


def test_the_new_state_is_what_each_service_holds():
    services = (
        svc("lb", "LoadBalancer", external_traffic_policy="Local",
            ports=(ServicePort(80, "TCP", "http"), ServicePort(80, "UDP", "dns"))),
        svc("plain"),
        svc("headless", cluster_ips=("None",)),
        svc("ext", "ExternalName", external_name="example.com"),
    )
    result = allocate_cluster(Cluster(services=services), service_cidrs="10.96.0.0/16,fd00::/108", seed=3)
    lb = result.services["default/lb"]
    expected = {
        "default/lb": HeldValues(lb.cluster_ips, ("IPv4",), (
            HeldNodePort("http", 80, "TCP", lb.node_ports[0]), HeldNodePort("dns", 80, "UDP", lb.node_ports[1])),
            lb.health_check_node_port),
        "default/plain": HeldValues(result.services["default/plain"].cluster_ips, ("IPv4",)),
    }
    state = result.state
    assert lb.node_ports[0] == lb.node_ports[1] and lb.health_check_node_port is not None
    assert dict(state.services) == expected and state.services == expected and expected == state.services
    assert len(state.services) == 2 and list(state.services) == ["default/headless", "default/lb",
                                                                 "default/plain"][1:]
    assert state == AllocationState.from_json(state.to_json()) and repr(state.services) == repr(expected)
    with pytest.raises(KeyError):
        state.services["default/headless"]
    again = allocate_cluster(Cluster(services=services), service_cidrs="10.96.0.0/16,fd00::/108", seed=99,
                             state=state)
    assert again.services == result.services  # what is held is kept, whatever the seed


# ------------------------------------------------------------ addresses


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(
    st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ".".join(map(str, t))),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(f"{n:03d}" for n in t)),
    st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n))),
    st.sampled_from(["10.1", "0x0a.0.0.1", "1.2.3.4 ", "::ffff:1.2.3.4", "fe80::1%eth0", ""]),
))
def test_ip_value_reads_an_address_as_parse_ip_does(text):
    try:
        address = parse_ip(text)
    except ValueError:
        with pytest.raises(ValueError):
            ip_value(text)
        return
    assert ip_value(text) == (address.version, int(address))


@settings(max_examples=100, deadline=None)
@given(cidr=st.sampled_from(["10.0.0.0/12", "192.168.7.0/28", "128.0.0.0/16", "fd00:1::/64", "::/112"]),
       seed=st.integers(0, 2**32))
def test_allocated_addresses_are_printed_as_ipaddress_prints_them(cidr, seed):
    allocator = IPAllocator(cidr, seed=seed)
    network = parse_cidr(cidr)
    for _ in range(5):
        ip = allocator.allocate_next()
        assert ip == str(ipaddress.ip_address(ip)) and ipaddress.ip_address(ip) in network
        assert allocator.has(ip)
    assert allocator.allocated() == sorted(allocator.allocated(), key=lambda a: int(ipaddress.ip_address(a)))


def test_one_cidr_refuses_what_it_cannot_give():
    meta = MetaAllocator([parse_cidr("10.0.0.0/24")])
    meta.allocate("10.0.0.7")
    with pytest.raises(AlreadyAllocatedError, match="already allocated"):
        meta.allocate("10.0.0.7")
    for outside in ("10.0.1.1", "fd00::1", "010.000.001.001"):
        with pytest.raises(NotInRangeError, match=r"the provided IP \(10\.0\.1\.1\)|fd00::1|10.0.1.1"):
            meta.allocate(outside)
    for edge in ("10.0.0.0", "10.0.0.255"):  # the network and broadcast addresses
        with pytest.raises(NotInRangeError, match="The range of valid IPs is 10.0.0.0/24"):
            meta.allocate(edge)
    meta.allocate("010.000.000.008")  # leading zeros are decimal
    assert meta.allocators[0].has("10.0.0.8") and meta.allocators[0].used() == 2
    with pytest.raises(ValueError):
        meta.allocate("10.0.0.x")


def test_overlapping_cidrs_reserve_an_address_in_each():
    meta = MetaAllocator([parse_cidr("10.0.0.0/16"), parse_cidr("10.0.0.0/24")], rng=random.Random(4))
    meta.allocate("10.0.0.9")
    assert all(a.has("10.0.0.9") for a in meta.allocators)
    with pytest.raises(AlreadyAllocatedError):
        meta.allocate("10.0.0.9")
    meta.allocate("10.0.5.9")
    assert [a.used() for a in meta.allocators] == [2, 1]
    for _ in range(300):  # more than the /24 holds: a dynamic address in it is taken in both
        ip = meta.allocate_next()
        holding = [a for a in meta.allocators if ipaddress.ip_address(ip) in a.cidr]
        assert all(a.has(ip) for a in holding)
    assert meta.allocators[0].used() == 302
