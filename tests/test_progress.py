"""Progress of long commands (issue 14, item 5): a status line on stderr only when it is a
terminal, only after about a second, erased at the end; nothing with --quiet or without a terminal."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataplane.progress import Progress
from terminal import ERASE, on_terminal

REPO = Path(__file__).resolve().parent.parent
DATAPLANE = [sys.executable, "-I", "-m", "dataplane"]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_waits_for_the_delay_then_shows_every_update_and_erases_the_line():
    stream = _Tty()
    with Progress("dataplane x", enabled=True, delay=0.3, stream=stream) as shown:
        shown.update("reading")
        assert stream.getvalue() == ""  # quick so far: nothing
        deadline = time.monotonic() + 5
        while "reading" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stream.getvalue().startswith("\r\x1b[Kdataplane x: reading (")  # the timer showed it
        shown.update("planning")  # after the delay: at once
        assert "\r\x1b[Kdataplane x: planning (" in stream.getvalue()
    assert stream.getvalue().endswith("\r\x1b[K")  # erased on the way out


def test_a_quick_operation_shows_nothing():
    stream = _Tty()
    with Progress("dataplane x", enabled=True, delay=5, stream=stream) as shown:
        shown.update("reading")
        shown.update("planning")
    assert stream.getvalue() == ""


def test_disabled_progress_writes_nothing():
    stream = _Tty()
    with Progress("dataplane x", enabled=False, delay=0, stream=stream) as shown:
        shown.update("reading")
        time.sleep(0.05)
        shown.update("planning")
    assert stream.getvalue() == ""


# ----------------------------------------------------------------------------- the CLI


def make_cluster(services: int, endpoints: int) -> dict:
    """A ``kind: List`` of ``services`` ClusterIP Services (two ports each), each with one
    EndpointSlice of ``endpoints`` ready endpoints, and the Node ``node-01``."""
    items: list[dict] = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-01"},
                          "spec": {"podCIDR": "10.244.0.0/24"},
                          "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}]
    for i in range(services):
        name = f"svc-{i}"
        items.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "load"},
                      "spec": {"clusterIP": f"10.96.{i // 250}.{i % 250 + 1}",
                               "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                                         {"name": "https", "port": 443, "targetPort": 8443}]}})
        items.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                      "metadata": {"name": f"{name}-1", "namespace": "load",
                                   "labels": {"kubernetes.io/service-name": name}},
                      "ports": [{"name": "http", "port": 8080}, {"name": "https", "port": 8443}],
                      "endpoints": [{"addresses": [f"10.{100 + i // 6000}.{i // 24 % 250}.{(i % 24) * 10 + k + 1}"],
                                     "conditions": {"ready": True}, "nodeName": "node-01"}
                                    for k in range(endpoints)]})
    return {"apiVersion": "v1", "kind": "List", "items": items}


SERVICES = 4000


@pytest.fixture(scope="module")
def big_cluster(tmp_path_factory) -> str:
    """4,000 Services of 2 ports and 10 endpoints: a one-process compile takes seconds."""
    path = tmp_path_factory.mktemp("progress") / "big.json"
    path.write_text(json.dumps(make_cluster(SERVICES, 10)))
    return str(path)


def test_a_long_compile_shows_its_phases_on_a_terminal(big_cluster):
    code, got = on_terminal(["compile", "-f", big_cluster, "--node", "node-01", "-j", "1", "-o", os.devnull])
    assert code == 0
    assert b"dataplane compile: " in got, got
    statuses = [s.split(b" (")[0] for s in got.split(ERASE) if s]
    assert set(statuses) <= {b"dataplane compile: reading " + big_cluster.encode(),
                             b"dataplane compile: validating %d objects" % (2 * SERVICES + 1),
                             b"dataplane compile: planning node node-01's rules",
                             b"dataplane compile: rendering iptables rules for %d service ports" % (2 * SERVICES)}, \
        statuses
    assert got.endswith(ERASE)  # the terminal is left clean


def test_no_progress_when_stderr_is_not_a_terminal(big_cluster):
    proc = subprocess.run([*DATAPLANE, "compile", "-f", big_cluster, "--node", "node-01", "-j", "1",
                           "-o", os.devnull], capture_output=True, timeout=300,
                          env={**os.environ, "DATAPLANE_PROGRESS_DELAY": "0"})
    assert proc.returncode == 0
    assert b"dataplane compile" not in proc.stderr and b"\x1b" not in proc.stderr and b"\r" not in proc.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_shows_no_progress_on_a_terminal(big_cluster, where):
    args = ["compile", "-f", big_cluster, "--node", "node-01", "-j", "1", "-o", os.devnull]
    code, got = on_terminal(["--quiet", *args] if where == "before" else [*args, "-q"])
    assert (code, got) == (0, b"")


def test_a_quick_compile_shows_nothing_on_a_terminal():
    code, got = on_terminal(["compile", "-f", str(REPO / "examples" / "cluster.yaml"), "--allocate", "--seed", "1",
                              "--node", "node-a", "-o", os.devnull], delay=None)
    assert code == 0
    assert got.startswith(b"warning: ") and ERASE not in got and b"dataplane compile" not in got
