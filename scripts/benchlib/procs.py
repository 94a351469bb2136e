"""Processes for the benchmark: measured runs (wall time, peak memory), isolated namespaces,
child invocations of ``scripts/bench --child``, the kernel tools, and output metrics."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parent.parent.parent
BENCH = REPO / "scripts" / "bench"  # the entry point; children run it with --child
BACKENDS = ("iptables", "nftables")


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)



def run_measured(argv: Sequence[str], *, stdout=subprocess.DEVNULL, timeout: float = 3600) -> dict:
    """Run ``argv``; wall time, CPU time (user + system, with the workers it waited for), exit
    status, peak RSS (MiB) and stderr.

    The peak is wait4's ru_maxrss. Linux carries the high-water mark of the
    process that forked over exec, so it is never below this script's own
    peak; the program's own VmHWM, polled while it runs, is kept as well
    (``hwm_mib``) and the smaller of the two reported. A program that forks
    workers (``dataplane compile`` on a large cluster) uses memory in each:
    the largest sum of VmRSS over the program and its descendants seen while
    polling (``tree_mib``, an upper bound: pages they share count in each) is
    reported when it is larger.
    """
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=stdout, stderr=err)
        hwm = [0.0, 0.0]
        try:
            _, status, usage = _wait4(proc.pid, timeout, hwm)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    maxrss = usage.ru_maxrss / 1024
    peak = min(maxrss, hwm[0]) if hwm[0] else maxrss
    return {"seconds": wall, "rc": proc.returncode, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "maxrss_mib": max(peak, hwm[1]), "ru_maxrss_mib": maxrss,
            "hwm_mib": hwm[0], "tree_mib": hwm[1], "stderr": stderr}


def _status_kib(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` field in KiB (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for c in f.read().split():
                    out += [int(c), *_descendants(int(c))]
    except OSError:
        pass
    return out


def _wait4(pid: int, timeout: float, hwm: list[float]):
    """wait4 for ``pid``, polling its VmHWM into hwm[0] and its process tree's VmRSS sum into hwm[1] (MiB)."""
    deadline = time.monotonic() + timeout
    while True:
        hwm[0] = max(hwm[0], _status_kib(pid, "VmHWM:") / 1024)
        kids = _descendants(pid)
        if kids:
            hwm[1] = max(hwm[1], sum(_status_kib(p, "VmRSS:") for p in [pid, *kids]) / 1024)
        wpid, status, usage = os.wait4(pid, os.WNOHANG)
        if wpid == pid:
            return wpid, status, usage
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} still running after {timeout:.0f} s")
        time.sleep(0.005)


def isolated(argv: Sequence[str]) -> list[str]:
    """``argv`` in a fresh network + mount namespace with a private /run and lo up."""
    script = "mount -t tmpfs -o mode=0755 tmpfs /run && ip link set lo up && exec \"$@\""
    return ["unshare", "--net", "--mount", "--propagation", "private", "--", "sh", "-ec", script, "bench", *argv]


def child(mode: str, *args: str) -> list[str]:
    """The command line of one child measurement (a fresh interpreter running ``scripts/bench --child``)."""
    return [sys.executable, str(BENCH), "--child", mode, *args]


def run_child(argv: Sequence[str], what: str) -> dict:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr.strip()[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def can_use_kernel() -> Optional[str]:
    """Why the namespace measurements cannot run here (None if they can)."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("unshare", "ip", "nft", "iptables-restore", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return None



# =============================================================================== kernel tools


def load_argv(tool: str, path: str) -> list[str]:
    """The command that loads a rules file: ``nft -f`` or ``<iptables-restore variant> --noflush``."""
    return ["nft", "-f", path] if tool == "nft" else [tool, "--noflush", path]


def iptables_tools() -> list[str]:
    """The system's iptables-restore (whatever backend it uses), and the legacy one if it is a different tool."""
    tools = ["iptables-restore"]
    if shutil.which("iptables-legacy-restore"):
        tools.append("iptables-legacy-restore")
    return tools


def iptables_variant() -> str:
    """``nf_tables`` or ``legacy``: what the system's iptables-restore drives."""
    try:
        out = subprocess.run(["iptables-restore", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return "?"
    return "legacy" if "legacy" in out else "nf_tables" if "nf_tables" in out else out.strip() or "?"


def update_tool(backend: str) -> str:
    """The tool that applies updates in the incremental and rate tests: nft, else the legacy iptables-restore
    (the nf_tables one needs minutes to load 10k Services; see the kernel load times)."""
    if backend == "nftables":
        return "nft"
    return iptables_tools()[-1]



# =============================================================================== output metrics


def iptables_rule_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith("-A "))


def nft_counts(text: str) -> tuple[int, int]:
    """(rules, set/map elements) of an nft script of ``table { chain {...} set/map {...} }`` blocks."""
    rules = elements = 0
    block: Optional[str] = None
    pending: Optional[list[str]] = None
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if pending is not None:
            pending.append(s)
            if s.endswith("}"):
                elements += _element_count(pending)
                pending = None
            continue
        if s.startswith("chain "):
            block = "chain"
        elif s.startswith(("set ", "map ")):
            block = "set"
        elif s == "}":
            block = None
        elif block == "set" and s.startswith("elements = {"):
            pending = [s[len("elements = {"):]]
            if s.endswith("}"):
                elements += _element_count(pending)
                pending = None
        elif block == "chain" and not s.startswith(("type ", "comment ", "policy ")):
            rules += 1
    return rules, elements


def _element_count(parts: list[str]) -> int:
    body = " ".join(parts).rstrip().rstrip("}")
    return sum(1 for item in body.split(",") if item.strip())


def rule_count(backend: str, text: str) -> dict:
    if backend == "iptables":
        return {"rules": iptables_rule_count(text)}
    rules, elements = nft_counts(text)
    return {"rules": rules + elements, "nft_rules": rules, "nft_elements": elements}


