"""The per-namespace lock (dataplane.runtime.nslock), on an ordinary file: the same flock a namespace's
bind mount gets (netns_tests/test_apply_safety.py takes it on real namespaces)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from dataplane.errors import ApplyError
from dataplane.runtime.nslock import held_fds, lock_holder, path_lock


@pytest.fixture
def target(tmp_path: Path) -> str:
    path = tmp_path / "ns"
    path.write_text("")
    return str(path)


def _holder(path: str, code: str) -> subprocess.Popen:
    """A Python child that takes the lock with path_lock, prints "locked", then runs ``code``."""
    script = textwrap.dedent(f"""\
        import subprocess, sys, time
        from dataplane.runtime.nslock import held_fds, path_lock
        with path_lock({path!r}, timeout=5, what="test"):
            print("locked", flush=True)
        """) + textwrap.indent(textwrap.dedent(code), "    ")
    proc = subprocess.Popen([sys.executable, "-I", "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    return proc


def test_reentrant_in_one_thread_and_released_after(target):
    with path_lock(target, timeout=0, what="x"):
        assert len(held_fds()) == 1
        with path_lock(target, timeout=0, what="x"):
            assert len(held_fds()) == 1
        assert len(held_fds()) == 1
    assert held_fds() == ()
    with path_lock(target, timeout=0, what="x"):  # free again
        pass


def test_another_process_holding_it_gives_a_clear_error_after_the_timeout(target):
    proc = _holder(target, "time.sleep(30)")
    try:
        start = time.monotonic()
        with pytest.raises(ApplyError) as e:
            with path_lock(target, timeout=0.4, what="netns demo"):
                pass
        assert time.monotonic() - start >= 0.4
        assert str(e.value) == (f"another kube-dataplane apply holds the lock of netns demo (pid {proc.pid}): "
                                "gave up waiting after 0.4 s (--lock-timeout)")
    finally:
        proc.kill()
        proc.wait()


def test_a_waiter_gets_the_lock_once_the_holder_lets_go(target):
    proc = _holder(target, "time.sleep(0.5)")
    start = time.monotonic()
    with path_lock(target, timeout=10, what="x"):
        assert time.monotonic() - start >= 0.3
    proc.wait()


def test_threads_of_one_process_exclude_each_other(target):
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with path_lock(target, timeout=0, what="x"):
            inside.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert inside.wait(10)
    try:
        with pytest.raises(ApplyError, match="gave up waiting after 0.2 s"):
            with path_lock(target, timeout=0.2, what="x"):
                pass
        assert held_fds() == ()  # the other thread's hold is not this thread's
    finally:
        release.set()
        t.join()


def test_a_tool_started_by_a_killed_holder_keeps_the_lock_until_it_exits(target):
    # the holder passes its lock to a child (as run_in does), then dies by SIGKILL
    proc = _holder(target, """\
        subprocess.Popen(["sleep", "1.5"], pass_fds=held_fds())
        print("started", flush=True)
        time.sleep(30)
        """)
    assert proc.stdout is not None and proc.stdout.readline() == "started\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with pytest.raises(ApplyError, match=rf"\(pid {proc.pid}, which has exited: a tool it started still runs\)"):
        with path_lock(target, timeout=0.2, what="x"):
            pass
    with path_lock(target, timeout=10, what="x"):  # free once the tool is done
        pass


def test_lock_holder_reads_proc_locks(target):
    fd = os.open(target, os.O_RDONLY)
    try:
        assert lock_holder(fd) is None
    finally:
        os.close(fd)
    with path_lock(target, timeout=0, what="x"):
        (fd,) = held_fds()
        assert lock_holder(fd) == os.getpid()


def test_bad_timeout_and_missing_path(target, tmp_path):
    with pytest.raises(ApplyError, match="must not be negative"):
        with path_lock(target, timeout=-1, what="x"):
            pass
    with pytest.raises(ApplyError, match="cannot open .*/nope to lock x"):
        with path_lock(str(tmp_path / "nope"), timeout=0, what="x"):
            pass


@pytest.mark.parametrize("command", [["apply", "-f", "x.yaml", "--node", "n1", "--netns", "demo"],
                                     ["cleanup", "--netns", "demo"]])
def test_lock_timeout_option(command, capsys):
    from dataplane.cli import build_parser

    parser = build_parser(command[0])
    assert parser.parse_args(command).lock_timeout == 30.0
    assert parser.parse_args(command + ["--lock-timeout", "0.5"]).lock_timeout == 0.5
    for bad in ("-1", "soon", "nan", "inf"):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(command + ["--lock-timeout", bad])
        assert e.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1].endswith(
            f"argument --lock-timeout: must be a number of seconds, 0 or more: {bad!r}")
