"""Fixtures for the namespace tests (run them with ``scripts/netns-pytest``).

Tests marked ``netns`` need root (or CAP_NET_ADMIN in a user namespace) and are
skipped otherwise -- and only then: a missing tool or a kernel feature must fail
the test, not hide it. CI runs as root, so they run there.
"""
from __future__ import annotations

import os
import uuid
from typing import Callable, Iterator

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from dataplane.lab import Lab, Topology
from dataplane.runtime.netns import NETNS_DIR, in_netns


def _privileged() -> bool:
    return os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _privileged():
        return
    skip = pytest.mark.skip(reason="needs root/CAP_NET_ADMIN for network namespaces")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> str:
    isolated = os.environ.get("DATAPLANE_NETNS_ISOLATED") == "1"
    return f"netns: privileged={_privileged()} isolated-by-scripts/netns-pytest={isolated}"


def unique_prefix() -> str:
    return "t" + uuid.uuid4().hex[:7]


@pytest.fixture
def ns_prefix() -> str:
    """A fresh namespace-name prefix (``t`` + 7 hex digits)."""
    return unique_prefix()


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Lab]]:
    """Build labs from topologies; every lab is torn down after the test."""
    labs: list[Lab] = []

    def make(topology: Topology, **kw) -> Lab:
        lab = Lab(topology, prefix=kw.pop("prefix", None) or unique_prefix(), **kw)
        lab.start()
        labs.append(lab)
        return lab

    yield make
    for lab in reversed(labs):
        lab.close()


@pytest.fixture
def lab(make_lab) -> Lab:
    """One node (node1 192.0.2.1) with one pod (pod1-1 10.244.1.10) and client1 (192.0.2.100)."""
    return make_lab(Topology.simple(nodes=1, pods_per_node=1, clients=1))


@pytest.fixture
def lab6(make_lab) -> Lab:
    """Like ``lab``, dual-stack (2001:db8::1, fd00:10:244:1::10, 2001:db8::100)."""
    return make_lab(Topology.simple(nodes=1, pods_per_node=1, clients=1, ipv6=True))


@pytest.fixture
def bare_ns() -> Iterator[str]:
    """A bare namespace with only ``lo`` up: for rule tests that send no packets."""
    name = unique_prefix() + "-bare"
    pr_netns.create(name)
    try:
        with in_netns(name):
            with IPRoute() as ipr:
                ipr.link("set", index=1, state="up")
        yield name
    finally:
        if os.path.exists(os.path.join(NETNS_DIR, name)):
            pr_netns.remove(name)
