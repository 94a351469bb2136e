"""The benchmark's driver: options, the order of the measurements, the report (see scripts/bench)."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from .children import child_main
from .generate import GENERATOR_VERSION
from .measure import measure_allocate, measure_incremental, measure_size
from .procs import BACKENDS, can_use_kernel, child, iptables_variant, isolated, log, run_child
from .report import growth, print_report

USAGE = "Benchmark kube-dataplane at cluster scale (see scripts/bench for what is measured)."


def measure_rate(args: argparse.Namespace, report: dict) -> None:
    """The connection-rate test (a namespace lab per size and backend) into ``report["rate"]``."""
    sizes = [int(x) for x in args.rate_sizes.split(",")]
    log(f"connection rate: {sizes} Services x {args.backends}, {args.rate_seconds:g} s each, in a namespace lab")
    r = run_child(isolated(child("rate", "--sizes", ",".join(map(str, sizes)), "--endpoints",
                                 str(args.endpoints), "--backends", ",".join(args.backends),
                                 "--seconds", str(args.rate_seconds))), "rate test")
    report["rate"] = r["rate"]


def save(report: dict, path: Optional[str]) -> None:
    """Write the report as JSON to ``path`` (nothing without one)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    p = argparse.ArgumentParser(prog="scripts/bench", description=USAGE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", help="Service counts (default 1000,10000,30000; --quick: 1000,10000)")
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per Service (default 10)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="default iptables,nftables")
    p.add_argument("--quick", action="store_true", help="CI smoke: sizes 1000,10000, one run each, 1 s rate tests")
    p.add_argument("--repeats", type=int, help="runs per timing (default 3; 1 with --quick)")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "kube-dataplane-bench"),
                   help="where generated clusters (cached) and outputs go")
    p.add_argument("--no-yaml", action="store_true", help="skip the YAML compile")
    p.add_argument("--no-kernel", action="store_true", help="skip every kernel measurement (loads, update apply)")
    p.add_argument("--no-dataplane-rate", action="store_true", help="skip the connection-rate test")
    p.add_argument("--kernel-timeout", type=float, default=600.0,
                   help="give up a kernel load after this many seconds (default 600; reported as >N)")
    p.add_argument("--no-incremental", action="store_true", help="skip the incremental update test")
    p.add_argument("--incremental-sizes",
                   help="Services for the incremental test (default: every size of --sizes)")
    p.add_argument("--incremental-iptables-apply", action="store_true",
                   help="time applying the iptables updates even without iptables-legacy-restore (loading the full "
                        "ruleset with the nf_tables iptables-restore first takes over 10 minutes at 10k Services)")
    p.add_argument("--no-allocate", action="store_true", help="skip `dataplane allocate`")
    p.add_argument("--updates", type=int,
                   help="single-endpoint updates timed (default 9; --quick: 5); nftables: as many again with nft -f")
    p.add_argument("--rate-sizes", default="10,1000,10000", help="Service counts for the rate test")
    p.add_argument("--rate-seconds", type=float, help="seconds of connections per rate point (2; --quick: 1)")
    p.add_argument("--report", metavar="JSON", help="only print the tables of an earlier run's --json file")
    args = p.parse_args(argv)
    if args.report:
        report = json.loads(Path(args.report).read_text())
        report["growth"] = growth(report)
        print_report(report)
        return 0
    args.sizes = [int(x) for x in (args.sizes or ("1000,10000" if args.quick else "1000,10000,30000")).split(",")]
    args.backends = [b for b in args.backends.split(",") if b]
    if any(b not in BACKENDS for b in args.backends):
        p.error(f"--backends: choose from {', '.join(BACKENDS)}")
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.updates = args.updates or (5 if args.quick else 9)
    args.rate_seconds = args.rate_seconds or (1.0 if args.quick else 2.0)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    notes = []
    why_not = can_use_kernel()
    kernel = not args.no_kernel and why_not is None
    rate = not args.no_dataplane_rate and why_not is None
    if why_not and not (args.no_kernel and args.no_dataplane_rate):
        notes.append(f"kernel measurements skipped: {why_not}")
    report: dict[str, Any] = {
        "meta": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
            "endpoints_per_service": args.endpoints, "repeats": args.repeats, "sizes": args.sizes,
            "backends": args.backends, "generator_version": GENERATOR_VERSION, "iptables": iptables_variant(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            # what was measured: the environment's dataplane (the installed wheel, or an editable checkout)
            "package": str(Path(importlib.util.find_spec("dataplane").origin).parent),
        },
        "compile": [],
        "command": " ".join(["scripts/bench", *argv]),
    }
    started = time.perf_counter()
    rate_sizes = [int(x) for x in args.rate_sizes.split(",")]
    incremental = [] if args.no_incremental else (
        [int(x) for x in args.incremental_sizes.split(",")] if args.incremental_sizes else args.sizes)
    for size in args.sizes:  # everything about one size before the next: a cut-short run keeps whole sizes
        report["compile"].extend(measure_size(args, size, workdir, kernel))
        if not args.no_allocate:
            report.setdefault("allocate", []).append(measure_allocate(args, size, workdir))
        if size in incremental:
            report.setdefault("incremental", []).extend(measure_incremental(args, size, workdir, kernel))
        report["growth"] = growth(report)
        if rate and size == max(args.sizes, key=lambda n: (n <= max(rate_sizes), n)):
            measure_rate(args, report)  # once the sizes it covers are done, before larger ones take the time
        save(report, args.json)
    for size in incremental:
        if size not in args.sizes:
            report.setdefault("incremental", []).extend(measure_incremental(args, size, workdir, kernel))
    report["growth"] = growth(report)
    if rate and "rate" not in report:
        measure_rate(args, report)
    report["meta"]["seconds"] = time.perf_counter() - started
    report["notes"] = notes
    print_report(report)
    if args.json:
        save(report, args.json)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
