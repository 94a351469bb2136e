"""A running ``dataplane sync --healthz-bind-address 127.0.0.1:0`` serves kube-proxy's /healthz and
/metrics: 200 once it synced, metrics that grow with the syncs and the changes it read, and 503
once its syncs stop succeeding (its namespace is taken away) for longer than 2 x --sync-period.

The agent prints the port it bound ("serving /healthz and /metrics on port N"); the test reads it
from the agent's log. The server listens in the test's own (isolated) network namespace; the
rules go into a bare namespace.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pyroute2 import netns as pr_netns

from dataplane.agent.events import format_event
from svc_lab import proxy_config_yaml

pytestmark = pytest.mark.netns

DATAPLANE = [sys.executable, "-I", "-m", "dataplane"]
SYNC_PERIOD = 1.0  # seconds: the health timeout is 2 s
PORT_LINE = re.compile(r"serving /healthz and /metrics on port (\d+)")


def service(name: str, ip: str, rv: int) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": str(rv), "uid": f"uid-{name}"},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"],
                     "ports": [{"name": "p", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}


def endpoint_slice(name: str, ip: str, rv: int) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{name}-x", "namespace": "default", "resourceVersion": str(rv),
                         "labels": {"kubernetes.io/service-name": name}},
            "endpoints": [{"addresses": [ip], "nodeName": "node1",
                           "conditions": {"ready": True, "serving": True, "terminating": False}}],
            "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}]}


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metrics(port: int) -> dict[tuple[str, tuple], float]:
    code, body = get(port, "/metrics")
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def syncs(m: dict) -> float:
    return m.get(("kubeproxy_sync_proxy_rules_duration_seconds_count", (("ip_family", "ipv4"),)), 0.0)


def wait_for(what: str, check: Callable[[], Optional[object]], agent: subprocess.Popen, log: Path,
             timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert agent.poll() is None, f"the agent ended while waiting for {what}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.read_text()}"
        time.sleep(0.05)


def test_healthz_and_metrics_of_a_running_agent(bare_ns: str, tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"},
                                 "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}})
                     + "\n---\n" + proxy_config_yaml())
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    log = tmp_path / "agent.log"
    agent = subprocess.Popen(
        DATAPLANE + ["sync", "-f", str(nodes), "-f", str(fifo), "--node", "node1", "--netns", bare_ns,
                     "--backend", "nftables", "--min-sync-period", "100ms", "--sync-period", f"{SYNC_PERIOD:g}s",
                     "--healthz-bind-address", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=log.open("w"))
    writer = None
    try:
        port = int(wait_for("the port line", lambda: PORT_LINE.search(log.read_text()), agent, log)[1])
        writer = os.open(fifo, os.O_WRONLY)  # blocks until the agent opened its end
        rv = 100

        def send(*objects: dict) -> None:
            nonlocal rv
            text = ""
            for obj in objects:
                rv += 1
                obj["metadata"]["resourceVersion"] = str(rv)
                text += format_event("ADDED", obj)
            os.write(writer, text.encode())

        send(service("a", "10.96.0.10", 0), endpoint_slice("a", "10.244.1.10", 0))
        first = wait_for("a first sync", lambda: syncs(metrics(port)) >= 1 and metrics(port), agent, log)
        code, body = get(port, "/healthz")
        assert code == 200, body
        health = json.loads(body)
        assert set(health) == {"lastUpdated", "currentTime"} and health["lastUpdated"] == health["currentTime"]
        assert health["currentTime"].endswith(" +0000 UTC")
        assert first[("kubeproxy_sync_proxy_rules_last_timestamp_seconds", (("ip_family", "ipv4"),))] > 0
        assert first[("kubeproxy_sync_proxy_rules_service_changes_total", ())] == 1
        assert first[("kubeproxy_sync_proxy_rules_endpoint_changes_total", ())] == 1

        send(service("b", "10.96.0.11", 0), endpoint_slice("b", "10.244.1.11", 0), service("c", "10.96.0.12", 0))
        later = wait_for("the changes to be read and synced",
                         lambda: (m := metrics(port))[("kubeproxy_sync_proxy_rules_service_changes_total", ())] == 3
                         and syncs(m) > syncs(first) and m, agent, log)
        assert later[("kubeproxy_sync_proxy_rules_endpoint_changes_total", ())] == 2
        assert later[("kubeproxy_sync_proxy_rules_last_timestamp_seconds", (("ip_family", "ipv4"),))] \
            >= first[("kubeproxy_sync_proxy_rules_last_timestamp_seconds", (("ip_family", "ipv4"),))]
        assert get(port, "/healthz")[0] == 200
        assert get(port, "/nothing")[0] == 404

        # the namespace goes: every sync fails from now on, and a change waits
        pr_netns.remove(bare_ns)
        failed_at = time.monotonic()
        send(service("d", "10.96.0.13", 0))
        wait_for("503", lambda: get(port, "/healthz")[0] == 503, agent, log)
        assert time.monotonic() - failed_at >= 2 * SYNC_PERIOD * 0.9, "503 only after 2 x --sync-period"
        m = metrics(port)
        assert sum(v for (name, _), v in m.items() if name == "dataplane_sync_proxy_rules_failures_total") >= 1
        assert sum(v for (name, _), v in m.items() if name == "dataplane_errors_total") >= 1
    finally:
        if writer is not None:
            os.close(writer)
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=60)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
