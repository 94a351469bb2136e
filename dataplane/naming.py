"""Names of per-service objects, hashed exactly as kube-proxy hashes them.

iptables: ``KUBE-SVC-``/``KUBE-SVL-``/``KUBE-EXT-``/``KUBE-FW-`` + 16 characters of
base32(sha256(servicePortName + protocol)), ``KUBE-SEP-`` + 16 characters of
base32(sha256(servicePortName + protocol + endpoint)). nftables: ``<hash8>-<ns/name/proto/port>``
with a further ``__ip/port`` part for endpoints.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

NFT_MAX_BASE = 240  # 256 name length limit minus a prefix budget, as kube-proxy does


# base32 of every 10-bit value: two characters (base64.b32encode is pure Python, and names
# are hashed for every endpoint of a cluster)
_B32_PAIRS = tuple(a + b for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" for b in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


def _b32(text: str, chars: int = 16) -> str:
    """The first ``chars`` characters of base32(sha256(text)) (a multiple of 8: whole 5-byte groups)."""
    digest = hashlib.sha256(text.encode()).digest()
    pairs = _B32_PAIRS
    if chars == 8:  # nftables names: one 5-byte group
        v = int.from_bytes(digest[:5], "big")
        return pairs[v >> 30] + pairs[(v >> 20) & 0x3FF] + pairs[(v >> 10) & 0x3FF] + pairs[v & 0x3FF]
    nbytes = chars * 5 // 8
    value = int.from_bytes(digest[:nbytes], "big")
    return "".join([pairs[(value >> shift) & 0x3FF] for shift in range(nbytes * 8 - 10, -1, -10)])


@lru_cache(maxsize=None)
def iptables_service_hash(spn: str, protocol: str) -> str:
    """The 16-character hash shared by a service port's SVC/SVL/EXT/FW chains."""
    return _b32(spn + protocol.lower())


def iptables_endpoint_chain(spn: str, protocol: str, endpoint: str) -> str:
    """``KUBE-SEP-…`` for an endpoint written as in the DNAT target (``ip:port``/``[ip6]:port``)."""
    return "KUBE-SEP-" + _b32(spn + protocol.lower() + endpoint)


def _nft_base(text: str) -> str:
    base = _b32(text, 8) + "-" + text
    if len(base) > NFT_MAX_BASE:
        base = base[: NFT_MAX_BASE - 3] + "..."
    return base


@lru_cache(maxsize=None)
def nft_service_base(namespace: str, name: str, protocol: str, port_name: str) -> str:
    """Base of ``service-…``/``local-…``/``external-…``/``firewall-…`` chain names."""
    return _nft_base(f"{namespace}/{name}/{protocol.lower()}/{port_name}")


def nft_endpoint_base(namespace: str, name: str, protocol: str, port_name: str, ip: str, port: int) -> str:
    """Base of ``endpoint-…`` chains and ``affinity-…`` sets; ``:`` of IPv6 becomes ``.``."""
    ep_ip = ip.replace(":", ".")
    return _nft_base(f"{namespace}/{name}/{protocol.lower()}/{port_name}__{ep_ip}/{port}")
