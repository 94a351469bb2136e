"""``lab up`` and ``lab down``: a lab built from a cluster that outlives this process, its reply
servers in a small background process (:mod:`dataplane.lab.serve`), everything recorded in its
state file so that ``down`` (or the next ``up`` of the same name, after a crash) removes all of it."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

from ..errors import LabError
from ..model import Cluster
from ..runtime.netns import NETNS_DIR
from ..plan import Family, Mode
from .cluster import ClusterLab
from .layout import derive_layout, families_in_use
from .state import (
    DEFAULT_LAB_NAME, LABS_DIR, SERVER_MODULE, check_name, is_our_server, read_state, remove_lab, require_root,
    state_path, update_state,
)
from .summary import layout_summary

__all__ = ["UpResult", "lab_up", "lab_down"]

_READY_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class UpResult:
    """What ``lab up`` built."""

    name: str
    state_file: str
    server_pid: Optional[int]
    leftovers: tuple[str, ...]  # namespaces of a crashed earlier lab of the same name, removed first
    lab: ClusterLab


def _clear_leftovers(name: str, path: str) -> list[str]:
    """Remove a crashed lab of this name; refuse if a healthy one is up."""
    state = read_state(path)
    if state is None:
        return []
    pid = state.get("server_pid")
    healthy = state.get("ready") and (
        (isinstance(pid, int) and is_our_server(pid, path)) or (pid is None and not state.get("servers")))
    if healthy and all(os.path.exists(os.path.join(NETNS_DIR, ns)) for ns in state.get("namespaces", [])):
        raise LabError(f"lab {name} is already up; remove it first with: dataplane lab down --name {name}")
    return remove_lab(path)


def _spawn_server(path: str) -> subprocess.Popen:
    """Start the process that keeps the lab's servers running, detached from this one."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-m", SERVER_MODULE, path],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        start_new_session=True, env=env, close_fds=True,
    )


def _await_ready(proc: subprocess.Popen) -> None:
    """Wait for the server process's "ready" line; LabError with its message otherwise."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], _READY_TIMEOUT)
    line = proc.stdout.readline().decode(errors="replace").strip() if ready else ""
    proc.stdout.close()
    if line != "ready":
        raise LabError(f"the lab's server process did not start: {line or 'no answer'}")


@contextmanager
def _counting(progress: Optional[Callable[[str], None]], what: str, total: int,
              count: Callable[[], int], period: float = 0.2) -> Iterator[None]:
    """Report ``what N/total`` to ``progress`` every ``period`` seconds while the body runs
    (``count()`` says how far it is); nothing without ``progress``."""
    if progress is None:
        yield
        return
    stop = threading.Event()

    def watch() -> None:
        while True:
            progress(f"{what} {min(count(), total)}/{total}")
            if stop.wait(period):
                return

    thread = threading.Thread(target=watch, name="lab-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _existing(namespaces: Sequence[str]) -> Callable[[], int]:
    """How many of ``namespaces`` exist (under /run/netns)."""
    return lambda: sum(os.path.exists(os.path.join(NETNS_DIR, ns)) for ns in namespaces)


def lab_up(cluster: Cluster, *, name: str = DEFAULT_LAB_NAME, backend: Optional[Mode] = None,
           families: Optional[Sequence[Family]] = None,
           progress: Optional[Callable[[str], None]] = None) -> UpResult:
    """Build a lab for ``cluster`` that outlives this process (see the module doc).

    A crashed lab of the same name is removed first; a running one is an error.
    On failure (or SIGTERM/SIGINT) everything built so far is removed again.
    ``progress``, when given, is called with a short status as the namespaces, the nodes'
    rules and the reply servers come up (e.g. :meth:`dataplane.progress.Progress.update`).
    """
    check_name(name)
    require_root()
    path = state_path(name)
    os.makedirs(LABS_DIR, exist_ok=True)
    leftovers = _clear_leftovers(name, path)
    layout = derive_layout(cluster, families or families_in_use(cluster))
    cl = ClusterLab(layout, backend=backend, prefix=name, state_file=path)
    for ns in cl.lab.namespaces:
        if os.path.exists(os.path.join(NETNS_DIR, ns)):
            raise LabError(f"network namespace {ns} exists and is not part of lab {name}; "
                           "choose another --name")
    proc: Optional[subprocess.Popen] = None
    namespaces = list(cl.lab.namespaces)
    try:
        with _counting(progress, "creating namespaces", len(namespaces), _existing(namespaces)):
            cl.start(serve=False)
        if progress is not None:
            progress(f"loading the rules of {len(layout.nodes)} node(s), {', '.join(layout.families)}")
        cl.apply(cluster)
        specs = cl.server_specs()
        update_state(path, lab=name, backend=cl.mode, families=list(layout.families), servers=specs,
                     ready=False, summary=layout_summary(cl))
        if specs:
            if progress is not None:
                progress(f"starting the reply servers of {len(specs)} pod(s) and node(s)")
            proc = _spawn_server(path)
            update_state(path, server_pid=proc.pid)
            _await_ready(proc)
        update_state(path, ready=True)
    except BaseException:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        cl.close()
        raise
    return UpResult(name, path, proc.pid if proc else None, tuple(leftovers), cl)


def lab_down(name: str = DEFAULT_LAB_NAME) -> list[str]:
    """Remove lab ``name`` (from any process); returns the namespaces removed."""
    path = state_path(name)
    require_root()
    if read_state(path) is None:
        raise LabError(f"no lab named {name} is up (no {path})")
    return remove_lab(path)
