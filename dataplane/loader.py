"""Reading manifest files (YAML or JSON, multi-document, ``kind: List``) into documents.

Each input yields a flat list of :class:`Document`: one per object, each
remembering the file it came from and its position there. Positions count
documents in file order, an empty document counting as one and each item of a
``List`` counting as one (a file holding a 3-item List then a Service numbers
them 1, 2, 3 and 4), so every problem can say ``FILE: document N``.

Nothing here raises anything but :class:`~dataplane.errors.InputError`: an
unreadable or unparsable file becomes one problem naming the file (with the
line and column of a syntax error), and the other files are still read so that
every problem is reported at once.
"""
from __future__ import annotations

import codecs
import gc
import json
import operator
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterator, Optional, Sequence, TextIO, Union

import orjson
import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from .errors import InputError, Problem

STDIN_NAME = "<stdin>"

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class Document:
    """One API object read from the input, before validation."""

    source: str  # file name as given, or "<stdin>"
    index: int  # 1-based position in the source (List items count one each)
    obj: dict


class _ParseFailure(Exception):
    """A file's text is not valid YAML/JSON; the message says where and why."""


@contextmanager
def gc_paused() -> Iterator[None]:
    """Suspend the cyclic garbage collector for the body (nesting is fine).

    Reading and validating a large cluster allocates millions of container
    objects (decoded JSON/YAML, then the model), none of them in reference
    cycles. Each allocation burst would otherwise trigger collections that
    walk the whole, growing heap again and again: about half the time of
    loading and of parsing. Garbage is still freed by reference counting; the
    collector resumes afterwards.

    On the way out, what the body allocated is moved straight to the oldest
    generation (``gc.freeze()`` then ``gc.unfreeze()``: no traversal), so
    resuming does not start with a young collection that walks all of it;
    cyclic garbage is still found by the next full collection. Skipped if the
    application has frozen objects of its own.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        gc.enable()


# ------------------------------------------------------------------- reading


def load_documents(paths: Sequence[str], stdin: Optional[TextIO] = None) -> list[Document]:
    """Read every path (``-`` is ``stdin``) into documents, or raise InputError listing every problem."""
    documents, problems = read_documents(paths, stdin)
    if problems:
        raise InputError(problems)
    return documents


def read_documents(
    paths: Sequence[str], stdin: Optional[TextIO] = None
) -> tuple[list[Document], list[Problem]]:
    """Like :func:`load_documents` but return the problems instead of raising them."""
    with gc_paused():
        return _read_documents(paths, stdin)


def _read_documents(paths: Sequence[str], stdin: Optional[TextIO]) -> tuple[list[Document], list[Problem]]:
    documents: list[Document] = []
    problems: list[Problem] = []
    stdin_used = False
    for path in paths:
        if path == "-":
            if stdin_used:
                problems.append(_file_problem(STDIN_NAME, "standard input (-) was given more than once"))
                continue
            stdin_used = True
        source = STDIN_NAME if path == "-" else path
        try:
            data = _read_data(path, stdin)
            value = _one_json_value(data)
            if value is _NOT_ONE_VALUE:
                text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
        except OSError as err:
            problems.append(_file_problem(source, f"cannot read: {err.strerror or err}"))
            continue
        except UnicodeDecodeError as err:
            problems.append(_file_problem(source, f"cannot read: not UTF-8 text ({err.reason} at byte {err.start})"))
            continue
        if value is _NOT_ONE_VALUE:
            file_docs, file_problems = documents_from_text(text, source, json_hint=path.endswith(".json"))
        else:
            file_docs, file_problems = _documents([value], source)
        documents.extend(file_docs)
        problems.extend(file_problems)
    return documents, problems


def _read_data(path: str, stdin: Optional[TextIO]) -> Union[bytes, str]:
    """The bytes of ``path``, or what standard input gives for ``-`` (text or bytes)."""
    if path == "-":
        stream = stdin if stdin is not None else sys.stdin
        buffer = getattr(stream, "buffer", None)  # a real stdin's bytes: no decoding of JSON
        return buffer.read() if buffer is not None else stream.read()
    with open(path, "rb") as handle:
        return handle.read()


_NOT_ONE_VALUE = object()
_STARTS_LIKE_JSON = re.compile(rb"\s*[{\[]").match


def _one_json_value(data: Union[bytes, str]) -> Any:
    """The value of file bytes holding exactly one JSON value (what ``kubectl -o json`` prints),
    read by orjson straight from the bytes; _NOT_ONE_VALUE for anything else, which is then
    read from the decoded text (several values, YAML, errors to report, text from stdin)."""
    if not isinstance(data, bytes) or not _STARTS_LIKE_JSON(data):
        return _NOT_ONE_VALUE
    try:
        return orjson.loads(data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data)
    except orjson.JSONDecodeError:
        return _NOT_ONE_VALUE


def _file_problem(source: str, message: str) -> Problem:
    return Problem(source=source, index=0, obj="", field="", message=message)


# ------------------------------------------------------------------- parsing


def documents_from_text(
    text: str, source: str, *, json_hint: bool = False
) -> tuple[list[Document], list[Problem]]:
    """Split one file's text into documents (flattening Lists) and their document-level problems.

    JSON (a ``.json`` file, or text starting with ``{`` or ``[``) is read with
    the json module, a stream of concatenated JSON values being several
    documents; anything else, and JSON-looking text that turns out to be YAML
    flow style, is read as multi-document YAML.
    """
    try:
        raw_docs = _parse_text(text, json_hint)
    except _ParseFailure as err:
        return [], [_file_problem(source, str(err))]
    return _documents(raw_docs, source)


def _documents(raw_docs: list[Any], source: str) -> tuple[list[Document], list[Problem]]:
    """The documents of one file's parsed values (Lists flattened) and their document-level problems."""
    documents: list[Document] = []
    problems: list[Problem] = []
    position = 0
    for raw in raw_docs:
        if raw is None:
            position += 1  # an empty document still occupies a position
            continue
        for obj, obj_problems in _flatten(raw, source):
            position += 1
            if obj_problems is not None:
                problems.extend(_renumber(obj_problems, position))
                continue
            found = document_problems(source, position, obj)
            if found:
                problems.extend(found)
            else:
                documents.append(Document(source=source, index=position, obj=obj))
    return documents, problems


def _parse_text(text: str, json_hint: bool) -> list[Any]:
    """Parse ``text`` into raw documents; raise _ParseFailure with a located message."""
    looks_like_json = text.lstrip()[:1] in ("{", "[")
    if json_hint or looks_like_json:
        try:
            return _parse_json_stream(text)
        except json.JSONDecodeError as err:
            if json_hint:
                raise _ParseFailure(f"line {err.lineno}, column {err.colno}: cannot parse JSON: {err.msg}") from None
        except ValueError as err:  # e.g. an integer beyond Python's digit limit
            if json_hint:
                raise _ParseFailure(f"cannot parse JSON: {_value_error_text(err)}") from None
        except RecursionError:
            raise _ParseFailure("cannot parse JSON: nested too deeply") from None
    return _parse_yaml_stream(text)


def _parse_json_stream(text: str) -> list[Any]:
    """Parse one or more whitespace-separated JSON values.

    One value (what ``kubectl -o json`` prints) is read with orjson, about twice
    as fast; anything orjson refuses (several values, NaN, huge integers, bad
    JSON) is read again by the json module, whose errors name line and column.
    """
    try:
        return [orjson.loads(text)]
    except orjson.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    values: list[Any] = []
    position = 0
    length = len(text)
    while True:
        while position < length and text[position] in " \t\r\n":
            position += 1
        if position >= length:
            return values
        value, position = decoder.raw_decode(text, position)
        values.append(value)


def _parse_yaml_stream(text: str) -> list[Any]:
    """Parse multi-document YAML with the (C) safe loader."""
    try:
        return _load_yaml_all(text)
    except yaml.MarkedYAMLError as err:
        raise _ParseFailure(_yaml_error_text(err)) from None
    except yaml.YAMLError as err:
        detail = _one_line(str(err)).replace(' in "<unicode string>"', "")
        raise _ParseFailure(f"cannot parse YAML: {detail}") from None
    except RecursionError:
        raise _ParseFailure("cannot parse YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as err:
        # PyYAML's constructors raise these for scalars such as the date 2024-13-45.
        raise _ParseFailure(f"cannot parse YAML: invalid value: {_value_error_text(err)}") from None


class _FastYAMLLoader(_YAML_LOADER):  # type: ignore[misc, valid-type]
    """The safe loader, with the per-node Python work of composing made cheap.

    Tag resolution is memoised per distinct scalar (a cluster repeats the same
    keys and values endlessly), and the path-resolver hooks become no-ops; both
    only when no path resolver is registered, as is the default.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        if not self.yaml_path_resolvers:
            self.resolve = lru_cache(maxsize=None)(self._resolve_fast)  # type: ignore[method-assign]
            self.descend_resolver = operator.is_  # type: ignore[method-assign]  # (parent, index) -> ignored
            self.ascend_resolver = tuple  # type: ignore[method-assign]  # () -> ignored
            table = self.yaml_implicit_resolvers
            wildcard = table.get(None, [])
            self._implicit = {first: resolvers + wildcard for first, resolvers in table.items() if first is not None}
            self._implicit_wildcard = wildcard

    def close(self) -> None:
        """Dispose of the parser and drop the memo (a cycle through self)."""
        self.dispose()
        self.__dict__.pop("resolve", None)

    def _resolve_fast(self, kind: type, value: Any, implicit: tuple) -> str:
        """``BaseResolver.resolve`` without path resolvers."""
        if kind is ScalarNode and implicit[0]:
            for tag, regexp in self._implicit.get(value[:1], self._implicit_wildcard):
                if regexp.match(value):
                    return tag
        if kind is ScalarNode:
            return self.DEFAULT_SCALAR_TAG
        if kind is SequenceNode:
            return self.DEFAULT_SEQUENCE_TAG
        return self.DEFAULT_MAPPING_TAG


_TAG_STR = "tag:yaml.org,2002:str"
_TAG_MAP = "tag:yaml.org,2002:map"
_TAG_SEQ = "tag:yaml.org,2002:seq"
_TAG_NULL = "tag:yaml.org,2002:null"
_MERGE_KEY_TAGS = ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")


class _NotPlain(Exception):
    """A document needs the full constructor (merge keys, timestamps, other tags, an error)."""


# ------------------------------------------------------ plain block YAML, fast
# ``kubectl get -o yaml`` (and PyYAML's own dump) writes a small subset of YAML:
# block mappings and sequences, one scalar per line, plain or quoted on one
# line, ``{}``/``[]`` for empty collections. _parse_simple_yaml reads exactly
# that subset, builds what PyYAML's safe loader would (plain scalars are
# resolved with PyYAML's own resolvers and constructors), and gives up (None)
# on anything else: comments, anchors, tags, flow collections, multi-line or
# escaped scalars, merge keys, timestamps, non-ASCII text, odd indentation,
# errors. A None sends the text through PyYAML as before.
#
# A cluster dump repeats most of its lines verbatim, and most other lines differ
# from one another only in their value, so each distinct line is read once into
# a token (_simple_tokens), then the documents are built from the tokens by
# their columns (_simple_documents).

_PLAIN_INDICATORS = frozenset("-?:,[]{}#&*!|>'\"%@`")

# A line is read into one token, (kind, column, key, value). A "- " is a _DASH
# token whose value is the token of the rest of its line: the item's start, an
# _ITEM scalar, another dash or a mapping entry. Kinds from _ENTRY on are
# mapping entries: "key: scalar", "key: {}"/"key: []", "key:" alone.
_DOC, _DASH, _ITEM, _NEW_ITEM, _ENTRY, _NEW_ENTRY, _OPEN_ENTRY = range(7)
_DOC_TOKEN = (_DOC, -1, None, None)  # column -1: ends every collection
_NEW_COLLECTIONS = {"{}": dict, "[]": list}  # built afresh at each occurrence


class _NotSimple(Exception):
    """The text is not plain block YAML as the fast reader knows it: PyYAML reads it."""


def _parse_simple_yaml(text: str) -> Optional[list[Any]]:
    """The documents of ``text`` if it is plain block YAML (see above), else None."""
    if not text.isascii():  # constant time; control characters are refused line by line
        return None
    try:
        return _simple_documents(_simple_tokens(text))
    except (_NotSimple, RecursionError):
        return None


class _Memo(dict):
    """A dict that fills in a missing key with ``function(key)``, and keeps it."""

    __slots__ = ("function",)

    def __init__(self, function: Callable[[Any], Any]):
        super().__init__()
        self.function = function

    def __missing__(self, key: Any) -> Any:
        value = self[key] = self.function(key)
        return value


def _simple_scalars() -> Callable[[str], Any]:
    """One-line scalar text (after ``key: `` or ``- ``, or a key) -> value, as PyYAML builds it.

    Raises _NotSimple for what the fast reader leaves to PyYAML (``{}`` and
    ``[]`` included: the caller builds those). Plain scalars are resolved with
    PyYAML's own implicit resolvers and safe constructors.
    """
    table = _YAML_LOADER.yaml_implicit_resolvers
    wildcard = table.get(None, [])
    resolving = {  # first character -> (resolvers to try in order, one regex matching where any does)
        first: (resolvers + wildcard, _any_match(resolvers + wildcard))
        for first, resolvers in table.items() if first is not None
    }
    default = (wildcard, _any_match(wildcard))
    constructor = yaml.constructor.SafeConstructor()

    def convert(text: str) -> Any:
        """The value of one scalar's text (not empty, no surrounding spaces)."""
        first = text[0]
        if first in _PLAIN_INDICATORS:
            if first == "'":
                inner = text[1:-1]
                if len(text) < 2 or text[-1] != "'" or "'" in inner.replace("''", ""):
                    raise _NotSimple(text)
                return inner.replace("''", "'")
            if first == '"':
                inner = text[1:-1]
                if len(text) < 2 or text[-1] != '"' or '"' in inner or "\\" in inner:
                    raise _NotSimple(text)
                return inner
            if first != "-" or not text[1:2].isdigit():
                raise _NotSimple(text)
        if ": " in text or " #" in text or text[-1] == ":":
            raise _NotSimple(text)
        resolvers, any_matches = resolving.get(first, default)
        if not resolvers or (any_matches is not None and any_matches(text) is None):
            return text  # a str, found without trying each resolver
        for tag, regexp in resolvers:
            if regexp.match(text):
                break
        else:
            return text  # a str
        build = _SCALAR_CONSTRUCTORS.get(tag)
        if build is None:  # timestamp, merge key, value key: leave them to PyYAML
            raise _NotSimple(tag)
        return build(constructor, ScalarNode(tag, text))

    return convert


def _any_match(resolvers: list[tuple[str, re.Pattern]]) -> Optional[Callable[[str], Any]]:
    """``match`` of one regex that matches where any of ``resolvers``' regexes does,
    or None when there are none or they do not combine (different flags, groups,
    a bad pattern)."""
    if len({regexp.flags for _, regexp in resolvers}) != 1 or any(regexp.groups for _, regexp in resolvers):
        return None
    flags = resolvers[0][1].flags
    end = "\n)" if flags & re.VERBOSE else ")"  # a comment in a verbose pattern ends at a newline
    try:
        return re.compile("|".join("(?:" + regexp.pattern + end for _, regexp in resolvers), flags).match
    except re.error:
        return None


def _simple_tokens(text: str) -> list[tuple]:
    """The token of every non-blank line of ``text``, in order (see :func:`_simple_line_reader`).

    Each distinct line is read once: in a cluster dump most lines repeat.
    """
    token_of = _Memo(_simple_line_reader())
    return list(filter(None, map(token_of.__getitem__, text.split("\n"))))


def _simple_line_reader() -> Callable[[str], Optional[tuple]]:
    """One line (no newline) -> its token (see above), None for a blank line.
    Raises _NotSimple for any line the fast reader leaves to PyYAML.

    Lines that differ only in their value (``uid: ...``, ``- 10.0.0.7``) are
    common; their shared part is read once.
    """
    scalar = _simple_scalars()  # not memoised: repeated lines are read once anyway

    def item(text: str, col: int) -> tuple:
        """The token of a sequence item written on its dash's line."""
        new = _NEW_COLLECTIONS.get(text)
        if new is not None:
            return (_NEW_ITEM, col, None, new)
        return (_ITEM, col, None, scalar(text))

    def entry(key: Any, rest: str, col: int) -> tuple:
        """The token of ``key:`` followed by ``rest`` (stripped) on its line."""
        if not rest:
            return (_OPEN_ENTRY, col, key, None)
        new = _NEW_COLLECTIONS.get(rest)
        if new is not None:
            return (_NEW_ENTRY, col, key, new)
        return (_ENTRY, col, key, scalar(rest))

    def content(text: str, col: int, after_dash: bool) -> tuple:
        """The token of a line's text after its indentation and dashes (no trailing spaces)."""
        first = text[0]
        if first == "'" or first == '"':
            end = text.find(first + ":", 1)
            if end < 0 or text[end + 2:end + 3] not in (" ", ""):
                if not after_dash:
                    raise _NotSimple(text)
                return item(text, col)
            key_text = text[:end + 1]
            rest = text[end + 2:].lstrip(" ")
        else:
            colon = text.find(": ")
            if colon < 0:
                if text[-1] != ":":
                    if not after_dash:
                        raise _NotSimple(text)
                    return item(text, col)
                colon = len(text) - 1
            key_text = text[:colon]
            if not key_text or key_text[-1] == " " or len(key_text) > 1000:
                raise _NotSimple(text)
            rest = text[colon + 2:].lstrip(" ")
        return entry(scalar(key_text), rest, col)

    def whole(line: str) -> Optional[tuple]:
        """The token of a printable line, read from its start."""
        text = line.strip(" ")
        if not text:
            return None
        col = line.index(text[0])
        if col == 0 and text[:3] in ("---", "..."):
            if text != "---":
                raise _NotSimple(line)
            return _DOC_TOKEN
        dash_cols = []
        while text[0] == "-" and text[1:2] in (" ", ""):
            rest = text[1:].lstrip(" ")
            if not rest:
                raise _NotSimple(line)  # "-" alone: the item is on the next lines
            dash_cols.append(col)
            col += len(text) - len(rest)
            text = rest
        if text[0] == "#":
            raise _NotSimple(line)
        return _dashed(dash_cols, content(text, col, bool(dash_cols)))

    def entry_head(head: str) -> Optional[tuple]:
        """(dash columns, column, key) that ``head + ": value"`` starts with.

        Read from ``head + ":"``: when that is a ``key:`` line, its key ends
        where ``head`` does, so any ``head + ": " + value`` reads the same up to
        the value. None (read such lines whole) otherwise.
        """
        try:
            token = whole(head + ":")
        except _NotSimple:
            return None
        dash_cols = []
        while token[0] == _DASH:
            dash_cols.append(token[1])
            token = token[3]
        if token[0] != _OPEN_ENTRY:
            return None
        return dash_cols, token[1], token[2]

    heads = _Memo(entry_head)  # text before a line's first ": " -> entry_head(text)

    def read(line: str) -> Optional[tuple]:
        """The token of ``line``: a ``key: value`` or ``- scalar`` line from its known parts, else whole."""
        if not line.isprintable():  # for ASCII: no tab, CR or other control character
            raise _NotSimple(line)
        head, colon, value = line.partition(": ")
        if colon:
            known = heads[head]
            if known is None:
                return whole(line)
            dash_cols, col, key = known
            token = entry(key, value.strip(" "), col)
            return _dashed(dash_cols, token) if dash_cols else token
        text = line.lstrip(" ")
        if text[:2] == "- " and text[2:3] not in (" ", "-") and text[-1] not in (" ", ":"):
            col = len(line) - len(text)  # "- scalar", as whole() would read it
            return (_DASH, col, None, item(text[2:], col + 2))
        return whole(line)

    return read


def _dashed(dash_cols: list[int], token: tuple) -> tuple:
    """The token of a line whose dashes (at ``dash_cols``) are followed by ``token``."""
    for col in reversed(dash_cols):
        token = (_DASH, col, None, token)
    return token


def _simple_documents(tokens: list[tuple]) -> list[Any]:
    """Documents from :func:`_simple_tokens`, or _NotSimple for any structure PyYAML would read otherwise.

    A line is a document start, a dash or a mapping entry, so every node is
    a sequence (at a dash) or a mapping (at an entry), or an item scalar right
    after its dash. Reading a dash replaces it in ``tokens`` by the rest of its
    line, where the item's node starts.
    """
    count = len(tokens)

    def sequence(i: int, col: int) -> tuple[list, int]:
        """The sequence whose first dash is tokens[i], at column ``col``; and the index after it."""
        items: list[Any] = []
        while i < count:
            kind, dash_col, _, rest = tokens[i]
            if kind != _DASH or dash_col != col:
                break
            kind, item_col, _, value = rest
            if kind == _ITEM:
                items.append(value)
                i += 1
            elif kind == _NEW_ITEM:
                items.append(value())
                i += 1
            else:
                tokens[i] = rest
                item, i = (sequence if kind == _DASH else mapping)(i, item_col)
                items.append(item)
        return items, i

    def mapping(i: int, col: int) -> tuple[dict, int]:
        """The mapping whose first entry is tokens[i], at column ``col``; and the index after it."""
        result: dict[Any, Any] = {}
        while i < count:
            kind, key_col, key, value = tokens[i]
            if key_col != col or kind < _ENTRY:
                break
            i += 1
            if kind == _ENTRY:
                result[key] = value
            elif kind == _NEW_ENTRY:
                result[key] = value()
            elif i == count:
                result[key] = None
            else:  # "key:" alone: the value is on the next lines, or null
                kind, next_col, _, _ = tokens[i]
                if kind == _DASH and next_col >= col:  # at col: an indentless sequence
                    result[key], i = sequence(i, next_col)
                elif next_col > col:
                    result[key], i = mapping(i, next_col)
                else:
                    result[key] = None
        return result, i

    documents: list[Any] = []
    i = 0
    explicit = False
    while i < count or explicit:
        if i < count and tokens[i][0] == _DOC:
            if explicit:
                documents.append(None)
            explicit = True
            i += 1
            continue
        if i >= count:
            documents.append(None)
            break
        kind, col, _, _ = tokens[i]
        data, i = sequence(i, col) if kind == _DASH else mapping(i, col)
        if i < count and tokens[i][0] != _DOC:
            raise _NotSimple("unexpected indentation")
        documents.append(data)
        explicit = False
    return documents


def _load_yaml_all(text: str) -> list[Any]:
    """``list(yaml.load_all(text, Loader=SafeLoader))``, several times faster.

    Documents are composed by the (C) loader as usual. A document made only of
    maps, sequences and str/int/float/bool/null scalars (anything ``kubectl``
    writes) is then built by :func:`_construct_plain`; any other document, or
    one the fast builder stumbles on, is built by the safe constructor itself,
    so results and errors are exactly PyYAML's.
    """
    if not _stock_safe_loader():
        return list(yaml.load_all(text, Loader=_YAML_LOADER))
    simple = _parse_simple_yaml(text)
    if simple is not None:
        return simple
    loader = _FastYAMLLoader(text)
    try:
        documents = []
        while loader.check_node():
            node = loader.get_node()
            try:
                data = _construct_plain(loader, node)
            except Exception:  # includes _NotPlain; the safe constructor decides
                data = loader.construct_document(node)
            documents.append(data)
        return documents
    finally:
        loader.close()


def _construct_plain(loader: Any, root: Any) -> Any:
    """Build one composed document like SafeConstructor, or raise (see :func:`_load_yaml_all`)."""
    built: dict[int, Any] = {}  # id(collection node) -> object: aliases share it, as in PyYAML
    scalars: dict[tuple[str, str], Any] = {}

    def build(node: Any) -> Any:
        tag = node.tag
        if type(node) is ScalarNode:
            if tag == _TAG_STR:
                return node.value
            key = (tag, node.value)
            value = scalars.get(key, scalars)
            if value is scalars:
                constructor = _SCALAR_CONSTRUCTORS.get(tag)
                if constructor is None:
                    raise _NotPlain(tag)
                value = scalars[key] = constructor(loader, node)
            return value
        done = built.get(id(node), built)
        if done is not built:
            return done
        if tag == _TAG_MAP and type(node) is MappingNode:
            mapping: dict[Any, Any] = {}
            built[id(node)] = mapping
            # String scalars (most keys and values) are inlined: no call per node.
            for key_node, value_node in node.value:
                if key_node.tag == _TAG_STR and type(key_node) is ScalarNode:
                    key = key_node.value
                elif key_node.tag in _MERGE_KEY_TAGS:
                    raise _NotPlain(key_node.tag)
                else:
                    key = build(key_node)
                if value_node.tag == _TAG_STR and type(value_node) is ScalarNode:
                    mapping[key] = value_node.value
                else:
                    mapping[key] = build(value_node)  # an unhashable key raises TypeError
            return mapping
        if tag == _TAG_SEQ and type(node) is SequenceNode:
            sequence: list[Any] = []
            built[id(node)] = sequence
            for item in node.value:
                sequence.append(
                    item.value if item.tag == _TAG_STR and type(item) is ScalarNode else build(item)
                )
            return sequence
        raise _NotPlain(tag)

    return build(root)


_SCALAR_CONSTRUCTORS: dict[str, Callable[[Any, Any], Any]] = {
    _TAG_NULL: yaml.constructor.SafeConstructor.construct_yaml_null,
    "tag:yaml.org,2002:bool": yaml.constructor.SafeConstructor.construct_yaml_bool,
    "tag:yaml.org,2002:int": yaml.constructor.SafeConstructor.construct_yaml_int,
    "tag:yaml.org,2002:float": yaml.constructor.SafeConstructor.construct_yaml_float,
}


_STOCK_CONSTRUCTORS: dict[str, Callable[[Any, Any], Any]] = {
    **_SCALAR_CONSTRUCTORS,
    _TAG_STR: yaml.constructor.SafeConstructor.construct_yaml_str,
    _TAG_MAP: yaml.constructor.SafeConstructor.construct_yaml_map,
    _TAG_SEQ: yaml.constructor.SafeConstructor.construct_yaml_seq,
}


def _stock_safe_loader() -> bool:
    """True unless someone registered path resolvers or their own constructors for the
    tags the fast readers build (they then step aside for PyYAML)."""
    constructors = _YAML_LOADER.yaml_constructors
    return not _YAML_LOADER.yaml_path_resolvers and all(
        constructors.get(tag) is stock for tag, stock in _STOCK_CONSTRUCTORS.items()
    )


def _yaml_error_text(err: yaml.MarkedYAMLError) -> str:
    """``line L, column C: cannot parse YAML: PROBLEM (CONTEXT)`` from a PyYAML error."""
    mark = err.problem_mark or err.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = err.problem or err.context or "invalid YAML"
    if err.context and err.problem:
        what = f"{err.problem} ({err.context})"
    return f"{where}cannot parse YAML: {_one_line(what)}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _value_error_text(err: Exception) -> str:
    """The first clause of a Python conversion error, on one line."""
    return _one_line(str(err).split(";")[0])


# ------------------------------------------------------------------ flattening

# (object, None) for an object to keep; (None, problems) for a List entry that
# cannot become a document. Problems carry index 0 and are renumbered.
_Flat = tuple[Any, Optional[list[Problem]]]


def is_list_kind(obj: Any) -> bool:
    """True if ``obj`` is a ``kind: List`` (or a typed ``FooList`` with ``items``) to flatten."""
    if not isinstance(obj, dict):
        return False
    kind = obj.get("kind")
    if not isinstance(kind, str):
        return False
    return kind == "List" or (kind.endswith("List") and "items" in obj)


def _flatten(raw: Any, source: str) -> Iterator[_Flat]:
    """Yield the objects of one raw document: itself, or the items of a List."""
    if not is_list_kind(raw):
        yield raw, None
        return
    items = raw.get("items")
    if items is None:
        return
    if not isinstance(items, list):
        message = f"Invalid value: {format_value(items)}: must be a list"
        yield None, [Problem(source, 0, str(raw["kind"]), "items", message)]
        return
    for item in items:
        yield _list_item(raw, item, source)


def _list_item(list_obj: dict, item: Any, source: str) -> _Flat:
    """One List item; items of a typed list (``ServiceList``) inherit apiVersion and kind."""
    if not isinstance(item, dict):
        return item, None  # reported by document_problems
    if is_list_kind(item):
        message = f"Invalid value: {format_value(item['kind'])}: a List may not contain another List"
        return None, [Problem(source, 0, "", "kind", message)]
    list_kind = list_obj["kind"]
    if list_kind != "List" and "kind" not in item and "apiVersion" not in item:
        item = {**item, "apiVersion": list_obj.get("apiVersion"), "kind": list_kind[: -len("List")]}
    return item, None


def _renumber(problems: list[Problem], index: int) -> list[Problem]:
    return [Problem(p.source, index, p.obj, p.field, p.message) for p in problems]


# ---------------------------------------------------------- document checking


def document_problems(source: str, index: int, obj: Any) -> list[Problem]:
    """Problems that stop ``obj`` from being a document at all: not a mapping, no apiVersion or kind."""
    if not isinstance(obj, dict):
        message = f"a manifest document must be a mapping with apiVersion and kind, not {_type_name(obj)}"
        return [Problem(source, index, "", "", message)]
    problems = []
    for key in ("apiVersion", "kind"):
        value = obj.get(key)
        if value is None or value == "":
            problems.append(Problem(source, index, "", key, "Required value"))
        elif not isinstance(value, str):
            problems.append(Problem(source, index, "", key, f"Invalid value: {format_value(value)}: must be a string"))
    return problems


def _type_name(value: Any) -> str:
    """A short name for the JSON type of ``value``, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


# ------------------------------------------------------------ message helpers
# Shared with dataplane.parse, so that every message shows values alike.

_MAX_SHOWN = 120


def format_value(value: Any) -> str:
    """Show a (bad) value the way the API server's field errors do.

    Strings are double-quoted, numbers and booleans bare, null as ``null``, a
    list of strings as Go prints one (``[]string{"a", "b"}``), anything else as
    compact JSON cut to a readable length.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return _shorten("[]string{" + ", ".join(quote(item) for item in value) + "}")
    if not isinstance(value, (list, tuple, dict)):
        return quote(str(value))
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return _shorten(text)


def quote(text: str) -> str:
    """Double-quote ``text`` with escapes, like Go's ``%q``."""
    return json.dumps(text, ensure_ascii=False)


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."
