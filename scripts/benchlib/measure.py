"""The benchmark's measurements for one cluster size: the CLI end to end (compile from slices as
JSON and YAML, from Pods, ``allocate`` as YAML and JSON), the library in a fresh interpreter, the
kernel's own load time, and one-endpoint updates produced by the Proxier and applied to a kernel."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from .children import outside
from .generate import COMPILE_NODE, NODE_PORT_RANGE, write_cluster
from .procs import (
    child, iptables_tools, isolated, log, median, rule_count, run_child, run_measured, update_tool,
)

GAVE_UP: dict[str, int] = {}  # kernel load tool -> the Service count at which it timed out


def dataplane_cli() -> str:
    """The ``dataplane`` console script next to this interpreter (else the one on PATH)."""
    cli = str(Path(sys.executable).with_name("dataplane"))
    if not os.path.exists(cli):
        cli = shutil.which("dataplane") or cli
    return cli


def measure_cli(argv: Sequence[str], out: Path, repeats: int, what: str) -> dict:
    """Run a ``dataplane`` command writing ``-o out`` ``repeats`` times: median wall time, runs, peak RSS."""
    runs = []
    for _ in range(repeats):
        # the previous run's output is removed untimed: freeing its page cache (when -o replaces a
        # 36 MB file) costs the kernel up to 0.1 s that is not the command's
        out.unlink(missing_ok=True)
        r = run_measured([*argv, "-o", str(out)])
        if r["rc"] != 0:
            raise RuntimeError(f"{what} failed: {r['stderr'].strip()[-2000:]}")
        runs.append(r)
    return {"seconds": median([r["seconds"] for r in runs]), "runs": [round(r["seconds"], 4) for r in runs],
            "cpu_seconds": median([r["cpu_seconds"] for r in runs]),
            "maxrss_mib": max(r["maxrss_mib"] for r in runs),
            "warnings": sum(1 for ln in runs[0]["stderr"].splitlines() if ln.startswith("warning:"))}


def measure_compile(cli: str, path: Path, backend: str, out: Path, repeats: int) -> dict:
    """``dataplane compile -f path --backend backend``, timed (see :func:`measure_cli`)."""
    return measure_cli([cli, "compile", "-f", str(path), "--node", COMPILE_NODE, "--backend", backend], out,
                       repeats, f"dataplane compile -f {path} --backend {backend}")


def measure_allocate(args: argparse.Namespace, size: int, workdir: Path) -> dict:
    """``dataplane allocate`` of the cluster with slices, printing YAML and JSON (every object printed)."""
    paths = write_cluster(workdir, size, args.endpoints)
    cli = dataplane_cli()
    row: dict[str, Any] = {"services": size}
    for fmt in ("yaml", "json"):
        log(f"{size}: dataplane allocate --format {fmt} x{args.repeats}")
        out = workdir / f"allocated-{size}.{fmt}"
        row[fmt] = measure_cli([cli, "allocate", "-f", str(paths["json"]), "--format", fmt,
                                "--service-node-port-range", NODE_PORT_RANGE], out, args.repeats,
                               f"dataplane allocate --format {fmt}")
        row[fmt]["output_bytes"] = out.stat().st_size
        out.unlink(missing_ok=True)
    return row


def measure_size(args: argparse.Namespace, size: int, workdir: Path, kernel: bool) -> list[dict]:
    """One row per backend: compile from slices (JSON, YAML) and from Pods, the library, kernel loads."""
    paths = write_cluster(workdir, size, args.endpoints)
    log(f"{size} Services x {args.endpoints} endpoints: " + ", ".join(
        f"{key} {path.stat().st_size / 2**20:.1f} MiB" for key, path in paths.items()))
    cli = dataplane_cli()
    rows = []
    for backend in args.backends:
        out = workdir / f"out-{size}x{args.endpoints}.{backend}"
        row: dict[str, Any] = {"services": size, "endpoints_per_service": args.endpoints, "backend": backend}
        log(f"{size} {backend}: dataplane compile (JSON) x{args.repeats}")
        row["cli_json"] = measure_compile(cli, paths["json"], backend, out, args.repeats)
        text = out.read_text()
        row["output_bytes"] = len(text.encode())
        row.update(rule_count(backend, text))
        log(f"{size} {backend}: dataplane compile (JSON with Pods instead of slices) x{args.repeats}")
        pods_out = workdir / f"out-pods.{backend}"
        row["cli_pods"] = measure_compile(cli, paths["pods"], backend, pods_out, args.repeats)
        row["cli_pods"]["same_rules"] = pods_out.read_text() == text
        if not args.no_yaml:
            log(f"{size} {backend}: dataplane compile (YAML)")
            row["cli_yaml"] = measure_compile(cli, paths["yaml"], backend, workdir / f"out-yaml.{backend}", 1)
        log(f"{size} {backend}: library, fresh interpreter x{args.repeats}")
        runs = [run_child(child("inproc", "--file", str(paths["json"]), "--backend", backend), "library run")
                for _ in range(args.repeats)]
        row["lib"] = {k: median([r[k] for r in runs]) for k in runs[0]}
        if kernel:
            measure_kernel_loads(args, size, backend, out, row)
        rows.append(row)
    return rows


def measure_kernel_loads(args: argparse.Namespace, size: int, backend: str, out: Path, row: dict) -> None:
    """The kernel's own load of the compiled rules in a fresh namespace (each iptables-restore variant)."""
    tools = ["nft"] if backend == "nftables" else iptables_tools()
    for tool in tools:
        key = "kernel_load_legacy" if tool == "iptables-legacy-restore" else "kernel_load"
        if tool in GAVE_UP:  # it already timed out on a smaller ruleset: this one takes longer still
            log(f"{size} {backend}: kernel load with {tool} skipped (timed out at {GAVE_UP[tool]})")
            row[key] = {"seconds": None, "timeout": args.kernel_timeout, "skipped": True, "tool": tool}
            continue
        log(f"{size} {backend}: kernel load with {tool} in a fresh namespace")
        row[key] = run_child(isolated(child("kernel-load", "--file", str(out), "--tool", tool,
                                            "--timeout", str(args.kernel_timeout))), "kernel load")
        row[key]["tool"] = tool
        if row[key].get("seconds") is None:
            GAVE_UP[tool] = size


def measure_incremental(args: argparse.Namespace, size: int, workdir: Path, kernel: bool) -> list[dict]:
    """Per backend: a full Proxier sync, then single-endpoint updates, each produced and (with the
    kernel) applied on top of the full ruleset in a fresh namespace: with nft, twice ``--updates``
    of them, alternately as the product applies them (one netlink batch) and with ``nft -f``."""
    paths = write_cluster(workdir, size, args.endpoints)
    rows = []
    for backend in args.backends:
        outdir = Path(tempfile.mkdtemp(prefix=f"incr-{backend}-", dir=workdir))
        try:
            tool = update_tool(backend)
            apply = kernel and (tool != "iptables-restore" or args.incremental_iptables_apply)
            count = 2 * args.updates if apply and tool == "nft" else args.updates  # half for each loader
            log(f"incremental {size} {backend}: {count} single-endpoint updates")
            r = run_child(child("incremental", "--file", str(paths["json"]), "--backend", backend,
                                "--updates", str(count), "--outdir", str(outdir)), "incremental run")
            ups = r["updates"]
            row: dict[str, Any] = {
                "services": size, "backend": backend, "full_sync_seconds": r["full_sync_seconds"],
                "full_bytes": r["full_bytes"], "update_seconds": median([u["seconds"] for u in ups]),
                "update_bytes": median([u["bytes"] for u in ups]), "kinds": sorted({u["kind"] for u in ups}),
                "updates": ups,
            }
            if apply:
                how = "alternately as one netlink batch and with nft -f" if tool == "nft" else f"with {tool}"
                log(f"incremental {size} {backend}: full ruleset with {tool}, then the updates {how}, in a fresh "
                    "namespace")
                k = run_child(isolated(child("apply-updates", "--tool", tool, "--outdir", str(outdir),
                                             "--updates", str(len(ups)), "--caller", outside())), "update apply")
                row.update(kernel_update_fields(tool, k))
            rows.append(row)
        finally:
            shutil.rmtree(outdir, ignore_errors=True)
    return rows


def kernel_update_fields(tool: str, k: dict) -> dict:
    """The incremental row's kernel keys from an ``apply-updates`` child's result ``k``.

    ``kernel_update_seconds`` / ``_runs`` is the update as the product applies it, named by
    ``kernel_update_path`` (``netlink``: one nf_tables batch, ``netns.apply_nftables_partial``;
    else the iptables tool's ``--noflush``). With nft also: ``kernel_update_nft_seconds`` / ``_runs``
    (``nft -f`` of the other half of the updates, alternating with the batches), the batch's parts
    (``kernel_update_compile_seconds``, ``_send_seconds``, ``_cpu_seconds``, ``_messages``),
    ``kernel_update_fallbacks`` (updates the product sent through ``nft -f`` instead), and
    ``kernel_updates_verified`` (updates found in the kernel's table afterwards). Reports older than
    ``kernel_update_path`` hold ``nft -f`` times in ``kernel_update_seconds`` (see report.py)."""
    row: dict[str, Any] = {"kernel_tool": tool, "kernel_full_seconds": k["full_seconds"],
                           "kernel_update_path": k["update_path"],
                           "kernel_update_seconds": median(k["update_seconds"]),
                           "kernel_update_runs": k["update_seconds"]}
    batches = k.get("netlink")
    if batches:
        for key in ("compile_seconds", "send_seconds", "cpu_seconds", "messages"):
            # (a batch the product did not send, having fallen back to nft -f, has no send part)
            values = [b[key] for b in batches if b.get(key) is not None]
            row[f"kernel_update_{key}"] = median(values) if values else None
        row["kernel_update_fallbacks"] = sum(1 for b in batches if b["path"] != "netlink")
    if "nft_update_seconds" in k:
        row["kernel_update_nft_seconds"] = median(k["nft_update_seconds"])
        row["kernel_update_nft_runs"] = k["nft_update_seconds"]
    if "verified" in k:
        row["kernel_updates_verified"] = k["verified"]
    if "floor" in k:
        row["kernel_floor"] = k["floor"]
    return row


def value(row: Optional[dict], *path: str) -> Optional[float]:
    """``row[path[0]][path[1]]...`` or None when a part is missing (not measured, timed out)."""
    for key in path:
        if not isinstance(row, dict) or row.get(key) is None:
            return None
        row = row[key]
    return row  # type: ignore[return-value]
