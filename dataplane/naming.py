"""Names of per-service objects, hashed exactly as kube-proxy hashes them.

iptables: ``KUBE-SVC-``/``KUBE-SVL-``/``KUBE-EXT-``/``KUBE-FW-`` + 16 characters of
base32(sha256(servicePortName + protocol)), ``KUBE-SEP-`` + 16 characters of
base32(sha256(servicePortName + protocol + endpoint)). nftables: ``<hash8>-<ns/name/proto/port>``
with a further ``__ip/port`` part for endpoints.

Names are hashed for every endpoint of a cluster, so they are made in batches (those of many
service ports at once), each a few loops over all its texts: no function call per name.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Protocol

NFT_MAX_BASE = 240  # 256 name length limit minus a prefix budget, as kube-proxy does


class Endpoint(Protocol):
    """An endpoint of a service port, as named (a plan's ``PlanEndpoint``)."""

    address: str  # ``ip:port``/``[ip6]:port``, as in a DNAT target


_B32_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
# base32 of every 10-bit value: two characters
_B32_PAIRS = tuple(a + b for a in _B32_ALPHABET for b in _B32_ALPHABET)
# bytes.translate table: byte i < 32 becomes base32 character i, any other byte stays itself
_B32_BYTES = bytes.maketrans(bytes(range(32)), _B32_ALPHABET.encode())


def _spread_rounds() -> tuple[tuple[int, int], ...]:
    """The rounds that spread the 16 5-bit groups of an 80-bit value (the low bits of 128) into a
    byte each: (the bits that stay, how far the others move up). Round k halves each block of
    40 >> k bits (at a pitch of 128 >> k bits), moving its upper half to the middle of the pitch."""
    rounds = []
    for k in range(4):
        pitch, width = 128 >> k, 40 >> k
        stay = sum(((1 << width) - 1) << (m * pitch) for m in range(128 // pitch))
        rounds.append((stay, pitch // 2 - width))
    return tuple(rounds)


_SPREAD_ROUNDS = _spread_rounds()


def _b32_16(texts: list[str], prefix: str = "") -> list[str]:
    """``prefix`` (ASCII, no control characters) and the first 16 characters of
    base32(sha256(text)), of each text.

    base32 has no codec in C, and encoding an 80-bit value in Python costs as much as hashing
    the text, so all values are encoded at once: one big integer holds a slot per text, the
    prefix then 16 bytes (the first 10 bytes of the digest in the low ten), four shift-and-mask
    rounds over all slots together move each 5-bit group into a byte of its own, and
    ``bytes.translate`` turns those bytes into base32 characters.
    """
    if not texts:
        return []
    sha256, n = hashlib.sha256, len(texts)
    head = prefix.encode() + bytes(6)
    slot = len(head) + 10
    slots = int.from_bytes(head + head.join([sha256(text.encode()).digest()[:10] for text in texts]), "big")
    prefix_bits = ((1 << 8 * (slot - 16)) - 1) << 128
    for stay, shift in _SPREAD_ROUNDS:
        kept = slots & int.from_bytes((prefix_bits | stay).to_bytes(slot, "big") * n, "big")
        slots = kept | ((slots ^ kept) << shift)
    encoded = slots.to_bytes(slot * n, "big").translate(_B32_BYTES).decode("ascii")
    return [encoded[i:i + slot] for i in range(0, slot * n, slot)]


def iptables_service_hashes(ports: Iterable[tuple[str, str]]) -> list[str]:
    """The 16-character hash shared by the SVC/SVL/EXT/FW chains of each (service port name,
    protocol)."""
    return _b32_16([spn + protocol.lower() for spn, protocol in ports])


def iptables_endpoint_chains(ports: Iterable[tuple[str, str, Iterable[Endpoint]]]) -> list[str]:
    """``KUBE-SEP-…`` of every endpoint of each (service port name, protocol, endpoints), in order."""
    texts: list[str] = []
    for spn, protocol, endpoints in ports:
        prefix = spn + protocol.lower()
        texts += [prefix + e.address for e in endpoints]
    return _b32_16(texts, "KUBE-SEP-")


def _nft_bases(texts: list[str]) -> list[str]:
    """``<hash8>-<text>`` of each text, hash8 the first 8 characters (one 5-byte group) of
    base32(sha256(text)); cut to kube-proxy's length limit. (Four table lookups in the one
    f-string that makes each name cost less here than :func:`_b32_16` and a second string.)"""
    sha256, from_bytes, pairs = hashlib.sha256, int.from_bytes, _B32_PAIRS
    values = [from_bytes(sha256(text.encode()).digest()[:5], "big") for text in texts]
    bases = [f"{pairs[v >> 30]}{pairs[(v >> 20) & 0x3FF]}{pairs[(v >> 10) & 0x3FF]}{pairs[v & 0x3FF]}-{text}"
             for v, text in zip(values, texts)]
    if max(map(len, bases), default=0) <= NFT_MAX_BASE:
        return bases
    return [b if len(b) <= NFT_MAX_BASE else b[: NFT_MAX_BASE - 3] + "..." for b in bases]


def nft_service_bases(ports: Iterable[tuple[str, str, str, str]]) -> list[str]:
    """Base of the ``service-…``/``local-…``/``external-…``/``firewall-…`` chain names of each
    (namespace, name, protocol, port name)."""
    return _nft_bases([f"{namespace}/{name}/{protocol.lower()}/{port_name}"
                       for namespace, name, protocol, port_name in ports])


def nft_endpoint_bases(ports: Iterable[tuple[str, str, str, str, Iterable[Endpoint]]]) -> list[str]:
    """Base of the ``endpoint-…`` chain and ``affinity-…`` set of every endpoint of each
    (namespace, name, protocol, port name, endpoints), in order: the port's text, ``__``, then
    ``ip/port``, ``:`` of IPv6 becoming ``.`` (made from the endpoint's address: formatting its
    port number again costs more)."""
    texts: list[str] = []
    for namespace, name, protocol, port_name, endpoints in ports:
        prefix = f"{namespace}/{name}/{protocol.lower()}/{port_name}__"
        texts += [prefix + e.address.replace(":", "/") if e.address[0] != "[" else
                  prefix + e.address[1:].replace("]:", "/").replace(":", ".") for e in endpoints]
    return _nft_bases(texts)
