"""Service discovery views: cluster DNS records (kubernetes/dns docs/specification.md, CoreDNS's
kubernetes plugin) and the kubelet's service environment variables (pkg/kubelet/envvars)."""
from __future__ import annotations

import argparse
import io
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.discovery import (
    Record,
    add_commands,
    dns_records,
    dns_view,
    endpoint_hostname,
    env_var_name,
    env_view,
    normalize_domain,
    service_env,
    zone_file,
)
from dataplane.errors import UsageError
from dataplane.model import (
    Cluster,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    ObjectRef,
    Service,
    ServicePort,
)

DOMAIN = "cluster.local"


# ------------------------------------------------------------------ helpers


def svc(name: str, ns: str = "default", ips: tuple[str, ...] = ("10.96.0.10",), ports=None, **kw) -> Service:
    if ports is None:
        ports = (ServicePort(80, "TCP", "http"),)
    kw.setdefault("ref", ObjectRef("Service", ns, name, source="in.yaml", index=1))
    return Service(ns, name, cluster_ips=ips, ports=tuple(ports), **kw)


def headless(name: str, ns: str = "default", ports=(), **kw) -> Service:
    return svc(name, ns, ("None",), ports, **kw)


def endpoint(ip: str, *, ready: bool = True, hostname: str | None = None) -> Endpoint:
    return Endpoint((ip,), EndpointConditions(ready=ready, serving=ready), hostname=hostname)


def eps(service: str, *endpoints: Endpoint, ns: str = "default", family: str = "IPv4",
        ports=(EndpointPort(8080, "TCP", "http"),), name: str | None = None) -> EndpointSlice:
    return EndpointSlice(ns, name or f"{service}-{family.lower()}", service, family, tuple(endpoints), tuple(ports))


def checked_zone(text: str, domain: str = DOMAIN) -> str:
    """``text`` after BIND's ``named-checkzone`` has loaded it as the zone ``domain`` with its
    strictest checks failing (names, NS glue, MX and SRV targets): every zone a test produces
    must load in a real DNS server. Returns ``text``."""
    checker = shutil.which("named-checkzone")
    assert checker, "named-checkzone not found: scripts/setup installs it (Debian's bind9-utils)"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "zone")
        path.write_text(text)
        done = subprocess.run([checker, "-i", "full", "-k", "fail", "-n", "fail", "-m", "fail", "-M", "fail",
                               "-S", "fail", "-r", "fail", domain, str(path)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"named-checkzone refuses the zone:\n{done.stdout}{done.stderr}\n{text}"
    return text


def loaded_zone(text: str, domain: str = DOMAIN) -> dns.zone.Zone:
    """A produced zone file checked by :func:`checked_zone`, then parsed with dnspython."""
    return dns.zone.from_text(checked_zone(text, domain), origin=f"{domain}.", relativize=False)


def checked_zone_file(cluster: Cluster, domain: str = DOMAIN) -> str:
    """:func:`zone_file`, checked by :func:`checked_zone`."""
    return checked_zone(zone_file(cluster, domain), domain)


def zone_of(cluster: Cluster, domain: str = DOMAIN) -> dns.zone.Zone:
    """The produced zone file, checked by named-checkzone and parsed with dnspython."""
    return loaded_zone(zone_file(cluster, domain), domain)


def values(zone: dns.zone.Zone, name: str, rdtype: str) -> set[str]:
    """The RDATA texts of one RRset, or an empty set when the zone has none."""
    rdataset = zone.get_rdataset(f"{name}.", rdtype)
    return {r.to_text() for r in rdataset} if rdataset is not None else set()


def names(zone: dns.zone.Zone) -> set[str]:
    return {n.to_text() for n in zone.nodes}


def write(tmp_path: Path, text: str, name: str = "in.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def run(argv: list[str], capsys, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    """Build a parser with only our commands, run one, return (exit code, stdout, stderr)."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    parser = argparse.ArgumentParser(prog="dataplane")
    sub = parser.add_subparsers(dest="command")
    add_commands(sub)
    args = parser.parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------- zone basics


def test_zone_is_valid_with_soa_ns_and_schema_version():
    zone = zone_of(Cluster(services=(svc("web"),)))
    soa = zone.get_rdataset("cluster.local.", "SOA")
    assert soa is not None and soa.ttl == 30
    (soa_rdata,) = soa
    assert soa_rdata.mname.to_text() == "ns.dns.cluster.local."
    assert soa_rdata.rname.to_text() == "hostmaster.cluster.local."
    assert (soa_rdata.refresh, soa_rdata.retry, soa_rdata.expire, soa_rdata.minimum) == (7200, 1800, 86400, 30)
    assert values(zone, "cluster.local", "NS") == {"ns.dns.cluster.local."}
    assert values(zone, "dns-version.cluster.local", "TXT") == {'"1.1.0"'}


def test_every_service_record_has_ttl_30():
    text = zone_file(Cluster(services=(svc("web"),)), DOMAIN)
    assert "$TTL 30" in text and "TTL 30" in text.splitlines()[1]
    zone = loaded_zone(text)
    for name, node in zone.nodes.items():
        for rdataset in node.rdatasets:
            expected = 28800 if name.to_text() == "dns-version.cluster.local." else 30
            assert rdataset.ttl == expected, name


def test_ns_glue_comes_from_the_kube_dns_service():
    kube_dns = svc("kube-dns", "kube-system", ("10.96.0.10", "fd00::a"),
                   (ServicePort(53, "UDP", "dns"), ServicePort(53, "TCP", "dns-tcp")))
    zone = zone_of(Cluster(services=(kube_dns,)))
    assert values(zone, "ns.dns.cluster.local", "A") == {"10.96.0.10"}
    assert values(zone, "ns.dns.cluster.local", "AAAA") == {"fd00::a"}
    assert values(zone, "_dns._udp.kube-dns.kube-system.svc.cluster.local", "SRV") == {
        "0 100 53 kube-dns.kube-system.svc.cluster.local."
    }
    # without kube-dns (or without its cluster IPs) the name server gets kubeadm's address for it
    for services in ((svc("web"),), (svc("kube-dns", "kube-system", ()),), (headless("kube-dns", "kube-system"),)):
        zone = zone_of(Cluster(services=services))
        assert values(zone, "ns.dns.cluster.local", "A") == {"10.96.0.10"}
        assert values(zone, "ns.dns.cluster.local", "AAAA") == set()
    v6_dns = svc("kube-dns", "kube-system", ("fd00::a",))
    assert values(zone_of(Cluster(services=(v6_dns,))), "ns.dns.cluster.local", "A") == set()


def test_custom_cluster_domain_is_normalised():
    zone = zone_of(Cluster(services=(svc("web", "shop"),)), "corp.example")
    assert values(zone, "web.shop.svc.corp.example", "A") == {"10.96.0.10"}
    assert zone_file(Cluster(), "Corp.Example.") == checked_zone_file(Cluster(), "corp.example")
    assert normalize_domain(" Cluster.Local. ") == "cluster.local"


@pytest.mark.parametrize("bad", ["", ".", "bad domain", "-x.local", "a..b"])
def test_invalid_cluster_domain_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="invalid cluster domain"):
        dns_records(Cluster(), bad)


# --------------------------------------------------------- ClusterIP Services


def test_cluster_ip_service_a_aaaa_for_every_cluster_ip():
    dual = svc("web", "shop", ("10.96.0.20", "fd00:96::20"))
    zone = zone_of(Cluster(services=(dual,)))
    assert values(zone, "web.shop.svc.cluster.local", "A") == {"10.96.0.20"}
    assert values(zone, "web.shop.svc.cluster.local", "AAAA") == {"fd00:96::20"}
    v6only = zone_of(Cluster(services=(svc("api", "shop", ("fd00:96::21",)),)))
    assert values(v6only, "api.shop.svc.cluster.local", "AAAA") == {"fd00:96::21"}
    assert values(v6only, "api.shop.svc.cluster.local", "A") == set()


def test_cluster_ip_srv_for_named_ports_only_lowercase_protocol():
    ports = (ServicePort(443, "TCP", "https"), ServicePort(53, "UDP", "dns"),
             ServicePort(3868, "SCTP", "diameter"), ServicePort(8080, "TCP", ""))
    zone = zone_of(Cluster(services=(svc("web", "shop", ports=ports, type="NodePort"),)))
    target = "web.shop.svc.cluster.local."
    assert values(zone, "_https._tcp.web.shop.svc.cluster.local", "SRV") == {f"0 100 443 {target}"}
    assert values(zone, "_dns._udp.web.shop.svc.cluster.local", "SRV") == {f"0 100 53 {target}"}
    assert values(zone, "_diameter._sctp.web.shop.svc.cluster.local", "SRV") == {f"0 100 3868 {target}"}
    srv_names = {n for n in names(zone) if n.startswith("_")}
    assert len(srv_names) == 3  # the unnamed port 8080 has no SRV record


def test_cluster_ip_service_ignores_its_endpoints():
    cluster = Cluster(services=(svc("web"),), endpoint_slices=(eps("web", endpoint("10.244.0.5", hostname="w")),))
    zone = zone_of(cluster)
    assert values(zone, "web.default.svc.cluster.local", "A") == {"10.96.0.10"}
    assert "w.web.default.svc.cluster.local." not in names(zone)


def test_service_without_cluster_ip_is_skipped_with_a_warning():
    view = dns_view(Cluster(services=(svc("pending", ips=()), svc("web"))), DOMAIN)
    assert not any(r.name.startswith("pending.") or ".pending." in r.name for r in view.records)
    assert view.warnings == (
        "in.yaml: document 1: Service default/pending: no clusterIP allocated yet, so cluster DNS has no "
        "records for it (`dataplane allocate` fills it in)",
    )


# ----------------------------------------------------------- headless Services


def headless_cluster(**kw) -> Cluster:
    service = headless("db", "data", (ServicePort(5432, "TCP", "pg"), ServicePort(9187, "TCP", "")), **kw)
    slice_ports = (EndpointPort(15432, "TCP", "pg"), EndpointPort(9187, "TCP", ""))
    slices = (
        eps("db", endpoint("10.244.1.10", hostname="db-0"), endpoint("10.244.2.11", hostname="db-1"),
            endpoint("10.244.3.12"), endpoint("10.244.4.13", ready=False, hostname="db-3"),
            ns="data", ports=slice_ports),
        eps("db", endpoint("fd00:244::10", hostname="db-0"), ns="data", family="IPv6", ports=slice_ports),
    )
    return Cluster(services=(service,), endpoint_slices=slices)


def test_headless_one_address_record_per_ready_endpoint():
    zone = zone_of(headless_cluster())
    assert values(zone, "db.data.svc.cluster.local", "A") == {"10.244.1.10", "10.244.2.11", "10.244.3.12"}
    assert values(zone, "db.data.svc.cluster.local", "AAAA") == {"fd00:244::10"}


def test_headless_publish_not_ready_addresses_includes_not_ready_endpoints():
    zone = zone_of(headless_cluster(publish_not_ready_addresses=True))
    assert "10.244.4.13" in values(zone, "db.data.svc.cluster.local", "A")
    assert values(zone, "db-3.db.data.svc.cluster.local", "A") == {"10.244.4.13"}


def test_headless_per_hostname_records_and_generated_names():
    zone = zone_of(headless_cluster())
    assert values(zone, "db-0.db.data.svc.cluster.local", "A") == {"10.244.1.10"}
    assert values(zone, "db-0.db.data.svc.cluster.local", "AAAA") == {"fd00:244::10"}
    assert values(zone, "db-1.db.data.svc.cluster.local", "A") == {"10.244.2.11"}
    # no hostname: CoreDNS's generated name, the address with '.' turned into '-'
    assert values(zone, "10-244-3-12.db.data.svc.cluster.local", "A") == {"10.244.3.12"}
    assert "db-3.db.data.svc.cluster.local." not in names(zone)  # not ready


def test_headless_srv_per_endpoint_name_with_endpoint_port_and_even_weights():
    zone = zone_of(headless_cluster())
    base = "db.data.svc.cluster.local."
    # db-0 has an IPv4 and an IPv6 address but one name: one SRV record for it
    assert values(zone, "_pg._tcp.db.data.svc.cluster.local", "SRV") == {
        f"0 33 15432 db-0.{base}", f"0 33 15432 db-1.{base}", f"0 33 15432 10-244-3-12.{base}",
    }
    assert not any(n.startswith("_") and n != f"_pg._tcp.{base}" for n in names(zone))  # unnamed port


def test_headless_without_endpoints_has_no_records_and_no_warning():
    view = dns_view(Cluster(services=(headless("db", ports=(ServicePort(5432, "TCP", "pg"),)),)), DOMAIN)
    assert [r.type for r in view.records] == ["SOA", "NS", "A", "TXT"]
    assert view.warnings == ()


def test_headless_ignores_fqdn_slices_and_other_services_slices():
    cluster = Cluster(
        services=(headless("db"),),
        endpoint_slices=(
            EndpointSlice("default", "db-fqdn", "db", "FQDN", (Endpoint(("db.example.com",)),)),
            eps("other", endpoint("10.244.0.9")),
            eps("db", endpoint("10.244.0.8"), ns="elsewhere"),
        ),
    )
    assert "db.default.svc.cluster.local." not in names(zone_of(cluster))


def test_generated_endpoint_names():
    assert endpoint_hostname(None, "10.244.3.12") == "10-244-3-12"
    assert endpoint_hostname(None, "fd00:244::10") == "fd00-244--10"
    assert endpoint_hostname("web-0", "10.0.0.1") == "web-0"
    cluster = Cluster(services=(headless("db", ports=(ServicePort(80, "TCP", "http"),)),),
                      endpoint_slices=(eps("db", endpoint("fd00:244::10"), family="IPv6"),))
    zone = zone_of(cluster)
    assert values(zone, "fd00-244--10.db.default.svc.cluster.local", "AAAA") == {"fd00:244::10"}
    assert values(zone, "_http._tcp.db.default.svc.cluster.local", "SRV") == {
        "0 100 8080 fd00-244--10.db.default.svc.cluster.local."
    }


# -------------------------------------------------------- ExternalName Services


def test_external_name_is_an_absolute_cname():
    services = (
        Service("default", "search", type="ExternalName", external_name="search.example.com"),
        Service("default", "dotted", type="ExternalName", external_name="api.example.net."),
    )
    zone = zone_of(Cluster(services=services))
    assert values(zone, "search.default.svc.cluster.local", "CNAME") == {"search.example.com."}
    assert values(zone, "dotted.default.svc.cluster.local", "CNAME") == {"api.example.net."}


def test_external_name_that_is_an_ip_gets_no_record_and_a_warning():
    ref = ObjectRef("Service", "default", "raw", source="in.yaml", index=3)
    view = dns_view(Cluster(services=(
        Service("default", "raw", type="ExternalName", external_name="192.0.2.7", ref=ref),)), DOMAIN)
    assert [r.type for r in view.records] == ["SOA", "NS", "A", "TXT"]
    assert view.warnings and "192.0.2.7 is an IP address" in view.warnings[0]


# --------------------------------------------------------------- ordering etc.


def test_output_is_deterministic_and_in_canonical_order():
    cluster = headless_cluster()
    services = cluster.services + (svc("web", "shop", ("10.96.0.20", "fd00::20")), svc("api", "shop"),
                                   Service("b", "ext", type="ExternalName", external_name="x.example"))
    slices = list(cluster.endpoint_slices)
    expected = checked_zone_file(Cluster(services=services, endpoint_slices=tuple(slices)), DOMAIN)
    rng = random.Random(7)
    for _ in range(5):
        shuffled = list(services)
        rng.shuffle(shuffled)
        rng.shuffle(slices)
        assert zone_file(Cluster(services=tuple(shuffled), endpoint_slices=tuple(slices)), DOMAIN) == expected
    records = dns_records(Cluster(services=services, endpoint_slices=tuple(slices)), DOMAIN)
    assert [r.type for r in records[:4]] == ["SOA", "NS", "A", "TXT"]
    owners = [r.name for r in records if r.name.endswith(".svc.cluster.local.")]
    namespaces = [name.split(".")[-5] for name in owners]
    assert namespaces == sorted(namespaces)  # grouped by namespace, then Service


def test_records_are_unique():
    twice = eps("db", endpoint("10.244.0.8", hostname="db-0"), name="db-dup")
    cluster = Cluster(services=(headless("db", ports=(ServicePort(80, "TCP", "http"),)),),
                      endpoint_slices=(eps("db", endpoint("10.244.0.8", hostname="db-0")), twice))
    records = dns_records(cluster, DOMAIN)
    assert len(records) == len(set(records))
    assert Record("db.default.svc.cluster.local.", "A", "10.244.0.8") in records


def test_names_longer_than_255_octets_are_left_out_with_a_warning():
    domain = ".".join(["d" * 60] * 3)  # 182 characters: <svc>.<ns>.svc.<domain>. fits in 254 with 66 to spare
    services = (svc("s" * 60, "n" * 20), svc("short"), headless("h", ports=(ServicePort(80, "TCP", "p"),)))
    slices = (eps("h", endpoint("10.244.0.1", hostname="x" * 63), ports=(EndpointPort(80, "TCP", "p"),)),)
    view = dns_view(Cluster(services=services, endpoint_slices=slices), domain)
    zone = zone_of(Cluster(services=services, endpoint_slices=slices), domain)
    assert f"short.default.svc.{domain}." in names(zone)
    assert values(zone, f"h.default.svc.{domain}", "A") == {"10.244.0.1"}
    assert not any(r.name.startswith("s" * 60) or ("x" * 63) in r.name + r.data for r in view.records)
    assert len(view.warnings) == 3 and all("longer than 255 octets" in w for w in view.warnings)


LABEL = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@settings(max_examples=40, deadline=None)
@given(
    ns=LABEL,
    service_names=st.lists(LABEL, min_size=1, max_size=4, unique=True),
    last_octets=st.lists(st.integers(1, 254), min_size=0, max_size=6, unique=True),
    hostnames=st.lists(st.one_of(st.none(), LABEL), min_size=6, max_size=6),
    port_name=st.one_of(st.just(""), st.from_regex(r"[a-z]{1,8}", fullmatch=True)),
)
def test_property_zone_parses_and_every_srv_target_has_an_address(ns, service_names, last_octets, hostnames,
                                                                   port_name):
    services = []
    slices = []
    for i, name in enumerate(service_names):
        ports = (ServicePort(80 + i, "TCP", port_name),)
        if i % 2:
            services.append(svc(name, ns, (f"10.96.0.{i + 1}",), ports))
            continue
        services.append(headless(name, ns, ports))
        endpoints = [endpoint(f"10.244.{i}.{o}", hostname=h) for o, h in zip(last_octets, hostnames)]
        slices.append(eps(name, *endpoints, ns=ns, ports=(EndpointPort(8080, "TCP", port_name),)))
    zone = zone_of(Cluster(services=tuple(services), endpoint_slices=tuple(slices)))
    for name, node in zone.nodes.items():
        srv = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.SRV)
        for rdata in srv or ():
            target = zone.get_node(rdata.target)
            assert target is not None and (
                target.get_rdataset(dns.rdataclass.IN, dns.rdatatype.A) is not None
                or target.get_rdataset(dns.rdataclass.IN, dns.rdatatype.AAAA) is not None
            ), (name, rdata)


# ============================================================ environment


def env(cluster: Cluster, namespace: str = "default") -> dict[str, str]:
    return dict(service_env(cluster, namespace))


def test_env_variables_of_one_service_as_the_kubelet_builds_them():
    ports = (ServicePort(80, "TCP", "http"), ServicePort(53, "UDP", "dns"), ServicePort(3868, "SCTP", "diameter"))
    got = env(Cluster(services=(svc("my-web", ips=("10.96.0.42",), ports=ports),)))
    assert got == {
        "MY_WEB_SERVICE_HOST": "10.96.0.42",
        "MY_WEB_SERVICE_PORT": "80",
        "MY_WEB_SERVICE_PORT_HTTP": "80",
        "MY_WEB_SERVICE_PORT_DNS": "53",
        "MY_WEB_SERVICE_PORT_DIAMETER": "3868",
        "MY_WEB_PORT": "tcp://10.96.0.42:80",
        "MY_WEB_PORT_80_TCP": "tcp://10.96.0.42:80",
        "MY_WEB_PORT_80_TCP_PROTO": "tcp",
        "MY_WEB_PORT_80_TCP_PORT": "80",
        "MY_WEB_PORT_80_TCP_ADDR": "10.96.0.42",
        "MY_WEB_PORT_53_UDP": "udp://10.96.0.42:53",
        "MY_WEB_PORT_53_UDP_PROTO": "udp",
        "MY_WEB_PORT_53_UDP_PORT": "53",
        "MY_WEB_PORT_53_UDP_ADDR": "10.96.0.42",
        "MY_WEB_PORT_3868_SCTP": "sctp://10.96.0.42:3868",
        "MY_WEB_PORT_3868_SCTP_PROTO": "sctp",
        "MY_WEB_PORT_3868_SCTP_PORT": "3868",
        "MY_WEB_PORT_3868_SCTP_ADDR": "10.96.0.42",
    }


def test_env_names_dash_to_underscore_upper_case():
    assert env_var_name("my-svc-2") == "MY_SVC_2"
    ports = (ServicePort(8443, "TCP", "https-alt"),)
    got = env(Cluster(services=(svc("front-end", ports=ports),)))
    assert got["FRONT_END_SERVICE_PORT_HTTPS_ALT"] == "8443"
    assert all("-" not in name for name in got)


def test_env_unnamed_single_port_has_no_named_port_variable():
    got = env(Cluster(services=(svc("db", ports=(ServicePort(5432, "TCP", ""),)),)))
    assert sorted(got) == ["DB_PORT", "DB_PORT_5432_TCP", "DB_PORT_5432_TCP_ADDR", "DB_PORT_5432_TCP_PORT",
                           "DB_PORT_5432_TCP_PROTO", "DB_SERVICE_HOST", "DB_SERVICE_PORT"]


def test_env_same_port_number_two_protocols():
    ports = (ServicePort(53, "UDP", "dns"), ServicePort(53, "TCP", "dns-tcp"))
    got = env(Cluster(services=(svc("kube-dns", ports=ports),)))
    assert got["KUBE_DNS_PORT"] == "udp://10.96.0.10:53"  # the first port
    assert got["KUBE_DNS_PORT_53_UDP"] == "udp://10.96.0.10:53"
    assert got["KUBE_DNS_PORT_53_TCP"] == "tcp://10.96.0.10:53"
    assert got["KUBE_DNS_SERVICE_PORT_DNS_TCP"] == "53"


def test_env_ipv6_host_bracketed_in_urls_only():
    got = env(Cluster(services=(svc("v6", ips=("fd00:96::1",), ports=(ServicePort(443, "TCP", "https"),)),)))
    assert got["V6_SERVICE_HOST"] == "fd00:96::1"
    assert got["V6_PORT"] == "tcp://[fd00:96::1]:443"
    assert got["V6_PORT_443_TCP"] == "tcp://[fd00:96::1]:443"
    assert got["V6_PORT_443_TCP_ADDR"] == "fd00:96::1"


def test_env_dual_stack_uses_the_primary_cluster_ip():
    got = env(Cluster(services=(svc("dual", ips=("fd00:96::7", "10.96.0.7")),)))
    assert got["DUAL_SERVICE_HOST"] == "fd00:96::7"
    assert got["DUAL_PORT"] == "tcp://[fd00:96::7]:80"


def test_env_namespace_services_plus_default_kubernetes():
    kubernetes = svc("kubernetes", "default", ("10.96.0.1",), (ServicePort(443, "TCP", "https"),))
    services = (kubernetes, svc("other", "default"), svc("web", "shop", ("10.96.0.30",)), svc("db", "data"))
    got = env(Cluster(services=services), "shop")
    assert got["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert got["KUBERNETES_SERVICE_PORT_HTTPS"] == "443"
    assert got["WEB_SERVICE_HOST"] == "10.96.0.30"
    assert not any(name.startswith(("OTHER_", "DB_")) for name in got)
    assert "OTHER_SERVICE_HOST" in env(Cluster(services=services), "default")


def test_env_namespace_kubernetes_service_shadows_the_default_one():
    services = (svc("kubernetes", "default", ("10.96.0.1",)), svc("kubernetes", "shop", ("10.96.0.99",)))
    assert env(Cluster(services=services), "shop")["KUBERNETES_SERVICE_HOST"] == "10.96.0.99"
    assert env(Cluster(services=services), "default")["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"


def test_env_skips_headless_external_name_and_unallocated():
    services = (
        headless("hl", ports=(ServicePort(80, "TCP", "http"),)),
        Service("default", "ext", type="ExternalName", external_name="x.example"),
        svc("pending", ips=()),
        svc("ok"),
    )
    view = env_view(Cluster(services=services), "default")
    assert {name.split("_")[0] for name, _ in view.variables} == {"OK"}
    assert view.warnings == (
        "in.yaml: document 1: Service default/pending: no clusterIP allocated yet, so Pods get no variables "
        "for it (`dataplane allocate` fills it in)",
    )


def test_env_is_sorted_by_name():
    services = (svc("zeta"), svc("alpha", ports=(ServicePort(1, "TCP", "a"), ServicePort(2, "UDP", "b"))))
    pairs = service_env(Cluster(services=services), "default")
    assert [name for name, _ in pairs] == sorted(name for name, _ in pairs)
    assert len(pairs) == len({name for name, _ in pairs})


# ================================================================ commands

MANIFESTS = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIPs: [10.96.0.80, "fd00:96::80"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: None
  selector: {app: db}
  ports:
  - {name: pg, port: 5432}
---
apiVersion: v1
kind: Service
metadata: {name: pending, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 81}]
---
apiVersion: v1
kind: Service
metadata: {name: search, namespace: shop}
spec:
  type: ExternalName
  externalName: search.example.com
---
apiVersion: v1
kind: Service
metadata: {name: kubernetes, namespace: default}
spec:
  clusterIP: 10.96.0.1
  ports: [{name: https, port: 443, targetPort: 6443}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, labels: {app: db}}
spec:
  hostname: db-0
  subdomain: db
  containers: [{name: pg, image: postgres}]
status:
  podIP: 10.244.1.5
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop, labels: {app: db}}
spec:
  hostname: db-1
  subdomain: elsewhere
  containers: [{name: pg, image: postgres}]
status:
  podIP: 10.244.2.6
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-2, namespace: shop, labels: {app: db}}
spec:
  hostname: db-2
  subdomain: db
  containers: [{name: pg, image: postgres}]
status:
  podIP: 10.244.3.7
  conditions: [{type: Ready, status: "False"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: junk, namespace: shop}
"""


def test_dns_command_end_to_end_derives_headless_endpoints_from_pods(tmp_path, capsys):
    path = write(tmp_path, MANIFESTS)
    code, out, err = run(["dns", "-f", path], capsys)
    assert code == 0
    zone = loaded_zone(out)
    assert values(zone, "web.shop.svc.cluster.local", "A") == {"10.96.0.80"}
    assert values(zone, "web.shop.svc.cluster.local", "AAAA") == {"fd00:96::80"}
    assert values(zone, "_http._tcp.web.shop.svc.cluster.local", "SRV") == {"0 100 80 web.shop.svc.cluster.local."}
    # db-0: hostname used (subdomain == service); db-1: subdomain differs, so a generated name; db-2: not ready
    assert values(zone, "db.shop.svc.cluster.local", "A") == {"10.244.1.5", "10.244.2.6"}
    assert values(zone, "db-0.db.shop.svc.cluster.local", "A") == {"10.244.1.5"}
    assert values(zone, "10-244-2-6.db.shop.svc.cluster.local", "A") == {"10.244.2.6"}
    assert "db-1.db.shop.svc.cluster.local." not in names(zone)
    assert "db-2.db.shop.svc.cluster.local." not in names(zone)
    assert values(zone, "_pg._tcp.db.shop.svc.cluster.local", "SRV") == {
        "0 50 5432 db-0.db.shop.svc.cluster.local.", "0 50 5432 10-244-2-6.db.shop.svc.cluster.local.",
    }
    assert values(zone, "search.shop.svc.cluster.local", "CNAME") == {"search.example.com."}
    assert values(zone, "kubernetes.default.svc.cluster.local", "A") == {"10.96.0.1"}
    lines = err.splitlines()
    assert all(line.startswith("warning: ") for line in lines)
    assert any("ConfigMap shop/junk" in line for line in lines)
    assert any("Service shop/pending: no clusterIP allocated yet" in line for line in lines)


def test_dns_command_stdin_domain_and_output_file(tmp_path, capsys, monkeypatch):
    out_file = tmp_path / "cluster.zone"
    code, out, err = run(["dns", "-f", "-", "--cluster-domain", "corp.example", "-o", str(out_file)],
                         capsys, MANIFESTS, monkeypatch)
    assert code == 0 and out == ""
    text = out_file.read_text()
    assert text.splitlines()[2] == "$ORIGIN corp.example."
    zone = loaded_zone(text, "corp.example")
    assert values(zone, "web.shop.svc.corp.example", "A") == {"10.96.0.80"}


def test_env_command_end_to_end(tmp_path, capsys):
    path = write(tmp_path, MANIFESTS)
    code, out, err = run(["env", "-f", path, "--namespace", "shop"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines == sorted(lines)
    assert lines == [
        "KUBERNETES_PORT=tcp://10.96.0.1:443",
        "KUBERNETES_PORT_443_TCP=tcp://10.96.0.1:443",
        "KUBERNETES_PORT_443_TCP_ADDR=10.96.0.1",
        "KUBERNETES_PORT_443_TCP_PORT=443",
        "KUBERNETES_PORT_443_TCP_PROTO=tcp",
        "KUBERNETES_SERVICE_HOST=10.96.0.1",
        "KUBERNETES_SERVICE_PORT=443",
        "KUBERNETES_SERVICE_PORT_HTTPS=443",
        "WEB_PORT=tcp://10.96.0.80:80",
        "WEB_PORT_80_TCP=tcp://10.96.0.80:80",
        "WEB_PORT_80_TCP_ADDR=10.96.0.80",
        "WEB_PORT_80_TCP_PORT=80",
        "WEB_PORT_80_TCP_PROTO=tcp",
        "WEB_SERVICE_HOST=10.96.0.80",
        "WEB_SERVICE_PORT=80",
        "WEB_SERVICE_PORT_HTTP=80",
    ]
    assert "warning: " in err and "Service shop/pending: no clusterIP allocated yet" in err


def test_env_command_stdin_and_output_file(tmp_path, capsys, monkeypatch):
    out_file = tmp_path / "pod.env"
    code, out, _ = run(["env", "-f", "-", "-n", "default", "-o", str(out_file)], capsys, MANIFESTS, monkeypatch)
    assert code == 0 and out == ""
    assert out_file.read_text().splitlines()[-1] == "KUBERNETES_SERVICE_PORT_HTTPS=443"


def test_commands_have_help_with_examples(capsys):
    for command in ("dns", "env"):
        with pytest.raises(SystemExit):
            run([command, "--help"], capsys)
        out = capsys.readouterr().out
        assert "examples:" in out and f"dataplane {command} -f" in out and "--output" in out


def test_dns_command_rejects_a_bad_domain_before_reading(tmp_path, capsys):
    with pytest.raises(UsageError):
        run(["dns", "-f", str(tmp_path / "missing.yaml"), "--cluster-domain", "not a domain"], capsys)
