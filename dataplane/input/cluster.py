"""Assembling the Cluster: each document to its kind's builder, then identities, mirroring, problems.

:func:`parse_cluster` turns the documents read by :mod:`.loader` into a
:class:`~dataplane.model.Cluster`. It validates every object the way the
API server (or kube-proxy, for its configuration) would, and reports problems
in the API server's words and field paths, e.g.::

    svc.yaml: document 2: Service default/web: spec.ports[1].nodePort: Invalid value: 70000: must be between 1 and 65535, inclusive

Every problem in every document is collected before one
:class:`~dataplane.errors.InputError` is raised; nothing is returned from input
with problems, and no input, however malformed, raises anything else.

Defaults are applied as the API server's defaulting would (protocol TCP,
sessionAffinity None, ...), IP literals and CIDRs are stored canonical (see
:mod:`dataplane.ipaddrs`), label maps become sorted ``(key, value)`` tuples,
and ``v1`` Endpoints are mirrored into EndpointSlices (:mod:`dataplane.controllers.mirror`).
Kinds the dataplane does not use are skipped with a warning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence, TextIO, Union

from ..errors import InputError, Problem, UsageError
from ..controllers.mirror import Endpoints, endpoints_to_slices, mirror_skip_reason, unmirrored_address_count
from ..controllers.endpointslices import topology_auto_warnings
from ..model import LABEL_SERVICE_NAME, Cluster, EndpointSlice, Node, Pod, ProxyConfig, Service, ServiceCIDR
from .cluster_config import (
    KubeadmNetworking,
    apply_kubeadm,
    config_map_key,
    parse_cluster_configuration,
    parse_config_map,
    parse_service_cidr,
)
from .coverage import services_without_endpoints
from .endpoints import MAX_SLICE_ENDPOINTS, parse_endpoint_slice, parse_endpoints
from .fields import unknown_fields
from .loader import Document, document_problems, gc_paused, read_documents
from .messages import quote
from .node import parse_node, parse_pod
from .proxy_config import parse_proxy_config
from .service import parse_service
from .validation import Checker, one_line


@dataclass(frozen=True, slots=True)
class ParseResult:
    """The cluster read from the input, and warnings about what was skipped."""

    cluster: Cluster
    warnings: tuple[str, ...]


def load_cluster(paths: Sequence[str], stdin: Optional[TextIO] = None) -> ParseResult:
    """Read and validate manifest files (``-`` is stdin); raise InputError listing every problem."""
    documents, problems = read_documents(paths, stdin)
    try:
        result = parse_cluster(documents)
    except InputError as err:
        raise InputError([*problems, *err.problems]) from None
    if problems:
        raise InputError(problems)
    return result


def parse_cluster(docs: Sequence[Document]) -> ParseResult:
    """Validate documents and build the Cluster; raise InputError listing every problem."""
    with gc_paused():
        builder = _ClusterBuilder()
        for doc in docs:
            builder.add(doc)
        return builder.finish()


OBJECT_SOURCE = "<objects>"


def cluster_from_objects(objects: Iterable[Any], *, source: str = OBJECT_SOURCE) -> ParseResult:
    """:func:`load_cluster` for API objects already decoded, e.g. the dicts a watch of the API
    server yields: the same validation, defaults, mirroring and messages, each object named
    ``SOURCE: object N`` (1-based) where a file's is ``FILE: document N``. Each item is one
    object (a ``kind: List`` is not expanded: give its items). Raise InputError listing every
    problem."""
    return parse_cluster([Document(source, i, obj, "object") for i, obj in enumerate(objects, 1)])


ParsedObject = Union[Service, EndpointSlice, Endpoints, Node, Pod, ProxyConfig, ServiceCIDR, KubeadmNetworking]


def parse_object(obj: Any, *, source: str = "<object>") -> ParsedObject:
    """One API object (a dict) validated as :func:`cluster_from_objects` validates it (messages
    name ``SOURCE: object 1``), as the model object to give a :class:`~dataplane.Proxier`
    (``set_service``, ``set_endpoint_slice``, ``set_node``, ``set_config``). InputError for
    problems, UsageError for a kind the dataplane does not use. A v1 Endpoints comes back as
    :class:`dataplane.controllers.mirror.Endpoints`: it is mirrored to EndpointSlices only within a whole
    cluster (:func:`cluster_from_objects`), where its Service is known."""
    builder = _ClusterBuilder()
    parsed = builder.parse(Document(source, 1, obj, "object"))
    if builder.problems:
        raise InputError(builder.problems)
    if parsed is None:
        raise UsageError(builder.warnings[0])
    return parsed



# ======================================================================
# Assembling the cluster
# ======================================================================

_Parser = Callable[[Checker, dict], Any]

# (apiVersion, kind) -> parser; each kind is recognised in exactly one version.
_PARSERS: dict[tuple[str, str], _Parser] = {
    ("v1", "Service"): parse_service,
    ("v1", "Endpoints"): parse_endpoints,
    ("v1", "Pod"): parse_pod,
    ("v1", "Node"): parse_node,
    ("discovery.k8s.io/v1", "EndpointSlice"): parse_endpoint_slice,
    ("kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration"): parse_proxy_config,
    ("kubeproxy.config.k8s.io/v1alpha2", "KubeProxyConfiguration"): parse_proxy_config,
    ("networking.k8s.io/v1", "ServiceCIDR"): parse_service_cidr,
    ("kubeadm.k8s.io/v1beta3", "ClusterConfiguration"): parse_cluster_configuration,
    ("kubeadm.k8s.io/v1beta4", "ClusterConfiguration"): parse_cluster_configuration,
    ("v1", "ConfigMap"): parse_config_map,  # only kube-system/kube-proxy and kube-system/kubeadm-config
}
# What each configuration is, for "only one may be given": the kind a ConfigMap carries counts.
_SINGLETONS = {ProxyConfig: "KubeProxyConfiguration", KubeadmNetworking: "ClusterConfiguration"}


def _group(api_version: str) -> str:
    """The API group of an apiVersion ("" for the core group's "v1")."""
    return api_version.rpartition("/")[0]


def _supported_version(api_version: str, kind: str) -> Optional[str]:
    """The apiVersion we read ``kind`` in, if ``api_version`` is another version of the same group."""
    for known_version, known_kind in _PARSERS:
        if known_kind == kind and _group(known_version) == _group(api_version):
            return known_version
    return None


@dataclass
class _ClusterBuilder:
    """Accumulates parsed objects, problems and warnings across documents."""

    services: list[Service] = field(default_factory=list)
    slices: list[EndpointSlice] = field(default_factory=list)
    endpoints: list[Endpoints] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    proxy_config: Optional[ProxyConfig] = None
    kubeadm: Optional[KubeadmNetworking] = None
    service_cidrs: list[ServiceCIDR] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seen: dict[tuple[Optional[str], str, str], tuple[str, str, int]] = field(default_factory=dict)

    def add(self, doc: Document) -> None:
        """Validate one document and keep what it holds."""
        obj = self.parse(doc)
        if obj is not None:
            self._keep(obj)

    def parse(self, doc: Document) -> Optional[ParsedObject]:
        """Validate one document, recording its problems and warnings: the object it holds, None
        when there is nothing to keep (no object at all, a kind not read, a duplicate)."""
        raw = doc.obj
        # (the common case, a mapping with a non-empty string apiVersion and kind, skips the check)
        if not (type(raw) is dict and type(raw.get("apiVersion")) is str and type(raw.get("kind")) is str
                and raw["apiVersion"] and raw["kind"]):
            found = document_problems(doc.source, doc.index, raw, doc.unit)
            if found:
                self.problems.extend(found)
                return None
        api_version, kind = raw["apiVersion"], raw["kind"]
        parser = _PARSERS.get((api_version, kind))
        if parser is None or (kind == "ConfigMap" and api_version == "v1" and config_map_key(doc.obj) is None):
            # a kind not read, or a ConfigMap other than kube-proxy's and kubeadm's
            self._unrecognised(doc, api_version, kind)
            return None
        checker = Checker(doc.source, doc.index, kind, doc.unit)
        obj = parser(checker, doc.obj)
        self.problems.extend(checker.problems())
        unknown = unknown_fields(api_version, kind, doc.obj)
        if unknown:
            self.warnings.extend(f"{doc.source}: {doc.unit} {doc.index}: {checker.label}: unknown field {quote(path)}"
                                 for path in unknown)
        if obj is None:
            return None
        return obj if self._is_new(checker, _SINGLETONS.get(type(obj))) else None

    def _unrecognised(self, doc: Document, api_version: str, kind: str) -> None:
        """Another version of a kind we read is a problem; any other kind is skipped with a warning."""
        supported = _supported_version(api_version, kind)
        if supported is not None and (api_version, kind) not in _PARSERS:
            message = f"Unsupported value: {quote(api_version)}: supported values: {quote(supported)}"
            self.problems.append(Problem(doc.source, doc.index, kind, "apiVersion", message, doc.unit))
            return
        self.warnings.append(
            f"{doc.source}: {doc.unit} {doc.index}: ignoring {one_line(api_version)} {one_line(kind)}"
            f"{_describe(doc.obj)}"
            " (not used by the dataplane)"
        )

    def _is_new(self, checker: Checker, singleton_kind: Optional[str] = None) -> bool:
        """Record the object's identity; report a duplicate (same kind, namespace, name), or a
        second configuration of ``singleton_kind`` (given directly or in its ConfigMap)."""
        singleton = singleton_kind is not None
        if not checker.name and not singleton:
            return True
        key = (singleton_kind, "", "") if singleton else (checker.kind, checker.namespace, checker.name)
        here = (checker.source, checker.unit, checker.index)  # (written out only for a duplicate)
        found = self.seen.setdefault(key, here)
        if found == here:
            return True
        first = f"{found[0]}: {found[1]} {found[2]}"
        if singleton:
            message = f"Duplicate value: only one {singleton_kind} may be given; the first is at {first}"
            self.problems.append(Problem(checker.source, checker.index, checker.label, "", message, checker.unit))
        else:
            message = f"Duplicate value: {quote(checker.name)}: {checker.label} is also defined at {first}"
            self.problems.append(Problem(checker.source, checker.index, checker.label, "metadata.name", message,
                                         checker.unit))
        return False

    def _keep(self, obj: Any) -> None:
        if isinstance(obj, Service):
            self.services.append(obj)
        elif isinstance(obj, EndpointSlice):
            self.slices.append(obj)
            if obj.service_name is None:
                self.warnings.append(
                    f"{obj.ref.where()}: no {LABEL_SERVICE_NAME} label; the slice belongs to no Service"
                )
        elif isinstance(obj, Endpoints):
            self.endpoints.append(obj)
        elif isinstance(obj, Node):
            self.nodes.append(obj)
        elif isinstance(obj, Pod):
            self.pods.append(obj)
        elif isinstance(obj, ProxyConfig):
            self.proxy_config = obj
        elif isinstance(obj, ServiceCIDR):
            self.service_cidrs.append(obj)
        elif isinstance(obj, KubeadmNetworking):
            self.kubeadm = obj

    def finish(self) -> ParseResult:
        """The Cluster, or InputError with every problem found."""
        if self.problems:
            raise InputError(self.problems)
        config = self.proxy_config or ProxyConfig()
        if self.kubeadm is not None:  # kubeadm writes kube-proxy's configuration from its own
            config, warning = apply_kubeadm(config, self.kubeadm)
            if warning:
                self.warnings.append(warning)
        self.warnings.extend(topology_auto_warnings(self.services, self.slices))
        cluster = Cluster(
            services=tuple(self.services),
            endpoint_slices=tuple(self.slices) + self._mirrored_slices(),
            nodes=tuple(self.nodes),
            pods=tuple(self.pods),
            proxy_config=config,
            proxy_config_given=self.proxy_config is not None or self.kubeadm is not None,
            service_cidrs=tuple(sorted(self.service_cidrs, key=lambda s: s.name)),
            service_subnet=self.kubeadm.service_subnet if self.kubeadm is not None else None,
        )
        self.warnings.extend(services_without_endpoints(self.services, self.slices, self.pods))
        return ParseResult(cluster=cluster, warnings=tuple(self.warnings))

    def _mirrored_slices(self) -> tuple[EndpointSlice, ...]:
        """EndpointSlices for the Endpoints objects the mirroring controller would mirror."""
        services_with_slices = {(s.namespace, s.service_name) for s in self.slices if s.service_name}
        taken: dict[str, set[str]] = {}
        for es in self.slices:
            taken.setdefault(es.namespace, set()).add(es.name)
        services = {(s.namespace, s.name): s for s in self.services}
        mirrored: list[EndpointSlice] = []
        for endpoints in self.endpoints:
            key = (endpoints.namespace, endpoints.name)
            svc = services.get(key)
            reason = mirror_skip_reason(endpoints)
            # the controller mirrors only the Endpoints of an existing Service without a selector
            if reason is None and svc is None:
                reason = f"the input has no Service {endpoints.namespace}/{endpoints.name}"
            elif reason is None and svc.selector is not None:
                reason = (f"Service {endpoints.namespace}/{endpoints.name} has a selector (the EndpointSlice "
                          "controller makes its slices from Pods)")
            elif reason is None and key in services_with_slices:
                reason = f"the input has EndpointSlices for Service {endpoints.namespace}/{endpoints.name}"
            if reason is not None:
                self.warnings.append(f"{endpoints.ref.where()}: not mirrored to EndpointSlices: {reason}")
                continue
            names = taken.setdefault(endpoints.namespace, set())
            new = endpoints_to_slices(endpoints, names)
            names.update(es.name for es in new)
            mirrored.extend(new)
            skipped = unmirrored_address_count(endpoints)
            if skipped:
                self.warnings.append(
                    f"{endpoints.ref.where()}: {skipped} addresses not mirrored: at most "
                    f"{MAX_SLICE_ENDPOINTS} addresses are mirrored per subset"
                )
        return tuple(mirrored)


def _describe(obj: dict) -> str:
    """`` ns/name`` (or `` name``) of an unrecognised object, from whatever metadata it has."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        return ""
    namespace = metadata.get("namespace")
    if isinstance(namespace, str) and namespace:
        return f" {one_line(namespace + '/' + metadata['name'])}"
    return f" {one_line(metadata['name'])}"
