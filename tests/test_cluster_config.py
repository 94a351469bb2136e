"""Issue 15 items 3 and 4: where a cluster's settings live (the kube-proxy and kubeadm-config
ConfigMaps, KubeProxyConfiguration v1alpha2, kubeadm's ClusterConfiguration) and ServiceCIDR
objects (the ranges ``--allocate`` uses; nftables mode's drop of unallocated service IPs)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dataplane.compiler import compile_rules
from dataplane.controllers.allocation import allocate_cluster
from dataplane.errors import InputError
from dataplane.input.cluster import load_cluster
from dataplane.model import ServiceCIDR
from dataplane.runtime.proxier import Proxier, RecordingRunner

# The ConfigMap as `kubectl get cm -n kube-system kube-proxy -o yaml` prints it on a kind cluster
# (kind v0.2x: kubeadm writes config.conf from kind's kubeadm template, which sets clusterCIDR to
# the pod subnet 10.244.0.0/16 and mode iptables; detectLocalMode "" means ClusterCIDR).
# Reconstructed from kind's pkg/cluster/internal/kubeadm/config.go template and kube-proxy's
# v1alpha1 defaults as written back by kubeadm; metadata as the API server returns it.
KIND_KUBE_PROXY_CM = r'''
apiVersion: v1
data:
  config.conf: |-
    apiVersion: kubeproxy.config.k8s.io/v1alpha1
    bindAddress: 0.0.0.0
    bindAddressHardFail: false
    clientConnection:
      acceptContentTypes: ""
      burst: 0
      contentType: ""
      kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
      qps: 0
    clusterCIDR: 10.244.0.0/16
    configSyncPeriod: 0s
    conntrack:
      maxPerCore: 0
      min: null
      tcpBeLiberal: false
      tcpCloseWaitTimeout: null
      tcpEstablishedTimeout: null
      udpStreamTimeout: 0s
      udpTimeout: 0s
    detectLocal:
      bridgeInterface: ""
      interfaceNamePrefix: ""
    detectLocalMode: ""
    enableProfiling: false
    healthzBindAddress: ""
    hostnameOverride: ""
    iptables:
      localhostNodePorts: null
      masqueradeAll: false
      masqueradeBit: null
      minSyncPeriod: 1s
      syncPeriod: 0s
    ipvs:
      excludeCIDRs: null
      minSyncPeriod: 0s
      scheduler: ""
      strictARP: false
      syncPeriod: 0s
      tcpFinTimeout: 0s
      tcpTimeout: 0s
      udpTimeout: 0s
    kind: KubeProxyConfiguration
    logging:
      flushFrequency: 0
      options:
        json:
          infoBufferSize: "0"
        text:
          infoBufferSize: "0"
      verbosity: 0
    metricsBindAddress: ""
    mode: iptables
    nftables:
      masqueradeAll: false
      masqueradeBit: null
      minSyncPeriod: 0s
      syncPeriod: 0s
    nodePortAddresses: null
    oomScoreAdj: null
    portRange: ""
    showHiddenMetricsForVersion: ""
    winkernel:
      enableDSR: false
      forwardHealthCheckVip: false
      networkName: ""
      rootHnsEndpointName: ""
      sourceVip: ""
  kubeconfig.conf: |-
    apiVersion: v1
    kind: Config
    clusters:
    - cluster:
        certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
        server: https://kind-control-plane:6443
      name: default
    contexts:
    - context:
        cluster: default
        namespace: default
        user: default
      name: default
    current-context: default
    users:
    - name: default
      user:
        tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
kind: ConfigMap
metadata:
  annotations:
    kubeadm.kubernetes.io/component-config.hash: sha256:8d4f5a3a0c8f1f3e1c2a7b6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f
  creationTimestamp: "2025-05-20T09:12:41Z"
  labels:
    app: kube-proxy
  name: kube-proxy
  namespace: kube-system
  resourceVersion: "236"
  uid: 5b1bc0e8-8e3f-4a9e-9d43-7c1e0e3b8c11
'''

NODE = """
apiVersion: v1
kind: Node
metadata: {name: kind-worker}
spec: {podCIDR: 10.244.1.0/24}
status:
  addresses: [{type: InternalIP, address: 172.18.0.3}, {type: Hostname, address: kind-worker}]
"""

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.12.34
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.244.1.5], nodeName: kind-worker}]
"""


def write(tmp_path: Path, name: str, *docs: str) -> str:
    path = tmp_path / name
    path.write_text("\n---\n".join(textwrap.dedent(d).strip() for d in docs) + "\n")
    return str(path)


def problems(paths: list[str]) -> list[str]:
    with pytest.raises(InputError) as excinfo:
        load_cluster(paths)
    return [str(p) for p in excinfo.value.problems]


# ------------------------------------------------------------------ the kube-proxy ConfigMap


def test_kind_configmap_gives_the_local_traffic_masquerade_rules(tmp_path):
    """kind's ConfigMap sets clusterCIDR: the compile masquerades off-cluster ClusterIP traffic
    (ClusterCIDR detector), which plain defaults (no detector) do not."""
    cm = write(tmp_path, "cm.yaml", KIND_KUBE_PROXY_CM)
    base = write(tmp_path, "cluster.yaml", NODE, SERVICE)
    loaded = load_cluster([cm, base])
    config = loaded.cluster.proxy_config
    assert (config.mode, config.cluster_cidrs, config.detect_local_mode) == ("iptables", ("10.244.0.0/16",),
                                                                            "ClusterCIDR")
    assert config.ref.where() == f"{cm}: document 1: ConfigMap kube-system/kube-proxy"
    assert loaded.warnings == ()
    rule = ("! -s 10.244.0.0/16 -d 10.96.12.34/32 -p tcp -m comment --comment \"default/web:http cluster IP\" "
            "-m tcp --dport 80 -j KUBE-MARK-MASQ")
    assert rule in compile_rules(loaded.cluster, "kind-worker").text
    assert "-j KUBE-MARK-MASQ" not in compile_rules(load_cluster([base]).cluster, "kind-worker").text.replace(
        "-s 10.244.1.5/32 -m comment --comment \"default/web:http\" -j KUBE-MARK-MASQ", "")
    nft = compile_rules(loaded.cluster, "kind-worker", backend="nftables").text
    assert "ip daddr 10.96.12.34 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade" in nft


def test_configmap_problems_name_the_configmap_the_key_and_the_inner_field(tmp_path):
    bad = KIND_KUBE_PROXY_CM.replace("    mode: iptables", "    mode: ipvs").replace(
        "clusterCIDR: 10.244.0.0/16", "clusterCIDR: 10.244.0.0/66")
    cm = write(tmp_path, "cm.yaml", bad)
    assert problems([cm]) == [
        f"{cm}: document 1: ConfigMap kube-system/kube-proxy: data.config.conf: clusterCIDR: Invalid value: "
        '"10.244.0.0/66": must be a valid CIDR block (e.g. 10.100.0.0/16 or fde4:8dba:82e1::/48)',
        f"{cm}: document 1: ConfigMap kube-system/kube-proxy: data.config.conf: mode: Unsupported value: "
        '"ipvs": kube-dataplane supports only "iptables" and "nftables" (blank means "iptables")',
    ]


def test_configmap_inner_yaml_kind_version_and_missing_key(tmp_path):
    def cm(data: str) -> str:
        return ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kube-proxy, namespace: kube-system}\n"
                + data)

    where = "document 1: ConfigMap kube-system/kube-proxy"
    path = write(tmp_path, "a.yaml", cm("data:\n  config.conf: 'mode: [unclosed'\n"))
    (line,) = problems([path])
    assert line.startswith(f"{path}: {where}: data.config.conf: line 2, column 1: ")
    assert "cannot parse YAML" in line
    path = write(tmp_path, "b.yaml", cm("data:\n  config.conf: 'apiVersion: v1\n\n    kind: Pod'\n"))
    assert problems([path]) == [f'{path}: {where}: data.config.conf: kind: Unsupported value: "Pod": '
                                'supported values: "KubeProxyConfiguration"']
    path = write(tmp_path, "c.yaml", cm("data:\n  config.conf: 'apiVersion: kubeproxy.config.k8s.io/v9\n\n"
                                        "    kind: KubeProxyConfiguration'\n"))
    assert problems([path]) == [
        f'{path}: {where}: data.config.conf: apiVersion: Unsupported value: "kubeproxy.config.k8s.io/v9": '
        'supported values: "kubeproxy.config.k8s.io/v1alpha1", "kubeproxy.config.k8s.io/v1alpha2"']
    path = write(tmp_path, "d.yaml", cm("data: {kubeconfig.conf: x}\n"))
    assert problems([path]) == [f"{path}: {where}: data.config.conf: Required value: the configuration is missing"]


def test_other_configmaps_are_ignored_with_a_warning(tmp_path):
    path = write(tmp_path, "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app, namespace: shop}\n"
                                      "data: {config.conf: 'not read'}")
    loaded = load_cluster([path])
    assert loaded.warnings == (f"{path}: document 1: ignoring v1 ConfigMap shop/app (not used by the dataplane)",)
    assert not loaded.cluster.proxy_config_given


def test_a_second_configuration_in_a_configmap_is_a_duplicate(tmp_path):
    direct = write(tmp_path, "kpc.yaml", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration")
    cm = write(tmp_path, "cm.yaml", KIND_KUBE_PROXY_CM)
    assert problems([direct, cm]) == [
        f"{cm}: document 1: ConfigMap kube-system/kube-proxy: Duplicate value: only one KubeProxyConfiguration "
        f"may be given; the first is at {direct}: document 1"]


# ------------------------------------------------------------------ v1alpha2


def test_v1alpha2_fields(tmp_path):
    path = write(tmp_path, "kpc.yaml", """
        apiVersion: kubeproxy.config.k8s.io/v1alpha2
        kind: KubeProxyConfiguration
        mode: nftables
        detectLocal: {clusterCIDRs: [10.244.0.0/16, 'fd00:10:244::/56']}
        linux: {masqueradeAll: true}
        nftables: {masqueradeBit: 10}
        nodePortAddresses: [primary]
        """)
    config = load_cluster([path]).cluster.proxy_config
    assert config.cluster_cidrs == ("10.244.0.0/16", "fd00:10:244::/56")
    assert (config.iptables_masquerade_all, config.nftables_masquerade_all) == (True, True)
    assert config.iptables_localhost_node_ports is False  # v1alpha2's default
    assert (config.mode, config.nftables_masquerade_bit, config.node_port_addresses) == ("nftables", 10, ("primary",))
    v1 = write(tmp_path, "v1.yaml", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration")
    assert load_cluster([v1]).cluster.proxy_config.iptables_localhost_node_ports is True


def test_v1alpha2_cluster_cidrs_errors(tmp_path):
    path = write(tmp_path, "kpc.yaml", """
        apiVersion: kubeproxy.config.k8s.io/v1alpha2
        kind: KubeProxyConfiguration
        detectLocal: {clusterCIDRs: [10.244.0.0/16, 10.245.0.0/16]}
        """)
    assert problems([path]) == [
        f'{path}: document 1: KubeProxyConfiguration: detectLocal.clusterCIDRs: Invalid value: '
        '[]string{"10.244.0.0/16", "10.245.0.0/16"}: must be a valid DualStack CIDR (e.g. 10.100.0.0/16,'
        'fde4:8dba:82e1::/48)']


# ------------------------------------------------------------------ kubeadm ClusterConfiguration


KUBEADM = """
apiVersion: kubeadm.k8s.io/{version}
kind: ClusterConfiguration
kubernetesVersion: v1.33.1
networking:
  dnsDomain: cluster.local
  podSubnet: "{pods}"{services}
"""


def kubeadm(version: str = "v1beta4", pods: str = "10.244.0.0/16", services: str = "") -> str:
    return KUBEADM.format(version=version, pods=pods, services=f"\n  serviceSubnet: {services}" if services else "")


@pytest.mark.parametrize("version", ["v1beta3", "v1beta4"])
def test_kubeadm_pod_subnet_becomes_cluster_cidr(tmp_path, version):
    path = write(tmp_path, "kubeadm.yaml", kubeadm(version), NODE, SERVICE)
    loaded = load_cluster([path])
    assert loaded.cluster.proxy_config.cluster_cidrs == ("10.244.0.0/16",)
    assert loaded.cluster.service_subnet == ("10.96.0.0/12",)  # kubeadm's default
    assert loaded.warnings == ()
    assert "! -s 10.244.0.0/16 -d 10.96.12.34/32" in compile_rules(loaded.cluster, "kind-worker").text


def test_kubeadm_warns_when_cluster_cidr_differs(tmp_path):
    cm = write(tmp_path, "cm.yaml", KIND_KUBE_PROXY_CM)
    adm = write(tmp_path, "kubeadm.yaml", kubeadm(pods="10.200.0.0/16"))
    loaded = load_cluster([cm, adm])
    assert loaded.cluster.proxy_config.cluster_cidrs == ("10.244.0.0/16",)  # the user's value stays
    assert loaded.warnings == (
        f'{adm}: document 1: ClusterConfiguration: The recommended value for "clusterCIDR" in '
        '"KubeProxyConfiguration" is: 10.200.0.0/16; the provided value is: 10.244.0.0/16',)


def test_kubeadm_config_configmap_and_service_subnet_range(tmp_path):
    inner = textwrap.indent(textwrap.dedent(kubeadm(services="10.43.0.0/16")).strip(), "    ")
    cm = write(tmp_path, "cm.yaml", "apiVersion: v1\nkind: ConfigMap\n"
                                    "metadata: {name: kubeadm-config, namespace: kube-system}\n"
                                    f"data:\n  ClusterConfiguration: |\n{inner}\n")
    svc = write(tmp_path, "svc.yaml", SERVICE.replace("10.96.12.34", "10.43.0.10"))
    cluster = load_cluster([cm, svc]).cluster
    assert cluster.service_subnet == ("10.43.0.0/16",)
    assert allocate_cluster(cluster, seed=1).services["default/web"].cluster_ips == ("10.43.0.10",)
    bad = write(tmp_path, "bad.yaml", kubeadm(pods="10.244.0.0/16,10.245.0.0/16"))
    assert problems([bad]) == [
        f'{bad}: document 1: ClusterConfiguration: networking.podSubnet: Invalid value: '
        '"10.244.0.0/16,10.245.0.0/16": expected one (IPv4 or IPv6) CIDR or two CIDRs from each family for '
        'dual-stack networking (e.g. 10.100.0.0/16,fde4:8dba:82e1::/48)']


# ------------------------------------------------------------------ ServiceCIDR


def service_cidr(name: str, *cidrs: str, ready: str = "True") -> str:
    return (f"apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {{name: {name}}}\n"
            f"spec: {{cidrs: [{', '.join(repr(c) for c in cidrs)}]}}\n"
            f"status: {{conditions: [{{type: Ready, status: '{ready}', reason: '', message: ''}}]}}")


K3S = """
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: kubernetes, namespace: default}
  spec:
    clusterIP: 10.43.0.1
    clusterIPs: [10.43.0.1]
    ports: [{name: https, port: 443, protocol: TCP, targetPort: 6443}]
- apiVersion: v1
  kind: Service
  metadata: {name: kube-dns, namespace: kube-system}
  spec:
    clusterIP: 10.43.0.10
    selector: {k8s-app: kube-dns}
    ports: [{name: dns, port: 53, protocol: UDP, targetPort: 53}]
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: default}
  spec:
    selector: {app: web}
    ports: [{port: 80}]
"""


def test_k3s_dump_allocates_from_its_service_cidr(tmp_path):
    dump = write(tmp_path, "k3s.yaml", K3S)
    with pytest.raises(InputError) as excinfo:  # without its ServiceCIDR: the default range, and a hint
        allocate_cluster(load_cluster([dump]).cluster)
    assert "--service-cluster-ip-range" in str(excinfo.value) and "ServiceCIDR" in str(excinfo.value)
    cidr = write(tmp_path, "cidr.yaml", service_cidr("kubernetes", "10.43.0.0/16"))
    cluster = load_cluster([dump, cidr]).cluster
    assert cluster.service_cidrs == (ServiceCIDR("kubernetes", ("10.43.0.0/16",)),)
    result = allocate_cluster(cluster, seed=1)
    (ip,) = result.services["default/web"].cluster_ips
    assert ip.startswith("10.43.") and ip not in ("10.43.0.1", "10.43.0.10")
    assert result.state.service_cidrs == ("10.43.0.0/16",)
    # the flag wins over the objects
    with pytest.raises(InputError):
        allocate_cluster(cluster, service_cidrs="10.96.0.0/12")


def test_union_of_service_cidrs_and_readiness(tmp_path):
    """Two IPv4 ServiceCIDRs: ClusterIPs of either are accepted; a full one is left for the next;
    a ServiceCIDR whose Ready condition is False gets no new ClusterIPs."""
    svcs = [f"apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\n"
            "spec: {ports: [{port: 80}]}" for i in range(20)]
    given = SERVICE.replace("10.96.12.34", "10.100.0.200")
    path = write(tmp_path, "c.yaml", service_cidr("kubernetes", "10.96.0.0/28"), service_cidr("extra", "10.100.0.0/24"),
                 given, *svcs)
    cluster = load_cluster([path]).cluster
    ips = [a.cluster_ips[0] for a in allocate_cluster(cluster, seed=3).services.values()]
    assert len(set(ips)) == 21 and "10.100.0.200" in ips
    assert all(ip.startswith(("10.96.0.", "10.100.0.")) for ip in ips)
    assert 1 <= sum(ip.startswith("10.96.0.") for ip in ips) <= 14  # both used; the /28 holds 14
    path = write(tmp_path, "d.yaml", service_cidr("kubernetes", "10.96.0.0/24"),
                 service_cidr("extra", "10.100.0.0/24", ready="False"), *svcs)
    ips = [a.cluster_ips[0] for a in allocate_cluster(load_cluster([path]).cluster, seed=3).services.values()]
    assert all(ip.startswith("10.96.0.") for ip in ips)


def test_service_cidr_validation(tmp_path):
    path = write(tmp_path, "c.yaml", service_cidr("a", "10.0.0.0/16", "10.1.0.0/16"),
                 service_cidr("b", "10.0.0.0/16", "fd00::/108", "10.2.0.0/16"), service_cidr("c", "10.0.0.0/66"),
                 "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: d}\nspec: {}")
    assert problems([path]) == [
        f'{path}: document 1: ServiceCIDR a: spec.cidrs: Invalid value: []string{{"10.0.0.0/16", "10.1.0.0/16"}}: '
        "may specify no more than one IP for each IP family, i.e 192.168.0.0/24 and 2001:db8::/64",
        f"{path}: document 2: ServiceCIDR b: spec.cidrs: Too many: 3: must have at most 2 items",
        f'{path}: document 3: ServiceCIDR c: spec.cidrs[0]: Invalid value: "10.0.0.0/66": must be a valid CIDR '
        "value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        f"{path}: document 4: ServiceCIDR d: spec.cidrs: Required value",
    ]


# ------------------------------------------------------------------ nftables mode: cluster-ips-check


DUAL_NODE = """
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 192.0.2.1}, {type: InternalIP, address: '2001:db8::1'}]}
"""


def test_nftables_drops_unallocated_service_ips_per_family(tmp_path):
    path = write(tmp_path, "c.yaml", DUAL_NODE, service_cidr("kubernetes", "10.96.0.0/16", "fd00:96::/108"),
                 service_cidr("extra", "10.100.0.0/24"), SERVICE)
    cluster = load_cluster([path]).cluster
    v4 = compile_rules(cluster, "n1", backend="nftables").text
    assert ('ip daddr { 10.96.0.0/16, 10.100.0.0/24 } drop comment "Drop traffic to unallocated ClusterIPs"'
            in v4)
    v6 = compile_rules(cluster, "n1", backend="nftables", family="ipv6").text
    assert 'ip6 daddr { fd00:96::/108 } drop comment "Drop traffic to unallocated ClusterIPs"' in v6
    assert "10.96.0.0/16" not in compile_rules(cluster, "n1", backend="iptables").text
    assert compile_rules(cluster, "n1", backend="iptables").plan.service_cidrs == ()
    without = load_cluster([write(tmp_path, "d.yaml", DUAL_NODE, SERVICE)]).cluster
    assert "Drop traffic to unallocated" not in compile_rules(without, "n1", backend="nftables").text


def test_proxier_service_cidr_change_is_a_full_sync(tmp_path):
    cluster = load_cluster([write(tmp_path, "c.yaml", DUAL_NODE, SERVICE)]).cluster
    runner = RecordingRunner()
    proxier = Proxier("n1", backend="nftables", cluster=cluster, runner=runner)
    assert proxier.sync().kind == "full"
    assert proxier.sync().kind == "none"
    proxier.set_service_cidrs([ServiceCIDR("kubernetes", ("10.96.0.0/16",))])
    result = proxier.sync()
    assert result.kind == "full"
    assert "ip daddr { 10.96.0.0/16 } drop" in runner.applied[-1][2]
    assert proxier.cluster().service_cidrs == (ServiceCIDR("kubernetes", ("10.96.0.0/16",)),)


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_tracer_follows_each_mode(tmp_path, backend):
    """The packet tracer reads the new rule: nftables drops an unallocated service IP and rejects a
    ClusterIP's unserved port, from outside and from the node; iptables has no verdict for either."""
    from dataplane.trace import Packet, trace

    path = write(tmp_path, "c.yaml", DUAL_NODE, service_cidr("kubernetes", "10.96.0.0/16"), SERVICE)
    result = compile_rules(load_cluster([path]).cluster, "n1", backend=backend)
    for from_node in (False, True):
        src = "192.0.2.1" if from_node else "192.0.2.100"
        unallocated = trace(result.text, backend, Packet(src, "10.96.5.77", 80, "tcp"), local_ips=result.plan.node_ips)
        wrong_port = trace(result.text, backend, Packet(src, "10.96.12.34", 8080, "tcp"),
                           local_ips=result.plan.node_ips)
        good = trace(result.text, backend, Packet(src, "10.96.12.34", 80, "tcp"), local_ips=result.plan.node_ips)
        assert good.endpoints == (("10.244.1.5:8080", 1.0),)
        if backend == "nftables":
            assert (unallocated.verdict, wrong_port.verdict) == ("drop", "reject")
        else:
            assert unallocated.verdict not in ("drop", "reject") and wrong_port.verdict not in ("drop", "reject")
