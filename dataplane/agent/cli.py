"""The ``dataplane sync`` command: follow watch streams (or kubectl) and keep a namespace's rules current."""
from __future__ import annotations

import argparse
import faulthandler
import gc
import os
import queue
import signal
import threading
from typing import Any, Sequence

from ..backends import backend_for, backend_names, get_backend
from ..cli_common import add_external_ip_cidrs, note, warn
from ..errors import DataplaneError, UsageError
from ..plan import Family
from .durations import parse_duration

__all__ = ["add_command"]

EXAMPLES = """examples:
  kubectl get services,endpointslices,nodes -A -o json > cluster.json     # a snapshot, as the API server holds it
  ip netns add demo && dataplane sync -f cluster.json --node node-a --netns demo --backend nftables     # one sync
  ip netns exec demo nft list map ip kube-proxy service-ips
  dataplane cleanup --netns demo"""

DEFAULT_MIN_SYNC_PERIOD = "1s"  # kube-proxy's --min-sync-period default (KubeProxyConfiguration minSyncPeriod)
DEFAULT_SYNC_PERIOD = "30s"  # kube-proxy's --sync-period default


def add_command(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``dataplane sync`` on the ``dataplane`` subcommand parser."""
    p = sub.add_parser(
        "sync", help="keep a namespace's rules current from watch streams (the node agent)",
        description="Run kube-proxy's loop for one node: read each SOURCE (a manifest snapshot, or a watch "
                    "stream as `kubectl get KIND -A --watch --output-watch-events -o json` prints it; files, "
                    "FIFOs and - are read concurrently) or, with --kubectl, list and watch the cluster with "
                    "kubectl; batch the changes and sync the namespace's rules at most once per "
                    "--min-sync-period, with a full resync every --sync-period. A bad object is reported "
                    "and skipped. Ends, after a last sync, when every source but FIFOs has ended, or on "
                    "SIGTERM/SIGINT.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--filename", dest="files", action="append", default=[], metavar="SOURCE",
                   help="a manifest file or watch stream; a FIFO is read until the agent stops; - is stdin "
                        "(repeatable)")
    p.add_argument("--node", required=True, help="name of this node's Node object")
    p.add_argument("--netns", required=True, metavar="NSNAME", help="name of the network namespace (ip netns)")
    p.add_argument("--backend", choices=backend_names(),
                   help="rule backend (default: the mode of the KubeProxyConfiguration read before the first "
                        "sync, else iptables)")
    p.add_argument("--ip-family", choices=("ipv4", "ipv6", "dual"), default="ipv4",
                   help="IP family; dual runs one proxier per family, as kube-proxy (default ipv4)")
    p.add_argument("--min-sync-period", default=DEFAULT_MIN_SYNC_PERIOD, metavar="D",
                   help=f"at most one sync per D, changes batched (default {DEFAULT_MIN_SYNC_PERIOD}; "
                        "500ms, 1s, 1m, 30 = seconds)")
    p.add_argument("--sync-period", default=DEFAULT_SYNC_PERIOD, metavar="D",
                   help=f"a full resync at least every D, and the longest retry back-off "
                        f"(default {DEFAULT_SYNC_PERIOD})")
    p.add_argument("--kubectl", action="store_true",
                   help="list and watch the cluster with kubectl (Services, EndpointSlices, this Node, "
                        "ServiceCIDRs, kube-system/kube-proxy), relisting when a watch ends or fails")
    p.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig for --kubectl")
    p.add_argument("--healthz-bind-address", metavar="HOST:PORT",
                   help="serve /healthz and /metrics there (port 0: any free port, printed)")
    add_external_ip_cidrs(p)
    p.set_defaults(func=cmd_sync)


def _families(choice: str) -> tuple[Family, ...]:
    return ("ipv4", "ipv6") if choice == "dual" else (choice,)  # type: ignore[return-value]


def _log(line: str) -> None:
    """A note (each sync's line): not printed with --quiet."""
    note(line)


def _warn(line: str) -> None:
    """A skipped object, an ignored kind, a source that failed: ``warning: ...`` (not with --quiet)."""
    warn([line])


def cmd_sync(args: argparse.Namespace) -> int:
    """Run the agent until its sources end or a signal stops it; 0 when the last sync succeeded."""
    from ..runtime.apply import forget
    from ..runtime.netns import require_netns
    from ..runtime.ownership import require_root
    from ..runtime.proxier import NetnsRunner, Proxier
    from .health import SyncStatus, serve
    from .kubectl import start_watches
    from .loop import SyncLoop
    from .sources import FileSource, Message
    from .store import ObjectStore

    gc.enable()  # a long-running process: its cycles must be collected
    min_period = parse_duration(args.min_sync_period, flag="--min-sync-period")
    period = parse_duration(args.sync_period, flag="--sync-period")
    if period <= 0:
        raise UsageError(f"--sync-period: must be greater than 0, not {args.sync_period!r}")
    if not args.files and not args.kubectl:
        raise UsageError("give at least one -f SOURCE, or --kubectl")
    if args.kubeconfig and not args.kubectl:
        raise UsageError("--kubeconfig is used only with --kubectl")
    if args.files.count("-") > 1:
        raise UsageError("standard input (-) was given more than once")
    if len(set(args.files)) != len(args.files):
        raise UsageError("a SOURCE was given more than once")
    for path in args.files:
        if path != "-" and not os.access(path, os.R_OK):
            reason = "No such file or directory" if not os.path.exists(path) else "Permission denied"
            raise UsageError(f"{path}: cannot read: {reason}")
    require_root("dataplane sync")
    require_netns(args.netns)

    status = SyncStatus(period)
    server = serve(status, args.healthz_bind_address) if args.healthz_bind_address else None
    if server is not None:
        _log(f"serving /healthz and /metrics on port {server.port}")
    stop = threading.Event()
    messages: "queue.Queue[Message]" = queue.Queue()
    store = ObjectStore(warn=_warn, on_event=status.record_event, on_error=status.record_error)
    sources = [FileSource(path, messages) for path in args.files]
    names = [s.name for s in sources]
    endless = [s.name for s in sources if s.is_fifo]
    watches: list[Any] = []
    families = _families(args.ip_family)

    def make_syncers(cluster) -> list[Proxier]:
        backend = backend_for(args.backend, cluster.proxy_config)
        forget(args.netns)  # `dataplane apply`'s records no longer describe what this agent installs
        runner = NetnsRunner(args.netns)
        return [Proxier(args.node, backend=backend.name, family=f, runner=runner, sync_period=None,
                        external_ip_cidrs=args.external_ip_cidrs) for f in families]

    def after_first_sync(results: Sequence[Any]) -> None:
        """What an earlier apply of the other backend left goes (kube-proxy's startup cleanup)."""
        for r in results:
            backend = get_backend(r.plan.mode)
            try:
                removed = backend.remove_leftovers(args.netns, r.plan.family,
                                                   keep_sysctls=[k for k, _ in r.plan.sysctls])
            except DataplaneError as err:
                removed = [f"could not remove what another backend left: {err}"]
            for line in removed:
                _warn(f"netns {args.netns}: {line}")

    loop = SyncLoop(messages, store, names, make_syncers, status, min_sync_period=min_period,
                    sync_period=period, log=_log, warn=_warn, endless=endless, after_first_sync=after_first_sync,
                    stop=stop, counts=server is not None, freeze_heap=True)

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a stuck agent shows where it is
    try:
        for s in sources:
            s.start()
        if args.kubectl:
            watches = start_watches(args.node, messages, stop, kubeconfig=args.kubeconfig)
            loop.sources.update(w.name for w in watches)
            loop.endless.update(w.name for w in watches)
        code = loop.run()
    finally:
        stop.set()
        for w in watches:
            w.close()
        if server is not None:
            server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        faulthandler.unregister(signal.SIGUSR1)
    _log(f"stopped after {loop.syncs} syncs and {loop.events} events")
    return code

