"""The ``dataplane diff`` command: a node's compiled rules against a network namespace's
(:mod:`dataplane.runtime.diff`), as a unified diff; exit 0 when equal, 1 when they differ,
2 on error, like ``diff(1)``."""
from __future__ import annotations

import argparse
import sys

from ..cli_common import add_allocate, add_input, add_target, prepare, progress, warn

__all__ = ["add_command", "cmd_diff"]

EXAMPLES = """examples:
  ip netns add demo
  dataplane apply -f examples/cluster.yaml --allocate --seed 1 --node node-a --netns demo
  dataplane diff -f examples/cluster.yaml --allocate --seed 1 --node node-a --netns demo && echo same     # prints: same
  dataplane diff -f examples/cluster.yaml --allocate --seed 2 --node node-a --netns demo | grep -c '^+-A KUBE-SERVICES'     # other ClusterIPs: rules to add"""


def add_command(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``diff`` on the ``dataplane`` subcommand parser."""
    p = sub.add_parser(
        "diff", help="compare a node's compiled rules with what a network namespace holds",
        description="Compile the rules for a node (the options of `apply`) and compare them with the rules of "
                    "ours that a network namespace holds now, both read back from the kernel and normalised "
                    "alike (counters dropped, a fixed order; other programs' tables, chains and rules left out). "
                    "Prints a unified diff from the namespace (-) to the compiled rules (+), what an apply would "
                    "change; exit status 0 when they are equal, 1 when they differ, 2 on error. Changes nothing.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input(p)
    add_target(p)
    p.add_argument("--netns", required=True, metavar="NSNAME", help="name of the network namespace (ip netns)")
    add_allocate(p)
    p.set_defaults(func=cmd_diff, error_status=2)


def cmd_diff(args: argparse.Namespace) -> int:
    """``dataplane diff``: print the difference; 0 when there is none, 1 otherwise."""
    from ..input.cluster import load_cluster
    from .diff import diff_cluster
    from .netns import require_netns
    from .ownership import require_root

    require_root("dataplane diff")
    require_netns(args.netns)
    cluster = prepare(load_cluster(args.files, stdin=sys.stdin), args)
    with progress("dataplane diff") as shown:
        shown.update(f"compiling node {args.node}'s rules and reading netns {args.netns}")
        result = diff_cluster(args.netns, cluster, args.node, backend=args.backend, family=args.ip_family)
    warn(result.plan.warnings)
    sys.stdout.write(result.diff)
    return 0 if result.equal else 1
