"""/healthz, /livez and /metrics of the node agent (dataplane.agent.health), with a fake clock.

The health sequences follow kube-proxy's own (pkg/proxy/healthcheck healthcheck_test.go
``testProxyHealthUpdater``); metric values are read back with prometheus_client's text parser.
"""
from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from typing import Optional

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dataplane.agent.health import DURATION_BUCKETS, SyncStatus, go_time, serve
from dataplane.errors import UsageError

START = 1_714_557_600.0  # 2024-05-01 10:00:00 UTC


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds


def samples(status: SyncStatus) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the status's /metrics text, by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(status.metrics_text().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(status: SyncStatus, name: str, **labels: str) -> Optional[float]:
    return samples(status).get((name, tuple(sorted(labels.items()))))


def code(status: SyncStatus) -> int:
    return 200 if status.health().healthy else 503


# ---------------------------------------------------------------------------- /healthz rules
def test_kube_proxy_health_sequence_per_family() -> None:
    clock = FakeClock()
    status = SyncStatus(5, clock=clock)  # health timeout: 2 x 5 s
    assert status.health_timeout == 10
    assert code(status) == 200, "healthy while starting up"
    for family in ("ipv4", "ipv6"):
        status.record_sync(family=family, kind="full", duration=0.01, ok=True)
    assert code(status) == 200
    clock.step(25)
    assert code(status) == 200, "no change waiting: healthy however old the last sync"

    status.record_pending(services=1, endpoints=0)
    clock.step(25)
    assert code(status) == 503, "a change waited longer than the timeout"
    status.record_sync(family="ipv4", kind="partial", duration=0.01, ok=True)
    assert code(status) == 503, "ipv6 is still late"
    status.record_sync(family="ipv6", kind="partial", duration=0.01, ok=True)
    assert code(status) == 200

    status.record_pending(services=0, endpoints=3)
    clock.step(9.5)
    status.record_pending(services=0, endpoints=4)  # a later change does not restart the timer
    clock.step(0.4)
    assert code(status) == 200, "9.9 s: not late yet"
    clock.step(0.1)
    assert code(status) == 503, "10 s: late (kube-proxy: not < healthTimeout)"


def test_no_pending_count_queues_nothing() -> None:
    clock = FakeClock()
    status = SyncStatus(1, clock=clock)
    status.record_sync(family="ipv4", kind="full", duration=0.01, ok=True)
    status.record_pending(services=0, endpoints=0)
    clock.step(100)
    assert code(status) == 200


def test_before_the_first_sync_nothing_counts() -> None:
    """kube-proxy queues nothing before its informers synced: a long initial list is no failure."""
    clock = FakeClock()
    status = SyncStatus(30, clock=clock)
    status.record_pending(services=4, endpoints=4)
    clock.step(3600)
    status.record_pending(services=9000, endpoints=9000)
    assert code(status) == 200, "starting up"
    # the first sync fails: from then on the family waits
    status.record_sync(family="ipv4", kind="full", duration=1.0, ok=False)
    clock.step(59)
    assert code(status) == 200
    clock.step(1)
    health = status.health()
    assert not health.healthy
    assert health.last_updated == START, "unhealthy before any success: lastUpdated is the agent's start"
    status.record_sync(family="ipv4", kind="full", duration=1.0, ok=True)
    assert code(status) == 200
    # changes waiting when a family has synced count from then on
    status.record_pending(services=1, endpoints=0)
    clock.step(60)
    assert code(status) == 503


def test_a_failing_sync_turns_unhealthy_after_the_timeout() -> None:
    clock = FakeClock()
    status = SyncStatus(10, clock=clock)
    status.record_sync(family="ipv4", kind="full", duration=0.2, ok=True)
    last_ok = clock.now
    clock.step(10)
    status.record_sync(family="ipv4", kind="full", duration=0.2, ok=False)
    clock.step(15)
    status.record_sync(family="ipv4", kind="full", duration=0.2, ok=False)  # retries do not restart the timer
    clock.step(4.9)
    assert code(status) == 200
    clock.step(0.1)
    health = status.health()
    assert (health.healthy, health.last_updated, health.current_time) == (False, last_ok, clock.now)
    status.record_sync(family="ipv4", kind="full", duration=0.2, ok=True)
    assert code(status) == 200


def test_go_time() -> None:
    assert go_time(0) == "1970-01-01 00:00:00 +0000 UTC"
    assert go_time(START) == "2024-05-01 10:00:00 +0000 UTC"
    assert go_time(START + 0.25) == "2024-05-01 10:00:00.25 +0000 UTC"
    assert go_time(START + 0.000125) == "2024-05-01 10:00:00.000125 +0000 UTC"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SyncStatus(0)
    status = SyncStatus(1)
    with pytest.raises(ValueError, match="sync kind"):
        status.record_sync(family="ipv4", kind="sometimes", duration=0.1, ok=True)


# ---------------------------------------------------------------------------- /metrics values
def test_metric_values() -> None:
    clock = FakeClock()
    status = SyncStatus(30, clock=clock)
    status.record_sync(family="ipv4", kind="full", duration=0.003, ok=True,
                       counts={"rules": 40, "chains": 12})
    clock.step(2)
    status.record_sync(family="ipv4", kind="partial", duration=0.0015, ok=True, counts={"rules": 3, "chains": 1})
    clock.step(2)
    status.record_sync(family="ipv4", kind="none", duration=0.0005, ok=True)
    status.record_sync(family="ipv6", kind="full", duration=2.5, ok=False, counts={"rules": 99})
    ipv4, ipv6 = {"ip_family": "ipv4"}, {"ip_family": "ipv6"}

    assert value(status, "kubeproxy_sync_proxy_rules_duration_seconds_count", **ipv4) == 3
    assert value(status, "kubeproxy_sync_proxy_rules_duration_seconds_sum", **ipv4) == pytest.approx(0.005)
    assert value(status, "kubeproxy_sync_full_proxy_rules_duration_seconds_count", **ipv4) == 1
    assert value(status, "kubeproxy_sync_partial_proxy_rules_duration_seconds_count", **ipv4) == 2
    # kube-proxy's buckets: 1 ms doubling 15 times
    assert value(status, "kubeproxy_sync_proxy_rules_duration_seconds_bucket", le="0.001", **ipv4) == 1
    assert value(status, "kubeproxy_sync_proxy_rules_duration_seconds_bucket", le="0.002", **ipv4) == 2
    assert value(status, "kubeproxy_sync_proxy_rules_duration_seconds_bucket", le="0.004", **ipv4) == 3
    assert len(DURATION_BUCKETS) == 15 and DURATION_BUCKETS[-1] == pytest.approx(16.384)
    # a failed sync is timed and counted, but is no successful sync
    assert value(status, "kubeproxy_sync_full_proxy_rules_duration_seconds_count", **ipv6) == 1
    assert value(status, "dataplane_sync_proxy_rules_failures_total", kind="full", **ipv6) == 1
    assert value(status, "dataplane_sync_proxy_rules_failures_total", kind="full", **ipv4) is None
    assert value(status, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", **ipv4) == START + 4
    assert value(status, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", **ipv6) is None
    # counts: what the kernel holds after the last full sync, and what the last sync wrote
    assert value(status, "dataplane_sync_proxy_rules_objects", object="rules", **ipv4) == 40
    assert value(status, "dataplane_sync_proxy_rules_objects", object="chains", **ipv4) == 12
    assert value(status, "dataplane_sync_proxy_rules_objects_last", object="rules", **ipv4) == 3
    assert value(status, "dataplane_sync_proxy_rules_objects_last", object="rules", **ipv6) is None


def test_changes_pending_and_total() -> None:
    clock = FakeClock()
    status = SyncStatus(30, clock=clock)
    status.record_sync(family="ipv4", kind="full", duration=0.01, ok=True)
    for kind, event in [("Service", "ADDED"), ("Service", "MODIFIED"), ("Service", "BOOKMARK"),
                        ("EndpointSlice", "ADDED"), ("EndpointSlice", "DELETED"), ("EndpointSlice", "ERROR"),
                        ("Node", "MODIFIED")]:
        status.record_event(kind, event)
    clock.step(3)
    status.record_pending(services=2, endpoints=1)
    assert value(status, "kubeproxy_sync_proxy_rules_service_changes_total") == 2
    assert value(status, "kubeproxy_sync_proxy_rules_endpoint_changes_total") == 2
    assert value(status, "kubeproxy_sync_proxy_rules_service_changes_pending") == 2
    assert value(status, "kubeproxy_sync_proxy_rules_endpoint_changes_pending") == 1
    assert value(status, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", ip_family="ipv4") == START + 3
    assert value(status, "dataplane_watch_events_total", kind="EndpointSlice", type="ERROR") == 1
    assert value(status, "dataplane_watch_events_total", kind="Node", type="MODIFIED") == 1
    status.record_pending(services=0, endpoints=0)
    assert value(status, "kubeproxy_sync_proxy_rules_service_changes_pending") == 0
    status.record_error("bad-object")
    status.record_error("bad-object")
    status.record_error("stream-restart")
    assert value(status, "dataplane_errors_total", reason="bad-object") == 2
    assert value(status, "dataplane_errors_total", reason="stream-restart") == 1


def test_two_agents_in_one_process_do_not_collide() -> None:
    a, b = SyncStatus(1), SyncStatus(1)
    a.record_sync(family="ipv4", kind="full", duration=0.1, ok=True)
    a.record_event("Service", "ADDED")
    assert value(a, "kubeproxy_sync_proxy_rules_duration_seconds_count", ip_family="ipv4") == 1
    assert value(b, "kubeproxy_sync_proxy_rules_duration_seconds_count", ip_family="ipv4") is None
    assert value(b, "kubeproxy_sync_proxy_rules_service_changes_total") == 0


def test_records_from_many_threads_add_up() -> None:
    status = SyncStatus(1)

    def work() -> None:
        for _ in range(200):
            status.record_sync(family="ipv4", kind="partial", duration=0.001, ok=True)
            status.record_event("EndpointSlice", "MODIFIED")
            status.health()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert value(status, "kubeproxy_sync_proxy_rules_duration_seconds_count", ip_family="ipv4") == 800
    assert value(status, "kubeproxy_sync_proxy_rules_endpoint_changes_total") == 800


# ---------------------------------------------------------------------------- the HTTP server
def get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as r:
            return r.status, dict(r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


@pytest.fixture
def served():
    clock = FakeClock()
    status = SyncStatus(5, clock=clock)
    server = serve(status, "127.0.0.1:0")
    try:
        yield status, clock, server
    finally:
        server.close()


def test_http_healthz_livez_metrics_and_404(served) -> None:
    status, clock, server = served
    assert server.port > 0 and server.address == f"127.0.0.1:{server.port}"
    code_, headers, body = get(server.port, "/healthz")
    assert code_ == 200
    assert headers["Content-Type"] == "application/json" and headers["X-Content-Type-Options"] == "nosniff"
    now = go_time(clock.now)
    assert json.loads(body) == {"lastUpdated": now, "currentTime": now}

    status.record_sync(family="ipv4", kind="full", duration=0.01, ok=True)
    synced = clock.now
    status.record_pending(services=1, endpoints=0)
    clock.step(10)
    code_, _, body = get(server.port, "/healthz?verbose=1")
    assert code_ == 503
    assert json.loads(body) == {"lastUpdated": go_time(synced), "currentTime": go_time(clock.now)}
    assert get(server.port, "/livez")[0] == 503

    code_, headers, body = get(server.port, "/metrics")
    assert code_ == 200 and headers["Content-Type"].startswith("text/plain; version=")
    probes = {(s.name, s.labels.get("code")): s.value
              for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert probes[("kubeproxy_proxy_healthz_total", "200")] == 1
    assert probes[("kubeproxy_proxy_healthz_total", "503")] == 1
    assert probes[("kubeproxy_proxy_livez_total", "503")] == 1

    for path in ("/", "/healthzz", "/metrics/x"):
        assert get(server.port, path)[0] == 404


def test_close_releases_the_port() -> None:
    server = serve(SyncStatus(1), "127.0.0.1:0")
    port = server.port
    server.close()
    again = serve(SyncStatus(1), f"127.0.0.1:{port}")
    try:
        assert again.port == port and get(port, "/healthz")[0] == 200
    finally:
        again.close()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this host has no ::1")
def test_ipv6_address() -> None:
    server = serve(SyncStatus(1), "[::1]:0")
    try:
        assert server.address == f"[::1]:{server.port}"
        assert get(server.port, "/healthz", host="[::1]")[0] == 200
    finally:
        server.close()


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:65536",
                                     "::1:80", "[::1:80", "127.0.0.1:-1", "192.0.2.77:0"])
def test_bad_address_is_one_line(address: str) -> None:
    with pytest.raises(UsageError) as e:
        serve(SyncStatus(1), address)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"healthz bind address {address!r}: ")


def test_address_in_use_is_one_line(served) -> None:
    _, _, server = served
    with pytest.raises(UsageError, match="in use") as e:
        serve(SyncStatus(1), f"127.0.0.1:{server.port}")
    assert "\n" not in str(e.value)
