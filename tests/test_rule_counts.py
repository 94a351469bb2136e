"""Backend.count_rules: rules, chains, sets and elements of a rendered text (the agent's metrics).

The golden numbers below were counted by hand from tests/golden/clusterip; every golden file
is also loaded into a kernel and counted there by netns_tests/test_rule_counts_kernel.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from dataplane.backends import backend_names, get_backend
from dataplane.backends.rule_counts import iptables_counts, nftables_counts
from dataplane.model import (Cluster, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, Node, NodeAddress,
                             ProxyConfig, Service, ServicePort)
from dataplane.runtime.proxier import Proxier

GOLDEN = Path(__file__).parent / "golden"
NODE = Node("n1", (NodeAddress("InternalIP", "192.0.2.1"),))


def svc(name: str, ip: str) -> Service:
    return Service("ns", name, type="ClusterIP", cluster_ips=(ip,), ports=(ServicePort(80, "TCP", "p"),))


def eps(name: str, *ips: str) -> EndpointSlice:
    return EndpointSlice("ns", f"{name}-1", name, "IPv4",
                         tuple(Endpoint((ip,), EndpointConditions(True, True, False), node_name="n1") for ip in ips),
                         (EndpointPort(8080, "TCP", "p"),))


def cluster(n: int) -> Cluster:
    """Services s0..s(n-1), two endpoints each."""
    return Cluster(services=tuple(svc(f"s{i}", f"10.96.0.{i + 1}") for i in range(n)),
                   endpoint_slices=tuple(eps(f"s{i}", f"10.244.1.{i + 1}", f"10.244.2.{i + 1}") for i in range(n)),
                   nodes=(NODE,), proxy_config=ProxyConfig(cluster_cidrs=("10.244.0.0/16",)))


def test_clusterip_goldens_counted_by_hand() -> None:
    ipt = get_backend("iptables").count_rules((GOLDEN / "clusterip" / "iptables-ipv4.txt").read_text())
    # filter: 6 chains; 11 jumps from built-in chains + 5 rules. nat: 4 node chains + 3 KUBE-SVC
    # + 9 KUBE-SEP; 3 jumps + 1 mark + 3 postrouting + 4 KUBE-SERVICES + 3 x 4 SVC + 9 x 2 SEP.
    assert ipt == {"rules": 57, "chains": 22, "filter_rules": 16, "filter_chains": 6,
                   "nat_rules": 41, "nat_chains": 16}
    nft = get_backend("nftables").count_rules((GOLDEN / "clusterip" / "nftables-ipv4.txt").read_text())
    # 16 node chains (22 rules; the type/policy lines and reject-chain's comment are no rules)
    # + 3 service chains of 4 rules + 9 endpoint chains of 2; elements: 2 ClusterIPs, 1 node IP,
    # 3 service-ips, 1 no-endpoint-services.
    assert nft == {"rules": 52, "chains": 28, "sets": 2, "maps": 5, "elements": 7}


@pytest.mark.parametrize("mode", backend_names())
def test_every_golden_has_rules_and_chains(mode: str) -> None:
    for path in sorted(GOLDEN.glob(f"*/{mode}-*.txt")):
        counts = get_backend(mode).count_rules(path.read_text())
        assert counts["rules"] > counts["chains"] > 0, path


def _synced(mode: str, n: int = 3) -> Proxier:
    p = Proxier("n1", mode=mode, cluster=cluster(n))
    assert p.sync().kind == "full"
    return p


def test_partial_iptables_update_counts_what_it_writes() -> None:
    p = _synced("iptables")
    p.set_endpoint_slice(eps("s1", "10.244.1.8", "10.244.2.8", "10.244.3.8"))  # 2 endpoints -> 3 new ones
    r = p.sync()
    assert r.kind == "partial"
    # filter: its 6 chains rewritten with 4 rules (no jumps from built-in chains in a partial
    # update); nat: 4 node chains, KUBE-SVC and 3 new KUBE-SEP (the 2 old ones are declared and
    # deleted: not counted); rules: 4 node + 4 KUBE-SERVICES + 4 SVC + 3 x 2 SEP.
    assert get_backend("iptables").count_rules(r.text) == {
        "rules": 22, "chains": 14, "filter_rules": 4, "filter_chains": 6, "nat_rules": 18, "nat_chains": 8}


def test_partial_nftables_update_counts_what_it_writes() -> None:
    p = _synced("nftables")
    p.set_endpoint_slice(eps("s1", "10.244.1.8", "10.244.2.8", "10.244.3.8"))
    r = p.sync()
    assert r.kind == "partial"
    # the service chain (4 rules) and 3 endpoint chains (2 rules each); no element changes
    assert get_backend("nftables").count_rules(r.text) == {
        "rules": 10, "chains": 4, "sets": 0, "maps": 0, "elements": 0}
    p.set_service(svc("s9", "10.96.0.99"))
    p.set_endpoint_slice(eps("s9", "10.244.1.99"))
    r = p.sync()
    assert r.kind == "partial"
    # a new Service: its ClusterIP in cluster-ips and its service-ips element, its 2 chains
    assert get_backend("nftables").count_rules(r.text) == {
        "rules": 4 + 0, "chains": 2, "sets": 0, "maps": 0, "elements": 2}


def test_full_resync_counts_equal_the_rendered_file() -> None:
    for mode in backend_names():
        p = _synced(mode, 5)
        backend = get_backend(mode)
        assert backend.count_rules(p.sync(full=True).text) == backend.count_rules(backend.render(p.plan()))


def test_nftables_syntax_corners() -> None:
    text = """
table ip t {
	set s {
		type ipv4_addr
		comment "a { brace, and, commas }"
		elements = { 10.0.0.1, 10.0.0.2,
			     10.0.0.3 }
	}
	map m {
		type inet_proto . inet_service : verdict
		elements = { tcp . 80 comment "x, y" : goto c }
	}
	chain c {
		type nat hook prerouting priority dstnat; policy accept;
		comment "chain d {"
		ip saddr { 10.0.0.1, 10.0.0.2 } accept
		# a comment line
		counter
	}
}
add element ip t s { 10.0.0.4, 10.0.0.5 }
add rule ip t c counter
delete element ip t s { 10.0.0.1 }
"""
    assert nftables_counts(text) == {"rules": 3, "chains": 1, "sets": 1, "maps": 1, "elements": 6}


def test_iptables_counts_tables_and_deletions() -> None:
    text = "*mangle\n:A - [0:0]\n-A A -j RETURN\nCOMMIT\n*nat\n:B - [0:0]\n:C - [0:0]\n-X C\n-I OUTPUT -j B\nCOMMIT\n"
    assert iptables_counts(text) == {"rules": 2, "chains": 2, "mangle_rules": 1, "mangle_chains": 1,
                                     "nat_rules": 1, "nat_chains": 1}
    assert iptables_counts("") == {"rules": 0, "chains": 0}
