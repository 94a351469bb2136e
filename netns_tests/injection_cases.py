"""Hostile input for the rule-injection tests (tests/test_injection.py, netns_tests/test_rule_injection.py).

* :func:`base_documents`: a dual-stack cluster whose objects reach every kind of rule the
  backends write (ClusterIP, NodePort, externalIP, load balancer with source ranges and
  health check, session affinity, eTP Local, a local-traffic detector of each mode, mirrored
  Endpoints, slices derived from Pods, nodePortAddresses);
* :data:`FIELDS`: every string field :mod:`dataplane.input` reads from each kind, as a path
  into those documents; :func:`with_value` puts a value there;
* :func:`hostile_strings`: strings made of rule-language metacharacters, rule-file fragments
  (``COMMIT``, ``*filter``, ``flush table inet filter`` ...) and valid values to slip them past
  lenient parsers;
* :func:`foreign_nft_statements` and :func:`foreign_iptables_lines`: what a rules file does
  to anything but kube-proxy's own objects (the lists are empty for a safe file).
"""
from __future__ import annotations

import copy
from typing import Any, Union

from hypothesis import strategies as st

from dataplane.backends.iptables import FILTER_CHAINS, MARK_MASQ, NAT_CHAINS, SERVICE_CHAIN_PREFIXES
from dataplane.input.loader import Document

NODE = "node-a"
DETECT_MODES = ("ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix")
#: The two reproductions of issue 12: an nft one for interfaceNamePrefix, an iptables one
#: for bridgeInterface.
NFT_REPRO = 'x" ; }\n}\nflush table inet filter\ntable ip kube-proxy {\nchain inj {\niifname "x'
IPTABLES_REPRO = "lo\nCOMMIT\n*filter\n-F INPUT -m comment --comment x\nCOMMIT\n*nat"

KEY = object()  # in a path: the hostile string becomes a new key of the mapping there
Path = tuple[Union[str, int, object], ...]


def base_documents(detect_mode: str = "InterfaceNamePrefix") -> dict[str, dict]:
    """The cluster's objects by a short handle, each a fresh JSON-like dict."""
    svc_meta = {"name": "web", "namespace": "shop", "labels": {"app": "web"}}
    docs: dict[str, dict] = {
        "config": {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "metadata": {"name": "proxy"}, "mode": "iptables",
            "clusterCIDR": "10.244.0.0/16,fd00:10:244::/56", "detectLocalMode": detect_mode,
            "detectLocal": {"bridgeInterface": "cbr0", "interfaceNamePrefix": "cali"},
            "nodePortAddresses": ["192.0.2.0/24", "2001:db8::/64"],
            "externalIPCIDRs": ["198.51.100.0/24", "2001:db8:e::/64"],
        },
        "node": {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE, "labels": {"topology.kubernetes.io/zone": "zone-a"}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"},
                                     {"type": "InternalIP", "address": "2001:db8::1"},
                                     {"type": "Hostname", "address": NODE}]},
        },
        "web": {
            "apiVersion": "v1", "kind": "Service", "metadata": svc_meta,
            "spec": {
                "type": "LoadBalancer", "selector": {"app": "web"},
                "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
                "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:10:96::10"],
                "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http", "nodePort": 30080}],
                "externalIPs": ["198.51.100.10", "2001:db8:e::10"],
                "loadBalancerSourceRanges": ["203.0.113.0/24", "2001:db8:f::/64"],
                "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Cluster", "healthCheckNodePort": 30999,
                "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            },
            "status": {"loadBalancer": {"ingress": [
                {"ip": "198.51.100.20", "ipMode": "VIP"}, {"ip": "2001:db8:e::20"}, {"hostname": "lb.example.com"}]}},
        },
        "slice4": {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-v4", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.10"], "conditions": {"ready": True}, "nodeName": NODE, "zone": "zone-a",
                 "hostname": "web-0", "targetRef": {"kind": "Pod", "name": "web-0"},
                 "hints": {"forZones": [{"name": "zone-a"}]}},
                {"addresses": ["10.244.2.10"], "conditions": {"ready": True}, "nodeName": "node-b", "zone": "zone-b",
                 "hints": {"forZones": [{"name": "zone-b"}]}},
            ],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        },
        "slice6": {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-v6", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv6",
            "endpoints": [{"addresses": ["fd00:10:244:1::10"], "conditions": {"ready": True}, "nodeName": NODE}],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        },
        "legacy": {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "legacy", "namespace": "shop"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.11",
                     "ports": [{"name": "db", "protocol": "UDP", "port": 53, "nodePort": 30053}]},
        },
        "endpoints": {
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "legacy", "namespace": "shop", "annotations": {"note": "mirrored"}},
            "subsets": [{"addresses": [{"ip": "10.244.1.20", "hostname": "db-0", "nodeName": NODE,
                                        "targetRef": {"kind": "Pod", "name": "db-0", "uid": "u-1"}}],
                         "notReadyAddresses": [{"ip": "10.244.2.20"}],
                         "ports": [{"name": "db", "protocol": "UDP", "port": 5353}]}],
        },
        "api": {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.12", "selector": {"app": "api"},
                     "ports": [{"name": "grpc", "protocol": "SCTP", "port": 9000, "targetPort": "grpc"}]},
        },
        "pod": {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "api-0", "namespace": "shop", "labels": {"app": "api"}},
            "spec": {"nodeName": NODE, "hostname": "api-0", "subdomain": "api",
                     "containers": [{"name": "main", "ports": [{"name": "grpc", "containerPort": 9443,
                                                                "protocol": "SCTP"}]}]},
            "status": {"phase": "Running", "podIP": "10.244.1.30", "podIPs": [{"ip": "10.244.1.30"}],
                       "conditions": [{"type": "Ready", "status": "True"}]},
        },
        "external": {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext", "namespace": "shop"},
            "spec": {"type": "ExternalName", "externalName": "db.example.com"},
        },
    }
    return docs


def minimal_documents(detect_mode: str = "InterfaceNamePrefix") -> dict[str, dict]:
    """The configuration, the node and one ClusterIP Service with one endpoint: so small that
    the issue's reproductions, unvalidated, made rules files that loaded."""
    docs = base_documents(detect_mode)
    docs["web"]["spec"] = {"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                           "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}
    del docs["web"]["status"]
    docs["slice4"]["endpoints"] = docs["slice4"]["endpoints"][:1]
    return {handle: docs[handle] for handle in ("config", "node", "web", "slice4")}


def _meta_fields(handle: str, *, namespaced: bool = True, labels: bool = True) -> list[tuple[str, Path]]:
    fields: list[tuple[str, Path]] = [(handle, ("apiVersion",)), (handle, ("kind",)),
                                      (handle, ("metadata", "name"))]
    if namespaced:
        fields.append((handle, ("metadata", "namespace")))
    if labels:
        fields += [(handle, ("metadata", "labels", KEY)), (handle, ("metadata", "labels", "x"))]
    return fields


#: Every string field dataplane.input reads, by kind (and the map keys it reads as strings).
FIELDS: list[tuple[str, Path]] = [
    *_meta_fields("config", namespaced=False, labels=False),
    ("config", ("mode",)), ("config", ("clusterCIDR",)), ("config", ("detectLocalMode",)),
    ("config", ("detectLocal", "bridgeInterface")), ("config", ("detectLocal", "interfaceNamePrefix")),
    ("config", ("nodePortAddresses", 0)), ("config", ("nodePortAddresses", 1)), ("config", ("externalIPCIDRs", 0)),
    *_meta_fields("node", namespaced=False),
    ("node", ("metadata", "labels", "topology.kubernetes.io/zone")),
    ("node", ("spec", "podCIDR")), ("node", ("spec", "podCIDRs", 0)), ("node", ("spec", "podCIDRs", 1)),
    ("node", ("status", "addresses", 0, "type")), ("node", ("status", "addresses", 0, "address")),
    ("node", ("status", "addresses", 1, "address")), ("node", ("status", "addresses", 2, "address")),
    *_meta_fields("web"),
    ("web", ("spec", "type")), ("web", ("spec", "ipFamilies", 0)), ("web", ("spec", "ipFamilyPolicy")),
    ("web", ("spec", "clusterIP")), ("web", ("spec", "clusterIPs", 1)),
    ("web", ("spec", "ports", 0, "name")), ("web", ("spec", "ports", 0, "protocol")),
    ("web", ("spec", "ports", 0, "targetPort")), ("web", ("spec", "externalIPs", 0)),
    ("web", ("spec", "externalIPs", 1)), ("web", ("spec", "loadBalancerSourceRanges", 0)),
    ("web", ("spec", "loadBalancerSourceRanges", 1)), ("web", ("spec", "externalTrafficPolicy")),
    ("web", ("spec", "internalTrafficPolicy")), ("web", ("spec", "sessionAffinity")),
    ("web", ("spec", "selector", "app")), ("web", ("spec", "selector", KEY)),
    ("web", ("status", "loadBalancer", "ingress", 0, "ip")), ("web", ("status", "loadBalancer", "ingress", 1, "ip")),
    ("web", ("status", "loadBalancer", "ingress", 0, "ipMode")),
    ("web", ("status", "loadBalancer", "ingress", 2, "hostname")),
    *_meta_fields("slice4"),
    ("slice4", ("metadata", "labels", "kubernetes.io/service-name")), ("slice4", ("addressType",)),
    ("slice4", ("endpoints", 0, "addresses", 0)), ("slice4", ("endpoints", 0, "nodeName")),
    ("slice4", ("endpoints", 0, "zone")), ("slice4", ("endpoints", 0, "hostname")),
    ("slice4", ("endpoints", 0, "targetRef", "name")), ("slice4", ("endpoints", 0, "hints", "forZones", 0, "name")),
    ("slice4", ("ports", 0, "name")), ("slice4", ("ports", 0, "protocol")),
    ("slice6", ("addressType",)), ("slice6", ("endpoints", 0, "addresses", 0)),
    *_meta_fields("legacy"),
    ("legacy", ("spec", "ports", 0, "name")),
    *_meta_fields("endpoints"),
    ("endpoints", ("metadata", "annotations", KEY)), ("endpoints", ("metadata", "annotations", "note")),
    ("endpoints", ("subsets", 0, "addresses", 0, "ip")), ("endpoints", ("subsets", 0, "addresses", 0, "hostname")),
    ("endpoints", ("subsets", 0, "addresses", 0, "nodeName")),
    ("endpoints", ("subsets", 0, "addresses", 0, "targetRef", "name")),
    ("endpoints", ("subsets", 0, "addresses", 0, "targetRef", "uid")),
    ("endpoints", ("subsets", 0, "notReadyAddresses", 0, "ip")),
    ("endpoints", ("subsets", 0, "ports", 0, "name")), ("endpoints", ("subsets", 0, "ports", 0, "protocol")),
    ("api", ("spec", "ports", 0, "targetPort")), ("api", ("spec", "selector", "app")),
    *_meta_fields("pod"),
    ("pod", ("spec", "nodeName")), ("pod", ("spec", "hostname")), ("pod", ("spec", "subdomain")),
    ("pod", ("spec", "containers", 0, "ports", 0, "name")), ("pod", ("spec", "containers", 0, "ports", 0, "protocol")),
    ("pod", ("status", "podIP")), ("pod", ("status", "podIPs", 0, "ip")), ("pod", ("status", "phase")),
    ("pod", ("status", "conditions", 0, "type")), ("pod", ("status", "conditions", 0, "status")),
    ("external", ("spec", "externalName")),
]


def field_id(field: tuple[str, Path]) -> str:
    """A readable test id: ``web:spec.ports[0].name`` (``<key>`` for a map key)."""
    handle, path = field
    text = ""
    for part in path:
        if part is KEY:
            text += "[<key>]"
        elif isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return f"{handle}:{text}"


def with_value(docs: dict[str, dict], field: tuple[str, Path], value: str) -> dict[str, dict]:
    """A deep copy of ``docs`` with ``value`` at ``field`` (as a new key where the path says KEY;
    missing mappings on the way are made)."""
    out = copy.deepcopy(docs)
    handle, path = field
    parent: Any = out[handle]
    for part in path[:-1]:
        parent = parent.setdefault(part, {}) if isinstance(part, str) else parent[part]
    last = path[-1]
    if last is KEY:
        parent[value] = "x"
    else:
        parent[last] = value
    return out


def documents(docs: dict[str, dict], source: str = "hostile.json") -> list[Document]:
    """The objects as the loader hands them to :func:`dataplane.input.cluster.parse_cluster`."""
    return [Document(source, i, obj) for i, obj in enumerate(docs.values(), start=1)]


METACHARACTERS = ("\n", "\r", "\r\n", '"', "'", "`", "\\", ";", "{", "}", "#", "*", "+", "$", "@", " ", "\t",
                  "\x00", "\x0b", "\x85", "\u2028", "\u00a0", "é", "\U0001f600", "/", ":", ",", "[", "]", "!", "-")
FRAGMENTS = ("COMMIT", "*filter", "*nat", "-F INPUT", "-A INPUT -j DROP", "-X", ":INPUT DROP [0:0]",
             "flush ruleset", "flush table inet filter", "delete table inet filter", "table ip kube-proxy {",
             "table inet filter {", "chain inj {", 'include "/etc/passwd"', "$var", "@set", "--comment",
             'x" ; }', "10.0.0.1 } ; flush ruleset ; {", "define x = 1")
VALID_PARTS = ("10.96.0.99", "10.244.1.99", "fd00::99", "10.244.0.0/16", "fd00::/64", "198.51.100.99",
               "cali", "cbr0", "eth0", NODE, "web", "shop", "http", "TCP", "IPv4", "Local", "primary", "x")


def hostile_strings() -> st.SearchStrategy[str]:
    """Strings of metacharacters, rule-file fragments and valid values, joined in any order."""
    part = st.one_of(st.sampled_from(METACHARACTERS), st.sampled_from(FRAGMENTS), st.sampled_from(VALID_PARTS),
                     st.text(max_size=3))
    return st.lists(part, min_size=1, max_size=6).map("".join)


# ------------------------------------------------------------------ nftables


def nft_statements(script: str) -> list[str]:
    """The top-level statements of an nft script (newline or ';' ends one outside a block; a
    quoted string, which has no escapes in nft, and a ``#`` comment hide both). A script that
    ends inside a string or a block, or closes one it never opened, gives ``["<unbalanced>"]``."""
    statements: list[str] = []
    current: list[str] = []
    depth, quoted, comment = 0, False, False
    for ch in script:
        if comment:
            if ch == "\n":
                comment = False
            else:
                continue
        if quoted:
            quoted = ch != '"'
        elif ch == '"':
            quoted = True
        elif ch == "#":
            comment = True
            continue
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                return ["<unbalanced>"]
        elif depth == 0 and ch in "\n;":
            statements.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if quoted or depth:
        return ["<unbalanced>"]
    statements.append("".join(current).strip())
    return [s for s in statements if s]


def foreign_nft_statements(script: str, family: str) -> list[str]:
    """The top-level statements of ``script`` that are not about table ``ip|ip6 kube-proxy``
    (``family``: "ipv4" or "ipv6"): ``table T``, ``delete table T`` and one ``table T { … }``."""
    table = f"table {'ip6' if family == 'ipv6' else 'ip'} kube-proxy"
    foreign = []
    for statement in nft_statements(script):
        head, brace, _ = statement.partition("{")
        words = " ".join(head.split())
        if brace:
            ok = words == table and statement.endswith("}") and _one_block(statement)
        else:
            ok = words in (table, f"delete {table}")
        if not ok:
            foreign.append(statement)
    return foreign


def _one_block(statement: str) -> bool:
    """True if the braces of ``statement`` (outside strings) open exactly one top-level block."""
    depth, quoted, opened = 0, False, 0
    for ch in statement:
        if quoted:
            quoted = ch != '"'
        elif ch == '"':
            quoted = True
        elif ch == "{":
            opened += depth == 0
            depth += 1
        elif ch == "}":
            depth -= 1
    return opened == 1


# ------------------------------------------------------------------ iptables

_BUILTIN = {"filter": {"INPUT", "FORWARD", "OUTPUT"}, "nat": {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}}
_OUR_TOP = set(FILTER_CHAINS) | set(NAT_CHAINS) | {"KUBE-FIREWALL", MARK_MASQ}
_STANDARD_TARGETS = {"ACCEPT", "DROP", "RETURN", "REJECT", "DNAT", "MASQUERADE", "MARK"}
_COMMANDS = {"-A", "-I", "-D", "-R", "-F", "-X", "-N", "-P", "-Z", "-E", "-L", "-S", "--append", "--insert",
             "--delete", "--replace", "--flush", "--delete-chain", "--new-chain", "--policy", "--zero",
             "--rename-chain", "--list", "--list-rules"}


def is_our_chain(name: str) -> bool:
    """A chain kube-dataplane owns (a KUBE-* top-level chain or a service port's chain)."""
    return name in _OUR_TOP or name.startswith(SERVICE_CHAIN_PREFIXES)


def iptables_words(line: str) -> list[str]:
    """A restore-file line split as iptables-restore splits it: blanks separate words, a
    double-quoted part (where a backslash escapes the next character) is one word."""
    words: list[str] = []
    word: list[str] = []
    quoted = escaped = in_word = False
    for ch in line:
        if escaped:
            word.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted, in_word = not quoted, True
        elif ch in " \t" and not quoted:
            if in_word:
                words.append("".join(word))
            word, in_word = [], False
        else:
            word.append(ch)
            in_word = True
    if quoted:
        return ["<unbalanced>"]
    if in_word:
        words.append("".join(word))
    return words


def foreign_iptables_lines(text: str) -> list[str]:
    """The lines of a restore file that touch anything but our chains: other tables, other
    chains, commands other than declaring, appending to or deleting our chains, and rules of
    built-in chains other than jumps to ours; an unterminated table counts too."""
    foreign: list[str] = []
    table = None
    for line in text.split("\n"):
        words = iptables_words(line)
        if not words or line.startswith("#"):
            continue
        first = words[0]
        if table is None:
            if first.startswith("*") and len(words) == 1 and first[1:] in _BUILTIN:
                table = first[1:]
            else:
                foreign.append(line)
            continue
        if words == ["COMMIT"]:
            table = None
        elif first.startswith(":"):
            if not (is_our_chain(first[1:]) and words[1:] == ["-", "[0:0]"]):
                foreign.append(line)
        elif first == "-X":
            if not (len(words) == 2 and is_our_chain(words[1])):
                foreign.append(line)
        elif first in ("-A", "-I") and len(words) > 1:
            if not _rule_is_ours(table, words):
                foreign.append(line)
        else:
            foreign.append(line)
    if table is not None:
        foreign.append(f"<table {table} not committed>")
    return foreign


def _rule_is_ours(table: str, words: list[str]) -> bool:
    chain, rest = words[1], words[2:]
    if any(w in _COMMANDS for w in rest):
        return False
    targets = [rest[i + 1] for i, w in enumerate(rest[:-1]) if w in ("-j", "-g", "--jump", "--goto")]
    if len(targets) > 1 or rest[-1:] in (["-j"], ["-g"]):
        return False
    if chain in _BUILTIN[table]:
        return words[0] == "-I" and len(targets) == 1 and is_our_chain(targets[0])
    return is_our_chain(chain) and all(is_our_chain(t) or t in _STANDARD_TARGETS for t in targets)
