"""Shared helpers for the service-dataplane namespace tests: manifests in, rules applied, packets out.

The standard lab (``Topology.simple``): ``node<i>`` at 192.0.2.<i> with pod CIDR
10.244.<i>.0/24, pods ``pod<i>-<j>`` at 10.244.<i>.<9+j>, and external clients
``client<k>`` at 192.0.2.<99+k> routed via node1. Rules are compiled for
``node1`` from the manifests and applied in its namespace, as kube-proxy would on
that node; the other nodes only route.
"""
from __future__ import annotations

import collections
import json
import textwrap
from pathlib import Path
from typing import Iterable, Optional

from dataplane.runtime.apply import apply_compiled
from dataplane.compiler import CompileResult, compile_rules
from dataplane.input.cluster import load_cluster
from dataplane.lab import Lab, ProbeResult
from dataplane.runtime.netns import read_back, run_in

BACKENDS = ("iptables", "nftables")


def nodes_yaml(count: int, *, ipv6: bool = False) -> str:
    """Node objects matching ``Topology.simple(nodes=count)``."""
    docs = []
    for i in range(1, count + 1):
        v6 = f"\n  - {{type: InternalIP, address: '2001:db8::{i}'}}" if ipv6 else ""
        docs.append(textwrap.dedent(f"""\
            apiVersion: v1
            kind: Node
            metadata:
              name: node{i}
              labels: {{topology.kubernetes.io/zone: zone-{i}}}
            spec: {{podCIDR: 10.244.{i}.0/24}}
            status:
              addresses:
              - {{type: InternalIP, address: 192.0.2.{i}}}""") + v6)
    return "\n---\n".join(docs) + "\n"


def proxy_config_yaml(extra: str = "", *, cluster_cidr: str = "10.244.0.0/16") -> str:
    return textwrap.dedent(f"""\
        apiVersion: kubeproxy.config.k8s.io/v1alpha1
        kind: KubeProxyConfiguration
        clusterCIDR: {cluster_cidr}
        """) + textwrap.dedent(extra)


def write_manifests(tmp: Path, *docs: str) -> Path:
    path = tmp / "cluster.yaml"
    path.write_text("\n---\n".join(textwrap.dedent(d).strip() for d in docs) + "\n")
    return path


def compile_and_apply(lab: Lab, manifest: Path, backend: str, *, node: str = "node1",
                      family: str = "ipv4") -> CompileResult:
    """Compile ``manifest`` for ``node`` and load it into that node's namespace."""
    cluster = load_cluster([str(manifest)]).cluster
    result = compile_rules(cluster, node, backend=backend, family=family)
    apply_compiled(lab.ns(node), result)
    return result


def spread(lab: Lab, ns: str, dst: str, port: int, *, count: int = 40, proto: str = "tcp") -> collections.Counter:
    """Open ``count`` connections (or datagrams) and count which pod answered each."""
    probe = lab.tcp_probe if proto == "tcp" else lab.udp_probe
    seen: collections.Counter = collections.Counter()
    for _ in range(count):
        r = probe(ns, dst, port)
        seen[r.pod if r.ok else r.outcome] += 1
    return seen


def host(hp: Optional[tuple[str, int]]) -> Optional[str]:
    return hp[0] if hp else None


def assert_reached(r: ProbeResult, *, pods: Iterable[str], dst_port: int, vip: tuple[str, int],
                   src: Optional[str] = None) -> None:
    """The flow reached one of ``pods`` on ``dst_port``, replies came back from ``vip``,
    and (when given) the pod saw source address ``src``."""
    assert r.ok, f"probe failed: {r.outcome} {r.error}"
    assert r.pod in set(pods), f"answered by {r.pod}"
    assert r.server_saw_dst is not None and r.server_saw_dst[1] == dst_port, r.server_saw_dst
    assert r.peer == vip, f"reply came from {r.peer}, not the service address {vip}"
    if src is not None:
        assert host(r.server_saw_src) == src, f"pod saw source {r.server_saw_src}, expected {src}"


# --------------------------------------------------------------------------- family-aware helpers
# (LoadBalancer / externalIPs tests.) The lab is ``Topology.simple(..., ipv6=True)``; the
# manifests are dual-stack and the rules are compiled for one family at a time.

FAMILIES = ("ipv4", "ipv6")
BACKEND_FAMILIES = tuple((b, f) for b in BACKENDS for f in FAMILIES)
DUAL_STACK_CLUSTER_CIDR = "10.244.0.0/16,fd00:10:244::/48"


def backend_family_id(param: tuple[str, str]) -> str:
    """Test id of a (backend, family) parameter, e.g. ``nftables-ipv6``."""
    return f"{param[0]}-{param[1]}"


def node_ip(i: int, family: str) -> str:
    return f"2001:db8::{i}" if family == "ipv6" else f"192.0.2.{i}"


def client_ip(k: int, family: str) -> str:
    return f"2001:db8::{99 + k}" if family == "ipv6" else f"192.0.2.{99 + k}"


def pod_ip(pod: str, family: str) -> str:
    """The address of ``pod<i>-<j>`` in ``Topology.simple``."""
    i, j = (int(x) for x in pod[len("pod"):].split("-"))
    return f"fd00:10:244:{i}::{9 + j}" if family == "ipv6" else f"10.244.{i}.{9 + j}"


def dual_stack_slices(namespace: str, service: str, ports: str, pods: Iterable[str],
                      *, conditions: Optional[dict[str, str]] = None) -> str:
    """An IPv4 and an IPv6 EndpointSlice for ``service`` whose endpoints are ``pods``
    (``pod<i>-<j>`` names; nodeName ``node<i>``). ``ports`` is the slice's ports as YAML
    flow text; ``conditions`` maps a pod to a YAML flow ``conditions`` value."""
    docs = []
    for family, suffix, address_type in (("ipv4", "v4", "IPv4"), ("ipv6", "v6", "IPv6")):
        eps = []
        for pod in pods:
            node = "node" + pod[len("pod"):].split("-")[0]
            cond = f", conditions: {conditions[pod]}" if conditions and pod in conditions else ""
            eps.append(f"- {{addresses: ['{pod_ip(pod, family)}'], nodeName: {node}{cond}}}")
        docs.append(
            "apiVersion: discovery.k8s.io/v1\n"
            "kind: EndpointSlice\n"
            f"metadata: {{name: {service}-{suffix}, namespace: {namespace}, "
            f"labels: {{kubernetes.io/service-name: {service}}}}}\n"
            f"addressType: {address_type}\n"
            f"ports: {ports}\n"
            "endpoints:" + ("\n" + "\n".join(eps) if eps else " []")
        )
    return "\n---\n".join(docs) + "\n"


def host_server(lab: Lab, member: str, *, tcp_ports: Iterable[int] = (), udp_ports: Iterable[int] = (),
                name: Optional[str] = None):
    """Reply servers in a *node's* or *client's* own namespace (a host process: a health-check
    server, a load balancer's proxy, anything listening on a node or VIP address). Close it
    (``with``) when done. Replies carry ``name`` (default: the member), so a probe it answered
    has ``r.pod == name``."""
    from dataplane.lab import Server

    if not any(m.name == member for m in (*lab.topology.nodes, *lab.topology.clients)):
        raise KeyError(f"{member!r} is not a node or client of the lab")
    return Server(lab.ns(member), name or member, tcp_ports=tcp_ports, udp_ports=udp_ports)


# --------------------------------------------------------------------------- endpoint details, extra addresses
# (traffic policy, session affinity and endpoint selection tests.)


def node_of(pod: str) -> str:
    """The node of ``pod<i>-<j>`` in ``Topology.simple``: ``node<i>``."""
    return "node" + pod[len("pod"):].split("-")[0]


def dual_stack_endpoint_slices(namespace: str, service: str, ports: str,
                               endpoints: Iterable[tuple[str, str]]) -> str:
    """An IPv4 and an IPv6 EndpointSlice for ``service``, as the EndpointSlice controller
    writes them: each endpoint is ``(pod, fields)`` where ``fields`` is extra YAML flow text
    for it (``conditions: {...}``, ``hints: {...}``, or ""). Every endpoint gets its pod's
    address, ``nodeName: node<i>``, ``zone: zone-<i>`` (its node's zone label, see
    :func:`nodes_yaml`) and a ``targetRef`` to the Pod."""
    docs = []
    endpoints = list(endpoints)
    for family, suffix, address_type in (("ipv4", "v4", "IPv4"), ("ipv6", "v6", "IPv6")):
        eps = []
        for pod, fields in endpoints:
            node = node_of(pod)
            extra = f", {fields}" if fields else ""
            eps.append(
                f"- {{addresses: ['{pod_ip(pod, family)}'], nodeName: {node}, zone: zone-{node[4:]}, "
                f"targetRef: {{kind: Pod, namespace: {namespace}, name: {pod}}}{extra}}}"
            )
        docs.append(
            "apiVersion: discovery.k8s.io/v1\n"
            "kind: EndpointSlice\n"
            f"metadata: {{name: {service}-{suffix}, namespace: {namespace}, "
            f"labels: {{kubernetes.io/service-name: {service}, "
            "endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io}}\n"
            f"addressType: {address_type}\n"
            f"ports: {ports}\n"
            "endpoints:" + ("\n" + "\n".join(eps) if eps else " []")
        )
    return "\n---\n".join(docs) + "\n"


def add_address(lab: Lab, member: str, address: str, *, deprecated: bool = False) -> None:
    """Add a second address to ``eth0`` of a node or client, inside the underlay
    (192.0.2.0/24 or 2001:db8::/64). An IPv4 one becomes a secondary address and an IPv6
    one may be ``deprecated`` (preferred lifetime 0): either way the kernel never picks it
    as a source address by itself (not for MASQUERADE either); a probe binds to it."""
    if ":" in address:
        argv = ["ip", "-6", "addr", "add", f"{address}/64", "dev", "eth0", "nodad"]
        if deprecated:
            argv += ["preferred_lft", "0"]
    else:
        argv = ["ip", "-4", "addr", "add", f"{address}/24", "dev", "eth0"]
    lab.run(member, argv)
    # IPv6 installs the address's local route asynchronously (after the skipped DAD): until
    # then the address is not "local" to routing, nor to addrtype / fib saddr type local.
    import time

    fam = "-6" if ":" in address else "-4"
    deadline = time.monotonic() + 2.0
    while not lab.run(member, ["ip", fam, "route", "show", "table", "local", address]).stdout.strip():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{member}: no local route for {address}")
        time.sleep(0.005)


# --------------------------------------------------------------------------- crafted packets
# (node settings: conntrack INVALID packets.)


def send_and_capture(lab: Lab, sender: str, packet: bytes, dst: str, capture: tuple[str, str],
                     match, *, timeout: float = 0.5):
    """Send one crafted IPv4/IPv6 packet (e.g. ``bytes(IP()/TCP())`` built with scapy) from
    lab member ``sender`` and return the first frame on ``capture = (member, ifname)`` that
    ``match`` accepts, or None (:func:`dataplane.lab.sctp.send_and_capture` with the lab's
    namespaces)."""
    from dataplane.lab.sctp import send_and_capture as send

    return send(lab.ns(sender), packet, dst, (lab.ns(capture[0]), capture[1]), match, timeout=timeout)


def canonical_rules(ns: str, backend: str) -> str:
    """The rules kube-dataplane installed in ``ns``, independent of creation order, handles and counters."""
    if backend == "iptables":
        chains: dict[str, list[str]] = {}
        for line in read_back(ns, "iptables").splitlines():
            if line.startswith("-A "):
                chains.setdefault(line.split()[1], []).append(line)
            elif line.startswith(":"):
                chains.setdefault(line[1:].split()[0], [])
        return json.dumps(sorted(chains.items()))
    out = run_in(ns, ["nft", "-j", "list", "table", "ip", "kube-proxy"], check=False)
    if out.returncode:
        return "absent"
    objects = []
    for obj in json.loads(out.stdout)["nftables"]:
        kind, body = next(iter(obj.items()))
        if kind == "metainfo":
            continue
        body = {k: v for k, v in body.items() if k not in ("handle",)}
        if "elem" in body:
            body["elem"] = sorted(json.dumps(e, sort_keys=True) for e in body["elem"])
        objects.append(json.dumps({kind: body}, sort_keys=True))
    return json.dumps(sorted(objects))
