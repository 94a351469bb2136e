"""The Pod fast path (dataplane.input.fastpod) builds exactly the Pod the full validator builds, and
refuses whatever the validator reports, which then names the file, object and field in one line."""
from __future__ import annotations

import copy
import dataclasses
import json
import random
import subprocess
import sys

import pytest

from dataplane.input import node
from dataplane.input.fastpod import fast_pod
from dataplane.input.validation import Checker
from dataplane.model import Pod


def _pod() -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-7d9f-abcde", "namespace": "shop", "labels": {"app": "web", "tier": "front"},
                     "annotations": {"x": "y"}},
        "spec": {
            "nodeName": "node-01",
            "hostname": "web-0",
            "subdomain": "web",
            "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                          {"containerPort": 5353, "protocol": "UDP"}]},
                {"name": "metrics", "ports": [{"name": "metrics", "containerPort": 9090}]},
            ],
            "initContainers": [
                {"name": "proxy", "restartPolicy": "Always", "ports": [{"name": "proxy", "containerPort": 15001}]},
                {"name": "setup", "ports": [{"name": "setup", "containerPort": 7000}]},
            ],
        },
        "status": {"phase": "Running", "podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00::5"}],
                   "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}]},
    }


def _set(path: str, value):
    """A change to a copy of the Pod: ``value`` at the dotted ``path`` (``[i]`` indexes a list;
    ``DELETE`` removes the key)."""
    def change(obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        parts = path.replace("]", "").replace("[", ".").split(".")
        target = obj
        for part in parts[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        last = parts[-1]
        if isinstance(target, list):
            target[int(last)] = value
        elif value is DELETE:
            target.pop(last, None)
        else:
            target[last] = value
        return obj
    return change


DELETE = object()

# Changes the validator accepts (the fast path must build the same Pod, or leave it to the validator)
VALID = {
    "as given": lambda o: o,
    "no namespace": _set("metadata.namespace", DELETE),
    "empty namespace": _set("metadata.namespace", ""),
    "no labels": _set("metadata.labels", DELETE),
    "null labels": _set("metadata.labels", None),
    "terminating": _set("metadata.deletionTimestamp", "2024-05-01T10:00:00Z"),
    "no spec": _set("spec", DELETE),
    "no status": _set("status", DELETE),
    "not ready": _set("status.conditions[1].status", "False"),
    "no conditions": _set("status.conditions", DELETE),
    "condition without status": _set("status.conditions[1]", {"type": "Ready"}),
    "phase unset": _set("status.phase", DELETE),
    "phase empty": _set("status.phase", ""),
    "succeeded": _set("status.phase", "Succeeded"),
    "podIP only": _set("status.podIPs", DELETE),
    "podIPs empty: podIP read": _set("status.podIPs", []),
    "no IP at all": lambda o: _set("status.podIP", DELETE)(_set("status.podIPs", DELETE)(o)),
    "IPv6 spelled long": _set("status.podIPs[1]", {"ip": "FD00:0:0::5"}),
    "IPv4-mapped IPv6 alone": _set("status.podIPs", [{"ip": "::ffff:10.1.0.9"}]),
    "IPv4 with leading zeros": _set("status.podIPs", [{"ip": "10.001.0.5"}]),
    "hostNetwork": lambda o: _set("spec.hostNetwork", True)(_set("status.podIPs", [{"ip": "192.168.0.1"}])(o)),
    "no nodeName": _set("spec.nodeName", DELETE),
    "no hostname": _set("spec.hostname", DELETE),
    "port without protocol": _set("spec.containers[0].ports[0]", {"name": "http", "containerPort": 8080}),
    "port with empty protocol": _set("spec.containers[0].ports[0].protocol", ""),
    "port with empty name": _set("spec.containers[0].ports[0].name", ""),
    "SCTP": _set("spec.containers[0].ports[0].protocol", "SCTP"),
    "same name in two containers": _set("spec.containers[1].ports[0].name", "http"),
    "no containers": _set("spec.containers", DELETE),
    "container without ports": _set("spec.containers[1]", {"name": "metrics"}),
    "no init containers": _set("spec.initContainers", DELETE),
}

# Changes the validator reports (the fast path must refuse them all)
INVALID = {
    "metadata a list": _set("metadata", []),
    "no name": _set("metadata.name", DELETE),
    "bad name": _set("metadata.name", "Web_1"),
    "name a number": _set("metadata.name", 7),
    "bad namespace": _set("metadata.namespace", "Shop"),
    "namespace with dots": _set("metadata.namespace", "a.b"),
    "bad label key": _set("metadata.labels", {"-app": "web"}),
    "bad label value": _set("metadata.labels", {"app": "w e b"}),
    "label value a number": _set("metadata.labels", {"app": 1}),
    "labels a list": _set("metadata.labels", ["app"]),
    "spec a string": _set("spec", "x"),
    "status a list": _set("status", []),
    "bad nodeName": _set("spec.nodeName", "Node_1"),
    "empty nodeName": _set("spec.nodeName", ""),
    "nodeName a number": _set("spec.nodeName", 1),
    "bad hostname": _set("spec.hostname", "a.b"),
    "empty subdomain": _set("spec.subdomain", ""),
    "bad IP": _set("status.podIPs[0].ip", "10.1.0.300"),
    "empty IP": _set("status.podIPs[0].ip", ""),
    "IP missing": _set("status.podIPs[0]", {}),
    "IP a number": _set("status.podIPs[0].ip", 5),
    "zoned IPv6": _set("status.podIPs[1].ip", "fe80::1%eth0"),
    "two IPv4": _set("status.podIPs[1].ip", "10.1.0.6"),
    "three IPs": _set("status.podIPs", [{"ip": "10.1.0.5"}, {"ip": "fd00::5"}, {"ip": "fd00::6"}]),
    "podIPs a map": _set("status.podIPs", {"ip": "10.1.0.5"}),
    "podIPs item a string": _set("status.podIPs", ["10.1.0.5"]),
    "bad podIP alone": lambda o: _set("status.podIP", "x")(_set("status.podIPs", DELETE)(o)),
    "podIP a number": lambda o: _set("status.podIP", 1)(_set("status.podIPs", DELETE)(o)),
    "bad phase": _set("status.phase", "Sleeping"),
    "phase a number": _set("status.phase", 1),
    "conditions a map": _set("status.conditions", {"Ready": "True"}),
    "condition a string": _set("status.conditions[0]", "Ready"),
    "condition status a bool": _set("status.conditions[1].status", True),
    "containers a map": _set("spec.containers", {"name": "app"}),
    "container a string": _set("spec.containers[0]", "app"),
    "ports a map": _set("spec.containers[0].ports", {"containerPort": 1}),
    "port a number": _set("spec.containers[0].ports[0]", 8080),
    "port number missing": _set("spec.containers[0].ports[0]", {"name": "http"}),
    "port number zero": _set("spec.containers[0].ports[0].containerPort", 0),
    "port number too big": _set("spec.containers[0].ports[0].containerPort", 70000),
    "port number a string": _set("spec.containers[0].ports[0].containerPort", "8080"),
    "port number a bool": _set("spec.containers[0].ports[0].containerPort", True),
    "port number a float": _set("spec.containers[0].ports[0].containerPort", 8080.0),
    "bad port name": _set("spec.containers[0].ports[0].name", "HTTP"),
    "port name too long": _set("spec.containers[0].ports[0].name", "a" * 16),
    "port name a list": _set("spec.containers[0].ports[0].name", ["http"]),
    "duplicate port name": _set("spec.containers[0].ports[1].name", "http"),
    "bad protocol": _set("spec.containers[0].ports[0].protocol", "tcp"),
    "protocol a number": _set("spec.containers[0].ports[0].protocol", 6),
    "bad restartPolicy": _set("spec.initContainers[1].restartPolicy", "OnFailure"),
    "empty restartPolicy": _set("spec.initContainers[1].restartPolicy", ""),
    "bad port of a plain init container": _set("spec.initContainers[1].ports[0].containerPort", 0),
}


def _both(obj: dict, monkeypatch) -> tuple:
    """(Pod, problems, identity) from parse_pod with the fast path, then with the full validator only."""
    results = []
    for fast in (True, False):
        with monkeypatch.context() as m:
            if not fast:
                m.setattr(node, "fast_pod", lambda c, o: None)
            checker = Checker("pods.yaml", 3, "Pod")
            pod = node.parse_pod(checker, obj)
            results.append((pod, pod.ref, checker.problems(), checker.label))
    return tuple(results)


@pytest.mark.parametrize("case", sorted(VALID), ids=str)
def test_a_valid_pod_is_built_as_the_validator_builds_it(case, monkeypatch):
    obj = VALID[case](_pod())
    fast, full = _both(obj, monkeypatch)
    assert full[2] == [], full[2]  # (the case is valid)
    assert fast == full
    if case != "IPv4 with leading zeros":  # (the one valid spelling left to the validator)
        assert fast_pod(Checker("pods.yaml", 3, "Pod"), obj) == full[0]


@pytest.mark.parametrize("case", sorted(INVALID), ids=str)
def test_whatever_the_validator_reports_is_left_to_it(case, monkeypatch):
    obj = INVALID[case](_pod())
    checker = Checker("pods.yaml", 3, "Pod")
    assert fast_pod(checker, obj) is None
    assert (checker.name, checker.problems()) == ("", [])  # untouched
    fast, full = _both(obj, monkeypatch)
    assert full[2], "the case must be invalid"
    assert fast == full


def test_random_pods_fast_and_full_agree(monkeypatch):
    """Random combinations of the changes above: same Pod and problems either way, and the fast
    path accepts exactly the Pods without problems (the one sloppy IPv4 spelling aside)."""
    rng = random.Random(16)
    changes = [*VALID.values(), *INVALID.values()]
    accepted = 0
    for _ in range(400):
        obj = _pod()
        for change in rng.sample(changes, rng.randint(1, 4)):
            try:
                obj = change(obj)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError):  # its place an earlier change removed
                pass
        fast, full = _both(obj, monkeypatch)
        assert fast == full
        quick = fast_pod(Checker("pods.yaml", 3, "Pod"), obj)
        if quick is not None:
            accepted += 1
            assert full[2] == [] and quick == full[0]
    assert accepted > 20


def test_a_bad_pod_field_is_one_line_naming_file_object_and_field(tmp_path):
    """Through the CLI: exit status 1, one line per problem, no traceback, no rules written."""
    good = _pod()
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                    "ports": [{"port": 80, "targetPort": "http"}]}}
    nodes = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-01"},
             "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}}
    bad = _set("spec.containers[0].ports[0].containerPort", 70000)(good)
    bad["metadata"]["name"] = "web-2"
    path = tmp_path / "pods.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [svc, nodes, good, bad]}))
    out = tmp_path / "rules.txt"
    run = subprocess.run([sys.executable, "-I", "-m", "dataplane", "compile", "-f", str(path), "--node", "node-01",
                          "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines == [f"error: {path}: item 4 of the List in document 1: Pod shop/web-2: spec.containers[0].ports[0]."
                     "containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"], lines
    assert "Traceback" not in run.stderr and not out.exists()


def test_the_pod_fields_are_in_the_order_fast_pod_gives_them():
    """fast_pod builds the Pod positionally, for speed."""
    assert [f.name for f in dataclasses.fields(Pod)] == [
        "namespace", "name", "labels", "node_name", "pod_ips", "ready", "terminating", "phase", "hostname",
        "subdomain", "container_ports", "sidecar_ports", "ref"]


# ------------------------------------------------------------- what a Deployment's Pods share


def test_pods_with_the_same_labels_and_containers_share_them(monkeypatch):
    """A Deployment's Pods: the second is built from what the first was (the same tuples), and
    both are what the validator builds."""
    first, second = _pod(), _pod()
    second["metadata"]["name"] = "web-7d9f-fghij"
    a, b = (fast_pod(Checker("pods.yaml", 3, "Pod"), obj) for obj in (first, second))
    assert a.labels is b.labels and a.container_ports is b.container_ports and a.sidecar_ports is b.sidecar_ports
    for pod, obj in ((a, first), (b, second)):
        fast, full = _both(obj, monkeypatch)
        assert full[2] == [] and pod == full[0] == fast[0]


@pytest.mark.parametrize("path, value, twin", [
    ("spec.containers[0].ports[0].containerPort", 8080.0, 8080),  # equal
    ("spec.containers[0].ports[0].containerPort", True, 1),  # equal
    ("spec.containers[0].ports[0].name", float("nan"), None),  # both written null by orjson
    ("spec.containers[0].ports[0].name", float("inf"), None),
    ("spec.initContainers[0].restartPolicy", "OnFailure", "Always"),
    ("metadata.labels.tier", 1, "1"),
    ("metadata.labels.tier", True, "true"),
    ("metadata.labels.tier", ["front"], "front"),
])
def test_a_value_like_a_shared_one_is_read_by_its_own_type(path, value, twin, monkeypatch):
    """After a valid Pod with ``twin`` filled the shared lookups, a Pod with ``value`` there (equal
    to it, or written alike) is judged by what it holds: the same Pod and problems as the
    validator alone gives."""
    warm = _set(path, twin)(_pod())
    assert fast_pod(Checker("pods.yaml", 1, "Pod"), warm) is not None
    changed = _set(path, value)(_pod())
    fast, full = _both(changed, monkeypatch)
    assert fast == full
    quick = fast_pod(Checker("pods.yaml", 3, "Pod"), changed)
    assert (quick is not None) == (full[2] == [])
    if quick is not None:
        assert quick == full[0]


@pytest.mark.parametrize("path, make", [
    ("spec.containers[0].ports[0].name", lambda: type("Name", (str,), {})("http")),
    ("spec.containers[0].ports[0].containerPort", lambda: type("Port", (int,), {})(8080)),
    ("metadata.labels.app", lambda: type("Value", (str,), {})("web")),
])
def test_values_of_subclasses_agree_with_the_validator(path, make, monkeypatch):
    """A str or int subclass (a library caller's), equal to a shared value: the same Pod and
    problems as the validator alone gives."""
    assert fast_pod(Checker("pods.yaml", 1, "Pod"), _pod()) is not None  # (fills the lookups)
    obj = _set(path, make())(_pod())
    fast, full = _both(obj, monkeypatch)
    assert fast == full
    quick = fast_pod(Checker("pods.yaml", 3, "Pod"), obj)
    assert quick is None or (full[2] == [] and quick == full[0])


def test_the_shared_lookups_stop_growing_at_their_bound(monkeypatch):
    from dataplane.input import fastpod

    monkeypatch.setattr(fastpod, "_MAX_SHARED", 3)
    monkeypatch.setattr(fastpod, "_LABELS", {})
    monkeypatch.setattr(fastpod, "_CONTAINERS", {})
    for n in range(10):
        obj = _pod()
        obj["metadata"]["labels"]["n"] = str(n)
        obj["spec"]["containers"][1]["ports"][0]["containerPort"] = 9000 + n
        pod = fast_pod(Checker("pods.yaml", 1, "Pod"), obj)
        assert dict(pod.labels)["n"] == str(n) and pod.container_ports[-1].container_port == 9000 + n
    assert len(fastpod._LABELS) == 3 and len(fastpod._CONTAINERS) == 3
