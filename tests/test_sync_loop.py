"""Issue 17: batching like kube-proxy's BoundedFrequencyRunner, retries, and the loop's life cycle."""
from __future__ import annotations

import queue
import threading


from dataplane import Proxier, RecordingRunner
from dataplane.agent.events import WatchEvent
from dataplane.agent.loop import MIN_RETRY, SyncLoop, SyncSchedule
from dataplane.agent.sources import Message
from dataplane.agent.store import ObjectStore
from dataplane.errors import ApplyError

from test_sync_store import NODE, service


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Status:
    """A stand-in for dataplane.agent.health.SyncStatus that records the calls."""

    def __init__(self) -> None:
        self.syncs: list[tuple[str, str, bool]] = []
        self.errors: list[str] = []
        self.pending: list[tuple[int, int]] = []

    def record_sync(self, *, family, kind, duration, ok, counts={}):
        assert duration >= 0
        self.syncs.append((family, kind, ok))

    def record_pending(self, *, services, endpoints):
        self.pending.append((services, endpoints))

    def record_event(self, kind, event_type):
        pass

    def record_error(self, reason):
        self.errors.append(reason)


def test_schedule_batches_at_most_one_sync_per_min_period():
    clock = Clock()
    s = SyncSchedule(1.0, 30.0, clock)
    assert s.due() <= clock()  # the first sync: at once
    s.started(clock())
    s.finished(True, full=True, start=clock())
    assert s.due() == clock() + 30.0  # nothing pending: the periodic sync
    clock.now += 0.2
    s.request()
    s.request()
    assert s.due() == 1001.0  # one min period after the last start, however many changes
    clock.now = 1001.0
    assert not s.full_due(clock())
    s.started(clock())
    s.finished(True, full=False, start=clock())
    clock.now = 1030.0
    assert s.full_due(clock())  # a sync period after the last full one


def test_schedule_backs_off_exponentially_up_to_the_sync_period():
    clock = Clock()
    s = SyncSchedule(1.0, 10.0, clock)
    delays = []
    for _ in range(6):
        s.started(clock())
        s.finished(False, full=False, start=clock())
        delays.append(s.due() - clock())
        clock.now = s.due()
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    s.started(clock())
    s.finished(True, full=True, start=clock())
    assert s.failures == 0 and s.due() == clock() + 10.0
    zero = SyncSchedule(0.0, 10.0, clock)
    zero.failures = 1
    assert zero.retry_delay() == MIN_RETRY  # no min period: retries still wait


class FailingRunner(RecordingRunner):
    """Fails the first ``n`` applies."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def apply(self, mode, family, text, *, full, sysctls=()):
        if self.n:
            self.n -= 1
            raise ApplyError("iptables-restore: exit status 4")
        super().apply(mode, family, text, full=full, sysctls=sysctls)


def make_loop(messages, sources, runner, *, min_period=0.05, period=30.0, endless=()):
    lines: list[str] = []
    status = Status()
    store = ObjectStore(warn=lines.append)
    loop = SyncLoop(messages, store, sources,
                    lambda cluster: [Proxier("node1", backend="iptables", runner=runner, sync_period=None)],
                    status, min_sync_period=min_period, sync_period=period, log=lines.append, endless=endless)
    return loop, lines, status


def event(n: int, obj: dict, source: str = "svc", event_type: str = "ADDED") -> Message:
    return Message("event", source, event=WatchEvent(event_type, obj, source, n))


def test_many_events_few_syncs_and_a_last_sync_at_the_end():
    messages: "queue.Queue[Message]" = queue.Queue()
    runner = RecordingRunner()
    loop, lines, status = make_loop(messages, ["svc"], runner, min_period=0.2)
    messages.put(event(1, NODE))
    for i in range(300):
        messages.put(event(i + 2, service(f"s{i % 40}", f"10.96.0.{i % 40 + 1}", port=80 + i, rv=str(i + 10))))
    messages.put(Message("caught_up", "svc"))
    messages.put(Message("ended", "svc"))
    assert loop.run() == 0
    syncs = [ln for ln in lines if ln.startswith("sync ")]
    assert len(syncs) == 1, lines  # everything queued went into one sync
    assert syncs[0].startswith("sync 1: full in ") and "(ipv4 full: 40 of 40 service ports written)" in syncs[0]
    assert "301 events, 40 Services and 0 EndpointSlices changed" in syncs[0]
    assert len(runner.applied) == 1 and status.syncs == [("ipv4", "full", True)]


def test_the_first_sync_waits_until_every_source_caught_up():
    messages: "queue.Queue[Message]" = queue.Queue()
    runner = RecordingRunner()
    loop, lines, _ = make_loop(messages, ["nodes", "svc"], runner, endless=["svc"])
    stop = loop.stop
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        messages.put(event(1, NODE, source="nodes"))
        messages.put(Message("caught_up", "nodes"))
        messages.put(event(1, service("web", "10.96.0.1"), source="svc"))
        assert not stop.wait(0.5)
        assert runner.applied == []  # svc has not caught up: it may hold the rest of the cluster
        messages.put(Message("caught_up", "svc"))
        for _ in range(100):
            if runner.applied:
                break
            stop.wait(0.05)
        assert len(runner.applied) == 1 and "default/web" in runner.applied[0][2]
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_a_failed_apply_is_retried_with_back_off_then_fully():
    messages: "queue.Queue[Message]" = queue.Queue()
    runner = FailingRunner(2)
    loop, lines, status = make_loop(messages, ["svc"], runner, min_period=0.01)
    messages.put(event(1, NODE))
    messages.put(event(2, service("web", "10.96.0.1")))
    messages.put(Message("caught_up", "svc"))
    messages.put(Message("ended", "svc"))
    assert loop.run() == 0
    syncs = [ln for ln in lines if ln.startswith("sync ")]
    assert [s.split(" ")[2] for s in syncs] == ["failed", "failed", "full"], syncs
    assert "iptables-restore: exit status 4; retrying in 0.5s with a full sync" in syncs[0]
    assert "retrying in 1.0s" in syncs[1]
    assert syncs[2].startswith("sync 3: full")
    assert [ok for _, _, ok in status.syncs] == [False, False, True] and status.errors == ["sync failed"] * 2


def test_a_final_sync_that_keeps_failing_exits_1():
    messages: "queue.Queue[Message]" = queue.Queue()
    loop, lines, _ = make_loop(messages, ["svc"], FailingRunner(100), min_period=0.0)
    loop.schedule.period = 0.6  # caps the back-off
    messages.put(event(1, NODE))
    messages.put(Message("ended", "svc"))
    assert loop.run() == 1
    assert all("failed" in ln for ln in lines if ln.startswith("sync "))


def test_source_errors_are_printed_and_counted():
    messages: "queue.Queue[Message]" = queue.Queue()
    loop, lines, status = make_loop(messages, ["svc"], RecordingRunner())
    messages.put(Message("error", "svc", text="svc: line 3: cannot parse JSON: Expecting value; no more is read"))
    messages.put(event(1, NODE))
    messages.put(Message("ended", "svc"))
    assert loop.run() == 0
    assert lines[0] == "svc: line 3: cannot parse JSON: Expecting value; no more is read"
    assert status.errors == ["source"]
