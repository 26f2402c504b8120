"""After a bind: who may open the VFIO nodes, and how to let a normal user in (nodes + memlock)."""

from __future__ import annotations

import grp
import os
import pwd
import resource
import stat

from ..pci import PciFunction


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"


def _limit(value: int) -> str:
    if value == resource.RLIM_INFINITY:
        return "unlimited"
    return f"{value // 1024} KiB" if value < 1 << 20 else f"{value >> 20} MiB"


def node_lines(fn: PciFunction, dev_root: str = "/dev") -> list[str]:
    """`/dev/vfio/7: crw------- root:root` for each node a user of this function needs."""
    nodes = [fn.vfio_group_node, fn.vfio_cdev_node, f"{dev_root}/vfio/vfio", f"{dev_root}/iommu"]
    lines = []
    for node in nodes:
        if node is None:
            continue
        try:
            st = os.stat(node)
        except OSError:
            continue
        use = {fn.vfio_group_node: "legacy VFIO group", fn.vfio_cdev_node: "VFIO device cdev",
               f"{dev_root}/vfio/vfio": "legacy container", f"{dev_root}/iommu": "iommufd"}[node]
        lines.append(f"{node}: {stat.filemode(st.st_mode)} {_owner(st)}  ({use})")
    return lines


def access_advice(fn: PciFunction, dev_root: str = "/dev") -> list[str]:
    """How to let a non-root user open the device, and the memlock limit DMA pinning needs."""
    user = os.environ.get("SUDO_USER") or "<user>"
    nodes = [n for n in (fn.vfio_group_node, fn.vfio_cdev_node) if n]
    lines = []
    if nodes:
        lines.append(f"to let {user} use it without root: `chown {user} {' '.join(nodes)}` "
                     "(lasts until the function is rebound), or persistently a udev rule, e.g. "
                     f"/etc/udev/rules.d/90-vfio.rules: SUBSYSTEM==\"vfio\", OWNER=\"{user}\"")
        if fn.vfio_cdev_node and os.path.exists(f"{dev_root}/iommu"):
            lines.append(f"the iommufd path also opens {dev_root}/iommu: give {user} access to "
                         "it too (or use the legacy group path)")
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    lines.append(
        f"RLIMIT_MEMLOCK (this shell): {_limit(soft)} soft / {_limit(hard)} hard. DMA buffers are "
        f"pinned and charged to it: for {user} set `{user} - memlock unlimited` in "
        "/etc/security/limits.conf (then log in again), LimitMEMLOCK=infinity in a systemd unit, "
        "or `prlimit --memlock=unlimited --pid <pid>`")
    return lines
