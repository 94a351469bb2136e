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
  reproduces the emitter's choices: a mapping by a writer generated for its
  shape (where it starts, its keys in order) once the shape is met a second
  time, one straight run of code per key (:class:`_Writers`). Each distinct
  string is classified once: names, IPs and UIDs (letters, digits and
  ``._/-``) by the implicit resolvers' own patterns alone (not even those when
  the string is longer, or holds more ``-`` or ``.``, than anything they match:
  :func:`_most`), anything else by PyYAML's ``Emitter.analyze_scalar`` and
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
  than NaN and infinities, whose spelling differs) are written by ``json.dumps``;
  the floats are found by a walk in C (:func:`_has_finite_float`).
  One deliberate difference: a NaN or infinite float (only a YAML input's
  ``.nan``/``.inf`` can hold one) is written ``null``, as JSON has no such
  numbers, where ``json.dumps`` wrote the invalid ``NaN``/``Infinity``.
"""
from __future__ import annotations

import gc
import io
import json
import math
import re
from functools import lru_cache
from itertools import islice
from typing import Any, Callable, Optional, Sequence

import orjson
import yaml
from yaml.emitter import Emitter
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

try:  # re's own pattern parser (private; 3.11+), read by _bound: without it nothing is bounded
    from re import _constants as _sre, _parser as _sre_parser
except ImportError:  # pragma: no cover (another Python's re)
    _sre = _sre_parser = None  # type: ignore[assignment]

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


# The exact types _has_finite_float descends into: of these, and of str, int, bool, None and float,
# gc.get_referents gives exactly the values, the items (and a dict's keys if they are not all
# str, which orjson refuses) or nothing (no tp_traverse), tracked by the collector or not, enabled
# or not
_CONTAINERS = frozenset((dict, list, tuple))
_PLAIN = _CONTAINERS | frozenset((str, int, bool, type(None), float))


def _has_finite_float(obj: Any) -> bool:
    """True if ``obj`` holds a finite float anywhere in its dicts, lists and tuples (orjson spells
    those unlike ``json.dumps``; other objects, which orjson writes its own way, are not looked
    into).

    A walk level by level, in C: the types of a level's values at once, then all their values
    (``gc.get_referents``); a Python loop only over the floats, or a level with other types."""
    level = [obj]
    while level:
        kinds = set(map(type, level))
        if float in kinds and any(map(math.isfinite, [item for item in level if type(item) is float])):
            return True
        if kinds.isdisjoint(_CONTAINERS):
            return False
        if not kinds <= _PLAIN:  # (their referents are not their values)
            level = [item for item in level if type(item) in _CONTAINERS]
        level = gc.get_referents(*level)
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
    if _has_finite_float(obj):  # a walk in C: cheaper than any search of the text
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


@lru_cache(maxsize=4)
def _resolver_bounds(resolvers: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]) -> dict:
    """For the implicit resolvers' patterns by first character (``Resolver.yaml_implicit_resolvers``
    but None's), per first character: the most characters, "-" and "." a string they match can
    hold (a longer string, or one with more, is a string: no need to run the patterns), then their
    match as one (a string any of them matches resolves to another type than str:
    Resolver.resolve; there is no resolver for every first character, only '' resolves without
    one, to null). Worked out once a process (parsing the patterns: ms)."""
    return {first: (*(max(_bound(pattern, flags, char) for pattern, flags in patterns) for char in (None, "-", ".")),
                    re.compile("|".join(f"(?{'x' if flags & re.X else ''}:{pattern})"
                                        for pattern, flags in patterns)).match)
            for first, patterns in resolvers}


class _Lines(dict):
    """str -> `` value\\n``, the rest of the line after ``key:`` or ``-`` where the string is written
    as a value, for strings without a space (never folded, so the same at every column); ``""``
    for a string with a space (:meth:`_Styles.line` writes it for its column); _Hard for a string
    the fast writer leaves to PyYAML. Filled as strings are met (``lines[text]`` is all a writer
    asks: no call when the string was met before)."""

    def __init__(self, styles: "_Styles") -> None:
        super().__init__()
        self._styles = styles

    def __missing__(self, text: str) -> str:
        styles = self._styles
        if _SIMPLE(text):  # (most strings, and most are met once: _render's first case and _Styles.plain, inline)
            bounds = styles._bounds.get(text[0])
            if (bounds is None or len(text) > bounds[0] or text.count("-") > bounds[1]
                    or text.count(".") > bounds[2] or bounds[3](text) is None):
                line = self[text] = f" {text}\n"
            else:
                line = self[text] = f" '{text}'\n"
            return line
        value = styles.value(text)
        if value is None:
            raise _Hard
        if " " in text:
            return ""
        line = self[text] = f" {value}\n"
        return line


class _Styles:
    """How the emitter writes one string: analysed once per distinct string (PyYAML's own analysis)."""

    def __init__(self) -> None:
        self._emitter = Emitter(io.StringIO())
        self._resolve: Callable[..., str] = Resolver().resolve
        self._bounds = _resolver_bounds(tuple(
            (first, tuple((regexp.pattern, regexp.flags) for _, regexp in resolvers))
            for first, resolvers in Resolver.yaml_implicit_resolvers.items() if first is not None))
        self.values: dict[str, Optional[str]] = {}  # text -> as written as a value (None: not fast)
        self.lines = _Lines(self)  # see _Lines
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
            return text if self.plain(text) else "'" + text + "'"
        if not text.isascii() or not text.isprintable():  # line breaks, tabs, unicode: double quotes
            return None
        style = self.style(text, key)
        if style == "":
            return text
        if style == "'":
            return "'" + text.replace("'", "''") + "'"
        return None

    def plain(self, text: str) -> bool:
        """For a :data:`_SIMPLE` string (no indicator, space or special character: analyze_scalar
        allows plain and single quotes): True if the emitter writes it plain, False if it quotes
        it, as an implicit resolver (consulted by the first character) makes it something else
        than a string ("true", "10", "2024-01-01", "null")."""
        bounds = self._bounds.get(text[0])
        return (bounds is None or len(text) > bounds[0] or text.count("-") > bounds[1]  # (UIDs, IPs)
                or text.count(".") > bounds[2] or bounds[3](text) is None)

    def value(self, text: str) -> Optional[str]:
        """The text of a string value as the emitter writes it unfolded (None: leave it to PyYAML)."""
        try:
            return self.values[text]
        except KeyError:
            out = self.values[text] = self._render(text, False)
            return out

    def line(self, text: str, column: int) -> str:
        """`` value\\n``: the rest of a line whose string value starts after a space at ``column``
        (after ``key:`` or ``-``); _Hard if the value is not written fast, or may be folded there."""
        line = self.lines[text]
        if line:
            return line
        value = self.value(text)  # (a string with a space: not None, see _Lines.__missing__)
        if column + 1 + len(value) > _WIDTH:  # the emitter may fold it
            raise _Hard
        return " " + value + "\n"

    def key(self, text: str) -> Optional[str]:
        """A simple mapping key as the emitter writes it, with its ``:`` (None: leave it to PyYAML)."""
        try:
            return self.keys[text]
        except KeyError:
            out = None if (not text or len(text) >= _MAX_SIMPLE_KEY) else self._render(text, True)
            out = self.keys[text] = None if out is None else out + ":"
            return out


def _most(pattern: re.Pattern[str], char: Optional[str]) -> float:
    """The most times ``char`` (None: any character) occurs in a string ``pattern.match`` matches
    whole: an upper bound read from the parsed pattern (``math.inf``: unbounded, or a construct
    this reading does not know). Only a pattern ending with ``$`` is bounded (a match of another
    may be a prefix); ``$`` may leave a final line break, which no :data:`_SIMPLE` string has."""
    return _bound(pattern.pattern, pattern.flags, char)


@lru_cache(maxsize=64)
def _parsed(pattern: str, flags: int) -> list:
    """``pattern`` as re's parser reads it (empty if it cannot: then nothing is bounded)."""
    try:
        return list(_sre_parser.parse(pattern, flags))
    except Exception:  # noqa: BLE001 (the private parser of another Python)
        return []


@lru_cache(maxsize=256)
def _bound(pattern: str, flags: int, char: Optional[str]) -> float:
    """:func:`_most` of ``re.compile(pattern, flags)``."""
    if flags & re.IGNORECASE or _sre_parser is None:
        return math.inf
    parsed = _parsed(pattern, flags)
    if not parsed or parsed[-1] != (_sre.AT, _sre.AT_END):
        return math.inf
    code = None if char is None else ord(char)

    def most(items: Any) -> float:
        total = 0.0
        for op, arg in items:
            if op is _sre.LITERAL:
                total += code is None or arg == code
            elif op is _sre.NOT_LITERAL or op is _sre.ANY:
                total += 1
            elif op is _sre.IN:
                total += code is None or any(  # (a negated set, a category, anything else: may)
                    value == code if kind is _sre.LITERAL else value[0] <= code <= value[1] if kind is _sre.RANGE
                    else True for kind, value in arg)
            elif op is _sre.AT or op is _sre.ASSERT or op is _sre.ASSERT_NOT:
                pass  # consumes nothing
            elif op is _sre.SUBPATTERN and not arg[1] and not arg[2]:
                total += most(arg[3])
            elif op is _sre.BRANCH:
                total += max(map(most, arg[1]), default=0)
            elif op is _sre.MAX_REPEAT or op is _sre.MIN_REPEAT:
                inner = most(arg[2])
                total += 0 if not inner else math.inf if arg[1] == _sre.MAXREPEAT else arg[1] * inner
            else:
                return math.inf
        return total

    return most(parsed)


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


def _other(value: Any, column: int, styles: _Styles) -> str:
    """`` value\\n`` for a mapping value that is not a str, dict or list, after ``key:`` ending at
    ``column``; _Hard if not fast."""
    if value is True:
        return " true\n"
    if value is False:
        return " false\n"
    return " " + _scalar(value, column + 1, styles) + "\n"


# What a mapping value is, as the generated writers test it: the branch for the kind met when the
# writer was made is tested first (the others follow; every value is written by its own kind).
_KIND_STR, _KIND_DICT, _KIND_LIST, _KIND_BOOL, _KIND_INT, _KIND_OTHER = range(6)
_BRANCHES = {
    _KIND_STR: "if type(v{i}) is str:\n    s{i} = lines[v{i}] or line(v{i}, C{i})\n",
    _KIND_DICT: ("if type(v{i}) is dict:\n    if v{i}:\n        k = tuple(v{i})\n        w = get(k)\n"
                 "        s{i} = w(v{i}) if w is not None else miss(v{i}, k)\n    else:\n        s{i} = ' {{}}\\n'\n"),
    # (a list of one string, as most are, written here: what seq writes for it)
    _KIND_LIST: ("if type(v{i}) is list:\n    if len(v{i}) == 1 and type(v{i}[0]) is str:\n"
                 "        s{i} = D + (lines[v{i}[0]] or line(v{i}[0], DC))\n"
                 "    else:\n        s{i} = seq(v{i}) if v{i} else ' []\\n'\n"),
    _KIND_INT: "if type(v{i}) is int:\n    s{i} = f' {{v{i}}}\\n'\n",
    _KIND_BOOL: "if v{i} is True:\n    s{i} = ' true\\n'\nelif v{i} is False:\n    s{i} = ' false\\n'\n",
}
_MAX_GENERATED_KEYS = 64  # wider mappings are written by a loop (their writer's source would be long)


def _kind(value: Any) -> int:
    """Which of the generated writers' branches writes ``value``."""
    kind = type(value)
    return (_KIND_STR if kind is str else _KIND_DICT if kind is dict else _KIND_LIST if kind is list
            else _KIND_BOOL if kind is bool else _KIND_INT if kind is int else _KIND_OTHER)


@lru_cache(maxsize=256)
def _writer_factory(kinds: tuple[int, ...]) -> Callable[..., Callable[[dict], str]]:
    """A function making a writer of mappings with ``len(kinds)`` keys, its branches ordered for
    those value kinds. The source holds only names and these constants; keys, heads and columns
    are the factory's arguments. The writer takes a dict with exactly its shape's keys, in order,
    and returns its text; it raises _Hard where :func:`_loop_mapping` would."""
    n = len(kinds)
    body = [f"    {', '.join(f'v{i}' for i in range(n))}, = o.values()\n"]
    for i, kind in enumerate(kinds):
        order = [kind] + [k for k in (_KIND_STR, _KIND_DICT, _KIND_LIST, _KIND_BOOL, _KIND_INT) if k != kind]
        chain = "el".join(_BRANCHES[k].format(i=i) for k in order if k != _KIND_OTHER)
        chain += f"else:\n    s{i} = other(v{i}, C{i}, styles)\n"
        body.extend("    " + row + "\n" for row in chain.splitlines())
    body.append("    return f\"" + "".join(f"{{H{i}}}{{s{i}}}" for i in range(n)) + "\"\n")
    names = ", ".join(f"H{i}" for i in range(n)) + ","
    columns = ", ".join(f"C{i}" for i in range(n)) + ","
    source = (f"def factory(H, C, get, miss, seq, D, DC, lines, line, other, styles):\n"
              f"  {names} = H\n  {columns} = C\n"
              f"  def write(o):\n" + "".join("  " + row for row in "".join(body).splitlines(True)) +
              "  return write\n")
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<dump writer {n}>", "exec"), namespace)  # noqa: S102 (names only, see above)
    return namespace["factory"]


def _column(head: str) -> int:
    """The column where ``head`` (text on one line, after the line break it may start with) ends."""
    return len(head) - 1 if head.startswith("\n") else len(head)


class _Writers:
    """Block mappings and sequences as text, the way the emitter writes them, for one stream.

    A mapping is written by a writer made for its shape: where it starts (``first``, the text
    before its first key: the line break ending its parent's line, then its indentation or a
    sequence's ``- ``), its indentation and its keys, in order. The first time a shape is met it
    is written by a loop (:func:`_loop_mapping`); the second time a writer with one straight
    run of code per key is generated (:func:`_writer_factory`) and kept for every later mapping
    of that shape. Every writer returns its text and raises _Hard for what is left to PyYAML."""

    def __init__(self, styles: _Styles) -> None:
        self.styles = styles
        self._writers: dict[tuple[str, int], dict[tuple, Callable[[dict], str]]] = {}
        self._misses: dict[tuple[str, int], Callable[[dict, tuple], str]] = {}
        self._sequences: dict[tuple[str, int], Callable[[list], str]] = {}
        self._met: set[tuple[str, int, tuple]] = set()  # shapes met once, written by the loop

    def mapping(self, obj: dict, first: str, indent: int) -> str:
        """A non-empty mapping's text: its keys at ``indent``, ``first`` before the first one."""
        keys = tuple(obj)
        writer = self.writers(first, indent).get(keys)
        return writer(obj) if writer is not None else self.miss(first, indent)(obj, keys)

    def writers(self, first: str, indent: int) -> dict[tuple, Callable[[dict], str]]:
        """The writers made so far for mappings starting with ``first`` at ``indent``, by keys."""
        try:
            return self._writers[first, indent]
        except KeyError:
            out = self._writers[first, indent] = {}
            return out

    def miss(self, first: str, indent: int) -> Callable[[dict, tuple], str]:
        """Writes a mapping (starting with ``first`` at ``indent``) that has no writer yet, given its
        keys; makes its shape's writer the second time the shape is met."""
        try:
            return self._misses[first, indent]
        except KeyError:
            pass
        writers = self.writers(first, indent)
        met = self._met

        def miss(obj: dict, keys: tuple) -> str:
            heads = self.heads(first, indent, keys)  # (_Hard: a key left to PyYAML)
            shape = (first, indent, keys)
            if shape not in met:
                met.add(shape)
                return _loop_mapping(obj, heads, first, indent, self)
            writer = writers[keys] = self.make(obj, heads, first, indent)
            return writer(obj)

        out = self._misses[first, indent] = miss
        return out

    def heads(self, first: str, indent: int, keys: tuple) -> list[str]:
        """The start of each key's line (``first`` or the indentation, then the key and ``:``);
        _Hard if a key is not a simple string key the fast writer writes."""
        pad = " " * indent
        heads = []
        for key in keys:
            text = self.styles.key(key) if type(key) is str else None
            if text is None:
                raise _Hard
            heads.append((first if not heads else pad) + text)
        return heads

    def make(self, obj: dict, heads: list[str], first: str, indent: int) -> Callable[[dict], str]:
        """The writer of ``obj``'s shape (its values' kinds order the generated branches)."""
        child = "\n" + " " * (indent + 2)
        get, miss = self.writers(child, indent + 2).get, self.miss(child, indent + 2)
        sequence = self.sequence("\n" + " " * indent, indent)  # indentless, as the emitter writes it
        if len(heads) > _MAX_GENERATED_KEYS:
            return lambda obj: _loop_mapping(obj, heads, first, indent, self)
        factory = _writer_factory(tuple(map(_kind, obj.values())))
        styles = self.styles
        dash = "\n" + " " * indent + "-"  # a sequence value's first line, to its "-"
        return factory(tuple(heads), tuple(map(_column, heads)), get, miss, sequence, dash, indent + 1,
                       styles.lines, styles.line, _other, styles)

    def sequence(self, first: str, indent: int) -> Callable[[list], str]:
        """The writer of non-empty sequences whose ``-`` sit at ``indent``, ``first`` before the first."""
        try:
            return self._sequences[first, indent]
        except KeyError:
            pass
        pad = " " * indent
        styles = self.styles
        lines, line = styles.lines, styles.line
        # per item: the text before its "-", the column after the "-", the writers of a mapping
        # item (which starts with that text and "- ") and what writes one without a writer yet
        head = (first + "-", _column(first) + 1, self.writers(first + "- ", indent + 2).get,
                self.miss(first + "- ", indent + 2))
        rest = (pad + "-", indent + 1, self.writers(pad + "- ", indent + 2).get, self.miss(pad + "- ", indent + 2))
        first_get, rest_get = head[2], rest[2]

        def sequence(items: list) -> str:
            item = items[0]
            if type(item) is str and len(items) == 1:
                return head[0] + (lines[item] or line(item, head[1]))
            if type(item) is dict and item and len(items) > 1:
                # mappings of one shape (endpoints, ports, ...): their writers mapped over them, in C
                keys = tuple(item)
                writer, later = first_get(keys), rest_get(keys)
                if (writer is not None and later is not None and list(map(type, items)).count(dict) == len(items)
                        and list(map(tuple, items)).count(keys) == len(items)):
                    return writer(item) + "".join(map(later, islice(items, 1, None)))
            parts = []
            append = parts.append
            dash, column, get, miss = head
            for item in items:
                kind = type(item)
                if kind is str:
                    append(dash + (lines[item] or line(item, column)))
                elif kind is dict and item:
                    keys = tuple(item)
                    writer = get(keys)
                    append(writer(item) if writer is not None else miss(item, keys))
                else:
                    append(self.item(item, dash, column, indent))
                dash, column, get, miss = rest
            return "".join(parts)

        out = self._sequences[first, indent] = sequence
        return out

    def item(self, item: Any, dash: str, column: int, indent: int) -> str:
        """A sequence item that is not a str or a non-empty dict, after ``dash`` (its line up to the
        ``-``, which ends at ``column``), in a sequence at ``indent``."""
        kind = type(item)
        if kind is dict:
            return dash + " {}\n"
        if kind is list:
            return self.sequence(dash + " ", indent + 2)(item) if item else dash + " []\n"
        return dash + " " + _scalar(item, column + 1, self.styles) + "\n"


def _loop_mapping(obj: dict, heads: list[str], first: str, indent: int, writers: _Writers) -> str:
    """A mapping's text, written key by key (what a generated writer does in one straight run)."""
    styles = writers.styles
    lines, line = styles.lines, styles.line
    child = "\n" + " " * (indent + 2)
    parts = []
    for head, value in zip(heads, obj.values()):
        column = _column(head)
        kind = type(value)
        if kind is str:
            text = lines[value] or line(value, column)
        elif kind is dict:
            text = writers.mapping(value, child, indent + 2) if value else " {}\n"
        elif kind is list:
            text = writers.sequence("\n" + " " * indent, indent)(value) if value else " []\n"
        else:
            text = _other(value, column, styles)
        parts.append(head)
        parts.append(text)
    return "".join(parts)


def _emit_document(obj: Any, writers: _Writers) -> Optional[str]:
    """One document as ``dump_all`` writes it first in a stream; None if it is left to PyYAML."""
    kind = type(obj)
    try:
        if kind is dict and obj:
            return writers.mapping(obj, "", 0)
        if kind is list and obj:
            return writers.sequence("", 0)(obj)
    except (_Hard, RecursionError):
        return None
    return None


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
    writers = _Writers(styles)
    for obj in objects:
        text = _emit_document(obj, writers)
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
