"""Progress of long commands on a terminal: one status line on stderr, rewritten in place.

A :class:`Progress` says nothing unless it is enabled (the CLI enables it when stderr is a
terminal and ``--quiet`` is not given), and it shows a status only once the operation has
taken longer than ``delay`` seconds, so quick commands print nothing extra. The library
never creates one: long operations take an optional ``progress`` callback
(``Callable[[str], None]``) and :meth:`Progress.update` is one.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Optional, TextIO

__all__ = ["Progress", "DEFAULT_DELAY"]

DEFAULT_DELAY = 1.0
_ERASE = "\r\x1b[K"  # back to the line's start, erase to its end
_WIDTH = 100  # the longest status shown


class Progress:
    """A status line on ``stream`` (stderr by default), prefixed with ``label``.

    :meth:`update` sets the current status; it is written once ``delay`` seconds have passed
    since the progress was made (by a timer thread when nothing else happens), and at once
    after that. :meth:`close` erases the line. Disabled, every method does nothing.
    Usable as a context manager (closed on the way out).
    """

    def __init__(self, label: str, *, enabled: bool, delay: float = DEFAULT_DELAY,
                 stream: Optional[TextIO] = None) -> None:
        self.label = label
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()
        self.shown = False  # whether anything was written (and is to be erased)
        self._status = ""
        self._lock = threading.Lock()
        self._timer: Optional[threading.Timer] = None
        if enabled:
            self._timer = threading.Timer(delay, self._due)
            self._timer.daemon = True
            self._timer.start()
        self._delay = delay

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, status: str) -> None:
        """Make ``status`` the current one (shown now if the delay has passed)."""
        if not self.enabled:
            return
        with self._lock:
            self._status = status
            if self.shown or time.monotonic() - self.start >= self._delay:
                self._write()

    def _due(self) -> None:
        with self._lock:
            if self.enabled and self._status:
                self._write()

    def _write(self) -> None:
        """Write the status line (the lock held)."""
        elapsed = time.monotonic() - self.start
        line = f"{self.label}: {self._status} ({elapsed:.0f} s)"
        try:
            self.stream.write(_ERASE + line[:_WIDTH])
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: stop showing
            self.enabled = False
            return
        self.shown = True

    def close(self) -> None:
        """Stop; erase the status line if one was shown. Idempotent."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self.enabled and self.shown:
                try:
                    self.stream.write(_ERASE)
                    self.stream.flush()
                except (OSError, ValueError):
                    pass
            self.enabled = False
