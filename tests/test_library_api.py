"""The library gives the CLI's answers: one preparation path (derive slices, optionally allocate)."""
from __future__ import annotations

from pathlib import Path

import pytest

import dataplane
from dataplane import Proxier, build_plan, compile_rules, load_cluster, prepare_cluster
from dataplane.cli import main
from dataplane.errors import UsageError

EXAMPLE = str(Path(__file__).resolve().parent.parent / "examples" / "cluster.yaml")
TARGETS = [(backend, family) for backend in ("iptables", "nftables") for family in ("ipv4", "ipv6")]


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, list[str]]:
    """(stdout, stderr lines) of one successful ``dataplane`` command."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err.splitlines()


def warning_lines(*groups: tuple[str, ...]) -> list[str]:
    return [f"warning: {w}" for group in groups for w in group]


@pytest.fixture(scope="module")
def allocated(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The example as `dataplane allocate --seed 1` prints it: ClusterIPs, no EndpointSlices, Pods."""
    path = tmp_path_factory.mktemp("alloc") / "allocated.yaml"
    assert main(["allocate", "--seed", "1", "-f", EXAMPLE, "-o", str(path)]) == 0
    return str(path)


@pytest.mark.parametrize("backend,family", TARGETS)
def test_compile_rules_on_a_loaded_cluster_is_the_cli_output(allocated, backend, family, capsys):
    """The issue's case: Services whose slices come from Pods have endpoints in both."""
    out, err = cli(["compile", "-f", allocated, "--node", "node-a", "--backend", backend, "--ip-family", family],
                   capsys)
    loaded = load_cluster([allocated])
    result = compile_rules(loaded.cluster, "node-a", backend=backend, family=family)
    assert result.text == out
    assert warning_lines(loaded.warnings, result.warnings) == err
    if family == "ipv4":
        assert "10.244.1.10" in result.text  # a Pod of shop/web: derived, not rejected


@pytest.mark.parametrize("backend,family", TARGETS)
def test_prepare_cluster_with_allocation_is_compile_allocate(backend, family, capsys):
    out, err = cli(["compile", "--allocate", "--seed", "1", "-f", EXAMPLE, "--node", "node-a",
                    "--backend", backend, "--ip-family", family], capsys)
    prepared = prepare_cluster(load_cluster([EXAMPLE]), allocate=True, seed=1)
    result = compile_rules(prepared.cluster, "node-a", backend=backend, family=family)
    assert result.text == out
    assert warning_lines(prepared.warnings, result.warnings) == err
    assert prepared.allocation is not None and prepared.allocation.cluster.services


def test_prepare_cluster_derives_slices_once_and_refuses_unused_allocation_options():
    loaded = load_cluster([EXAMPLE])
    prepared = prepare_cluster(loaded)
    assert prepared.allocation is None and prepared.warnings == loaded.warnings
    assert len(prepared.cluster.endpoint_slices) > len(loaded.cluster.endpoint_slices)
    assert prepare_cluster(prepared.cluster).cluster == prepared.cluster  # idempotent
    with pytest.raises(UsageError, match="only with allocate=True"):
        prepare_cluster(loaded, seed=1)


def test_prepare_cluster_is_exported():
    assert "prepare_cluster" in dataplane.__all__ and "PreparedCluster" in dataplane.__all__
    assert dataplane.PreparedCluster is type(prepare_cluster(load_cluster([EXAMPLE])))


# ------------------------------------------------------------ one name for one thing


def test_backend_is_the_keyword_everywhere_and_mode_its_kept_former_name():
    cluster = load_cluster([EXAMPLE]).cluster
    assert build_plan(cluster, "node-a", backend="nftables").mode == "nftables"
    assert build_plan(cluster, node="node-a", mode="nftables").mode == "nftables"  # README-era callers
    assert Proxier("node-a", backend="nftables", cluster=cluster).sync().plan.mode == "nftables"
    assert Proxier("node-a", mode="nftables", cluster=cluster).mode == "nftables"
    with pytest.raises(UsageError, match="backend= only"):
        build_plan(cluster, "node-a", backend="nftables", mode="iptables")


@pytest.mark.parametrize("make", [
    lambda c: Proxier("node-a", backend="nft"),
    lambda c: Proxier("node-a", mode="nft"),
    lambda c: build_plan(c, "node-a", backend="nft"),
    lambda c: build_plan(c, "node-a", mode="nft"),
    lambda c: compile_rules(c, "node-a", backend="nft"),
], ids=["Proxier-backend", "Proxier-mode", "build_plan-backend", "build_plan-mode", "compile_rules"])
def test_an_unknown_backend_is_rejected_where_it_is_given(make):
    with pytest.raises(UsageError, match="unknown backend 'nft': use one of iptables, nftables"):
        make(load_cluster([EXAMPLE]).cluster)


# ------------------------------------------------------------ objects instead of files

BAD = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 70000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop}
addressType: IPv4
endpoints: [{addresses: [10.0.0.1.5]}]
---
- not a mapping
"""


def test_cluster_from_objects_is_load_cluster_with_objects_counted(tmp_path):
    import yaml

    objects = list(yaml.safe_load_all(Path(EXAMPLE).read_text()))
    from_file, from_objects = load_cluster([EXAMPLE]), dataplane.cluster_from_objects(objects)
    assert from_objects.cluster == from_file.cluster
    assert from_objects.warnings == tuple(w.replace(f"{EXAMPLE}: document", "<objects>: object")
                                          for w in from_file.warnings)
    text = compile_rules(from_objects.cluster, "node-a", backend="nftables").text
    assert text == compile_rules(from_file.cluster, "node-a", backend="nftables").text

    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    with pytest.raises(dataplane.InputError) as file_error:
        load_cluster([str(path)])
    with pytest.raises(dataplane.InputError) as objects_error:
        dataplane.cluster_from_objects(yaml.safe_load_all(BAD), source="watch")
    file_lines = [str(p) for p in file_error.value.problems]
    assert len(file_lines) >= 3
    # (a file's reader reports documents that are no object first; objects are checked in order)
    assert sorted(str(p) for p in objects_error.value.problems) == sorted(
        line.replace(f"{path}: document", "watch: object").replace("manifest document", "manifest object")
        for line in file_lines)


def test_parse_object_validates_one_object_for_the_proxier():
    import yaml

    objects = list(yaml.safe_load_all(Path(EXAMPLE).read_text()))
    service = next(o for o in objects if o["kind"] == "Service")
    parsed = dataplane.parse_object({**service, "spec": {**service["spec"], "clusterIP": "10.96.0.99"}})
    assert isinstance(parsed, dataplane.Service) and parsed.ref.where().startswith("<object>: object 1: Service")
    with pytest.raises(dataplane.InputError, match=r"^<object>: object 1: Service shop/web: spec.ports\[0\].port"):
        dataplane.parse_object({**service, "spec": {**service["spec"], "ports": [{"port": 70000}]}})
    with pytest.raises(UsageError, match="ignoring v1 ConfigMap settings"):
        dataplane.parse_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}})
    proxier = Proxier("node-a", backend="nftables", cluster=prepare_cluster(dataplane.cluster_from_objects(
        o for o in objects if o is not service)).cluster)
    proxier.sync()
    proxier.set_service(parsed)
    assert "shop/web" in proxier.sync().text


# ------------------------------------------------------------ trace path as structured steps


@pytest.mark.parametrize("backend,endpoint_chain", [("iptables", "KUBE-SEP-"), ("nftables", "endpoint-")])
def test_trace_path_is_structured_steps_rendered_separately(backend, endpoint_chain):
    cluster = prepare_cluster(load_cluster([EXAMPLE]), allocate=True, seed=1).cluster
    web = next(s for s in cluster.services if s.name == "web")
    compiled = compile_rules(cluster, "node-a", backend=backend)
    result = dataplane.trace(compiled.text, backend, dataplane.Packet(
        src="10.244.2.5", dst=web.cluster_ips[0], dport=80, proto="tcp"), local_ips=compiled.plan.node_ips)
    lines = compiled.text.splitlines()
    assert all(isinstance(step, dataplane.TraceStep) for step in result.path)
    with pytest.raises(AttributeError):
        result.path[0].verdict = "drop"  # type: ignore[misc]  # frozen
    dnats = [step for step in result.path if step.verdict == "dnat"]
    assert [step.text for step in dnats] == ["DNAT to 10.244.1.10:8080", "DNAT to 10.244.2.10:8080"]
    for step in dnats:
        assert step.chain.startswith(endpoint_chain) and step.table
        assert step.rule.startswith(lines[step.line - 1].strip())  # the rule that DNATs, and its line
    hooks = [step for step in result.path if step.text.startswith("hook ")]
    assert hooks and all(not step.table and not step.chain and not step.line for step in hooks)
    assert {step.verdict for step in result.path} >= ({"jump", "dnat"} if backend == "iptables" else {"goto", "dnat"})
    assert result.path_lines() == tuple(step.render() for step in result.path)
    assert result.render() == "\n".join([*result.path_lines(), result.verdict_line()]) + "\n"
    assert result.to_dict()["path"] == list(result.path_lines())
