"""Compiling a large cluster with several processes, for one-shot commands.

``dataplane compile`` spends most of its time validating, planning and
rendering Services one by one. :func:`compile_sharded` cuts the Services into
contiguous ranges of the namespace/name order in which they are planned and
rendered, gives each range (with its EndpointSlices, and every Node) to one
process, and lays out the parts in that order: the text and the warnings are
those of the serial path, because every step it runs per shard is a step the
serial path runs per Service.

Pods are namespaced and a Service selects Pods of its own namespace only, so a
shard gets every Pod of the namespaces its Services are in (a namespace whose
Services two shards share gives its Pods to both; Pods of a namespace without
Services go to the first shard, which validates them) and derives its Services'
EndpointSlices with the serial path's controller code (:func:`with_derived_slices`).

Whatever needs the whole input is left to the serial path: this returns None
(and the caller compiles serially) for input with other kinds of object
(Endpoints, kinds the dataplane ignores), objects whose identity it cannot read
from the raw manifest, duplicates, any problem or warning while validating,
a derived EndpointSlice whose name another shard may already hold (derived
names are unique within a namespace: see :func:`_names_may_clash`), an externalIP or
load-balancer IP that may be another Service's ClusterIP (the allocated ClusterIP
wins, which takes every Service's ClusterIPs to decide), and errors such as an
unknown node. The one number shards may need from each other, the endpoint count
that makes a cluster "large" for iptables, is summed across processes before
rendering, unless a shard's own endpoints already pass the mark.

Children are forked (they share the loaded documents copy-on-write), so this
is only for a single-threaded program such as the CLI.
"""
from __future__ import annotations

import bisect
import fcntl
import os
from typing import Any, Optional, Sequence, Union

from .backends import get_backend
from .controllers.endpointslices import with_derived_slices
from .errors import DataplaneError
from .forkwork import read_message, write_message
from .input.cluster import parse_cluster
from .input.loader import Document
from .ipaddrs import canonical_ip, is_canonical_ipv4
from .model import LABEL_SERVICE_NAME
from .plan import (
    Family,
    Mode,
    assemble,
    claim_conflicts,
    cluster_ip_owners,
    frontend_claims,
    node_context,
    plan_service,
    slices_by_service,
)

# Below this many Services a second process does not pay for itself.
MIN_SERVICES_PER_SHARD = 1000
# The parent's share of the Services, over a child's: its part needs no pickling or sending.
PARENT_EXTRA = 0.1

_SERVICE = ("v1", "Service")
_SLICE = ("discovery.k8s.io/v1", "EndpointSlice")
_POD = ("v1", "Pod")
_CONFIG = ("kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration")
_SHARED = {("v1", "Node"), _CONFIG}


class _Bail(Exception):
    """This shard's input needs the serial path."""


def compile_sharded(docs: Sequence[Document], node: str, *, mode: Optional[Mode], family: Family,
                    workers: int, external_ip_cidrs: Optional[Sequence[str]] = None
                    ) -> Optional[tuple[str, tuple[str, ...]]]:
    """(rules text, warnings) as the serial compile of ``docs`` gives them, computed by up to
    ``workers`` processes; None when the input is small or needs the serial path (see above).
    ``external_ip_cidrs`` as for :func:`dataplane.compiler.compile_rules`."""
    sharded = _shards(docs, workers)
    if sharded is None:
        return None
    shards, services = sharded
    target = _Target(node, mode, family, None if external_ip_cidrs is None else tuple(external_ip_cidrs))
    # the last child, whose share is the smallest, also looks for claimed ClusterIPs
    children = [_fork(shard, target, services if k == len(shards) - 1 else None)
                for k, shard in enumerate(shards[1:], 1)]
    try:
        mine = _Shard(shards[0], target)
    except _Bail:
        return _abandon(children)
    # a backend's large-cluster rule (iptables: see is_large_cluster) counts the endpoints of every
    # shard; the parent renders its part before waiting when it needs no count from the children
    backend = mine.backend
    decided = backend.settled(mine.endpoint_count)
    own = mine.render(backend.large_cluster(mine.endpoint_count)) if decided else None
    first = [read_message(c.results) for c in children]  # a part, an endpoint count, or None
    if any(m is None for m in first):
        return _abandon(children)
    large = backend.large_cluster(mine.endpoint_count + sum(m[1] for m in first))
    for c, m in zip(children, first):
        if m[0] == "count":
            _send(c.control, b"L" if large else b"S")
    if own is None:
        own = mine.render(large)
    results = [m[2] if m[0] == "part" else read_message(c.results) for c, m in zip(children, first)]
    _abandon(children)  # (all have sent what they had to)
    if any(r is None for r in results):
        return None
    parts = [(mine.warnings, mine.claims, own), *results]
    warnings = (*mine.context_warnings, *(w for ws, _, _ in parts for w in ws),
                *claim_conflicts(c for _, claims, _ in parts for c in claims))
    return backend.render_parts(mine.plan, [part for _, _, part in parts]), warnings


def _abandon(children: Sequence["_Child"]) -> None:
    """Close every pipe to and from the children (one still waiting for a verdict or writing
    its part then exits) and reap them."""
    for c in children:
        for fd in (c.control, c.results):
            try:
                os.close(fd)
            except OSError:  # closed already
                pass
        os.waitpid(c.pid, 0)
    return None


def _shards(docs: Sequence[Document], workers: int
            ) -> Optional[tuple[list[list[Document]], list[tuple[tuple[str, str], dict]]]]:
    """The documents of each shard, in input order as the serial path reads them (Nodes and
    the configuration in every one, each Pod in every shard planning a Service of its
    namespace), and every Service (its key and raw object); or None."""
    # per document: its Service's key; None: shared; a namespace (a str): a Pod's
    owners: list[Union[None, str, tuple[str, str]]] = []
    services: set[tuple[str, str]] = set()
    service_objs: list[tuple[tuple[str, str], dict]] = []
    slice_names: list[tuple[tuple[str, str], str]] = []  # (owner, name) of each EndpointSlice
    seen: set[tuple] = set()
    for doc in docs:
        obj = doc.obj
        kind = (obj.get("apiVersion"), obj.get("kind"))
        if kind == _POD:  # (a Pod given twice goes twice to the same shards, which report it)
            namespace = _pod_namespace(obj)
            if namespace is None:
                return None
            owners.append(namespace)
            continue
        classified = shard_owner(obj, kind, seen)
        if classified is None:
            return None
        owner, identity = classified
        owners.append(owner)
        if kind == _SERVICE:
            services.add(identity)
            service_objs.append((identity, obj))
        elif kind == _SLICE:
            slice_names.append((owner, identity[1]))
    n = min(workers, len(services) // MIN_SERVICES_PER_SHARD)
    if n < 2:
        return None
    order = sorted(services)
    # contiguous ranges; the parent's (shard 0) a little longer, as a child's part then still
    # has to be pickled and sent while the parent's is ready where it is needed
    weights = [1 + PARENT_EXTRA, *[1] * (n - 1)]
    bounds = [round(len(order) * sum(weights[:k + 1]) / sum(weights)) for k in range(n)]
    shard_of = {key: bisect.bisect_right(bounds, rank) for rank, key in enumerate(order)}
    if _names_may_clash(shard_of, slice_names):
        return None
    # the shards planning a Service of each namespace (a contiguous run of shards)
    namespace_shards: dict[str, list[list[Document]]] = {}
    shards: list[list[Document]] = [[] for _ in range(n)]
    for (namespace, _), k in shard_of.items():
        held = namespace_shards.setdefault(namespace, [])
        if not held or held[-1] is not shards[k]:
            held.append(shards[k])
    first = [shards[0]]
    for doc, owner in zip(docs, owners):
        if owner is None:
            for shard in shards:
                shard.append(doc)
        elif type(owner) is str:  # a Pod: to every shard its namespace's Services are planned in
            for shard in namespace_shards.get(owner, first):
                shard.append(doc)
        else:  # a slice of no Service in the input: any shard validates it
            shards[shard_of.get(owner, 0)].append(doc)
    return shards, service_objs


# The API server's generateName: the base is the Service's name and "-", cut to 63 - 5
# characters (see dataplane.controllers.endpointslices.slice_name)
_DERIVED_BASE = 63 - 5


def _names_may_clash(shard_of: dict[tuple[str, str], int],
                     slice_names: Sequence[tuple[tuple[str, str], str]]) -> bool:
    """Whether an EndpointSlice derived in one shard may take a name that another shard holds:
    the serial path gives each derived slice a name not yet used in its namespace, by
    Services in namespace/name order, and a shard sees only its own slices and Services.
    A derived name is the Service's name base and five characters, so a clash needs two
    Services of one namespace whose bases are equal, or an input slice named like another
    shard's Service's base and five characters; both are read from the raw manifests."""
    base_shard: dict[tuple[str, str], int] = {}
    for (namespace, name), k in shard_of.items():
        base = (namespace, f"{name}-"[:_DERIVED_BASE])
        if base_shard.setdefault(base, k) != k:
            return True
    for owner, name in slice_names:
        k = base_shard.get((owner[0], name[:-5]))
        if len(name) > 5 and k is not None and k != shard_of.get(owner, 0):
            return True
    return False


def _strs(value: Any) -> list[str]:
    """The strings of a raw list field (or a lone string); anything else: none."""
    if type(value) is str:
        return [value]
    return [v for v in value if type(v) is str] if type(value) is list else []


def _canonical(ip: str) -> Optional[str]:
    try:
        return canonical_ip(ip)
    except ValueError:  # the parser reports it (and the shards bail)
        return None


def _may_claim_a_cluster_ip(services: Sequence[tuple[tuple[str, str], dict]]) -> bool:
    """Whether an externalIP or load-balancer status IP of a Service may be the ClusterIP of
    another, read from the raw manifests, erring on the side of yes: a shard plans its own
    Services only, so such input goes to the serial path."""
    claimants: dict[str, set[tuple[str, str]]] = {}  # canonical claimed IP -> the Services claiming it
    for key, obj in services:
        spec, status = obj.get("spec"), obj.get("status")
        raw = _strs(spec.get("externalIPs")) if type(spec) is dict and "externalIPs" in spec else []
        if status:
            lb = status.get("loadBalancer") if type(status) is dict else None
            ingress = lb.get("ingress") if type(lb) is dict else None
            if type(ingress) is list:
                raw += _strs([i.get("ip") for i in ingress if type(i) is dict])
        for ip in raw:
            canonical = _canonical(ip)
            if canonical is not None:
                claimants.setdefault(canonical, set()).add(key)
    if not claimants:
        return False
    for key, obj in services:
        spec = obj.get("spec")
        if type(spec) is not dict:
            continue
        # the parser takes clusterIPs, or a lone clusterIP (a clusterIP other than clusterIPs[0]
        # is an error it reports)
        ips = spec.get("clusterIPs") or spec.get("clusterIP")
        for ip in _strs(ips):
            if ip not in claimants and is_canonical_ipv4(ip):
                continue  # the common case: a canonical IPv4 ClusterIP nobody claims
            found = claimants.get(ip) or claimants.get(_canonical(ip) or "")
            if found and (len(found) > 1 or key not in found):
                return True
    return False


def shard_owner(obj: dict, kind: tuple[Any, Any], seen: set[tuple]
                ) -> Optional[tuple[Optional[tuple[str, str]], tuple[str, str]]]:
    """How a document of ``kind`` (apiVersion, kind) is sharded: (its owner, its identity), the
    owner being the (namespace, name) of the Service it belongs to (a Service itself, an
    EndpointSlice by its service-name label) or None for a document every shard needs (a Node,
    the KubeProxyConfiguration); None when the input needs the serial path: another kind, an
    unusual identity (:func:`raw_identity`), an object met before (``seen``, which this adds
    to), an EndpointSlice without a Service label."""
    identity = ("", "") if kind == _CONFIG else raw_identity(obj)  # one configuration at most
    if identity is None or (kind, identity) in seen:
        return None
    seen.add((kind, identity))
    if kind == _SERVICE:
        return identity, identity
    if kind == _SLICE:
        labels = obj["metadata"].get("labels")
        owner = labels.get(LABEL_SERVICE_NAME) if type(labels) is dict else None
        return ((identity[0], owner), identity) if type(owner) is str else None
    return (None, identity) if kind in _SHARED else None


def raw_identity(obj: dict) -> Optional[tuple[str, str]]:
    """(namespace, name) as the parser will read them ("default" for an unset namespace), or
    None when the raw metadata is unusual (the serial path then validates and reports it)."""
    metadata = obj.get("metadata")
    if type(metadata) is not dict:
        return None
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if type(name) is not str or not name or not (namespace is None or type(namespace) is str):
        return None
    return namespace or "default", name


def _pod_namespace(obj: dict) -> Optional[str]:
    """A Pod's namespace as the parser will read it ("default" when unset or empty); None when
    the raw metadata is unusual (the serial path then validates and reports it)."""
    metadata = obj.get("metadata")
    if type(metadata) is not dict:
        return None
    namespace = metadata.get("namespace")
    if namespace is None or namespace == "":
        return "default"
    return namespace if type(namespace) is str else None


class _Target:
    """What every shard compiles for: the node, backend, family and externalIP allow-list."""

    def __init__(self, node: str, mode: Optional[Mode], family: Family,
                 external_ip_cidrs: Optional[tuple[str, ...]]) -> None:
        self.node, self.mode, self.family, self.external_ip_cidrs = node, mode, family, external_ip_cidrs


class _Shard:
    """One shard validated and planned; rendered once the cluster-wide endpoint count is known."""

    def __init__(self, docs: Sequence[Document], target: _Target) -> None:
        try:
            parsed = parse_cluster(docs)
            if parsed.warnings:
                raise _Bail()
            # (its Pods are every Pod of its Services' namespaces: see _shards)
            cluster = with_derived_slices(parsed.cluster)
            ctx = node_context(cluster, target.node, family=target.family, mode=target.mode,
                               external_ip_cidrs=target.external_ip_cidrs)
        except DataplaneError:  # InputError among them: the serial path reports it
            raise _Bail() from None
        index = slices_by_service(cluster.endpoint_slices, target.family)
        # (an externalIP that is another shard's ClusterIP sends the input to the serial path:
        # see _may_claim_a_cluster_ip)
        owners = cluster_ip_owners(cluster.services)
        ports, warnings = [], []
        for svc in sorted(cluster.services, key=lambda s: (s.namespace, s.name)):
            plans, w = plan_service(svc, index.get(svc.key, ()), ctx, owners=owners)
            ports.extend(plans)
            warnings.extend(w)
        self.plan = assemble(ctx, ports)
        self.backend = get_backend(self.plan.mode)
        self.context_warnings = ctx.warnings
        self.warnings = warnings
        self.claims = [frontend_claims(p) for p in ports]
        self.endpoint_count = sum(len(p.endpoints) for p in ports)

    def render(self, large: bool) -> Any:
        """This shard's part of the rules (``large``: the backend's large-cluster mode)."""
        return self.backend.render_ports(self.plan, self.plan.services, large)

    def part(self, large: bool) -> tuple:
        """What a child sends: (warnings, frontend claims, rendered part)."""
        return self.warnings, self.claims, self.render(large)


class _Child:
    def __init__(self, pid: int, results: int, control: int) -> None:
        self.pid, self.results, self.control = pid, results, control


def _fork(docs: Sequence[Document], target: _Target,
          services: Optional[Sequence[tuple[tuple[str, str], dict]]] = None) -> _Child:
    """A child that validates and plans ``docs`` and sends ("part", count, its part) when its
    part does not depend on the other shards (nftables, or iptables when this shard's endpoints
    alone make a large cluster); otherwise ("count", count), then
    waits for the parent's verdict (L: large, S: not large, X: stop) before sending its part.
    Sends nothing when its input needs the serial path, or when ``services`` (every Service of
    the input, given to one child) may claim another's ClusterIP (:func:`_may_claim_a_cluster_ip`)."""
    results_r, results_w = os.pipe()
    control_r, control_w = os.pipe()
    try:  # parts are megabytes: fewer, larger pipe reads
        fcntl.fcntl(results_w, fcntl.F_SETPIPE_SZ, 1 << 20)
    except OSError:  # above /proc/sys/fs/pipe-max-size for this user: keep the default
        pass
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller
        status = 1
        try:
            os.close(results_r)
            os.close(control_w)
            if services is not None and _may_claim_a_cluster_ip(services):
                raise _Bail()  # the serial path decides who keeps the address
            shard = _Shard(docs, target)
            count = shard.endpoint_count
            if shard.backend.settled(count):
                write_message(results_w, ("part", count, shard.part(shard.backend.large_cluster(count))))
            else:
                write_message(results_w, ("count", count))
                verdict = os.read(control_r, 1)
                if verdict in (b"L", b"S"):
                    write_message(results_w, shard.part(verdict == b"L"))
            status = 0
        finally:  # (a _Bail, or anything else, exits without a message)
            os._exit(status)
    os.close(results_w)
    os.close(control_r)
    return _Child(pid, results_r, control_w)


def _send(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except BrokenPipeError:  # the child is gone; its missing result says so
        pass
