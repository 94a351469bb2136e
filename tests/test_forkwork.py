"""dataplane/forkwork.py: messages pickle the model's frozen dataclasses as calls to their class
(the same objects back), a prefetched worker never waits for the parent to read, and ready()
says when receive() would not wait."""
from __future__ import annotations

import dataclasses
import os
import pickle
import time
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from dataplane import forkwork
from dataplane.input.cluster import parse_cluster
from dataplane.input.loader import documents_from_text
from dataplane.model import Cluster, EndpointSlice, ObjectRef, Service, ServicePort

CLUSTER = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  type: LoadBalancer
  selector: {app: web}
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.10}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.0.0.5]
  conditions: {ready: true}
  nodeName: node-a
"""


def _cluster() -> Cluster:
    docs, problems = documents_from_text(CLUSTER, "c.yaml")
    assert not problems
    return parse_cluster(docs).cluster


def test_model_objects_come_back_equal_and_of_their_class():
    cluster = _cluster()
    back = pickle.loads(forkwork.dumps(cluster))
    assert back == cluster and type(back) is Cluster
    assert back.services[0].ref == cluster.services[0].ref  # (not compared by ==)
    assert type(back.services[0].ports[0]) is ServicePort and type(back.endpoint_slices[0]) is EndpointSlice
    assert back.endpoint_slices[0].endpoints == cluster.endpoint_slices[0].endpoints
    assert forkwork._field_names(Service) is not None and forkwork._field_names(ObjectRef) is not None


@dataclass(frozen=True, slots=True)
class _Checked:
    value: int

    def __post_init__(self) -> None:
        _Checked.made += 1  # type: ignore[attr-defined]


_Checked.made = 0  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class _Derived:
    value: int
    twice: int = field(init=False, default=0)


@dataclass(frozen=True, slots=True)
class _OwnInit:
    value: int

    def __init__(self, other: int) -> None:
        object.__setattr__(self, "value", other * 2)


@dataclass(frozen=True)
class _NoSlots:
    value: int
    kind: ClassVar[str] = "x"


@dataclass(frozen=True, slots=True)
class _KeywordOnly:
    value: int = field(kw_only=True)


@dataclass(frozen=True, slots=True)
class _OwnState:
    value: int
    cache: int = 0


def _own_getstate(self):
    return (self.value, 0)  # (the cache is not sent)


def _own_setstate(self, state):
    object.__setattr__(self, "value", state[0])
    object.__setattr__(self, "cache", state[1])


# (set after the decorator, which replaced them before Python 3.11.4: see nftables.ServiceFragment)
_OwnState.__getstate__ = _own_getstate
_OwnState.__setstate__ = _own_setstate


@pytest.mark.parametrize("cls, make", [
    (_OwnState, lambda: _OwnState(3, 9)),
    (_Checked, lambda: _Checked(3)),
    (_OwnInit, lambda: _OwnInit(2)),
    (_NoSlots, lambda: _NoSlots(3)),
    (_KeywordOnly, lambda: _KeywordOnly(value=3)),
])
def test_other_dataclasses_keep_pickles_own_way(cls, make):
    assert forkwork._field_names(cls) is None
    obj = make()
    back = pickle.loads(forkwork.dumps(obj))
    assert back == pickle.loads(pickle.dumps(obj)) and type(back) is cls


def test_a_field_outside_init_keeps_pickles_own_way():
    obj = _Derived(3)
    object.__setattr__(obj, "twice", 6)
    assert forkwork._field_names(_Derived) is None
    assert pickle.loads(forkwork.dumps(obj)).twice == 6


def test_post_init_is_not_run_again():
    obj = _Checked(3)
    made = _Checked.made  # type: ignore[attr-defined]
    pickle.loads(forkwork.dumps([obj, obj]))
    assert _Checked.made == made  # type: ignore[attr-defined]


def _wait_for_exit(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
        time.sleep(0.02)
    return False


def test_a_prefetched_worker_sends_more_than_a_pipe_holds_without_the_parent_reading():
    big = ["x" * 1000] * 8000  # 8 MB: several times what a pipe holds

    def send_big(send):
        send(("first", big))
        send("second")

    worker = forkwork.start(send_big)
    forkwork.prefetch([worker])
    try:
        assert _wait_for_exit(worker.pid, 60), "the worker waited for the parent"
        # (its last bytes may still be in the pipe when it exits: the thread reads them)
        deadline = time.monotonic() + 30
        while not forkwork.ready(worker) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert forkwork.ready(worker)
        assert forkwork.receive(worker) == ("first", big)
        assert forkwork.receive(worker) == "second"
        assert forkwork.ready(worker) and forkwork.receive(worker) is None and forkwork.receive(worker) is None
    finally:
        worker.done = True  # (reaped above: stop must not wait for it again)
        worker.reader.join(30)
        os.close(worker.results)
    assert not worker.reader.is_alive()


def test_ready_says_when_a_message_has_come():
    read_r, read_w = os.pipe()

    def wait_then_send(send):
        os.read(read_r, 1)
        send("hello")
        time.sleep(60)

    worker = forkwork.start(wait_then_send)
    forkwork.prefetch([worker])
    try:
        time.sleep(0.2)
        assert not forkwork.ready(worker)
        os.write(read_w, b"g")
        deadline = time.monotonic() + 30
        while not forkwork.ready(worker) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert forkwork.receive(worker) == "hello"
        assert not forkwork.ready(worker)  # (it sleeps: no more, and no end yet)
    finally:
        forkwork.stop([worker])
        os.close(read_r)
        os.close(read_w)
    assert not worker.reader.is_alive() and forkwork.receive(worker) is None


def test_ready_without_prefetch_looks_at_the_pipe():
    worker = forkwork.start(lambda send: send("hello"))
    try:
        deadline = time.monotonic() + 30
        while not forkwork.ready(worker) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert forkwork.receive(worker) == "hello" and forkwork.receive(worker) is None
    finally:
        forkwork.stop([worker])


def test_frozen_dataclass_fields_are_the_init_parameters():
    """The model's frozen classes all take the quick way (the point of it)."""
    from dataplane import model

    frozen = [cls for cls in vars(model).values() if isinstance(cls, type) and dataclasses.is_dataclass(cls)
              and cls.__module__ == model.__name__ and cls.__dataclass_params__.frozen and "__slots__" in vars(cls)]
    assert Service in frozen and all(forkwork._field_names(cls) for cls in frozen), [
        cls for cls in frozen if not forkwork._field_names(cls)]
