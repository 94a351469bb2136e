"""The state files of labs that outlive their process (``/run/kube-dataplane/labs/<name>.json``):
reading, updating, and removing everything a lab recorded (its server process, namespaces and
apply records), also for labs whose process is gone."""
from __future__ import annotations

import json
import os
import re
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from ..runtime.apply import STATE_DIR
from ..runtime.netns import NETNS_DIR
from ..errors import LabError
from .cluster import forget_namespace
from .namespaces import STATE_KIND, Lab, write_json_atomic

__all__ = ["LABS_DIR", "DEFAULT_LAB_NAME", "SERVER_MODULE", "require_root", "state_path", "check_name",
           "read_state", "update_state", "is_our_server", "remove_lab", "sweep_orphans", "LabInfo", "list_labs"]

LABS_DIR = os.path.join(STATE_DIR, "labs")
DEFAULT_LAB_NAME = "lab"
SERVER_MODULE = "dataplane.lab.serve"  # runs the reply servers of a lab that is up
_LAB_NAME = re.compile(r"^[a-z][a-z0-9]{1,15}$")
_VERIFY_LAB = re.compile(r"^dpv[0-9a-f]{6}$")  # labs of `dataplane verify` runs


def require_root() -> None:
    """Labs create network namespaces: refuse early, with one line, without the privileges."""
    if os.geteuid() != 0:
        raise LabError("building or removing a lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), for example "
                       "`sudo`, or `unshare --user --map-root-user --net --mount` for a private sandbox")


def state_path(name: str) -> str:
    """The state file of lab ``name``."""
    check_name(name)
    return os.path.join(LABS_DIR, f"{name}.json")


def check_name(name: str) -> str:
    """``name`` if it is a valid lab name (it prefixes every namespace of the lab)."""
    if not _LAB_NAME.match(name):
        raise LabError(f"lab name {name!r}: 2-16 lower-case letters and digits, starting with a letter")
    return name


def read_state(path: str) -> Optional[dict[str, Any]]:
    """A lab state file's content, None if there is none; LabError if it is not one."""
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LabError(f"{path}: unreadable lab state: {e}") from None
    if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
        raise LabError(f"{path}: not a kube-dataplane lab state file")
    return state


def update_state(path: str, **values: Any) -> None:
    """Merge ``values`` into a lab's state file (atomically)."""
    state = read_state(path)
    if state is None:
        raise LabError(f"{path}: the lab's state file disappeared")
    state.update(values)
    write_json_atomic(path, state)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_our_server(pid: int, path: str) -> bool:
    """Whether process ``pid`` is the server process of the lab whose state is ``path``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return SERVER_MODULE.encode() in argv and os.fsencode(path) in argv


def _stop_server(state: dict[str, Any], path: str) -> None:
    """End the lab's server process (recorded pid, checked to be ours): TERM, then KILL."""
    pid = state.get("server_pid")
    if not isinstance(pid, int) or not is_our_server(pid, path):
        return
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not is_our_server(pid, path):
                return
            time.sleep(0.01)


def remove_lab(path: str) -> list[str]:
    """Remove everything the lab recorded in ``path``: its server process, namespaces,
    apply records and the state file. Returns the namespaces removed."""
    state = read_state(path)
    if state is None:
        return []
    _stop_server(state, path)
    removed = Lab.destroy_from_state(path)
    for ns in state.get("namespaces", []):
        if isinstance(ns, str) and "/" not in ns:
            forget_namespace(ns)
    return removed


def sweep_orphans() -> list[str]:
    """Remove the labs of ``dataplane verify`` runs whose process is gone (killed mid-run)."""
    removed: list[str] = []
    try:
        entries = sorted(os.listdir(LABS_DIR))
    except FileNotFoundError:
        return removed
    for entry in entries:
        path = os.path.join(LABS_DIR, entry)
        try:
            state = read_state(path)
        except LabError:
            continue
        if state and _VERIFY_LAB.match(entry.removesuffix(".json")) and isinstance(state.get("pid"), int) \
                and not _alive(state["pid"]):
            removed += remove_lab(path)
    return removed


@dataclass(frozen=True, slots=True)
class LabInfo:
    """One lab as its state file records it (``dataplane lab list``)."""

    name: str
    #: "up" (ready, its server process running, every namespace there), "building" (its ``up``
    #: still runs), "broken" (its process died or a namespace is gone: ``lab down`` removes it),
    #: or "unreadable" (the state file could not be read)
    status: str
    created: Optional[float]  # seconds since the epoch
    backend: str
    families: tuple[str, ...]
    namespaces: tuple[str, ...]
    state_file: str

    def created_text(self) -> str:
        """When the lab was made, in UTC (ISO 8601, seconds), or "-" when unknown."""
        if self.created is None:
            return "-"
        return datetime.fromtimestamp(self.created, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")

    def as_json(self) -> dict[str, Any]:
        """The lab as a JSON object (``lab list --json``)."""
        return {"name": self.name, "status": self.status, "created": self.created_text(), "backend": self.backend,
                "families": list(self.families), "namespaces": list(self.namespaces), "state_file": self.state_file}


def _status(state: dict[str, Any], path: str) -> str:
    namespaces = [ns for ns in state.get("namespaces", []) if isinstance(ns, str)]
    present = all(os.path.exists(os.path.join(NETNS_DIR, ns)) for ns in namespaces)
    if state.get("ready"):
        pid = state.get("server_pid")
        serving = (isinstance(pid, int) and is_our_server(pid, path)) or (pid is None and not state.get("servers"))
        return "up" if serving and present else "broken"
    pid = state.get("pid")
    return "building" if isinstance(pid, int) and _alive(pid) and present else "broken"


def list_labs() -> list[LabInfo]:
    """Every lab that has a state file (also ``dataplane verify``'s and crashed ones), by name."""
    try:
        entries = sorted(e for e in os.listdir(LABS_DIR) if e.endswith(".json"))
    except FileNotFoundError:
        return []
    labs = []
    for entry in entries:
        path = os.path.join(LABS_DIR, entry)
        name = entry.removesuffix(".json")
        try:
            state = read_state(path)
        except LabError:
            labs.append(LabInfo(name, "unreadable", None, "-", (), (), path))
            continue
        if state is None:  # removed meanwhile
            continue
        created = state.get("created")
        families = state.get("families")
        labs.append(LabInfo(
            name, _status(state, path), float(created) if isinstance(created, (int, float)) else None,
            str(state.get("backend") or "-"),
            tuple(str(f) for f in families) if isinstance(families, list) else (),
            tuple(ns for ns in state.get("namespaces", []) if isinstance(ns, str)), path))
    return labs
