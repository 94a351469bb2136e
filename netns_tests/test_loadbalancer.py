"""Issue 3, proven with packets in both backends and both families: LoadBalancer Services.

Topology (``Topology.simple(nodes=2, pods_per_node=2, clients=2, ipv6=True)``): node1
(192.0.2.1 / 2001:db8::1, the node under test) and node2 route the pod CIDRs; client1
(192.0.2.100 / 2001:db8::100) and client2 (192.0.2.101 / 2001:db8::101) are outside the
cluster and their default route goes via node1, so the LoadBalancer IPs (203.0.113.0/24,
2001:db8:ff::/64, as a cloud load balancer would deliver them) reach node1. The Services
are dual-stack; node1's rules are compiled and applied for one family per test.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from dataplane.compiler import CompileResult
from dataplane.lab import Lab, Topology
from dataplane.runtime.netns import read_back
from svc_lab import (
    BACKEND_FAMILIES,
    DUAL_STACK_CLUSTER_CIDR,
    assert_reached,
    backend_family_id,
    client_ip,
    compile_and_apply,
    dual_stack_slices,
    host,
    node_ip,
    host_server,
    nodes_yaml,
    pod_ip,
    proxy_config_yaml,
    write_manifests,
)

pytestmark = pytest.mark.netns

HTTP_SLICE_PORTS = "[{name: http, port: 8080, protocol: TCP}]"


def lb_service(name: str, index: int, extra_spec: str = "", ingress: str = "", ports: str = "") -> str:
    """A dual-stack LoadBalancer Service shop/<name> with ClusterIPs 10.96.1.<index> and
    fd00:10:96::1:<index>; ``ingress`` is its status.loadBalancer.ingress (YAML flow list)."""
    ports = ports or f"[{{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: {30080 + index}}}]"
    status = f"status:\n  loadBalancer:\n    ingress: {ingress}\n" if ingress else ""
    return (
        "apiVersion: v1\n"
        "kind: Service\n"
        f"metadata: {{name: {name}, namespace: shop}}\n"
        "spec:\n"
        "  type: LoadBalancer\n"
        "  ipFamilyPolicy: RequireDualStack\n"
        "  ipFamilies: [IPv4, IPv6]\n"
        f"  clusterIP: 10.96.1.{index}\n"
        f"  clusterIPs: [10.96.1.{index}, 'fd00:10:96::1:{index}']\n"
        f"  ports: {ports}\n"
        + "".join(f"  {line}\n" for line in extra_spec.strip().splitlines())
        + status
    )


SERVICES = [
    # The plain case: two VIP ingress IPs (ipMode VIP, and unset), TCP and UDP, eTP Cluster.
    lb_service(
        "web", 10,
        ports="[{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30090},"
              " {name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}]",
        ingress="[{ip: 203.0.113.10, ipMode: VIP}, {ip: '2001:db8:ff::10'}]",
    ),
    dual_stack_slices("shop", "web", "[{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]",
                      ["pod1-1", "pod2-1"]),
    # ipMode Proxy: the load balancer proxies to the nodes itself; kube-proxy adds no rules.
    lb_service("proxied", 11, ingress="[{ip: 203.0.113.11, ipMode: Proxy}, {ip: '2001:db8:ff::11', ipMode: Proxy}]"),
    dual_stack_slices("shop", "proxied", HTTP_SLICE_PORTS, ["pod1-1", "pod2-1"]),
    # A hostname-only ingress (as an AWS ELB reports it): ignored.
    lb_service("elb", 12, ingress="[{hostname: web-123.elb.example.com}]"),
    dual_stack_slices("shop", "elb", HTTP_SLICE_PORTS, ["pod2-1"]),
    # loadBalancerSourceRanges, written with surrounding spaces: only client1 may use the LB IP.
    lb_service("guarded", 13,
               extra_spec="loadBalancerSourceRanges: [' 192.0.2.100/32', '2001:db8::100/128 ']",
               ingress="[{ip: 203.0.113.13}, {ip: '2001:db8:ff::13'}]"),
    dual_stack_slices("shop", "guarded", HTTP_SLICE_PORTS, ["pod1-1", "pod2-1"]),
    # No NodePorts allocated: the port has no nodePort; the LB IP works all the same.
    lb_service("direct", 14, extra_spec="allocateLoadBalancerNodePorts: false",
               ports="[{name: http, port: 80, protocol: TCP, targetPort: 8080}]",
               ingress="[{ip: 203.0.113.14}, {ip: '2001:db8:ff::14'}]"),
    dual_stack_slices("shop", "direct", HTTP_SLICE_PORTS, ["pod1-2", "pod2-2"]),
    # eTP Local with a healthCheckNodePort: one with a local endpoint, one without.
    lb_service("local", 15, extra_spec="externalTrafficPolicy: Local\nhealthCheckNodePort: 32100",
               ingress="[{ip: 203.0.113.15}, {ip: '2001:db8:ff::15'}]"),
    dual_stack_slices("shop", "local", HTTP_SLICE_PORTS, ["pod1-2", "pod2-1"]),
    lb_service("remote", 16, extra_spec="externalTrafficPolicy: Local\nhealthCheckNodePort: 32101",
               ingress="[{ip: 203.0.113.16}, {ip: '2001:db8:ff::16'}]"),
    dual_stack_slices("shop", "remote", HTTP_SLICE_PORTS, ["pod2-1"]),
]

PODS = ("pod1-1", "pod1-2", "pod2-1", "pod2-2")


@dataclass
class Env:
    """The lab (not yet programmed) and what a test needs to program and probe it."""

    lab: Lab
    backend: str
    family: str
    manifest: Path

    def ip(self, v4: str, v6: str) -> str:
        return v6 if self.family == "ipv6" else v4

    def lb(self, index: int) -> str:
        """The load balancer ingress IP of the Service with index ``index``."""
        return self.ip(f"203.0.113.{index}", f"2001:db8:ff::{index}")

    @property
    def node1(self) -> str:
        return node_ip(1, self.family)

    def apply(self) -> CompileResult:
        """Compile node1's rules for this backend and family and load them into node1."""
        result = compile_and_apply(self.lab, self.manifest, self.backend, family=self.family)
        assert result.warnings == (), result.warnings
        return result

    def ip_cmd(self, member: str, *args: str) -> None:
        """Run ``ip [-6] ARGS`` in a lab member's namespace."""
        self.lab.run(member, ["ip", "-6" if self.family == "ipv6" else "-4", *args])

    def kernel_rules(self) -> str:
        return read_back(self.lab.ns("node1"), self.backend, ipv6=self.family == "ipv6")


@pytest.fixture(params=BACKEND_FAMILIES, ids=backend_family_id)
def env(request, make_lab, tmp_path) -> Env:
    backend, family = request.param
    lab = make_lab(Topology.simple(nodes=2, pods_per_node=2, clients=2, ipv6=True))
    for pod in PODS:
        lab.serve(pod, tcp_ports=(8080,), udp_ports=(5353,))
    manifest = write_manifests(
        tmp_path, proxy_config_yaml(cluster_cidr=DUAL_STACK_CLUSTER_CIDR), nodes_yaml(2, ipv6=True), *SERVICES
    )
    return Env(lab, backend, family, manifest)


def plan_of(result: CompileResult, name: str):
    (p,) = [p for p in result.plan.services if p.name == name and p.protocol == "tcp"]
    return p


# ----------------------------------------------------------------------------- LB IPs


def test_lb_ip_reachable_from_external_client(env):
    env.apply()
    lb = env.lb(10)
    for _ in range(6):  # both endpoints (local and remote); eTP Cluster: masqueraded
        r = env.lab.tcp_probe("client1", lb, 80)
        assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=8080, vip=(lb, 80), src=env.node1)
    r = env.lab.udp_probe("client1", lb, 53)
    assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=5353, vip=(lb, 53), src=env.node1)
    # the Service's other protocol is not matched on the LB IP: UDP 80 is not DNATed
    assert not env.lab.udp_probe("client1", lb, 80, timeout=0.3).ok


def test_ip_mode_proxy_gets_no_rules(env):
    """``ipMode: Proxy``: the load balancer proxies to the nodes itself, so traffic from
    inside the cluster (pods, the node) to that IP must reach the load balancer, not be
    short-circuited to the endpoints as for a VIP-mode IP routed the same way."""
    env.apply()
    proxy_ip, vip = env.lb(11), env.lb(10)
    lb_box = client_ip(2, env.family)  # client2 plays the cloud load balancer
    plen = "128" if env.family == "ipv6" else "32"
    env.ip_cmd("client2", "addr", "add", f"{proxy_ip}/{plen}", "dev", "lo")
    env.ip_cmd("client2", "addr", "add", f"{vip}/{plen}", "dev", "lo")
    for ip in (proxy_ip, vip):
        env.ip_cmd("node1", "route", "add", f"{ip}/{plen}", "via", lb_box)
    with host_server(env.lab, "client2", tcp_ports=(80,), name="lb-proxy"):
        for src_ns, src_ip in (("pod1-2", pod_ip("pod1-2", env.family)), ("node1", env.node1)):
            r = env.lab.tcp_probe(src_ns, proxy_ip, 80)
            assert r.ok and r.pod == "lb-proxy", f"{src_ns} -> {proxy_ip}: {r}"
            assert r.server_saw_dst == (proxy_ip, 80) and host(r.server_saw_src) == src_ip, r
            r = env.lab.tcp_probe(src_ns, vip, 80)  # control: a VIP-mode ingress IP is DNATed
            assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=8080, vip=(vip, 80))
    # the proxy sends its traffic to the NodePort, which the Service still has
    r = env.lab.tcp_probe("client2", env.node1, 30091)
    assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=8080, vip=(env.node1, 30091), src=env.node1)


def test_hostname_only_ingress_is_ignored(env):
    result = env.apply()  # no error, no warning
    elb = plan_of(result, "elb")
    assert elb.load_balancer_ips == () and not elb.firewall
    # the Service keeps its ClusterIP and NodePort
    r = env.lab.tcp_probe("client1", env.node1, 30092)
    assert_reached(r, pods={"pod2-1"}, dst_port=8080, vip=(env.node1, 30092), src=env.node1)
    cip = env.ip("10.96.1.12", "fd00:10:96::1:12")
    r = env.lab.tcp_probe("pod1-1", cip, 80)
    assert_reached(r, pods={"pod2-1"}, dst_port=8080, vip=(cip, 80), src=pod_ip("pod1-1", env.family))


def test_source_ranges(env):
    """loadBalancerSourceRanges ' 192.0.2.100/32' / '2001:db8::100/128 ' (padded): client1
    may use the LB IP, client2 is dropped; NodePorts are not subject to the ranges.

    node1 also treats the LB IP as local (a ``local`` route, as cloud guest agents install
    for their load balancers' forwarding rules) and has a host listener on it: a packet that
    is merely not DNATed would reach that listener, so client2's timeout shows it was dropped."""
    env.apply()
    lb = env.lb(13)
    plen = "128" if env.family == "ipv6" else "32"
    env.ip_cmd("node1", "route", "add", "local", f"{lb}/{plen}", "dev", "lo", "table", "local")
    with host_server(env.lab, "node1", tcp_ports=(80, 81)):
        # control: the LB IP is delivered to node1 and a listener on it answers client2
        r = env.lab.tcp_probe("client2", lb, 81)
        assert r.ok and r.pod == "node1", r
        for _ in range(4):
            r = env.lab.tcp_probe("client1", lb, 80)
            assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=8080, vip=(lb, 80), src=env.node1)
        r = env.lab.tcp_probe("client2", lb, 80, timeout=0.5)
        assert r.outcome == "timeout", f"client2 is outside the source ranges: {r}"
    for client in ("client2", "client1"):
        r = env.lab.tcp_probe(client, env.node1, 30093)
        assert_reached(r, pods={"pod1-1", "pod2-1"}, dst_port=8080, vip=(env.node1, 30093), src=env.node1)


def test_lb_without_node_ports(env):
    """allocateLoadBalancerNodePorts: false and no nodePort: no NodePort rules, the LB IP works."""
    result = env.apply()
    assert plan_of(result, "direct").node_port is None
    lb = env.lb(14)
    for _ in range(4):
        r = env.lab.tcp_probe("client1", lb, 80)
        assert_reached(r, pods={"pod1-2", "pod2-2"}, dst_port=8080, vip=(lb, 80), src=env.node1)
    rules = env.kernel_rules()
    if env.backend == "iptables":
        nodeport_rules = [ln for ln in rules.splitlines() if ln.startswith("-A KUBE-NODEPORTS ")]
        assert nodeport_rules and not [ln for ln in nodeport_rules if "shop/direct" in ln], nodeport_rules
    else:
        body = rules.split("map service-nodeports", 1)[1].split("}", 2)
        nodeports = body[0] + body[1]
        assert "shop/elb" in nodeports and "shop/direct" not in nodeports, nodeports


# ------------------------------------------------------------------------------ healthCheckNodePort


def test_health_check_node_port(env):
    """eTP Local LoadBalancers with healthCheckNodePort 32100 (a local endpoint) and 32101
    (none). iptables mode accepts the HCNPs in filter INPUT, ahead of a foreign DROP policy;
    nftables mode has no such rule (an accept cannot override another table's drop), so a
    foreign DROP policy keeps blocking it."""
    lab, node1, client1 = env.lab, env.node1, client_ip(1, env.family)
    lb = env.lb(15)
    with host_server(lab, "node1", tcp_ports=(32100, 32101, 10250)):  # 10250: any other host port
        if env.backend == "iptables":
            tool = "ip6tables" if env.family == "ipv6" else "iptables"
            icmp = "ipv6-icmp" if env.family == "ipv6" else "icmp"  # (NDP needs ICMPv6)
            for rule in (["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"], ["-i", "lo"], ["-p", icmp]):
                lab.run("node1", [tool, "-A", "INPUT", *rule, "-j", "ACCEPT"])
            lab.run("node1", [tool, "-P", "INPUT", "DROP"])
            assert lab.tcp_probe("client1", node1, 32100, timeout=0.3).outcome == "timeout"
            env.apply()
            assert ":INPUT DROP" in env.kernel_rules()
            for hcnp in (32100, 32101):
                r = lab.tcp_probe("client1", node1, hcnp)
                assert r.ok and r.pod == "node1" and r.server_saw_dst == (node1, hcnp), r
                assert host(r.server_saw_src) == client1, r
            assert lab.tcp_probe("client1", node1, 10250, timeout=0.3).outcome == "timeout"
        else:
            env.apply()
            assert "32100" not in env.kernel_rules() and "32101" not in env.kernel_rules()
            r = lab.tcp_probe("client1", node1, 32100)  # kube-proxy's own table does not block it
            assert r.ok and r.pod == "node1", r
            lab.run("node1", ["nft", "-f", "-"], input=(
                "table inet host-firewall {\n"
                "  chain input {\n"
                "    type filter hook input priority filter; policy drop;\n"
                "    ct state established,related accept\n"
                "    iif lo accept\n"
                "    meta l4proto { icmp, ipv6-icmp } accept\n"
                "  }\n"
                "}\n"))
            for port in (32100, 32101, 10250):
                assert lab.tcp_probe("client1", node1, port, timeout=0.3).outcome == "timeout", port
    # eTP Local through the LB IP (forwarded, not subject to INPUT): the local endpoint only,
    # with the client's address preserved.
    for _ in range(4):
        r = lab.tcp_probe("client1", lb, 80)
        assert_reached(r, pods={"pod1-2"}, dst_port=8080, vip=(lb, 80), src=client1)
