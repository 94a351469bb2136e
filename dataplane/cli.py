"""The ``dataplane`` command: a thin layer over the library API.

Every command reads manifests with ``-f`` (repeatable, ``-` `` for stdin),
prints warnings to stderr, and on bad input prints one line per problem and
exits 1 without writing anything.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Callable, Optional, Sequence

from .errors import DataplaneError, InputError

EXAMPLES = {
    "compile": """examples:
  dataplane compile -f examples/cluster.yaml --node node-a
  dataplane compile -f svc.yaml -f slices.json --node node-a --backend nftables --ip-family ipv6 -o rules.nft
  kubectl get svc,endpointslices,nodes -A -o yaml | dataplane compile -f - --node node-a""",
    "apply": """examples:
  ip netns add demo
  dataplane apply -f examples/cluster.yaml --node node-a --netns demo
  dataplane apply -f examples/cluster.yaml --node node-a --netns demo --backend nftables""",
}


def _add_input(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", dest="files", action="append", required=True, metavar="FILE",
                   help="manifest file (YAML, multi-document YAML or JSON; '-' reads stdin); repeatable")


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", required=True, help="name of the Node object whose rules to build")
    p.add_argument("--backend", choices=("iptables", "nftables"),
                   help="rule backend (default: the KubeProxyConfiguration's mode, else iptables)")
    p.add_argument("--ip-family", choices=("ipv4", "ipv6"), default="ipv4", help="IP family (default ipv4)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dataplane",
        description="Compile Kubernetes Services and EndpointSlices into one node's iptables or nftables rules, "
                    "the way kube-proxy does, and apply them in network namespaces.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="print the rules file for one node",
                       description="Print one complete rules file for a node and IP family: input for "
                                   "`iptables-restore --noflush` (`ip6tables-restore` for IPv6) or for `nft -f`.",
                       epilog=EXAMPLES["compile"], formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_input(p)
    _add_target(p)
    p.add_argument("-o", "--output", metavar="OUT", help="write the rules to OUT instead of stdout")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("apply", help="load a node's rules into a network namespace",
                       description="Compile the rules for a node and load them into an existing network namespace "
                                   "atomically (a failure leaves it as it was), then set the sysctls they need.",
                       epilog=EXAMPLES["apply"], formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_input(p)
    _add_target(p)
    p.add_argument("--netns", required=True, metavar="NSNAME", help="name of the network namespace (ip netns)")
    p.set_defaults(func=cmd_apply)
    return parser


def _warn(messages: Sequence[str]) -> None:
    for m in messages:
        print(f"warning: {m}", file=sys.stderr)


def _load(files: Sequence[str]):
    from .parse import load_cluster

    result = load_cluster(files, stdin=sys.stdin)
    _warn(result.warnings)
    return result.cluster


def _write_output(text: str, path: Optional[str]) -> None:
    """Write to stdout, or atomically to ``path`` (a failure leaves no partial file)."""
    if not path or path == "-":
        sys.stdout.write(text)
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".dataplane-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def cmd_compile(args: argparse.Namespace) -> int:
    from .compiler import compile_rules

    cluster = _load(args.files)
    result = compile_rules(cluster, args.node, backend=args.backend, family=args.ip_family)
    _warn(result.warnings)
    _write_output(result.text, args.output)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from .compiler import compile_rules
    from .apply import apply_compiled
    from .netns import require_netns

    require_netns(args.netns)
    cluster = _load(args.files)
    result = compile_rules(cluster, args.node, backend=args.backend, family=args.ip_family)
    _warn(result.warnings)
    apply_compiled(args.netns, result)
    n = len(result.plan.services)
    print(f"applied {result.plan.mode} rules for node {args.node} ({args.ip_family}, {n} service ports) "
          f"to netns {args.netns}", file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except InputError as e:
        for problem in e.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    except DataplaneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
