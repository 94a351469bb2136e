"""Tests for dataplane.controllers.mirror: v1 Endpoints -> EndpointSlices, like the mirroring controller."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.errors import InputError
from dataplane.input.cluster import parse_cluster
from dataplane.input.loader import Document
from dataplane.controllers.mirror import (
    MAX_ENDPOINTS_PER_SUBSET,
    EndpointAddress,
    Endpoints,
    EndpointSubset,
    endpoints_to_slices,
    mirror_skip_reason,
    repack_subsets,
    unmirrored_address_count,
)
from dataplane.model import Endpoint, EndpointConditions, EndpointPort, ObjectRef

SRC = "ep.yaml"
HTTP = EndpointPort(port=80, protocol="TCP", name="http")
DNS = EndpointPort(port=53, protocol="UDP", name="dns")
READY = EndpointConditions(ready=True, serving=True, terminating=False)
NOT_READY = EndpointConditions(ready=False, serving=False, terminating=False)


def endpoints(*subsets: EndpointSubset, name: str = "ext", **kw: Any) -> Endpoints:
    ref = ObjectRef("Endpoints", "shop", name, SRC, 3)
    return Endpoints(namespace="shop", name=name, subsets=subsets, ref=ref, **kw)


def addr(ip: str, **kw: Any) -> EndpointAddress:
    return EndpointAddress(ip=ip, **kw)


def parse(*objs: Any):
    return parse_cluster([Document(SRC, i, obj) for i, obj in enumerate(objs, start=1)])


def endpoints_obj(name: str = "ext", **body: Any) -> dict:
    obj = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": name, "namespace": "shop"},
        "subsets": [{"addresses": [{"ip": "10.1.0.1"}], "ports": [{"name": "http", "port": 80}]}],
    }
    obj.update(body)
    return obj


def service_obj(name: str = "ext", selector: Any = None) -> dict:
    """A Service (without a selector unless given) for Endpoints of the same name to belong to."""
    spec: dict = {"clusterIP": "10.96.0.9", "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53,
                                                                                       "protocol": "UDP"}]}
    if selector is not None:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"}, "spec": spec}


# ------------------------------------------------------------ endpoints_to_slices


def test_ready_and_not_ready_addresses_become_one_slice():
    ep = endpoints(
        EndpointSubset(
            addresses=(addr("10.1.0.1", node_name="n1", hostname="a", target_ref_name="pod-a"),),
            not_ready_addresses=(addr("10.1.0.2"),),
            ports=(HTTP, DNS),
        ),
        labels=(("team", "db"),),
    )
    (es,) = endpoints_to_slices(ep)
    assert (es.namespace, es.name, es.service_name, es.address_type) == ("shop", "ext-1", "ext", "IPv4")
    assert es.ports == (HTTP, DNS)
    assert es.endpoints == (
        Endpoint(addresses=("10.1.0.1",), conditions=READY, node_name="n1", hostname="a", target_ref_name="pod-a"),
        Endpoint(addresses=("10.1.0.2",), conditions=NOT_READY),
    )
    assert es.labels == (
        ("endpointslice.kubernetes.io/managed-by", "endpointslicemirroring-controller.k8s.io"),
        ("kubernetes.io/service-name", "ext"),
        ("team", "db"),
    )
    assert es.ref.where() == "ep.yaml: document 3: EndpointSlice shop/ext-1"


def test_addresses_are_split_by_family():
    ep = endpoints(EndpointSubset(addresses=(addr("fd00::1"), addr("10.1.0.1")), ports=(HTTP,)))
    v4, v6 = endpoints_to_slices(ep)
    assert (v4.name, v4.address_type, v4.endpoints[0].addresses) == ("ext-1", "IPv4", ("10.1.0.1",))
    assert (v6.name, v6.address_type, v6.endpoints[0].addresses) == ("ext-2", "IPv6", ("fd00::1",))


def test_subsets_with_different_ports_get_their_own_slices():
    ep = endpoints(
        EndpointSubset(addresses=(addr("10.1.0.1"),), ports=(HTTP,)),
        EndpointSubset(addresses=(addr("10.1.0.2"),), ports=(DNS,)),
    )
    first, second = endpoints_to_slices(ep)
    assert (first.ports, first.endpoints[0].addresses) == ((HTTP,), ("10.1.0.1",))
    assert (second.ports, second.endpoints[0].addresses) == ((DNS,), ("10.1.0.2",))


def test_subsets_with_the_same_addresses_are_merged():
    ep = endpoints(
        EndpointSubset(addresses=(addr("10.1.0.1"),), ports=(HTTP,)),
        EndpointSubset(addresses=(addr("10.1.0.1"),), ports=(DNS,)),
    )
    (es,) = endpoints_to_slices(ep)
    assert es.ports == (HTTP, DNS)
    assert [e.addresses for e in es.endpoints] == [("10.1.0.1",)]


def test_an_address_ready_anywhere_is_ready():
    ep = endpoints(
        EndpointSubset(addresses=(addr("10.1.0.1"),), not_ready_addresses=(addr("10.1.0.2"),), ports=(HTTP,)),
        EndpointSubset(not_ready_addresses=(addr("10.1.0.1"),), addresses=(addr("10.1.0.2"),), ports=(HTTP,)),
    )
    (es,) = endpoints_to_slices(ep)
    assert [(e.addresses, e.conditions.ready) for e in es.endpoints] == [(("10.1.0.1",), True), (("10.1.0.2",), True)]


def test_subset_without_ports_gives_a_slice_without_ports():
    (es,) = endpoints_to_slices(endpoints(EndpointSubset(addresses=(addr("10.1.0.1"),))))
    assert es.ports == ()


def test_no_subsets_no_slices():
    assert endpoints_to_slices(endpoints()) == ()


def test_slice_names_avoid_taken_names_and_stay_short():
    ep = endpoints(EndpointSubset(addresses=(addr("10.1.0.1"), addr("fd00::1")), ports=(HTTP,)))
    assert [s.name for s in endpoints_to_slices(ep, taken_names={"ext-1", "ext-3"})] == ["ext-2", "ext-4"]
    long_name = "a" * 250
    (es,) = endpoints_to_slices(endpoints(EndpointSubset(addresses=(addr("10.1.0.1"),)), name=long_name))
    assert es.name == "a" * 58 + "1" and es.service_name == long_name


def test_at_most_1000_addresses_per_subset_are_mirrored():
    many = tuple(addr(f"10.1.{i // 256}.{i % 256}") for i in range(MAX_ENDPOINTS_PER_SUBSET + 5))
    ep = endpoints(EndpointSubset(addresses=many[:1000], not_ready_addresses=many[1000:], ports=(HTTP,)))
    (es,) = endpoints_to_slices(ep)
    assert len(es.endpoints) == MAX_ENDPOINTS_PER_SUBSET
    assert unmirrored_address_count(ep) == 5


def test_repack_is_canonical():
    subsets = (
        EndpointSubset(addresses=(addr("10.1.0.2"), addr("10.1.0.1")), ports=(HTTP,)),
        EndpointSubset(addresses=(addr("10.1.0.1"), addr("10.1.0.2")), ports=(DNS,)),
    )
    assert repack_subsets(subsets) == (
        EndpointSubset(addresses=(addr("10.1.0.1"), addr("10.1.0.2")), ports=(HTTP, DNS)),
    )


def test_skip_reasons():
    assert mirror_skip_reason(endpoints()) is None
    skip = endpoints(labels=(("endpointslice.kubernetes.io/skip-mirror", "true"),))
    assert mirror_skip_reason(skip) == 'it is labelled endpointslice.kubernetes.io/skip-mirror="true"'
    lock = endpoints(is_leader_lock=True)
    assert mirror_skip_reason(lock) == (
        "it is a leader-election lock (annotation control-plane.alpha.kubernetes.io/leader)"
    )


# ------------------------------------------------------------- through parsing


def test_parsed_endpoints_are_mirrored_after_input_slices():
    obj = endpoints_obj(
        subsets=[{
            "addresses": [{"ip": "10.1.0.010", "nodeName": "n1", "hostname": "db-0", "targetRef": {"name": "db-0"}}],
            "notReadyAddresses": [{"ip": "FD00::0:2"}],
            "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}],
        }]
    )
    other_slice = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "ext-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "other"}},
        "addressType": "IPv4", "endpoints": [],
    }
    result = parse(obj, other_slice, service_obj())
    names = [(s.name, s.service_name) for s in result.cluster.endpoint_slices]
    assert names == [("ext-1", "other"), ("ext-2", "ext"), ("ext-3", "ext")]
    v4, v6 = result.cluster.endpoint_slices[1:]
    assert v4.endpoints == (
        Endpoint(addresses=("10.1.0.10",), conditions=READY, node_name="n1", hostname="db-0", target_ref_name="db-0"),
    )
    assert v6.endpoints == (Endpoint(addresses=("fd00::2",), conditions=NOT_READY),)
    assert v4.ports == (HTTP, DNS)
    assert result.warnings == ()


def test_endpoints_are_not_mirrored_when_the_input_has_slices_for_the_service():
    managed_slice = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "ext-abcde", "namespace": "shop", "labels": {"kubernetes.io/service-name": "ext"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.1.0.1"]}],
    }
    result = parse(endpoints_obj(), managed_slice, service_obj())
    assert [s.name for s in result.cluster.endpoint_slices] == ["ext-abcde"]
    assert result.warnings == (
        "ep.yaml: document 1: Endpoints shop/ext: not mirrored to EndpointSlices: "
        "the input has EndpointSlices for Service shop/ext",
    )


def test_skip_mirror_label_and_leader_locks_are_honoured():
    skip = endpoints_obj(name="a")
    skip["metadata"]["labels"] = {"endpointslice.kubernetes.io/skip-mirror": "true"}
    lock = endpoints_obj(name="b")
    lock["metadata"]["annotations"] = {"control-plane.alpha.kubernetes.io/leader": "{}"}
    result = parse(skip, lock)
    assert result.cluster.endpoint_slices == ()
    assert [w.split(": not mirrored")[0] for w in result.warnings] == [
        "ep.yaml: document 1: Endpoints shop/a",
        "ep.yaml: document 2: Endpoints shop/b",
    ]


def test_only_endpoints_of_an_existing_service_without_selector_are_mirrored():
    # the mirroring controller leaves alone the Endpoints of a missing Service, and those of a
    # Service with a selector (the EndpointSlice controller makes its slices from Pods)
    result = parse(endpoints_obj(name="orphan"), endpoints_obj(name="web"), service_obj("web", {"app": "web"}),
                   endpoints_obj(name="ext"), service_obj("ext"))
    assert [s.service_name for s in result.cluster.endpoint_slices] == ["ext"]
    assert result.warnings == (
        "ep.yaml: document 1: Endpoints shop/orphan: not mirrored to EndpointSlices: the input has no Service "
        "shop/orphan",
        "ep.yaml: document 2: Endpoints shop/web: not mirrored to EndpointSlices: Service shop/web has a selector "
        "(the EndpointSlice controller makes its slices from Pods)",
        "ep.yaml: document 3: Service shop/web: selects no Pod and has no EndpointSlice in the input, so it has no "
        "endpoints and its rules reject all traffic to it; to get its endpoints, include its Pods "
        "(kubectl get pods -o yaml) or its EndpointSlices (kubectl get endpointslices -o yaml)",
    )


def test_too_many_addresses_warns():
    ips = [{"ip": f"10.1.{i // 256}.{i % 256}"} for i in range(1002)]
    result = parse(endpoints_obj(subsets=[{"addresses": ips, "ports": [{"port": 80}]}]), service_obj())
    assert len(result.cluster.endpoint_slices[0].endpoints) == 1000
    assert result.warnings == (
        "ep.yaml: document 1: Endpoints shop/ext: 2 addresses not mirrored: "
        "at most 1000 addresses are mirrored per subset",
    )


EP = f"{SRC}: document 1: Endpoints shop/ext: "


@pytest.mark.parametrize(
    "subsets, expected",
    [
        (
            [{"addresses": [{"ip": "10.1.0.300"}]}],
            ['subsets[0].addresses[0].ip: Invalid value: "10.1.0.300": '
             "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"],
        ),
        (
            [{"notReadyAddresses": [{"ip": "::1"}]}],
            ['subsets[0].notReadyAddresses[0].ip: Invalid value: "::1": '
             "may not be in the loopback range (127.0.0.0/8, ::1/128)"],
        ),
        ([{"ports": [{"port": 80}]}], ["subsets[0]: Required value: must specify `addresses` or `notReadyAddresses`"]),
        (
            [{"addresses": [{"ip": "10.1.0.1"}],
              "ports": [{"name": "a", "port": 80}, {"port": 81, "protocol": "ICMP"}]}],
            ["subsets[0].ports[1].name: Required value",
             'subsets[0].ports[1].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"'],
        ),
        (
            [{"addresses": [{"ip": "10.1.0.1", "hostname": "Db.0", "nodeName": "n_1"}]}],
            ['subsets[0].addresses[0].hostname: Invalid value: "Db.0": a lowercase RFC 1123 label must consist of '
             "lower case alphanumeric characters or '-', and must start and end with an alphanumeric character "
             "(e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
             'subsets[0].addresses[0].nodeName: Invalid value: "n_1": a lowercase RFC 1123 subdomain must consist '
             "of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
             "character (e.g. 'example.com', regex used for validation is "
             "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"],
        ),
        ("none", ['subsets: Invalid value: "none": must be a list']),
    ],
)
def test_endpoints_validation(subsets, expected):
    with pytest.raises(InputError) as info:
        parse(endpoints_obj(subsets=subsets))
    assert [str(p) for p in info.value.problems] == [EP + line for line in expected]


# ---------------------------------------------------------------- properties

_IPS = ["10.1.0.1", "10.1.0.2", "10.1.0.3", "fd00::1", "fd00::2"]
_PORTS = [HTTP, DNS, EndpointPort(port=8080, protocol="TCP", name="alt")]
_subsets = st.lists(
    st.builds(
        EndpointSubset,
        addresses=st.lists(st.sampled_from(_IPS).map(addr), max_size=4).map(tuple),
        not_ready_addresses=st.lists(st.sampled_from(_IPS).map(addr), max_size=4).map(tuple),
        ports=st.lists(st.sampled_from(_PORTS), max_size=3, unique=True).map(tuple),
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(_subsets)
def test_mirroring_keeps_every_port_address_pair_with_ready_winning(subsets):
    ep = endpoints(*subsets)
    expected: dict[tuple, bool] = {}
    for subset in subsets:
        for port in subset.ports or (None,):
            for a in subset.addresses:
                expected[(port, a.ip)] = True
            for a in subset.not_ready_addresses:
                expected.setdefault((port, a.ip), False)
    got: dict[tuple, bool] = {}
    slices = endpoints_to_slices(ep)
    for es in slices:
        for e in es.endpoints:
            assert len(e.addresses) == 1 and e.conditions.serving == e.conditions.ready
            for port in es.ports or (None,):
                assert (port, e.addresses[0]) not in got
                got[(port, e.addresses[0])] = e.conditions.ready
        families = {":" in e.addresses[0] for e in es.endpoints}
        assert families == {es.address_type == "IPv6"}
    # As in RepackSubsets, port-less addresses merge into a ported group holding the same addresses.
    portless = {ip for (port, ip) in expected if port is None}
    assert {k: v for k, v in got.items() if k[0] is not None} == {k: v for k, v in expected.items() if k[0] is not None}
    assert portless <= {ip for (_, ip) in got}
    assert len({s.name for s in slices}) == len(slices)
