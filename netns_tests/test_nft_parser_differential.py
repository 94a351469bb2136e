"""The tracer's nft parser against the kernel: the same script, two readings.

Each script (the nftables goldens, and rules compiled from seeded random clusters) is
parsed by :func:`dataplane.trace.nftables.parse` and loaded into a namespace with
``nft -f``; ``nft -j list ruleset`` then tells what the kernel holds. Both must agree
on the tables, the chains (base chain type, hook, priority, policy), the number of
rules per chain, every verdict of every rule (``jump``/``goto`` targets included, also
inside anonymous verdict maps), and the elements of every set and map with their verdicts.
"""
from __future__ import annotations

import ipaddress
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import pytest

from dataplane import compile_rules
from dataplane.model import (
    Cluster,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    LoadBalancerIngress,
    Node,
    NodeAddress,
    ProxyConfig,
    Service,
    ServicePort,
)
from dataplane.runtime.netns import apply_nftables, run_in
from dataplane.trace import nft_model
from dataplane.trace import nftables as tracer

pytestmark = pytest.mark.netns

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"
GOLDENS = sorted(GOLDEN.glob("*/nftables-*.txt"))
VERDICTS = ("accept", "drop", "return", "continue")

Key = tuple[Any, ...]
Verdict = tuple[str, Optional[str]]


# ----------------------------------------------------------------------------- normal forms


def _atom(value: Any) -> Any:
    """One key component, spelled one way: addresses and networks canonical, numbers as int."""
    if isinstance(value, dict):
        if "prefix" in value:
            return _atom(f"{value['prefix']['addr']}/{value['prefix']['len']}")
        if "range" in value:
            low, high = value["range"]
            return f"{_atom(low)}-{_atom(high)}"
        raise AssertionError(f"unexpected key component {value!r}")
    if isinstance(value, int):
        return value
    text = str(value)
    if text.isdigit():
        return int(text)
    for parse in (ipaddress.ip_address, lambda t: ipaddress.ip_network(t, strict=False)):
        try:
            return str(parse(text))
        except ValueError:
            pass
    if "-" in text:
        low, _, high = text.partition("-")
        try:
            return f"{ipaddress.ip_address(low)}-{ipaddress.ip_address(high)}"
        except ValueError:
            pass
    return text


def _json_key(value: Any) -> Key:
    if isinstance(value, dict) and "elem" in value:  # an element with a comment or timeout
        return _json_key(value["elem"]["val"])
    if isinstance(value, dict) and "concat" in value:
        return tuple(_atom(v) for v in value["concat"])
    return (_atom(value),)


def _json_verdicts(node: Any) -> list[Verdict]:
    """Every verdict in a JSON rule expression (nested anonymous vmaps included)."""
    found: list[Verdict] = []
    if isinstance(node, dict):
        for kind, body in node.items():
            if kind in ("jump", "goto") and isinstance(body, dict) and "target" in body:
                found.append((kind, body["target"]))
            elif kind in VERDICTS and body is None:
                found.append((kind, None))
            else:
                found += _json_verdicts(body)
    elif isinstance(node, list):
        for item in node:
            found += _json_verdicts(item)
    return found


def _json_verdict(data: Any) -> Verdict:
    [verdict] = _json_verdicts(data)
    return verdict


def kernel_view(listing: dict) -> dict:
    """``nft -j list ruleset`` in the normal form :func:`tracer_view` gives."""
    view: dict = {}
    for item in listing["nftables"]:
        ((kind, body),) = item.items()
        if kind == "metainfo":
            continue
        name = body["name"] if kind == "table" else body["table"]
        table = view.setdefault((body["family"], name), {"chains": {}, "sets": {}})
        if kind == "chain":
            table["chains"][body["name"]] = {
                "base": (body.get("type"), body.get("hook"), body.get("prio"), body.get("policy")),
                "rules": 0, "verdicts": Counter()}
        elif kind == "rule":
            chain = table["chains"][body["chain"]]
            chain["rules"] += 1
            chain["verdicts"].update(_json_verdicts(body["expr"]))
        elif kind in ("set", "map"):
            elements = Counter()
            for elem in body.get("elem", []):
                if kind == "map":
                    key, data = elem
                    elements[(_json_key(key), _json_verdict(data))] += 1
                else:
                    elements[(_json_key(elem), None)] += 1
            table["sets"][body["name"]] = {"map": kind == "map", "elements": elements}
    return view


def _verdict(v: Optional[nft_model.Verdict]) -> Optional[Verdict]:
    return None if v is None else (v.kind, v.chain)


def tracer_view(ruleset: tracer.Ruleset) -> dict:
    """The tracer's parse of a script, in a normal form."""
    view: dict = {}
    for table in ruleset.tables:
        chains = {}
        for chain in table.chains.values():
            verdicts: Counter = Counter()
            for rule in chain.rules:
                for e in rule.exprs:
                    if isinstance(e, nft_model.Verdict):
                        verdicts[_verdict(e)] += 1
                    elif isinstance(e, nft_model.Vmap):
                        verdicts.update(_verdict(el.verdict) for el in e.inline)
            base = (chain.ctype, chain.hook, chain.priority, chain.policy) if chain.hook else (None,) * 4
            chains[chain.name] = {"base": base, "rules": len(chain.rules), "verdicts": verdicts}
        sets = {
            s.name: {"map": s.is_map,
                     "elements": Counter((tuple(_atom(k) for k in e.key), _verdict(e.verdict)) for e in s.elements)}
            for s in table.sets.values()
        }
        view[(table.family, table.name)] = {"chains": chains, "sets": sets}
    return view


def assert_same_reading(ns: str, script: str) -> dict:
    """Load ``script`` into ``ns`` (replacing what an earlier one loaded) and compare the readings."""
    run_in(ns, ["nft", "flush", "ruleset"])
    apply_nftables(ns, script)
    kernel = kernel_view(json.loads(run_in(ns, ["nft", "-j", "list", "ruleset"]).stdout))
    parsed = tracer_view(tracer.parse(script))
    assert parsed.keys() == kernel.keys()
    for table, want in kernel.items():
        got = parsed[table]
        assert got["chains"].keys() == want["chains"].keys(), table
        for name, chain in want["chains"].items():
            assert got["chains"][name] == chain, (table, name)
        assert got["sets"] == want["sets"], table
    return kernel


# ----------------------------------------------------------------------------- the goldens


@pytest.mark.parametrize("golden", GOLDENS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_goldens_read_alike(bare_ns, golden):
    kernel = assert_same_reading(bare_ns, golden.read_text())
    [table] = kernel.values()
    # the comparison is not vacuous: the goldens hold base chains, rules, verdicts and map elements
    assert any(c["base"][1] for c in table["chains"].values())
    assert sum(c["rules"] for c in table["chains"].values()) > 10
    assert any(v[0] == "goto" for c in table["chains"].values() for v in c["verdicts"])
    assert any(s["map"] and s["elements"] for s in table["sets"].values())


# ----------------------------------------------------------------------------- random clusters


def random_cluster(rng: random.Random, family: str) -> Cluster:
    """Services of every type and protocol, with and without endpoints (up to 40 of them: an
    anonymous numgen vmap above 32), external IPs, load balancers with source ranges,
    traffic policies and session affinity, on two nodes."""
    v6 = family == "ipv6"

    def ip(prefix4: str, prefix6: str, n: int) -> str:
        """Address ``n`` of a /16 (``prefix4`` is its first two octets) or of an IPv6 prefix."""
        return f"{prefix6}{n:x}" if v6 else f"{prefix4}{n // 250}.{n % 250 + 1}"

    fam = "IPv6" if v6 else "IPv4"
    services, slices = [], []
    used_node_ports: set[int] = set()
    for i in range(rng.randint(1, 12)):
        kind = rng.choice(["ClusterIP", "NodePort", "LoadBalancer"])
        ports = []
        for j, proto in enumerate(rng.sample(["TCP", "UDP", "SCTP"], rng.randint(1, 3))):
            node_port = None
            if kind != "ClusterIP":
                node_port = rng.choice([p for p in range(30000, 30100) if p not in used_node_ports])
                used_node_ports.add(node_port)
            ports.append(ServicePort(80 + j, proto, f"p{j}", 8080 + j, node_port))
        lb, ranges = (), ()
        if kind == "LoadBalancer":
            lb = (LoadBalancerIngress(ip=ip("198.18.", "2001:db8:1b::", i)),)
            if rng.random() < 0.5:
                ranges = (("2001:db8:5::/64",) if v6 else ("192.0.2.0/24",)) + (
                    (("2001:db8:f::/48",) if v6 else ("198.51.100.0/25",)) if rng.random() < 0.5 else ())
        external = (ip("198.19.", "2001:db8:ee::", i),) if rng.random() < 0.3 else ()
        services.append(Service(
            "ns", f"svc{i}", type=kind, cluster_ips=(ip("10.96.", "fd00:10:96::", i + 10),), ports=tuple(ports),
            external_ips=external, load_balancer_ingress=lb, load_balancer_source_ranges=ranges,
            external_traffic_policy=rng.choice(["Cluster", "Local"]) if kind != "ClusterIP" else "Cluster",
            internal_traffic_policy=rng.choice(["Cluster", "Cluster", "Local"]),
            session_affinity=rng.choice(["None", "None", "ClientIP"]), ip_families=(fam,)))
        count = rng.choice([0, 1, 2, 3, 5, 40])
        states = [(True, True, False)] if count > 32 else [(True, True, False), (False, True, True), (False, False, True)]
        endpoints = tuple(
            Endpoint((ip("10.244.", "fd00:10:244::", 300 * i + k + 2),), EndpointConditions(*rng.choice(states)),
                     node_name=rng.choice(["node-a", "node-b"]))
            for k in range(count))
        slices.append(EndpointSlice("ns", f"svc{i}-x", f"svc{i}", fam, endpoints,
                                    tuple(EndpointPort(p.target_port, p.protocol, p.name) for p in ports)))
    nodes = tuple(Node(name, (NodeAddress("InternalIP", ip("192.168.", "2001:db8::", n)),))
                  for n, name in ((1, "node-a"), (2, "node-b")))
    return Cluster(services=tuple(services), endpoint_slices=tuple(slices), nodes=nodes,
                   proxy_config=ProxyConfig(mode="nftables", cluster_cidrs=("10.244.0.0/16", "fd00:10:244::/48")))


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_random_clusters_read_alike(bare_ns, family):
    seen_numgen_vmap = False
    for seed in range(12):
        cluster = random_cluster(random.Random(f"{family}-{seed}"), family)
        script = compile_rules(cluster, "node-a", backend="nftables", family=family).text
        assert_same_reading(bare_ns, script)
        seen_numgen_vmap |= any(int(n) > 32 for n in re.findall(r"numgen random mod (\d+) vmap", script))
    assert seen_numgen_vmap, "no cluster had a Service with more than 32 endpoints"
