"""What every ``dataplane`` command module shares: the input, allocation and external-IP options,
preparing the cluster with them, printing warnings and notes, ``--quiet``, and progress on a terminal.

Used by :mod:`dataplane.cli` and the modules that register their own commands
(:mod:`dataplane.lab.cli`, :mod:`dataplane.verify`, :mod:`dataplane.discovery`,
:mod:`dataplane.trace.cli`). Cheap to import: heavier modules are imported when used.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Iterable, Optional

if TYPE_CHECKING:
    from .progress import Progress
    from .controllers.allocation import AllocationResult, AllocationState
    from .input.cluster import ParseResult
    from .model import Cluster

__all__ = [
    "add_input",
    "add_target",
    "add_external_ip_cidrs",
    "with_external_ip_cidrs",
    "add_allocate",
    "add_allocation",
    "allocate",
    "prepare",
    "warn",
    "note",
    "add_quiet",
    "set_quiet",
    "is_quiet",
    "progress",
]

# ``--quiet``: no warnings, notes or progress on stderr (errors still print). Set once per command line.
_quiet = False


def add_input(p: argparse.ArgumentParser) -> None:
    """``-f/--filename``: the manifests to read (repeatable, ``-`` for stdin)."""
    p.add_argument("-f", "--filename", dest="files", action="append", required=True, metavar="FILE",
                   help="manifest file (YAML, multi-document YAML or JSON; '-' reads stdin); repeatable")


def add_target(p: argparse.ArgumentParser) -> None:
    """``--node``, ``--backend``, ``--ip-family`` and ``--external-ip-cidrs``: whose rules a
    command plans, for which backend and family."""
    from .backends import backend_names

    p.add_argument("--node", required=True, help="name of the Node object whose rules to build")
    p.add_argument("--backend", choices=backend_names(),
                   help="rule backend (default: the KubeProxyConfiguration's mode, else iptables)")
    p.add_argument("--ip-family", choices=("ipv4", "ipv6"), default="ipv4", help="IP family (default ipv4)")
    add_external_ip_cidrs(p)


def _cidr_list(text: str) -> tuple[str, ...]:
    """``--external-ip-cidrs``: comma-separated CIDRs, canonical; empty: none."""
    from .ipaddrs import canonical_cidr

    out = []
    for part in (p.strip() for p in text.split(",")):
        try:
            out.append(canonical_cidr(part))
        except ValueError:
            if part or text.strip():
                raise argparse.ArgumentTypeError(
                    f"{part!r} is not a CIDR (e.g. 203.0.113.0/24,2001:db8::/64; '' allows none)") from None
    return tuple(out)


def add_external_ip_cidrs(p: argparse.ArgumentParser) -> None:
    """``--external-ip-cidrs``, for every command that plans a node's rules."""
    p.add_argument("--external-ip-cidrs", type=_cidr_list, metavar="CIDR[,CIDR...]",
                   help="only Services' externalIPs in these CIDRs get rules, others are ignored with a "
                        "warning ('' allows none); overrides the KubeProxyConfiguration's externalIPCIDRs "
                        "(a kube-dataplane extension); default: every externalIP, as kube-proxy")


def with_external_ip_cidrs(cluster: Cluster, args: argparse.Namespace) -> Cluster:
    """``cluster`` with ``--external-ip-cidrs``, when given, in place of its configuration's
    externalIPCIDRs (for commands that hand the cluster on, e.g. to a Proxier)."""
    import dataclasses

    cidrs = getattr(args, "external_ip_cidrs", None)
    if cidrs is None:
        return cluster
    return dataclasses.replace(cluster, proxy_config=dataclasses.replace(cluster.proxy_config,
                                                                         external_ip_cidrs=cidrs))


def add_allocate(p: argparse.ArgumentParser) -> None:
    """``--allocate`` and the allocator's options, for commands that take the input as the API server stores it."""
    p.add_argument("--allocate", action="store_true",
                   help="first fill in missing ClusterIPs and NodePorts as the API server would")
    add_allocation(p)


def add_allocation(p: argparse.ArgumentParser) -> None:
    """The allocator's options: the ClusterIP range(s), the NodePort range and the seed."""
    p.add_argument("--service-cluster-ip-range", metavar="CIDR[,CIDR]",
                   help="ClusterIP range(s), one per family (default: the input's ServiceCIDR objects, "
                        "else its kubeadm ClusterConfiguration's serviceSubnet, else 10.96.0.0/12)")
    p.add_argument("--service-node-port-range", default="30000-32767", metavar="N1-N2",
                   help="NodePort range, inclusive (default 30000-32767)")
    p.add_argument("--seed", type=int, help="seed for the random allocation start, for reproducible runs")


def allocate(cluster: Cluster, args: argparse.Namespace,
             state: Optional[AllocationState] = None) -> AllocationResult:
    """Fill in ``cluster``'s ClusterIPs and NodePorts with the options of :func:`add_allocation`."""
    from .controllers.allocation import allocate_cluster

    return allocate_cluster(cluster, service_cidrs=args.service_cluster_ip_range,
                            node_port_range=args.service_node_port_range, state=state, seed=args.seed)


def prepare(loaded: ParseResult, args: argparse.Namespace) -> Cluster:
    """The cluster a command plans from: :func:`dataplane.prepare.prepare_cluster` with the
    options of :func:`add_allocate` (when the command has them) and ``--external-ip-cidrs``;
    the input's warnings printed."""
    from .prepare import prepare_cluster

    warn(loaded.warnings)
    if getattr(args, "allocate", False):
        prepared = prepare_cluster(loaded, allocate=True, service_cidrs=args.service_cluster_ip_range,
                                   node_port_range=args.service_node_port_range, seed=args.seed)
    else:
        prepared = prepare_cluster(loaded)
    return with_external_ip_cidrs(prepared.cluster, args)


def warn(messages: Iterable[str]) -> None:
    """Print warnings to stderr, escaped, at most errors.MAX_REPORTED and then how many more;
    nothing with ``--quiet``."""
    from .errors import report_lines

    if _quiet:
        return
    for line in report_lines(list(messages), "warning"):
        print(f"warning: {line}", file=sys.stderr)


def note(text: str) -> None:
    """Print a note on what a command did (``applied ...``) to stderr; nothing with ``--quiet``."""
    if not _quiet:
        print(text, file=sys.stderr)


def add_quiet(p: argparse.ArgumentParser, *, default: object = False) -> None:
    """``-q/--quiet``. The top-level parser takes it with ``default`` False, each command's parser
    with ``argparse.SUPPRESS`` (so that ``dataplane --quiet compile ...`` is not undone)."""
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="print no warnings, notes or progress on stderr (errors still print)")


def set_quiet(quiet: bool) -> None:
    """Turn ``--quiet`` on or off for :func:`warn`, :func:`note` and :func:`progress`."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    """Whether ``--quiet`` is in force."""
    return _quiet


def progress(label: str) -> Progress:
    """A :class:`~dataplane.progress.Progress` for a long operation of command ``label``: shown
    only when stderr is a terminal and ``--quiet`` is not given, and only after about a second."""
    from .progress import Progress

    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return Progress(label, enabled=tty and not _quiet, delay=_progress_delay())


def _progress_delay() -> float:
    """Seconds before a status is shown: ``DATAPLANE_PROGRESS_DELAY`` when it is a number of
    seconds, 0 or more (0 shows every phase, e.g. to record a session or in tests), else about a second."""
    from .progress import DEFAULT_DELAY

    try:
        value = float(os.environ.get("DATAPLANE_PROGRESS_DELAY", DEFAULT_DELAY))
    except ValueError:
        return DEFAULT_DELAY
    return value if 0 <= value < float("inf") else DEFAULT_DELAY
