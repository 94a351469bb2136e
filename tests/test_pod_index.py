"""Pods indexed by namespace and label (controllers/podindex.py): the same answers as a scan of
every Pod, at the cost of what a selector matches."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.controllers import podindex
from dataplane.controllers.endpointslices import derive_endpoint_slices, slices_for_service, wants_slices
from dataplane.controllers.podindex import PodIndex, selects
from dataplane.input.coverage import services_without_endpoints
from dataplane.model import Cluster, Node, Pod, Service, ServicePort

NAMESPACES = ("default", "shop", "kube-system")
KEYS = ("app", "tier", "version")
VALUES = ("a", "b", "c", "")

labels_st = st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(VALUES)), max_size=3).map(tuple)
pod_st = st.builds(
    Pod,
    namespace=st.sampled_from(NAMESPACES),
    name=st.sampled_from(("p1", "p2", "p3", "p4", "p5")),  # duplicated names: order must be kept exactly
    labels=labels_st,
    node_name=st.sampled_from((None, "n1", "n2")),
    pod_ips=st.sampled_from(((), ("10.0.0.1",), ("10.0.0.2",), ("10.0.0.3", "fd00::3"), ("fd00::4",))),
    ready=st.booleans(),
    terminating=st.booleans(),
    phase=st.sampled_from(("Running", "Pending", "Succeeded", "Failed")),
)
service_st = st.builds(
    lambda ns, name, selector, kind: Service(ns, name, type=kind, selector=selector,
                                             cluster_ips=("10.96.0.10",), ports=(ServicePort(80),)),
    st.sampled_from(NAMESPACES),
    st.sampled_from(("web", "db", "cache")),
    labels_st,
    st.sampled_from(("ClusterIP", "ClusterIP", "ExternalName")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(pod_st, max_size=25), st.sampled_from(NAMESPACES), labels_st)
def test_select_is_the_scan_it_replaces(pods, namespace, selector):
    expected = [p for p in pods if p.namespace == namespace and selects(selector, p)]
    got = PodIndex(pods).select(namespace, selector)
    assert [id(p) for p in got] == [id(p) for p in expected]


@settings(max_examples=300, deadline=None)
@given(st.lists(pod_st, max_size=25), st.sampled_from(NAMESPACES), labels_st)
def test_selects_any_is_whether_select_finds_a_pod(pods, namespace, selector):
    index = PodIndex(pods)
    assert index.selects_any(namespace, selector) == bool(index.select(namespace, selector))


def test_an_empty_selector_selects_the_whole_namespace_and_a_missing_label_nothing():
    pods = [Pod("a", "p1", labels=(("app", "x"),)), Pod("b", "p2"), Pod("a", "p3")]
    index = PodIndex(pods)
    assert index.select("a", ()) == [pods[0], pods[2]]
    assert index.select("a", (("app", "y"),)) == []
    assert index.select("nowhere", (("app", "x"),)) == []
    # a selector naming one key twice with two values matches no Pod
    assert index.select("a", (("app", "x"), ("app", "y"))) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(pod_st, max_size=20), st.lists(service_st, max_size=6))
def test_derived_slices_equal_those_of_a_scan_of_every_pod(pods, services):
    """derive_endpoint_slices (index) gives exactly what slices_for_service (scan) gives, in order."""
    cluster = Cluster(services=tuple(services), pods=tuple(pods), nodes=(Node("n1"), Node("n2")))
    taken: set[tuple[str, str]] = set()
    covered: set[str] = set()
    expected = []
    for svc in sorted(services, key=lambda s: (s.namespace, s.name)):
        if not wants_slices(svc) or svc.key in covered:
            continue
        covered.add(svc.key)
        expected.extend(slices_for_service(svc, pods, {"n1": Node("n1"), "n2": Node("n2")}, taken))
    assert derive_endpoint_slices(cluster) == tuple(expected)


def test_a_selector_costs_what_it_matches(monkeypatch):
    """1,000 Services in one namespace, 10 Pods each: each selector checks only the Pods of its
    smallest posting list (10), not the namespace's 10,000."""
    calls = []
    real = podindex.selects

    def counting(selector, pod):
        calls.append(1)
        return real(selector, pod)

    monkeypatch.setattr(podindex, "selects", counting)
    pods = tuple(
        Pod("big", f"app{i}-{j}", labels=(("app", f"app{i}"), ("tier", "backend")), pod_ips=(f"10.{i // 250}.{i % 250}.{j + 1}",),
            ready=True)
        for i in range(1000) for j in range(10)
    )
    services = tuple(Service("big", f"app{i}", cluster_ips=(f"10.96.{i // 250}.{i % 250 + 1}",), ports=(ServicePort(80),),
                             selector=(("tier", "backend"), ("app", f"app{i}")))
                     for i in range(1000))
    slices = derive_endpoint_slices(Cluster(services=services, pods=pods))
    assert len(slices) == 1000 and all(len(s.endpoints) == 10 for s in slices)
    assert len(calls) == 10_000  # 10 candidates per Service (a scan: 10,000 per Service, 10 million)


def test_the_coverage_warning_uses_the_same_selection():
    pods = (Pod("shop", "p1", labels=(("app", "web"), ("tier", "front"))),)
    hit = Service("shop", "web", selector=(("app", "web"),), ports=(ServicePort(80),))
    both = Service("shop", "web2", selector=(("app", "web"), ("tier", "front")), ports=(ServicePort(80),))
    miss = Service("shop", "api", selector=(("app", "web"), ("tier", "back")), ports=(ServicePort(80),))
    other_ns = Service("other", "web", selector=(("app", "web"),), ports=(ServicePort(80),))
    assert len(services_without_endpoints([hit, both, miss, other_ns], [], pods)) == 2
    for svc, warned in ((hit, False), (both, False), (miss, True), (other_ns, True)):
        assert bool(services_without_endpoints([svc], [], pods)) is warned, svc


def test_labels_given_as_lists_or_with_a_key_twice_index_as_a_scan_finds_them():
    """Pods a library caller builds: pairs as lists, a key given twice (its last value counts)."""
    pods = [Pod("a", "p1", labels=[["app", "x"]]), Pod("a", "p2", labels=(("app", "x"), ("app", "y"))),
            Pod("a", "p3", labels=(("app", "y"), ("app", "x"))), Pod("a", "p4", labels=(("app", "x"),))]
    index = PodIndex(pods)
    for selector in ((("app", "x"),), (("app", "y"),), (("app", "x"), ("app", "y"))):
        assert index.select("a", selector) == [p for p in pods if selects(selector, p)], selector
    assert [p.name for p in index.select("a", (("app", "x"),))] == ["p1", "p3", "p4"]


def test_pods_sharing_or_repeating_container_ports_are_grouped_by_the_ports_they_resolve_to():
    """A named targetPort resolves per Pod; Pods whose container ports are the same tuple (a
    Deployment's, as the fast reader shares them) and Pods with equal copies or other ports give
    the slices they give when no Pod shares anything: one slice per resolved port list."""
    from dataplane.model import ContainerPort

    http = (ContainerPort(8080, name="http"),)
    other = (ContainerPort(9090, name="http"),)
    ports_of = [http, http, tuple(http), other, (), http, other, tuple(other), http]
    svc = Service("shop", "web", cluster_ips=("10.96.0.10",), selector=(("app", "web"),),
                  ports=(ServicePort(80, name="web", target_port="http"),))

    def cluster(fresh: bool) -> Cluster:
        pods = tuple(Pod("shop", f"web-{n}", labels=(("app", "web"),), pod_ips=(f"10.1.0.{n + 1}",), ready=True,
                         container_ports=tuple(ContainerPort(p.container_port, p.protocol, p.name) for p in ports)
                         if fresh else ports)
                     for n, ports in enumerate(ports_of))
        return Cluster(services=(svc,), pods=pods)

    shared, unshared = derive_endpoint_slices(cluster(False)), derive_endpoint_slices(cluster(True))
    assert shared == unshared
    by_port = {s.ports[0].port if s.ports else None: sorted(e.target_ref_name for e in s.endpoints) for s in shared}
    assert by_port == {8080: ["web-0", "web-1", "web-2", "web-5", "web-8"], 9090: ["web-3", "web-6", "web-7"],
                       None: ["web-4"]}  # (no port of that name: an endpoint without ports)


def test_the_endpoint_fields_are_in_the_order_the_controller_gives_them():
    """endpointslices._endpoint builds the Endpoint positionally, for speed."""
    import dataclasses

    from dataplane.model import Endpoint

    assert [f.name for f in dataclasses.fields(Endpoint)] == [
        "addresses", "conditions", "node_name", "zone", "hints_for_zones", "hints_for_nodes", "hostname",
        "target_ref_name"]
