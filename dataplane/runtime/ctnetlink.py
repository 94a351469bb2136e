"""A network namespace's conntrack table over ctnetlink (pyroute2), as structured records.

:func:`list_entries` dumps a table as :class:`~dataplane.runtime.conntrack.ConntrackEntry`
records, :func:`delete_matching` deletes the entries that
:class:`~dataplane.runtime.conntrack.ConntrackDelete` filters select (kube-proxy's stale
UDP/SCTP cleanup) and :func:`flush` empties a table. No ``conntrack`` process is
spawned and no text is parsed.

The netlink socket is opened in the namespace (:func:`dataplane.runtime.netns.in_netns`
switches only the calling thread, for the ``socket()`` call) and keeps that
namespace for life; one socket serves a whole dump-and-delete pass. pyroute2 0.9
runs on asyncio, so each call runs its own event loop, in a helper thread when
the caller is already inside one.
"""
from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Iterable, Optional, Sequence, TypeVar

from pyroute2.conntrack import AsyncConntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import TCP_CONNTRACK_TO_NAME, NFCTAttrTuple

from .conntrack import ConntrackDelete, ConntrackEntry, FlowTuple, select
from ..errors import ApplyError
from .netns import in_netns

__all__ = ["entry_from_msg", "list_entries", "delete_matching", "flush"]

_NETLINK_NETFILTER = 12  # linux/netlink.h; not exported by the socket module
_FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
_FAMILY_NAMES = {v: k for k, v in _FAMILIES.items()}
_PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_SCTP: "sctp",
              socket.IPPROTO_ICMP: "icmp", socket.IPPROTO_ICMPV6: "icmpv6"}
_PROTONUMS = {v: k for k, v in _PROTOCOLS.items()}
#: ``enum sctp_conntrack`` (linux/netfilter/nf_conntrack_sctp.h).
_SCTP_STATES = ("NONE", "CLOSED", "COOKIE_WAIT", "COOKIE_ECHOED", "ESTABLISHED", "SHUTDOWN_SENT",
                "SHUTDOWN_RECD", "SHUTDOWN_ACK_SENT", "HEARTBEAT_SENT", "HEARTBEAT_ACKED")
_ENOENT = 2

T = TypeVar("T")


# --------------------------------------------------------------------------- decoding


def _tuple(nla: Any, family: int) -> tuple[FlowTuple, int]:
    """A ``CTA_TUPLE_*`` attribute as a :class:`FlowTuple`, and its protocol number."""
    ip, proto = nla.get_attr("CTA_TUPLE_IP"), nla.get_attr("CTA_TUPLE_PROTO")
    v = "V6" if family == socket.AF_INET6 else "V4"
    flow = FlowTuple(
        src=ip.get_attr(f"CTA_IP_{v}_SRC"),
        dst=ip.get_attr(f"CTA_IP_{v}_DST"),
        sport=proto.get_attr("CTA_PROTO_SRC_PORT"),
        dport=proto.get_attr("CTA_PROTO_DST_PORT"),
    )
    return flow, proto.get_attr("CTA_PROTO_NUM")


def _state(msg: Any, protonum: int) -> Optional[str]:
    """The TCP or SCTP protocol state of an entry, if the kernel reports one."""
    info = msg.get_attr("CTA_PROTOINFO")
    if info is None:
        return None
    if protonum == socket.IPPROTO_TCP and (tcp := info.get_attr("CTA_PROTOINFO_TCP")) is not None:
        state = tcp.get_attr("CTA_PROTOINFO_TCP_STATE")
        return None if state is None else TCP_CONNTRACK_TO_NAME.get(state, str(state))
    if protonum == socket.IPPROTO_SCTP and (sctp := info.get_attr("CTA_PROTOINFO_SCTP")) is not None:
        state = sctp.get_attr("CTA_PROTOINFO_SCTP_STATE")
        if state is None:
            return None
        return _SCTP_STATES[state] if state < len(_SCTP_STATES) else str(state)
    return None


def entry_from_msg(msg: Any) -> ConntrackEntry:
    """A decoded ctnetlink message (``IPCTNL_MSG_CT_NEW``, as a dump yields them) as a record."""
    family = msg["nfgen_family"]
    orig, protonum = _tuple(msg.get_attr("CTA_TUPLE_ORIG"), family)
    reply, _ = _tuple(msg.get_attr("CTA_TUPLE_REPLY"), family)
    return ConntrackEntry(
        family=_FAMILY_NAMES.get(family, str(family)),
        protocol=_PROTOCOLS.get(protonum, str(protonum)),
        orig=orig,
        reply=reply,
        status=msg.get_attr("CTA_STATUS") or 0,
        timeout=msg.get_attr("CTA_TIMEOUT"),
        state=_state(msg, protonum),
        id=msg.get_attr("CTA_ID"),
    )


# --------------------------------------------------------------------------- sessions


def _run(make: Callable[[], Awaitable[T]]) -> T:
    """Run the coroutine ``make()`` to completion on a fresh event loop (in a helper thread
    when this thread already runs one)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())  # type: ignore[arg-type]
    with ThreadPoolExecutor(1, thread_name_prefix="ctnetlink") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()  # type: ignore[arg-type]


def _session(ns: str, family: int, work: Callable[[AsyncConntrack], Awaitable[T]]) -> T:
    """``work(ct)`` with a ctnetlink socket of namespace ``ns`` (``family``: the dump and
    delete family, AF_UNSPEC for all)."""
    with in_netns(ns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_NETFILTER)

    async def go() -> T:
        async with AsyncConntrack(use_socket=sock, nfgen_family=family) as ct:
            return await work(ct)

    try:
        return _run(go)
    except NetlinkError as e:
        raise ApplyError(f"conntrack netlink request failed in network namespace {ns}: {e}") from e
    finally:
        sock.close()  # pyroute2 closes it too; closing twice is harmless


async def _dump(ct: AsyncConntrack) -> list[ConntrackEntry]:
    return [entry_from_msg(m) async for m in await ct.dump()]


def list_entries(ns: str, family: str = "ipv4", protocol: Optional[str] = None) -> list[ConntrackEntry]:
    """The entries of ``ns``'s conntrack table of one family (``"ipv4"``/``"ipv6"``), of one
    protocol (``"tcp"``, ``"udp"``, ``"sctp"``, ...) or of all."""
    entries = _session(ns, _FAMILIES[family], _dump)
    return [e for e in entries if protocol is None or e.protocol == protocol]


def _delete_tuple(entry: ConntrackEntry) -> NFCTAttrTuple:
    """The original tuple that names ``entry`` in a delete request."""
    proto = _PROTONUMS[entry.protocol] if entry.protocol in _PROTONUMS else int(entry.protocol)
    return NFCTAttrTuple(family=_FAMILIES[entry.family], saddr=entry.orig.src, daddr=entry.orig.dst,
                         proto=proto, sport=entry.orig.sport, dport=entry.orig.dport)


async def _delete(ct: AsyncConntrack, entries: Iterable[ConntrackEntry]) -> list[ConntrackEntry]:
    deleted = []
    for e in entries:
        try:
            # by original tuple and id: an entry that expired and came back meanwhile is another one
            await ct.entry("del", tuple_orig=_delete_tuple(e), id=e.id)
        except NetlinkError as err:
            if err.code != _ENOENT:  # gone already (expired, or deleted by someone else)
                raise
            continue
        deleted.append(e)
    return deleted


def delete_matching(ns: str, filters: Sequence[ConntrackDelete]) -> list[ConntrackEntry]:
    """Delete the entries of ``ns`` that any of ``filters`` matches; returns those deleted.

    One dump per family the filters name, then one delete per matching entry,
    all over one socket per family (``conntrack -D`` dumps the table once per filter).
    """
    deleted: list[ConntrackEntry] = []
    for family in sorted({f.family for f in filters}):
        mine = [f for f in filters if f.family == family]

        async def work(ct: AsyncConntrack, mine: Sequence[ConntrackDelete] = mine) -> list[ConntrackEntry]:
            return await _delete(ct, select(mine, await _dump(ct)))

        deleted += _session(ns, _FAMILIES[family], work)
    return deleted


def flush(ns: str) -> None:
    """Empty ``ns``'s conntrack table (both families), as ``conntrack -F`` does."""

    async def work(ct: AsyncConntrack) -> None:
        await ct.flush()

    _session(ns, socket.AF_UNSPEC, work)
