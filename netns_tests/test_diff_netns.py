"""``dataplane diff``, ``apply --dry-run`` and ``lab list`` against real namespaces (issue 14, item 5).

* diff: empty (exit 0) right after an apply, beside other programs' iptables chains and nft
  tables that never appear in it; after our rules are damaged or the input changes it shows
  exactly what an apply would change (exit 1); errors exit 2.
* --dry-run: prints the exact transaction the real apply then sends (captured where the real
  apply hands it to iptables-restore / nft), full and partial, and leaves the namespace, the
  record and the sysctls byte-identical.
* lab list: the labs that exist, with their namespaces and when they were made; --json.
"""
from __future__ import annotations

import calendar
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from dataplane.backends import get_backend
from dataplane.input.cluster import load_cluster
from dataplane.prepare import prepare_cluster
from dataplane.runtime import netns as rt_netns
from dataplane.runtime.apply import STATE_DIR, apply_cluster, dry_run_cluster
from dataplane.runtime.netns import run_in
from terminal import on_terminal

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = str(REPO / "examples" / "cluster.yaml")
DATAPLANE = [sys.executable, "-I", "-m", "dataplane"]
BACKENDS = ["iptables", "nftables"]

# Other programs' rules: kube-router's chains with a jump, and a native nft table
FOREIGN_IPTABLES = "\n".join([
    "*filter",
    ":KUBE-ROUTER-INPUT - [0:0]",
    '-A INPUT -m comment --comment "kube-router netpol" -j KUBE-ROUTER-INPUT',
    "-A KUBE-ROUTER-INPUT -s 10.244.2.0/24 -p tcp -m tcp --dport 8080 -j ACCEPT",
    "COMMIT",
    "*nat",
    ":KUBE-ROUTER-SNAT - [0:0]",
    "-A POSTROUTING -j KUBE-ROUTER-SNAT",
    "-A KUBE-ROUTER-SNAT -s 10.244.1.0/24 ! -d 10.244.0.0/16 -j MASQUERADE",
    "COMMIT",
]) + "\n"
FOREIGN_NFT = "table inet filter {\n  chain input {\n    type filter hook input priority 0; tcp dport 22 accept\n  }\n}\n"


def dataplane(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*DATAPLANE, *args], capture_output=True, text=True, timeout=300)


def target(seed: int, backend: str, ns: str) -> list[str]:
    return ["-f", EXAMPLE, "--allocate", "--seed", str(seed), "--node", "node-a", "--netns", ns, "--backend", backend]


def cluster(seed: int):
    return prepare_cluster(load_cluster([EXAMPLE]), allocate=True, seed=seed).cluster


def ruleset(ns: str) -> str:
    """Everything the namespace's netfilter holds, as the tools print it (counters included;
    without iptables-save's time-stamped comments)."""
    text = (run_in(ns, ["iptables-save", "-c"]).stdout + run_in(ns, ["ip6tables-save", "-c"]).stdout
            + run_in(ns, ["nft", "list", "ruleset"]).stdout)
    return "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith("# "))


def state_files(ns: str) -> dict[str, bytes]:
    """The namespace's records (apply record, ownership, sysctls), by file name."""
    directory = os.path.join(STATE_DIR, ns)
    if not os.path.isdir(directory):
        return {}
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def sysctls(ns: str) -> dict[str, str]:
    with rt_netns.in_netns(ns):
        return {key: open(f"/proc/sys/net/{key}").read() for key in
                ("ipv4/conf/all/route_localnet", "ipv4/ip_forward", "bridge/bridge-nf-call-iptables")
                if os.path.exists(f"/proc/sys/net/{key}")}


@pytest.fixture
def guarded_ns(bare_ns):
    """A bare namespace holding other programs' iptables chains and nft table."""
    run_in(bare_ns, ["iptables-restore", "-w", "--noflush"], input=FOREIGN_IPTABLES)
    run_in(bare_ns, ["nft", "-f", "-"], input=FOREIGN_NFT)
    yield bare_ns
    dataplane("cleanup", "--netns", bare_ns)


def changed_lines(diff: str) -> list[str]:
    return [ln for ln in diff.splitlines()[2:] if ln[:1] in "+-"]


# --------------------------------------------------------------------------- diff


@pytest.mark.parametrize("backend", BACKENDS)
def test_diff_is_empty_after_apply_and_shows_what_was_damaged(guarded_ns, backend):
    ns = guarded_ns
    run = dataplane("apply", *target(1, backend, ns))
    assert run.returncode == 0, run.stderr
    run = dataplane("diff", *target(1, backend, ns))
    assert (run.returncode, run.stdout) == (0, ""), run.stdout + run.stderr

    # other programs change their own rules: still nothing to see
    run_in(ns, ["iptables", "-w", "-A", "KUBE-ROUTER-INPUT", "-p", "udp", "-j", "ACCEPT"])
    run_in(ns, ["nft", "add", "rule", "inet", "filter", "input", "udp", "dport", "53", "accept"])
    assert dataplane("diff", *target(1, backend, ns)).returncode == 0

    if backend == "iptables":  # someone empties our chain
        run_in(ns, ["iptables", "-w", "-t", "nat", "-F", "KUBE-SERVICES"])
    else:
        run_in(ns, ["nft", "flush", "map", "ip", "kube-proxy", "service-ips"])
    run = dataplane("diff", *target(1, backend, ns))
    assert run.returncode == 1, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"--- netns {ns}" and lines[1] == f"+++ compiled (node node-a, {backend}, ipv4)"
    changed = changed_lines(run.stdout)
    assert changed and all(ln.startswith("+") for ln in changed), run.stdout  # only missing rules
    if backend == "iptables":
        compiled = dataplane("compile", *target(1, backend, ns)[:-4], "--backend", backend).stdout.splitlines()
        assert all(ln[1:].startswith("-A KUBE-SERVICES ") and ln[1:] in compiled for ln in changed), changed
    else:
        assert any("10.98.39.92 . udp . 53 : goto service-" in ln for ln in changed), changed
    assert "KUBE-ROUTER" not in run.stdout and "inet filter" not in run.stdout and "dport 22" not in run.stdout

    assert dataplane("apply", *target(1, backend, ns)).returncode == 0  # the drift is repaired
    assert dataplane("diff", *target(1, backend, ns)).returncode == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_diff_shows_other_input_as_removed_and_added_lines(guarded_ns, backend):
    ns = guarded_ns
    assert dataplane("apply", *target(1, backend, ns)).returncode == 0
    before = ruleset(ns)
    run = dataplane("diff", *target(2, backend, ns))  # other ClusterIPs and NodePorts
    assert run.returncode == 1, run.stderr
    old_ip, new_ip = (next(s.cluster_ips[0] for s in cluster(seed).services if s.name == "kube-dns") for seed in (1, 2))
    assert old_ip != new_ip
    changed = changed_lines(run.stdout)
    assert any(ln.startswith("-") and old_ip in ln for ln in changed)
    assert any(ln.startswith("+") and new_ip in ln for ln in changed)
    assert not any(old_ip in ln for ln in changed if ln.startswith("+"))
    assert ruleset(ns) == before  # diff changes nothing


def test_diff_errors_exit_2(bare_ns, tmp_path):
    run = dataplane("diff", *target(1, "iptables", "no-such-namespace"))
    assert run.returncode == 2 and run.stdout == ""
    assert [ln for ln in run.stderr.splitlines() if not ln.startswith("warning:")] == \
        ["error: network namespace no-such-namespace does not exist"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 70000}]}\n")
    run = dataplane("diff", "-f", str(bad), "--node", "node-a", "--netns", bare_ns)
    assert run.returncode == 2 and run.stdout == "" and "Traceback" not in run.stderr
    assert run.stderr.startswith(f"error: {bad}: document 1: Service default/a: spec.ports[0].port: ")


# --------------------------------------------------------------------------- apply --dry-run


@pytest.fixture
def sent(monkeypatch):
    """The transactions applies in this process send: the input iptables-restore gets (where the
    load path writes it, rewritten for the tables as they are, into an anonymous file for the
    tool), and the nft script the nftables backend loads as one transaction (by ``nft -f`` or
    translated into one netlink batch)."""
    texts: list[str] = []
    real_memfd = rt_netns.memfd_text

    def capture(text, name="dataplane-input"):
        if name == "dataplane-restore":
            texts.append(text)
        return real_memfd(text, name)

    nft = get_backend("nftables")
    real_load = nft.load

    def load(ns, text, **kw):
        texts.append(text)
        return real_load(ns, text, **kw)

    monkeypatch.setattr(rt_netns, "memfd_text", capture)
    monkeypatch.setattr(nft, "load", load)
    return texts


@pytest.mark.parametrize("backend", BACKENDS)
def test_dry_run_prints_what_apply_then_sends_and_changes_nothing(guarded_ns, backend, sent):
    ns = guarded_ns
    for seed, kind in ((1, "full"), (2, "partial")):  # nothing applied yet, then a record exists
        before = (ruleset(ns), state_files(ns), sysctls(ns))
        run = dataplane("apply", "--dry-run", *target(seed, backend, ns))
        assert run.returncode == 0, run.stderr
        assert f"dry run, nothing sent: {backend} rules for node node-a (ipv4) to netns {ns}: {kind} sync" in \
            run.stderr, run.stderr
        assert (ruleset(ns), state_files(ns), sysctls(ns)) == before  # byte-identical

        dry = dry_run_cluster(ns, cluster(seed), "node-a", backend=backend)
        assert dry.sync.kind == kind and dry.transaction == run.stdout != ""
        sent.clear()
        real = apply_cluster(ns, cluster(seed), "node-a", backend=backend)
        assert real.kind == kind
        assert sent == [run.stdout]  # exactly the transaction the dry run printed

    run = dataplane("apply", "--dry-run", *target(2, backend, ns))  # up to date: nothing to send
    assert run.returncode == 0 and run.stdout == "" and ": none sync, nothing changed" in run.stderr


def test_dry_run_with_quiet_prints_only_the_transaction(bare_ns):
    run = dataplane("--quiet", "apply", "--dry-run", *target(1, "nftables", bare_ns))
    assert run.returncode == 0 and run.stderr == ""
    assert run.stdout.startswith("table ip kube-proxy\ndelete table ip kube-proxy\n")
    assert run_in(bare_ns, ["nft", "list", "ruleset"]).stdout == ""


# --------------------------------------------------------------------------- lab list and lab up's progress


def test_lab_list_shows_labs_with_their_namespaces_and_lab_up_shows_progress():
    name = "l" + uuid.uuid4().hex[:7]
    made = time.time()
    code, got = on_terminal(["lab", "up", "-f", EXAMPLE, "--allocate", "--seed", "1", "--name", name])
    try:
        assert code == 0, got
        # past the first second, each phase as it comes: "creating namespaces N/M", then the rules, the servers
        statuses = [s.split(b" (")[0] for s in got.split(b"\r\x1b[K")[1:] if s]
        prefix = f"dataplane lab up {name}: ".encode()
        assert statuses and got.endswith(b"\r\x1b[K"), got
        assert all(s.startswith(prefix + b"creating namespaces ") or s in (
            prefix + b"loading the rules of 2 node(s), ipv4",
            prefix + b"starting the reply servers of 3 pod(s) and node(s)") for s in statuses), statuses
        assert statuses[-1] == prefix + b"starting the reply servers of 3 pod(s) and node(s)", statuses
        run = dataplane("lab", "list")
        assert run.returncode == 0, run.stderr
        header, *rows = run.stdout.splitlines()
        assert header.split() == ["LAB", "STATUS", "BACKEND", "FAMILIES", "CREATED", "NAMESPACES"]
        [row] = [r for r in rows if r.split()[0] == name]
        lab, status, backend, families, created, namespaces = row.split()
        assert (status, backend, families) == ("up", "iptables", "ipv4")
        stamp = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
        assert made - 2 <= stamp <= time.time() + 1
        listed = namespaces.split(",")
        assert set(listed) == {ns for ns in os.listdir("/run/netns") if ns.startswith(name + "-")}
        assert len(listed) >= 6  # two nodes, pods, probe pods, two clients

        entries = json.loads(dataplane("lab", "list", "--json").stdout)
        [entry] = [e for e in entries if e["name"] == name]
        assert entry["namespaces"] == listed and entry["status"] == "up" and entry["created"] == created
    finally:
        down = dataplane("lab", "down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert name not in dataplane("lab", "list").stdout
    assert all(e["name"] != name for e in json.loads(dataplane("lab", "list", "--json").stdout))
