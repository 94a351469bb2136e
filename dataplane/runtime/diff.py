"""``dataplane diff``: a node's compiled rules against what a network namespace holds now.

Both sides are read back from a kernel and put in the same canonical text
(:mod:`dataplane.backends.canonical`): the compiled file is loaded into an empty private
network namespace (``unshare --net``, gone when the tool exits) and listed there, so the
tools print both sides alike; the namespace's side shows only our own objects (the
``kube-proxy`` nft table; for iptables the chains the ownership record, kube-proxy's fixed
chains and the compiled file make ours, and the jumps to them that we added). The difference
is a unified diff from the namespace (``-``) to the compiled rules (``+``): what an apply
would change. Nothing in the namespace is changed.
"""
from __future__ import annotations

import difflib
import subprocess
from dataclasses import dataclass
from typing import Optional

from ..backends import backend_for
from ..backends.canonical import canonical_iptables, canonical_nftables, parse_save
from ..errors import ApplyError
from ..model import Cluster
from ..plan import Family, Mode, NodePlan
from .nslock import DEFAULT_LOCK_TIMEOUT, netns_lock

__all__ = ["DiffResult", "diff_cluster", "unified_diff", "iptables_views", "nftables_views",
           "iptables_transaction"]


@dataclass(frozen=True, slots=True)
class DiffResult:
    """The two canonical texts and their unified diff ("" when they are equal)."""

    plan: NodePlan
    compiled: str  # the compiled rules, canonical
    live: str  # what the namespace holds of ours, canonical
    diff: str

    @property
    def equal(self) -> bool:
        return not self.diff


def unified_diff(live: str, compiled: str, *, ns: str, label: str) -> str:
    """The unified diff from ``live`` (namespace ``ns``) to ``compiled`` (described by ``label``)."""
    return "".join(difflib.unified_diff(live.splitlines(keepends=True), compiled.splitlines(keepends=True),
                                        fromfile=f"netns {ns}", tofile=label))


def diff_cluster(ns: str, cluster: Cluster, node: str, *, backend: Optional[Mode] = None,
                 family: Family = "ipv4", lock_timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT) -> DiffResult:
    """Compile ``node``'s rules from ``cluster`` and compare them with what ``ns`` holds (see the
    module doc). Reads ``ns`` under its lock (waiting up to ``lock_timeout`` seconds for an apply);
    changes nothing. An unknown ``backend`` raises :class:`~dataplane.errors.UsageError`."""
    from ..compiler import compile_rules
    from . import netns

    chosen = backend_for(backend, cluster.proxy_config)
    netns.require_netns(ns)
    result = compile_rules(cluster, node, backend=chosen.name, family=family)
    with netns_lock(ns, lock_timeout):
        compiled, live = chosen.diff_views(ns, result.text, family=family)
    label = f"compiled (node {node}, {chosen.name}, {family})"
    return DiffResult(result.plan, compiled, live, unified_diff(live, compiled, ns=ns, label=label))


# --------------------------------------------------------------------------- a private namespace


def _in_scratch(script: str, text: str, *args: str) -> str:
    """Run shell ``script`` in a new, empty network namespace of its own (gone when it exits),
    with ``$1`` the path of an anonymous file holding ``text`` and ``args`` after it; its stdout.
    :class:`ApplyError` with the tools' message when it fails."""
    from .netns import memfd_text

    with memfd_text(text, "dataplane-diff") as fd:
        try:
            proc = subprocess.run(["unshare", "--net", "--", "sh", "-ec", script, "sh", f"/dev/fd/{fd}", *args],
                                  capture_output=True, text=True, pass_fds=(fd,), env={"PATH": _PATH, "LC_ALL": "C"})
        except FileNotFoundError as e:
            raise ApplyError(f"{e.filename}: command not found") from None
    if proc.returncode != 0:
        raise ApplyError(f"the compiled rules could not be loaded into an empty network namespace for "
                         f"comparison: {proc.stderr.strip()}", stderr=proc.stderr)
    return proc.stdout


_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --------------------------------------------------------------------------- iptables


def _tools(ipv6: bool) -> tuple[str, str]:
    return ("ip6tables-save", "ip6tables-restore") if ipv6 else ("iptables-save", "iptables-restore")


def iptables_transaction(ns: str, text: str, *, ipv6: bool, full: bool) -> str:
    """The ``iptables-restore --noflush`` input :func:`~dataplane.runtime.netns.apply_iptables`
    would run for ``text`` now (a full update, or a partial one when not ``full``)."""
    from . import netns

    snapshot = netns._parse_tables(netns._save(ns, ipv6, counters=True))
    return netns._prepare_restore(text, snapshot, remove_stale=full)[0]


def iptables_views(ns: str, text: str, *, ipv6: bool) -> tuple[str, str]:
    """(``text`` loaded into an empty namespace, ``ns``'s rules of ours), canonical."""
    from . import netns, ownership

    save, restore = _tools(ipv6)
    loaded = parse_save(_in_scratch('"$2" -w --noflush "$1"; "$3"', text, restore, save))
    every = {table: set(declared) for table, (declared, _) in loaded.items()}
    compiled = canonical_iptables(loaded, every, lambda table, rule: True)
    expected_jumps = {table: {r for r in rules if r.split()[1] in netns.BUILTIN_CHAINS}
                      for table, (_, rules) in loaded.items()}

    saved = netns._save(ns, ipv6)
    live, tables = parse_save(saved), netns._parse_tables(saved)
    owned = ownership.load(ns).owned("ipv6" if ipv6 else "ipv4")
    removal = ownership.plan_removal(tables, owned)
    ours = {table: set(removal.chains.get(table, ())) | set(removal.kept.get(table, ())) | every.get(table, set())
            for table in live}

    def jump_of_ours(table: str, rule: str) -> bool:
        return (rule in owned.get(table, {}).get("rules", ()) or rule in ownership.KUBE_PROXY_JUMPS.get(table, ())
                or rule in expected_jumps.get(table, ()))

    return compiled, canonical_iptables(live, ours, jump_of_ours)


# --------------------------------------------------------------------------- nftables


def nftables_views(ns: str, text: str, *, ipv6: bool) -> tuple[str, str]:
    """(``text`` loaded into an empty namespace, ``ns``'s ``kube-proxy`` table), canonical."""
    from . import netns

    family = "ip6" if ipv6 else "ip"
    loaded = _in_scratch('nft -f "$1"; nft list table "$2" kube-proxy', text, family)
    return canonical_nftables(loaded), canonical_nftables(netns.read_back_nftables(ns, ipv6=ipv6))
