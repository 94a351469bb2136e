"""kube-dataplane: Kubernetes Services compiled into one node's iptables/nftables rules.

The public API::

    from dataplane import load_cluster, build_plan, render, compile_rules

    cluster = load_cluster(["cluster.yaml"]).cluster   # or prepare_cluster(..., allocate=True)
    result = compile_rules(cluster, "node-a", backend="nftables", family="ipv4")
    print(result.text)

``build_plan`` gives the backend-neutral node-local plan (what kube-proxy would
do on that node); ``render`` turns a plan into rules text; ``apply_compiled``
loads a result into a network namespace.
"""
from importlib import import_module
from typing import TYPE_CHECKING, Any

# name -> the module that defines it; imported on first use, so that a command
# (or an embedding proxy) pays only for what it uses
_EXPORTS = {
    "apply_compiled": "runtime.apply",
    "CompileResult": "compiler", "compile_rules": "compiler", "render": "compiler",
    "ApplyError": "errors", "DataplaneError": "errors", "InputError": "errors", "Problem": "errors",
    "UsageError": "errors",
    "Cluster": "model", "Endpoint": "model", "EndpointConditions": "model", "EndpointPort": "model",
    "EndpointSlice": "model", "LoadBalancerIngress": "model", "Node": "model", "NodeAddress": "model",
    "Pod": "model", "ProxyConfig": "model", "Service": "model", "ServicePort": "model",
    "ParseResult": "input.cluster", "load_cluster": "input.cluster", "parse_cluster": "input.cluster",
    "cluster_from_objects": "input.cluster", "parse_object": "input.cluster",
    "NodePlan": "plan", "PlanEndpoint": "plan", "ServicePortPlan": "plan", "build_plan": "plan",
    "NetnsRunner": "runtime.proxier", "Proxier": "runtime.proxier", "RecordingRunner": "runtime.proxier",
    "SyncResult": "runtime.proxier",
    "PreparedCluster": "prepare", "prepare_cluster": "prepare",
}

if TYPE_CHECKING:  # pragma: no cover
    from .runtime.apply import apply_compiled
    from .compiler import CompileResult, compile_rules, render
    from .errors import ApplyError, DataplaneError, InputError, Problem, UsageError
    from .model import (Cluster, Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
                        LoadBalancerIngress, Node, NodeAddress, Pod, ProxyConfig, Service, ServicePort)
    from .input.cluster import ParseResult, cluster_from_objects, load_cluster, parse_cluster, parse_object
    from .plan import NodePlan, PlanEndpoint, ServicePortPlan, build_plan
    from .runtime.proxier import NetnsRunner, Proxier, RecordingRunner, SyncResult
    from .prepare import PreparedCluster, prepare_cluster

# Imported now: the function ``trace`` must shadow the subpackage of the same name,
# which importing any ``dataplane.trace.*`` module would otherwise bind here.
from .trace import Packet, TraceResult, TraceStep, trace  # noqa: E402


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dataplane' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "ApplyError", "Cluster", "CompileResult", "DataplaneError", "Endpoint", "EndpointConditions",
    "EndpointPort", "EndpointSlice", "InputError", "LoadBalancerIngress", "Node", "NodeAddress",
    "NodePlan", "ParseResult", "PlanEndpoint", "Pod", "Problem", "ProxyConfig", "Service",
    "ServicePort", "ServicePortPlan", "UsageError", "apply_compiled", "build_plan", "compile_rules",
    "load_cluster", "parse_cluster", "render", "Proxier", "NetnsRunner", "RecordingRunner", "SyncResult",
    "Packet", "TraceResult", "TraceStep", "trace", "PreparedCluster", "prepare_cluster", "cluster_from_objects",
    "parse_object",
]
__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)
