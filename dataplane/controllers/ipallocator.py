"""The API server's ClusterIP allocator for one service CIDR (``--service-cluster-ip-range``).

The bitmap covers the usable addresses of the CIDR: the network address is
never handed out, nor is the IPv4 broadcast address, and an IPv6 bitmap is
capped at 65536 addresses (minus the network address). Slot 0 is
``network + 1``. The static band (KEP-3070) is the lowest
``min(max(16, cidrSize // 16), 256)`` slots, where ``cidrSize`` counts the
whole CIDR; CIDRs of 16 addresses or fewer have none.
"""
from __future__ import annotations

import ipaddress
import random
import socket
from typing import Optional

from ..ipaddrs import IPNetwork, is_canonical_ipv4, parse_cidr, parse_ip
from .portallocator import (
    AlreadyAllocatedError,
    MismatchedRangeError,
    NotInRangeError,
    RangeAllocation,
    RangeBitmap,
    RangeFullError,
    make_rng,
)

IPV6_BITMAP_CAP = 65536

_CIDR_OFFSET_MIN = 16
_CIDR_OFFSET_MAX = 256
_CIDR_OFFSET_STEP = 16


def cidr_range_offset(cidr: IPNetwork | str) -> int:
    """Size of the static band of a service CIDR (0 for CIDRs of 16 addresses or fewer)."""
    network = parse_cidr(cidr) if isinstance(cidr, str) else cidr
    cidr_size = network.num_addresses
    if cidr_size <= _CIDR_OFFSET_MIN:
        return 0
    return min(max(_CIDR_OFFSET_MIN, cidr_size // _CIDR_OFFSET_STEP), _CIDR_OFFSET_MAX)


def usable_size(network: IPNetwork) -> int:
    """How many addresses of ``network`` the bitmap holds."""
    size = network.num_addresses
    if network.version == 6:
        size = min(size, IPV6_BITMAP_CAP)
    else:
        size -= 1  # broadcast
    return max(size - 1, 0)  # network address


class IPAllocator:
    """Hands out ClusterIPs from one service CIDR."""

    def __init__(
        self,
        cidr: IPNetwork | str,
        *,
        rng: Optional[random.Random] = None,
        seed: Optional[int] = None,
    ):
        self.cidr: IPNetwork = parse_cidr(cidr) if isinstance(cidr, str) else cidr
        self.family = "IPv4" if self.cidr.version == 4 else "IPv6"
        size = usable_size(self.cidr)
        self.offset = min(cidr_range_offset(self.cidr), size)
        self._base = int(self.cidr.network_address) + 1
        self._bitmap = RangeBitmap(size, self.offset, make_rng(rng, seed))
        self.version: int = self.cidr.version
        # the CIDR's addresses as integers (``_first <= int(address) <= _last``), for range checks
        self._first = int(self.cidr.network_address)
        self._last = int(self.cidr.broadcast_address)

    @property
    def first(self) -> Optional[str]:
        """The first allocatable address (slot 0), or None for a CIDR without any."""
        return self._address(0) if self._bitmap.size else None

    def allocate(self, ip: str) -> None:
        """Reserve ``ip``; NotInRangeError or AlreadyAllocatedError if that is impossible."""
        try:
            address = parse_ip(ip)
        except ValueError:
            version, value = 0, 0  # in no CIDR
        else:
            version, value = address.version, int(address)
        self.allocate_value(version, value, ip)

    def allocate_next(self) -> str:
        """Reserve and return a free address, dynamic band first; RangeFullError when none is left."""
        slot = self._bitmap.allocate_next()
        if slot is None:
            raise RangeFullError()
        return self._address(slot)

    def release(self, ip: str) -> None:
        """Free ``ip``; a free or out-of-range address is ignored."""
        slot = self._slot(ip)
        if slot is not None:
            self._bitmap.release(slot)

    def has(self, ip: str) -> bool:
        """True if ``ip`` is allocated."""
        slot = self._slot(ip)
        return slot is not None and self._bitmap.has(slot)

    def free(self) -> int:
        """Number of free addresses."""
        return self._bitmap.free()

    def used(self) -> int:
        """Number of allocated addresses."""
        return self._bitmap.used()

    def allocated(self) -> list[str]:
        """The allocated addresses in increasing order."""
        return [self._address(slot) for slot in self._bitmap.slots()]

    def snapshot(self) -> RangeAllocation:
        """The allocator's state as the API server stores it."""
        return RangeAllocation(range=str(self.cidr), data=self._bitmap.to_bytes())

    def restore(self, snapshot: RangeAllocation) -> None:
        """Load a snapshot taken from the same CIDR; MismatchedRangeError otherwise."""
        try:
            same = parse_cidr(snapshot.range) == self.cidr
        except ValueError:
            same = False
        if not same:
            raise MismatchedRangeError("the provided network does not match the current range")
        try:
            self._bitmap.load_bytes(snapshot.data)
        except ValueError as err:
            raise MismatchedRangeError(str(err)) from None

    def contains(self, version: int, value: int) -> bool:
        """True if the address ``value`` (an integer of IP ``version``) is in the CIDR."""
        return version == self.version and self._first <= value <= self._last

    def has_value(self, version: int, value: int) -> bool:
        """:meth:`has` for an address given as (IP version, integer)."""
        slot = self._slot_of(version, value)
        return slot is not None and self._bitmap.has(slot)

    def allocate_value(self, version: int, value: int, ip: str) -> None:
        """:meth:`allocate` for an address given as (IP version, integer); ``ip`` is its text, for
        messages."""
        slot = self._slot_of(version, value)
        if slot is None:
            raise NotInRangeError(
                f"the provided IP ({_display(ip)}) is not in the valid range. The range of valid IPs is {self.cidr}"
            )
        if not self._bitmap.allocate(slot):
            raise AlreadyAllocatedError("provided IP is already allocated")

    def _slot(self, ip: str) -> Optional[int]:
        """The bitmap slot of ``ip``, or None if it is not an allocatable address of the CIDR."""
        try:
            address = parse_ip(ip)
        except ValueError:
            return None
        return self._slot_of(address.version, int(address))

    def _slot_of(self, version: int, value: int) -> Optional[int]:
        """The bitmap slot of an address given as (IP version, integer), or None if it is not an
        allocatable address of the CIDR."""
        if version != self.version or not self._first <= value <= self._last:
            return None
        slot = value - self._base
        return slot if 0 <= slot < self._bitmap.size else None

    def _address(self, slot: int) -> str:
        value = self._base + slot
        if self.version == 4:  # what str(IPv4Address(value)) gives, without the object
            return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
        return str(ipaddress.IPv6Address(value))


def ip_value(ip: str) -> tuple[int, int]:
    """(IP version, the address as an integer) of an IP literal, read as :func:`parse_ip` reads
    it; ValueError if it is not one."""
    if is_canonical_ipv4(ip):  # (the common case, without an address object)
        return 4, int.from_bytes(socket.inet_aton(ip), "big")
    address = parse_ip(ip)
    return address.version, int(address)


def _display(ip: str) -> str:
    """``ip`` in canonical form when it parses (Go prints the parsed ``net.IP``), else as given."""
    try:
        return str(parse_ip(ip))
    except ValueError:
        return ip


class MetaAllocator:
    """ClusterIPs of one family from several service CIDRs (the API server's ``MetaAllocator``
    over ServiceCIDR objects): one :class:`IPAllocator` per CIDR.

    A given IP is reserved in every CIDR holding it (CIDRs may overlap); a dynamic one comes
    from the ready CIDRs, tried in a random (seeded) order, moving on when one is full.
    """

    def __init__(self, cidrs: list[IPNetwork], ready: Optional[list[bool]] = None, *,
                 rng: Optional[random.Random] = None) -> None:
        self._rng = make_rng(rng, None)
        self.allocators = [IPAllocator(cidr, rng=self._rng) for cidr in cidrs]
        self._ready = list(ready) if ready is not None else [True] * len(cidrs)

    def _holding(self, ip: str) -> list[IPAllocator]:
        version, value = ip_value(ip)
        return [a for a in self.allocators if a.contains(version, value)]

    def allocate(self, ip: str) -> None:
        """Reserve ``ip`` (an IP literal, ValueError if it is not one); NotInRangeError or
        AlreadyAllocatedError if that is impossible."""
        version, value = ip_value(ip)
        allocators = self.allocators
        if len(allocators) == 1:  # (the common case, without the lists)
            only = allocators[0]
            if not only.contains(version, value):
                raise NotInRangeError(
                    f"the provided IP ({_display(ip)}) is not in the valid range. "
                    f"The range of valid IPs is {only.cidr}"
                )
            only.allocate_value(version, value, ip)  # (NotInRangeError for a network or broadcast address)
            return
        holding = [a for a in allocators if a.contains(version, value)]
        if not holding:
            ranges = ", ".join(str(a.cidr) for a in allocators)
            raise NotInRangeError(
                f"the provided IP ({_display(ip)}) is not in the valid range. The range of valid IPs is {ranges}"
            )
        if any(a.has_value(version, value) for a in holding):
            raise AlreadyAllocatedError("provided IP is already allocated")
        for allocator in holding:
            allocator.allocate_value(version, value, ip)  # NotInRangeError for a network or broadcast address

    def allocate_next(self) -> str:
        """Reserve and return a free address of a ready CIDR; RangeFullError when none is left."""
        order = [a for a, ready in zip(self.allocators, self._ready) if ready]
        self._rng.shuffle(order)
        for allocator in order:
            while True:
                try:
                    ip = allocator.allocate_next()
                except RangeFullError:
                    break
                if len(self.allocators) == 1:
                    return ip
                others = [a for a in self._holding(ip) if a is not allocator]
                if not any(a.has(ip) for a in others):  # taken through an overlapping CIDR: next one
                    for other in others:
                        other.allocate(ip)
                    return ip
        raise RangeFullError()
