"""Facts about the real host's network, for tests that must never touch its NIC."""

from __future__ import annotations

import pytest


def default_route_ifname() -> str:
    """The interface carrying the IPv4 default route, from /proc/net/route (real)."""
    with open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000" and fields[7] == "00000000":
                return str(fields[0])
    pytest.skip("no IPv4 default route on this machine")
