"""Load a node's rules into a network namespace, incrementally and idempotently.

``apply_cluster`` remembers what it installed in each namespace (a record
under ``/run/kube-dataplane``, checked against the chains the kernel really
holds), so applying again sends only the difference: the chains and map
elements of the Services that changed, in one transaction per table. If the
record is missing, stale or does not match the kernel, it applies everything.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from typing import Optional

from .backends import iptables as ipt
from .backends import nftables as nft
from .compiler import CompileResult
from .model import Cluster
from .plan import Family, Mode

STATE_DIR = "/run/kube-dataplane"
_STATE_VERSION = 2  # 2: per-Service fragments in the record


def apply_compiled(ns: str, result: CompileResult) -> None:
    """Load a complete compiled file into ``ns`` atomically, then set the sysctls its rules need.

    On failure (:class:`~dataplane.errors.ApplyError`) the namespace keeps the
    rules it had, and no sysctl is changed.
    """
    from . import netns  # needs pyroute2; imported only when applying

    netns.require_netns(ns)
    plan = result.plan
    if plan.mode == "iptables":
        netns.apply_iptables(ns, result.text, ipv6=plan.family == "ipv6")
    else:
        netns.apply_nftables(ns, result.text)
    netns.set_sysctls(ns, dict(plan.sysctls))
    forget(ns, plan.mode, plan.family)  # the incremental record no longer describes the kernel


def _state_path(ns: str, mode: str, family: str) -> str:
    return os.path.join(STATE_DIR, ns.replace("/", "_"), f"{mode}-{family}.pickle")


def forget(ns: str, mode: Optional[str] = None, family: Optional[str] = None) -> None:
    """Drop the incremental records of ``ns`` (all of them by default)."""
    for m in ([mode] if mode else ["iptables", "nftables"]):
        for f in ([family] if family else ["ipv4", "ipv6"]):
            try:
                os.unlink(_state_path(ns, m, f))
            except FileNotFoundError:
                pass


def _load_record(ns: str, mode: str, family: str):
    try:
        with open(_state_path(ns, mode, family), "rb") as f:
            version, installed = pickle.load(f)
    except (OSError, pickle.PickleError, EOFError, ValueError, TypeError, AttributeError):
        return None
    return installed if version == _STATE_VERSION else None


def _save_record(ns: str, mode: str, family: str, installed) -> None:
    path = _state_path(ns, mode, family)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
    with os.fdopen(fd, "wb") as f:
        pickle.dump((_STATE_VERSION, installed), f)
    os.replace(tmp, path)


def apply_cluster(ns: str, cluster: Cluster, node: str, *, mode: Optional[Mode] = None,
                  family: Family = "ipv4", full: bool = False):
    """Bring ``ns`` to the rules of ``node`` with the smallest update; returns the
    :class:`~dataplane.proxier.SyncResult`. A failure leaves the previous rules in force."""
    from . import netns
    from .proxier import NetnsRunner, Proxier

    mode = mode or ("nftables" if cluster.proxy_config.mode == "nftables" else "iptables")
    proxier = Proxier(node, mode=mode, family=family, cluster=cluster, runner=NetnsRunner(ns))
    record = None if full else _load_record(ns, mode, family)
    if record is not None:
        held = netns.installed_chains(ns, mode, ipv6=family == "ipv6")
        if mode == "iptables":
            held = {c for c in held if c.startswith(ipt.SERVICE_CHAIN_PREFIXES)}
        else:
            held -= nft.FIXED_CHAINS
        if held == {c for f in record.fragments for c in f.chains}:
            proxier.restore_installed(record)
    forget(ns, mode, family)  # until this sync is known to be in the kernel
    result = proxier.sync(full=full)
    _save_record(ns, mode, family, proxier.installed())
    return result
