"""``dataplane trace``: follow one packet through a node's rules, offline.

Wire it into the main parser with ``add_command(sub)``; errors are
:class:`~dataplane.errors.DataplaneError` subclasses, which ``dataplane.cli.main``
prints as ``error: …`` lines (exit status 1).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..backends import backend_names
from ..errors import DataplaneError, InputError, UsageError
from ..plan import family_of
from . import Packet, TraceResult, trace

EXAMPLES = """examples:
  dataplane allocate --seed 1 -f examples/cluster.yaml -o allocated.yaml     # kube-dns 10.98.39.92, shop/web 10.109.144.23 nodePort 30344
  dataplane trace -f allocated.yaml --node node-a --src 10.244.2.7 --dst 10.98.39.92 --dport 53 --proto udp
  dataplane trace -f allocated.yaml --node node-a --backend nftables --src 203.0.113.9 --dst 192.0.2.1 --dport 30344
  dataplane trace -f allocated.yaml --node node-a --src 192.0.2.1 --dst 10.109.144.23 --dport 80 --json
  dataplane compile -f allocated.yaml --node node-a --backend nftables -o rules.nft
  dataplane trace --rules rules.nft --backend nftables --node-ip 192.0.2.1 --src 10.244.1.5 --dst 10.109.144.23 --dport 80
  iptables-save | dataplane trace --rules - --backend iptables --node-ip 192.0.2.1 --src 8.8.8.8 --dst 192.0.2.1 --dport 30344

The packet is the first one of a new connection. It is sent by the node itself when --src is one of
the node's addresses (or loopback) or with --from-node; otherwise it arrives from another host (or a
pod), on --in-interface when given. The path lists each chain, rule and map entry it hits; the last
line is the verdict: DNAT (every endpoint it may reach, with its probability), DROP, REJECT, ACCEPT
or untouched, and whether it is masqueraded."""


def add_command(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register the ``trace`` subcommand on the main parser's subparsers."""
    from ..cli_common import add_external_ip_cidrs

    p = sub.add_parser(
        "trace", help="follow one packet through a node's rules (no root needed)",
        description="Interpret a node's iptables-restore or nft rules (compiled from manifests, or an existing "
                    "rules file) for the first packet of a new connection and print the path it takes and what "
                    "happens to it.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("-f", "--filename", dest="files", action="append", metavar="FILE",
                        help="manifest file to compile the rules from ('-' reads stdin); repeatable")
    source.add_argument("--rules", metavar="FILE",
                        help="trace an existing rules file instead ('-' reads stdin); needs --backend")
    p.add_argument("--node", help="name of the Node object whose rules to build (with -f)")
    p.add_argument("--backend", choices=backend_names(),
                   help="rule backend (with -f default: the KubeProxyConfiguration's mode, else iptables)")
    p.add_argument("--ip-family", choices=("ipv4", "ipv6"),
                   help="IP family of the rules (default: the family of --dst)")
    add_external_ip_cidrs(p)
    p.add_argument("--node-ip", action="append", default=[], metavar="IP",
                   help="a local address of the node (repeatable; with -f added to the Node's addresses)")
    p.add_argument("--src", required=True, metavar="IP", help="source address of the packet")
    p.add_argument("--dst", required=True, metavar="IP", help="destination address of the packet")
    p.add_argument("--dport", required=True, type=int, metavar="N", help="destination port")
    p.add_argument("--proto", choices=("tcp", "udp", "sctp"), default="tcp", help="protocol (default tcp)")
    p.add_argument("--from-node", action="store_true",
                   help="the node itself sends the packet (implied when --src is a node address)")
    p.add_argument("--in-interface", metavar="NAME",
                   help="interface a packet from elsewhere arrives on (matched by -i / iifname)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object {"verdict", "endpoints", "masquerade", "path"}')
    p.set_defaults(func=cmd_trace)
    return p


def _read_rules(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None


def _compiled(args: argparse.Namespace, family: str) -> tuple[str, str, tuple[str, ...]]:
    """(rules text, backend, node IPs) compiled from the manifests."""
    from ..cli_common import prepare, warn
    from ..compiler import compile_rules
    from ..input.cluster import load_cluster

    if not args.node:
        raise UsageError("--node is required with -f")
    cluster = prepare(load_cluster(args.files, stdin=sys.stdin), args)
    result = compile_rules(cluster, args.node, backend=args.backend, family=family)  # type: ignore[arg-type]
    warn(result.warnings)
    return result.text, result.plan.mode, result.plan.node_ips


def run_trace(args: argparse.Namespace) -> TraceResult:
    """Build the packet and the rules the arguments describe, and trace it."""
    family = args.ip_family or family_of(args.dst)
    packet = Packet(src=args.src, dst=args.dst, dport=args.dport, proto=args.proto, from_node=args.from_node,
                    in_interface=args.in_interface, family=family)
    node_ips: tuple[str, ...] = ()
    if args.rules is not None:
        if args.node:
            raise UsageError("--node cannot be used with --rules (give the node's addresses with --node-ip)")
        if not args.backend:
            raise UsageError("--backend is required with --rules")
        if args.external_ip_cidrs is not None:
            raise UsageError("--external-ip-cidrs cannot be used with --rules (it applies when compiling with -f)")
        text, backend = _read_rules(args.rules), args.backend
    else:
        text, backend, node_ips = _compiled(args, family)
    return trace(text, backend, packet, local_ips=[*node_ips, *args.node_ip])


def cmd_trace(args: argparse.Namespace) -> int:
    """``dataplane trace``: print the path and verdict (or one JSON object with --json)."""
    result = run_trace(args)
    sys.stdout.write(result.to_json() + "\n" if args.json else result.render())
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``trace`` on its own, reporting errors the way ``dataplane.cli.main`` does."""
    parser = argparse.ArgumentParser(prog="dataplane")
    add_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["trace", *(argv or [])])
    try:
        return cmd_trace(args)
    except InputError as e:
        for problem in e.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    except DataplaneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
