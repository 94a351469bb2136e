"""Public manifests end to end through the CLI (issue 15): every corpus file of tests/corpus
(sources in tests/corpus/SOURCES.md) through allocate, compile (both backends, every family the
file has), endpoints, dns and env, as a new user runs them, in a fresh interpreter
(``python -I -m dataplane``) as the installed package.

Two ways per file:

* as published: only warnings, never an error or a traceback, exit 0 (compile gets two Nodes
  besides, as it needs the node it compiles for);
* as a running cluster (``corpus_support.live_objects``: Pods made from the Deployments, Ready,
  scheduled on node1/node2, with addresses): every Service port the entry names gets its ClusterIP
  rule and exactly the endpoints of the Pods it selects, in both backends, and dns/env/endpoints
  show them.
"""
from __future__ import annotations

import importlib.util
import ipaddress
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from test_discovery import checked_zone  # every zone a test produces must load in BIND

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("corpus_support", ROOT / "tests" / "corpus" / "corpus_support.py")
cs = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("corpus_support", cs)
_spec.loader.exec_module(cs)

ENTRIES = sorted(cs.ENTRIES)
BACKENDS = ("iptables", "nftables")


def dataplane(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-m", "dataplane", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def ok(r: subprocess.CompletedProcess) -> str:
    """Exit 0, no traceback, no error line: only warnings on stderr. Returns stdout."""
    assert "Traceback" not in r.stderr, r.stderr
    errors = [l for l in r.stderr.splitlines() if l and not l.startswith("warning: ")]
    assert r.returncode == 0 and not errors, f"exit {r.returncode}:\n{r.stderr}"
    return r.stdout


def file_args(paths) -> list[str]:
    return [a for p in paths for a in ("-f", str(p))]


def families_of(docs: list[dict]) -> list[str]:
    """The IP families the Services of these objects use (IPv4 unless a Service says otherwise)."""
    fams = {"ipv4"}
    for d in docs:
        if d.get("kind") != "Service":
            continue
        spec = d.get("spec") or {}
        for f in spec.get("ipFamilies") or []:
            fams.add(f.lower())
        for ip in spec.get("clusterIPs") or []:
            if ip != "None" and ipaddress.ip_address(ip).version == 6:
                fams.add("ipv6")
    return sorted(fams)


@lru_cache(maxsize=None)
def published_families(name: str) -> tuple[str, ...]:
    return tuple(families_of([d for p in cs.ENTRIES[name].paths for d in cs.load_docs(p)]))


BACKEND_FAMILY_CASES = [(n, b, f) for n in ENTRIES for b in BACKENDS for f in published_families(n)]


def services_in(text: str) -> dict[tuple[str, str], dict]:
    return {(d["metadata"].get("namespace", "default"), d["metadata"]["name"]): d
            for d in yaml.safe_load_all(text) if isinstance(d, dict) and d.get("kind") == "Service"}


# ------------------------------------------------------------------ rule readers (both backends)

def iptables_endpoints(text: str, cluster_ip: str, port: int) -> list[str]:
    """The endpoints (ip:port) the KUBE-SVC chain of a ClusterIP:port picks among."""
    m = re.search(rf"^-A KUBE-SERVICES -d {re.escape(cluster_ip)}/32 -p tcp .* --dport {port} -j (KUBE-SVC-\w+)$",
                  text, re.M)
    assert m, f"no KUBE-SERVICES rule for {cluster_ip}:{port}"
    return sorted(re.findall(rf'^-A {m.group(1)} .*-> ([\d.]+:\d+)"', text, re.M))


def nft_endpoints(text: str, cluster_ip: str, port: int) -> list[str]:
    """The endpoints (ip:port) the service chain of a ClusterIP:port picks among."""
    m = re.search(rf"\b{re.escape(cluster_ip)} \. tcp \. {port} : goto (service-[^\s,}}]+)", text)
    assert m, f"no service-ips element for {cluster_ip}:{port}"
    block = text.split(f"chain {m.group(1)} {{", 1)[1].split("\n\t}", 1)[0]
    return sorted(f"{ip}:{p}" for ip, p in re.findall(r"goto endpoint-\S+__([\d.]+)/(\d+)", block))


READERS = {"iptables": iptables_endpoints, "nftables": nft_endpoints}


# ------------------------------------------------------------------ as published

@pytest.mark.parametrize("name", ENTRIES)
def test_published_files_allocate_endpoints_dns_env(name, tmp_path):
    entry = cs.ENTRIES[name]
    files = file_args(entry.paths)
    allocated = ok(dataplane("allocate", "--seed", "1", *files, cwd=tmp_path))
    published = [d for p in entry.paths for d in cs.load_docs(p)]
    services = [d for d in published if d.get("kind") == "Service"]
    got = services_in(allocated)
    assert len(got) == len(services)
    for svc in got.values():
        if svc["spec"].get("type") != "ExternalName":
            assert svc["spec"]["clusterIP"] and svc["spec"]["clusterIPs"], svc
    ok(dataplane("endpoints", *files, cwd=tmp_path))
    assert " IN SOA " in checked_zone(ok(dataplane("dns", *files, cwd=tmp_path)))
    for ns in entry.namespaces:
        ok(dataplane("env", *files, "-n", ns, cwd=tmp_path))
    # what the API server holds (allocated), as `dataplane allocate | dataplane dns|env` reads it
    (tmp_path / "allocated.yaml").write_text(allocated)
    zone = checked_zone(ok(dataplane("dns", "-f", "allocated.yaml", cwd=tmp_path)))
    for (sns, sname), svc in got.items():
        if svc["spec"].get("type") != "ExternalName":
            assert re.search(rf"^{re.escape(sname)}\.{sns}\.svc\.cluster\.local\.\s+30 IN A\s+"
                             rf"{re.escape(svc['spec']['clusterIP'])}$", zone, re.M), sname
    for ns in entry.namespaces:
        env = ok(dataplane("env", "-f", "allocated.yaml", "-n", ns, cwd=tmp_path))
        for (sns, sname), svc in got.items():
            if sns == ns and svc["spec"].get("type") != "ExternalName":
                var = sname.upper().replace("-", "_") + "_SERVICE_HOST"
                assert f"{var}={svc['spec']['clusterIP']}\n" in env


@pytest.mark.parametrize("name,backend,family", BACKEND_FAMILY_CASES)
def test_published_files_compile(name, backend, family, tmp_path):
    """The file as published, with two Nodes to compile for: warnings only, a whole rules file."""
    entry = cs.ENTRIES[name]
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(yaml.safe_dump_all(cs.node_objects()))
    out = ok(dataplane("compile", "--allocate", "--seed", "1", *file_args(entry.paths), "-f", str(nodes),
                       "--node", "node1", "--backend", backend, "--ip-family", family, cwd=tmp_path))
    if backend == "iptables":
        assert out.startswith("*") and out.rstrip().endswith("COMMIT")
    else:
        assert "table ip" in out and "kube-proxy" in out


# ------------------------------------------------------------------ as a running cluster

@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """name -> (directory, allocated file, Live): each entry with Pods and Nodes, allocated once."""
    base = tmp_path_factory.mktemp("corpus")
    built = {}
    for name in ENTRIES:
        d = base / name
        d.mkdir()
        path, live_ = cs.write_live(cs.ENTRIES[name], d)
        built[name] = (d, path, live_)
    return built


def allocated(live, name) -> tuple[Path, Path, object, str]:
    d, path, live_ = live[name]
    out = d / "allocated.yaml"
    if not out.exists():
        ok(dataplane("allocate", "--seed", "1", "-f", str(path), "-o", str(out), cwd=d))
    return d, out, live_, out.read_text()


def expected_endpoints(live_, entry, key, target: dict) -> list[str]:
    """ip:port of the Pods behind a Service port: the port's targetPort, resolved by name per Pod."""
    out = []
    for pod in live_.pods_of(entry.services[key]):
        obj = next(o for o in live_.objects if o.get("kind") == "Pod" and o["metadata"]["name"] == pod.name)
        tp = target.get("targetPort", target["port"])
        if isinstance(tp, str):
            tp = next(p["containerPort"] for c in obj["spec"]["containers"] for p in c.get("ports", [])
                      if p.get("name") == tp)
        out.append(f"{pod.ip}:{tp}")
    return sorted(out)


LIVE_SERVICE_CASES = [(n, b) for n in ENTRIES if cs.ENTRIES[n].services for b in BACKENDS]


@pytest.mark.parametrize("name,backend", LIVE_SERVICE_CASES)
def test_live_cluster_every_service_port_reaches_its_pods(name, backend, live):
    entry = cs.ENTRIES[name]
    d, alloc, live_, text = allocated(live, name)
    services = services_in(text)
    for node in cs.NODES:
        rules = ok(dataplane("compile", "-f", str(alloc), "--node", node, "--backend", backend, cwd=d))
        for key in entry.services:
            ns, svc_name, port = key
            svc = services[(ns, svc_name)]
            sp = next(p for p in svc["spec"]["ports"] if p["port"] == port)
            want = expected_endpoints(live_, entry, key, sp)
            assert want, key
            assert READERS[backend](rules, svc["spec"]["clusterIP"], port) == want, (node, key)


@pytest.mark.parametrize("name", [n for n in ENTRIES if cs.ENTRIES[n].services])
def test_live_cluster_endpoints_dns_env(name, live):
    entry = cs.ENTRIES[name]
    d, alloc, live_, text = allocated(live, name)
    services = services_in(text)
    slices = [s for s in yaml.safe_load_all(ok(dataplane("endpoints", "-f", str(alloc), cwd=d))) if s]
    by_service = {}
    for s in slices:
        assert s["kind"] == "EndpointSlice"
        key = (s["metadata"]["namespace"], s["metadata"]["labels"]["kubernetes.io/service-name"])
        by_service.setdefault(key, set()).update(a for e in s["endpoints"] for a in e["addresses"])
    zone = checked_zone(ok(dataplane("dns", "-f", str(alloc), cwd=d)))
    for ns, svc_name, port in entry.services:
        want_ips = {p.ip for p in live_.pods_of(entry.services[(ns, svc_name, port)])}
        assert want_ips <= by_service[(ns, svc_name)]
        cip = services[(ns, svc_name)]["spec"]["clusterIP"]
        assert re.search(rf"^{re.escape(svc_name)}\.{ns}\.svc\.cluster\.local\.\s+30 IN A\s+{re.escape(cip)}$",
                         zone, re.M), svc_name
    for ns in entry.namespaces:
        env = ok(dataplane("env", "-f", str(alloc), "-n", ns, cwd=d))
        for (sns, svc_name, port) in entry.services:
            if sns == ns:
                prefix = svc_name.upper().replace("-", "_")
                cip = services[(sns, svc_name)]["spec"]["clusterIP"]
                assert f"{prefix}_SERVICE_HOST={cip}\n" in env
                assert f"{prefix}_PORT_{port}_TCP_ADDR={cip}\n" in env


# ------------------------------------------------------------------ per-file checks

def test_bookinfo_four_services_reviews_balances_three_versions(live):
    d, alloc, live_, text = allocated(live, "istio-bookinfo")
    services = services_in(text)
    assert sorted(n for _, n in services) == ["details", "productpage", "ratings", "reviews"]
    rules = ok(dataplane("compile", "-f", str(alloc), "--node", "node1", cwd=d))
    assert len(set(re.findall(r"-j (KUBE-SVC-\w+)$", rules, re.M))) == 4
    reviews = re.findall(r'"default/reviews:http -> [\d.:]+" -m statistic --mode random --probability (\S+)', rules)
    assert reviews == ["0.33333333349", "0.50000000000"]


def test_guestbook_frontend_nodeport_is_allocated_and_served(live):
    d, alloc, live_, text = allocated(live, "guestbook-all-in-one")
    frontend = services_in(text)[("default", "frontend")]
    node_port = frontend["spec"]["ports"][0]["nodePort"]
    assert 30000 <= node_port <= 32767
    rules = ok(dataplane("compile", "-f", str(alloc), "--node", "node2", cwd=d))
    assert re.search(rf'^-A KUBE-NODEPORTS -p tcp -m comment --comment "default/frontend" -m tcp --dport {node_port} -j KUBE-EXT-',
                     rules, re.M)
    nft = ok(dataplane("compile", "-f", str(alloc), "--node", "node2", "--backend", "nftables", cwd=d))
    assert re.search(rf"\btcp \. {node_port} : goto external-", nft)


def test_ingress_nginx_local_load_balancer_only_on_the_node_with_the_controller(live):
    d, alloc, live_, text = allocated(live, "ingress-nginx-cloud")
    svc = services_in(text)[("ingress-nginx", "ingress-nginx-controller")]
    assert 30000 <= svc["spec"]["healthCheckNodePort"] <= 32767
    ports = {p["name"]: p["nodePort"] for p in svc["spec"]["ports"]}
    (controller,) = live_.pods
    assert controller.node == "node1"
    on = ok(dataplane("compile", "-f", str(alloc), "--node", "node1", cwd=d))
    off = ok(dataplane("compile", "-f", str(alloc), "--node", "node2", cwd=d))
    for name, np in ports.items():
        chain = re.search(rf'^-A KUBE-NODEPORTS .*--dport {np} -j (KUBE-EXT-\w+)$', on, re.M).group(1)
        svl = re.search(rf"^-A {chain} (?:.* )?-j (KUBE-SVL-\w+)$", on, re.M)
        assert svl, f"{name}: node1 has the controller, its nodePort goes to the local endpoint"
        assert re.search(rf"^-A {svl.group(1)} .*-> {controller.ip}:{80 if name == 'http' else 443}\"", on, re.M)
        # node2 has no local endpoint: its nodePort is dropped (externalTrafficPolicy: Local)
        assert re.search(rf'^-A KUBE-EXTERNAL-SERVICES .*"ingress-nginx/ingress-nginx-controller:{name} has no local endpoints" .*--dport {np} -j DROP$',
                         off, re.M), name


def test_jupyterhub_dump_keeps_what_the_api_server_allocated(tmp_path, live):
    entry = cs.ENTRIES["jupyterhub-proxy-public-svc-dump"]
    svc = services_in(ok(dataplane("allocate", "--seed", "1", *file_args(entry.paths), cwd=tmp_path)))[("jhub", "proxy-public")]
    assert svc["spec"]["clusterIP"] == "10.108.102.132"
    assert svc["spec"]["ports"][0]["nodePort"] == 32679
    d, alloc, live_, text = allocated(live, "jupyterhub-proxy-public-svc-dump")
    for backend in BACKENDS:
        rules = ok(dataplane("compile", "-f", str(alloc), "--node", "node2", "--backend", backend, cwd=d))
        for eip in ("35.224.44.230", "10.8.0.9"):
            if backend == "iptables":
                assert re.search(rf'^-A KUBE-SERVICES -d {eip}/32 -p tcp -m comment --comment "jhub/proxy-public:http external IP" -m tcp --dport 80 -j KUBE-EXT-',
                                 rules, re.M)
            else:
                assert re.search(rf"\b{re.escape(eip)} \. tcp \. 80 : goto external-", rules)
        assert "32679" in rules


def test_glusterfs_selectorless_endpoints_are_mirrored(tmp_path, live):
    entry = cs.ENTRIES["glusterfs-endpoints"]
    alone = dataplane("compile", "--allocate", "--seed", "1", *file_args(entry.paths), "-f",
                      str(live["glusterfs-endpoints"][1]), "--node", "node1", cwd=tmp_path)
    assert "Traceback" not in alone.stderr
    d, alloc, live_, text = allocated(live, "glusterfs-endpoints")
    svc = services_in(text)[("default", "glusterfs-cluster")]
    for backend in BACKENDS:
        rules = ok(dataplane("compile", "-f", str(alloc), "--node", "node1", "--backend", backend, cwd=d))
        assert READERS[backend](rules, svc["spec"]["clusterIP"], 1) == ["10.240.106.152:1", "10.240.79.157:1"]
    warned = dataplane("allocate", "--seed", "1", *file_args(entry.paths), cwd=tmp_path)
    assert "not mirrored to EndpointSlices: the input has no Service default/glusterfs-cluster" in ok(warned) + warned.stderr


def test_kind_cluster_config_is_ignored_with_a_warning(tmp_path):
    entry = cs.ENTRIES["kind-example-config"]
    r = dataplane("allocate", "--seed", "1", *file_args(entry.paths), cwd=tmp_path)
    ok(r)
    assert "ignoring kind.sigs.k8s.io/v1alpha3 Cluster" in r.stderr
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(yaml.safe_dump_all(cs.node_objects()))
    rules = ok(dataplane("compile", *file_args(entry.paths), "-f", str(nodes), "--node", "node1", cwd=tmp_path))
    assert "KUBE-SVC-" not in rules and "-j KUBE-SERVICES" in rules


def test_microservices_demo_target_ports_differ_from_service_ports(live):
    d, alloc, live_, text = allocated(live, "microservices-demo")
    services = services_in(text)
    assert len(services) == 11
    email = next(p for p in live_.pods if p.workload == "emailservice")
    rules = ok(dataplane("compile", "-f", str(alloc), "--node", "node1", "--backend", "nftables", cwd=d))
    assert nft_endpoints(rules, services[("default", "emailservice")]["spec"]["clusterIP"], 5000) == [f"{email.ip}:8080"]
    # loadgenerator has no Service; its Pod is in no rule
    loadgen = next(p for p in live_.pods if p.workload == "loadgenerator")
    assert loadgen.ip not in rules
