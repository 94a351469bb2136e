"""Issue 5, part 2: a whole cluster in namespaces from manifests (``dataplane lab up/down``) and
``dataplane verify``, which proves every Service frontend with packets against the plan and the
tracer.

The CLI is exercised as a subprocess (``python -m dataplane``), as a user runs it: ``up`` and
``down`` are separate processes, and ``up``/``verify`` are killed mid-run to check that the next
command cleans up after them. A deliberately broken backend (a monkeypatched renderer) must make
``verify`` report mismatches and exit 1. The layout tests at the end need no privileges.
"""
from __future__ import annotations

import argparse
import io
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from dataplane.backends import iptables as ipt
from dataplane.backends import nftables as nft
from dataplane.controllers.allocation import allocate_cluster
from dataplane.controllers.endpointslices import with_derived_slices
from dataplane.input.cluster import load_cluster
from dataplane.errors import LabError
from dataplane.lab import Lab, derive_layout, families_in_use, tcp_probe, udp_probe
from dataplane.lab.cluster import forget_namespace
from dataplane.lab.state import LABS_DIR
from dataplane.model import (
    Cluster,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    LoadBalancerIngress,
    Node,
    NodeAddress,
    Service,
    ServicePort,
)
from dataplane.runtime.netns import NETNS_DIR
from dataplane.verify import Progress, Report, _use_color, add_commands
from svc_lab import BACKENDS

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "cluster.yaml"
SEED = 1

netns = pytest.mark.netns

# A dual-stack cluster with what the example lacks: a LoadBalancer with source ranges and
# externalTrafficPolicy Local (a serving-terminating endpoint on node2), externalIPs, an
# internalTrafficPolicy Local Service, an IPv6-only NodePort whose endpoint has no Pod object,
# a host-network endpoint (the API server on node1's own address), session affinity, and SCTP
# NodePorts that are rejected (no endpoints) or dropped (eTP Local on node2).
RICH = """
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clusterCIDR: 10.244.0.0/16,fd00:10:244::/48
---
apiVersion: v1
kind: Node
metadata: {name: node1}
spec: {podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]}
status: {addresses: [{type: InternalIP, address: 192.0.2.1}, {type: InternalIP, address: "2001:db8::1"}]}
---
apiVersion: v1
kind: Node
metadata: {name: node2}
spec: {podCIDRs: [10.244.2.0/24, "fd00:10:244:2::/64"]}
status: {addresses: [{type: InternalIP, address: 192.0.2.2}, {type: InternalIP, address: "2001:db8::2"}]}
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: default}
spec:
  type: LoadBalancer
  ipFamilyPolicy: PreferDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIPs: [10.96.0.20, "fd00:96::20"]
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  loadBalancerSourceRanges: [203.0.113.0/24, "2001:db8:f::/64"]
  externalIPs: [198.51.100.7]
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}
status: {loadBalancer: {ingress: [{ip: 198.51.100.50}, {ip: "2001:db8:1::50"}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-v4, namespace: default, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node1, targetRef: {kind: Pod, namespace: default, name: a}}
- {addresses: [10.244.2.10], nodeName: node2, conditions: {ready: false, serving: true, terminating: true},
   targetRef: {kind: Pod, namespace: default, name: b}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-v6, namespace: default, labels: {kubernetes.io/service-name: lb}}
addressType: IPv6
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: ["fd00:10:244:1::10"], nodeName: node1, targetRef: {kind: Pod, namespace: default, name: a}}
---
apiVersion: v1
kind: Service
metadata: {name: internal, namespace: default}
spec:
  ipFamilyPolicy: PreferDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIPs: [10.96.0.21, "fd00:96::21"]
  internalTrafficPolicy: Local
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: internal-v4, namespace: default, labels: {kubernetes.io/service-name: internal}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.244.2.10], nodeName: node2, targetRef: {kind: Pod, namespace: default, name: b}}
---
apiVersion: v1
kind: Service
metadata: {name: v6only, namespace: default}
spec:
  type: NodePort
  ipFamilies: [IPv6]
  clusterIPs: ["fd00:96::22"]
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30081}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: v6only, namespace: default, labels: {kubernetes.io/service-name: v6only}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: ["fd00:10:244:2::11"], nodeName: node2}
---
apiVersion: v1
kind: Service
metadata: {name: signalling, namespace: default}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  clusterIPs: [10.96.0.40, "fd00:96::40"]
  externalTrafficPolicy: Local
  selector: {app: diameter}
  ports: [{name: diameter, port: 3868, protocol: SCTP, nodePort: 31868}]
---
apiVersion: v1
kind: Service
metadata: {name: gone, namespace: default}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  clusterIPs: [10.96.0.41, "fd00:96::41"]
  selector: {app: gone}
  ports: [{name: diameter, port: 3868, protocol: SCTP, nodePort: 31869}]
---
apiVersion: v1
kind: Pod
metadata: {name: diameter-0, namespace: default, labels: {app: diameter}}
spec: {nodeName: node1, containers: [{name: diameter, ports: [{containerPort: 3868, protocol: SCTP}]}]}
status:
  phase: Running
  podIPs: [{ip: 10.244.1.50}, {ip: "fd00:10:244:1::50"}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Service
metadata: {name: kubernetes, namespace: default}
spec:
  clusterIP: 10.96.0.1
  ports: [{name: https, port: 443, targetPort: 6443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kubernetes, namespace: default, labels: {kubernetes.io/service-name: kubernetes}}
addressType: IPv4
ports: [{name: https, port: 6443}]
endpoints:
- {addresses: [192.0.2.1]}
"""


# --------------------------------------------------------------------------- helpers


def dataplane(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the CLI as a user would: ``python -m dataplane ARGS`` in the repository."""
    return subprocess.run([sys.executable, "-I", "-m", "dataplane", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def namespaces(prefix: str = "") -> set[str]:
    try:
        return {n for n in os.listdir(NETNS_DIR) if n.startswith(prefix)}
    except FileNotFoundError:
        return set()


def lab_state_files() -> set[str]:
    try:
        return set(os.listdir(LABS_DIR))
    except FileNotFoundError:
        return set()


def lab_name() -> str:
    return "t" + os.urandom(3).hex()


def state(name: str) -> Optional[dict]:
    try:
        return json.loads((Path(LABS_DIR) / f"{name}.json").read_text())
    except FileNotFoundError:
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def assert_nothing_left(prefix: str) -> None:
    assert namespaces(prefix) == set(), f"namespaces left: {sorted(namespaces(prefix))}"
    assert not [f for f in lab_state_files() if f.startswith(prefix)]
    records = Path("/run/kube-dataplane")
    left = [p.name for p in records.iterdir() if p.name.startswith(prefix)] if records.exists() else []
    assert left == [], f"apply records left: {left}"


def example_cluster() -> Cluster:
    """The bundled example as `--allocate --seed 1` fills it in, with derived EndpointSlices."""
    cluster = load_cluster([str(EXAMPLE)]).cluster
    return with_derived_slices(allocate_cluster(cluster, seed=SEED).cluster)


def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.001)


def run_verify_in_process(argv: list[str], capsys) -> tuple[int, dict]:
    """``dataplane verify ARGV --json`` in this process (so monkeypatches apply)."""
    parser = argparse.ArgumentParser(prog="dataplane")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["verify", *argv, "--json"])
    rc = args.func(args)
    return rc, json.loads(capsys.readouterr().out)


# --------------------------------------------------------------------------- verify


@netns
@pytest.mark.parametrize("backend", BACKENDS)
def test_verify_of_the_bundled_example_passes(backend):
    before = namespaces()
    run = dataplane("verify", "-f", str(EXAMPLE), "--allocate", "--seed", str(SEED), "--backend", backend, "--json")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] and report["mismatches"] == 0 and report["backend"] == backend
    results = report["results"]
    # 6 service ports on each of 2 nodes: ClusterIP from the probe pod and from the node, plus the
    # NodePort from outside for web:http, web:metrics and signalling (SCTP)
    assert report["flows"] == len(results) == 2 * (6 * 2 + 3)
    assert {r["protocol"] for r in results} == {"tcp", "udp", "sctp"}
    assert {r["frontend"]["kind"] for r in results} == {"clusterIP", "nodePort"}
    for r in results:
        assert r["ok"] and r["problems"] == []
        assert r["kernel"]["outcome"] == r["expected"]["outcome"]
        if r["service"] == "shop/reports":  # no endpoints: REJECT
            assert r["kernel"]["outcome"] == "refused" and r["trace"]["verdict"] == "reject"
        elif r["frontend"]["kind"] == "nodePort":  # eTP Cluster: masqueraded to the node's address
            assert r["kernel"]["source_seen"] == r["frontend"]["address"]
            assert r["trace"]["masquerade"] is True
        elif r["source"]["kind"] == "pod":  # pod traffic keeps its source
            assert r["kernel"]["source_seen"] == r["source"]["address"]
    sctp = [r for r in results if r["protocol"] == "sctp"]
    assert {r["kernel"]["endpoint"] for r in sctp} == {"10.244.1.11:3868"}
    assert namespaces() == before and not [f for f in lab_state_files() if f.startswith("dpv")]


@netns
@pytest.mark.parametrize("backend", BACKENDS)
def test_verify_of_a_rich_dual_stack_cluster_passes(backend, tmp_path, capsys):
    manifest = tmp_path / "rich.yaml"
    manifest.write_text(RICH)
    rc, report = run_verify_in_process(["-f", str(manifest), "--backend", backend], capsys)
    bad = [r for r in report["results"] if not r["ok"]]
    assert rc == 0 and not bad, json.dumps(bad, indent=1)[:4000]
    results = report["results"]
    assert report["families"] == ["ipv4", "ipv6"]
    kinds = {(r["frontend"]["kind"], r["source"]["kind"]) for r in results}
    assert kinds == {("clusterIP", "pod"), ("clusterIP", "node"), ("nodePort", "client"),
                     ("externalIP", "client"), ("loadBalancer", "client"), ("loadBalancer", "denied")}
    lb = [r for r in results if r["frontend"]["kind"] == "loadBalancer"]
    for r in lb:
        allowed = ipaddress.ip_address(r["source"]["address"]) in ipaddress.ip_network(
            "203.0.113.0/24" if r["family"] == "ipv4" else "2001:db8:f::/64")
        assert allowed == (r["source"]["kind"] == "client")
        if not allowed:
            assert r["kernel"]["outcome"] == "timeout" and r["trace"]["verdict"] == "drop"
    # eTP Local: node2 answers external IPv4 flows with its serving-terminating endpoint, unmasqueraded;
    # it has no IPv6 endpoint, so it drops them
    node2_ext = [r for r in results if r["node"] == "node2" and r["service"].startswith("default/lb")
                 and r["source"]["kind"] == "client"]
    assert node2_ext
    for r in node2_ext:
        if r["family"] == "ipv4":
            assert r["kernel"]["endpoint"].startswith("10.244.2.10:")
            assert r["kernel"]["source_seen"] == r["source"]["address"]
        else:
            assert r["kernel"]["outcome"] == "timeout"
    # the host-network endpoint answers from node1 itself
    api = [r for r in results if r["service"] == "default/kubernetes:https"]
    assert api and {r["kernel"]["endpoint"] for r in api} == {"192.0.2.1:6443"}
    assert {r["kernel"]["pod"] for r in api} == {"node1"}
    # SCTP: captured at the pod, or rejected, or dropped (from the node too, where sending fails)
    sctp = {(r["service"], r["node"], r["frontend"]["kind"], r["source"]["kind"], r["family"]): r["kernel"]["outcome"]
            for r in results if r["protocol"] == "sctp"}
    assert len(sctp) == 2 * 2 * 3 * 2
    assert {o for (svc, *_), o in sctp.items() if svc == "default/gone:diameter"} == {"refused"}
    assert {k[1:] for k, o in sctp.items() if o == "timeout"} == {("node2", "nodePort", "client", f)
                                                                   for f in ("ipv4", "ipv6")}


def _broken_iptables(monkeypatch) -> str:
    """Rules without the DNAT of one web:http endpoint (its endpoint chain only marks for masquerade)."""
    render_file = ipt.render_file

    def broken(*args, **kwargs):
        text = render_file(*args, **kwargs)
        return "".join(line for line in text.splitlines(keepends=True)
                       if "--to-destination 10.244.2.10:8080" not in line)

    monkeypatch.setattr(ipt, "render_file", broken)
    return "10.244.2.10:8080"


def _broken_nftables(monkeypatch) -> str:
    """Rules that send one web:http endpoint's traffic to the metrics port (which its pod also serves)."""
    render_full = nft.render_full

    def broken(*args, **kwargs):
        return render_full(*args, **kwargs).replace("dnat to 10.244.2.10:8080", "dnat to 10.244.2.10:9090")

    monkeypatch.setattr(nft, "render_full", broken)
    return "10.244.2.10:9090"


@netns
@pytest.mark.parametrize("backend", BACKENDS)
def test_verify_reports_broken_rules_and_exits_1(backend, monkeypatch, capsys):
    culprit = (_broken_iptables if backend == "iptables" else _broken_nftables)(monkeypatch)
    rc, report = run_verify_in_process(["-f", str(EXAMPLE), "--allocate", "--seed", str(SEED),
                                        "--backend", backend], capsys)
    assert rc == 1 and not report["ok"]
    bad = [r for r in report["results"] if not r["ok"]]
    web_http = [r for r in report["results"] if r["service"] == "shop/web:http"]
    # every web:http flow on both nodes, and nothing else: the tracer sees the broken endpoint
    # set on every one of them, whichever endpoint the kernel happened to pick
    assert bad == web_http and len(bad) == 2 * 3
    for r in bad:
        assert any(p.startswith("trace: endpoints") for p in r["problems"]), r["problems"]
        if backend == "nftables":
            assert culprit in r["trace"]["endpoints"]
        else:
            assert r["trace"]["endpoints"] == ["10.244.1.10:8080"]
        if r["kernel"]["endpoint"] == culprit:  # the kernel went there: the plan disagrees too
            assert any(p.startswith("kernel:") for p in r["problems"])


# kubernetes/examples' glusterfs volume example (volumes/glusterfs: glusterfs-endpoints.yaml and
# glusterfs-service.yaml): a selectorless Service whose Endpoints are storage servers outside the
# cluster, with the example's Node and a web Service whose Pod the lab does build.
GLUSTERFS = """
apiVersion: v1
kind: Node
metadata: {name: node1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 192.0.2.1}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: glusterfs-cluster}
subsets:
- addresses: [{ip: 10.240.106.152}]
  ports: [{port: 1}]
- addresses: [{ip: 10.240.79.157}]
  ports: [{port: 1}]
---
apiVersion: v1
kind: Service
metadata: {name: glusterfs-cluster}
spec:
  clusterIP: 10.96.0.40
  ports: [{port: 1}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.41
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web}}
spec: {nodeName: node1, containers: [{name: c, image: nginx, ports: [{containerPort: 8080}]}]}
status: {podIP: 10.244.1.10, conditions: [{type: Ready, status: "True"}]}
"""


@netns
@pytest.mark.parametrize("backend", BACKENDS)
def test_flows_to_endpoints_outside_the_lab_are_skipped_not_failed(backend, tmp_path):
    manifest = tmp_path / "glusterfs.yaml"
    manifest.write_text(GLUSTERFS)
    run = dataplane("verify", "-f", str(manifest), "--backend", backend, "--json")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    assert "10.240.106.152" in run.stderr and "not built" in run.stderr  # the layout's warning
    report = json.loads(run.stdout)
    results = report["results"]
    gluster = [r for r in results if r["service"] == "default/glusterfs-cluster"]
    web = [r for r in results if r["service"] == "default/web"]
    assert len(gluster) == len(web) == 2  # the ClusterIP from the probe pod and from the node
    assert report["ok"] and report["mismatches"] == 0 and report["skipped"] == 2
    for r in gluster:
        assert r["result"] == "skipped" and r["ok"] and r["problems"] == []
        assert "the lab cannot build endpoints 10.240.106.152:1, 10.240.79.157:1" in r["skipped"]
        # the rules are still proven right by the tracer: DNAT to the two storage servers
        assert r["trace"]["verdict"] == "dnat"
        assert set(r["trace"]["endpoints"]) == {"10.240.106.152:1", "10.240.79.157:1"}
    for r in web:
        assert r["result"] == "ok" and r["skipped"] is None
        assert r["kernel"]["endpoint"] == "10.244.1.10:8080"
    table = dataplane("verify", "-f", str(manifest), "--backend", backend)
    assert table.returncode == 0, table.stdout + table.stderr
    lines = table.stdout.splitlines()
    assert sum(line.endswith(" skipped") for line in lines) == 2 and sum(line.endswith(" OK") for line in lines) == 2
    assert "skipped:" in lines
    assert lines[-1].startswith(f"verify: 4 flows on 1 node(s) ({backend}, ipv4): 2 OK, 2 skipped "
                                "(the lab cannot build them) in ")


@netns
def test_a_skipped_flow_still_fails_when_the_tracer_disagrees_with_the_plan(monkeypatch, capsys, tmp_path):
    # rules without the DNAT to one storage server are a mismatch even where the kernel cannot be judged
    manifest = tmp_path / "glusterfs.yaml"
    manifest.write_text(GLUSTERFS)
    render_file = ipt.render_file

    def broken(*args, **kwargs):
        text = render_file(*args, **kwargs)
        return "".join(line for line in text.splitlines(keepends=True)
                       if "--to-destination 10.240.106.152:1" not in line)

    monkeypatch.setattr(ipt, "render_file", broken)
    rc, report = run_verify_in_process(["-f", str(manifest), "--backend", "iptables"], capsys)
    gluster = [r for r in report["results"] if r["service"] == "default/glusterfs-cluster"]
    assert rc == 1 and gluster and all(r["result"] == "mismatch" and r["skipped"] for r in gluster)
    assert all(any(p.startswith("trace: endpoints 10.240.79.157:1;") for p in r["problems"]) for r in gluster)
    assert [r["result"] for r in report["results"] if r["service"] == "default/web"] == ["ok", "ok"]


@netns
def test_verify_table_output_without_a_terminal(tmp_path):
    run = dataplane("verify", "-f", str(EXAMPLE), "--allocate", "--seed", str(SEED))
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["NODE", "SERVICE", "PORT", "FRONTEND", "SOURCE", "EXPECTED", "KERNEL", "TRACE",
                                "RESULT"]
    assert all(line.endswith(" OK") for line in lines[1:-1])
    assert lines[-1].startswith("verify: 30 flows on 2 node(s) (iptables, ipv4): all OK in ")
    assert "\x1b" not in run.stdout and "\r" not in run.stderr  # no colours, no progress bar on pipes


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colours_and_progress_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert _use_color(_Tty()) and not _use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not _use_color(_Tty())
    tty, pipe = _Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = Progress(2, stream=stream)
        bar.advance("a")
        bar.advance("b")
        bar.close()
    assert "2/2" in tty.getvalue() and pipe.getvalue() == ""
    empty = Report((), "iptables", ("ipv4",), 1, 0.1)
    assert "all OK" in empty.render(color=True)


# --------------------------------------------------------------------------- lab up / down


@netns
def test_lab_up_then_down_from_another_process():
    name = lab_name()
    up = dataplane("lab", "up", "-f", str(EXAMPLE), "--allocate", "--seed", str(SEED), "--name", name)
    try:
        assert up.returncode == 0, up.stderr
        assert f"lab {name} is up: 2 node(s), 4 pod(s), 2 clients; iptables rules, ipv4" in up.stdout
        assert f"remove: dataplane lab down --name {name}" in up.stdout
        st = state(name)
        assert st and st["ready"] is True and alive(st["server_pid"])
        assert namespaces(name + "-") == set(st["namespaces"]) and len(st["namespaces"]) == 11
        # the lab keeps working after `up` exited: its servers live in the server process
        cluster = example_cluster()
        web = next(s for s in cluster.services if s.name == "web")
        dns = next(s for s in cluster.services if s.name == "kube-dns")
        r = tcp_probe(f"{name}-client", "192.0.2.2", web.ports[0].node_port, 1.0)
        assert r.ok and r.pod in {"web-5d9c7b6f4-x2kqp", "web-5d9c7b6f4-7hmzt"} and r.server_saw_dst[1] == 8080
        r = udp_probe(f"{name}-node-a-probe", dns.cluster_ips[0], 53, 1.0)
        assert r.ok and r.pod == "coredns-76f75df574-pq8vd" and r.server_saw_src[0] == "10.244.1.254"
    finally:
        down = dataplane("lab", "down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert f"lab {name} is down: removed 11 network namespace(s)" in down.stderr
    assert not alive(st["server_pid"])
    assert_nothing_left(name)


@netns
def test_lab_up_refuses_a_running_lab_and_down_needs_one():
    name = lab_name()
    args = ["lab", "up", "-f", str(EXAMPLE), "--allocate", "--name", name, "--backend", "nftables"]
    assert dataplane(*args).returncode == 0
    try:
        again = dataplane(*args)
        assert again.returncode == 1
        errors = [line for line in again.stderr.splitlines() if not line.startswith("warning: ")]
        assert errors == [f"error: lab {name} is already up; remove it first with: dataplane lab down --name {name}"]
    finally:
        assert dataplane("lab", "down", "--name", name).returncode == 0
    gone = dataplane("lab", "down", "--name", name)
    assert gone.returncode == 1 and gone.stderr == f"error: no lab named {name} is up (no {LABS_DIR}/{name}.json)\n"
    bad = dataplane("lab", "down", "--name", "Bad-Name")
    assert bad.returncode == 1 and bad.stderr.startswith("error: lab name 'Bad-Name':")
    assert_nothing_left(name)


def _crash_up(name: str) -> None:
    """Start `lab up` and SIGKILL it while it is building."""
    proc = subprocess.Popen([sys.executable, "-I", "-m", "dataplane", "lab", "up", "-f", str(EXAMPLE), "--allocate",
                             "--name", name], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: state(name) is not None and len(namespaces(name + "-")) >= 2, what="the lab to be half built")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    st = state(name)
    assert st is not None and not st.get("ready"), "`lab up` finished before it could be killed"
    assert namespaces(name + "-"), "nothing was left to clean up"


@netns
@pytest.mark.parametrize("cleaner", ["up", "down"])
def test_a_killed_lab_up_is_cleaned_by_the_next_command(cleaner):
    name = lab_name()
    _crash_up(name)
    if cleaner == "up":
        up = dataplane("lab", "up", "-f", str(EXAMPLE), "--allocate", "--name", name)
        assert up.returncode == 0, up.stderr
        assert f"left by an earlier crashed lab {name}" in up.stdout
        assert state(name)["ready"] is True
    down = dataplane("lab", "down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert_nothing_left(name)


@netns
def test_lab_up_replaces_a_lab_whose_server_process_died():
    name = lab_name()
    assert dataplane("lab", "up", "-f", str(EXAMPLE), "--allocate", "--name", name).returncode == 0
    pid = state(name)["server_pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), what="the server process to die")
    up = dataplane("lab", "up", "-f", str(EXAMPLE), "--allocate", "--name", name)
    assert up.returncode == 0, up.stderr
    assert "left by an earlier crashed lab" in up.stdout and alive(state(name)["server_pid"])
    assert dataplane("lab", "down", "--name", name).returncode == 0
    assert_nothing_left(name)


@netns
def test_a_killed_verify_is_swept_by_the_next_verify():
    before = {f for f in lab_state_files() if f.startswith("dpv")}
    proc = subprocess.Popen([sys.executable, "-I", "-m", "dataplane", "verify", "-f", str(EXAMPLE), "--allocate"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: {f for f in lab_state_files() if f.startswith("dpv")} - before and namespaces("dpv"),
                 what="verify's lab")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert namespaces("dpv")
    run = dataplane("verify", "-f", str(EXAMPLE), "--allocate")
    assert run.returncode == 0, run.stdout + run.stderr
    assert_nothing_left("dpv")


@netns
def test_the_server_process_ends_when_its_lab_state_disappears():
    """If `up` dies before the lab records its server process, nobody could stop it: it
    watches the state file and ends on its own once the lab is removed without it."""
    name = lab_name()
    assert dataplane("lab", "up", "-f", str(EXAMPLE), "--allocate", "--name", name).returncode == 0
    st = state(name)
    try:
        os.unlink(Path(LABS_DIR) / f"{name}.json")
        wait_for(lambda: not alive(st["server_pid"]), timeout=5, what="the server process to end")
    finally:
        (Path(LABS_DIR) / f"{name}.json").write_text(json.dumps(st))
        Lab.destroy_from_state(Path(LABS_DIR) / f"{name}.json")
        for ns in st["namespaces"]:
            forget_namespace(ns)
    assert_nothing_left(name)


# --------------------------------------------------------------------------- layouts (no privileges)


def _node(name: str, *ips: str, cidrs: tuple[str, ...] = ()) -> Node:
    return Node(name=name, addresses=tuple(NodeAddress("InternalIP", ip) for ip in ips), pod_cidrs=cidrs)


def test_layout_places_endpoints_without_pods_and_host_network_ones():
    cluster = Cluster(
        nodes=(_node("ip-10-0-1-5.ec2.internal", "10.0.1.5"),
               _node("ip-10-0-2-7.ec2.internal", "10.0.2.7", cidrs=("10.244.2.0/24",))),
        services=(Service("default", "web", cluster_ips=("10.96.0.30",),
                          ports=(ServicePort(80, name="http", target_port=8080),)),),
        endpoint_slices=(EndpointSlice("default", "web", "web", "IPv4", endpoints=(
            Endpoint(("10.244.2.33",)),  # no nodeName: the node whose podCIDR holds it
            Endpoint(("10.244.7.7",), node_name="ip-10-0-1-5.ec2.internal", target_ref_name="web-0"),
            Endpoint(("10.0.2.7",)),  # host network: served by the node itself
            Endpoint(("172.16.0.1",)),  # nowhere: not built, with a warning
        ), ports=(EndpointPort(8080, name="http"),)),),
    )
    layout = derive_layout(cluster, families_in_use(cluster))
    assert [n.member for n in layout.nodes] == ["ip-10-0-1-5-ec2-internal", "ip-10-0-2-7-ec2-internal"]
    assert layout.topology.underlay == "10.0.0.0/22"  # the smallest network holding both nodes
    assert [n.pod_cidrs for n in layout.nodes] == [("10.244.7.0/24",), ("10.244.2.0/24",)]
    pods = {p.ref: (p.node, p.addresses, p.tcp_ports, p.udp_ports) for p in layout.pods}
    assert pods == {"10.244.2.33": ("ip-10-0-2-7.ec2.internal", ("10.244.2.33",), (8080,), ()),
                    "default/web-0": ("ip-10-0-1-5.ec2.internal", ("10.244.7.7",), (8080,), ())}
    assert [(n.tcp_ports, n.udp_ports) for n in layout.nodes] == [((), ()), ((8080,), ())]
    assert len(layout.warnings) == 1 and "172.16.0.1" in layout.warnings[0]
    assert [p.node for p in layout.probes] == [n.name for n in layout.nodes]


def test_layout_of_an_ipv6_only_cluster_with_source_ranges():
    cluster = Cluster(
        nodes=(_node("n1", "2001:db8:5::1", cidrs=("fd00:1::/64",)),),
        services=(Service("default", "lb", type="LoadBalancer", cluster_ips=("fd00:96::1",),
                          ports=(ServicePort(80, node_port=30080),),
                          load_balancer_ingress=(LoadBalancerIngress(ip="2001:db8:5::99"),),
                          load_balancer_source_ranges=("2001:db8:f::/64",)),),
    )
    assert families_in_use(cluster) == ("ipv6",)
    layout = derive_layout(cluster, ("ipv6",))
    node = layout.nodes[0]
    assert node.address("ipv6") == "2001:db8:5::1" and node.address("ipv4") is not None  # IPv4 plumbing
    assert layout.topology.underlay6 == "2001:db8:5::/64"
    allowed, denied = layout.client("allowed"), layout.client("denied")
    # the allowed client gets a source inside the ranges, routed back by the nodes; the denied
    # client's own address is outside them already
    assert [a for a in allowed.aliases if ":" in a] == ["2001:db8:f::1"]
    assert denied.aliases == () and not ipaddress.ip_address(denied.sources("ipv6")[0]) in \
        ipaddress.ip_network("2001:db8:f::/64")
    addresses = [a for c in layout.clients for a in c.addresses] + list(node.addresses)
    assert len(addresses) == len(set(addresses)) and "2001:db8:5::99" not in addresses


def test_layouts_that_cannot_be_built():
    with pytest.raises(LabError, match="no Node objects"):
        derive_layout(Cluster())
    far = Cluster(nodes=(_node("a", "10.0.0.1"), _node("b", "172.16.0.1")))
    with pytest.raises(LabError, match="span .*at most /16"):
        derive_layout(far)
    clash = Cluster(nodes=(_node("a", "10.0.0.1", cidrs=("10.244.0.0/16",)),
                           _node("b", "10.0.0.2", cidrs=("10.244.1.0/24",))))
    with pytest.raises(LabError, match="overlaps"):
        derive_layout(clash)
