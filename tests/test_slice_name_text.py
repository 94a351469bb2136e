"""A derived EndpointSlice's name is a hash of its content's JSON text: the text written directly
(endpointslices._content_text) is json.dumps(..., sort_keys=True)'s, character for character."""
from __future__ import annotations

import json
import random

from dataplane.controllers import endpointslices as es
from dataplane.model import Endpoint, EndpointConditions, EndpointPort, ObjectRef, Service, ServicePort

_TEXTS = ["web", "a-b.c", "zone-a", "x\"y", "back\\slash", "é-ünï", "日本", "tab\there", "",
          "\u2028", "\U0001f600"]


def _maybe(rng: random.Random, value):
    return value if rng.random() < 0.6 else None


def _endpoint(rng: random.Random) -> Endpoint:
    return Endpoint(
        addresses=tuple(rng.choice(["10.0.0.1", "fd00::1", *_TEXTS]) for _ in range(rng.randint(1, 2))),
        conditions=EndpointConditions(ready=rng.random() < 0.5, serving=rng.random() < 0.5,
                                      terminating=rng.random() < 0.5),
        node_name=_maybe(rng, rng.choice(_TEXTS)),
        zone=_maybe(rng, rng.choice(_TEXTS)),
        hints_for_zones=_maybe(rng, tuple(rng.sample(_TEXTS, rng.randint(0, 2)))),
        hints_for_nodes=_maybe(rng, tuple(rng.sample(_TEXTS, rng.randint(0, 2)))),
        hostname=_maybe(rng, rng.choice(_TEXTS)),
        target_ref_name=_maybe(rng, rng.choice(_TEXTS)),
    )


def test_the_direct_text_is_json_dumps_text():
    rng = random.Random(7)
    for _ in range(500):
        svc = Service(namespace=rng.choice(_TEXTS), name=rng.choice(_TEXTS), ports=(ServicePort(port=80),),
                      ref=ObjectRef("Service", "ns", "web"))
        ports = tuple(EndpointPort(port=rng.choice([None, 0, 80, 65535]), protocol=rng.choice(["TCP", "UDP"]),
                                   name=rng.choice(_TEXTS)) for _ in range(rng.randint(0, 3)))
        endpoints = [_endpoint(rng) for _ in range(rng.randint(0, 4))]
        family, attempt = rng.choice(["IPv4", "IPv6"]), rng.randint(0, 3)
        expected = json.dumps(es._content_json(svc, family, ports, endpoints, attempt), sort_keys=True)
        assert es._content_text(svc, family, ports, endpoints, attempt) == expected


def test_values_of_other_types_than_the_models_are_written_by_json_dumps():
    """A library caller's Endpoint with a non-str name or int conditions: still json.dumps' text."""
    svc = Service(namespace="ns", name="web", ports=(ServicePort(port=80),), ref=ObjectRef("Service", "ns", "web"))
    odd = [Endpoint(addresses=("10.0.0.1",), conditions=EndpointConditions(ready=1, serving=0, terminating=False)),
           Endpoint(addresses=("10.0.0.2",), target_ref_name=7, node_name=3.5),
           Endpoint(addresses=("10.0.0.3",), hints_for_zones=(None,))]
    ports = (EndpointPort(port=True, name="x"), EndpointPort(port=8.5, protocol="UDP"))
    expected = json.dumps(es._content_json(svc, "IPv4", ports, odd, 0), sort_keys=True)
    assert es._content_text(svc, "IPv4", ports, odd, 0) == expected
    assert es.slice_name(svc, "IPv4", ports, odd).startswith("web-")
