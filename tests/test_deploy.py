"""deploy/: the DaemonSet, its RBAC and the image, checked against the agent's own code.

No cluster runs here, so these check what can be checked without one: every manifest
parses; RBAC grants list and watch for exactly what ``dataplane sync --kubectl`` lists and
watches (read from dataplane.agent.kubectl, not restated); the container's arguments parse
with dataplane's own argument parser and agree with the probe, the volumes, the service
account and the image's entrypoint; the Dockerfile copies what the wheel build needs and
installs the tools the agent runs. deploy/entrypoint.sh itself runs in
netns_tests/test_deploy_entrypoint.py.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

from dataplane.agent.kubectl import resources
from dataplane.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))


def _objects() -> list[dict[str, Any]]:
    out = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append(doc)
    return out


def _one(kind: str) -> dict[str, Any]:
    found = [o for o in _objects() if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _container() -> dict[str, Any]:
    (container,) = _one("DaemonSet")["spec"]["template"]["spec"]["containers"]
    return container


def _expanded_args() -> list[str]:
    """The container's args with ``$(VAR)`` references expanded as the kubelet does (env values
    from the downward API become a sample value)."""
    env = {e["name"]: e.get("value", f"<{e['name']}>") for e in _container().get("env", [])}
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), a) for a in _container()["args"]]


def _sync_args():
    return build_parser().parse_args(_expanded_args())


# ---------------------------------------------------------------------------- manifests
def test_every_manifest_parses_into_named_objects() -> None:
    assert [p.name for p in MANIFESTS] == ["daemonset.yaml", "rbac.yaml"]
    objects = _objects()
    for o in objects:
        assert o.get("apiVersion") and o.get("kind") and o.get("metadata", {}).get("name"), o
    assert sorted(o["kind"] for o in objects) == sorted(
        ["DaemonSet", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"])
    for o in objects:
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == "kube-system", o["kind"]


# ---------------------------------------------------------------------------- RBAC
def _watched() -> set[tuple[str, str, Optional[str], Optional[str]]]:
    """(apiGroup, resource, namespace, name) of every list+watch the agent makes."""
    out = set()
    for r in resources("some-node"):
        parts = r.path.strip("/").split("/")
        group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
        namespace = None
        if rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        (resource,) = rest
        query = dict(r.query)
        fields = dict(f.split("=", 1) for f in query.get("fieldSelector", "").split(",") if f)
        name = fields.get("metadata.name")
        out.add((group, resource, namespace, None if name == "some-node" else name))
    return out


def _grants() -> set[tuple[str, str, Optional[str], Optional[str], str]]:
    """(apiGroup, resource, namespace or None for cluster-wide, resourceName or None, verb) that
    the DaemonSet's service account holds through the bindings in deploy/."""
    sa = _one("DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"]
    objects = _objects()
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in objects if o["kind"] in ("ClusterRole", "Role")}
    out = set()
    for b in (o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        subjects = {(s["kind"], s["name"], s.get("namespace")) for s in b["subjects"]}
        if ("ServiceAccount", sa, "kube-system") not in subjects:
            continue
        ref = b["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        role_ns = b["metadata"].get("namespace") if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], role_ns, ref["name"])]
        scope = b["metadata"].get("namespace") if b["kind"] == "RoleBinding" else None
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for name in rule.get("resourceNames") or [None]:
                        for verb in rule["verbs"]:
                            out.add((group, resource, scope, name, verb))
    return out


def _allowed(grants, group: str, resource: str, namespace: Optional[str], name: Optional[str], verb: str) -> bool:
    """Whether a request is authorized (RBAC: a namespaced grant covers its namespace only; a
    grant with a resourceName covers a list/watch only with a metadata.name field selector)."""
    return any(g == group and r == resource and v == verb and (scope is None or scope == namespace)
               and (n is None or n == name) for g, r, scope, n, v in grants)


def test_rbac_grants_list_and_watch_of_exactly_what_the_agent_watches() -> None:
    grants = _grants()
    watched = _watched()
    assert {(g, r) for g, r, _, _ in watched} == {
        ("", "services"), ("discovery.k8s.io", "endpointslices"), ("", "nodes"),
        ("networking.k8s.io", "servicecidrs"), ("", "configmaps")}
    for group, resource, namespace, name in watched:
        for verb in ("list", "watch"):
            assert _allowed(grants, group, resource, namespace, name, verb), (group, resource, verb)
    # nothing else: no other kind, verb, wildcard or namespace
    assert {(g, r) for g, r, *_ in grants} == {(g, r) for g, r, _, _ in watched}
    assert {v for *_, v in grants} == {"list", "watch"}
    for group, resource, scope, name, _ in grants:
        assert "*" not in (group, resource, name)
        assert any((g, r) == (group, resource) and (scope is None or scope == ns) and (name is None or name == n)
                   for g, r, ns, n in watched), (group, resource, scope, name)
    # the ConfigMap: only kube-system/kube-proxy
    assert not _allowed(grants, "", "configmaps", "kube-system", "other", "list")
    assert not _allowed(grants, "", "configmaps", "default", "kube-proxy", "list")


# ---------------------------------------------------------------------------- the DaemonSet
def test_container_args_parse_with_dataplanes_parser() -> None:
    args = _sync_args()
    assert args.command == "sync" and args.func.__module__ == "dataplane.agent.cli"
    assert args.kubectl and not args.files
    assert args.node == "<NODE_NAME>"  # the downward API's spec.nodeName
    (env,) = [e for e in _container()["env"] if e["name"] == "NODE_NAME"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_probe_matches_the_healthz_flag() -> None:
    args = _sync_args()
    host, _, port = args.healthz_bind_address.rpartition(":")
    probe = _container()["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and probe["port"] == int(port)
    assert host in ("0.0.0.0", "", "::"), "the kubelet probes the node's address: bind every address"


def test_kubeconfig_comes_from_a_mounted_configmap_key() -> None:
    args = _sync_args()
    spec = _one("DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    path = Path(args.kubeconfig)
    (mount,) = [m for m in _container()["volumeMounts"] if path.parent == Path(m["mountPath"])]
    source = volumes[mount["name"]]["configMap"]
    assert source["name"] == "kube-proxy"
    assert {"key": "kubeconfig.conf", "path": path.name} in source["items"]


def test_host_network_privileges_and_kube_proxys_mounts() -> None:
    spec = _one("DaemonSet")["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    # cluster DNS sits behind a ClusterIP the agent itself has to program first
    assert spec.get("dnsPolicy", "ClusterFirst") != "ClusterFirstWithHostNet"
    security = _container()["securityContext"]
    added = set(security.get("capabilities", {}).get("add", []))
    assert security.get("privileged") is True or {"NET_ADMIN", "NET_RAW", "SYS_ADMIN"} <= added
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in _container()["volumeMounts"]}
    for path, read_only in (("/run/xtables.lock", False), ("/lib/modules", True)):
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
        assert mounts[path].get("readOnly", False) is read_only
    assert volumes[mounts["/run/xtables.lock"]["name"]]["hostPath"]["type"] == "FileOrCreate"
    assert {m["name"] for m in _container()["volumeMounts"]} <= set(volumes)
    daemonset = _one("DaemonSet")["spec"]
    assert daemonset["selector"]["matchLabels"].items() <= daemonset["template"]["metadata"]["labels"].items()


def test_netns_flag_names_what_the_entrypoint_creates() -> None:
    script = (DEPLOY / "entrypoint.sh").read_text()
    default = re.search(r'name="\$\{DATAPLANE_NETNS_NAME:-([^}]+)\}"', script)
    assert default, "entrypoint.sh must name the namespace"
    env = {e["name"]: e.get("value") for e in _container().get("env", [])}
    assert _sync_args().netns == env.get("DATAPLANE_NETNS_NAME", default[1])
    assert subprocess.run(["sh", "-n", str(DEPLOY / "entrypoint.sh")]).returncode == 0


# ---------------------------------------------------------------------------- the image
def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_builds_the_wheel_from_what_it_copies() -> None:
    steps = _dockerfile()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {p.split(".")[0] for p in setuptools["packages"] if p not in setuptools.get("package-dir", {})}
    needed |= set(setuptools.get("package-dir", {}).values())
    wheel_stage = steps[: next(i for i, (w, a) in enumerate(steps) if w == "FROM" and i > 1)]
    copied = set()
    for word, rest in wheel_stage:
        if word == "COPY":
            *sources, _ = shlex.split(rest)
            copied |= {s.rstrip("/") for s in sources}
    assert needed <= copied, f"the wheel stage lacks {needed - copied}"
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _ = shlex.split(rest)
            for s in sources:
                assert (ROOT / s).exists(), f"COPY {s}: no such file in the build context"
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "pip wheel" in runs and "pip install --no-cache-dir /wheels/*.whl" in runs


def test_dockerfile_installs_the_agents_tools_and_entrypoint() -> None:
    steps = _dockerfile()
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    python = re.fullmatch(r"python:(\d+)\.(\d+)-slim-\w+", args["PYTHON_IMAGE"])
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python and f">={python[1]}.{python[2]}" == requires
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    apt = re.search(r"apt-get install -y --no-install-recommends ([^&]+)", runs)
    assert apt and {"iptables", "nftables", "conntrack", "iproute2"} <= set(apt[1].split())
    assert "dl.k8s.io/release/${KUBECTL_VERSION}" in runs and "sha256sum -c" in runs
    assert re.fullmatch(r"v\d+\.\d+\.\d+", args["KUBECTL_VERSION"])
    (entry,) = [rest for word, rest in steps if word == "ENTRYPOINT"]
    (copy,) = [rest for word, rest in steps if word == "COPY" and "entrypoint.sh" in rest]
    assert yaml.safe_load(entry) == [shlex.split(copy)[-1]]
    assert "image" in _container() and "command" not in _container(), "the entrypoint must run"


@pytest.mark.parametrize("url", [r.url() for r in resources("n1")])
def test_watched_paths_are_api_paths(url: str) -> None:
    """The RBAC derivation above reads API paths; make sure they are what it expects."""
    path = urllib.parse.urlsplit(url).path
    assert re.fullmatch(r"/api/v1(/namespaces/[a-z0-9-]+)?/[a-z]+|/apis/[a-z0-9.]+/v1/[a-z]+", path)
