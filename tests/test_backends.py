"""The Backend interface: one registry, bad names rejected where they are given, no name checks elsewhere."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from dataplane.runtime.apply import apply_cluster
from dataplane.backends import BACKENDS, DEFAULT_BACKEND, Backend, backend_for, backend_names, get_backend
from dataplane.compiler import compile_rules
from dataplane.errors import UsageError
from dataplane.model import Cluster, Node, NodeAddress, ProxyConfig
from dataplane.plan import LARGE_CLUSTER_ENDPOINTS
from dataplane.runtime.proxier import Proxier
from dataplane.trace import TraceError, parse_rules

PACKAGE = Path(__file__).resolve().parent.parent / "dataplane"
CLUSTER = Cluster(nodes=(Node("n1", (NodeAddress("InternalIP", "192.0.2.1"),)),))


def test_every_backend_is_registered_once_under_its_name():
    assert backend_names() == ("iptables", "nftables")
    for name in backend_names():
        backend = get_backend(name)
        assert isinstance(backend, Backend) and backend.name == name and BACKENDS[name] is backend
    assert DEFAULT_BACKEND in BACKENDS


def test_the_configuration_chooses_when_no_backend_is_given():
    assert backend_for(None, ProxyConfig(mode="nftables")).name == "nftables"
    assert backend_for(None, ProxyConfig(mode="")).name == DEFAULT_BACKEND
    assert backend_for("iptables", ProxyConfig(mode="nftables")).name == "iptables"
    with pytest.raises(UsageError, match="iptables, nftables"):
        backend_for("nft", ProxyConfig(mode="nftables"))


@pytest.mark.parametrize("call", [
    lambda: get_backend("nft"),
    lambda: Proxier("n1", backend="nft"),  # type: ignore[arg-type]
    lambda: compile_rules(CLUSTER, "n1", backend="nft"),  # type: ignore[arg-type]
    # rejected before the namespace is even looked at
    lambda: apply_cluster("no-such-namespace", CLUSTER, "n1", backend="nft"),  # type: ignore[arg-type]
], ids=["get_backend", "Proxier", "compile_rules", "apply_cluster"])
def test_an_unknown_backend_is_rejected_where_it_is_given(call):
    with pytest.raises(UsageError, match=r"unknown backend 'nft': use one of iptables, nftables"):
        call()


def test_the_tracer_rejects_an_unknown_backend_as_a_trace_error():
    with pytest.raises(TraceError, match="use one of iptables, nftables"):
        parse_rules("", "nft")


def test_large_cluster_rule():
    ipt, nft = get_backend("iptables"), get_backend("nftables")
    assert not ipt.large_cluster(LARGE_CLUSTER_ENDPOINTS) and ipt.large_cluster(LARGE_CLUSTER_ENDPOINTS + 1)
    assert not ipt.settled(10) and ipt.settled(LARGE_CLUSTER_ENDPOINTS + 1)
    assert not nft.large_cluster(10 ** 6) and nft.settled(0) and nft.render_context(10 ** 6) == ()
    assert ipt.render_context(10 ** 6) == (True,)


def test_each_backend_renders_what_compile_rules_gives():
    for name in backend_names():
        result = compile_rules(CLUSTER, "n1", backend=name)  # type: ignore[arg-type]
        assert get_backend(name).render(result.plan) == result.text


_NAME_CHECK = re.compile(r"""[=!]= *["'](?:iptables|nftables)["']|["'](?:iptables|nftables)["'] *[=!]=""")


def test_no_module_outside_the_backends_and_the_plan_compares_a_backends_name():
    """Everything that differs per backend goes through the Backend interface."""
    offenders = [f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
                 for path in sorted(PACKAGE.rglob("*.py"))
                 if path.parent.name != "backends" and path.name != "plan.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1) if _NAME_CHECK.search(line)]
    assert offenders == []
