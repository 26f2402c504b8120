"""Is a block device below a PCI function in use? (mounted, swap, or stacked under dm/md)

Unbinding the driver of a disk that holds a mounted filesystem (this host's root is on virtio-blk)
is as fatal as unbinding the NIC, so `bind` refuses it the same way.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from ..pci import ChildDevice


def _mounts(proc_root: str) -> dict[tuple[int, int], list[str]]:
    """(major, minor) -> mount points, from mountinfo (which gives the device number directly)."""
    out: dict[tuple[int, int], list[str]] = {}
    try:
        with open(f"{proc_root}/self/mountinfo") as f:
            lines = f.readlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) < 5 or ":" not in fields[2]:
            continue
        major, minor = (int(x) for x in fields[2].split(":"))
        point = fields[4].replace("\\040", " ")
        out.setdefault((major, minor), []).append(point)
    return out


def _swaps(proc_root: str) -> dict[tuple[int, int], str]:
    out: dict[tuple[int, int], str] = {}
    try:
        with open(f"{proc_root}/swaps") as f:
            lines = f.readlines()[1:]
    except OSError:
        return out
    for line in lines:
        path = line.split()[0] if line.split() else ""
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            out[(os.major(st.st_rdev), os.minor(st.st_rdev))] = path
    return out


def block_use(children: Sequence[ChildDevice], sysfs_root: str = "/sys",
              proc_root: str = "/proc") -> list[str]:
    """One line per way a block device of the function is in use; empty when none is."""
    blocks = [c for c in children if c.subsystem == "block"]
    if not blocks:
        return []
    mounts, swaps = _mounts(proc_root), _swaps(proc_root)
    uses = []
    for b in blocks:
        if b.devnum is not None:
            for point in mounts.get(b.devnum, []):
                uses.append(f"{b.name} is mounted on {point}")
            if b.devnum in swaps:
                uses.append(f"{b.name} is in use as swap")
        try:
            stacked = sorted(os.listdir(f"{sysfs_root}/class/block/{b.name}/holders"))
        except OSError:
            stacked = []
        for h in stacked:
            uses.append(f"{b.name} is held by {h} (device-mapper/md/bcache on top of it)")
    return uses
