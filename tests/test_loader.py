"""Tests for dataplane.input.loader: reading YAML/JSON manifests into documents."""
from __future__ import annotations

import io
import json
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.errors import InputError
from dataplane.input.fastyaml import _load_yaml_all, _parse_simple_yaml
from dataplane.input.loader import Document, documents_from_text, load_documents, read_documents
from dataplane.input.messages import format_value

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web}
"""


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def messages(err: InputError) -> list[str]:
    return [str(p) for p in err.problems]


# ------------------------------------------------------------------- formats


def test_multi_document_yaml_numbers_documents(tmp_path):
    path = write(tmp_path, "all.yaml", SERVICE + "---\n" + SERVICE.replace("web", "api"))
    docs = load_documents([path])
    assert [(d.source, d.index, d.obj["metadata"]["name"]) for d in docs] == [
        (path, 1, "web"),
        (path, 2, "api"),
    ]


def test_empty_documents_are_skipped_but_keep_their_position(tmp_path):
    path = write(tmp_path, "gaps.yaml", "---\n# only a comment\n---\n" + SERVICE + "---\n")
    docs = load_documents([path])
    assert [d.index for d in docs] == [2]


def test_json_file(tmp_path):
    obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}
    path = write(tmp_path, "svc.json", json.dumps(obj, indent=2))
    assert load_documents([path]) == [Document(path, 1, obj)]


def test_concatenated_json_values_are_documents(tmp_path):
    one = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}}
    two = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"}}
    path = write(tmp_path, "stream.json", json.dumps(one) + "\n" + json.dumps(two))
    assert [d.obj for d in load_documents([path])] == [one, two]


def test_json_looking_yaml_flow_style_is_read_as_yaml(tmp_path):
    path = write(tmp_path, "flow.yaml", "{apiVersion: v1, kind: Service, metadata: {name: web}}\n")
    assert load_documents([path])[0].obj["metadata"] == {"name": "web"}


def test_list_items_become_documents_numbered_within_their_list(tmp_path):
    text = """\
    apiVersion: v1
    kind: List
    items:
    - {apiVersion: v1, kind: Service, metadata: {name: a}}
    - {apiVersion: v1, kind: Service, metadata: {name: b}}
    - {apiVersion: v1, kind: Node, metadata: {name: n1}}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: c}
    """
    path = write(tmp_path, "list.yaml", text)
    docs = load_documents([path])
    assert [(d.unit, d.index, d.obj["kind"], d.obj["metadata"]["name"]) for d in docs] == [
        ("item 1 of the List in document", 1, "Service", "a"),
        ("item 2 of the List in document", 1, "Service", "b"),
        ("item 3 of the List in document", 1, "Node", "n1"),
        ("document", 2, "Service", "c"),
    ]


def test_typed_list_items_inherit_api_version_and_kind(tmp_path):
    obj = {
        "apiVersion": "v1",
        "kind": "ServiceList",
        "items": [{"metadata": {"name": "a"}}, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"}}],
    }
    path = write(tmp_path, "list.json", json.dumps(obj))
    docs = load_documents([path])
    assert [(d.obj["apiVersion"], d.obj["kind"], d.obj["metadata"]["name"]) for d in docs] == [
        ("v1", "Service", "a"),
        ("v1", "Service", "b"),
    ]


def test_empty_list_yields_nothing(tmp_path):
    path = write(tmp_path, "empty.yaml", "apiVersion: v1\nkind: List\nitems: []\n")
    assert load_documents([path]) == []


def test_list_problems(tmp_path):
    text = """\
    apiVersion: v1
    kind: List
    items:
    - {apiVersion: v1, kind: List, items: []}
    - 42
    - {kind: Service}
    ---
    apiVersion: v1
    kind: List
    items: oops
    """
    path = write(tmp_path, "bad-list.yaml", text)
    with pytest.raises(InputError) as info:
        load_documents([path])
    assert messages(info.value) == [
        f'{path}: item 1 of the List in document 1: kind: Invalid value: "List": a List may not contain another List',
        f"{path}: item 2 of the List in document 1: a manifest List item must be a mapping with apiVersion and kind, "
        "not a number",
        f"{path}: item 3 of the List in document 1: apiVersion: Required value",
        f'{path}: document 2: List: items: Invalid value: "oops": must be a list',
    ]


# ---------------------------------------------------------------------- stdin


def test_dash_reads_stdin():
    docs = load_documents(["-"], stdin=io.StringIO(SERVICE))
    assert docs == [Document("<stdin>", 1, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}})]


def test_stdin_json_is_detected_by_content():
    text = json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    assert load_documents(["-"], stdin=io.StringIO(text))[0].obj["kind"] == "Node"


def test_stdin_given_twice_is_a_problem():
    with pytest.raises(InputError) as info:
        load_documents(["-", "-"], stdin=io.StringIO(SERVICE))
    assert messages(info.value) == ["<stdin>: standard input (-) was given more than once"]


def test_files_and_stdin_keep_their_own_numbering(tmp_path):
    path = write(tmp_path, "a.yaml", SERVICE)
    docs = load_documents([path, "-"], stdin=io.StringIO(SERVICE))
    assert [(d.source, d.index) for d in docs] == [(path, 1), ("<stdin>", 1)]


# -------------------------------------------------------------------- problems


def test_missing_file_is_one_problem_naming_it(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(InputError) as info:
        load_documents([missing])
    assert messages(info.value) == [f"{missing}: cannot read: No such file or directory"]


def test_directory_is_a_problem(tmp_path):
    with pytest.raises(InputError) as info:
        load_documents([str(tmp_path)])
    assert messages(info.value) == [f"{tmp_path}: cannot read: Is a directory"]


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    path = write(tmp_path, "bad.yaml", "apiVersion: v1\nkind: Service\n  metadata: x\n")
    with pytest.raises(InputError) as info:
        load_documents([path])
    assert messages(info.value) == [
        f"{path}: line 3, column 11: cannot parse YAML: mapping values are not allowed in this context"
    ]


def test_json_syntax_error_names_line_and_column(tmp_path):
    path = write(tmp_path, "bad.json", '{\n  "apiVersion": "v1",\n}\n')
    with pytest.raises(InputError) as info:
        load_documents([path])
    assert messages(info.value) == [
        f"{path}: line 3, column 1: cannot parse JSON: Expecting property name enclosed in double quotes"
    ]


def test_not_utf8_is_a_problem(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(InputError) as info:
        load_documents([str(path)])
    assert messages(info.value) == [f"{path}: cannot read: not UTF-8 text (invalid continuation byte at byte 9)"]


def test_documents_must_be_mappings_with_api_version_and_kind(tmp_path):
    text = "- a\n- b\n---\njust text\n---\nkind: Service\n---\napiVersion: 1\nkind: [x]\n"
    path = write(tmp_path, "odd.yaml", text)
    with pytest.raises(InputError) as info:
        load_documents([path])
    assert messages(info.value) == [
        f"{path}: document 1: a manifest document must be a mapping with apiVersion and kind, not a list",
        f"{path}: document 2: a manifest document must be a mapping with apiVersion and kind, not a string",
        f"{path}: document 3: apiVersion: Required value",
        f"{path}: document 4: apiVersion: Invalid value: 1: must be a string",
        f'{path}: document 4: kind: Invalid value: []string{{"x"}}: must be a string',
    ]


def test_problems_of_every_file_are_reported_together(tmp_path):
    good = write(tmp_path, "good.yaml", SERVICE)
    bad = write(tmp_path, "bad.yaml", "a: [\n")
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(InputError) as info:
        load_documents([bad, good, missing])
    assert [p.source for p in info.value.problems] == [bad, missing]


def test_deeply_nested_input_is_a_problem_not_a_crash(tmp_path):
    path = write(tmp_path, "deep.json", "[" * 100_000)
    with pytest.raises(InputError) as info:
        load_documents([path])
    assert messages(info.value) == [f"{path}: cannot parse JSON: nested too deeply"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: " + "9" * 5000 + "\n", "cannot parse YAML: invalid value: Exceeds the limit (4300 digits) "
                                    "for integer string conversion: value has 5000 digits"),
        ("# comment\na: " + "9" * 5000 + "\n", "cannot parse YAML: invalid value: Exceeds the limit (4300 digits) "
                                                "for integer string conversion: value has 5000 digits"),
    ],
)
def test_yaml_values_python_cannot_build_are_problems(tmp_path, text, message):
    path = write(tmp_path, "values.yaml", text)
    with pytest.raises(InputError) as info:
        load_documents([path])
    assert messages(info.value) == [f"{path}: {message}"]


def test_json_number_beyond_the_digit_limit_is_a_problem(tmp_path):
    path = write(tmp_path, "big.json", '{"a": ' + "9" * 5000 + "}")
    with pytest.raises(InputError) as info:
        load_documents([path])
    assert messages(info.value) == [
        f"{path}: cannot parse JSON: Exceeds the limit (4300 digits) for integer string conversion: "
        "value has 5000 digits"
    ]


def test_self_referencing_yaml_alias_is_refused_as_go_yaml_does(tmp_path):
    """go-yaml fails with "anchor 'm' value contains itself"; a value containing itself is never built."""
    text = "apiVersion: v1\nkind: Service\nmetadata: &m {name: web, self: *m}\n---\n" + SERVICE
    path = write(tmp_path, "alias.yaml", text)
    documents, problems = read_documents([path])
    assert [str(p) for p in problems] == [f"{path}: document 1: line 3: anchor 'm' value contains itself"]
    assert [(d.index, d.obj["metadata"]["name"]) for d in documents] == [(2, "web")]


def test_format_value_looks_like_the_api_server():
    assert format_value("x") == '"x"'
    assert format_value(70000) == "70000"
    assert format_value(True) == "true"
    assert format_value(None) == "null"
    assert format_value(["10.0.0.1", "10.0.0.2"]) == '[]string{"10.0.0.1", "10.0.0.2"}'
    assert format_value({"a": [1]}) == '{"a": [1]}'
    loop: list = []
    loop.append(loop)
    assert format_value(loop) == "<list>"


# ----------------------------------------------------------------------- fuzz


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_gives_documents_or_problems(text):
    documents, problems = documents_from_text(text, "fuzz.yaml")
    assert all(isinstance(d.obj, dict) for d in documents)
    assert all(p.source == "fuzz.yaml" for p in problems)


@settings(max_examples=200, deadline=None)
@given(st.binary())
def test_any_bytes_load_or_raise_input_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "input.yaml"
    path.write_bytes(data)
    try:
        load_documents([str(path)])
    except InputError:
        pass


_YAML_SCALARS = st.one_of(
    st.sampled_from([
        "2024-13-45", "2024-01-01", "2024-02-30T10:00:00Z", "!!int x", "!!float y", "!!binary '@@'", "!!str 1",
        "0x1F", "0o17", "1_000", ".inf", "-.nan", "yes", "~", "null", "'quoted'", '"esc\\u00e9"', "&anchor v",
        "*anchor", "[a, {b: c}]", "{a: [1, 2]}", "!!python/name:os.system", "|\n  block", "9" * 4400,
    ]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=10),
)


@st.composite
def _yaml_text(draw) -> str:
    """Several YAML documents of ``key: value`` lines with tricky scalars, indentation and separators."""
    lines = []
    for _ in range(draw(st.integers(1, 8))):
        indent = "  " * draw(st.integers(0, 2))
        key = draw(st.sampled_from(["apiVersion", "kind", "metadata", "name", "- a", "spec", "? k", "items"]))
        lines.append(f"{indent}{key}: {draw(_YAML_SCALARS)}")
        if draw(st.integers(0, 4)) == 0:
            lines.append(draw(st.sampled_from(["---", "...", "- x", "#c", "%YAML 1.1"])))
    return "\n".join(lines)


@settings(max_examples=500, deadline=None)
@given(_yaml_text())
def test_yaml_like_text_gives_documents_or_problems(text):
    documents, problems = documents_from_text(text, "fuzz.yaml")
    assert all(isinstance(d.obj, dict) for d in documents)
    assert all(p.source == "fuzz.yaml" for p in problems)


def test_json_bytes_with_bom_or_bad_utf8_read_like_text(tmp_path):
    """One JSON value is read from the file's bytes: a BOM is skipped, bad UTF-8 is still named."""
    obj = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf  " + json.dumps(obj).encode())
    assert [d.obj for d in load_documents([str(path)])] == [obj]
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "caf\xe9"}}')
    with pytest.raises(InputError) as info:
        load_documents([str(path)])
    assert messages(info.value) == [f"{path}: cannot read: not UTF-8 text (invalid continuation byte at byte 62)"]
    path = tmp_path / "two.json"  # two values: read by the json module, each a document
    path.write_text(json.dumps(obj) + "\n" + json.dumps({**obj, "metadata": {"name": "n2"}}))
    assert [d.obj["metadata"]["name"] for d in load_documents([str(path)])] == ["n1", "n2"]


# ------------------------------------------- YAML as the API server reads it
# sigs.k8s.io/yaml over go-yaml v2 (anchors §5.7): each case is read by the fast
# block reader and, behind a comment, by the PyYAML path; both must agree.


def _both_paths(text: str) -> list:
    fast = _load_yaml_all(text)
    slow = _load_yaml_all("# through PyYAML\n" + text)
    assert _parse_simple_yaml(text) is not None and _parse_simple_yaml("# c\n" + text) is None
    assert fast == slow and [type(d) for d in fast] == [type(d) for d in slow]
    return fast


@pytest.mark.parametrize("scalar, expected", [
    ("1:20", "1:20"), ("190:20:30.15", "190:20:30.15"),  # no base 60
    ("017", 15), ("0o17", 15), ("0O17", 15), ("0x1F", 31), ("0X1f", 31), ("0b101", 5), ("-0b101", -5),
    ("+12", 12), ("-0", 0), ("0x", "0x"), ("08", 8),  # 08 is no octal: the float 8, which JSON writes as 8
    ("1_000", 1000), ("0x_1F", 31), ("-1_0", -10), ("_1", "_1"),  # "_" removed before parsing
    ("y", True), ("Y", True), ("yes", True), ("On", True), ("TRUE", True),
    ("n", False), ("NO", False), ("off", False), ("False", False), ("yEs", "yEs"), ("oN", "oN"),
    ("~", None), ("null", None), ("Null", None), ("nULL", "nULL"),
    ("80.0", 80), ("8e1", 80), ("1.5", 1.5), (".5", 0.5), ("-0.5e1", -5), ("1e21", 1e21), ("1e400", "1e400"),
    ("18446744073709551615", 18446744073709551615), ("99999999999999999999", 10**20),
    ("2024-01-01", "2024-01-01"), ("2024-13-45", "2024-13-45"), ("=", "="), ("<<", "<<"),
    ("10.96.0.1", "10.96.0.1"), ("1.2.3", "1.2.3"), ("1-2-3-4", "1-2-3-4"), ("-1e-5", -1e-05), ("1e-5", 1e-05),
])
def test_plain_scalars_resolve_as_go_yaml_v2_does(scalar, expected):
    value = _both_paths(f"v: {scalar}\n")[0]["v"]
    assert value == expected and type(value) is type(expected)


def test_keys_become_the_json_keys_sigs_yaml_makes():
    text = "yes: a\nn: b\n1.5: c\n1e6: d\n0x10: e\n-0.0: f\n123456789.0: g\n0.00001: h\n.inf: i\n017: j\n"
    assert list(_both_paths(text)[0]) == [
        "true", "false", "1.5", "1e+06", "16", "-0", "1.2345679e+08", "1e-05", ".inf", "15"]


@pytest.mark.parametrize("text, line, shown", [
    ("~: x\n", 1, "null"), ("a: 1\nnull: x\n", 2, "null"),
    ("18446744073709551615: x\n", 1, "18446744073709551615"),  # a uint64: not an int key in Go
])
def test_keys_json_cannot_have_are_problems(tmp_path, text, line, shown):
    path = write(tmp_path, "keys.yaml", text + "---\n" + SERVICE)
    documents, problems = read_documents([path])
    assert [str(p) for p in problems] == [f"{path}: document 1: line {line}: unsupported map key: {shown}"]
    assert [d.index for d in documents] == [2]


DUPLICATES = """\
apiVersion: v1
kind: Service
metadata:
  name: web
  name: api
spec:
  ports:
  - port: 80
    port: 81
  selector:
    app: a
  selector:
    app: b
"""


@pytest.mark.parametrize("comment", ["", "# read by PyYAML\n"])
def test_keys_set_twice_are_errors_naming_file_document_and_line(tmp_path, comment):
    """kubectl's strict decoding: every key set twice, at the line of its second value (go-yaml's line:
    for a block mapping, that of its first entry); the other documents are still read."""
    path = write(tmp_path, "dup.yaml", comment + SERVICE + "---\n" + DUPLICATES + "---\n" + SERVICE)
    documents, problems = read_documents([path])
    shift = 4 + len(comment.splitlines())
    assert [str(p) for p in problems] == [
        f'{path}: document 2: line {shift + 5}: key "name" already set in map',
        f'{path}: document 2: line {shift + 9}: key "port" already set in map',
        f'{path}: document 2: line {shift + 13}: key "selector" already set in map',
    ]
    assert [d.index for d in documents] == [1, 3]


def test_keys_equal_once_made_json_keys_are_set_twice(tmp_path):
    path = write(tmp_path, "dup.yaml", "a:\n  80: x\n  '80': y\n  on: 1\n  true: 2\n")
    documents, problems = read_documents([path])
    assert [p.message for p in problems] == [
        'line 3: key "80" already set in map', 'line 5: key "true" already set in map']


def test_merge_keys_merge_and_strict_decoding_refuses_overriding_one(tmp_path):
    merged = "base: &b {a: 1, b: 2}\nm:\n  <<: *b\n  c: 3\nk: {<<: [*b, {d: 4}]}\n"
    assert _load_yaml_all(merged) == [{"base": {"a": 1, "b": 2}, "m": {"a": 1, "b": 2, "c": 3},
                                       "k": {"a": 1, "b": 2, "d": 4}}]
    path = write(tmp_path, "merge.yaml", "base: &b {a: 1}\nm:\n  <<: *b\n  a: 2\n")
    assert [p.message for p in read_documents([path])[1]] == ['line 4: key "a" already set in map']


@pytest.mark.parametrize("text, expected", [
    ("a: !!str 017\n", {"a": "017"}), ("a: !!float 1\n", {"a": 1}), ("a: !!bool yes\n", {"a": True}),
    ("a: !!int 0x1F\n", {"a": 31}), ("a: !!null\n", {"a": None}), ("a: !!timestamp 2024-01-01\n", {"a": "2024-01-01"}),
])
def test_explicit_tags_keep_their_meaning(text, expected):
    assert _load_yaml_all(text) == [expected]


@pytest.mark.parametrize("text, message", [
    ("a: !!int 1:20\n", "line 1: cannot decode !!str `1:20` as a !!int"),
    ("a: !!int x\n", "line 1: cannot decode !!str `x` as a !!int"),
    ("a: !!bool 1\n", "line 1: cannot decode !!int `1` as a !!bool"),
    ("a: !!timestamp x\n", "line 1: cannot decode !!str `x` as a !!timestamp"),
])
def test_explicit_tags_that_do_not_fit_are_problems(tmp_path, text, message):
    path = write(tmp_path, "tags.yaml", text)
    assert [str(p) for p in read_documents([path])[1]] == [f"{path}: document 1: {message}"]


def test_a_port_written_in_base_60_must_be_an_integer(tmp_path):
    from dataplane.input.cluster import load_cluster

    path = write(tmp_path, "svc.yaml", """\
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: default}
        spec:
          ports:
          - {name: a, port: 1:20}
          - {name: b, port: 80.0, targetPort: 017}
        """)
    with pytest.raises(InputError) as info:
        load_cluster([path])
    assert messages(info.value) == [
        f'{path}: document 1: Service default/web: spec.ports[0].port: Invalid value: "1:20": must be an integer']
