"""EndpointSlices derived from Pods as the EndpointSlice controller builds them (staging/src/k8s.io/endpointslice)."""
from __future__ import annotations

import re

import pytest

from dataplane.controllers.endpointslices import (
    CONTROLLER_NAME,
    LABEL_MANAGED_BY,
    MAX_ENDPOINTS_PER_SLICE,
    derive_endpoint_slices,
    resolve_target_port,
    slices_to_manifests,
    with_derived_slices,
)
from dataplane.model import (
    LABEL_HEADLESS,
    LABEL_SERVICE_NAME,
    Cluster,
    ContainerPort,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    Node,
    Pod,
    Service,
    ServicePort,
)

NAME = re.compile(r"^web-[bcdfghjklmnpqrstvwxz2456789]{5}$")


def web(**kw) -> Service:
    kw.setdefault("cluster_ips", ("10.96.0.20",))
    kw.setdefault("ports", (ServicePort(80, "TCP", "http", target_port=8080),))
    kw.setdefault("selector", (("app", "web"),))
    return Service("default", "web", **kw)


def pod(name: str, ip: str | tuple[str, ...] = "10.0.0.1", *, ns: str = "default", labels=(("app", "web"),), **kw) -> Pod:
    ips = (ip,) if isinstance(ip, str) else ip
    kw.setdefault("ready", True)
    kw.setdefault("node_name", "node-a")
    return Pod(ns, name, labels=tuple(labels), pod_ips=ips, **kw)


def derive(*objects, nodes=(), slices=()) -> tuple[EndpointSlice, ...]:
    services = tuple(o for o in objects if isinstance(o, Service))
    pods = tuple(o for o in objects if isinstance(o, Pod))
    return derive_endpoint_slices(Cluster(services=services, pods=pods, nodes=tuple(nodes), endpoint_slices=tuple(slices)))


def targets(eps: EndpointSlice) -> list[str]:
    return [e.target_ref_name for e in eps.endpoints]


# ----------------------------------------------------------------- selection


def test_selector_matching():
    slices = derive(
        web(),
        pod("match", "10.0.0.1", labels=(("app", "web"), ("tier", "front"))),
        pod("other-app", "10.0.0.2", labels=(("app", "db"),)),
        pod("no-labels", "10.0.0.3", labels=()),
        pod("other-ns", "10.0.0.4", ns="prod"),
    )
    (eps,) = slices
    assert targets(eps) == ["match"]
    assert eps.service_name == "web" and eps.namespace == "default" and eps.address_type == "IPv4"
    assert eps.ports == (EndpointPort(8080, "TCP", "http"),)


def test_every_selector_key_must_match():
    svc = web(selector=(("app", "web"), ("tier", "front")))
    (eps,) = derive(svc, pod("both", "10.0.0.1", labels=(("app", "web"), ("tier", "front"))),
                    pod("one", "10.0.0.2"))
    assert targets(eps) == ["both"]


def test_services_skipped():
    no_selector = Service("default", "manual", cluster_ips=("10.96.0.1",), ports=(ServicePort(80),))
    empty_selector = Service("default", "empty", cluster_ips=("10.96.0.2",), selector=())
    external = Service("default", "ext", type="ExternalName", external_name="example.com", selector=(("app", "web"),))
    has_slice = web()
    existing = EndpointSlice("default", "web-manual", "web", "IPv4")
    slices = derive(no_selector, empty_selector, external, has_slice, pod("p", "10.0.0.1"), slices=(existing,))
    assert slices == ()


def test_terminal_pods_and_pods_without_ip_left_out():
    (eps,) = derive(
        web(),
        pod("running", "10.0.0.1"),
        pod("done", "10.0.0.2", phase="Succeeded"),
        pod("failed", "10.0.0.3", phase="Failed"),
        pod("pending", ()),
        pod("only-v6", "fd00::5"),
    )
    assert targets(eps) == ["running"]


# ---------------------------------------------------------------- conditions


def test_conditions():
    (eps,) = derive(
        web(),
        pod("ready", "10.0.0.1", ready=True),
        pod("not-ready", "10.0.0.2", ready=False),
        pod("terminating-serving", "10.0.0.3", ready=True, terminating=True),
        pod("terminating-not-serving", "10.0.0.4", ready=False, terminating=True),
    )
    got = {e.target_ref_name: e.conditions for e in eps.endpoints}
    assert got == {
        "ready": EndpointConditions(ready=True, serving=True, terminating=False),
        "not-ready": EndpointConditions(ready=False, serving=False, terminating=False),
        "terminating-serving": EndpointConditions(ready=False, serving=True, terminating=True),
        "terminating-not-serving": EndpointConditions(ready=False, serving=False, terminating=True),
    }


def test_publish_not_ready_addresses_makes_every_endpoint_ready():
    (eps,) = derive(
        web(publish_not_ready_addresses=True),
        pod("not-ready", "10.0.0.2", ready=False),
        pod("terminating", "10.0.0.3", ready=False, terminating=True),
    )
    assert [e.conditions for e in eps.endpoints] == [
        EndpointConditions(ready=True, serving=False, terminating=False),
        EndpointConditions(ready=True, serving=False, terminating=True),
    ]


def test_node_zone_and_hostname():
    nodes = (Node("node-a", labels=(("topology.kubernetes.io/zone", "zone-a"),)), Node("node-b"))
    (eps,) = derive(
        web(),
        pod("a", "10.0.0.1", node_name="node-a", hostname="a", subdomain="web"),
        pod("b", "10.0.0.2", node_name="node-b", hostname="b", subdomain="other"),
        pod("c", "10.0.0.3", node_name="node-unknown"),
        nodes=nodes,
    )
    a, b, c = eps.endpoints
    assert (a.node_name, a.zone, a.hostname) == ("node-a", "zone-a", "a")
    assert (b.node_name, b.zone, b.hostname) == ("node-b", None, None)
    assert (c.node_name, c.zone) == ("node-unknown", None)


# --------------------------------------------------------------------- ports


def test_resolve_target_port():
    p = pod("p", container_ports=(ContainerPort(8080, "TCP", "http"), ContainerPort(5353, "UDP", "dns")))
    assert resolve_target_port(ServicePort(80, "TCP", target_port=9090), p) == 9090
    assert resolve_target_port(ServicePort(80, "TCP"), p) == 80
    assert resolve_target_port(ServicePort(80, "TCP", target_port="http"), p) == 8080
    assert resolve_target_port(ServicePort(53, "UDP", target_port="dns"), p) == 5353
    assert resolve_target_port(ServicePort(53, "TCP", target_port="dns"), p) is None  # protocol must match
    assert resolve_target_port(ServicePort(80, "TCP", target_port="missing"), p) is None


def test_named_target_port_resolved_per_pod_splits_slices():
    svc = web(ports=(ServicePort(80, "TCP", "http", target_port="http"),))
    slices = derive(
        svc,
        pod("old-1", "10.0.0.1", container_ports=(ContainerPort(8080, "TCP", "http"),)),
        pod("old-2", "10.0.0.2", container_ports=(ContainerPort(8080, "TCP", "http"),)),
        pod("new", "10.0.0.3", container_ports=(ContainerPort(9090, "TCP", "http"),)),
    )
    by_port = {eps.ports[0].port: targets(eps) for eps in slices}
    assert by_port == {8080: ["old-1", "old-2"], 9090: ["new"]}
    assert all(eps.ports[0].name == "http" for eps in slices)
    assert len({eps.name for eps in slices}) == 2


def test_pod_without_named_port_is_left_out_of_that_port():
    svc = web(ports=(ServicePort(80, "TCP", "http", target_port="http"), ServicePort(9100, "TCP", "metrics")))
    slices = derive(
        svc,
        pod("full", "10.0.0.1", container_ports=(ContainerPort(8080, "TCP", "http"),)),
        pod("bare", "10.0.0.2"),
    )
    got = {tuple((p.name, p.port) for p in eps.ports): targets(eps) for eps in slices}
    assert got == {
        (("http", 8080), ("metrics", 9100)): ["full"],
        (("metrics", 9100),): ["bare"],
    }


def test_service_port_protocol_and_names_copied():
    svc = web(ports=(ServicePort(53, "UDP", "dns", target_port=5353), ServicePort(53, "TCP", "dns-tcp", target_port=5353)))
    (eps,) = derive(svc, pod("p", "10.0.0.1"))
    assert eps.ports == (EndpointPort(5353, "UDP", "dns"), EndpointPort(5353, "TCP", "dns-tcp"))


# ------------------------------------------------------------------ families


def test_dual_stack_service_gets_a_slice_per_family():
    svc = web(ip_families=("IPv6", "IPv4"), cluster_ips=("fd00::20", "10.96.0.20"))
    slices = derive(svc, pod("both", ("10.0.0.1", "fd00::1")), pod("v4", "10.0.0.2"))
    assert [(s.address_type, targets(s)) for s in slices] == [("IPv6", ["both"]), ("IPv4", ["both", "v4"])]
    assert slices[0].endpoints[0].addresses == ("fd00::1",)


def test_family_defaults_from_cluster_ips_then_ipv4():
    v6 = web(cluster_ips=("fd00::20",))
    (eps,) = derive(v6, pod("p", ("10.0.0.1", "fd00::1")))
    assert eps.address_type == "IPv6" and eps.endpoints[0].addresses == ("fd00::1",)
    bare = web(cluster_ips=())
    (eps,) = derive(bare, pod("p", ("10.0.0.1", "fd00::1")))
    assert eps.address_type == "IPv4"


def test_placeholder_slice_when_no_endpoints():
    (eps,) = derive(web(), pod("elsewhere", "10.0.0.1", labels=(("app", "db"),)))
    assert eps.endpoints == () and eps.ports == () and NAME.match(eps.name)


# -------------------------------------------------------------------- sizing


def test_more_than_100_endpoints_are_split():
    pods = [pod(f"p{i:03d}", f"10.0.{i // 250}.{i % 250 + 1}") for i in range(250)]
    slices = derive(web(), *pods)
    assert [len(s.endpoints) for s in slices] == [100, 100, 50]
    assert MAX_ENDPOINTS_PER_SLICE == 100
    assert len({s.name for s in slices}) == 3
    seen = [t for s in slices for t in targets(s)]
    assert sorted(seen) == sorted(p.name for p in pods) and len(set(seen)) == 250


def test_endpoints_sorted_by_address():
    (eps,) = derive(web(), pod("z", "10.0.0.9"), pod("a", "10.0.0.10"), pod("m", "10.0.0.2"))
    assert [e.addresses[0] for e in eps.endpoints] == ["10.0.0.2", "10.0.0.9", "10.0.0.10"]


# ---------------------------------------------------------- names and labels


def test_names_are_stable_and_content_derived():
    first = derive(web(), pod("a", "10.0.0.1"))
    again = derive(web(), pod("a", "10.0.0.1"))
    changed = derive(web(), pod("a", "10.0.0.2"))
    assert NAME.match(first[0].name)
    assert first == again and first[0].name == again[0].name
    assert changed[0].name != first[0].name


def test_name_avoids_existing_slices_and_long_names_are_cut():
    long = Service("default", "x" * 63, cluster_ips=("10.96.0.1",), selector=(("app", "web"),),
                   ports=(ServicePort(80),))
    (eps,) = derive(long, pod("a", "10.0.0.1"))
    assert len(eps.name) == 63 and eps.name.startswith("x" * 58)
    (plain,) = derive(web(), pod("a", "10.0.0.1"))
    clash = EndpointSlice("default", plain.name, "someone-else", "IPv4")
    (renamed,) = derive(web(), pod("a", "10.0.0.1"), slices=(clash,))
    assert renamed.name != plain.name and NAME.match(renamed.name)


def test_labels():
    svc = web(labels=(("team", "a"), (LABEL_SERVICE_NAME, "spoofed"), (LABEL_MANAGED_BY, "me")))
    (eps,) = derive(svc, pod("a", "10.0.0.1"))
    assert eps.labels == (
        (LABEL_MANAGED_BY, CONTROLLER_NAME),
        (LABEL_SERVICE_NAME, "web"),
        ("team", "a"),
    )
    assert eps.labels == tuple(sorted(eps.labels))
    (headless,) = derive(web(cluster_ips=("None",)), pod("a", "10.0.0.1"))
    assert (LABEL_HEADLESS, "") in headless.labels


def test_deterministic_order_across_services():
    other = Service("alpha", "api", cluster_ips=("10.96.0.30",), selector=(("app", "api"),), ports=(ServicePort(80),))
    slices = derive(web(), other, pod("a", "10.0.0.1"), pod("b", "10.0.0.2", ns="alpha", labels=(("app", "api"),)))
    assert [(s.namespace, s.service_name) for s in slices] == [("alpha", "api"), ("default", "web")]


# --------------------------------------------------------- cluster and output


def test_with_derived_slices_appends():
    existing = EndpointSlice("default", "other-x", "other", "IPv4")
    cluster = Cluster(services=(web(),), pods=(pod("a", "10.0.0.1"),), endpoint_slices=(existing,))
    out = with_derived_slices(cluster)
    assert out.endpoint_slices[0] == existing
    assert len(out.endpoint_slices) == 2 and out.endpoint_slices[1].service_name == "web"
    assert with_derived_slices(Cluster()) == Cluster()


def test_slices_to_manifests():
    nodes = (Node("node-a", labels=(("topology.kubernetes.io/zone", "zone-a"),)),)
    slices = derive(web(), pod("a", "10.0.0.1", hostname="a", subdomain="web"), nodes=nodes)
    (manifest,) = slices_to_manifests(slices)
    assert manifest == {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slices[0].name,
            "namespace": "default",
            "labels": {LABEL_MANAGED_BY: CONTROLLER_NAME, LABEL_SERVICE_NAME: "web"},
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": ["10.0.0.1"],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "hostname": "a",
                "targetRef": {"kind": "Pod", "namespace": "default", "name": "a"},
                "nodeName": "node-a",
                "zone": "zone-a",
            }
        ],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
    }


def test_manifest_of_hand_written_slice_with_hints_and_all_ports():
    eps = EndpointSlice("ns", "s", "svc", "IPv4",
                        (Endpoint(("10.0.0.1",), hints_for_zones=("z1",)),), (EndpointPort(None, "UDP", ""),))
    (manifest,) = slices_to_manifests([eps])
    assert manifest["endpoints"][0]["hints"] == {"forZones": [{"name": "z1"}]}
    assert manifest["ports"] == [{"name": "", "protocol": "UDP"}]


@pytest.mark.parametrize("ready", [True, False])
def test_derived_slices_feed_the_plan(ready):
    """Derived slices are ordinary model objects: the node plan DNATs to pod:targetPort."""
    from dataplane.model import NodeAddress, ProxyConfig
    from dataplane.plan import build_plan

    node = Node("node-a", (NodeAddress("InternalIP", "192.168.0.2"),))
    cluster = with_derived_slices(Cluster(
        services=(web(),), pods=(pod("a", "10.0.0.1", ready=ready),), nodes=(node,),
        proxy_config=ProxyConfig(cluster_cidrs=("10.0.0.0/8",)),
    ))
    (service_port,) = build_plan(cluster, "node-a").services
    assert service_port.cluster_ip == "10.96.0.20"
    assert service_port.has_endpoints is ready
    if ready:
        (endpoint,) = service_port.cluster_endpoints
        assert (endpoint.ip, endpoint.port, endpoint.is_local) == ("10.0.0.1", 8080, True)


# ------------------------------------------------------ trafficDistribution hints

ZONED = (Node("node-a", labels=(("topology.kubernetes.io/zone", "zone-a"),)),
         Node("node-b", labels=(("topology.kubernetes.io/zone", "zone-b"),)),
         Node("node-nozone"))


def hints_of(svc: Service, *pods: Pod) -> dict[str, tuple]:
    """``pod name -> (forZones, forNodes)`` of the derived endpoints."""
    (eps,) = derive(svc, *pods, nodes=ZONED)
    return {e.target_ref_name: (e.hints_for_zones, e.hints_for_nodes) for e in eps.endpoints}


ZONE_PODS = (pod("a", "10.0.0.1", node_name="node-a"), pod("b", "10.0.0.2", node_name="node-b"),
             pod("n", "10.0.0.3", node_name="node-nozone"), pod("x", "10.0.0.4", node_name="node-unknown"))


@pytest.mark.parametrize("value", ["PreferClose", "PreferSameZone"])
def test_prefer_same_zone_hints_ready_endpoints_for_their_zone(value):
    assert hints_of(web(traffic_distribution=value), *ZONE_PODS) == {
        "a": (("zone-a",), None), "b": (("zone-b",), None),
        "n": (None, None), "x": (None, None),  # no zone: no zone hint
    }


def test_prefer_same_node_hints_zone_and_node():
    assert hints_of(web(traffic_distribution="PreferSameNode"), *ZONE_PODS) == {
        "a": (("zone-a",), ("node-a",)), "b": (("zone-b",), ("node-b",)),
        "n": (None, ("node-nozone",)), "x": (None, ("node-unknown",)),
    }
    unscheduled = pod("u", "10.0.0.5", node_name=None)
    assert hints_of(web(traffic_distribution="PreferSameNode"), unscheduled) == {"u": (None, None)}


def test_only_ready_endpoints_are_hinted():
    got = hints_of(web(traffic_distribution="PreferSameNode"),
                   pod("ready", "10.0.0.1"), pod("unready", "10.0.0.2", ready=False),
                   pod("leaving", "10.0.0.3", terminating=True))
    assert got == {"ready": (("zone-a",), ("node-a",)), "unready": (None, None), "leaving": (None, None)}
    published = hints_of(web(traffic_distribution="PreferClose", publish_not_ready_addresses=True),
                         pod("unready", "10.0.0.2", ready=False))
    assert published == {"unready": (("zone-a",), None)}  # publishNotReadyAddresses: ready, so hinted


def test_no_or_auto_traffic_distribution_gives_no_hints():
    assert set(hints_of(web(), *ZONE_PODS).values()) == {(None, None)}
    auto = web(traffic_distribution="PreferClose", topology_mode_auto=True)
    assert set(hints_of(auto, *ZONE_PODS).values()) == {(None, None)}


def test_hints_in_manifest_and_names():
    svc = web(traffic_distribution="PreferSameNode")
    (eps,) = derive(svc, pod("a", "10.0.0.1"), nodes=ZONED)
    (manifest,) = slices_to_manifests([eps])
    assert manifest["endpoints"][0]["hints"] == {"forZones": [{"name": "zone-a"}], "forNodes": [{"name": "node-a"}]}
    (plain,) = derive(web(), pod("a", "10.0.0.1"), nodes=ZONED)
    assert "hints" not in slices_to_manifests([plain])[0]["endpoints"][0]


def test_prefer_close_slices_steer_the_plan_per_zone():
    """The derived hints reach kube-proxy's categorisation: zone-a uses only its pod, a zone-c node both."""
    from dataplane.model import ProxyConfig
    from dataplane.plan import build_plan

    nodes = ZONED + (Node("node-c", labels=(("topology.kubernetes.io/zone", "zone-c"),)),)
    cluster = with_derived_slices(Cluster(
        services=(web(traffic_distribution="PreferClose"),),
        pods=(pod("a", "10.0.0.1", node_name="node-a"), pod("b", "10.0.0.2", node_name="node-b")),
        nodes=nodes, proxy_config=ProxyConfig(cluster_cidrs=("10.0.0.0/8",)),
    ))

    def used(node: str) -> list[str]:
        (port,) = build_plan(cluster, node).services
        return [e.address for e in port.cluster_endpoints]

    assert used("node-a") == ["10.0.0.1:8080"]
    assert used("node-b") == ["10.0.0.2:8080"]
    assert used("node-c") == ["10.0.0.1:8080", "10.0.0.2:8080"]


# ------------------------------------------------------ native sidecars, appProtocol


def test_named_port_found_on_native_sidecar_after_containers():
    sidecar = ContainerPort(15090, "TCP", "http-envoy-prom")
    p = pod("p", container_ports=(ContainerPort(8080, "TCP", "http"),),
            sidecar_ports=(sidecar, ContainerPort(9999, "TCP", "http"), ContainerPort(5353, "UDP", "dns")))
    assert resolve_target_port(ServicePort(15090, "TCP", target_port="http-envoy-prom"), p) == 15090
    assert resolve_target_port(ServicePort(80, "TCP", target_port="http"), p) == 8080  # containers first
    assert resolve_target_port(ServicePort(53, "UDP", target_port="dns"), p) == 5353
    assert resolve_target_port(ServicePort(53, "TCP", target_port="dns"), p) is None  # protocol must match
    first = pod("q", sidecar_ports=(ContainerPort(7001, "TCP", "admin"), ContainerPort(7002, "TCP", "admin")))
    assert resolve_target_port(ServicePort(70, "TCP", target_port="admin"), first) == 7001  # first match wins


def test_sidecar_port_derives_slices():
    svc = web(ports=(ServicePort(15090, "TCP", "metrics", target_port="http-envoy-prom"),))
    slices = derive(svc, pod("p", "10.0.0.1", sidecar_ports=(ContainerPort(15090, "TCP", "http-envoy-prom"),)),
                    pod("plain", "10.0.0.2"))
    got = {eps.ports: targets(eps) for eps in slices}
    assert got == {(EndpointPort(15090, "TCP", "metrics"),): ["p"], (): ["plain"]}  # no sidecar: no port


def test_app_protocol_copied_into_slices_and_manifests():
    svc = web(ports=(ServicePort(80, "TCP", "http", target_port=8080, app_protocol="kubernetes.io/h2c"),
                     ServicePort(9000, "TCP", "raw")))
    (eps,) = derive(svc, pod("p", "10.0.0.1"))
    assert eps.ports == (EndpointPort(8080, "TCP", "http", app_protocol="kubernetes.io/h2c"),
                         EndpointPort(9000, "TCP", "raw"))
    assert slices_to_manifests([eps])[0]["ports"] == [
        {"name": "http", "protocol": "TCP", "port": 8080, "appProtocol": "kubernetes.io/h2c"},
        {"name": "raw", "protocol": "TCP", "port": 9000},
    ]
