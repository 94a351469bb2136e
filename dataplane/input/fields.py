"""Unknown fields: what the API server's field validation (Warn mode) says of a misspelt field.

The API server decodes an object strictly (``sigs.k8s.io/json`` ``UnmarshalStrict``,
case-sensitive) and, with ``fieldValidation=Warn`` (its default), turns each field
that the type does not have into the warning ``unknown field "spec.ports[0].targetPrt"``;
kube-proxy decodes its configuration strictly the same way. :func:`unknown_fields` finds
those paths in one object of a kind the dataplane reads, so that ``tpye:`` is said
rather than silently read as "unset".

The known fields are those of the upstream types (``k8s.io/api`` ``core/v1/types.go``,
``discovery/v1/types.go``, ``meta/v1`` ``ObjectMeta``, ``k8s.io/kube-proxy``
``config/v1alpha1/types.go``), as of Kubernetes 1.35. A shape lists either **every**
field of a struct (its keys are checked) or, where a struct is large, changes often
or is written by the system (a Pod's or Node's ``status``, a container's ``resources``,
``securityContext``, probes, volumes...), nothing: such a part is not checked at all,
so that a real manifest (a Pod from ``kubectl get pod -o yaml`` with ``status`` and
``managedFields``, even with its ``resourceVersion`` removed) never gets a false warning. Maps whose keys are data (labels,
annotations, selectors, ``featureGates``) are never checked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union


@dataclass(frozen=True, slots=True)
class Struct:
    """A JSON object: ``known`` its every field (None: not checked at this level) and
    ``children`` the shapes of fields to look into."""

    known: Optional[frozenset[str]]
    children: Mapping[str, "Shape"] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ListOf:
    """A JSON list whose items have the shape ``item``."""

    item: Struct


Shape = Union[Struct, ListOf]


def _struct(names: str, **children: Shape) -> Struct:
    """A struct with the fields ``names`` (space-separated) and ``children``, all of them known."""
    known = frozenset(names.split()) | frozenset(children)
    return Struct(known, children)


def _open(**children: Shape) -> Struct:
    """A struct whose own fields are not checked (not all listed here), only ``children``."""
    return Struct(None, children)


# -- meta/v1 and core/v1 pieces shared by several kinds

_OWNER_REFERENCE = _struct("apiVersion kind name uid controller blockOwnerDeletion")
_OBJECT_META = _struct(
    "name generateName namespace selfLink uid resourceVersion generation creationTimestamp "
    "deletionTimestamp deletionGracePeriodSeconds labels annotations finalizers managedFields",
    ownerReferences=ListOf(_OWNER_REFERENCE),
)
_OBJECT_REFERENCE = _struct("kind namespace name uid apiVersion resourceVersion fieldPath")
_CONDITION = _struct("type status observedGeneration lastTransitionTime reason message")  # metav1.Condition

# -- Service (core/v1 ServiceSpec, ServicePort, ServiceStatus)

_SERVICE_PORT = _struct("name protocol appProtocol port targetPort nodePort")
_SERVICE_SPEC = _struct(
    "selector clusterIP clusterIPs type externalIPs sessionAffinity loadBalancerIP "
    "loadBalancerSourceRanges externalName externalTrafficPolicy healthCheckNodePort "
    "publishNotReadyAddresses ipFamilies ipFamilyPolicy allocateLoadBalancerNodePorts "
    "loadBalancerClass internalTrafficPolicy trafficDistribution",
    ports=ListOf(_SERVICE_PORT),
    sessionAffinityConfig=_struct("", clientIP=_struct("timeoutSeconds")),
)
_LOAD_BALANCER_INGRESS = _struct("ip hostname ipMode", ports=ListOf(_struct("port protocol error")))
_SERVICE = _struct(
    "apiVersion kind",
    metadata=_OBJECT_META,
    spec=_SERVICE_SPEC,
    status=_struct("", loadBalancer=_struct("", ingress=ListOf(_LOAD_BALANCER_INGRESS)),
                   conditions=ListOf(_CONDITION)),
)

# -- EndpointSlice (discovery/v1)

_SLICE_ENDPOINT = _struct(
    "addresses hostname deprecatedTopology nodeName zone",
    conditions=_struct("ready serving terminating"),
    targetRef=_OBJECT_REFERENCE,
    hints=_struct("", forZones=ListOf(_struct("name")), forNodes=ListOf(_struct("name"))),
)
_ENDPOINT_PORT = _struct("name protocol port appProtocol")  # discovery/v1 and core/v1 alike
_ENDPOINT_SLICE = _struct(
    "apiVersion kind addressType",
    metadata=_OBJECT_META,
    endpoints=ListOf(_SLICE_ENDPOINT),
    ports=ListOf(_ENDPOINT_PORT),
)

# -- Endpoints (core/v1)

_ENDPOINT_ADDRESS = _struct("ip hostname nodeName", targetRef=_OBJECT_REFERENCE)
_ENDPOINTS = _struct(
    "apiVersion kind",
    metadata=_OBJECT_META,
    subsets=ListOf(_struct("", addresses=ListOf(_ENDPOINT_ADDRESS), notReadyAddresses=ListOf(_ENDPOINT_ADDRESS),
                           ports=ListOf(_ENDPOINT_PORT))),
)

# -- Pod (core/v1 PodSpec, Container, ContainerPort; of PodStatus only the lists read here)

_CONTAINER_PORT = _struct("name hostPort containerPort protocol hostIP")
_CONTAINER_FIELDS = (
    "name image command args workingDir envFrom env resources resizePolicy restartPolicy restartPolicyRules "
    "volumeMounts volumeDevices livenessProbe readinessProbe startupProbe lifecycle terminationMessagePath "
    "terminationMessagePolicy imagePullPolicy securityContext stdin stdinOnce tty"
)
_CONTAINER = _struct(_CONTAINER_FIELDS, ports=ListOf(_CONTAINER_PORT))
_EPHEMERAL_CONTAINER = _struct(_CONTAINER_FIELDS + " targetContainerName", ports=ListOf(_CONTAINER_PORT))
_POD_SPEC = _struct(
    "volumes restartPolicy terminationGracePeriodSeconds activeDeadlineSeconds dnsPolicy nodeSelector "
    "serviceAccountName serviceAccount automountServiceAccountToken nodeName hostNetwork hostPID hostIPC "
    "shareProcessNamespace securityContext imagePullSecrets hostname subdomain affinity schedulerName "
    "tolerations hostAliases priorityClassName priority dnsConfig readinessGates runtimeClassName "
    "enableServiceLinks preemptionPolicy overhead topologySpreadConstraints setHostnameAsFQDN os hostUsers "
    "schedulingGates resourceClaims resources hostnameOverride workloadRef",
    containers=ListOf(_CONTAINER),
    initContainers=ListOf(_CONTAINER),
    ephemeralContainers=ListOf(_EPHEMERAL_CONTAINER),
)
_POD_IP = _struct("ip")  # PodIP and HostIP
_POD = _struct(
    "apiVersion kind",
    metadata=_OBJECT_META,
    spec=_POD_SPEC,
    status=_open(podIPs=ListOf(_POD_IP), hostIPs=ListOf(_POD_IP),
                 conditions=ListOf(_struct("type observedGeneration status lastProbeTime lastTransitionTime "
                                           "reason message"))),
)

# -- Node (core/v1 NodeSpec; of NodeStatus only the addresses read here)

_NODE = _struct(
    "apiVersion kind",
    metadata=_OBJECT_META,
    spec=_struct("podCIDR podCIDRs providerID unschedulable taints configSource externalID"),
    status=_open(addresses=ListOf(_struct("type address"))),
)

# -- KubeProxyConfiguration (kube-proxy config/v1alpha1). kube-dataplane's own: externalIPCIDRs, and
# metadata, whose name it shows in messages (kube-proxy's type has no metadata; it is not looked into).

_PROXY_CONFIG = _struct(
    "apiVersion kind metadata featureGates clientConnection logging hostnameOverride bindAddress healthzBindAddress "
    "metricsBindAddress bindAddressHardFail enableProfiling showHiddenMetricsForVersion mode detectLocalMode "
    "clusterCIDR nodePortAddresses oomScoreAdj configSyncPeriod portRange windowsRunAsService externalIPCIDRs",
    iptables=_struct("masqueradeBit masqueradeAll localhostNodePorts snatNodeInternalIP syncPeriod minSyncPeriod"),
    ipvs=_struct("syncPeriod minSyncPeriod scheduler excludeCIDRs strictARP tcpTimeout tcpFinTimeout udpTimeout"),
    nftables=_struct("masqueradeBit masqueradeAll syncPeriod minSyncPeriod"),
    winkernel=_struct("networkName sourceVip enableDSR rootHnsEndpointName forwardHealthCheckVip"),
    detectLocal=_struct("bridgeInterface interfaceNamePrefix"),
    conntrack=_struct("maxPerCore min tcpEstablishedTimeout tcpCloseWaitTimeout tcpBeLiberal udpTimeout "
                      "udpStreamTimeout"),
)

# (apiVersion, kind) -> the shape of the whole object
SHAPES: dict[tuple[str, str], Struct] = {
    ("v1", "Service"): _SERVICE,
    ("v1", "Endpoints"): _ENDPOINTS,
    ("v1", "Pod"): _POD,
    ("v1", "Node"): _NODE,
    ("discovery.k8s.io/v1", "EndpointSlice"): _ENDPOINT_SLICE,
    ("kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration"): _PROXY_CONFIG,
}


def unknown_fields(api_version: str, kind: str, obj: dict) -> list[str]:
    """The paths of the fields of ``obj`` (an object of ``api_version`` and ``kind``) that its
    type does not have, in document order, as the API server writes them (``spec.tpye``,
    ``spec.ports[0].targetPrt``); [] for a kind not in :data:`SHAPES`.

    An object read back from an API server (``metadata.resourceVersion`` set, as in
    ``kubectl get -o yaml``) is not looked into: the server keeps no field it does not know,
    and a newer server knows fields this list may not. That also keeps the check off the
    path of a large ``kubectl get -o json`` dump, whose reading it would slow down.
    """
    shape = SHAPES.get((api_version, kind))
    found: list[str] = []
    if shape is not None and not _from_api_server(obj):
        _walk(obj, shape, "", found)
    return found


def _from_api_server(obj: dict) -> bool:
    """Whether ``obj`` is an object as an API server stores it: its metadata has a resourceVersion."""
    metadata = obj.get("metadata")
    return type(metadata) is dict and bool(metadata.get("resourceVersion"))


def _walk(value: dict, shape: Struct, path: str, found: list[str]) -> None:
    """Append to ``found`` the unknown fields of ``value`` (of ``shape``, at ``path``) and of what
    it holds, depth first in document order as the decoder meets them.

    A value of the wrong type is not looked into: the builders report it.
    """
    known, children = shape.known, shape.children
    for key, sub in value.items():
        if known is not None and key not in known:
            found.append(_join(path, key))
            continue
        child = children.get(key)
        if child is None:
            continue
        if type(child) is ListOf:
            if type(sub) is list:
                item_shape, sub_path = child.item, _join(path, key)
                for i, item in enumerate(sub):
                    if type(item) is dict:
                        _walk(item, item_shape, f"{sub_path}[{i}]", found)
        elif type(sub) is dict:
            _walk(sub, child, _join(path, key), found)  # type: ignore[arg-type]


def _join(path: str, key: Any) -> str:
    """``path.key`` (``key`` alone at the top)."""
    name = key if isinstance(key, str) else str(key)
    return f"{path}.{name}" if path else name
