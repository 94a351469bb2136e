"""Tests for dataplane.input (validation into the model) and dataplane.ipaddrs."""
from __future__ import annotations

import copy
import dataclasses
import io
import textwrap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane import ipaddrs
from dataplane.errors import InputError
from dataplane.input.cluster import ParseResult, load_cluster, parse_cluster
from dataplane.input.loader import Document, documents_from_text
from dataplane.input.validation import (
    dns1035_label_errors,
    dns1123_label_errors,
    dns1123_subdomain_errors,
    label_value_errors,
    port_name_errors,
    qualified_name_errors,
)
from dataplane.model import (
    ContainerPort,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    LoadBalancerIngress,
    NodeAddress,
    ProxyConfig,
    ServicePort,
)

SRC = "svc.yaml"
SVC = f"{SRC}: document 1: Service default/web: "
DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
    "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
DNS1123_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
IP_MSG = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
CIDR_MSG = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
RANGE_MSG = "must be between 1 and 65535, inclusive"


# --------------------------------------------------------------------- helpers


def docs_of(*objs: Any, source: str = SRC) -> list[Document]:
    return [Document(source, i, obj) for i, obj in enumerate(objs, start=1)]


def parse(*objs: Any) -> ParseResult:
    return parse_cluster(docs_of(*objs))


def problems(*objs: Any) -> list[str]:
    with pytest.raises(InputError) as info:
        parse(*objs)
    return [str(p) for p in info.value.problems]


def parse_yaml(text: str, source: str = SRC) -> ParseResult:
    docs, found = documents_from_text(textwrap.dedent(text), source)
    assert not found
    return parse_cluster(docs)


def service(name: str = "web", namespace: str | None = None, **spec: Any) -> dict:
    metadata: dict = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    body = {"ports": [{"name": "http", "port": 80}], **spec}
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": body}


def one_service(**spec: Any):
    (svc,) = parse(service(**spec)).cluster.services
    return svc


def slice_obj(name: str = "web-abc", service_name: str | None = "web", **body: Any) -> dict:
    labels = {"kubernetes.io/service-name": service_name} if service_name else {}
    obj = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": labels},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.1.0.1"]}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }
    obj.update(body)
    return obj


def node(name: str = "n1", **body: Any) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, **body}


def pod(name: str = "p1", **body: Any) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, **body}


def proxy(**body: Any) -> dict:
    return {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", **body}


# ===================================================================== ipaddrs


@pytest.mark.parametrize(
    "text, canonical, family",
    [
        ("10.0.0.1", "10.0.0.1", "IPv4"),
        ("172.30.0.041", "172.30.0.41", "IPv4"),  # leading zeros are decimal, as in kube-proxy
        ("010.000.000.001", "10.0.0.1", "IPv4"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1", "IPv6"),
        ("::ffff:10.0.0.1", "10.0.0.1", "IPv4"),  # IPv4-mapped is IPv4, as in Go
        ("::ffff:010.0.0.01", "10.0.0.1", "IPv4"),
        ("::", "::", "IPv6"),
    ],
)
def test_canonical_ip(text, canonical, family):
    assert ipaddrs.canonical_ip(text) == canonical
    assert ipaddrs.ip_family(text) == family
    assert ipaddrs.is_ipv6(text) == (family == "IPv6")


@pytest.mark.parametrize(
    "text", ["", "10.0.0.300", "10.0.0", "10.0.0.1.2", " 10.0.0.1", "fe80::1%eth0", "1::2::3", "x", "10.0.0.1/32"]
)
def test_invalid_ip(text):
    with pytest.raises(ValueError):
        ipaddrs.canonical_ip(text)
    assert not ipaddrs.is_ipv6(text)


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("203.0.113.000/025", "203.0.113.0/25"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("2001:DB8::1/64", "2001:db8::/64"),
        ("::ffff:192.168.0.1/120", "192.168.0.0/24"),
        ("0.0.0.0/0", "0.0.0.0/0"),
    ],
)
def test_canonical_cidr(text, canonical):
    assert ipaddrs.canonical_cidr(text) == canonical


@pytest.mark.parametrize("text", ["10.0.0.0", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/255.0.0.0", "::/129", "x/8"])
def test_invalid_cidr(text):
    with pytest.raises(ValueError):
        ipaddrs.canonical_cidr(text)


# ================================================================ name formats


def test_name_format_messages_match_apimachinery():
    assert dns1035_label_errors("Web_1") == [DNS1035_MSG]
    assert dns1035_label_errors("1web") == [DNS1035_MSG]
    assert dns1035_label_errors("a" * 64)[0] == "must be no more than 63 characters"
    assert dns1123_label_errors("1web") == []
    assert dns1123_label_errors("a.b") == ["must not contain dots"]
    assert dns1123_label_errors("A") == [DNS1123_LABEL_MSG]
    assert dns1123_subdomain_errors("a.b-c.d") == []
    assert dns1123_subdomain_errors("a..b") == [DNS1123_SUBDOMAIN_MSG]
    assert label_value_errors("") == []
    assert label_value_errors("-x") == [
        "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
        "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', "
        "regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
    ]
    assert qualified_name_errors("example.com/app") == []
    assert qualified_name_errors("/app") == ["prefix part must be non-empty"]
    assert qualified_name_errors("a/b/c")[0].startswith("a qualified name must consist of alphanumeric")


@pytest.mark.parametrize(
    "name, messages",
    [
        ("http", []),
        ("h2c-8080", []),
        ("x_y", ["must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"]),
        ("12-34", ["must contain at least one letter (a-z)"]),
        ("a--b", ["must not contain consecutive hyphens"]),
        ("-ab", ["must not begin or end with a hyphen"]),
        ("abcdefghijklmnop", ["must be no more than 15 characters"]),
    ],
)
def test_iana_service_names(name, messages):
    assert port_name_errors(name) == messages


# ==================================================================== Service


def test_minimal_service_gets_api_defaults():
    svc = one_service()
    assert (svc.namespace, svc.name, svc.type) == ("default", "web", "ClusterIP")
    assert svc.ports == (ServicePort(port=80, protocol="TCP", name="http"),)
    assert svc.cluster_ips == ()
    assert svc.selector is None
    assert (svc.session_affinity, svc.affinity_timeout_seconds) == ("None", 10800)
    assert (svc.external_traffic_policy, svc.internal_traffic_policy) == ("Cluster", "Cluster")
    assert svc.ref.where() == "svc.yaml: document 1: Service default/web"


def test_full_service_is_read_canonically():
    svc = one_service(
        type="LoadBalancer",
        clusterIP="172.30.0.041",
        clusterIPs=["172.30.0.041", "FD00::0:10"],
        ipFamilies=["IPv4", "IPv6"],
        ipFamilyPolicy="RequireDualStack",
        ports=[
            {"name": "http", "port": 80, "targetPort": "8080", "nodePort": 30080},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns-udp", "nodePort": 30053},
        ],
        selector={"app": "web", "tier": "front"},
        externalIPs=["192.0.2.010"],
        loadBalancerSourceRanges=[" 203.0.113.000/025 ", "10.1.2.3/8"],
        externalTrafficPolicy="Local",
        internalTrafficPolicy="Local",
        healthCheckNodePort=32000,
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
        allocateLoadBalancerNodePorts=False,
        publishNotReadyAddresses=True,
    )
    assert svc.cluster_ips == ("172.30.0.41", "fd00::10")
    assert svc.ports == (
        ServicePort(port=80, protocol="TCP", name="http", target_port=8080, node_port=30080),
        ServicePort(port=53, protocol="UDP", name="dns", target_port="dns-udp", node_port=30053),
    )
    assert svc.selector == (("app", "web"), ("tier", "front"))
    assert svc.external_ips == ("192.0.2.10",)
    assert svc.load_balancer_source_ranges == ("203.0.113.0/25", "10.0.0.0/8")
    assert svc.external_traffic_policy == "Local"
    assert svc.internal_traffic_policy == "Local"
    assert svc.health_check_node_port == 32000
    assert (svc.session_affinity, svc.affinity_timeout_seconds) == ("ClientIP", 60)
    assert svc.allocate_load_balancer_node_ports is False
    assert svc.publish_not_ready_addresses is True
    assert svc.ip_families == ("IPv4", "IPv6")
    assert svc.ip_family_policy == "RequireDualStack"


def test_load_balancer_status_ingress():
    obj = service(type="LoadBalancer")
    obj["status"] = {
        "loadBalancer": {
            "ingress": [
                {"ip": "198.51.100.007"},
                {"ip": "198.51.100.8", "ipMode": "Proxy"},
                {"hostname": "lb.example.com"},
            ]
        }
    }
    (svc,) = parse(obj).cluster.services
    assert svc.load_balancer_ingress == (
        LoadBalancerIngress(ip="198.51.100.7", ip_mode="VIP"),
        LoadBalancerIngress(ip="198.51.100.8", ip_mode="Proxy"),
        LoadBalancerIngress(hostname="lb.example.com"),
    )


def test_headless_and_external_name_services_need_no_ports():
    result = parse(
        service(name="db", clusterIP="None", ports=None, selector={"app": "db"}),
        service(name="ext", type="ExternalName", externalName="example.com.", ports=None),
    )
    db, ext = result.cluster.services
    assert db.is_headless and db.cluster_ips == ("None",) and db.ports == ()
    assert ext.external_name == "example.com." and ext.cluster_ips == ()


def test_empty_selector_means_no_selector():
    assert one_service(selector={}).selector is None


def test_target_port_forms():
    ports = [
        {"name": "a", "port": 1, "targetPort": 8080},
        {"name": "b", "port": 2, "targetPort": "8081"},
        {"name": "c", "port": 3, "targetPort": "metrics"},
        {"name": "d", "port": 4, "targetPort": 0},
        {"name": "e", "port": 5},
    ]
    assert [p.target_port for p in one_service(ports=ports).ports] == [8080, 8081, "metrics", None, None]


def test_external_traffic_policy_is_ignored_on_internal_services():
    assert one_service(externalTrafficPolicy="Local").external_traffic_policy == "Cluster"
    with_external_ip = one_service(externalTrafficPolicy="Local", externalIPs=["192.0.2.1"])
    assert with_external_ip.external_traffic_policy == "Local"


@pytest.mark.parametrize(
    "spec, expected",
    [
        (
            {"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 70000}]},
            [f"spec.ports[1].nodePort: Invalid value: 70000: {RANGE_MSG}"],
        ),
        (
            {"ports": [{"port": 80, "protocol": "ICMP"}]},
            ['spec.ports[0].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"'],
        ),
        (
            {"ports": [{"name": "http", "port": 80}, {"name": "http", "port": 81}]},
            ['spec.ports[1].name: Duplicate value: "http"'],
        ),
        (
            {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80, "protocol": "TCP"}]},
            ['spec.ports[1]: Duplicate value: "80/TCP"'],
        ),
        (
            {"ports": [{"port": 80, "nodePort": 30080}]},
            ["spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"],
        ),
        (
            {"type": "NodePort", "ports": [{"name": "a", "port": 80, "nodePort": 30080},
                                          {"name": "b", "port": 81, "nodePort": 30080}]},
            ["spec.ports[1].nodePort: Duplicate value: 30080"],
        ),
        ({"clusterIP": "10.0.0.300"}, [f'spec.clusterIPs[0]: Invalid value: "10.0.0.300": {IP_MSG}']),
        (
            {"ports": [{"port": 80, "targetPort": "x_y"}]},
            ['spec.ports[0].targetPort: Invalid value: "x_y": '
             "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"],
        ),
        (
            {"ports": [{"port": 80, "targetPort": 70000}]},
            [f"spec.ports[0].targetPort: Invalid value: 70000: {RANGE_MSG}"],
        ),
        ({"ports": [{"port": 0}]}, [f"spec.ports[0].port: Invalid value: 0: {RANGE_MSG}"]),
        ({"ports": [{"name": "a", "port": 80}, {"port": 81}]}, ["spec.ports[1].name: Required value"]),
        (
            {"ports": [{"name": "Http", "port": 80}]},
            [f'spec.ports[0].name: Invalid value: "Http": {DNS1123_LABEL_MSG}'],
        ),
        ({"ports": []}, ["spec.ports: Required value"]),
        (
            {"type": "Magic"},
            ['spec.type: Unsupported value: "Magic": supported values: '
             '"ClusterIP", "ExternalName", "LoadBalancer", "NodePort"'],
        ),
        (
            {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.2"]},
            ['spec.clusterIPs: Invalid value: []string{"10.0.0.2"}: first value must match `clusterIP`'],
        ),
        (
            {"clusterIPs": ["10.0.0.1", "fd00::1", "10.0.0.2"]},
            ['spec.clusterIPs: Invalid value: []string{"10.0.0.1", "fd00::1", "10.0.0.2"}: '
             "may only hold up to 2 values"],
        ),
        (
            {"clusterIPs": ["10.0.0.1", "10.0.0.2"]},
            ['spec.clusterIPs: Invalid value: []string{"10.0.0.1", "10.0.0.2"}: '
             "may specify no more than one IP for each IP family"],
        ),
        (
            {"clusterIPs": ["None", "10.0.0.1"]},
            ['spec.clusterIPs: Invalid value: []string{"None", "10.0.0.1"}: '
             "'None' must be the first and only value"],
        ),
        (
            {"clusterIPs": ["10.0.0.1"], "ipFamilies": ["IPv6"]},
            ['spec.clusterIPs[0]: Invalid value: "10.0.0.1": expected an IPv6 value as indicated by `ipFamilies[0]`'],
        ),
        (
            {"ipFamilies": ["IPv4", "IPv4", "IPv5"]},
            ['spec.ipFamilies[1]: Duplicate value: "IPv4"',
             'spec.ipFamilies[2]: Unsupported value: "IPv5": supported values: "IPv4", "IPv6"'],
        ),
        (
            {"ipFamilyPolicy": "DualStack"},
            ['spec.ipFamilyPolicy: Unsupported value: "DualStack": supported values: '
             '"PreferDualStack", "RequireDualStack", "SingleStack"'],
        ),
        (
            {"type": "LoadBalancer", "clusterIP": "None"},
            ["spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for LoadBalancer services"],
        ),
        (
            {"externalIPs": ["10.0.0.256", "127.0.0.1", "0.0.0.0"]},
            [f'spec.externalIPs[0]: Invalid value: "10.0.0.256": {IP_MSG}',
             'spec.externalIPs[1]: Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)',
             'spec.externalIPs[2]: Invalid value: "0.0.0.0": may not be unspecified (0.0.0.0)'],
        ),
        (
            {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/8", "10.0.0.0/40"]},
            [f'spec.LoadBalancerSourceRanges[1]: Invalid value: "10.0.0.0/40": {CIDR_MSG}'],
        ),
        (
            {"loadBalancerSourceRanges": ["10.0.0.0/8"]},
            ["spec.LoadBalancerSourceRanges: Forbidden: may only be used when `type` is 'LoadBalancer'"],
        ),
        (
            {"type": "NodePort", "externalTrafficPolicy": "Global"},
            ['spec.externalTrafficPolicy: Unsupported value: "Global": supported values: "Cluster", "Local"'],
        ),
        (
            {"internalTrafficPolicy": "Node"},
            ['spec.internalTrafficPolicy: Unsupported value: "Node": supported values: "Cluster", "Local"'],
        ),
        (
            {"sessionAffinity": "Cookie"},
            ['spec.sessionAffinity: Unsupported value: "Cookie": supported values: "ClientIP", "None"'],
        ),
        (
            {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}},
            ["spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 86401: "
             "must be greater than 0 and less than 86400"],
        ),
        (
            {"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}},
            ["spec.sessionAffinityConfig: Forbidden: must not be set when session affinity is None"],
        ),
        (
            {"type": "NodePort", "healthCheckNodePort": 32000},
            ["spec.healthCheckNodePort: Invalid value: 32000: "
             "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"],
        ),
        (
            {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 65536},
            [f"spec.healthCheckNodePort: Invalid value: 65536: {RANGE_MSG}"],
        ),
        (
            {"allocateLoadBalancerNodePorts": True},
            ["spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'"],
        ),
        (
            {"type": "ExternalName", "clusterIP": "10.0.0.1", "externalName": "Bad_Name"},
            ["spec.clusterIPs: Forbidden: may not be set for ExternalName services",
             f'spec.externalName: Invalid value: "Bad_Name": {DNS1123_SUBDOMAIN_MSG}'],
        ),
        ({"type": "ExternalName"}, ["spec.externalName: Required value"]),
        (
            {"selector": {"app": "we b"}},
            ['spec.selector: Invalid value: "we b": a valid label must be an empty string or consist of '
             "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character "
             "(e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is "
             "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"],
        ),
        (
            {"status": "ignored", "ports": [{"port": 80}], "type": "LoadBalancer",
             "allocateLoadBalancerNodePorts": "yes"},
            ['spec.allocateLoadBalancerNodePorts: Invalid value: "yes": must be a boolean'],
        ),
    ],
)
def test_service_validation(spec, expected):
    assert problems(service(**spec)) == [SVC + line for line in expected]


def test_service_name_must_be_a_dns1035_label():
    assert problems(service(name="Web_1")) == [
        f'{SRC}: document 1: Service default/Web_1: metadata.name: Invalid value: "Web_1": {DNS1035_MSG}'
    ]


def test_namespace_must_be_a_dns1123_label():
    assert problems(service(namespace="Team.A")) == [
        f'{SRC}: document 1: Service Team.A/web: metadata.namespace: Invalid value: "Team.A": {DNS1123_LABEL_MSG}'
    ]


def test_missing_name():
    obj = service()
    del obj["metadata"]
    assert problems(obj) == [
        f"{SRC}: document 1: Service: metadata.name: Required value: name or generateName is required"
    ]


def test_labels_are_validated_and_sorted():
    obj = service()
    obj["metadata"]["labels"] = {"z": "1", "app.kubernetes.io/name": "web"}
    (svc,) = parse(obj).cluster.services
    assert svc.labels == (("app.kubernetes.io/name", "web"), ("z", "1"))
    obj["metadata"]["labels"] = {"bad key!": "x", "n": 5}
    assert problems(obj) == [
        SVC + 'metadata.labels: Invalid value: "bad key!": name part must consist of alphanumeric characters, '
        "'-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or "
        "'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
        SVC + "metadata.labels[n]: Invalid value: 5: must be a string",
    ]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"ports": [{"port": "80"}]}, ['spec.ports[0].port: Invalid value: "80": must be an integer']),
        ({"ports": "80"}, ['spec.ports: Invalid value: "80": must be a list']),
        ({"ports": [80]}, ["spec.ports[0]: Invalid value: 80: must be a mapping"]),
        ({"ports": [{"port": True}]}, ["spec.ports[0].port: Invalid value: true: must be an integer"]),
        ({"ports": [{"port": 8.5}]}, ["spec.ports[0].port: Invalid value: 8.5: must be an integer"]),
        ({"ports": [{"port": 80, "targetPort": [1]}]}, ["spec.ports[0].targetPort: Invalid value: [1]: "
                                                        "must be an integer or a string"]),
        ({"ports": [{"port": 80, "targetPort": False}]}, ["spec.ports[0].targetPort: Invalid value: false: "
                                                          "must be an integer or a string"]),
        (
            {"ports": [{"port": 80, "targetPort": "9" * 20}]},
            [f'spec.ports[0].targetPort: Invalid value: "{"9" * 20}": must be no more than 15 characters',
             f'spec.ports[0].targetPort: Invalid value: "{"9" * 20}": must contain at least one letter (a-z)'],
        ),
        ({"selector": ["app"]}, ['spec.selector: Invalid value: []string{"app"}: must be a mapping']),
        ({"clusterIPs": "10.0.0.1"}, ['spec.clusterIPs: Invalid value: "10.0.0.1": must be a list']),
        ({"clusterIPs": [10]}, ["spec.clusterIPs[0]: Invalid value: 10: must be a string"]),
        ({"type": 3}, ["spec.type: Invalid value: 3: must be a string"]),
    ],
)
def test_wrong_types_are_problems(spec, expected):
    assert problems(service(**spec)) == [SVC + line for line in expected]


def test_spec_of_the_wrong_type():
    obj = service()
    obj["spec"] = ["ports"]
    assert problems(obj) == [
        SVC + 'spec: Invalid value: []string{"ports"}: must be a mapping',
        SVC + "spec.ports: Required value",
    ]


# ============================================================== EndpointSlice


def test_endpoint_slice_is_read_with_resolved_conditions():
    obj = slice_obj(
        endpoints=[
            {"addresses": ["10.1.0.01"], "nodeName": "n1", "zone": "z1", "hostname": "web-0",
             "targetRef": {"kind": "Pod", "name": "web-0"}, "hints": {"forZones": [{"name": "z1"}]}},
            {"addresses": ["10.1.0.2"], "conditions": {"ready": False}},
            {"addresses": ["10.1.0.3"], "conditions": {"ready": False, "serving": True, "terminating": True}},
            {"addresses": ["10.1.0.4"], "conditions": {"ready": None, "serving": None}},
        ],
        ports=[{"port": 8080}, {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "all", "port": None}],
    )
    (es,) = parse(obj).cluster.endpoint_slices
    assert (es.namespace, es.name, es.service_name, es.address_type) == ("default", "web-abc", "web", "IPv4")
    assert es.endpoints == (
        Endpoint(addresses=("10.1.0.1",), node_name="n1", zone="z1", hints_for_zones=("z1",), hostname="web-0",
                 target_ref_name="web-0"),
        Endpoint(addresses=("10.1.0.2",), conditions=EndpointConditions(ready=False, serving=False)),
        Endpoint(addresses=("10.1.0.3",), conditions=EndpointConditions(False, True, True)),
        Endpoint(addresses=("10.1.0.4",), conditions=EndpointConditions(True, True, False)),
    )
    assert es.ports == (
        EndpointPort(port=8080, protocol="TCP", name=""),
        EndpointPort(port=53, protocol="UDP", name="dns"),
        EndpointPort(port=None, protocol="TCP", name="all"),
    )


def test_ipv6_and_fqdn_slices():
    v6 = slice_obj(name="v6", addressType="IPv6", endpoints=[{"addresses": ["FD00:0::1"]}])
    fqdn = slice_obj(name="fq", addressType="FQDN", endpoints=[{"addresses": ["db.example.com"]}])
    a, b = parse(v6, fqdn).cluster.endpoint_slices
    assert a.endpoints[0].addresses == ("fd00::1",)
    assert b.endpoints[0].addresses == ("db.example.com",)


def test_slice_without_service_name_label_is_kept_with_a_warning():
    result = parse(slice_obj(service_name=None))
    assert result.cluster.endpoint_slices[0].service_name is None
    assert result.warnings == (
        "svc.yaml: document 1: EndpointSlice default/web-abc: no kubernetes.io/service-name label; "
        "the slice belongs to no Service",
    )


ES = f"{SRC}: document 1: EndpointSlice default/web-abc: "


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"addressType": None}, ["addressType: Required value"]),
        ({"addressType": "IP"}, ['addressType: Unsupported value: "IP": supported values: "FQDN", "IPv4", "IPv6"']),
        (
            {"endpoints": [{"addresses": []}]},
            ["endpoints[0].addresses: Required value: must contain at least 1 address"],
        ),
        (
            {"endpoints": [{"addresses": [f"10.1.0.{i}" for i in range(1, 102)]}]},
            ["endpoints[0].addresses: Too many: 101: must have at most 100 items"],
        ),
        ({"endpoints": [{"addresses": ["fd00::1"]}]}, ['endpoints[0].addresses[0]: Invalid value: "fd00::1": '
                                                       "must be a valid IPv4 address"]),
        (
            {"endpoints": [{"addresses": ["169.254.169.254"]}]},
            ['endpoints[0].addresses[0]: Invalid value: "169.254.169.254": '
             "may not be in the link-local range (169.254.0.0/16, fe80::/10)"],
        ),
        (
            {"endpoints": [{"addresses": ["224.0.0.5"]}]},
            ['endpoints[0].addresses[0]: Invalid value: "224.0.0.5": '
             "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"],
        ),
        (
            {"endpoints": [{"addresses": ["10.1.0.1"], "nodeName": "Node_1"}]},
            [f'endpoints[0].nodeName: Invalid value: "Node_1": {DNS1123_SUBDOMAIN_MSG}'],
        ),
        (
            {"endpoints": [{"addresses": ["10.1.0.1"], "conditions": {"ready": "true"}}]},
            ['endpoints[0].conditions.ready: Invalid value: "true": must be a boolean'],
        ),
        (  # 1 == True in Python, but an integer is not a boolean
            {"endpoints": [{"addresses": ["10.1.0.1"], "conditions": {"ready": 1, "serving": True, "terminating": 0}}]},
            ["endpoints[0].conditions.ready: Invalid value: 1: must be a boolean",
             "endpoints[0].conditions.terminating: Invalid value: 0: must be a boolean"],
        ),
        (
            {"endpoints": [{"addresses": ["127.0.0.1"]}, {"addresses": ["0.0.0.0"]}, {"addresses": ["10.0.0.0"]}]},
            ['endpoints[0].addresses[0]: Invalid value: "127.0.0.1": may not be in the loopback range '
             "(127.0.0.0/8, ::1/128)",
             'endpoints[1].addresses[0]: Invalid value: "0.0.0.0": may not be unspecified (0.0.0.0)'],
        ),
        (
            {"endpoints": [{"addresses": ["10.1.0.1"], "hints": {"forZones": [{"name": "a"}, {"name": "a"}]}}]},
            ['endpoints[0].hints.forZones[1].name: Duplicate value: "a"'],
        ),
        (
            {"endpoints": [{"addresses": ["10.1.0.1"], "hints": {"forZones": [{"name": str(i)} for i in range(9)]}}]},
            ["endpoints[0].hints.forZones: Too many: 9: must have at most 8 items"],
        ),
        (
            {"ports": [{"name": "a", "port": 1}, {"name": "a", "port": 2, "protocol": "udp"}]},
            ['ports[1].name: Duplicate value: "a"',
             'ports[1].protocol: Unsupported value: "udp": supported values: "SCTP", "TCP", "UDP"'],
        ),
        ({"ports": [{"port": 1}, {"port": 2}]}, ['ports[1].name: Duplicate value: ""']),
        ({"ports": [{"port": 0}]}, [f"ports[0].port: Invalid value: 0: {RANGE_MSG}"]),
    ],
)
def test_endpoint_slice_validation(body, expected):
    assert problems(slice_obj(**body)) == [ES + line for line in expected]


def test_endpoint_slice_name_is_a_subdomain():
    assert parse(slice_obj(name="web.abc-1")).cluster.endpoint_slices[0].name == "web.abc-1"
    assert problems(slice_obj(name="Web")) == [
        f'{SRC}: document 1: EndpointSlice default/Web: metadata.name: Invalid value: "Web": {DNS1123_SUBDOMAIN_MSG}'
    ]


# ======================================================================= Node


def test_node_is_read_canonically():
    obj = node(
        metadata={"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}},
        spec={"podCIDRs": ["10.244.001.0/24", "FD00:10::/64"]},
        status={"addresses": [
            {"type": "InternalIP", "address": "192.168.001.010"},
            {"type": "InternalIP", "address": "FD00::0:10"},
            {"type": "Hostname", "address": "Node-1.Example"},
        ]},
    )
    (n,) = parse(obj).cluster.nodes
    assert n.name == "n1" and n.zone == "z1"
    assert n.pod_cidrs == ("10.244.1.0/24", "fd00:10::/64")
    assert n.addresses == (
        NodeAddress("InternalIP", "192.168.1.10"),
        NodeAddress("InternalIP", "fd00::10"),
        NodeAddress("Hostname", "Node-1.Example"),
    )
    assert n.ref.where() == "svc.yaml: document 1: Node n1"


def test_node_pod_cidr_fallback():
    (n,) = parse(node(spec={"podCIDR": "10.244.0.0/24"})).cluster.nodes
    assert n.pod_cidrs == ("10.244.0.0/24",)


def test_node_problems():
    obj = node(
        metadata={"name": "n1", "namespace": "default"},
        spec={"podCIDRs": ["10.244.0.0/24", "10.245.0.0/24"]},
        status={"addresses": [{"type": "InternalIP", "address": "10.0.0.999"}, {"type": "ExternalIP"}]},
    )
    prefix = f"{SRC}: document 1: Node n1: "
    assert problems(obj) == [
        prefix + "metadata.namespace: Forbidden: not allowed on this type",
        prefix + f'status.addresses[0].address: Invalid value: "10.0.0.999": {IP_MSG}',
        prefix + "status.addresses[1].address: Required value",
        prefix + 'spec.podCIDRs: Invalid value: []string{"10.244.0.0/24", "10.245.0.0/24"}: '
        "may specify no more than one CIDR for each IP family",
    ]


# ======================================================================== Pod


def test_pod_is_read():
    obj = pod(
        metadata={"name": "web-0", "namespace": "shop", "labels": {"app": "web"}},
        spec={
            "nodeName": "n1",
            "hostname": "web-0",
            "subdomain": "web",
            "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]},
                {"name": "dns", "ports": [{"containerPort": 53, "protocol": "UDP"}]},
            ],
        },
        status={
            "phase": "Running",
            "podIPs": [{"ip": "10.244.1.005"}, {"ip": "fd00::5"}],
            "podIP": "10.244.1.5",
            "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
        },
    )
    (p,) = parse(obj).cluster.pods
    assert (p.namespace, p.name, p.node_name, p.hostname, p.subdomain) == ("shop", "web-0", "n1", "web-0", "web")
    assert p.labels == (("app", "web"),)
    assert p.pod_ips == ("10.244.1.5", "fd00::5")
    assert p.ready and not p.terminating and p.phase == "Running"
    assert p.container_ports == (ContainerPort(8080, "TCP", "http"), ContainerPort(53, "UDP", ""))


def test_pod_defaults_and_terminating():
    obj = pod(
        metadata={"name": "p1", "deletionTimestamp": "2024-01-01T00:00:00Z"},
        status={"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "False"}]},
    )
    (p,) = parse(obj).cluster.pods
    assert p.pod_ips == ("10.0.0.1",)
    assert p.terminating and not p.ready


def test_pod_problems():
    obj = pod(
        spec={"containers": [{"ports": [
            {"name": "http", "containerPort": 80},
            {"name": "http", "containerPort": 0},
            {"name": "web_port", "containerPort": 70000, "protocol": "ICMP"},
        ]}]},
        status={"podIPs": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "phase": "Sleeping"},
    )
    prefix = f"{SRC}: document 1: Pod default/p1: "
    assert problems(obj) == [
        prefix + 'status.podIPs: Invalid value: []string{"10.0.0.1", "10.0.0.2"}: '
        "may specify no more than one IP for each IP family",
        prefix + 'status.phase: Unsupported value: "Sleeping": supported values: '
        '"Failed", "Pending", "Running", "Succeeded", "Unknown"',
        prefix + 'spec.containers[0].ports[1].name: Duplicate value: "http"',
        prefix + "spec.containers[0].ports[1].containerPort: Required value",
        prefix + 'spec.containers[0].ports[2].name: Invalid value: "web_port": '
        "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
        prefix + f"spec.containers[0].ports[2].containerPort: Invalid value: 70000: {RANGE_MSG}",
        prefix + 'spec.containers[0].ports[2].protocol: Unsupported value: "ICMP": supported values: '
        '"SCTP", "TCP", "UDP"',
    ]


# ==================================================== KubeProxyConfiguration


def test_proxy_config_defaults_when_absent():
    result = parse(service())
    assert result.cluster.proxy_config == ProxyConfig()
    assert result.cluster.proxy_config_given is False


def test_proxy_config_is_read():
    obj = proxy(
        mode="nftables",
        clusterCIDR="10.244.0.0/16, FD00:10::/48",
        detectLocalMode="InterfaceNamePrefix",
        detectLocal={"interfaceNamePrefix": "veth"},
        nodePortAddresses=["192.168.1.000/24"],
        iptables={"masqueradeAll": True, "masqueradeBit": 10, "localhostNodePorts": False},
        nftables={"masqueradeAll": True, "masqueradeBit": 3},
    )
    cluster = parse(obj).cluster
    assert cluster.proxy_config_given is True
    assert cluster.proxy_config == ProxyConfig(
        mode="nftables",
        cluster_cidrs=("10.244.0.0/16", "fd00:10::/48"),
        detect_local_mode="InterfaceNamePrefix",
        interface_name_prefix="veth",
        node_port_addresses=("192.168.1.0/24",),
        iptables_masquerade_all=True,
        iptables_masquerade_bit=10,
        iptables_localhost_node_ports=False,
        nftables_masquerade_all=True,
        nftables_masquerade_bit=3,
    )


def test_blank_mode_and_detect_local_mode_take_kube_proxy_defaults():
    config = parse(proxy(mode="", detectLocalMode="", nodePortAddresses=["primary"])).cluster.proxy_config
    assert config.mode == "iptables"
    assert config.detect_local_mode == "ClusterCIDR"
    assert config.node_port_addresses == ("primary",)


KPC = f"{SRC}: document 1: KubeProxyConfiguration: "


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"mode": "ipvs"}, ['mode: Unsupported value: "ipvs": kube-dataplane supports only "iptables" and '
                            '"nftables" (blank means "iptables")']),
        ({"mode": "kernelspace"}, ['mode: Unsupported value: "kernelspace": kube-dataplane supports only '
                                   '"iptables" and "nftables" (blank means "iptables")']),
        (
            {"clusterCIDR": "10.0.0.0/8,10.1.0.0/16"},
            ['clusterCIDR: Invalid value: "10.0.0.0/8,10.1.0.0/16": '
             "must be a valid DualStack CIDR (e.g. 10.100.0.0/16,fde4:8dba:82e1::/48)"],
        ),
        ({"clusterCIDR": "10.0.0.0"}, ['clusterCIDR: Invalid value: "10.0.0.0": must be a valid CIDR block '
                                       "(e.g. 10.100.0.0/16 or fde4:8dba:82e1::/48)"]),
        ({"clusterCIDR": "a,b,c"}, ['clusterCIDR: Invalid value: "a,b,c": only one CIDR allowed or a valid '
                                    "DualStack CIDR (e.g. 10.100.0.0/16,fde4:8dba:82e1::/48)"]),
        ({"detectLocalMode": "Magic"}, ['detectLocalMode: Unsupported value: "Magic": supported values: '
                                        '"ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix", ""']),
        ({"detectLocalMode": "BridgeInterface"}, ['detectLocal.bridgeInterface: Invalid value: "": must not be empty']),
        ({"nodePortAddresses": ["primary", "10.0.0.0/8"]}, ["nodePortAddresses[0]: Invalid value: \"primary\": "
                                                            "can't use both 'primary' and CIDRs"]),
        ({"nodePortAddresses": ["10.0.0.1"]}, ['nodePortAddresses[0]: Invalid value: "10.0.0.1": '
                                               "must be a valid CIDR"]),
        ({"iptables": {"masqueradeBit": 32}}, ["iptables.masqueradeBit: Invalid value: 32: "
                                               "must be within the range [0, 31]"]),
        ({"nftables": {"masqueradeBit": -1}}, ["nftables.masqueradeBit: Invalid value: -1: "
                                               "must be within the range [0, 31]"]),
        ({"iptables": {"masqueradeAll": "yes"}}, ['iptables.masqueradeAll: Invalid value: "yes": must be a boolean']),
    ],
)
def test_proxy_config_validation(body, expected):
    assert problems(proxy(**body)) == [KPC + line for line in expected]


def test_two_proxy_configurations_are_a_problem():
    assert problems(proxy(), proxy(mode="nftables")) == [
        f"{SRC}: document 2: KubeProxyConfiguration: Duplicate value: only one KubeProxyConfiguration may be "
        f"given; the first is at {SRC}: document 1"
    ]


# ====================================================================== input


def test_unused_kinds_are_ignored_with_a_warning():
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}}
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap"}
    result = parse(deployment, namespace, config_map, service())
    assert len(result.cluster.services) == 1
    assert result.warnings == (
        f"{SRC}: document 1: ignoring apps/v1 Deployment shop/web (not used by the dataplane)",
        f"{SRC}: document 2: ignoring v1 Namespace shop (not used by the dataplane)",
        f"{SRC}: document 3: ignoring v1 ConfigMap (not used by the dataplane)",
    )


def test_other_versions_of_recognised_kinds_are_problems():
    old_slice = dict(slice_obj(), apiVersion="discovery.k8s.io/v1beta1")
    knative = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "x"}}
    with pytest.raises(InputError) as info:
        parse(old_slice, knative)
    assert [str(p) for p in info.value.problems] == [
        f'{SRC}: document 1: EndpointSlice: apiVersion: Unsupported value: "discovery.k8s.io/v1beta1": '
        'supported values: "discovery.k8s.io/v1"'
    ]


def test_duplicate_objects_are_problems():
    assert problems(service(), service(namespace="other"), service(namespace="default")) == [
        f'{SRC}: document 3: Service default/web: metadata.name: Duplicate value: "web": '
        f"Service default/web is also defined at {SRC}: document 1"
    ]


def test_same_name_in_different_kinds_is_fine():
    result = parse(service(name="web"), slice_obj(name="web"), pod(name="web"))
    assert len(result.cluster.services) == len(result.cluster.endpoint_slices) == len(result.cluster.pods) == 1


def test_problems_of_all_documents_are_reported_at_once():
    bad_service = service(ports=[{"port": 0}])
    bad_node = node(name="N1")
    not_a_mapping: Any = ["x"]
    with pytest.raises(InputError) as info:
        parse(bad_service, not_a_mapping, bad_node)
    assert [(p.index, p.obj, p.field) for p in info.value.problems] == [
        (1, "Service default/web", "spec.ports[0].port"),
        (2, "", ""),
        (3, "Node N1", "metadata.name"),
    ]


def test_yaml_manifest_end_to_end(tmp_path):
    text = """\
    apiVersion: v1
    kind: List
    items:
    - apiVersion: v1
      kind: Service
      metadata: {name: web, namespace: shop}
      spec:
        clusterIP: 172.30.0.041
        ports: [{name: http, port: 80, targetPort: 8080}]
        selector: {app: web}
    - apiVersion: discovery.k8s.io/v1
      kind: EndpointSlice
      metadata:
        name: web-x1
        namespace: shop
        labels: {kubernetes.io/service-name: web}
      addressType: IPv4
      endpoints: [{addresses: [10.244.1.005], conditions: {ready: true}, nodeName: n1}]
      ports: [{name: http, port: 8080, protocol: TCP}]
    ---
    apiVersion: kubeproxy.config.k8s.io/v1alpha1
    kind: KubeProxyConfiguration
    mode: nftables
    """
    path = tmp_path / "cluster.yaml"
    path.write_text(textwrap.dedent(text))
    result = load_cluster([str(path)])
    (svc,) = result.cluster.services
    (es,) = result.cluster.endpoint_slices
    assert svc.cluster_ips == ("172.30.0.41",) and svc.ref.index == 1
    assert es.endpoints[0].addresses == ("10.244.1.5",) and es.ref.index == 1
    assert es.ref.unit == "item 2 of the List in document"
    assert result.cluster.proxy_config.mode == "nftables" and result.cluster.proxy_config.ref.index == 2
    assert result.warnings == ()


def test_load_cluster_reports_loader_and_validation_problems_together(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [\n")
    with pytest.raises(InputError) as info:
        load_cluster([str(broken), "-"], stdin=io.StringIO("apiVersion: v1\nkind: Service\nmetadata: {name: Web}\n"))
    sources = [p.source for p in info.value.problems]
    assert sources == [str(broken), "<stdin>", "<stdin>"]  # unparsable file; bad name; no ports


def test_parse_result_is_immutable():
    result = parse(service())
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.warnings = ()  # type: ignore[misc]


# ======================================================================= fuzz

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["", "None", "10.0.0.1", "fd00::1", "10.0.0.0/8", "TCP", "Local", "x_y"]),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=25,
)
_KINDS = [
    ("v1", "Service"), ("v1", "Endpoints"), ("v1", "Pod"), ("v1", "Node"),
    ("discovery.k8s.io/v1", "EndpointSlice"), ("kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration"),
    ("apps/v1", "Deployment"), ("discovery.k8s.io/v1beta1", "EndpointSlice"),
]
_FIELDS = [
    "metadata", "spec", "status", "addressType", "endpoints", "ports", "subsets", "mode", "clusterCIDR",
    "detectLocalMode", "detectLocal", "nodePortAddresses", "iptables", "nftables",
]
_SPEC_FIELDS = [
    "type", "clusterIP", "clusterIPs", "ports", "selector", "externalIPs", "loadBalancerSourceRanges",
    "externalTrafficPolicy", "internalTrafficPolicy", "healthCheckNodePort", "sessionAffinity",
    "sessionAffinityConfig", "ipFamilies", "ipFamilyPolicy", "externalName", "allocateLoadBalancerNodePorts",
    "nodeName", "containers", "podCIDRs", "podCIDR",
]


@st.composite
def _documents(draw) -> Any:
    """Objects of the recognised kinds with random values in the fields we read, or anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(_json)
    api_version, kind = draw(st.sampled_from(_KINDS))
    obj: dict = {"apiVersion": api_version, "kind": kind}
    obj.update(draw(st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=4)))
    if draw(st.booleans()):
        obj["metadata"] = {"name": draw(st.sampled_from(["web", "Web", "", "a.b"])), "labels": draw(_json)}
    if draw(st.booleans()):
        spec = draw(st.dictionaries(st.sampled_from(_SPEC_FIELDS), _json, max_size=5))
        if draw(st.booleans()):
            spec["ports"] = draw(st.lists(st.dictionaries(
                st.sampled_from(["name", "port", "protocol", "targetPort", "nodePort", "containerPort"]), _json
            ), max_size=3))
        obj["spec"] = spec
    return obj


@settings(max_examples=600, deadline=None)
@given(st.lists(_documents(), max_size=4))
def test_no_document_whatsoever_raises_anything_but_input_error(objs):
    try:
        result = parse(*copy.deepcopy(objs))
    except InputError as err:
        assert err.problems and all(p.source == SRC for p in err.problems)
    else:
        assert isinstance(result, ParseResult)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_any_endpoints_document_is_mirrored_or_rejected(subsets):
    obj = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "ext"}, "subsets": subsets}
    try:
        parse(obj)
    except InputError:
        pass
