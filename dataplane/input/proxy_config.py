"""The KubeProxyConfiguration builder (``kubeproxy.config.k8s.io/v1alpha1`` and ``v1alpha2``), with
kube-proxy's defaults.

``v1alpha2`` (KEP-784) moves or renames the fields we read: ``clusterCIDR`` (a comma-separated
string) becomes the list ``detectLocal.clusterCIDRs``; ``iptables.masqueradeAll`` and
``nftables.masqueradeAll`` become one ``linux.masqueradeAll``; ``iptables.localhostNodePorts``
defaults to false. ``mode``, ``detectLocalMode``, ``detectLocal.bridgeInterface|interfaceNamePrefix``,
``nodePortAddresses`` and the ``masqueradeBit`` fields keep their place.
"""
from __future__ import annotations

from typing import Optional

from .. import ipaddrs
from ..model import ProxyConfig
from ..ruletext import interface_name_errors
from .messages import quote
from .validation import Checker, index_path


# ======================================================================
# KubeProxyConfiguration
# ======================================================================

PROXY_MODES = ("iptables", "nftables")
DETECT_LOCAL_MODES = ("ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix", "")
NODE_PORT_ADDRESSES_PRIMARY = "primary"
API_V1ALPHA1 = "kubeproxy.config.k8s.io/v1alpha1"
API_V1ALPHA2 = "kubeproxy.config.k8s.io/v1alpha2"


def parse_proxy_config(c: Checker, obj: dict) -> ProxyConfig:
    """A KubeProxyConfiguration (v1alpha1, or v1alpha2 by its ``apiVersion``), with kube-proxy's defaults.

    Paths are the YAML field names; messages are kube-proxy's.
    """
    metadata = c.get_map(obj, "metadata", "metadata")
    c.identify("", c.get_str(metadata, "name", "metadata.name") or "")
    v2 = obj.get("apiVersion") == API_V1ALPHA2
    mode, bridge, prefix = _detect_local(c, obj)
    iptables = c.get_map(obj, "iptables", "iptables")
    nftables = c.get_map(obj, "nftables", "nftables")
    if v2:
        linux = c.get_map(obj, "linux", "linux")
        masquerade_all = bool(c.get_bool(linux, "masqueradeAll", "linux.masqueradeAll", False))
        iptables_masquerade_all = nftables_masquerade_all = masquerade_all
        cluster_cidrs = _cluster_cidr_list(c, c.get_map(obj, "detectLocal", "detectLocal"))
    else:
        iptables_masquerade_all = bool(c.get_bool(iptables, "masqueradeAll", "iptables.masqueradeAll", False))
        nftables_masquerade_all = bool(c.get_bool(nftables, "masqueradeAll", "nftables.masqueradeAll", False))
        cluster_cidrs = _cluster_cidrs(c, obj)
    return ProxyConfig(
        mode=_proxy_mode(c, obj),
        cluster_cidrs=cluster_cidrs,
        detect_local_mode=mode,
        bridge_interface=bridge,
        interface_name_prefix=prefix,
        node_port_addresses=_node_port_addresses(c, obj),
        iptables_masquerade_all=iptables_masquerade_all,
        iptables_masquerade_bit=_masquerade_bit(c, iptables, "iptables.masqueradeBit"),
        iptables_localhost_node_ports=bool(
            c.get_bool(iptables, "localhostNodePorts", "iptables.localhostNodePorts", not v2)
        ),
        nftables_masquerade_all=nftables_masquerade_all,
        nftables_masquerade_bit=_masquerade_bit(c, nftables, "nftables.masqueradeBit"),
        external_ip_cidrs=_external_ip_cidrs(c, obj),
        ref=c.ref(),
    )


def _proxy_mode(c: Checker, obj: dict) -> str:
    """``mode``: blank means iptables; ipvs and kernelspace are not implemented here."""
    mode = c.get_str(obj, "mode", "mode")
    if not mode:
        return "iptables"
    if mode not in PROXY_MODES:
        supported = '"iptables" and "nftables" (blank means "iptables")'
        c.add("mode", f"Unsupported value: {quote(mode)}: kube-dataplane supports only {supported}")
        return "iptables"
    return mode


def _cluster_cidrs(c: Checker, obj: dict) -> tuple[str, ...]:
    """``clusterCIDR``: one CIDR, or two of different families, comma separated."""
    value = c.get_str(obj, "clusterCIDR", "clusterCIDR")
    if not value:
        return ()
    parts = [part.strip() for part in value.split(",")]
    if len(parts) > 2:
        c.invalid(
            "clusterCIDR", value,
            "only one CIDR allowed or a valid DualStack CIDR (e.g. 10.100.0.0/16,fde4:8dba:82e1::/48)",
        )
        return ()
    try:
        cidrs = tuple(ipaddrs.canonical_cidr(part) for part in parts)
    except ValueError:
        c.invalid("clusterCIDR", value, "must be a valid CIDR block (e.g. 10.100.0.0/16 or fde4:8dba:82e1::/48)")
        return ()
    if len(cidrs) == 2 and not ipaddrs.is_dual_stack([ipaddrs.cidr_family(x) for x in cidrs]):
        c.invalid("clusterCIDR", value, "must be a valid DualStack CIDR (e.g. 10.100.0.0/16,fde4:8dba:82e1::/48)")
    return cidrs


def _cluster_cidr_list(c: Checker, detect: dict) -> tuple[str, ...]:
    """v1alpha2 ``detectLocal.clusterCIDRs``: a list of one CIDR, or two of different families."""
    path = "detectLocal.clusterCIDRs"
    values = c.get_strs(detect, "clusterCIDRs", path) or []
    if len(values) > 2:
        c.invalid(path, values, "only one CIDR allowed or a valid DualStack CIDR (e.g. 10.100.0.0/16,fde4:8dba:82e1::/48)")
        return ()
    cidrs = []
    for i, value in enumerate(values):
        canonical = c.cidr(index_path(path, i), value.strip(),
                           "must be a valid CIDR block (e.g. 10.100.0.0/16 or fde4:8dba:82e1::/48)")
        if canonical is not None:
            cidrs.append(canonical)
    if len(cidrs) == 2 and not ipaddrs.is_dual_stack([ipaddrs.cidr_family(x) for x in cidrs]):
        c.invalid(path, values, "must be a valid DualStack CIDR (e.g. 10.100.0.0/16,fde4:8dba:82e1::/48)")
    return tuple(cidrs)


def _detect_local(c: Checker, obj: dict) -> tuple[str, str, str]:
    """``detectLocalMode`` (blank means ClusterCIDR) and the interface it may need.

    kube-proxy checks only that the selected mode's interface field is set: it hands the
    name to iptables and nft as a process argument. We write it into rules text, so a value,
    whichever mode is selected, must also be a Linux interface name (for the prefix, one the
    rules' wildcard still fits) without characters that are special in rule text
    (:func:`dataplane.ruletext.interface_name_errors`).
    """
    mode = c.get_str(obj, "detectLocalMode", "detectLocalMode") or ""
    if mode not in DETECT_LOCAL_MODES:
        c.unsupported("detectLocalMode", mode, DETECT_LOCAL_MODES)
    detect = c.get_map(obj, "detectLocal", "detectLocal")
    bridge = c.get_str(detect, "bridgeInterface", "detectLocal.bridgeInterface") or ""
    prefix = c.get_str(detect, "interfaceNamePrefix", "detectLocal.interfaceNamePrefix") or ""
    if mode == "BridgeInterface" and not bridge:
        c.invalid("detectLocal.bridgeInterface", bridge, "must not be empty")
    if mode == "InterfaceNamePrefix" and not prefix:
        c.invalid("detectLocal.interfaceNamePrefix", prefix, "must not be empty")
    if bridge:
        c.all_invalid("detectLocal.bridgeInterface", bridge, interface_name_errors(bridge))
    if prefix:
        c.all_invalid("detectLocal.interfaceNamePrefix", prefix, interface_name_errors(prefix, prefix=True))
    return mode or "ClusterCIDR", bridge, prefix


def _node_port_addresses(c: Checker, obj: dict) -> tuple[str, ...]:
    """``nodePortAddresses``: CIDRs (canonical), or the single value "primary"."""
    values = c.get_strs(obj, "nodePortAddresses", "nodePortAddresses") or []
    result = []
    for i, value in enumerate(values):
        path = index_path("nodePortAddresses", i)
        if value == NODE_PORT_ADDRESSES_PRIMARY:
            if len(values) > 1:
                c.invalid(path, value, "can't use both 'primary' and CIDRs")
            result.append(value)
            continue
        canonical = c.cidr(path, value, "must be a valid CIDR")
        if canonical is not None:
            result.append(canonical)
    return tuple(result)


def _external_ip_cidrs(c: Checker, obj: dict) -> Optional[tuple[str, ...]]:
    """``externalIPCIDRs``, a kube-dataplane extension (kube-proxy has no such field): the CIDRs
    that Services' ``spec.externalIPs`` may use (canonical); None when unset (any external IP);
    an empty list allows none."""
    if obj.get("externalIPCIDRs") is None:
        return None
    result = []
    for i, value in enumerate(c.get_strs(obj, "externalIPCIDRs", "externalIPCIDRs") or []):
        canonical = c.cidr(index_path("externalIPCIDRs", i), value, "must be a valid CIDR")
        if canonical is not None:
            result.append(canonical)
    return tuple(result)


def _masquerade_bit(c: Checker, section: dict, path: str) -> int:
    """A masquerade mark bit, 0..31 (default 14)."""
    bit = c.get_int(section, "masqueradeBit", path, 14)
    if bit is None:
        return 14
    if not 0 <= bit <= 31:
        c.invalid(path, bit, "must be within the range [0, 31]")
    return bit
