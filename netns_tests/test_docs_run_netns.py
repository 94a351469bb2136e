"""The documentation's examples that need root and namespaces run as written (issue 14, item 4):
every README block and every ``--help`` example section with an ``apply``, ``cleanup``, ``lab``,
``verify`` or ``ip netns`` line, run whole and in order (see docs_examples.py and
tests/test_docs_run.py for the rest). Run inside ``scripts/netns-pytest``: the examples create
namespaces such as ``demo`` and labs, which must not reach the host.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from docs_examples import DATAPLANE, ROOT, Block, epilog_block, help_commands, readme_blocks, run_block

pytestmark = pytest.mark.netns

BLOCKS = [b for b in readme_blocks() if b.needs_root]
COMMANDS = [c for c in help_commands() if epilog_block(c).needs_root]


def _namespaces() -> set[str]:
    names = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    return names


@pytest.fixture(autouse=True)
def isolated_and_tidy():
    """Only inside scripts/netns-pytest; whatever namespaces an example leaves are removed."""
    if os.environ.get("DATAPLANE_NETNS_ISOLATED") != "1":
        pytest.fail("run the documentation's namespace examples only inside scripts/netns-pytest")
    before = _namespaces()
    yield
    for ns in sorted(_namespaces() - before):
        subprocess.run(DATAPLANE + ["cleanup", "--netns", ns], capture_output=True, timeout=120)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=60)


def _run(block: Block, tmp: Path) -> None:
    ran = run_block(block, tmp, with_root=True)
    assert ran == len(block.steps) + len(block.python)


def test_there_are_namespace_examples():
    names = {b.name.split(":")[0] for b in BLOCKS}
    assert len(BLOCKS) >= 3, names                            # apply, lab up, verify
    assert {" ".join(c) for c in COMMANDS} >= {"apply", "cleanup", "lab up", "verify", "trace"}


@pytest.mark.parametrize("block", BLOCKS, ids=[b.name[:70] for b in BLOCKS])
def test_readme_namespace_examples_run(block: Block, tmp_path):
    _run(block, tmp_path)


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_help_namespace_examples_run(command, tmp_path):
    _run(epilog_block(command), tmp_path)


def test_iptables_output_is_in_the_form_iptables_save_prints(bare_ns, tmp_path):
    """README, `dataplane compile`: the rules of our chains are `-A` lines as `iptables-save`
    prints them, the jumps from the built-in chains `-I` lines that it prints as `-A` lines."""
    example = str(ROOT / "examples" / "cluster.yaml")
    args = ["--allocate", "--seed", "1", "-f", example, "--node", "node-a"]
    compiled = subprocess.run(DATAPLANE + ["compile", *args], capture_output=True, text=True, check=True).stdout
    subprocess.run(DATAPLANE + ["apply", *args, "--netns", bare_ns], capture_output=True, text=True, check=True)
    saved = subprocess.run(["ip", "netns", "exec", bare_ns, "iptables-save"], capture_output=True, text=True,
                           check=True).stdout
    ours = sorted(ln for ln in compiled.splitlines() if ln.startswith("-A "))
    assert len(ours) >= 40 and all(ln.startswith("-A KUBE-") for ln in ours)
    assert ours == sorted(ln for ln in saved.splitlines() if ln.startswith("-A KUBE-"))
    builtin = ("INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING")
    jumps = sorted("-A" + ln[2:] for ln in compiled.splitlines() if ln.startswith("-I "))
    assert jumps and all(ln.split()[1] in builtin for ln in jumps)
    assert jumps == sorted(ln for ln in saved.splitlines() if ln.startswith("-A ") and ln.split()[1] in builtin)
