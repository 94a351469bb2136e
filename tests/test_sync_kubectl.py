"""Issue 17: `dataplane sync --kubectl` lists and watches with the user's kubectl, relisting as an
informer does. A fake ``kubectl`` (a script on PATH) replays recorded API responses and logs its arguments."""
from __future__ import annotations

import json
import queue
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest

from dataplane.agent.events import gone_status
from dataplane.agent.kubectl import PROXY_SELECTOR, KubectlWatch, resources
from dataplane.agent.loop import SyncLoop
from dataplane.agent.sources import Message
from dataplane.agent.store import ObjectStore

from test_sync_loop import Status
from test_sync_store import service

FAKE_KUBECTL = r'''#!{python} -I
"""Replays {dir}/listN.json and {dir}/watchN.jsonl (N counts the calls of each kind); logs argv."""
import os, sys, time
d = {dir!r}
with open(os.path.join(d, "argv.log"), "a") as log:
    log.write(repr(sys.argv[1:]) + "\n")
url = sys.argv[sys.argv.index("--raw") + 1]
what = "watch" if "watch=1" in url else "list"
count_file = os.path.join(d, what + ".count")
n = int(open(count_file).read()) + 1 if os.path.exists(count_file) else 1
open(count_file, "w").write(str(n))
path = os.path.join(d, f"{{what}}{{n}}.{{'jsonl' if what == 'watch' else 'json'}}")
if not os.path.exists(path):
    if what == "list":
        sys.stderr.write('Error from server (NotFound): the server could not find the requested resource\n')
        sys.exit(1)
    time.sleep(3600)  # a watch with nothing more to say stays open
sys.stdout.write(open(path).read())
'''


@pytest.fixture
def kubectl(tmp_path: Path) -> Path:
    script = tmp_path / "kubectl"
    script.write_text(FAKE_KUBECTL.format(python=sys.executable, dir=str(tmp_path)))
    script.chmod(0o755)
    return script


def api_list(rv: str, *objects: dict) -> str:
    """A List as the API server returns it: items without kind and apiVersion."""
    items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in objects]
    return json.dumps({"kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": rv},
                       "items": items})


def api_watch(*events: tuple[str, dict]) -> str:
    """The API server's watch stream: one compact event per line."""
    return "".join(json.dumps({"type": t, "object": o}) + "\n" for t, o in events)


def run_until(watch: KubectlWatch, q: "queue.Queue[Message]", lists: int, timeout: float = 30) -> list[Message]:
    """Messages until the watch has listed ``lists`` times and caught up."""
    msgs: list[Message] = []
    while True:
        msg = q.get(timeout=timeout)
        msgs.append(msg)
        if msg.kind == "caught_up" and watch.lists == lists:
            return msgs


def test_list_watch_error_410_relist_and_restart(tmp_path, kubectl):
    a, b, c = service("a", "10.96.0.1", rv="5"), service("b", "10.96.0.2", rv="6"), service("c", "10.96.0.3", rv="11")
    a2 = service("a", "10.96.0.1", port=81, rv="21")
    (tmp_path / "list1.json").write_text(api_list("10", a, b))
    (tmp_path / "watch1.jsonl").write_text(api_watch(
        ("ADDED", c), ("BOOKMARK", {"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": "12"}}),
        ("ERROR", gone_status("too old resource version: 10 (15)")),
        ("ADDED", service("never-read", "10.96.0.9"))))  # after ERROR the stream is abandoned
    (tmp_path / "list2.json").write_text(api_list("20", a, c))  # b went while the watch was broken
    (tmp_path / "watch2.jsonl").write_text(api_watch(("MODIFIED", a2)))  # then the watch ends
    (tmp_path / "list3.json").write_text(api_list("30", a2, c))
    q: "queue.Queue[Message]" = queue.Queue()
    stop = threading.Event()
    [res] = [r for r in resources("node1") if r.name == "services"]
    watch = KubectlWatch(res, q, stop, kubectl=str(kubectl), kubeconfig="/etc/kube.conf")
    watch.start()
    try:
        msgs = run_until(watch, q, lists=3)
    finally:
        stop.set()
        watch.close()
    kinds = [m.kind if m.kind != "event" else m.event.type for m in msgs]
    assert kinds == ["relist", "object", "object", "caught_up",
                     "ADDED", "BOOKMARK", "ERROR", "error",
                     "relist", "object", "object", "caught_up",
                     "MODIFIED", "error",
                     "relist", "object", "object", "caught_up"]
    assert msgs[1].obj["kind"] == "Service" and msgs[1].obj["apiVersion"] == "v1"  # filled in from the List
    assert msgs[7].text == "kubectl services: the watch sent ERROR; listing again"
    assert msgs[13].text == "kubectl services: the watch ended; listing again"
    argv = [eval(line) for line in (tmp_path / "argv.log").read_text().splitlines()]
    assert all(a[:4] == ["--kubeconfig", "/etc/kube.conf", "get", "--raw"] for a in argv)
    urls = [urllib.parse.urlsplit(a[4]) for a in argv]
    assert [u.path for u in urls[:5]] == ["/api/v1/services"] * 5
    queries = [dict(urllib.parse.parse_qsl(u.query)) for u in urls]
    assert queries[0] == {"labelSelector": PROXY_SELECTOR}
    assert queries[1] == {"labelSelector": PROXY_SELECTOR, "watch": "1", "resourceVersion": "10",
                          "allowWatchBookmarks": "true"}
    assert queries[3]["resourceVersion"] == "20"  # each watch starts where its list ended

    # the same messages through the loop's store: b is dropped at the relist, a modified
    lines: list[str] = []
    store = ObjectStore(warn=lines.append)
    loop = SyncLoop(queue.Queue(), store, [watch.name], lambda c: [], Status(), min_sync_period=1,
                    sync_period=30, log=lines.append)
    for m in msgs:
        loop.handle(m)
    assert sorted((s.name, s.ports[0].port) for s in store.cluster().services) == [("a", 81), ("c", 80)]
    assert loop.ready()
    assert "kubectl services: event 3: watch error 410 Expired: too old resource version: 10 (15); " \
           "relisting kubectl services" in lines


def test_a_kind_the_cluster_does_not_serve_is_not_waited_for(tmp_path, kubectl):
    q: "queue.Queue[Message]" = queue.Queue()
    stop = threading.Event()
    [res] = [r for r in resources("node1") if r.name == "servicecidrs"]
    watch = KubectlWatch(res, q, stop, kubectl=str(kubectl))
    thread = watch.start()
    thread.join(30)
    assert not thread.is_alive()
    msgs = [q.get_nowait() for _ in range(q.qsize())]
    assert [(m.kind, m.text) for m in msgs] == [("error", "kubectl servicecidrs: not served by this cluster; "
                                                          "not watched"), ("caught_up", "")]


def test_what_kube_proxy_watches():
    urls = {r.name: r.url() for r in resources("node-a")}
    assert urls == {
        "services": "/api/v1/services?labelSelector=" + urllib.parse.quote_plus(PROXY_SELECTOR),
        "endpointslices": "/apis/discovery.k8s.io/v1/endpointslices?labelSelector="
                          + urllib.parse.quote_plus(PROXY_SELECTOR),
        "nodes": "/api/v1/nodes?fieldSelector=metadata.name%3Dnode-a",
        "servicecidrs": "/apis/networking.k8s.io/v1/servicecidrs",
        "kube-proxy configmap": "/api/v1/namespaces/kube-system/configmaps?fieldSelector=metadata.name%3Dkube-proxy",
    }
