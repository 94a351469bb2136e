"""``/healthz``, ``/livez`` and ``/metrics`` of the node agent (``dataplane sync --healthz-bind-address``).

:class:`SyncStatus` is what the sync loop tells about itself (each sync, the changes
waiting, each watch event, each error); :func:`serve` answers HTTP from it on a
daemon thread.

``/healthz`` keeps kube-proxy's contract (``pkg/proxy/healthcheck/proxy_health.go``):

* the health timeout is 2 x the sync period (``cmd/kube-proxy``: ``2*SyncPeriod``);
* the agent is healthy while it starts up and while it is fully synced: only a change
  that has waited longer than the timeout without a successful sync of its IP family
  makes it unhealthy (503). kube-proxy counts time from the *oldest* change queued
  since that family's last successful sync, per family; so do we;
* before a family's first sync nothing counts against it: kube-proxy queues no update
  until its informers have synced (``isInitialized``), and its first sync runs right then,
  so however long the initial lists take it stays healthy (a liveness probe does not kill
  an agent still reading a large cluster); changes waiting when a family first syncs
  count from that sync;
* one difference, on purpose: a failed sync also leaves its family waiting (kube-proxy
  only counts queued changes), so an agent whose syncs keep failing (the first one
  included) turns 503 after the timeout even when nothing changes in the cluster;
* the body is JSON ``{"lastUpdated": ..., "currentTime": ...}`` with times written as Go's
  ``time.Time`` prints them (UTC); while healthy ``lastUpdated`` is the current time (as
  kube-proxy does, for compatibility), while unhealthy it is the late family's last
  successful sync (or the agent's start). kube-proxy's ``nodeEligible`` field is not
  written: the agent does not follow the node's deletion or autoscaler taint.

``/livez`` answers the same as ``/healthz`` (kube-proxy's differ only by node eligibility).

``/metrics`` is the Prometheus text format of a registry private to each
:class:`SyncStatus` (two agents in one process do not collide), with kube-proxy's
series (``pkg/proxy/metrics/metrics.go``) and a few of ours, prefixed ``dataplane_``.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Mapping, Union
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ..errors import UsageError

__all__ = ["DURATION_BUCKETS", "SYNC_KINDS", "Counts", "HealthServer", "SyncStatus", "go_time", "serve"]

#: The kinds of sync :meth:`SyncStatus.record_sync` takes.
SYNC_KINDS = ("full", "partial", "none")

#: The watch event types that change an object (BOOKMARK and ERROR do not).
_CHANGE_EVENTS = frozenset({"ADDED", "MODIFIED", "DELETED"})

#: kube-proxy's buckets for its sync durations: ExponentialBuckets(0.001, 2, 15).
DURATION_BUCKETS = tuple(0.001 * 2 ** i for i in range(15))

#: What :meth:`SyncStatus.record_sync` takes as a sync's counts: the counts, or a function giving
#: them, called only when ``/metrics`` is read (counting a large update's text costs time the sync
#: need not spend; see :meth:`SyncStatus.metrics_text`).
Counts = Union[Mapping[str, int], Callable[[], Mapping[str, int]]]


def go_time(t: float) -> str:
    """``t`` (seconds since the epoch) as Go's ``time.Time.String()`` writes a UTC time,
    e.g. ``2024-05-01 10:00:00.25 +0000 UTC`` (trailing zeros of the fraction dropped)."""
    moment = datetime.fromtimestamp(t, timezone.utc)
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return moment.strftime("%Y-%m-%d %H:%M:%S") + (f".{fraction}" if fraction else "") + " +0000 UTC"


@dataclass(frozen=True)
class Health:
    """One answer of ``/healthz``: whether healthy, and the two times its body shows."""

    healthy: bool
    last_updated: float
    current_time: float

    def body(self) -> bytes:
        """kube-proxy's JSON body."""
        return json.dumps({"lastUpdated": go_time(self.last_updated),
                           "currentTime": go_time(self.current_time)}).encode()


class _Metrics:
    """The agent's Prometheus series, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        family = ["ip_family"]
        self.duration = Histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds",
            family, buckets=DURATION_BUCKETS, registry=registry)
        self.full_duration = Histogram(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            family, buckets=DURATION_BUCKETS, registry=registry)
        self.partial_duration = Histogram(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs (a sync with nothing to change included)",
            family, buckets=DURATION_BUCKETS, registry=registry)
        self.last_timestamp = Gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced", family, registry=registry)
        self.last_queued = Gauge(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued", family, registry=registry)
        self.endpoint_pending = Gauge(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending", "Pending proxy rules Endpoint changes",
            registry=registry)
        self.endpoint_total = Counter(
            "kubeproxy_sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules Endpoint changes",
            registry=registry)
        self.service_pending = Gauge(
            "kubeproxy_sync_proxy_rules_service_changes_pending", "Pending proxy rules Service changes",
            registry=registry)
        self.service_total = Counter(
            "kubeproxy_sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes",
            registry=registry)
        self.healthz = Counter(
            "kubeproxy_proxy_healthz_total", "Cumulative proxy healthz HTTP status", ["code"], registry=registry)
        self.livez = Counter(
            "kubeproxy_proxy_livez_total", "Cumulative proxy livez HTTP status", ["code"], registry=registry)
        self.failures = Counter(
            "dataplane_sync_proxy_rules_failures_total",
            "Syncs whose rules the kernel refused (kube-proxy: iptables_restore_failures_total, "
            "nftables_sync_failures_total)", ["ip_family", "kind"], registry=registry)
        self.objects = Gauge(
            "dataplane_sync_proxy_rules_objects",
            "Rules, chains, sets and elements of ours after the last successful full sync",
            ["ip_family", "object"], registry=registry)
        self.objects_last = Gauge(
            "dataplane_sync_proxy_rules_objects_last",
            "Rules, chains, sets and elements the last successful sync wrote (kube-proxy: iptables_last)",
            ["ip_family", "object"], registry=registry)
        self.errors = Counter(
            "dataplane_errors_total", "Skipped bad objects, failed applies and restarted watch streams",
            ["reason"], registry=registry)
        self.events = Counter(
            "dataplane_watch_events_total", "Watch events read, by kind and type", ["kind", "type"],
            registry=registry)


class SyncStatus:
    """Thread-safe record of the agent's syncs, read by /healthz and /metrics."""

    def __init__(self, sync_period: float, *, clock: Callable[[], float] = time.time) -> None:
        """``sync_period``: the agent's ``--sync-period`` in seconds (> 0); the health timeout
        is twice that. ``clock`` gives the time in seconds since the epoch (tests pass a fake one)."""
        if not sync_period > 0:
            raise ValueError(f"sync period must be positive, not {sync_period!r}")
        self.health_timeout = 2 * float(sync_period)
        self.registry = CollectorRegistry()
        self._metrics = _Metrics(self.registry)
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._last_updated: dict[str, float] = {}  # family -> last successful sync
        self._pending: dict[str, float] = {}  # family -> oldest change (or failure) not synced since
        # family -> counts not yet in the series: of the last successful sync, of the last full one
        self._counts_last: dict[str, Counts] = {}
        self._counts_full: dict[str, Counts] = {}

    # ------------------------------------------------------------------ what the loop tells
    def record_sync(self, *, family: str, kind: str, duration: float, ok: bool,
                    counts: Counts = {}) -> None:
        """kind: "full" | "partial" | "none"; counts: e.g. {"rules": n, "chains": m} (may be empty),
        or a function returning them (called at most once, when ``/metrics`` is next read).

        Every sync's ``duration`` (seconds) goes into the duration histogram and that of its
        kind ("none", a sync that found nothing to change, counts as partial as in kube-proxy);
        a successful one makes ``family`` current (its waiting changes are synced) and sets
        the counts series from ``counts`` (what the sync wrote; after a full sync also what
        the kernel holds); a failed one is counted and leaves ``family`` waiting.
        """
        if kind not in SYNC_KINDS:
            raise ValueError(f"sync kind must be one of {', '.join(SYNC_KINDS)}, not {kind!r}")
        m = self._metrics
        with self._lock:
            now = self._clock()
            self._last_updated.setdefault(family, self._started)  # kube-proxy: Updated() at loop start
            m.duration.labels(family).observe(duration)
            (m.full_duration if kind == "full" else m.partial_duration).labels(family).observe(duration)
            if ok:
                self._pending.pop(family, None)
                self._last_updated[family] = now
                m.last_timestamp.labels(family).set(now)
                if callable(counts) or counts:
                    self._counts_last[family] = counts
                    if kind == "full":
                        self._counts_full[family] = counts
            else:
                m.failures.labels(family, kind).inc()
                self._pending.setdefault(family, now)

    def record_pending(self, *, services: int, endpoints: int) -> None:  # changes waiting for the next sync
        """Set the pending-changes gauges; any change waiting counts as queued for every IP
        family whose first sync has run (if not already waiting), until its next successful sync."""
        m = self._metrics
        with self._lock:
            m.service_pending.set(services)
            m.endpoint_pending.set(endpoints)
            if services <= 0 and endpoints <= 0:
                return
            now = self._clock()
            for family in self._last_updated:
                self._pending.setdefault(family, now)
                m.last_queued.labels(family).set(now)

    def record_event(self, kind: str, event_type: str) -> None:  # kind "Service"…, type "ADDED"…
        """Count one watch event; ADDED, MODIFIED and DELETED events of Services and
        EndpointSlices are also kube-proxy's service / endpoint changes."""
        m = self._metrics
        m.events.labels(kind, event_type).inc()
        if event_type in _CHANGE_EVENTS:
            if kind == "Service":
                m.service_total.inc()
            elif kind == "EndpointSlice":
                m.endpoint_total.inc()

    def record_error(self, reason: str) -> None:  # a skipped bad object, a failed apply, a stream restart
        """Count one error under ``reason`` (a short category, not a message: it is a label)."""
        self._metrics.errors.labels(reason).inc()

    # ------------------------------------------------------------------ what the server reads
    def health(self) -> Health:
        """kube-proxy's health verdict now (see the module's docstring)."""
        with self._lock:
            now = self._clock()
            for family in sorted(self._pending):
                if now - self._pending[family] >= self.health_timeout:
                    return Health(False, self._last_updated[family], now)
            return Health(True, now, now)  # healthy: lastUpdated is the current time, as kube-proxy writes it

    def count_probe(self, path: str, code: int) -> None:
        """Count one answer of ``/healthz`` or ``/livez`` (kube-proxy's proxy_healthz_total)."""
        counter = self._metrics.healthz if path == "/healthz" else self._metrics.livez
        counter.labels(str(code)).inc()

    def metrics_text(self) -> bytes:
        """Every series, in the Prometheus text format (the counts of the last syncs computed
        first, see :meth:`resolve_counts`)."""
        self.resolve_counts()
        return generate_latest(self.registry)

    def resolve_counts(self) -> None:
        """Put the counts the last syncs gave (computing those given as functions, each once,
        without holding up the syncs meanwhile) into the ``dataplane_sync_proxy_rules_objects*``
        series; counts a newer sync replaced meanwhile are left to the next call."""
        with self._lock:
            taken = [(self._metrics.objects_last, self._counts_last, dict(self._counts_last)),
                     (self._metrics.objects, self._counts_full, dict(self._counts_full))]
        computed: dict[int, Mapping[str, int]] = {}  # by id of the function: a full sync gives both
        for _, _, pending in taken:
            for counts in pending.values():
                if callable(counts) and id(counts) not in computed:
                    computed[id(counts)] = counts()
        with self._lock:
            for gauge, current, pending in taken:
                for family, counts in pending.items():
                    if current.get(family) is not counts:
                        continue  # a newer sync's counts: the next call puts them in
                    del current[family]
                    values = computed[id(counts)] if callable(counts) else counts
                    for name, value in values.items():
                        gauge.labels(family, name).set(value)


class _Handler(BaseHTTPRequestHandler):
    """Answers GET /healthz, /livez and /metrics from the server's :class:`SyncStatus`; 404 otherwise."""

    server: "_Server"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urlsplit(self.path).path
        status = self.server.status
        if path in ("/healthz", "/livez"):
            health = status.health()
            code = HTTPStatus.OK if health.healthy else HTTPStatus.SERVICE_UNAVAILABLE
            status.count_probe(path, int(code))
            self._send(code, "application/json", health.body(), nosniff=True)
        elif path == "/metrics":
            self._send(HTTPStatus.OK, CONTENT_TYPE_LATEST, status.metrics_text())
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"404 page not found\n")

    def _send(self, code: HTTPStatus, content_type: str, body: bytes, *, nosniff: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        if nosniff:
            self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Probes every few seconds would flood the agent's log: say nothing."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    status: SyncStatus


class HealthServer:
    """A running /healthz and /metrics server; :meth:`close` stops it."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.port: int = port
        #: "HOST:PORT" it listens on (IPv6 hosts in brackets), the port resolved when 0 was asked.
        self.address: str = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def close(self) -> None:
        """Stop serving and release the port (waits for the serving thread)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT``; an empty host: every IPv4 address) as (host, port)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535 or (":" in host and not host.startswith("[")):
        raise ValueError
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError
        host = host[1:-1]
    return host or "0.0.0.0", int(port_text)


def serve(status: SyncStatus, bind_address: str) -> HealthServer:
    """Serve /healthz and /metrics on "HOST:PORT" (port 0 = any) in a daemon thread; a bad address raises
    dataplane.errors.UsageError with one line."""
    what = f"healthz bind address {bind_address!r}"
    try:
        host, port = _split_address(bind_address)
    except ValueError:
        raise UsageError(f"{what}: expected HOST:PORT ([IPv6]:PORT) with a port from 0 to 65535") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise UsageError(f"{what}: cannot resolve {host!r}: {getattr(e, 'strerror', None) or e}") from None
    family, _, _, _, sockaddr = infos[0]
    server_class = type("_BoundServer", (_Server,), {"address_family": family})
    try:
        server = server_class(sockaddr[:2], _Handler)
    except OSError as e:
        raise UsageError(f"{what}: {e.strerror or e}") from None
    server.status = status
    thread = threading.Thread(target=server.serve_forever, name=f"healthz {bind_address}", daemon=True)
    thread.start()
    return HealthServer(server, thread)
