"""Hashed chain names: the fast base32 matches base64.b32encode of the sha256 prefix."""
from __future__ import annotations

import base64
import hashlib

import pytest

from dataplane.naming import _b32, iptables_endpoint_chain, iptables_service_hash, nft_endpoint_base


@pytest.mark.parametrize("text", ["", "a", "ns/svc:http" + "tcp", "x" * 300, "ünïcode/ß"])
@pytest.mark.parametrize("chars", [8, 16])
def test_b32_is_base32_of_the_sha256_prefix(text: str, chars: int) -> None:
    expected = base64.b32encode(hashlib.sha256(text.encode()).digest()[: chars * 5 // 8]).decode()
    assert _b32(text, chars) == expected


def test_names_use_kube_proxy_inputs() -> None:
    ref = base64.b32encode(hashlib.sha256(b"shop/web:httptcp").digest()[:10]).decode()
    assert iptables_service_hash("shop/web:http", "TCP") == ref
    sep = base64.b32encode(hashlib.sha256(b"shop/web:httptcp10.244.1.10:8080").digest()[:10]).decode()
    assert iptables_endpoint_chain("shop/web:http", "TCP", "10.244.1.10:8080") == "KUBE-SEP-" + sep
    nft = base64.b32encode(hashlib.sha256(b"shop/web/tcp/http__fd00..1/80").digest()[:5]).decode()
    assert nft_endpoint_base("shop", "web", "TCP", "http", "fd00::1", 80) == nft + "-shop/web/tcp/http__fd00..1/80"
