"""Objects out as YAML or JSON, fast, in the bytes PyYAML's SafeDumper and ``json.dumps`` write.

``dataplane allocate`` and ``dataplane endpoints`` print every object they
output the way ``yaml.dump_all(objects, Dumper=<SafeDumper that never writes
aliases>, sort_keys=False, default_flow_style=False)`` does, or for ``--format
json`` the way ``json.dumps(..., indent=2)`` does (one object as itself, several
as a ``kind: List``). Both reference writers are pure Python (a 10k-Service
cluster took longer to print than to compile); this module writes the same text
much faster:

* YAML: documents made of mappings, sequences, ``None``, bools, numbers and
  strings are written by :func:`_emit_document`, a block-style writer that
  reproduces the emitter's choices. Each distinct string is classified once:
  names, IPs and UIDs (letters, digits and ``._/-``) by the implicit resolvers'
  own patterns alone, anything else by PyYAML's ``Emitter.analyze_scalar`` and
  ``Resolver`` (plain when the emitter would leave it plain, single-quoted when
  it would quote it so); a
  document holding anything else (a string that needs double quotes, spans
  lines or may be folded at the 80-column width, a non-string or empty or long
  key, other types) is written by PyYAML itself: libyaml's ``CSafeDumper``,
  except for the few constructs where libyaml's text differs from the pure
  emitter's (double-quoted strings, which it folds differently, and empty
  keys), which keep the pure ``SafeDumper``. Without libyaml
  (``yaml.__with_libyaml__`` False) the pure dumper writes those documents.
* JSON: ``orjson`` with ``OPT_INDENT_2`` writes what ``json.dumps(indent=2)``
  writes for these objects; non-ASCII characters are then escaped as
  ``json.dumps`` escapes them (``ensure_ascii``). Objects orjson cannot write
  or writes differently (integers beyond 64 bits, non-string keys, floats other
  than NaN and infinities, whose spelling differs) are written by ``json.dumps``.
  One deliberate difference: a NaN or infinite float (only a YAML input's
  ``.nan``/``.inf`` can hold one) is written ``null``, as JSON has no such
  numbers, where ``json.dumps`` wrote the invalid ``NaN``/``Infinity``.
"""
from __future__ import annotations

import io
import json
import math
import re
from functools import lru_cache
from typing import Any, Callable, Optional, Sequence

import orjson
import yaml
from yaml.emitter import Emitter
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

__all__ = ["dump_objects", "dump_yaml", "dump_json", "no_alias_dumper", "splittable", "dump_part", "join_parts"]

_WIDTH = 80  # the emitter's best_width
# check_simple_key: a key is simple while its length plus its prepared tag ("!!str", 5) stays
# under 128; a longer key is written as "? key"
_MAX_SIMPLE_KEY = 128 - len("!!str")
_STR_TAG = "tag:yaml.org,2002:str"
# Names, IPs, UIDs, paths: starts with a letter or digit, then only letters, digits and . _ / -
_SIMPLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*\Z").match


def dump_objects(objects: Sequence[Any], fmt: str) -> str:
    """``objects`` as the CLI prints them: ``fmt`` ``"json"`` (one object as itself, several as a
    ``kind: List``) or ``"yaml"`` (one document each)."""
    if fmt == "json":
        if len(objects) == 1:
            return dump_json(objects[0])
        return dump_json({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    return dump_yaml(objects)


def splittable(objects: Sequence[Any], fmt: str) -> bool:
    """Whether :func:`dump_objects` of ``objects`` can be written in parts (:func:`dump_part`,
    :func:`join_parts`): at least two objects, each a mapping or sequence (a scalar document
    changes the whole YAML stream; one object is written as itself in JSON, not in a List)."""
    return len(objects) >= 2 and all(type(obj) is dict or type(obj) is list for obj in objects)


def dump_part(objects: Sequence[Any], fmt: str, *, first: bool) -> str:
    """The text of a contiguous, non-empty run of the objects :func:`dump_objects` writes, for
    :func:`join_parts`; ``first``: the run starts the output. For :func:`splittable` objects,
    ``join_parts([dump_part(objects[a:b], fmt, first=a == 0) for a, b in runs], fmt)`` equals
    ``dump_objects(objects, fmt)`` for any cut of ``objects`` into runs, in order; parts may be
    written by different processes."""
    if not objects:
        raise ValueError("dump_part needs at least one object")
    if fmt == "json":
        # json.dumps writes a list's items one level deeper than a List's items: two spaces more,
        # on every line (JSON strings hold no line break)
        text = dump_json(list(objects))
        return "    " + text[len("[\n  "):-len("\n]\n")].replace("\n", "\n  ")
    return _yaml_documents(objects, _Styles(), first)


_LIST_HEAD = '{\n  "apiVersion": "v1",\n  "kind": "List",\n  "items": [\n'
_LIST_TAIL = "\n  ]\n}\n"


def join_parts(parts: Sequence[str], fmt: str) -> str:
    """The output of :func:`dump_objects` from the :func:`dump_part` texts of its runs, in order."""
    if fmt == "json":
        return _LIST_HEAD + ",\n".join(parts) + _LIST_TAIL
    return "".join(parts)


# ------------------------------------------------------------------------ JSON


_NON_ASCII = re.compile(r"[^\x00-\x7e]")  # json.dumps escapes DEL too


def _ascii_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}"


def _has_finite_float(obj: Any) -> bool:
    """True if ``obj`` holds a finite float anywhere (orjson spells those unlike ``json.dumps``)."""
    stack = [obj]
    pop, push = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is dict:
            push(item.values())
        elif kind is list or kind is tuple:
            push(item)
        elif kind is float and math.isfinite(item):
            return True
    return False


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None, as orjson writes them."""
    kind = type(obj)
    if kind is dict:
        return {key: _finite(value) for key, value in obj.items()}
    if kind is list or kind is tuple:
        return [_finite(value) for value in obj]
    if kind is float and not math.isfinite(obj):
        return None
    return obj


def dump_json(obj: Any) -> str:
    """``json.dumps(obj, indent=2) + "\\n"``, written by orjson (see the module doc for the one difference)."""
    try:
        raw = orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(_finite(obj), indent=2) + "\n"
    if _has_finite_float(obj):  # a walk in Python: cheaper than any search of the text
        return json.dumps(_finite(obj), indent=2) + "\n"
    text = raw.decode()
    return text if text.isascii() and "\x7f" not in text else _NON_ASCII.sub(_ascii_escape, text)


# ------------------------------------------------------------------------ YAML


def no_alias_dumper(c: bool = True) -> type:
    """PyYAML's SafeDumper (libyaml's ``CSafeDumper`` with ``c`` when available) writing a value met
    twice in full each time, never as an anchor (``&id001``) and alias: output objects share values
    (the input's own YAML aliases among them), and every object printed must stand on its own, as
    kubectl prints it."""
    return _dumpers()[1 if c and yaml.__with_libyaml__ else 0]


@lru_cache(maxsize=None)
def _dumpers() -> tuple[type, type]:
    class NoAliasDumper(yaml.SafeDumper):
        def ignore_aliases(self, data: object) -> bool:
            return True

    if not yaml.__with_libyaml__:
        return NoAliasDumper, NoAliasDumper

    class CNoAliasDumper(yaml.CSafeDumper):
        def ignore_aliases(self, data: object) -> bool:
            return True

    return NoAliasDumper, CNoAliasDumper


def _pyyaml_dump(objects: Sequence[Any], c: bool) -> str:
    return yaml.dump_all(objects, Dumper=no_alias_dumper(c), sort_keys=False, default_flow_style=False)


class _Hard(Exception):
    """A document the fast writer leaves to PyYAML."""


class _Styles:
    """How the emitter writes one string: analysed once per distinct string (PyYAML's own analysis)."""

    def __init__(self) -> None:
        self._emitter = Emitter(io.StringIO())
        self._resolve: Callable[..., str] = Resolver().resolve
        # Per first character, the implicit resolvers' patterns as one: a string any of them matches
        # resolves to another type than str (Resolver.resolve; there is no resolver for every
        # first character, only '' resolves without one, to null).
        self._implicit = {
            first: re.compile("|".join(f"(?{'x' if regexp.flags & re.X else ''}:{regexp.pattern})"
                                       for _, regexp in resolvers)).match
            for first, resolvers in Resolver.yaml_implicit_resolvers.items() if first is not None
        }
        self.values: dict[str, Optional[str]] = {}  # text -> as written as a value (None: not fast)
        # text without a space (never folded) -> " " + as written + "\n", the rest of its line after
        # "key:" or "-"; only strings the fast writer writes
        self.lines: dict[str, str] = {}
        self.heads: dict[tuple, tuple[str, ...]] = {}  # see mapping_heads
        self.keys: dict[str, Optional[str]] = {}  # text -> as written as a simple key + ":" (None: not fast)

    def style(self, text: str, key: bool) -> str:
        """``''`` (plain), ``"'"`` or ``'"'``: ``Emitter.choose_scalar_style`` for a str scalar."""
        analysis = self._emitter.analyze_scalar(text)
        implicit = self._resolve(ScalarNode, text, (True, False)) == _STR_TAG
        if implicit and not (key and (analysis.empty or analysis.multiline)) and analysis.allow_block_plain:
            return ""
        if analysis.allow_single_quoted and not (key and analysis.multiline):
            return "'"
        return '"'

    def _render(self, text: str, key: bool) -> Optional[str]:
        if _SIMPLE(text):
            # No indicator, space or special character: analyze_scalar allows plain and single
            # quotes; plain unless an implicit resolver (consulted by the first character) makes
            # it something else than a string ("true", "10", "2024-01-01", "null").
            implicit = self._implicit.get(text[0])
            if implicit is None or implicit(text) is None:
                return text
            return "'" + text + "'"
        if not text.isascii() or not text.isprintable():  # line breaks, tabs, unicode: double quotes
            return None
        style = self.style(text, key)
        if style == "":
            return text
        if style == "'":
            return "'" + text.replace("'", "''") + "'"
        return None

    def value(self, text: str) -> Optional[str]:
        """The text of a string value as the emitter writes it unfolded (None: leave it to PyYAML)."""
        try:
            return self.values[text]
        except KeyError:
            out = self.values[text] = self._render(text, False)
            return out

    def mapping_heads(self, shape: tuple) -> tuple[str, ...]:
        """For a mapping's ``(first, indent, *keys)``: the start of each key's line (``first`` or the
        indentation, then the key and ``:``), then the indentation; _Hard if a key is not a simple
        string key the fast writer writes. Cached in :attr:`heads`."""
        first, indent, *keys = shape
        pad = " " * indent
        heads = []
        for key in keys:
            text = self.key(key) if type(key) is str else None
            if text is None:
                raise _Hard
            heads.append((first if not heads else pad) + text)
        out = self.heads[shape] = (*heads, pad)
        return out

    def line(self, text: str, column: int) -> str:
        """`` value\\n``: the rest of a line whose string value starts after a space at ``column``
        (after ``key:`` or ``-``); _Hard if the value is not written fast, or may be folded there."""
        if _SIMPLE(text):  # (most strings, and most are met once: _render's first case, inline)
            implicit = self._implicit.get(text[0])
            line = self.lines[text] = (" " + text + "\n" if implicit is None or implicit(text) is None
                                       else " '" + text + "'\n")
            return line
        value = self.value(text)
        if value is None:
            raise _Hard
        if " " in text:
            if column + 1 + len(value) > _WIDTH:  # the emitter may fold it
                raise _Hard
            return " " + value + "\n"
        line = self.lines[text] = " " + value + "\n"
        return line

    def key(self, text: str) -> Optional[str]:
        """A simple mapping key as the emitter writes it, with its ``:`` (None: leave it to PyYAML)."""
        try:
            return self.keys[text]
        except KeyError:
            out = None if (not text or len(text) >= _MAX_SIMPLE_KEY) else self._render(text, True)
            out = self.keys[text] = None if out is None else out + ":"
            return out


def _float_text(value: float) -> str:
    """SafeRepresenter.represent_float."""
    if value != value:
        return ".nan"
    if value == math.inf:
        return ".inf"
    if value == -math.inf:
        return "-.inf"
    text = repr(value).lower()
    if "." not in text and "e" in text:
        text = text.replace("e", ".0e", 1)
    return text


def _scalar(value: Any, column: int, styles: _Styles) -> str:
    """A scalar value written at ``column`` (after ``key: `` or ``- ``); _Hard if not fast."""
    kind = type(value)
    if kind is str:
        text = styles.value(value)
        if text is None or (column + len(text) > _WIDTH and " " in value):  # the emitter may fold it
            raise _Hard
        return text
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        return _float_text(value)
    raise _Hard


def _mapping(obj: dict, indent: int, first: str, out: list[str], styles: _Styles) -> None:
    """A non-empty block mapping at ``indent``; ``first`` precedes its first key (``- `` in a sequence)."""
    shape = (first, indent, *obj)
    heads = styles.heads.get(shape) or styles.mapping_heads(shape)
    pad = heads[-1]  # (the last entry: the indentation of the mapping's keys)
    append = out.append
    lines = styles.lines
    for head, value in zip(heads, obj.values()):
        kind = type(value)
        if kind is str:
            append(head + (lines.get(value) or styles.line(value, len(head))))
        elif kind is dict:
            if value:
                append(head + "\n")
                _mapping(value, indent + 2, pad + "  ", out, styles)
            else:
                append(head + " {}\n")
        elif kind is list:
            if value:
                append(head + "\n")
                _sequence(value, indent, pad, out, styles)  # indentless, as the emitter writes it
            else:
                append(head + " []\n")
        elif value is True:
            append(head + " true\n")
        elif value is False:
            append(head + " false\n")
        else:
            append(head + " " + _scalar(value, len(head) + 1, styles) + "\n")


def _sequence(items: list, indent: int, first: str, out: list[str], styles: _Styles) -> None:
    """A non-empty block sequence whose ``- `` sit at ``indent``; ``first`` precedes the first one."""
    pad = " " * indent
    prefix = first
    append = out.append
    lines = styles.lines
    for item in items:
        kind = type(item)
        if kind is str:  # "- " + the item: the line a mapping writes after "key:", behind a "-"
            append(prefix + "-" + (lines.get(item) or styles.line(item, len(prefix) + 1)))
        elif kind is dict:
            if item:
                _mapping(item, indent + 2, prefix + "- ", out, styles)
            else:
                append(prefix + "- {}\n")
        elif kind is list:
            if item:
                _sequence(item, indent + 2, prefix + "- ", out, styles)
            else:
                append(prefix + "- []\n")
        else:
            append(prefix + "- " + _scalar(item, len(prefix) + 2, styles) + "\n")
        prefix = pad


def _emit_document(obj: Any, styles: _Styles) -> Optional[str]:
    """One document as ``dump_all`` writes it first in a stream; None if it is left to PyYAML."""
    kind = type(obj)
    out: list[str] = []
    try:
        if kind is dict and obj:
            _mapping(obj, 0, "", out, styles)
        elif kind is list and obj:
            _sequence(obj, 0, "", out, styles)
        else:
            return None
    except (_Hard, RecursionError):
        return None
    return "".join(out)


def _c_safe(obj: Any, styles: _Styles) -> bool:
    """True if libyaml writes ``obj`` exactly as the pure emitter does: no string needing double
    quotes (libyaml folds those differently), no empty key and no key long enough to be written
    "? key" (libyaml's limit differs); mappings and sequences at the root."""
    if type(obj) not in (dict, list):
        return False
    stack = [obj]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            for key, value in item.items():
                if type(key) is str and (not key or len(key) >= _MAX_SIMPLE_KEY or styles.style(key, True) == '"'):
                    return False
                stack.append(value)
        elif kind is list:
            stack.extend(item)
        elif kind is str and styles.style(item, False) == '"':
            return False
    return True


def dump_yaml(objects: Sequence[Any]) -> str:
    """``yaml.dump_all(objects, Dumper=no_alias_dumper(False), sort_keys=False,
    default_flow_style=False)``, written fast (see the module doc)."""
    if not objects:
        return _pyyaml_dump(objects, c=False)
    if any(type(obj) not in (dict, list) for obj in objects):
        # A scalar document makes the stream open-ended ("..."): leave the whole stream to PyYAML.
        return _pyyaml_dump(objects, c=False)
    return _yaml_documents(objects, _Styles(), True)


def _yaml_documents(objects: Sequence[Any], styles: _Styles, first: bool) -> str:
    """Mapping or sequence documents as ``dump_all`` writes them in a stream, from its first
    document (``first``) or from a later one (each then starts with ``---``)."""
    parts: list[str] = []
    append = parts.append
    for obj in objects:
        text = _emit_document(obj, styles)
        if text is None:
            if not obj:  # {} or []: a flow collection, on the document start line after the first
                text = "{}\n" if type(obj) is dict else "[]\n"
            else:
                text = _pyyaml_dump([obj], c=_c_safe(obj, styles))
        if first:
            first = False
        else:
            append("--- " if not obj else "---\n")
        append(text)
    return "".join(parts)
