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


# ------------------------------------------------- generated writers (shapes met again), JSON's float walk

# Few keys, so that shapes (keys in order, where the mapping starts) repeat within and across
# documents, in several orders, with values of every kind in the same place.
SHAPE_KEYS = st.sampled_from(["a", "b", "kind", "name"])
SHAPE_SCALARS = st.one_of(st.sampled_from(["x", "10.0.0.1", "1", "true", "a b", "yes", "", "0x1F", "1e3", "2024-01-01",
                                           "7c0f6e4e-1d9a-4b8e-9a56-0d7b5e1f2a3b", "1.2.3.4", "1-2-3-4-5", "1.5",
                                           "1.5e-3", "1_0", "0o7", "on", "2024-01-01-1"]),
                          st.booleans(), st.integers(-3, 3), st.none(), st.floats(allow_nan=True, allow_infinity=True),
                          st.text(alphabet=st.sampled_from("ab "), min_size=55, max_size=80))
SHAPED = st.recursive(SHAPE_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                             st.dictionaries(SHAPE_KEYS, inner, max_size=4)),
                      max_leaves=25)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.dictionaries(SHAPE_KEYS, SHAPED, min_size=1, max_size=4),
                          st.lists(SHAPED, min_size=1, max_size=4)), min_size=1, max_size=8))
def test_shapes_met_again_are_written_as_the_pure_dumper_writes_them(objects):
    """Mappings of one shape met several times are written by a generated writer: values of other
    kinds than the first met, bools and ints and floats in one place, keys reordered, strings
    near the fold."""
    objects = objects + objects  # every shape met at least twice
    assert dump_yaml(objects) == reference_yaml(objects)


def test_one_shape_with_every_kind_of_value_in_turn(monkeypatch):
    made = []
    real = dump._writer_factory

    def spy(kinds):
        made.append(kinds)
        return real(kinds)

    monkeypatch.setattr(dump, "_writer_factory", spy)
    values = [True, 1, 1.0, False, 0, 0.0, None, "1", "true", "x", {}, [], {"k": 1}, ["v"], ["v", {"k": True}],
              [["a"], []], 2**70, float("nan"), "word " * 14, -1.5e-7]
    objects = [{"spec": {"port": value, "name": value}} for value in values]
    objects += [{"spec": {"name": value, "port": value}} for value in reversed(values)]  # keys reordered
    assert dump_yaml(objects) == reference_yaml(objects)
    assert made, "no writer was generated"


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_strings_near_the_fold_at_every_depth(depth):
    """A string with spaces may be folded past column 80: the writer checks its column each time
    (the same string, the same shape, at other depths)."""
    objects = []
    for length in range(60, 84):
        text = ("ab " * 40)[:length - 1] + "z"
        value: object = {"key": text, "other": [text]}
        for _ in range(depth):
            value = {"in": value, "items": [value]}
        objects += [value, value]
    assert dump_yaml(objects) == reference_yaml(objects)


def test_a_document_left_to_pyyaml_midway_through_a_generated_writer():
    """A shape met twice is written by its writer; a third instance holds a string that needs double
    quotes: that document goes to PyYAML, the others stay fast and exact."""
    plain = {"metadata": {"name": "a", "labels": {"x": "y"}}}
    objects = [plain, plain, {"metadata": {"name": "b\tc", "labels": {"x": "y"}}}, plain,
               {"metadata": {"name": "c", "labels": {"x": "\u00e9"}}}, plain]
    assert dump_yaml(objects) == reference_yaml(objects)


def test_wide_mappings_are_written_by_the_loop():
    wide = {f"key{i}": (i if i % 3 else f"v{i}") for i in range(dump._MAX_GENERATED_KEYS + 6)}
    objects = [wide, {"spec": wide}, wide, {"spec": wide}]
    assert dump_yaml(objects) == reference_yaml(objects)


def test_sequences_of_one_string_lists_in_lists_and_empty_containers():
    objects = [{"a": ["x"], "b": ["1"], "c": [["x"]], "d": [[]], "e": [{}], "f": [["x", ["y"]], "z"],
                "g": [None, True, 1]},
               [["x"], "y", {"a": ["b"]}, [], {}], ["x"], [["x"]],
               # a list whose items tuple() like the mappings' keys: not a mapping of that shape
               {"items": [{"a": 1, "b": 2}, {"a": 3, "b": 4}, ["a", "b"], {"a": 5, "b": 6}]},
               {"items": [{"a": 1, "b": 2}, {"a": 3, "b": 4}, {"b": 5, "a": 6}]}] * 3
    assert dump_yaml(objects) == reference_yaml(objects)


SIMPLE_ALPHABET = st.sampled_from("0123456789abefinoxyETNOY._/-+:~ \u00e9\ud800")


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=SIMPLE_ALPHABET, max_size=14) | st.from_regex(r"[0-9][0-9a-f.-]{0,40}", fullmatch=True))
def test_strings_are_quoted_as_the_resolvers_say(text):
    """_Lines decides plain or quoted without the resolvers' patterns for most strings (bounds on
    what they can match); the pure dumper's own choice is the reference."""
    objects = [{"v": text}, [text]]
    assert dump_yaml(objects) == reference_yaml(objects)


@pytest.mark.parametrize("pattern, char, want", [
    (r"^(?:a|bc)$", None, 2), (r"^(?:a|bc)$", "b", 1), (r"^x{2,3}-?$", "x", 3), (r"^x{2,3}-?$", "-", 1),
    (r"^[0-9]+$", "-", 0), (r"^[0-9]+$", None, math.inf), (r"^a", None, math.inf),  # no $: a prefix
    (r"^(a)\1$", None, math.inf), (r"^[^a]$", "a", 1), (r"^(?=x)x$", "x", 1), (r"^(?i:a)$", None, math.inf)])
def test_most_bounds_what_a_pattern_can_match(pattern, char, want):
    import re
    assert dump._most(re.compile(pattern), char) == want


def test_bounds_of_the_resolvers_hold():
    """Strings of the resolvers' own types within the bounds, and every bound met."""
    styles = dump._Styles()
    for text in ["2024-01-01", "1.5e-3", "-1.5e-3", "+1", "0x1F", "1_000", ".inf", "true", "FALSE", "null", "off"]:
        first = text[0]
        length, dashes, dots, _ = styles._bounds[first]
        assert len(text) <= length and text.count("-") <= dashes and text.count(".") <= dots, text


def _reference_has_finite_float(obj) -> bool:
    if type(obj) is float:
        return math.isfinite(obj)
    if type(obj) is dict:
        return any(map(_reference_has_finite_float, obj.values()))
    if type(obj) is list or type(obj) is tuple:
        return any(map(_reference_has_finite_float, obj))
    return False


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=3),
              st.floats(allow_nan=True, allow_infinity=True),
              st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e16, 1e-7])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.lists(inner, max_size=3).map(tuple),
                            st.dictionaries(st.text(max_size=2), inner, max_size=4)), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_the_float_walk_never_misses_a_float(obj):
    assert dump._has_finite_float(obj) == _reference_has_finite_float(obj)
    if not _has_nan_or_inf_anywhere(obj):
        assert dump_json(obj) == reference_json(obj)


def _has_nan_or_inf_anywhere(obj) -> bool:
    if type(obj) is float:
        return not math.isfinite(obj)
    if type(obj) is dict:
        return any(map(_has_nan_or_inf_anywhere, obj.values()))
    if type(obj) in (list, tuple):
        return any(map(_has_nan_or_inf_anywhere, obj))
    return False


def test_floats_deep_in_lists_and_tuples():
    deep: object = 1.5
    for level in range(40):
        deep = [deep] if level % 3 == 0 else (deep,) if level % 3 == 1 else {"k": deep}
    obj = {"a": [1, "2", None, True, {"b": ()}], "deep": deep}
    assert dump._has_finite_float(obj)
    assert dump_json(obj) == reference_json(obj)
    assert not dump._has_finite_float({"a": [float("nan"), (float("inf"),), {"b": -float("inf")}], "c": [[], {}, ()]})
    assert not dump._has_finite_float([])


def test_the_float_walk_does_not_look_into_other_types():
    """Objects of other types (orjson writes them its own way) are not descended into, nor are the
    floats of a dict subclass: as the walk in Python did."""
    class Sub(dict):
        pass

    obj = {"sub": Sub(x=1.5), "n": 1, "s": "t"}
    assert not dump._has_finite_float(obj)
    assert dump._has_finite_float({"sub": Sub(x=1.5), "f": [2.5]})

    # orjson writes other types its own way; json.dumps cannot: they stay with orjson
    import datetime
    stamp = {"t": datetime.datetime(2024, 4, 1, 12, 0, tzinfo=datetime.timezone.utc), "n": [1, "x"]}
    assert dump_json(stamp) == '{\n  "t": "2024-04-01T12:00:00+00:00",\n  "n": [\n    1,\n    "x"\n  ]\n}\n'


@pytest.mark.parametrize("depth", [40, 300])
def test_deep_documents(depth):
    """Writers call writers level after level; a deep document is still the pure dumper's text."""
    value: object = "x"
    for level in range(depth):
        value = {"k": value, "l": ["y"]} if level % 2 else [{"a": 1}, value]
    objects = [value, value]
    assert dump_yaml(objects) == reference_yaml(objects)
