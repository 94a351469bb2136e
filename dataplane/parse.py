"""Validating raw manifests and building the typed model (:mod:`dataplane.model`).

:func:`parse_cluster` turns the documents read by :mod:`dataplane.loader` into
a :class:`~dataplane.model.Cluster`. It validates every object the way the
API server (or kube-proxy, for its configuration) would, and reports problems
in the API server's words and field paths, e.g.::

    svc.yaml: document 2: Service default/web: spec.ports[1].nodePort: Invalid value: 70000: must be between 1 and 65535, inclusive

Every problem in every document is collected before one
:class:`~dataplane.errors.InputError` is raised; nothing is returned from input
with problems, and no input, however malformed, raises anything else.

Defaults are applied as the API server's defaulting would (protocol TCP,
sessionAffinity None, ...), IP literals and CIDRs are stored canonical (see
:mod:`dataplane.ipaddrs`), label maps become sorted ``(key, value)`` tuples,
and ``v1`` Endpoints are mirrored into EndpointSlices (:mod:`dataplane.mirror`).
Kinds the dataplane does not use are skipped with a warning.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterator, Optional, Sequence, TextIO

from . import ipaddrs
from .errors import InputError, Problem
from .ruletext import interface_name_errors, shown
from .ipaddrs import IPV4_PATTERN as _IPV4_PATTERN
from .loader import Document, document_problems, format_value, gc_paused, quote, read_documents
from .mirror import (
    ANNOTATION_LEADER,
    EndpointAddress,
    Endpoints,
    EndpointSubset,
    endpoints_to_slices,
    mirror_skip_reason,
    unmirrored_address_count,
)
from .model import (
    LABEL_SERVICE_NAME,
    PROTOCOLS,
    Cluster,
    ContainerPort,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    Labels,
    LoadBalancerIngress,
    Node,
    NodeAddress,
    ObjectRef,
    Pod,
    ProxyConfig,
    Service,
    ServicePort,
    labels_get,
)


@dataclass(frozen=True, slots=True)
class ParseResult:
    """The cluster read from the input, and warnings about what was skipped."""

    cluster: Cluster
    warnings: tuple[str, ...]


def load_cluster(paths: Sequence[str], stdin: Optional[TextIO] = None) -> ParseResult:
    """Read and validate manifest files (``-`` is stdin); raise InputError listing every problem."""
    documents, problems = read_documents(paths, stdin)
    try:
        result = parse_cluster(documents)
    except InputError as err:
        raise InputError([*problems, *err.problems]) from None
    if problems:
        raise InputError(problems)
    return result


def parse_cluster(docs: Sequence[Document]) -> ParseResult:
    """Validate documents and build the Cluster; raise InputError listing every problem."""
    with gc_paused():
        builder = _ClusterBuilder()
        for doc in docs:
            builder.add(doc)
        return builder.finish()


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


def _is_dns1123_label(value: str) -> bool:
    return len(value) <= 63 and _RE_DNS1123_LABEL.fullmatch(value) is not None


def _is_dns1035_label(value: str) -> bool:
    return len(value) <= 63 and _RE_DNS1035_LABEL.fullmatch(value) is not None


@lru_cache(maxsize=4096)
def _is_dns1123_subdomain(value: str) -> bool:  # cached: node names repeat in every slice
    return len(value) <= 253 and _RE_DNS1123_SUBDOMAIN.fullmatch(value) is not None


@lru_cache(maxsize=4096)
def _is_label_key(value: str) -> bool:  # cached: a cluster uses few label keys
    return not qualified_name_errors(value)


def _is_label_value(value: str) -> bool:
    return len(value) <= 63 and _RE_LABEL_VALUE.fullmatch(value) is not None


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


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _index(path: str, i: int) -> str:
    return f"{path}[{i}]"


class _Checker:
    """Collects one document's problems and reads its fields with type checks.

    Field errors are phrased like apimachinery's ``field.Error``: ``Invalid
    value: V: detail``, ``Required value``, ``Unsupported value: V: supported
    values: ...``, ``Duplicate value: V``, ``Forbidden: detail``, ``Too many``.
    A value of the wrong JSON type is reported once, as ``Invalid value: V:
    must be a TYPE``; readers then return a fallback so that later rules do
    not report it again.
    """

    def __init__(self, source: str, index: int, kind: str):
        self.source = source
        self.index = index
        self.kind = kind
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
        return f"{self.kind} {_one_line(self.ref().display)}"

    def ref(self) -> ObjectRef:
        return ObjectRef(self.kind, self.namespace, self.name, self.source, self.index)

    def problems(self) -> list[Problem]:
        label = self.label
        return [Problem(self.source, self.index, label, path, message) for path, message in self._found]

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
            item_path = _index(path, i)
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
            self.invalid(_index(path, i), value[i], "must be a string")
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
            for label_key, label_value in value.items():
                if not (
                    type(label_key) is str and type(label_value) is str
                    and _is_label_key(label_key) and _is_label_value(label_value)
                ):
                    break
            else:
                return tuple(sorted(value.items()))
        pairs = []
        for label_key, value in self.get_map(parent, key, path).items():
            if not isinstance(label_key, str):
                self.invalid(path, label_key, "must be a string")
                continue
            if not isinstance(value, str):
                self.invalid(f"{path}[{_one_line(label_key)}]", value, "must be a string")
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
class _Meta:
    namespace: str
    name: str
    labels: Labels
    metadata: dict


def _meta(c: _Checker, obj: dict, namespaced: bool, name_errors: Callable[[str], list[str]]) -> _Meta:
    """Read and validate ``metadata`` (``ValidateObjectMeta``); identify the object to ``c``."""
    metadata = obj.get("metadata")
    if type(metadata) is dict:  # fast path: a valid name and namespace
        name = metadata.get("name")
        namespace = metadata.get("namespace")
        name_ok = _NAME_PREDICATES.get(name_errors)
        if type(name) is str and name and name_ok is not None and name_ok(name):
            if namespace is None or namespace == "":
                namespace = "default" if namespaced else ""
            elif not (namespaced and type(namespace) is str and _is_dns1123_label(namespace)):
                namespace = None
            if namespace is not None:
                c.identify(namespace, name)
                return _Meta(namespace, name, c.labels(metadata, "labels", "metadata.labels"), metadata)
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
    return _Meta(namespace if namespaced else "", name or "", labels, metadata)


# The fast predicate of each name rule passed to _meta.
_NAME_PREDICATES: dict[Callable[[str], list[str]], Callable[[str], bool]] = {
    dns1035_label_errors: _is_dns1035_label,
    dns1123_label_errors: _is_dns1123_label,
    dns1123_subdomain_errors: _is_dns1123_subdomain,
}


# ======================================================================
# Service
# ======================================================================

SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
_TRAFFIC_POLICIES = ("Cluster", "Local")
_IP_FAMILIES = ("IPv4", "IPv6")
_IP_FAMILY_POLICIES = ("PreferDualStack", "RequireDualStack", "SingleStack")
_SESSION_AFFINITIES = ("ClientIP", "None")
_IP_MODES = ("Proxy", "VIP")
DEFAULT_AFFINITY_TIMEOUT = 10800
MAX_AFFINITY_TIMEOUT = 86400


def _parse_service(c: _Checker, obj: dict) -> Service:
    """A ``v1`` Service, validated like ``ValidateService`` after v1 defaulting."""
    meta = _meta(c, obj, True, dns1035_label_errors)
    spec = c.get_map(obj, "spec", "spec")
    svc_type = c.one_of(spec, "type", "spec.type", SERVICE_TYPES, "ClusterIP")
    families = _service_ip_families(c, spec, svc_type)
    cluster_ips = _service_cluster_ips(c, spec, svc_type, families)
    headless = cluster_ips == ("None",)
    ports = _service_ports(c, spec, svc_type)
    if not spec.get("ports") and not headless and svc_type != "ExternalName":
        c.required("spec.ports")
    external_ips = _service_external_ips(c, spec)
    etp = _external_traffic_policy(c, spec, svc_type, bool(external_ips))
    affinity, timeout = _session_affinity(c, spec)
    return Service(
        namespace=meta.namespace,
        name=meta.name,
        type=svc_type,
        cluster_ips=cluster_ips,
        ports=ports,
        selector=c.labels(spec, "selector", "spec.selector") or None,
        labels=meta.labels,
        external_ips=external_ips,
        load_balancer_ingress=_load_balancer_ingress(c, obj),
        load_balancer_source_ranges=_source_ranges(c, spec, svc_type),
        external_traffic_policy=etp,
        internal_traffic_policy=c.one_of(
            spec, "internalTrafficPolicy", "spec.internalTrafficPolicy", _TRAFFIC_POLICIES, "Cluster"
        ),
        health_check_node_port=_health_check_node_port(c, spec, svc_type, etp),
        session_affinity=affinity,
        affinity_timeout_seconds=timeout,
        allocate_load_balancer_node_ports=_allocate_lb_node_ports(c, spec, svc_type),
        ip_families=families,
        ip_family_policy=_ip_family_policy(c, spec, svc_type),
        publish_not_ready_addresses=bool(
            c.get_bool(spec, "publishNotReadyAddresses", "spec.publishNotReadyAddresses", False)
        ),
        external_name=_external_name(c, spec, svc_type),
        ref=c.ref(),
    )


def _service_ip_families(c: _Checker, spec: dict, svc_type: str) -> tuple:
    """``spec.ipFamilies``: each IPv4 or IPv6, no repeats; not for ExternalName."""
    families = c.get_strs(spec, "ipFamilies", "spec.ipFamilies") or []
    if families and svc_type == "ExternalName":
        c.forbidden("spec.ipFamilies", "may not be set for ExternalName services")
        return ()
    seen: set[str] = set()
    for i, family in enumerate(families):
        path = _index("spec.ipFamilies", i)
        if family not in _IP_FAMILIES:
            c.unsupported(path, family, _IP_FAMILIES)
        if family in seen:
            c.duplicate(path, family)
        seen.add(family)
    return tuple(families)


def _ip_family_policy(c: _Checker, spec: dict, svc_type: str) -> Optional[str]:
    """``spec.ipFamilyPolicy`` (None when unset); not for ExternalName."""
    policy = c.get_str(spec, "ipFamilyPolicy", "spec.ipFamilyPolicy", default=None)
    if policy is None:
        return None
    if svc_type == "ExternalName":
        c.forbidden("spec.ipFamilyPolicy", "may not be set for ExternalName services")
    elif policy not in _IP_FAMILY_POLICIES:
        c.unsupported("spec.ipFamilyPolicy", policy, _IP_FAMILY_POLICIES)
    return policy


def _service_cluster_ips(c: _Checker, spec: dict, svc_type: str, families: tuple) -> tuple[str, ...]:
    """``spec.clusterIP``/``clusterIPs`` (``ValidateServiceClusterIPsRelatedFields``), canonical.

    As the API server's strategy does, a lone ``clusterIP`` fills ``clusterIPs``.
    Returns ``()`` when unset or invalid, ``("None",)`` for a headless Service.
    """
    cluster_ip = c.get_str(spec, "clusterIP", "spec.clusterIP")
    ips = c.get_strs(spec, "clusterIPs", "spec.clusterIPs")
    if cluster_ip is None or ips is None:
        return ()
    if cluster_ip and not ips:
        ips = [cluster_ip]
    elif cluster_ip and ips[0] != cluster_ip:
        c.invalid("spec.clusterIPs", ips, "first value must match `clusterIP`")
    if svc_type == "ExternalName":
        if ips:
            c.forbidden("spec.clusterIPs", "may not be set for ExternalName services")
        return ()
    if not _cluster_ips_valid(c, ips):
        return ()
    if ips == ["None"]:
        if svc_type in ("LoadBalancer", "NodePort"):
            c.invalid("spec.clusterIPs[0]", "None", f"may not be set to 'None' for {svc_type} services")
        return ("None",)
    _check_ips_match_families(c, ips, families)
    return tuple(ipaddrs.canonical_ip(ip) for ip in ips)


def _cluster_ips_valid(c: _Checker, ips: list[str]) -> bool:
    """Each entry an IP (or a lone leading "None"), at most 2, one per family."""
    valid = True
    for i, ip in enumerate(ips):
        if i == 0 and ip == "None":
            if len(ips) > 1:
                valid = False
                c.invalid("spec.clusterIPs", ips, "'None' must be the first and only value")
            continue
        if not ipaddrs.is_ip(ip):
            valid = False
            c.invalid(_index("spec.clusterIPs", i), ip, IP_ADDRESS_MSG)
    if len(ips) > 2:
        c.invalid("spec.clusterIPs", ips, "may only hold up to 2 values")
    if not valid:
        return False
    if len(ips) > 1 and not ipaddrs.is_dual_stack([ipaddrs.ip_family(ip) for ip in ips]):
        c.invalid("spec.clusterIPs", ips, "may specify no more than one IP for each IP family")
    return True


def _check_ips_match_families(c: _Checker, ips: list[str], families: tuple) -> None:
    """``clusterIPs[i]`` must be of the family ``ipFamilies[i]`` says."""
    for i, (ip, family) in enumerate(zip(ips, families)):
        if family in _IP_FAMILIES and ipaddrs.ip_family(ip) != family:
            c.invalid(
                _index("spec.clusterIPs", i), ip, f"expected an {family} value as indicated by `ipFamilies[{i}]`"
            )


def _service_ports(c: _Checker, spec: dict, svc_type: str) -> tuple[ServicePort, ...]:
    """``spec.ports``: each port valid, names and (port, protocol) and (protocol, nodePort) unique."""
    raw = c.get_list(spec, "ports", "spec.ports")
    require_name = len(raw) > 1
    names: set[str] = set()
    seen_ports: set[tuple[int, str]] = set()
    seen_node_ports: set[tuple[str, int]] = set()
    ports = []
    for path, item in c.each_map(raw, "spec.ports"):
        port = _service_port(c, path, item, require_name, names, svc_type)
        if port.port and (port.port, port.protocol) in seen_ports:
            c.duplicate(path, f"{port.port}/{port.protocol}")
        seen_ports.add((port.port, port.protocol))
        if port.node_port and (port.protocol, port.node_port) in seen_node_ports:
            c.duplicate(_child(path, "nodePort"), port.node_port)
        if port.node_port:
            seen_node_ports.add((port.protocol, port.node_port))
        ports.append(port)
    return tuple(ports)


def _service_port(
    c: _Checker, path: str, item: dict, require_name: bool, names: set[str], svc_type: str
) -> ServicePort:
    """One ``spec.ports[i]`` (``validateServicePort``), defaults applied."""
    name = c.get_str(item, "name", _child(path, "name"))
    if name == "" and require_name:
        c.required(_child(path, "name"))
    elif name:
        c.all_invalid(_child(path, "name"), name, dns1123_label_errors(name))
        if name in names:
            c.duplicate(_child(path, "name"), name)
        names.add(name)
    port = c.port_number(item, "port", _child(path, "port"))
    return ServicePort(
        port=port or 0,
        protocol=c.protocol(item, _child(path, "protocol")),
        name=name or "",
        target_port=_target_port(c, item, _child(path, "targetPort")),
        node_port=_node_port(c, item, _child(path, "nodePort"), svc_type),
    )


def _target_port(c: _Checker, item: dict, path: str) -> int | str | None:
    """``targetPort``: a port number (digits in a string count) or an IANA_SVC_NAME; 0/"" unset."""
    value = item.get("targetPort")
    if isinstance(value, bool) or not isinstance(value, (int, str, type(None))):
        c.invalid(path, value, "must be an integer or a string")
        return None
    if not value:  # unset, 0 or "": defaulted to the port by the API server
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        value = int(value)
    if isinstance(value, int):
        c.all_invalid(path, value, port_number_errors(value))
        return value
    c.all_invalid(path, value, port_name_errors(value))
    return value


def _node_port(c: _Checker, item: dict, path: str, svc_type: str) -> Optional[int]:
    """``nodePort`` (0 = unset): only for NodePort and LoadBalancer Services."""
    node_port = c.get_int(item, "nodePort", path, default=0)
    if not node_port:
        return None
    if svc_type not in ("NodePort", "LoadBalancer"):
        c.forbidden(path, f"may not be used when `type` is '{svc_type}'")
    else:
        c.all_invalid(path, node_port, port_number_errors(node_port))
    return node_port


def _service_external_ips(c: _Checker, spec: dict) -> tuple[str, ...]:
    """``spec.externalIPs``: valid, non-special IPs, canonical."""
    result = []
    for i, value in enumerate(c.get_strs(spec, "externalIPs", "spec.externalIPs") or []):
        path = _index("spec.externalIPs", i)
        canonical = c.ip(path, value)
        if canonical is not None and c.endpoint_ip(path, value):
            result.append(canonical)
    return tuple(result)


def _source_ranges(c: _Checker, spec: dict, svc_type: str) -> tuple[str, ...]:
    """``spec.loadBalancerSourceRanges``: CIDRs (space padding allowed), LoadBalancer only.

    The API server reports this field as ``spec.LoadBalancerSourceRanges``
    (capital L, a historical accident); so do we.
    """
    ranges = c.get_strs(spec, "loadBalancerSourceRanges", "spec.loadBalancerSourceRanges") or []
    path = "spec.LoadBalancerSourceRanges"
    if ranges and svc_type != "LoadBalancer":
        c.forbidden(path, "may only be used when `type` is 'LoadBalancer'")
    result = []
    for i, value in enumerate(ranges):
        canonical = c.cidr(_index(path, i), value.strip())
        if canonical is not None:
            result.append(canonical)
    return tuple(result)


def _external_traffic_policy(c: _Checker, spec: dict, svc_type: str, has_external_ips: bool) -> str:
    """``spec.externalTrafficPolicy``; only meaningful for externally-accessible Services.

    A value on a Service that is not externally accessible (kubectl never
    prints one, but hand-written manifests have them) is accepted and ignored.
    """
    policy = c.one_of(spec, "externalTrafficPolicy", "spec.externalTrafficPolicy", _TRAFFIC_POLICIES, "Cluster")
    externally_accessible = svc_type in ("NodePort", "LoadBalancer") or (
        svc_type == "ClusterIP" and has_external_ips
    )
    return policy if externally_accessible else "Cluster"


def _health_check_node_port(c: _Checker, spec: dict, svc_type: str, etp: str) -> Optional[int]:
    """``spec.healthCheckNodePort``: a port, only for LoadBalancer Services with policy Local."""
    path = "spec.healthCheckNodePort"
    port = c.get_int(spec, "healthCheckNodePort", path, default=0)
    if not port:
        return None
    if svc_type != "LoadBalancer" or etp != "Local":
        c.invalid(path, port, "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'")
    else:
        c.all_invalid(path, port, port_number_errors(port))
    return port


def _session_affinity(c: _Checker, spec: dict) -> tuple[str, int]:
    """``spec.sessionAffinity`` and its ClientIP timeout (default 10800 s, at most 86400 s)."""
    affinity = c.one_of(spec, "sessionAffinity", "spec.sessionAffinity", _SESSION_AFFINITIES, "None")
    config_path = "spec.sessionAffinityConfig"
    if affinity == "None":
        if spec.get("sessionAffinityConfig") is not None:
            c.forbidden(config_path, "must not be set when session affinity is None")
        return affinity, DEFAULT_AFFINITY_TIMEOUT
    client_ip = c.get_map(c.get_map(spec, "sessionAffinityConfig", config_path), "clientIP", f"{config_path}.clientIP")
    timeout_path = f"{config_path}.clientIP.timeoutSeconds"
    timeout = c.get_int(client_ip, "timeoutSeconds", timeout_path, DEFAULT_AFFINITY_TIMEOUT)
    if timeout is None:
        return affinity, DEFAULT_AFFINITY_TIMEOUT
    if not 0 < timeout <= MAX_AFFINITY_TIMEOUT:
        c.invalid(timeout_path, timeout, f"must be greater than 0 and less than {MAX_AFFINITY_TIMEOUT}")
    return affinity, timeout


def _allocate_lb_node_ports(c: _Checker, spec: dict, svc_type: str) -> bool:
    """``spec.allocateLoadBalancerNodePorts`` (default true), LoadBalancer only."""
    path = "spec.allocateLoadBalancerNodePorts"
    value = c.get_bool(spec, "allocateLoadBalancerNodePorts", path, None)
    if value is not None and svc_type != "LoadBalancer":
        c.forbidden(path, "may only be used when `type` is 'LoadBalancer'")
    return True if value is None else value


def _external_name(c: _Checker, spec: dict, svc_type: str) -> Optional[str]:
    """``spec.externalName``: required for (and only kept for) ExternalName Services."""
    if svc_type != "ExternalName":
        return None
    path = "spec.externalName"
    name = c.get_str(spec, "externalName", path)
    if name is None:
        return None
    cname = name[:-1] if name.endswith(".") else name
    if not cname:
        c.required(path)
        return None
    c.all_invalid(path, cname, dns1123_subdomain_errors(cname))
    return name


def _load_balancer_ingress(c: _Checker, obj: dict) -> tuple[LoadBalancerIngress, ...]:
    """``status.loadBalancer.ingress`` (``ValidateLoadBalancerStatus``); ipMode defaults to VIP."""
    status = c.get_map(obj, "status", "status")
    balancer = c.get_map(status, "loadBalancer", "status.loadBalancer")
    return tuple(
        _ingress(c, path, item) for path, item in c.get_maps(balancer, "ingress", "status.loadBalancer.ingress")
    )


def _ingress(c: _Checker, path: str, item: dict) -> LoadBalancerIngress:
    """One ingress point: an IP (canonical) and/or a DNS name; ipMode only with an IP."""
    ip = c.get_str(item, "ip", _child(path, "ip")) or None
    canonical_ip = c.ip(_child(path, "ip"), ip) if ip else None
    hostname = c.get_str(item, "hostname", _child(path, "hostname")) or None
    if hostname:
        c.all_invalid(_child(path, "hostname"), hostname, dns1123_subdomain_errors(hostname))
        if ipaddrs.is_ip(hostname):
            c.invalid(_child(path, "hostname"), hostname, "must be a DNS name, not an IP address")
    mode_path = _child(path, "ipMode")
    ip_mode = c.get_str(item, "ipMode", mode_path, default=None)
    if ip_mode is not None and not ip:
        c.forbidden(mode_path, "may not be specified when `ip` is not set")
    elif ip_mode is not None and ip_mode not in _IP_MODES:
        c.unsupported(mode_path, ip_mode, _IP_MODES)
    elif ip_mode is None and ip:
        ip_mode = "VIP"
    return LoadBalancerIngress(ip=canonical_ip, hostname=hostname, ip_mode=ip_mode)


# ======================================================================
# EndpointSlice
# ======================================================================

ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")
MAX_SLICE_ENDPOINTS = 1000
MAX_ENDPOINT_ADDRESSES = 100
MAX_SLICE_PORTS = 20000
MAX_ZONE_HINTS = 8


def _parse_endpoint_slice(c: _Checker, obj: dict) -> EndpointSlice:
    """A ``discovery.k8s.io/v1`` EndpointSlice (``ValidateEndpointSlice``), conditions resolved."""
    meta = _meta(c, obj, True, dns1123_subdomain_errors)
    address_type = c.get_str(obj, "addressType", "addressType")
    if address_type == "":
        c.required("addressType")
    elif address_type is not None and address_type not in ADDRESS_TYPES:
        c.unsupported("addressType", address_type, ADDRESS_TYPES)
    raw_endpoints = c.get_list(obj, "endpoints", "endpoints")
    if len(raw_endpoints) > MAX_SLICE_ENDPOINTS:
        c.too_many("endpoints", len(raw_endpoints), MAX_SLICE_ENDPOINTS)
        endpoints: tuple[Endpoint, ...] = ()
    else:
        endpoints = _slice_endpoints(c, raw_endpoints, address_type or "")
    return EndpointSlice(
        namespace=meta.namespace,
        name=meta.name,
        service_name=labels_get(meta.labels, LABEL_SERVICE_NAME),
        address_type=address_type or "",
        endpoints=endpoints,
        ports=_slice_ports(c, obj),
        labels=meta.labels,
        ref=c.ref(),
    )


def _slice_endpoints(c: _Checker, items: list, address_type: str) -> tuple[Endpoint, ...]:
    """``endpoints``: each item through the fast path, or (if it has any problem) the full one."""
    result = []
    for i, item in enumerate(items):
        endpoint = _fast_endpoint(item, address_type) if type(item) is dict else None
        if endpoint is None:
            path = _index("endpoints", i)
            if not isinstance(item, dict):
                c.invalid(path, item, "must be a mapping")
                continue
            endpoint = _slice_endpoint(c, path, item, address_type)
        result.append(endpoint)
    return tuple(result)


def _resolved_conditions() -> dict[tuple, EndpointConditions]:
    """``(ready, serving, terminating)`` as written (each true, false or unset) -> the shared,
    defaulted instance: ready defaults to true, serving to ready, terminating to false."""
    table = {}
    for ready in (None, False, True):
        for serving in (None, False, True):
            for terminating in (None, False, True):
                r = True if ready is None else ready
                table[ready, serving, terminating] = EndpointConditions(
                    ready=r, serving=r if serving is None else serving, terminating=terminating is True)
    return table


_CONDITIONS = _resolved_conditions()
_NO_CONDITIONS = _CONDITIONS[None, None, None]
# A canonical IPv4 address that may be an endpoint's: not unspecified, loopback, link-local
# or link-local multicast (see special_ip_errors).
_is_endpoint_ipv4 = re.compile(r"(?!0\.0\.0\.0$|127\.|169\.254\.|224\.0\.0\.)" + _IPV4_PATTERN).fullmatch


def _fast_endpoint(item: dict, address_type: str) -> Optional[Endpoint]:
    """``endpoints[i]`` when it has no problem at all (the common case), else None.

    Reads exactly what :func:`_slice_endpoint` reads and accepts only input on
    which it would report nothing, returning the same Endpoint; anything
    unusual (a wrong type, an invalid or special address, hints, ...) returns
    None so that the full validator reports it.
    """
    addresses = item.get("addresses")
    if type(addresses) is not list or not 0 < len(addresses) <= MAX_ENDPOINT_ADDRESSES:
        return None
    if address_type == "IPv4":
        for address in addresses:
            if type(address) is not str or not _is_endpoint_ipv4(address):
                return None
        addresses = tuple(addresses)
    elif address_type == "IPv6":
        canonical = []
        for address in addresses:
            if type(address) is not str or not ipaddrs.is_ipv6(address) or special_ip_errors(address):
                return None
            canonical.append(ipaddrs.canonical_ip(address))
        addresses = tuple(canonical)
    elif address_type == "FQDN":
        for address in addresses:
            if type(address) is not str or not address:
                return None
        addresses = tuple(addresses)
    else:
        return None

    conditions = item.get("conditions")
    if conditions is None:
        resolved = _NO_CONDITIONS
    elif type(conditions) is dict:
        ready = conditions.get("ready")
        serving = conditions.get("serving")
        terminating = conditions.get("terminating")
        for flag in (ready, serving, terminating):  # true, false or unset (identity: 1 is not true)
            if flag is not None and flag is not True and flag is not False:
                return None
        resolved = _CONDITIONS[ready, serving, terminating]
    else:
        return None

    node_name = item.get("nodeName")
    if node_name is not None and not (type(node_name) is str and _is_dns1123_subdomain(node_name)):
        return None
    zone = item.get("zone")
    if zone is not None and type(zone) is not str:
        return None
    hostname = item.get("hostname")
    if hostname is not None and not (type(hostname) is str and _is_dns1123_label(hostname)):
        return None
    if item.get("hints") is not None:
        return None
    target_ref = item.get("targetRef")
    if target_ref is None:
        target_ref_name = None
    elif type(target_ref) is dict:
        target_ref_name = target_ref.get("name")
        if target_ref_name is not None and type(target_ref_name) is not str:
            return None
    else:
        return None
    return Endpoint(
        addresses=addresses,
        conditions=resolved,
        node_name=node_name,
        zone=zone,
        hints_for_zones=None,
        hostname=hostname,
        target_ref_name=target_ref_name,
    )


def _slice_endpoint(c: _Checker, path: str, item: dict, address_type: str) -> Endpoint:
    """One ``endpoints[i]``."""
    conditions = c.get_map(item, "conditions", _child(path, "conditions"))
    cond_path = _child(path, "conditions")
    ready = c.get_bool(conditions, "ready", _child(cond_path, "ready"), True)
    serving = c.get_bool(conditions, "serving", _child(cond_path, "serving"), ready)
    terminating = c.get_bool(conditions, "terminating", _child(cond_path, "terminating"), False)
    target_ref = c.get_map(item, "targetRef", _child(path, "targetRef"))
    return Endpoint(
        addresses=_slice_addresses(c, item, _child(path, "addresses"), address_type),
        conditions=EndpointConditions(ready=bool(ready), serving=bool(serving), terminating=bool(terminating)),
        node_name=c.node_name(item, "nodeName", _child(path, "nodeName")),
        zone=c.get_str(item, "zone", _child(path, "zone"), default=None),
        hints_for_zones=_zone_hints(c, item, _child(path, "hints")),
        hostname=c.dns_label(item, "hostname", _child(path, "hostname")),
        target_ref_name=c.get_str(target_ref, "name", _child(path, "targetRef.name"), default=None),
    )


def _slice_addresses(c: _Checker, item: dict, path: str, address_type: str) -> tuple[str, ...]:
    """``addresses``: 1..100 entries of the slice's address type, IPs canonical."""
    addresses = c.get_strs(item, "addresses", path)
    if addresses is None:
        return ()
    if not addresses:
        c.required(path, "must contain at least 1 address")
    elif len(addresses) > MAX_ENDPOINT_ADDRESSES:
        c.too_many(path, len(addresses), MAX_ENDPOINT_ADDRESSES)
    return tuple(_slice_address(c, _index(path, i), value, address_type) for i, value in enumerate(addresses))


def _slice_address(c: _Checker, path: str, value: str, address_type: str) -> str:
    """One address: an IP of the slice's family that is not special, or a non-empty FQDN."""
    if address_type == "FQDN":
        if not value:
            c.required(path)
        return value
    if address_type not in ("IPv4", "IPv6"):
        return value
    try:
        family = ipaddrs.ip_family(value)
    except ValueError:
        family = None
    if family != address_type:
        c.invalid(path, value, f"must be a valid {address_type} address")
        return value
    c.endpoint_ip(path, value)
    return ipaddrs.canonical_ip(value)


def _zone_hints(c: _Checker, item: dict, path: str) -> Optional[tuple[str, ...]]:
    """``hints.forZones[].name`` (None when there are no hints): at most 8, distinct label values."""
    zones_path = _child(path, "forZones")
    raw = c.get_list(c.get_map(item, "hints", path), "forZones", zones_path)
    if len(raw) > MAX_ZONE_HINTS:
        c.too_many(zones_path, len(raw), MAX_ZONE_HINTS)
        return None
    zones: list[str] = []
    for zone_path, hint in c.each_map(raw, zones_path):
        name_path = _child(zone_path, "name")
        name = c.get_str(hint, "name", name_path)
        if name is None:
            continue
        if name in zones:
            c.duplicate(name_path, name)
        c.all_invalid(name_path, name, label_value_errors(name))
        zones.append(name)
    return tuple(zones) or None


def _slice_ports(c: _Checker, obj: dict) -> tuple[EndpointPort, ...]:
    """``ports``: unique names (unset = ""), protocol defaulted to TCP, port 1..65535 or null."""
    raw = c.get_list(obj, "ports", "ports")
    if len(raw) > MAX_SLICE_PORTS:
        c.too_many("ports", len(raw), MAX_SLICE_PORTS)
        return ()
    names: set[str] = set()
    ports = []
    for path, item in c.each_map(raw, "ports"):
        name_path = _child(path, "name")
        name = c.get_str(item, "name", name_path) or ""
        if name:
            c.all_invalid(name_path, name, dns1123_label_errors(name))
        if name in names:
            c.duplicate(name_path, name)
        names.add(name)
        port = c.port_number(item, "port", _child(path, "port"), default=None)
        ports.append(EndpointPort(port=port, protocol=c.protocol(item, _child(path, "protocol")), name=name))
    return tuple(ports)


# ======================================================================
# Endpoints (mirrored into EndpointSlices)
# ======================================================================


def _parse_endpoints(c: _Checker, obj: dict) -> Endpoints:
    """A ``v1`` Endpoints (``ValidateEndpoints``), for :mod:`dataplane.mirror`."""
    meta = _meta(c, obj, True, dns1123_subdomain_errors)
    annotations = c.get_map(meta.metadata, "annotations", "metadata.annotations")
    return Endpoints(
        namespace=meta.namespace,
        name=meta.name,
        subsets=tuple(_endpoint_subset(c, path, item) for path, item in c.get_maps(obj, "subsets", "subsets")),
        labels=meta.labels,
        is_leader_lock=ANNOTATION_LEADER in annotations,
        ref=c.ref(),
    )


def _endpoint_subset(c: _Checker, path: str, subset: dict) -> EndpointSubset:
    """One ``subsets[i]``: some addresses, ports named when there are several."""
    ready = _endpoint_addresses(c, subset, "addresses", path)
    not_ready = _endpoint_addresses(c, subset, "notReadyAddresses", path)
    if not subset.get("addresses") and not subset.get("notReadyAddresses"):
        c.required(path, "must specify `addresses` or `notReadyAddresses`")
    raw_ports = c.get_list(subset, "ports", _child(path, "ports"))
    require_name = len(raw_ports) > 1
    ports = []
    for port_path, item in c.each_map(raw_ports, _child(path, "ports")):
        name = c.get_str(item, "name", _child(port_path, "name")) or ""
        if require_name and not name:
            c.required(_child(port_path, "name"))
        elif name:
            c.all_invalid(_child(port_path, "name"), name, dns1123_label_errors(name))
        port = c.port_number(item, "port", _child(port_path, "port"))
        ports.append(EndpointPort(port=port, protocol=c.protocol(item, _child(port_path, "protocol")), name=name))
    return EndpointSubset(addresses=ready, not_ready_addresses=not_ready, ports=tuple(ports))


def _endpoint_addresses(c: _Checker, subset: dict, key: str, subset_path: str) -> tuple[EndpointAddress, ...]:
    """``addresses`` or ``notReadyAddresses`` (``validateEndpointAddress``)."""
    result = []
    for path, item in c.get_maps(subset, key, _child(subset_path, key)):
        ip_path = _child(path, "ip")
        ip = c.get_str(item, "ip", ip_path)
        canonical = c.ip(ip_path, ip) if ip is not None else None
        if canonical is not None:
            c.endpoint_ip(ip_path, ip)
        target_ref = c.get_map(item, "targetRef", _child(path, "targetRef"))
        result.append(
            EndpointAddress(
                ip=canonical or "",
                hostname=c.dns_label(item, "hostname", _child(path, "hostname")) or None,
                node_name=c.node_name(item, "nodeName", _child(path, "nodeName")),
                target_ref_name=c.get_str(target_ref, "name", _child(path, "targetRef.name"), default=None),
                target_ref_uid=c.get_str(target_ref, "uid", _child(path, "targetRef.uid"), default=None),
            )
        )
    return tuple(result)


# ======================================================================
# Node and Pod
# ======================================================================

_NODE_IP_ADDRESS_TYPES = ("InternalIP", "ExternalIP")
POD_PHASES = ("Failed", "Pending", "Running", "Succeeded", "Unknown")


def _parse_node(c: _Checker, obj: dict) -> Node:
    """A ``v1`` Node: addresses (IPs canonical), labels and pod CIDRs."""
    meta = _meta(c, obj, False, dns1123_subdomain_errors)
    return Node(
        name=meta.name,
        addresses=_node_addresses(c, obj),
        labels=meta.labels,
        pod_cidrs=_pod_cidrs(c, c.get_map(obj, "spec", "spec")),
        ref=c.ref(),
    )


def _node_addresses(c: _Checker, obj: dict) -> tuple[NodeAddress, ...]:
    """``status.addresses``; InternalIP/ExternalIP addresses must be IPs and are canonicalised."""
    status = c.get_map(obj, "status", "status")
    result = []
    for path, item in c.get_maps(status, "addresses", "status.addresses"):
        kind = c.get_str(item, "type", _child(path, "type"))
        address = c.get_str(item, "address", _child(path, "address"))
        if kind == "":
            c.required(_child(path, "type"))
        if address == "":
            c.required(_child(path, "address"))
        if not kind or not address:
            continue
        if kind in _NODE_IP_ADDRESS_TYPES:
            address = c.ip(_child(path, "address"), address)
        if address is not None:
            result.append(NodeAddress(type=kind, address=address))
    return tuple(result)


def _pod_cidrs(c: _Checker, spec: dict) -> tuple[str, ...]:
    """``spec.podCIDRs`` (or the older ``spec.podCIDR``): CIDRs, at most one per family, canonical."""
    path = "spec.podCIDRs"
    entries: list[tuple[str, Optional[str]]] = [
        (_index(path, i), value) for i, value in enumerate(c.get_strs(spec, "podCIDRs", path) or [])
    ]
    single = c.get_str(spec, "podCIDR", "spec.podCIDR")
    if not entries and single:
        entries = [("spec.podCIDR", single)]
    return _one_per_family(c, path, entries, c.cidr, ipaddrs.cidr_family, "CIDR")


def _one_per_family(
    c: _Checker,
    path: str,
    entries: list[tuple[str, Optional[str]]],
    canonical: Callable[[str, str], Optional[str]],
    family: Callable[[str], str],
    noun: str,
) -> tuple[str, ...]:
    """Canonical forms of ``(path, value)`` entries that must all be valid, at most one per IP family.

    A None value (already reported as the wrong type) or an invalid one yields ``()``.
    """
    if any(value is None for _, value in entries):
        return ()
    result = [canonical(entry_path, value) for entry_path, value in entries if value is not None]
    if None in result:
        return ()
    values = [value for _, value in entries]
    if len(result) > 1 and (len(result) > 2 or not ipaddrs.is_dual_stack([family(x) for x in result if x])):
        c.invalid(path, values, f"may specify no more than one {noun} for each IP family")
    return tuple(x for x in result if x is not None)


def _parse_pod(c: _Checker, obj: dict) -> Pod:
    """A ``v1`` Pod: placement, IPs, readiness and container ports."""
    meta = _meta(c, obj, True, dns1123_subdomain_errors)
    spec = c.get_map(obj, "spec", "spec")
    status = c.get_map(obj, "status", "status")
    return Pod(
        namespace=meta.namespace,
        name=meta.name,
        labels=meta.labels,
        node_name=c.node_name(spec, "nodeName", "spec.nodeName") or None,
        pod_ips=_pod_ips(c, status),
        ready=_pod_ready(c, status),
        terminating=meta.metadata.get("deletionTimestamp") is not None,
        phase=c.one_of(status, "phase", "status.phase", POD_PHASES, "Running"),
        hostname=c.dns_label(spec, "hostname", "spec.hostname") or None,
        subdomain=c.dns_label(spec, "subdomain", "spec.subdomain") or None,
        container_ports=_container_ports(c, spec),
        ref=c.ref(),
    )


def _pod_ips(c: _Checker, status: dict) -> tuple[str, ...]:
    """``status.podIPs[].ip`` (or ``status.podIP``): IPs, at most one per family, canonical."""
    entries = [
        (_child(path, "ip"), c.get_str(item, "ip", _child(path, "ip")))
        for path, item in c.get_maps(status, "podIPs", "status.podIPs")
    ]
    if not entries:
        single = c.get_str(status, "podIP", "status.podIP")
        entries = [("status.podIP", single)] if single else []
    return _one_per_family(c, "status.podIPs", entries, c.ip, ipaddrs.ip_family, "IP")


def _pod_ready(c: _Checker, status: dict) -> bool:
    """True if ``status.conditions`` has type Ready with status "True"."""
    ready = False
    for path, condition in c.get_maps(status, "conditions", "status.conditions"):
        kind = c.get_str(condition, "type", _child(path, "type"))
        state = c.get_str(condition, "status", _child(path, "status"))
        ready = ready or (kind == "Ready" and state == "True")
    return ready


def _container_ports(c: _Checker, spec: dict) -> tuple[ContainerPort, ...]:
    """Ports of every container (``validateContainerPorts``: names unique per container)."""
    result = []
    for container_path, container in c.get_maps(spec, "containers", "spec.containers"):
        names: set[str] = set()
        for path, item in c.get_maps(container, "ports", _child(container_path, "ports")):
            name_path = _child(path, "name")
            name = c.get_str(item, "name", name_path) or ""
            if name and c.all_invalid(name_path, name, port_name_errors(name)):
                if name in names:
                    c.duplicate(name_path, name)
                names.add(name)
            port_path = _child(path, "containerPort")
            port = c.get_int(item, "containerPort", port_path, default=0)
            if port == 0:
                c.required(port_path)
            elif port is not None:
                c.all_invalid(port_path, port, port_number_errors(port))
            protocol = c.protocol(item, _child(path, "protocol"))
            result.append(ContainerPort(container_port=port or 0, protocol=protocol, name=name))
    return tuple(result)


# ======================================================================
# KubeProxyConfiguration
# ======================================================================

PROXY_MODES = ("iptables", "nftables")
DETECT_LOCAL_MODES = ("ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix", "")
NODE_PORT_ADDRESSES_PRIMARY = "primary"


def _parse_proxy_config(c: _Checker, obj: dict) -> ProxyConfig:
    """A ``kubeproxy.config.k8s.io/v1alpha1`` KubeProxyConfiguration, with kube-proxy's defaults.

    Paths are the YAML field names; messages are kube-proxy's.
    """
    metadata = c.get_map(obj, "metadata", "metadata")
    c.identify("", c.get_str(metadata, "name", "metadata.name") or "")
    mode, bridge, prefix = _detect_local(c, obj)
    iptables = c.get_map(obj, "iptables", "iptables")
    nftables = c.get_map(obj, "nftables", "nftables")
    return ProxyConfig(
        mode=_proxy_mode(c, obj),
        cluster_cidrs=_cluster_cidrs(c, obj),
        detect_local_mode=mode,
        bridge_interface=bridge,
        interface_name_prefix=prefix,
        node_port_addresses=_node_port_addresses(c, obj),
        iptables_masquerade_all=bool(c.get_bool(iptables, "masqueradeAll", "iptables.masqueradeAll", False)),
        iptables_masquerade_bit=_masquerade_bit(c, iptables, "iptables.masqueradeBit"),
        iptables_localhost_node_ports=bool(
            c.get_bool(iptables, "localhostNodePorts", "iptables.localhostNodePorts", True)
        ),
        nftables_masquerade_all=bool(c.get_bool(nftables, "masqueradeAll", "nftables.masqueradeAll", False)),
        nftables_masquerade_bit=_masquerade_bit(c, nftables, "nftables.masqueradeBit"),
        external_ip_cidrs=_external_ip_cidrs(c, obj),
        ref=c.ref(),
    )


def _proxy_mode(c: _Checker, obj: dict) -> str:
    """``mode``: blank means iptables; ipvs and kernelspace are not implemented here."""
    mode = c.get_str(obj, "mode", "mode")
    if not mode:
        return "iptables"
    if mode not in PROXY_MODES:
        supported = '"iptables" and "nftables" (blank means "iptables")'
        c.add("mode", f"Unsupported value: {quote(mode)}: kube-dataplane supports only {supported}")
        return "iptables"
    return mode


def _cluster_cidrs(c: _Checker, obj: dict) -> tuple[str, ...]:
    """``clusterCIDR``: one CIDR, or two of different families, comma separated."""
    value = c.get_str(obj, "clusterCIDR", "clusterCIDR")
    if not value:
        return ()
    parts = [part.strip() for part in value.split(",")]
    if len(parts) > 2:
        c.invalid(
            "clusterCIDR", value,
            "only one CIDR allowed or a valid DualStack CIDR (e.g. 10.100.0.0/16,fde4:8dba:82e1::/48)",
        )
        return ()
    try:
        cidrs = tuple(ipaddrs.canonical_cidr(part) for part in parts)
    except ValueError:
        c.invalid("clusterCIDR", value, "must be a valid CIDR block (e.g. 10.100.0.0/16 or fde4:8dba:82e1::/48)")
        return ()
    if len(cidrs) == 2 and not ipaddrs.is_dual_stack([ipaddrs.cidr_family(x) for x in cidrs]):
        c.invalid("clusterCIDR", value, "must be a valid DualStack CIDR (e.g. 10.100.0.0/16,fde4:8dba:82e1::/48)")
    return cidrs


def _detect_local(c: _Checker, obj: dict) -> tuple[str, str, str]:
    """``detectLocalMode`` (blank means ClusterCIDR) and the interface it may need.

    kube-proxy checks only that the selected mode's interface field is set: it hands the
    name to iptables and nft as a process argument. We write it into rules text, so a value,
    whichever mode is selected, must also be a Linux interface name (for the prefix, one the
    rules' wildcard still fits) without characters that are special in rule text
    (:func:`dataplane.ruletext.interface_name_errors`).
    """
    mode = c.get_str(obj, "detectLocalMode", "detectLocalMode") or ""
    if mode not in DETECT_LOCAL_MODES:
        c.unsupported("detectLocalMode", mode, DETECT_LOCAL_MODES)
    detect = c.get_map(obj, "detectLocal", "detectLocal")
    bridge = c.get_str(detect, "bridgeInterface", "detectLocal.bridgeInterface") or ""
    prefix = c.get_str(detect, "interfaceNamePrefix", "detectLocal.interfaceNamePrefix") or ""
    if mode == "BridgeInterface" and not bridge:
        c.invalid("detectLocal.bridgeInterface", bridge, "must not be empty")
    if mode == "InterfaceNamePrefix" and not prefix:
        c.invalid("detectLocal.interfaceNamePrefix", prefix, "must not be empty")
    if bridge:
        c.all_invalid("detectLocal.bridgeInterface", bridge, interface_name_errors(bridge))
    if prefix:
        c.all_invalid("detectLocal.interfaceNamePrefix", prefix, interface_name_errors(prefix, prefix=True))
    return mode or "ClusterCIDR", bridge, prefix


def _node_port_addresses(c: _Checker, obj: dict) -> tuple[str, ...]:
    """``nodePortAddresses``: CIDRs (canonical), or the single value "primary"."""
    values = c.get_strs(obj, "nodePortAddresses", "nodePortAddresses") or []
    result = []
    for i, value in enumerate(values):
        path = _index("nodePortAddresses", i)
        if value == NODE_PORT_ADDRESSES_PRIMARY:
            if len(values) > 1:
                c.invalid(path, value, "can't use both 'primary' and CIDRs")
            result.append(value)
            continue
        canonical = c.cidr(path, value, "must be a valid CIDR")
        if canonical is not None:
            result.append(canonical)
    return tuple(result)


def _external_ip_cidrs(c: _Checker, obj: dict) -> Optional[tuple[str, ...]]:
    """``externalIPCIDRs``, a kube-dataplane extension (kube-proxy has no such field): the CIDRs
    that Services' ``spec.externalIPs`` may use (canonical); None when unset (any external IP);
    an empty list allows none."""
    if obj.get("externalIPCIDRs") is None:
        return None
    result = []
    for i, value in enumerate(c.get_strs(obj, "externalIPCIDRs", "externalIPCIDRs") or []):
        canonical = c.cidr(_index("externalIPCIDRs", i), value, "must be a valid CIDR")
        if canonical is not None:
            result.append(canonical)
    return tuple(result)


def _masquerade_bit(c: _Checker, section: dict, path: str) -> int:
    """A masquerade mark bit, 0..31 (default 14)."""
    bit = c.get_int(section, "masqueradeBit", path, 14)
    if bit is None:
        return 14
    if not 0 <= bit <= 31:
        c.invalid(path, bit, "must be within the range [0, 31]")
    return bit


# ======================================================================
# Assembling the cluster
# ======================================================================

_Parser = Callable[[_Checker, dict], Any]

# (apiVersion, kind) -> parser; each kind is recognised in exactly one version.
_PARSERS: dict[tuple[str, str], _Parser] = {
    ("v1", "Service"): _parse_service,
    ("v1", "Endpoints"): _parse_endpoints,
    ("v1", "Pod"): _parse_pod,
    ("v1", "Node"): _parse_node,
    ("discovery.k8s.io/v1", "EndpointSlice"): _parse_endpoint_slice,
    ("kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration"): _parse_proxy_config,
}


def _group(api_version: str) -> str:
    """The API group of an apiVersion ("" for the core group's "v1")."""
    return api_version.rpartition("/")[0]


def _supported_version(api_version: str, kind: str) -> Optional[str]:
    """The apiVersion we read ``kind`` in, if ``api_version`` is another version of the same group."""
    for known_version, known_kind in _PARSERS:
        if known_kind == kind and _group(known_version) == _group(api_version):
            return known_version
    return None


@dataclass
class _ClusterBuilder:
    """Accumulates parsed objects, problems and warnings across documents."""

    services: list[Service] = field(default_factory=list)
    slices: list[EndpointSlice] = field(default_factory=list)
    endpoints: list[Endpoints] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    proxy_config: Optional[ProxyConfig] = None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seen: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def add(self, doc: Document) -> None:
        """Validate one document and keep what it holds."""
        found = document_problems(doc.source, doc.index, doc.obj)
        if found:
            self.problems.extend(found)
            return
        api_version, kind = doc.obj["apiVersion"], doc.obj["kind"]
        parser = _PARSERS.get((api_version, kind))
        if parser is None:
            self._unrecognised(doc, api_version, kind)
            return
        checker = _Checker(doc.source, doc.index, kind)
        obj = parser(checker, doc.obj)
        self.problems.extend(checker.problems())
        if self._is_new(checker):
            self._keep(obj)

    def _unrecognised(self, doc: Document, api_version: str, kind: str) -> None:
        """Another version of a kind we read is a problem; any other kind is skipped with a warning."""
        supported = _supported_version(api_version, kind)
        if supported is not None:
            message = f"Unsupported value: {quote(api_version)}: supported values: {quote(supported)}"
            self.problems.append(Problem(doc.source, doc.index, kind, "apiVersion", message))
            return
        self.warnings.append(
            f"{doc.source}: document {doc.index}: ignoring {_one_line(api_version)} {_one_line(kind)}"
            f"{_describe(doc.obj)}"
            " (not used by the dataplane)"
        )

    def _is_new(self, checker: _Checker) -> bool:
        """Record the object's identity; report a duplicate (same kind, namespace, name)."""
        singleton = checker.kind == "KubeProxyConfiguration"
        if not checker.name and not singleton:
            return True
        key = (checker.kind, "", "") if singleton else (checker.kind, checker.namespace, checker.name)
        here = f"{checker.source}: document {checker.index}"
        first = self.seen.setdefault(key, here)
        if first == here:
            return True
        if singleton:
            message = f"Duplicate value: only one KubeProxyConfiguration may be given; the first is at {first}"
            self.problems.append(Problem(checker.source, checker.index, checker.label, "", message))
        else:
            message = f"Duplicate value: {quote(checker.name)}: {checker.label} is also defined at {first}"
            self.problems.append(Problem(checker.source, checker.index, checker.label, "metadata.name", message))
        return False

    def _keep(self, obj: Any) -> None:
        if isinstance(obj, Service):
            self.services.append(obj)
        elif isinstance(obj, EndpointSlice):
            self.slices.append(obj)
            if obj.service_name is None:
                self.warnings.append(
                    f"{obj.ref.where()}: no {LABEL_SERVICE_NAME} label; the slice belongs to no Service"
                )
        elif isinstance(obj, Endpoints):
            self.endpoints.append(obj)
        elif isinstance(obj, Node):
            self.nodes.append(obj)
        elif isinstance(obj, Pod):
            self.pods.append(obj)
        elif isinstance(obj, ProxyConfig):
            self.proxy_config = obj

    def finish(self) -> ParseResult:
        """The Cluster, or InputError with every problem found."""
        if self.problems:
            raise InputError(self.problems)
        cluster = Cluster(
            services=tuple(self.services),
            endpoint_slices=tuple(self.slices) + self._mirrored_slices(),
            nodes=tuple(self.nodes),
            pods=tuple(self.pods),
            proxy_config=self.proxy_config or ProxyConfig(),
            proxy_config_given=self.proxy_config is not None,
        )
        return ParseResult(cluster=cluster, warnings=tuple(self.warnings))

    def _mirrored_slices(self) -> tuple[EndpointSlice, ...]:
        """EndpointSlices for the Endpoints objects the mirroring controller would mirror."""
        services_with_slices = {(s.namespace, s.service_name) for s in self.slices if s.service_name}
        taken: dict[str, set[str]] = {}
        for es in self.slices:
            taken.setdefault(es.namespace, set()).add(es.name)
        services = {(s.namespace, s.name): s for s in self.services}
        mirrored: list[EndpointSlice] = []
        for endpoints in self.endpoints:
            key = (endpoints.namespace, endpoints.name)
            svc = services.get(key)
            reason = mirror_skip_reason(endpoints)
            # the controller mirrors only the Endpoints of an existing Service without a selector
            if reason is None and svc is None:
                reason = f"the input has no Service {endpoints.namespace}/{endpoints.name}"
            elif reason is None and svc.selector is not None:
                reason = (f"Service {endpoints.namespace}/{endpoints.name} has a selector (the EndpointSlice "
                          "controller makes its slices from Pods)")
            elif reason is None and key in services_with_slices:
                reason = f"the input has EndpointSlices for Service {endpoints.namespace}/{endpoints.name}"
            if reason is not None:
                self.warnings.append(f"{endpoints.ref.where()}: not mirrored to EndpointSlices: {reason}")
                continue
            names = taken.setdefault(endpoints.namespace, set())
            new = endpoints_to_slices(endpoints, names)
            names.update(es.name for es in new)
            mirrored.extend(new)
            skipped = unmirrored_address_count(endpoints)
            if skipped:
                self.warnings.append(
                    f"{endpoints.ref.where()}: {skipped} addresses not mirrored: at most "
                    f"{MAX_SLICE_ENDPOINTS} addresses are mirrored per subset"
                )
        return tuple(mirrored)


def _describe(obj: dict) -> str:
    """`` ns/name`` (or `` name``) of an unrecognised object, from whatever metadata it has."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        return ""
    namespace = metadata.get("namespace")
    if isinstance(namespace, str) and namespace:
        return f" {_one_line(namespace + '/' + metadata['name'])}"
    return f" {_one_line(metadata['name'])}"


def _one_line(text: str) -> str:
    """``text`` as it is if every character of it is printable, else double-quoted with
    escapes: input shown in a message (an object's name, a kind) never breaks its line."""
    return text if text.isprintable() else shown(text)
