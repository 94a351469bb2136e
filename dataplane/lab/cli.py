"""The ``dataplane lab up``, ``lab down`` and ``lab list`` commands, and the options and input
handling ``dataplane verify`` shares with them."""
from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from ..backends import backend_names
from ..cli_common import add_allocate, add_external_ip_cidrs, add_input, note, prepare, progress, warn
from ..model import Cluster
from ..plan import Family
from .layout import families_in_use
from .state import DEFAULT_LAB_NAME, LABS_DIR, list_labs
from .summary import format_table, layout_summary
from .updown import UpResult, lab_down, lab_up

__all__ = ["add_commands", "add_lab_options", "load_input", "raise_exit"]

EXAMPLES = {
    "up": """examples:
  dataplane lab up -f examples/cluster.yaml --allocate --seed 1
  ip netns exec lab-client bash -c 'cat </dev/tcp/192.0.2.1/30344'     # shop/web's NodePort; prints SOURCE DESTINATION POD
  dataplane lab down
  dataplane lab up -f examples/cluster.yaml --allocate --backend nftables --name demo
  dataplane lab down --name demo""",
    "down": """examples:
  dataplane lab up -f examples/cluster.yaml --allocate
  dataplane lab down
  dataplane lab up -f examples/cluster.yaml --allocate --name demo
  dataplane lab down --name demo""",
    "list": """examples:
  dataplane lab up -f examples/cluster.yaml --allocate --name demo
  dataplane lab list
  dataplane lab list --json
  dataplane lab down --name demo""",
}


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``lab up`` and ``lab down`` on the ``dataplane`` subcommand parser."""
    lab = sub.add_parser("lab", help="build a whole cluster from manifests in network namespaces",
                         description="Build (up) or remove (down) a lab: every Node, endpoint Pod and two "
                                     "external clients in network namespaces, each node with its own rules.")
    lsub = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    p = lsub.add_parser(
        "up", help="build the lab and leave it running",
        description="Build a lab from the manifests: one namespace per Node (its own rules loaded, as kube-proxy "
                    "would on it), one per endpoint Pod with TCP/UDP reply servers on every port the Services "
                    "target, a probe pod per node and two external clients, on a shared underlay. The reply "
                    "servers keep running in a background process; everything is recorded in "
                    f"{LABS_DIR}/NAME.json for `dataplane lab down`. A lab of the same name left by a crash is "
                    "removed first.",
        epilog=EXAMPLES["up"], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input(p)
    add_lab_options(p)
    add_allocate(p)
    p.add_argument("--name", default=DEFAULT_LAB_NAME, metavar="LAB",
                   help=f"lab name, prefix of its namespaces (default {DEFAULT_LAB_NAME})")
    p.set_defaults(func=cmd_lab_up)
    p = lsub.add_parser("down", help="remove a lab and everything it made",
                        description="Stop the lab's server process and remove its namespaces, rules records "
                                    "and state file; works from any process, also for a lab whose `up` crashed.",
                        epilog=EXAMPLES["down"], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default=DEFAULT_LAB_NAME, metavar="LAB", help=f"lab name (default {DEFAULT_LAB_NAME})")
    p.set_defaults(func=cmd_lab_down)
    p = lsub.add_parser("list", help="list the labs that exist",
                        description=f"One line per lab recorded in {LABS_DIR} (also crashed ones and those of "
                                    "running `dataplane verify` commands): its name, status (up, building, broken: "
                                    "`lab down` removes it), backend, families, when it was made (UTC) and its "
                                    "network namespaces.",
                        epilog=EXAMPLES["list"], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print a JSON array of objects instead")
    p.set_defaults(func=cmd_lab_list)


def add_lab_options(p: argparse.ArgumentParser) -> None:
    """``--backend``, ``--ip-family`` and ``--external-ip-cidrs``: the options of a lab's rules."""
    p.add_argument("--backend", choices=backend_names(),
                   help="rule backend (default: the KubeProxyConfiguration's mode, else iptables)")
    p.add_argument("--ip-family", choices=("ipv4", "ipv6"),
                   help="only this IP family (default: every family the Services use)")
    add_external_ip_cidrs(p)


def load_input(args: argparse.Namespace) -> tuple[Cluster, tuple[Family, ...]]:
    """The cluster the arguments describe (allocated and with derived EndpointSlices, warnings
    printed) and the families to build."""
    from ..input.cluster import load_cluster

    cluster = prepare(load_cluster(args.files, stdin=sys.stdin), args)
    families = (args.ip_family,) if args.ip_family else families_in_use(cluster)
    return cluster, families  # type: ignore[return-value]


def raise_exit(signum: int, _frame: Any) -> None:
    """A signal handler that exits (128 + the signal), so that a killed command removes its lab."""
    raise SystemExit(128 + signum)


def render_summary(result: UpResult) -> str:
    """Human summary of a lab that is up."""
    cl = result.lab
    s = layout_summary(cl)
    fams = ", ".join(cl.layout.families)
    out = [f"lab {result.name} is up: {len(s['nodes'])} node(s), {len(s['pods'])} pod(s), "
           f"{len(s['clients'])} clients; {cl.mode} rules, {fams}\n"]
    if result.leftovers:
        out.append(f"(removed {len(result.leftovers)} namespace(s) left by an earlier crashed lab {result.name})\n")
    out.append("\nnodes:\n")
    out.append(format_table(
        ["NODE", "NETNS", "ADDRESSES", "POD CIDRS", "RULES", "SERVES"],
        [[n["name"], n["netns"], ",".join(n["addresses"]), ",".join(n["pod_cidrs"]),
          ", ".join(f"{c} service ports ({f})" for f, c in n["service_ports"].items()) or "none", n["serves"]]
         for n in s["nodes"]], indent="  "))
    out.append("\npods:\n")
    rows = [[p["pod"], p["netns"], p["node"], ",".join(p["addresses"]), p["serves"]] for p in s["pods"]]
    rows += [[f"(probe pod of {p['node']})", p["netns"], p["node"], ",".join(p["addresses"]), "-"]
             for p in s["probe_pods"]]
    out.append(format_table(["POD", "NETNS", "NODE", "ADDRESSES", "SERVES"], rows, indent="  "))
    out.append("\nclients:\n")
    out.append(format_table(
        ["CLIENT", "NETNS", "ADDRESSES", "ROUTES"],
        [[c["role"], c["netns"], ",".join(c["addresses"]), f"default via {c['via']}"] for c in s["clients"]],
        indent="  "))
    if s["services"]:
        out.append("\nservices:\n")
        out.append(format_table(
            ["SERVICE PORT", "CLUSTER IP", "NODE PORT", "EXTERNAL", "ENDPOINTS"],
            [[f"{v['service']} {v['protocol']}/{v['port']}", v["cluster_ip"], str(v["node_port"] or "-"),
              ",".join(v["external"]) or "-", ",".join(v["endpoints"]) or "-"] for v in s["services"]],
            indent="  "))
    pid = f"; reply servers run in process {result.server_pid}" if result.server_pid else ""
    out.append(f"\nstate: {result.state_file}{pid}\n")
    tcp = next((v for v in s["services"] if v["protocol"] == "tcp" and v["endpoints"]), None)
    if tcp is not None:
        probe = s["probe_pods"][0]["netns"]
        out.append(f"try:    ip netns exec {probe} bash -c 'cat </dev/tcp/{tcp['cluster_ip']}/{tcp['port']}'"
                   "   # a reply server answers 'SOURCE DESTINATION POD'\n")
    out.append(f"remove: dataplane lab down --name {result.name}\n")
    return "".join(out)


def cmd_lab_up(args: argparse.Namespace) -> int:
    """``dataplane lab up``: build, print the summary, leave it running."""
    cluster, families = load_input(args)
    previous = signal.signal(signal.SIGTERM, raise_exit)  # a killed `up` cleans up after itself
    try:
        with progress(f"dataplane lab up {args.name}") as shown:
            result = lab_up(cluster, name=args.name, backend=args.backend, families=families, progress=shown.update)
    finally:
        signal.signal(signal.SIGTERM, previous)
    warn(result.lab.layout.warnings)
    warn(result.lab.warnings)
    sys.stdout.write(render_summary(result))
    return 0


def cmd_lab_down(args: argparse.Namespace) -> int:
    """``dataplane lab down``: remove the lab."""
    removed = lab_down(args.name)
    note(f"lab {args.name} is down: removed {len(removed)} network namespace(s)")
    return 0


def cmd_lab_list(args: argparse.Namespace) -> int:
    """``dataplane lab list``: the labs, one per line (or ``--json``)."""
    import json

    labs = list_labs()
    if args.json:
        sys.stdout.write(json.dumps([lab.as_json() for lab in labs], indent=2) + "\n")
        return 0
    if not labs:
        note("no lab exists")
        return 0
    sys.stdout.write(format_table(
        ["LAB", "STATUS", "BACKEND", "FAMILIES", "CREATED", "NAMESPACES"],
        [[lab.name, lab.status, lab.backend, ",".join(lab.families) or "-", lab.created_text(),
          ",".join(lab.namespaces) or "-"] for lab in labs]))
    return 0
