"""Issue 15: every rules file the public corpus (tests/corpus, see SOURCES.md) compiles to loads in
a kernel, and one Service of one corpus file is proven with packets.

* For each corpus entry, backend and family: the rules ``dataplane compile`` prints for node1 of
  the entry as published (plus two Nodes) and of the entry as a running cluster
  (``corpus_support.live_objects``: Pods built from its Deployments) are loaded into a fresh
  namespace with ``iptables-restore --noflush`` / ``nft -f -`` directly, and the kernel then holds
  every per-Service chain the file declares.
* istio-bookinfo, as a running cluster in ``Topology.simple(nodes=2, pods_per_node=3)``, its six
  Pods served in the lab pods the corpus layout gives them: the reviews ClusterIP reaches all three
  reviews versions and nothing else, details only the details Pod, in both backends.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dataplane.lab import Topology
from dataplane.runtime.netns import run_in
from svc_lab import BACKENDS, assert_reached, compile_and_apply, spread

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("corpus_support", ROOT / "tests" / "corpus" / "corpus_support.py")
cs = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("corpus_support", cs)
_spec.loader.exec_module(cs)

ENTRIES = sorted(cs.ENTRIES)


def dataplane(*args: str, cwd: Path) -> str:
    r = subprocess.run([sys.executable, "-I", "-m", "dataplane", *args], cwd=cwd,
                       capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    return r.stdout


def families(entry) -> list[str]:
    docs = [d for p in entry.paths for d in cs.load_docs(p)]
    fams = {"ipv4"}
    for d in docs:
        if d.get("kind") == "Service":
            fams.update(f.lower() for f in (d.get("spec") or {}).get("ipFamilies") or [])
    return sorted(fams)


CASES = [(n, b, f) for n in ENTRIES for b in BACKENDS for f in families(cs.ENTRIES[n])]


def inputs(entry, tmp_path: Path) -> dict[str, list[str]]:
    """The two inputs of an entry: as published (+ Nodes) and as a running cluster, allocated."""
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(yaml.safe_dump_all(cs.node_objects()))
    live_path, _ = cs.write_live(entry, tmp_path)
    allocated = tmp_path / "live-allocated.yaml"
    dataplane("allocate", "--seed", "1", "-f", str(live_path), "-o", str(allocated), cwd=tmp_path)
    published = [a for p in entry.paths for a in ("-f", str(p))] + ["-f", str(nodes), "--allocate", "--seed", "1"]
    return {"published": published, "live": ["-f", str(allocated)]}


@pytest.mark.parametrize("name,backend,family", CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_every_compiled_corpus_file_loads_in_a_namespace(name, backend, family, tmp_path, ns_prefix):
    entry = cs.ENTRIES[name]
    for variant, args in inputs(entry, tmp_path).items():
        rules = dataplane("compile", *args, "--node", "node1", "--backend", backend, "--ip-family", family,
                          cwd=tmp_path)
        ns = f"{ns_prefix}-{variant[:4]}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            if backend == "iptables":
                tool = "ip6tables" if family == "ipv6" else "iptables"
                run_in(ns, [f"{tool}-restore", "--noflush"], input=rules)
                declared = set(re.findall(r"^:(KUBE-(?:SVC|SEP|EXT|SVL|FW)-\w+) ", rules, re.M))
                loaded = set(re.findall(r"^:(KUBE-(?:SVC|SEP|EXT|SVL|FW)-\w+) ",
                                        run_in(ns, [f"{tool}-save", "-t", "nat"]).stdout, re.M))
            else:
                run_in(ns, ["nft", "-f", "-"], input=rules)
                table = "ip6 kube-proxy" if family == "ipv6" else "ip kube-proxy"
                declared = set(re.findall(r"^\tchain ((?:service|endpoint|external)-\S+) \{", rules, re.M))
                loaded = set(re.findall(r"^\tchain ((?:service|endpoint|external)-\S+) \{",
                                        run_in(ns, ["nft", "list", "table", *table.split()]).stdout, re.M))
            assert loaded == declared, f"{variant}: declared but not loaded: {sorted(declared - loaded)[:5]}"
            if variant == "live" and entry.services:
                assert declared, "a running cluster of this entry has Service chains"
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bookinfo_with_packets(backend, make_lab, tmp_path):
    entry = cs.ENTRIES["istio-bookinfo"]
    live_path, live = cs.write_live(entry, tmp_path)
    allocated = tmp_path / "allocated.yaml"
    dataplane("allocate", "--seed", "1", "-f", str(live_path), "-o", str(allocated), cwd=tmp_path)
    vip = {d["metadata"]["name"]: d["spec"]["clusterIP"]
           for d in yaml.safe_load_all(allocated.read_text()) if d and d.get("kind") == "Service"}
    lab = make_lab(Topology.simple(nodes=2, pods_per_node=live.pods_per_node(), clients=1))
    compile_and_apply(lab, allocated, backend, node="node1")
    for pod in live.pods:
        lab.serve(pod.lab_pod, tcp_ports=(9080,))
    lab_pod = {p.workload: p.lab_pod for p in live.pods}
    client = lab_pod["details-v1"]  # on node1, whose rules are loaded

    reviews = {lab_pod[w] for w in ("reviews-v1", "reviews-v2", "reviews-v3")}
    seen = spread(lab, client, vip["reviews"], 9080, count=36)
    assert set(seen) == reviews, seen

    r = lab.tcp_probe(client, vip["ratings"], 9080)
    assert_reached(r, pods=[lab_pod["ratings-v1"]], dst_port=9080, vip=(vip["ratings"], 9080))
    seen = spread(lab, client, vip["productpage"], 9080, count=5)
    assert set(seen) == {lab_pod["productpage-v1"]}, seen
