"""Objects inside a ``kind: List`` are named "item N of the List in document M" in every message
(issue 14, item 5): in multi-document YAML, a JSON List, and a List inside multi-document YAML;
documents after a List keep their own position; allocation patches each List item with its own
Service's values."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from dataplane.controllers.allocation import allocate_cluster, fill_documents
from dataplane.input.cluster import parse_cluster
from dataplane.input.loader import documents_from_text, list_item_unit

DATAPLANE = [sys.executable, "-I", "-m", "dataplane"]


def _service(name: str, port: int) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"port": port}], "selector": {"app": name}}}


def _errors(path: Path) -> list[str]:
    proc = subprocess.run([*DATAPLANE, "compile", "-f", str(path), "--node", "n1"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.splitlines()


def _bad(name: str) -> str:
    return (f"Service default/{name}: spec.ports[0].port: Invalid value: 70000: "
            "must be between 1 and 65535, inclusive")


def test_multi_document_yaml_counts_documents(tmp_path):
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump_all([_service("a", 80), _service("b", 70000), None, _service("c", 70000)]))
    assert _errors(path) == [f"error: {path}: document 2: {_bad('b')}", f"error: {path}: document 4: {_bad('c')}"]


def test_a_json_list_names_its_items(tmp_path):
    path = tmp_path / "list.json"
    items = [_service("a", 80), _service("b", 70000), _service("c", 80), _service("d", 70000)]
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    assert _errors(path) == [f"error: {path}: item 2 of the List in document 1: {_bad('b')}",
                             f"error: {path}: item 4 of the List in document 1: {_bad('d')}"]


def test_a_list_inside_multi_document_yaml(tmp_path):
    path = tmp_path / "mixed.yaml"
    listed = {"apiVersion": "v1", "kind": "List", "items": [_service("b", 80), _service("c", 70000)]}
    typed = {"apiVersion": "v1", "kind": "ServiceList", "items": [{"metadata": {"name": "e"},
                                                                   "spec": {"ports": [{"port": 70000}]}}]}
    path.write_text(yaml.safe_dump_all([_service("a", 70000), listed, _service("d", 70000), typed]))
    assert _errors(path) == [
        f"error: {path}: document 1: {_bad('a')}",
        f"error: {path}: item 2 of the List in document 2: {_bad('c')}",
        f"error: {path}: document 3: {_bad('d')}",
        f"error: {path}: item 1 of the List in document 4: {_bad('e')}",
    ]


def test_warnings_name_list_items_too(tmp_path):
    path = tmp_path / "warn.yaml"
    svc = _service("a", 80)
    svc["spec"]["targetPrt"] = 8080
    path.write_text(yaml.safe_dump_all([_service("x", 80), {"apiVersion": "v1", "kind": "List", "items": [svc]}]))
    proc = subprocess.run([*DATAPLANE, "allocate", "-f", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (f'warning: {path}: item 1 of the List in document 2: Service default/a: unknown field "spec.targetPrt"'
            in proc.stderr.splitlines()), proc.stderr


def test_document_level_problems_of_list_items():
    text = textwrap.dedent("""\
        apiVersion: v1
        kind: List
        items:
        - 7
        - {kind: Service}
        """)
    _, problems = documents_from_text(text, "f.yaml")
    assert [str(p) for p in problems] == [
        "f.yaml: item 1 of the List in document 1: a manifest List item must be a mapping with apiVersion and kind, "
        "not a number",
        "f.yaml: item 2 of the List in document 1: apiVersion: Required value",
    ]
    assert list_item_unit(3) == "item 3 of the List in document"


def test_allocation_patches_each_list_item_with_its_own_values():
    """Items of one List share the List's document position: each must still get its own
    Service's ClusterIP and NodePort back (not the last item's)."""
    items = []
    for name in ("a", "b", "c"):
        svc = _service(name, 80)
        svc["spec"]["type"] = "NodePort"
        items.append(svc)
    text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})
    docs, problems = documents_from_text(text, "in.yaml")
    assert not problems and {d.index for d in docs} == {1}
    result = allocate_cluster(parse_cluster(docs).cluster, seed=3)
    filled = fill_documents(docs, result)
    by_name = {s.name: s for s in result.cluster.services}
    for obj in filled:
        svc = by_name[obj["metadata"]["name"]]
        assert obj["spec"]["clusterIP"] == svc.cluster_ips[0]
        assert obj["spec"]["ports"][0]["nodePort"] == svc.ports[0].node_port
    assert len({obj["spec"]["clusterIP"] for obj in filled}) == 3
