"""Watch events as ``kubectl get KIND -A --watch --output-watch-events -o json`` prints them.

kubectl prints each event as one pretty-printed JSON document (Go's
``json.MarshalIndent`` with four spaces, a newline after each), one after the
other with nothing in between::

    {
        "type": "ADDED",
        "object": {
            "apiVersion": "v1",
            "kind": "Service",
            ...
        }
    }

The objects of the initial list come first, each as its own ``ADDED`` event
(kubectl never prints a ``List`` in this mode); then ``ADDED``, ``MODIFIED``,
``DELETED``, ``BOOKMARK`` (only ``metadata.resourceVersion`` is meaningful) and
``ERROR`` (the object is a ``Status``, e.g. code 410 reason ``Expired`` when the
watch fell too far behind). The API server's own watch response (``kubectl get
--raw '...?watch=1'``) is the same stream written compactly, one event per line,
and is read by the same decoder.

:class:`JSONStreamDecoder` splits a byte stream into JSON values as the bytes
arrive (a value may be cut anywhere between two reads); :func:`watch_event`
checks one value is an event; :func:`format_event` writes one exactly as kubectl
does (used by the tests and the benchmark to record streams).
"""
from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import orjson

from ..errors import escape_text

EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")
#: the most bytes one JSON value may take before the stream is refused (a huge object is a broken stream)
MAX_VALUE_BYTES = 64 << 20

_STRUCTURAL = re.compile(r'[{}\[\]"\\]')
_NON_SPACE = re.compile(r"\S")


class StreamError(Exception):
    """The stream cannot be read further: one line naming where and why. ``values``: those the
    same :meth:`JSONStreamDecoder.feed` completed before the error."""

    values: list = []


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One event of a watch stream: its type, the object, and where it was read (for messages)."""

    type: str
    obj: dict
    source: str  # the stream's name: its path, "<stdin>", "kubectl services"
    index: int  # 1-based position in the stream

    @property
    def where(self) -> str:
        """``SOURCE: event N``, for messages."""
        return f"{self.source}: event {self.index}"


class JSONStreamDecoder:
    """Splits concatenated JSON values (any whitespace between them) fed in arbitrary pieces.

    :meth:`feed` returns every value completed by the new bytes, in order;
    :meth:`finish` says whether anything but whitespace was left at the end.
    A value that is not valid JSON raises :class:`StreamError` naming its line.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self._utf8 = codecs.getincrementaldecoder("utf-8-sig")()
        self._buf = ""  # text not yet returned as values (from _start on)
        self._start = 0  # where the value being read (or the whitespace before it) starts in _buf
        self._scanned = 0  # how much of _buf the scanner has looked at
        self._depth = 0
        self._in_string = False
        self._skip_next = False  # the last character scanned was a backslash inside a string
        self._line = 1  # line of the stream at _start

    def feed(self, data: bytes) -> list[Any]:
        """The JSON values completed by ``data``."""
        try:
            text = self._utf8.decode(data)
        except UnicodeDecodeError as err:
            raise StreamError(f"{self.source}: line {self._line}: not UTF-8 text ({err.reason})") from None
        if self._start:  # drop what was returned already (once per feed: no quadratic copying)
            self._buf = self._buf[self._start:]
            self._scanned -= self._start
            self._start = 0
        self._buf += text
        values: list[Any] = []
        try:
            while True:
                if self._at_boundary() and self._fast(values):
                    continue
                end = self._scan()
                if end is None:
                    break
                values.append(self._decode(end))
        except StreamError as err:
            err.values = values
            raise
        if len(self._buf) - self._start > MAX_VALUE_BYTES:
            raise StreamError(f"{self.source}: line {self._line}: a JSON value longer than {MAX_VALUE_BYTES} bytes")
        return values

    def finish(self) -> None:
        """End of the stream: raise StreamError if a value was cut off or garbage is left."""
        if self._buf[self._start:].strip():
            raise StreamError(f"{self.source}: line {self._line}: the stream ends inside a JSON value")

    def _at_boundary(self) -> bool:
        return self._depth == 0 and not self._in_string and self._scanned == self._start

    def _fast(self, values: list) -> bool:
        """Append the next value to ``values`` if it is found the fast way; False when the scanner
        must look (the value is not complete yet, or not laid out as expected). kubectl's documents
        end with a line that is only ``}`` (nested closing braces are indented), the API server's
        compact events with the end of their line; a candidate orjson refuses goes to the scanner."""
        buf = self._buf
        m = _NON_SPACE.search(buf, self._start)
        if m is None or buf[m.start()] != "{":
            return False
        first = m.start()
        newline = buf.find("\n", first)
        if newline == -1:
            return False
        if buf[newline - 1] == "}" and newline - 1 > first:
            end = newline  # one compact value on the line
        else:
            close = buf.find("\n}", newline - 1)
            if close == -1:
                return False
            end = close + 2
        try:
            value = orjson.loads(buf[first:end])
        except orjson.JSONDecodeError:
            return False
        values.append(value)
        self._line += buf.count("\n", self._start, end)
        self._start = self._scanned = end
        return True

    def _scan(self) -> Optional[int]:
        """The end (exclusive) of the next complete top-level value in _buf, or None (the
        scanner's state is kept, so that the next feed scans only the new text)."""
        buf = self._buf
        pos = self._scanned
        if self._depth == 0 and not self._in_string:
            m = _NON_SPACE.search(buf, pos)
            if m is None:
                self._scanned = len(buf)
                return None
            first = m.start()
            if buf[first] not in "{[":
                line = self._line + buf.count("\n", self._start, first)
                raise StreamError(f"{self.source}: line {line}: expected a JSON object, "
                                  f"found {escape_text(repr(buf[first]))}")
        skip_at = pos if self._skip_next else -1  # an escaped character (after a backslash)
        self._skip_next = False
        for m in _STRUCTURAL.finditer(buf, pos):
            i = m.start()
            if i == skip_at:
                continue
            char = m.group()
            if self._in_string:
                if char == "\\":
                    skip_at = i + 1
                    if skip_at == len(buf):
                        self._skip_next = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    return i + 1
        self._scanned = len(buf)
        return None

    def _decode(self, end: int) -> Any:
        """Decode _buf[_start:end] and move past it."""
        text = self._buf[self._start:end]
        self._start = self._scanned = end
        line = self._line
        self._line += text.count("\n")
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise StreamError(f"{self.source}: line {line + err.lineno - 1}: cannot parse JSON: {err.msg}") from None
        except (ValueError, RecursionError) as err:
            raise StreamError(f"{self.source}: line {line}: cannot parse JSON: {escape_text(str(err))[:200]}") from None


def is_watch_event(value: Any) -> bool:
    """Whether a decoded value has the shape of a watch event (``type`` and ``object``, no ``kind``)."""
    return isinstance(value, dict) and "type" in value and "object" in value and "kind" not in value


def watch_event(value: Any, source: str, index: int) -> WatchEvent:
    """The event ``value`` is (the ``index``-th of ``source``); StreamError if it is not one."""
    where = f"{source}: event {index}"
    if not is_watch_event(value):
        raise StreamError(f"{where}: not a watch event (an object with \"type\" and \"object\")")
    kind, obj = value["type"], value["object"]
    if kind not in EVENT_TYPES:
        shown = escape_text(str(kind))[:80]
        raise StreamError(f"{where}: type: Unsupported value: {shown!r}: supported values: "
                          + ", ".join(f'"{t}"' for t in EVENT_TYPES))
    if not isinstance(obj, dict):
        raise StreamError(f"{where}: object: must be a mapping")
    return WatchEvent(kind, obj, source, index)


def status_text(status: Mapping[str, Any]) -> str:
    """An ERROR event's Status in one line: ``410 Expired: too old resource version: 1 (5)``."""
    parts = [str(status.get("code", "")), str(status.get("reason", "")), str(status.get("message", ""))]
    head = " ".join(p for p in parts[:2] if p)
    text = f"{head}: {parts[2]}" if parts[2] else head
    return escape_text(text)[:300] or "no details"


def _sorted(value: Any) -> Any:
    """``value`` with every mapping's keys in sorted order (Go marshals maps so)."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def format_event(event_type: str, obj: Mapping[str, Any]) -> str:
    """One event exactly as ``kubectl get --watch --output-watch-events -o json`` prints it: the
    WatchEvent struct's fields in order (``type``, ``object``), the object's keys sorted, four-space
    indentation, a newline after the closing brace."""
    return json.dumps({"type": event_type, "object": _sorted(dict(obj))}, indent=4, ensure_ascii=False) + "\n"


def gone_status(message: str = "too old resource version") -> dict:
    """The Status the API server sends in an ERROR event when a watch's resourceVersion expired (410)."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": "Expired", "code": 410}
