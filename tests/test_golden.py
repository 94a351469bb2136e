"""Golden files: each case in tests/cases/ compiled for every backend (and family) it names.

A case is a manifest file whose first comment lines carry its settings
(``# node: NAME``, optionally ``# families: ipv4 ipv6``). Its expected outputs
live in ``tests/golden/<case>/<backend>-<family>.txt``. ``UPDATE_GOLDEN=1``
rewrites them. Every golden file must also load into a real kernel: that is
checked in a throwaway network namespace (``unshare --net``), so the host's own
network is never touched.
"""
from __future__ import annotations

import difflib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dataplane.compiler import compile_rules
from dataplane.input.cluster import load_cluster

HERE = Path(__file__).parent
CASES = HERE / "cases"
GOLDEN = HERE / "golden"
BACKENDS = ("iptables", "nftables")


def _settings(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].partition(":")
        if sep and key.strip() in ("node", "families"):
            out[key.strip()] = value.strip()
    return out


def _targets():
    for case in sorted(CASES.glob("*.yaml")):
        settings = _settings(case)
        for family in settings.get("families", "ipv4").split():
            for backend in BACKENDS:
                yield pytest.param(case, settings["node"], backend, family,
                                   id=f"{case.stem}-{backend}-{family}")


def _golden(case: Path, backend: str, family: str) -> Path:
    return GOLDEN / case.stem / f"{backend}-{family}.txt"


def _compile(case: Path, node: str, backend: str, family: str) -> str:
    cluster = load_cluster([str(case)]).cluster
    return compile_rules(cluster, node, backend=backend, family=family).text


@pytest.mark.parametrize("case,node,backend,family", list(_targets()))
def test_golden(case: Path, node: str, backend: str, family: str) -> None:
    text = _compile(case, node, backend, family)
    golden = _golden(case, backend, family)
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}; run with UPDATE_GOLDEN=1"
    expected = golden.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            str(golden), "compiled"))
        pytest.fail(f"compiled rules differ from {golden}:\n{diff}")
    assert _compile(case, node, backend, family) == text, "compilation is not deterministic"


def _load_in_throwaway_netns(argv: list[str], text: str) -> subprocess.CompletedProcess:
    unshare = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--net"]
    return subprocess.run(unshare + argv, input=text, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("case,node,backend,family", list(_targets()))
def test_golden_loads_into_a_kernel(case: Path, node: str, backend: str, family: str) -> None:
    golden = _golden(case, backend, family)
    if backend == "iptables":
        tool = "ip6tables-restore" if family == "ipv6" else "iptables-restore"
        argv = [tool, "--noflush"]
    else:
        tool = "nft"
        argv = ["nft", "-f", "-"]
    assert shutil.which("unshare") and shutil.which(tool), f"{tool} and unshare must be installed (scripts/setup)"
    result = _load_in_throwaway_netns(argv, golden.read_text())
    assert result.returncode == 0, f"{tool} rejected {golden}:\n{result.stderr}"
