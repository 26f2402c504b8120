"""Just enough rtnetlink to ask the kernel about one interface: its link, addresses and routes.

Why not pyroute2: `from pyroute2 import IPRoute` runs the package's `__init__`, which imports all
of it (about 160 modules: NDB, IPDB, conntrack, nftables...), 0.1 s on a host and 6 s per process
in the TCG lab guest, for three dump requests. Message layouts: Linux's uAPI headers
`linux/netlink.h` (nlmsghdr, NLM_F_*, NLMSG_*), `linux/rtnetlink.h` (rtattr, rtmsg, rtnexthop,
RTM_*, RTA_*), `linux/if_link.h` (IFLA_*, IF_OPER_*), `linux/if_addr.h` (ifaddrmsg, IFA_*) and
`linux/if.h` (ifinfomsg via rtnetlink.h); docs/research/rtnetlink.md.

Records are dicts keyed by the kernel's attribute names (as `ip` and pyroute2 name them), holding
only the fields `netuse` reads.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

from ..errors import WarpdriveError

NETLINK_ROUTE = 0
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
IFLA_IFNAME, IFLA_OPERSTATE = 3, 16
IFA_ADDRESS = 1
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 9, 15
# IF_OPER_* (RFC 2863 operational states), by value.
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type,
# flags
RTATTR = struct.Struct("=HH")  # len, type
RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops, ifindex


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attrs(data: bytes, offset: int, end: int) -> Iterator[tuple[int, bytes]]:
    while offset + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size:
            break
        yield kind & 0x3FFF, data[offset + RTATTR.size:offset + length]  # without NLA_F_* bits
        offset += _align(length)


def _ip(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw)


def _u32(raw: bytes) -> int:
    return int(struct.unpack("=I", raw[:4])[0])


def _dump(kind: int, header: bytes) -> Iterator[tuple[int, bytes, int]]:
    """One dump request; yields (message type, message, offset of its payload)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_ROUTE) as s:
        s.bind((0, 0))
        seq = 1
        s.send(NLMSGHDR.pack(NLMSGHDR.size + len(header), kind, NLM_F_REQUEST | NLM_F_DUMP, seq,
                             0) + header)
        while True:
            data = s.recv(1 << 20)
            offset = 0
            while offset + NLMSGHDR.size <= len(data):
                length, mtype, _flags, mseq, _pid = NLMSGHDR.unpack_from(data, offset)
                if length < NLMSGHDR.size:
                    return
                if mseq == seq:
                    if mtype == NLMSG_DONE:
                        return
                    if mtype == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, offset + NLMSGHDR.size)
                        if code:
                            raise WarpdriveError(f"rtnetlink dump (message type {kind})",
                                                 errno=-code)
                    else:
                        yield mtype, data[offset:offset + length], NLMSGHDR.size
                offset += _align(length)


def links() -> list[dict[str, Any]]:
    out = []
    for mtype, msg, off in _dump(RTM_GETLINK, IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        if mtype != RTM_NEWLINK:
            continue
        _family, _type, index, flags, _change = IFINFOMSG.unpack_from(msg, off)
        link: dict[str, Any] = {"index": index, "flags": flags}
        for kind, raw in _attrs(msg, off + IFINFOMSG.size, len(msg)):
            if kind == IFLA_IFNAME:
                link["IFLA_IFNAME"] = raw.split(b"\0", 1)[0].decode(errors="replace")
            elif kind == IFLA_OPERSTATE and raw:
                link["IFLA_OPERSTATE"] = OPERSTATES[raw[0]] if raw[0] < len(OPERSTATES) \
                    else str(raw[0])
        out.append(link)
    return out


def addresses(index: int) -> list[dict[str, Any]]:
    out = []
    for mtype, msg, off in _dump(RTM_GETADDR, IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        if mtype != RTM_NEWADDR:
            continue
        family, prefixlen, _flags, _scope, ifindex = IFADDRMSG.unpack_from(msg, off)
        if ifindex != index:
            continue
        addr: dict[str, Any] = {"family": family, "prefixlen": prefixlen}
        for kind, raw in _attrs(msg, off + IFADDRMSG.size, len(msg)):
            if kind == IFA_ADDRESS:
                addr["IFA_ADDRESS"] = _ip(family, raw)
        out.append(addr)
    return out


def routes(family: int) -> list[dict[str, Any]]:
    """Every route of `family` in every table (a dump with table 0 is not filtered)."""
    out = []
    for mtype, msg, off in _dump(RTM_GETROUTE, RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
        if mtype != RTM_NEWROUTE:
            continue
        fam, dst_len, _src, _tos, table, _proto, _scope, rtype, _flags = RTMSG.unpack_from(msg, off)
        route: dict[str, Any] = {"family": fam, "dst_len": dst_len, "type": rtype,
                                 "RTA_TABLE": table}
        for kind, raw in _attrs(msg, off + RTMSG.size, len(msg)):
            if kind == RTA_DST:
                route["RTA_DST"] = _ip(fam, raw)
            elif kind == RTA_GATEWAY:
                route["RTA_GATEWAY"] = _ip(fam, raw)
            elif kind == RTA_OIF:
                route["RTA_OIF"] = _u32(raw)
            elif kind == RTA_TABLE:  # the full table id (rtm_table holds only 8 bits)
                route["RTA_TABLE"] = _u32(raw)
            elif kind == RTA_MULTIPATH:
                hops, pos = [], 0
                while pos + RTNEXTHOP.size <= len(raw):
                    length, _hflags, _hops, ifindex = RTNEXTHOP.unpack_from(raw, pos)
                    if length < RTNEXTHOP.size:
                        break
                    hops.append({"oif": ifindex})
                    pos += _align(length)
                route["RTA_MULTIPATH"] = hops
        out.append(route)
    return out


def link_by_name(ifname: str) -> dict[str, Any] | None:
    for link in links():
        if link.get("IFLA_IFNAME") == ifname:
            return link
    return None

