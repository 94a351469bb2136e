"""Apply compiled rules inside a named Linux network namespace, read them back, remove them.

Used by ``dataplane apply`` and by the namespace tests. Every function takes the
*name* of an existing namespace (a bind mount under ``/run/netns``, as made by
``ip netns add`` or :mod:`dataplane.lab`) and never creates one: a typo gives
:class:`~dataplane.errors.ApplyError`, not a fresh empty namespace.

Commands run through ``nsenter --net=/run/netns/NAME``; in-process work (sysctls,
sockets) enters the namespace with :func:`in_netns`, which switches only the
calling thread.

iptables (``iptables-restore --noflush``) is atomic per ``*table ... COMMIT``
block, not per file, so :func:`apply_iptables` snapshots the tables first and
restores them when any block fails. ``nft -f`` is atomic for the whole file, so
:func:`apply_nftables` needs no snapshot.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Optional, Sequence

from dataplane.errors import ApplyError
from dataplane.runtime.nslock import DEFAULT_LOCK_TIMEOUT, held_fds, netns_lock

__all__ = [
    "NETNS_DIR",
    "BUILTIN_CHAINS",
    "STALE_CHAIN_PREFIXES",
    "NFT_TABLES",
    "netns_path",
    "require_netns",
    "in_netns",
    "run_in",
    "memfd_text",
    "apply_iptables",
    "apply_nftables",
    "apply_nftables_partial",
    "set_sysctls",
    "read_back",
    "read_back_iptables",
    "read_back_nftables",
    "cleanup",
]

NETNS_DIR = "/run/netns"

#: Built-in chains of the filter/nat/mangle/raw tables.
BUILTIN_CHAINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})

#: Per-service/per-endpoint iptables chains; one present in the namespace but not
#: declared in a new restore file is stale and is deleted by :func:`apply_iptables`.
STALE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")

#: The nftables tables kube-dataplane owns (family, name).
NFT_TABLES = (("ip", "kube-proxy"), ("ip6", "kube-proxy"))

#: Tables :func:`read_back` and :func:`cleanup` look at.
_IPTABLES_TABLES = ("filter", "nat")

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_COUNTERS = re.compile(r"\[\d+:\d+\]")
_INCOMPATIBLE = re.compile(r"^# Table `(\w+)' (?:is|contains) incompatible", re.M)  # iptables-nft 1.8
_NS_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------- namespaces


def netns_path(ns: str) -> str:
    """The bind-mount path of a named namespace; rejects names that are not plain file names."""
    if not _NS_NAME.match(ns) or ns in (".", ".."):
        raise ApplyError(f"invalid network namespace name {ns!r}")
    return os.path.join(NETNS_DIR, ns)


def require_netns(ns: str) -> None:
    """Raise :class:`ApplyError` unless the named network namespace exists (never creates one)."""
    if not os.path.exists(netns_path(ns)):
        raise ApplyError(f"network namespace {ns} does not exist")


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run the body with the *calling thread* inside namespace ``ns``.

    Sockets (including netlink and AF_PACKET sockets) and ``/proc/sys/net`` files
    opened in the body stay bound to ``ns`` for life and may be used from any
    thread afterwards. Other threads are unaffected. Unlike pyroute2's
    ``pushns``/``popns`` this keeps no process-global stack, saves the *thread's*
    own namespace (``/proc/thread-self``) and never creates a missing namespace.
    """
    require_netns(ns)
    target = os.open(netns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(target)
        raise
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(saved)  # failing here would leave the thread stranded: let it raise
    finally:
        os.close(saved)
        os.close(target)


@contextmanager
def memfd_text(text: str, name: str = "dataplane-input") -> Iterator[int]:
    """An anonymous in-memory file (``memfd_create``) holding all of ``text``, rewound.

    A tool handed the descriptor (as stdin, or as ``/dev/fd/N`` with ``pass_fds``)
    only ever starts once the whole input is written, so a caller killed while
    writing cannot feed it a truncated input, and nothing is left on disk.
    """
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(text.encode())
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)


def run_in(
    ns: str, argv: Sequence[str], input: str | None = None, check: bool = True, *,
    pass_fds: Sequence[int] = (),
) -> subprocess.CompletedProcess:
    """Run ``argv`` inside namespace ``ns`` (``nsenter --net=...``), capturing text output.

    ``input`` is written to an anonymous file (:func:`memfd_text`) before the tool
    starts and given to it as stdin. ``pass_fds`` are kept open in the tool, and so
    are the namespace locks the calling thread holds (:func:`dataplane.runtime.nslock.held_fds`),
    so that the lock outlives a caller killed while the tool runs.
    With ``check`` (the default) a non-zero exit raises :class:`ApplyError` carrying
    the tool's stderr; otherwise the completed process is returned as is.
    """
    require_netns(ns)
    if not argv:
        raise ValueError("run_in: empty argv")
    cmd = ["nsenter", f"--net={netns_path(ns)}", "--", *argv]
    fds = tuple(dict.fromkeys((*pass_fds, *held_fds())))
    try:
        with contextlib.ExitStack() as stack:
            stdin = stack.enter_context(memfd_text(input)) if input is not None else subprocess.DEVNULL
            proc = subprocess.run(
                cmd,
                stdin=stdin,
                capture_output=True,
                text=True,
                env={**os.environ, "LC_ALL": "C"},
                pass_fds=fds,
            )
    except FileNotFoundError as e:
        raise ApplyError(f"{argv[0]}: command not found ({e.filename})") from e
    if check and proc.returncode != 0:
        stderr = proc.stderr.strip()
        raise ApplyError(
            f"{argv[0]} failed in network namespace {ns} (exit {proc.returncode}): {stderr}",
            stderr=proc.stderr,
        )
    return proc


# --------------------------------------------------------------------------- iptables-save text


@dataclass
class _Table:
    """One ``*table ... COMMIT`` block of iptables-save/restore text."""

    name: str
    lines: list[str] = field(default_factory=list)  # between "*name" and "COMMIT", exclusive

    def chains(self) -> list[str]:
        return [ln[1:].split()[0] for ln in self.lines if ln.startswith(":")]

    def rules(self) -> list[str]:
        """``-A`` lines without ``[pkts:bytes]`` prefixes, stripped."""
        out = []
        for ln in self.lines:
            ln = _strip_rule_counters(ln)
            if ln.startswith("-A "):
                out.append(ln)
        return out

    def text(self) -> str:
        return "\n".join([f"*{self.name}", *self.lines, "COMMIT"]) + "\n"


def _strip_rule_counters(line: str) -> str:
    line = line.strip()
    if line.startswith("[") and "] " in line:
        head, rest = line.split("] ", 1)
        if _COUNTERS.fullmatch(head + "]"):
            return rest.strip()
    return line


def _parse_tables(text: str) -> dict[str, _Table]:
    """Split iptables-save output into its tables (comments and blank lines dropped)."""
    tables: dict[str, _Table] = {}
    cur: Optional[_Table] = None
    for raw in text.splitlines():
        ln = raw.strip()
        if not ln or ln.startswith("#"):
            continue
        if ln.startswith("*"):
            cur = tables.setdefault(ln[1:].strip(), _Table(ln[1:].strip()))
        elif ln == "COMMIT":
            cur = None
        elif cur is not None:
            cur.lines.append(ln)
    return tables


def _normalise_table(t: _Table) -> list[str]:
    return [_COUNTERS.sub("[0:0]", ln) for ln in t.lines]


def _rule_chain(line: str) -> str:
    return line.split()[1]


def _jump_target(line: str) -> Optional[str]:
    parts = line.split()
    for i, tok in enumerate(parts[:-1]):
        if tok in ("-j", "--jump", "-g", "--goto"):
            return parts[i + 1]
    return None


def _tools(ipv6: bool) -> tuple[str, str]:
    return ("ip6tables-save", "ip6tables-restore") if ipv6 else ("iptables-save", "iptables-restore")


def _save(ns: str, ipv6: bool, *, counters: bool = False) -> str:
    """``iptables-save`` output; :class:`ApplyError` if the filter or nat table holds native
    nftables rules iptables cannot read (iptables-save then exits 0 with only a comment)."""
    save, _ = _tools(ipv6)
    out = run_in(ns, [save, "-c"] if counters else [save]).stdout
    bad = [t for t in _INCOMPATIBLE.findall(out) if t in _IPTABLES_TABLES]
    if bad:
        raise ApplyError(
            f"{save}: the {' and '.join(bad)} table(s) of network namespace {ns} hold nftables rules of another "
            f"program that iptables cannot read (native 'table {'ip6' if ipv6 else 'ip'} {bad[0]}'); nothing was "
            "changed: remove them from that table or use the nftables backend")
    return out


_nft_backend_cache: dict[bool, bool] = {}
_nft_backend_lock = threading.Lock()


def _iptables_is_nft(ns: str, ipv6: bool) -> bool:
    with _nft_backend_lock:
        if ipv6 not in _nft_backend_cache:
            out = run_in(ns, ["ip6tables" if ipv6 else "iptables", "--version"], check=False).stdout
            _nft_backend_cache[ipv6] = "nf_tables" in out
        return _nft_backend_cache[ipv6]


# --------------------------------------------------------------------------- iptables apply


def _prepare_restore(input_text: str, current: dict[str, _Table], *, remove_stale: bool = True
                     ) -> tuple[str, list[str]]:
    """Rewrite a ``--noflush`` restore file so that applying it is idempotent.

    Per table block: built-in chain declarations are dropped (with ``--noflush``
    they do not flush, but they would reset another program's policy and
    counters); ``-A <BUILTIN>`` rules already present verbatim are dropped (they
    would be duplicated); stale per-service chains are declared and ``-X``-ed.
    Returns the new text and the names of the tables it contains, in order.
    """
    out: list[str] = []
    names: list[str] = []
    block: Optional[list[str]] = None
    table = ""
    for raw in input_text.splitlines():
        ln = raw.strip()
        if ln.startswith("*") and block is None:
            table = ln[1:].strip()
            names.append(table)
            block = []
            continue
        if block is None:
            if ln and not ln.startswith("#"):
                raise ApplyError(f"iptables input: line outside a *table block: {raw!r}")
            continue
        if ln != "COMMIT":
            block.append(ln)
            continue
        out.extend(_rewrite_block(table, block, current.get(table), remove_stale=remove_stale))
        block = None
    if block is not None:
        raise ApplyError(f"iptables input: table *{table} has no COMMIT")
    return ("\n".join(out) + "\n" if out else ""), names


def _rewrite_block(table: str, lines: list[str], current: Optional[_Table], *, remove_stale: bool = True
                   ) -> list[str]:
    existing_rules = set(current.rules()) if current else set()
    existing_chains = current.chains() if current else []
    declared: list[str] = []
    decls: list[str] = []
    body: list[str] = []
    for ln in lines:
        if not ln or ln.startswith("#"):
            continue
        if ln.startswith(":"):
            chain = ln[1:].split()[0]
            if chain in BUILTIN_CHAINS:
                continue
            declared.append(chain)
            decls.append(ln)
            continue
        rule = _strip_rule_counters(ln)
        if _rule_chain(rule) in BUILTIN_CHAINS and rule.startswith(("-A ", "-I ")):
            # A jump from a built-in chain ("-A X spec" or "-I X spec", inserted at the
            # top as kube-proxy does) that the chain already holds would be duplicated.
            if "-A " + rule[3:] in existing_rules:
                continue
        body.append(ln)
    stale = [
        c
        for c in existing_chains
        if remove_stale and c.startswith(STALE_CHAIN_PREFIXES) and c not in declared
    ]
    # Declaring a chain flushes it, so -X cannot fail with EBUSY on its own rules;
    # references from other stale chains are gone too once those are flushed.
    decls.extend(f":{c} - [0:0]" for c in stale)
    body.extend(f"-X {c}" for c in stale)
    return [f"*{table}", *decls, *body, "COMMIT"]


def apply_iptables(ns: str, rules: str, *, ipv6: bool = False, partial: bool = False,
                   lock_timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT) -> None:
    """Apply a complete ``iptables-restore --noflush`` file atomically and idempotently.

    * Atomic: the tables are snapshotted (``iptables-save -c``) first; if the
      restore fails, every table the file names that changed is put back exactly
      (tables that did not exist before are removed again), then
      :class:`ApplyError` is raised with the tool's stderr.
    * Idempotent: built-in chain declarations are dropped and ``-A <BUILTIN>``
      jump rules already present verbatim are not appended again.
    * Stale ``KUBE-SVC/SVL/EXT/FW/SEP-*`` chains of a named table that the new
      file does not declare are flushed and deleted in the same restore.
    * Chains and rules of other programs are never touched (always ``--noflush``).

    ``ipv6`` selects ``ip6tables-save``/``ip6tables-restore``. A ``partial`` file
    (an incremental update) names only the chains that change and deletes stale
    chains itself, so chains it does not mention are left alone.

    The input is handed to the restore tool as an anonymous file written in full
    first (:func:`memfd_text`), so that a caller killed half-way cannot leave it
    reading a truncated input, and no file is left behind. Runs under the
    namespace's lock (:func:`dataplane.runtime.nslock.netns_lock`, waiting up to
    ``lock_timeout`` seconds for another apply or cleanup).
    """
    require_netns(ns)
    with netns_lock(ns, lock_timeout):
        _apply_iptables(ns, rules, ipv6=ipv6, partial=partial)


def _apply_iptables(ns: str, rules: str, *, ipv6: bool, partial: bool) -> None:
    """:func:`apply_iptables`, the namespace lock held."""
    _, restore = _tools(ipv6)
    snapshot_text = _save(ns, ipv6, counters=True)
    snapshot = _parse_tables(snapshot_text)
    text, names = _prepare_restore(rules, snapshot, remove_stale=not partial)
    if not names:
        return
    with memfd_text(text, "dataplane-restore") as fd:
        proc = run_in(ns, [restore, "-w", "--noflush", f"/dev/fd/{fd}"], check=False, pass_fds=(fd,))
    if proc.returncode == 0:
        from .ownership import note_iptables

        note_iptables(ns, ipv6, snapshot, text)  # what cleanup may remove
        return
    stderr = proc.stderr.strip() + _offending_line(proc.stderr, text)
    try:
        rolled_back = _rollback(ns, ipv6, snapshot, names)
    except ApplyError as e:
        raise ApplyError(
            f"{restore} failed in network namespace {ns} (exit {proc.returncode}): {stderr}; "
            f"ROLLBACK FAILED, tables {', '.join(names)} may be half-applied: {e}",
            stderr=proc.stderr,
        ) from e
    what = f"tables {', '.join(rolled_back)} restored" if rolled_back else "nothing was changed"
    raise ApplyError(
        f"{restore} failed in network namespace {ns} (exit {proc.returncode}): {stderr} ({what})",
        stderr=proc.stderr,
    )


def _offending_line(stderr: str, text: str) -> str:
    """Quote the line iptables-restore complains about: its line numbers count the
    rewritten input, not the caller's."""
    m = re.search(r"line:? (\d+)", stderr)
    lines = text.splitlines()
    if not m or not 1 <= int(m.group(1)) <= len(lines):
        return ""
    n = int(m.group(1))
    line = lines[n - 1]
    if line == "COMMIT":  # the nf_tables backend finds some errors only at commit
        table = next((ln[1:] for ln in reversed(lines[: n - 1]) if ln.startswith("*")), "?")
        line = f"COMMIT of *{table}"
    return f" [input line {n}: {line}]"


def _rollback(ns: str, ipv6: bool, snapshot: dict[str, _Table], names: list[str]) -> list[str]:
    """Restore the snapshot of every named table whose content changed; returns those tables."""
    _, restore = _tools(ipv6)
    now = _parse_tables(_save(ns, ipv6, counters=True))
    changed: list[str] = []
    blocks: list[str] = []
    removed_tables: list[str] = []
    for name in dict.fromkeys(names):
        before, after = snapshot.get(name), now.get(name)
        if before is None and after is None:
            continue
        if before is not None and after is not None and _normalise_table(before) == _normalise_table(after):
            continue
        changed.append(name)
        if before is not None:
            blocks.append(before.text())
        else:
            # The table did not exist: restoring an empty block (without --noflush)
            # removes it again on the nf_tables backend and empties it on legacy.
            blocks.append(f"*{name}\nCOMMIT\n")
            removed_tables.append(name)
    if not blocks:
        return changed
    run_in(ns, [restore, "-w", "-c"], input="".join(blocks))
    if removed_tables and _iptables_is_nft(ns, ipv6):
        family = "ip6" if ipv6 else "ip"
        listed = run_in(ns, ["nft", "list", "tables", family], check=False).stdout.split("\n")
        for name in removed_tables:
            if f"table {family} {name}" in (ln.strip() for ln in listed):
                run_in(ns, ["nft", "delete", "table", family, name])
    return changed


# --------------------------------------------------------------------------- nftables


def apply_nftables(ns: str, script: str, *, lock_timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT) -> None:
    """Load an nft script with ``nft -f`` as one transaction.

    The script is expected to replace its own table (``table ip kube-proxy`` /
    ``delete table ip kube-proxy`` / ``table ip kube-proxy {...}``). On failure
    nothing of the script is committed and :class:`ApplyError` carries nft's stderr.
    Runs under the namespace's lock (waiting up to ``lock_timeout`` seconds).
    """
    require_netns(ns)
    # From a complete anonymous file: a caller killed half-way cannot feed nft a
    # truncated (and possibly still valid) transaction, nor leave a file behind.
    with netns_lock(ns, lock_timeout), memfd_text(script, "dataplane-nft") as fd:
        proc = run_in(ns, ["nft", "-f", f"/dev/fd/{fd}"], check=False, pass_fds=(fd,))
    if proc.returncode != 0:
        raise ApplyError(
            f"nft -f failed in network namespace {ns} (exit {proc.returncode}); "
            f"nothing was changed: {proc.stderr.strip()}",
            stderr=proc.stderr,
        )


def apply_nftables_partial(ns: str, script: str, *,
                           lock_timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT) -> str:
    """Load a partial-update script as one transaction without ``nft``'s cache when it can.

    The script is translated into one nf_tables netlink batch (:mod:`dataplane.runtime.nftnl`)
    and committed from a socket opened inside ``ns``; a script holding anything the
    translation does not cover goes through :func:`apply_nftables` instead. Either way the
    kernel takes all of it or nothing (:class:`ApplyError`). Returns the path taken:
    ``"netlink"`` or ``"nft"``. Runs under the namespace's lock.
    """
    from dataplane.runtime import nftnl

    require_netns(ns)
    try:
        batch = nftnl.compile_update(script)
    except nftnl.Unsupported:
        apply_nftables(ns, script, lock_timeout=lock_timeout)
        return "nft"
    with netns_lock(ns, lock_timeout):
        try:
            with in_netns(ns):
                nftnl.send(batch, f" in network namespace {ns}")
            return "netlink"
        except nftnl.Unsupported:
            pass
        except OSError as e:
            raise ApplyError(f"nf_tables batch in network namespace {ns}: {e.strerror}; "
                             "nothing was changed") from e
    apply_nftables(ns, script, lock_timeout=lock_timeout)
    return "nft"


def _nft_objects(ns: str, *listing: str) -> list[tuple[str, dict]]:
    """``nft -j list LISTING...`` in ``ns`` as (kind, object) pairs (``("table", {...})``,
    ``("chain", {...})``, ...), without the ``metainfo`` header."""
    out = run_in(ns, ["nft", "-j", "list", *listing]).stdout
    objects = []
    for item in json.loads(out)["nftables"] if out.strip() else ():
        ((kind, body),) = item.items()
        if kind != "metainfo":
            objects.append((kind, body))
    return objects


def _nft_existing_tables(ns: str) -> set[tuple[str, str]]:
    """Every nft table of ``ns`` as (family, name)."""
    return {(t["family"], t["name"]) for kind, t in _nft_objects(ns, "tables") if kind == "table"}


# --------------------------------------------------------------------------- sysctls


def _sysctl_path(key: str) -> str:
    rel = key if "/" in key else key.replace(".", "/")
    parts = [p for p in rel.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ApplyError(f"invalid sysctl name {key!r}")
    return "/proc/sys/" + "/".join(parts)


def set_sysctls(ns: str, values: Mapping[str, str]) -> None:
    """Write sysctls of namespace ``ns`` (keys as for ``sysctl -w``, e.g. ``net.ipv4.ip_forward``).

    Keys containing ``/`` are taken as paths below ``/proc/sys`` (for interface
    names with dots). Only the namespace's own per-netns values are changed.
    """
    paths = [(_sysctl_path(k), str(v)) for k, v in values.items()]
    with in_netns(ns):
        for path, value in paths:
            try:
                with open(path, "w") as f:
                    f.write(value)
            except OSError as e:
                raise ApplyError(
                    f"cannot set {path[len('/proc/sys/'):].replace('/', '.')}={value} "
                    f"in network namespace {ns}: {e.strerror}"
                ) from e


# --------------------------------------------------------------------------- read back / cleanup


def read_back(ns: str, backend: str, *, ipv6: bool = False) -> str:
    """The rules of ``backend`` (a name, see :mod:`dataplane.backends`) currently loaded in
    ``ns``, normalised for comparison (see :func:`read_back_iptables`, :func:`read_back_nftables`)."""
    from ..backends import get_backend

    return get_backend(backend).read_back(ns, ipv6=ipv6)


def read_back_iptables(ns: str, *, ipv6: bool = False) -> str:
    """The filter and nat tables of ``iptables-save`` (``ip6tables-save`` with ``ipv6``)
    without the ``# Generated/# Completed`` comments and with every ``[pkts:bytes]``
    counter zeroed; a table that does not exist is left out."""
    require_netns(ns)
    tables = _parse_tables(_save(ns, ipv6))
    return "".join(
        "\n".join([f"*{name}", *_normalise_table(tables[name]), "COMMIT"]) + "\n"
        for name in _IPTABLES_TABLES
        if name in tables
    )


def read_back_nftables(ns: str, *, ipv6: bool = False) -> str:
    """``nft list table ip|ip6 kube-proxy``, or "" when the table is absent."""
    require_netns(ns)
    family = "ip6" if ipv6 else "ip"
    proc = run_in(ns, ["nft", "list", "table", family, "kube-proxy"], check=False)
    if proc.returncode == 0:
        return proc.stdout
    if "No such file or directory" in proc.stderr:
        return ""
    raise ApplyError(
        f"nft list table {family} kube-proxy failed in network namespace {ns}: "
        f"{proc.stderr.strip()}",
        stderr=proc.stderr,
    )


def cleanup(ns: str, *, ipv6: bool = False, lock_timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT) -> list[str]:
    """Remove what kube-dataplane installed in ``ns`` and nothing else; idempotent.

    See :func:`dataplane.runtime.ownership.cleanup`: restores the recorded sysctls of the
    family, deletes the nft tables ``ip|ip6 kube-proxy`` and the iptables chains and
    jump rules kube-dataplane recorded (plus kube-proxy's fixed chains). Returns notes.
    Runs under the namespace's lock (waiting up to ``lock_timeout`` seconds).
    """
    from .ownership import cleanup as _cleanup

    return _cleanup(ns, ipv6=ipv6, lock_timeout=lock_timeout)


_IPT_CHAIN = re.compile(r"^:(\S+) ", re.M)


def installed_chains(ns: str, backend: str, *, ipv6: bool = False) -> set[str]:
    """Names of the chains kube-dataplane holds in ``ns`` for ``backend`` (a name, see
    :mod:`dataplane.backends`); empty when none."""
    from ..backends import get_backend

    return get_backend(backend).installed_chains(ns, ipv6=ipv6)


def nftables_installed_chains(ns: str, *, ipv6: bool = False) -> set[str]:
    """The chains of the ``kube-proxy`` table of the family."""
    family = "ip6" if ipv6 else "ip"
    return {c["name"] for kind, c in _nft_objects(ns, "chains", family)
            if kind == "chain" and c["table"] == "kube-proxy"}


def iptables_installed_chains(ns: str, *, ipv6: bool = False) -> set[str]:
    """The KUBE-* chains of the nat table."""
    text = read_back_iptables(ns, ipv6=ipv6)
    nat = text.split("*nat\n", 1)[1] if "*nat\n" in text else ""
    return {c for c in _IPT_CHAIN.findall(nat) if c.startswith("KUBE-")}
