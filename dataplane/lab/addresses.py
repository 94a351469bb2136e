"""Address bookkeeping for laying out a lab: what is spoken for, and the free hosts and
networks left (netaddr IP sets)."""
from __future__ import annotations

import ipaddress
from typing import Iterable, Optional, Sequence, Union

from netaddr import IPRange, IPSet

from ..errors import LabError

__all__ = ["IPAddr", "IPNet", "POOLS", "Space", "hosts", "free_host", "free_subnet", "covering"]

IPAddr = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNet = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
_MAX_PREFIX = {4: 24, 6: 64}  # the underlay and derived pod CIDRs are at least this large
_MIN_PREFIX = {4: 16, 6: 48}  # ... and at most this large
POOLS = {4: ("198.18.0.0/15", "100.64.0.0/10"), 6: ("fd00:dada::/48", "fd00:dadb::/48")}
_SPECIAL = {  # never handed out
    4: IPSet(["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"]),
    6: IPSet(["::/127", "fe80::/10", "ff00::/8", "::ffff:0:0/96"]),
}


def _ipset(items: Iterable[Union[IPAddr, IPNet]]) -> IPSet:
    """A netaddr IP set of ``ipaddress`` addresses and networks."""
    return IPSet(str(i) for i in items)


class Space:
    """Addresses and networks already spoken for while laying a lab out: the reserved
    networks (pod CIDRs, underlays) and the set of used addresses."""

    def __init__(self) -> None:
        self.nets: list[IPNet] = []
        self.used = IPSet()

    def use(self, ips: Iterable[IPAddr]) -> None:
        """Mark addresses used; many at once are merged in one go (an insert each costs a
        compaction of the set)."""
        new = [str(ip) for ip in ips]
        if len(new) > 16:
            self.used = self.used | IPSet(new)
        else:
            for ip in new:
                self.used.add(ip)

    def is_used(self, ip: IPAddr) -> bool:
        return str(ip) in self.used

    def clear_net(self, net: IPNet) -> bool:
        return not any(net.overlaps(n) for n in self.nets if n.version == net.version)

    def free(self, candidates: IPSet, version: int, *, inside: Optional[IPNet] = None) -> IPSet:
        """The usable host addresses among ``candidates``: unused, not special and in no
        reserved network (other than ``inside``)."""
        reserved = _ipset(n for n in self.nets if n.version == version and n != inside)
        return candidates - self.used - _SPECIAL[version] - reserved

    def take(self, free: IPSet, version: int, *, from_end: bool) -> Optional[IPAddr]:
        """The highest (``from_end``) or lowest address of ``free``, marked used; None if it is empty."""
        if not free:
            return None
        cidrs = free.iter_cidrs()  # sorted
        value = cidrs[-1].last if from_end else cidrs[0].first
        ip: IPAddr = ipaddress.IPv6Address(value) if version == 6 else ipaddress.IPv4Address(value)
        self.used.add(str(ip))
        return ip


def hosts(net: IPNet) -> IPSet:
    """The addresses of ``net`` a lab hands out: all but its first and last, and of a network
    larger than 2^16 addresses only its first 2^16 (so "the end" of ``fd00:1::/64`` is
    ``fd00:1::fffe``, not ``fd00:1:0:0:ffff:ffff:ffff:fffe``)."""
    last = min(net.num_addresses, 1 << 16) - 1
    if last < 2:
        return IPSet()
    return IPSet(IPRange(str(net[1]), str(net[last - 1])))


def free_host(net: IPNet, space: Space, *, from_end: bool = True, avoid: Sequence[IPNet] = ()) -> Optional[IPAddr]:
    """The last (``from_end``) or first free host address of ``net`` in none of ``avoid``, marked used."""
    free = space.free(hosts(net), net.version, inside=net) - _ipset(a for a in avoid if a.version == net.version)
    return space.take(free, net.version, from_end=from_end)


def free_subnet(version: int, space: Space) -> IPNet:
    """The first network of the default size in the lab pools that overlaps nothing reserved
    and holds no used address."""
    size = _MAX_PREFIX[version]
    reserved = _ipset(n for n in space.nets if n.version == version)
    for pool in POOLS[version]:
        # the free space is a list of maximal aligned blocks: the first one of the default
        # size or larger starts with the first free network of that size
        for block in (IPSet([pool]) - reserved - space.used).iter_cidrs():
            if block.prefixlen <= size:
                net = ipaddress.ip_network(f"{block.network}/{size}")
                space.nets.append(net)
                return net
    raise LabError(f"no free IPv{version} network left for the lab")


def covering(ips: Sequence[IPAddr], what: str) -> IPNet:
    """The smallest network of at least the default size that holds every one of ``ips``."""
    version = ips[0].version
    prefix = min(_MAX_PREFIX[version], ips[0].max_prefixlen)
    net = ipaddress.ip_network(f"{ips[0]}/{prefix}", strict=False)
    while not all(ip in net for ip in ips):
        net = net.supernet()
    if net.prefixlen < _MIN_PREFIX[version]:
        raise LabError(
            f"{what} {', '.join(str(i) for i in ips)} span {net}: a lab puts them on one segment "
            f"of at most /{_MIN_PREFIX[version]}"
        )
    return net
