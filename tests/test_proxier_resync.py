"""The Proxier's periodic full resync (kube-proxy's FullSyncPeriod), driven by an injected clock."""
from __future__ import annotations

import pytest

from dataplane.model import (
    Cluster,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    Node,
    NodeAddress,
    ProxyConfig,
    Service,
    ServicePort,
)
from dataplane.runtime.proxier import FULL_SYNC_PERIOD, Proxier, RecordingRunner

NODE = Node("n1", (NodeAddress("InternalIP", "192.0.2.1"),))
MODES = ("iptables", "nftables")


def _cluster(*endpoints: str) -> Cluster:
    svc = Service("ns", "web", type="ClusterIP", cluster_ips=("10.96.0.10",), ports=(ServicePort(80, "TCP", "p"),))
    eps = EndpointSlice("ns", "web-1", "web", "IPv4",
                        tuple(Endpoint((ip,), EndpointConditions(True, True, False), node_name="n1")
                              for ip in endpoints),
                        (EndpointPort(8080, "TCP", "p"),))
    return Cluster(services=(svc,), endpoint_slices=(eps,), nodes=(NODE,),
                   proxy_config=ProxyConfig(cluster_cidrs=("10.244.0.0/16",)))


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_default_period_is_kube_proxys_hour():
    assert FULL_SYNC_PERIOD == 3600.0
    assert Proxier("n1").sync_period == 3600.0


@pytest.mark.parametrize("mode", MODES)
def test_sync_is_full_again_once_the_period_has_passed(mode):
    clock, runner = Clock(), RecordingRunner()
    p = Proxier("n1", mode=mode, cluster=_cluster("10.244.1.10"), runner=runner, sync_period=600, clock=clock)
    assert p.sync().kind == "full"
    clock.now += 599.9
    assert p.sync().kind == "none"  # nothing changed and the period has not passed
    p.set_endpoint_slice(_cluster("10.244.1.11").endpoint_slices[0])
    assert p.sync().kind == "partial"
    clock.now += 0.1  # 600 s after the first full sync
    periodic = p.sync()
    assert periodic.kind == "full" and periodic.text, "the period passed: the whole ruleset is written again"
    assert periodic.text == p.sync(full=True).text  # the same as a forced full sync
    assert runner.applied[-1][3] is True  # sent to the kernel as a full update
    clock.now += 300
    assert p.sync().kind == "none"  # the period restarts at every full sync
    clock.now += 300
    assert p.sync().kind == "full"


def test_no_period_means_no_periodic_full_sync():
    clock = Clock()
    p = Proxier("n1", cluster=_cluster("10.244.1.10"), sync_period=None, clock=clock)
    p.sync()
    clock.now += 10 * FULL_SYNC_PERIOD
    assert p.sync().kind == "none"


def test_a_failed_full_sync_does_not_restart_the_period():
    clock, runner = Clock(), RecordingRunner()
    p = Proxier("n1", cluster=_cluster("10.244.1.10"), runner=runner, sync_period=60, clock=clock)
    p.sync()
    clock.now += 60
    runner.fail_next = True
    with pytest.raises(Exception):
        p.sync()
    assert p.sync().kind == "full"  # retried in full (the kernel kept the old rules)
    clock.now += 59
    assert p.sync().kind == "none"


@pytest.mark.parametrize("period", [0, -5])
def test_a_period_must_be_positive(period):
    with pytest.raises(ValueError, match="sync_period"):
        Proxier("n1", sync_period=period)
