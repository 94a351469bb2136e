"""Reading ``-f`` sources concurrently: watch streams and manifest snapshots, from files, FIFOs and ``-``.

Each source is read by its own thread, which puts :class:`Message` objects on one
queue for the sync loop. What a source holds is decided by its first JSON value:

* a watch event (``{"type": ..., "object": ...}``): a **watch stream**, decoded as the
  bytes arrive (:class:`~dataplane.agent.events.JSONStreamDecoder`), one
  ``event`` message per event;
* anything else (YAML, a JSON object or ``List``): a **snapshot**, read to its end and
  split into documents as every other command reads manifests; it replaces what the
  source said before (a ``relist`` message, the objects, then ``caught_up``).

A source has *caught up* once everything written to it so far has been read (no
more bytes are ready): the loop's first sync waits until every source has, so that
a restarted agent never applies half a cluster. A regular file or ``-`` ends at its
end of file (an ``ended`` message); a FIFO is opened again when its writer closes
it and is read until the agent stops.
"""
from __future__ import annotations

import fcntl
import os
import queue
import select
import stat
import threading
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from ..errors import report_lines
from ..input.loader import STDIN_NAME, documents_from_text
from .events import JSONStreamDecoder, StreamError, WatchEvent, is_watch_event, watch_event
from .store import Parsed, preparse, preparse_event

MessageKind = Literal["event", "object", "relist", "caught_up", "ended", "error"]
READ_SIZE = 1 << 20
#: bytes a pipe or FIFO the agent reads is asked to hold (Linux's default is 64 KiB; an
#: unprivileged process may ask up to /proc/sys/fs/pipe-max-size, 1 MiB by default)
PIPE_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class Message:
    """One thing a source reports to the loop.

    ``event``: a watch event; ``object``: one object of a listing (``obj``, ``unit`` and
    ``index`` say where it was read); ``relist``: a new full listing starts;
    ``caught_up``: everything written so far was read; ``ended``: the source is done;
    ``error``: one line to print (``text``)."""

    kind: MessageKind
    source: str
    event: Optional[WatchEvent] = None
    obj: Any = None
    unit: str = ""
    index: int = 0
    text: str = ""
    parsed: Optional[Parsed] = None  # the object validated by the reading thread (see store.preparse)


@dataclass
class FileSource:
    """One ``-f`` path (``-`` for standard input), read by a daemon thread."""

    path: str
    out: "queue.Queue[Message]"
    name: str = field(init=False)
    is_fifo: bool = field(init=False)

    def __post_init__(self) -> None:
        self.name = STDIN_NAME if self.path == "-" else self.path
        self.is_fifo = self.path != "-" and _is_fifo(self.path)

    def start(self) -> threading.Thread:
        """Start reading in a daemon thread (it ends with the source, or never for a FIFO)."""
        t = threading.Thread(target=self._run, name=f"source {self.name}", daemon=True)
        t.start()
        return t

    def _put(self, kind: MessageKind, **kw: Any) -> None:
        self.out.put(Message(kind, self.name, **kw))

    def _open(self) -> int:
        """A read descriptor (non-blocking: a FIFO's open then never waits for a writer)."""
        if self.path == "-":
            widen_pipe(0)
            return 0
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if self.is_fifo:
            widen_pipe(fd)
        return fd

    def _run(self) -> None:
        reader = _StreamReader(self)
        fd = None
        try:
            fd = self._open()
            while True:
                reader.read_all(fd)
                if not self.is_fifo or reader.failed:
                    break
                # The FIFO's writer closed it. Open it again before closing the old descriptor:
                # the pipe then always has a reader, so what the next writer writes is never lost.
                old, fd = fd, self._open()
                os.close(old)
        except OSError as err:
            self._put("error", text=f"{self.name}: cannot read: {err.strerror or err}")
        except Exception as err:  # never let a reader thread die silently
            self._put("error", text=f"{self.name}: {type(err).__name__}: {err}")
        finally:
            if fd:
                os.close(fd)
        self._put("caught_up")
        self._put("ended")


class _StreamReader:
    """Reads one source's bytes: detects watch stream or snapshot, and reports what it holds."""

    def __init__(self, src: FileSource) -> None:
        self.src = src
        self.decoder = JSONStreamDecoder(src.name)
        self.mode: Optional[str] = None  # "watch" | "snapshot", known from the first value
        self.snapshot: list[bytes] = []
        self.events = 0
        self.failed = False
        self.caught_up = False  # reported since the last relist

    def read_all(self, fd: int) -> None:
        """Read ``fd`` to its end of file."""
        while not self.failed:
            if not self.caught_up and self._between_values() and not _ready(fd):
                self.caught_up = True  # nothing more is written for now (a FIFO, a pipe)
                self.src._put("caught_up")
            select.select([fd], [], [])  # until there are bytes, or the end (a FIFO: its writer left)
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            if not data:
                break
            self._data(data)
        if self.failed:
            return
        if self.src.is_fifo and self.mode == "watch" and not self.caught_up:
            self.caught_up = True  # the writer left: everything it wrote has been read
            self.src._put("caught_up")
        if self.mode == "snapshot":
            self._snapshot_done()
        elif self.mode == "watch":
            try:
                self.decoder.finish()
            except StreamError as err:
                self._fail(str(err))
            self.decoder = JSONStreamDecoder(self.src.name)  # a FIFO's next writer starts afresh
            self.mode = None

    def _between_values(self) -> bool:
        """Whether everything read so far has been reported (no snapshot or first value half read)."""
        return self.mode == "watch" or (self.mode is None and not self.snapshot)

    def _data(self, data: bytes) -> None:
        if self.mode is None:
            if not self.snapshot:  # nothing but whitespace so far: the first byte decides
                stripped = data.lstrip()
                if not stripped:
                    return
                if not stripped.startswith((b"{", b"\xef\xbb\xbf{")):
                    self.mode = "snapshot"
                    self.snapshot.append(data)
                    return
            self.snapshot.append(data)  # kept until the first value says what the source is
            error = None
            try:
                values = self.decoder.feed(data)
            except StreamError as err:
                values, error = err.values, err
            if error is not None and not (values and is_watch_event(values[0])):
                self.mode = "snapshot"  # YAML flow style, or bad JSON: the manifest reader says which
                return
            if not values:
                return  # the first value is not complete yet
            self.mode = "watch" if is_watch_event(values[0]) else "snapshot"
            if self.mode == "watch":
                self.snapshot = []
                self._events(values)
                if error is not None:
                    self._fail(str(error))
            return
        if self.mode == "snapshot":
            self.snapshot.append(data)
            return
        try:
            self._events(self.decoder.feed(data))
        except StreamError as err:
            self._events(err.values)
            self._fail(str(err))

    def _events(self, values: list) -> None:
        for value in values:
            self.events += 1
            try:
                event = watch_event(value, self.src.name, self.events)
            except StreamError as err:
                self.src._put("error", text=f"{err} (skipped)")
                continue
            if event.type == "ERROR":
                self.caught_up = False  # the relist that follows must be read before the next sync
            self.src._put("event", event=event, parsed=preparse_event(event))

    def _snapshot_done(self) -> None:
        """The snapshot's text is complete: it replaces what this source said before."""
        raw = b"".join(self.snapshot)
        self.snapshot = []
        self.mode = None
        self.decoder = JSONStreamDecoder(self.src.name)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            self._fail(f"{self.src.name}: cannot read: not UTF-8 text ({err.reason} at byte {err.start})")
            return
        docs, problems = documents_from_text(text, self.src.name, json_hint=self.src.path.endswith(".json"))
        for line in report_lines(problems, "problem"):
            self.src._put("error", text=f"{line} (skipped)")
        self.src._put("relist")
        for doc in docs:
            self.src._put("object", obj=doc.obj, unit="document", index=doc.index,
                          parsed=preparse(doc.obj, self.src.name))
        self.src._put("caught_up")

    def _fail(self, line: str) -> None:
        self.failed = True
        self.src._put("error", text=f"{line}; no more is read from {self.src.name}")


def widen_pipe(fd: int, size: int = PIPE_SIZE) -> int:
    """Ask the pipe (or FIFO) ``fd`` reads from to hold ``size`` bytes, so that its writer can
    go on writing while the agent syncs and each read takes more events at once (fewer turns
    of the reading thread); the capacity it has afterwards, 0 when ``fd`` is no pipe. Never
    fails: a pipe the system will not widen keeps its size."""
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return 0
    except OSError:
        return 0
    try:
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except OSError:  # EPERM beyond the limits, EBUSY when it holds more than size
        try:
            return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        except OSError:
            return 0


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False  # reported when it is opened


def _ready(fd: int) -> bool:
    """Whether more bytes can be read from ``fd`` at once (always true for a regular file)."""
    try:
        readable, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(readable)

