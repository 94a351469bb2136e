"""Rule injection (issue 12) against a real kernel: other programs' rules survive hostile input.

A namespace holds a foreign nft ``table inet filter`` with a rule and foreign iptables and
ip6tables INPUT rules. The issue's two reproductions (an nft one in
``detectLocal.interfaceNamePrefix``, an iptables one in ``detectLocal.bridgeInterface``) made
``dataplane apply`` flush them and exit 0; now the CLI refuses them with one line per
problem and the namespace keeps everything. Then hostile strings in every field we read
(tests/test_injection.py's property, a sample of it) are compiled and whatever compiles is
loaded with ``nft -f`` / ``iptables-restore --noflush``: the foreign objects survive, and the
only tables added are ``ip|ip6 kube-proxy`` and the iptables ``filter``/``nat`` tables.

(Named test_rule_injection.py: tests/test_injection.py holds the pure tests, and pytest
cannot collect two test modules of one basename in one run.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import injection_cases as ic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.compiler import compile_rules
from dataplane.controllers.endpointslices import with_derived_slices
from dataplane.errors import InputError, UsageError
from dataplane.input.cluster import parse_cluster

pytestmark = pytest.mark.netns

FOREIGN_NFT = """table inet filter {
	chain input {
		type filter hook input priority filter; policy accept;
		ip saddr 198.51.100.7 counter drop comment "foreign"
	}
}
"""
FOREIGN_IPTABLES = ("iptables", "-w", "-A", "INPUT", "-s", "198.51.100.8/32", "-m", "comment", "--comment",
                    "foreign", "-j", "DROP")
FOREIGN_IP6TABLES = ("ip6tables", "-w", "-A", "INPUT", "-s", "2001:db8:bad::8/128", "-m", "comment", "--comment",
                     "foreign", "-j", "DROP")
# tables a compile may add next to the foreign ones: ours, and those of iptables-nft
OWN_TABLES = {("ip", "kube-proxy"), ("ip6", "kube-proxy"), ("ip", "filter"), ("ip", "nat"), ("ip6", "filter"),
              ("ip6", "nat")}


def _run(ns: str, *argv: str, input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "--", *argv], input=input, capture_output=True,
                          text=True, env={**os.environ, "LC_ALL": "C"})
    assert proc.returncode == 0, f"{argv[0]} exit {proc.returncode}: {proc.stderr}"
    return proc


@pytest.fixture
def guarded_ns(bare_ns: str) -> str:
    """``bare_ns`` holding the foreign nft table and iptables/ip6tables INPUT rules."""
    _run(bare_ns, "nft", "-f", "-", input=FOREIGN_NFT)
    _run(bare_ns, *FOREIGN_IPTABLES)
    _run(bare_ns, *FOREIGN_IP6TABLES)
    _assert_foreign_intact(bare_ns)
    return bare_ns


def _foreign_nft_rules(ns: str) -> list[dict]:
    listing = json.loads(_run(ns, "nft", "-j", "list", "table", "inet", "filter").stdout)["nftables"]
    return [item["rule"] for item in listing if "rule" in item]


def _assert_foreign_intact(ns: str) -> None:
    rules = _foreign_nft_rules(ns)
    assert len(rules) == 1 and rules[0]["chain"] == "input" and rules[0].get("comment") == "foreign", rules
    for save, source in (("iptables-save", "198.51.100.8/32"), ("ip6tables-save", "2001:db8:bad::8/128")):
        text = _run(ns, save, "-t", "filter").stdout
        assert f'-A INPUT -s {source} -m comment --comment foreign -j DROP' in text.splitlines(), text
    tables = json.loads(_run(ns, "nft", "-j", "list", "tables").stdout)["nftables"]
    held = {(t["table"]["family"], t["table"]["name"]) for t in tables if "table" in t}
    assert held - OWN_TABLES == {("inet", "filter")}, held


def _dataplane(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-m", "dataplane", *argv], capture_output=True, text=True, timeout=120)


def _write(tmp_path: Path, docs: dict[str, dict]) -> Path:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs.values())}))
    return path


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
@pytest.mark.parametrize("field,value,mode", [
    ("interfaceNamePrefix", ic.NFT_REPRO, "InterfaceNamePrefix"),
    ("bridgeInterface", ic.IPTABLES_REPRO, "BridgeInterface"),
])
def test_apply_refuses_the_reproductions_and_foreign_rules_survive(guarded_ns, tmp_path, backend, field, value,
                                                                     mode):
    # the same small cluster with a sound interface name applies: the refusal is about the name
    good = _write(tmp_path, ic.minimal_documents(mode))
    run = _dataplane("apply", "-f", str(good), "--node", ic.NODE, "--netns", guarded_ns, "--backend", backend)
    assert run.returncode == 0, run.stderr
    _assert_foreign_intact(guarded_ns)

    bad = _write(tmp_path, ic.with_value(ic.minimal_documents(mode), ("config", ("detectLocal", field)), value))
    before = _run(guarded_ns, "nft", "list", "ruleset").stdout
    run = _dataplane("apply", "-f", str(bad), "--node", ic.NODE, "--netns", guarded_ns, "--backend", backend)
    assert run.returncode == 1 and run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 3 and "Traceback" not in run.stderr, run.stderr
    for line in lines:
        assert line.startswith(f"error: {bad}: item 1 of the List in document 1: KubeProxyConfiguration proxy: "
                               f"detectLocal.{field}: Invalid value: "), line
    assert _run(guarded_ns, "nft", "list", "ruleset").stdout == before  # nothing was applied
    _assert_foreign_intact(guarded_ns)


def _load(ns: str, backend: str, family: str, text: str) -> None:
    if backend == "nftables":
        _run(ns, "nft", "-f", "-", input=text)
    else:
        _run(ns, "ip6tables-restore" if family == "ipv6" else "iptables-restore", "-w", "--noflush", input=text)


@settings(max_examples=40, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(field=st.sampled_from(ic.FIELDS), value=ic.hostile_strings(), mode=st.sampled_from(ic.DETECT_MODES))
def test_hostile_strings_that_compile_load_without_touching_foreign_rules(guarded_ns, field, value, mode):
    docs = ic.with_value(ic.base_documents(mode), field, value)
    try:
        cluster = with_derived_slices(parse_cluster(ic.documents(docs)).cluster)
    except InputError:
        return  # refused: tests/test_injection.py checks the problems
    for backend in ("nftables", "iptables"):
        for family in ("ipv4", "ipv6"):
            try:
                compiled = compile_rules(cluster, ic.NODE, backend=backend, family=family)
            except UsageError:
                continue
            _load(guarded_ns, backend, family, compiled.text)
            _assert_foreign_intact(guarded_ns)
