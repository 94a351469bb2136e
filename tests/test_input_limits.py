"""Input limits (issue 12 item 9): alias bombs, value sizes in messages, capped and escaped reports."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataplane import errors
from dataplane.cli import main
from dataplane.errors import InputError, Problem, escape_text, report_lines
from dataplane.input.cluster import load_cluster
from dataplane.input.fastyaml import RejectedDocument, _load_yaml_all
from dataplane.input.goyaml import MAX_ALIAS_TEXT, GoSafeLoader
from dataplane.input.loader import read_documents
from dataplane.input.messages import format_value, quote

ROOT = Path(__file__).resolve().parent.parent

# The "billion laughs" of issue 12: 9**9 (387 million) "lol"s once expanded, in about 600 bytes.
BOMB = (
    "apiVersion: v1\nkind: Service\nmetadata:\n  name: bomb\n  namespace: default\n"
    "a: &x1 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]\n" for i in range(2, 10))
    + "spec:\n  clusterIP: 10.96.0.10\n  ports: *x9\n"
)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------- aliases


def test_the_alias_bomb_is_one_line_error_within_seconds(tmp_path):
    assert len(BOMB) < 654
    path = write(tmp_path, "bomb.yaml", BOMB)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-I", "-m", "dataplane", "compile", "-f", path, "--node", "n1"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert time.monotonic() - started < 5
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == [f"error: {path}: document 1: document contains excessive aliasing"]


def test_the_bomb_is_refused_among_documents_that_are_read(tmp_path):
    service = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
    path = write(tmp_path, "mixed.yaml", service + "---\n" + BOMB + "---\n" + service.replace("web", "api"))
    started = time.monotonic()
    documents, problems = read_documents([path])
    assert time.monotonic() - started < 1
    assert [str(p) for p in problems] == [f"{path}: document 2: document contains excessive aliasing"]
    assert [(d.index, d.obj["metadata"]["name"]) for d in documents] == [(1, "web"), (3, "api")]


def _fan_out(aliases: int) -> str:
    """A ten-node anchored mapping used ``aliases`` times."""
    body = ", ".join(f"k{i}: v{i}" for i in range(5))
    return "base: &b {" + body + "}\nuses:\n" + "- *b\n" * aliases


def test_aliasing_within_go_yamls_bound_is_read_and_shared():
    """go-yaml allows up to 99% of the nodes it decodes to come from aliases in a small document: an
    alias of 10 nodes used 1,000 times is fine (91%) and stays one shared object here."""
    uses = _load_yaml_all(_fan_out(1000))[0]["uses"]
    assert len(uses) == 1000 and all(use is uses[0] for use in uses)


def test_aliasing_beyond_go_yamls_ratio_is_refused():
    """A nine-fold fan-out four levels deep decodes 6,561 copies of a few nodes: over 99%."""
    levels = "a: &x1 [v, v, v, v, v, v, v, v, v]\n" + "".join(
        f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]\n" for i in range(2, 5))
    assert _load_yaml_all(levels) == [RejectedDocument(("document contains excessive aliasing",))]
    assert isinstance(_load_yaml_all(levels.rsplit("x4:", 1)[0])[0], dict)  # three levels: 92%, read


def test_aliases_repeating_too_much_text_are_refused():
    chunk = "x" * (1 << 20)
    text = f"a: &s {chunk}\nb: [" + ", ".join(["*s"] * (MAX_ALIAS_TEXT >> 20)) + "]\n"
    assert _load_yaml_all(text)[0]["b"][0] == chunk  # exactly the limit: read
    refused = _load_yaml_all(text.replace("]\n", ", *s]\n"))
    assert refused == [RejectedDocument((
        f"document contains excessive aliasing: aliases repeat over {MAX_ALIAS_TEXT >> 20} MiB of text",))]


def test_the_pyyaml_fallback_loader_refuses_the_bomb_too():
    import yaml

    from dataplane.input.goyaml import DocumentError

    with pytest.raises(DocumentError, match="excessive aliasing"):
        list(yaml.load_all(BOMB, Loader=GoSafeLoader))


# ---------------------------------------------------- values in messages


def test_format_value_looks_only_at_what_it_shows():
    nested: list = ["lol"] * 9
    for _ in range(30):  # 9**31 strings once expanded
        nested = [nested] * 9
    started = time.monotonic()
    shown = [format_value(nested), format_value({"a": nested}), format_value("x" * 10_000_000),
             format_value(["y" * 1000] * 100_000), quote("z" * 10_000_000)]
    assert time.monotonic() - started < 0.5
    assert all(len(text) <= 120 and text.endswith("...") for text in shown)
    assert shown[2] == '"' + "x" * 116 + "..."
    assert shown[3].startswith('[]string{"yyy')


def test_format_value_of_an_integer_beyond_the_digit_limit():
    assert format_value(1 << 20000) == "<a 20001-bit integer>"
    assert format_value([1 << 20000]) == "[<a 20001-bit integer>]"


def test_a_huge_yaml_port_value_is_reported_in_one_short_line(tmp_path, capsys):
    text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  ports:\n" \
           "  - name: a\n    port: 0x" + "f" * 20_000 + "\n  - name: b\n    port: " + "9" * 3000 + "x\n"
    path = write(tmp_path, "big.yaml", text)
    code, out, err = run(["compile", "-f", path, "--node", "n1"], capsys)
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert len(lines) == 2 and all(len(line) < 300 for line in lines)
    assert "spec.ports[0].port: Invalid value: <a 80000-bit integer>: must be between" in lines[0]
    assert 'spec.ports[1].port: Invalid value: "9999' in lines[1] and "...: must be an integer" in lines[1]


# ------------------------------------------------------------- escaping


@pytest.mark.parametrize("raw, shown", [
    ("a\nb", "a\\nb"), ("a\rb", "a\\rb"), ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"), ("a\tb", "a\\tb"),
    ("\x9b2J", "\\x9b2J"), ("a\u2028b", "a\\u2028b"), ("\u202eevil", "\\u202eevil"), ("\x7f", "\\x7f"),
    ("caf\u00e9 \\n", "caf\u00e9 \\n"),  # printable text, backslashes included, is left alone
])
def test_escape_text_writes_what_is_not_printable_as_repr_does(raw, shown):
    assert escape_text(raw) == shown


def test_problem_text_is_one_escaped_line_with_short_parts():
    problem = Problem("in\n.yaml", 2, "Service a/b\x1b[2J" + "n" * 1000, "spec\rx", 'Invalid value: "v"\nerror: forged')
    text = str(problem)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert text.startswith("in\\n.yaml: document 2: Service a/b\\x1b[2Jnnn")
    assert "n" * 300 not in text and "...: spec\\rx: " in text
    assert text.endswith('Invalid value: "v"\\nerror: forged')


def test_names_from_the_input_cannot_forge_errors_or_colour_the_terminal(tmp_path, capsys):
    evil = "web\x1b[31m\nerror: all good\r\x9b2J"
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": evil, "namespace": "default"},
               "spec": {"ports": [{"port": 70000}]}}
    path = write(tmp_path, "evil.json", json.dumps(service))
    code, out, err = run(["compile", "-f", path, "--node", "n1"], capsys)
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"error: {path}: document 1: Service ") for line in lines)
    assert not any(char in err for char in "\x1b\r\x9b")


def test_kinds_from_the_input_cannot_forge_warnings_or_colour_the_terminal(tmp_path, capsys):
    gadget = {"apiVersion": "v1", "kind": "Gadget\x1b]0;title\x07\nwarning: forged\u2028",
              "metadata": {"name": "g\x1b[2J"}}
    path = write(tmp_path, "gadget.json", json.dumps(gadget))
    code, out, err = run(["allocate", "-f", path], capsys)
    assert code == 0
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {path}: document 1: ignoring v1 ")
    assert not any(char in err for char in "\x1b\x07\u2028") and "forged\\u2028" in err


def test_warnings_are_printed_escaped(capsys):
    from dataplane.cli_common import warn

    warn(["Service a/b\x1b[31m: red\nwarning: forged\r", "plain"])
    assert capsys.readouterr().err == "warning: Service a/b\\x1b[31m: red\\nwarning: forged\\r\nwarning: plain\n"


# ------------------------------------------------------------------ caps


def test_report_lines_caps_and_counts_the_rest(monkeypatch):
    items = [f"p{i}" for i in range(25)]
    assert report_lines(items, "problem") == [*items[:20], "... and 5 more problems"]
    assert report_lines(items, "warning", limit=24) == [*items[:24], "... and 1 more warning"]
    assert report_lines(items, "problem", limit=0) == items
    assert report_lines(items[:20], "problem") == items[:20]
    monkeypatch.setattr(errors, "MAX_REPORTED", 3)
    assert report_lines(items, "problem") == ["p0", "p1", "p2", "... and 22 more problems"]
    assert report_lines(["x" * 5000], "warning") == ["x" * 997 + "..."]


def test_input_error_text_is_capped_but_keeps_every_problem():
    problems = [Problem("f.yaml", i, "", "", "bad") for i in range(1, 31)]
    err = InputError(problems)
    assert len(err.problems) == 30
    assert str(err).splitlines()[-2:] == ["f.yaml: document 20: bad", "... and 10 more problems"]


def _services(count: int, port: int) -> dict:
    return {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s{i}", "namespace": "default"},
         "spec": {"clusterIP": "None", "ports": [{"name": "p", "port": port}]}} for i in range(count)]}


def test_two_thousand_bad_services_print_at_most_cap_plus_one_lines(tmp_path, capsys):
    path = write(tmp_path, "bad.json", json.dumps(_services(2000, 70000)))
    code, out, err = run(["compile", "-f", path, "--node", "n1"], capsys)
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert len(lines) == errors.MAX_REPORTED + 1
    assert lines[0] == (f"error: {path}: item 1 of the List in document 1: Service default/s0: spec.ports[0].port: "
                        "Invalid value: 70000: must be between 1 and 65535, inclusive")
    assert lines[-1] == "error: ... and 1980 more problems"
    with pytest.raises(InputError) as info:
        load_cluster([path])
    assert len(info.value.problems) == 2000  # the library keeps every one


def test_two_thousand_warnings_print_at_most_cap_plus_one_lines(tmp_path, capsys, monkeypatch):
    items = [{"apiVersion": "v1", "kind": "Widget", "metadata": {"name": f"w{i}"}} for i in range(2000)]
    path = write(tmp_path, "widgets.json", json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    code, out, err = run(["allocate", "-f", path], capsys)
    assert code == 0
    lines = err.splitlines()
    assert len(lines) == errors.MAX_REPORTED + 1 and lines[-1] == "warning: ... and 1980 more warnings"
    monkeypatch.setattr(errors, "MAX_REPORTED", 0)  # the library setting: every warning
    code, out, err = run(["allocate", "-f", path], capsys)
    assert len(err.splitlines()) == 2000
