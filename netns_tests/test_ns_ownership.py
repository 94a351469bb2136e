"""Issue 12: cleanup removes exactly what kube-dataplane installed, and puts back what it changed.

* other programs' ``KUBE-*`` chains (kube-router's, kubelet's) survive apply + cleanup byte-identical;
* a chain of ours that another program still jumps to stays, with a warning;
* the sysctls apply changed get their old values back (CVE-2020-8558: after cleanup a
  127.0.0.1-bound service of the node is out of a neighbour's reach again, with packets);
* applying one backend removes what the other one left (with packets: a deleted Service
  stops answering);
* a foreign native nftables ``nat`` table that iptables cannot read makes apply and cleanup
  fail, changing nothing;
* without root, ``apply`` and ``cleanup`` say so in one line.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dataplane.runtime.apply import apply_cluster, apply_compiled
from dataplane.compiler import compile_rules
from dataplane.errors import ApplyError
from dataplane.input.cluster import load_cluster
from dataplane.lab import Lab
from dataplane.runtime.netns import in_netns, read_back, run_in
from dataplane.runtime.ownership import cleanup, record_path
from svc_lab import DUAL_STACK_CLUSTER_CIDR, dual_stack_slices, nodes_yaml, proxy_config_yaml, write_manifests

pytestmark = pytest.mark.netns

CLI = [sys.executable, "-I", "-m", "dataplane"]
ROOT = Path(__file__).resolve().parent.parent
_COUNTERS = re.compile(r"\[\d+:\d+\]")


def dataplane(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(argv), capture_output=True, text=True, cwd=ROOT)


def saved(ns: str, *, ipv6: bool = False) -> str:
    """Every iptables table of ``ns`` (mangle too) without comments, counters zeroed."""
    out = run_in(ns, ["ip6tables-save" if ipv6 else "iptables-save"]).stdout
    return "\n".join(_COUNTERS.sub("[0:0]", ln) for ln in out.splitlines() if not ln.startswith("#"))


def sysctl(ns: str, key: str) -> str:
    with in_netns(ns), open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


def service(name: str, ip: str, ip6: str, node_port: int, pod: str = "pod1-1") -> str:
    """A dual-stack NodePort Service ``default/<name>`` on tcp/80 -> 8080 of ``pod``."""
    return textwrap.dedent(f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: {name}, namespace: default}}
        spec:
          type: NodePort
          ipFamilyPolicy: RequireDualStack
          ipFamilies: [IPv4, IPv6]
          clusterIP: {ip}
          clusterIPs: [{ip}, '{ip6}']
          ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: {node_port}}}]
        ---
        """) + dual_stack_slices("default", name, "[{name: http, port: 8080, protocol: TCP}]", [pod])


WEB = service("web", "10.96.0.80", "fd00:10:96::80", 30080)
API = service("api", "10.96.0.81", "fd00:10:96::81", 30081)


def manifests(tmp_path: Path, *services: str, name: str = "cluster.yaml") -> Path:
    path = write_manifests(tmp_path, proxy_config_yaml(cluster_cidr=DUAL_STACK_CLUSTER_CIDR),
                           nodes_yaml(1, ipv6=True), *services)
    return path.rename(tmp_path / name)


# --------------------------------------------------------------------------- item 2: other programs' KUBE-* chains

LOCALNET_DROP = ('-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet '
                 'connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP')

# kube-router's network-policy chains, and kubelet's canaries and (pre-1.28) firewall, with their jumps
FOREIGN = "\n".join([
    "*mangle",
    ":KUBE-KUBELET-CANARY - [0:0]",
    "COMMIT",
    "*filter",
    ":KUBE-ROUTER-INPUT - [0:0]",
    ":KUBE-ROUTER-FORWARD - [0:0]",
    ":KUBE-ROUTER-OUTPUT - [0:0]",
    ":KUBE-POD-FW-4RJE7QK6CTJQNPNV - [0:0]",
    ":KUBE-NWPLCY-DEFAULT - [0:0]",
    ":KUBE-NWPLCY-B2BMEUS7Y3MCQVVN - [0:0]",
    ":KUBE-KUBELET-CANARY - [0:0]",
    ":KUBE-FIREWALL - [0:0]",
    '-A INPUT -m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-INPUT',
    '-A FORWARD -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T" -j KUBE-ROUTER-FORWARD',
    '-A OUTPUT -m comment --comment "kube-router netpol - VEAAIY32XVBHCSCY" -j KUBE-ROUTER-OUTPUT',
    "-A INPUT -j KUBE-FIREWALL",
    "-A OUTPUT -j KUBE-FIREWALL",
    LOCALNET_DROP,
    '-A KUBE-ROUTER-FORWARD -d 10.244.1.10/32 -m comment --comment "rule to jump traffic destined to POD name:'
    ' web-0 namespace: default to chain KUBE-POD-FW-4RJE7QK6CTJQNPNV" -j KUBE-POD-FW-4RJE7QK6CTJQNPNV',
    "-A KUBE-POD-FW-4RJE7QK6CTJQNPNV -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-A KUBE-POD-FW-4RJE7QK6CTJQNPNV -j KUBE-NWPLCY-B2BMEUS7Y3MCQVVN",
    "-A KUBE-POD-FW-4RJE7QK6CTJQNPNV -j KUBE-NWPLCY-DEFAULT",
    "-A KUBE-NWPLCY-B2BMEUS7Y3MCQVVN -s 10.244.2.0/24 -p tcp -m tcp --dport 8080 -j ACCEPT",
    '-A KUBE-NWPLCY-DEFAULT -m comment --comment "rule to mark traffic matching a network policy" '
    "-j MARK --set-xmark 0x10000/0x10000",
    "COMMIT",
    "*nat",
    ":KUBE-KUBELET-CANARY - [0:0]",
    ":KUBE-ROUTER-SNAT - [0:0]",
    "-A POSTROUTING -j KUBE-ROUTER-SNAT",
    "-A KUBE-ROUTER-SNAT -s 10.244.1.0/24 ! -d 10.244.0.0/16 -j MASQUERADE",
    "COMMIT",
]) + "\n"


def test_cleanup_leaves_other_programs_kube_chains_byte_identical(bare_ns, tmp_path):
    run_in(bare_ns, ["iptables-restore", "-w", "--noflush"], input=FOREIGN)
    before = saved(bare_ns)
    path = manifests(tmp_path, WEB, API)
    for _ in range(2):  # a full, then an incremental apply
        run = dataplane("apply", "-f", str(path), "--node", "node1", "--netns", bare_ns)
        assert run.returncode == 0, run.stderr
    during = saved(bare_ns)
    for chain in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-FORWARD",
                  "KUBE-PROXY-FIREWALL", "KUBE-EXTERNAL-SERVICES"):
        assert f":{chain} - [0:0]" in during, chain
    assert "-j KUBE-SVC-" in during and "KUBE-ROUTER-FORWARD" in during

    run = dataplane("cleanup", "--netns", bare_ns)
    assert run.returncode == 0, run.stderr
    assert run.stderr == f"removed kube-dataplane's rules from netns {bare_ns}\n"
    assert saved(bare_ns) == before  # ours gone, theirs (KUBE-FIREWALL with its jumps too) as they were
    assert not os.path.exists(os.path.dirname(record_path(bare_ns)))


def test_a_chain_of_ours_another_program_jumps_to_stays_until_it_no_longer_does(bare_ns, tmp_path):
    path = manifests(tmp_path, WEB)
    assert dataplane("apply", "-f", str(path), "--node", "node1", "--netns", bare_ns).returncode == 0
    # a hostport chain of another program that marks for kube-proxy's masquerade
    run_in(bare_ns, ["iptables-restore", "-w", "--noflush"], input=(
        "*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n-A PREROUTING -j CNI-HOSTPORT-DNAT\n"
        "-A CNI-HOSTPORT-DNAT -p tcp -m tcp --dport 8443 -j KUBE-MARK-MASQ\nCOMMIT\n"))
    run = dataplane("cleanup", "--netns", bare_ns)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines()[0] == ("warning: kept ipv4 nat chain(s) KUBE-MARK-MASQ: rules of another "
                                          "program still jump to them")
    text = saved(bare_ns)
    kube = sorted({c for c in re.findall(r"KUBE-[A-Z0-9-]+", text)})
    assert kube == ["KUBE-MARK-MASQ"], kube
    assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000" in text.splitlines()
    assert "-A CNI-HOSTPORT-DNAT -p tcp -m tcp --dport 8443 -j KUBE-MARK-MASQ" in text.splitlines()

    run_in(bare_ns, ["iptables", "-w", "-t", "nat", "-F", "CNI-HOSTPORT-DNAT"])
    run = dataplane("cleanup", "--netns", bare_ns)  # still recorded as ours: now it goes
    assert run.returncode == 0 and "warning" not in run.stderr, run.stderr
    assert "KUBE-" not in saved(bare_ns)


# --------------------------------------------------------------------------- item 3: sysctls, CVE-2020-8558


def _connect(lab: Lab, member: str, dst: str, port: int) -> str:
    """A bare TCP connect from ``member``: "connected", "refused" or "timeout"."""
    with in_netns(lab.ns(member)):
        s = socket.socket()
    with s:
        s.settimeout(0.5)
        try:
            s.connect((dst, port))
        except ConnectionRefusedError:
            return "refused"
        except (TimeoutError, socket.timeout):
            return "timeout"
    return "connected"


def test_cleanup_restores_route_localnet_and_localhost_stays_out_of_reach(lab: Lab, tmp_path):
    node = lab.ns("node1")
    # the neighbour client1 routes 127.0.0.1 to node1 (CVE-2020-8558's attacker on the same L2)
    lab.run("client1", ["ip", "addr", "flush", "dev", "lo"])
    lab.run("client1", ["ip", "route", "add", "127.0.0.1/32", "via", "192.0.2.1", "dev", "eth0"])
    lab.set_sysctls("client1", {"net.ipv4.conf.all.route_localnet": "1", "net.ipv4.conf.eth0.route_localnet": "1"})
    with in_netns(node):
        listener = socket.socket()
    with listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 7070))  # a node-local service that trusts localhost
        listener.listen(16)
        assert sysctl(node, "net.ipv4.conf.all.route_localnet") == "0"
        assert sysctl(node, "net.ipv4.ip_forward") == "1"  # the lab's, not apply's
        assert _connect(lab, "client1", "127.0.0.1", 7070) == "timeout"  # martian: dropped

        cluster = load_cluster([str(manifests(tmp_path, WEB))]).cluster
        apply_cluster(node, cluster, "node1", backend="iptables")
        assert sysctl(node, "net.ipv4.conf.all.route_localnet") == "1"  # for localhost NodePorts
        assert _connect(lab, "client1", "127.0.0.1", 7070) == "timeout"  # the localnet DROP
        apply_cluster(node, cluster, "node1", backend="iptables", full=True)  # records "0" only once

        run = dataplane("cleanup", "--netns", node)
        assert run.returncode == 0, run.stderr
        assert sysctl(node, "net.ipv4.conf.all.route_localnet") == "0"
        assert sysctl(node, "net.ipv4.ip_forward") == "1"  # apply did not change it: it stays
        assert "KUBE-FIREWALL" not in saved(node)  # the DROP is gone...
        assert _connect(lab, "client1", "127.0.0.1", 7070) == "timeout"  # ...and localhost is closed again

        # the same route with route_localnet left on, as cleanup used to leave it, gets in
        lab.set_sysctls("node1", {"net.ipv4.conf.all.route_localnet": "1"})
        assert _connect(lab, "client1", "127.0.0.1", 7070) == "connected"


def test_sysctls_get_their_previous_values_back_per_family(bare_ns, tmp_path):
    # someone else turned route_localnet on before us: it is not ours to turn off
    run_in(bare_ns, ["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1", "net.ipv4.ip_forward=0",
                     "net.ipv6.conf.all.forwarding=0"])
    cluster = load_cluster([str(manifests(tmp_path, WEB))]).cluster
    for family in ("ipv4", "ipv6"):
        apply_compiled(bare_ns, compile_rules(cluster, "node1", backend="iptables", family=family))
    assert [sysctl(bare_ns, k) for k in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding",
                                         "net.ipv4.conf.all.route_localnet")] == ["1", "1", "1"]
    # changed behind our back after the first change: cleanup still restores the value before it
    run_in(bare_ns, ["sysctl", "-qw", "net.ipv4.ip_forward=0"])
    apply_compiled(bare_ns, compile_rules(cluster, "node1", backend="iptables", family="ipv4"))

    cleanup(bare_ns)  # IPv4 only: IPv6 keeps its rules and its forwarding
    assert sysctl(bare_ns, "net.ipv4.ip_forward") == "0"
    assert sysctl(bare_ns, "net.ipv4.conf.all.route_localnet") == "1"
    assert sysctl(bare_ns, "net.ipv6.conf.all.forwarding") == "1"
    assert "KUBE-SERVICES" in saved(bare_ns, ipv6=True)
    cleanup(bare_ns, ipv6=True)
    assert sysctl(bare_ns, "net.ipv6.conf.all.forwarding") == "0"
    assert "KUBE-" not in saved(bare_ns, ipv6=True)
    assert not os.path.exists(record_path(bare_ns))


# --------------------------------------------------------------------------- item 6: switching backends


@pytest.mark.parametrize("first,second", [("iptables", "nftables"), ("nftables", "iptables")])
def test_switching_backend_removes_the_other_backends_rules(lab: Lab, tmp_path, first, second):
    node = lab.ns("node1")
    lab.serve("pod1-1", tcp_ports=[8080])
    both = manifests(tmp_path, WEB, API, name="both.yaml")
    api_only = manifests(tmp_path, API, name="api.yaml")
    run = dataplane("apply", "-f", str(both), "--node", "node1", "--netns", node, "--backend", first)
    assert run.returncode == 0, run.stderr
    assert "warning" not in run.stderr, run.stderr
    assert lab.tcp_probe("client1", "10.96.0.80", 80).pod == "pod1-1"

    run = dataplane("apply", "-f", str(api_only), "--node", "node1", "--netns", node, "--backend", second)
    assert run.returncode == 0, run.stderr
    notes = [ln for ln in run.stderr.splitlines() if ln.startswith("warning:")]
    assert len(notes) == 1 and f"netns {node}: removed the {first} rules an earlier apply left" in notes[0], notes
    assert lab.tcp_probe("client1", "10.96.0.81", 80).pod == "pod1-1"
    # web was deleted: its VIP must not reach its pod through the first backend's rules
    assert lab.tcp_probe("client1", "10.96.0.80", 80, timeout=0.5).outcome == "timeout"
    if first == "iptables":
        assert "KUBE-" not in read_back(node, "iptables")
        assert sysctl(node, "net.ipv4.conf.all.route_localnet") == "0"  # only iptables needed it
    else:
        assert read_back(node, "nftables") == ""
    assert sysctl(node, "net.ipv4.ip_forward") == "1"

    run = dataplane("apply", "-f", str(api_only), "--node", "node1", "--netns", node, "--backend", second)
    assert run.returncode == 0 and "warning" not in run.stderr, run.stderr  # nothing left to remove


# --------------------------------------------------------------------------- item 7: a table iptables cannot read


def _foreign_nat(family: str) -> str:
    """A native nftables base chain in iptables' own ``nat`` table, as nft users write it."""
    fam = "ip6" if family == "ipv6" else "ip"
    return (f"table {fam} nat {{\n chain postrouting {{\n  type nat hook postrouting priority srcnat; "
            "policy accept;\n  oifname \"eth9\" masquerade\n }\n}\n")


def _state(ns: str) -> tuple[str, str, str]:
    return (run_in(ns, ["nft", "list", "ruleset"]).stdout, sysctl(ns, "net.ipv4.conf.all.route_localnet"),
            sysctl(ns, "net.ipv6.conf.all.forwarding"))


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_a_foreign_native_nat_table_makes_apply_and_cleanup_fail_changing_nothing(bare_ns, tmp_path, family):
    save = "ip6tables-save" if family == "ipv6" else "iptables-save"
    path = manifests(tmp_path, WEB)
    apply_argv = ["apply", "-f", str(path), "--node", "node1", "--netns", bare_ns, "--ip-family", family]
    run_in(bare_ns, ["nft", "-f", "-"], input=_foreign_nat(family))
    before = _state(bare_ns)
    run = dataplane(*apply_argv)
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and run.stderr.startswith(
        f"error: {save}: the nat table(s) of network namespace {bare_ns} hold nftables rules of another program"
    ), run.stderr
    assert "nothing was changed" in run.stderr
    assert _state(bare_ns) == before

    # our rules went in first; the foreign chain came later: neither apply nor cleanup may
    # act on a table they cannot read (apply would add every jump again, cleanup miss our chains)
    fam = "ip6" if family == "ipv6" else "ip"
    run_in(bare_ns, ["nft", "delete", "table", fam, "nat"])
    assert dataplane(*apply_argv).returncode == 0
    run_in(bare_ns, ["nft", "-f", "-"], input=_foreign_nat(family))  # added to iptables' own table
    before = _state(bare_ns)
    assert "KUBE-SERVICES" in before[0]
    run = dataplane(*apply_argv, "--full")
    assert run.returncode == 1 and "nothing was changed" in run.stderr, run.stderr
    run = dataplane("cleanup", "--netns", bare_ns)
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "nothing was changed" in run.stderr, run.stderr
    with pytest.raises(ApplyError, match="iptables cannot read"):
        cleanup(bare_ns, ipv6=family == "ipv6")
    assert _state(bare_ns) == before

    run_in(bare_ns, ["nft", "delete", "chain", fam, "nat", "postrouting"])
    run = dataplane("cleanup", "--netns", bare_ns)
    assert run.returncode == 0, run.stderr
    assert "KUBE-" not in saved(bare_ns, ipv6=family == "ipv6")


# --------------------------------------------------------------------------- without root


def _nobody_is_mapped() -> bool:
    """Whether uid 65534 exists in this user namespace (not when run with --map-root-user only)."""
    with open("/proc/self/uid_map") as f:
        for line in f:
            inside, _, count = (int(x) for x in line.split())
            if inside <= 65534 < inside + count:
                return True
    return False


@pytest.mark.parametrize("command", ["apply", "cleanup"])
def test_apply_and_cleanup_as_nobody_fail_in_one_line(bare_ns, command):
    if not _nobody_is_mapped():
        pytest.skip("uid 65534 is not mapped in this user namespace: cannot drop to nobody")
    argv = {"apply": ["apply", "-f", "examples/cluster.yaml", "--allocate", "--node", "node-a", "--netns", bare_ns],
            "cleanup": ["cleanup", "--netns", bare_ns]}[command]
    before = saved(bare_ns), run_in(bare_ns, ["nft", "list", "ruleset"]).stdout
    run = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *CLI, *argv],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1
    assert run.stderr == (f"error: dataplane {command} needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), for example "
                          "`sudo`, or `unshare --user --map-root-user --net --mount` for a private sandbox\n")
    assert (saved(bare_ns), run_in(bare_ns, ["nft", "list", "ruleset"]).stdout) == before
