"""The fast YAML readers behind :mod:`dataplane.input.loader`, with go-yaml's semantics (:mod:`dataplane.input.goyaml`).

:func:`_load_yaml_all` reads a multi-document YAML text as
``yaml.load_all(text, Loader=GoSafeLoader)`` would, several times faster: text
in the plain block subset that kubectl writes is read by
:func:`_parse_simple_yaml` without PyYAML; anything else is composed by the
(C) loader and built by :func:`_construct_plain`, or by the loader's own
constructor for what that one leaves (merge keys, explicit tags, keys set
twice, errors). A document the API server would refuse (keys set twice,
excessive aliasing...) becomes a :class:`RejectedDocument` saying why, so that
the other documents are still read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from .goyaml import (
    MAP_TAG,
    PLAIN_TAG,
    SEQ_TAG,
    STR_TAG,
    DocumentError,
    GoSafeLoader,
    UnsupportedKey,
    check_expansion,
    go_scalar,
    json_key,
    plain_value,
)


@dataclass(frozen=True, slots=True)
class RejectedDocument:
    """A document of the stream that cannot be read; ``messages`` says why, one line each."""

    messages: tuple[str, ...]


# ------------------------------------------------------ plain block YAML, fast
# ``kubectl get -o yaml`` (and PyYAML's own dump) writes a small subset of YAML:
# block mappings and sequences, one scalar per line, plain or quoted on one
# line, ``{}``/``[]`` for empty collections. _parse_simple_yaml reads exactly
# that subset, builds what GoSafeLoader would (plain scalars are resolved by
# go-yaml's rules, keys made JSON keys), and gives up (None) on anything else:
# comments, anchors, tags, flow collections, multi-line or escaped scalars,
# merge keys, keys set twice or that JSON cannot have, non-ASCII text, odd
# indentation, errors. A None sends the text through PyYAML.
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
    """One-line scalar text (after ``key: `` or ``- ``, or a key) -> value, as GoSafeLoader builds it.

    Raises _NotSimple for what the fast reader leaves to PyYAML (``{}`` and
    ``[]`` included: the caller builds those). Plain scalars are resolved by
    :func:`dataplane.input.goyaml.plain_value`.
    """

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
        return plain_value(text)

    return convert


def _simple_key(scalar: Callable[[str], Any], text: str) -> str:
    """The JSON key of a mapping key's text; _NotSimple for a merge key or a key JSON cannot have."""
    if text == "<<":
        raise _NotSimple(text)
    value = scalar(text)  # refuses what the fast reader does not read
    if text[0] == "'" or text[0] == '"':
        return value
    try:
        return json_key(go_scalar(text))
    except UnsupportedKey:
        raise _NotSimple(text) from None


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
        return entry(_simple_key(scalar, key_text), rest, col)

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
        entries = 0
        while i < count:
            kind, key_col, key, value = tokens[i]
            if key_col != col or kind < _ENTRY:
                break
            i += 1
            entries += 1
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
        if len(result) != entries:
            raise _NotSimple("a key set twice")  # an error: PyYAML's path reports it
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



class _NotPlain(Exception):
    """A document needs the loader's own constructor (merge keys, explicit tags, keys set twice...)."""


class _FastYAMLLoader(GoSafeLoader):
    """GoSafeLoader for one text, disposed of by :meth:`close`."""

    def close(self) -> None:
        """Dispose of the parser."""
        self.dispose()


def _load_yaml_all(text: str) -> list[Any]:
    """``yaml.load_all(text, Loader=GoSafeLoader)``, several times faster, a refused document
    becoming a RejectedDocument instead of an error.

    Plain block text is read by :func:`_parse_simple_yaml`. Otherwise each
    document is composed by the (C) loader, its aliases checked (only if the
    text has a ``*``: no alias without one), and built by
    :func:`_construct_plain`; a document that one leaves is built by the
    loader's constructor, so results and errors are exactly GoSafeLoader's.
    """
    simple = _parse_simple_yaml(text)
    if simple is not None:
        return simple
    may_alias = _may_have_aliases(text)
    loader = _FastYAMLLoader(text)
    try:
        documents: list[Any] = []
        while loader.check_node():
            node = loader.get_node()
            try:
                if may_alias:
                    check_expansion(node, text)
                try:
                    data = _construct_plain(node)
                except Exception:  # includes _NotPlain; the loader's constructor decides
                    data = loader.build_document(node)
            except DocumentError as err:
                data = RejectedDocument(err.messages)
            documents.append(data)
        return documents
    finally:
        loader.close()


_NOT_BEFORE_ALIAS = frozenset("\"'.-_/*~=+@#$%^&()<>?!;|\\`")


def _may_have_aliases(text: str) -> bool:
    """False only if ``text`` surely holds no alias: no ``&`` (no anchor), or every ``*`` follows a
    character that cannot precede an alias (a letter, a digit, a quote, ``.``...: inside a scalar)."""
    if "&" not in text:
        return False
    star = text.find("*")
    while star >= 0:
        before = text[star - 1] if star else " "
        if not (before.isalnum() or before in _NOT_BEFORE_ALIAS):
            return True
        star = text.find("*", star + 1)
    return False


def _construct_plain(root: Any) -> Any:
    """Build one composed document like GoSafeLoader, or raise (see :func:`_load_yaml_all`).

    Handles maps, sequences, plain and string scalars, with plain or string
    keys; anything else raises.
    """
    built: dict[int, Any] = {}  # id(collection node) -> object: aliases share it, as in PyYAML
    values: dict[str, Any] = {}  # plain scalar text -> value
    keys: dict[str, str] = {}  # plain key text -> JSON key

    def build(node: Any) -> Any:
        tag = node.tag
        if type(node) is ScalarNode:
            if tag == STR_TAG:
                return node.value
            if tag != PLAIN_TAG:
                raise _NotPlain(tag)
            text = node.value
            value = values.get(text, values)
            if value is values:
                value = values[text] = plain_value(text)
            return value
        done = built.get(id(node), built)
        if done is not built:
            return done
        if tag == MAP_TAG and type(node) is MappingNode:
            mapping: dict[str, Any] = {}
            built[id(node)] = mapping
            # String scalars (most keys and values) are inlined: no call per node.
            for key_node, value_node in node.value:
                if type(key_node) is not ScalarNode:
                    raise _NotPlain("a collection as a key")
                if key_node.tag == STR_TAG:
                    key = key_node.value
                elif key_node.tag == PLAIN_TAG:
                    key = keys.get(key_node.value)
                    if key is None:
                        if key_node.value == "<<":
                            raise _NotPlain("merge key")
                        key = keys[key_node.value] = json_key(go_scalar(key_node.value))
                else:
                    raise _NotPlain(key_node.tag)
                if value_node.tag == STR_TAG and type(value_node) is ScalarNode:
                    mapping[key] = value_node.value
                else:
                    mapping[key] = build(value_node)
            if len(mapping) != len(node.value):
                raise _NotPlain("a key set twice")
            return mapping
        if tag == SEQ_TAG and type(node) is SequenceNode:
            sequence: list[Any] = []
            built[id(node)] = sequence
            for item in node.value:
                sequence.append(item.value if item.tag == STR_TAG and type(item) is ScalarNode else build(item))
            return sequence
        raise _NotPlain(tag)

    return build(root)
