"""``-o`` writes to the place the user named and never replaces what is not a regular file."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dataplane.cli import main
from dataplane.output import OutputError, write_output

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "cluster.yaml")
COMPILE = ["compile", "-f", EXAMPLE, "--node", "node-a"]


def _null_device(tmp_path: Path) -> str:
    """A private /dev/null (so a regression cannot replace the machine's own), or /dev/null."""
    if os.geteuid() == 0:
        node = tmp_path / "null"
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        return str(node)
    return "/dev/null"


def test_dev_null_stays_a_device(tmp_path, capsys):
    null = _null_device(tmp_path)
    before = os.stat(null)
    assert main([*COMPILE, "-o", null]) == 0
    after = os.stat(null)
    assert stat.S_ISCHR(after.st_mode)
    assert (after.st_ino, stat.S_IMODE(after.st_mode)) == (before.st_ino, stat.S_IMODE(before.st_mode))


def test_symlink_is_followed_and_kept(tmp_path, capsys):
    target = tmp_path / "real.rules"
    target.write_text("old\n")
    link = tmp_path / "link.rules"
    link.symlink_to(target.name)
    assert main([*COMPILE, "-o", str(link)]) == 0
    assert link.is_symlink() and os.readlink(link) == target.name
    assert target.read_text().startswith("*")  # iptables-restore text now
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dataplane-")]


def test_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "link"
    link.symlink_to("made")
    write_output("x\n", str(link))
    assert link.is_symlink() and (tmp_path / "made").read_text() == "x\n"


def test_new_file_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_output("x\n", str(tmp_path / "a"))
        os.umask(0o077)
        write_output("x\n", str(tmp_path / "b"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "b").st_mode) == 0o600


def test_existing_file_keeps_its_mode_and_is_replaced_whole(tmp_path):
    p = tmp_path / "rules"
    p.write_text("a much longer old content than the new one\n")
    p.chmod(0o640)
    write_output("new\n", str(p))
    assert p.read_text() == "new\n"
    assert stat.S_IMODE(p.stat().st_mode) == 0o640


def test_fifo_is_written_through(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    write_output("through the pipe\n", str(fifo))
    reader.join(5)
    assert got == ["through the pipe\n"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.parametrize("where,expect", [
    ("missing/dir/x", "does not exist"),
    (".", "is a directory"),
])
def test_bad_places_give_one_line(tmp_path, capsys, where, expect):
    code = main([*COMPILE, "-o", str(tmp_path / where)])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: cannot write ") and expect in lines[-1]
    assert "Traceback" not in err


def test_unwritable_directory(tmp_path):
    if os.geteuid() == 0:
        # root ignores directory permissions: a read-only bind is not available here either,
        # so prove the error path with a path below a regular file instead.
        (tmp_path / "file").write_text("")
        with pytest.raises(OutputError, match="cannot write .*file/x"):
            write_output("x", str(tmp_path / "file" / "x"))
        return
    d = tmp_path / "ro"
    d.mkdir(mode=0o500)
    with pytest.raises(OutputError, match="Permission denied"):
        write_output("x", str(d / "x"))


def test_cli_process_dev_null(tmp_path):
    """The console entry point (its os._exit path) also writes through a device."""
    null = _null_device(tmp_path)
    proc = subprocess.run([sys.executable, "-I", "-m", "dataplane", *COMPILE, "-o", null],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISCHR(os.stat(null).st_mode)
