"""Errors the library raises for bad input, with precise locations.

Every problem names the file, the document's position, the object and the
field path, in the API server's words where there are some, e.g.::

    svc.yaml: document 2: Service default/web: spec.ports[1].nodePort: Invalid value: 70000: must be between 1 and 65535, inclusive
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the input."""

    source: str  # file name, or "<stdin>"
    index: int  # 1-based document position; 0 when not about one document
    obj: str  # "Kind namespace/name", or "" when unknown
    field: str  # field path such as "spec.ports[1].nodePort", or ""
    message: str

    def __str__(self) -> str:
        parts = [self.source]
        if self.index:
            parts.append(f"document {self.index}")
        if self.obj:
            parts.append(self.obj)
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


class DataplaneError(Exception):
    """Base class of every error this library raises on purpose."""


class InputError(DataplaneError):
    """The input manifests are invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(DataplaneError):
    """The request cannot be served (unknown node, unsupported option...)."""


class ApplyError(DataplaneError):
    """Rules could not be applied; the namespace was left as it was."""

    def __init__(self, message: str, *, stderr: Optional[str] = None):
        self.stderr = stderr
        super().__init__(message)
