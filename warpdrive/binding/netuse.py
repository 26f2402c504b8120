"""Is a network interface in use? (up, addresses, routes) — asked of the kernel over netlink.

Why netlink (`rtnetlink`) rather than /sys/class/net/*/operstate alone: the dangerous case is an
interface that carries routes (above all the default route, i.e. the ssh session), and only
the routing tables know that.
"""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass
from typing import Any

IFF_UP = 0x1
RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255
RTN_UNICAST = 1


@dataclass(frozen=True)
class InterfaceUse:
    ifname: str
    index: int
    up: bool
    """IFF_UP is set (administratively up)."""
    operstate: str
    addresses: tuple[str, ...]
    routes: tuple[str, ...]
    """Unicast routes through the interface, local table left out (those mirror the addresses)."""
    default_route: bool

    @property
    def in_use(self) -> bool:
        return self.up or bool(self.addresses) or bool(self.routes)

    def describe(self) -> str:
        state = "up" if self.up else "down"
        text = f"{self.ifname} is {state} (operstate {self.operstate})"
        text += f", addresses: {', '.join(self.addresses) or 'none'}"
        text += f", routes: {'; '.join(self.routes) or 'none'}"
        if self.default_route:
            text += ". It carries the DEFAULT ROUTE: unbinding it cuts this machine off the network"
        return text

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["in_use"] = self.in_use
        return d


def _route_oifs(route: Any) -> set[int]:
    oifs = set()
    oif = route.get("RTA_OIF")
    if oif is not None:
        oifs.add(oif)
    for hop in route.get("RTA_MULTIPATH") or ():  # ECMP: each nexthop names its own interface
        if hop.get("oif") is not None:
            oifs.add(hop["oif"])
    return oifs


def _format_route(route: Any, family: int) -> str:
    dst = route.get("RTA_DST")
    text = f"{dst}/{route['dst_len']}" if dst is not None else "default"
    gw = route.get("RTA_GATEWAY")
    if gw:
        text += f" via {gw}"
    if family == socket.AF_INET6:
        text += " (IPv6)"
    table = route.get("RTA_TABLE", RT_TABLE_MAIN)
    if table != RT_TABLE_MAIN:
        text += f" table {table}"
    return text


def interface_use(ifname: str) -> InterfaceUse | None:
    """What the kernel says about `ifname` in this network namespace; None if it is not here."""
    from . import rtnetlink

    link = rtnetlink.link_by_name(ifname)
    if link is None:
        return None
    index = link["index"]
    addresses = tuple(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
                      for a in rtnetlink.addresses(index))
    routes: list[str] = []
    default = False
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in rtnetlink.routes(family):  # every table; matched on the oif here
            if index not in _route_oifs(r) or r.get("RTA_TABLE") == RT_TABLE_LOCAL:
                continue
            if r["type"] != RTN_UNICAST:
                continue
            if r.get("RTA_DST") is None and r["dst_len"] == 0:
                default = True
            routes.append(_format_route(r, family))
    return InterfaceUse(
        ifname=ifname,
        index=index,
        up=bool(link["flags"] & IFF_UP),
        operstate=str(link.get("IFLA_OPERSTATE") or "UNKNOWN"),
        addresses=addresses,
        routes=tuple(routes),
        default_route=default,
    )
