"""Run the documentation's examples as written: every ``$ dataplane …`` (or ``$ .venv/bin/dataplane
…``) line of README.md, in order within its block, with its output compared where the README shows
it, and every example line of each command's ``--help`` epilog. Used by tests/test_docs_run.py
(what runs without root) and netns_tests/test_docs_run_netns.py (blocks that build namespaces).

Each block runs in a fresh temporary directory holding a copy of the repository's ``examples/``,
with ``dataplane`` (and ``.venv/bin/dataplane``) being ``sys.executable -I -m dataplane`` and a
``kubectl`` stand-in that answers ``kubectl get KINDS [-A|-n NS] -o yaml|json`` from the bundled
example as an API server would hold it (allocated with ``--seed 1``, EndpointSlices derived).
"""
from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
DATAPLANE = [sys.executable, "-I", "-m", "dataplane"]
ELLIPSIS = "…"
TIMEOUT = 300

# The dataplane commands (and other programs) that need root and network namespaces.
_ROOT_COMMANDS = ("apply", "cleanup", "diff", "lab", "sync", "verify")
_SHELL_SYNTAX = re.compile(r"[|<>&;$`'\"()~*?]")


@dataclass(frozen=True)
class Step:
    """One example command and the output the text shows (None: not shown, not compared)."""

    command: str
    expected: Optional[tuple[str, ...]] = None

    @property
    def needs_root(self) -> bool:
        words = shlex.split(_program_text(self.command), comments=True)
        if not words:
            return False
        if words[0] in ("ip", "iptables-save", "ip6tables-save", "nft"):
            return True
        return any(w == "dataplane" and next((c for c in words[i + 1:] if not c.startswith("-")), "") in _ROOT_COMMANDS
                   for i, w in enumerate(words))  # the command after any global option (--quiet)


@dataclass(frozen=True)
class Block:
    """The examples of one README code block or one command's epilog, run in order in one directory."""

    name: str
    steps: tuple[Step, ...]
    python: tuple[str, ...] = ()  # README Library code run after the steps, in the same directory

    @property
    def needs_root(self) -> bool:
        return any(s.needs_root for s in self.steps)


def _program_text(command: str) -> str:
    """``command`` with ``.venv/bin/dataplane`` spelled ``dataplane``."""
    return re.sub(r"(?<![\w/.])\.venv/bin/dataplane\b", "dataplane", command)


# ----------------------------------------------------------------------------------------------
# Finding the examples


def _fences(text: str) -> list[tuple[str, list[str], str]]:
    """(language, lines, heading) of every fenced code block of a Markdown text."""
    out: list[tuple[str, list[str], str]] = []
    heading, lang, body = "", None, []
    for line in text.splitlines():
        if lang is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            elif line.startswith("```"):
                lang, body = line[3:].strip(), []
        elif line.startswith("```"):
            out.append((lang, body, heading))
            lang = None
        else:
            body.append(line)
    assert lang is None, "README.md: unterminated code block"
    return out


def _transcript(lines: list[str]) -> list[Step]:
    """The ``$ command`` lines of a block, each with the lines up to the next ``$`` as its output."""
    steps: list[Step] = []
    command, output = None, []
    for line in lines:
        if line.startswith("$ "):
            if command is not None:
                steps.append(Step(command, tuple(output)))
            command, output = line[2:].strip(), []
        elif command is not None:
            output.append(line)
    if command is not None:
        steps.append(Step(command, tuple(output)))
    return steps


def readme_blocks(text: Optional[str] = None) -> list[Block]:
    """Every README block with a ``$`` line, and every Python block: a Python block joins the
    block of ``$`` lines before it in the same section (which prepares its input files)."""
    text = README.read_text() if text is None else text
    blocks: list[Block] = []
    for lang, lines, heading in _fences(text):
        if lang == "python":
            code = "\n".join(lines)
            if blocks and blocks[-1].name.startswith(heading + ":"):
                last = blocks[-1]
                blocks[-1] = Block(last.name, last.steps, last.python + (code,))
            else:
                blocks.append(Block(f"{heading}: python", (), (code,)))
            continue
        steps = _transcript(lines)
        if steps:
            blocks.append(Block(f"{heading}: {steps[0].command}", tuple(steps)))
    return blocks


def readme_dollar_lines(text: Optional[str] = None) -> int:
    """How many ``$ `` lines the README's code blocks hold (to check none is skipped)."""
    text = README.read_text() if text is None else text
    return sum(1 for _, lines, _ in _fences(text) for ln in lines if ln.startswith("$ "))


def help_commands() -> list[tuple[str, ...]]:
    """Every command and subcommand of the ``dataplane`` parser, as argv prefixes."""
    import argparse

    from dataplane.cli import build_parser

    found: list[tuple[str, ...]] = []

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if prefix and not subs:
            found.append(prefix)
        for action in subs:
            for name, child in action.choices.items():
                walk(child, prefix + (name,))

    walk(build_parser(), ())
    return found


def epilog_block(command: tuple[str, ...]) -> Block:
    """The example lines of ``dataplane COMMAND --help``, as the real command prints them."""
    run = subprocess.run(DATAPLANE + [*command, "--help"], capture_output=True, text=True, timeout=TIMEOUT,
                         env={**os.environ, "COLUMNS": "200"})
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "\nexamples:\n" in text, f"dataplane {' '.join(command)} --help shows no examples"
    lines: list[str] = []
    for line in text.split("\nexamples:\n", 1)[1].splitlines():
        if not line.startswith("  "):
            break
        lines.append(line.strip())
    assert lines, f"dataplane {' '.join(command)} --help: empty examples section"
    return Block(f"dataplane {' '.join(command)} --help", tuple(Step(ln) for ln in lines))


# ----------------------------------------------------------------------------------------------
# Comparing output


def matches(expected: tuple[str, ...] | list[str], actual: list[str]) -> bool:
    """Whether ``actual`` lines are the ``expected`` ones, a line that is only ``…`` standing for
    any number of lines (none included) and a line ending in ``…`` for any line that begins with
    the text before it. Lines are compared without trailing whitespace."""
    exp = [e.rstrip() for e in expected]
    act = [a.rstrip() for a in actual]
    # can[i][j]: exp[i:] matches act[j:]
    can = [[False] * (len(act) + 1) for _ in range(len(exp) + 1)]
    can[len(exp)][len(act)] = True
    for i in range(len(exp) - 1, -1, -1):
        wild = exp[i].strip() == ELLIPSIS
        for j in range(len(act), -1, -1):
            if wild:
                can[i][j] = can[i + 1][j] or (j < len(act) and can[i][j + 1])
            elif exp[i].endswith(ELLIPSIS):  # the rest of the line elided
                can[i][j] = j < len(act) and act[j].startswith(exp[i][:-1]) and can[i + 1][j + 1]
            else:
                can[i][j] = j < len(act) and exp[i] == act[j] and can[i + 1][j + 1]
    return can[0][0]


# ----------------------------------------------------------------------------------------------
# Running


_KUBECTL = r'''#!{python} -I
"""kubectl stand-in: `kubectl get KINDS [-A | -n NS] -o yaml|json` from a stored List."""
import json, sys
args = sys.argv[1:]
if not args or args[0] != "get":
    sys.exit("kubectl stand-in: only `kubectl get` is known")
kinds = {{"svc": "Service", "services": "Service", "endpointslices": "EndpointSlice", "nodes": "Node",
          "pods": "Pod", "po": "Pod", "no": "Node", "endpoints": "Endpoints"}}
want = {{kinds[k] for k in args[1].split(",")}}
ns = None if "-A" in args else (args[args.index("-n") + 1] if "-n" in args else "default")
fmt = args[args.index("-o") + 1]
items = [o for o in json.load(open({store!r}))["items"] if o["kind"] in want
         and (ns is None or o["kind"] == "Node" or o["metadata"].get("namespace") == ns)]
doc = {{"apiVersion": "v1", "kind": "List", "items": items, "metadata": {{"resourceVersion": ""}}}}
if fmt == "json":
    print(json.dumps(doc, indent=4))
else:
    import yaml
    print(yaml.safe_dump(doc, sort_keys=False), end="")
'''


def workdir(tmp: Path) -> dict[str, str]:
    """Prepare ``tmp`` to run examples in: ``examples/``, ``dataplane``, ``.venv/bin/dataplane``
    and ``kubectl`` on PATH; returns the environment to run them with."""
    shutil.copytree(EXAMPLES, tmp / "examples")
    bindir = tmp / ".venv" / "bin"
    bindir.mkdir(parents=True)
    wrapper = bindir / "dataplane"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.join(DATAPLANE)} \"$@\"\n")
    store = tmp / ".kubectl-store.json"
    store.write_text(_api_objects())
    kubectl = bindir / "kubectl"
    kubectl.write_text(_KUBECTL.format(python=sys.executable, store=str(store)))
    for exe in (wrapper, kubectl):
        exe.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS")}
    env.update(PATH=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}", HOME=str(tmp), NO_COLOR="1",
               LC_ALL="C.UTF-8")
    return env


@functools.lru_cache(maxsize=1)
def _api_objects() -> str:
    """What an API server holds for the example (JSON): allocated objects and the slices the
    EndpointSlice controller derives, without the node-local KubeProxyConfiguration."""
    objects = json.loads(_check([*DATAPLANE, "allocate", "--seed", "1", "-f", str(EXAMPLES / "cluster.yaml"),
                                 "--format", "json"], EXAMPLES))
    slices = json.loads(_check([*DATAPLANE, "endpoints", "-f", "-", "--format", "json"], EXAMPLES,
                               stdin=json.dumps(objects)))
    items = [o for o in objects["items"] if o["kind"] != "KubeProxyConfiguration"]
    items += slices["items"] if slices.get("kind") == "List" else [slices]
    return json.dumps({"items": items})


def _check(argv: list[str], cwd: Path, stdin: Optional[str] = None) -> str:
    run = subprocess.run(argv, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, f"{shlex.join(argv)}: {run.stderr}"
    return run.stdout


def run_step(step: Step, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run one example: a plain ``dataplane`` command directly, anything else through bash."""
    text = _program_text(step.command)
    words = shlex.split(text, comments=True)
    if words and words[0] == "dataplane" and not _SHELL_SYNTAX.search(text.split("#")[0]):
        argv = DATAPLANE + words[1:]
    else:
        argv = ["bash", "-c", text]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def check_step(step: Step, run: subprocess.CompletedProcess) -> None:
    """The exit status is 0 (1 when the text shows ``error:`` lines) and the output (stderr for
    errors) is what the text shows."""
    shown_error = step.expected is not None and any(ln.startswith("error: ") for ln in step.expected)
    where = f"$ {step.command}\n--- stdout:\n{run.stdout}--- stderr:\n{run.stderr}"
    assert run.returncode == (1 if shown_error else 0), f"exit status {run.returncode}\n{where}"
    if step.expected is None:
        return
    if shown_error:  # the error lines, without the warnings that may come with them
        actual = [ln for ln in run.stderr.splitlines() if not ln.startswith("warning: ")]
    else:  # what a terminal shows: the output, then what went to stderr (apply's report, say)
        actual = run.stdout.splitlines() + run.stderr.splitlines()
    assert matches(step.expected, actual), \
        "output differs from the text\n--- the text shows:\n" + "\n".join(step.expected) + "\n" + where


def run_block(block: Block, tmp: Path, *, with_root: bool) -> int:
    """Run a block's steps in order in ``tmp`` (``with_root`` False: only the steps that need no
    root) and then its Python code; returns how many steps ran."""
    env = workdir(tmp)
    ran = 0
    for step in block.steps:
        if step.needs_root and not with_root:
            continue
        check_step(step, run_step(step, tmp, env))
        ran += 1
    for code in block.python:
        run = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp, env=env, capture_output=True,
                             text=True, timeout=TIMEOUT)
        assert run.returncode == 0, f"README Library code failed:\n{code}\n--- stderr:\n{run.stderr}"
        ran += 1
    return ran
