"""``dataplane allocate`` of a large cluster with several processes.

The serial command validates every object, allocates, and prints every object
again (Services with their allocated fields, everything else as it was read).
:func:`allocate_sharded` gives the same text with the work spread over forked
workers (sharing the read documents copy-on-write):

* Validation is cut like :mod:`dataplane.parallel`'s: the Services in contiguous
  runs of input order, each with its EndpointSlices and every Node and the
  KubeProxyConfiguration; each process validates one shard. A shard with any
  problem or warning sends the whole input to the serial path, which reports
  it; when every shard is clean, so is the whole input (duplicates are refused
  beforehand from the raw objects, and the checks that span objects, e.g. "a
  Service with a selector has no EndpointSlice", look at a Service and its own
  slices only), and its Services are the shards' Services in shard order.
* Every process then prints a share of the objects the allocation never
  changes (those that are not Services) before the allocation is known: a
  printed document is a function of the object alone (:func:`dataplane.dump.dump_part`).
  The parent gets the workers' Services, allocates for the whole cluster,
  fills in the Service documents and prints them. It checks that every object
  printed early came out of the filling untouched (else it prints it again),
  and joins the parts in order.

Input that needs the whole cluster to validate (other kinds: Pods, Endpoints,
ServiceCIDRs, ClusterConfigurations, ignored kinds; unreadable identities;
duplicates; slices without a Service label), small input, and a worker that
fails all take the serial path (None). Errors of the allocation itself are
raised as the serial path raises them, and nothing is printed.
"""
from __future__ import annotations

import bisect
import dataclasses
from typing import Any, Callable, Optional, Sequence

from . import forkwork
from .controllers.allocation import AllocationResult, fill_documents
from .dump import dump_part, join_parts, splittable
from .errors import InputError
from .input.cluster import parse_cluster
from .input.loader import Document
from .parallel import raw_identity
from .model import LABEL_SERVICE_NAME, Cluster, Service

__all__ = ["allocate_sharded", "MIN_SERVICES_PER_SHARD"]

# Below this many Services a second process does not pay for itself.
MIN_SERVICES_PER_SHARD = 1000
# How the work is balanced (measured at 10k Services, CPU time per process). The parent needs
# every worker's Services before it allocates; its shard of Services to validate is as long as
# a worker's (PARENT_EXTRA: how much longer): a worker still pickles and sends its Services when
# its validation ends, but the parent's validation was measured slower (its writes to the
# shared documents copy pages the fork shares). Then the parent unpickles the Services,
# allocates, fills in and prints the Services and joins the parts, while a worker prints the
# other objects: the parent's share of those (by format; in JSON they print much faster than in
# YAML) evens out the two.
PARENT_EXTRA = 0.0
PARENT_PRINT_SHARE = {"yaml": 0.4, "json": 0.0}

_SERVICE = ("v1", "Service")
_SLICE = ("discovery.k8s.io/v1", "EndpointSlice")
_CONFIG = ("kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration")
_SHARED = {("v1", "Node"), _CONFIG}

Run = tuple[int, int]  # documents [start, end) printed as one part


class _Bail(Exception):
    """The input needs the serial path."""


def allocate_sharded(docs: Sequence[Document], fmt: str, workers: int,
                     allocate: Callable[[Cluster], AllocationResult]) -> Optional[tuple[str, AllocationResult]]:
    """(the text ``dataplane allocate --format fmt`` prints, the allocation) for ``docs``,
    computed by up to ``workers`` processes, or None when the input is small or needs the
    serial path (see the module doc). ``allocate`` allocates for a validated cluster (it may
    raise InputError or UsageError, which propagate: nothing was printed). The result's
    cluster holds every Service, but only the first shard's EndpointSlices."""
    if not splittable([doc.obj for doc in docs], fmt):
        return None
    shards = _shards(docs, workers, PARENT_EXTRA)
    if shards is None:
        return None
    early, *runs = _print_runs(docs, len(shards) - 1, fmt)  # the parent's, then each worker's
    children = [forkwork.start(_worker(shards[k], docs, runs[k - 1], fmt)) for k in range(1, len(shards))]
    try:
        try:
            mine = _validate(shards[0])
        except _Bail:
            return None
        services = list(mine.services)
        for child in children:  # (read at once: a worker prints only once its Services are sent)
            message = forkwork.receive(child)  # ("services", (Service, ...)); None: it bailed or died
            if type(message) is not tuple or message[0] != "services":
                return None
            services.extend(message[1])
        objects: Sequence[Any] = [doc.obj for doc in docs]
        parts = {run[0]: _print(objects, run, fmt) for run in early}  # a run's start -> its text
        result = allocate(dataclasses.replace(mine, services=tuple(services)))
        objects = fill_documents(docs, result)
        for run in early:
            if not _untouched(docs, objects, [run]):
                parts[run[0]] = _print(objects, run, fmt)
        for run in _complement(len(docs), [run for some in (early, *runs) for run in some]):
            parts[run[0]] = _print(objects, run, fmt)
        for child, child_runs in zip(children, runs):
            texts = forkwork.receive(child) if _untouched(docs, objects, child_runs) else None
            if type(texts) is not list or len(texts) != len(child_runs):  # it died: print its runs here
                texts = [_print(objects, run, fmt) for run in child_runs]
            for (start, _), text in zip(child_runs, texts):
                parts[start] = text
        return join_parts([parts[start] for start in sorted(parts)], fmt), result
    finally:
        forkwork.stop(children)


def _validate(docs: Sequence[Document]) -> Cluster:
    """A shard validated: its cluster, or _Bail for any problem or warning."""
    try:
        parsed = parse_cluster(docs)
    except InputError:
        raise _Bail() from None
    if parsed.warnings:
        raise _Bail()
    return parsed.cluster


def _worker(shard: Sequence[Document], docs: Sequence[Document], runs: Sequence[Run], fmt: str
            ) -> Callable[[Callable[[Any], None]], None]:
    """A worker's job: validate ``shard`` and send ("services", its Services), then print the
    documents of ``runs`` (each unchanged by the allocation) and send their texts; nothing
    when the shard needs the serial path."""
    def work(send: Callable[[Any], None]) -> None:
        try:
            cluster = _validate(shard)
        except _Bail:
            return
        services: tuple[Service, ...] = cluster.services
        send(("services", services))
        objects = [doc.obj for doc in docs]
        send([_print(objects, run, fmt) for run in runs])

    return work


def _print(objects: Sequence[Any], run: Run, fmt: str) -> str:
    start, end = run
    return dump_part(objects[start:end], fmt, first=start == 0)


def _untouched(docs: Sequence[Document], objects: Sequence[Any], runs: Sequence[Run]) -> bool:
    """True if filling in the allocation left every document of ``runs`` the object read."""
    return all(objects[i] is docs[i].obj for start, end in runs for i in range(start, end))


def _complement(n: int, runs: Sequence[Run]) -> list[Run]:
    """The runs of documents [0, n) outside ``runs`` (disjoint, any order)."""
    out: list[Run] = []
    at = 0
    for start, end in sorted(runs):
        if start > at:
            out.append((at, start))
        at = end
    if at < n:
        out.append((at, n))
    return out


def _print_runs(docs: Sequence[Document], children: int, fmt: str) -> list[list[Run]]:
    """The runs of consecutive documents each process prints before the allocation is known,
    the parent's first: the objects that are not Services (the allocation changes none of
    them) in document order, the parent's share (:data:`PARENT_PRINT_SHARE`) first, the rest
    cut into ``children`` contiguous groups of about the same count."""
    fixed = [i for i, doc in enumerate(docs) if _kind(doc.obj) != _SERVICE]
    skip = round(len(fixed) * PARENT_PRINT_SHARE.get(fmt, 0.0))
    rest = fixed[skip:]
    groups = [fixed[:skip], *(rest[len(rest) * k // children:len(rest) * (k + 1) // children]
                               for k in range(children))]
    out = []
    for group in groups:
        runs: list[Run] = []
        for i in group:
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
        out.append(runs)
    return out


def _kind(obj: dict) -> tuple[Any, Any]:
    return obj.get("apiVersion"), obj.get("kind")


def _shards(docs: Sequence[Document], workers: int, parent_extra: float) -> Optional[list[list[Document]]]:
    """The documents each process validates, in input order (Nodes and the configuration in
    every one), the Services cut into contiguous runs of input order, the parent's (the first)
    ``1 + parent_extra`` times as long as a worker's; None when the input needs the serial path
    or is too small for more than one."""
    owners: list[Optional[tuple[str, str]]] = []  # per document: its Service's key; None: shared
    services: list[tuple[str, str]] = []
    seen: set[tuple] = set()
    for doc in docs:
        obj = doc.obj
        kind = _kind(obj)
        identity = ("", "") if kind == _CONFIG else raw_identity(obj)  # one configuration at most
        if identity is None or (kind, identity) in seen:
            return None
        seen.add((kind, identity))
        if kind == _SERVICE:
            services.append(identity)
            owners.append(identity)
        elif kind == _SLICE:
            labels = obj["metadata"].get("labels")
            owner = labels.get(LABEL_SERVICE_NAME) if type(labels) is dict else None
            if type(owner) is not str:
                return None
            owners.append((identity[0], owner))
        elif kind in _SHARED:
            owners.append(None)
        else:
            return None
    n = min(workers, len(services) // MIN_SERVICES_PER_SHARD)
    if n < 2:
        return None
    weights = [1 + parent_extra, *[1] * (n - 1)]
    bounds = [round(len(services) * sum(weights[:k + 1]) / sum(weights)) for k in range(n)]
    shard_of = {key: bisect.bisect_right(bounds, rank) for rank, key in enumerate(services)}
    shards: list[list[Document]] = [[] for _ in range(n)]
    for doc, owner in zip(docs, owners):
        if owner is None:
            for shard in shards:
                shard.append(doc)
        else:  # a slice of no Service in the input: any shard validates it
            shards[shard_of.get(owner, 0)].append(doc)
    return shards

