"""Write a command's output where the user asked: stdout, a file, a device, a FIFO or a symlink.

``-o PATH`` names a place to write *to*, never a file to replace blindly:

* a character device (``/dev/null``, a terminal), a FIFO or a socket is opened and
  written through; it is never turned into a regular file;
* a symlink is followed: its target receives the text and the link stays a link;
* a regular file (or a new one) is written atomically: the text goes to a
  temporary file in the same directory, which is renamed over the target only
  once it is complete, so a failure leaves the old content. An existing file
  keeps its permission bits; a new one gets ``0666`` less the umask, as any
  program creating a file would;
* anything else (a directory, a missing directory, no permission) is a
  :class:`OutputError` with one line naming the path.
"""
from __future__ import annotations

import errno
import os
import stat
import sys
import tempfile
from typing import Optional, TextIO

from .errors import DataplaneError


class OutputError(DataplaneError):
    """The output could not be written where the user asked; ``reason`` says why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot write {path}: {reason}")
        self.path = path
        self.reason = reason


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fail(path: str, err: OSError) -> OutputError:
    reason = err.strerror or str(err)
    if err.errno == errno.ENOENT:
        parent = os.path.dirname(os.path.abspath(path))
        reason = f"directory {parent} does not exist"
    return OutputError(path, reason)


def write_output(text: str, path: Optional[str], *, stdout: Optional[TextIO] = None) -> None:
    """Write ``text`` to ``path`` (``None`` or ``-``: standard output) as described above.

    Raises :class:`OutputError` (one line, naming ``path``) when the place
    cannot be written; an existing regular file then keeps its old content.
    """
    if not path or path == "-":
        (stdout or sys.stdout).write(text)
        return
    target = os.path.realpath(path)  # follow symlinks: the link itself stays
    try:
        st: Optional[os.stat_result] = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise _fail(path, e) from e
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(path, "it is a directory")
    if st is not None and not stat.S_ISREG(st.st_mode):
        _write_through(path, target, text)
        return
    _write_atomically(path, target, text, None if st is None else stat.S_IMODE(st.st_mode))


def _write_through(path: str, target: str, text: str) -> None:
    """Write into a device, FIFO or socket as it is (no truncation, no rename)."""
    try:
        with open(target, "w") as f:
            f.write(text)
    except OSError as e:
        raise _fail(path, e) from e


def _write_atomically(path: str, target: str, text: str, mode: Optional[int]) -> None:
    directory = os.path.dirname(target)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".dataplane-")
    except OSError as e:
        raise _fail(path, e) from e
    try:
        os.fchmod(fd, mode if mode is not None else 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise _fail(path, e) from e
        raise
