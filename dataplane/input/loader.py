"""Reading manifest files (YAML or JSON, multi-document, ``kind: List``) into documents.

Each input yields a flat list of :class:`Document`: one per object, each
remembering the file it came from and its position there. Positions count
documents in file order, an empty document counting as one; the items of a
``List`` are numbered within it (a file holding a 3-item List then a Service
gives ``item 1 of the List in document 1`` ... ``item 3 of the List in document 1``
and ``document 2``), so every problem can say where its object is.

Nothing here raises anything but :class:`~dataplane.errors.InputError`: an
unreadable or unparsable file becomes one problem naming the file (with the
line and column of a syntax error), and the other files are still read so that
every problem is reported at once.

YAML is read as the API server and kubectl read it (go-yaml v2 through
sigs.k8s.io/yaml, see :mod:`dataplane.input.goyaml`; the fast readers are in
:mod:`dataplane.input.fastyaml`): ``1:20`` is a string, ``017`` is 15, ``y`` is true. A
document they would refuse (a key set twice, excessive aliasing) is a problem
naming the file, the document and the line, and the other documents are read.
"""
from __future__ import annotations

import codecs
import gc
import json
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, TextIO, Union

import orjson
import yaml

from ..errors import InputError, Problem
from .fastyaml import RejectedDocument, _load_yaml_all
from .messages import format_value

STDIN_NAME = "<stdin>"


@dataclass(frozen=True, slots=True)
class Document:
    """One API object read from the input, before validation."""

    source: str  # file name as given, or "<stdin>"
    index: int  # 1-based position of the document in the source (for a List item: the List's)
    obj: dict
    #: What ``index`` counts in messages, shown as ``f"{unit} {index}"``: "document", "object" for
    #: objects given as dicts, or for a List item :func:`list_item_unit` ("item N of the List in document").
    unit: str = "document"


def list_item_unit(item: int) -> str:
    """The ``unit`` of item ``item`` (1-based) of a ``List``: with the List's document position as
    the index, messages read ``item N of the List in document M``."""
    return f"item {item} of the List in document"


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
    for position, raw in enumerate(raw_docs, 1):
        if raw is None:
            continue  # an empty document still occupies a position
        if isinstance(raw, RejectedDocument):  # YAML the API server refuses: keys set twice, aliases...
            problems.extend(Problem(source, position, "", "", message) for message in raw.messages)
            continue
        items = raw.get("items") if type(raw) is dict and raw.get("kind") == "List" else None
        if type(items) is list:  # (kubectl get -o json: one List, maybe of 100k items)
            flat = _flatten_plain_list(items, raw, source, documents, position)
        else:
            flat = _flatten(raw, source)
        for item, obj, obj_problems in flat:
            unit = list_item_unit(item) if item else "document"
            if obj_problems is not None:
                problems.extend(_renumber(obj_problems, position, unit))
                continue
            found = document_problems(source, position, obj, unit)
            if found:
                problems.extend(found)
            else:
                documents.append(Document(source=source, index=position, obj=obj, unit=unit))
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
    """Parse multi-document YAML as the API server reads it (:mod:`dataplane.input.goyaml`); a document
    it would refuse is a RejectedDocument."""
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
        # Constructors raise these, e.g. for an integer beyond Python's digit limit.
        raise _ParseFailure(f"cannot parse YAML: invalid value: {_value_error_text(err)}") from None


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

# (item, object, None) for an object to keep; (item, None, problems) for a List entry that
# cannot become a document. ``item``: the 1-based position in the List, 0 for the document
# itself. Problems carry index 0 and are renumbered.
_Flat = tuple[int, Any, Optional[list[Problem]]]


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
        yield 0, raw, None
        return
    items = raw.get("items")
    if items is None:
        return
    if not isinstance(items, list):
        message = f"Invalid value: {format_value(items)}: must be a list"
        yield 0, None, [Problem(source, 0, str(raw["kind"]), "items", message)]
        return
    for n, item in enumerate(items, 1):
        yield (n, *_list_item(raw, item, source))


def _flatten_plain_list(items: list, list_obj: dict, source: str, documents: list[Document],
                        position: int) -> Iterator[_Flat]:
    """:func:`_flatten` of a ``kind: List`` (``list_obj``) whose ``items`` is a list, for a
    large one: each item that is a mapping with a non-empty string apiVersion and kind (and no
    List itself) goes straight to ``documents`` as document ``position``, as the caller would
    add it; the others are yielded as :func:`_flatten` yields them, for the caller."""
    for n, item in enumerate(items, 1):
        if type(item) is dict:
            api_version, kind = item.get("apiVersion"), item.get("kind")
            if (type(api_version) is str and api_version and type(kind) is str and kind
                    and not (kind == "List" or (kind.endswith("List") and "items" in item))):
                documents.append(Document(source, position, item, list_item_unit(n)))
                continue
        yield (n, *_list_item(list_obj, item, source))


def _list_item(list_obj: dict, item: Any, source: str) -> tuple[Any, Optional[list[Problem]]]:
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


def _renumber(problems: list[Problem], index: int, unit: str) -> list[Problem]:
    return [Problem(p.source, index, p.obj, p.field, p.message, unit) for p in problems]


# ---------------------------------------------------------- document checking


def document_problems(source: str, index: int, obj: Any, unit: str = "document") -> list[Problem]:
    """Problems that stop ``obj`` from being a document at all: not a mapping, no apiVersion or kind
    (``unit``: what ``index`` counts, see :class:`Document`)."""
    if not isinstance(obj, dict):
        noun = "List item" if unit.startswith("item ") else unit
        message = f"a manifest {noun} must be a mapping with apiVersion and kind, not {_type_name(obj)}"
        return [Problem(source, index, "", "", message, unit)]
    problems = []
    for key in ("apiVersion", "kind"):
        value = obj.get(key)
        if value is None or value == "":
            problems.append(Problem(source, index, "", key, "Required value", unit))
        elif not isinstance(value, str):
            problems.append(Problem(source, index, "", key, f"Invalid value: {format_value(value)}: must be a string",
                                    unit))
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
