"""YAML read as the Kubernetes API server and kubectl read it: sigs.k8s.io/yaml over go-yaml v2.

The API server turns a YAML body into JSON with ``YAMLToJSON`` (go-yaml v2
decoding into ``interface{}``, then ``json.Marshal``); kubectl's default
``--validate=strict`` also runs the strict decoder. PyYAML implements YAML 1.1
as written, which differs; this module gives PyYAML go-yaml's rules:

* Plain scalars resolve as in go-yaml v2's ``resolve.go`` (:func:`go_scalar`):
  bools are ``y Y yes Yes YES on On ON true True TRUE`` and ``n N no No NO off
  Off OFF false False FALSE``; null is ``~ null Null NULL`` or nothing; an
  integer has its ``_`` removed and is read with Go's base prefixes (``0x1F``,
  ``0o17``, ``0b1``, and ``017`` = 15); a float is ``[-+]?(.N|N(.N*)?)([eE][-+]?N)?``
  or ``.inf``/``.nan``. There are no base-60 numbers (``1:20`` is a string),
  and timestamps, ``=`` and ``<<`` (as a value) stay strings.
* A value then goes through JSON: a float with an integral value below 1e21 is
  written as an integer (``80.0`` and ``8e1`` are 80), as ``json.Marshal`` does.
* A key becomes a JSON object key (:func:`json_key`): a string as it is, an
  integer in decimal, a bool as ``true``/``false``, a float as Go's
  ``FormatFloat(f, 'g', -1, 32)``; null or an integer beyond int64 is an error.
* Strict decoding: a key set twice in one mapping (merge keys included) is an
  error ``line N: key "x" already set in map``, N being the line of the second
  value.
* Aliases: a document whose aliases make go-yaml decode too many nodes again is
  refused (``document contains excessive aliasing``, go-yaml's own bound, see
  :func:`check_expansion`), as is one whose aliases repeat more than
  :data:`MAX_ALIAS_TEXT` characters of scalars, or an anchor that contains an
  alias to itself.

A document breaking these rules raises :class:`DocumentError` (a
``yaml.YAMLError``) listing every such error in it, in line order.
"""
from __future__ import annotations

import math
import operator
import re
import struct
from typing import Any, Callable, Optional, Union

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .messages import format_value, quote

PLAIN_TAG = "tag:kube-dataplane,2024:plain"  # a plain (unquoted, untagged) scalar, resolved when built
STR_TAG = "tag:yaml.org,2002:str"
SEQ_TAG = "tag:yaml.org,2002:seq"
MAP_TAG = "tag:yaml.org,2002:map"
MERGE_TAG = "tag:yaml.org,2002:merge"
_TAG_PREFIX = "tag:yaml.org,2002:"

MAX_ALIAS_TEXT = 16 << 20
"""Characters of scalar text that aliases may repeat in one document (16 MiB: five
times the API server's 3 MiB request limit)."""

# ------------------------------------------------------------ plain scalars

_NOT_FOUND = object()
_WORDS: dict[str, Any] = {}
for _spellings, _value in (
    ("y Y yes Yes YES true True TRUE on On ON", True),
    ("n N no No NO false False FALSE off Off OFF", False),
    ("~ null Null NULL", None),
    (".nan .NaN .NAN", math.nan),
    (".inf .Inf .INF +.inf +.Inf +.INF", math.inf),
    ("-.inf -.Inf -.INF", -math.inf),
):
    _WORDS.update(dict.fromkeys(_spellings.split(), _value))
_WORDS[""] = None

# go-yaml's hint: the first character says what a plain scalar may be ("M": only a word above).
_HINTS = {**dict.fromkeys("+-", "S"), **dict.fromkeys("0123456789", "D"), **dict.fromkeys("yYnNtTfFoO~", "M"),
          ".": "."}
# strconv.ParseInt/ParseUint(s, 0, 64) syntax first (a sign, then 0x, 0o, 0b, 0 for octal, or decimal),
# then go-yaml's yamlStyleFloat: one match tells which, and fails fast for anything else.
_NUMBER = re.compile(r"""([-+]?)(?:
    0[xX]([0-9a-fA-F]+) | 0[oO]([0-7]+) | 0[bB]([01]+) | (0[0-7]*|[1-9][0-9]*)
    | ((?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?))""", re.VERBOSE).fullmatch
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?").fullmatch
_DOT_FLOAT = re.compile(r"\.[0-9_]+(?:[eE][-+]?[0-9_]+)?").fullmatch
_SIGNED_BINARY = re.compile(r"[-+][01]+").fullmatch
_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1


def go_scalar(text: str) -> Any:
    """The value go-yaml v2 gives the plain scalar ``text`` in an ``interface{}``.

    Raises ValueError for a decimal integer beyond Python's digit limit.
    """
    hint = _HINTS.get(text[:1], "M" if not text else None)
    if hint is None:
        return text
    word = _WORDS.get(text, _NOT_FOUND)
    if word is not _NOT_FOUND:
        return word
    if hint == "M":
        return text
    if hint == ".":  # strconv.ParseFloat on the text as it is
        if _DOT_FLOAT(text):
            try:
                number = float(text)  # Go's and Python's rules for "_" agree: only between digits
            except ValueError:
                return text
            if not math.isinf(number):
                return number
        return text
    # A digit or a sign: resolve.go's int, uint, float, "0b", big int, else string.
    if text.count(".") > 1 or text.count("-") > 2:  # an IP address, a UID...: no number
        return text
    plain = text.replace("_", "") if "_" in text else text
    match = _NUMBER(plain)
    if match is None:
        if plain.startswith("0b") and _SIGNED_BINARY(plain[2:]):  # strconv.ParseInt(plain[2:], 2, 64)
            value = int(plain[2:], 2)
            if _INT64_MIN <= value <= _INT64_MAX:
                return value
        return text
    sign, hexadecimal, octal, binary, integer, number = match.groups()
    if number is not None:
        value = float(plain)
        return text if math.isinf(value) else value  # strconv.ParseFloat fails with ErrRange instead
    if hexadecimal is not None:
        value = int(hexadecimal, 16)
    elif octal is not None:
        value = int(octal, 8)
    elif binary is not None:
        value = int(binary, 2)
    else:
        value = int(integer, 8 if integer[0] == "0" else 10)
    if sign == "-":
        value = -value
    if _INT64_MIN <= value <= _INT64_MAX or (not sign and value <= _UINT64_MAX):
        return value
    if _FLOAT(plain):  # out of range: a decimal (or octal) integer is read as a float
        number_value = float(plain)
        if not math.isinf(number_value):
            return number_value
    if not sign:  # ParseUint's range error: big.Int.SetString(plain, 0) (ParseUint refuses any sign)
        return value
    return text


def json_value(value: Any) -> Any:
    """``value`` as it comes back from ``json.Marshal``: an integral float below 1e21 is an integer."""
    if type(value) is float and value.is_integer() and -1e21 < value < 1e21:
        return int(value)
    return value


def plain_value(text: str) -> Any:
    """The JSON value of the plain scalar ``text`` (see the module's documentation)."""
    if text and text[0] not in _HINTS:  # most text: a string, known from its first character
        return text
    value = go_scalar(text)
    return json_value(value) if type(value) is float else value


class UnsupportedKey(ValueError):
    """A mapping key that sigs.k8s.io/yaml cannot turn into a JSON object key."""


def json_key(key: Any) -> str:
    """The JSON object key sigs.k8s.io/yaml makes of a go-yaml key; UnsupportedKey for null,
    integers beyond int64 and any other type."""
    kind = type(key)
    if kind is str:
        return key
    if kind is bool:
        return "true" if key else "false"
    if kind is int and _INT64_MIN <= key <= _INT64_MAX:
        return str(key)
    if kind is float:
        return _format_float32(key)
    raise UnsupportedKey(key)


def _format_float32(number: float) -> str:
    """Go's ``strconv.FormatFloat(number, 'g', -1, 32)`` with go-yaml's names for infinities and NaN."""
    if math.isnan(number):
        return ".nan"
    try:
        single = struct.unpack("<f", struct.pack("<f", number))[0]
    except OverflowError:
        single = math.copysign(math.inf, number)
    if math.isinf(single):
        return ".inf" if single > 0 else "-.inf"
    for precision in range(9):  # the shortest decimal that reads back as the same float32
        text = f"{single:.{precision}e}"
        if struct.unpack("<f", struct.pack("<f", float(text)))[0] == single:
            break
    mantissa, exponent_text = text.split("e")
    sign = "-" if mantissa.startswith("-") else ""
    digits = mantissa.lstrip("-").replace(".", "").rstrip("0") or "0"
    exponent = int(exponent_text)
    if exponent < -4 or exponent >= 6:  # %e, as Go's shortest %g decides
        fraction = f".{digits[1:]}" if len(digits) > 1 else ""
        return f"{sign}{digits[0]}{fraction}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    if exponent < 0:
        return f"{sign}0.{'0' * (-exponent - 1)}{digits}"
    whole, fraction = digits[:exponent + 1].ljust(exponent + 1, "0"), digits[exponent + 1:]
    return f"{sign}{whole}.{fraction}" if fraction else f"{sign}{whole}"


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG_PREFIX):] if tag.startswith(_TAG_PREFIX) else tag


def _tagged_scalar(tag: str, text: str) -> tuple[Any, Optional[str]]:
    """(value, error) for ``!!int``/``!!float``/``!!bool``/``!!null`` ``text``: go-yaml's resolve(tag, in)."""
    value = go_scalar(text)
    if value is None:
        resolved = "tag:yaml.org,2002:null"
    elif type(value) is bool:
        resolved = "tag:yaml.org,2002:bool"
    elif type(value) is int:
        resolved = "tag:yaml.org,2002:int"
    elif type(value) is float:
        resolved = "tag:yaml.org,2002:float"
    else:
        resolved = STR_TAG
    if resolved == tag:
        return json_value(value), None
    if tag == "tag:yaml.org,2002:float" and resolved == "tag:yaml.org,2002:int":
        return value, None
    return text, f"cannot decode {_short_tag(resolved)} `{_clip(text)}` as a {_short_tag(tag)}"


# ------------------------------------------------------------------ errors


class DocumentError(yaml.YAMLError):
    """A YAML document the API server would refuse; ``messages`` says why, one line each."""

    def __init__(self, messages: list[str]):
        self.messages: tuple[str, ...] = tuple(messages)
        super().__init__("; ".join(self.messages))


def _line(node: Node) -> int:
    return node.start_mark.line + 1


# ---------------------------------------------------------------- aliases

_ANCHOR = re.compile(r"(?:!\S*\s+)?&([^\s,\[\]{}]+)")


def _allowed_alias_ratio(decodes: int) -> float:
    """go-yaml v2's ``allowedAliasRatio``: 99% up to 400,000 decodes, 10% from 4,000,000."""
    if decodes <= 400_000:
        return 0.99
    if decodes >= 4_000_000:
        return 0.10
    return 0.99 - 0.89 * ((decodes - 400_000) / 3_600_000)


def check_expansion(root: Node, text: str = "") -> None:
    """Raise DocumentError if the aliases of the composed document ``root`` expand too much.

    go-yaml v2 counts every node it decodes (each use of an alias decodes the
    anchored value again) and fails with "document contains excessive
    aliasing" once more than 100 of them came from aliases, more than 1,000 in
    all, and the share from aliases exceeds :func:`_allowed_alias_ratio`.
    This walk counts in the same order (merge keys included, which go-yaml
    skips: one node each) without expanding anything: each collection's
    expanded size is computed once, so it takes time linear in the document's
    own size. It also refuses aliases repeating more than MAX_ALIAS_TEXT
    characters of scalars, and an anchor containing an alias to itself
    (``text``, the document's text, gives the anchor's name).
    """
    sizes: dict[int, tuple[int, int]] = {}  # id(collection) -> (nodes, scalar characters) once expanded
    seen_scalars: set[int] = set()
    on_path: set[int] = set()
    decodes, aliased, aliased_text = 1, 0, 0  # the document node is decoded too

    def check() -> None:
        if aliased > 100 and decodes > 1000 and aliased / decodes > _allowed_alias_ratio(decodes):
            raise DocumentError(["document contains excessive aliasing"])
        if aliased_text > MAX_ALIAS_TEXT:
            raise DocumentError([f"document contains excessive aliasing: aliases repeat over "
                                 f"{MAX_ALIAS_TEXT >> 20} MiB of text"])

    def visit(node: Node) -> tuple[int, int]:
        """The expanded size of a collection seen for the first time, counting as go-yaml decodes it."""
        nonlocal decodes, aliased, aliased_text
        on_path.add(id(node))
        decodes += 1
        if aliased > 100:
            check()
        nodes, characters = 1, 0
        children = node.value if type(node) is SequenceNode else [child for pair in node.value for child in pair]
        for child in children:
            if type(child) is ScalarNode:
                length = len(child.value)
                characters += length
                if id(child) in seen_scalars:  # an alias of a scalar: the alias node, then the scalar
                    nodes += 2
                    decodes += 2
                    aliased += 1
                    aliased_text += length
                    check()
                else:
                    seen_scalars.add(id(child))
                    nodes += 1
                    decodes += 1
                    if aliased > 100:
                        check()
                continue
            known = sizes.get(id(child))
            if known is not None:  # an alias of a collection: the alias node, then all of it again
                child_nodes, child_characters = known
                nodes += 1 + child_nodes
                characters += child_characters
                decodes += 1 + child_nodes
                aliased += child_nodes
                aliased_text += child_characters
                check()
            elif id(child) in on_path:
                raise DocumentError([_contains_itself(child, text)])
            else:
                child_nodes, child_characters = visit(child)
                nodes += child_nodes
                characters += child_characters
        on_path.discard(id(node))
        size = sizes[id(node)] = (nodes, characters)
        return size

    if type(root) is not ScalarNode:
        visit(root)


def _contains_itself(node: Node, text: str) -> str:
    """go-yaml's error for an anchor whose value holds an alias to it, with the anchor's line."""
    # (a mark's index counts characters only in ASCII text, whatever libyaml's version)
    anchor = _ANCHOR.match(text, node.start_mark.index) if text.isascii() else None
    name = f" '{anchor.group(1)}'" if anchor else ""
    return f"line {_line(node)}: anchor{name} value contains itself"


# ----------------------------------------------------------------- loader

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class GoSafeLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """PyYAML's (C) safe loader reading YAML as go-yaml v2 and sigs.k8s.io/yaml do (see the module).

    ``yaml.load_all(text, Loader=GoSafeLoader)`` raises DocumentError for a
    document breaking the rules above. Plain scalars are composed with the tag
    PLAIN_TAG and resolved when built; explicit tags keep their meaning
    (``!!str 1`` is a string, ``!!int 1:20`` an error).
    """

    yaml_implicit_resolvers: dict = {}
    yaml_path_resolvers: dict = {}
    yaml_constructors: dict = dict(SafeConstructor.yaml_constructors)

    def __init__(self, stream: Union[str, bytes, Any]):
        super().__init__(stream)
        self.text = stream if isinstance(stream, str) else ""
        self.errors: list[tuple[int, str]] = []
        # No path resolvers: the hooks the composer calls for each node do nothing.
        self.descend_resolver = operator.is_  # type: ignore[method-assign]  # (parent, index) -> ignored
        self.ascend_resolver = tuple  # type: ignore[method-assign]  # () -> ignored

    def resolve(self, kind: type, value: Any, implicit: tuple) -> str:
        """Plain scalars get PLAIN_TAG (resolved when built), other nodes their kind's tag."""
        if kind is ScalarNode:
            return PLAIN_TAG if implicit[0] else STR_TAG
        return SEQ_TAG if kind is SequenceNode else MAP_TAG

    def construct_document(self, node: Node) -> Any:
        """Check the document's aliases, then build it (see :meth:`build_document`)."""
        check_expansion(node, self.text)
        return self.build_document(node)

    def build_document(self, node: Node) -> Any:
        """Build one composed document; DocumentError lists its errors in line order."""
        self.errors = []
        data = super().construct_document(node)
        if self.errors:
            found = sorted(set(self.errors))
            self.errors = []
            raise DocumentError([message for _, message in found])
        return data

    def record(self, node: Node, message: str) -> None:
        """Note an error of the document being built, at ``node``'s line."""
        self.errors.append((_line(node), f"line {_line(node)}: {message}"))

    def construct_plain(self, node: ScalarNode) -> Any:
        return plain_value(node.value)

    def construct_go_scalar(self, node: Node) -> Any:
        """An explicitly tagged ``!!int``, ``!!float``, ``!!bool`` or ``!!null`` scalar."""
        text = self.construct_scalar(node)
        value, error = _tagged_scalar(node.tag, text)
        if error:
            self.record(node, error)
        return value

    def construct_go_timestamp(self, node: Node) -> str:
        """``!!timestamp``: go-yaml gives an ``interface{}`` the text itself."""
        text = self.construct_scalar(node)
        if not self.timestamp_regexp.match(text):
            self.record(node, f"cannot decode !!str `{_clip(text)}` as a !!timestamp")
        return text

    def flatten_mapping(self, node: MappingNode) -> None:
        """SafeConstructor's merging, a plain ``<<`` key being a merge key (as in go-yaml)."""
        for key_node, _ in node.value:
            if type(key_node) is ScalarNode and key_node.tag == PLAIN_TAG and key_node.value == "<<":
                key_node.tag = MERGE_TAG
        super().flatten_mapping(node)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        """A mapping with JSON keys; merge keys merged; keys set twice recorded as errors."""
        if not isinstance(node, MappingNode):
            raise ConstructorError(None, None, f"expected a mapping node, but found {node.id}", node.start_mark)
        self.flatten_mapping(node)
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise ConstructorError("while constructing a mapping", node.start_mark,
                                       "found unhashable key", key_node.start_mark) from None
            try:
                key = json_key(key)
            except UnsupportedKey:
                self.record(key_node, f"unsupported map key: {_key_text(key)}")
                continue
            value = self.construct_object(value_node, deep=deep)
            if key in mapping:
                self.record(value_node, f"key {_quote_key(key)} already set in map")
                continue
            mapping[key] = value
        return mapping


def _key_text(key: Any) -> str:
    """A key JSON cannot have, shown as in messages (null, a number, a type's name)."""
    return format_value(key) if key is None or isinstance(key, (int, float)) else f"<{type(key).__name__}>"


def _quote_key(key: str) -> str:
    """``%#v`` of a string key (Go-quoted), cut to a readable length."""
    return quote(key)


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def _add_constructors(constructors: dict[str, Callable[..., Any]]) -> None:
    for tag, constructor in constructors.items():
        GoSafeLoader.add_constructor(tag, constructor)


_add_constructors({
    PLAIN_TAG: GoSafeLoader.construct_plain,
    "tag:yaml.org,2002:int": GoSafeLoader.construct_go_scalar,
    "tag:yaml.org,2002:float": GoSafeLoader.construct_go_scalar,
    "tag:yaml.org,2002:bool": GoSafeLoader.construct_go_scalar,
    "tag:yaml.org,2002:null": GoSafeLoader.construct_go_scalar,
    "tag:yaml.org,2002:timestamp": GoSafeLoader.construct_go_timestamp,
    STR_TAG: SafeConstructor.construct_yaml_str,
    SEQ_TAG: SafeConstructor.construct_yaml_seq,
    MAP_TAG: SafeConstructor.construct_yaml_map,
})
