"""The API server's NodePort allocator: port ranges, the offset bitmap and its errors.

The API server hands out NodePorts from ``--service-node-port-range`` with a
bitmap that has a *static band* at the bottom of the range (KEP-3668). Dynamic
allocation starts at a random slot of the upper (dynamic) band and probes
forward with wrap-around; only when the whole upper band is taken does it try
the static band the same way. Requests for a specific port ignore the bands.

The bitmap (:class:`RangeBitmap`), the snapshot type and the error classes
here are shared with :mod:`.ipallocator`, which runs the same algorithm over
the addresses of a service CIDR.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterator, Optional

from ..errors import DataplaneError

MAX_PORT = 65535

# Static band of a NodePort range: min(max(MIN, size // STEP), MAX), 0 when size <= MIN.
_PORT_OFFSET_MIN = 16
_PORT_OFFSET_MAX = 128
_PORT_OFFSET_STEP = 32

_NUMBER = re.compile(r"[0-9]+")
_SCAN_BYTES = 4096  # bytes of the bitmap skipped per step when looking for a free slot


# ----------------------------------------------------------------------- errors


class AllocatorError(DataplaneError):
    """An allocator refused a request; ``str()`` is the API server's message."""


class AlreadyAllocatedError(AllocatorError):
    """The requested value is taken (``ErrAllocated``)."""


class NotInRangeError(AllocatorError):
    """The requested value lies outside the range (``ErrNotInRange``)."""


class RangeFullError(AllocatorError):
    """No free value is left (``ErrFull``)."""

    def __init__(self) -> None:
        super().__init__("range is full")


class MismatchedRangeError(AllocatorError):
    """A snapshot was taken from a different range (``ErrMismatchedNetwork``)."""


# ------------------------------------------------------------------ port range


@dataclass(frozen=True, slots=True)
class PortRange:
    """An inclusive range of ports: ``base`` .. ``base + size - 1`` (apimachinery's ``net.PortRange``)."""

    base: int
    size: int

    @classmethod
    def parse(cls, value: str) -> "PortRange":
        """Parse ``N``, ``N1-N2`` or ``N+offset``; raise ValueError with apimachinery's message."""
        text = value.strip()
        has_hyphen = "-" in text
        has_plus = "+" in text
        if not text or (has_hyphen and has_plus):
            raise ValueError(f"unable to parse port range: {text}")
        if has_hyphen:
            low_text, _, high_text = text.partition("-")
            low, high = _port_number(low_text, text), _port_number(high_text, text)
        elif has_plus:
            low_text, _, offset_text = text.partition("+")
            low = _port_number(low_text, text)
            high = low + _port_number(offset_text, text)
        else:
            low = high = _port_number(text, text)
        if low > MAX_PORT or high > MAX_PORT:
            raise ValueError(f"the port range cannot be greater than 65535: {text}")
        if high < low:
            raise ValueError(f"end port cannot be less than start port: {text}")
        return cls(base=low, size=1 + high - low)

    @property
    def last(self) -> int:
        """The highest port of the range."""
        return self.base + self.size - 1

    def contains(self, port: int) -> bool:
        """True if ``port`` is in the range."""
        return self.base <= port < self.base + self.size

    def __str__(self) -> str:
        return f"{self.base}-{self.last}" if self.size else ""


def _port_number(text: str, whole: str) -> int:
    """One decimal number of a port range; ValueError naming the whole range otherwise."""
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"unable to parse port range: {whole}")
    return int(text)


def port_range_offset(size: int) -> int:
    """Size of the static band of a NodePort range of ``size`` ports."""
    if size <= _PORT_OFFSET_MIN:
        return 0
    return min(max(_PORT_OFFSET_MIN, size // _PORT_OFFSET_STEP), _PORT_OFFSET_MAX)


# --------------------------------------------------------------------- bitmap


@dataclass(frozen=True, slots=True)
class RangeAllocation:
    """A serialised allocator, as stored in etcd: the range and a big-endian bitset (bit i = slot i)."""

    range: str
    data: bytes


class RangeBitmap:
    """A bitmap of ``size`` slots whose lowest ``offset`` slots form the static band.

    ``allocate_next`` follows the API server's ``randomScanStrategyWithOffset``:
    random start in the upper band, linear probe with wrap-around inside that
    band; if the upper band is full, the same in the static band.
    """

    __slots__ = ("size", "offset", "_bits", "_count", "_rng")

    def __init__(self, size: int, offset: int, rng: random.Random):
        if size < 0 or not 0 <= offset <= size:
            raise ValueError(f"invalid bitmap: size {size}, static band {offset}")
        self.size = size
        self.offset = offset
        self._bits = bytearray((size + 7) // 8)
        self._count = 0
        self._rng = rng

    def has(self, slot: int) -> bool:
        """True if ``slot`` is allocated (False for slots outside the bitmap)."""
        if not 0 <= slot < self.size:
            return False
        return bool(self._bits[slot >> 3] & (1 << (slot & 7)))

    def allocate(self, slot: int) -> bool:
        """Take ``slot``; False if it was already taken. ValueError outside the bitmap."""
        if not 0 <= slot < self.size:
            raise ValueError(f"offset {slot} out of range [0,{self.size}]")
        if self.has(slot):
            return False
        self._set(slot)
        return True

    def allocate_next(self) -> Optional[int]:
        """Take a free slot, dynamic band first; None when the bitmap is full."""
        if self._count >= self.size:
            return None
        upper = self.size - self.offset
        if upper > 0:
            slot = self._probe(self.offset, upper)
            if slot is not None:
                return slot
        if self.offset > 0:
            return self._probe(0, self.offset)
        return None

    def release(self, slot: int) -> None:
        """Free ``slot``; releasing a free or out-of-range slot does nothing."""
        if self.has(slot):
            self._bits[slot >> 3] &= ~(1 << (slot & 7)) & 0xFF
            self._count -= 1

    def free(self) -> int:
        """Number of free slots."""
        return self.size - self._count

    def used(self) -> int:
        """Number of allocated slots."""
        return self._count

    def slots(self) -> Iterator[int]:
        """The allocated slots in increasing order."""
        for index, byte in enumerate(self._bits):
            if not byte:
                continue
            for bit in range(8):
                if byte & (1 << bit):
                    yield index * 8 + bit

    def to_bytes(self) -> bytes:
        """The bitset as a minimal big-endian integer (Go's ``big.Int.Bytes()``)."""
        value = int.from_bytes(self._bits, "little")
        return value.to_bytes((value.bit_length() + 7) // 8, "big")

    def load_bytes(self, data: bytes) -> None:
        """Replace the contents with a bitset from :meth:`to_bytes`; ValueError if it does not fit."""
        value = int.from_bytes(data, "big")
        if value.bit_length() > self.size:
            raise ValueError(f"snapshot holds slot {value.bit_length() - 1}, beyond the {self.size} slots of the range")
        self._bits = bytearray(value.to_bytes(len(self._bits), "little"))
        self._count = value.bit_count()

    def _set(self, slot: int) -> None:
        self._bits[slot >> 3] |= 1 << (slot & 7)
        self._count += 1

    def _probe(self, first: int, length: int) -> Optional[int]:
        """Take the first free slot of ``first .. first+length-1`` at or after a random start, wrapping."""
        start = first + self._rng.randrange(length)
        slot = self._first_free(start, first + length)
        if slot is None:
            slot = self._first_free(first, start)
        if slot is not None:
            self._set(slot)
        return slot

    def _first_free(self, low: int, high: int) -> Optional[int]:
        """The lowest free slot in ``low .. high-1``, skipping full bytes at C speed."""
        slot = low
        while slot < high:
            if slot & 7 == 0 and high - slot >= 8:
                first_byte = slot >> 3
                chunk = self._bits[first_byte : min(high >> 3, first_byte + _SCAN_BYTES)]
                full = len(chunk) - len(chunk.lstrip(b"\xff"))
                slot += full * 8
                if full == len(chunk):
                    continue
            if not self._bits[slot >> 3] & (1 << (slot & 7)):
                return slot
            slot += 1
        return None


def make_rng(rng: Optional[random.Random], seed: Optional[int]) -> random.Random:
    """``rng`` if given, else a new ``random.Random(seed)``."""
    return rng if rng is not None else random.Random(seed)


# ------------------------------------------------------------- port allocator


class PortAllocator:
    """Hands out NodePorts from one :class:`PortRange`, for every protocol alike."""

    def __init__(
        self,
        port_range: PortRange | str,
        *,
        rng: Optional[random.Random] = None,
        seed: Optional[int] = None,
    ):
        self.port_range = PortRange.parse(port_range) if isinstance(port_range, str) else port_range
        self.offset = port_range_offset(self.port_range.size)
        self._bitmap = RangeBitmap(self.port_range.size, self.offset, make_rng(rng, seed))

    @property
    def static_band(self) -> PortRange:
        """The ports dynamic allocation avoids while the rest of the range has room."""
        return PortRange(self.port_range.base, self.offset)

    def allocate(self, port: int) -> None:
        """Reserve ``port``; NotInRangeError or AlreadyAllocatedError if that is impossible."""
        if not self.port_range.contains(port):
            raise NotInRangeError(
                f"provided port is not in the valid range. The range of valid ports is {self.port_range}"
            )
        if not self._bitmap.allocate(port - self.port_range.base):
            raise AlreadyAllocatedError("provided port is already allocated")

    def allocate_next(self) -> int:
        """Reserve and return a free port, dynamic band first; RangeFullError when none is left."""
        slot = self._bitmap.allocate_next()
        if slot is None:
            raise RangeFullError()
        return self.port_range.base + slot

    def release(self, port: int) -> None:
        """Free ``port``; a free or out-of-range port is ignored, as upstream."""
        if self.port_range.contains(port):
            self._bitmap.release(port - self.port_range.base)

    def has(self, port: int) -> bool:
        """True if ``port`` is allocated."""
        return self.port_range.contains(port) and self._bitmap.has(port - self.port_range.base)

    def free(self) -> int:
        """Number of free ports."""
        return self._bitmap.free()

    def used(self) -> int:
        """Number of allocated ports."""
        return self._bitmap.used()

    def allocated(self) -> list[int]:
        """The allocated ports in increasing order."""
        return [self.port_range.base + slot for slot in self._bitmap.slots()]

    def snapshot(self) -> RangeAllocation:
        """The allocator's state as the API server stores it."""
        return RangeAllocation(range=str(self.port_range), data=self._bitmap.to_bytes())

    def restore(self, snapshot: RangeAllocation) -> None:
        """Load a snapshot taken from the same range; MismatchedRangeError otherwise."""
        if snapshot.range != str(self.port_range):
            raise MismatchedRangeError("the provided port range does not match the current port range")
        try:
            self._bitmap.load_bytes(snapshot.data)
        except ValueError as err:
            raise MismatchedRangeError(str(err)) from None
