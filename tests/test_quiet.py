"""``--quiet`` (issue 14, item 5): before or after the command, no warnings or notes on stderr;
errors still print and the exit status and the output are unchanged."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dataplane.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = str(REPO / "examples" / "cluster.yaml")
DATAPLANE = [sys.executable, "-I", "-m", "dataplane"]
COMPILE = ["compile", "-f", EXAMPLE, "--allocate", "--seed", "1", "--node", "node-a"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*DATAPLANE, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def loud() -> subprocess.CompletedProcess:
    run = _run(COMPILE)
    assert run.returncode == 0 and run.stderr.startswith("warning: ") and run.stdout
    return run


@pytest.mark.parametrize("args", [["--quiet", *COMPILE], ["-q", *COMPILE], [*COMPILE, "-q"], [*COMPILE, "--quiet"],
                                  ["compile", "-q", *COMPILE[1:]]],
                         ids=["--quiet before", "-q before", "-q after", "--quiet after", "-q inside"])
def test_quiet_drops_warnings_and_keeps_the_output(loud, args):
    run = _run(args)
    assert (run.returncode, run.stderr, run.stdout) == (0, "", loud.stdout)


@pytest.mark.parametrize("where", ["before", "after"])
def test_errors_still_print_with_the_same_exit_status(tmp_path, where):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 70000}]}\n"
                   "---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: 80}], "
                   "bogusField: 1}\n")
    args = ["compile", "-f", str(bad), "--node", "n1"]
    plain = _run(args)
    quiet = _run(["-q", *args] if where == "before" else [*args, "-q"])
    assert plain.returncode == quiet.returncode == 1
    assert quiet.stderr == plain.stderr
    assert quiet.stderr.startswith("error: ") and "Traceback" not in quiet.stderr


def test_a_missing_node_is_still_an_error():
    run = _run([*COMPILE[:-1], "nowhere", "--quiet"])
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == ["error: node 'nowhere' is not in the input (Nodes given: node-a, node-b)"]


def test_other_commands_are_quiet_too():
    loud_run = _run(["endpoints", "-f", EXAMPLE])
    assert loud_run.returncode == 0 and "warning: " in loud_run.stderr
    quiet_run = _run(["endpoints", "-q", "-f", EXAMPLE])
    assert (quiet_run.returncode, quiet_run.stderr, quiet_run.stdout) == (0, "", loud_run.stdout)
    assert _run(["--quiet", "allocate", "-f", EXAMPLE, "--seed", "1"]).stderr == ""
    dns_loud, dns_quiet = _run(["dns", "-f", EXAMPLE]), _run(["dns", "-f", EXAMPLE, "--quiet"])
    assert "warning: " in dns_loud.stderr and dns_quiet.stderr == "" and dns_quiet.stdout == dns_loud.stdout


def test_quiet_is_listed_in_help():
    assert "--quiet" in _run(["--help"]).stdout
    assert "--quiet" in _run(["compile", "--help"]).stdout
    assert "--quiet" in _run(["lab", "up", "--help"]).stdout


def test_quiet_lasts_one_command_line(capsys):
    assert main(["-q", *COMPILE]) == 0
    assert capsys.readouterr().err == ""
    assert main(COMPILE) == 0
    assert capsys.readouterr().err.startswith("warning: ")
