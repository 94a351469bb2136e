"""Issue 3, proven with packets in both backends and both families: which Services and
EndpointSlices get rules at all, selector-less Services whose endpoints are outside the
cluster (hand-written EndpointSlices, v1 Endpoints), FQDN slices, and an endpoint listed in
two slices.

Topology (``Topology.simple(nodes=1, pods_per_node=2, clients=1, ipv6=True)``): node1
(192.0.2.1 / 2001:db8::1) is the node under test; client1 (192.0.2.100 / 2001:db8::100) is
outside the cluster and routes everything via node1. For the selector-less Services, the
"external" backends 11.11.11.11 / 2001:db8:11::11 and 22.22.22.22 / 2001:db8:22::22 are extra
addresses of pod1-1 and pod1-2 that node1 routes to them (think: two database hosts beyond
the node). Manifests are dual-stack; node1's rules are compiled for one family per test.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dataplane.lab import Topology
from dataplane.runtime.netns import read_back
from svc_lab import (
    BACKEND_FAMILIES,
    DUAL_STACK_CLUSTER_CIDR,
    assert_reached,
    backend_family_id,
    compile_and_apply,
    node_ip,
    nodes_yaml,
    pod_ip,
    proxy_config_yaml,
    write_manifests,
)

pytestmark = pytest.mark.netns

MATRIX = pytest.mark.parametrize(
    "backend,family", BACKEND_FAMILIES, ids=[backend_family_id(p) for p in BACKEND_FAMILIES]
)
HTTP = "[{name: http, port: 8080, protocol: TCP}]"


def service(name: str, index: int, *, labels: str = "", selector: bool = True, ports: str = "") -> str:
    """A dual-stack ClusterIP Service shop/<name> with ClusterIPs 10.96.1.<index> / fd00:10:96::1:<index>."""
    meta = f"{{name: {name}, namespace: shop" + (f", labels: {{{labels}}}" if labels else "") + "}"
    return (
        "apiVersion: v1\n"
        "kind: Service\n"
        f"metadata: {meta}\n"
        "spec:\n"
        "  ipFamilyPolicy: RequireDualStack\n"
        "  ipFamilies: [IPv4, IPv6]\n"
        f"  clusterIP: 10.96.1.{index}\n"
        f"  clusterIPs: [10.96.1.{index}, 'fd00:10:96::1:{index}']\n"
        + (f"  selector: {{app: {name}}}\n" if selector else "")
        + f"  ports: {ports or '[{name: http, port: 80, protocol: TCP, targetPort: 8080}]'}\n"
    )


def vip(index: int, family: str) -> str:
    return f"fd00:10:96::1:{index}" if family == "ipv6" else f"10.96.1.{index}"


def slices(svc: str, name: str, addresses: dict[str, list[str]], *, ports: str = HTTP, labels: str = "",
           managed_by: str = "endpointslice-controller.k8s.io") -> str:
    """One EndpointSlice per address type in ``addresses`` (address type -> addresses)."""
    docs = []
    for address_type, addrs in addresses.items():
        suffix = {"IPv4": "v4", "IPv6": "v6", "FQDN": "fqdn"}[address_type]
        eps = "".join(f"\n- {{addresses: ['{a}']}}" for a in addrs)
        docs.append(
            "apiVersion: discovery.k8s.io/v1\n"
            "kind: EndpointSlice\n"
            f"metadata: {{name: {name}-{suffix}, namespace: shop, labels: {{kubernetes.io/service-name: {svc}, "
            f"endpointslice.kubernetes.io/managed-by: {managed_by}" + (f", {labels}" if labels else "") + "}}\n"
            f"addressType: {address_type}\n"
            f"ports: {ports}\n"
            "endpoints:" + eps
        )
    return "\n---\n".join(docs)


def pods_slices(svc: str, name: str, pods: list[str], **kw) -> str:
    return slices(svc, name, {"IPv4": [pod_ip(p, "ipv4") for p in pods],
                              "IPv6": [pod_ip(p, "ipv6") for p in pods]}, **kw)


def make(make_lab, tmp_path, backend, family, *docs):
    lab = make_lab(Topology.simple(nodes=1, pods_per_node=2, clients=1, ipv6=True))
    manifest = write_manifests(tmp_path, proxy_config_yaml(f"mode: {backend}\n", cluster_cidr=DUAL_STACK_CLUSTER_CIDR),
                               nodes_yaml(1, ipv6=True), *docs)
    return lab, manifest


# ----------------------------------------------------------------------------- Services without rules


@MATRIX
def test_services_that_get_no_rules(make_lab, tmp_path, backend, family):
    """Headless, ExternalName, and Services (or EndpointSlices) labelled
    service.kubernetes.io/service-proxy-name or service.kubernetes.io/headless get no rules:
    their would-be ClusterIPs are not DNATed, while a normal Service in the same input works."""
    lab, manifest = make(
        make_lab, tmp_path, backend, family,
        service("web", 10),
        pods_slices("web", "web", ["pod1-1"]),
        # another proxy's EndpointSlices for web: kube-proxy does not watch them
        pods_slices("web", "web-mesh", ["pod1-2"], managed_by="mesh-controller.example.com",
                    labels="service.kubernetes.io/service-proxy-name: other-proxy"),
        """
        apiVersion: v1
        kind: Service
        metadata: {name: db, namespace: shop}
        spec:
          clusterIP: None
          selector: {app: db}
          ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
        """,
        pods_slices("db", "db", ["pod1-2"], labels="service.kubernetes.io/headless: ''"),
        """
        apiVersion: v1
        kind: Service
        metadata: {name: payments, namespace: shop}
        spec:
          type: ExternalName
          externalName: payments.example.com
          ports: [{name: http, port: 80, protocol: TCP}]
        """,
        service("mesh", 12, labels="service.kubernetes.io/service-proxy-name: other-proxy"),
        pods_slices("mesh", "mesh", ["pod1-2"], labels="service.kubernetes.io/service-proxy-name: other-proxy"),
        service("quiet", 13, labels="service.kubernetes.io/headless: ''"),
        pods_slices("quiet", "quiet", ["pod1-2"], labels="service.kubernetes.io/headless: ''"),
    )
    for pod in ("pod1-1", "pod1-2"):
        lab.serve(pod, tcp_ports=(8080,))
    result = compile_and_apply(lab, manifest, backend, family=family)
    assert {(p.namespace, p.name) for p in result.plan.services} == {("shop", "web")}
    rules = read_back(lab.ns("node1"), backend, ipv6=family == "ipv6")
    assert pod_ip("pod1-2", family) not in rules  # only the ignored objects list pod1-2

    for _ in range(20):  # the mesh slice's pod1-2 never gets web's traffic
        r = lab.tcp_probe("client1", vip(10, family), 80)
        assert_reached(r, pods={"pod1-1"}, dst_port=8080, vip=(vip(10, family), 80), src=node_ip(1, family))
    probes = [(source, vip(index, family)) for index in (12, 13) for source in ("client1", "pod1-1")]
    with ThreadPoolExecutor(len(probes)) as pool:  # each one must wait out its timeout
        results = list(pool.map(lambda p: lab.tcp_probe(p[0], p[1], 80, timeout=0.2), probes))
    assert [r.outcome for r in results] == ["timeout"] * len(probes), results


# ----------------------------------------------------------------------------- selector-less Services

EXTERNAL = {"ipv4": ("11.11.11.11", "22.22.22.22"), "ipv6": ("2001:db8:11::11", "2001:db8:22::22")}


def add_external_backends(lab) -> None:
    """11.11.11.11 (2001:db8:11::11) on pod1-1 and 22.22.22.22 (2001:db8:22::22) on pod1-2,
    routed to them by node1."""
    for pod, index in (("pod1-1", 0), ("pod1-2", 1)):
        veth = lab.pod_ifname(pod)
        for family in ("ipv4", "ipv6"):
            address = EXTERNAL[family][index]
            v, plen = ("-6", 128) if family == "ipv6" else ("-4", 32)
            lab.run(pod, ["ip", v, "addr", "add", f"{address}/{plen}", "dev", "eth0"]
                    + (["nodad"] if family == "ipv6" else []))
            lab.run("node1", ["ip", v, "route", "add", f"{address}/{plen}", "dev", veth])
            deadline = time.monotonic() + 2.0  # IPv6 adds the local route asynchronously
            while not lab.run(pod, ["ip", v, "route", "show", "table", "local", address]).stdout.strip():
                assert time.monotonic() < deadline, f"{pod}: no local route for {address}"
                time.sleep(0.005)


@MATRIX
def test_selectorless_services_with_external_endpoints(make_lab, tmp_path, backend, family):
    """A Service without a selector, with hand-written EndpointSlices (plus an FQDN slice,
    which kube-proxy ignores), and one with a ``v1`` Endpoints object (mirrored into
    EndpointSlices): both send traffic to the two outside addresses, port 80."""
    ext = {f: EXTERNAL[f] for f in ("ipv4", "ipv6")}
    lab, manifest = make(
        make_lab, tmp_path, backend, family,
        service("billing-db", 20, selector=False, ports="[{name: pg, port: 5432, protocol: TCP, targetPort: 80}]"),
        slices("billing-db", "billing-db",
               {"IPv4": list(ext["ipv4"]), "IPv6": list(ext["ipv6"]), "FQDN": ["db1.billing.example.com"]},
               ports="[{name: pg, port: 80, protocol: TCP}]", managed_by="staff"),
        service("legacy-api", 21, selector=False, ports="[{port: 8000, protocol: TCP, targetPort: 80}]"),
        f"""
        apiVersion: v1
        kind: Endpoints
        metadata: {{name: legacy-api, namespace: shop}}
        subsets:
        - addresses:
          - {{ip: {ext['ipv4'][0]}}}
          - {{ip: {ext['ipv4'][1]}}}
          - {{ip: '{ext['ipv6'][0]}'}}
          - {{ip: '{ext['ipv6'][1]}'}}
          ports: [{{port: 80, protocol: TCP}}]
        """,
    )
    add_external_backends(lab)
    for pod in ("pod1-1", "pod1-2"):
        lab.serve(pod, tcp_ports=(80,))
    result = compile_and_apply(lab, manifest, backend, family=family)
    fmt = (lambda ip: f"[{ip}]:80") if family == "ipv6" else (lambda ip: f"{ip}:80")
    by_name = {p.name: p for p in result.plan.services}
    assert set(by_name) == {"billing-db", "legacy-api"}
    for p in by_name.values():  # the FQDN slice adds nothing
        assert [e.address for e in p.cluster_endpoints] == [fmt(ip) for ip in sorted(EXTERNAL[family])]

    backend_of = {"pod1-1": EXTERNAL[family][0], "pod1-2": EXTERNAL[family][1]}
    for index, port in ((20, 5432), (21, 8000)):
        seen = set()
        for _ in range(30):
            r = lab.tcp_probe("client1", vip(index, family), port)
            assert_reached(r, pods=backend_of, dst_port=80, vip=(vip(index, family), port), src=node_ip(1, family))
            assert r.server_saw_dst[0] == backend_of[r.pod]
            seen.add(r.pod)
        assert seen == set(backend_of)  # p(miss one of two fair endpoints in 30 tries) ~ 2e-9


@MATRIX
def test_endpoint_in_two_slices_counted_once(make_lab, tmp_path, backend, family):
    """Endpoint A is listed in slice 1, A and B in slice 2: two endpoints, 1/2 each (counting
    A twice would give it 2/3)."""
    lab, manifest = make(
        make_lab, tmp_path, backend, family,
        service("dup", 30),
        pods_slices("dup", "dup-a", ["pod1-1"]),
        pods_slices("dup", "dup-b", ["pod1-1", "pod1-2"]),
    )
    for pod in ("pod1-1", "pod1-2"):
        lab.serve(pod, tcp_ports=(8080,))
    result = compile_and_apply(lab, manifest, backend, family=family)
    (plan,) = result.plan.services
    assert len(plan.cluster_endpoints) == 2
    n = 1200
    a = 0
    for _ in range(n):
        r = lab.tcp_probe("client1", vip(30, family), 80)
        assert r.ok and r.pod in ("pod1-1", "pod1-2"), r
        a += r.pod == "pod1-1"
    # Fair: mean 600, sd 17.3. Counted twice: mean 800, sd 16.3. The bounds are > 5.7 sd away
    # from a fair outcome, and 7/12 (700) lies 6.1 sd below the double-counting mean.
    assert 0.40 * n < a < 7 / 12 * n, f"pod1-1 (listed twice) got {a} of {n}"
