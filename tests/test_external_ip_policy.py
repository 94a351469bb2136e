"""Who may use an address (issue 12 items 8 and 10b): an allocated ClusterIP always wins over an
externalIP or load-balancer IP another Service claims (CVE-2020-8554); the externalIPCIDRs
allow-list (a kube-dataplane extension) from the configuration, the library keyword and
``--external-ip-cidrs``; a dual-stack LoadBalancer whose source ranges leave a family open."""
from __future__ import annotations

import subprocess
import sys

import pytest

from dataplane.cli import main
from dataplane.compiler import compile_rules, render
from dataplane.errors import InputError, UsageError
from dataplane.input.cluster import parse_cluster
from dataplane.input.loader import documents_from_text
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
from dataplane.plan import build_plan
from dataplane.trace import Packet, trace

MODES = ("iptables", "nftables")
NODE = Node("n1", (NodeAddress("InternalIP", "192.0.2.1"), NodeAddress("InternalIP", "2001:db8::1")))
CONFIG = ProxyConfig(cluster_cidrs=("10.244.0.0/16",))
DNS_IP = "10.96.0.10"


def service(ns: str, name: str, cluster_ip: str, **kw) -> Service:
    kw.setdefault("ports", (ServicePort(53, "UDP", "dns"),))
    return Service(ns, name, cluster_ips=(cluster_ip,), **kw)


def endpoints(ns: str, name: str, ip: str, family: str = "IPv4") -> EndpointSlice:
    return EndpointSlice(ns, f"{name}-1", name, family, (Endpoint((ip,), EndpointConditions(), node_name="n1"),),
                         (EndpointPort(5353, "UDP", "dns"),))


def dns_and_evil(**evil) -> Cluster:
    """kube-system/kube-dns (ClusterIP 10.96.0.10, endpoint 10.244.1.53) and aaa/evil, which
    sorts first by namespace/name and claims kube-dns's ClusterIP."""
    return Cluster(
        services=(service("kube-system", "kube-dns", DNS_IP), service("aaa", "evil", "10.96.7.7", **evil)),
        endpoint_slices=(endpoints("kube-system", "kube-dns", "10.244.1.53"), endpoints("aaa", "evil", "10.244.6.66")),
        nodes=(NODE,), proxy_config=CONFIG)


def dnat(plan, dst: str, dport: int = 53, proto: str = "udp", src: str = "10.244.2.2") -> dict:
    """Where the compiled rules send a new connection to dst:dport."""
    result = trace(render(plan), plan.mode, Packet(src, dst, dport, proto), local_ips=plan.node_ips)
    return dict(result.endpoints)


# ------------------------------------------------------- an allocated ClusterIP wins


@pytest.mark.parametrize("mode", MODES)
def test_an_external_ip_never_takes_another_services_cluster_ip(mode):
    plan = build_plan(dns_and_evil(external_ips=(DNS_IP,)), "n1", mode=mode)
    evil = next(p for p in plan.services if p.name == "evil")
    assert evil.external_ips == () and not evil.uses_external_chain
    assert plan.warnings == (
        f"Service aaa/evil: spec.externalIPs: {DNS_IP} is the ClusterIP of Service kube-system/kube-dns; "
        "ignored, as an allocated ClusterIP always wins over a claimed address",)
    assert dnat(plan, DNS_IP) == {"10.244.1.53:5353": 1.0}  # from a pod
    assert dnat(plan, DNS_IP, src="198.51.100.9") == {"10.244.1.53:5353": 1.0}  # from outside
    assert dnat(plan, "10.96.7.7") == {"10.244.6.66:5353": 1.0}  # evil keeps its own ClusterIP


@pytest.mark.parametrize("mode", MODES)
def test_a_load_balancer_ip_never_takes_another_services_cluster_ip(mode):
    ingress = (LoadBalancerIngress(ip=DNS_IP), LoadBalancerIngress(ip="203.0.113.9"))
    plan = build_plan(dns_and_evil(type="LoadBalancer", load_balancer_ingress=ingress,
                                   ports=(ServicePort(53, "UDP", "dns", node_port=30053),)), "n1", mode=mode)
    evil = next(p for p in plan.services if p.name == "evil")
    assert evil.load_balancer_ips == ("203.0.113.9",)
    assert plan.warnings == (
        f"Service aaa/evil: status.loadBalancer.ingress: {DNS_IP} is the ClusterIP of Service "
        "kube-system/kube-dns; ignored, as an allocated ClusterIP always wins over a claimed address",)
    assert dnat(plan, DNS_IP) == {"10.244.1.53:5353": 1.0}
    assert dnat(plan, "203.0.113.9", src="198.51.100.9") == {"10.244.6.66:5353": 1.0}


def test_a_cluster_ip_nobody_holds_or_the_services_own_stays_usable():
    """Without kube-dns the address is just an external IP (kube-proxy's behaviour); a headless
    or ExternalName Service holds no ClusterIP; a Service may list its own ClusterIP."""
    alone = Cluster(services=(service("aaa", "evil", "10.96.7.7", external_ips=(DNS_IP,)),),
                    endpoint_slices=(endpoints("aaa", "evil", "10.244.6.66"),), nodes=(NODE,), proxy_config=CONFIG)
    plan = build_plan(alone, "n1")
    assert plan.services[0].external_ips == (DNS_IP,) and plan.warnings == ()
    assert dnat(plan, DNS_IP) == {"10.244.6.66:5353": 1.0}
    headless = Cluster(services=(*alone.services, Service("kube-system", "kube-dns", cluster_ips=("None",)),
                                 Service("kube-system", "ext", type="ExternalName", cluster_ips=(DNS_IP,),
                                         external_name="example.com")),
                       endpoint_slices=alone.endpoint_slices, nodes=(NODE,), proxy_config=CONFIG)
    assert build_plan(headless, "n1").services[0].external_ips == (DNS_IP,)
    own = Cluster(services=(service("aaa", "evil", "10.96.7.7", external_ips=("10.96.7.7",)),),
                  nodes=(NODE,), proxy_config=CONFIG)
    assert build_plan(own, "n1").services[0].external_ips == ("10.96.7.7",)


def test_among_external_ips_the_first_service_still_wins():
    """Equal kinds keep the old rule: the first Service in namespace/name order, with a warning."""
    c = dns_and_evil(external_ips=("203.0.113.7",))
    c = Cluster(services=(*c.services, service("zzz", "late", "10.96.8.8", external_ips=("203.0.113.7",))),
                endpoint_slices=(*c.endpoint_slices, endpoints("zzz", "late", "10.244.8.8")),
                nodes=(NODE,), proxy_config=CONFIG)
    plan = build_plan(c, "n1")
    assert plan.warnings == ("Service zzz/late: 203.0.113.7:53/UDP is also a frontend of Service aaa/evil; its "
                             "packets go to aaa/evil (the first in namespace/name order)",)
    assert dnat(plan, "203.0.113.7", src="198.51.100.9") == {"10.244.6.66:5353": 1.0}


# ------------------------------------------------------------ externalIPCIDRs


def allow_list_cluster(cidrs) -> Cluster:
    dual = Service("shop", "web", cluster_ips=("10.96.1.1", "fd00:96::1"), ip_families=("IPv4", "IPv6"),
                   ip_family_policy="RequireDualStack", ports=(ServicePort(53, "UDP", "dns"),),
                   external_ips=("203.0.113.7", "198.51.100.7", "2001:db8:e::7"),
                   )
    return Cluster(services=(dual,), endpoint_slices=(endpoints("shop", "web", "10.244.1.1"),
                                                      endpoints("shop", "web", "fd00:244::1", "IPv6")),
                   nodes=(NODE,), proxy_config=ProxyConfig(cluster_cidrs=CONFIG.cluster_cidrs,
                                                           external_ip_cidrs=cidrs))


@pytest.mark.parametrize("mode", MODES)
def test_external_ips_outside_the_allow_list_are_ignored_with_a_warning(mode):
    plan = build_plan(allow_list_cluster(("203.0.113.0/24",)), "n1", mode=mode)
    assert plan.services[0].external_ips == ("203.0.113.7",)
    assert plan.warnings == ("Service shop/web: spec.externalIPs: 198.51.100.7 is outside the allowed external IP "
                             "CIDRs (externalIPCIDRs / --external-ip-cidrs: 203.0.113.0/24); ignored",)
    assert dnat(plan, "203.0.113.7", src="192.0.2.50") == {"10.244.1.1:5353": 1.0}
    assert dnat(plan, "198.51.100.7", src="192.0.2.50") == {}  # not DNATed
    # the IPv6 plan judges the IPv6 addresses: none of the list's CIDRs is IPv6
    v6 = build_plan(allow_list_cluster(("203.0.113.0/24",)), "n1", mode=mode, family="ipv6")
    assert v6.services[0].external_ips == () and len(v6.warnings) == 1 and "2001:db8:e::7" in v6.warnings[0]


def test_allow_list_unset_allows_all_empty_allows_none_and_the_keyword_overrides_the_config():
    assert build_plan(allow_list_cluster(None), "n1").services[0].external_ips == ("203.0.113.7", "198.51.100.7")
    assert build_plan(allow_list_cluster(()), "n1").services[0].external_ips == ()
    configured = allow_list_cluster(("203.0.113.0/24",))
    plan = build_plan(configured, "n1", external_ip_cidrs=["198.51.100.0/25", "2001:db8:e::/64"])
    assert plan.services[0].external_ips == ("198.51.100.7",)
    assert compile_rules(configured, "n1", external_ip_cidrs=[]).plan.services[0].external_ips == ()
    assert build_plan(configured, "n1", family="ipv6",
                      external_ip_cidrs=["2001:db8:e::/64"]).services[0].external_ips == ("2001:db8:e::7",)
    with pytest.raises(UsageError, match="external_ip_cidrs: '10.0.0.0/33' is not a CIDR"):
        build_plan(configured, "n1", external_ip_cidrs=["10.0.0.0/33"])


def test_the_allow_list_leaves_load_balancer_ips_alone():
    """Like the DenyServiceExternalIPs admission plugin, the list restricts spec.externalIPs; the
    load-balancer status is written by the cloud's controller."""
    lb = Service("shop", "lb", type="LoadBalancer", cluster_ips=("10.96.1.2",),
                 ports=(ServicePort(53, "UDP", "dns", node_port=30053),),
                 load_balancer_ingress=(LoadBalancerIngress(ip="192.0.2.77"),))
    c = Cluster(services=(lb,), endpoint_slices=(endpoints("shop", "lb", "10.244.1.2"),), nodes=(NODE,),
                proxy_config=CONFIG)
    plan = build_plan(c, "n1", external_ip_cidrs=["203.0.113.0/24"])
    assert plan.services[0].load_balancer_ips == ("192.0.2.77",) and plan.warnings == ()


CONFIG_DOC = """\
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 192.0.2.1}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.1.1
  externalIPs: [203.0.113.7, 198.51.100.7]
  ports: [{name: http, port: 80}]
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
"""


def parse(text: str):
    docs, problems = documents_from_text(text, "cfg.yaml")
    assert not problems
    return parse_cluster(docs)


def test_external_ip_cidrs_read_from_the_configuration():
    assert parse(CONFIG_DOC).cluster.proxy_config.external_ip_cidrs is None
    cfg = parse(CONFIG_DOC + "externalIPCIDRs: [203.0.113.000/024, '2001:DB8::1/64']\n").cluster.proxy_config
    assert cfg.external_ip_cidrs == ("203.0.113.0/24", "2001:db8::/64")  # canonical
    assert parse(CONFIG_DOC + "externalIPCIDRs: []\n").cluster.proxy_config.external_ip_cidrs == ()


@pytest.mark.parametrize("value,message", [
    ("[203.0.113.0/24, nope]",
     'cfg.yaml: document 3: KubeProxyConfiguration: externalIPCIDRs[1]: Invalid value: "nope": must be a valid CIDR'),
    ("203.0.113.0/24",
     'cfg.yaml: document 3: KubeProxyConfiguration: externalIPCIDRs: Invalid value: "203.0.113.0/24": must be a list'),
])
def test_bad_external_ip_cidrs_name_file_object_and_field(value, message):
    with pytest.raises(InputError) as e:
        parse(CONFIG_DOC + f"externalIPCIDRs: {value}\n")
    assert [str(p) for p in e.value.problems] == [message]


def test_cli_flag_overrides_the_configuration(tmp_path, capsys):
    path = tmp_path / "in.yaml"
    path.write_text(CONFIG_DOC + "externalIPCIDRs: [203.0.113.0/24]\n")
    base = ["compile", "-f", str(path), "--node", "n1", "--backend", "nftables", "-j", "1"]
    assert main(base) == 0
    out, err = capsys.readouterr()
    assert "203.0.113.7 . tcp . 80" in out and "198.51.100.7" not in out
    assert f"warning: {path}: document 2: Service shop/web: spec.externalIPs: 198.51.100.7 is outside" in err
    assert main([*base, "--external-ip-cidrs", "198.51.100.0/24"]) == 0
    out, err = capsys.readouterr()
    assert "198.51.100.7 . tcp . 80" in out and "203.0.113.7" not in out and "203.0.113.7 is outside" in err
    assert main([*base, "--external-ip-cidrs", ""]) == 0
    out, _ = capsys.readouterr()
    assert "203.0.113.7" not in out and "198.51.100.7" not in out


def test_cli_flag_is_on_every_command_that_plans_and_rejects_a_bad_cidr(tmp_path):
    from dataplane.cli import build_parser

    parser = build_parser()
    for argv in (["compile", "-f", "x", "--node", "n"], ["apply", "-f", "x", "--node", "n", "--netns", "ns"],
                 ["trace", "-f", "x", "--node", "n", "--src", "1.2.3.4", "--dst", "1.2.3.5", "--dport", "1"],
                 ["lab", "up", "-f", "x"], ["verify", "-f", "x"]):
        args = parser.parse_args([*argv, "--external-ip-cidrs", "203.0.113.000/24, 2001:db8::/64"])
        assert args.external_ip_cidrs == ("203.0.113.0/24", "2001:db8::/64"), argv
    path = tmp_path / "in.yaml"
    path.write_text(CONFIG_DOC)
    r = subprocess.run([sys.executable, "-I", "-m", "dataplane", "compile", "-f", str(path), "--node", "n1",
                        "--external-ip-cidrs", "203.0.113.0/24,bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1].endswith(
        "argument --external-ip-cidrs: 'bogus' is not a CIDR (e.g. 203.0.113.0/24,2001:db8::/64; '' allows none)")


def test_trace_compiles_with_the_flag(tmp_path, capsys):
    path = tmp_path / "in.yaml"
    path.write_text(CONFIG_DOC)
    argv = ["trace", "-f", str(path), "--node", "n1", "--src", "192.0.2.50", "--dst", "198.51.100.7",
            "--dport", "80", "--json"]
    assert main(argv) == 0
    assert '"verdict": "reject"' in capsys.readouterr().out  # the Service has no endpoints
    assert main([*argv, "--external-ip-cidrs", "203.0.113.0/24"]) == 0
    out, err = capsys.readouterr()
    assert '"verdict": "none"' in out and "198.51.100.7 is outside" in err


# ------------------------------------------------- 10b: source ranges of one family


def dual_stack_lb(ranges) -> Cluster:
    lb = Service("shop", "lb", type="LoadBalancer", cluster_ips=("10.96.1.3", "fd00:96::3"),
                 ip_families=("IPv4", "IPv6"), ip_family_policy="RequireDualStack",
                 ports=(ServicePort(53, "UDP", "dns", node_port=30053),),
                 load_balancer_ingress=(LoadBalancerIngress(ip="192.0.2.88"), LoadBalancerIngress(ip="2001:db8:1b::8")),
                 load_balancer_source_ranges=ranges)
    return Cluster(services=(lb,), endpoint_slices=(endpoints("shop", "lb", "10.244.1.3"),
                                                    endpoints("shop", "lb", "fd00:244::3", "IPv6")),
                   nodes=(NODE,), proxy_config=CONFIG)


@pytest.mark.parametrize("mode", MODES)
def test_source_ranges_of_one_family_leave_the_other_open_with_a_warning(mode):
    c = dual_stack_lb(("198.51.100.0/24",))
    v4, v6 = (build_plan(c, "n1", mode=mode, family=f) for f in ("ipv4", "ipv6"))
    assert v4.services[0].firewall and v4.warnings == ()
    assert not v6.services[0].firewall  # kept as kube-proxy: every source reaches the IPv6 LB IP
    assert v6.warnings == ("Service shop/lb: spec.loadBalancerSourceRanges: no IPv6 range, so IPv6 stays open: its "
                           "IPv6 load-balancer IPs (2001:db8:1b::8) accept traffic from any source (as kube-proxy "
                           "does); add an IPv6 range to restrict them",)
    assert dnat(v6, "2001:db8:1b::8", src="2001:db8:99::9") == {"[fd00:244::3]:5353": 1.0}
    both = dual_stack_lb(("198.51.100.0/24", "2001:db8:99::/64"))
    assert build_plan(both, "n1", mode=mode, family="ipv6").warnings == ()
    assert build_plan(dual_stack_lb(()), "n1", mode=mode, family="ipv6").warnings == ()


def test_trace_of_a_rules_file_refuses_the_flag(tmp_path, capsys):
    rules = tmp_path / "rules.nft"
    rules.write_text("")
    code = main(["trace", "--rules", str(rules), "--backend", "nftables", "--node-ip", "192.0.2.1", "--src",
                 "192.0.2.50", "--dst", "198.51.100.7", "--dport", "80", "--external-ip-cidrs", "203.0.113.0/24"])
    assert code == 1
    assert capsys.readouterr().err == ("error: --external-ip-cidrs cannot be used with --rules "
                                       "(it applies when compiling with -f)\n")
