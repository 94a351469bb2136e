"""The benchmark's synthetic clusters: N Services with E endpoints each, in a realistic mix (mostly
ClusterIP, some NodePort and LoadBalancer with ingress IPs, some externalTrafficPolicy /
internalTrafficPolicy Local, some ClientIP affinity, some TCP+UDP multi-port) over 50 namespaces, 50
Nodes and a KubeProxyConfiguration, written as ``kubectl get ... -o json`` / ``-o yaml`` would (one
``kind: List``): once with the EndpointSlices, once with the Pods behind them instead."""
from __future__ import annotations

import ipaddress
import json
import os
import random
import uuid
from pathlib import Path
from typing import Any

from .procs import child, run_child

GENERATOR_VERSION = 3  # bump when the generated clusters change (invalidates the cache)
COMPILE_NODE = "node-01"  # the synthetic node whose rules are compiled
NODES = 50
NAMESPACES = 50  # Services spread over team-00 .. team-49
ZONES = ("zone-a", "zone-b", "zone-c")
SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")
CLUSTER_CIDR = "10.128.0.0/9"  # node k's pods: 10.(128+k).0.0/16
LB_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
EXTERNAL_IP_RANGE = ipaddress.IPv4Network("100.64.0.0/16")  # one external IP per Service using one
NODE_PORT_BASE = 30000  # as with --service-node-port-range 30000-39999 (30k Services need ~5k)
NODE_PORT_RANGE = f"{NODE_PORT_BASE}-{NODE_PORT_BASE + 9999}"

# The probed Service of the connection-rate test: "zzz/zzz" sorts after every
# synthetic Service, so iptables' KUBE-SERVICES reaches it last.
RATE_NAMESPACE = RATE_NAME = "zzz"
RATE_VIP = "10.111.255.1"
RATE_PORT = 80
RATE_TARGET_PORT = 8080
RATE_POD_IP = "10.244.1.10"  # pod1-1 of Topology.simple
RATE_RUNS = 3  # client runs per point (median); each opens connections for --rate-seconds

_WORDS = ("api", "web", "auth", "cart", "search", "billing", "orders", "users", "catalog", "cache",
          "queue", "report", "gateway", "metrics", "mail", "media", "notify", "profile", "review", "ship")


# =============================================================================== generator


def _ip(network: ipaddress.IPv4Network, offset: int) -> str:
    return str(network.network_address + offset)


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _suffix(rng: random.Random, n: int = 5) -> str:
    return "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))


def _node(k: int, rng: random.Random) -> dict:
    name = f"node-{k + 1:02d}"
    zone = ZONES[k % len(ZONES)]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                            "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            "creationTimestamp": "2024-03-01T08:00:00Z",
            "labels": {
                "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "m5.2xlarge", "topology.kubernetes.io/region": "bench-1",
                "topology.kubernetes.io/zone": zone,
            },
            "name": name,
            "resourceVersion": str(1000 + k),
            "uid": _uid(rng),
        },
        "spec": {"podCIDR": f"10.{128 + k}.0.0/16", "podCIDRs": [f"10.{128 + k}.0.0/16"],
                 "providerID": f"bench://{zone}/{name}"},
        "status": {
            "addresses": [{"address": f"192.168.{k // 250}.{k % 250 + 1}", "type": "InternalIP"},
                          {"address": name, "type": "Hostname"}],
            "allocatable": {"cpu": "7910m", "memory": "31Gi", "pods": "110"},
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "conditions": [
                {"lastHeartbeatTime": "2024-05-01T10:00:00Z", "lastTransitionTime": "2024-03-01T08:01:00Z",
                 "message": "kubelet is posting ready status", "reason": "KubeletReady",
                 "status": "True", "type": "Ready"},
            ],
            "nodeInfo": {"architecture": "amd64", "containerRuntimeVersion": "containerd://1.7.13",
                         "kernelVersion": "6.1.0-18-amd64", "kubeProxyVersion": "v1.30.0",
                         "kubeletVersion": "v1.30.0", "operatingSystem": "linux",
                         "osImage": "Debian GNU/Linux 12 (bookworm)"},
        },
    }


class _Pods:
    """Pod IPs per node: node k hands out 10.(128+k).x.y in order."""

    def __init__(self) -> None:
        self.next = [2] * NODES

    def ip(self, k: int) -> str:
        n = self.next[k]
        self.next[k] += 1
        return f"10.{128 + k}.{n >> 8}.{n & 255}"


def _service_and_slices(i: int, endpoints: int, rng: random.Random, pods: _Pods,
                        counters: dict) -> tuple[dict, list[dict], list[dict]]:
    """Service number ``i``, its EndpointSlices and the Pods behind them, as kubectl prints them."""
    namespace = f"team-{i % NAMESPACES:02d}"
    name = f"{_WORDS[i % len(_WORDS)]}-{i:05d}"
    roll = rng.random()
    svc_type = "ClusterIP" if roll < 0.80 else "NodePort" if roll < 0.92 else "LoadBalancer"
    multi = rng.random() < 0.15
    if multi:
        ports = [("http", 80, "TCP", 8080), ("dns", 53, "UDP", 5353)]
    else:
        ports = [rng.choice([("http", 80, "TCP", 8080), ("https", 443, "TCP", 8443),
                             ("grpc", 9090, "TCP", 9090), ("", 5432, "TCP", 5432)])]
    named_target = rng.random() < 0.3
    cluster_ip = _ip(SERVICE_CIDR, 16 + i)
    spec: dict[str, Any] = {
        "clusterIP": cluster_ip,
        "clusterIPs": [cluster_ip],
        "internalTrafficPolicy": "Local" if rng.random() < 0.05 else "Cluster",
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "ports": [],
        "selector": {"app.kubernetes.io/name": name},
        "sessionAffinity": "None",
        "type": svc_type,
    }
    for port_name, port, protocol, target in ports:
        entry: dict[str, Any] = {"port": port, "protocol": protocol,
                                 "targetPort": port_name if named_target and port_name else target}
        if port_name:
            entry["name"] = port_name
        if svc_type != "ClusterIP":
            entry["nodePort"] = NODE_PORT_BASE + counters["node_port"]
            counters["node_port"] += 1
        spec["ports"].append(entry)
    status: dict[str, Any] = {"loadBalancer": {}}
    if svc_type != "ClusterIP":
        local = rng.random() < 0.3
        spec["externalTrafficPolicy"] = "Local" if local else "Cluster"
        if svc_type == "LoadBalancer":
            spec["allocateLoadBalancerNodePorts"] = True
            if local:
                spec["healthCheckNodePort"] = NODE_PORT_BASE + counters["node_port"]
                counters["node_port"] += 1
            status["loadBalancer"] = {"ingress": [{"ip": _ip(LB_RANGE, 10 + counters["lb"]), "ipMode": "VIP"}]}
            counters["lb"] += 1
    elif rng.random() < 0.01:
        spec["externalIPs"] = [_ip(EXTERNAL_IP_RANGE, 1 + counters["external"])]
        counters["external"] += 1
    if rng.random() < 0.05:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 10800}}
    svc_uid = _uid(rng)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "annotations": {"meta.helm.sh/release-name": namespace, "meta.helm.sh/release-namespace": namespace},
            "creationTimestamp": "2024-04-01T12:00:00Z",
            "labels": {"app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/name": name},
            "name": name,
            "namespace": namespace,
            "resourceVersion": str(200000 + i),
            "uid": svc_uid,
        },
        "spec": spec,
        "status": status,
    }
    replica_set = _suffix(rng, 10)
    eps = []
    pod_objects: list[dict] = []
    for j in range(endpoints):
        k = rng.randrange(NODES)
        roll = rng.random()
        if roll < 0.96:
            conditions = {"ready": True, "serving": True, "terminating": False}
        elif roll < 0.98:
            conditions = {"ready": False, "serving": False, "terminating": False}
        else:
            conditions = {"ready": False, "serving": True, "terminating": True}
        pod_name, pod_uid, ip = f"{name}-{replica_set}-{_suffix(rng)}", _uid(rng), pods.ip(k)
        eps.append({
            "addresses": [ip],
            "conditions": conditions,
            "nodeName": f"node-{k + 1:02d}",
            "targetRef": {"kind": "Pod", "name": pod_name, "namespace": namespace, "uid": pod_uid},
            "zone": ZONES[k % len(ZONES)],
        })
        pod_objects.append(_pod(pod_name, pod_uid, namespace, name, replica_set, k, ip, conditions, ports))
    slice_ports = [{"name": port_name, "port": target, "protocol": protocol}
                   for port_name, _, protocol, target in ports]
    slices = []
    for start in range(0, max(len(eps), 1), 100):  # the controller's maxEndpointsPerSlice
        slices.append({
            "addressType": "IPv4",
            "apiVersion": "discovery.k8s.io/v1",
            "endpoints": eps[start:start + 100],
            "kind": "EndpointSlice",
            "metadata": {
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2024-05-01T10:00:00Z"},
                "creationTimestamp": "2024-04-01T12:00:01Z",
                "generateName": f"{name}-",
                "generation": 3,
                "labels": {"app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/name": name,
                           "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                           "kubernetes.io/service-name": name},
                "name": f"{name}-{_suffix(rng)}",
                "namespace": namespace,
                "ownerReferences": [{"apiVersion": "v1", "blockOwnerDeletion": True, "controller": True,
                                     "kind": "Service", "name": name, "uid": svc_uid}],
                "resourceVersion": str(400000 + i),
                "uid": _uid(rng),
            },
            "ports": slice_ports,
        })
    return service, slices, pod_objects


def make_clusters(services: int, endpoints: int, seed: int = 7) -> tuple[dict, dict]:
    """The synthetic cluster as one ``kind: List`` twice: with EndpointSlices (Services, slices, Nodes)
    and with the Pods behind them instead (Services, Pods, Nodes), the same endpoints in both."""
    rng = random.Random(seed)
    pods = _Pods()
    counters = {"node_port": 0, "lb": 0, "external": 0}
    svcs: list[dict] = []
    slices: list[dict] = []
    pod_objects: list[dict] = []
    for i in range(services):
        service, own, behind = _service_and_slices(i, endpoints, rng, pods, counters)
        svcs.append(service)
        slices.extend(own)
        pod_objects.extend(behind)
    nodes = [_node(k, rng) for k in range(NODES)]
    config = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
              "clusterCIDR": CLUSTER_CIDR, "mode": "iptables"}

    def as_list(objects: list[dict]) -> dict:
        return {"apiVersion": "v1", "items": [*svcs, *objects, *nodes, config], "kind": "List",
                "metadata": {"resourceVersion": ""}}

    return as_list(slices), as_list(pod_objects)


def make_cluster(services: int, endpoints: int, seed: int = 7) -> dict:
    """The synthetic cluster with EndpointSlices as one ``kind: List`` (Services, slices, Nodes)."""
    return make_clusters(services, endpoints, seed)[0]


def _pod(name: str, uid: str, namespace: str, app: str, replica_set: str, k: int, ip: str, conditions: dict,
         ports: list[tuple[str, int, str, int]]) -> dict:
    """The Pod behind one endpoint: Ready as the endpoint is serving, deleted when it is terminating,
    its container ports named as the Service's (named targetPorts resolve through them)."""
    container_ports = []
    for port_name, _, protocol, target in ports:
        entry: dict[str, Any] = {"containerPort": target, "protocol": protocol}
        if port_name:
            entry["name"] = port_name
        container_ports.append(entry)
    metadata: dict[str, Any] = {
        "creationTimestamp": "2024-04-01T12:00:00Z",
        "generateName": f"{app}-{replica_set}-",
        "labels": {"app.kubernetes.io/name": app, "pod-template-hash": replica_set},
        "name": name,
        "namespace": namespace,
        "ownerReferences": [{"apiVersion": "apps/v1", "blockOwnerDeletion": True, "controller": True,
                             "kind": "ReplicaSet", "name": f"{app}-{replica_set}", "uid": uid}],
        "resourceVersion": str(600000 + k),
        "uid": uid,
    }
    if conditions["terminating"]:
        metadata["deletionTimestamp"] = "2024-05-01T10:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [{"image": f"registry.example/{app}:1.0", "imagePullPolicy": "IfNotPresent",
                            "name": "app", "ports": container_ports}],
            "nodeName": f"node-{k + 1:02d}",
        },
        "status": {
            "conditions": [{"status": "True" if conditions["serving"] else "False", "type": "Ready"}],
            "hostIP": f"192.168.{k // 250}.{k % 250 + 1}",
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
        },
    }


def rate_cluster(services: int, endpoints: int) -> dict:
    """A synthetic cluster plus the lab's node1 and the probed Service zzz/zzz (pod1-1:8080)."""
    cluster = make_cluster(services, endpoints)
    cluster["items"][-1:-1] = [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"},
         "spec": {"podCIDR": "10.244.1.0/24"},
         "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": RATE_NAME, "namespace": RATE_NAMESPACE},
         "spec": {"type": "ClusterIP", "clusterIP": RATE_VIP, "clusterIPs": [RATE_VIP],
                  "ports": [{"name": "http", "port": RATE_PORT, "protocol": "TCP",
                             "targetPort": RATE_TARGET_PORT}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
         "metadata": {"name": f"{RATE_NAME}-1", "namespace": RATE_NAMESPACE,
                      "labels": {"kubernetes.io/service-name": RATE_NAME}},
         "ports": [{"name": "http", "port": RATE_TARGET_PORT, "protocol": "TCP"}],
         "endpoints": [{"addresses": [RATE_POD_IP], "conditions": {"ready": True}, "nodeName": "node1"}]},
    ]
    return cluster


def cluster_paths(workdir: Path, services: int, endpoints: int) -> dict[str, Path]:
    """Where the generated inputs of one size go: ``json`` and ``yaml`` (with slices), ``pods`` (JSON with Pods)."""
    stem = workdir / f"cluster-{services}x{endpoints}-g{GENERATOR_VERSION}"
    return {"json": stem.with_suffix(".json"), "yaml": stem.with_suffix(".yaml"),
            "pods": stem.with_name(stem.name + "-pods").with_suffix(".json")}


def write_cluster(workdir: Path, services: int, endpoints: int) -> dict[str, Path]:
    """JSON (``kubectl -o json``: 4-space indent) and YAML (``-o yaml``) files of the cluster with
    slices, and JSON of the cluster with Pods; cached by parameters (see :func:`cluster_paths`).

    Generated in a child process: this one stays small, so that the peak RSS
    of the processes it starts is theirs (see run_measured).
    """
    paths = cluster_paths(workdir, services, endpoints)
    if not all(p.exists() for p in paths.values()):
        run_child(child("generate", "--sizes", str(services), "--endpoints", str(endpoints),
                        "--outdir", str(workdir)), "generator")
    return paths


def child_generate(workdir: Path, services: int, endpoints: int) -> dict:
    """(Child.) Write the files of :func:`cluster_paths`."""
    import yaml

    paths = cluster_paths(workdir, services, endpoints)
    with_slices, with_pods = make_clusters(services, endpoints)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    for path, data, dump in (
        (paths["json"], with_slices, lambda d, f: json.dump(d, f, indent=4)),
        (paths["pods"], with_pods, lambda d, f: json.dump(d, f, indent=4)),
        (paths["yaml"], with_slices, lambda d, f: yaml.dump(d, f, Dumper=dumper, default_flow_style=False,
                                                            sort_keys=True, width=1 << 16)),
    ):
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "w") as f:
            dump(data, f)
            f.write("\n")
        os.replace(tmp, path)
    return {key: str(path) for key, path in paths.items()}
