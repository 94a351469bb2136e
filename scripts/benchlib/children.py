"""The benchmark's child measurements, each in a fresh interpreter (``scripts/bench --child MODE``),
so that no cache (parsed IPs, rendered fragments) carries over between runs; those touching the
kernel run inside a fresh network namespace (see procs.isolated)."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

from .generate import (
    COMPILE_NODE, RATE_NAME, RATE_NAMESPACE, RATE_PORT, RATE_RUNS, RATE_TARGET_PORT, RATE_VIP,
    child_generate, rate_cluster,
)
from .procs import BACKENDS, load_argv, median, run_measured, update_tool

# Each measurement of the library runs in a fresh interpreter, so that no cache
# (parsed IPs, rendered fragments) carries over between runs.


def child_inproc(path: str, backend: str, node: str) -> dict:
    t0 = time.perf_counter()
    from dataplane.backends import iptables as ipt
    from dataplane.backends import nftables as nft
    from dataplane.controllers.endpointslices import with_derived_slices
    from dataplane.input.cluster import parse_cluster
    from dataplane.input.loader import load_documents
    from dataplane.plan import build_plan

    t1 = time.perf_counter()
    docs = load_documents([path])
    t2 = time.perf_counter()
    cluster = parse_cluster(docs).cluster
    del docs  # as the CLI does
    t3 = time.perf_counter()
    cluster = with_derived_slices(cluster)
    t4 = time.perf_counter()
    plan = build_plan(cluster, node, mode=backend)
    t5 = time.perf_counter()
    text = (ipt if backend == "iptables" else nft).render(plan)
    t6 = time.perf_counter()
    return {
        "import": t1 - t0, "load": t2 - t1, "parse": t3 - t2, "derive": t4 - t3, "plan": t5 - t4,
        "render": t6 - t5, "lib_total": t6 - t1, "lib_compile": t6 - t3, "bytes": len(text),
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child_kernel_load(path: str, tool: str, timeout: float) -> dict:
    """(In a fresh namespace.) Load a rules file with the kernel's own tool, timed."""
    argv = load_argv(tool, path)
    try:
        r = run_measured(argv, timeout=timeout)
    except TimeoutError:
        return {"seconds": None, "timeout": timeout}
    if r["rc"] != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {r['rc']}): {r['stderr'].strip()[:2000]}")
    return {"seconds": r["seconds"], "tool_maxrss_mib": r["maxrss_mib"]}


def child_incremental(path: str, backend: str, node: str, updates: int, outdir: str) -> dict:
    """Full sync, then ``updates`` single-endpoint changes, each set + synced; texts written to ``outdir``."""
    from dataplane.controllers.endpointslices import with_derived_slices
    from dataplane.input.cluster import parse_cluster
    from dataplane.input.loader import load_documents
    from dataplane.runtime.proxier import Proxier

    cluster = with_derived_slices(parse_cluster(load_documents([path])).cluster)
    plain = {s.key for s in cluster.services if s.type == "ClusterIP" and s.internal_traffic_policy == "Cluster"}
    candidates = [es for es in cluster.endpoint_slices
                  if (es.namespace, es.service_name) in plain and es.endpoints
                  and es.endpoints[0].conditions.ready]
    step = max(1, len(candidates) // max(1, updates))
    chosen = candidates[::step][:updates]
    proxier = Proxier(node, mode=backend, cluster=cluster)
    t = time.perf_counter()
    full = proxier.sync()
    full_seconds = time.perf_counter() - t
    out = Path(outdir)
    (out / "full").write_text(full.text)
    results = []
    addresses = []
    for k, es in enumerate(chosen):
        first = es.endpoints[0]
        address = f"10.127.{k // 250}.{k % 250 + 1}"
        moved = dataclasses.replace(first, addresses=(address,))  # the pod was replaced
        changed = dataclasses.replace(es, endpoints=(moved, *es.endpoints[1:]))
        t = time.perf_counter()
        proxier.set_endpoint_slice(changed)
        r = proxier.sync()
        seconds = time.perf_counter() - t
        (out / f"update-{k}").write_text(r.text)
        addresses.append(address)
        results.append({"seconds": seconds, "bytes": len(r.text.encode()), "kind": r.kind, "changed": r.changed})
    (out / "moved").write_text(json.dumps(addresses))  # what the kernel must hold once every update is in
    return {"full_sync_seconds": full_seconds, "full_bytes": len(full.text.encode()), "updates": results}


def _load_file(tool: str, path: Path) -> float:
    """Load ``path`` with ``tool`` (``nft -f`` / ``<iptables-restore> --noflush``) in this namespace: the
    tool's wall time in seconds; raises RuntimeError naming the tool when it fails."""
    argv = load_argv(tool, str(path))
    r = run_measured(argv)
    if r["rc"] != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {r['rc']}): {r['stderr'].strip()[:2000]}")
    return r["seconds"]


def child_apply_updates(tool: str, outdir: str, updates: int, caller: str) -> dict:
    """(In a fresh namespace.) Load the full ruleset, then apply each update in order, timed.

    With ``nft`` the updates alternate between the product's path (one netlink batch, see
    :func:`apply_nft_updates`) and ``nft -f``; with an iptables-restore variant each is that tool's
    ``--noflush`` load. ``update_path`` names what ``update_seconds`` measured. ``caller``: see
    :func:`name_this_namespace`."""
    out = Path(outdir)
    if tool == "nft":
        return apply_nft_updates(out, updates, caller)
    full = _load_file(tool, out / "full")
    return {"full_seconds": full, "update_path": tool,
            "update_seconds": [_load_file(tool, out / f"update-{k}") for k in range(updates)]}


BENCH_NETNS = "bench"  # the name the nft apply child gives its own (fresh) namespace


def outside() -> str:
    """Who the caller is (``NETNS-INODE:RUN-DEVICE``), for :func:`name_this_namespace` in a child
    started through ``procs.isolated``, which must be somewhere else."""
    return f"{os.stat('/proc/self/ns/net').st_ino}:{os.stat('/run').st_dev}"


def name_this_namespace(name: str, caller: str) -> None:
    """Give this process's network namespace a name (``ip netns attach``), so that the product's
    functions, which take a named namespace, apply into it. Refuses (RuntimeError) unless both
    the network namespace and /run differ from the caller's (``caller``, from :func:`outside`):
    only a child started through ``procs.isolated`` (a fresh namespace, a private tmpfs on /run)
    may do this."""
    if not re.fullmatch(r"\d+:\d+", caller):
        raise RuntimeError("apply-updates with nft needs --caller (the caller's outside())")
    netns_ino, run_dev = (int(x) for x in caller.split(":"))
    if os.stat("/proc/self/ns/net").st_ino == netns_ino or os.stat("/run").st_dev == run_dev:
        raise RuntimeError("refusing to name the caller's network namespace in its /run: run this child "
                           "through isolated()")
    proc = subprocess.run(["ip", "netns", "attach", name, str(os.getpid())], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip netns attach {name} failed: {proc.stderr.strip()}")


@contextlib.contextmanager
def timed_batch_parts(parts: dict) -> Iterator[None]:
    """For the body, ``nftnl.compile_update`` and ``nftnl.send`` (as ``netns.apply_nftables_partial``
    calls them) also record their wall time in ``parts`` (``compile_seconds``, ``send_seconds``)
    and the batch's message count (``messages``); restored after."""
    from dataplane.runtime import nftnl

    real_compile, real_send = nftnl.compile_update, nftnl.send

    def compile_update(text: str) -> "nftnl.Batch":
        t = time.perf_counter()
        try:
            return real_compile(text)
        finally:
            parts["compile_seconds"] = time.perf_counter() - t

    def send(batch: "nftnl.Batch", describe: str = "") -> None:
        parts["messages"] = len(batch.messages)
        t = time.perf_counter()
        try:
            real_send(batch, describe)
        finally:
            parts["send_seconds"] = time.perf_counter() - t

    nftnl.compile_update, nftnl.send = compile_update, send
    try:
        yield
    finally:
        nftnl.compile_update, nftnl.send = real_compile, real_send


def netlink_update(ns: str, text: str) -> dict:
    """Apply one partial update as the product does (``netns.apply_nftables_partial``: translate it
    into one netlink batch, then send it under the namespace's lock), timed: ``seconds`` (wall, all
    of it), ``cpu_seconds`` (this process's user + system time: the kernel commits inside our
    sendmsg), ``compile_seconds``, ``send_seconds``, ``messages`` and ``path`` (``netlink``, or
    ``nft`` when the product fell back to ``nft -f``)."""
    from dataplane.runtime import netns

    parts: dict = {}
    with timed_batch_parts(parts):
        t, c = time.perf_counter(), time.process_time()
        path = netns.apply_nftables_partial(ns, text)
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
    return {"seconds": seconds, "cpu_seconds": cpu, "path": path, **parts}


def apply_nft_updates(out: Path, updates: int, caller: str) -> dict:
    """(In a fresh namespace.) ``nft -f`` of the full table, then the updates in order, alternating:
    even ones with ``nft -f`` of the update text, odd ones as the product applies them (one netlink
    batch, :func:`netlink_update`), all in this one namespace, so that both loaders see the same
    table and the same machine load. Then the one-rule probes (:func:`nft_apply_floor`), and a check
    that every update is in the kernel (each moved endpoint address is in the table's listing)."""
    importlib.import_module("dataplane.runtime.nftnl")  # (imported before the first timed update)

    name_this_namespace(BENCH_NETNS, caller)
    full_text = (out / "full").read_text()
    full = _load_file("nft", out / "full")
    nft_seconds: list[float] = []
    netlink: list[dict] = []
    for k in range(updates):
        path = out / f"update-{k}"
        if k % 2 == 0:
            nft_seconds.append(_load_file("nft", path))
        else:
            netlink.append(netlink_update(BENCH_NETNS, path.read_text()))
    result = {"full_seconds": full, "update_path": "netlink", "update_seconds": [u["seconds"] for u in netlink],
              "netlink": netlink, "nft_update_seconds": nft_seconds}
    result["verified"] = verify_updates(out, full_text, updates)
    result["floor"] = nft_apply_floor(out, full_text)
    return result


def verify_updates(out: Path, full_text: str, updates: int) -> int:
    """How many of the first ``updates`` moved endpoint addresses (``out/moved``) the table in this
    namespace holds (``nft -j list table``, untimed); RuntimeError if any is missing."""
    family, table = re.search(r"^table (\w+) (\S+)", full_text, re.M).groups()
    proc = subprocess.run(["nft", "-j", "list", "table", family, table], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nft -j list table {family} {table} failed: {proc.stderr.strip()[:500]}")
    held: set[str] = set()  # every string in the listing (addresses among them)
    stack: list = [json.loads(proc.stdout)]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            held.add(item)
    missing = [a for a in json.loads((out / "moved").read_text())[:updates] if a not in held]
    if missing:
        raise RuntimeError(f"after the updates the kernel's table lacks the moved endpoints {missing[:5]}")
    return updates


def nft_apply_floor(out: Path, full_text: str, repeats: int = 3) -> dict:
    """(In the namespace holding the full table.) What any one-rule nft transaction costs at this size.

    ``plain`` adds a rule without a jump: nft's cache load (every chain of the table, as nft fetches
    them before any ``add rule``) plus a commit. ``jump`` adds a rule with a goto: the kernel then
    also validates every chain reachable from the base chains at commit. Each rule is deleted again
    with its chain; the medians bound what an update with these tools can cost.
    """
    family, table = re.search(r"^table (\w+) (\S+)", full_text, re.M).groups()
    # (no meta match: meta expressions have a validate hook, which would make the kernel validate)
    probes = {"plain": "th dport 9 counter", "jump": "th dport 9 goto mark-for-masquerade"}
    times: dict[str, list[float]] = {name: [] for name in probes}
    for k in range(repeats):
        for name, rule in probes.items():
            path = out / f"probe-{name}-{k}"
            chain = f"bench-probe-{name}-{k}"
            path.write_text(f"add chain {family} {table} {chain}\n")
            run_measured(load_argv("nft", str(path)))
            path.write_text(f"add rule {family} {table} {chain} {rule}\n")
            r = run_measured(load_argv("nft", str(path)))
            if r["rc"] != 0:
                raise RuntimeError(f"nft probe {name} failed: {r['stderr'].strip()[:500]}")
            times[name].append(r["seconds"])
            path.write_text(f"flush chain {family} {table} {chain}\ndelete chain {family} {table} {chain}\n")
            run_measured(load_argv("nft", str(path)))
    return {f"{name}_seconds": median(v) for name, v in times.items()}


_CLIENT = r"""
import json, socket, struct, sys, time
vip, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
LINGER0 = struct.pack("ii", 1, 0)
def once():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2.0)
    try:
        s.connect((vip, port))
        while s.recv(4096):
            pass
        # Answer the server's FIN with a reset: no TIME_WAIT on either side, so that
        # thousands of connections per second do not collide with earlier ones.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        return True
    except OSError:
        return False
    finally:
        s.close()
warm = time.perf_counter() + 0.2
while time.perf_counter() < warm:
    once()
ok = failed = 0
start = time.perf_counter()
end = start + seconds
while time.perf_counter() < end:
    if once():
        ok += 1
    else:
        failed += 1
elapsed = time.perf_counter() - start
print(json.dumps({"conns": ok, "failed": failed, "seconds": elapsed}))
"""


def child_rate(sizes: Sequence[int], endpoints: int, backends: Sequence[str], seconds: float) -> dict:
    """(In a fresh namespace.) New TCP connections/s through a ClusterIP, per backend and Service count."""
    from dataplane.runtime.apply import apply_compiled
    from dataplane.compiler import compile_rules
    from dataplane.input.cluster import parse_cluster
    from dataplane.input.loader import Document
    from dataplane.lab import Lab, Topology
    from dataplane.runtime.netns import netns_path, run_in, set_sysctls

    results = []
    for size in sizes:
        data = rate_cluster(size - 1, endpoints)  # + the probed Service
        docs = [Document("rate.json", i + 1, obj) for i, obj in enumerate(data["items"])]
        cluster = parse_cluster(docs).cluster
        for backend in backends:
            result = compile_rules(cluster, "node1", backend=backend)
            walked = None
            if backend == "iptables":
                nat = result.text[result.text.index("*nat"):]
                service_rules = [ln for ln in nat.splitlines() if ln.startswith("-A KUBE-SERVICES ")]
                position = next(i for i, ln in enumerate(service_rules) if f"{RATE_NAMESPACE}/{RATE_NAME}" in ln)
                walked = {"position": position + 1, "of": len(service_rules)}
            with Lab(Topology.simple(nodes=1, pods_per_node=1, clients=1)) as lab:
                lab.serve("pod1-1", tcp_ports=[RATE_TARGET_PORT])
                tool = update_tool(backend)
                if tool == "iptables-legacy-restore":
                    # The nf_tables iptables-restore needs over 10 minutes for 10k Services.
                    with tempfile.NamedTemporaryFile("w", suffix=".rules") as f:
                        f.write(result.text)
                        f.flush()
                        run_in(lab.ns("node1"), load_argv(tool, f.name))
                    set_sysctls(lab.ns("node1"), dict(result.plan.sysctls))
                else:
                    apply_compiled(lab.ns("node1"), result)
                probe = lab.tcp_probe("client1", RATE_VIP, RATE_PORT)
                if not probe.ok:
                    raise RuntimeError(f"{backend} {size}: probe to {RATE_VIP}:{RATE_PORT} failed: {probe.outcome}")
                argv = ["nsenter", f"--net={netns_path(lab.ns('client1'))}", "--", sys.executable, "-c", _CLIENT,
                        RATE_VIP, str(RATE_PORT), str(seconds)]
                runs = []
                for _ in range(RATE_RUNS):
                    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
                    if proc.returncode != 0:
                        raise RuntimeError(f"rate client failed: {proc.stderr.strip()}")
                    runs.append(json.loads(proc.stdout))
            rates = [r["conns"] / r["seconds"] for r in runs]
            results.append({"backend": backend, "tool": tool, "services": size, "conns": sum(r["conns"] for r in runs),
                            "failed": sum(r["failed"] for r in runs), "conns_per_s": median(rates),
                            "runs": [round(x) for x in rates], "kube_services_walk": walked})
    return {"rate": results}


def child_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="bench --child")
    p.add_argument("mode")
    p.add_argument("--file")
    p.add_argument("--backend")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--node", default=COMPILE_NODE)
    p.add_argument("--incremental-iptables-apply", action="store_true",
                   help="time applying the iptables updates even without iptables-legacy-restore (loading the full "
                        "ruleset with the nf_tables iptables-restore first takes over 10 minutes at 10k Services)")
    p.add_argument("--updates", type=int, default=5)
    p.add_argument("--outdir")
    p.add_argument("--sizes", default="10,1000,10000")
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--tool", default="nft")
    p.add_argument("--caller", default="", help="apply-updates: the caller's outside() (see name_this_namespace)")
    a = p.parse_args(argv)
    if a.mode == "inproc":
        out = child_inproc(a.file, a.backend, a.node)
    elif a.mode == "kernel-load":
        out = child_kernel_load(a.file, a.tool, a.timeout)
    elif a.mode == "incremental":
        out = child_incremental(a.file, a.backend, a.node, a.updates, a.outdir)
    elif a.mode == "apply-updates":
        out = child_apply_updates(a.tool, a.outdir, a.updates, a.caller)
    elif a.mode == "generate":
        out = child_generate(Path(a.outdir), int(a.sizes), a.endpoints)
    elif a.mode == "rate":
        out = child_rate([int(x) for x in a.sizes.split(",")], a.endpoints, a.backends.split(","), a.seconds)
    else:
        p.error(f"unknown child mode {a.mode}")
    print(json.dumps(out))
    return 0
