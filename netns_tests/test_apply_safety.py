"""Issue 12 (items 4, 5, 10a), proven in namespaces: applies to one namespace are serialised,
drift in the kernel is repaired, and applying leaves no temporary files behind.

* two `dataplane apply` runs started together with different inputs end in exactly one
  input's rules, and the record matches the kernel afterwards;
* a held lock and `--lock-timeout 0.5` give one clear error line, exit 1, nothing changed;
* `iptables -t nat -F KUBE-SERVICES` / `nft flush map ip kube-proxy service-ips` break the
  Service; the next apply says "drift repaired" and packets flow again; without drift (even
  after another program changed its own rules) apply still says "nothing changed";
* apply, rollback and cleanup use no temporary file (the tools read anonymous memfds);
  test_live_updates.py kills applies at random moments and finds no file left either.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from dataplane.runtime.apply import apply_cluster, apply_compiled
from dataplane.compiler import compile_rules
from dataplane.errors import ApplyError
from dataplane.input.cluster import load_cluster
from dataplane.lab import Lab
from dataplane.runtime.netns import apply_iptables, read_back, run_in
from dataplane.runtime.netns import cleanup as netns_cleanup
from dataplane.runtime.nslock import netns_lock
from dataplane.runtime.proxier import NetnsRunner, Proxier
from svc_lab import BACKENDS, canonical_rules, nodes_yaml, proxy_config_yaml, write_manifests

pytestmark = pytest.mark.netns

CLI = [sys.executable, "-I", "-m", "dataplane"]


def _services(v: int, count: int = 100) -> list[str]:
    """``count`` ClusterIP Services; version ``v`` differs in every VIP and endpoint."""
    docs = [proxy_config_yaml(), nodes_yaml(1)]
    for i in range(count):
        docs.append(f"""
            apiVersion: v1
            kind: Service
            metadata: {{name: s{i}, namespace: default}}
            spec: {{clusterIP: 10.96.{v}.{i + 1}, ports: [{{port: 80, targetPort: 8080}}]}}
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {{name: s{i}-1, namespace: default, labels: {{kubernetes.io/service-name: s{i}}}}}
            addressType: IPv4
            ports: [{{port: {8080 + v}}}]
            endpoints: [{{addresses: [10.244.{v + 1}.{i + 1}]}}, {{addresses: [10.244.{v + 11}.{i + 1}]}}]
            """)
    return docs


def _inputs(tmp_path: Path, *versions: int) -> list[Path]:
    paths = []
    for v in versions:
        d = tmp_path / f"v{v}"
        d.mkdir()
        paths.append(write_manifests(d, *_services(v)))
    return paths


def _apply(ns: str, path: Path, backend: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + ["apply", "-f", str(path), "--node", "node1", "--netns", ns, "--backend", backend,
                                 *extra], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_applies_end_in_one_input(bare_ns, tmp_path, backend):
    a, b, c = _inputs(tmp_path, 0, 1, 2)
    reference = {}
    for name, path in (("a", a), ("b", b)):  # each input applied alone
        assert _apply(bare_ns, path, backend).returncode == 0
        reference[canonical_rules(bare_ns, backend)] = name
    assert len(reference) == 2
    for start in ("empty", "c", "empty", "c"):  # both full syncs; both partial syncs from c
        if start == "empty":
            run = subprocess.run(CLI + ["cleanup", "--netns", bare_ns], capture_output=True, text=True)
            assert run.returncode == 0, run.stderr
        else:
            assert _apply(bare_ns, c, backend).returncode == 0
        procs = [subprocess.Popen(CLI + ["apply", "-f", str(p), "--node", "node1", "--netns", bare_ns,
                                         "--backend", backend], stderr=subprocess.PIPE, text=True)
                 for p in (a, b)]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
        state = canonical_rules(bare_ns, backend)
        assert state in reference, f"from {start}: the kernel holds a mix of both inputs"
        # the record agrees with the kernel: the winner's input again changes nothing
        again = _apply(bare_ns, a if reference[state] == "a" else b, backend)
        assert again.returncode == 0 and "none sync" in again.stderr and "drift" not in again.stderr, again.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_held_lock_times_out_with_one_clear_line(bare_ns, tmp_path, backend):
    a, b = _inputs(tmp_path, 0, 1)
    assert _apply(bare_ns, a, backend).returncode == 0
    before = canonical_rules(bare_ns, backend)
    with netns_lock(bare_ns):
        for argv in (["apply", "-f", str(b), "--node", "node1", "--netns", bare_ns, "--backend", backend],
                     ["cleanup", "--netns", bare_ns]):
            run = subprocess.run(CLI + argv + ["--lock-timeout", "0.5"], capture_output=True, text=True, timeout=60)
            assert run.returncode == 1
            assert run.stderr.splitlines()[-1] == (
                f"error: another kube-dataplane apply holds the lock of netns {bare_ns} (pid {os.getpid()}): "
                "gave up waiting after 0.5 s (--lock-timeout)")
            assert "Traceback" not in run.stderr
            assert canonical_rules(bare_ns, backend) == before
    assert _apply(bare_ns, b, backend, "--lock-timeout", "0.5").returncode == 0  # free again


SERVICE = """
    apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: default}
    spec: {clusterIP: 10.96.0.80, ports: [{port: 80, targetPort: 8080}]}
    ---
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
    addressType: IPv4
    ports: [{port: 8080}]
    endpoints: [{addresses: [10.244.1.10], nodeName: node1}]
    """
BREAK = {"iptables": ["iptables", "-t", "nat", "-F", "KUBE-SERVICES"],
         "nftables": ["nft", "flush", "map", "ip", "kube-proxy", "service-ips"]}
FOREIGN = {"iptables": [["iptables", "-N", "FOREIGN"], ["iptables", "-A", "FORWARD", "-j", "FOREIGN"]],
           "nftables": [["nft", "add", "table", "inet", "other"]]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_drift_is_repaired(lab: Lab, tmp_path, backend):
    node = lab.ns("node1")
    lab.serve("pod1-1", tcp_ports=(8080,))
    path = write_manifests(tmp_path, proxy_config_yaml(), nodes_yaml(1), SERVICE)
    assert _apply(node, path, backend).returncode == 0
    assert lab.tcp_probe("client1", "10.96.0.80", 80).pod == "pod1-1"

    for argv in FOREIGN[backend]:  # another program changes its own rules: no drift of ours
        run_in(node, argv)
    quiet = _apply(node, path, backend)
    assert quiet.returncode == 0 and "none sync, nothing changed" in quiet.stderr, quiet.stderr
    assert "drift" not in quiet.stderr

    run_in(node, BREAK[backend])
    assert not lab.tcp_probe("client1", "10.96.0.80", 80).ok  # broken behind our back
    repaired = _apply(node, path, backend)
    assert repaired.returncode == 0, repaired.stderr
    expected = {"iptables": "drift repaired: nat chain KUBE-SERVICES changed",
                "nftables": "drift repaired: map service-ips changed"}[backend]
    assert "full sync" in repaired.stderr and expected in repaired.stderr, repaired.stderr
    assert lab.tcp_probe("client1", "10.96.0.80", 80).pod == "pod1-1"

    again = _apply(node, path, backend)
    assert "none sync, nothing changed" in again.stderr and "drift" not in again.stderr, again.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_and_cleanup_use_no_temporary_files(bare_ns, tmp_path, monkeypatch, backend):
    # Every temporary file would go to a directory that does not exist, and fail.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-dir"))
    a, b = (load_cluster([str(p)]).cluster for p in _inputs(tmp_path, 0, 1))
    assert apply_cluster(bare_ns, a, "node1", backend=backend).kind == "full"
    assert apply_cluster(bare_ns, b, "node1", backend=backend).kind == "partial"
    assert apply_compiled(bare_ns, compile_rules(a, "node1", backend=backend)) == []
    if backend == "iptables":  # a restore that fails in the kernel is rolled back (input on stdin)
        with pytest.raises(ApplyError, match="restored"):
            apply_iptables(bare_ns, "*nat\n:KUBE-X - [0:0]\nCOMMIT\n*filter\n:KUBE-Y - [0:0]\n"
                                    "-A KUBE-Y -j DNAT --to-destination 10.0.0.1\nCOMMIT\n", partial=True)
    netns_cleanup(bare_ns)
    assert "KUBE" not in read_back(bare_ns, "iptables") and read_back(bare_ns, "nftables") == ""
    assert not (tmp_path / "no-such-dir").exists()


def test_a_proxier_in_a_namespace_takes_the_lock_too(bare_ns, tmp_path):
    cluster = load_cluster([str(_inputs(tmp_path, 0)[0])]).cluster
    runner = NetnsRunner(bare_ns, lock_timeout=0.3)
    proxier = Proxier("node1", mode="nftables", cluster=cluster, runner=runner)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with netns_lock(bare_ns):
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(10)
        with pytest.raises(ApplyError, match=f"holds the lock of netns {bare_ns}"):
            proxier.sync()
        assert canonical_rules(bare_ns, "nftables") == "absent"  # nothing was applied
    finally:
        release.set()
        t.join()
    assert proxier.sync().kind == "full" and canonical_rules(bare_ns, "nftables") != "absent"
