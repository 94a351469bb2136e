"""Rule injection (issue 12): no input string can add to or change rules text beyond our own objects.

Input reaches the rules text in two steps, and each is tested here without root:

* validation (:mod:`dataplane.input`): ``detectLocal`` interface names must be Linux
  interface names free of rule-language characters, and every string field of every kind we
  read, filled with rule-language metacharacters, gives either problems (one line each) or
  rules that touch only ``table ip|ip6 kube-proxy`` / our own iptables chains (a property test
  over :data:`injection_cases.FIELDS`);
* rendering (:mod:`dataplane.ruletext` and the backends): a plan built in code, which skips
  validation, is refused with :class:`RuleTextError` wherever a value could not stand in the
  text as it is.

netns_tests/test_rule_injection.py loads the same cases into a namespace holding other
programs' rules.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import injection_cases as ic
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dataplane.backends import iptables as ipt
from dataplane.backends import nftables as nft
from dataplane.compiler import compile_rules
from dataplane.controllers.endpointslices import with_derived_slices
from dataplane.errors import DataplaneError, InputError, UsageError
from dataplane.input.cluster import parse_cluster
from dataplane.plan import LocalDetector, NodePlan, NodePortDestinations, PlanEndpoint, build_plan
from dataplane.ruletext import RuleTextError, interface_name_errors, nft_string

BACKENDS = {"iptables": ipt, "nftables": nft}
PREFIX, BRIDGE = ("detectLocal", "interfaceNamePrefix"), ("detectLocal", "bridgeInterface")


def _problems(docs: dict[str, dict]) -> list[str]:
    """The problem lines of parsing ``docs`` ([] when they are valid)."""
    try:
        parse_cluster(ic.documents(docs))
    except InputError as err:
        return [str(p) for p in err.problems]
    return []


def _config_with(path: tuple[str, str], value: str, mode: str = "InterfaceNamePrefix") -> dict[str, dict]:
    return ic.with_value(ic.base_documents(mode), ("config", path), value)


def _assert_one_line(text: str) -> None:
    assert "\n" not in text and "\r" not in text, repr(text)


# ---------------------------------------------------------------- detectLocal validation


@pytest.mark.parametrize("path,value", [
    (PREFIX, "cali"), (PREFIX, "veth"), (PREFIX, "abcdefghijklmn"), (PREFIX, "br-1.a_B"),
    (BRIDGE, "cbr0"), (BRIDGE, "abcdefghijklmno"), (BRIDGE, "docker0"), (BRIDGE, "br-1234567890ab"),
])
def test_interface_names_linux_accepts_are_accepted(path, value):
    assert _problems(_config_with(path, value)) == []


@pytest.mark.parametrize("path,value,message", [
    (PREFIX, "abcdefghijklmno", "must be no more than 14 bytes (the wildcard the rules append makes 15, "
                                "Linux's limit for interface names)"),
    (BRIDGE, "abcdefghijklmnop", "must be no more than 15 bytes (Linux's limit for interface names)"),
    (BRIDGE, "br\u00e9", 'must consist of printable ASCII characters, without spaces (found "\\u00e9")'),
    (BRIDGE, ".", "must not be '.' or '..'"),
    (PREFIX, "..", "must not be '.' or '..'"),
    (BRIDGE, "br:0", "must not contain ':' (refused by Linux in interface names)"),
    (PREFIX, "a/b", "must not contain '/' (refused by Linux in interface names)"),
    (BRIDGE, "br 0", 'must consist of printable ASCII characters, without spaces (found " ")'),
    (PREFIX, "a\tb", 'must consist of printable ASCII characters, without spaces (found "\\t")'),
    (BRIDGE, "a\x00", 'must consist of printable ASCII characters, without spaces (found "\\u0000")'),
    (PREFIX, 'a"b', "must not contain '\"' (special in iptables-restore and nft rule text)"),
    (PREFIX, "a'b", "must not contain \"'\" (special in iptables-restore and nft rule text)"),
    (BRIDGE, "a\\b", "must not contain '\\\\' (special in iptables-restore and nft rule text)"),
    (BRIDGE, "a;b{c}", "must not contain ';' or '{' or '}' (special in iptables-restore and nft rule text)"),
    (PREFIX, "a#b$c@d`", "must not contain '`' or '#' or '$' or '@' (special in iptables-restore and nft rule text)"),
    (PREFIX, "cali*", "must not contain '*' (interface wildcards in rules)"),
    (BRIDGE, "br+", "must not contain '+' (interface wildcards in rules)"),
])
def test_interface_names_that_cannot_be_written_into_rules_are_problems(path, value, message):
    field = ".".join(path)
    problems = _problems(_config_with(path, value))
    assert problems == [f"hostile.json: document 1: KubeProxyConfiguration proxy: {field}: "
                        f"Invalid value: {json.dumps(value, ensure_ascii=False)}: {message}"]


@pytest.mark.parametrize("mode", ic.DETECT_MODES)
def test_both_interface_fields_are_checked_whichever_mode_is_selected(mode):
    docs = _config_with(BRIDGE, "br;0", mode)
    docs["config"]["detectLocal"]["interfaceNamePrefix"] = "x}"
    fields = [line.split(": ")[3] for line in _problems(docs)]
    assert fields == ["detectLocal.bridgeInterface", "detectLocal.interfaceNamePrefix"]


def test_the_selected_field_must_still_be_set_and_the_other_may_be_empty():
    docs = _config_with(PREFIX, "", "InterfaceNamePrefix")
    docs["config"]["detectLocal"]["bridgeInterface"] = ""
    assert [p.split(": ", 3)[3] for p in _problems(docs)] == [
        'detectLocal.interfaceNamePrefix: Invalid value: "": must not be empty']


@pytest.mark.parametrize("path,value,mode", [
    (PREFIX, ic.NFT_REPRO, "InterfaceNamePrefix"),
    (BRIDGE, ic.IPTABLES_REPRO, "BridgeInterface"),
])
def test_the_issue_reproductions_are_problems_one_line_each(path, value, mode):
    problems = _problems(_config_with(path, value, mode))
    assert len(problems) == 3  # too long, unprintable characters, rule-text characters
    for line in problems:
        _assert_one_line(line)
        assert line.startswith(f"hostile.json: document 1: KubeProxyConfiguration proxy: {'.'.join(path)}: ")


def test_interface_name_errors_of_a_prefix_leave_room_for_the_wildcard():
    assert interface_name_errors("a" * 14, prefix=True) == []
    assert interface_name_errors("a" * 15) == []
    assert interface_name_errors("a" * 15, prefix=True)
    assert interface_name_errors("") == ["must not be empty"]


# ---------------------------------------------------------------- messages stay on one line


def test_a_hostile_object_name_is_shown_escaped_in_its_problems():
    docs = ic.with_value(ic.base_documents(), ("web", ("metadata", "name")), "web\nCOMMIT")
    problems = _problems(docs)
    assert problems and all("\n" not in p for p in problems)
    assert problems[0].startswith('hostile.json: document 3: Service "shop/web\\nCOMMIT": metadata.name: ')


def test_a_hostile_label_key_is_shown_escaped_in_the_field_path():
    docs = ic.base_documents()
    docs["web"]["metadata"]["labels"] = {"a\nb": 1}
    assert _problems(docs) == ['hostile.json: document 3: Service shop/web: metadata.labels["a\\nb"]: '
                               "Invalid value: 1: must be a string"]


def test_an_unknown_kind_with_hostile_names_is_skipped_with_a_one_line_warning():
    docs = ic.base_documents()
    docs["other"] = {"apiVersion": "x/v1\n*filter", "kind": "K\r", "metadata": {"name": "n\nm", "namespace": "a"}}
    result = parse_cluster(ic.documents(docs))
    assert result.warnings == ('hostile.json: document 11: ignoring "x/v1\\n*filter" "K\\r" "a/n\\nm" '
                               "(not used by the dataplane)",)


# ---------------------------------------------------------------- the property


def _check_compiled(docs: dict[str, dict]) -> None:
    """Parse ``docs``: problems are one line each; valid input compiles, in each backend and
    family, to rules whose statements are all about our own objects."""
    try:
        result = parse_cluster(ic.documents(docs))
    except InputError as err:
        assert err.problems
        for problem in err.problems:
            _assert_one_line(str(problem))
        return
    for warning in result.warnings:
        _assert_one_line(warning)
    cluster = with_derived_slices(result.cluster)
    for backend in BACKENDS:
        for family in ("ipv4", "ipv6"):
            try:
                compiled = compile_rules(cluster, ic.NODE, backend=backend, family=family)
            except UsageError as err:  # a renamed node: a clean, one-line refusal
                _assert_one_line(str(err))
                continue
            for warning in compiled.warnings:
                _assert_one_line(warning)
            if backend == "nftables":
                assert ic.foreign_nft_statements(compiled.text, family) == []
            else:
                assert ic.foreign_iptables_lines(compiled.text) == []


@pytest.mark.parametrize("field", ic.FIELDS, ids=ic.field_id)
@settings(max_examples=5, deadline=None, database=None)
@given(value=ic.hostile_strings(), mode=st.sampled_from(ic.DETECT_MODES))
@example(value=ic.NFT_REPRO, mode="InterfaceNamePrefix")
@example(value=ic.IPTABLES_REPRO, mode="BridgeInterface")
def test_hostile_strings_in_any_field_give_problems_or_rules_on_our_objects_only(field, value, mode):
    _check_compiled(ic.with_value(ic.base_documents(mode), field, value))


@pytest.mark.parametrize("mode", ic.DETECT_MODES)
def test_the_base_cluster_compiles_to_rules_on_our_objects_only(mode):
    # the property's starting point is valid, so that each hostile field is the only problem
    parse_cluster(ic.documents(ic.base_documents(mode)))
    _check_compiled(ic.base_documents(mode))


def test_the_checkers_see_statements_on_other_objects():
    """The property's checkers are not vacuous: they flag what the unfixed code wrote."""
    script = ('table ip kube-proxy\ndelete table ip kube-proxy\ntable ip kube-proxy {\n chain a {\n'
              '  iifname "x" ; }\n}\nflush table inet filter\ntable ip kube-proxy {\nchain inj {\n'
              '  iifname "x*" accept\n }\n}\n')
    assert ic.foreign_nft_statements(script, "ipv4") == ["flush table inet filter"]
    assert ic.foreign_nft_statements("table ip kube-proxy { } ; table ip6 kube-proxy { }", "ipv4") == [
        "table ip6 kube-proxy { }"]
    assert ic.foreign_nft_statements('table ip kube-proxy { comment "}" ', "ipv4") == ["<unbalanced>"]
    rules = ("*nat\n:KUBE-SERVICES - [0:0]\n-I PREROUTING -j KUBE-SERVICES\n-A KUBE-SERVICES -j KUBE-SVC-A\n"
             "-A KUBE-SVC-A ! -i lo\nCOMMIT\n*filter\n-F INPUT\nCOMMIT\n*nat\n-A KUBE-SERVICES -j RETURN\n"
             "-I INPUT -j ACCEPT\n:PREROUTING DROP [0:0]\n-A KUBE-SERVICES -j OTHER\n-X FOREIGN\n")
    assert ic.foreign_iptables_lines(rules) == [
        "-F INPUT", "-I INPUT -j ACCEPT", ":PREROUTING DROP [0:0]", "-A KUBE-SERVICES -j OTHER", "-X FOREIGN",
        "<table nat not committed>"]


# ---------------------------------------------------------------- renderers refuse


@pytest.fixture(scope="module")
def plans() -> dict[str, NodePlan]:
    cluster = with_derived_slices(parse_cluster(ic.documents(ic.base_documents("InterfaceNamePrefix"))).cluster)
    return {backend: build_plan(cluster, ic.NODE, mode=backend) for backend in BACKENDS}


def _web_port(plan: NodePlan):
    return next(p for p in plan.services if p.name == "web")


def _bad_endpoint(ep: PlanEndpoint, **changes) -> PlanEndpoint:
    return dataclasses.replace(ep, **changes)


PORT_CHANGES: dict[str, Callable] = {
    "namespace": lambda p: dataclasses.replace(p, namespace="shop\n}"),
    "name": lambda p: dataclasses.replace(p, name='web"'),
    "port name": lambda p: dataclasses.replace(p, port_name="http;x"),
    "protocol": lambda p: dataclasses.replace(p, protocol="tcp\nCOMMIT"),
    "port": lambda p: dataclasses.replace(p, port="80\n*filter"),
    "nodePort": lambda p: dataclasses.replace(p, node_port="1 }"),
    "session affinity timeout": lambda p: dataclasses.replace(p, affinity_timeout="60s }"),
    "clusterIP": lambda p: dataclasses.replace(p, cluster_ip="10.96.0.10\n*filter"),
    "external IP": lambda p: dataclasses.replace(p, external_ips=("198.51.100.10 } ; flush ruleset",)),
    "load-balancer IP": lambda p: dataclasses.replace(p, load_balancer_ips=('198.51.100.20"',)),
    "source range": lambda p: dataclasses.replace(p, source_ranges=("203.0.113.0/24\n-F INPUT",)),
    "endpoint IP": lambda p: dataclasses.replace(p, cluster_endpoints=tuple(
        _bad_endpoint(e, ip=e.ip + " # x", address=e.address) for e in p.cluster_endpoints)),
    "endpoint address": lambda p: dataclasses.replace(p, cluster_endpoints=tuple(
        _bad_endpoint(e, address=e.address + "\nCOMMIT") for e in p.cluster_endpoints)),
}


def _renderers(module) -> dict[str, Callable[[NodePlan], str]]:
    return {"render": module.render, "Renderer": lambda plan: module.Renderer().render(plan)}


@pytest.mark.parametrize("path", ["render", "Renderer"])
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("field", list(PORT_CHANGES))
def test_renderers_refuse_a_port_value_they_cannot_write(plans, backend, path, field):
    plan = plans[backend]
    bad = PORT_CHANGES[field](_web_port(plan))
    plan = dataclasses.replace(plan, services=tuple(bad if p.name == "web" else p for p in plan.services))
    with pytest.raises(RuleTextError) as caught:
        _renderers(BACKENDS[backend])[path](plan)
    message = str(caught.value)
    _assert_one_line(message)
    assert message.startswith('service port "') and f": {field} " in message
    assert isinstance(caught.value, DataplaneError)  # the CLI prints it as one "error:" line


NODE_CHANGES: dict[str, tuple[dict, str]] = {
    "prefix": ({"local_detector": LocalDetector("interface-prefix", ic.NFT_REPRO)},
               "detectLocal.interfaceNamePrefix"),
    "long prefix": ({"local_detector": LocalDetector("interface-prefix", "a" * 15)},
                    "detectLocal.interfaceNamePrefix"),
    "bridge": ({"local_detector": LocalDetector("bridge", ic.IPTABLES_REPRO)}, "detectLocal.bridgeInterface"),
    "cidr": ({"local_detector": LocalDetector("cidr", "10.0.0.0/8 } flush ruleset")}, "local-traffic CIDR"),
    "nodeport ip": ({"nodeports": NodePortDestinations(match_all=False, ips=("192.0.2.1\n*filter",))},
                    "NodePort address"),
}


@pytest.mark.parametrize("path", ["render", "Renderer"])
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("change", list(NODE_CHANGES))
def test_renderers_refuse_a_node_value_they_cannot_write(plans, backend, path, change):
    changes, what = NODE_CHANGES[change]
    plan = dataclasses.replace(plans[backend], **changes)
    with pytest.raises(RuleTextError) as caught:
        _renderers(BACKENDS[backend])[path](plan)
    _assert_one_line(str(caught.value))
    assert str(caught.value).startswith(what + " ")


def test_the_iptables_renderer_refuses_a_mark_it_cannot_write(plans):
    plan = dataclasses.replace(plans["iptables"], masquerade_mark="0x4000\nCOMMIT")
    with pytest.raises(RuleTextError, match="^masquerade mark "):
        ipt.render(plan)


@pytest.mark.parametrize("text", ["a\nb", 'a"b', "a\\b", "a\rb", "a\x00b", "a\x1bb", "a\x85b", "a\u2028b"])
def test_quoting_refuses_what_a_rules_file_cannot_carry(text):
    with pytest.raises(RuleTextError, match="^comment "):
        ipt.quote(text)
    with pytest.raises(RuleTextError, match="^what "):
        nft_string(text, "what")


def test_quoting_still_quotes_like_iptables_save_and_nft():
    assert ipt.quote("shop/web:http cluster IP") == '"shop/web:http cluster IP"'
    assert ipt.quote("KUBE-SVC") == "KUBE-SVC"
    assert ipt.quote("it's") == '"it\\\'s"'
    assert nft_string("cali*", "prefix") == '"cali*"'


# ---------------------------------------------------------------- the CLI


@pytest.mark.parametrize("path,value,mode,backend", [
    (PREFIX, ic.NFT_REPRO, "InterfaceNamePrefix", "nftables"),
    (BRIDGE, ic.IPTABLES_REPRO, "BridgeInterface", "iptables"),
])
def test_the_cli_refuses_the_reproductions_with_one_line_per_problem(tmp_path: Path, path, value, mode, backend):
    manifest = tmp_path / "cluster.json"
    docs = _config_with(path, value, mode)
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs.values())}))
    proc = subprocess.run([sys.executable, "-I", "-m", "dataplane", "compile", "-f", str(manifest), "--node", ic.NODE,
                           "--backend", backend], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 3, proc.stderr
    for line in lines:
        assert line.startswith(f"error: {manifest}: item 1 of the List in document 1: KubeProxyConfiguration proxy: "
                               f"{'.'.join(path)}: "
                               "Invalid value: "), line
