"""uacce device discovery from /sys/class/uacce/<name> (read-only).

Attributes per the kernel's Documentation/ABI/testing/sysfs-driver-uacce: api, flags
(UACCE_DEV_SVA = 1), available_instances, algorithms (one per line), region_mmio_size,
region_dus_size, isolate (0 normal / 1 isolated), isolate_strategy. The parent PCI function and its
NUMA node come from the `device` link, as UADK reads them.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from ...uapi.uacce import UACCE_DEV_SVA

_BDF = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:  # also ENODEV: available_instances without the driver op
        return None


def _int(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None


@dataclass(frozen=True)
class UacceDevice:
    name: str
    """e.g. hisi_zip-0 (`<driver>-<id>`)."""
    dev_path: str
    """The queue char device, /dev/<name>."""
    api: str | None
    """e.g. hisi_qm_v2; tells a plugin which queue layout the device speaks."""
    flags: int
    available_instances: int | None
    algorithms: tuple[str, ...]
    region_mmio_size: int | None
    region_dus_size: int | None
    isolate: int | None
    """1 when the kernel isolated the device after hardware errors (UADK then skips it)."""
    isolate_strategy: int | None
    parent_bdf: str | None
    numa_node: int | None
    sysfs_path: str

    @property
    def sva(self) -> bool:
        return bool(self.flags & UACCE_DEV_SVA)

    @property
    def isolated(self) -> bool:
        return self.isolate == 1

    @property
    def driver(self) -> str:
        """`hisi_zip` for `hisi_zip-0`."""
        return self.name.rsplit("-", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sva"] = self.sva
        d["isolated"] = self.isolated
        return d


def read_device(name: str, sysfs_root: str = "/sys", dev_root: str = "/dev") -> UacceDevice:
    path = f"{sysfs_root}/class/uacce/{name}"
    parent = None
    link = f"{path}/device"
    if os.path.exists(link):
        base = os.path.basename(os.path.realpath(link))
        parent = base if _BDF.match(base) else None
    numa = _int(_read(f"{path}/device/numa_node"))
    algs = _read(f"{path}/algorithms") or ""
    return UacceDevice(
        name=name,
        dev_path=f"{dev_root}/{name}",
        api=_read(f"{path}/api"),
        flags=_int(_read(f"{path}/flags")) or 0,
        available_instances=_int(_read(f"{path}/available_instances")),
        algorithms=tuple(a.strip() for a in algs.splitlines() if a.strip()),
        region_mmio_size=_int(_read(f"{path}/region_mmio_size")),
        region_dus_size=_int(_read(f"{path}/region_dus_size")),
        isolate=_int(_read(f"{path}/isolate")),
        isolate_strategy=_int(_read(f"{path}/isolate_strategy")),
        parent_bdf=parent,
        numa_node=numa if numa is not None and numa >= 0 else None,
        sysfs_path=path,
    )


def usable_devices(driver: str, sysfs_root: str = "/sys") -> list[str]:
    """Names of `driver`'s uacce devices a process can take a queue from now: SVA, not isolated
    after hardware errors, queues available."""
    return [d.name for d in devices(sysfs_root)
            if d.driver == driver and d.sva and not d.isolated
            and (d.available_instances is None or d.available_instances > 0)]


def devices(sysfs_root: str = "/sys", dev_root: str = "/dev") -> list[UacceDevice]:
    """Every uacce device, sorted by name; empty when the class does not exist (no CONFIG_UACCE,
    or no uacce driver loaded — hisi drivers register only with uacce_mode=1)."""
    try:
        names = sorted(os.listdir(f"{sysfs_root}/class/uacce"))
    except OSError:
        return []
    return [read_device(n, sysfs_root, dev_root) for n in names]
