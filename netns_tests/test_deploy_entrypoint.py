"""deploy/entrypoint.sh names its own network namespace for ``--netns`` and runs ``dataplane``.

Run in a mount namespace of its own with a fresh /run (as a container has), so the name it
creates vanishes with it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

ENTRYPOINT = Path(__file__).resolve().parent.parent / "deploy" / "entrypoint.sh"


def test_entrypoint_names_the_namespace_and_runs_dataplane() -> None:
    bindir = str(Path(sys.executable).parent)  # where the `dataplane` console script is installed
    assert os.path.exists(os.path.join(bindir, "dataplane")), "the dataplane command must be installed"
    script = f"""
        mount -t tmpfs tmpfs /run
        sh {ENTRYPOINT} --version
        stat -L -c 'named %i' /run/netns/node
        stat -L -c 'own %i' /proc/self/ns/net
        sh {ENTRYPOINT} --version   # a second start finds the name and keeps it
        DATAPLANE_NETNS_NAME=other sh {ENTRYPOINT} --version >/dev/null
        ls /run/netns
    """
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-euc", script],
                          env={**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[0].startswith("dataplane ")
    named = next(line.split()[1] for line in lines if line.startswith("named "))
    own = next(line.split()[1] for line in lines if line.startswith("own "))
    assert named == own, "the name must refer to the container's (the node's) namespace"
    assert lines[-3:-1] == ["node", "other"]
