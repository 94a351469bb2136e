"""Load a node's rules into a network namespace, incrementally and idempotently.

``apply_cluster`` remembers what it installed in each namespace (a record
under ``/run/kube-dataplane``, with a fingerprint of what the kernel held right
after that sync, see :mod:`dataplane.runtime.drift`), so applying again sends only the
difference: the chains and map elements of the Services that changed, in one
transaction per table. If the record is missing or stale, or the kernel's copy
changed since (drift), it applies everything.

:func:`dry_run_cluster` finds what ``apply_cluster`` would send, the same way, and sends nothing.

Every entry point holds the namespace's lock (:mod:`dataplane.runtime.nslock`) while it
reads and changes the namespace, waiting up to ``lock_timeout`` seconds for
another apply or cleanup to finish.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
from typing import TYPE_CHECKING, Optional, Sequence

from ..backends import Backend, backend_for, backend_names, get_backend
from ..compiler import CompileResult
from ..model import Cluster
from .nslock import DEFAULT_LOCK_TIMEOUT, netns_lock
from ..plan import Family, Mode

if TYPE_CHECKING:
    from .proxier import SyncResult

STATE_DIR = "/run/kube-dataplane"
_STATE_VERSION = 3  # 2: per-Service fragments in the record; 3: with the kernel's fingerprint
_TMP_PREFIX = ".record-"  # a record being written (left over only by a killed apply)


def apply_compiled(ns: str, result: CompileResult, *,
                   lock_timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT) -> list[str]:
    """Load a complete compiled file into ``ns`` atomically, then set the sysctls its rules need
    (recording the values they had, for cleanup). Holds the namespace's lock throughout.

    On failure (:class:`~dataplane.errors.ApplyError`) the namespace keeps the
    rules it had, and no sysctl is changed. Once the rules are in, what an earlier
    apply of the other backend left for the family is removed (see
    :meth:`~dataplane.backends.base.Backend.remove_leftovers`); returns one line per removal.
    """
    from . import netns  # needs pyroute2; imported only when applying

    netns.require_netns(ns)
    with netns_lock(ns, lock_timeout):
        return _apply_compiled(ns, result)


def _apply_compiled(ns: str, result: CompileResult) -> list[str]:
    """:func:`apply_compiled`, the namespace lock held."""
    from . import ownership

    plan = result.plan
    backend = get_backend(plan.mode)
    backend.load(ns, result.text, family=plan.family, full=True)
    ownership.set_sysctls(ns, dict(plan.sysctls))
    forget(ns, plan.mode, plan.family)  # the incremental record no longer describes the kernel
    return _remove_leftovers(ns, backend, plan.family, plan.sysctls)


def _remove_leftovers(ns: str, backend: Backend, family: Family, sysctls: Sequence[tuple[str, str]]) -> list[str]:
    """The other backends' leftovers for ``family`` go (and their incremental records)."""
    removed = backend.remove_leftovers(ns, family, keep_sysctls=[k for k, _ in sysctls])
    for other in backend_names():
        if other != backend.name:
            forget(ns, other, family)
    return removed


def _state_path(ns: str, mode: str, family: str) -> str:
    return os.path.join(STATE_DIR, ns.replace("/", "_"), f"{mode}-{family}.pickle")


def forget(ns: str, mode: Optional[str] = None, family: Optional[str] = None) -> None:
    """Drop the incremental records of ``ns`` (all of them by default)."""
    for m in ([mode] if mode else backend_names()):
        for f in ([family] if family else ["ipv4", "ipv6"]):
            try:
                os.unlink(_state_path(ns, m, f))
            except FileNotFoundError:
                pass


def _load_record(ns: str, mode: str, family: str):
    """(what the Proxier installed, the kernel's fingerprint after it), or None."""
    try:
        with open(_state_path(ns, mode, family), "rb") as f:
            version, installed, seen = pickle.load(f)
    except (OSError, pickle.PickleError, EOFError, ValueError, TypeError, AttributeError):
        return None
    return (installed, seen) if version == _STATE_VERSION else None


def _save_record(ns: str, mode: str, family: str, installed, seen) -> None:
    """Write the record atomically. Called with the namespace lock held, so a temporary
    file found next to it was left by a killed apply and is removed."""
    path = _state_path(ns, mode, family)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.startswith(_TMP_PREFIX):
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_TMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump((_STATE_VERSION, installed, seen), f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def apply_cluster(ns: str, cluster: Cluster, node: str, *, backend: Optional[Mode] = None,
                  family: Family = "ipv4", full: bool = False,
                  lock_timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT):
    """Bring ``ns`` to the rules of ``node`` with the smallest update; returns the
    :class:`~dataplane.runtime.proxier.SyncResult` (its ``leftovers``: what an earlier apply of the
    other backend left and this one removed; its ``drift``: what had changed in the kernel
    since the last sync, repaired by this one's full sync). A failure leaves the previous
    rules in force. Holds the namespace's lock, waiting up to ``lock_timeout`` seconds.
    ``backend`` defaults to the KubeProxyConfiguration's mode; an unknown one raises
    :class:`~dataplane.errors.UsageError` at once."""
    from . import netns

    chosen = backend_for(backend, cluster.proxy_config)
    netns.require_netns(ns)
    with netns_lock(ns, lock_timeout):
        return _apply_cluster(ns, cluster, node, backend=chosen, family=family, full=full)


def _restored_proxier(ns: str, cluster: Cluster, node: str, *, backend: Backend, family: Family, full: bool,
                      runner):
    """A Proxier for ``node`` that trusts the namespace's record when it has one and the kernel
    still matches it (then its next sync is partial); with the record's fingerprint, the
    generation the drift check holds for, and what drifted ("" if nothing). Reads only."""
    from . import drift
    from .proxier import Proxier

    mode = backend.name
    proxier = Proxier(node, backend=mode, family=family, cluster=cluster, runner=runner)
    record = None if full else _load_record(ns, mode, family)
    seen, checked, drifted = None, None, ""
    if record is not None:
        installed, seen = record
        try:
            drifted, checked = drift.check(ns, mode, family, seen)
        except OSError as e:
            drifted = f"could not compare the kernel's rules with the last sync ({e.strerror})"
        if not drifted:
            proxier.restore_installed(installed)
    return proxier, seen, checked, drifted


@dataclasses.dataclass(frozen=True, slots=True)
class DryRun:
    """What :func:`apply_cluster` would do now, found without changing anything."""

    #: The sync it would make: its ``kind`` ("full", "partial" or "none"), ``text`` (the update the
    #: Proxier would hand the backend), ``plan`` and ``changed``.
    sync: "SyncResult"
    #: The exact input the backend's tool would get (``iptables-restore`` input as rewritten for
    #: the tables as they are now, or the ``nft -f`` script); "" when nothing would be sent.
    transaction: str
    #: Why the sync would be full though a record exists ("drift repaired: ..."), else "".
    drift: str = ""


def dry_run_cluster(ns: str, cluster: Cluster, node: str, *, backend: Optional[Mode] = None,
                    family: Family = "ipv4", full: bool = False,
                    lock_timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT) -> DryRun:
    """What :func:`apply_cluster` with the same arguments would send to ``ns`` now (full or
    partial, decided from the namespace's record as apply decides), without sending anything,
    changing the record or any sysctl. Holds the namespace's lock only while reading."""
    from . import netns

    chosen = backend_for(backend, cluster.proxy_config)
    netns.require_netns(ns)
    with netns_lock(ns, lock_timeout):
        proxier, _seen, _checked, drifted = _restored_proxier(ns, cluster, node, backend=chosen, family=family,
                                                             full=full, runner=None)
        result = proxier.sync(full=full)
        transaction = chosen.transaction(ns, result.text, family=family, full=result.kind == "full") \
            if result.text else ""
    return DryRun(result, transaction, f"drift repaired: {drifted}" if drifted else "")


def _apply_cluster(ns: str, cluster: Cluster, node: str, *, backend: Backend, family: Family, full: bool):
    """:func:`apply_cluster`, the namespace lock held."""
    from . import drift
    from .proxier import NetnsRunner

    mode = backend.name
    proxier, seen, checked, drifted = _restored_proxier(ns, cluster, node, backend=backend, family=family,
                                                         full=full, runner=NetnsRunner(ns))
    forget(ns, mode, family)  # until this sync is known to be in the kernel
    result = proxier.sync(full=full)
    leftovers = _remove_leftovers(ns, backend, family, result.plan.sysctls)
    try:
        after = drift.after_sync(ns, mode, family, base=None if drifted else seen, checked=checked,
                                 update=result.text, full=result.kind == "full")
    except OSError:
        after = None  # no record: the next apply writes everything
    if after is not None:
        _save_record(ns, mode, family, proxier.installed(), after)
    changes = {"leftovers": tuple(leftovers)} if leftovers else {}
    if drifted:
        changes["drift"] = f"drift repaired: {drifted}"
    return dataclasses.replace(result, **changes) if changes else result
