"""The sharded compile of a cluster given as Pods: each shard derives its Services' EndpointSlices
from the Pods of their namespaces, and the text and warnings are exactly the serial path's, or the
input is left to the serial path (which then reports what it finds)."""
from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from dataplane import parallel
from dataplane.controllers.endpointslices import with_derived_slices
from dataplane.input.cluster import parse_cluster
from dataplane.input.loader import load_documents
from sharding_support import bench as load_bench, docs_of, serial

ROOT = Path(__file__).resolve().parent.parent
NODE = "node-01"


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(parallel, "MIN_SERVICES_PER_SHARD", 1)


# --------------------------------------------------------------------------- a cluster of Pods

ZONES = {"node-01": "zone-a", "node-02": "zone-b", "node-03": None}


def _node(name: str, k: int) -> dict:
    labels = {"kubernetes.io/hostname": name}
    if ZONES[name]:
        labels["topology.kubernetes.io/zone"] = ZONES[name]
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "spec": {"podCIDRs": [f"10.{k}.0.0/16", f"fd00:{k}::/64"]},
            "status": {"addresses": [{"type": "InternalIP", "address": f"192.168.0.{k}"},
                                     {"type": "InternalIP", "address": f"fd99::{k}"}]}}


def _pod(rng: random.Random, namespace: str, name: str, labels: dict, ip_n: int, kind: str) -> dict:
    """A Pod of one of these kinds: ready, not-ready, terminating, succeeded, pending (no IP),
    host-network (the node's IP), on another node (or none)."""
    k = rng.choice([1, 2, 3])
    ips = [f"10.{k}.{ip_n >> 8}.{ip_n & 255}", f"fd00:{k}::{ip_n:x}"]
    if kind == "host-network":
        ips = [f"192.168.0.{k}", f"fd99::{k}"]
    spec: dict = {"nodeName": f"node-0{k}",
                  "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8000 + k},
                                                           {"name": "dns", "containerPort": 5353, "protocol": "UDP"}]}]}
    if kind == "host-network":
        spec["hostNetwork"] = True
    if kind == "unscheduled":
        del spec["nodeName"]
    if rng.random() < 0.2:
        spec["hostname"], spec["subdomain"] = name[:20].strip("-"), rng.choice(["svc-a00", "other"])
    if rng.random() < 0.2:  # a native sidecar whose port a Service may name
        spec["initContainers"] = [{"name": "side", "restartPolicy": "Always",
                                   "ports": [{"name": "admin", "containerPort": 9901}]}]
    status: dict = {"phase": "Succeeded" if kind == "succeeded" else "Pending" if kind == "pending" else "Running",
                    "conditions": [{"type": "Ready", "status": "False" if kind == "not-ready" else "True"}]}
    if kind != "pending":
        status["podIPs"] = [{"ip": ip} for ip in ips[: rng.choice([1, 2])]]
    metadata: dict = {"name": name, "namespace": namespace, "labels": labels}
    if kind == "terminating":
        metadata["deletionTimestamp"] = "2024-05-01T10:00:00Z"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}


KINDS = ["ready"] * 6 + ["not-ready", "terminating", "succeeded", "pending", "host-network", "unscheduled"]


def pods_cluster(seed: int, dual: bool = False) -> dict:
    """Services over namespaces of very different sizes (one with most of them, so that shards
    split it), the Pods behind them in every condition above, Pods selected by two Services of
    different shards, Pods of a namespace without Services, Nodes with and without zones."""
    rng = random.Random(seed)
    items: list[dict] = []
    pods: list[dict] = []
    ip_n = 10
    shared = {"tier": "shared"}  # Pods every "wide" Service of "alpha" selects
    sizes = {"alpha": 14, "beta": 5, "gamma": 1, "omega": 4}
    for namespace, count in sizes.items():
        for i in range(count):
            name = f"svc-{'a' if i % 2 else 'z'}{i:02d}" if namespace == "alpha" else f"svc-{i:02d}"
            wide = namespace == "alpha" and i in (0, count - 1)
            selector = dict(shared) if wide else {"app": f"{namespace}-{name}"}
            ports = [{"name": "http", "port": 80, "targetPort": rng.choice([8001, "http"])}]
            if rng.random() < 0.3:
                ports.append({"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"})
            if rng.random() < 0.2:
                ports.append({"name": "admin", "port": 9901, "targetPort": "admin"})
            spec: dict = {"selector": selector, "ports": ports,
                          "clusterIP": f"10.96.{len(items) // 200}.{len(items) % 200 + 10}"}
            spec["clusterIPs"] = [spec["clusterIP"]]
            if dual:
                spec["clusterIPs"].append(f"fd96::{len(items) + 10:x}")
                spec["ipFamilies"], spec["ipFamilyPolicy"] = ["IPv4", "IPv6"], "RequireDualStack"
            roll = rng.random()
            if roll < 0.25:
                spec["type"] = "NodePort"
                spec["externalTrafficPolicy"] = rng.choice(["Local", "Cluster"])
                for n, p in enumerate(ports):
                    p["nodePort"] = 30000 + len(items) * 4 + n
            if rng.random() < 0.3:
                spec["trafficDistribution"] = rng.choice(["PreferClose", "PreferSameZone", "PreferSameNode"])
            if rng.random() < 0.15:
                spec["publishNotReadyAddresses"] = True
            if rng.random() < 0.1:
                spec["internalTrafficPolicy"] = "Local"
            if rng.random() < 0.1:
                spec["sessionAffinity"] = "ClientIP"
            items.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
                          "spec": spec})
            if not wide:
                for j in range(rng.randint(1, 5)):
                    kind = "ready" if j == 0 else rng.choice(KINDS)
                    pods.append(_pod(rng, namespace, f"{name}-p{j}", {"app": f"{namespace}-{name}"}, ip_n, kind))
                    ip_n += 1
    for j in range(6):
        pods.append(_pod(rng, "alpha", f"shared-{j}", {**shared, "app": "alpha-shared"}, ip_n, rng.choice(KINDS)))
        ip_n += 1
    for j in range(3):  # a namespace without Services: its Pods are validated, serve nobody
        pods.append(_pod(rng, "delta", f"lonely-{j}", {"app": "x"}, ip_n, "ready"))
        ip_n += 1
    rng.shuffle(pods)
    # the two "wide" Services claim one externalIP: a planning warning the serial path gives too
    alpha = [o for o in items if o["metadata"]["namespace"] == "alpha"]
    alpha[0]["spec"]["externalIPs"] = alpha[-1]["spec"]["externalIPs"] = ["203.0.113.7"]
    nodes = [_node(name, k) for k, name in enumerate(ZONES, 1)]
    config = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
              "clusterCIDR": "10.0.0.0/8", "mode": "iptables"}
    mixed = items + pods
    rng.shuffle(mixed)  # input order is not namespace order
    return {"apiVersion": "v1", "kind": "List", "items": [*nodes, *mixed, config]}


def _pods_in_several_shards(docs, workers) -> set[str]:
    shards, _ = parallel._shards(docs, workers)
    count: dict[int, int] = {}
    for shard in shards:
        for doc in shard:
            if doc.obj["kind"] == "Pod":
                count[id(doc)] = count.get(id(doc), 0) + 1
    return {doc.obj["metadata"]["namespace"] for doc in docs if count.get(id(doc), 0) > 1}


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pods_sharded_like_serial(small_shards, mode, workers, seed):
    docs = docs_of(pods_cluster(seed))
    assert "alpha" in _pods_in_several_shards(docs, workers)  # the split namespace gives its Pods to both
    expected = serial(docs, NODE, mode, "ipv4")
    assert any("is also a frontend of" in w for w in expected[1]), expected[1]
    got = parallel.compile_sharded(docs, NODE, mode=mode, family="ipv4", workers=workers)
    assert got == expected


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
@pytest.mark.parametrize("node", ["node-02", "node-03"])
def test_dual_stack_pods_sharded_like_serial_for_each_family_and_node(small_shards, mode, node):
    docs = docs_of(pods_cluster(4, dual=True))
    for family in ("ipv4", "ipv6"):
        expected = serial(docs, node, mode, family)
        assert parallel.compile_sharded(docs, node, mode=mode, family=family, workers=3) == expected


def test_the_derived_endpoints_are_those_of_the_pods(small_shards):
    """(That the equality above is about something: Pods not ready, terminating, finished, without an
    IP, host-network and on other nodes all reach the rules as the controller would have them.)"""
    cluster = with_derived_slices(parse_cluster(docs_of(pods_cluster(1))).cluster)
    endpoints = [e for s in cluster.endpoint_slices for e in s.endpoints]
    names = {(s.namespace, e.target_ref_name) for s in cluster.endpoint_slices for e in s.endpoints}
    assert any(e.conditions.terminating for e in endpoints)
    assert any(not e.conditions.serving for e in endpoints)
    assert any(e.addresses[0].startswith("192.168.0.") for e in endpoints)  # host network
    assert any(e.node_name is None for e in endpoints) and any(e.node_name == "node-02" for e in endpoints)
    assert any(e.hints_for_zones for e in endpoints)
    assert sum(n.startswith("shared-") for _, n in names) >= 1
    pods = [p for p in cluster.pods if p.phase == "Succeeded" or not p.pod_ips]
    assert pods and not {(p.namespace, p.name) for p in pods} & names


def _left_to_serial(docs, node=NODE) -> bool:
    return parallel.compile_sharded(docs, node, mode="nftables", family="ipv4", workers=3) is None


def test_pod_input_needing_the_whole_input_is_left_to_the_serial_path(small_shards):
    """A bad Pod, a Pod with an unknown field, a Service selecting no Pod, a Topology Aware Routing
    Service, a Pod given twice: the serial path reports the problem or gives the warning."""
    base = pods_cluster(5)
    assert not _left_to_serial(docs_of(base))

    def changed(change) -> dict:
        cluster = copy.deepcopy(base)
        change(cluster["items"])
        return cluster

    def last_pod(items):
        return [o for o in items if o["kind"] == "Pod" and o["metadata"]["namespace"] == "omega"][-1]

    def last_service(items):
        return sorted((o for o in items if o["kind"] == "Service"),
                      key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))[-1]

    cases = {
        "bad Pod": (lambda items: last_pod(items)["spec"]["containers"][0]["ports"][0].update(containerPort=0),
                    "InputError"),
        "unknown field": (lambda items: last_pod(items)["spec"].update(nodeNmae="node-01"), "unknown field"),
        "selects no Pod": (lambda items: last_service(items)["spec"]["selector"].update(app="nobody"),
                           "selects no Pod"),
        "topology Auto": (lambda items: last_service(items)["metadata"].update(
            annotations={"service.kubernetes.io/topology-mode": "Auto"}), "Topology Aware Routing"),
        "Pod twice": (lambda items: items.append(copy.deepcopy(last_pod(items))), "InputError"),
    }
    for case, (change, said) in cases.items():
        docs = docs_of(changed(change))
        assert _left_to_serial(docs), case
        result = serial(docs, NODE, "nftables", "ipv4")
        assert result == said if said == "InputError" else any(said in w for w in result[1]), (case, result)


def test_derived_names_another_shard_may_hold_leave_the_input_to_the_serial_path(small_shards):
    """Derived slice names are unique per namespace in Service order: two Services of one namespace
    whose names share the 58-character base (in different shards), or an input EndpointSlice named
    like another shard's Service's derived slice, need the whole namespace at once."""
    base = pods_cluster(6)
    services = sorted((o for o in base["items"] if o["kind"] == "Service"),
                      key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))

    long_names = copy.deepcopy(base)
    for o in long_names["items"]:
        if o["kind"] in ("Service", "Pod") and o["metadata"]["namespace"] == "alpha":
            if o["kind"] == "Service":
                o["metadata"]["name"] = "s" * 58 + o["metadata"]["name"][-3:]
    docs = docs_of(long_names)
    assert _left_to_serial(docs)
    assert serial(docs, NODE, "iptables", "ipv4")[0]  # compiles serially

    first, last = services[0], services[-1]
    clash = copy.deepcopy(base)
    clash["items"].append({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": f"{last['metadata']['name']}-bcdfg", "namespace": last["metadata"]["namespace"],
                     "labels": {"kubernetes.io/service-name": first["metadata"]["name"]}},
        "endpoints": [], "ports": []})
    if first["metadata"]["namespace"] == last["metadata"]["namespace"]:
        assert _left_to_serial(docs_of(clash))
    # the same slice owned by the Service whose name it carries: in its own shard, no clash
    own = copy.deepcopy(clash)
    own["items"][-1]["metadata"]["labels"]["kubernetes.io/service-name"] = last["metadata"]["name"]
    docs = docs_of(own)
    assert not _left_to_serial(docs)
    assert parallel.compile_sharded(docs, NODE, mode="iptables", family="ipv4", workers=3) == serial(
        docs, NODE, "iptables", "ipv4")


def test_names_may_clash_reads_bases_and_slice_names():
    shard_of = {("ns", "a" * 60): 0, ("ns", "b"): 0, ("ns", "c"): 1, ("other", "a" * 61): 1}
    assert not parallel._names_may_clash(shard_of, [])
    assert parallel._names_may_clash({**shard_of, ("ns", "a" * 59): 1}, [])  # same base, other shard
    assert not parallel._names_may_clash({**shard_of, ("ns", "a" * 59): 0}, [])  # same shard
    assert parallel._names_may_clash(shard_of, [(("ns", "b"), "c-xxxxx")])  # c's name, b's slice
    assert not parallel._names_may_clash(shard_of, [(("ns", "c"), "c-xxxxx")])
    assert not parallel._names_may_clash(shard_of, [(("other", "b"), "c-xxxxx")])  # another namespace


def test_cli_output_is_the_same_with_one_process_or_several_for_pods(tmp_path):
    """Past MIN_SERVICES_PER_SHARD Services per process the CLI shards a cluster of Pods too:
    stdout, stderr and exit status are those of one process, also for a bad Pod."""
    bench = load_bench()
    generate = sys.modules["benchlib.generate"]  # (loaded by the bench script)
    _, cluster = generate.make_clusters(2 * parallel.MIN_SERVICES_PER_SHARD + 50, 1)
    path = tmp_path / "pods.json"
    path.write_text(json.dumps(cluster))
    assert not _left_to_serial(load_documents([str(path)]), bench.COMPILE_NODE)
    bad = copy.deepcopy(cluster)
    [o for o in bad["items"] if o["kind"] == "Pod"][-1]["status"]["podIPs"] = [{"ip": "10.0.0.300"}]
    bad_path = tmp_path / "bad.json"
    bad_path.write_text(json.dumps(bad))
    for backend in ("iptables", "nftables"):
        for source, status in ((path, 0), (bad_path, 1)):
            runs = [subprocess.run([sys.executable, "-I", "-m", "dataplane", "compile", "-f", str(source), "--node",
                                    bench.COMPILE_NODE, "--backend", backend, "-j", jobs],
                                   capture_output=True, text=True) for jobs in ("1", "2")]
            assert runs[0].returncode == status, runs[0].stderr
            assert (runs[1].returncode, runs[1].stdout, runs[1].stderr) == (
                status, runs[0].stdout, runs[0].stderr)
            if status:
                assert runs[0].stderr.count("\n") == 1 and "status.podIPs[0].ip: Invalid value" in runs[0].stderr
            else:
                assert runs[0].stdout.count("\n") > 1000
