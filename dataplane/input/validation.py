"""The rules every manifest field is checked by, phrased in the API server's words.

Name and value formats (``k8s.io/apimachinery/pkg/util/validation``), their fast
predicates for the common valid case, :class:`Checker` (one document's problems and
its typed field readers) and :func:`object_meta` (``metadata``), shared by the
per-kind builders (:mod:`.service`, :mod:`.endpoints`, :mod:`.node`, :mod:`.proxy_config`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterator, Optional, Sequence

from .. import ipaddrs
from ..errors import Problem
from ..model import PROTOCOLS, Labels, ObjectRef
from ..ruletext import shown
from .messages import format_value, quote


# ======================================================================
# Name and value formats (k8s.io/apimachinery/pkg/util/validation)
# ======================================================================

_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character"
)
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + "(\\." + _DNS1123_LABEL_FMT + ")*"
_DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character"
)
_DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_DNS1035_LABEL_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
    "start with an alphabetic character, and end with an alphanumeric character"
)
_QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QUALIFIED_NAME_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
_LABEL_VALUE_FMT = "(" + _QUALIFIED_NAME_FMT + ")?"
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)

_RE_DNS1123_LABEL = re.compile(_DNS1123_LABEL_FMT)
_RE_DNS1123_SUBDOMAIN = re.compile(_DNS1123_SUBDOMAIN_FMT)
_RE_DNS1035_LABEL = re.compile(_DNS1035_LABEL_FMT)
_RE_QUALIFIED_NAME = re.compile(_QUALIFIED_NAME_FMT)
_RE_LABEL_VALUE = re.compile(_LABEL_VALUE_FMT)
_RE_PORT_NAME_CHARSET = re.compile("[-a-z0-9]+")
_RE_LETTER = re.compile("[a-z]")

IP_ADDRESS_MSG = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
CIDR_MSG = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
PORT_RANGE_MSG = "must be between 1 and 65535, inclusive"
MAX_ENDPOINT_ADDRESSES = 100  # an EndpointSlice endpoint's addresses: read by its validator and its fast path


def _regex_error(message: str, fmt: str, *examples: str) -> str:
    """apimachinery's RegexError text, quirks (double space before ``or``) included."""
    if not examples:
        return f"{message} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{example}', " for example in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{fmt}')"


def _max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


def _byte_len(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


def dns1123_label_errors(value: str) -> list[str]:
    """Why ``value`` is not an RFC 1123 label (``IsDNS1123Label``); empty if it is one."""
    errors = []
    if _byte_len(value) > 63:
        errors.append(_max_len_error(63))
    if not _RE_DNS1123_LABEL.fullmatch(value):
        if _RE_DNS1123_SUBDOMAIN.fullmatch(value):
            errors.append("must not contain dots")
        else:
            errors.append(_regex_error(_DNS1123_LABEL_MSG, _DNS1123_LABEL_FMT, "my-name", "123-abc"))
    return errors


def dns1123_subdomain_errors(value: str) -> list[str]:
    """Why ``value`` is not an RFC 1123 subdomain (``IsDNS1123Subdomain``)."""
    errors = []
    if _byte_len(value) > 253:
        errors.append(_max_len_error(253))
    if not _RE_DNS1123_SUBDOMAIN.fullmatch(value):
        errors.append(_regex_error(_DNS1123_SUBDOMAIN_MSG, _DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errors


def dns1035_label_errors(value: str) -> list[str]:
    """Why ``value`` is not an RFC 1035 label (``IsDNS1035Label``), the rule for Service names."""
    errors = []
    if _byte_len(value) > 63:
        errors.append(_max_len_error(63))
    if not _RE_DNS1035_LABEL.fullmatch(value):
        errors.append(_regex_error(_DNS1035_LABEL_MSG, _DNS1035_LABEL_FMT, "my-name", "abc-123"))
    return errors


def qualified_name_errors(value: str) -> list[str]:
    """Why ``value`` is not a qualified name such as a label key (``IsQualifiedName``)."""
    parts = value.split("/")
    if len(parts) > 2:
        regex = _regex_error(_QUALIFIED_NAME_MSG, _QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc")
        return [
            f"a qualified name {regex} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    errors = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            errors.extend(f"prefix part {msg}" for msg in dns1123_subdomain_errors(prefix))
    if not name:
        errors.append("name part must be non-empty")
    elif _byte_len(name) > 63:
        errors.append(f"name part {_max_len_error(63)}")
    if not _RE_QUALIFIED_NAME.fullmatch(name):
        regex = _regex_error(_QUALIFIED_NAME_MSG, _QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc")
        errors.append(f"name part {regex}")
    return errors


def label_value_errors(value: str) -> list[str]:
    """Why ``value`` is not a label value (``IsValidLabelValue``)."""
    errors = []
    if _byte_len(value) > 63:
        errors.append(_max_len_error(63))
    if not _RE_LABEL_VALUE.fullmatch(value):
        errors.append(_regex_error(_LABEL_VALUE_MSG, _LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errors


# -- fast predicates for the common, valid case. Each is True exactly when the
# matching *_errors function returns no errors (a regex match means ASCII, so
# len() is the byte length); callers fall back to the *_errors function, which
# phrases the problems, only when a predicate is False.


def is_dns1123_label(value: str) -> bool:
    """Whether :func:`dns1123_label_errors` finds nothing."""
    return len(value) <= 63 and _RE_DNS1123_LABEL.fullmatch(value) is not None


def _is_dns1035_label(value: str) -> bool:
    return len(value) <= 63 and _RE_DNS1035_LABEL.fullmatch(value) is not None


def is_name_dns1123_subdomain(value: str) -> bool:
    """Whether :func:`dns1123_subdomain_errors` finds nothing; uncached, for values that seldom
    repeat (the names of a cluster's Pods), which would only push the repeating ones out of
    :func:`is_dns1123_subdomain`'s cache."""
    return len(value) <= 253 and _RE_DNS1123_SUBDOMAIN.fullmatch(value) is not None


#: :func:`is_name_dns1123_subdomain`, cached: node names repeat in every slice
is_dns1123_subdomain = lru_cache(maxsize=4096)(is_name_dns1123_subdomain)


@lru_cache(maxsize=4096)
def _is_label_key(value: str) -> bool:  # cached: a cluster uses few label keys
    return not qualified_name_errors(value)


def _is_label_value(value: str) -> bool:
    return len(value) <= 63 and _RE_LABEL_VALUE.fullmatch(value) is not None


def label_map(value: Any) -> Optional[Labels]:
    """A label map on which :meth:`Checker.labels` reports nothing, as its sorted pairs (unset:
    ``()``); None when it is not a mapping or a key or value is not a valid string."""
    if value is None:
        return ()
    if type(value) is not dict:
        return None
    for label_key, label_value in value.items():
        if not (
            type(label_key) is str and type(label_value) is str
            and _is_label_key(label_key) and _is_label_value(label_value)
        ):
            return None
    return tuple(sorted(value.items()))


def port_name_errors(value: str) -> list[str]:
    """Why ``value`` is not an IANA_SVC_NAME (``IsValidPortName``): named target/container ports."""
    errors = []
    if _byte_len(value) > 15:
        errors.append(_max_len_error(15))
    if not _RE_PORT_NAME_CHARSET.fullmatch(value):
        errors.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    elif not _RE_LETTER.search(value):
        errors.append("must contain at least one letter (a-z)")
    if "--" in value:
        errors.append("must not contain consecutive hyphens")
    if value.startswith("-") or value.endswith("-"):
        errors.append("must not begin or end with a hyphen")
    return errors


def port_number_errors(value: int) -> list[str]:
    """Why ``value`` is not a port number (``IsValidPortNum``)."""
    return [] if 1 <= value <= 65535 else [PORT_RANGE_MSG]


def special_ip_errors(value: str) -> list[str]:
    """Why a valid IP may not be an endpoint or external IP (``ValidateEndpointIP``).

    Unspecified and loopback addresses make no sense there, and link-local ones
    are for node-centric uses such as metadata services.
    """
    address = ipaddrs.parse_ip(value)
    errors = []
    if address.is_unspecified:
        errors.append(f"may not be unspecified ({value})")
    if address.is_loopback:
        errors.append("may not be in the loopback range (127.0.0.0/8, ::1/128)")
    if address.is_link_local:
        errors.append("may not be in the link-local range (169.254.0.0/16, fe80::/10)")
    if ipaddrs.is_link_local_multicast(address):
        errors.append("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)")
    return errors


# ======================================================================
# Reporting problems and reading typed fields from one document
# ======================================================================


def field_path(path: str, key: str) -> str:
    """The path of field ``key`` under ``path`` (``spec.ports``)."""
    return f"{path}.{key}" if path else key


def index_path(path: str, i: int) -> str:
    """The path of item ``i`` of the list at ``path`` (``spec.ports[1]``)."""
    return f"{path}[{i}]"



def one_line(text: str) -> str:
    """``text`` as it is if every character of it is printable, else double-quoted with
    escapes: input shown in a message (an object's name, a kind) never breaks its line."""
    return text if text.isprintable() else shown(text)


class Checker:
    """Collects one document's problems and reads its fields with type checks.

    Field errors are phrased like apimachinery's ``field.Error``: ``Invalid
    value: V: detail``, ``Required value``, ``Unsupported value: V: supported
    values: ...``, ``Duplicate value: V``, ``Forbidden: detail``, ``Too many``.
    A value of the wrong JSON type is reported once, as ``Invalid value: V:
    must be a TYPE``; readers then return a fallback so that later rules do
    not report it again.
    """

    def __init__(self, source: str, index: int, kind: str, unit: str = "document"):
        self.source = source
        self.index = index
        self.kind = kind
        self.unit = unit  # what ``index`` counts (see dataplane.input.loader.Document)
        self.namespace = ""
        self.name = ""
        self._found: list[tuple[str, str]] = []

    # -- identity

    def identify(self, namespace: str, name: str) -> None:
        """Record which object this document is, for problem texts and refs."""
        self.namespace, self.name = namespace, name

    @property
    def label(self) -> str:
        """``Kind namespace/name`` (``Kind name`` when cluster-scoped, ``Kind`` when unnamed)."""
        if not self.name:
            return self.kind
        return f"{self.kind} {one_line(self.ref().display)}"

    def ref(self) -> ObjectRef:
        """The object's reference (kind, namespace/name, where it was read)."""
        return ObjectRef(self.kind, self.namespace, self.name, self.source, self.index, self.unit)

    def problems(self) -> list[Problem]:
        """Every problem found in the document, labelled with the object."""
        if not self._found:
            return []
        label = self.label
        return [Problem(self.source, self.index, label, path, message, self.unit) for path, message in self._found]

    # -- field errors

    def add(self, path: str, message: str) -> None:
        self._found.append((path, message))

    def invalid(self, path: str, value: Any, detail: str) -> None:
        self.add(path, f"Invalid value: {format_value(value)}: {detail}")

    def required(self, path: str, detail: str = "") -> None:
        self.add(path, f"Required value: {detail}" if detail else "Required value")

    def forbidden(self, path: str, detail: str) -> None:
        self.add(path, f"Forbidden: {detail}")

    def duplicate(self, path: str, value: Any) -> None:
        self.add(path, f"Duplicate value: {format_value(value)}")

    def unsupported(self, path: str, value: Any, supported: Sequence[str]) -> None:
        choices = ", ".join(quote(choice) for choice in supported)
        self.add(path, f"Unsupported value: {format_value(value)}: supported values: {choices}")

    def too_many(self, path: str, actual: int, maximum: int) -> None:
        self.add(path, f"Too many: {actual}: must have at most {maximum} items")

    def all_invalid(self, path: str, value: Any, messages: list[str]) -> bool:
        """Report each message as Invalid; True if there were none."""
        for message in messages:
            self.invalid(path, value, message)
        return not messages

    # -- typed readers; a missing key and an explicit null both mean "unset"

    def get_map(self, parent: dict, key: str, path: str) -> dict:
        """The mapping at ``key`` ({} when unset or of the wrong type)."""
        value = parent.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.invalid(path, value, "must be a mapping")
            return {}
        return value

    def get_list(self, parent: dict, key: str, path: str) -> list:
        """The list at ``key`` ([] when unset or of the wrong type)."""
        value = parent.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.invalid(path, value, "must be a list")
            return []
        return value

    def get_maps(self, parent: dict, key: str, path: str) -> Iterator[tuple[str, dict]]:
        """``(item path, item)`` for each mapping in the list at ``key``; other items are reported."""
        return self.each_map(self.get_list(parent, key, path), path)

    def each_map(self, items: list, path: str) -> Iterator[tuple[str, dict]]:
        """``(item path, item)`` for each mapping in ``items``; other items are reported."""
        for i, item in enumerate(items):
            item_path = index_path(path, i)
            if isinstance(item, dict):
                yield item_path, item
            else:
                self.invalid(item_path, item, "must be a mapping")

    def get_str(self, parent: dict, key: str, path: str, default: Optional[str] = "") -> Optional[str]:
        """The string at ``key``; ``default`` when unset, None when of the wrong type."""
        value = parent.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.invalid(path, value, "must be a string")
            return None
        return value

    def get_strs(self, parent: dict, key: str, path: str) -> Optional[list[str]]:
        """The list of strings at ``key`` ([] when unset); None if it or an item has the wrong type."""
        value = parent.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.invalid(path, value, "must be a list")
            return None
        wrong = [i for i, item in enumerate(value) if not isinstance(item, str)]
        for i in wrong:
            self.invalid(index_path(path, i), value[i], "must be a string")
        return None if wrong else value

    def get_int(self, parent: dict, key: str, path: str, default: Optional[int] = None) -> Optional[int]:
        """The integer at ``key``; ``default`` when unset, None when of the wrong type."""
        value = parent.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.invalid(path, value, "must be an integer")
            return None
        return value

    def get_bool(self, parent: dict, key: str, path: str, default: Optional[bool]) -> Optional[bool]:
        """The boolean at ``key``; ``default`` when unset or of the wrong type."""
        value = parent.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.invalid(path, value, "must be a boolean")
            return default
        return value

    def one_of(self, parent: dict, key: str, path: str, supported: Sequence[str], default: str) -> str:
        """A string that must be one of ``supported``; ``default`` when unset, empty or wrong."""
        value = self.get_str(parent, key, path, default="")
        if not value:
            return default
        if value not in supported:
            self.unsupported(path, value, supported)
            return default
        return value

    def labels(self, parent: dict, key: str, path: str) -> Labels:
        """A label map (or selector) validated like ``ValidateLabels``, as sorted pairs."""
        value = parent.get(key)
        if type(value) is dict:  # fast path: every key and value a valid string
            valid = label_map(value)
            if valid is not None:
                return valid
        pairs = []
        for label_key, value in self.get_map(parent, key, path).items():
            if not isinstance(label_key, str):
                self.invalid(path, label_key, "must be a string")
                continue
            if not isinstance(value, str):
                self.invalid(f"{path}[{one_line(label_key)}]", value, "must be a string")
                continue
            self.all_invalid(path, label_key, qualified_name_errors(label_key))
            self.all_invalid(path, value, label_value_errors(value))
            pairs.append((label_key, value))
        return tuple(sorted(pairs))

    # -- shared value rules

    def port_number(self, parent: dict, key: str, path: str, default: Optional[int] = 0) -> Optional[int]:
        """An integer port that must be 1..65535 (unset reads as ``default``, checked too)."""
        port = self.get_int(parent, key, path, default)
        if port is not None:
            self.all_invalid(path, port, port_number_errors(port))
        return port

    def protocol(self, parent: dict, path: str) -> str:
        """``protocol``, defaulted to TCP; must be TCP, UDP or SCTP.

        An unsupported value is returned as given (after being reported), so
        that it does not pass for TCP in later duplicate checks.
        """
        value = self.get_str(parent, "protocol", path) or "TCP"
        if value not in PROTOCOLS:
            self.unsupported(path, value, sorted(PROTOCOLS))
        return value

    def ip(self, path: str, value: str) -> Optional[str]:
        """Canonical form of an IP literal, or None after reporting it invalid."""
        try:
            return ipaddrs.canonical_ip(value)
        except ValueError:
            self.invalid(path, value, IP_ADDRESS_MSG)
            return None

    def cidr(self, path: str, value: str, message: str = CIDR_MSG) -> Optional[str]:
        """Canonical form of a CIDR, or None after reporting it invalid."""
        try:
            return ipaddrs.canonical_cidr(value)
        except ValueError:
            self.invalid(path, value, message)
            return None

    def endpoint_ip(self, path: str, value: str) -> bool:
        """Report a (valid) IP that may not be an endpoint or external IP; True if it may."""
        return self.all_invalid(path, value, special_ip_errors(value))

    def node_name(self, parent: dict, key: str, path: str) -> Optional[str]:
        """An optional node name (an RFC 1123 subdomain)."""
        name = self.get_str(parent, key, path, default=None)
        if name is not None:
            self.all_invalid(path, name, dns1123_subdomain_errors(name))
        return name

    def dns_label(self, parent: dict, key: str, path: str) -> Optional[str]:
        """An optional RFC 1123 label (hostnames, subdomains)."""
        value = self.get_str(parent, key, path, default=None)
        if value is not None:
            self.all_invalid(path, value, dns1123_label_errors(value))
        return value


# ======================================================================
# Object metadata
# ======================================================================


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """An object's validated identity and labels, and its raw ``metadata`` for kind-specific fields."""

    namespace: str
    name: str
    labels: Labels
    metadata: dict


def object_meta(c: Checker, obj: dict, namespaced: bool, name_errors: Callable[[str], list[str]]) -> ObjectMeta:
    """Read and validate ``metadata`` (``ValidateObjectMeta``); identify the object to ``c``."""
    metadata = obj.get("metadata")
    if type(metadata) is dict:  # fast path: a valid name and namespace
        name = metadata.get("name")
        namespace = metadata.get("namespace")
        name_ok = _NAME_PREDICATES.get(name_errors)
        if type(name) is str and name and name_ok is not None and name_ok(name):
            if namespace is None or namespace == "":
                namespace = "default" if namespaced else ""
            elif not (namespaced and type(namespace) is str and is_dns1123_label(namespace)):
                namespace = None
            if namespace is not None:
                c.identify(namespace, name)
                return ObjectMeta(namespace, name, c.labels(metadata, "labels", "metadata.labels"), metadata)
    metadata = c.get_map(obj, "metadata", "metadata")
    name = c.get_str(metadata, "name", "metadata.name")
    namespace = c.get_str(metadata, "namespace", "metadata.namespace")
    if namespaced:
        namespace = namespace or "default"
    c.identify(namespace if namespaced else "", name or "")
    if name == "":
        c.required("metadata.name", "name or generateName is required")
    elif name is not None:
        c.all_invalid("metadata.name", name, name_errors(name))
    if namespaced:
        c.all_invalid("metadata.namespace", namespace, dns1123_label_errors(namespace))
    elif namespace:
        c.forbidden("metadata.namespace", "not allowed on this type")
    labels = c.labels(metadata, "labels", "metadata.labels")
    return ObjectMeta(namespace if namespaced else "", name or "", labels, metadata)


# The fast predicate of each name rule passed to object_meta.
_NAME_PREDICATES: dict[Callable[[str], list[str]], Callable[[str], bool]] = {
    dns1035_label_errors: _is_dns1035_label,
    dns1123_label_errors: is_dns1123_label,
    dns1123_subdomain_errors: is_dns1123_subdomain,
}

