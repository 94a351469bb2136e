"""Service discovery views: the DNS records and environment variables a Pod is given.

Two read-only views of a :class:`~dataplane.model.Cluster`:

**Cluster DNS** (:func:`dns_records`, :func:`zone_file`) follows the Kubernetes
DNS-based service discovery specification (kubernetes/dns,
``docs/specification.md``) and, where the specification leaves a choice,
CoreDNS's ``kubernetes`` plugin:

* a Service with cluster IPs gets an A or AAAA record per cluster IP at
  ``<svc>.<ns>.svc.<zone>``, and per named port an SRV record
  ``_<port>._<proto>.<svc>.<ns>.svc.<zone>`` pointing at that name;
* a headless Service (``clusterIP: None``) gets an A or AAAA record per
  address of each ready endpoint (every endpoint with
  ``publishNotReadyAddresses``) at ``<svc>.<ns>.svc.<zone>``, and the same
  address at ``<hostname>.<svc>.<ns>.svc.<zone>``, where the hostname is the
  endpoint's ``hostname`` or, without one, the address with ``.`` and ``:``
  turned into ``-`` (CoreDNS's generated name, e.g. ``10-244-1-7``); per
  named endpoint port an SRV record points at each of those names, with the
  endpoint's port number;
* an ExternalName Service gets a CNAME to its external name;
* the zone apex has an SOA and an NS record, as CoreDNS's zone transfer
  shows them, and ``dns-version.<zone>`` a TXT record with the schema version;
  the NS name ``ns.dns.<zone>`` has A/AAAA records (glue, so that a DNS server
  such as BIND loads the zone): the cluster IPs of ``kube-system/kube-dns``,
  or, without that Service in the input, ``10.96.0.10`` (kubeadm's address for
  it in the default ClusterIP range).

Every record has a TTL of 30 seconds, the ``ttl 30`` of the Corefile kubeadm
deploys (the plugin itself defaults to 5), except ``dns-version``, which
CoreDNS serves with 28800. SRV records have priority 0 and share a weight of
100 evenly among the records of one name, as CoreDNS does. Reverse (PTR)
records live in ``in-addr.arpa``/``ip6.arpa``, not in the cluster zone, and
are not produced; nor are the deprecated ``<a>-<b>-<c>-<d>.<ns>.pod`` names,
which exist for any address.

**Service environment variables** (:func:`service_env`) are the ones the
kubelet puts into a new Pod's containers (``pkg/kubelet/envvars``): for every
Service of the Pod's namespace with a cluster IP, plus the ``kubernetes``
Service of the ``default`` namespace (a same-named Service of the Pod's own
namespace takes its place), ``<SVC>_SERVICE_HOST``, ``<SVC>_SERVICE_PORT``,
``<SVC>_SERVICE_PORT_<PORT>`` per named port and the Docker-link variables
``<SVC>_PORT``, ``<SVC>_PORT_<n>_<PROTO>`` and its ``_PROTO``, ``_PORT`` and
``_ADDR``. Names are upper-cased with ``-`` turned into ``_``; only the
primary cluster IP is used; an IPv6 address is bracketed in the URL forms
(``tcp://[fd00::1]:443``) and bare in ``_HOST`` and ``_ADDR``. The Pod is
assumed to keep the default ``enableServiceLinks: true``.

:func:`add_commands` registers the ``dns`` and ``env`` commands on the
``dataplane`` command line.
"""
from __future__ import annotations

import argparse
import ipaddress
import sys
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

from .errors import UsageError
from .ipaddrs import ip_family, is_ip
from .model import Cluster, EndpointSlice, Service

DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_TTL = 30
DNS_SCHEMA_VERSION = "1.1.0"
SCHEMA_VERSION_TTL = 28800

# SOA timers of CoreDNS's kubernetes plugin; the serial is fixed so output is reproducible.
SOA_SERIAL = 1
SOA_REFRESH = 7200
SOA_RETRY = 1800
SOA_EXPIRE = 86400

# The Service the cluster DNS server runs behind, by the name kubeadm gives it.
DNS_SERVICE = ("kube-system", "kube-dns")
# The name server's address when the input has no DNS_SERVICE with cluster IPs: the one kubeadm
# gives that Service, the 10th address of the default ClusterIP range 10.96.0.0/12 (GetDNSIP).
DEFAULT_NS_ADDRESS = "10.96.0.10"
# The Services the kubelet always exposes, from the default namespace.
MASTER_SERVICE_NAMESPACE = "default"
MASTER_SERVICES = frozenset({"kubernetes"})

_SRV_TOTAL_WEIGHT = 100
_MAX_NAME_TEXT = 254  # 255 octets on the wire: the text form, trailing dot included
_ADDRESS_TYPES = frozenset({"IPv4", "IPv6"})
_TYPE_ORDER = {"SOA": 0, "NS": 1, "TXT": 2, "A": 3, "AAAA": 4, "CNAME": 5, "SRV": 6}


# ======================================================================
# DNS
# ======================================================================


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record, in zone-file form.

    ``name`` is absolute and lower-case with a trailing dot; ``data`` is the
    RDATA as a zone file writes it (absolute names, trailing dots).
    """

    name: str
    type: str  # SOA | NS | TXT | A | AAAA | CNAME | SRV
    data: str
    ttl: int = DEFAULT_TTL


@dataclass(frozen=True, slots=True)
class DnsView:
    """The records cluster DNS serves, in zone order, and warnings about Services left out."""

    records: tuple[Record, ...]
    warnings: tuple[str, ...]


class _Srv(NamedTuple):
    """An SRV record before its weight is known."""

    owner: str
    port: int
    target: str


def normalize_domain(domain: str) -> str:
    """The cluster domain lower-cased without a trailing dot; UsageError unless an RFC 1123 subdomain."""
    from .input.validation import dns1123_subdomain_errors

    name = domain.strip().lower()
    name = name[:-1] if name.endswith(".") else name
    errors = dns1123_subdomain_errors(name) if name else ["must not be empty"]
    if errors:
        raise UsageError(f"invalid cluster domain {domain!r}: {'; '.join(errors)}")
    return name


def service_fqdn(svc: Service, domain: str) -> str:
    """``<svc>.<ns>.svc.<domain>.``, the name cluster DNS serves for a Service."""
    return f"{svc.name}.{svc.namespace}.svc.{domain}."


def srv_owner(port_name: str, protocol: str, service_name: str) -> str:
    """``_<port>._<proto>.<service name>``, the owner of a named port's SRV records."""
    return f"_{port_name.lower()}._{protocol.lower()}.{service_name}"


def endpoint_hostname(hostname: str | None, address: str) -> str:
    """An endpoint's DNS label: its hostname, else the address with ``.``/``:`` turned into ``-``."""
    if hostname:
        return hostname
    return address.replace(".", "-").replace(":", "-")


def address_record(name: str, ip: str) -> Record:
    """An A record for an IPv4 address or an AAAA record for an IPv6 one."""
    return Record(name, "A" if ip_family(ip) == "IPv4" else "AAAA", ip)


def _cluster_ip_records(svc: Service, domain: str) -> tuple[list[Record], list[_Srv]]:
    """A/AAAA per cluster IP and an SRV per named Service port, pointing at the Service name."""
    name = service_fqdn(svc, domain)
    records = [address_record(name, ip) for ip in svc.cluster_ips]
    srvs = [_Srv(srv_owner(p.name, p.protocol, name), p.port, name) for p in svc.ports if p.name]
    return records, srvs


def _served_slices(svc: Service, slices: Iterable[EndpointSlice]) -> list[EndpointSlice]:
    """The IPv4 and IPv6 EndpointSlices of ``svc`` (FQDN slices carry no addresses DNS serves)."""
    return [
        s for s in slices
        if s.namespace == svc.namespace and s.service_name == svc.name and s.address_type in _ADDRESS_TYPES
    ]


def _headless_records(
    svc: Service, slices: Iterable[EndpointSlice], domain: str
) -> tuple[list[Record], list[_Srv]]:
    """Per published endpoint address: A/AAAA at the Service name and at the endpoint's name, and SRVs."""
    name = service_fqdn(svc, domain)
    records: list[Record] = []
    srvs: list[_Srv] = []
    for eps in _served_slices(svc, slices):
        named_ports = [p for p in eps.ports if p.name and p.port]
        for endpoint in eps.endpoints:
            if not (endpoint.conditions.ready or svc.publish_not_ready_addresses):
                continue
            for ip in endpoint.addresses:
                target = f"{endpoint_hostname(endpoint.hostname, ip)}.{name}"
                records += [address_record(name, ip), address_record(target, ip)]
                srvs += [_Srv(srv_owner(p.name, p.protocol, name), p.port, target) for p in named_ports]
    return records, srvs


def _external_name_records(svc: Service, domain: str) -> tuple[list[Record], list[str]]:
    """A CNAME to the external name; CoreDNS serves nothing for an IP address given as one."""
    external = (svc.external_name or "").rstrip(".")
    if not external:
        return [], [f"{svc.ref.where()}: ExternalName Service without spec.externalName; no record"]
    if is_ip(external):
        return [], [f"{svc.ref.where()}: spec.externalName {external} is an IP address, "
                    "which cluster DNS does not serve as a CNAME; no record"]
    return [Record(service_fqdn(svc, domain), "CNAME", f"{external.lower()}.")], []


def _srv_records(srvs: Iterable[_Srv]) -> list[Record]:
    """SRV records of priority 0, the weight 100 split evenly among the records of each name (at least 1)."""
    unique = sorted(set(srvs))
    per_owner: dict[str, int] = {}
    for srv in unique:
        per_owner[srv.owner] = per_owner.get(srv.owner, 0) + 1
    return [
        Record(s.owner, "SRV", f"0 {max(1, _SRV_TOTAL_WEIGHT // per_owner[s.owner])} {s.port} {s.target}")
        for s in unique
    ]


def _find_service(cluster: Cluster, key: tuple[str, str]) -> Service | None:
    """The Service ``(namespace, name)`` of the input, if any."""
    for svc in cluster.services:
        if svc.key == key:
            return svc
    return None


def _apex_records(cluster: Cluster, domain: str) -> list[Record]:
    """SOA, NS and the schema version TXT record.

    The NS record names ``ns.dns.<zone>``, as CoreDNS's SOA does, and the zone
    always carries that name's address (the glue a name server needs to load
    the zone: BIND refuses an in-zone NS without one): the cluster IPs of the
    ``kube-system/kube-dns`` Service when the input holds it with some (CoreDNS
    answers with the IPs of the Service it runs behind), else
    :data:`DEFAULT_NS_ADDRESS`, the address kubeadm gives that Service in the
    default ClusterIP range.
    """
    origin = f"{domain}."
    ns_name = f"ns.dns.{origin}"
    soa = (f"{ns_name} hostmaster.{origin} {SOA_SERIAL} {SOA_REFRESH} {SOA_RETRY} "
           f"{SOA_EXPIRE} {DEFAULT_TTL}")
    records = [
        Record(origin, "SOA", soa),
        Record(origin, "NS", ns_name),
        Record(f"dns-version.{origin}", "TXT", f'"{DNS_SCHEMA_VERSION}"', SCHEMA_VERSION_TTL),
    ]
    dns_service = _find_service(cluster, DNS_SERVICE)
    addresses: Sequence[str] = ()
    if dns_service is not None and not dns_service.is_headless:
        addresses = dns_service.cluster_ips
    records += [address_record(ns_name, ip) for ip in addresses or (DEFAULT_NS_ADDRESS,)]
    return records


def _service_records(svc: Service, cluster: Cluster, domain: str) -> tuple[list[Record], list[_Srv], list[str]]:
    """The records of one Service, its SRV entries, and a warning if it gets none for lack of an IP."""
    if svc.type == "ExternalName":
        records, warnings = _external_name_records(svc, domain)
        return records, [], warnings
    if not svc.cluster_ips:
        return [], [], [f"{svc.ref.where()}: no clusterIP allocated yet, so cluster DNS has no records "
                        "for it (`dataplane allocate` fills it in)"]
    if svc.is_headless:
        records, srvs = _headless_records(svc, cluster.endpoint_slices, domain)
    else:
        records, srvs = _cluster_ip_records(svc, domain)
    return records, srvs, []


def _name_key(name: str) -> tuple[str, ...]:
    """DNS canonical order: labels compared from the root, a name before its subdomains."""
    return tuple(reversed(name.rstrip(".").split(".")))


def _record_key(record: Record) -> tuple:
    """Zone order: by name (canonical), then type, then data (addresses numerically)."""
    if record.type in ("A", "AAAA"):
        data: tuple = (int(ipaddress.ip_address(record.data)),)
    elif record.type == "SRV":
        priority, weight, port, target = record.data.split()
        data = (_name_key(target), int(port), int(priority), int(weight))
    else:
        data = (record.data,)
    return (_name_key(record.name), _TYPE_ORDER.get(record.type, len(_TYPE_ORDER)), data)


def _drop_long_names(records: list[Record], srvs: list[_Srv]) -> tuple[list[Record], list[_Srv], list[str]]:
    """The records and SRV entries whose names fit in 255 octets, and a warning per name that does not."""
    used = [r.name for r in records] + [name for srv in srvs for name in (srv.owner, srv.target)]
    too_long = {name for name in used if len(name) > _MAX_NAME_TEXT}
    warnings = [f"{name}: longer than 255 octets; records using it are left out" for name in sorted(too_long)]
    kept_records = [r for r in records if r.name not in too_long]
    kept_srvs = [s for s in srvs if s.owner not in too_long and s.target not in too_long]
    return kept_records, kept_srvs, warnings


def dns_view(cluster: Cluster, domain: str = DEFAULT_CLUSTER_DOMAIN) -> DnsView:
    """The records cluster DNS serves for ``cluster`` under ``domain`` and warnings about what it left out."""
    domain = normalize_domain(domain)
    records = _apex_records(cluster, domain)
    srvs: list[_Srv] = []
    warnings: list[str] = []
    for svc in sorted(cluster.services, key=lambda s: s.key):
        svc_records, svc_srvs, svc_warnings = _service_records(svc, cluster, domain)
        records += svc_records
        srvs += svc_srvs
        warnings += svc_warnings
    records, srvs, long_warnings = _drop_long_names(records, srvs)
    everything = set(records) | set(_srv_records(srvs))
    return DnsView(tuple(sorted(everything, key=_record_key)), tuple(warnings + long_warnings))


def dns_records(cluster: Cluster, domain: str = DEFAULT_CLUSTER_DOMAIN) -> list[Record]:
    """The records cluster DNS serves for ``cluster`` under ``domain``, apex first, in canonical order."""
    return list(dns_view(cluster, domain).records)


def render_zone(records: Sequence[Record], domain: str) -> str:
    """``records`` as an RFC 1035 zone file with ``$ORIGIN`` the cluster domain, absolute names."""
    origin = f"{normalize_domain(domain)}."
    width = max((len(r.name) for r in records), default=0)
    lines = [
        f"; Records cluster DNS serves for the zone {origin}",
        f"; (Kubernetes DNS specification; TTL {DEFAULT_TTL} as in kubeadm's Corefile)",
        f"$ORIGIN {origin}",
        f"$TTL {DEFAULT_TTL}",
    ]
    lines += [f"{r.name:<{width}} {r.ttl:>5} IN {r.type:<5} {r.data}".rstrip() for r in records]
    return "\n".join(lines) + "\n"


def zone_file(cluster: Cluster, domain: str = DEFAULT_CLUSTER_DOMAIN) -> str:
    """The records cluster DNS serves for ``cluster``, as an RFC 1035 zone file for ``domain``."""
    return render_zone(dns_records(cluster, domain), domain)


# ======================================================================
# Environment variables
# ======================================================================


@dataclass(frozen=True, slots=True)
class EnvView:
    """The variables a new Pod gets, sorted by name, and warnings about Services left out."""

    variables: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...]


def env_var_name(name: str) -> str:
    """The kubelet's variable name for a Service or port name: upper case, ``-`` as ``_``."""
    return name.replace("-", "_").upper()


def _host_port(ip: str, port: int) -> str:
    """``ip:port``, the IP bracketed when it is IPv6 (Go's ``net.JoinHostPort``)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def service_variables(svc: Service) -> list[tuple[str, str]]:
    """The variables the kubelet derives from one Service with a cluster IP, in the kubelet's order."""
    if not svc.ports or not has_cluster_ip(svc):
        return []
    prefix = env_var_name(svc.name)
    ip = svc.cluster_ips[0]
    out = [(f"{prefix}_SERVICE_HOST", ip), (f"{prefix}_SERVICE_PORT", str(svc.ports[0].port))]
    out += [(f"{prefix}_SERVICE_PORT_{env_var_name(p.name)}", str(p.port)) for p in svc.ports if p.name]
    for i, p in enumerate(svc.ports):
        proto = p.protocol.lower()
        url = f"{proto}://{_host_port(ip, p.port)}"
        if i == 0:
            out.append((f"{prefix}_PORT", url))
        link = f"{prefix}_PORT_{p.port}_{p.protocol.upper()}"
        out += [(link, url), (f"{link}_PROTO", proto), (f"{link}_PORT", str(p.port)), (f"{link}_ADDR", ip)]
    return out


def has_cluster_ip(svc: Service) -> bool:
    """True if the Service has a cluster IP (not headless, not ExternalName, allocated)."""
    return bool(svc.cluster_ips) and not svc.is_headless


def _visible_services(cluster: Cluster, namespace: str) -> list[Service]:
    """The Services whose variables a Pod in ``namespace`` gets, as the kubelet picks them.

    Services of the namespace, and the ``default`` namespace's ``kubernetes``
    Service unless the namespace has a Service of that name. Services without
    a cluster IP are skipped here as there.
    """
    chosen: dict[str, Service] = {}
    for svc in sorted(cluster.services, key=lambda s: s.key):
        if not has_cluster_ip(svc):
            continue
        if svc.namespace == namespace:
            chosen[svc.name] = svc
        elif svc.namespace == MASTER_SERVICE_NAMESPACE and svc.name in MASTER_SERVICES:
            chosen.setdefault(svc.name, svc)
    return [chosen[name] for name in sorted(chosen)]


def _env_warnings(cluster: Cluster, namespace: str) -> list[str]:
    """Warnings for Services a Pod would see once allocated, but that have no cluster IP yet."""
    return [
        f"{svc.ref.where()}: no clusterIP allocated yet, so Pods get no variables for it "
        "(`dataplane allocate` fills it in)"
        for svc in sorted(cluster.services, key=lambda s: s.key)
        if svc.type != "ExternalName" and not svc.cluster_ips
        and (svc.namespace == namespace
             or (svc.namespace == MASTER_SERVICE_NAMESPACE and svc.name in MASTER_SERVICES))
    ]


def env_view(cluster: Cluster, namespace: str) -> EnvView:
    """The service variables of a new Pod in ``namespace`` and warnings about Services left out.

    Variables form a map in the kubelet, so a name two Services both produce
    appears once; here the Service later in name order wins.
    """
    variables: dict[str, str] = {}
    for svc in _visible_services(cluster, namespace):
        variables.update(service_variables(svc))
    return EnvView(tuple(sorted(variables.items())), tuple(_env_warnings(cluster, namespace)))


def service_env(cluster: Cluster, namespace: str) -> list[tuple[str, str]]:
    """The ``(name, value)`` service variables a new Pod in ``namespace`` gets, sorted by name."""
    return list(env_view(cluster, namespace).variables)


def format_env(variables: Iterable[tuple[str, str]]) -> str:
    """``NAME=value`` lines."""
    return "".join(f"{name}={value}\n" for name, value in variables)


# ======================================================================
# Commands
# ======================================================================

EXAMPLES = {
    "dns": """examples:
  dataplane allocate -f examples/cluster.yaml --seed 1 -o allocated.yaml
  dataplane dns -f allocated.yaml
  dataplane dns -f allocated.yaml --cluster-domain corp.example -o cluster.zone
  dataplane allocate -f examples/cluster.yaml --seed 1 | dataplane dns -f -
  kubectl get svc,endpointslices,pods -A -o yaml | dataplane dns -f -""",
    "env": """examples:
  dataplane allocate -f examples/cluster.yaml --seed 1 | dataplane env -f - -n shop
  dataplane allocate -f examples/cluster.yaml --seed 1 -o allocated.yaml
  dataplane env -f allocated.yaml --namespace shop
  kubectl get svc -A -o yaml | dataplane env -f - -n default -o service.env""",
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the ``dns`` and ``env`` commands on the ``dataplane`` subcommand parser."""
    from .cli_common import add_input

    p = sub.add_parser(
        "dns", help="print the records cluster DNS serves, as a zone file",
        description="Print the records cluster DNS (CoreDNS's kubernetes plugin) serves for the input's "
                    "Services as an RFC 1035 zone file: A/AAAA and SRV records of Services, per-endpoint "
                    "records of headless Services and CNAMEs of ExternalName Services, following the "
                    f"Kubernetes DNS specification, with TTL {DEFAULT_TTL}. EndpointSlices missing from "
                    "the input are derived from the Pods.",
        epilog=EXAMPLES["dns"], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input(p)
    p.add_argument("--cluster-domain", default=DEFAULT_CLUSTER_DOMAIN, metavar="DOMAIN",
                   help=f"the cluster's DNS domain, the zone's origin (default {DEFAULT_CLUSTER_DOMAIN})")
    p.add_argument("-o", "--output", metavar="OUT", help="write the zone to OUT instead of stdout")
    p.set_defaults(func=cmd_dns)

    p = sub.add_parser(
        "env", help="print the service environment variables a new Pod gets",
        description="Print, as NAME=value lines sorted by name, the variables the kubelet gives a new Pod "
                    "of a namespace for the Services it can reach: <SVC>_SERVICE_HOST, <SVC>_SERVICE_PORT "
                    "(and one per named port) and the Docker-link variables <SVC>_PORT*.",
        epilog=EXAMPLES["env"], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input(p)
    p.add_argument("-n", "--namespace", default="default", metavar="NS",
                   help="namespace of the Pod (default: default)")
    p.add_argument("-o", "--output", metavar="OUT", help="write the variables to OUT instead of stdout")
    p.set_defaults(func=cmd_env)


def _warn(messages: Iterable[str]) -> None:
    """Print each message to stderr as ``warning: ...`` (nothing with ``--quiet``)."""
    from .cli_common import is_quiet

    if is_quiet():
        return
    for message in messages:
        print(f"warning: {message}", file=sys.stderr)


def _load(files: Sequence[str]) -> Cluster:
    """Read the input, warn about what was skipped, and add the EndpointSlices derived from Pods
    (:func:`dataplane.prepare.prepare_cluster`)."""
    from .input.cluster import load_cluster
    from .prepare import prepare_cluster

    result = prepare_cluster(load_cluster(files, sys.stdin))
    _warn(result.warnings)
    return result.cluster


def cmd_dns(args: argparse.Namespace) -> int:
    """``dataplane dns``: print the zone file."""
    from .output import write_output

    domain = normalize_domain(args.cluster_domain)
    view = dns_view(_load(args.files), domain)
    _warn(view.warnings)
    write_output(render_zone(view.records, domain), args.output)
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """``dataplane env``: print the variables as ``NAME=value`` lines."""
    from .output import write_output

    view = env_view(_load(args.files), args.namespace)
    _warn(view.warnings)
    write_output(format_env(view.variables), args.output)
    return 0
