"""YAML/JSON output (dataplane/dump.py): the bytes of PyYAML's pure SafeDumper and of
json.dumps(indent=2), written faster."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane import dump
from dataplane.controllers.allocation import allocate_cluster, fill_documents
from dataplane.controllers.endpointslices import derive_endpoint_slices, slices_to_manifests
from dataplane.dump import dump_json, dump_objects, dump_yaml, no_alias_dumper
from dataplane.input.cluster import parse_cluster
from dataplane.input.loader import load_documents

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "cluster.yaml"


def reference_yaml(objects) -> str:
    """What the CLI printed before: the pure-Python SafeDumper, never writing aliases."""
    return yaml.dump_all(objects, Dumper=no_alias_dumper(c=False), sort_keys=False, default_flow_style=False)


def reference_json(obj) -> str:
    return json.dumps(obj, indent=2) + "\n"


# Strings that exercise every quoting decision: YAML 1.1 implicit types, indicators, quotes,
# spaces at the ends, line breaks, tabs, control and non-ASCII characters, long texts that fold.
TRICKY = st.one_of(
    st.sampled_from(["", " ", "yes", "No", "on", "null", "~", "1", "0x1F", "1_000", "1e3", ".inf", "1:20",
                     "2024-04-01T12:00:00Z", "- a", "a: b", "#x", "a #b", "? x", "@x", "`x", "'q'", '"q"', "{a}",
                     "[a]", "a,b", "*x", "&x", "!x", "|", ">", "%x", "=", "<<", "---", "...", "x\n", "a\nb",
                     " lead", "trail ", "tab\there", "\x7f", "\x01", "é", "日本", "😀", "\u2028", "\ufeff",
                     "word " * 25, "w" * 120, "10.96.0.1", "app.kubernetes.io/name"]),
    st.text(alphabet=st.sampled_from("ab :-#'\"\n\t.é1{[,]}?&*!|>%@`"), max_size=30),
    st.text(alphabet=st.sampled_from("abcdef "), min_size=60, max_size=120),
)
SCALARS = st.one_of(TRICKY, st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=True, allow_infinity=True))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(TRICKY, inner, max_size=4)), max_leaves=20)
DOCUMENTS = st.lists(st.one_of(st.dictionaries(TRICKY, VALUES, max_size=5), st.lists(VALUES, max_size=4), VALUES),
                     max_size=4)


@settings(max_examples=150, deadline=None)
@given(DOCUMENTS)
def test_yaml_is_the_pure_dumpers_text(objects):
    assert dump_yaml(objects) == reference_yaml(objects)


def _has_nan_or_inf(obj) -> bool:
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, dict):
        return any(map(_has_nan_or_inf, obj.values()))
    if isinstance(obj, list):
        return any(map(_has_nan_or_inf, obj))
    return False


@settings(max_examples=150, deadline=None)
@given(DOCUMENTS)
def test_json_is_json_dumps_text(objects):
    if _has_nan_or_inf(objects):
        return  # the one documented difference, pinned below
    assert dump_json(objects) == reference_json(objects)


def test_json_writes_nan_and_infinity_as_null_not_invalid_json():
    text = dump_json({"a": float("nan"), "b": [float("inf"), -float("inf")], "c": 1.5})
    assert json.loads(text) == {"a": None, "b": [None, None], "c": 1.5}
    assert text == '{\n  "a": null,\n  "b": [\n    null,\n    null\n  ],\n  "c": 1.5\n}\n'


def test_json_spells_floats_ints_and_unicode_as_json_dumps():
    obj = {"f": [1e16, 1e-07, 0.1, 123456789.125], "big": 2**80, "neg": -(2**70), "u": "é😀\x7f\u2028"}
    assert dump_json(obj) == reference_json(obj)


def _manifests() -> list:
    docs = load_documents([str(EXAMPLE)])
    result = allocate_cluster(parse_cluster(docs).cluster, seed=1)
    return fill_documents(docs, result)


def test_real_manifests_take_the_fast_path(monkeypatch):
    """The example's objects (Services, Pods, Nodes, slices) never reach PyYAML: the fast writer
    handles them entirely, with the same text."""
    objects = _manifests() + slices_to_manifests(derive_endpoint_slices(parse_cluster(load_documents([str(EXAMPLE)])).cluster))
    want = reference_yaml(objects)

    def refuse(*args, **kwargs):
        raise AssertionError("PyYAML called for a plain manifest")

    monkeypatch.setattr(dump.yaml, "dump_all", refuse)
    assert dump_yaml(objects) == want


@pytest.mark.parametrize("libyaml", [True, False])
def test_hard_documents_go_to_libyaml_when_it_writes_the_same_text(monkeypatch, libyaml):
    folded = {"kind": "ConfigMap", "data": {"text": "word " * 30}}  # folded at 80 columns: libyaml agrees
    quoted = {"kind": "ConfigMap", "data": {"text": "caf\u00e9 " * 30}}  # double-quoted: libyaml folds otherwise
    empty_key = {"kind": "ConfigMap", "data": {"": "x"}}  # libyaml writes '': x, the pure emitter ? ''
    objects = [folded, quoted, empty_key]
    want = reference_yaml(objects)
    used = []
    real = yaml.dump_all

    def spy(objects, Dumper, **kwargs):
        used.append(issubclass(Dumper, yaml.CSafeDumper) if hasattr(yaml, "CSafeDumper") else False)
        return real(objects, Dumper=Dumper, **kwargs)

    monkeypatch.setattr(dump.yaml, "dump_all", spy)
    monkeypatch.setattr(dump.yaml, "__with_libyaml__", libyaml and yaml.__with_libyaml__)
    assert dump_yaml(objects) == want
    assert used == [libyaml and yaml.__with_libyaml__, False, False]


def test_values_met_twice_are_written_in_full():
    shared = {"app": "web"}
    objects = [{"a": shared, "b": shared}, {"c": [shared, shared]}]
    text = dump_yaml(objects)
    assert "&" not in text and "*" not in text
    assert text == reference_yaml(objects) == "a:\n  app: web\nb:\n  app: web\n---\nc:\n- app: web\n- app: web\n"


def test_empty_and_scalar_documents():
    for objects in ([], [{}], [{}, {}], [[], {"a": 1}], ["text", {"a": 1}], [{"a": 1}, 5], [None]):
        assert dump_yaml(objects) == reference_yaml(objects), objects


def test_dump_objects_wraps_several_objects_in_a_list():
    assert json.loads(dump_objects([{"a": 1}], "json")) == {"a": 1}
    assert json.loads(dump_objects([{"a": 1}, {"b": 2}], "json")) == {
        "apiVersion": "v1", "kind": "List", "items": [{"a": 1}, {"b": 2}]}
    assert dump_objects([{"a": 1}, {"b": 2}], "yaml") == "a: 1\n---\nb: 2\n"


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_cli_allocate_prints_what_the_reference_dumpers_print(tmp_path, fmt):
    out = tmp_path / f"out.{fmt}"
    proc = subprocess.run([sys.executable, "-I", "-m", "dataplane", "allocate", "--seed", "1", "-f", str(EXAMPLE),
                           "--format", fmt, "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    objects = _manifests()
    want = reference_yaml(objects) if fmt == "yaml" else reference_json({"apiVersion": "v1", "kind": "List",
                                                                           "items": objects})
    assert out.read_text() == want


@pytest.mark.parametrize("length", [121, 122, 123, 124, 127, 128, 300])
@pytest.mark.parametrize("fill", ["a", "a "])
def test_long_keys_are_written_as_pyyaml_writes_them(length, fill):
    """A label or annotation key may be 317 characters; PyYAML writes one of 123 or more as a
    complex key ("? key"), counting the key's "!!str" tag (found by the property test above)."""
    key = (fill * length)[:length - 1] + "x"
    objects = [{"metadata": {"labels": {key: "v"}, "annotations": {key + " ": None}}}]
    assert dump_yaml(objects) == reference_yaml(objects)
