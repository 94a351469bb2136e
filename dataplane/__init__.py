"""kube-dataplane: Kubernetes Services compiled into one node's iptables/nftables rules.

The public API::

    from dataplane import load_cluster, build_plan, render, compile_rules

    cluster = load_cluster(["cluster.yaml"]).cluster
    result = compile_rules(cluster, "node-a", backend="nftables", family="ipv4")
    print(result.text)

``build_plan`` gives the backend-neutral node-local plan (what kube-proxy would
do on that node); ``render`` turns a plan into rules text; ``apply_compiled``
loads a result into a network namespace.
"""
from .apply import apply_compiled
from .compiler import CompileResult, compile_rules, render
from .errors import ApplyError, DataplaneError, InputError, Problem, UsageError
from .model import (
    Cluster,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    LoadBalancerIngress,
    Node,
    NodeAddress,
    Pod,
    ProxyConfig,
    Service,
    ServicePort,
)
from .parse import ParseResult, load_cluster, parse_cluster
from .plan import NodePlan, PlanEndpoint, ServicePortPlan, build_plan
from .proxier import NetnsRunner, Proxier, RecordingRunner, SyncResult
from .trace import Packet, TraceResult, trace

__all__ = [
    "ApplyError", "Cluster", "CompileResult", "DataplaneError", "Endpoint", "EndpointConditions",
    "EndpointPort", "EndpointSlice", "InputError", "LoadBalancerIngress", "Node", "NodeAddress",
    "NodePlan", "ParseResult", "PlanEndpoint", "Pod", "Problem", "ProxyConfig", "Service",
    "ServicePort", "ServicePortPlan", "UsageError", "apply_compiled", "build_plan", "compile_rules",
    "load_cluster", "parse_cluster", "render", "Proxier", "NetnsRunner", "RecordingRunner", "SyncResult",
    "Packet", "TraceResult", "trace",
]
__version__ = "0.1.0"
