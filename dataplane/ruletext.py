"""What may be written into ``iptables-restore`` and ``nft -f`` rule text.

A rules file is text that its loader parses again. A value holding a newline, a
quote, a brace or a ``;`` could end the statement it is part of and start one
of its own (``flush table inet filter``, ``COMMIT`` then ``*filter`` and
``-F INPUT``), which the loader would then carry out with the rest of the file.
Two lines of defence keep that from happening:

* :mod:`dataplane.input` validates every input string that reaches the rules:
  names are DNS labels, IPs and CIDRs are rewritten in canonical form,
  interface names must pass :func:`interface_name_errors`;
* the backends check each value again where it enters the text
  (:func:`check_port`, :func:`address`, :func:`interface`, :func:`nft_string`,
  and the iptables backend's ``quote``), and raise :class:`RuleTextError`
  rather than write anything they cannot represent as it is, so that objects
  built in code (which skip :mod:`dataplane.input`) cannot inject rules either.
"""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, NoReturn, Optional

from .errors import DataplaneError

if TYPE_CHECKING:  # pragma: no cover
    from .plan import ServicePortPlan

#: Linux's limit on an interface name: IFNAMSIZ (16) less the terminating NUL.
IFNAME_MAX_BYTES = 15

_LINUX_FORBIDDEN = "/:"  # dev_valid_name() refuses them (and whitespace)
_RULE_SPECIAL = "\"'`\\;{}#$@"  # quotes, escapes, statement and block ends, comments, variables, set refs
_WILDCARDS = "*+"  # nft's and iptables' interface wildcards
PROTOCOLS = ("tcp", "udp", "sctp")

# A value that may stand unquoted in a rule as an address: an IP, a CIDR, ``ip:port`` or
# ``[ip6]:port``. None of these characters can end a word, a statement or a block.
_ADDRESS = re.compile(r"[0-9A-Fa-f.:/\[\]]+").fullmatch
# A namespace, a name or a port name: the characters of Kubernetes names, which are also
# those of nft identifiers (they are parts of nft chain names).
_NAME_CHARS = r"[A-Za-z0-9._-]*"
_NAME = re.compile(_NAME_CHARS).fullmatch
# What check_port sees of a valid service port: its namespace, name, port name, protocol, port,
# nodePort, healthCheckNodePort and affinity timeout (numbers or None), then its addresses.
_PORT_TEXT = re.compile(
    rf"{_NAME_CHARS} {_NAME_CHARS} {_NAME_CHARS} (?:tcp|udp|sctp) [0-9]+(?: (?:[0-9]+|None)){{3}}"
    r"(?: [0-9A-Fa-f.:/\[\]]+)+"
).fullmatch
# Characters no quoted string of either loader can hold as they are: quotes, backslashes,
# control characters (newlines above all) and the Unicode line and paragraph separators.
_UNQUOTABLE = re.compile("[\"\\\\\x00-\x1f\x7f-\x9f\u2028\u2029]").search
_MARK = re.compile(r"0x[0-9a-fA-F]{1,8}").fullmatch


class RuleTextError(DataplaneError, ValueError):
    """A value cannot be written into rules text as it is: it could change what the text says."""


def shown(value: object) -> str:
    """``value`` for a message: strings double-quoted with every control and non-ASCII
    character escaped, so that the message stays on one line."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def interface_name_errors(value: str, *, prefix: bool = False) -> list[str]:
    """Why ``value`` cannot be written into rules as a Linux interface name (as an
    interface name prefix, to which the rules append a wildcard, when ``prefix``); [] if it can.

    Linux's ``dev_valid_name`` takes at most 15 bytes, not "." or "..", and no '/', ':' or
    whitespace. Rule text also needs printable ASCII, none of the characters that are special
    in ``iptables-restore`` or ``nft`` input (quotes, '\\\\', ';', '{', '}', '#', '$', '@'), and
    no wildcard ('*' in nft, '+' in iptables): the rules add one to a prefix themselves.
    """
    if not value:
        return ["must not be empty"]
    errors = []
    limit = IFNAME_MAX_BYTES - 1 if prefix else IFNAME_MAX_BYTES
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        why = "the wildcard the rules append makes 15, " if prefix else ""
        errors.append(f"must be no more than {limit} bytes ({why}Linux's limit for interface names)")
    if value in (".", ".."):
        errors.append("must not be '.' or '..'")
    unprintable = sorted({ch for ch in value if not " " < ch < "\x7f"})
    if unprintable:
        found = ", ".join(shown(ch) for ch in unprintable)
        errors.append(f"must consist of printable ASCII characters, without spaces (found {found})")
    for chars, why in ((_LINUX_FORBIDDEN, "refused by Linux in interface names"),
                       (_RULE_SPECIAL, "special in iptables-restore and nft rule text"),
                       (_WILDCARDS, "interface wildcards in rules")):
        found_chars = [ch for ch in chars if ch in value]
        if found_chars:
            errors.append(f"must not contain {' or '.join(repr(ch) for ch in found_chars)} ({why})")
    return errors


def interface(value: str, *, prefix: bool, what: str) -> str:
    """``value``, an interface name (``prefix``: a prefix of one) that may be written into rules
    as it is; :class:`RuleTextError` naming ``what`` it is otherwise."""
    errors = interface_name_errors(value, prefix=prefix) if isinstance(value, str) else ["must be a string"]
    if errors:
        raise RuleTextError(f"{what} {shown(value)}: cannot be written into rules: {'; '.join(errors)}")
    return value


def address(value: str, what: str) -> str:
    """``value``, an IP, CIDR or ``ip:port`` that may stand unquoted in rules; :class:`RuleTextError`
    naming ``what`` it is otherwise."""
    if not (isinstance(value, str) and _ADDRESS(value)):
        raise RuleTextError(f"{what} {shown(value)}: cannot be written into rules: "
                            "must be an IP address or CIDR (hex digits, '.', ':', '/', '[' and ']' only)")
    return value


def unquotable(text: str) -> Optional[str]:
    """The first character of ``text`` that no quoted string in rules can hold as it is, or None."""
    found = _UNQUOTABLE(text)
    return found.group() if found else None


def nft_string(text: str, what: str) -> str:
    """``text`` as an nft quoted string; :class:`RuleTextError` naming ``what`` it is when it
    holds a character nft cannot quote (nft strings have no escapes)."""
    bad = unquotable(text)
    if bad is not None:
        raise RuleTextError(f"{what} {shown(text)}: cannot be written into nft rules: "
                            f"quoted strings cannot hold {shown(bad)}")
    return f'"{text}"'


def mark(value: str) -> str:
    """``value``, a firewall mark in hex (``0x4000``); :class:`RuleTextError` otherwise."""
    if not (isinstance(value, str) and _MARK(value)):
        raise RuleTextError(f"masquerade mark {shown(value)}: cannot be written into rules: "
                            "must be a 32-bit hex number such as 0x4000")
    return value


def check_port(p: "ServicePortPlan") -> None:
    """Raise :class:`RuleTextError` unless every value of ``p`` that the backends write into
    rules text (names in chain names and comments, protocol, numbers, addresses) can stand
    there as it is.

    Made for every service port of every render: a valid port costs one regular-expression
    match over the text of all those values, separated by single spaces (a count of the spaces
    proves no value holds one); only a port that fails it is looked at field by field, to name
    the culprit.
    """
    eps = p.cluster_endpoints + p.local_endpoints
    try:
        text = " ".join((f"{p.namespace} {p.name} {p.port_name} {p.protocol} {p.port} {p.node_port} "
                         f"{p.health_check_node_port} {p.affinity_timeout}", p.cluster_ip,
                         *p.external_ips, *p.load_balancer_ips, *p.source_ranges,
                         *[f"{e.ip} {e.address}" for e in eps]))
    except TypeError:  # an address that is not a string: found below
        text = ""
    values = 9 + len(p.external_ips) + len(p.load_balancer_ips) + len(p.source_ranges) + 2 * len(eps)
    if text.count(" ") == values - 1 and _PORT_TEXT(text):
        return
    for field, value in (("namespace", p.namespace), ("name", p.name), ("port name", p.port_name)):
        if not (isinstance(value, str) and _NAME(value)):
            _port_error(p, field, value, "must consist of letters, digits, '.', '_' and '-' only")
    if p.protocol not in PROTOCOLS:
        _port_error(p, "protocol", p.protocol, "must be one of tcp, udp, sctp")
    numbers = (("port", p.port, False), ("nodePort", p.node_port, True),
               ("healthCheckNodePort", p.health_check_node_port, True),
               ("session affinity timeout", p.affinity_timeout, True))
    for field, number, optional in numbers:
        if not ((number is None and optional) or (type(number) is int and number >= 0)):
            _port_error(p, field, number, "must be a non-negative integer")
    for field, values in (("clusterIP", (p.cluster_ip,)), ("external IP", p.external_ips),
                          ("load-balancer IP", p.load_balancer_ips), ("source range", p.source_ranges),
                          ("endpoint IP", [e.ip for e in eps]), ("endpoint address", [e.address for e in eps])):
        for value in values:
            try:
                address(value, field)
            except RuleTextError as err:
                raise RuleTextError(f"{_port_label(p)}: {err}") from None
    raise RuleTextError(f"{_port_label(p)}: cannot be written into rules: {shown(text)}")  # pragma: no cover


def _port_label(p: "ServicePortPlan") -> str:
    return f"service port {shown(f'{p.namespace}/{p.name}:{p.port_name}')}"


def _port_error(p: "ServicePortPlan", field: str, value: object, detail: str) -> NoReturn:
    raise RuleTextError(f"{_port_label(p)}: {field} {shown(value)}: cannot be written into rules: {detail}")
