"""The fast YAML readers in dataplane.input.fastyaml build exactly what GoSafeLoader builds.

GoSafeLoader (dataplane.input.goyaml) is PyYAML's safe loader reading YAML as the API
server does (go-yaml v2). ``_parse_simple_yaml`` reads the plain block subset
that kubectl writes and must either give up (None) or agree with it (types
included: ``1`` is not ``True``); ``_load_yaml_all`` (what the loader uses)
must agree with it on every input, errors and refused documents included.
"""
from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.input.fastyaml import RejectedDocument, _load_yaml_all, _may_have_aliases, _parse_simple_yaml
from dataplane.input.goyaml import DocumentError, GoSafeLoader


def _pyyaml(text: str):
    """What GoSafeLoader reads, document by document (a refused one as a RejectedDocument)."""
    loader = GoSafeLoader(text)
    try:
        documents = []
        while loader.check_data():
            try:
                documents.append(loader.get_data())
            except DocumentError as err:
                documents.append(RejectedDocument(err.messages))
        return "ok", documents
    except Exception as err:  # noqa: BLE001 - any failure is an outcome to compare
        return "error", f"{type(err).__name__}: {err}"
    finally:
        loader.dispose()


def _ours(text: str):
    try:
        return "ok", _load_yaml_all(text)
    except Exception as err:  # noqa: BLE001
        return "error", f"{type(err).__name__}: {err}"


def same(a, b) -> bool:
    """Equal values of equal types, all the way down (and NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(k, kb) and same(a[k], b[kb]) for k, kb in zip(a, b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


KUBECTL = """\
apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    annotations:
      meta.helm.sh/release-name: team-00
    creationTimestamp: "2024-04-01T12:00:00Z"
    labels:
      app.kubernetes.io/name: api-00000
    name: api-00000
    namespace: team-00
    resourceVersion: '200000'
  spec:
    clusterIP: 10.96.0.16
    clusterIPs:
    - 10.96.0.16
    ports:
    - name: http
      port: 80
      protocol: TCP
      targetPort: 8080
    - port: 53
      protocol: UDP
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 10.128.0.2
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-01
    zone: zone-a
  kind: EndpointSlice
  metadata:
    name: api-00000-x7k2p
  ports: []
kind: List
metadata:
  resourceVersion: ""
"""


def test_kubectl_output_is_read_by_the_fast_reader():
    got = _parse_simple_yaml(KUBECTL)
    assert got is not None
    assert same(got, _pyyaml(KUBECTL)[1])


@pytest.mark.parametrize("text", [
    "", "\n\n", "---\n", "---\n---\n", "a: 1\n---\n", "---\n---\na: 1\n", "a: 1\n---\nb: 2\n",
    "a:\n- 1\n- 2\nb: 3\n", "- - a\n  - b\n- c\n", "-   a\n-   b: 1\n    c: 2\n",
    "a: 0755\nb: 1:30\nc: on\nd: ~\ne: .inf\nf: -5\ng: 1_000\nh: 0x1F\ni: 1.5e3\nj: .NaN\nk: NO\n",
    "80: x\ntrue: y\n'81': w\n1.5: v\n", "a: x\n\n   \nb: y\n", "a: 2024-01-01\nb: =\nc: <<\nd: y\n",
    "k: 'it''s'\nj: \"q\"\n", "a: b c  d   \n",
    "  a: 1\n  b: 2\n", "a: [] \nb: {}\n", "a:\n  b:\n    c: d\n  e: f\n", "a:\n  a: 1\nb:\n  a: 2\n",
    # document start with trailing spaces
    "a: 1\n--- \nb: 2\n", "---   \n", "--- \n--- \n",
    # lines that share all but their value (one key, many kinds of value)
    ("- name: a\n  port: 80\n- name: b\n  port: '80'\n- name: c\n  port: {}\n- name: d\n  port:\n"
     "- name: e\n  port: []\n- name: f\n  port:\n    x: 1\n- name: g\n  port: \n"),
    "a:\n  b: 1\nc:\n  b: 2\n  d:\n  - b: 3\n", "- a: 1\n- - a: 2\n  - - a: 3\n",
    # quoted keys holding ": " (the text before the first ": " is not the key)
    "'a: b': c\n", "- 'a: b': c\n  'x': 1\n", "\"a: b\": c\n'a': 1\n",
    # "- scalar" items of every shape, and values that only look like numbers
    "- x\n-  y\n- z \n- -1\n- 'q'\n- x:\n- {}\n- []\n- \"d\"\n- 0x1F\n- .5\n",
    ("a: 10.96.0.1\nb: 1.2.3\nc: 1e5x\nd: 0o17\ne: 12:30:45\nf: 0b101\ng: +12\nh: -0.5\ni: 1_2\nj: 0x_1F\n"
     "k: 123abc\nl: 9.\nm: 1e+5\nn: 190:20:30.15\no: 1.5e3.\n"),
    "- - - x\n    - y\n  - z\n- - a: 1\n    b: 2\n  - c\n", "-   a: 1\n    b: 2\n-   c\n",
    "a: 1\n\n  \n     \nb:\n\n  c: 2\n", "a: 'x' \nb: \"y\"  \n",
])
def test_fast_reader_agrees_with_pyyaml(text):
    got = _parse_simple_yaml(text)
    assert got is not None, "expected the fast reader to read this"
    status, expected = _pyyaml(text)
    assert status == "ok" and same(got, expected)


@pytest.mark.parametrize("text", [
    "# comment\na: 1\n", "a: 1 # note\n", "a: &x 1\nb: *x\n", "a: !!str 1\n", "a: {b: 1}\n", "a: [1]\n",
    "a: |\n  text\n", "a: >\n  text\n", "a: b\na: c\n", "<<: {a: 1}\n", "80: x\n'80': w\n", "~: x\n",
    "a: 1\n<<: x\n", "- a:\n    b: 1\n    b: 2\n", "y: 1\n'true': 2\n", "a: \"x\\ty\"\n", "a: caf\u00e9\n",
    "a: 1\r\nb: 2\r\n", "a:\tb\n", "--- a\n", "...\n", "a: b: c\n", "a: b\n  c\n", "- a\nb: 1\n", "hello\n",
    "a:\n  - b\n  c: d\n", "? a\n: b\n", "a: 'x\n  y'\n", "-\n  a\n", "a: -\n", "a: :b\n", "a: 'b' c\n",
    "a: b\x0cc\n", "a: b\x0bc\n", "a: b\x1cc\n", "a: b\x7f\n", "a\x1cb: c\n", "a: b\x85\n", "- a\r\n",
    "a: 1\n---x\n", "--- # c\n", "... \n", "k: v\n" + "x" * 1001 + ": 1\n", "a: b\n- c\n", "- a\n  b: c\n",
])
def test_fast_reader_leaves_everything_else_to_pyyaml(text):
    assert _parse_simple_yaml(text) is None
    assert _ours(text)[0] == _pyyaml(text)[0]
    if _pyyaml(text)[0] == "ok":
        assert same(_ours(text)[1], _pyyaml(text)[1])


_KEYS = st.sampled_from([
    "a", "b", "name", "port", "80", "true", "on", "null", "~", "'q'", '"d"', "'it''s'", "a b", "x:y", "<<", "=",
    "-x", "?x", "#c", "k #c", "k ", "", "1.5", "0x1F", "2024-01-01", "[]", "{}", "'a: b'", '"a: b"',
])
_VALUES = st.sampled_from([
    "", "1", "-1", "0755", "1:30", "1_000", ".inf", ".nan", "1e3", "1.5e3", "yes", "No", "on", "OFF", "true",
    "False", "null", "~", "Null", "x", "a b", "a  b", "a: b", "a #b", "a#b", "x:", ":x", "-", "- x", "-x", "?",
    "'s'", "''", "'it''s'", "'un'closed'", '"d"', '""', '"e\\n"', "{}", "[]", "{a: 1}", "[1]", "&a x", "*a", "!t x",
    "|", ">", "%x", "@x", "`x", "2024-01-01", "2024-01-01T10:00:00Z", "10.96.0.1", "node-01", "=", "<<", "a,b",
    "[x", "x]", "caf\u00e9", "a\tb", "'x", 'x"', "x'y",
])


@st.composite
def _block_yaml(draw) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        indent = " " * draw(st.sampled_from([0, 0, 0, 1, 2, 2, 4, 4, 6]))
        shape = draw(st.sampled_from(["map", "map", "mapnone", "seq", "seqmap", "seqseq", "doc", "blank", "end",
                                      "comment", "dash"]))
        key, value = draw(_KEYS), draw(_VALUES)
        if shape == "map":
            lines.append(f"{indent}{key}: {value}")
        elif shape == "mapnone":
            lines.append(f"{indent}{key}:" + draw(st.sampled_from(["", " "])))
        elif shape == "seq":
            lines.append(f"{indent}- {value}")
        elif shape == "seqmap":
            lines.append(f"{indent}-{' ' * draw(st.integers(1, 3))}{key}: {value}")
        elif shape == "seqseq":
            lines.append(f"{indent}- - {value}")
        elif shape == "doc":
            lines.append(draw(st.sampled_from(["---", "--- ", "...", "--- x"])))
        elif shape == "blank":
            lines.append(indent)
        elif shape == "end":
            lines.append(f"{indent}{value}")
        elif shape == "comment":
            lines.append(f"{indent}# {value}")
        else:
            lines.append(f"{indent}-")
    return "\n".join(lines) + draw(st.sampled_from(["", "\n"]))


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_block_yaml())
def test_fast_readers_agree_with_pyyaml_on_random_block_yaml(text):
    status, expected = _pyyaml(text)
    fast = _parse_simple_yaml(text)
    if fast is not None:
        assert status == "ok", f"fast reader accepted what PyYAML rejects: {expected}"
        assert same(fast, expected)
    ours = _ours(text)
    assert ours[0] == status
    if status == "ok":
        assert same(ours[1], expected)
    else:
        assert ours[1] == expected  # the very same error


def test_fast_pyyaml_path_keeps_aliases_shared():
    docs = _load_yaml_all("a: &m {x: 1}\nb: *m\nc: &s [1]\nd: *s\n")
    assert docs[0]["a"] is docs[0]["b"] and docs[0]["c"] is docs[0]["d"]


def test_an_anchor_containing_itself_is_refused_as_go_yaml_does():
    text = "a: 1\n---\nmeta: &m {name: web, self: *m}\n---\nb: 2\n"
    expected = [{"a": 1}, RejectedDocument(("line 3: anchor 'm' value contains itself",)), {"b": 2}]
    assert _load_yaml_all(text) == expected
    assert _pyyaml(text) == ("ok", expected)


_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_nan=False, allow_infinity=True, width=64),
    st.text(alphabet=st.sampled_from("ab z09:-_.#'\"/@&*!|>%{}[],?~=<\\\t\u00e9"), max_size=12),
    st.sampled_from(["yes", "No", "on", "null", "~", "0755", "1:30", "1_000", "2024-01-01", "10.96.0.1", "<<", "="]),
)
_KEY_SCALARS = st.one_of(st.booleans(), st.integers(-1000, 1000), st.none(),
                         st.text(alphabet=st.sampled_from("abz09:-_. #'\"/"), max_size=10))
_TREES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEY_SCALARS, inner, max_size=4)),
    max_leaves=25,
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_TREES, min_size=1, max_size=3), st.sampled_from([2, 4]))
def test_fast_readers_agree_with_pyyaml_on_dumped_documents(docs, indent):
    text = yaml.dump_all(docs, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), default_flow_style=False,
                         indent=indent, width=1 << 16)
    status, expected = _pyyaml(text)
    assert status == "ok"
    fast = _parse_simple_yaml(text)
    if fast is not None:
        assert same(fast, expected)
    assert same(_load_yaml_all(text), expected)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_KEYS, _VALUES, _VALUES), min_size=2, max_size=4),
       st.sampled_from(["- ", "  - ", "-   ", "- - "]))
def test_fast_reader_reads_lines_differing_only_in_value_like_pyyaml(entries, dash):
    """Items repeating the same keys with other values: their lines share all but the value."""
    pad = " " * len(dash)
    items = "".join(f"{dash}name: {name}\n{pad}{key}: {value}\n" for key, name, value in entries)
    tops = "".join(f"{key}: {value}\n---\n" for key, _, value in entries)
    for text in (items, tops, items.replace("\n", "  \n")):
        fast = _parse_simple_yaml(text)
        if fast is not None:
            status, expected = _pyyaml(text)
            assert status == "ok", f"fast reader accepted what PyYAML rejects: {expected}"
            assert same(fast, expected)


def test_fast_reader_reads_deep_nesting_like_pyyaml_and_leaves_too_deep_to_it():
    def nested(depth: int) -> str:
        return "".join("  " * level + "k:\n" for level in range(depth)) + "  " * depth + "k: v\n"

    deep = nested(600)
    got = _parse_simple_yaml(deep)
    assert got is not None
    assert got == _pyyaml(deep)[1]  # only str keys and values: == is exact (and not recursive in Python)
    too_deep = nested(1100)  # beyond libyaml's 1000 levels: PyYAML refuses it
    assert _parse_simple_yaml(too_deep) is None
    assert _ours(too_deep) == _pyyaml(too_deep)


def _has_shared_node(text: str) -> bool:
    """True if some node of the composed documents is reached twice (an alias), False otherwise or on error."""
    loader = GoSafeLoader(text)
    try:
        while loader.check_node():
            seen: set[int] = set()
            stack = [loader.get_node()]
            while stack:
                node = stack.pop()
                if id(node) in seen:
                    return True
                seen.add(id(node))
                if isinstance(node.value, list):
                    for item in node.value:
                        stack.extend(item if isinstance(item, tuple) else (item,))
        return False
    except yaml.YAMLError:
        return False
    finally:
        loader.dispose()


@pytest.mark.parametrize("text", [
    "a: &x 1\nb: *x\n", "a: &x 1\nb: [*x,*x]\n", "a: &x 1\nb: {c: *x}\n", 'a: &x 1\nb: {"c":*x}\n',
    "a: &x 1\nb:\t*x\n", "&x a: *x\n", "a: &x 1\n? *x\n: 2\n", "- &x 1\n- *x\n", "\ufeffa: &x 1\nb: *x\n",
])
def test_alias_check_runs_for_every_alias(text):
    assert _has_shared_node(text) and _may_have_aliases(text)


@pytest.mark.parametrize("text", ["a: '*x' &\n", 'a: "b*c" &\n', "a: b*c &\n", "a: *x\n", "a: 1\n# *x\n"])
def test_alias_check_is_skipped_where_no_alias_can_be(text):
    assert not _may_have_aliases(text)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_block_yaml())
def test_text_said_to_hold_no_alias_holds_none(text):
    if not _may_have_aliases(text):
        assert not _has_shared_node(text)
