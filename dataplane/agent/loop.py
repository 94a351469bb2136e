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

Each sync prints one line (:func:`sync_line`); the SyncStatus hears of every
sync, event, pending change and error.
"""
from __future__ import annotations

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


class Status(Protocol):
    """What the loop reports to (:class:`dataplane.agent.health.SyncStatus`)."""

    def record_sync(self, *, family: str, kind: str, duration: float, ok: bool, counts=...) -> None: ...
    def record_pending(self, *, services: int, endpoints: int) -> None: ...
    def record_event(self, kind: str, event_type: str) -> None: ...
    def record_error(self, reason: str) -> None: ...


class Syncer(Protocol):
    """One family's :class:`~dataplane.Proxier`, as the loop uses it."""

    family: str
    backend: Any  # the Backend: its count_rules(text) gives the counts of what a sync wrote

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


@dataclass
class SyncOutcome:
    """What one round of syncs (every family) did."""

    number: int
    ok: bool
    kind: str  # the largest kind over the families: full > partial > none
    duration: float
    results: tuple[SyncResult, ...]
    pending: Pending
    error: str = ""


def sync_line(o: SyncOutcome, retry_in: Optional[float] = None) -> str:
    """The one log line of a sync."""
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
    return f"sync {o.number}: {o.kind} in {o.duration:.3f}s ({'; '.join(parts)}); {changed}"


class SyncLoop:
    """Reads messages, keeps the store, runs the syncs (see the module doc)."""

    def __init__(self, messages: "queue.Queue[Message]", store: ObjectStore, sources: Sequence[str],
                 make_syncers: Callable[[Cluster], Sequence[Syncer]], status: Status, *,
                 min_sync_period: float, sync_period: float, log: Callable[[str], None],
                 warn: Optional[Callable[[str], None]] = None, endless: Sequence[str] = (), after_first_sync: Optional[Callable[[Sequence[SyncResult]], None]] = None,
                 stop: Optional[threading.Event] = None, clock: Callable[[], float] = time.monotonic) -> None:
        """``sources``: the names of every source (their messages carry them); ``endless``: those
        that never end (FIFOs, kubectl watches); ``make_syncers``: builds one Proxier per family from
        the store's cluster at the first sync (so that the backend can follow the configuration
        read); ``after_first_sync``: called once after the first successful sync; ``log`` prints each
        sync's line, ``warn`` what a source reports (default: ``log``)."""
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
        start = self.clock()
        full = self.schedule.full_due(start)  # also when changes keep coming (they go into it)
        self.schedule.started(start)
        pending = self.store.take_pending()
        self.syncs += 1
        results: list[SyncResult] = []
        error = ""
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
                self.status.record_sync(family=s.family, kind=r.kind, duration=self.clock() - t0, ok=True,
                                        counts=s.backend.count_rules(r.text))
                results.append(r)
        except DataplaneError as err:
            error = str(err).splitlines()[0] if str(err) else type(err).__name__
            self.status.record_error("sync failed")
        ok = not error
        duration = self.clock() - start
        kind = max((r.kind for r in results), key=_KIND_ORDER.__getitem__, default="none")
        self.schedule.finished(ok, full=kind == "full" and len(results) == len(self.syncers), start=start)
        outcome = SyncOutcome(self.syncs, ok, kind if ok else "failed", duration, tuple(results), pending, error)
        self.last_ok = ok
        if ok and not self.first_done:
            self.first_done = True
            if self.after_first_sync is not None:
                self.after_first_sync(results)
        self.log(sync_line(outcome, None if ok else self.schedule.retry_delay()))
        self.status.record_pending(services=len(self.store.pending.services),
                                   endpoints=len(self.store.pending.endpoints))
        return outcome

    # ----------------------------------------------------------------- run
    def run(self) -> int:
        """Run until every source ended or ``stop`` is set; then one last sync. The exit status:
        0 when the last sync succeeded."""
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
                self.handle(msg)
                self._drain()
                self.status.record_pending(services=len(self.store.pending.services),
                                           endpoints=len(self.store.pending.endpoints))
            if self.ready() and not self.stop.is_set() and self.clock() >= self.schedule.due():
                self.sync()
        self._drain()
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
