"""One kube-dataplane change at a time per network namespace.

Two ``dataplane apply`` runs against one namespace used to interleave: both
exited 0 and the kernel held a mix of both inputs (iptables), or ``nft -f``
spun for minutes (nftables). Every entry point that changes a namespace's
rules (:func:`~dataplane.runtime.apply.apply_cluster`, :func:`~dataplane.runtime.apply.apply_compiled`,
:func:`~dataplane.runtime.netns.cleanup`, the appliers themselves and a
:class:`~dataplane.runtime.proxier.Proxier`'s :class:`~dataplane.runtime.proxier.NetnsRunner`)
runs under :func:`netns_lock`.

The lock is an exclusive ``flock`` on the namespace's own bind mount
(``/run/netns/NAME``, opened read-only): its inode is the namespace itself, so
every path to one namespace names the same lock, and no lock file can outlive
the namespace. A second caller polls until ``timeout`` seconds have passed,
then gets :class:`~dataplane.errors.ApplyError` naming the holder's pid (from
``/proc/locks``).

The lock is re-entrant within a thread (an apply that calls the appliers
takes it once), and it is handed to the tools the holder starts (see
:func:`held_fds`): a holder killed while ``nft`` or ``iptables-restore`` runs
keeps the namespace locked until that tool has finished, so the next caller
never starts while it still commits.
"""
from __future__ import annotations

import fcntl
import functools
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, TypeVar

from ..errors import ApplyError

__all__ = ["DEFAULT_LOCK_TIMEOUT", "netns_lock", "locked_netns", "path_lock", "held_fds", "lock_holder"]

#: Seconds a caller waits for another one's apply or cleanup to finish (``--lock-timeout``).
DEFAULT_LOCK_TIMEOUT = 30.0

_POLL = 0.05  # seconds between attempts while another process holds the lock


@dataclass
class _Held:
    fd: int
    thread: int
    depth: int


_held: dict[tuple[int, int], _Held] = {}  # (st_dev, st_ino) -> this process's hold
_mutex = threading.Lock()


def held_fds() -> tuple[int, ...]:
    """The descriptors of the locks the calling thread holds (for a child's ``pass_fds``)."""
    me = threading.get_ident()
    with _mutex:
        return tuple(h.fd for h in _held.values() if h.thread == me)


def lock_holder(fd: int) -> Optional[int]:
    """The pid ``/proc/locks`` gives for the ``flock`` on the file of ``fd``, if any."""
    st = os.fstat(fd)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 6182 00:04:4026532240 0 EOF"; waiters have "->" after the number
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == dev and parts[4].isdigit():
            return int(parts[4])
    return None


def _describe_holder(pid: Optional[int]) -> str:
    if pid is None:
        return "pid unknown"
    if not os.path.exists(f"/proc/{pid}"):
        return f"pid {pid}, which has exited: a tool it started still runs"
    return f"pid {pid}"


@contextmanager
def path_lock(path: str, *, timeout: Optional[float], what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (opened read-only) for the body.

    Waits up to ``timeout`` seconds (``None``: for ever; 0: one attempt) while
    another process holds it, then raises :class:`ApplyError` naming ``what``
    and the holder. Re-entrant within the calling thread.
    """
    if timeout is not None and timeout < 0:
        raise ApplyError(f"lock timeout must not be negative: {timeout:g}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ApplyError(f"cannot open {path} to lock {what}: {e.strerror}") from e
    st = os.fstat(fd)
    key, me = (st.st_dev, st.st_ino), threading.get_ident()
    with _mutex:
        mine = _held.get(key)
        if mine is not None and mine.thread == me:
            mine.depth += 1
    if mine is not None and mine.thread == me:
        os.close(fd)
        try:
            yield
        finally:
            with _mutex:
                mine.depth -= 1
        return
    try:
        _acquire(fd, timeout, what)
    except BaseException:
        os.close(fd)
        raise
    with _mutex:
        _held[key] = _Held(fd, me, 1)
    try:
        yield
    finally:
        with _mutex:
            del _held[key]
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _acquire(fd: int, timeout: Optional[float], what: str) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise ApplyError(
                f"another kube-dataplane apply holds the lock of {what} ({_describe_holder(lock_holder(fd))}): "
                f"gave up waiting after {timeout:g} s (--lock-timeout)")
        time.sleep(_POLL if deadline is None else min(_POLL, max(deadline - now, 0.0)))


@contextmanager
def netns_lock(ns: str, timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the lock of the named network namespace for the body (see the module doc)."""
    from .netns import netns_path, require_netns

    require_netns(ns)
    with path_lock(netns_path(ns), timeout=timeout, what=f"netns {ns}"):
        yield


_R = TypeVar("_R")


def locked_netns(func: Callable[..., _R]) -> Callable[..., _R]:
    """Decorate ``func(ns, ...)`` to run under :func:`netns_lock` of ``ns``; the decorated
    function takes one more keyword, ``lock_timeout`` (default :data:`DEFAULT_LOCK_TIMEOUT`)."""

    @functools.wraps(func)
    def wrapper(ns: str, *args: Any, lock_timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT, **kwargs: Any) -> _R:
        with netns_lock(ns, lock_timeout):
            return func(ns, *args, **kwargs)

    return wrapper
