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
* The objects the allocation never changes (those that are not Services) are
  printed by every process, in chunks of consecutive documents each takes from a
  shared dispenser (a pipe holding the chunk numbers) when it is free: a printed
  document is a function of the object alone (:func:`dataplane.dump.dump_part`).
  A worker takes chunks once its Services are sent; the parent takes them while
  it waits for the workers' Services (a thread per worker reads what they send,
  so they never wait for it), then allocates for the whole cluster, fills in and
  prints the Service documents, and takes chunks again until none is left. So
  the processes end together whatever printing and allocating cost (within a
  chunk, :data:`SMALLEST_CHUNK`). The parent checks that every object printed
  before the filling came out of it untouched (else it prints it again), prints
  what a worker that died took, and joins the parts in order.

Input that needs the whole cluster to validate (other kinds: Pods, Endpoints,
ServiceCIDRs, ClusterConfigurations, ignored kinds; unreadable identities;
duplicates; slices without a Service label), small input, and a worker that
fails all take the serial path (None). Errors of the allocation itself are
raised as the serial path raises them, and nothing is printed.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
import os
import select
import struct
from typing import Any, Callable, Optional, Sequence

from . import forkwork
from .controllers.allocation import AllocationResult, fill_documents
from .dump import dump_part, join_parts, splittable
from .errors import InputError
from .input.cluster import parse_cluster
from .input.loader import Document
from .parallel import shard_owner
from .model import Cluster, Service

__all__ = ["allocate_sharded", "MIN_SERVICES_PER_SHARD"]

# Below this many Services a second process does not pay for itself.
MIN_SERVICES_PER_SHARD = 1000
# How the work is balanced. Validation: the parent's shard of Services is ``1 + PARENT_EXTRA``
# times as long as a worker's (measured at 10k Services: the parent's validation is no slower,
# and it prints while it waits, so no more). Printing: the objects that are not Services are cut
# into chunks, taken in order as each process is free, each chunk CHUNK_SHARE of what the
# earlier ones left per process (so the first are large and few), down to SMALLEST_CHUNK of all
# of them: the processes end within about one smallest chunk's printing, and each chunk costs
# one dump_part call (at 10k, 16 calls print the objects in no more CPU time than one). Nothing
# here depends on how fast printing or allocating is: only a per-call cost, if dump_part ever
# had a large one, would ask for fewer, larger chunks (a larger SMALLEST_CHUNK).
PARENT_EXTRA = 0.0
CHUNK_SHARE = 0.5
SMALLEST_CHUNK = 1 / 64

_SERVICE = ("v1", "Service")

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
    chunks = _chunks(docs, len(shards))
    with _Dispenser(len(chunks)) as dispenser:
        children = [forkwork.start(_worker(shards[k], docs, chunks, dispenser, fmt)) for k in range(1, len(shards))]
        forkwork.prefetch(children)  # (a thread per worker reads what it sends: it never waits for the parent)
        try:
            return _lead(docs, shards[0], chunks, dispenser, children, fmt, allocate)
        finally:
            forkwork.stop(children)


def _lead(docs: Sequence[Document], shard: Sequence[Document], chunks: Sequence[Sequence[Run]],
          dispenser: "_Dispenser", children: Sequence[forkwork.Worker], fmt: str,
          allocate: Callable[[Cluster], AllocationResult]) -> Optional[tuple[str, AllocationResult]]:
    """The parent's part of :func:`allocate_sharded`, the workers started."""
    try:
        mine = _validate(shard)
    except _Bail:
        return None
    objects: Sequence[Any] = [doc.obj for doc in docs]
    parts: dict[int, str] = {}  # a run's start -> its text
    early: list[Run] = []  # the runs printed before the filling
    while not all(map(forkwork.ready, children)):  # (a worker that bailed stops this too)
        taken = dispenser.take()
        if taken is None:
            break
        for run in chunks[taken]:
            parts[run[0]] = _print(objects, run, fmt)
            early.append(run)
    services = list(mine.services)
    for child in children:
        message = forkwork.receive(child)  # ("services", (Service, ...)); None: it bailed or died
        if type(message) is not tuple or message[0] != "services":
            return None
        services.extend(message[1])
    result = allocate(dataclasses.replace(mine, services=tuple(services)))
    objects = fill_documents(docs, result)
    for run in early:
        if not _untouched(docs, objects, [run]):
            parts[run[0]] = _print(objects, run, fmt)
    everything_in_chunks = [run for chunk in chunks for run in chunk]
    for run in _complement(len(docs), everything_in_chunks):  # the Services
        parts[run[0]] = _print(objects, run, fmt)
    while (taken := dispenser.take()) is not None:
        for run in chunks[taken]:
            parts[run[0]] = _print(objects, run, fmt)
    for child in children:
        for start, end, text in _printed_by(child):
            if _untouched(docs, objects, [(start, end)]):
                parts[start] = text
    for run in everything_in_chunks:  # taken by a worker that died, or changed by the filling
        if run[0] not in parts:
            parts[run[0]] = _print(objects, run, fmt)
    return join_parts([parts[start] for start in sorted(parts)], fmt), result


def _printed_by(child: forkwork.Worker) -> list[tuple[int, int, str]]:
    """The (start, end, text) of every run a worker printed and sent, until it says it is done
    (or ends: a worker that died sent only some)."""
    out: list[tuple[int, int, str]] = []
    while True:
        message = forkwork.receive(child)  # ("printed", [(start, end, text), ...]) or ("done",)
        if type(message) is not tuple or message[0] != "printed":
            return out
        out.extend(message[1])


def _validate(docs: Sequence[Document]) -> Cluster:
    """A shard validated: its cluster, or _Bail for any problem or warning."""
    try:
        parsed = parse_cluster(docs)
    except InputError:
        raise _Bail() from None
    if parsed.warnings:
        raise _Bail()
    return parsed.cluster


def _worker(shard: Sequence[Document], docs: Sequence[Document], chunks: Sequence[Sequence[Run]],
            dispenser: "_Dispenser", fmt: str) -> Callable[[Callable[[Any], None]], None]:
    """A worker's job: validate ``shard`` and send ("services", its Services), then print the
    chunks it takes from ``dispenser`` (each unchanged by the allocation) and send
    ("printed", [(start, end, text), ...]) for each, then ("done",); nothing when the shard
    needs the serial path."""
    def work(send: Callable[[Any], None]) -> None:
        try:
            cluster = _validate(shard)
        except _Bail:
            return
        services: tuple[Service, ...] = cluster.services
        send(("services", services))
        objects = [doc.obj for doc in docs]
        while (taken := dispenser.take()) is not None:
            send(("printed", [(start, end, _print(objects, (start, end), fmt)) for start, end in chunks[taken]]))
        send(("done",))

    return work


class _Dispenser:
    """Chunk numbers that several processes take, each number once: a pipe filled before the
    workers are forked (they share it), its write end closed, read two bytes at a time (reads of
    a pipe are atomic, so no two processes get the same number)."""

    _NUMBER = struct.Struct(">H")
    MAX = select.PIPE_BUF // _NUMBER.size  # (how many numbers one atomic write holds)

    def __init__(self, count: int) -> None:
        """A dispenser of the numbers 0 .. ``count - 1`` (at most :attr:`MAX`), in order."""
        if not 0 <= count <= self.MAX:
            raise ValueError(f"a dispenser holds 0 to {self.MAX} numbers, not {count}")
        self._read, write = os.pipe()
        try:
            os.write(write, b"".join(self._NUMBER.pack(n) for n in range(count)))  # (one atomic write)
        finally:
            os.close(write)

    def take(self) -> Optional[int]:
        """The next number, or None when every number is taken."""
        data = os.read(self._read, self._NUMBER.size)
        return self._NUMBER.unpack(data)[0] if len(data) == self._NUMBER.size else None

    def __enter__(self) -> "_Dispenser":
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._read)


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


def _chunks(docs: Sequence[Document], processes: int) -> list[list[Run]]:
    """The objects that are not Services (the allocation changes none of them), in document
    order, cut into chunks for ``processes`` processes to take in turn: each
    :data:`CHUNK_SHARE` of what is left per process, and at least :data:`SMALLEST_CHUNK` of
    them all (at most :attr:`_Dispenser.MAX` chunks); each chunk as its runs of consecutive
    documents."""
    fixed = [i for i, doc in enumerate(docs) if _kind(doc.obj) != _SERVICE]
    smallest = max(1, math.ceil(len(fixed) * SMALLEST_CHUNK), math.ceil(len(fixed) / _Dispenser.MAX))
    out = []
    at = 0
    while at < len(fixed):
        size = max(smallest, math.ceil((len(fixed) - at) * CHUNK_SHARE / processes))
        runs: list[Run] = []
        for i in fixed[at:at + size]:
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
        out.append(runs)
        at += size
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
        classified = shard_owner(obj, kind, seen)
        if classified is None:
            return None
        owner, identity = classified
        owners.append(owner)
        if kind == _SERVICE:
            services.append(identity)
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

