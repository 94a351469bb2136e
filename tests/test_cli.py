"""The CLI end to end (no privileges): compile, allocate, endpoints, errors."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from dataplane.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cluster.yaml"


def run(argv, capsys, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, text: str, name: str = "in.yaml") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


SVC = """\
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 192.0.2.1}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.80
  ports:
  - {name: http, port: 80, nodePort: 30080}
  - {name: admin, port: 81, nodePort: NODEPORT}
"""


def test_compile_bundled_example_with_allocation(capsys):
    code, out, err = run(["compile", "--allocate", "--seed", "1", "-f", str(EXAMPLE), "--node", "node-a"], capsys)
    assert code == 0, err
    assert out.startswith("*filter\n") and out.rstrip().endswith("COMMIT")
    assert "shop/web:http cluster IP" in out and "-j DNAT --to-destination 10.244.1.10:8080" in out
    code2, out2, _ = run(["compile", "--allocate", "--seed", "1", "-f", str(EXAMPLE), "--node", "node-a"], capsys)
    assert out2 == out  # seeded allocation is reproducible


def test_compile_to_file_and_stdin_and_backend_from_config(tmp_path, capsys, monkeypatch):
    text = SVC.replace("NODEPORT", "30081") + "---\napiVersion: kubeproxy.config.k8s.io/v1alpha1\n" \
        "kind: KubeProxyConfiguration\nmode: nftables\n"
    out_file = tmp_path / "rules.nft"
    code, out, err = run(["compile", "-f", "-", "--node", "n1", "-o", str(out_file)], capsys, text, monkeypatch)
    assert code == 0 and out == "", err
    assert out_file.read_text().startswith("table ip kube-proxy\n")


def test_bad_input_one_line_per_problem_exit_1_no_output(tmp_path, capsys):
    path = write(tmp_path, SVC.replace("NODEPORT", "70000").replace("port: 80,", "port: 0,"))
    out_file = tmp_path / "never.txt"
    code, out, err = run(["compile", "-f", path, "--node", "n1", "-o", str(out_file)], capsys)
    assert code == 1 and out == "" and not out_file.exists()
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert any(f"{path}: document 2: Service default/web: spec.ports[1].nodePort: Invalid value: 70000" in ln
               for ln in lines), err
    assert any("spec.ports[0].port: Invalid value: 0" in ln for ln in lines), err


def test_unknown_node_and_missing_file(tmp_path, capsys):
    path = write(tmp_path, SVC.replace("NODEPORT", "30081"))
    code, out, err = run(["compile", "-f", path, "--node", "nope"], capsys)
    assert code == 1 and "node 'nope' is not in the input" in err and out == ""
    code, out, err = run(["compile", "-f", str(tmp_path / "missing.yaml"), "--node", "n1"], capsys)
    assert code == 1 and "missing.yaml" in err and "Traceback" not in err


def test_cli_never_tracebacks_on_garbage(tmp_path):
    path = write(tmp_path, "kind: [unclosed\n")
    r = subprocess.run([sys.executable, "-I", "-m", "dataplane", "compile", "-f", path, "--node", "n1"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stdout == ""


def test_allocate_fills_fields_and_reports_conflicts_in_api_server_words(tmp_path, capsys):
    doc = """\
    apiVersion: v1
    kind: Service
    metadata: {name: a, namespace: default}
    spec:
      type: NodePort
      ports: [{name: u, port: 53, protocol: UDP, nodePort: 30009}, {name: t, port: 53, protocol: TCP}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: b, namespace: default}
    spec:
      type: NodePort
      ports: [{port: 80, nodePort: 30009}]
    """
    path = write(tmp_path, doc)
    code, out, err = run(["allocate", "-f", path], capsys)
    assert code == 1 and out == ""
    assert "Service default/b: spec.ports[0].nodePort: Invalid value: 30009: provided port is already allocated" in err
    fixed = write(tmp_path, doc.replace("[{port: 80, nodePort: 30009}]", "[{port: 80}]"), "ok.yaml")
    code, out, err = run(["allocate", "-f", fixed, "--format", "json", "--seed", "3"], capsys)
    assert code == 0, err
    items = {o["metadata"]["name"]: o for o in json.loads(out)["items"]}
    a_ports = [p["nodePort"] for p in items["a"]["spec"]["ports"]]
    assert a_ports == [30009, 30009]  # same port number, different protocols: one nodePort
    assert items["b"]["spec"]["clusterIP"].startswith("10.")
    assert 30086 <= items["b"]["spec"]["ports"][0]["nodePort"] <= 32767  # dynamic band first


def test_allocate_out_of_range_and_state(tmp_path, capsys):
    path = write(tmp_path, """\
    apiVersion: v1
    kind: Service
    metadata: {name: a, namespace: default}
    spec:
      type: NodePort
      ports: [{port: 80, nodePort: 40000}]
    """)
    code, _, err = run(["allocate", "-f", path], capsys)
    assert code == 1 and ("spec.ports[0].nodePort: Invalid value: 40000: provided port is not in the valid "
                          "range. The range of valid ports is 30000-32767") in err
    ok = write(tmp_path, "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {type: NodePort, ports: [{port: 80}]}\n",
               "ok.yaml")
    state = tmp_path / "state.json"
    code, out1, err = run(["allocate", "-f", ok, "--state", str(state)], capsys)
    assert code == 0 and state.exists(), err
    code, out2, err = run(["allocate", "-f", ok, "--state", str(state)], capsys)
    assert out2 == out1  # a Service keeps what it got
    code, _, err = run(["allocate", "-f", ok, "--state", str(state), "--service-node-port-range", "31000-31999"],
                       capsys)
    assert code == 1 and "30000-32767" in err and "31000-31999" in err


def test_endpoints_derives_slices_from_pods(capsys):
    code, out, err = run(["endpoints", "-f", str(EXAMPLE)], capsys)
    assert code == 0, err
    slices = [d for d in yaml.safe_load_all(out) if d]
    web = [s for s in slices if s["metadata"]["labels"]["kubernetes.io/service-name"] == "web"]
    assert len(web) == 1
    assert sorted(e["addresses"][0] for e in web[0]["endpoints"]) == ["10.244.1.10", "10.244.2.10"]
    assert {(p["name"], p["port"]) for p in web[0]["ports"]} == {("http", 8080), ("metrics", 9090)}


def test_help_has_examples():
    for cmd in (["compile"], ["apply"], ["allocate"], ["endpoints"], ["cleanup"], ["trace"], ["dns"], ["env"],
                ["lab", "up"], ["lab", "down"], ["verify"], ["completion"]):
        r = subprocess.run([sys.executable, "-I", "-m", "dataplane", *cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "example" in r.stdout, cmd


def test_completion_scripts_know_every_command_and_option(capsys):
    code, out, _ = run(["completion", "bash"], capsys)
    assert code == 0 and "complete " in out and "dataplane" in out
    for word in ("compile", "allocate", "trace", "verify", "lab", "--backend", "--ip-family", "nftables", "ipv6"):
        assert word in out, word
    r = subprocess.run(["bash", "-c", "source /dev/stdin && complete -p dataplane"], input=out,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "dataplane" in r.stdout, r.stderr
    code, out, _ = run(["completion", "zsh"], capsys)
    assert code == 0 and out.startswith("#compdef dataplane") and "verify" in out


def test_process_exit_keeps_output_and_status(tmp_path):
    """``python -m dataplane`` ends one-shot commands with os._exit: stdout, files and statuses intact."""
    from dataplane.compiler import compile_rules
    from dataplane.controllers.allocation import allocate_cluster
    from dataplane.controllers.endpointslices import with_derived_slices
    from dataplane.input.cluster import parse_cluster
    from dataplane.input.loader import load_documents

    argv = [sys.executable, "-I", "-m", "dataplane", "compile", "--allocate", "--seed", "1", "-f", str(EXAMPLE),
            "--node", "node-a", "--backend", "nftables"]
    r = subprocess.run(argv, capture_output=True, text=True)
    cluster = allocate_cluster(parse_cluster(load_documents([str(EXAMPLE)])).cluster,
                               service_cidrs="10.96.0.0/12", node_port_range="30000-32767", seed=1).cluster
    expected = compile_rules(with_derived_slices(cluster), "node-a", backend="nftables").text
    assert r.returncode == 0 and r.stdout == expected, r.stderr
    out = tmp_path / "rules.nft"
    r = subprocess.run([*argv, "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "" and out.read_text() == expected
    r = subprocess.run([*argv[:-4], "--node", "nope"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == "" and "error: node 'nope'" in r.stderr


def test_core_commands_do_not_import_the_lab():
    """The parser for a built-in command leaves the other commands' modules unimported."""
    probe = ("import sys; from dataplane.cli import build_parser; build_parser({!r}); "
             "print(sorted(m for m in ('dataplane.lab', 'dataplane.lab.cli', 'dataplane.verify', "
             "'dataplane.discovery', 'dataplane.trace.cli') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-I", "-c", probe.format("compile")], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
    r = subprocess.run([sys.executable, "-I", "-c", probe.format(None)], capture_output=True, text=True)
    assert "dataplane.lab.cli" in r.stdout and "dataplane.trace.cli" in r.stdout, r.stderr


def test_stdin_is_read_as_bytes_like_a_file(tmp_path):
    """A real stdin is read as bytes: JSON with a BOM, YAML and bad UTF-8 give what a file gives."""
    docs = list(yaml.safe_load_all(SVC.replace("NODEPORT", "30081")))
    as_json = b"\xef\xbb\xbf" + json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}).encode()
    path = tmp_path / "in.json"
    path.write_bytes(as_json)
    argv = [sys.executable, "-I", "-m", "dataplane", "compile", "--node", "n1", "-f"]
    from_file = subprocess.run([*argv, str(path)], capture_output=True)
    assert from_file.returncode == 0 and from_file.stdout, from_file.stderr
    for data in (as_json, SVC.replace("NODEPORT", "30081").encode()):
        r = subprocess.run([*argv, "-"], input=data, capture_output=True)
        assert (r.returncode, r.stdout) == (0, from_file.stdout), r.stderr
    r = subprocess.run([*argv, "-"], input=b"name: caf\xe9\n", capture_output=True, text=False)
    assert r.returncode == 1 and b"<stdin>: cannot read: not UTF-8 text" in r.stderr
