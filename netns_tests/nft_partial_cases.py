"""Partial nftables updates of many shapes, produced by the real Proxier (for the netlink batch
tests in tests/ and netns_tests/): each step changes the cluster and yields the update text."""
from __future__ import annotations

from typing import Callable, Iterator

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
from dataplane.runtime.proxier import Proxier, RecordingRunner

NODE4 = Node("n1", (NodeAddress("InternalIP", "192.0.2.1"),))
NODE6 = Node("n1", (NodeAddress("InternalIP", "2001:db8::1"),))


def _slice(name: str, family: str, ips: tuple[str, ...], proto: str = "TCP", local: bool = True,
           not_ready: tuple[str, ...] = ()) -> EndpointSlice:
    eps = tuple(Endpoint((ip,), EndpointConditions(ip not in not_ready, True, False), node_name="n1" if local else "n2")
                for ip in ips)
    return EndpointSlice("ns", f"{name}-1", name, family, eps, (EndpointPort(8080, proto, "p"),))


def _addr(family: str, k: int, *, svc: bool = False) -> str:
    if family == "IPv4":
        return f"10.96.0.{k}" if svc else f"10.244.1.{k}"
    return f"fd00:96::{k:x}" if svc else f"fd00:10:244:1::{k:x}"


def _svc(name: str, family: str, k: int, **kw) -> Service:
    ports = kw.pop("ports", (ServicePort(80, "TCP", "p"),))
    return Service("ns", name, cluster_ips=(_addr(family, k, svc=True),), ports=ports,
                   ip_families=(family,), **kw)


def base_cluster(family: str) -> Cluster:
    """Ten plain ClusterIP Services with three endpoints each."""
    services = tuple(_svc(f"s{i}", family, i + 1) for i in range(10))
    slices = tuple(_slice(f"s{i}", family, tuple(_addr(family, 10 * i + j + 1) for j in range(3)))
                   for i in range(10))
    config = ProxyConfig(mode="nftables", cluster_cidrs=("10.244.0.0/16" if family == "IPv4" else "fd00:10:244::/48",))
    return Cluster(services=services, endpoint_slices=slices, nodes=(NODE4 if family == "IPv4" else NODE6,),
                   proxy_config=config)


def steps(family: str) -> list[tuple[str, Callable[[Proxier], None]]]:
    """(name, change) pairs; each change makes one partial sync. The names say what the
    update holds; ``many-endpoints`` holds an anonymous vmap (not translated: ``nft -f``)."""
    v4 = family == "IPv4"
    ext = "198.51.100.7" if v4 else "2001:db8:7::7"
    lb = "203.0.113.9" if v4 else "2001:db8:9::9"
    src = "192.0.2.0/24" if v4 else "2001:db8:100::/56"

    def ep(k: int) -> str:
        return _addr(family, k)

    return [
        ("endpoint-moved", lambda p: p.set_endpoint_slice(_slice("s1", family, (ep(11), ep(12), ep(99))))),
        ("endpoint-added", lambda p: p.set_endpoint_slice(_slice("s2", family, (ep(21), ep(22), ep(23), ep(98))))),
        ("nodeport-external-ip", lambda p: (
            p.set_service(_svc("np", family, 50, type="NodePort", external_ips=(ext,),
                               ports=(ServicePort(80, "TCP", "p", node_port=30080),))),
            p.set_endpoint_slice(_slice("np", family, (ep(51), ep(52)))))),
        ("affinity", lambda p: (
            p.set_service(_svc("aff", family, 60, session_affinity="ClientIP", affinity_timeout_seconds=600)),
            p.set_endpoint_slice(_slice("aff", family, (ep(61), ep(62)))))),
        # the affinity sets of the two endpoints that stay are not declared again
        ("affinity-endpoint-added", lambda p: p.set_endpoint_slice(_slice("aff", family, (ep(61), ep(62), ep(63))))),
        # a new timeout: the sets are deleted and made again, so every chain naming them is rewritten
        ("affinity-timeout-changed", lambda p: p.set_service(
            _svc("aff", family, 60, session_affinity="ClientIP", affinity_timeout_seconds=900))),
        ("local-policy-lb-firewall", lambda p: (
            p.set_service(_svc("lb", family, 70, type="LoadBalancer", external_traffic_policy="Local",
                               load_balancer_ingress=(LoadBalancerIngress(ip=lb),),
                               load_balancer_source_ranges=(src,),
                               ports=(ServicePort(443, "TCP", "p", node_port=30443),))),
            p.set_endpoint_slice(_slice("lb", family, (ep(71), ep(72)))))),
        ("udp-service", lambda p: (
            p.set_service(_svc("dns", family, 80, ports=(ServicePort(53, "UDP", "p"),))),
            p.set_endpoint_slice(_slice("dns", family, (ep(81),), proto="UDP")))),
        ("endpoint-not-ready", lambda p: p.set_endpoint_slice(
            _slice("s6", family, (ep(61), ep(62), ep(63)), not_ready=(ep(62),)))),
        ("services-moved", lambda p: (p.set_endpoint_slice(_slice("s7", family, (ep(71), ep(72), ep(97)))),
                                      p.set_endpoint_slice(_slice("s8", family, (ep(96), ep(82), ep(83)))))),
        ("no-endpoints", lambda p: p.set_endpoint_slice(_slice("s3", family, ()))),
        ("affinity-endpoint-removed", lambda p: p.set_endpoint_slice(_slice("aff", family, (ep(62),)))),
        ("service-deleted", lambda p: (p.delete_service("ns", "s4"), p.delete_endpoint_slice("ns", "s4-1"))),
        ("nodeport-deleted", lambda p: (p.delete_service("ns", "np"), p.delete_endpoint_slice("ns", "np-1"))),
        ("affinity-deleted", lambda p: (p.delete_service("ns", "aff"), p.delete_endpoint_slice("ns", "aff-1"))),
        ("many-endpoints", lambda p: p.set_endpoint_slice(
            _slice("s5", family, tuple(ep(100 + j) for j in range(40))))),
    ]


def updates(family: str) -> Iterator[tuple[str, str]]:
    """("full", script) first, then (step name, partial update) for every step."""
    runner = RecordingRunner()
    proxier = Proxier("n1", mode="nftables", family="ipv4" if family == "IPv4" else "ipv6",
                      cluster=base_cluster(family), runner=runner)
    first = proxier.sync()
    assert first.kind == "full"
    yield "full", first.text
    for name, change in steps(family):
        change(proxier)
        r = proxier.sync()
        assert r.kind == "partial", (name, r.kind)
        yield name, r.text
