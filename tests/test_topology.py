"""kube-proxy's endpoint categorisation with topology (pkg/proxy/topology.go ``CategorizeEndpoints``).

Each test is one of kube-proxy's rules or fallbacks: PreferSameNode when every ready
endpoint has a node hint and one names this node; else PreferSameZone when every ready
endpoint has a zone hint and one names this node's zone; else every ready endpoint.
Only ready endpoints count, the serving+terminating fallback ignores topology, and only
the cluster list is filtered.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from dataplane.model import Endpoint, EndpointConditions
from dataplane.topology import categorize, topology_mode

NODE, ZONE = "node-a", "zone-a"


@dataclass(frozen=True)
class Planned:
    """A planned endpoint as the plan builds it (only what categorize reads)."""

    name: str
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    is_local: bool = False


def pair(name: str, *, zones: Optional[tuple[str, ...]] = None, nodes: Optional[tuple[str, ...]] = None,
         ready: bool = True, serving: Optional[bool] = None, terminating: bool = False,
         local: bool = False) -> tuple[Planned, Endpoint]:
    serving = ready if serving is None else serving
    conditions = EndpointConditions(ready, serving, terminating)
    endpoint = Endpoint(("10.0.0.1",), conditions, hints_for_zones=zones, hints_for_nodes=nodes)
    return Planned(name, ready, serving, terminating, local), endpoint


def cluster(*pairs: tuple[Planned, Endpoint], node: str = NODE, zone: Optional[str] = ZONE) -> list[str]:
    eps, _, _ = categorize(pairs, node_name=node, zone=zone, use_cluster=True, use_local=False)
    return [p.name for p in eps]


def test_zone_hints_keep_cluster_traffic_in_the_zone():
    eps = (pair("a1", zones=("zone-a",)), pair("b1", zones=("zone-b",)), pair("ab", zones=("zone-a", "zone-b")))
    assert cluster(*eps) == ["a1", "ab"]
    assert cluster(*eps, zone="zone-b") == ["b1", "ab"]


def test_no_endpoint_hinted_for_this_zone_uses_all():
    assert cluster(pair("b1", zones=("zone-b",)), pair("c1", zones=("zone-c",))) == ["b1", "c1"]


def test_node_without_zone_label_uses_all():
    eps = (pair("a1", zones=("zone-a",)), pair("b1", zones=("zone-b",)))
    assert cluster(*eps, zone=None) == ["a1", "b1"]
    assert cluster(*eps, zone="") == ["a1", "b1"]


def test_one_ready_endpoint_without_zone_hint_disables_topology():
    assert cluster(pair("a1", zones=("zone-a",)), pair("b1")) == ["a1", "b1"]


def test_only_ready_endpoints_need_hints():
    eps = (pair("a1", zones=("zone-a",)), pair("b1", zones=("zone-b",)), pair("x", ready=False))
    assert cluster(*eps) == ["a1"]


def test_node_hints_prefer_this_node():
    eps = (pair("here", zones=("zone-a",), nodes=("node-a",)),
           pair("zone-mate", zones=("zone-a",), nodes=("node-a2",)),
           pair("far", zones=("zone-b",), nodes=("node-b",)))
    assert cluster(*eps) == ["here"]
    assert topology_mode([ep for _, ep in eps], NODE, ZONE) == "PreferSameNode"


def test_no_endpoint_on_this_node_falls_back_to_zone():
    eps = (pair("zone-mate", zones=("zone-a",), nodes=("node-a2",)),
           pair("far", zones=("zone-b",), nodes=("node-b",)))
    assert cluster(*eps) == ["zone-mate"]
    assert topology_mode([ep for _, ep in eps], NODE, ZONE) == "PreferSameZone"


def test_node_hints_without_zone_hints_and_no_local_endpoint_use_all():
    eps = (pair("x", nodes=("node-x",)), pair("y", nodes=("node-y",)))
    assert cluster(*eps) == ["x", "y"]
    assert topology_mode([ep for _, ep in eps], NODE, ZONE) == ""


def test_one_ready_endpoint_without_node_hint_disables_node_mode_only():
    eps = (pair("here", zones=("zone-a",), nodes=("node-a",)),
           pair("zone-mate", zones=("zone-a",)),
           pair("far", zones=("zone-b",), nodes=("node-b",)))
    assert cluster(*eps) == ["here", "zone-mate"]


def test_node_mode_works_on_a_node_without_zone_label():
    eps = (pair("here", nodes=("node-a",)), pair("there", nodes=("node-b",)))
    assert cluster(*eps, zone=None) == ["here"]


def test_no_ready_endpoints_fall_back_to_serving_terminating_ignoring_hints():
    eps = (pair("t-a", zones=("zone-a",), nodes=("node-a",), ready=False, serving=True, terminating=True),
           pair("t-b", zones=("zone-b",), nodes=("node-b",), ready=False, serving=True, terminating=True),
           pair("gone", ready=False, serving=False, terminating=True))
    assert cluster(*eps) == ["t-a", "t-b"]


def test_local_endpoints_are_never_filtered_by_hints():
    eps = (pair("local-b", zones=("zone-b",), nodes=("node-b",), local=True),
           pair("remote-a", zones=("zone-a",), nodes=("node-a",)))
    cluster_eps, local_eps, has_any = categorize(eps, node_name=NODE, zone=ZONE, use_cluster=True, use_local=True)
    assert [p.name for p in cluster_eps] == ["remote-a"]
    assert [p.name for p in local_eps] == ["local-b"] and has_any


def test_lists_computed_only_when_used():
    eps = (pair("a1", zones=("zone-a",), local=True),)
    assert categorize(eps, node_name=NODE, zone=ZONE, use_cluster=False, use_local=False) == ([], [], True)
    assert categorize((), node_name=NODE, zone=ZONE, use_cluster=True, use_local=True) == ([], [], False)
