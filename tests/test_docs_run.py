"""The documentation's examples run as written and print what the text shows (issue 14, item 4):
every ``$ dataplane …`` line of README.md and every example of each command's ``--help``, in a
fresh directory with the bundled examples. Blocks that need root and namespaces (``apply``,
``lab up``, ``verify``, ``ip netns …``) run in netns_tests/test_docs_run_netns.py; here their
other lines run. The matcher and the runner are in netns_tests/docs_examples.py.
"""
from __future__ import annotations

import pytest

from docs_examples import (
    README, Block, Step, epilog_block, help_commands, matches, readme_blocks, readme_dollar_lines, run_block,
)

BLOCKS = readme_blocks()
COMMANDS = help_commands()


def test_matcher():
    assert matches(["a", "b"], ["a", "b"])
    assert not matches(["a", "b"], ["a", "b", "c"])         # nothing elided without …
    assert not matches(["a", "b"], ["a"])
    assert not matches(["a", "x"], ["a", "b"])
    assert matches(["a", "…"], ["a", "b", "c"])
    assert matches(["a", "…"], ["a"])
    assert matches(["…", "c"], ["a", "b", "c"])
    assert matches(["a", "\t…", "c", "…", "e"], ["a", "b", "c", "d", "e"])
    assert not matches(["a", "…", "c", "…", "e"], ["a", "b", "e"])
    assert matches(["x  "], ["x"])                          # trailing blanks do not count
    assert matches(["192.0.2.1:…"], ["192.0.2.1:34471 10.244.1.10:8080 web"])
    assert not matches(["192.0.2.1:…"], ["192.0.2.2:34471 10.244.1.10:8080 web"])


def test_every_readme_command_is_collected():
    collected = sum(len(b.steps) for b in BLOCKS)
    assert collected == readme_dollar_lines() >= 10
    assert any(b.python for b in BLOCKS), "the README's Library code is not collected"
    assert not any(".venv/bin/python" in s.command for b in BLOCKS for s in b.steps)


def test_every_command_has_examples():
    names = {" ".join(c) for c in COMMANDS}
    assert {"compile", "allocate", "endpoints", "apply", "cleanup", "trace", "dns", "env", "completion",
            "lab up", "lab down", "verify"} <= names
    for command in COMMANDS:
        assert epilog_block(command).steps


def test_root_steps_are_recognised():
    assert Step("ip netns add demo").needs_root
    assert Step(".venv/bin/dataplane apply -f x --node n --netns demo").needs_root
    assert Step("dataplane lab up -f x").needs_root
    assert Step("dataplane --quiet apply -f x --node n --netns demo").needs_root
    assert Step("dataplane diff -q -f x --node n --netns demo && echo same").needs_root
    assert Step("iptables-save | dataplane trace --rules - --backend iptables").needs_root
    assert not Step("dataplane compile -f examples/cluster.yaml --node node-a  # no apply here").needs_root
    assert not Step("dataplane allocate -f x | dataplane env -f - -n shop").needs_root


@pytest.mark.parametrize("block", BLOCKS, ids=[b.name[:70] for b in BLOCKS])
def test_readme_examples_run(block: Block, tmp_path):
    ran = run_block(block, tmp_path, with_root=False)
    assert ran or block.needs_root


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_help_examples_run(command, tmp_path):
    block = epilog_block(command)
    ran = run_block(block, tmp_path, with_root=False)
    assert ran or block.needs_root


def test_a_drifted_readme_output_fails(tmp_path):
    """The checks bite: a block whose shown output is wrong fails."""
    text = README.read_text()
    [block] = [b for b in readme_blocks(text) if b.steps[0].command.startswith(".venv/bin/dataplane endpoints")]
    step = block.steps[0]
    wrong = Step(step.command, tuple(ln.replace("10.244.2.53", "10.244.2.54") for ln in step.expected))
    with pytest.raises(AssertionError, match="output differs"):
        run_block(Block("drifted", (wrong,)), tmp_path, with_root=False)
