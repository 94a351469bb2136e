"""What kube-dataplane installed in each network namespace, so that cleanup removes exactly that.

Other programs keep ``KUBE-*`` chains too (kubelet's ``KUBE-KUBELET-CANARY`` and
``KUBE-FIREWALL``, kube-router's ``KUBE-ROUTER-*``, ``KUBE-POD-FW-*`` and
``KUBE-NWPLCY-*``), so a name prefix says nothing about who made a chain. Every
apply therefore records, per namespace, in ``/run/kube-dataplane/<ns>/ownership.json``:

* the iptables chains it created (declared chains that did not exist before,
  per family and table) and the rules it added to built-in chains (read back in
  ``iptables-save``'s canonical form);
* every sysctl it changed, with the value it had before (only the first time).

:func:`cleanup` removes the recorded chains and rules, plus the fixed chains
kube-proxy's own cleanup removes (:data:`KUBE_PROXY_CHAINS`, and its jump rules
:data:`KUBE_PROXY_JUMPS`) and the per-service chains reachable from those; it
restores the recorded sysctls *before* removing rules (``route_localnet`` must be
off again before the localnet DROP goes, CVE-2020-8558). A chain of ours that a
rule of another program still jumps to is kept, with a note.

A record belongs to one namespace instance (it holds the namespace's inode): a
namespace deleted and re-created under the same name starts with no record.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, Mapping, Optional, Sequence

from . import apply as _apply
from . import netns
from ..backends import iptables as _ipt
from ..errors import ApplyError, UsageError
from .nslock import locked_netns

__all__ = [
    "RECORD_FILE",
    "KUBE_PROXY_CHAINS",
    "KUBE_PROXY_JUMPS",
    "Record",
    "Removal",
    "record_path",
    "load",
    "save",
    "discard",
    "note_iptables",
    "set_sysctls",
    "restore_sysctls",
    "plan_removal",
    "cleanup",
    "cleanup_namespace",
    "remove_iptables_leftovers",
    "remove_nftables_leftovers",
    "require_root",
]

RECORD_FILE = "ownership.json"
_VERSION = 1

#: Chains kube-proxy's iptables ``CleanupLeftovers`` deletes, per table: ours even without a record.
KUBE_PROXY_CHAINS: Mapping[str, frozenset[str]] = {
    "nat": frozenset({"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ",
                      "KUBE-PROXY-CANARY"}),
    "filter": frozenset({"KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS",
                         "KUBE-PROXY-FIREWALL", "KUBE-PROXY-CANARY"}),
    "mangle": frozenset({"KUBE-PROXY-CANARY"}),
}

#: Tables cleanup looks at, in the order it changes them.
_TABLES = ("filter", "nat", "mangle")

Family = Literal["ipv4", "ipv6"]


def _jump_rule(builtin: str, match: str, comment: str, chain: str) -> str:
    """A jump as ``iptables-save`` prints it (the backend writes it in that form with ``-I``)."""
    note = f"-m comment --comment {_ipt.quote(comment)} " if comment else ""
    return f"-A {builtin} {match}{note}-j {chain}"


#: kube-proxy's jump rules from built-in chains (``iptablesJumpChains``), which its cleanup deletes.
#: Kubelet's ``KUBE-FIREWALL`` jumps are not among them. The backend holds the one list of them.
KUBE_PROXY_JUMPS: Mapping[str, frozenset[str]] = {
    "filter": frozenset(_jump_rule(*j) for j in _ipt._FILTER_JUMPS),
    "nat": frozenset(_jump_rule(*j) for j in _ipt._NAT_JUMPS),
    "mangle": frozenset(),
}


def require_root(action: str) -> None:
    """Raise :class:`UsageError` (one line) unless the process runs as root: changing a
    namespace's rules and sysctls needs CAP_NET_ADMIN and CAP_SYS_ADMIN (``setns``)."""
    if os.geteuid() != 0:
        raise UsageError(f"{action} needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), for example `sudo`, "
                         "or `unshare --user --map-root-user --net --mount` for a private sandbox")


# --------------------------------------------------------------------------- the record


@dataclass
class Record:
    """What kube-dataplane installed in one namespace.

    ``iptables[family][table]`` is ``{"chains": [...], "rules": [...]}``: chains it
    created and rules (``-A BUILTIN ...``, one entry per copy) it added to built-in
    chains. ``sysctls`` maps a path below ``/proc/sys`` to its value before the
    first change.
    """

    netns_id: Optional[list[int]] = None
    iptables: dict[str, dict[str, dict[str, list[str]]]] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)

    def table(self, family: str, table: str) -> dict[str, list[str]]:
        """The (mutable) entry of one family's table, created empty when missing."""
        entry = self.iptables.setdefault(family, {}).setdefault(table, {})
        entry.setdefault("chains", [])
        entry.setdefault("rules", [])
        return entry

    def owned(self, family: str) -> dict[str, dict[str, list[str]]]:
        """The entries of one family (table -> entry); empty when nothing is recorded."""
        return self.iptables.get(family, {})

    def prune(self) -> None:
        """Drop empty entries."""
        for family in list(self.iptables):
            tables = self.iptables[family]
            for name in list(tables):
                if not tables[name].get("chains") and not tables[name].get("rules"):
                    del tables[name]
            if not tables:
                del self.iptables[family]

    def is_empty(self) -> bool:
        self.prune()
        return not self.iptables and not self.sysctls


def record_path(ns: str) -> str:
    """The ownership record of namespace ``ns``."""
    netns.netns_path(ns)  # validates the name
    return os.path.join(_apply.STATE_DIR, ns.replace("/", "_"), RECORD_FILE)


def _netns_id(ns: str) -> list[int]:
    try:
        st = os.stat(netns.netns_path(ns))
    except FileNotFoundError:
        raise ApplyError(f"network namespace {ns} does not exist") from None
    return [st.st_dev, st.st_ino]


def load(ns: str) -> Record:
    """The record of ``ns``; an empty one when there is none, it is unreadable, or it was
    made for an earlier namespace of the same name."""
    current = _netns_id(ns)
    try:
        with open(record_path(ns)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return Record(current)
    if not isinstance(data, dict) or data.get("version") != _VERSION or data.get("netns") != current:
        return Record(current)
    iptables, sysctls = data.get("iptables"), data.get("sysctls")
    if not isinstance(iptables, dict) or not isinstance(sysctls, dict):
        return Record(current)
    return Record(current, iptables, {str(k): str(v) for k, v in sysctls.items()})


def save(ns: str, record: Record) -> None:
    """Write ``record`` atomically (an empty record removes the file)."""
    path = record_path(ns)
    if record.is_empty():
        discard(ns)
        return
    directory = os.path.dirname(path)
    data = {"version": _VERSION, "netns": record.netns_id or _netns_id(ns),
            "iptables": record.iptables, "sysctls": record.sysctls}
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ownership-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise ApplyError(f"cannot record what was installed in network namespace {ns}: "
                         f"{e.filename or path}: {e.strerror}") from e


def discard(ns: str) -> None:
    """Remove the record of ``ns`` (and its directory when nothing else is left in it)."""
    path = record_path(ns)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    try:
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass


def _family(ipv6: bool) -> Family:
    return "ipv6" if ipv6 else "ipv4"


# --------------------------------------------------------------------------- recording an apply


def note_iptables(ns: str, ipv6: bool, before: Mapping[str, "netns._Table"], text: str) -> None:
    """Record what a successful ``iptables-restore --noflush`` of ``text`` installed.

    ``before`` is the snapshot taken before the restore. Chains ``text`` declares
    that did not exist are recorded, chains it deletes (``-X``) are forgotten, and
    the rules it added to built-in chains are read back from the kernel (only
    those jumping to a chain ``text`` declares or the record holds).
    """
    family = _family(ipv6)
    record = load(ns)
    changed = False
    for name, block in netns._parse_tables(text).items():
        declared = {c for c in block.chains() if c not in netns.BUILTIN_CHAINS}
        deleted = {ln.split()[1] for ln in block.lines if ln.startswith("-X ") and len(ln.split()) > 1}
        existed = set(before[name].chains()) if name in before else set()
        entry = record.table(family, name)
        chains = set(entry["chains"])
        now = (chains | (declared - existed)) - deleted
        if now != chains:
            entry["chains"] = sorted(now)
            changed = True
        builtins = sorted({
            rule.split()[1] for rule in map(netns._strip_rule_counters, block.lines)
            if rule.startswith(("-A ", "-I ")) and len(rule.split()) > 1 and rule.split()[1] in netns.BUILTIN_CHAINS
        })
        if builtins:
            added = _added_builtin_rules(ns, ipv6, name, builtins, before.get(name), declared | now)
            if added:
                entry["rules"].extend(added)
                changed = True
    if changed:
        save(ns, record)


def _added_builtin_rules(ns: str, ipv6: bool, table: str, chains: Sequence[str],
                         before: Optional["netns._Table"], targets: set[str]) -> list[str]:
    """Rules of the built-in ``chains`` that are new since ``before`` and jump to ``targets``."""
    tool = "ip6tables" if ipv6 else "iptables"
    had = Counter(r for r in (before.rules() if before else ()) if r.split()[1] in chains)
    now: Counter[str] = Counter()
    for chain in chains:
        out = netns.run_in(ns, [tool, "-w", "-t", table, "-S", chain]).stdout
        now.update(ln.strip() for ln in out.splitlines() if ln.startswith("-A "))
    return [r for r in (now - had).elements() if netns._jump_target(r) in targets]


def set_sysctls(ns: str, values: Mapping[str, str]) -> None:
    """:func:`dataplane.runtime.netns.set_sysctls`, recording first the previous value of each
    sysctl this changes (only the first time kube-dataplane changes it)."""
    paths = {netns._sysctl_path(k)[len("/proc/sys/"):]: str(v) for k, v in values.items()}
    record = load(ns)
    current: dict[str, str] = {}
    with netns.in_netns(ns):
        for path in paths:
            if path in record.sysctls:
                continue
            try:
                with open("/proc/sys/" + path) as f:
                    current[path] = f.read().strip()
            except OSError:
                pass  # netns.set_sysctls reports it
    new = {p: current[p] for p, v in paths.items() if p in current and current[p] != v.strip()}
    if new:
        record.sysctls.update(new)
        save(ns, record)
    netns.set_sysctls(ns, values)


def _sysctl_family(path: str) -> Family:
    return "ipv6" if path.startswith("net/ipv6/") else "ipv4"


def restore_sysctls(ns: str, family: Family, *, keep: Sequence[str] = ()) -> list[str]:
    """Put back the recorded sysctls of ``family`` (``net.ipv6.*`` is IPv6, everything else
    IPv4), except those named in ``keep``; returns ``key=value`` of each one restored.
    A sysctl of an interface that is gone is forgotten."""
    keep_paths = {netns._sysctl_path(k)[len("/proc/sys/"):] for k in keep}
    record = load(ns)
    todo = {p: v for p, v in record.sysctls.items() if _sysctl_family(p) == family and p not in keep_paths}
    if not todo:
        return []
    restored = []
    with netns.in_netns(ns):
        for path, value in todo.items():
            try:
                with open("/proc/sys/" + path, "w") as f:
                    f.write(value)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise ApplyError(f"cannot restore {path.replace('/', '.')}={value} in network namespace "
                                 f"{ns}: {e.strerror}") from e
            else:
                restored.append(f"{path.replace('/', '.')}={value}")
    for path in todo:
        del record.sysctls[path]
    save(ns, record)
    return restored


# --------------------------------------------------------------------------- removing what is ours


@dataclass(frozen=True)
class Removal:
    """What cleanup removes from one family's iptables tables.

    ``text`` is the ``iptables-restore --noflush`` input ("" when nothing is ours);
    ``chains`` and ``rules`` (``-A ...`` lines) what it deletes, per table; ``kept``
    chains of ours that another program's rules still jump to.
    """

    text: str
    chains: Mapping[str, tuple[str, ...]]
    rules: Mapping[str, tuple[str, ...]]
    kept: Mapping[str, tuple[str, ...]]

    def notes(self, family: Family) -> list[str]:
        """One line per table with chains that had to stay."""
        return [f"kept {family} {table} chain(s) {', '.join(chains)}: rules of another program still jump to them"
                for table, chains in self.kept.items() if chains]


def plan_removal(tables: Mapping[str, "netns._Table"], owned: Mapping[str, Mapping[str, Sequence[str]]]
                 ) -> Removal:
    """Decide what to remove, given ``tables`` (parsed ``iptables-save``) and the record's
    entries of that family (``owned``, see :class:`Record`).

    Ours: recorded chains, :data:`KUBE_PROXY_CHAINS`, and per-service chains reachable
    from those. Removed with them: rules of built-in chains that jump to them and
    that are recorded or are kube-proxy's own jumps, and every other recorded rule.
    A chain of ours that any other rule jumps to stays, with all it reaches.
    """
    out: list[str] = []
    chains_out: dict[str, tuple[str, ...]] = {}
    rules_out: dict[str, tuple[str, ...]] = {}
    kept_out: dict[str, tuple[str, ...]] = {}
    for name in _TABLES:
        t = tables.get(name)
        if t is None:
            continue
        entry = owned.get(name, {})
        present = {c for c in t.chains() if c not in netns.BUILTIN_CHAINS}
        rules = t.rules()
        recorded = Counter(entry.get("rules", ()))
        by_chain: dict[str, list[str]] = {}
        for r in rules:
            by_chain.setdefault(r.split()[1], []).append(r)

        def reach(start: set[str], within: Optional[set[str]] = None) -> set[str]:
            """``start`` and the chains reached from it: per-service chains (``within`` None)
            or chains of ``within``."""
            seen, stack = set(start), list(start)
            while stack:
                for r in by_chain.get(stack.pop(), ()):
                    target = netns._jump_target(r)
                    if target in seen or target not in present:
                        continue
                    if within is None and not target.startswith(_ipt.SERVICE_CHAIN_PREFIXES):
                        continue
                    if within is not None and target not in within:
                        continue
                    seen.add(target)
                    stack.append(target)
            return seen

        ours = reach((set(entry.get("chains", ())) | KUBE_PROXY_CHAINS.get(name, frozenset())) & present)
        kept: set[str] = set()
        while True:
            blocked = set()
            for r in rules:
                source, target = r.split()[1], netns._jump_target(r)
                if target not in ours or target in kept or (source in ours and source not in kept):
                    continue
                if source in netns.BUILTIN_CHAINS and (recorded[r] or r in KUBE_PROXY_JUMPS.get(name, ())):
                    continue
                blocked.add(target)
            if not blocked:
                break
            kept |= reach(blocked, ours)
        delete = ours - kept
        dropped: list[str] = []
        for r in rules:
            source, target = r.split()[1], netns._jump_target(r)
            if source in delete:
                continue
            if target in delete or (source in netns.BUILTIN_CHAINS and recorded[r] > 0):
                dropped.append(r)
                recorded[r] -= 1
        if kept:
            kept_out[name] = tuple(sorted(kept))
        if not delete and not dropped:
            continue
        ordered = sorted(delete)
        chains_out[name], rules_out[name] = tuple(ordered), tuple(dropped)
        out.append(f"*{name}")
        out.extend(f":{c} - [0:0]" for c in ordered)
        out.extend("-D" + r[2:] for r in dropped)
        out.extend(f"-X {c}" for c in ordered)
        out.append("COMMIT")
    return Removal("\n".join(out) + "\n" if out else "", chains_out, rules_out, kept_out)


def _plan(ns: str, ipv6: bool) -> tuple[Removal, Mapping[str, "netns._Table"]]:
    """Read one family's tables (refusing tables iptables cannot read) and plan the removal."""
    tables = netns._parse_tables(netns._save(ns, ipv6))
    return plan_removal(tables, load(ns).owned(_family(ipv6))), tables


def _remove(ns: str, ipv6: bool, removal: Removal, tables: Mapping[str, "netns._Table"]) -> None:
    """Run a planned removal (``tables``: what it was planned on) and forget what it removed
    and what was gone already."""
    if removal.text:
        _, restore = netns._tools(ipv6)
        netns.run_in(ns, [restore, "-w", "--noflush"], input=removal.text)
    record = load(ns)
    owned = record.owned(_family(ipv6))
    if not owned:
        return
    for name, entry in owned.items():
        t = tables.get(name)
        gone = set(removal.chains.get(name, ()))
        present = set(t.chains()) - gone if t else set()
        entry["chains"] = [c for c in entry.get("chains", ()) if c in present]
        left = (Counter(t.rules()) - Counter(removal.rules.get(name, ()))) if t else Counter()
        entry["rules"] = list((Counter(entry.get("rules", ())) & left).elements())
    save(ns, record)


def _delete_nft_tables(ns: str, which: Sequence[tuple[str, str]]) -> list[str]:
    """Delete those of the nft tables ``which`` that exist (one transaction); returns them."""
    existing = netns._nft_existing_tables(ns)
    ours = [t for t in which if t in existing]
    if ours:
        netns.apply_nftables(ns, "".join(f"delete table {fam} {name}\n" for fam, name in ours))
    return [f"{fam} {name}" for fam, name in ours]


@locked_netns  # adds the keyword lock_timeout (seconds to wait for another apply or cleanup)
def cleanup(ns: str, *, ipv6: bool = False) -> list[str]:
    """Remove what kube-dataplane installed in ``ns`` for one IP family; idempotent.

    Restores the family's recorded sysctls first, then deletes the nft tables ``ip
    kube-proxy`` and ``ip6 kube-proxy`` (one transaction) and, in the iptables
    tables (``ip6tables`` with ``ipv6``), what :func:`plan_removal` finds ours (one
    ``iptables-restore --noflush``, atomic per table). Raises :class:`ApplyError`
    without changing anything if a table holds nftables rules iptables cannot read.
    Returns notes on chains that had to stay.
    """
    netns.require_netns(ns)
    removal, tables = _plan(ns, ipv6)
    restore_sysctls(ns, _family(ipv6))
    _delete_nft_tables(ns, netns.NFT_TABLES)
    _remove(ns, ipv6, removal, tables)
    return removal.notes(_family(ipv6))


@locked_netns  # adds the keyword lock_timeout
def cleanup_namespace(ns: str) -> list[str]:
    """:func:`cleanup` for both families, checking both before changing anything."""
    netns.require_netns(ns)
    plans = [(ipv6, *_plan(ns, ipv6)) for ipv6 in (False, True)]
    for ipv6 in (False, True):
        restore_sysctls(ns, _family(ipv6))
    _delete_nft_tables(ns, netns.NFT_TABLES)
    notes: list[str] = []
    for ipv6, removal, tables in plans:
        _remove(ns, ipv6, removal, tables)
        notes.extend(removal.notes(_family(ipv6)))
    return notes


def remove_nftables_leftovers(ns: str, family: Family, *, keep_sysctls: Sequence[str] = ()) -> list[str]:
    """After applying iptables rules for ``family``, remove the nftables table an earlier apply
    left for that family, as kube-proxy's iptables mode does at startup (see :func:`_restore_after`).
    Returns one line per removal ([] when there was nothing to remove)."""
    table = ("ip6" if family == "ipv6" else "ip", "kube-proxy")
    notes: list[str] = []
    if _delete_nft_tables(ns, [table]):
        notes.append(f"removed the nftables rules an earlier apply left (table {table[0]} {table[1]})")
    return _restore_after(ns, family, notes, keep_sysctls)


def remove_iptables_leftovers(ns: str, family: Family, *, keep_sysctls: Sequence[str] = ()) -> list[str]:
    """After applying nftables rules for ``family``, remove the iptables rules an earlier apply
    left for that family, as kube-proxy's nftables mode does at startup (see :func:`_restore_after`).

    Returns one line per removal ([] when there was nothing to remove). If the
    iptables tables cannot be read (a foreign native nftables table), the leftovers
    are only reported, when the record says there may be some.
    """
    ipv6 = family == "ipv6"
    notes: list[str] = []
    try:
        removal, tables = _plan(ns, ipv6)
    except ApplyError as e:
        if load(ns).owned(family):
            return [f"could not look for iptables rules an earlier apply left: {e}"]
        return []
    if removal.text:
        _remove(ns, ipv6, removal, tables)
        n = sum(len(c) for c in removal.chains.values())
        notes.append(f"removed the iptables rules an earlier apply left ({n} chain(s), "
                     f"{sum(len(r) for r in removal.rules.values())} jump rule(s))")
        notes.extend(removal.notes(family))
    return _restore_after(ns, family, notes, keep_sysctls)


def _restore_after(ns: str, family: Family, notes: list[str], keep_sysctls: Sequence[str]) -> list[str]:
    """``notes`` on leftovers removed; when there were some, also restore the family's recorded
    sysctls that the new rules do not need (all but ``keep_sysctls``)."""
    if notes:
        restored = restore_sysctls(ns, family, keep=keep_sysctls)
        if restored:
            notes.append(f"restored {', '.join(restored)}")
    return notes
