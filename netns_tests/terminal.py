"""Run ``dataplane`` with stderr on a pseudo-terminal, for the tests of what it shows there
(progress lines); shared by tests/test_progress.py and netns_tests/test_diff_netns.py."""
from __future__ import annotations

import os
import pty
import subprocess
import sys
from typing import Optional

DATAPLANE = [sys.executable, "-I", "-m", "dataplane"]
#: what a progress line is erased with: back to the line's start, erase to its end
ERASE = b"\r\x1b[K"


def on_terminal(args: list[str], *, delay: Optional[str] = "0") -> tuple[int, bytes]:
    """Run ``dataplane ARGS`` with stderr on a pseudo-terminal: (exit status, what the terminal got).
    ``delay``: DATAPLANE_PROGRESS_DELAY (0: every phase is shown, however fast; None: the default)."""
    master, slave = pty.openpty()
    try:
        env = {k: v for k, v in os.environ.items() if k != "DATAPLANE_PROGRESS_DELAY"}
        if delay is not None:
            env["DATAPLANE_PROGRESS_DELAY"] = delay
        proc = subprocess.Popen([*DATAPLANE, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=slave, env=env)
    finally:
        os.close(slave)
    got = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            got += chunk
    finally:
        os.close(master)
    return proc.wait(timeout=300), got
