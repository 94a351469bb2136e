"""The change tracker (kube-proxy's previous/current per Service) and how the Proxier uses it."""
from __future__ import annotations

import dataclasses

import pytest

from dataplane.model import Node, NodeAddress, Service, ServicePort
from dataplane.ruletext import RuleTextError
from dataplane.runtime.changes import Change, ChangeTracker
from dataplane.runtime.proxier import Proxier, RecordingRunner
from test_proxier import CONFIG, MODES, cluster, eps, svc

A, B = ("ns", "a"), ("ns", "b")


def test_update_records_previous_and_current_and_merges_later_updates():
    t: ChangeTracker[tuple, str] = ChangeTracker()
    t.mark(A)
    assert t.pending == {A}
    assert t.update(A, "v0", "v1") is True
    assert t.pending == frozenset()
    assert dict(t.changes()) == {A: Change("v0", "v1")}
    t.mark(A)
    assert t.update(A, "v1", "v2") is True  # the second update's "previous" is not the sync's
    assert dict(t.changes()) == {A: Change("v0", "v2")}
    changes, everything = t.checkout()
    assert changes == {A: Change("v0", "v2")} and everything is False
    assert len(t) == 0 and dict(t.changes()) == {}
    assert t.update(A, "v2", "v3") is True  # after the checkout, changes start from v2
    assert t.changes()[A] == Change("v2", "v3")


def test_a_change_back_to_what_the_last_sync_saw_drops_out():
    t: ChangeTracker[tuple, tuple] = ChangeTracker()
    t.update(A, ("x", 1), ("y", 2))
    t.update(B, ("b",), ("c",))
    t.update(A, ("y", 2), tuple(["x", 1]))  # equal to previous, another object
    assert list(t.changes()) == [B]
    t.update(A, ("x", 1), ("z", 3))  # and it can change again
    assert dict(t.changes()) == {B: Change(("b",), ("c",)), A: Change(("x", 1), ("z", 3))}


def test_delete_after_add_drops_out_and_delete_of_an_existing_key_stays():
    t: ChangeTracker[tuple, str] = ChangeTracker()
    assert t.update(A, None, "new") is True
    assert t.update(A, "new", None) is False  # added and deleted between two syncs: nothing
    assert len(t) == 0
    assert t.update(B, "old", None) is True
    assert t.changes()[B] == Change("old", None)
    assert t.update(B, None, "old") is False  # deleted and re-created as it was
    assert len(t) == 0


def test_mark_all_makes_every_key_pending_and_counts_all_as_changed_until_checkout():
    t: ChangeTracker[tuple, str] = ChangeTracker()
    t.mark_all([A, B])
    assert t.all_changed and t.pending == {A, B}
    t.update(A, "same", "same")
    t.update(B, "b0", "b1")
    assert t.pending == frozenset() and list(t.changes()) == [B]
    changes, everything = t.checkout()
    assert everything is True and list(changes) == [B]
    assert not t.all_changed


def test_pending_keys_survive_a_checkout():
    t: ChangeTracker[tuple, str] = ChangeTracker()
    t.mark_many([A, B])
    t.update(A, None, "a")
    t.checkout()
    assert t.pending == {B}  # its value was never computed: it is still to do


def test_changes_is_a_read_only_view():
    t: ChangeTracker[tuple, str] = ChangeTracker()
    t.update(A, None, "a")
    with pytest.raises(TypeError):
        t.changes()[B] = Change(None, "b")  # type: ignore[index]


# ------------------------------------------------------------------------------ in the Proxier

def _count_renders(monkeypatch, p: Proxier) -> list:
    """Record every fragment the proxier's renderer makes."""
    calls: list = []
    cls = type(p._renderer)
    original = cls.fragment

    def counting(self, port, plan, large):
        calls.append(port.name)
        return original(self, port, plan, large)

    monkeypatch.setattr(cls, "fragment", counting)
    return calls


@pytest.mark.parametrize("mode", MODES)
def test_a_change_undone_before_the_sync_syncs_nothing(mode, monkeypatch):
    p = Proxier("n1", mode=mode, cluster=cluster())
    p.sync()
    renders = _count_renders(monkeypatch, p)
    p.set_endpoint_slice(eps("s4", "10.244.9.9"))
    assert p.plan()  # the change is planned (and tracked) ...
    p.set_endpoint_slice(eps("s4", "10.244.1.5", "10.244.2.5"))  # ... and undone
    r = p.sync()
    assert (r.kind, r.text, r.changed, r.conntrack) == ("none", "", 0, ())
    assert renders == []


@pytest.mark.parametrize("mode", MODES)
def test_a_service_added_and_deleted_before_the_sync_syncs_nothing(mode):
    p = Proxier("n1", mode=mode, cluster=cluster())
    p.sync()
    p.set_service(svc("brief", "10.96.3.3"))
    p.set_endpoint_slice(eps("brief", "10.244.3.3"))
    p.plan()
    p.delete_service("ns", "brief")
    p.delete_endpoint_slice("ns", "brief-1")
    assert p.sync().kind == "none"


@pytest.mark.parametrize("mode", MODES)
def test_a_partial_sync_renders_only_the_changed_services(mode, monkeypatch):
    p = Proxier("n1", mode=mode, cluster=cluster(200))
    p.sync()
    renders = _count_renders(monkeypatch, p)
    p.set_endpoint_slice(eps("s17", "10.244.7.7"))
    p.delete_service("ns", "s30")
    r = p.sync()
    assert r.kind == "partial" and renders == ["s17"]


@pytest.mark.parametrize("mode", MODES)
def test_a_node_or_config_change_counts_every_service_as_changed(mode, monkeypatch):
    """Every Service is planned again; those whose plans stayed are not rendered again, and
    the sync compares every Service with what the kernel holds."""
    p = Proxier("n1", mode=mode, cluster=cluster(30))
    p.sync()
    renders = _count_renders(monkeypatch, p)
    p.set_config(dataclasses.replace(CONFIG))  # an equal configuration: nothing to do
    assert p.sync().kind == "none" and renders == []
    p.set_node(Node("n1", (NodeAddress("InternalIP", "192.0.2.1"),)))  # the same addresses
    assert p.sync().kind == "none" and renders == []
    # a change of the node context that no render context holds: only changed plans render
    p.set_config(dataclasses.replace(CONFIG, external_ip_cidrs=("203.0.113.0/24",)))
    p.set_service(dataclasses.replace(svc("s2", "10.96.0.3"), external_ips=("203.0.113.9", "198.51.100.9")))
    r = p.sync()
    assert r.kind == "partial" and renders == ["s2"]
    assert "203.0.113.9" in r.text and "198.51.100.9" not in r.text
    p.set_node(Node("n1", (NodeAddress("InternalIP", "192.0.2.7"),)))  # the node's address
    r = p.sync()
    assert r.kind == "full" and r.changed == 30
    assert r.text == Proxier("n1", mode=mode, cluster=p.cluster()).sync().text


@pytest.mark.parametrize("mode", MODES)
def test_a_sync_that_raises_keeps_the_changes_and_the_installed_fragments(mode):
    """A sync that fails while rendering keeps nothing it rendered: the change it held is still
    the change from what the kernel has, so undoing it afterwards syncs nothing and the state
    equals a fresh compile."""
    runner = RecordingRunner()
    p = Proxier("n1", mode=mode, cluster=cluster(), runner=runner)
    p.sync()
    p.set_endpoint_slice(eps("s3", "10.244.8.8"))
    p.plan()  # s3's change is tracked before the bad Service's
    p.set_service(Service("ns", "bad name", cluster_ips=("10.96.5.5",), ports=(ServicePort(80, "TCP", "p"),)))
    with pytest.raises(RuleTextError):
        p.sync()
    assert len(runner.applied) == 1
    p.set_endpoint_slice(eps("s3", "10.244.1.4", "10.244.2.4"))  # s3 as the kernel has it
    p.delete_service("ns", "bad name")
    assert p.sync().kind == "none"
    assert p.sync(full=True).text == Proxier("n1", mode=mode, cluster=p.cluster()).sync().text
    p.set_endpoint_slice(eps("s3", "10.244.8.8"))
    r = p.sync()
    assert r.kind == "partial" and r.changed == 1 and "10.244.8.8" in r.text
