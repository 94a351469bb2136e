"""Hashed chain names: the fast base32 matches base64.b32encode of the sha256 prefix."""
from __future__ import annotations

import base64
import hashlib

from dataplane.naming import (NFT_MAX_BASE, _b32_16, iptables_endpoint_chains, iptables_service_hashes,
                              nft_endpoint_bases, nft_service_bases)
from dataplane.plan import PlanEndpoint

TEXTS = ["", "a", "ns/svc:http" + "tcp", "x" * 200, "ünïcode/ß"]


def _ref(text: str, chars: int) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()[: chars * 5 // 8]).decode()


def _ep(ip: str, port: int) -> PlanEndpoint:
    return PlanEndpoint(ip=ip, port=port, is_local=False, ready=True, serving=True, terminating=False)


def test_hashes_are_base32_of_the_sha256_prefix() -> None:
    assert iptables_service_hashes([(t, "TCP") for t in TEXTS]) == [_ref(t + "tcp", 16) for t in TEXTS]
    assert nft_service_bases([(t, "n", "TCP", "") for t in TEXTS]) == [
        _ref(f"{t}/n/tcp/", 8) + f"-{t}/n/tcp/" for t in TEXTS]
    assert iptables_service_hashes([]) == nft_service_bases([]) == []


def test_b32_16_encodes_many_texts_at_once() -> None:
    texts = [f"ns/svc-{i}:http" for i in range(1000)] + TEXTS
    assert _b32_16(texts, "KUBE-SEP-") == ["KUBE-SEP-" + _ref(t, 16) for t in texts]
    assert _b32_16(texts) == [_ref(t, 16) for t in texts]
    assert _b32_16([], "KUBE-SEP-") == []


def test_names_use_kube_proxy_inputs() -> None:
    assert iptables_service_hashes([("shop/web:http", "TCP")]) == [_ref("shop/web:httptcp", 16)]
    eps = [_ep("10.244.1.10", 8080), _ep("fd00::1", 80)]
    db = [_ep("10.0.0.1", 53)]
    assert iptables_endpoint_chains([("shop/web:http", "TCP", eps), ("shop/db", "UDP", db)]) == [
        "KUBE-SEP-" + _ref("shop/web:httptcp10.244.1.10:8080", 16),
        "KUBE-SEP-" + _ref("shop/web:httptcp[fd00::1]:80", 16),
        "KUBE-SEP-" + _ref("shop/dbudp10.0.0.1:53", 16),
    ]
    assert nft_service_bases([("shop", "web", "TCP", "http")]) == [_ref("shop/web/tcp/http", 8) + "-shop/web/tcp/http"]
    assert nft_endpoint_bases([("shop", "web", "TCP", "http", eps), ("shop", "db", "UDP", "", db)]) == [
        _ref("shop/web/tcp/http__10.244.1.10/8080", 8) + "-shop/web/tcp/http__10.244.1.10/8080",
        _ref("shop/web/tcp/http__fd00..1/80", 8) + "-shop/web/tcp/http__fd00..1/80",
        _ref("shop/db/udp/__10.0.0.1/53", 8) + "-shop/db/udp/__10.0.0.1/53",
    ]


def test_long_nft_names_are_cut_to_the_limit() -> None:
    name = "n" * 210  # "<hash8>-ns/<name>/tcp/__10.0.0.1/80" is exactly NFT_MAX_BASE long
    fits, cut = nft_endpoint_bases([("ns", name, "tcp", "", [_ep("10.0.0.1", 80), _ep("10.0.0.10", 80)])])
    text = f"ns/{name}/tcp/__10.0.0.1/80"
    assert fits == _ref(text, 8) + "-" + text
    text = f"ns/{name}/tcp/__10.0.0.10/80"
    assert cut == (_ref(text, 8) + "-" + text)[: NFT_MAX_BASE - 3] + "..."
    assert len(fits) == len(cut) == NFT_MAX_BASE
