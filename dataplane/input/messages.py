"""How input values are shown in messages: the API server's field-error notation, cut to a readable length.

Shared by the file reader (:mod:`.loader`), the YAML reader (:mod:`.goyaml`) and
the validators (:mod:`.validation`), so that every message shows values alike.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Sequence

_MAX_SHOWN = 120


def format_value(value: Any) -> str:
    """Show a (bad) value the way the API server's field errors do, in at most about 120 characters.

    Strings are double-quoted, numbers and booleans bare, null as ``null``, a
    list of strings as Go prints one (``[]string{"a", "b"}``), anything else as
    compact JSON. Only as much of the value is looked at as is shown, so a
    huge value (an alias bomb, a megabyte string) costs no more than a small one.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return _int_text(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return _bounded(value, _write_strings)
    if not isinstance(value, (list, tuple, dict)):
        return quote(str(value))
    return _bounded(value, _write_json)


def quote(text: str) -> str:
    """Double-quote ``text`` with escapes, like Go's ``%q``; a long text is cut, ending in ``...``."""
    if len(text) <= _MAX_SHOWN:
        return json.dumps(text, ensure_ascii=False)
    return _shorten(json.dumps(text[:_MAX_SHOWN], ensure_ascii=False))


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _int_text(value: int) -> str:
    try:
        return str(value)
    except ValueError:  # beyond Python's digit limit for decimal text
        return f"<a {value.bit_length()}-bit integer>"


class _Enough(Exception):
    """What is written already fills the text to show."""


class _Loop(Exception):
    """The value contains itself."""


_Emit = Callable[[str], None]


def _bounded(value: Any, write: Callable[[Any, _Emit, set[int]], None]) -> str:
    """``write(value, emit, set())`` into a text, stopped once it is longer than _MAX_SHOWN and cut."""
    parts: list[str] = []
    length = 0

    def emit(text: str) -> None:
        nonlocal length
        parts.append(text)
        length += len(text)
        if length > _MAX_SHOWN:
            raise _Enough

    try:
        write(value, emit, set())
    except _Enough:
        pass
    except _Loop:
        return f"<{type(value).__name__}>"
    return _shorten("".join(parts))


def _write_strings(items: Sequence[str], emit: _Emit, _path: set[int]) -> None:
    """Go's ``[]string{"a", "b"}``."""
    emit("[]string{")
    for n, item in enumerate(items):
        emit(", " + quote(item) if n else quote(item))
    emit("}")


def _write_json(value: Any, emit: _Emit, path: set[int]) -> None:
    """Compact JSON as ``json.dumps(value, ensure_ascii=False, default=str)`` writes it; _Loop if
    ``value`` contains itself (``path``: the containers being written)."""
    if isinstance(value, (dict, list, tuple)):
        if id(value) in path:
            raise _Loop
        path.add(id(value))
        if isinstance(value, dict):
            emit("{")
            for n, (key, item) in enumerate(value.items()):
                emit(", " if n else "")
                emit(quote(key if isinstance(key, str) else _json_key_text(key)) + ": ")
                _write_json(item, emit, path)
            emit("}")
        else:
            emit("[")
            for n, item in enumerate(value):
                emit(", " if n else "")
                _write_json(item, emit, path)
            emit("]")
        path.discard(id(value))
    elif isinstance(value, str):
        emit(quote(value))
    elif value is None or isinstance(value, (bool, float)):
        emit(json.dumps(value))
    elif isinstance(value, int):
        emit(_int_text(value))
    else:
        emit(quote(str(value)))


def _json_key_text(key: Any) -> str:
    """What ``json.dumps`` makes of a key that is not a string."""
    if key is None or isinstance(key, (bool, float)):
        return json.dumps(key)
    if isinstance(key, int):
        return _int_text(key)
    return str(key)
