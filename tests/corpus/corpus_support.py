"""The corpus of public manifests (see SOURCES.md) and how the tests make a running cluster of each.

The public files hold Deployments, not Pods, and Pods without a status: alone they compile to
Services without endpoints. ``live_objects`` does what the cluster would: one Pod per replica of
each Deployment / StatefulSet / ReplicaSet (labels and containers from the template, names as the
ReplicaSet controller makes them), every Pod scheduled, Ready and given an address, and two Nodes.
Pods are laid out as ``Topology.simple(nodes=2, pods_per_node=N)`` of the namespace lab lays out
its pods: the k-th Pod (file order) goes to ``node<1 + k % 2>`` as that node's j-th pod, at
``10.244.<i>.<9 + j>``, so a namespace test can serve each one in lab pod ``pod<i>-<j>``. Nodes are
at 192.0.2.<i> (the documentation range the lab uses).

The corpus files themselves are never changed: the built objects go to a separate file.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CORPUS = Path(__file__).resolve().parent
NODES = ("node1", "node2")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "ReplicaSet")


@dataclass(frozen=True)
class Entry:
    """One corpus entry: its public files, and what the tests add to make it a cluster."""

    name: str
    files: tuple[str, ...]
    namespaces: tuple[str, ...] = ("default",)
    # extra objects the tests add (a Service the public example creates by hand, a Pod the
    # public chart runs), each documented where it is defined
    extra: tuple[dict, ...] = ()
    # checks on the live cluster's rules: (namespace, service, port) -> pod names expected behind it
    services: dict = field(default_factory=dict)

    @property
    def paths(self) -> list[Path]:
        return [CORPUS / f for f in self.files]


# kubernetes/examples' glusterfs README creates this selectorless Service by hand
# (glusterfs-service.json) so the manual Endpoints persist; it is not in the index, so the test
# writes it as the README describes: same name as the Endpoints, port 1, no selector.
GLUSTERFS_SERVICE = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "glusterfs-cluster"},
    "spec": {"ports": [{"port": 1}]},
}

# The zero-to-jupyterhub chart's proxy Pod (component=proxy, release=jhub) serves the named port
# ``http`` on 8000; the dump holds only the Service, so the test adds the Pod.
JUPYTERHUB_PROXY_POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "proxy-7f4c9d6b8-x2x8q", "namespace": "jhub",
                 "labels": {"component": "proxy", "release": "jhub"}},
    "spec": {"containers": [{"name": "chp", "image": "jupyterhub/configurable-http-proxy:4.2.3",
                             "ports": [{"name": "http", "containerPort": 8000},
                                       {"name": "api", "containerPort": 8001}]}]},
}

ENTRIES = {
    e.name: e
    for e in (
        Entry("istio-bookinfo", ("istio-bookinfo.yaml",),
              services={("default", "details", 9080): {"details-v1"},
                        ("default", "ratings", 9080): {"ratings-v1"},
                        ("default", "reviews", 9080): {"reviews-v1", "reviews-v2", "reviews-v3"},
                        ("default", "productpage", 9080): {"productpage-v1"}}),
        Entry("microservices-demo", ("microservices-demo.yaml",),
              services={("default", "emailservice", 5000): {"emailservice"},
                        ("default", "frontend", 80): {"frontend"},
                        ("default", "currencyservice", 7000): {"currencyservice"},
                        ("default", "redis-cart", 6379): {"redis-cart"}}),
        Entry("guestbook-all-in-one", ("guestbook-all-in-one.yaml",),
              services={("default", "redis-master", 6379): {"redis-master"},
                        ("default", "redis-replica", 6379): {"redis-replica"},
                        ("default", "frontend", 80): {"frontend"}}),
        Entry("ingress-nginx-cloud", ("ingress-nginx-cloud.yaml",), namespaces=("ingress-nginx",),
              services={("ingress-nginx", "ingress-nginx-controller", 80): {"ingress-nginx-controller"},
                        ("ingress-nginx", "ingress-nginx-controller", 443): {"ingress-nginx-controller"},
                        ("ingress-nginx", "ingress-nginx-controller-admission", 443): {"ingress-nginx-controller"}}),
        Entry("kind-loadbalancer-usage", ("kind-loadbalancer-usage.yaml",),
              services={("default", "foo-service", 5678): {"foo-app", "bar-app"}}),
        Entry("kind-ingress-usage", ("kind-ingress-usage.yaml",),
              services={("default", "foo-service", 8080): {"foo-app"},
                        ("default", "bar-service", 8080): {"bar-app"}}),
        Entry("kind-example-config", ("kind-example-config.yaml",)),
        Entry("glusterfs-endpoints", ("glusterfs-endpoints.json",), extra=(GLUSTERFS_SERVICE,)),
        Entry("jupyterhub-proxy-public-svc-dump", ("jupyterhub-proxy-public-svc-dump.yaml",),
              namespaces=("jhub",), extra=(JUPYTERHUB_PROXY_POD,),
              services={("jhub", "proxy-public", 80): {"proxy-7f4c9d6b8-x2x8q"}}),
    )
}


def load_docs(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]


@dataclass
class LivePod:
    name: str       # the Pod's name in the cluster (e.g. reviews-v2-5d6c9f7b8-r2)
    workload: str   # the Deployment it belongs to, or its own name for a bare Pod
    node: str       # node1 / node2
    lab_pod: str    # pod<i>-<j> in Topology.simple
    ip: str


@dataclass
class Live:
    objects: list[dict]
    pods: list[LivePod]

    def pods_of(self, workloads: set[str]) -> list[LivePod]:
        return [p for p in self.pods if p.workload in workloads]

    def pods_per_node(self) -> int:
        return max([sum(1 for p in self.pods if p.node == n) for n in NODES] + [1])


def node_objects() -> list[dict]:
    return [{
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": n, "labels": {"kubernetes.io/hostname": n,
                                           "topology.kubernetes.io/zone": f"zone-{i}"}},
        "spec": {"podCIDR": f"10.244.{i}.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": f"192.0.2.{i}"},
                                 {"type": "Hostname", "address": n}]},
    } for i, n in enumerate(NODES, start=1)]


def _running(pod: dict, node: str, ip: str) -> dict:
    pod = copy.deepcopy(pod)
    pod.setdefault("spec", {})["nodeName"] = node
    pod["status"] = {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    return pod


def live_objects(entry: Entry) -> Live:
    """The entry's objects as a running cluster holds them (see the module docstring)."""
    objects: list[dict] = []
    pods: list[LivePod] = []
    per_node = {n: 0 for n in NODES}

    def place(pod: dict, workload: str) -> None:
        k = len(pods)
        node = NODES[k % len(NODES)]
        i = NODES.index(node) + 1
        per_node[node] += 1
        j = per_node[node]
        ip = f"10.244.{i}.{9 + j}"
        objects.append(_running(pod, node, ip))
        pods.append(LivePod(pod["metadata"]["name"], workload, node, f"pod{i}-{j}", ip))

    docs = [d for p in entry.paths for d in load_docs(p)] + [copy.deepcopy(x) for x in entry.extra]
    for doc in docs:
        kind = doc.get("kind")
        if kind == "Pod":
            place(doc, doc["metadata"]["name"])
            continue
        objects.append(doc)
        if kind in WORKLOAD_KINDS:
            meta, spec = doc.get("metadata", {}), doc.get("spec", {})
            template = spec.get("template", {})
            replicas = spec.get("replicas", 1)
            for r in range(replicas):
                name = (f"{meta['name']}-{r}" if kind == "StatefulSet"
                        else f"{meta['name']}-5d6c9f7b8-r{r}")
                pod: dict[str, Any] = {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name,
                                 "labels": dict(template.get("metadata", {}).get("labels", {}))},
                    "spec": copy.deepcopy(template.get("spec", {})),
                }
                if meta.get("namespace"):
                    pod["metadata"]["namespace"] = meta["namespace"]
                place(pod, meta["name"])
    objects.extend(node_objects())
    return Live(objects, pods)


def write_live(entry: Entry, directory: Path) -> tuple[Path, Live]:
    live = live_objects(entry)
    path = directory / f"{entry.name}-live.yaml"
    path.write_text(yaml.safe_dump_all(live.objects, sort_keys=False))
    return path, live

