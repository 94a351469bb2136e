"""The sharded compile gives exactly the serial compile's text and warnings, or leaves the input
to the serial path; the CLI gives the same output with one process or several."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dataplane import parallel
from dataplane.compiler import compile_rules
from dataplane.input.cluster import parse_cluster
from dataplane.input.loader import load_documents
from sharding_support import bench, docs_of, serial

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "cases"


BENCH = bench()


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(parallel, "MIN_SERVICES_PER_SHARD", 1)


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
@pytest.mark.parametrize("workers", [2, 3])
def test_synthetic_cluster_sharded_like_serial(small_shards, mode, workers):
    """A realistic mix (NodePort, LoadBalancer, Local policies, affinity, multi-port) and an
    externalIP two Services in different shards claim: same text, same warnings in the same order."""
    cluster = BENCH.make_cluster(60, 3)
    services = [o for o in cluster["items"] if o["kind"] == "Service"]
    services[-1]["spec"]["externalIPs"] = ["203.0.113.250"]
    services[1]["spec"]["externalIPs"] = ["203.0.113.250"]  # the first Service in name order keeps it
    docs = docs_of(cluster)
    expected = serial(docs, BENCH.COMPILE_NODE, mode, "ipv4")
    assert any("is also a frontend of" in w for w in expected[1])
    assert parallel.compile_sharded(docs, BENCH.COMPILE_NODE, mode=mode, family="ipv4",
                                    workers=workers) == expected


@pytest.mark.parametrize("mode,family", [(None, "ipv4"), ("nftables", "ipv6")])
def test_mode_from_the_configuration_and_a_family_the_cluster_lacks(small_shards, mode, family):
    """The backend the KubeProxyConfiguration names; IPv6 on an IPv4 cluster (every shard warns
    that the node has no IPv6 address: the warning is given once, as in the serial path)."""
    docs = docs_of(BENCH.make_cluster(40, 2))
    expected = serial(docs, BENCH.COMPILE_NODE, mode, family)
    assert parallel.compile_sharded(docs, BENCH.COMPILE_NODE, mode=mode, family=family, workers=2) == expected
    if family == "ipv6":
        assert sum("no IPv6 address" in w for w in expected[1]) == 1


def test_iptables_large_cluster_decided_across_shards(small_shards):
    """Each shard alone is under kube-proxy's 1000-endpoint mark, together they are over it:
    per-endpoint comments go away in every shard, as in the serial file."""
    docs = docs_of(BENCH.make_cluster(300, 6))
    text, warnings = parallel.compile_sharded(docs, BENCH.COMPILE_NODE, mode="iptables", family="ipv4", workers=3)
    assert (text, warnings) == serial(docs, BENCH.COMPILE_NODE, "iptables", "ipv4")
    small = docs_of(BENCH.make_cluster(40, 6))
    assert parallel.compile_sharded(small, BENCH.COMPILE_NODE, mode="iptables", family="ipv4",
                                    workers=3) == serial(small, BENCH.COMPILE_NODE, "iptables", "ipv4")
    assert " -> " in serial(small, BENCH.COMPILE_NODE, "iptables", "ipv4")[0]  # comments kept: not large


def _node_of(case: Path) -> str:
    return next(line.split(":", 1)[1].strip() for line in case.read_text().splitlines() if line.startswith("# node:"))


@pytest.mark.parametrize("case", sorted(CASES.glob("*.yaml")), ids=lambda c: c.stem)
def test_cases_sharded_like_serial_or_left_to_it(small_shards, case):
    docs = load_documents([str(case)])
    sharded = 0
    for mode in ("iptables", "nftables"):
        for family in ("ipv4", "ipv6"):
            got = parallel.compile_sharded(docs, _node_of(case), mode=mode, family=family, workers=3)
            assert got is None or got == serial(docs, _node_of(case), mode, family)
            sharded += got is not None
    assert sharded  # (these cases hold only Services, EndpointSlices, Nodes and a configuration)


def _left_to_serial(docs, node=BENCH.COMPILE_NODE) -> bool:
    return parallel.compile_sharded(docs, node, mode="nftables", family="ipv4", workers=3) is None


def test_what_needs_the_whole_input_is_left_to_the_serial_path(small_shards):
    base = BENCH.make_cluster(30, 2)
    assert not _left_to_serial(docs_of(base))
    assert _left_to_serial(docs_of(base), node="no-such-node")  # the serial path names the error
    assert _left_to_serial(docs_of(BENCH.make_cluster(1, 2)))  # one Service: nothing to share out

    bad = copy.deepcopy(base)  # a problem in the last shard only
    [o for o in bad["items"] if o["kind"] == "Service"][-1]["spec"]["ports"][0]["port"] = 70000
    assert _left_to_serial(docs_of(bad))

    dup = copy.deepcopy(base)  # two slices of one name, owned by Services in different shards
    slices = [o for o in dup["items"] if o["kind"] == "EndpointSlice"]
    slices[-1]["metadata"]["name"] = slices[0]["metadata"]["name"]
    slices[-1]["metadata"]["namespace"] = slices[0]["metadata"]["namespace"]
    assert _left_to_serial(docs_of(dup))

    for extra in (  # (a Pod is sharded: see test_pods.py's tests of the sharded Pods path)
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "e", "namespace": "default"}},
    ):
        more = copy.deepcopy(base)
        more["items"].append(extra)
        assert _left_to_serial(docs_of(more)), extra["kind"]

    orphan = copy.deepcopy(base)  # a selector Service without slices: they come from Pods
    orphan["items"] = [o for o in orphan["items"]
                       if not (o["kind"] == "EndpointSlice" and o["metadata"]["name"].startswith(
                           [s for s in orphan["items"] if s["kind"] == "Service"][-1]["metadata"]["name"]))]
    assert _left_to_serial(docs_of(orphan))


def test_an_external_ip_that_is_another_services_cluster_ip_is_left_to_the_serial_path(small_shards):
    """A shard plans its own Services only, but an allocated ClusterIP wins over an externalIP or
    load-balancer IP another Service claims: such input (spelled sloppily, too) is compiled
    serially, which gives the ClusterIP to its Service with a warning."""
    base = BENCH.make_cluster(60, 3)
    services = [o for o in base["items"] if o["kind"] == "Service"]
    last_ip = services[-1]["spec"]["clusterIP"]
    sloppy = ".".join(f"0{octet}" for octet in last_ip.split("."))
    for claim in ({"spec": {"externalIPs": [sloppy]}},
                  {"status": {"loadBalancer": {"ingress": [{"ip": last_ip}]}}}):
        cluster = copy.deepcopy(base)
        first = [o for o in cluster["items"] if o["kind"] == "Service"][0]
        if "status" in claim:
            first["spec"].update(type="LoadBalancer", allocateLoadBalancerNodePorts=False)
        for key, value in claim.items():
            first.setdefault(key, {}).update(value)
        docs = docs_of(cluster)
        assert _left_to_serial(docs)
        text, warnings = serial(docs, BENCH.COMPILE_NODE, "nftables", "ipv4")
        assert any(f"{last_ip} is the ClusterIP of Service" in w for w in warnings), warnings
    assert not _left_to_serial(docs_of(base))


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_the_external_ip_allow_list_sharded_like_serial(small_shards, mode):
    """Allowed and refused externalIPs in different shards, from the configuration and from the
    keyword that overrides it: same text and warnings as serially."""
    cluster = BENCH.make_cluster(60, 3)
    services = [o for o in cluster["items"] if o["kind"] == "Service"]
    services[1]["spec"]["externalIPs"] = ["203.0.113.250", "198.51.100.250"]
    services[-1]["spec"]["externalIPs"] = ["198.51.100.251"]
    next(o for o in cluster["items"] if o["kind"] == "KubeProxyConfiguration")["externalIPCIDRs"] = ["203.0.113.0/24"]
    docs = docs_of(cluster)
    for cidrs in (None, ["198.51.100.0/24"]):
        parsed = parse_cluster(docs)
        result = compile_rules(parsed.cluster, BENCH.COMPILE_NODE, backend=mode, external_ip_cidrs=cidrs)
        refused = {w.split("spec.externalIPs: ")[1].split()[0] for w in result.warnings if " is outside " in w}
        assert ({"198.51.100.250", "198.51.100.251"} <= refused if cidrs is None
                else "203.0.113.250" in refused and not refused & {"198.51.100.250", "198.51.100.251"}), refused
        assert parallel.compile_sharded(docs, BENCH.COMPILE_NODE, mode=mode, family="ipv4", workers=3,
                                        external_ip_cidrs=cidrs) == (result.text, result.warnings)


def test_cli_output_is_the_same_with_one_process_or_several(tmp_path):
    """Past MIN_SERVICES_PER_SHARD Services per process the CLI shards the work; nothing a user
    sees changes (stdout, stderr, exit status), for both backends."""
    cluster = BENCH.make_cluster(2 * parallel.MIN_SERVICES_PER_SHARD + 50, 1)
    services = [o for o in cluster["items"] if o["kind"] == "Service"]
    services[-1]["spec"]["externalIPs"] = services[0]["spec"].get("externalIPs", []) + ["203.0.113.251"]
    services[0]["spec"]["externalIPs"] = ["203.0.113.251"]
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(cluster))
    assert not _left_to_serial(load_documents([str(path)]))  # two processes will share the work
    for backend in ("iptables", "nftables"):
        runs = [subprocess.run([sys.executable, "-I", "-m", "dataplane", "compile", "-f", str(path), "--node",
                                BENCH.COMPILE_NODE, "--backend", backend, "-j", jobs],
                               capture_output=True, text=True) for jobs in ("1", "2")]
        assert runs[0].returncode == 0 and "is also a frontend of" in runs[0].stderr, runs[0].stderr
        assert [(r.returncode, r.stdout, r.stderr) for r in runs[1:]] == [(0, runs[0].stdout, runs[0].stderr)]
