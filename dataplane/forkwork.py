"""Forked workers that send pickled messages back over a pipe, for one-shot commands.

A worker is a child made by ``os.fork`` (it shares the parent's objects
copy-on-write, so nothing is sent to it) that runs one function and sends its
results to the parent as length-prefixed pickles over a pipe, in order. The
parent reads them with :func:`receive`; a worker that fails, exits early or is
killed simply sends no more messages (:func:`receive` then returns None), so the
parent can fall back to doing the work itself. :func:`stop` kills and reaps
workers whose results are no longer wanted.

A pipe holds about a megabyte: a worker whose message is larger waits until the
parent reads it. :func:`prefetch` has a thread per worker read the messages as
they come (the bytes only; :func:`receive` unpickles), so workers never wait
for a busy parent.

Messages are pickles, except that frozen, slotted dataclasses made by their
generated ``__init__`` alone (the model's objects) travel as the class and the
field values, and are made again by calling the class: the same objects as
pickle's default (which sets each field through ``__setstate__``, in Python), in
about 0.6 of the time each way (5k Services: 0.08 s to pickle, 0.07 s to unpickle).

Forking is only safe in a single-threaded program such as the CLI: start every
worker before :func:`prefetch`.
"""
from __future__ import annotations

import dataclasses
import fcntl
import io
import os
import pickle
import queue
import select
import signal
import struct
import threading
from typing import Any, Callable, Optional, Sequence

__all__ = ["Worker", "start", "prefetch", "ready", "receive", "stop", "NO_MESSAGE", "write_message", "read_message",
           "dumps"]

_HEADER = struct.Struct("<Q")
NO_MESSAGE: Any = None  # what receive returns when the worker sends nothing more


class Worker:
    """A forked child: its pid and the read end of its results pipe (and, once
    :func:`prefetch` started one, the thread reading it and the messages it read)."""

    def __init__(self, pid: int, results: int) -> None:
        self.pid, self.results = pid, results
        self.done = False  # stopped: its pipe is closed
        self.ended = False  # it sent no more (seen by the reading thread)
        self.reader: Optional[threading.Thread] = None
        self.messages: "queue.SimpleQueue[Optional[bytes]]" = queue.SimpleQueue()


def start(work: Callable[[Callable[[Any], None]], None]) -> Worker:
    """Fork a child that runs ``work(send)``, where ``send(value)`` pickles ``value`` to the
    parent, then exits (status 0; 1 if ``work`` raised: the parent sees the messages sent
    until then, and then no more). The child never returns into the caller."""
    results_r, results_w = os.pipe()
    try:  # results are megabytes: fewer, larger pipe writes and reads
        fcntl.fcntl(results_w, fcntl.F_SETPIPE_SZ, 1 << 20)
    except OSError:  # above /proc/sys/fs/pipe-max-size for this user: keep the default
        pass
    pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            os.close(results_r)
            work(lambda value: write_message(results_w, value))
            status = 0
        except BaseException:  # nothing is reported: the parent does the work itself
            pass
        finally:
            os._exit(status)
    os.close(results_w)
    return Worker(pid, results_r)


def prefetch(workers: Sequence[Worker]) -> None:
    """Start a thread per worker that reads its messages as they come, so that it never waits
    for the parent to read; :func:`receive` then takes them in order. Call it only once every
    worker is started (a fork with a running thread is unsafe)."""
    for worker in workers:
        if worker.reader is None and not worker.done:
            worker.reader = threading.Thread(target=_read_all, args=(worker.results, worker.messages),
                                             name=f"forkwork-{worker.pid}", daemon=True)
            worker.reader.start()


def _read_all(fd: int, messages: "queue.SimpleQueue[Optional[bytes]]") -> None:
    """Put every message read from ``fd`` on ``messages`` (pickled), then None."""
    try:
        while True:
            data = _read_frame(fd)
            messages.put(data)
            if data is None:
                return
    except OSError:  # (the pipe was closed under it: nothing more is wanted)
        messages.put(None)


def ready(worker: Worker) -> bool:
    """True if the worker's next message, or the end of them, has arrived: :func:`receive` does
    not wait for the worker (with :func:`prefetch`; without it, True once the pipe has
    something to read)."""
    if worker.done or worker.ended:
        return True
    if worker.reader is None:
        return bool(select.select([worker.results], [], [], 0)[0])
    return not worker.messages.empty()


def receive(worker: Worker) -> Any:
    """The worker's next message, or :data:`NO_MESSAGE` (None) if it sends no more."""
    if worker.done or worker.ended:
        return NO_MESSAGE
    if worker.reader is None:
        return read_message(worker.results)
    data = worker.messages.get()
    if data is None:
        worker.ended = True
        return NO_MESSAGE
    return _loads(data)


def stop(workers: Sequence[Worker]) -> None:
    """Kill the workers (their remaining results are not wanted), close their pipes and reap
    them; a worker that has exited already is only reaped."""
    for worker in workers:
        if worker.done:
            continue
        worker.done = True
        try:
            os.kill(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if worker.reader is not None:  # (it reads to the end of the pipe: the killed worker closed it)
            worker.reader.join()
        os.close(worker.results)
        os.waitpid(worker.pid, 0)


def write_message(fd: int, value: Any) -> None:
    """Send ``value`` over the pipe ``fd`` as one length-prefixed pickle (see :func:`dumps`)."""
    data = dumps(value)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def read_message(fd: int) -> Any:
    """The next length-prefixed pickle from the pipe ``fd``, or :data:`NO_MESSAGE` (None) when the
    writer sent no more (it exited, failed or was killed)."""
    data = _read_frame(fd)
    return NO_MESSAGE if data is None else _loads(data)


def _read_frame(fd: int) -> Optional[bytes]:
    """The next length-prefixed message's bytes, or None at the end of the pipe."""
    header = _read_exactly(fd, _HEADER.size)
    return None if header is None else _read_exactly(fd, _HEADER.unpack(header)[0])


def _loads(data: bytes) -> Any:
    try:
        return pickle.loads(data)
    except Exception:
        return NO_MESSAGE


def dumps(value: Any) -> bytes:
    """``value`` pickled, frozen slotted dataclasses as their class and field values (see the
    module doc); ``pickle.loads`` gives an object equal to ``value``, field by field."""
    out = io.BytesIO()
    _Pickler(out, pickle.HIGHEST_PROTOCOL).dump(value)
    return out.getvalue()


class _Pickler(pickle.Pickler):
    """A pickler that sends the dataclasses :func:`_field_names` accepts as calls to their class."""

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        names = _FIELD_NAMES.get(cls, False)
        if names is False:
            names = _FIELD_NAMES[cls] = _field_names(cls)
        if names is None:
            return NotImplemented
        return cls, tuple([getattr(obj, name) for name in names])


_FIELD_NAMES: dict[type, Optional[tuple[str, ...]]] = {}


def _field_names(cls: type) -> Optional[tuple[str, ...]]:
    """The fields of ``cls``, in ``__init__``'s order, if calling ``cls`` with their values makes
    the same object again: a frozen dataclass with slots (whose default pickling is slow), every
    field an ``__init__`` parameter in field order, no ``__post_init__``, and pickled the
    dataclass way (no ``__reduce__`` or ``__getstate__`` of its own); else None."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or not params.init or "__slots__" not in cls.__dict__:
        return None
    if hasattr(cls, "__post_init__") or hasattr(cls, "__getnewargs_ex__") or hasattr(cls, "__getnewargs__"):
        return None
    if cls.__reduce__ is not object.__reduce__ or cls.__reduce_ex__ is not object.__reduce_ex__:
        return None
    if any(getattr(getattr(cls, name, None), "__module__", None) != "dataclasses"
           for name in ("__getstate__", "__setstate__")):
        return None
    fields = dataclasses.fields(cls)
    if len(fields) != len(getattr(cls, "__dataclass_fields__")) or not all(f.init for f in fields):
        return None
    names = tuple(f.name for f in fields)
    code = getattr(getattr(cls, "__init__", None), "__code__", None)
    if code is None or code.co_argcount != len(names) + 1 or code.co_varnames[1:len(names) + 1] != names:
        return None
    return names


def _read_exactly(fd: int, n: int) -> Optional[bytes]:
    chunks = []
    while n:
        block = os.read(fd, min(n, 1 << 20))
        if not block:
            return None
        chunks.append(block)
        n -= len(block)
    return b"".join(chunks)
