"""Errors the library raises for bad input, with precise locations.

Every problem names the file, the document's position, the object and the
field path, in the API server's words where there are some, e.g.::

    svc.yaml: document 2: Service default/web: spec.ports[1].nodePort: Invalid value: 70000: must be between 1 and 65535, inclusive
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

MAX_REPORTED = 20
"""How many problems, and how many warnings, :func:`report_lines` shows by default before
one "... and N more" line; change it to show more (0 or less: all)."""

MAX_LINE = 1000
"""The longest line :func:`report_lines` shows; a longer one is cut, ending in "..."."""

_MAX_PART = 300  # the longest object or field a Problem shows


def escape_text(text: str) -> str:
    """``text`` with every character that is not printable written as Python's ``repr`` writes it.

    A newline, a carriage return, an ANSI escape (``\\x1b[...``), a bidi
    override... taken from the input cannot then start a forged line or colour
    a terminal: ``"a\\nb"`` is shown as ``a\\nb``. Backslashes are left as they are.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the input."""

    source: str  # file name, or "<stdin>"
    index: int  # 1-based document position; 0 when not about one document
    obj: str  # "Kind namespace/name", or "" when unknown
    field: str  # field path such as "spec.ports[1].nodePort", or ""
    message: str
    #: What ``index`` counts, shown before it: "object" for objects given as dicts, and for an
    #: item of a ``kind: List`` "item N of the List in document" (the index is the List's document).
    unit: str = "document"

    def __str__(self) -> str:
        """One line: ``source: document N: object: field: message`` (``object N`` for objects
        given as dicts, ``item N of the List in document M`` for List items), the object and field cut to a readable length and characters that are
        not printable escaped (:func:`escape_text`)."""
        parts = [self.source]
        if self.index:
            parts.append(f"{self.unit} {self.index}")
        if self.obj:
            parts.append(_clip(self.obj, _MAX_PART))
        if self.field:
            parts.append(_clip(self.field, _MAX_PART))
        parts.append(self.message)
        return escape_text(": ".join(parts))


def report_lines(items: Sequence[object], noun: str, limit: Optional[int] = None) -> list[str]:
    """The lines that show ``items`` (problems, warnings): each ``str(item)``, escaped and cut at
    MAX_LINE characters, at most ``limit`` of them (MAX_REPORTED when None; 0 or less: all), then
    ``... and N more {noun}s`` for the rest."""
    if limit is None:
        limit = MAX_REPORTED
    shown = items if limit <= 0 else items[:limit]
    lines = [_clip(escape_text(str(item)), MAX_LINE) for item in shown]
    rest = len(items) - len(shown)
    if rest > 0:
        lines.append(f"... and {rest} more {noun}{'' if rest == 1 else 's'}")
    return lines


class DataplaneError(Exception):
    """Base class of every error this library raises on purpose."""


class InputError(DataplaneError):
    """The input manifests are invalid; ``problems`` lists every problem found.

    Its text shows them as :func:`report_lines` does: at most MAX_REPORTED.
    """

    def __init__(self, problems: Iterable[Problem]):
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(report_lines(self.problems, "problem")))


class UsageError(DataplaneError):
    """The request cannot be served (unknown node, unsupported option...)."""


class ApplyError(DataplaneError):
    """Rules could not be applied; the namespace was left as it was."""

    def __init__(self, message: str, *, stderr: Optional[str] = None):
        self.stderr = stderr
        super().__init__(message)


class LabError(DataplaneError):
    """A lab cannot be built from the input, or a lab operation failed."""
