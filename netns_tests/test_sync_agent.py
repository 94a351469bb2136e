"""Issue 17, proven with packets: `dataplane sync` follows recorded watch streams.

The test plays an API server: it writes watch events in kubectl's exact format
(``--watch --output-watch-events -o json``) into two FIFOs (Services, EndpointSlices)
in batches, while a snapshot file gives the Nodes and the KubeProxyConfiguration. The
streams hold ADDED, MODIFIED, BOOKMARK and DELETED events, a Service deleted while
connections to it are open, endpoints going terminating, an invalid object, and an
ERROR (410) followed by a relist that silently drops a Service. After each batch:

* within 2 x --min-sync-period (plus scheduling slack) the agent's namespace holds exactly
  the rules a fresh ``dataplane apply`` of the same objects puts in a second namespace
  (both read back and normalised);
* clients keep connecting to the Services that do not change, over TCP and UDP, and
  none of their connections fails; established connections survive every sync;
* the agent synced far fewer times than it read events.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pyroute2 import netns as pyroute2_netns

from dataplane.agent.events import format_event, gone_status
from dataplane.lab import Topology
from dataplane.runtime.netns import in_netns
from svc_lab import BACKENDS, canonical_rules, proxy_config_yaml

pytestmark = pytest.mark.netns

DATAPLANE = [sys.executable, "-I", "-m", "dataplane"]
MIN_SYNC = 0.3  # --min-sync-period of the agent, seconds
CONVERGE = 2 * MIN_SYNC + 3.0  # the bound plus slack for a loaded 2-CPU machine
PROBE_TIMEOUT = 5.0  # generous: this machine's load average can exceed 5 per CPU
PODS = {f"pod{n}-{j}": f"10.244.{n}.{9 + j}" for n in (1, 2) for j in (1, 2, 3)}
STABLE = {"web": ("10.96.0.80", 80, 8080, "TCP"), "dns": ("10.96.0.53", 53, 5353, "UDP"),
          "echo": ("10.96.0.70", 7000, 7000, "TCP")}


class Api:
    """The objects the test's "API server" holds, with resourceVersions, and the events it writes."""

    def __init__(self) -> None:
        self.rv = 100
        self.objects: dict[tuple[str, str], dict] = {}  # (kind, name) -> object

    def _next(self) -> str:
        self.rv += 1
        return str(self.rv)

    def service(self, name: str, ip: str, port: int, target: int, proto: str) -> dict:
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "default", "resourceVersion": self._next(),
                             "uid": f"uid-{name}"},
                "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"],
                         "ports": [{"name": "p", "port": port, "protocol": proto, "targetPort": target}],
                         "sessionAffinity": "None"},
                "status": {"loadBalancer": {}}}

    def slice(self, svc: str, target: int, proto: str, pods: dict[str, str]) -> dict:
        """pods: name -> "ready" | "terminating"."""
        endpoints = [{"addresses": [PODS[p]], "nodeName": f"node{p[3]}",
                      "conditions": {"ready": s == "ready", "serving": True, "terminating": s != "ready"}}
                     for p, s in sorted(pods.items())]
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                "metadata": {"name": f"{svc}-abc", "namespace": "default", "resourceVersion": self._next(),
                             "labels": {"kubernetes.io/service-name": svc}},
                "endpoints": endpoints, "ports": [{"name": "p", "port": target, "protocol": proto}]}

    def put(self, obj: dict) -> str:
        key = (obj["kind"], obj["metadata"]["name"])
        event = "MODIFIED" if key in self.objects else "ADDED"
        self.objects[key] = obj
        return format_event(event, obj)

    def delete(self, kind: str, name: str) -> str:
        obj = self.objects.pop((kind, name))
        return format_event("DELETED", {**obj, "metadata": {**obj["metadata"], "resourceVersion": self._next()}})

    def bookmark(self, kind: str, api_version: str) -> str:
        return format_event("BOOKMARK", {"kind": kind, "apiVersion": api_version,
                                         "metadata": {"resourceVersion": self._next()}})

    def manifest(self, path: Path) -> Path:
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": list(self.objects.values())}))
        return path


def nodes_and_config() -> str:
    nodes = []
    for i in (1, 2):
        nodes.append(json.dumps({"apiVersion": "v1", "kind": "Node",
                                 "metadata": {"name": f"node{i}", "labels": {"topology.kubernetes.io/zone": f"z{i}"}},
                                 "spec": {"podCIDR": f"10.244.{i}.0/24"},
                                 "status": {"addresses": [{"type": "InternalIP", "address": f"192.0.2.{i}"}]}}))
    return "\n---\n".join(nodes) + "\n---\n" + proxy_config_yaml()


class Writer:
    """The write end of a FIFO the agent reads (opened once the agent has opened the read end)."""

    def __init__(self, path: Path, agent: subprocess.Popen) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                self.fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                assert agent.poll() is None, "the agent ended before opening its FIFO"
                assert time.monotonic() < deadline, f"the agent never opened {path}"
                time.sleep(0.05)
        os.set_blocking(self.fd, True)

    def write(self, text: str) -> None:
        data = text.encode()
        while data:
            data = data[os.write(self.fd, data):]

    def close(self) -> None:
        os.close(self.fd)


class Load:
    """Clients connecting to the Services that never change, counting every failure."""

    def __init__(self, lab) -> None:
        self.lab = lab
        self.stop = threading.Event()
        self.ok = {"tcp": 0, "udp": 0}
        self.retried = 0
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # ~20 rounds a second: every connection leaves a conntrack entry for minutes, and each sync
        # that clears stale UDP entries has the kernel dump the UDP ones (runtime/ctnetlink.py);
        # a slower pace keeps the table, and the test, small
        while not self.stop.wait(0.05):
            for proto, (ip, port, _, _) in (("tcp", STABLE["web"]), ("udp", STABLE["dns"])):
                probe = self.lab.tcp_probe if proto == "tcp" else self.lab.udp_probe
                r = probe("client1", ip, port, timeout=PROBE_TIMEOUT)
                if not r.ok and proto == "udp" and r.outcome == "timeout":
                    # a datagram in flight to an endpoint that just went loses its reply when the sync
                    # clears that endpoint's conntrack entries (as with kube-proxy); a resolver asks again
                    self.retried += 1
                    r = probe("client1", ip, port, timeout=PROBE_TIMEOUT)
                if r.ok:
                    self.ok[proto] += 1
                else:
                    self.failures.append(f"{proto} {ip}:{port}: {r.outcome} {r.error}")

    def __enter__(self) -> "Load":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


class Echo:
    """A TCP echo server in a pod that keeps connections open."""

    def __init__(self, ns: str, port: int) -> None:
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", port))
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def connect(lab, ip: str, port: int) -> socket.socket:
    with in_netns(lab.ns("client1")):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect((ip, port))
    s.sendall(b"hello")
    assert s.recv(16) == b"hello"
    return s


def reference(ref_ns: str, backend: str, api: Api, tmp: Path) -> str:
    """The rules a fresh ``dataplane apply`` of the API's objects gives (in ``ref_ns``), normalised."""
    run = subprocess.run(DATAPLANE + ["apply", "-f", str(tmp / "nodes.yaml"), "-f", str(api.manifest(tmp / "ref.json")),
                                      "--node", "node1", "--netns", ref_ns, "--backend", backend, "--full"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return canonical_rules(ref_ns, backend)


def converge(agent_ns: str, want: str, backend: str, agent: subprocess.Popen, started: float, log: Path) -> float:
    """Wait until the agent's rules are ``want``; how long that took since ``started``."""
    while True:
        got = canonical_rules(agent_ns, backend)
        if got == want:
            return time.monotonic() - started
        assert agent.poll() is None, "the agent ended"
        if time.monotonic() - started > CONVERGE:
            agent.send_signal(signal.SIGUSR1)  # the agent's threads' stacks into its log
            time.sleep(0.5)
            missing = {json.dumps(x) for x in json.loads(want)} ^ {json.dumps(x) for x in json.loads(got)}
            pytest.fail(f"the agent's rules did not become current ({backend}); differing: "
                        f"{sorted(map(str, missing))[:6]}\nagent log:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sync_agent_follows_watch_streams(make_lab, ns_prefix, tmp_path, backend):
    lab = make_lab(Topology.simple(nodes=2, pods_per_node=3, clients=1))
    for pod in PODS:
        lab.serve(pod, tcp_ports=(8080,), udp_ports=(5353,))
    echoes = [Echo(lab.ns(p), 7000) for p in ("pod1-1", "pod2-1")]
    ref_ns = f"{ns_prefix}-ref"
    pyroute2_netns.create(ref_ns)
    agent = None
    writers: list[Writer] = []
    try:
        (tmp_path / "nodes.yaml").write_text(nodes_and_config())
        svc_fifo, eps_fifo = tmp_path / "services.fifo", tmp_path / "endpointslices.fifo"
        os.mkfifo(svc_fifo)
        os.mkfifo(eps_fifo)
        stderr = open(tmp_path / "agent.log", "w+")
        agent = subprocess.Popen(
            DATAPLANE + ["sync", "-f", str(tmp_path / "nodes.yaml"), "-f", str(svc_fifo), "-f", str(eps_fifo),
                         "--node", "node1", "--netns", lab.ns("node1"), "--backend", backend,
                         "--min-sync-period", f"{int(MIN_SYNC * 1000)}ms", "--sync-period", "1m"],
            stdout=subprocess.DEVNULL, stderr=stderr)
        services, slices = Writer(svc_fifo, agent), Writer(eps_fifo, agent)
        writers = [services, slices]
        api = Api()
        events = 0

        def batch(svc_events: list[str], eps_events: list[str]) -> float:
            nonlocal events
            events += len(svc_events) + len(eps_events)
            want = reference(ref_ns, backend, api, tmp_path)
            started = time.monotonic()
            slices.write("".join(eps_events))  # endpoints first, as they often race ahead of their Service
            services.write("".join(svc_events))
            return converge(lab.ns("node1"), want, backend, agent, started, tmp_path / "agent.log")

        # the initial list: three stable Services, a doomed one and five extras
        members = {"web": {"pod1-1": "ready", "pod2-1": "ready"}, "dns": {"pod1-1": "ready", "pod2-1": "ready"},
                   "echo": {"pod1-1": "ready", "pod2-1": "ready"}, "doomed": {"pod1-1": "ready"}}
        specs = dict(STABLE, doomed=("10.96.0.90", 7000, 7000, "TCP"))
        for i in range(5):
            specs[f"extra{i}"] = (f"10.96.1.{i + 1}", 80, 8080, "TCP")
            members[f"extra{i}"] = {"pod2-2": "ready"}
        svc_ev = [api.put(api.service(n, *spec)) for n, spec in specs.items()]
        eps_ev = [api.put(api.slice(n, spec[2], spec[3], members[n])) for n, spec in specs.items()]
        times = [batch(svc_ev, eps_ev)]

        # connections that must live through everything: to echo (unchanged) and to doomed (deleted later)
        kept = [connect(lab, "10.96.0.70", 7000) for _ in range(3)]
        doomed_conn = connect(lab, "10.96.0.90", 7000)

        extra_pods = ["pod1-2", "pod1-3", "pod2-2", "pod2-3"]
        with Load(lab) as load:
            for step in range(8):
                svc_ev, eps_ev = [], []
                for k in range(12):  # endpoint churn on web and dns around their stable pods
                    name = ("web", "dns")[k % 2]
                    pod = extra_pods[(step + k) % len(extra_pods)]
                    state = members[name].get(pod)
                    if state is None:
                        members[name][pod] = "ready"
                    elif state == "ready":
                        members[name][pod] = "terminating"  # an endpoint going terminating
                    else:
                        del members[name][pod]
                    spec = specs[name]
                    eps_ev.append(api.put(api.slice(name, spec[2], spec[3], members[name])))
                extra = f"extra{step % 4}"
                spec = (specs[extra][0], 80 + step, 8080, "TCP")
                specs[extra] = spec
                svc_ev.append(api.put(api.service(extra, *spec)))
                svc_ev.append(api.bookmark("Service", "v1"))
                eps_ev.append(api.bookmark("EndpointSlice", "discovery.k8s.io/v1"))
                if step == 2:  # a Service with a live connection goes
                    svc_ev.append(api.delete("Service", "doomed"))
                    eps_ev.append(api.delete("EndpointSlice", "doomed-abc"))
                    del specs["doomed"]
                if step == 4:  # an invalid object: reported, skipped, the previous version stays
                    bad = api.service("extra1", specs["extra1"][0], 70000, 8080, "TCP")
                    svc_ev.append(format_event("MODIFIED", bad))
                if step == 6:  # the watch expired: ERROR 410, then the relist, in which extra4 is missing
                    del api.objects[("Service", "extra4")]
                    del specs["extra4"]
                    svc_ev.append(format_event("ERROR", gone_status("too old resource version: 101 (150)")))
                    svc_ev += [format_event("ADDED", o) for (kind, _), o in api.objects.items() if kind == "Service"]
                times.append(batch(svc_ev, eps_ev))
                if step == 2:
                    r = lab.tcp_probe("client1", "10.96.0.90", 7000, timeout=1.0)
                    assert not r.ok, "new connections to a deleted Service must fail"
        assert not load.failures, load.failures[:5]
        assert load.ok["tcp"] > 10 and load.ok["udp"] > 10, load.ok
        assert load.retried <= max(2, load.ok["udp"] // 50), (load.retried, load.ok)
        for s in kept:  # every established connection to the unchanged Service survived
            s.sendall(b"still-there")
            assert s.recv(32) == b"still-there"
            s.close()
        doomed_conn.close()

        for w in writers:
            w.close()
        writers = []
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=60) == 0
        stderr.seek(0)
        log = stderr.read()
        syncs = [ln for ln in log.splitlines() if ln.startswith("sync ")]
        print(f"\n{backend}: {events} events, {len(syncs)} syncs, converged in "
              f"max {max(times):.2f}s / mean {sum(times) / len(times):.2f}s")
        assert "Service default/extra1: spec.ports[0].port: Invalid value: 70000" in log, log
        assert "services.fifo: event" in log and "watch error 410 Expired" in log, log
        assert not any("failed" in ln for ln in syncs), log
        assert any("stale conntrack filters" in ln for ln in syncs), log  # dns (UDP) endpoints went
        assert len(syncs) * 5 <= events, (len(syncs), events)
        assert "stopped after" in log.splitlines()[-1]
    finally:
        for w in writers:
            w.close()
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        for e in echoes:
            e.close()
        subprocess.run(DATAPLANE + ["cleanup", "--netns", ref_ns], capture_output=True, timeout=60)
        pyroute2_netns.remove(ref_ns)
