"""Reading what topology and native sidecars need: ``spec.trafficDistribution``, the topology
annotations, ``appProtocol``, ``hints.forNodes`` and ``initContainers`` with ``restartPolicy: Always``."""
from __future__ import annotations

from typing import Any

import pytest

from dataplane.errors import InputError
from dataplane.input.cluster import ParseResult, parse_cluster
from dataplane.input.loader import Document
from dataplane.model import ContainerPort, EndpointPort

SRC = "in.yaml"
SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)


def parse(*objs: Any) -> ParseResult:
    return parse_cluster([Document(SRC, i, obj) for i, obj in enumerate(objs, start=1)])


def problems(*objs: Any) -> list[str]:
    with pytest.raises(InputError) as info:
        parse(*objs)
    return [str(p) for p in info.value.problems]


def service(annotations: dict | None = None, **spec: Any) -> dict:
    metadata: dict = {"name": "web"}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata,
            "spec": {"ports": [{"name": "http", "port": 80}], **spec}}


def one_service(annotations: dict | None = None, **spec: Any):
    (svc,) = parse(service(annotations, **spec)).cluster.services
    return svc


def slice_obj(**body: Any) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.1.0.1"]}],
            "ports": [{"name": "http", "port": 8080}], **body}


def pod(spec: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1"}, "spec": spec,
            "status": {"podIP": "10.0.0.1"}}


SVC = f"{SRC}: document 1: Service default/web: "
ES = f"{SRC}: document 1: EndpointSlice default/web-abc: "
POD = f"{SRC}: document 1: Pod default/p1: "


# ------------------------------------------------------------------ Service


@pytest.mark.parametrize("value", ["PreferClose", "PreferSameZone", "PreferSameNode"])
def test_traffic_distribution_values(value):
    assert one_service(trafficDistribution=value).traffic_distribution == value


def test_traffic_distribution_unset_and_unsupported():
    assert one_service().traffic_distribution is None
    assert problems(service(trafficDistribution="PreferCloser")) == [
        SVC + 'spec.trafficDistribution: Unsupported value: "PreferCloser": supported values: '
        '"PreferClose", "PreferSameNode", "PreferSameZone"'
    ]
    assert problems(service(trafficDistribution=1)) == [
        SVC + "spec.trafficDistribution: Invalid value: 1: must be a string"
    ]


@pytest.mark.parametrize(
    "annotations, auto",
    [
        (None, False),
        ({"service.kubernetes.io/topology-mode": "Auto"}, True),
        ({"service.kubernetes.io/topology-mode": "auto"}, True),
        ({"service.kubernetes.io/topology-mode": "Disabled"}, False),
        ({"service.kubernetes.io/topology-aware-hints": "Auto"}, True),
        # the deprecated annotation is read first and decides alone
        ({"service.kubernetes.io/topology-aware-hints": "Disabled", "service.kubernetes.io/topology-mode": "Auto"},
         False),
        ({"service.kubernetes.io/topology-aware-hints": "auto", "service.kubernetes.io/topology-mode": "x"}, True),
    ],
)
def test_topology_annotations(annotations, auto):
    assert one_service(annotations).topology_mode_auto is auto


def test_service_app_protocol():
    svc = one_service(ports=[{"name": "grpc", "port": 80, "appProtocol": "kubernetes.io/h2c"},
                             {"name": "raw", "port": 81}])
    assert [p.app_protocol for p in svc.ports] == ["kubernetes.io/h2c", None]
    assert problems(service(ports=[{"name": "x", "port": 80, "appProtocol": "not valid"}]))[0].startswith(
        SVC + 'spec.ports[0].appProtocol: Invalid value: "not valid": name part must consist of'
    )


# ------------------------------------------------------------ EndpointSlice


def test_slice_node_hints_and_app_protocol():
    obj = slice_obj(
        endpoints=[{"addresses": ["10.1.0.1"], "hints": {"forZones": [{"name": "z1"}], "forNodes": [{"name": "n1"}]}},
                   {"addresses": ["10.1.0.2"], "hints": {"forNodes": [{"name": "n2"}, {"name": "n3"}]}},
                   {"addresses": ["10.1.0.3"], "hints": {}}],
        ports=[{"name": "http", "port": 8080, "appProtocol": "http"}],
    )
    (es,) = parse(obj).cluster.endpoint_slices
    assert [(e.hints_for_zones, e.hints_for_nodes) for e in es.endpoints] == [
        (("z1",), ("n1",)), (None, ("n2", "n3")), (None, None)]
    assert es.ports == (EndpointPort(8080, "TCP", "http", app_protocol="http"),)


@pytest.mark.parametrize(
    "hints, expected",
    [
        ({"forNodes": [{"name": "a"}, {"name": "a"}]}, ['endpoints[0].hints.forNodes[1].name: Duplicate value: "a"']),
        ({"forNodes": [{"name": f"n{i}"} for i in range(9)]},
         ["endpoints[0].hints.forNodes: Too many: 9: must have at most 8 items"]),
        ({"forNodes": [{"name": "Node_1"}]}, [f'endpoints[0].hints.forNodes[0].name: Invalid value: "Node_1": '
                                              f"{SUBDOMAIN_MSG}"]),
        ({"forNodes": "n1"}, ['endpoints[0].hints.forNodes: Invalid value: "n1": must be a list']),
    ],
)
def test_slice_node_hint_problems(hints, expected):
    assert problems(slice_obj(endpoints=[{"addresses": ["10.1.0.1"], "hints": hints}])) == [ES + e for e in expected]


# ---------------------------------------------------------------------- Pod


def test_native_sidecar_ports_are_kept_other_init_containers_are_not():
    (p,) = parse(pod({
        "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}],
        "initContainers": [
            {"name": "setup", "ports": [{"name": "setup", "containerPort": 7000}]},
            {"name": "istio-proxy", "restartPolicy": "Always",
             "ports": [{"name": "http-envoy-prom", "containerPort": 15090},
                       {"name": "dns", "containerPort": 15053, "protocol": "UDP"}]},
        ],
    })).cluster.pods
    assert p.container_ports == (ContainerPort(8080, "TCP", "http"),)
    assert p.sidecar_ports == (ContainerPort(15090, "TCP", "http-envoy-prom"), ContainerPort(15053, "UDP", "dns"))


def test_init_container_problems():
    assert problems(pod({"initContainers": [
        {"name": "x", "restartPolicy": "OnFailure", "ports": [{"name": "a", "containerPort": 0}]},
    ]})) == [
        POD + 'spec.initContainers[0].restartPolicy: Unsupported value: "OnFailure": supported values: "Always"',
        POD + "spec.initContainers[0].ports[0].containerPort: Required value",
    ]


def test_auto_annotation_warns_that_derived_slices_carry_no_hints():
    auto = {"service.kubernetes.io/topology-mode": "Auto"}
    selected = service(auto, selector={"app": "web"}, trafficDistribution="PreferClose")
    web_pod = {**pod({"containers": [{"name": "c"}]}), "metadata": {"name": "p1", "labels": {"app": "web"}}}
    (warning,) = parse(selected, web_pod).warnings
    assert warning == (
        SVC + "Topology Aware Routing (annotation topology-mode or topology-aware-hints 'Auto') is not "
        "simulated: the EndpointSlices derived from its Pods carry no hints, so every node uses every "
        "endpoint; include its EndpointSlices to use the hints the cluster wrote"
    )
    # slices in the input (their hints are used as given), or no Auto: nothing to say
    assert parse(selected, web_pod, slice_obj()).warnings == ()
    assert parse(service(selector={"app": "web"}), web_pod).warnings == ()
