"""NodePort/ClusterIP allocation as the API server does it (portallocator, ipallocator, storage/alloc.go).

The allocator vectors mirror upstream tests: portallocator/allocator_test.go
(Test_calculateRangeOffset, TestAllocate, TestAllocateReserved,
TestNewFromSnapshot, TestSnapshot, TestNodePortMetrics), allocator/bitmap_test.go
and ipallocator/bitmap_test.go.
"""
from __future__ import annotations

import ipaddress
import json
import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.controllers.allocation import (
    AllocationState,
    allocate_cluster,
    fill_documents,
)
from dataplane.controllers.ipallocator import IPAllocator, cidr_range_offset
from dataplane.controllers.portallocator import (
    AlreadyAllocatedError,
    MismatchedRangeError,
    NotInRangeError,
    PortAllocator,
    PortRange,
    RangeBitmap,
    RangeFullError,
    port_range_offset,
)
from dataplane.errors import InputError, UsageError
from dataplane.input.loader import Document
from dataplane.model import Cluster, ObjectRef, Service, ServicePort


def svc(name: str, type_: str = "ClusterIP", *, ns: str = "default", ports=None, index: int = 1, **kw) -> Service:
    """A Service with a ref, one TCP port 80 unless ``ports`` is given."""
    if ports is None:
        ports = (ServicePort(80, "TCP", ""),)
    ref = ObjectRef("Service", ns, name, source="svc.yaml", index=index)
    return Service(ns, name, type=type_, ports=tuple(ports), selector=(("app", name),), ref=ref, **kw)


def nodeport(name: str, *node_ports, **kw) -> Service:
    """A NodePort Service with one TCP port per entry of ``node_ports`` (None: unset)."""
    ports = tuple(ServicePort(80 + i, "TCP", f"p{i}", node_port=np) for i, np in enumerate(node_ports or (None,)))
    return svc(name, "NodePort", ports=ports, **kw)


def problems_of(excinfo: pytest.ExceptionInfo) -> list[str]:
    return [str(p) for p in excinfo.value.problems]


# ============================================================== PortRange


@pytest.mark.parametrize(
    "text, base, size, rendered",
    [
        ("30000-32767", 30000, 2768, "30000-32767"),
        (" 30000-32767 ", 30000, 2768, "30000-32767"),
        ("80", 80, 1, "80-80"),
        ("80+8", 80, 9, "80-88"),
        ("0-65535", 0, 65536, "0-65535"),
    ],
)
def test_port_range_parse(text, base, size, rendered):
    pr = PortRange.parse(text)
    assert (pr.base, pr.size, str(pr)) == (base, size, rendered)


@pytest.mark.parametrize(
    "text, message",
    [
        ("30000-70000", "the port range cannot be greater than 65535: 30000-70000"),
        ("65535+1", "the port range cannot be greater than 65535: 65535+1"),
        ("70000", "the port range cannot be greater than 65535: 70000"),
        ("32767-30000", "end port cannot be less than start port: 32767-30000"),
        ("1-2+3", "unable to parse port range: 1-2+3"),
        ("abc", "unable to parse port range: abc"),
        ("30000-", "unable to parse port range: 30000-"),
        ("", "unable to parse port range: "),
    ],
)
def test_port_range_errors(text, message):
    with pytest.raises(ValueError) as excinfo:
        PortRange.parse(text)
    assert str(excinfo.value) == message


def test_port_range_contains():
    pr = PortRange.parse("30000-30009")
    assert pr.contains(30000) and pr.contains(30009)
    assert not pr.contains(29999) and not pr.contains(30010)
    assert pr.last == 30009


# ============================================================ port offsets


@pytest.mark.parametrize(
    "text, offset, static, first_dynamic",
    [
        ("30000-32767", 86, "30000-30085", 30086),
        ("30000-30009", 0, "", 30000),
        ("30000-30015", 0, "", 30000),
        ("30000-30127", 16, "30000-30015", 30016),
        ("30000-30128", 16, "30000-30015", 30016),
        ("30000-32047", 64, "30000-30063", 30064),
        ("30000-34095", 128, "30000-30127", 30128),
        ("30000-38191", 128, "30000-30127", 30128),
        ("20000-32767", 128, "20000-20127", 20128),
        ("32567-32767", 16, "32567-32582", 32583),
    ],
)
def test_node_port_range_offset(text, offset, static, first_dynamic):
    allocator = PortAllocator(text)
    assert allocator.offset == offset
    assert str(allocator.static_band) == static
    assert allocator.port_range.base + allocator.offset == first_dynamic


@pytest.mark.parametrize("size, offset", [(16, 0), (17, 16), (511, 16), (512, 16), (1024, 32), (4127, 128), (4128, 128)])
def test_node_port_offset_closed_form(size, offset):
    assert port_range_offset(size) == offset


# ======================================================= port allocator


def test_allocate_10000_10200():
    """TestAllocate: fill, ErrFull, release and reuse, out-of-range and duplicate requests."""
    pa = PortAllocator("10000-10200", seed=1)
    assert pa.free() == 201
    got = {pa.allocate_next() for _ in range(201)}
    assert got == set(range(10000, 10201))
    with pytest.raises(RangeFullError) as excinfo:
        pa.allocate_next()
    assert str(excinfo.value) == "range is full"
    pa.release(10005)
    assert (pa.free(), pa.used()) == (1, 200)
    assert pa.allocate_next() == 10005
    for port in (1, 20000, 10201):
        with pytest.raises(NotInRangeError) as excinfo:
            pa.allocate(port)
        assert str(excinfo.value) == (
            "provided port is not in the valid range. The range of valid ports is 10000-10200"
        )
    with pytest.raises(AlreadyAllocatedError) as excinfo:
        pa.allocate(10001)
    assert str(excinfo.value) == "provided port is already allocated"


def test_not_in_range_message_default_range():
    with pytest.raises(NotInRangeError) as excinfo:
        PortAllocator("30000-32767").allocate(80)
    assert str(excinfo.value) == "provided port is not in the valid range. The range of valid ports is 30000-32767"


def test_allocate_reserved_30000_30128():
    """TestAllocateReserved: dynamic allocation fills 30016..30128 before touching the static band."""
    pa = PortAllocator("30000-30128", seed=7)
    got = [pa.allocate_next() for _ in range(113)]
    assert sorted(got) == list(range(30016, 30129))
    assert pa.free() == 16
    for port in range(30000, 30016):
        pa.allocate(port)
    assert pa.free() == 0
    pa.release(30053)
    assert pa.allocate_next() == 30053
    assert pa.free() == 0


def test_dynamic_falls_back_to_static_band_only_when_upper_is_full():
    pa = PortAllocator("30000-30128", seed=3)
    for _ in range(113):
        assert pa.allocate_next() >= 30016
    assert 30000 <= pa.allocate_next() <= 30015


def test_user_requests_ignore_bands():
    pa = PortAllocator("30000-32767")
    pa.allocate(30000)  # static band
    pa.allocate(32767)  # dynamic band
    assert pa.has(30000) and pa.has(32767) and pa.used() == 2


def test_release_is_idempotent_and_ignores_out_of_range():
    pa = PortAllocator("30000-30009")
    pa.allocate(30001)
    pa.release(30001)
    pa.release(30001)
    pa.release(80)
    assert pa.used() == 0


def test_node_port_metrics_vector():
    """TestNodePortMetrics: 3000 AllocateNext on the default range: 2768 ports, 232 errors."""
    pa = PortAllocator("30000-32767", seed=11)
    errors = 0
    for _ in range(3000):
        try:
            pa.allocate_next()
        except RangeFullError:
            errors += 1
    assert (pa.used(), errors) == (2768, 232)


def test_snapshot_restore():
    """TestNewFromSnapshot (200-300, 50 allocated) and TestSnapshot (different range)."""
    pa = PortAllocator("200-300", seed=5)
    taken = {pa.allocate_next() for _ in range(50)}
    snap = pa.snapshot()
    assert snap.range == "200-300"
    restored = PortAllocator("200-300")
    restored.restore(snap)
    assert (restored.free(), restored.used()) == (51, 50)
    assert set(restored.allocated()) == taken
    other = PortAllocator("200-301")
    with pytest.raises(MismatchedRangeError) as excinfo:
        other.restore(snap)
    assert str(excinfo.value) == "the provided port range does not match the current port range"


def test_snapshot_is_big_endian_bitset():
    pa = PortAllocator("30000-30015")
    pa.allocate(30000)
    pa.allocate(30009)
    assert pa.snapshot().data == ((1 << 9) | 1).to_bytes(2, "big")


def test_seed_reproducibility():
    first = PortAllocator("30000-32767", seed=42)
    second = PortAllocator("30000-32767", seed=42)
    assert [first.allocate_next() for _ in range(50)] == [second.allocate_next() for _ in range(50)]


# =================================================================== bitmap


@pytest.mark.parametrize("size, offset", [(32, 0), (8, 0), (128, 16), (1024, 64), (65535, 256)])
def test_bitmap_allocate_max(size, offset):
    bitmap = RangeBitmap(size, offset, random.Random(0))
    got = [bitmap.allocate_next() for _ in range(size)]
    assert sorted(got) == list(range(size))
    assert all(slot >= offset for slot in got[: size - offset])
    assert bitmap.allocate_next() is None
    assert bitmap.free() == 0


def test_bitmap_reserved_band():
    """TestAllocateMax_BitmapReserved: 112 allocations leave 0..15 free; the 113th lands there."""
    bitmap = RangeBitmap(128, 16, random.Random(9))
    for _ in range(112):
        assert bitmap.allocate_next() >= 16
    assert bitmap.free() == 16
    assert 0 <= bitmap.allocate_next() < 16


def test_bitmap_preallocate_reserved_full():
    """TestPreAllocateReservedFull_BitmapReserved."""
    bitmap = RangeBitmap(128, 16, random.Random(0))
    for slot in list(range(16, 128)) + list(range(0, 15)):
        assert bitmap.allocate(slot)
    assert bitmap.allocate_next() == 15
    assert bitmap.allocate_next() is None


def test_bitmap_uniqueness_and_range_error():
    bitmap = RangeBitmap(128, 16, random.Random(1))
    assert len({bitmap.allocate_next() for _ in range(128)}) == 128
    with pytest.raises(ValueError) as excinfo:
        bitmap.allocate(128)
    assert str(excinfo.value) == "offset 128 out of range [0,128]"


# =============================================================== IP ranges


@pytest.mark.parametrize(
    "cidr, offset",
    [
        ("192.168.1.0/32", 0),
        ("192.168.1.0/30", 0),
        ("192.168.1.0/28", 0),
        ("192.168.1.0/27", 16),
        ("192.168.1.0/26", 16),
        ("192.168.1.0/25", 16),
        ("192.168.1.0/24", 16),
        ("192.168.0.0/22", 64),
        ("192.168.0.0/21", 128),
        ("192.168.0.0/20", 256),
        ("192.168.0.0/16", 256),
        ("fd00::/124", 0),
        ("fd00::/122", 16),
        ("fd00::/118", 64),
        ("fd00::/12", 256),
    ],
)
def test_cidr_range_offset(cidr, offset):
    assert cidr_range_offset(cidr) == offset


def test_static_band_of_22_and_16():
    assert IPAllocator("192.168.0.0/22").offset == 64  # static 192.168.0.1 - 192.168.0.64
    sixteen = IPAllocator("192.168.0.0/16", seed=0)
    assert sixteen.offset == 256  # static 192.168.0.1 - 192.168.1.0
    assert sixteen.first == "192.168.0.1"
    for _ in range(200):
        ip = sixteen.allocate_next()
        assert ip not in {f"192.168.0.{i}" for i in range(1, 256)} | {"192.168.1.0"}


def test_ip_allocate_reserved_25():
    """ipallocator TestAllocateReserved on 192.168.1.0/25 (126 usable, static .1-.16)."""
    ipa = IPAllocator("192.168.1.0/25", seed=4)
    assert (ipa.free(), ipa.offset) == (126, 16)
    got = [ipa.allocate_next() for _ in range(110)]
    assert sorted(got, key=lambda a: int(a.split(".")[3])) == [f"192.168.1.{i}" for i in range(17, 127)]
    assert ipa.free() == 16
    for i in range(1, 17):
        ipa.allocate(f"192.168.1.{i}")
    assert ipa.free() == 0
    ipa.release("192.168.1.10")
    assert ipa.allocate_next() == "192.168.1.10"


def test_ip_allocate_small_30():
    ipa = IPAllocator("192.168.1.240/30", seed=0)
    assert ipa.free() == 2
    assert {ipa.allocate_next(), ipa.allocate_next()} == {"192.168.1.241", "192.168.1.242"}
    with pytest.raises(RangeFullError):
        ipa.allocate_next()
    for ip in ("192.168.1.240", "192.168.1.243"):  # network and broadcast
        with pytest.raises(NotInRangeError) as excinfo:
            ipa.allocate(ip)
        assert str(excinfo.value) == (
            f"the provided IP ({ip}) is not in the valid range. The range of valid IPs is 192.168.1.240/30"
        )


def test_ip_errors():
    ipa = IPAllocator("10.96.0.0/12")
    ipa.allocate("10.96.0.10")
    with pytest.raises(AlreadyAllocatedError) as excinfo:
        ipa.allocate("10.96.0.10")
    assert str(excinfo.value) == "provided IP is already allocated"
    with pytest.raises(NotInRangeError) as excinfo:
        ipa.allocate("192.168.0.1")
    assert str(excinfo.value) == (
        "the provided IP (192.168.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/12"
    )


def test_ip_snapshot_restore():
    ipa = IPAllocator("192.168.1.0/24", seed=2)
    taken = {ipa.allocate_next() for _ in range(128)}
    restored = IPAllocator("192.168.1.0/24")
    restored.restore(ipa.snapshot())
    assert restored.free() == 126
    assert set(restored.allocated()) == taken
    with pytest.raises(MismatchedRangeError) as excinfo:
        IPAllocator("192.168.2.0/24").restore(ipa.snapshot())
    assert str(excinfo.value) == "the provided network does not match the current range"


def test_ipv6_bitmap_cap_112():
    ipa = IPAllocator("2001:db8:1::/112", seed=0)
    assert ipa.free() == 65535
    for _ in range(264):
        ipa.allocate_next()
    assert ipa.free() == 65271
    huge = IPAllocator("fd00::/64")
    assert (huge.free(), huge.offset) == (65535, 256)
    assert huge.first == "fd00::1"


# =========================================================== allocate_cluster


def test_cluster_ip_allocated_in_dynamic_band():
    result = allocate_cluster(Cluster(services=(svc("web"),)), seed=1)
    web = result.cluster.services[0]
    assert len(web.cluster_ips) == 1
    assert web.ip_families == ("IPv4",) and web.ip_family_policy == "SingleStack"
    # 10.96.0.0/12 has a 256-address static band: 10.96.0.1 .. 10.96.1.0.
    address = ipaddress.ip_address(web.cluster_ips[0])
    assert ipaddress.ip_address("10.96.1.0") < address < ipaddress.ip_address("10.111.255.255")
    assert result.services["default/web"].filled == ("spec.clusterIPs[0]",)


def test_given_cluster_ip_kept_and_conflict_reported():
    a = svc("a", cluster_ips=("10.96.0.10",), index=1)
    b = svc("b", cluster_ips=("10.96.0.10",), index=2)
    with pytest.raises(InputError) as excinfo:
        allocate_cluster(Cluster(services=(b, a)))
    assert problems_of(excinfo) == [
        'svc.yaml: document 2: Service default/b: spec.clusterIPs: Invalid value: []string{"10.96.0.10"}: '
        "failed to allocate IP 10.96.0.10: provided IP is already allocated"
    ]


def test_cluster_ip_out_of_range():
    """Out of the default range, the error says where the cluster's range can come from."""
    with pytest.raises(InputError) as excinfo:
        allocate_cluster(Cluster(services=(svc("a", cluster_ips=("192.168.0.1",)),)))
    assert problems_of(excinfo)[0].endswith(
        'spec.clusterIPs: Invalid value: []string{"192.168.0.1"}: failed to allocate IP 192.168.0.1: '
        "the provided IP (192.168.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/12"
        " (the range is the default 10.96.0.0/12: give the cluster's range with --service-cluster-ip-range, "
        "or include its ServiceCIDR objects (kubectl get servicecidrs -o yaml) or kubeadm ClusterConfiguration)"
    )
    # a range given explicitly gets no hint
    with pytest.raises(InputError) as excinfo:
        allocate_cluster(Cluster(services=(svc("a", cluster_ips=("192.168.0.1",)),)), service_cidrs="10.96.0.0/12")
    assert problems_of(excinfo)[0].endswith("The range of valid IPs is 10.96.0.0/12")


def test_given_values_are_registered_before_dynamic_allocation():
    """A dynamic allocation never steals a value a later Service names (tiny range: one free port)."""
    early = nodeport("a-dynamic")
    late = nodeport("z-explicit", 30000)
    result = allocate_cluster(Cluster(services=(early, late)), node_port_range="30000-30001", seed=0)
    by_name = {s.name: s.ports[0].node_port for s in result.cluster.services}
    assert by_name == {"a-dynamic": 30001, "z-explicit": 30000}


def test_node_port_conflict_later_service_gets_the_error():
    first = nodeport("minio", 30009, index=3)
    second = nodeport("aaa", 30009, index=7)  # sorts first: it keeps the port
    with pytest.raises(InputError) as excinfo:
        allocate_cluster(Cluster(services=(first, second)))
    (problem,) = excinfo.value.problems
    assert (problem.source, problem.index, problem.obj, problem.field) == (
        "svc.yaml", 3, "Service default/minio", "spec.ports[0].nodePort",
    )
    assert str(problem) == (
        "svc.yaml: document 3: Service default/minio: spec.ports[0].nodePort: "
        "Invalid value: 30009: provided port is already allocated"
    )


def test_node_port_out_of_range():
    with pytest.raises(InputError) as excinfo:
        allocate_cluster(Cluster(services=(nodeport("web", None, 40000),)))
    assert problems_of(excinfo) == [
        "svc.yaml: document 1: Service default/web: spec.ports[1].nodePort: Invalid value: 40000: "
        "provided port is not in the valid range. The range of valid ports is 30000-32767"
    ]


def test_all_problems_collected_in_input_order():
    services = (svc("d", cluster_ips=("1.2.3.4",)), nodeport("c", 99), nodeport("b", 30009), nodeport("a", 30009))
    with pytest.raises(InputError) as excinfo:
        allocate_cluster(Cluster(services=services))
    assert [p.obj for p in excinfo.value.problems] == ["Service default/d", "Service default/c", "Service default/b"]


def test_node_ports_in_dynamic_band_and_distinct():
    services = tuple(nodeport(f"s{i}", None, None) for i in range(20))
    result = allocate_cluster(Cluster(services=services), seed=3)
    ports = [p.node_port for s in result.cluster.services for p in s.ports]
    assert len(set(ports)) == 40
    assert all(30086 <= p <= 32767 for p in ports)


def test_tcp_and_udp_on_same_port_share_a_node_port():
    dns = svc("dns", "NodePort", ports=(ServicePort(53, "UDP", "dns"), ServicePort(53, "TCP", "dns-tcp"),
                                        ServicePort(9153, "TCP", "metrics")))
    result = allocate_cluster(Cluster(services=(dns,)), seed=5)
    udp, tcp, metrics = result.cluster.services[0].ports
    assert udp.node_port == tcp.node_port is not None
    assert metrics.node_port not in (None, udp.node_port)
    assert result.services["default/dns"].node_ports == (udp.node_port, tcp.node_port, metrics.node_port)


def test_user_node_port_on_one_protocol_is_used_for_both():
    dns = svc("dns", "NodePort", ports=(ServicePort(53, "UDP", "dns"), ServicePort(53, "TCP", "dns-tcp", node_port=30053)))
    result = allocate_cluster(Cluster(services=(dns,)))
    assert [p.node_port for p in result.cluster.services[0].ports] == [30053, 30053]
    assert result.services["default/dns"].filled == ("spec.clusterIPs[0]", "spec.ports[0].nodePort")


def test_different_explicit_node_ports_for_tcp_and_udp_are_both_honoured():
    dns = svc("dns", "NodePort", ports=(ServicePort(53, "UDP", "dns", node_port=30053),
                                        ServicePort(53, "TCP", "dns-tcp", node_port=30054)))
    result = allocate_cluster(Cluster(services=(dns,)))
    assert [p.node_port for p in result.cluster.services[0].ports] == [30053, 30054]


def test_one_pool_for_all_protocols():
    tcp = svc("a", "NodePort", ports=(ServicePort(80, "TCP", "", node_port=30053),))
    udp = svc("b", "NodePort", ports=(ServicePort(53, "UDP", "", node_port=30053),))
    with pytest.raises(InputError) as excinfo:
        allocate_cluster(Cluster(services=(tcp, udp)))
    assert problems_of(excinfo)[0].endswith("Invalid value: 30053: provided port is already allocated")


def test_allocate_load_balancer_node_ports_false():
    ports = (ServicePort(80, "TCP", "http"), ServicePort(443, "TCP", "https", node_port=30443))
    lb = svc("lb", "LoadBalancer", ports=ports, allocate_load_balancer_node_ports=False)
    result = allocate_cluster(Cluster(services=(lb,)))
    assert [p.node_port for p in result.cluster.services[0].ports] == [None, 30443]
    assert result.state.services["default/lb"].node_ports[0].node_port == 30443


def test_load_balancer_gets_node_ports_by_default_and_cluster_ip_gets_none():
    lb = svc("lb", "LoadBalancer")
    plain = svc("plain")
    result = allocate_cluster(Cluster(services=(lb, plain)), seed=2)
    by_name = {s.name: s for s in result.cluster.services}
    assert by_name["lb"].ports[0].node_port is not None
    assert by_name["plain"].ports[0].node_port is None
    assert by_name["lb"].health_check_node_port is None


def test_health_check_node_port_for_local_load_balancer():
    lb = svc("lb", "LoadBalancer", external_traffic_policy="Local",
             ports=(ServicePort(80, "TCP", "http"), ServicePort(443, "TCP", "https")))
    np_local = svc("np", "NodePort", external_traffic_policy="Local")
    result = allocate_cluster(Cluster(services=(lb, np_local)), node_port_range="30000-30199", seed=8)
    by_name = {s.name: s for s in result.cluster.services}
    hc = by_name["lb"].health_check_node_port
    node_ports = {p.node_port for p in by_name["lb"].ports}
    assert hc is not None and 30016 <= hc <= 30199 and hc not in node_ports
    assert by_name["np"].health_check_node_port is None
    assert "spec.healthCheckNodePort" in result.services["default/lb"].filled


def test_health_check_node_port_even_without_lb_node_ports():
    lb = svc("lb", "LoadBalancer", external_traffic_policy="Local", allocate_load_balancer_node_ports=False)
    result = allocate_cluster(Cluster(services=(lb,)), seed=1)
    out = result.cluster.services[0]
    assert out.ports[0].node_port is None and out.health_check_node_port is not None


def test_requested_health_check_node_port():
    lb = svc("lb", "LoadBalancer", external_traffic_policy="Local", health_check_node_port=31000)
    result = allocate_cluster(Cluster(services=(lb,)))
    assert result.cluster.services[0].health_check_node_port == 31000
    clash = nodeport("a", 31000)
    with pytest.raises(InputError) as excinfo:
        allocate_cluster(Cluster(services=(clash, lb)))
    assert problems_of(excinfo) == [
        "svc.yaml: document 1: Service default/lb: spec.healthCheckNodePort: "
        "failed to allocate requested HealthCheck NodePort 31000: provided port is already allocated"
    ]


def test_node_port_range_full():
    services = tuple(nodeport(f"s{i}") for i in range(3))
    with pytest.raises(InputError) as excinfo:
        allocate_cluster(Cluster(services=services), node_port_range="30000-30001", seed=0)
    assert problems_of(excinfo) == [
        "svc.yaml: document 1: Service default/s2: spec.ports[0].nodePort: failed to allocate a nodePort: range is full"
    ]


def test_service_ip_range_full():
    services = tuple(svc(f"s{i}") for i in range(3))
    with pytest.raises(InputError) as excinfo:
        allocate_cluster(Cluster(services=services), service_cidrs=("192.168.0.0/30",), seed=0)
    assert problems_of(excinfo) == [
        "svc.yaml: document 1: Service default/s2: spec.clusterIPs[0]: failed to allocate a serviceIP: range is full"
    ]


def test_health_check_range_full():
    lb = svc("lb", "LoadBalancer", external_traffic_policy="Local")
    with pytest.raises(InputError) as excinfo:
        allocate_cluster(Cluster(services=(lb,)), node_port_range="30000", seed=0)
    assert problems_of(excinfo)[-1].endswith(
        "spec.healthCheckNodePort: failed to allocate a HealthCheck NodePort 0: range is full"
    )


# ------------------------------------------------------------- IP families

DUAL = ("10.96.0.0/16", "fd00:10:96::/112")


def test_single_stack_default_family_is_the_first_cidr():
    v6_first = allocate_cluster(Cluster(services=(svc("a"),)), service_cidrs=tuple(reversed(DUAL)), seed=0)
    out = v6_first.cluster.services[0]
    assert out.ip_families == ("IPv6",) and out.cluster_ips[0].startswith("fd00:10:96::")


def test_prefer_dual_stack_gets_both_families():
    a = svc("a", ip_family_policy="PreferDualStack")
    b = svc("b", ip_family_policy="RequireDualStack", ip_families=("IPv6",))
    result = allocate_cluster(Cluster(services=(a, b)), service_cidrs=DUAL, seed=0)
    out = {s.name: s for s in result.cluster.services}
    assert out["a"].ip_families == ("IPv4", "IPv6")
    assert out["a"].cluster_ips[0].startswith("10.96.") and out["a"].cluster_ips[1].startswith("fd00:10:96::")
    assert out["b"].ip_families == ("IPv6", "IPv4")
    assert out["b"].cluster_ips[0].startswith("fd00:10:96::") and out["b"].cluster_ips[1].startswith("10.96.")


def test_prefer_dual_stack_on_single_stack_cluster_gets_one():
    result = allocate_cluster(Cluster(services=(svc("a", ip_family_policy="PreferDualStack"),)), seed=0)
    assert result.cluster.services[0].ip_families == ("IPv4",)
    assert len(result.cluster.services[0].cluster_ips) == 1


def test_require_dual_stack_on_single_stack_cluster():
    with pytest.raises(InputError) as excinfo:
        allocate_cluster(Cluster(services=(svc("a", ip_family_policy="RequireDualStack"),)))
    assert problems_of(excinfo) == [
        'svc.yaml: document 1: Service default/a: spec.ipFamilyPolicy: Invalid value: "RequireDualStack": '
        "this cluster is not configured for dual-stack services"
    ]


def test_family_not_configured():
    with pytest.raises(InputError) as excinfo:
        allocate_cluster(Cluster(services=(svc("a", ip_families=("IPv6",)),)))
    assert problems_of(excinfo)[0].endswith('spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster')
    with pytest.raises(InputError) as excinfo:
        allocate_cluster(Cluster(services=(svc("a", cluster_ips=("fd00::10",)),)))
    assert problems_of(excinfo)[0].endswith(
        'spec.clusterIPs[0]: Invalid value: []string{"fd00::10"}: IPv6 is not configured on this cluster'
    )


def test_given_primary_ip_plus_allocated_secondary():
    a = svc("a", cluster_ips=("10.96.0.10",), ip_family_policy="PreferDualStack")
    result = allocate_cluster(Cluster(services=(a,)), service_cidrs=DUAL, seed=0)
    out = result.cluster.services[0]
    assert out.cluster_ips[0] == "10.96.0.10" and out.cluster_ips[1].startswith("fd00:10:96::")
    assert result.services["default/a"].filled == ("spec.clusterIPs[1]",)


def test_headless_and_external_name_get_no_ips():
    headless = svc("headless", cluster_ips=("None",))
    selectorless = Service("default", "bare", cluster_ips=("None",))
    external = Service("default", "ext", type="ExternalName", external_name="example.com")
    result = allocate_cluster(Cluster(services=(headless, selectorless, external)), service_cidrs=DUAL)
    out = {s.name: s for s in result.cluster.services}
    assert out["headless"].cluster_ips == ("None",) and out["headless"].ip_families == ("IPv4",)
    assert out["bare"].ip_family_policy == "RequireDualStack" and out["bare"].ip_families == ("IPv4", "IPv6")
    assert out["ext"] == external
    assert "default/headless" not in result.state.services and "default/ext" not in result.state.services


# ------------------------------------------------------------------ ranges


def test_invalid_ranges_are_usage_errors():
    cluster = Cluster(services=(svc("a"),))
    with pytest.raises(UsageError, match="invalid service-node-port-range: end port cannot be less than start port"):
        allocate_cluster(cluster, node_port_range="32767-30000")
    with pytest.raises(UsageError, match="not a valid CIDR"):
        allocate_cluster(cluster, service_cidrs=("10.96.0.0/40",))
    with pytest.raises(UsageError, match="different IP families"):
        allocate_cluster(cluster, service_cidrs=("10.96.0.0/16", "10.97.0.0/16"))


def test_comma_separated_cidrs_accepted():
    result = allocate_cluster(Cluster(services=(svc("a", ip_family_policy="RequireDualStack"),)),
                              service_cidrs=("10.96.0.0/16,fd00::/112",), seed=0)
    assert result.cluster.services[0].ip_families == ("IPv4", "IPv6")


# ------------------------------------------------------------- determinism


def test_seed_reproducibility_and_input_order_independence():
    services = tuple(nodeport(f"s{i}", None, None, ip_family_policy="PreferDualStack") for i in range(10))
    one = allocate_cluster(Cluster(services=services), service_cidrs=DUAL, seed=99)
    two = allocate_cluster(Cluster(services=tuple(reversed(services))), service_cidrs=DUAL, seed=99)
    assert one.services == two.services
    other = allocate_cluster(Cluster(services=services), service_cidrs=DUAL, seed=100)
    assert one.services != other.services


def test_input_order_of_services_is_kept():
    services = (svc("b"), svc("a"))
    result = allocate_cluster(Cluster(services=services), seed=0)
    assert [s.name for s in result.cluster.services] == ["b", "a"]


# =================================================================== state


def test_state_keeps_values_across_runs(tmp_path):
    services = (nodeport("web", None, None), svc("lb", "LoadBalancer", external_traffic_policy="Local"))
    first = allocate_cluster(Cluster(services=services), seed=1)
    path = tmp_path / "alloc.json"
    first.state.save(str(path))
    loaded = AllocationState.load(str(path))
    assert loaded == first.state and loaded.path == str(path)
    second = allocate_cluster(Cluster(services=services), state=loaded, seed=2)
    assert second.services == first.services
    assert second.state == first.state


def test_state_json_shape():
    first = allocate_cluster(Cluster(services=(nodeport("web"),)), seed=1)
    data = json.loads(json.dumps(first.state.to_json()))
    assert data["kind"] == "AllocationState" and data["version"] == 1
    assert data["serviceNodePortRange"] == "30000-32767"
    assert data["serviceClusterIPRange"] == ["10.96.0.0/12"]
    entry = data["services"]["default/web"]
    assert entry["clusterIPs"] == list(first.cluster.services[0].cluster_ips)
    assert entry["nodePorts"] == [
        {"name": "p0", "port": 80, "protocol": "TCP", "nodePort": first.cluster.services[0].ports[0].node_port}
    ]
    assert AllocationState.from_json(data) == first.state


def test_state_frees_values_of_removed_services():
    first = allocate_cluster(Cluster(services=(nodeport("old"),)), node_port_range="30000-30000",
                             service_cidrs=("192.168.0.0/30",), seed=0)
    assert first.cluster.services[0].ports[0].node_port == 30000
    with pytest.raises(InputError):
        allocate_cluster(Cluster(services=(nodeport("old"), nodeport("new"))), node_port_range="30000-30000",
                         service_cidrs=("192.168.0.0/30",), state=first.state)
    second = allocate_cluster(Cluster(services=(nodeport("new"),)), node_port_range="30000-30000",
                              service_cidrs=("192.168.0.0/30",), state=first.state, seed=0)
    assert second.cluster.services[0].ports[0].node_port == 30000
    assert list(second.state.services) == ["default/new"]


def test_held_values_win_over_newcomers():
    first = allocate_cluster(Cluster(services=(nodeport("zeta"),)), seed=3)
    held_port = first.cluster.services[0].ports[0].node_port
    newcomer = nodeport("alpha", held_port, index=5)
    with pytest.raises(InputError) as excinfo:
        allocate_cluster(Cluster(services=(nodeport("zeta"), newcomer)), state=first.state)
    (problem,) = excinfo.value.problems
    assert problem.obj == "Service default/alpha"
    assert problem.message == f"Invalid value: {held_port}: provided port is already allocated"


def test_state_input_values_override_held_ones():
    first = allocate_cluster(Cluster(services=(nodeport("web"),)), seed=3)
    second = allocate_cluster(Cluster(services=(nodeport("web", 30500),)), state=first.state)
    assert second.cluster.services[0].ports[0].node_port == 30500
    assert second.state.services["default/web"].node_ports[0].node_port == 30500
    assert second.services["default/web"].cluster_ips == first.services["default/web"].cluster_ips


def test_state_node_ports_follow_port_names():
    ports = (ServicePort(80, "TCP", "http"), ServicePort(443, "TCP", "https"))
    first = allocate_cluster(Cluster(services=(svc("web", "NodePort", ports=ports),)), seed=4)
    held = {h.name: h.node_port for h in first.state.services["default/web"].node_ports}
    reordered = (ServicePort(8443, "TCP", "https"), ServicePort(80, "TCP", "http"), ServicePort(9000, "TCP", "new"))
    second = allocate_cluster(Cluster(services=(svc("web", "NodePort", ports=reordered),)), state=first.state, seed=4)
    out = second.cluster.services[0].ports
    assert (out[0].node_port, out[1].node_port) == (held["https"], held["http"])
    assert out[2].node_port not in held.values()


def test_state_releases_values_a_service_no_longer_needs():
    first = allocate_cluster(Cluster(services=(nodeport("web"),)), seed=1)
    second = allocate_cluster(Cluster(services=(svc("web"),)), state=first.state, seed=1)
    assert second.cluster.services[0].ports[0].node_port is None
    assert second.state.services["default/web"].node_ports == ()


def test_state_range_mismatch(tmp_path):
    path = tmp_path / "x.json"
    first = allocate_cluster(Cluster(services=(nodeport("web"),)), seed=1)
    first.state.save(str(path))
    state = AllocationState.load(str(path))
    with pytest.raises(UsageError) as excinfo:
        allocate_cluster(Cluster(), node_port_range="31000-31999", state=state)
    assert str(excinfo.value) == (
        f"state file {path} was made for service-node-port-range 30000-32767, not 31000-31999; "
        "remove it or use the same range"
    )
    with pytest.raises(UsageError) as excinfo:
        allocate_cluster(Cluster(), service_cidrs=("10.0.0.0/16",), state=state)
    assert str(excinfo.value) == (
        f"state file {path} was made for service-cluster-ip-range 10.96.0.0/12, not 10.0.0.0/16; "
        "remove it or use the same range"
    )


def test_state_load_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(UsageError, match=r"state file .*bad.json: line 1, column 2: cannot parse JSON"):
        AllocationState.load(str(bad))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"kind": "AllocationState", "version": 1, "serviceNodePortRange": "30000-32767",
                                 "serviceClusterIPRange": ["10.96.0.0/12"], "services": {"a/b": {"clusterIPs": [7]}}}))
    with pytest.raises(UsageError, match="clusterIPs entry must be a JSON string"):
        AllocationState.load(str(wrong))
    with pytest.raises(UsageError, match="cannot read state file"):
        AllocationState.load(str(tmp_path / "missing.json"))


# =============================================================== documents


def test_fill_documents():
    svc_obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"type": "NodePort", "selector": {"app": "web"},
                        "ports": [{"name": "p0", "port": 80}]}}
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"}, "data": {"a": "b"}}
    docs = [Document("svc.yaml", 1, svc_obj), Document("svc.yaml", 2, other)]
    cluster = Cluster(services=(nodeport("web", index=1),))
    result = allocate_cluster(cluster, seed=0)
    out = fill_documents(docs, result)
    web = result.cluster.services[0]
    assert out[0]["spec"]["clusterIP"] == web.cluster_ips[0]
    assert out[0]["spec"]["clusterIPs"] == list(web.cluster_ips)
    assert out[0]["spec"]["ipFamilies"] == ["IPv4"]
    assert out[0]["spec"]["ipFamilyPolicy"] == "SingleStack"
    assert out[0]["spec"]["ports"][0]["nodePort"] == web.ports[0].node_port
    assert "healthCheckNodePort" not in out[0]["spec"]
    assert out[1] is other  # not a Service: printed as given, not copied (fill_documents never changes it)
    assert out[0] is not svc_obj and out[0]["metadata"] is svc_obj["metadata"]  # only the patched parts are new
    assert "clusterIP" not in svc_obj["spec"] and "nodePort" not in svc_obj["spec"]["ports"][0]  # input untouched


def test_fill_documents_health_check_and_name_fallback():
    obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb", "namespace": "prod"},
           "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}}
    lb = Service("prod", "lb", type="LoadBalancer", external_traffic_policy="Local", ports=(ServicePort(80),))
    result = allocate_cluster(Cluster(services=(lb,)), seed=0)
    (out,) = fill_documents([Document("other.yaml", 4, obj)], result)
    assert out["spec"]["healthCheckNodePort"] == result.cluster.services[0].health_check_node_port
    assert out["spec"]["ports"][0]["nodePort"] == result.cluster.services[0].ports[0].node_port


# ======================================================== property tests

RANGE = "30000-30199"  # 200 ports, static band 30000-30015


@st.composite
def node_port_services(draw):
    """Up to 12 NodePort/LoadBalancer Services, some nodePorts given (never twice), within capacity."""
    count = draw(st.integers(1, 12))
    pool = iter(draw(st.permutations(range(30000, 30200))))
    services = []
    for i in range(count):
        type_ = draw(st.sampled_from(["NodePort", "LoadBalancer"]))
        numbers = draw(st.lists(st.sampled_from([53, 80, 443, 8080]), min_size=1, max_size=3, unique=True))
        ports = []
        for j, number in enumerate(numbers):
            given_port = next(pool) if draw(st.booleans()) else None
            protocols = ["TCP", "UDP"] if number == 53 else ["TCP"]
            for protocol in protocols:
                ports.append(ServicePort(number, protocol, f"p{j}-{protocol.lower()}", node_port=given_port))
        etp = draw(st.sampled_from(["Cluster", "Local"]))
        services.append(svc(f"s{i:02d}", type_, ports=ports, external_traffic_policy=etp,
                            ip_family_policy=draw(st.sampled_from([None, "PreferDualStack"]))))
    return services


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(services=node_port_services(), seed=st.integers(0, 2**32))
def test_property_no_shared_node_ports_or_cluster_ips(services, seed):
    result = allocate_cluster(Cluster(services=tuple(services)), node_port_range=RANGE,
                              service_cidrs=("10.96.0.0/24", "fd00::/120"), seed=seed)
    owners: dict[int, str] = {}
    ips: dict[str, str] = {}
    for out in result.cluster.services:
        mine = {p.node_port for p in out.ports if p.node_port is not None}
        if out.health_check_node_port is not None:
            assert out.health_check_node_port not in mine
            mine.add(out.health_check_node_port)
        for port in mine:
            assert owners.setdefault(port, out.name) == out.name
        for ip in out.cluster_ips:
            assert ips.setdefault(ip, out.name) == out.name
        by_number: dict[int, set] = {}
        for p in out.ports:
            by_number.setdefault(p.port, set()).add(p.node_port)
        assert all(len(v) == 1 for v in by_number.values())  # TCP+UDP of one port share


@settings(max_examples=50, deadline=None)
@given(count=st.integers(1, 60), seed=st.integers(0, 2**32))
def test_property_static_band_untouched_while_dynamic_band_has_room(count, seed):
    services = tuple(nodeport(f"s{i:02d}", None, None) for i in range(count))
    cidr = "10.96.0.0/24"  # 254 usable, 16 static
    result = allocate_cluster(Cluster(services=services), node_port_range=RANGE, service_cidrs=(cidr,), seed=seed)
    for out in result.cluster.services:
        assert all(p.node_port >= 30016 for p in out.ports)  # 2 * 60 = 120 <= 184 dynamic ports
        assert int(out.cluster_ips[0].rsplit(".", 1)[1]) > 16


def _reference_allocate_next(bits: list[bool], offset: int, rng: random.Random):
    """The upstream scan written the plain way: probe the upper band from a random start, then the lower."""
    size = len(bits)
    if all(bits):
        return None
    upper = size - offset
    start = rng.randrange(upper)
    for i in range(upper):
        at = offset + (start + i) % upper
        if not bits[at]:
            bits[at] = True
            return at
    start = rng.randrange(offset)
    for i in range(offset):
        at = (start + i) % offset
        if not bits[at]:
            bits[at] = True
            return at
    return None


@settings(max_examples=50, deadline=None)
@given(size=st.integers(17, 300), taken=st.sets(st.integers(0, 299)), seed=st.integers(0, 2**32))
def test_property_bitmap_matches_the_upstream_scan(size, taken, seed):
    offset = port_range_offset(size)
    bitmap = RangeBitmap(size, offset, random.Random(seed))
    reference = [False] * size
    for slot in sorted(t for t in taken if t < size):
        bitmap.allocate(slot)
        reference[slot] = True
    reference_rng = random.Random(seed)
    for _ in range(size + 1):
        assert bitmap.allocate_next() == _reference_allocate_next(reference, offset, reference_rng)


# ============================================================ end to end

MANIFESTS = """\
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  type: NodePort
  selector: {k8s-app: dns}
  ipFamilyPolicy: PreferDualStack
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: lb}
  spec:
    type: LoadBalancer
    externalTrafficPolicy: Local
    selector: {app: lb}
    ports: [{port: 80, targetPort: 8080}]
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: untouched}
  data: {key: value}
"""


def test_fill_documents_round_trips_through_the_parser():
    """Filled manifests validate, and allocating them again changes nothing."""
    from dataplane.input.cluster import parse_cluster
    from dataplane.input.loader import documents_from_text

    docs, problems = documents_from_text(MANIFESTS, "in.yaml")
    assert not problems and [(d.unit, d.index) for d in docs] == [
        ("document", 1), ("item 1 of the List in document", 2), ("item 2 of the List in document", 2)]
    cidrs = ("10.96.0.0/12", "fd00:10:96::/112")
    result = allocate_cluster(parse_cluster(docs).cluster, service_cidrs=cidrs, seed=1)
    filled = fill_documents(docs, result)
    dns, lb, config = filled
    assert dns["spec"]["ports"][0]["nodePort"] == dns["spec"]["ports"][1]["nodePort"]
    assert dns["spec"]["ipFamilies"] == ["IPv4", "IPv6"] and len(dns["spec"]["clusterIPs"]) == 2
    assert dns["spec"]["clusterIP"] == dns["spec"]["clusterIPs"][0]
    assert lb["spec"]["healthCheckNodePort"] == result.services["default/lb"].health_check_node_port
    assert config == docs[2].obj
    again_docs = [Document("out.yaml", i + 1, obj) for i, obj in enumerate(filled)]
    again = allocate_cluster(parse_cluster(again_docs).cluster, service_cidrs=cidrs, seed=2)
    for key, record in result.services.items():
        assert again.services[key].filled == ()
        assert replace(again.services[key], filled=record.filled) == record


def test_state_save_errors_and_new(tmp_path):
    state = AllocationState.new("30000-30099", ["10.96.0.0/16"])
    assert state.to_json()["serviceNodePortRange"] == "30000-30099" and state.services == {}
    with pytest.raises(UsageError, match="cannot write state file"):
        state.save(str(tmp_path / "missing-dir" / "s.json"))
    with pytest.raises(UsageError, match="no path"):
        state.save()
    assert list(tmp_path.iterdir()) == []
