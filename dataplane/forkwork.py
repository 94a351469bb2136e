"""Forked workers that send pickled messages back over a pipe, for one-shot commands.

A worker is a child made by ``os.fork`` (it shares the parent's objects
copy-on-write, so nothing is sent to it) that runs one function and sends its
results to the parent as length-prefixed pickles over a pipe, in order. The
parent reads them with :func:`receive`; a worker that fails, exits early or is
killed simply sends no more messages (:func:`receive` then returns None), so the
parent can fall back to doing the work itself. :func:`stop` kills and reaps
workers whose results are no longer wanted.

Forking is only safe in a single-threaded program such as the CLI.
"""
from __future__ import annotations

import fcntl
import os
import pickle
import signal
import struct
from typing import Any, Callable, Optional, Sequence

__all__ = ["Worker", "start", "receive", "stop", "NO_MESSAGE", "write_message", "read_message"]

_HEADER = struct.Struct("<Q")
NO_MESSAGE: Any = None  # what receive returns when the worker sends nothing more


class Worker:
    """A forked child: its pid and the read end of its results pipe."""

    def __init__(self, pid: int, results: int) -> None:
        self.pid, self.results = pid, results
        self.done = False


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


def receive(worker: Worker) -> Any:
    """The worker's next message, or :data:`NO_MESSAGE` (None) if it sends no more."""
    if worker.done:
        return NO_MESSAGE
    return read_message(worker.results)


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
        os.close(worker.results)
        os.waitpid(worker.pid, 0)


def write_message(fd: int, value: Any) -> None:
    """Send ``value`` over the pipe ``fd`` as one length-prefixed pickle."""
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def read_message(fd: int) -> Any:
    """The next length-prefixed pickle from the pipe ``fd``, or :data:`NO_MESSAGE` (None) when the
    writer sent no more (it exited, failed or was killed)."""
    header = _read_exactly(fd, _HEADER.size)
    data = None if header is None else _read_exactly(fd, _HEADER.unpack(header)[0])
    if data is None:
        return NO_MESSAGE
    try:
        return pickle.loads(data)
    except Exception:
        return NO_MESSAGE


def _read_exactly(fd: int, n: int) -> Optional[bytes]:
    chunks = []
    while n:
        block = os.read(fd, min(n, 1 << 20))
        if not block:
            return None
        chunks.append(block)
        n -= len(block)
    return b"".join(chunks)
