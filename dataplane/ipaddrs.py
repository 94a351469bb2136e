"""IP address and CIDR parsing with Kubernetes' (Go's) semantics, in canonical form.

Kubernetes parses IP literals with ``netutils.ParseIPSloppy``: IPv4 octets may
carry leading zeros, which are read as *decimal* (``172.30.0.041`` is
``172.30.0.41``, not octal), and an IPv4-mapped IPv6 literal such as
``::ffff:10.0.0.1`` *is* the IPv4 address ``10.0.0.1``. Zones (``fe80::1%eth0``)
are not IP addresses. This module reproduces those rules on top of the stdlib
:mod:`ipaddress` module and always hands back the canonical text form (IPv4
dotted quad without leading zeros, IPv6 compressed lower case, CIDRs reduced to
their network address), so every later stage can compare strings.
"""
from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Literal, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Family = Literal["IPv4", "IPv6"]

# Four dot-separated runs of ASCII digits; each run may have leading zeros.
_SLOPPY_IPV4 = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
_DIGITS = re.compile(r"[0-9]+")
# A dotted quad that is already canonical: four decimal octets 0..255 without
# leading zeros. Such text is its own canonical form, so the common case needs
# no ipaddress objects at all (``is_canonical_ipv4(text)`` is truthy for it).
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4_PATTERN = rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}"
is_canonical_ipv4 = re.compile(IPV4_PATTERN).fullmatch
_LINK_LOCAL_MULTICAST_V4 = ipaddress.IPv4Network("224.0.0.0/24")


def _parse_ipv4_sloppy(text: str) -> ipaddress.IPv4Address:
    """Parse dotted-quad IPv4, accepting leading zeros as decimal (like Go's ParseIPSloppy)."""
    if not _SLOPPY_IPV4.fullmatch(text):
        raise ValueError(f"{text!r} is not an IPv4 address")
    a, b, c, d = (int(part) for part in text.split("."))
    if a > 255 or b > 255 or c > 255 or d > 255:
        raise ValueError(f"{text!r} is not an IPv4 address")
    return ipaddress.IPv4Address((a << 24) | (b << 16) | (c << 8) | d)


def _parse_ipv6_sloppy(text: str) -> IPAddress:
    """Parse IPv6 (no zone); an embedded IPv4 tail may have leading zeros.

    An IPv4-mapped address comes back as the IPv4 address it maps, as in Go.
    """
    if "%" in text:
        raise ValueError(f"{text!r}: zoned IPv6 addresses are not allowed")
    head, _, tail = text.rpartition(":")
    if "." in tail:
        text = f"{head}:{_parse_ipv4_sloppy(tail)}"
    address = ipaddress.IPv6Address(text)
    mapped = address.ipv4_mapped
    return mapped if mapped is not None else address


def parse_ip(text: str) -> IPAddress:
    """Parse an IP literal the way Kubernetes does; raise ValueError if it is not one."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a string")
    return _parse_ip_cached(text)


@lru_cache(maxsize=1 << 18)
def _parse_ip_cached(text: str) -> IPAddress:
    # Cached: a cluster names each endpoint IP several times (validation, family, canonical form).
    if ":" in text:
        return _parse_ipv6_sloppy(text)
    return _parse_ipv4_sloppy(text)


def parse_cidr(text: str) -> IPNetwork:
    """Parse ``address/prefix`` the way Kubernetes does (``ParseCIDRSloppy``).

    Host bits may be set (the network is returned), the prefix length may carry
    leading zeros, and an IPv4-mapped IPv6 prefix of length >= 96 is the
    equivalent IPv4 network. Raise ValueError if ``text`` is not a CIDR.
    """
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a string")
    address_text, slash, prefix_text = text.partition("/")
    if not slash or not _DIGITS.fullmatch(prefix_text):
        raise ValueError(f"{text!r} is not a CIDR")
    prefix = int(prefix_text)
    if ":" in address_text:
        if "%" in address_text:
            raise ValueError(f"{text!r}: zoned IPv6 addresses are not allowed")
        head, _, tail = address_text.rpartition(":")
        if "." in tail:
            address_text = f"{head}:{_parse_ipv4_sloppy(tail)}"
        address: IPAddress = ipaddress.IPv6Address(address_text)
        if prefix > 128:
            raise ValueError(f"{text!r}: prefix length out of range")
        mapped = address.ipv4_mapped
        if mapped is not None and prefix >= 96:
            address, prefix = mapped, prefix - 96
    else:
        address = _parse_ipv4_sloppy(address_text)
        if prefix > 32:
            raise ValueError(f"{text!r}: prefix length out of range")
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False)


def canonical_ip(text: str) -> str:
    """Canonical text of an IP literal (``172.30.0.041`` -> ``172.30.0.41``); ValueError if invalid."""
    if type(text) is str and is_canonical_ipv4(text):
        return text
    return str(parse_ip(text))


def canonical_cidr(text: str) -> str:
    """Canonical text of a CIDR (``203.0.113.000/025`` -> ``203.0.113.0/25``); ValueError if invalid."""
    return str(parse_cidr(text))


def ip_family(text: str) -> Family:
    """``"IPv4"`` or ``"IPv6"`` for an IP literal; ValueError if it is not one."""
    if type(text) is str and is_canonical_ipv4(text):
        return "IPv4"
    return "IPv4" if parse_ip(text).version == 4 else "IPv6"


def cidr_family(text: str) -> Family:
    """``"IPv4"`` or ``"IPv6"`` for a CIDR; ValueError if it is not one."""
    return "IPv4" if parse_cidr(text).version == 4 else "IPv6"


def is_ipv6(text: str) -> bool:
    """True if ``text`` is a valid IPv6 literal (an IPv4-mapped one counts as IPv4)."""
    try:
        return parse_ip(text).version == 6
    except ValueError:
        return False


def is_ip(text: str) -> bool:
    """True if ``text`` is a valid IP literal in Kubernetes' sloppy syntax."""
    if type(text) is str and is_canonical_ipv4(text):
        return True
    try:
        parse_ip(text)
    except ValueError:
        return False
    return True


def is_link_local_multicast(address: IPAddress) -> bool:
    """Go's ``IP.IsLinkLocalMulticast``: 224.0.0.0/24, or ffX2::/16 for IPv6."""
    if address.version == 4:
        return address in _LINK_LOCAL_MULTICAST_V4
    packed = address.packed
    return packed[0] == 0xFF and packed[1] & 0x0F == 0x02


def is_dual_stack(families: list[Family] | tuple[Family, ...]) -> bool:
    """True if the families include at least one IPv4 and one IPv6 (``IsDualStackIPs``)."""
    return "IPv4" in families and "IPv6" in families
