"""A one-shot command ends without resuming the garbage collector: its first young collection would
walk every object the command made just before os._exit (half a second at 10k Services given as
Pods). In-process callers of main() get the collector back."""
from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

from dataplane import cli

CASES = Path(__file__).resolve().parent / "cases"

_PROBE = """
import gc, os, sys
from dataplane import cli
events = []
gc.callbacks.append(lambda phase, info: phase == "start" and events.append("collect"))
write = cli._write_output
def written(text, path):
    write(text, path)
    events.append("written")
cli._write_output = written
real_exit = os._exit
def exiting(code):
    sys.stderr.write(" ".join(events[events.index("written"):]) + "\\n")
    sys.stderr.flush()
    real_exit(code)
os._exit = exiting
sys.argv = ["dataplane", *sys.argv[1:]]
cli.run()
"""


def _case() -> Path:
    return sorted(CASES.glob("*.yaml"))[0]


def test_a_one_shot_command_exits_without_a_collection(tmp_path):
    out = tmp_path / "rules"
    run = subprocess.run([sys.executable, "-I", "-c", _PROBE, "compile", "-f", str(_case()), "--node", "node-a",
                          "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip().splitlines()[-1] == "written", run.stderr  # nothing collected after the output
    assert out.read_text()


def test_main_in_process_gives_the_collector_back(tmp_path):
    assert gc.isenabled()
    assert cli.main(["compile", "-f", str(_case()), "--node", "node-a", "-o", str(tmp_path / "rules")]) == 0
    assert gc.isenabled()
