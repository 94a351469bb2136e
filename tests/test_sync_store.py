"""Issue 17: the agent's object store (dataplane.agent.store) applying watch events to Proxiers."""
from __future__ import annotations

import copy

import pytest

from dataplane import Proxier, RecordingRunner
from dataplane.agent.events import WatchEvent, gone_status
from dataplane.agent.store import ObjectStore

NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1", "resourceVersion": "1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}


def service(name: str, ip: str, port: int = 80, rv: str = "1") -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": port, "protocol": "TCP",
                                                                      "targetPort": 8080}]}}


def slice_(svc: str, ips: list[str], rv: str = "1") -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{svc}-1", "namespace": "default", "resourceVersion": rv,
                         "labels": {"kubernetes.io/service-name": svc}},
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
            "ports": [{"port": 8080, "protocol": "TCP"}]}


class Feed:
    """A store with one attached Proxier (recording), fed numbered events from one source."""

    def __init__(self, source: str = "svc.json") -> None:
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.store = ObjectStore(warn=self.lines.append, on_error=self.errors.append)
        self.proxier = Proxier("node1", backend="nftables", runner=RecordingRunner())
        self.source = source
        self.n = 0
        self.send("ADDED", NODE, source="nodes.yaml")
        self.store.attach(self.proxier)

    def send(self, event_type: str, obj: dict, source: str = "") -> bool:
        self.n += 1
        return self.store.apply(WatchEvent(event_type, copy.deepcopy(obj), source or self.source, self.n))

    def services(self) -> list[str]:
        return sorted(f"{s.namespace}/{s.name}:{s.ports[0].port}" for s in self.proxier.cluster().services)


def test_added_modified_deleted_bookmark():
    f = Feed()
    assert f.send("ADDED", service("web", "10.96.0.1"))
    assert f.send("ADDED", slice_("web", ["10.244.1.10"]))
    assert f.services() == ["default/web:80"]
    assert not f.send("MODIFIED", service("web", "10.96.0.1"))  # the same resourceVersion: nothing changes
    assert f.send("MODIFIED", service("web", "10.96.0.1", port=81, rv="2"))
    assert f.services() == ["default/web:81"]
    assert not f.send("BOOKMARK", {"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": "9"}})
    assert f.store.bookmarks["svc.json"] == "9" and f.services() == ["default/web:81"]
    assert f.send("DELETED", service("web", "10.96.0.1", port=81, rv="10"))
    assert f.services() == []
    assert not f.send("DELETED", service("web", "10.96.0.1"))  # already gone
    pending = f.store.take_pending()
    assert pending.services == {("default", "web")} and pending.endpoints == {("default", "web-1")}
    assert pending.events == 8 and not f.store.take_pending()


def test_a_bad_object_is_one_line_and_changes_nothing_else():
    f = Feed()
    f.send("ADDED", service("web", "10.96.0.1"))
    f.send("ADDED", service("api", "10.96.0.2"))
    f.send("ADDED", slice_("api", ["10.244.1.11"]))
    f.proxier.sync()
    before = f.proxier.plan()
    # api's new version is invalid: reported and skipped, its previous version stays in force
    assert not f.send("MODIFIED", service("api", "10.96.0.2", port=70000, rv="5"))
    assert not f.send("ADDED", {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default"}})
    assert f.lines == [
        "svc.json: event 5: Service default/api: spec.ports[0].port: Invalid value: 70000: must be between 1 and "
        "65535, inclusive (skipped)",
        "svc.json: event 6: metadata.name: Required value (the object cannot be identified)",
    ]
    assert f.errors == ["invalid object", "invalid object"]
    assert f.services() == ["default/api:80", "default/web:80"]
    result = f.proxier.sync()
    assert result.kind == "none" and result.plan == before
    # the next valid version of it is taken
    assert f.send("MODIFIED", service("api", "10.96.0.2", port=8443, rv="6"))
    assert f.services() == ["default/api:8443", "default/web:80"]


def test_error_410_relists_and_drops_what_is_not_listed_again():
    f = Feed()
    for name, ip in (("a", "10.96.0.1"), ("b", "10.96.0.2"), ("c", "10.96.0.3")):
        f.send("ADDED", service(name, ip))
    f.send("ADDED", service("other", "10.96.0.9"), source="other.json")
    assert not f.send("ERROR", gone_status("too old resource version: 1 (40)"))
    assert f.lines == ["svc.json: event 6: watch error 410 Expired: too old resource version: 1 (40); "
                       "relisting svc.json"]
    # the relist: a unchanged, b modified, c gone without a DELETED event
    f.send("ADDED", service("a", "10.96.0.1"))
    f.send("ADDED", service("b", "10.96.0.2", port=90, rv="7"))
    assert f.services() == ["default/a:80", "default/b:90", "default/c:80", "default/other:80"]
    assert f.store.caught_up("svc.json") == 1
    assert f.services() == ["default/a:80", "default/b:90", "default/other:80"]  # other source untouched


def test_snapshot_objects_configuration_and_ignored_kinds():
    f = Feed()
    config = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
              "clusterCIDR": "10.244.0.0/16"}
    assert f.store.put(config, "cfg.yaml", "document", 1)
    assert f.proxier.cluster().proxy_config.cluster_cidrs == ("10.244.0.0/16",)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}}
    assert not f.store.put(pod, "cfg.yaml", "document", 2)
    assert not f.store.put(pod, "cfg.yaml", "document", 3)
    assert f.lines == ["cfg.yaml: ignoring Pod objects (the agent reads Services, EndpointSlices, Nodes, "
                       "ServiceCIDRs and kube-proxy's configuration)"]  # once per source and kind
    f.store.relist("cfg.yaml")
    f.store.caught_up("cfg.yaml")  # the snapshot was read again without its configuration
    assert f.proxier.cluster().proxy_config.cluster_cidrs == ()


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_every_attached_proxier_hears_every_change(family):
    store = ObjectStore(warn=print)
    node = copy.deepcopy(NODE)
    node["status"]["addresses"].append({"type": "InternalIP", "address": "2001:db8::1"})
    store.put(node, "n", "event", 1)
    svc = service("web", "10.96.0.1")
    svc["spec"].update(clusterIPs=["10.96.0.1", "fd00::1"], ipFamilies=["IPv4", "IPv6"],
                       ipFamilyPolicy="PreferDualStack")
    store.put(svc, "s", "event", 1)
    proxiers = [Proxier("node1", family=f) for f in ("ipv4", "ipv6")]
    for p in proxiers:
        store.attach(p)
    by_family = dict(zip(("ipv4", "ipv6"), proxiers))
    assert [s.cluster_ip for s in by_family[family].plan().services] == \
        (["10.96.0.1"] if family == "ipv4" else ["fd00::1"])
    store.apply(WatchEvent("DELETED", svc, "s", 2))
    assert not by_family[family].plan().services
