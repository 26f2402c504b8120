"""A FAKE sysfs/dev tree under a directory, for parsing tests only.

It stands in for the layout the kernel exposes (/sys/bus/pci/devices/<bdf> -> /sys/devices/...,
the driver and iommu_group links, /sys/kernel/iommu_groups/N/devices, class devices below a
function with their `subsystem` link and `dev` numbers, /sys/class/uacce, /dev/vfio/...). It proves
that the *parsing* of such a tree is right; whether the kernel really looks like this, and all
real binding behaviour, is tested in the lab guest.
"""

from __future__ import annotations

import os
from pathlib import Path


class FakeSysfs:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.sys = self.root / "sys"
        self.dev = self.root / "dev"
        for d in ("bus/pci/devices", "bus/pci/drivers", "kernel/iommu_groups", "class/iommu",
                  "devices/pci0000:00", "module/vfio/parameters"):
            (self.sys / d).mkdir(parents=True, exist_ok=True)
        (self.sys / "bus/pci/drivers_probe").write_text("")
        self.dev.mkdir(parents=True, exist_ok=True)

    @property
    def sysfs_root(self) -> str:
        return str(self.sys)

    @property
    def dev_root(self) -> str:
        return str(self.dev)

    def fn_dir(self, bdf: str) -> Path:
        return self.sys / "devices/pci0000:00" / bdf

    def add_driver(self, name: str) -> Path:
        d = self.sys / "bus/pci/drivers" / name
        d.mkdir(parents=True, exist_ok=True)
        for leaf in ("bind", "unbind", "new_id", "remove_id"):
            (d / leaf).touch()
        return d

    def add_iommu(self, name: str = "dmar0") -> None:
        (self.sys / "class/iommu" / name).mkdir(parents=True, exist_ok=True)

    def set_driver(self, bdf: str, driver: str | None) -> None:
        link = self.fn_dir(bdf) / "driver"
        if link.is_symlink():
            back = link.parent / os.readlink(link) / bdf
            if back.is_symlink():
                back.unlink()
            link.unlink()
        if driver is not None:
            self.add_driver(driver)
            drv = self.sys / "bus/pci/drivers" / driver
            link.symlink_to(os.path.relpath(drv, self.fn_dir(bdf)))
            # As the kernel does: the driver's directory lists the functions bound to it.
            (drv / bdf).symlink_to(os.path.relpath(self.fn_dir(bdf), drv))

    def add_function(self, bdf: str, vendor: int, device: int, class_code: int, *,
                     driver: str | None = None, group: int | None = None,
                     group_type: str = "DMA", numa: int = -1, revision: int = 0,
                     subsystem: tuple[int, int] | None = None, override: str | None = None,
                     resources: int = 1) -> Path:
        d = self.fn_dir(bdf)
        d.mkdir(parents=True)
        sv, sd = subsystem if subsystem is not None else (vendor, device)
        files = {"vendor": f"0x{vendor:04x}", "device": f"0x{device:04x}",
                 "class": f"0x{class_code:06x}", "revision": f"0x{revision:02x}",
                 "subsystem_vendor": f"0x{sv:04x}", "subsystem_device": f"0x{sd:04x}",
                 "numa_node": str(numa), "driver_override": override or "(null)"}
        for name, text in files.items():
            (d / name).write_text(text + "\n")
        for i in range(resources):
            (d / f"resource{i}").write_bytes(b"\0" * 4096)
        (d / "subsystem").symlink_to(os.path.relpath(self.sys / "bus/pci", d))
        (self.sys / "bus/pci/devices" / bdf).symlink_to(os.path.relpath(d, self.sys /
                                                                        "bus/pci/devices"))
        self.set_driver(bdf, driver)
        if group is not None:
            g = self.sys / "kernel/iommu_groups" / str(group)
            (g / "devices").mkdir(parents=True, exist_ok=True)
            (g / "type").write_text(group_type + "\n")
            (g / "devices" / bdf).symlink_to(os.path.relpath(d, g / "devices"))
            (d / "iommu_group").symlink_to(os.path.relpath(g, d))
        return d

    def add_child(self, bdf: str, relpath: str, subsystem: str,
                  devnum: tuple[int, int] | None = None) -> Path:
        """A class device at <function>/<relpath> (e.g. "virtio2/net/eth9", subsystem "net")."""
        d = self.fn_dir(bdf) / relpath
        d.mkdir(parents=True)
        cls = self.sys / "class" / subsystem
        cls.mkdir(parents=True, exist_ok=True)
        (d / "subsystem").symlink_to(os.path.relpath(cls, d))
        (cls / d.name).symlink_to(os.path.relpath(d, cls))
        if devnum is not None:
            (d / "dev").write_text(f"{devnum[0]}:{devnum[1]}\n")
        (d / "device").symlink_to(os.path.relpath(d.parent.parent if d.parent.name == subsystem
                                                  else d.parent, d))
        return d

    def add_vfio_node(self, group: int) -> Path:
        p = self.dev / "vfio" / str(group)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
        return p

    def add_vfio_cdev(self, bdf: str, name: str, devnum: tuple[int, int] = (511, 0)) -> Path:
        self.add_child(bdf, f"vfio-dev/{name}", "vfio-dev", devnum)
        p = self.dev / "vfio/devices" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
        return p

    def add_uacce(self, name: str, parent_bdf: str, attrs: dict[str, str]) -> Path:
        d = self.add_child(parent_bdf, f"uacce/{name}", "uacce", (240, 0))
        for k, v in attrs.items():
            (d / k).write_text(v + "\n")
        (self.dev / name).touch()
        return d
