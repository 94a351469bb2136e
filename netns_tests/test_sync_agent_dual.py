"""Issue 17: `dataplane sync --ip-family dual` runs one proxier per family (kube-proxy's metaproxier).

A dual-stack snapshot, then a watch stream on stdin that changes the IPv6 EndpointSlice and deletes
a Service: after the agent ends (its sources ended), each family's rules are exactly what a fresh
``dataplane apply --ip-family F`` of the final objects gives in a second namespace.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from pyroute2 import netns as pyroute2_netns

from dataplane.agent.events import format_event
from dataplane.runtime.netns import read_back
from svc_lab import BACKENDS, DUAL_STACK_CLUSTER_CIDR, dual_stack_slices, nodes_yaml, proxy_config_yaml

pytestmark = pytest.mark.netns

DATAPLANE = [sys.executable, "-I", "-m", "dataplane"]


def dual_service(name: str, v4: str, v6: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
            "spec": {"clusterIP": v4, "clusterIPs": [v4, v6], "ipFamilies": ["IPv4", "IPv6"],
                     "ipFamilyPolicy": "RequireDualStack",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}


@pytest.mark.parametrize("backend", BACKENDS)
def test_dual_stack_agent_equals_a_fresh_apply_per_family(bare_ns, ns_prefix, tmp_path, backend):
    config = proxy_config_yaml(cluster_cidr=DUAL_STACK_CLUSTER_CIDR)
    web, api = dual_service("web", "10.96.0.80", "fd00:96::80"), dual_service("api", "10.96.0.81", "fd00:96::81")
    slices = list(yaml.safe_load_all(dual_stack_slices("default", "web", "[{name: http, port: 8080}]",
                                                       ["pod1-1", "pod2-1"])))
    slices += list(yaml.safe_load_all(dual_stack_slices("default", "api", "[{name: http, port: 8080}]",
                                                        ["pod1-2"])))
    snapshot = tmp_path / "cluster.yaml"
    # the snapshot holds what no stream carries; the Services and slices come in the one stream, so
    # that api's ADDED is read before its DELETED (two sources are read concurrently, in no set order)
    snapshot.write_text(nodes_yaml(2, ipv6=True) + "---\n" + config)
    # the stream: web's IPv6 slice loses pod2-1, api goes
    [web_v6] = [s for s in slices if s["metadata"]["name"] == "web-v6"]
    web_v6 = {**web_v6, "metadata": {**web_v6["metadata"], "resourceVersion": "2"},
              "endpoints": web_v6["endpoints"][:1]}
    stream = "".join(format_event("ADDED", obj) for obj in [web, api, *slices])
    stream += format_event("MODIFIED", web_v6) + format_event("DELETED", api)
    run = subprocess.run(DATAPLANE + ["sync", "-f", str(snapshot), "-f", "-", "--node", "node1", "--netns", bare_ns,
                                      "--backend", backend, "--ip-family", "dual", "--min-sync-period", "100ms"],
                         input=stream, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    syncs = [ln for ln in run.stderr.splitlines() if ln.startswith("sync ")]
    assert syncs and all("ipv4 " in ln and "ipv6 " in ln for ln in syncs), run.stderr

    final = [web, *[s for s in slices if s["metadata"]["name"] != "web-v6" and not s["metadata"]["name"].startswith("api")],
             web_v6]
    final_file = tmp_path / "final.yaml"
    final_file.write_text(nodes_yaml(2, ipv6=True) + "---\n" + config + "---\n" + yaml.safe_dump_all(final))
    ref = f"{ns_prefix}-ref"
    pyroute2_netns.create(ref)
    try:
        for family in ("ipv4", "ipv6"):
            done = subprocess.run(DATAPLANE + ["apply", "-f", str(final_file), "--node", "node1", "--netns", ref,
                                               "--backend", backend, "--ip-family", family],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
        for ipv6 in (False, True):
            got, want = read_back(bare_ns, backend, ipv6=ipv6), read_back(ref, backend, ipv6=ipv6)
            assert want and got == want, f"ipv6={ipv6}\n{run.stderr}"
        assert "fd00:10:244:2::10" not in read_back(bare_ns, backend, ipv6=True)  # pod2-1's IPv6 endpoint went
        assert "10.244.2.10" in read_back(bare_ns, backend, ipv6=False)  # its IPv4 one stayed
        assert "10.96.0.81" not in read_back(bare_ns, backend, ipv6=False)
    finally:
        subprocess.run(DATAPLANE + ["cleanup", "--netns", ref], capture_output=True, timeout=60)
        pyroute2_netns.remove(ref)
