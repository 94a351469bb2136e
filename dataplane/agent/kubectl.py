"""List-and-watch with the user's ``kubectl``, as a client-go informer does (``--kubectl``).

For each kind kube-proxy follows, a thread runs

1. the **list**: ``kubectl get --raw /api/v1/services?labelSelector=...`` (the API
   server's List, with the resourceVersion it was read at);
2. the **watch** from that resourceVersion: ``kubectl get --raw
   '/api/v1/services?watch=1&resourceVersion=RV&allowWatchBookmarks=true&...'``, the API
   server's event stream (one compact JSON event per line, the same events
   ``kubectl get --watch --output-watch-events -o json`` pretty-prints), decoded as it arrives.

Reading the raw endpoints rather than ``kubectl get --watch`` keeps the informer's
guarantee: the watch starts exactly where the list ended, so no change falls in
between, and BOOKMARKs arrive. When the watch ends (the API server closes watches
after a few minutes) or sends an ``ERROR`` (410 Gone: the resourceVersion is too
old), the thread lists again (a relist: what is no longer listed is deleted) and
watches anew; failures are retried with back-off. The objects kube-proxy reads are
selected as it selects them: Services and EndpointSlices without the
``service.kubernetes.io/service-proxy-name`` label (and no headless EndpointSlices),
only this node's Node, only the ``kube-system/kube-proxy`` ConfigMap.
"""
from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import orjson

from .events import JSONStreamDecoder, StreamError, watch_event
from .sources import Message, widen_pipe
from .store import preparse, preparse_event

#: kube-proxy's informers skip these (cmd/kube-proxy/app/server.go: noProxyName, noHeadlessEndpoints)
PROXY_SELECTOR = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
#: seconds: the longest wait between attempts after kubectl failed
MAX_BACKOFF = 30.0
#: seconds a list may take before it counts as failed
LIST_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class Resource:
    """One watched kind: its name in messages and its API path with the query kube-proxy uses."""

    name: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    optional: bool = False  # a cluster may not serve it (ServiceCIDRs before Kubernetes 1.33)

    def url(self, **extra: str) -> str:
        """The path with the query (and ``extra`` parameters), as ``kubectl get --raw`` takes it."""
        params = list(self.query) + sorted(extra.items())
        return self.path + ("?" + urllib.parse.urlencode(params) if params else "")


def resources(node: str) -> tuple[Resource, ...]:
    """The kinds kube-proxy follows for ``node``."""
    return (
        Resource("services", "/api/v1/services", (("labelSelector", PROXY_SELECTOR),)),
        Resource("endpointslices", "/apis/discovery.k8s.io/v1/endpointslices", (("labelSelector", PROXY_SELECTOR),)),
        Resource("nodes", "/api/v1/nodes", (("fieldSelector", f"metadata.name={node}"),)),
        Resource("servicecidrs", "/apis/networking.k8s.io/v1/servicecidrs", optional=True),
        Resource("kube-proxy configmap", "/api/v1/namespaces/kube-system/configmaps",
                 (("fieldSelector", "metadata.name=kube-proxy"),)),
    )


class KubectlWatch:
    """One kind's list-and-watch loop in a daemon thread, reporting to ``out`` as ``kubectl NAME``."""

    def __init__(self, resource: Resource, out: "queue.Queue[Message]", stop: threading.Event, *,
                 kubectl: str = "kubectl", kubeconfig: Optional[str] = None) -> None:
        self.resource = resource
        self.out = out
        self.stop = stop
        self.name = f"kubectl {resource.name}"
        self.base = [kubectl] + (["--kubeconfig", kubeconfig] if kubeconfig else [])
        self.proc: Optional[subprocess.Popen] = None
        self.lists = 0  # lists done (the first, then one per relist)
        self.events = 0
        self.stop_watching = False  # an optional kind the cluster does not serve
        self._lock = threading.Lock()

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._run, name=self.name, daemon=True)
        t.start()
        return t

    def close(self) -> None:
        """Stop the running kubectl (the process this object started), if any."""
        with self._lock:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()

    def _put(self, kind: Any, **kw: Any) -> None:
        self.out.put(Message(kind, self.name, **kw))

    def _run(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            rv = self._list()
            if self.stop_watching:
                return
            if rv is None:
                self.stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            started = time.monotonic()
            reason = self._watch(rv)
            if self.stop.is_set():
                break
            self._put("error", text=f"{self.name}: {reason}; listing again")
            if time.monotonic() - started < 1.0:  # a watch that fails at once: do not hammer the server
                self.stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            else:
                backoff = 1.0

    def _kubectl_failed(self, args: Sequence[str], code: int, stderr: bytes) -> str:
        last = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        return f"{self.name}: `{' '.join(args)}` exited with status {code}: {last[0][:300]}"

    def _list(self) -> Optional[str]:
        """List the kind and report it as a relist; the list's resourceVersion, or None on failure."""
        args = self.base + ["get", "--raw", self.resource.url()]
        try:
            done = subprocess.run(args, capture_output=True, timeout=LIST_TIMEOUT, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as err:
            self._put("error", text=f"{self.name}: cannot run kubectl: {getattr(err, 'strerror', None) or err}")
            return None
        if done.returncode != 0:
            if self.resource.optional and _not_found(done.stderr) and not self.lists:
                self._put("error", text=f"{self.name}: not served by this cluster; not watched")
                self._put("caught_up")
                self.stop_watching = True
                return None
            self._put("error", text=self._kubectl_failed(args, done.returncode, done.stderr))
            return None
        try:
            listing = orjson.loads(done.stdout)
            items = listing["items"] or []
            rv = listing["metadata"]["resourceVersion"]
            if not isinstance(items, list) or not isinstance(rv, str):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._put("error", text=f"{self.name}: `{' '.join(args)}` did not print a List")
            return None
        self.lists += 1
        kind = str(listing.get("kind", ""))
        item_kind = kind[:-len("List")] if kind.endswith("List") else kind
        api_version = listing.get("apiVersion")
        self._put("relist")
        for i, item in enumerate(items, 1):
            if isinstance(item, dict):  # the API server's List items carry no kind or apiVersion
                item = {"apiVersion": api_version, "kind": item_kind, **item}
            self._put("object", obj=item, unit="item", index=i, parsed=preparse(item, self.name))
        self._put("caught_up")
        return rv

    def _watch(self, rv: str) -> str:
        """Watch from ``rv`` until the stream ends or sends ERROR; why it ended."""
        args = self.base + ["get", "--raw", self.resource.url(watch="1", resourceVersion=rv,
                                                               allowWatchBookmarks="true")]
        try:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        except OSError as err:
            return f"cannot run kubectl: {err.strerror or err}"
        with self._lock:
            self.proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        decoder = JSONStreamDecoder(self.name)
        reason = ""
        try:
            fd = proc.stdout.fileno()
            widen_pipe(fd)
            while not reason:
                data = os.read(fd, 1 << 20)
                if not data:
                    break
                for value in decoder.feed(data):
                    self.events += 1
                    event = watch_event(value, self.name, self.events)
                    self._put("event", event=event, parsed=preparse_event(event))
                    if event.type == "ERROR":
                        reason = "the watch sent ERROR"
                        break
        except StreamError as err:
            reason = str(err).removeprefix(f"{self.name}: ")
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                _, err_text = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err_text = proc.communicate()
            with self._lock:
                self.proc = None
        if reason:
            return reason
        if proc.returncode:
            return self._kubectl_failed(args, proc.returncode, err_text).removeprefix(f"{self.name}: ")
        return "the watch ended"


def _not_found(stderr: bytes) -> bool:
    """Whether kubectl's error says the API server does not serve the path (404 NotFound)."""
    text = stderr.decode("utf-8", "replace")
    return "NotFound" in text or "could not find the requested resource" in text


def start_watches(node: str, out: "queue.Queue[Message]", stop: threading.Event, *,
                  kubectl: str = "kubectl", kubeconfig: Optional[str] = None) -> list[KubectlWatch]:
    """Start one :class:`KubectlWatch` per kind kube-proxy follows; returns them (to close)."""
    watches = [KubectlWatch(r, out, stop, kubectl=kubectl, kubeconfig=kubeconfig) for r in resources(node)]
    for w in watches:
        w.start()
    return watches
