"""warpdrive's rtnetlink reader against iproute2's `ip` (code we did not write), on every interface
of this real host: link state, addresses, routes and the default route must agree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from warpdrive.binding import rtnetlink
from warpdrive.binding.netuse import interface_use

IP = shutil.which("ip") or "/usr/sbin/ip"
pytestmark = pytest.mark.skipif(not os.path.exists(IP), reason="iproute2's ip is not installed")


def ip_json(*args: str) -> list[dict[str, object]]:
    return json.loads(subprocess.run([IP, "-j", *args], capture_output=True, text=True,
                                     check=True).stdout or "[]")


@pytest.mark.parametrize("ifname", sorted(os.listdir("/sys/class/net")))
def test_interface_use_agrees_with_iproute2(ifname: str) -> None:
    use = interface_use(ifname)
    assert use is not None
    [link] = ip_json("link", "show", "dev", ifname)
    assert use.index == link["ifindex"]
    assert use.up == ("UP" in link["flags"])  # type: ignore[operator]
    assert use.operstate == link["operstate"]
    [addr] = ip_json("addr", "show", "dev", ifname)
    assert sorted(use.addresses) == sorted(
        f"{a.get('address', a['local'])}/{a['prefixlen']}"  # type: ignore[index, union-attr]
        for a in addr["addr_info"])  # type: ignore[union-attr]
    ip_routes = [r for fam in ("-4", "-6") for r in ip_json(fam, "route", "show", "table", "all",
                                                             "dev", ifname)
                 if r.get("type", "unicast") == "unicast" and r.get("table") != "local"]
    assert len(use.routes) == len(ip_routes), (use.routes, ip_routes)
    assert use.default_route == any(r["dst"] == "default" for r in ip_routes)


def test_unknown_interface_is_none() -> None:
    assert interface_use("wd-nonexistent0") is None
    assert "wd-nonexistent0" not in {link.get("IFLA_IFNAME") for link in rtnetlink.links()}
