"""Where a cluster's settings live: kubeadm's ClusterConfiguration, the ``kube-system`` ConfigMaps
that carry it and kube-proxy's configuration, and ``networking.k8s.io/v1`` ServiceCIDRs.

* ``kubeadm.k8s.io/v1beta3|v1beta4`` ClusterConfiguration: ``networking.podSubnet`` and
  ``networking.serviceSubnet`` (default ``10.96.0.0/12``), as :class:`KubeadmNetworking`.
  kubeadm's defaulting (``cmd/kubeadm/app/componentconfigs/kubeproxy.go``) copies ``podSubnet``
  into an empty ``clusterCIDR`` of kube-proxy's configuration, and warns when both are set and
  differ (:func:`apply_kubeadm`); ``serviceSubnet`` is the API server's
  ``--service-cluster-ip-range``, never kube-proxy's.
* The ConfigMap ``kube-system/kube-proxy`` as ``kubectl get cm -o yaml`` prints it: key
  ``config.conf`` holds the KubeProxyConfiguration YAML. The ConfigMap ``kube-system/kubeadm-config``:
  key ``ClusterConfiguration``. A problem inside names the ConfigMap and ``data.<key>`` followed by
  the inner field.
* ServiceCIDR (cluster-scoped): ``spec.cidrs``, one or two CIDRs of different families; ready
  unless its ``Ready`` condition is False or it is being deleted.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Union

from .. import ipaddrs
from ..model import ObjectRef, ProxyConfig, ServiceCIDR
from .loader import documents_from_text
from .proxy_config import API_V1ALPHA1, API_V1ALPHA2, parse_proxy_config
from .validation import Checker, dns1123_subdomain_errors, index_path, object_meta

KUBEADM_VERSIONS = ("kubeadm.k8s.io/v1beta3", "kubeadm.k8s.io/v1beta4")
PROXY_CONFIG_VERSIONS = (API_V1ALPHA1, API_V1ALPHA2)
DEFAULT_SERVICE_SUBNET = "10.96.0.0/12"
KUBE_PROXY_CONFIG_MAP = ("kube-system", "kube-proxy")
KUBEADM_CONFIG_MAP = ("kube-system", "kubeadm-config")
# the ConfigMaps read, and the data key holding the configuration in each
CONFIG_MAP_KEYS = {KUBE_PROXY_CONFIG_MAP: "config.conf", KUBEADM_CONFIG_MAP: "ClusterConfiguration"}
_DUAL_STACK_EXAMPLE = "(e.g. 10.100.0.0/16,fde4:8dba:82e1::/48)"


@dataclass(frozen=True, slots=True)
class KubeadmNetworking:
    """kubeadm ClusterConfiguration ``networking``: the pod and service subnets (canonical CIDRs)."""

    pod_subnet: tuple[str, ...] = ()
    service_subnet: tuple[str, ...] = (DEFAULT_SERVICE_SUBNET,)
    pod_subnet_text: str = ""  # podSubnet as written, for kubeadm's warning
    ref: ObjectRef = field(default_factory=lambda: ObjectRef("ClusterConfiguration", "", ""),
                           compare=False, hash=False)


# ---------------------------------------------------------------- ServiceCIDR


def parse_service_cidr(c: Checker, obj: dict) -> ServiceCIDR:
    """A ``networking.k8s.io/v1`` ServiceCIDR, validated as the API server does."""
    meta = object_meta(c, obj, namespaced=False, name_errors=dns1123_subdomain_errors)
    spec = c.get_map(obj, "spec", "spec")
    values = c.get_strs(spec, "cidrs", "spec.cidrs") or []
    cidrs: list[str] = []
    if not values:
        c.required("spec.cidrs")
    elif len(values) > 2:
        c.too_many("spec.cidrs", len(values), 2)
    else:
        for i, value in enumerate(values):
            canonical = c.cidr(index_path("spec.cidrs", i), value)
            if canonical is not None:
                cidrs.append(canonical)
        if len(cidrs) == 2 and ipaddrs.cidr_family(cidrs[0]) == ipaddrs.cidr_family(cidrs[1]):
            c.invalid("spec.cidrs", values, "may specify no more than one IP for each IP family, i.e 192.168.0.0/24 "
                      "and 2001:db8::/64")
    ready = meta.metadata.get("deletionTimestamp") is None
    status = c.get_map(obj, "status", "status")
    for path, condition in c.get_maps(status, "conditions", "status.conditions"):
        if c.get_str(condition, "type", f"{path}.type") == "Ready":
            value = c.get_str(condition, "status", f"{path}.status")
            if value not in ("True", "False", "Unknown"):
                c.unsupported(f"{path}.status", value, ("True", "False", "Unknown"))
            elif value == "False":
                ready = False
    return ServiceCIDR(name=meta.name, cidrs=tuple(cidrs), ready=ready, ref=c.ref())


# ---------------------------------------------------------------- kubeadm


def _subnets(c: Checker, networking: dict, key: str, default: str) -> tuple[tuple[str, ...], str]:
    """``networking.<key>``: one CIDR or a dual-stack pair, comma separated (canonical, and as written)."""
    path = f"networking.{key}"
    text = c.get_str(networking, key, path) or default
    if not text:
        return (), ""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) > 2:
        c.invalid(path, text, f"expected one (IPv4 or IPv6) CIDR or two CIDRs from each family for dual-stack "
                  f"networking {_DUAL_STACK_EXAMPLE}")
        return (), text
    cidrs = []
    for part in parts:
        canonical = c.cidr(path, part, "couldn't parse subnet")
        if canonical is not None:
            cidrs.append(canonical)
    if len(cidrs) == 2 and ipaddrs.cidr_family(cidrs[0]) == ipaddrs.cidr_family(cidrs[1]):
        c.invalid(path, text, f"expected one (IPv4 or IPv6) CIDR or two CIDRs from each family for dual-stack "
                  f"networking {_DUAL_STACK_EXAMPLE}")
    return tuple(cidrs), text


def parse_cluster_configuration(c: Checker, obj: dict) -> KubeadmNetworking:
    """kubeadm's ClusterConfiguration (v1beta3 or v1beta4): its ``networking`` subnets."""
    c.identify("", "")
    networking = c.get_map(obj, "networking", "networking")
    pods, pod_text = _subnets(c, networking, "podSubnet", "")
    services, _ = _subnets(c, networking, "serviceSubnet", DEFAULT_SERVICE_SUBNET)
    return KubeadmNetworking(pod_subnet=pods, service_subnet=services, pod_subnet_text=pod_text, ref=c.ref())


def apply_kubeadm(config: ProxyConfig, networking: KubeadmNetworking) -> tuple[ProxyConfig, Optional[str]]:
    """kube-proxy's configuration as kubeadm defaults it from ``networking``, and kubeadm's warning.

    An empty ``clusterCIDR`` takes ``podSubnet``; both set and different, the configuration's
    value is kept and kubeadm's warning returned.
    """
    if not networking.pod_subnet:
        return config, None
    if not config.cluster_cidrs:
        return replace(config, cluster_cidrs=networking.pod_subnet), None
    if config.cluster_cidrs == networking.pod_subnet:
        return config, None
    ref = networking.ref
    where = f"{ref.source}: {ref.unit} {ref.index}: {ref.kind}" if ref.index else ref.kind
    if ref.name:
        where += f" {ref.display}"
    return config, (f'{where}: The recommended value for "clusterCIDR" in "KubeProxyConfiguration" is: '
                    f'{networking.pod_subnet_text}; the provided value is: {",".join(config.cluster_cidrs)}')


# ---------------------------------------------------------------- ConfigMaps


ConfigMapContent = Union[ProxyConfig, KubeadmNetworking]
_InnerParser = Callable[[Checker, dict], ConfigMapContent]


def config_map_key(obj: dict) -> Optional[str]:
    """The data key read from a ``v1`` ConfigMap, or None when the dataplane does not read it."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return None
    return CONFIG_MAP_KEYS.get((metadata.get("namespace"), metadata.get("name")))  # type: ignore[arg-type]


def parse_config_map(c: Checker, obj: dict) -> Optional[ConfigMapContent]:
    """``kube-system/kube-proxy`` (its KubeProxyConfiguration) or ``kube-system/kubeadm-config``
    (its ClusterConfiguration); problems inside name ``data.<key>`` and the inner field."""
    meta = object_meta(c, obj, namespaced=True, name_errors=dns1123_subdomain_errors)
    key = CONFIG_MAP_KEYS.get((meta.namespace, meta.name))
    if key is None:
        return None
    path = f"data.{key}"
    data = c.get_map(obj, "data", "data")
    text = c.get_str(data, key, path, default=None)
    if text is None:
        if data.get(key) is None:  # a value of the wrong type is reported by get_str
            c.required(path, "the configuration is missing")
        return None
    if key == "config.conf":
        kind, versions, inner_parser = "KubeProxyConfiguration", PROXY_CONFIG_VERSIONS, parse_proxy_config
    else:
        kind, versions, inner_parser = "ClusterConfiguration", KUBEADM_VERSIONS, parse_cluster_configuration
    docs, problems = documents_from_text(text, c.source)
    for problem in problems:
        where = ": ".join(part for part in (problem.field, problem.message) if part)
        c.add(path, where)
    if problems:
        return None
    if len(docs) != 1:
        c.invalid(path, f"{len(docs)} documents", f"must hold exactly one {kind}")
        return None
    inner = docs[0].obj
    if inner.get("kind") != kind:
        c.unsupported(f"{path}: kind", inner.get("kind"), (kind,))
        return None
    if inner.get("apiVersion") not in versions:
        c.unsupported(f"{path}: apiVersion", inner.get("apiVersion"), versions)
        return None
    checker = Checker(c.source, c.index, kind, c.unit)
    content = inner_parser(checker, inner)
    for problem in checker.problems():
        c.add(f"{path}: {problem.field}" if problem.field else path, problem.message)
    return replace(content, ref=c.ref())

