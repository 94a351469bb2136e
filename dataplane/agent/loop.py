"""The sync loop: messages from the sources into the store, batched syncs of the Proxiers.

Scheduling follows kube-proxy's ``BoundedFrequencyRunner`` (pkg/proxy/runner.go, ``burstSyncs``
1): changes are batched and a sync starts at most once per ``min_sync_period``
(:class:`SyncSchedule`); with no change a sync still runs every ``sync_period``,
and that one is a full resync (everything rewritten, repairing whatever changed
behind the agent's back). A sync that fails is retried with exponential back-off
(``min_sync_period`` doubled each time, at least :data:`MIN_RETRY` and at most
``sync_period``); the Proxier makes the retry a full sync.

The first sync waits until every source has caught up (delivered what was
written to it so far), so that a restarted agent never installs half a cluster;
a relist after a watch ``ERROR`` holds the syncs back the same way.

Each sync prints one line (:func:`sync_line`) that also says where its time went
(the Proxier's phases, the metrics, the garbage collector's pauses) and what reading
and handling the events it took in cost before it; the SyncStatus hears of every
sync, event, pending change and error.

The agent's loop keeps the cyclic garbage collector off the cluster's state
(``freeze_heap``). Left alone, its full collections walk every object again and again:
at 10k Services one walk took 0.5-0.8 s, every third sync of 1,000 events; while the
initial listing is read, 1.6 s of a 4.2 s first sync (in-process); and while events pile
up during a long sync (each queued event is alive), several seconds per sync. So:

* during a sync round the collector is paused, and after each successful one every
  object then alive is moved into its permanent generation (:func:`gc.freeze`, which
  costs nothing): what a sync builds (plans, rules) lives on, so walking it is waste;
* only the young generations are collected by count (:data:`GC_THRESHOLDS`), which
  frees the short-lived cycles where they are made;
* each periodic full sync unfreezes and collects everything once, then freezes again.

Reference counting still frees every object as soon as it is unused; only garbage
*cycles* that outlive two young collections wait for the next full sync (none were
found after a stream of syncs). The thresholds are restored when the loop ends.
"""
from __future__ import annotations

import gc
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

from ..errors import DataplaneError
from ..model import Cluster
from ..runtime.proxier import SyncResult
from .sources import Message
from .store import ObjectStore, Pending

#: seconds: the shortest wait before retrying a failed sync
MIN_RETRY = 0.5
#: seconds: the longest the loop waits before looking at the stop flag again
POLL = 0.25
#: attempts at the last sync before exiting when it keeps failing
FINAL_ATTEMPTS = 4
_KIND_ORDER = {"none": 0, "partial": 1, "full": 2}
#: :func:`gc.set_threshold` while the loop runs with ``freeze_heap``: the young generations as
#: usual, a full collection only after a million collections of the middle one (in practice, only
#: the one each periodic full sync runs; see the module doc)
GC_THRESHOLDS = (700, 10, 1_000_000)


class Status(Protocol):
    """What the loop reports to (:class:`dataplane.agent.health.SyncStatus`)."""

    def record_sync(self, *, family: str, kind: str, duration: float, ok: bool, counts=...) -> None:
        """``counts``: what the sync wrote, or a function giving it (called only when needed)."""
    def record_pending(self, *, services: int, endpoints: int) -> None: ...
    def record_event(self, kind: str, event_type: str) -> None: ...
    def record_error(self, reason: str) -> None: ...


class Syncer(Protocol):
    """One family's :class:`~dataplane.Proxier`, as the loop uses it."""

    family: str
    backend: Any  # the Backend: its count_rules(text) gives the counts of what a sync wrote (when asked)

    def sync(self, *, full: bool = False) -> SyncResult: ...


class SyncSchedule:
    """When the next sync is due: at most one per ``min_period``, at least one per ``period``,
    retries after a failure with exponential back-off. Times are ``clock()`` values."""

    def __init__(self, min_period: float, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        if min_period < 0 or period <= 0:
            raise ValueError("min_period must be >= 0 and period > 0")
        self.min_period = min_period
        self.period = period
        self.clock = clock
        self.last_start: Optional[float] = None
        self.last_full: Optional[float] = None
        self.pending = False
        self.failures = 0

    def request(self) -> None:
        """Something changed: a sync is wanted (batched with whatever else comes meanwhile)."""
        self.pending = True

    def retry_delay(self) -> float:
        """Seconds from the start of the failed sync to the next attempt."""
        base = max(self.min_period, MIN_RETRY)
        return min(base * 2 ** min(self.failures - 1, 30), max(self.period, base))

    def due(self) -> float:
        """The clock time at which the next sync should start (already passed: now)."""
        if self.last_start is None:
            return float("-inf")
        if self.failures:
            return self.last_start + self.retry_delay()
        if self.pending:
            return self.last_start + self.min_period
        return self.last_start + self.period

    def full_due(self, now: float) -> bool:
        """Whether the sync starting at ``now`` must be a full resync (``period`` since the last one)."""
        return self.last_full is not None and now - self.last_full >= self.period

    def started(self, now: float) -> None:
        """A sync starts now: the changes requested so far go into it."""
        self.last_start = now
        self.pending = False

    def finished(self, ok: bool, *, full: bool, start: float) -> None:
        """The sync that started at ``start`` ended; a failed one is retried."""
        if ok:
            self.failures = 0
            if full or self.last_full is None:
                self.last_full = start
        else:
            self.failures += 1


class GcTimer:
    """How long the cyclic garbage collector ran (wall clock, so including what finalizers let
    other threads do meanwhile) and how many unreachable objects it freed, while installed
    (``with``)."""

    def __init__(self) -> None:
        self.total = 0.0  # seconds, over every collection seen
        self.collected = 0  # unreachable objects freed (members of garbage cycles)
        self._started: Optional[float] = None

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.total += time.perf_counter() - self._started
            self.collected += info.get("collected", 0)
            self._started = None

    def __enter__(self) -> "GcTimer":
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


#: the phases of a sync round, in the order its line shows them (see :func:`sync_line`)
PHASES = ("plan", "render", "apply", "conntrack", "metrics", "other")


@dataclass
class SyncOutcome:
    """What one round of syncs (every family) did.

    ``phases``: seconds spent in each of :data:`PHASES` (summed over the families; "other" is the
    rest of ``duration``); ``gc``: seconds of garbage collection within ``duration``, which freed
    ``gc_freed`` objects in garbage cycles;
    ``handling``: seconds the loop spent putting the events of this round into the store
    before it; ``reading``: CPU seconds the other threads (the sources' readers, which decode
    and validate the events) used since the previous round started."""

    number: int
    ok: bool
    kind: str  # the largest kind over the families: full > partial > none
    duration: float
    results: tuple[SyncResult, ...]
    pending: Pending
    error: str = ""
    phases: tuple[tuple[str, float], ...] = ()
    gc: float = 0.0
    gc_freed: int = 0
    handling: float = 0.0
    reading: float = 0.0


def sync_line(o: SyncOutcome, retry_in: Optional[float] = None) -> str:
    """The one log line of a sync: what it did, what changed, and where the time went."""
    changed = (f"{o.pending.events} events, {len(o.pending.services)} Services and "
               f"{len(o.pending.endpoints)} EndpointSlices changed")
    if not o.ok:
        retry = f"; retrying in {retry_in:.1f}s with a full sync" if retry_in is not None else ""
        return f"sync {o.number} failed after {o.duration:.3f}s ({changed}): {o.error}{retry}"
    parts = []
    for r in o.results:
        part = f"{r.plan.family} {r.kind}: {r.changed} of {len(r.plan.services)} service ports written"
        if r.conntrack:
            part += f", {len(r.conntrack)} stale conntrack filters"
        parts.append(part)
    times = ", ".join(f"{name} {seconds:.3f}s" for name, seconds in o.phases)
    return (f"sync {o.number}: {o.kind} in {o.duration:.3f}s ({'; '.join(parts)}); {changed}; "
            f"took {times} (gc {o.gc:.3f}s of it, {o.gc_freed} objects freed); before it: "
            f"handling events {o.handling:.3f}s, "
            f"reading {o.reading:.3f}s CPU")


def round_phases(results: Sequence[SyncResult], metrics: float, duration: float) -> tuple[tuple[str, float], ...]:
    """:data:`PHASES` of a round: the Proxiers' phases summed over ``results``, ``metrics``
    seconds, and the rest of ``duration`` (never below 0) as "other"."""
    sums = dict.fromkeys(PHASES, 0.0)
    for r in results:
        for name, seconds in r.phases:
            sums[name] = sums.get(name, 0.0) + seconds
    sums["metrics"] = metrics
    sums["other"] = max(0.0, duration - sum(v for k, v in sums.items() if k != "other"))
    return tuple(sums.items())


class SyncLoop:
    """Reads messages, keeps the store, runs the syncs (see the module doc)."""

    def __init__(self, messages: "queue.Queue[Message]", store: ObjectStore, sources: Sequence[str],
                 make_syncers: Callable[[Cluster], Sequence[Syncer]], status: Status, *,
                 min_sync_period: float, sync_period: float, log: Callable[[str], None],
                 warn: Optional[Callable[[str], None]] = None, endless: Sequence[str] = (), after_first_sync: Optional[Callable[[Sequence[SyncResult]], None]] = None,
                 stop: Optional[threading.Event] = None, clock: Callable[[], float] = time.monotonic,
                 counts: bool = True, freeze_heap: bool = False) -> None:
        """``sources``: the names of every source (their messages carry them); ``endless``: those
        that never end (FIFOs, kubectl watches); ``make_syncers``: builds one Proxier per family from
        the store's cluster at the first sync (so that the backend can follow the configuration
        read); ``after_first_sync``: called once after the first successful sync; ``log`` prints each
        sync's line, ``warn`` what a source reports (default: ``log``); ``counts``: give the status
        the rule counts of each sync (as a function, computed only if read); ``freeze_heap``: freeze
        the heap after each successful sync (see the module doc; for the agent's own process, not
        for a process that embeds the loop among other work)."""
        self.messages = messages
        self.store = store
        self.sources = set(sources)
        self.endless = set(endless)
        self.make_syncers = make_syncers
        self.status = status
        self.log = log
        self.warn = warn or log
        self.after_first_sync = after_first_sync
        self.stop = stop or threading.Event()
        self.clock = clock
        self.schedule = SyncSchedule(min_sync_period, sync_period, clock)
        self.syncers: list[Syncer] = []
        self.caught_up: set[str] = set()
        self.ended: set[str] = set()
        self.syncs = 0  # sync rounds started
        self.events = 0
        self.first_done = False
        self.last_ok = True
        self.counts = counts
        self.freeze_heap = freeze_heap
        self._gc_thresholds: Optional[tuple[int, int, int]] = None  # to restore when the loop ends
        if freeze_heap:  # already while the sources read the initial listing
            self._gc_thresholds = gc.get_threshold()
            gc.set_threshold(*GC_THRESHOLDS)
        self.gc_timer = GcTimer()  # counts only while run() runs (it installs the timer)
        self._handling = 0.0  # seconds spent handling messages since the last sync
        self._cpu_mark = (time.process_time(), time.thread_time())  # at the start of the last sync

    # ------------------------------------------------------------ messages
    def handle(self, msg: Message) -> None:
        """Apply one message to the store and the loop's state."""
        if msg.kind == "event":
            assert msg.event is not None
            self.events += 1
            if msg.event.type == "ERROR":
                self.caught_up.discard(msg.source)  # hold syncs until the relist is read
            if self.store.apply(msg.event, msg.parsed):
                self.schedule.request()
        elif msg.kind == "object":
            if self.store.put(msg.obj, msg.source, msg.unit, msg.index, msg.parsed):
                self.schedule.request()
        elif msg.kind == "relist":
            self.caught_up.discard(msg.source)
            self.store.relist(msg.source)
        elif msg.kind == "caught_up":
            self.caught_up.add(msg.source)
            if self.store.caught_up(msg.source):
                self.schedule.request()
        elif msg.kind == "ended":
            self.ended.add(msg.source)
            self.caught_up.add(msg.source)
        elif msg.kind == "error":
            self.warn(msg.text)
            self.status.record_error("source")

    def ready(self) -> bool:
        """Whether a sync may run: every source has caught up."""
        return self.caught_up >= self.sources

    def finished(self) -> bool:
        """Whether every source has ended (none is endless)."""
        return not (self.sources - self.endless - self.ended) and not (self.sources & self.endless)

    # --------------------------------------------------------------- syncs
    def sync(self) -> SyncOutcome:
        """Run one round of syncs (every family) now."""
        process_cpu, loop_cpu = self._cpu_mark
        self._cpu_mark = (time.process_time(), time.thread_time())
        reading = max(0.0, (self._cpu_mark[0] - process_cpu) - (self._cpu_mark[1] - loop_cpu))
        handling, self._handling = self._handling, 0.0
        gc_before, freed_before = self.gc_timer.total, self.gc_timer.collected
        start = self.clock()
        t_start = time.perf_counter()
        full = self.schedule.full_due(start)  # also when changes keep coming (they go into it)
        self.schedule.started(start)
        pending = self.store.take_pending()
        self.syncs += 1
        paused = self.freeze_heap and gc.isenabled()
        if paused:
            gc.disable()  # what the round makes lives on: frozen below, never walked meanwhile
        try:
            results, error, metrics = self._sync_families(full)
            ok = not error
            kind = max((r.kind for r in results), key=_KIND_ORDER.__getitem__, default="none")
            all_full = kind == "full" and len(results) == len(self.syncers)
            if ok and self.freeze_heap:
                if all_full and self.first_done:  # a periodic full sync: collect every cycle once
                    gc.unfreeze()
                    gc.collect()
                gc.freeze()
        finally:
            if paused:
                gc.enable()
        duration = self.clock() - start
        self.schedule.finished(ok, full=all_full, start=start)
        outcome = SyncOutcome(self.syncs, ok, kind if ok else "failed", duration, tuple(results), pending, error,
                              phases=round_phases(results, metrics, time.perf_counter() - t_start),
                              gc=self.gc_timer.total - gc_before, gc_freed=self.gc_timer.collected - freed_before,
                              handling=handling, reading=reading)
        self.last_ok = ok
        if ok and not self.first_done:
            self.first_done = True
            if self.after_first_sync is not None:
                self.after_first_sync(results)
        self.log(sync_line(outcome, None if ok else self.schedule.retry_delay()))
        self.status.record_pending(services=len(self.store.pending.services),
                                   endpoints=len(self.store.pending.endpoints))
        return outcome

    def _sync_families(self, full: bool) -> tuple[list[SyncResult], str, float]:
        """Sync every family's Proxier (made at the first round); the results of those that
        synced, the first line of the error that stopped the round ("" for none), and the
        seconds spent telling the status."""
        results: list[SyncResult] = []
        metrics = 0.0
        try:
            if not self.syncers:
                self.syncers = list(self.make_syncers(self.store.cluster()))
                for s in self.syncers:
                    self.store.attach(s)  # type: ignore[arg-type]
            for s in self.syncers:
                t0 = self.clock()
                try:
                    r = s.sync(full=full)
                except DataplaneError:
                    self.status.record_sync(family=s.family, kind="full", duration=self.clock() - t0, ok=False)
                    raise
                t_metrics = time.perf_counter()
                self.status.record_sync(family=s.family, kind=r.kind, duration=self.clock() - t0, ok=True,
                                        counts=_counter(s.backend, r.text) if self.counts else {})
                metrics += time.perf_counter() - t_metrics
                results.append(r)
        except DataplaneError as err:
            self.status.record_error("sync failed")
            return results, str(err).splitlines()[0] if str(err) else type(err).__name__, metrics
        return results, "", metrics

    # ----------------------------------------------------------------- run
    def run(self) -> int:
        """Run until every source ended or ``stop`` is set; then one last sync. The exit status:
        0 when the last sync succeeded."""
        try:
            with self.gc_timer:
                return self._run()
        finally:
            self.restore_gc()

    def restore_gc(self) -> None:
        """Give the garbage collector back its thresholds (``freeze_heap``; :meth:`run` does this
        when it ends); what is frozen stays frozen."""
        if self._gc_thresholds is not None:
            gc.set_threshold(*self._gc_thresholds)
            self._gc_thresholds = None

    def _run(self) -> int:
        while not self.stop.is_set() and not self.finished():
            now = self.clock()
            wait = POLL
            if self.ready():
                wait = min(wait, max(0.0, self.schedule.due() - now))
            try:
                msg = self.messages.get(timeout=wait) if wait > 0 else self.messages.get_nowait()
            except queue.Empty:
                msg = None
            if msg is not None:
                t0 = time.perf_counter()
                self.handle(msg)
                self._drain()
                self._handling += time.perf_counter() - t0
                self.status.record_pending(services=len(self.store.pending.services),
                                           endpoints=len(self.store.pending.endpoints))
            if self.ready() and not self.stop.is_set() and self.clock() >= self.schedule.due():
                self.sync()
        t0 = time.perf_counter()
        self._drain()
        self._handling += time.perf_counter() - t0
        return self._final()

    def _drain(self, limit: int = 100_000) -> None:
        """Handle every message already queued (the batch that goes into the next sync)."""
        for _ in range(limit):
            try:
                msg = self.messages.get_nowait()
            except queue.Empty:
                return
            self.handle(msg)

    def _final(self) -> int:
        """The last sync (when anything is left to do), retried a few times."""
        if self.first_done and self.last_ok and not self.schedule.pending and not self.store.pending:
            return 0
        for attempt in range(FINAL_ATTEMPTS):
            if self.sync().ok:
                return 0
            if self.stop.is_set() and attempt:
                break
            self.stop.wait(self.schedule.retry_delay())
        return 1


def _counter(backend: Any, text: str) -> Callable[[], dict[str, int]]:
    """The counts of ``text`` by ``backend``, computed when called (see :meth:`Status.record_sync`)."""
    return lambda: backend.count_rules(text)
