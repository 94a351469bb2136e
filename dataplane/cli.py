"""The ``dataplane`` command: a thin layer over the library API.

Every command reads manifests with ``-f`` (repeatable, ``-` `` for stdin),
prints warnings to stderr, and on bad input prints one line per problem and
exits 1 without writing anything.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from typing import Callable, NoReturn, Optional, Sequence

from .cli_common import (
    add_allocate, add_allocation, add_input, add_quiet, add_target, allocate, note, prepare, progress, set_quiet,
    warn,
)
from .errors import DataplaneError, InputError

EXAMPLES = {
    "compile": """examples:
  dataplane compile --allocate -f examples/cluster.yaml --node node-a
  dataplane allocate --seed 1 -f examples/cluster.yaml -o allocated.yaml
  dataplane compile -f allocated.yaml --node node-a --backend nftables -o rules.nft
  kubectl get svc,endpointslices,nodes -A -o yaml | dataplane compile -f - --node node-a
  dataplane compile --quiet --allocate -f examples/cluster.yaml --node node-a -o rules.txt     # no warnings""",
    "allocate": """examples:
  dataplane allocate -f examples/cluster.yaml
  dataplane allocate -f examples/cluster.yaml --service-cluster-ip-range 10.96.0.0/12,fd00:96::/108 --state alloc.json -o filled.yaml
  dataplane allocate -f examples/cluster.yaml --service-node-port-range 30000-30999 --seed 1 --format json""",
    "endpoints": """examples:
  dataplane endpoints -f examples/cluster.yaml
  kubectl get svc,pods,nodes -n shop -o yaml | dataplane endpoints -f -""",
    "apply": """examples:
  ip netns add demo
  dataplane apply -f examples/cluster.yaml --allocate --seed 1 --node node-a --netns demo
  dataplane allocate -f examples/cluster.yaml --seed 1 -o allocated.yaml
  dataplane apply -f allocated.yaml --node node-a --netns demo --backend nftables     # replaces the iptables rules
  dataplane apply -f allocated.yaml --node node-a --netns demo --backend nftables     # sends only what changed
  dataplane apply -f allocated.yaml --node node-a --netns demo --backend nftables --dry-run     # prints it, sends nothing""",
    "cleanup": """examples:
  ip netns add demo
  dataplane apply -f examples/cluster.yaml --allocate --node node-a --netns demo
  dataplane cleanup --netns demo""",
    "completion": """examples:
  source <(dataplane completion bash)
  mkdir -p ~/.zfunc && dataplane completion zsh > ~/.zfunc/_dataplane     # with fpath+=(~/.zfunc) in ~/.zshrc""",
}


_add_target = add_target  # --node, --backend, --ip-family, --external-ip-cidrs (shared with the diff command)


# Commands that other modules register: (command names, module, registering function). Their
# modules (the lab's above all) are imported only for the parser that needs them, so that a
# compile does not pay for importing them.
_EXTENSIONS = (
    (("dns", "env"), ".discovery", "add_commands"),
    (("trace",), ".trace.cli", "add_command"),
    (("lab",), ".lab.cli", "add_commands"),
    (("verify",), ".verify", "add_commands"),
    (("diff",), ".runtime.diff_cli", "add_command"),
    (("sync",), ".agent.cli", "add_command"),
)
_CORE = ("compile", "allocate", "endpoints", "apply", "cleanup", "completion")
# One-shot commands whose objects need not be freed one by one before the process exits.
_ONE_SHOT = ("compile", "allocate", "endpoints")


def _seconds(text: str) -> float:
    """``--lock-timeout``: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more: {text!r}")
    return value


def _add_lock_timeout(p: argparse.ArgumentParser) -> None:
    from .runtime.nslock import DEFAULT_LOCK_TIMEOUT

    p.add_argument("--lock-timeout", type=_seconds, default=DEFAULT_LOCK_TIMEOUT, metavar="SECONDS",
                   help="how long to wait while another apply or cleanup holds the namespace's lock, "
                        f"then fail (default {DEFAULT_LOCK_TIMEOUT:g})")


def _jobs(text: str) -> int:
    """``--jobs``: a positive number of processes."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer: {text!r}")
    return int(text)


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``dataplane`` parser: every command, or (``command``) the built-in ones and that one."""
    parser = argparse.ArgumentParser(
        prog="dataplane",
        description="Compile Kubernetes Services and EndpointSlices into one node's iptables or nftables rules, "
                    "the way kube-proxy does, and apply them in network namespaces.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_quiet(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="print the rules file for one node",
                       description="Print one complete rules file for a node and IP family: input for "
                                   "`iptables-restore --noflush` (`ip6tables-restore` for IPv6) or for `nft -f`.",
                       epilog=EXAMPLES["compile"], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input(p)
    _add_target(p)
    p.add_argument("-o", "--output", metavar="OUT", help="write the rules to OUT instead of stdout")
    p.add_argument("-j", "--jobs", type=_jobs, default=0, metavar="N",
                   help="processes compiling a large cluster (default: one per CPU)")
    add_allocate(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("allocate", help="fill in ClusterIPs and NodePorts as the API server would",
                       description="Print the input objects with spec.clusterIP(s), spec.ports[].nodePort and "
                                   "spec.healthCheckNodePort filled where the API server would fill them "
                                   "(static subranges of KEP-3070 and KEP-3668 included).",
                       epilog=EXAMPLES["allocate"], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input(p)
    add_allocation(p)
    p.add_argument("--state", metavar="FILE",
                   help="JSON file keeping allocations across runs (created if missing)")
    p.add_argument("--format", choices=("yaml", "json"), default="yaml", help="output format (default yaml)")
    p.add_argument("-o", "--output", metavar="OUT", help="write to OUT instead of stdout")
    p.add_argument("-j", "--jobs", type=_jobs, default=0, metavar="N",
                   help="processes validating and printing a large cluster (default: one per CPU)")
    p.set_defaults(func=cmd_allocate)

    p = sub.add_parser("endpoints", help="print the EndpointSlices the controller derives from Pods",
                       description="For Services with a selector and no EndpointSlices in the input, print the "
                                   "EndpointSlices the EndpointSlice controller would make from the Pods.",
                       epilog=EXAMPLES["endpoints"], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input(p)
    p.add_argument("--format", choices=("yaml", "json"), default="yaml", help="output format (default yaml)")
    p.add_argument("-o", "--output", metavar="OUT", help="write to OUT instead of stdout")
    p.set_defaults(func=cmd_endpoints)

    p = sub.add_parser("apply", help="load a node's rules into a network namespace",
                       description="Compile the rules for a node and load them into an existing network namespace "
                                   "atomically (a failure leaves it as it was), then set the sysctls they need.",
                       epilog=EXAMPLES["apply"], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input(p)
    _add_target(p)
    p.add_argument("--netns", required=True, metavar="NSNAME", help="name of the network namespace (ip netns)")
    p.add_argument("--full", action="store_true", help="rewrite everything instead of sending only the difference")
    p.add_argument("--dry-run", action="store_true",
                   help="print the exact transaction apply would send (full or partial, decided as apply decides) "
                        "and send nothing: no rule, sysctl or record changes")
    _add_lock_timeout(p)
    add_allocate(p)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("cleanup", help="remove every rule kube-dataplane installed in a namespace",
                       description="Remove the kube-proxy table(s), the iptables chains and jump rules that "
                                   "kube-dataplane recorded installing (and kube-proxy's fixed chains), and put "
                                   "back the sysctls apply changed; chains of other programs stay, even KUBE-* ones.",
                       epilog=EXAMPLES["cleanup"], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--netns", required=True, metavar="NSNAME", help="name of the network namespace (ip netns)")
    _add_lock_timeout(p)
    p.set_defaults(func=cmd_cleanup)

    for names, module, register in _EXTENSIONS:
        if command is None or command in names:
            getattr(importlib.import_module(module, __package__), register)(sub)

    p = sub.add_parser("completion", help="print a shell completion script",
                       description="Print a completion script for bash, zsh or tcsh (generated from this parser, "
                                   "so it always knows every command and option).",
                       epilog=EXAMPLES["completion"], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shell", choices=("bash", "zsh", "tcsh"), help="the shell to complete in")
    p.set_defaults(func=cmd_completion)
    _quiet_everywhere(sub)
    return parser


def _quiet_everywhere(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """``-q/--quiet`` after any command too (``dataplane compile -q ...``), without undoing one
    given before it: every command's parser takes it with a suppressed default."""
    for p in sub.choices.values():
        if "--quiet" not in p._option_string_actions and "-q" not in p._option_string_actions:
            add_quiet(p, default=argparse.SUPPRESS)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                _quiet_everywhere(action)


def _read(files: Sequence[str]):
    """The input's documents (``-`` is stdin)."""
    from .input.loader import load_documents

    return load_documents(files, stdin=sys.stdin)


def _parse(docs):
    """The documents validated: the cluster and the warnings (not printed)."""
    from .input.cluster import parse_cluster

    return parse_cluster(docs)


def _validate(docs):
    """The cluster the documents hold, its warnings printed."""
    result = _parse(docs)
    warn(result.warnings)
    return result.cluster


def _load_docs(files: Sequence[str]):
    """Read and validate the input: (documents, cluster)."""
    docs = _read(files)
    return docs, _validate(docs)


def _load(files: Sequence[str]):
    return _load_docs(files)[1]


def _dump(objects: list, fmt: str) -> str:
    """``objects`` as YAML documents or JSON (see :mod:`dataplane.dump`)."""
    from .dump import dump_objects

    return dump_objects(objects, fmt)


def _write_output(text: str, path: Optional[str]) -> None:
    """Write to stdout or through ``path`` (see :func:`dataplane.output.write_output`)."""
    from .output import write_output

    write_output(text, path)


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from .compiler import CompileResult, render
    from .parallel import compile_sharded
    from .plan import build_plan

    workers = args.jobs or len(os.sched_getaffinity(0))
    with progress("dataplane compile") as shown:
        shown.update(f"reading {_files_text(args.files)}")
        docs = _read(args.files)
        sharded = None
        if workers > 1 and not args.allocate:
            shown.update(f"validating, planning and rendering {len(docs)} objects in {workers} processes")
            sharded = compile_sharded(docs, args.node, mode=args.backend, family=args.ip_family, workers=workers,
                                      external_ip_cidrs=args.external_ip_cidrs)
        if sharded is None:
            shown.update(f"validating {len(docs)} objects")
            parsed = _parse(docs)
    if sharded is not None:
        text, warnings = sharded
        warn(warnings)
        _write_output(text, args.output)
        args.retained = (docs, sharded)  # freed by the exit (see run)
        return 0
    cluster = prepare(parsed, args)  # prints the input's warnings
    with progress("dataplane compile") as shown:  # what compile_rules does, in two phases
        shown.update(f"planning node {args.node}'s rules")
        plan = build_plan(cluster, args.node, backend=args.backend, family=args.ip_family)
        shown.update(f"rendering {plan.mode} rules for {len(plan.services)} service ports")
        result = CompileResult(text=render(plan), plan=plan)
    warn(result.warnings)
    _write_output(result.text, args.output)
    args.retained = (docs, cluster, result)  # freed by the exit (see run)
    return 0


def _files_text(files: Sequence[str]) -> str:
    """The input files, for progress: ``a.yaml``, ``a.yaml and 2 more``, ``standard input``."""
    first = "standard input" if files[0] == "-" else files[0]
    return first if len(files) == 1 else f"{first} and {len(files) - 1} more"


def cmd_allocate(args: argparse.Namespace) -> int:
    from .controllers.allocation import AllocationResult, AllocationState, fill_documents
    from .model import Cluster
    from .parallel_allocate import allocate_sharded

    def allocate_validated(cluster: Cluster) -> AllocationResult:  # (the state is read once the input is valid)
        state = AllocationState.load(args.state) if args.state and os.path.exists(args.state) else None
        return allocate(cluster, args, state)

    docs = _read(args.files)
    workers = args.jobs or len(os.sched_getaffinity(0))
    sharded = allocate_sharded(docs, args.format, workers, allocate_validated) if workers > 1 else None
    if sharded is not None:  # (large, valid input without warnings, validated and printed by several processes)
        text, result = sharded
    else:
        result = allocate_validated(_validate(docs))
        text = _dump(fill_documents(docs, result), args.format)
    _write_output(text, args.output)
    if args.state:
        result.state.save(args.state)
    args.retained = (docs, result)  # freed by the exit (see run)
    return 0


def cmd_endpoints(args: argparse.Namespace) -> int:
    from .controllers.endpointslices import derive_endpoint_slices, slices_to_manifests, wants_slices

    cluster = _load(args.files)
    slices = derive_endpoint_slices(cluster)
    if not slices:
        reason = ("every Service with a selector has EndpointSlices in the input already"
                  if any(map(wants_slices, cluster.services)) else "no Service in the input has a selector")
        warn([f"nothing to derive: {reason}"])
    _write_output(_dump(slices_to_manifests(slices), args.format) if slices else "", args.output)
    args.retained = (cluster, slices)  # freed by the exit (see run)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from .runtime.apply import apply_cluster, dry_run_cluster
    from .runtime.netns import require_netns
    from .runtime.ownership import require_root

    require_root("dataplane apply")
    require_netns(args.netns)
    with progress("dataplane apply") as shown:
        shown.update(f"reading {_files_text(args.files)}")
        docs = _read(args.files)
        shown.update(f"validating {len(docs)} objects")
        parsed = _parse(docs)
    cluster = prepare(parsed, args)  # prints the input's warnings
    target = f"node {args.node} ({args.ip_family})"
    with progress("dataplane apply") as shown:
        shown.update(f"planning, rendering and {'comparing' if args.dry_run else 'loading'} "
                     f"{target}'s rules in netns {args.netns}")
        if args.dry_run:
            dry = dry_run_cluster(args.netns, cluster, args.node, backend=args.backend, family=args.ip_family,
                                  full=args.full, lock_timeout=args.lock_timeout)
        else:
            result = apply_cluster(args.netns, cluster, args.node, backend=args.backend, family=args.ip_family,
                                   full=args.full, lock_timeout=args.lock_timeout)
    if args.dry_run:
        warn(dry.sync.plan.warnings)
        sys.stdout.write(dry.transaction)
        note(f"dry run, nothing sent: {dry.sync.plan.mode} rules for {target} to netns {args.netns}: "
             f"{_sync_text(dry.sync)}{'; ' + dry.drift if dry.drift else ''}")
        return 0
    warn(result.plan.warnings)
    extra = f", {len(result.conntrack)} stale conntrack filters applied" if result.conntrack else ""
    note(f"applied {result.plan.mode} rules for {target} to netns {args.netns}: "
         f"{_sync_text(result)}{extra}{'; ' + result.drift if result.drift else ''}")
    if result.leftovers:  # switching backends: the other one's rules went
        warn([f"netns {args.netns}: {'; '.join(result.leftovers)}"])
    return 0


def _sync_text(result) -> str:
    """``full sync, all 7 service ports written`` and the like, for a SyncResult."""
    n = len(result.plan.services)
    what = {"full": f"all {n} service ports written",
            "partial": f"{result.changed} of {n} service ports rewritten",
            "none": f"nothing changed ({n} service ports)"}[result.kind]
    return f"{result.kind} sync, {what}"


def cmd_cleanup(args: argparse.Namespace) -> int:
    from .runtime.apply import forget
    from .runtime.netns import require_netns
    from .runtime.nslock import netns_lock
    from .runtime.ownership import cleanup_namespace, discard, require_root

    require_root("dataplane cleanup")
    require_netns(args.netns)
    with netns_lock(args.netns, args.lock_timeout):
        kept = cleanup_namespace(args.netns)
        warn(kept)
        forget(args.netns)
        if not kept:
            discard(args.netns)  # nothing is left to remember: remove the namespace's state directory
    note(f"removed kube-dataplane's rules from netns {args.netns}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one ``dataplane`` command line (``sys.argv[1:]`` by default); the exit status."""
    return _main(argv)[0]


def run() -> NoReturn:
    """The console entry point: :func:`main`, then exit.

    A one-shot command's objects (millions for a large cluster: a tenth of a
    second to free one by one) are not freed but left to the kernel, as mypy
    does: the command parks them on its arguments, and the process ends with
    ``os._exit`` once the output is flushed. Nor is the garbage collector resumed for
    them: its first young collection would walk every object the command made (half a
    second for a 10k-Service cluster given as Pods) just before the exit.
    """
    code, args = _main(None, exiting=_ONE_SHOT)
    if args is not None and args.command in _ONE_SHOT:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BrokenPipeError:
            code = 1
        os._exit(code)
    sys.exit(code)


def _main(argv: Optional[Sequence[str]], exiting: Sequence[str] = ()
          ) -> tuple[int, Optional[argparse.Namespace]]:
    """Run one command line: (exit status, its parsed arguments). The garbage collector is
    paused during a command and resumed after it, unless the command is one of ``exiting``
    (the caller then ends the process without freeing anything: see :func:`run`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((a for a in argv if a not in ("-q", "--quiet")), None)
    command = first if first in _CORE else None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    set_quiet(args.quiet)
    failed = getattr(args, "error_status", 1)  # the exit status of an error (diff: 2, as diff(1))
    # One-shot commands build millions of acyclic objects: the cyclic collector would
    # traverse them again and again for nothing (a tenth of a 10k-Service compile).
    collect = gc.isenabled() and args.command not in ("lab", "verify")
    if collect:
        gc.disable()
    try:
        return func(args), args
    except InputError as e:
        from .errors import report_lines

        for line in report_lines(e.problems, "problem"):  # at most errors.MAX_REPORTED, then how many more
            print(f"error: {line}", file=sys.stderr)
        return failed, args
    except DataplaneError as e:
        print(f"error: {e}", file=sys.stderr)
        return failed, args
    except BrokenPipeError:
        return failed, args
    except KeyboardInterrupt:
        return 130, args
    finally:
        set_quiet(False)
        if collect and args.command not in exiting:
            gc.enable()


if __name__ == "__main__":  # pragma: no cover
    run()
