"""dataplane.runtime.netns: apply/read back/clean up hand-written kube-proxy-style rules, proven with packets.

The rules here are written by hand (in iptables-save's canonical form), not
produced by the compiler, so these tests pin down the applier and the lab alone.

Addresses: VIP 10.96.0.10 (tcp/80 -> 8080, udp/53 -> 5353, sctp/7777 -> 7778),
VIP 10.96.0.11 has no endpoints (REJECT); IPv6 VIP fd00:10:96::10.
"""
from __future__ import annotations

import os
import re

import pytest

from dataplane.runtime.conntrack import FlowTuple
from dataplane.errors import ApplyError
from dataplane.lab import Lab, Topology
from dataplane.runtime.netns import (
    NETNS_DIR,
    apply_iptables,
    apply_nftables,
    cleanup,
    in_netns,
    read_back,
    require_netns,
    run_in,
    set_sysctls,
)

pytestmark = pytest.mark.netns

VIP, VIP_EMPTY, VIP6 = "10.96.0.10", "10.96.0.11", "fd00:10:96::10"
NODE, CLIENT, POD, POD2 = "192.0.2.1", "192.0.2.100", "10.244.1.10", "10.244.1.11"
NODE6, CLIENT6, POD6 = "2001:db8::1", "2001:db8::100", "fd00:10:244:1::10"


def chain(kind: str, tag: str) -> str:
    """A kube-proxy-shaped chain name: KUBE-<kind>- plus 16 characters."""
    return f"KUBE-{kind}-{tag.ljust(16, 'X')}"


SVC_TCP, SVC_UDP, SVC_SCTP, SVC_OLD = (chain("SVC", t) for t in ("WEBTCP", "WEBUDP", "WEBSCTP", "OLD"))


def sep(ip: str, proto: str) -> str:
    return chain("SEP", proto.upper() + ip.replace(".", "").replace(":", "")[-8:])


def iptables_rules(
    endpoints: tuple[str, ...] = (POD,), *, old_service: bool = False, ipv6: bool = False
) -> str:
    """A small kube-proxy-style restore file: ClusterIP web (tcp masqueraded, udp
    not, sctp) over ``endpoints``, and a VIP without endpoints that is rejected."""
    vip, empty, plen = (VIP6, "fd00:10:96::11", 128) if ipv6 else (VIP, VIP_EMPTY, 32)
    icmp = "icmp6-port-unreachable" if ipv6 else "icmp-port-unreachable"
    fmt = (lambda ip, port: f"[{ip}]:{port}") if ipv6 else (lambda ip, port: f"{ip}:{port}")
    services = [("tcp", 80, 8080, SVC_TCP, True), ("udp", 53, 5353, SVC_UDP, False),
                ("sctp", 7777, 7778, SVC_SCTP, False)]
    nat_chains = ["KUBE-MARK-MASQ", "KUBE-POSTROUTING", "KUBE-SERVICES"]
    nat_rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
    ]
    for proto, port, target, svc, masq in services:
        nat_chains.append(svc)
        nat_rules.append(
            f'-A KUBE-SERVICES -d {vip}/{plen} -p {proto} -m comment --comment "default/web:{proto} '
            f'cluster IP" -m {proto} --dport {port} -j {svc}'
        )
        if masq:
            nat_rules.append(f"-A {svc} -j KUBE-MARK-MASQ")
        for i, ep in enumerate(endpoints):
            sep_name = sep(ep, proto)
            nat_chains.append(sep_name)
            left = len(endpoints) - i
            stat = f" -m statistic --mode random --probability {1 / left:.11f}" if left > 1 else ""
            nat_rules.append(f"-A {svc}{stat} -j {sep_name}")
            nat_rules.append(f"-A {sep_name} -s {ep}/{plen} -j KUBE-MARK-MASQ")
            nat_rules.append(f"-A {sep_name} -p {proto} -m {proto} -j DNAT --to-destination {fmt(ep, target)}")
    if old_service:
        nat_chains.append(SVC_OLD)
        nat_rules.append(f"-A {SVC_OLD} -j KUBE-MARK-MASQ")
    lines = [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":KUBE-SERVICES - [0:0]",
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        f'-A KUBE-SERVICES -d {empty}/{plen} -p tcp -m comment --comment "default/empty:http has no endpoints" '
        f"-m tcp --dport 80 -j REJECT --reject-with {icmp}",
        f'-A KUBE-SERVICES -d {empty}/{plen} -p udp -m comment --comment "default/empty:dns has no endpoints" '
        f"-m udp --dport 53 -j REJECT --reject-with {icmp}",
        "COMMIT",
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        *(f":{c} - [0:0]" for c in nat_chains),
        *nat_rules,
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def nft_script(endpoint: str = POD, *, ipv6: bool = False, target_port: int = 8080) -> str:
    """The nftables equivalent (kube-proxy nftables-mode shapes, one endpoint)."""
    fam, ipt, daddr = ("ip6", "ipv6_addr", "ip6 daddr") if ipv6 else ("ip", "ipv4_addr", "ip daddr")
    vip, empty = (VIP6, "fd00:10:96::11") if ipv6 else (VIP, VIP_EMPTY)
    ep = f"[{endpoint}]" if ipv6 else endpoint
    return f"""table {fam} kube-proxy
delete table {fam} kube-proxy
table {fam} kube-proxy {{
	map service-ips {{
		type {ipt} . inet_proto . inet_service : verdict
		elements = {{ {vip} . tcp . 80 : goto service-web-tcp,
			     {vip} . udp . 53 : goto service-web-udp,
			     {vip} . sctp . 7777 : goto service-web-sctp }}
	}}
	map no-endpoint-services {{
		type {ipt} . inet_proto . inet_service : verdict
		elements = {{ {empty} . tcp . 80 : goto reject-chain,
			     {empty} . udp . 53 : goto reject-chain }}
	}}
	chain filter-input {{
		type filter hook input priority -110; policy accept;
		ct state new {daddr} . meta l4proto . th dport vmap @no-endpoint-services
	}}
	chain filter-forward {{
		type filter hook forward priority -110; policy accept;
		ct state new {daddr} . meta l4proto . th dport vmap @no-endpoint-services
	}}
	chain filter-output {{
		type filter hook output priority -110; policy accept;
		ct state new {daddr} . meta l4proto . th dport vmap @no-endpoint-services
	}}
	chain reject-chain {{
		reject
	}}
	chain nat-prerouting {{
		type nat hook prerouting priority dstnat; policy accept;
		jump services
	}}
	chain nat-output {{
		type nat hook output priority -100; policy accept;
		jump services
	}}
	chain nat-postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		jump masquerading
	}}
	chain masquerading {{
		meta mark & 0x00004000 == 0x00000000 return
		meta mark set meta mark ^ 0x00004000
		masquerade fully-random
	}}
	chain mark-for-masquerade {{
		meta mark set meta mark | 0x00004000
	}}
	chain services {{
		{daddr} . meta l4proto . th dport vmap @service-ips
	}}
	chain service-web-tcp {{
		jump mark-for-masquerade
		meta l4proto tcp dnat to {ep}:{target_port}
	}}
	chain service-web-udp {{
		meta l4proto udp dnat to {ep}:5353
	}}
	chain service-web-sctp {{
		meta l4proto sctp dnat to {ep}:7778
	}}
}}
"""


BACKENDS = ["iptables", "nftables"]


def apply(ns: str, backend: str, *, ipv6: bool = False) -> None:
    """Apply the hand-written rules for one endpoint (pod1-1) with either backend."""
    if backend == "iptables":
        apply_iptables(ns, iptables_rules((POD6 if ipv6 else POD,), ipv6=ipv6), ipv6=ipv6)
    else:
        apply_nftables(ns, nft_script(POD6 if ipv6 else POD, ipv6=ipv6))


def save(ns: str, ipv6: bool = False) -> str:
    return run_in(ns, ["ip6tables-save" if ipv6 else "iptables-save"]).stdout


def nft_tables(ns: str) -> list[str]:
    return [ln for ln in run_in(ns, ["nft", "list", "tables"]).stdout.splitlines() if ln.strip()]


# --------------------------------------------------------------------------- basics


def test_require_netns_never_creates(bare_ns):
    missing = bare_ns + "-nope"
    with pytest.raises(ApplyError, match=f"network namespace {missing} does not exist"):
        require_netns(missing)
    with pytest.raises(ApplyError, match="does not exist"):
        run_in(missing, ["true"])
    with pytest.raises(ApplyError, match="does not exist"):
        apply_iptables(missing, "*nat\nCOMMIT\n")
    with pytest.raises(ApplyError, match="does not exist"):
        with in_netns(missing):
            pass
    assert not os.path.exists(os.path.join(NETNS_DIR, missing))
    require_netns(bare_ns)


def test_run_in_reports_stderr(bare_ns):
    assert run_in(bare_ns, ["ip", "-o", "link"]).stdout.count("\n") == 1  # only lo
    with pytest.raises(ApplyError) as ei:
        run_in(bare_ns, ["ip", "link", "show", "nosuchdev"])
    assert "nosuchdev" in ei.value.stderr and "exit 1" in str(ei.value)
    assert run_in(bare_ns, ["sh", "-c", "echo out; exit 3"], check=False).returncode == 3
    assert run_in(bare_ns, ["cat"], input="fed via stdin").stdout == "fed via stdin"


def test_set_sysctls_is_per_namespace(bare_ns):
    host = open("/proc/sys/net/ipv4/conf/all/route_localnet").read().strip()
    set_sysctls(bare_ns, {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.route_localnet": "1",
                          "net.ipv6.conf.all.forwarding": "1", "net/ipv4/conf/lo/rp_filter": "2"})
    with in_netns(bare_ns):
        got = [open(f"/proc/sys/{p}").read().strip() for p in (
            "net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet",
            "net/ipv6/conf/all/forwarding", "net/ipv4/conf/lo/rp_filter")]
    assert got == ["1", "1", "1", "2"]
    assert open("/proc/sys/net/ipv4/conf/all/route_localnet").read().strip() == host
    with pytest.raises(ApplyError, match="net.ipv4.no_such_knob"):
        set_sysctls(bare_ns, {"net.ipv4.no_such_knob": "1"})
    with pytest.raises(ApplyError, match="invalid sysctl"):
        set_sysctls(bare_ns, {"net/../../etc/passwd": "x"})


# --------------------------------------------------------------------------- traffic


@pytest.mark.parametrize("backend", BACKENDS)
def test_clusterip_dnat_masquerade_and_unnat(lab: Lab, backend):
    node = lab.ns("node1")
    apply(node, backend)
    lab.serve("pod1-1", tcp_ports=[8080], udp_ports=[5353])

    r = lab.tcp_probe("client1", VIP, 80)
    assert r.outcome == "ok", r
    assert r.pod == "pod1-1"
    assert r.server_saw_dst == (POD, 8080)  # DNATed to the endpoint's targetPort
    assert r.server_saw_src[0] == NODE  # masqueraded to the node's IP
    assert r.peer == (VIP, 80)  # the reply was un-NATed back to the VIP
    assert r.local[0] == CLIENT

    u = lab.udp_probe("client1", VIP, 53)  # connected socket: only VIP:53 may answer
    assert u.outcome == "ok", u
    assert (u.server_saw_dst, u.server_saw_src[0], u.peer) == ((POD, 5353), CLIENT, (VIP, 53))
    assert u.server_saw_src == u.local  # no masquerade for the udp service

    n = lab.tcp_probe("node1", VIP, 80)  # node-local clients go through OUTPUT
    assert (n.outcome, n.server_saw_dst, n.server_saw_src[0], n.peer) == ("ok", (POD, 8080), NODE, (VIP, 80))

    h = lab.tcp_probe("pod1-1", VIP, 80)  # hairpin: the pod reaches itself via the VIP
    assert (h.outcome, h.pod, h.server_saw_src[0], h.peer) == ("ok", "pod1-1", NODE, (VIP, 80))

    assert lab.tcp_probe("client1", VIP, 81, timeout=0.2).outcome == "timeout"  # no such port


@pytest.mark.parametrize("backend", BACKENDS)
def test_reject_without_endpoints_is_refused(lab: Lab, backend):
    apply(lab.ns("node1"), backend)
    for ns in ("client1", "node1", "pod1-1"):
        assert lab.tcp_probe(ns, VIP_EMPTY, 80).outcome == "refused", ns
        assert lab.udp_probe(ns, VIP_EMPTY, 53).outcome == "refused", ns
    # a port of that VIP without a rule is not rejected, it goes to the dead-end gateway
    assert lab.tcp_probe("client1", VIP_EMPTY, 443, timeout=0.2).outcome == "timeout"


@pytest.mark.parametrize("backend", BACKENDS)
def test_sctp_init_to_vip_is_dnated_and_tracked(lab: Lab, backend):
    apply(lab.ns("node1"), backend)
    seen = lab.sctp_probe("client1", CLIENT, VIP, 7777, capture=("pod1-1", "eth0"), sport=40777)
    assert seen is not None, "the INIT never reached the pod"
    assert (seen.src, seen.dst, seen.sport, seen.dport) == (CLIENT, POD, 40777, 7778)

    entries = [e for e in lab.conntrack_entries("node1", "sctp") if e.orig.dst == VIP]
    assert len(entries) == 1, entries
    e = entries[0]
    assert (e.family, e.protocol, e.dst_nat) == ("ipv4", "sctp", True)
    assert e.orig == FlowTuple(CLIENT, VIP, 40777, 7777)
    assert e.reply == FlowTuple(POD, CLIENT, 7778, 40777)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ipv6_dnat(lab6: Lab, backend):
    node = lab6.ns("node1")
    apply(node, backend, ipv6=True)
    lab6.serve("pod1-1", tcp_ports=[8080], udp_ports=[5353])
    r = lab6.tcp_probe("client1", VIP6, 80)
    assert r.outcome == "ok", r
    assert (r.server_saw_dst, r.server_saw_src[0], r.peer) == ((POD6, 8080), NODE6, (VIP6, 80))
    u = lab6.udp_probe("client1", VIP6, 53)
    assert (u.outcome, u.server_saw_dst, u.server_saw_src, u.peer) == ("ok", (POD6, 5353), u.local, (VIP6, 53))
    assert lab6.tcp_probe("node1", VIP6, 80).server_saw_dst == (POD6, 8080)
    assert lab6.tcp_probe("client1", "fd00:10:96::11", 80).outcome == "refused"
    # IPv4 is untouched by the IPv6 rules
    assert lab6.tcp_probe("client1", VIP, 80, timeout=0.2).outcome == "timeout"

    seen = lab6.sctp_probe("client1", CLIENT6, VIP6, 7777, capture=("pod1-1", "eth0"))
    assert seen is not None and (seen.src, seen.dst, seen.dport) == (CLIENT6, POD6, 7778)
    assert [e.reply.src for e in lab6.conntrack_entries("node1", "sctp", family="ipv6")] == [POD6]

    if backend == "iptables":
        text = read_back(node, "iptables", ipv6=True)
        assert f"--to-destination [{POD6}]:8080" in text
        assert read_back(node, "iptables") == ""  # nothing in the IPv4 tables
    else:
        assert f"dnat to [{POD6}]:8080" in read_back(node, "nftables", ipv6=True)
        assert read_back(node, "nftables") == ""
    cleanup(node, ipv6=True)
    assert "KUBE-" not in read_back(node, "iptables", ipv6=True)
    assert read_back(node, "nftables", ipv6=True) == ""
    assert lab6.tcp_probe("client1", VIP6, 80, timeout=0.2).outcome == "timeout"


# --------------------------------------------------------------------------- iptables semantics


def test_iptables_reapply_is_idempotent(lab: Lab):
    node = lab.ns("node1")
    apply_iptables(node, iptables_rules())
    first = read_back(node, "iptables")
    lab.serve("pod1-1", tcp_ports=[8080])
    assert lab.tcp_probe("client1", VIP, 80).ok
    apply_iptables(node, iptables_rules())
    apply_iptables(node, iptables_rules())
    again = read_back(node, "iptables")
    assert again == first
    filter_part, nat_part = again.split("*nat\n")
    for part, builtins in ((filter_part, ("INPUT", "FORWARD", "OUTPUT")),
                           (nat_part, ("PREROUTING", "OUTPUT", "POSTROUTING"))):
        for builtin in builtins:
            jumps = [ln for ln in part.splitlines() if ln.startswith(f"-A {builtin} ")]
            assert len(jumps) == 1, jumps
    assert lab.tcp_probe("client1", VIP, 80).ok
    assert "# Generated" not in again and not re.search(r"\[(?!0:0\])\d+:\d+\]", again)


def test_iptables_read_back_matches_the_applied_rules(bare_ns):
    rules = iptables_rules()
    apply_iptables(bare_ns, rules)
    got = read_back(bare_ns, "iptables")
    # iptables-save lists the same rule lines (canonical form) and chains
    want_rules = sorted(ln for ln in rules.splitlines() if ln.startswith("-A "))
    assert sorted(ln for ln in got.splitlines() if ln.startswith("-A ")) == want_rules
    want_chains = sorted(ln for ln in rules.splitlines() if ln.startswith(":"))
    assert sorted(ln for ln in got.splitlines() if ln.startswith(":")) == want_chains


def test_iptables_stale_chains_are_removed(make_lab):
    lab = make_lab(Topology.simple(nodes=1, pods_per_node=2, clients=1))
    node = lab.ns("node1")
    lab.serve("pod1-1", tcp_ports=[8080])
    lab.serve("pod1-2", tcp_ports=[8080])
    apply_iptables(node, iptables_rules((POD, POD2), old_service=True))
    before = read_back(node, "iptables")
    assert sep(POD, "tcp") in before and SVC_OLD in before
    pods = {lab.tcp_probe("client1", VIP, 80).pod for _ in range(40)}
    assert pods == {"pod1-1", "pod1-2"}

    apply_iptables(node, iptables_rules((POD2,)))  # pod1-1 left, the old service is gone
    after = read_back(node, "iptables")
    assert sep(POD, "tcp") not in after and sep(POD, "udp") not in after
    assert SVC_OLD not in after
    assert sep(POD2, "tcp") in after
    pods = {lab.tcp_probe("client1", VIP, 80).pod for _ in range(20)}
    assert pods == {"pod1-2"}


def _install_foreign_iptables(ns: str) -> None:
    run_in(ns, ["iptables-restore", "-w", "--noflush"], input="\n".join([
        "*filter",
        ":OTHER-FILTER - [0:0]",
        "-A INPUT -j OTHER-FILTER",
        "-A OTHER-FILTER -s 198.51.100.0/24 -j DROP",
        "COMMIT",
        "*nat",
        ":OTHER-NAT - [0:0]",
        ":KUBE-KUBELET-CANARY - [0:0]",
        "-A POSTROUTING -j OTHER-NAT",
        "-A OTHER-NAT -d 198.51.100.7/32 -j RETURN",
        "COMMIT",
    ]) + "\n")
    run_in(ns, ["iptables", "-w", "-P", "FORWARD", "DROP"])
    run_in(ns, ["nft", "-f", "-"], input=(
        "table inet other {\n chain input {\n  type filter hook input priority 0; policy accept;\n"
        "  tcp dport 9999 counter\n }\n}\n"))


FOREIGN = [
    ":FORWARD DROP [0:0]",
    "-A INPUT -j OTHER-FILTER",
    "-A OTHER-FILTER -s 198.51.100.0/24 -j DROP",
    "-A POSTROUTING -j OTHER-NAT",
    "-A OTHER-NAT -d 198.51.100.7/32 -j RETURN",
]


def test_foreign_rules_survive_apply_and_cleanup(bare_ns):
    _install_foreign_iptables(bare_ns)
    apply_iptables(bare_ns, iptables_rules((POD, POD2)))
    apply_iptables(bare_ns, iptables_rules((POD,)))  # removes stale chains too
    apply_nftables(bare_ns, nft_script())
    text = read_back(bare_ns, "iptables")
    for line in FOREIGN:
        assert line in text.splitlines(), line
    assert ":KUBE-KUBELET-CANARY - [0:0]" in text  # a KUBE-* chain that is not per-service stays
    assert "table inet other" in nft_tables(bare_ns)

    cleanup(bare_ns)
    text = read_back(bare_ns, "iptables")
    # kubelet's canary is not ours: a KUBE- prefix alone does not make a chain ours
    assert [ln for ln in text.splitlines() if "KUBE-" in ln] == [":KUBE-KUBELET-CANARY - [0:0]"]
    for line in FOREIGN:
        assert line in text.splitlines(), line
    assert "table ip kube-proxy" not in nft_tables(bare_ns)
    assert "table inet other" in nft_tables(bare_ns)
    assert "tcp dport 9999 counter" in run_in(bare_ns, ["nft", "list", "table", "inet", "other"]).stdout
    assert read_back(bare_ns, "nftables") == ""

    cleanup(bare_ns)  # idempotent
    assert read_back(bare_ns, "iptables") == text


def test_cleanup_of_an_untouched_namespace_changes_nothing(bare_ns):
    cleanup(bare_ns)
    cleanup(bare_ns, ipv6=True)
    assert read_back(bare_ns, "iptables") == ""
    assert read_back(bare_ns, "nftables") == ""
    assert nft_tables(bare_ns) == []


BAD_NAT = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d 10.96.0.99/32 -j KUBE-NO-SUCH-CHAIN\nCOMMIT\n"


def test_failed_apply_leaves_both_tables_as_they_were(bare_ns):
    _install_foreign_iptables(bare_ns)
    apply_iptables(bare_ns, iptables_rules((POD, POD2)))
    before_full = save(bare_ns)
    before = read_back(bare_ns, "iptables")

    # a good *filter that changes things (and would be committed), then a bad *nat
    good_filter = iptables_rules((POD,)).split("*nat")[0].replace(VIP_EMPTY, "10.96.0.12")
    with pytest.raises(ApplyError) as ei:
        apply_iptables(bare_ns, good_filter + BAD_NAT)
    assert "Chain 'KUBE-NO-SUCH-CHAIN' does not exist" in ei.value.stderr
    assert re.search(r"\[input line \d+: COMMIT of \*nat\]", str(ei.value))  # where it failed
    assert "(tables filter restored)" in str(ei.value)  # filter had been committed
    assert read_back(bare_ns, "iptables") == before

    # a good *nat that drops a stale endpoint, then a *filter the kernel refuses (DNAT in filter)
    good_nat = "*nat" + iptables_rules((POD,)).split("*nat")[1]
    bad_filter = "*filter\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -p tcp -j DNAT --to-destination 10.244.1.10:80\nCOMMIT\n"
    with pytest.raises(ApplyError, match=r"RULE_APPEND failed .*\(tables nat restored\)"):
        apply_iptables(bare_ns, good_nat + bad_filter)
    assert read_back(bare_ns, "iptables") == before
    assert _strip_dates(save(bare_ns)) == _strip_dates(before_full)


def _strip_dates(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))


def test_failed_apply_in_a_fresh_namespace_leaves_no_tables(bare_ns):
    with pytest.raises(ApplyError, match=r"\(tables filter restored\)"):
        apply_iptables(bare_ns, iptables_rules().split("*nat")[0] + BAD_NAT)
    assert read_back(bare_ns, "iptables") == ""
    assert nft_tables(bare_ns) == []


def test_iptables_builtin_policies_are_not_reset(bare_ns):
    run_in(bare_ns, ["iptables", "-w", "-P", "OUTPUT", "DROP"])
    run_in(bare_ns, ["iptables", "-w", "-P", "INPUT", "DROP"])
    apply_iptables(bare_ns, iptables_rules())  # declares ":OUTPUT ACCEPT [0:0]"
    text = read_back(bare_ns, "iptables").splitlines()
    assert ":OUTPUT DROP [0:0]" in text and ":INPUT DROP [0:0]" in text


# --------------------------------------------------------------------------- nftables semantics


def test_nft_reapply_replaces_and_failure_keeps_old_state(lab: Lab):
    node = lab.ns("node1")
    lab.serve("pod1-1", tcp_ports=[8080, 8081])
    apply_nftables(node, nft_script())
    assert lab.tcp_probe("client1", VIP, 80).server_saw_dst == (POD, 8080)
    apply_nftables(node, nft_script(target_port=8081))  # whole-table replacement
    v2 = read_back(node, "nftables")
    assert "dnat to 10.244.1.10:8081" in v2 and ":8080" not in v2
    assert lab.tcp_probe("client1", VIP, 80).server_saw_dst == (POD, 8081)

    # syntax error in the middle: nothing of the file is applied
    broken = nft_script(target_port=8080).replace("jump mark-for-masquerade", "jump nowhere-chain")
    with pytest.raises(ApplyError) as ei:
        apply_nftables(node, broken)
    assert "nowhere-chain" in ei.value.stderr
    # passes parsing, fails at commit (nat statement in a filter hook: EOPNOTSUPP)
    commit_fail = nft_script(target_port=8080).replace("\t\treject\n", "\t\treject\n\t}\n\tchain x {\n\t\ttype filter hook forward priority 0;\n\t\tmeta l4proto tcp dnat to 10.244.1.10:1\n", 1)
    with pytest.raises(ApplyError):
        apply_nftables(node, commit_fail)
    assert read_back(node, "nftables") == v2  # the 'delete table' in the failed files was rolled back too
    assert lab.tcp_probe("client1", VIP, 80).server_saw_dst == (POD, 8081)
