"""The EndpointSlice fast path: an endpoint without any problem, read without a :class:`.validation.Checker`.

Most of a large cluster's input is endpoints, and nearly all of them are valid;
:func:`fast_endpoint` accepts exactly those on which the full validator
(:mod:`.endpoints`) would report nothing, and builds the same Endpoint.
"""
from __future__ import annotations

import re
from typing import Optional

from .. import ipaddrs
from ..ipaddrs import IPV4_PATTERN
from ..model import Endpoint, EndpointConditions
from .validation import MAX_ENDPOINT_ADDRESSES, is_dns1123_label, is_dns1123_subdomain, special_ip_errors


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
_is_endpoint_ipv4 = re.compile(r"(?!0\.0\.0\.0$|127\.|169\.254\.|224\.0\.0\.)" + IPV4_PATTERN).fullmatch


def fast_endpoint(item: dict, address_type: str) -> Optional[Endpoint]:
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
    if node_name is not None and not (type(node_name) is str and is_dns1123_subdomain(node_name)):
        return None
    zone = item.get("zone")
    if zone is not None and type(zone) is not str:
        return None
    hostname = item.get("hostname")
    if hostname is not None and not (type(hostname) is str and is_dns1123_label(hostname)):
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
