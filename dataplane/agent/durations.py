"""Durations as kube-proxy's flags take them (Go's ``time.ParseDuration``), plus bare seconds."""
from __future__ import annotations

import re

from ..errors import UsageError

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_duration(text: str, *, flag: str = "duration") -> float:
    """Seconds in ``text``: a Go duration (``1s``, ``500ms``, ``1m30s``, ``1.5h``) or a plain
    number of seconds (``30``). Negative or malformed values raise :class:`UsageError` naming ``flag``."""
    value = text.strip()
    if _NUMBER.fullmatch(value):
        return float(value)
    if value == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(value):
        m = _PART.match(value, pos)
        if m is None:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(value) or not value:
        raise UsageError(f"{flag}: invalid duration {text!r}: use a number of seconds or a Go duration "
                         "such as 500ms, 1s, 1m30s")
    return total
