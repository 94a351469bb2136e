"""The node-local plan takes kube-proxy's decisions (pkg/proxy/topology.go, proxier.go)."""
from __future__ import annotations

import pytest

from dataplane.errors import UsageError
from dataplane.model import (
    Cluster,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    LoadBalancerIngress,
    Node,
    NodeAddress,
    ProxyConfig,
    Service,
    ServicePort,
)
from dataplane.plan import LARGE_CLUSTER_ENDPOINTS, ExternalStep, LocalDetector, build_plan, large_cluster

NODE = Node("node-a", (NodeAddress("InternalIP", "192.168.0.2"), NodeAddress("InternalIP", "fd00::2")),
            labels=(("topology.kubernetes.io/zone", "zone-a"),))
CONFIG = ProxyConfig(cluster_cidrs=("10.0.0.0/8",))


def ep(ip: str, node: str | None = "node-a", ready=True, serving=None, terminating=False, zones=None) -> Endpoint:
    return Endpoint((ip,), EndpointConditions(ready, ready if serving is None else serving, terminating),
                    node_name=node, hints_for_zones=zones)


def svc(name="svc", **kw) -> Service:
    kw.setdefault("cluster_ips", ("172.30.0.41",))
    kw.setdefault("ports", (ServicePort(80, "TCP", "p80", node_port=kw.pop("node_port", None)),))
    return Service("ns", name, **kw)


def slice_(*eps: Endpoint, name="s1", svc_name="svc", port=8080, port_name="p80", proto="TCP", family="IPv4"):
    return EndpointSlice("ns", name, svc_name, family, tuple(eps), (EndpointPort(port, proto, port_name),))


def plan_of(services, slices=(), config=CONFIG, mode="iptables", family="ipv4", node=NODE):
    cluster = Cluster(services=tuple(services), endpoint_slices=tuple(slices), nodes=(node,), proxy_config=config)
    return build_plan(cluster, "node-a", family=family, mode=mode)


def only(plan):
    assert len(plan.services) == 1
    return plan.services[0]


def addrs(eps):
    return [e.address for e in eps]


def test_unknown_node_is_a_usage_error():
    with pytest.raises(UsageError, match="node 'nope' is not in the input"):
        build_plan(Cluster(nodes=(NODE,)), "nope")


@pytest.mark.parametrize("service", [
    svc(type="ExternalName", external_name="example.com"),
    svc(cluster_ips=("None",)),
    svc(cluster_ips=()),
    svc(labels=(("service.kubernetes.io/service-proxy-name", "other"),)),
    svc(labels=(("service.kubernetes.io/headless", ""),)),
])
def test_services_kube_proxy_skips_get_no_rules(service):
    assert plan_of([service], [slice_(ep("10.1.0.1"))]).services == ()


def test_ready_endpoints_sorted_by_string_and_port_from_slice():
    s = slice_(ep("10.1.0.2"), ep("10.1.0.10"), ep("10.1.0.3", ready=False))
    p = only(plan_of([svc()], [s]))
    assert addrs(p.cluster_endpoints) == ["10.1.0.10:8080", "10.1.0.2:8080"]
    assert p.internal_chain == "cluster" and p.internal_filter is None and p.has_endpoints


def test_slice_port_matched_by_name_and_protocol():
    s = EndpointSlice("ns", "s1", "svc", "IPv4", (ep("10.1.0.1"),),
                      (EndpointPort(9999, "UDP", "p80"), EndpointPort(7777, "TCP", "other")))
    p = only(plan_of([svc()], [s]))
    assert p.cluster_endpoints == () and p.internal_filter == "reject"


def test_duplicate_endpoints_across_slices_counted_once_ready_wins():
    a = slice_(ep("10.1.0.1", ready=False), name="a")
    b = slice_(ep("10.1.0.1"), ep("10.1.0.2"), name="b")
    p = only(plan_of([svc()], [a, b]))
    assert addrs(p.cluster_endpoints) == ["10.1.0.1:8080", "10.1.0.2:8080"]


def test_no_endpoints_rejects_every_destination():
    p = only(plan_of([svc(type="NodePort", node_port=30001, external_ips=("192.168.99.1",))]))
    assert (p.internal_filter, p.external_filter) == ("reject", "reject")
    assert p.internal_chain is None and not p.external_forward and not p.uses_external_chain


def test_serving_terminating_fallback_when_none_ready():
    s = slice_(ep("10.1.0.1", ready=False, serving=True, terminating=True),
               ep("10.1.0.2", ready=False, serving=False, terminating=True))
    p = only(plan_of([svc()], [s]))
    assert addrs(p.cluster_endpoints) == ["10.1.0.1:8080"]


def test_terminating_not_used_while_a_ready_endpoint_exists():
    s = slice_(ep("10.1.0.1", ready=False, serving=True, terminating=True), ep("10.1.0.2"))
    assert addrs(only(plan_of([svc()], [s])).cluster_endpoints) == ["10.1.0.2:8080"]


def test_external_traffic_policy_cluster_masquerades_everything():
    p = only(plan_of([svc(type="NodePort", node_port=30001)], [slice_(ep("10.1.0.1"))]))
    assert p.external_steps == (ExternalStep("any", "masquerade"), ExternalStep("any", "cluster"))


def test_external_traffic_policy_local_with_local_endpoint():
    s = slice_(ep("10.1.0.1"), ep("10.1.0.2", node="node-b"))
    p = only(plan_of([svc(type="NodePort", node_port=30001, external_traffic_policy="Local")], [s]))
    assert addrs(p.local_endpoints) == ["10.1.0.1:8080"]
    assert addrs(p.cluster_endpoints) == ["10.1.0.1:8080", "10.1.0.2:8080"]
    assert p.external_steps == (
        ExternalStep("pod", "cluster"), ExternalStep("host", "masquerade"),
        ExternalStep("host", "cluster"), ExternalStep("any", "local"),
    )
    assert p.external_filter is None and p.internal_chain == "cluster"


def test_external_traffic_policy_local_without_local_endpoint_drops_outside_traffic():
    s = slice_(ep("10.1.0.2", node="node-b"))
    p = only(plan_of([svc(type="NodePort", node_port=30001, external_traffic_policy="Local")], [s]))
    assert p.external_filter == "drop" and p.external_forward
    assert ExternalStep("any", "local") not in p.external_steps
    assert ExternalStep("pod", "cluster") in p.external_steps


def test_no_local_detector_means_no_pod_short_circuit_and_no_clusterip_masquerade():
    s = slice_(ep("10.1.0.1"))
    plan = plan_of([svc(type="NodePort", node_port=30001, external_traffic_policy="Local")], [s],
                   config=ProxyConfig())
    assert plan.cluster_ip_masquerade == "none" and plan.local_detector.kind == "none"
    assert ExternalStep("pod", "cluster") not in only(plan).external_steps


def test_masquerade_all():
    plan = plan_of([svc()], [slice_(ep("10.1.0.1"))], config=ProxyConfig(iptables_masquerade_all=True))
    assert plan.cluster_ip_masquerade == "all"
    plan = plan_of([svc()], [slice_(ep("10.1.0.1"))], config=ProxyConfig(iptables_masquerade_all=True),
                   mode="nftables")
    assert plan.cluster_ip_masquerade == "none"  # nftables mode reads nftables.masqueradeAll


def test_internal_traffic_policy_local():
    local = slice_(ep("10.1.0.1"), ep("10.1.0.2", node="node-b"))
    p = only(plan_of([svc(internal_traffic_policy="Local")], [local]))
    assert p.internal_chain == "local" and addrs(p.local_endpoints) == ["10.1.0.1:8080"]
    assert not p.uses_cluster_chain
    remote = slice_(ep("10.1.0.2", node="node-b"))
    p = only(plan_of([svc(internal_traffic_policy="Local")], [remote]))
    assert p.internal_chain is None and p.internal_filter == "drop"


def test_topology_hints_used_only_when_every_ready_endpoint_has_hints():
    hinted = slice_(ep("10.1.0.1", zones=("zone-a",)), ep("10.1.0.2", zones=("zone-b",)))
    assert addrs(only(plan_of([svc()], [hinted])).cluster_endpoints) == ["10.1.0.1:8080"]
    partly = slice_(ep("10.1.0.1", zones=("zone-a",)), ep("10.1.0.2"))
    assert len(only(plan_of([svc()], [partly])).cluster_endpoints) == 2
    elsewhere = slice_(ep("10.1.0.1", zones=("zone-c",)), ep("10.1.0.2", zones=("zone-b",)))
    assert len(only(plan_of([svc()], [elsewhere])).cluster_endpoints) == 2


def test_nodeport_addresses_per_mode():
    iptables = plan_of([svc()], mode="iptables")
    assert iptables.nodeports.match_all and iptables.nodeports.localhost
    nft = plan_of([svc()], mode="nftables")
    assert not nft.nodeports.match_all and nft.nodeports.ips == ("192.168.0.2",)
    cidr = plan_of([svc()], config=ProxyConfig(node_port_addresses=("192.168.0.0/16",)), mode="iptables")
    assert cidr.nodeports.ips == ("192.168.0.2",) and not cidr.nodeports.localhost
    v6 = plan_of([svc(cluster_ips=("fd00::41",))], family="ipv6", mode="iptables")
    assert v6.nodeports.match_all and not v6.nodeports.localhost
    assert ("net.ipv4.conf.all.route_localnet", "1") in iptables.sysctls
    assert ("net.ipv4.conf.all.route_localnet", "1") not in nft.sysctls


def test_nodeport_loopback_exclusion_and_filter_scope_per_mode():
    iptables = plan_of([svc()], mode="iptables").nodeports
    assert iptables.excluded is None and iptables.filter_match_all  # localhost NodePorts: 127/8 takes them
    assert iptables.accepts("192.168.0.2") and iptables.accepts("127.0.0.1")
    no_localhost = plan_of([svc()], config=ProxyConfig(iptables_localhost_node_ports=False)).nodeports
    assert no_localhost.excluded == "127.0.0.0/8"
    assert no_localhost.accepts("192.168.0.2") and not no_localhost.accepts("127.0.0.1")
    assert no_localhost.filters("127.0.0.1")  # KUBE-EXTERNAL-SERVICES matches every local address
    v6 = plan_of([svc(cluster_ips=("fd00::41",))], family="ipv6", mode="iptables").nodeports
    assert v6.excluded == "::1/128" and not v6.accepts("::1") and v6.accepts("fd00::2")
    nft_all = plan_of([svc()], config=ProxyConfig(node_port_addresses=("0.0.0.0/0",)), mode="nftables").nodeports
    assert nft_all.match_all and nft_all.excluded == "127.0.0.0/8" and not nft_all.filter_match_all
    nft = plan_of([svc()], mode="nftables").nodeports  # primary: the node's InternalIP only
    assert nft.accepts("192.168.0.2") and not nft.accepts("192.168.0.9")
    assert not nft.filters("192.168.0.9")  # the no-endpoint verdicts sit behind the NodePort match
    cidr = plan_of([svc()], config=ProxyConfig(node_port_addresses=("192.168.0.0/16",))).nodeports
    assert not cidr.accepts("192.168.0.9") and cidr.filters("192.168.0.9")


@pytest.mark.parametrize("detector, src, iface, local", [
    (LocalDetector("cidr", "10.0.0.0/8"), "10.1.2.3", "", True),
    (LocalDetector("cidr", "10.0.0.0/8"), "192.168.0.1", "veth1", False),
    (LocalDetector("cidr", "10.0.0.0/8"), "fd00::1", "", False),
    (LocalDetector("interface-prefix", "veth"), "192.168.0.1", "veth12", True),
    (LocalDetector("interface-prefix", "veth"), "10.1.2.3", "", False),
    (LocalDetector("interface-prefix", "veth"), "10.1.2.3", "eth0", False),
    (LocalDetector("bridge", "cbr0"), "10.1.2.3", "cbr0", True),
    (LocalDetector("bridge", "cbr0"), "10.1.2.3", "cbr01", False),
    (LocalDetector("none"), "10.1.2.3", "veth1", False),
])
def test_local_detector_matches(detector, src, iface, local):
    assert detector.matches(src, iface) is local


def test_cluster_ip_masquerade_per_source():
    plan = plan_of([svc()], [slice_(ep("10.1.0.1"))])  # ClusterCIDR 10.0.0.0/8: off-cluster sources
    assert not plan.cluster_ip_masquerades("10.1.0.9") and plan.cluster_ip_masquerades("192.168.0.2")
    bridge = plan_of([svc()], config=ProxyConfig(detect_local_mode="BridgeInterface", bridge_interface="cbr0"))
    assert not bridge.cluster_ip_masquerades("10.1.0.9", "cbr0") and bridge.cluster_ip_masquerades("10.1.0.9")
    assert plan_of([svc()], config=ProxyConfig(iptables_masquerade_all=True)).cluster_ip_masquerades("10.1.0.9")
    assert not plan_of([svc()], config=ProxyConfig()).cluster_ip_masquerades("192.168.0.2")


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_hairpin_traffic_is_masqueraded(mode):
    p = only(plan_of([svc()], [slice_(ep("10.1.0.1"), ep("10.1.0.2"))], mode=mode))
    assert p.hairpin_masquerade
    first, second = p.cluster_endpoints
    assert p.hairpin(first, "10.1.0.1") and not p.hairpin(second, "10.1.0.1")


def test_firewall_admits_source_ranges_and_node_lb_ips():
    lb = svc(type="LoadBalancer", node_port=30001, load_balancer_ingress=(LoadBalancerIngress(ip="5.6.7.8"),),
             load_balancer_source_ranges=("192.168.0.0/16",))
    p = only(plan_of([lb], [slice_(ep("10.1.0.1"))]))
    # a range holds the node's IP: the LB IPs are allowed sources too
    assert p.firewall_admits("192.168.3.4") and p.firewall_admits("5.6.7.8")
    assert not p.firewall_admits("203.0.113.9") and not p.firewall_admits("fd00::9")
    open_ = only(plan_of([svc(type="LoadBalancer", load_balancer_ingress=(LoadBalancerIngress(ip="5.6.7.8"),))],
                         [slice_(ep("10.1.0.1"))]))
    assert not open_.firewall and open_.firewall_admits("203.0.113.9")


def test_large_cluster_threshold():
    assert not large_cluster(LARGE_CLUSTER_ENDPOINTS) and large_cluster(LARGE_CLUSTER_ENDPOINTS + 1)


def test_families_are_planned_separately():
    dual = svc(cluster_ips=("172.30.0.41", "fd00::41"), external_ips=("192.168.99.1", "2001:db8::9"))
    s4 = slice_(ep("10.1.0.1"), name="v4")
    s6 = slice_(ep("fd00:10::1"), name="v6", family="IPv6")
    p4 = only(plan_of([dual], [s4, s6]))
    p6 = only(plan_of([dual], [s4, s6], family="ipv6"))
    assert (p4.cluster_ip, p4.external_ips, addrs(p4.cluster_endpoints)) == (
        "172.30.0.41", ("192.168.99.1",), ["10.1.0.1:8080"])
    assert (p6.cluster_ip, p6.external_ips, addrs(p6.cluster_endpoints)) == (
        "fd00::41", ("2001:db8::9",), ["[fd00:10::1]:8080"])
    assert plan_of([svc()], [s4], family="ipv6").services == ()


def test_wrong_family_address_skipped_with_warning():
    s = slice_(ep("10.1.0.1"), ep("fd00::1"))
    plan = plan_of([svc()], [s])
    assert addrs(only(plan).cluster_endpoints) == ["10.1.0.1:8080"]
    assert any("fd00::1" in w for w in plan.warnings)


def test_load_balancer_ips_source_ranges_and_proxy_mode_ingress():
    lb = svc(type="LoadBalancer", node_port=30001,
             load_balancer_ingress=(LoadBalancerIngress(ip="5.6.7.8"), LoadBalancerIngress(ip="5.6.7.9", ip_mode="Proxy")),
             load_balancer_source_ranges=("192.168.0.0/16",))
    p = only(plan_of([lb], [slice_(ep("10.1.0.1"))]))
    assert p.load_balancer_ips == ("5.6.7.8",) and p.firewall and p.firewall_allows_lb_ips
    nothing = only(plan_of([lb]))
    assert not nothing.firewall  # iptables: no firewall chain without endpoints
    assert only(plan_of([lb], mode="nftables")).firewall  # nftables filters even then


def test_affinity_and_health_check_node_port():
    s = svc(type="LoadBalancer", node_port=30001, session_affinity="ClientIP", affinity_timeout_seconds=30,
            external_traffic_policy="Local", health_check_node_port=30100)
    p = only(plan_of([s], [slice_(ep("10.1.0.1"))]))
    assert p.affinity_timeout == 30 and p.health_check_node_port == 30100
    assert only(plan_of([svc(type="LoadBalancer", health_check_node_port=30100)])).health_check_node_port is None


def test_both_policies_local_still_short_circuit_to_cluster_endpoints():
    # upstream UsesClusterEndpoints: !iTP Local || externally accessible
    s = slice_(ep("10.1.0.1"), ep("10.1.0.2", node="node-b"))
    p = only(plan_of([svc(type="NodePort", node_port=30001, internal_traffic_policy="Local",
                          external_traffic_policy="Local")], [s]))
    assert p.uses_cluster_chain and addrs(p.cluster_endpoints) == ["10.1.0.1:8080", "10.1.0.2:8080"]
    assert p.internal_chain == "local" and ExternalStep("pod", "cluster") in p.external_steps


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_a_frontend_two_services_claim_goes_to_the_first(mode):
    """The API server does not keep externalIPs unique: two Services may claim 203.0.113.7:80.
    kube-proxy's iptables rules send the packets to the first; nft maps cannot hold the key
    twice, so the nftables backend keeps the first element (and the table still loads)."""
    from dataplane.compiler import render
    from dataplane.trace import Packet, trace

    a = svc("a", cluster_ips=("172.30.0.1",), external_ips=("203.0.113.7",))
    b = svc("b", cluster_ips=("172.30.0.2",), external_ips=("203.0.113.7",))
    plan = plan_of([b, a], [slice_(ep("10.1.0.1"), name="a-1", svc_name="a"),
                            slice_(ep("10.1.0.2"), name="b-1", svc_name="b")], mode=mode)
    assert plan.warnings == ("Service ns/b: 203.0.113.7:80/TCP is also a frontend of Service ns/a; its packets go to "
                             "ns/a (the first in namespace/name order)",)
    text = render(plan)
    if mode == "nftables":
        assert text.count("203.0.113.7 . tcp . 80 :") == 1
    result = trace(text, mode, Packet("192.0.2.50", "203.0.113.7", 80, "tcp"), local_ips=plan.node_ips)
    assert dict(result.endpoints) == {"10.1.0.1:8080": 1.0}
