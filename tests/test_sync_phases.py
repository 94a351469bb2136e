"""Issue 17's speed work on the agent: where each sync's time goes (the Proxier's phases and the
loop's line), rule counts computed only when /metrics is read, the heap frozen between syncs,
events read during a sync batched into the next one, and wider pipes for the sources."""
from __future__ import annotations

import fcntl
import gc
import os
import queue
import re
import threading
import time
import weakref

import pytest

from dataplane import Proxier, RecordingRunner
from dataplane.agent.events import WatchEvent
from dataplane.agent.health import SyncStatus
from dataplane.agent.loop import GC_THRESHOLDS, PHASES, SyncLoop, SyncOutcome, round_phases, sync_line
from dataplane.agent.sources import PIPE_SIZE, FileSource, Message, widen_pipe
from dataplane.agent.store import ObjectStore, Pending
from dataplane.backends import get_backend
from dataplane.errors import ApplyError

from test_sync_loop import Clock, Status
from test_sync_store import NODE, service, slice_


def udp_service(name: str, ip: str) -> dict:
    svc = service(name, ip)
    svc["spec"]["ports"][0]["protocol"] = "UDP"
    return svc


def udp_slice(svc: str, ips: list[str], rv: str) -> dict:
    s = slice_(svc, ips, rv=rv)
    s["ports"][0]["protocol"] = "UDP"
    return s


class SlowRunner(RecordingRunner):
    """Takes ``apply_s`` seconds per apply and ``conntrack_s`` per conntrack deletion."""

    def __init__(self, apply_s: float = 0.0, conntrack_s: float = 0.0) -> None:
        super().__init__()
        self.apply_s, self.conntrack_s = apply_s, conntrack_s

    def apply(self, mode, family, text, *, full, sysctls=()):
        time.sleep(self.apply_s)
        super().apply(mode, family, text, full=full, sysctls=sysctls)

    def delete_conntrack(self, filters):
        time.sleep(self.conntrack_s)
        super().delete_conntrack(filters)


def event(n: int, obj: dict, source: str = "svc", event_type: str = "ADDED") -> Message:
    return Message("event", source, event=WatchEvent(event_type, obj, source, n))


# ---------------------------------------------------------------------------- the Proxier's phases
@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_proxier_sync_says_where_its_time_went(backend):
    runner = SlowRunner(apply_s=0.3, conntrack_s=0.15)
    store = ObjectStore(warn=print)
    p = Proxier("node1", backend=backend, runner=runner, sync_period=None)
    for obj in (NODE, udp_service("dns", "10.96.0.10"), udp_slice("dns", ["10.244.1.10", "10.244.1.11"], "1")):
        store.apply(WatchEvent("ADDED", obj, "svc", 1))
    store.attach(p)
    p.sync()
    store.apply(WatchEvent("MODIFIED", udp_slice("dns", ["10.244.1.11"], "2"), "svc", 2))  # an endpoint goes
    gc.disable()  # no collection of the test process's heap inside the timed phases
    try:
        t0 = time.perf_counter()
        r = p.sync()
        wall = time.perf_counter() - t0
    finally:
        gc.enable()
    assert r.kind == "partial" and r.conntrack, "the endpoint that went leaves stale UDP entries"
    assert [name for name, _ in r.phases] == ["plan", "render", "apply", "conntrack"]
    times = dict(r.phases)
    assert all(t >= 0 for t in times.values())
    # each wait in its own phase (not the other's: the margins are below the other's wait)
    assert 0.3 <= times["apply"] < 0.45
    assert 0.15 <= times["conntrack"] < 0.3
    assert sum(times.values()) <= wall
    # nothing to do: no apply and no conntrack deletion, and the phases say so
    r = p.sync()
    assert r.kind == "none" and dict(r.phases)["apply"] < 0.15 and dict(r.phases)["conntrack"] < 0.15


def test_round_phases_sum_the_families_and_the_rest_is_other():
    class R:
        def __init__(self, phases):
            self.phases = phases

    results = [R((("plan", 0.1), ("render", 0.2), ("apply", 0.5), ("conntrack", 0.0))),
               R((("plan", 0.1), ("render", 0.1), ("apply", 0.25), ("conntrack", 0.05)))]
    phases = dict(round_phases(results, 0.01, 1.5))  # type: ignore[arg-type]
    assert list(phases) == list(PHASES)
    assert phases["plan"] == pytest.approx(0.2) and phases["apply"] == pytest.approx(0.75)
    assert phases["metrics"] == 0.01 and phases["other"] == pytest.approx(1.5 - 1.31)
    assert dict(round_phases([], 0.0, 0.25))["other"] == 0.25
    assert dict(round_phases(results, 0.0, 0.1))["other"] == 0.0  # never negative  # type: ignore[arg-type]


def test_sync_line_says_where_the_time_went():
    o = SyncOutcome(7, True, "none", 1.25, (), Pending(events=3), phases=round_phases([], 0.002, 1.25),
                    gc=0.04, gc_freed=12, handling=0.031, reading=0.5)
    assert sync_line(o) == (
        "sync 7: none in 1.250s (); 3 events, 0 Services and 0 EndpointSlices changed; took plan 0.000s, "
        "render 0.000s, apply 0.000s, conntrack 0.000s, metrics 0.002s, other 1.248s (gc 0.040s of it, "
        "12 objects freed); before it: handling events 0.031s, reading 0.500s CPU")
    failed = SyncOutcome(8, False, "failed", 0.5, (), Pending(), error="boom")
    assert sync_line(failed, 1.0) == ("sync 8 failed after 0.500s (0 events, 0 Services and 0 EndpointSlices "
                                      "changed): boom; retrying in 1.0s with a full sync")


def _loop(messages, runner, **kw):
    lines: list[str] = []
    status = kw.pop("status", None) or Status()
    loop = SyncLoop(messages, ObjectStore(warn=lines.append), ["svc"],
                    lambda cluster: [Proxier("node1", backend="iptables", runner=runner, sync_period=None)],
                    status, min_sync_period=kw.pop("min_period", 0.0), sync_period=kw.pop("period", 30.0),
                    log=lines.append, endless=kw.pop("endless", ()), **kw)
    return loop, lines, status


def test_each_sync_line_shows_the_phases_the_loop_measured():
    messages: "queue.Queue[Message]" = queue.Queue()
    loop, lines, _ = _loop(messages, SlowRunner(apply_s=0.12))
    messages.put(event(1, NODE))
    messages.put(event(2, service("web", "10.96.0.1")))
    messages.put(Message("ended", "svc"))
    assert loop.run() == 0
    [line] = [ln for ln in lines if ln.startswith("sync ")]
    took = dict(re.findall(r"(plan|render|apply|conntrack|metrics|other) ([0-9.]+)s", line))
    assert list(took) == list(PHASES)
    assert float(took["apply"]) >= 0.12
    total = float(re.match(r"sync 1: full in ([0-9.]+)s", line).group(1))
    assert sum(map(float, took.values())) == pytest.approx(total, abs=0.006)  # rounded to ms each
    assert re.search(r"\(gc [0-9.]+s of it, \d+ objects freed\); before it: handling events [0-9.]+s, "
                     r"reading [0-9.]+s CPU$", line)


# ---------------------------------------------------------------------------- counts when read
def test_counts_given_as_a_function_are_computed_only_when_metrics_are_read():
    calls: list[str] = []

    def counts(name: str, rules: int):
        def compute():
            calls.append(name)
            return {"rules": rules, "chains": rules // 10}
        return compute

    status = SyncStatus(30)
    status.record_sync(family="ipv4", kind="full", duration=0.1, ok=True, counts=counts("full", 400))
    status.record_sync(family="ipv4", kind="partial", duration=0.1, ok=True, counts=counts("partial-1", 30))
    status.record_sync(family="ipv4", kind="partial", duration=0.1, ok=True, counts=counts("partial-2", 20))
    assert calls == []  # nothing counted while syncing
    text = status.metrics_text().decode()
    assert sorted(calls) == ["full", "partial-2"], "each once; the replaced partial never"
    assert 'dataplane_sync_proxy_rules_objects{ip_family="ipv4",object="rules"} 400.0' in text
    assert 'dataplane_sync_proxy_rules_objects_last{ip_family="ipv4",object="rules"} 20.0' in text
    status.metrics_text()
    assert len(calls) == 2, "computed once, not at every read"
    # a full sync's function gives both series, computed once
    status.record_sync(family="ipv4", kind="full", duration=0.1, ok=True, counts=counts("full-2", 500))
    text = status.metrics_text().decode()
    assert calls.count("full-2") == 1
    assert 'dataplane_sync_proxy_rules_objects{ip_family="ipv4",object="rules"} 500.0' in text
    assert 'dataplane_sync_proxy_rules_objects_last{ip_family="ipv4",object="rules"} 500.0' in text


def test_counts_of_a_sync_that_came_while_counting_are_not_overwritten():
    status = SyncStatus(30)

    def slow_old_counts():
        # a newer sync is recorded while these are computed (the loop does not wait for /metrics)
        status.record_sync(family="ipv4", kind="partial", duration=0.1, ok=True, counts=lambda: {"rules": 2})
        return {"rules": 1}

    status.record_sync(family="ipv4", kind="partial", duration=0.1, ok=True, counts=slow_old_counts)
    text = status.metrics_text().decode()
    assert 'objects_last{ip_family="ipv4",object="rules"}' not in text  # the old ones are outdated
    assert 'dataplane_sync_proxy_rules_objects_last{ip_family="ipv4",object="rules"} 2.0' in \
        status.metrics_text().decode()


def test_the_loop_gives_the_backends_counts_of_what_each_sync_wrote():
    class Keeping(Status):
        def __init__(self):
            super().__init__()
            self.counts = []

        def record_sync(self, *, family, kind, duration, ok, counts={}):
            super().record_sync(family=family, kind=kind, duration=duration, ok=ok, counts=counts)
            self.counts.append(counts)

    for wanted in (True, False):
        messages: "queue.Queue[Message]" = queue.Queue()
        runner = RecordingRunner()
        loop, _, status = _loop(messages, runner, status=Keeping(), counts=wanted)
        messages.put(event(1, NODE))
        messages.put(event(2, service("web", "10.96.0.1")))
        messages.put(Message("ended", "svc"))
        assert loop.run() == 0
        [counts] = status.counts
        if wanted:
            assert callable(counts)
            assert counts() == get_backend("iptables").count_rules(runner.applied[0][2])
            assert counts()["rules"] > 10
        else:
            assert counts == {}


# ---------------------------------------------------------------------------- the heap
def test_the_heap_is_frozen_after_each_sync_and_cycles_collected_at_each_periodic_full_sync():
    class Cycle:
        pass

    clock = Clock()
    messages: "queue.Queue[Message]" = queue.Queue()
    thresholds = gc.get_threshold()
    loop, lines, _ = _loop(messages, RecordingRunner(), freeze_heap=True, period=30.0)
    loop.clock = loop.schedule.clock = clock
    gc.collect()
    try:
        # from the start (the initial listing is read meanwhile), no full collection by count
        assert gc.get_threshold() == GC_THRESHOLDS
        loop.handle(event(1, NODE))
        loop.handle(Message("caught_up", "svc"))
        cycle = Cycle()
        cycle.me = cycle  # type: ignore[attr-defined]
        alive = weakref.ref(cycle)
        assert loop.sync().kind == "full" and gc.get_freeze_count() > 0
        assert gc.get_threshold() == GC_THRESHOLDS
        del cycle
        gc.collect()
        assert alive() is not None, "frozen: the collector leaves it alone"
        clock.now += 1
        loop.handle(event(2, service("web", "10.96.0.1")))
        assert loop.sync().kind == "partial"
        gc.collect()
        assert alive() is not None
        clock.now += 30  # a sync period later: the periodic full sync collects every cycle once
        with loop.gc_timer:
            outcome = loop.sync()
        assert outcome.kind == "full" and outcome.gc > 0
        assert alive() is None and outcome.gc_freed >= 1
        assert "objects freed" in lines[-1]
        assert gc.get_freeze_count() > 0
        loop.restore_gc()
        assert gc.get_threshold() == thresholds
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_the_heap_is_left_alone_unless_asked():
    messages: "queue.Queue[Message]" = queue.Queue()
    thresholds = gc.get_threshold()
    loop, _, _ = _loop(messages, RecordingRunner())
    gc.unfreeze()
    assert gc.get_threshold() == thresholds
    loop.handle(event(1, NODE))
    loop.handle(Message("caught_up", "svc"))
    assert loop.sync().ok and gc.get_freeze_count() == 0 and gc.get_threshold() == thresholds


# ---------------------------------------------------------------------------- backlog
def test_events_read_while_a_sync_runs_all_go_into_the_next_sync():
    """BoundedFrequencyRunner under backlog: nothing read during a long sync is lost, and all
    of it is batched into one sync right after (the min period has long passed)."""

    class Gate(RecordingRunner):
        def __init__(self):
            super().__init__()
            self.entered = threading.Event()
            self.release = threading.Event()
            self.hold = False

        def apply(self, mode, family, text, *, full, sysctls=()):
            if self.hold:
                self.hold = False
                self.entered.set()
                assert self.release.wait(10)
            super().apply(mode, family, text, full=full, sysctls=sysctls)

    messages: "queue.Queue[Message]" = queue.Queue()
    runner = Gate()
    loop, lines, _ = _loop(messages, runner, min_period=0.05, endless=["svc"])
    thread = threading.Thread(target=loop.run)
    messages.put(event(1, NODE))
    messages.put(event(2, service("s0", "10.96.0.100")))
    messages.put(Message("caught_up", "svc"))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(runner.applied) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        runner.hold = True
        messages.put(event(3, service("held", "10.96.0.99")))  # the sync that will be held
        assert runner.entered.wait(10)
        for i in range(50):  # read while that sync is in the kernel
            messages.put(event(10 + i, service(f"s{i + 1}", f"10.96.0.{i + 1}")))
        time.sleep(0.2)  # well past the min period
        runner.release.set()
        while len(runner.applied) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        loop.stop.set()
        thread.join(10)
    syncs = [ln for ln in lines if ln.startswith("sync ")]
    assert "; 50 events, 50 Services and 0 EndpointSlices changed;" in syncs[2], syncs
    assert "ipv4 partial: 50 of 52 service ports written" in syncs[2]
    assert all(f"default/s{i}" in runner.applied[2][2] for i in range(1, 51))


# ---------------------------------------------------------------------------- pipes
def test_widen_pipe():
    r, w = os.pipe()
    try:
        limit = int(open("/proc/sys/fs/pipe-max-size").read())
        size = widen_pipe(r)
        assert size == fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) >= min(PIPE_SIZE, limit)
    finally:
        os.close(r)
        os.close(w)
    with open(__file__) as f:
        assert widen_pipe(f.fileno()) == 0  # no pipe: left alone
    assert widen_pipe(10_000) == 0  # no descriptor at all


def test_a_fifo_source_widens_its_pipe(tmp_path):
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    messages: "queue.Queue[Message]" = queue.Queue()
    src = FileSource(str(fifo), messages)
    src.start()
    deadline = time.monotonic() + 10
    while True:  # the writer can open once the source has (it opens without waiting)
        try:
            w = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    try:
        while fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) < PIPE_SIZE and time.monotonic() < deadline:
            time.sleep(0.01)
        limit = int(open("/proc/sys/fs/pipe-max-size").read())
        assert fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) >= min(PIPE_SIZE, limit)
    finally:
        os.close(w)


# ---------------------------------------------------------------------------- documentation
def test_sync_examples_run_in_the_namespace_documentation_test():
    """``dataplane sync`` needs root and a namespace: its README and --help examples must be among
    the blocks netns_tests/test_docs_run_netns.py runs, never run without namespaces."""
    from docs_examples import Step, epilog_block, readme_blocks

    assert Step("dataplane sync -f cluster.json --node node-a --netns demo").needs_root
    assert Step(".venv/bin/dataplane --quiet sync -f x --node n --netns demo").needs_root
    assert epilog_block(("sync",)).needs_root
    blocks = [b for b in readme_blocks() if any(" sync " in s.command for s in b.steps)]
    assert blocks and all(b.needs_root for b in blocks)


def test_run_gives_the_collector_its_thresholds_back():
    thresholds = gc.get_threshold()
    messages: "queue.Queue[Message]" = queue.Queue()
    loop, _, _ = _loop(messages, RecordingRunner(), freeze_heap=True)
    try:
        assert gc.get_threshold() == GC_THRESHOLDS
        messages.put(event(1, NODE))
        messages.put(Message("ended", "svc"))
        assert loop.run() == 0
        assert gc.get_threshold() == thresholds and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_the_collector_is_paused_during_a_sync_round_and_always_resumed():
    class Watching(RecordingRunner):
        def __init__(self, fail: Exception | None = None):
            super().__init__()
            self.enabled: list[bool] = []
            self.fail = fail

        def apply(self, mode, family, text, *, full, sysctls=()):
            self.enabled.append(gc.isenabled())
            if self.fail is not None:
                raise self.fail
            super().apply(mode, family, text, full=full, sysctls=sysctls)

    thresholds = gc.get_threshold()
    try:
        for freeze, fail in ((True, None), (False, None), (True, RuntimeError("a bug")),
                             (True, ApplyError("iptables-restore: exit status 4"))):
            messages: "queue.Queue[Message]" = queue.Queue()
            runner = Watching(fail)
            loop, _, _ = _loop(messages, runner, freeze_heap=freeze)
            loop.handle(event(1, NODE))
            loop.handle(Message("caught_up", "svc"))
            assert gc.isenabled()
            if isinstance(fail, RuntimeError):
                with pytest.raises(RuntimeError):
                    loop.sync()
            else:
                assert loop.sync().ok == (fail is None)
            assert runner.enabled == [not freeze]  # paused while the round ran (with freeze_heap)
            assert gc.isenabled(), "resumed, whatever happened"
            loop.restore_gc()
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
