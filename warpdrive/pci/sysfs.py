"""Read-only PCI discovery from sysfs: functions, drivers, IOMMU groups, VFIO nodes, child devices.

Everything takes `sysfs_root` (default "/sys") and `dev_root` (default "/dev") so the parsing can
be exercised on a fake tree; nothing here writes anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import DeviceNotFoundError
from .names import class_name, is_bdf, is_bridge, normalize_bdf

# Names the plugin that drives a function, from (vendor, device); None if no plugin does.
Claim = Callable[[int, int], "str | None"]

# Drivers that leave an IOMMU group viable for VFIO (besides "no driver" and bridges).
VFIO_FRIENDLY_DRIVERS = frozenset({"vfio-pci", "pci-stub"})
BRIDGE_DRIVERS = frozenset({"pcieport"})

# How deep to look below a function for its class devices: virtio-net sits at
# <fn>/virtio2/net/eth0, nvme partitions at <fn>/nvme/nvme0/nvme0n1/nvme0n1p1.
_CHILD_DEPTH = 5
_SKIP_DIRS = frozenset({"power", "msi_irqs", "link", "firmware_node", "driver", "subsystem",
                        "iommu_group", "iommu", "physfn", "consumer", "supplier", "wakeup"})


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _read_int(path: str, base: int = 0) -> int | None:
    text = _read(path)
    if text is None or text == "":
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def _link_name(path: str) -> str | None:
    """Basename of a symlink's target (e.g. the driver name behind <fn>/driver)."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


@dataclass(frozen=True)
class GroupMember:
    """Another function in the same IOMMU group, with the driver that decides group viability."""

    bdf: str
    driver: str | None
    class_code: int | None

    @property
    def is_bridge(self) -> bool:
        return self.class_code is not None and is_bridge(self.class_code)

    @property
    def vfio_viable(self) -> bool:
        """True when this member does not stop the group being used through VFIO."""
        return (self.driver is None or self.driver in VFIO_FRIENDLY_DRIVERS
                or self.driver in BRIDGE_DRIVERS or self.is_bridge)


@dataclass(frozen=True)
class ChildDevice:
    """A class device below a PCI function (net interface, block device, uacce queue dev, ...)."""

    name: str
    subsystem: str
    devnum: tuple[int, int] | None = None
    """(major, minor) when the child has a device node."""


@dataclass(frozen=True)
class PciFunction:
    """Everything sysfs says about one PCI function that matters for binding and opening it."""

    bdf: str
    vendor: int
    device: int
    class_code: int
    subsystem_vendor: int | None = None
    subsystem_device: int | None = None
    revision: int | None = None
    driver: str | None = None
    driver_override: str | None = None
    iommu_group: int | None = None
    iommu_group_type: str | None = None
    group_members: tuple[GroupMember, ...] = ()
    """The *other* functions in this function's IOMMU group."""
    numa_node: int | None = None
    vfio_group_node: str | None = None
    """/dev/vfio/N (or /dev/vfio/noiommu-N) when that node exists."""
    vfio_cdev: str | None = None
    """Name of the VFIO device cdev (vfioN) when bound to vfio-pci on a kernel with cdev support."""
    vfio_cdev_node: str | None = None
    net_interfaces: tuple[str, ...] = ()
    block_devices: tuple[str, ...] = ()
    uacce_devices: tuple[str, ...] = ()
    children: tuple[ChildDevice, ...] = field(default=(), repr=False)
    sriov_numvfs: int | None = None
    physfn: str | None = None
    boot_vga: bool = False
    plugin: str | None = None
    sysfs_path: str = ""

    @property
    def ids(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"

    @property
    def class_name(self) -> str:
        return class_name(self.class_code)

    @property
    def is_bridge(self) -> bool:
        return is_bridge(self.class_code)

    @property
    def blocking_members(self) -> tuple[GroupMember, ...]:
        """Group members whose current driver keeps the group from being usable through VFIO."""
        return tuple(m for m in self.group_members if not m.vfio_viable)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ids"] = self.ids
        d["class_name"] = self.class_name
        d["class_code"] = f"0x{self.class_code:06x}"
        for key in ("vendor", "device", "subsystem_vendor", "subsystem_device"):
            if d[key] is not None:
                d[key] = f"0x{d[key]:04x}"
        if d["revision"] is not None:
            d["revision"] = f"0x{d['revision']:02x}"
        for m in d["group_members"]:
            if m["class_code"] is not None:
                m["class_code"] = f"0x{m['class_code']:06x}"
        for c in d["children"]:
            if c["devnum"] is not None:
                c["devnum"] = f"{c['devnum'][0]}:{c['devnum'][1]}"
        return d


@dataclass(frozen=True)
class IommuStatus:
    """Whether this machine can use VFIO at all, and how."""

    iommus: tuple[str, ...]
    """Entries of /sys/class/iommu (e.g. dmar0, ivhd0, virtio-iommu)."""
    group_count: int
    vfio_pci_loaded: bool
    vfio_container: bool
    """/dev/vfio/vfio exists (legacy container interface)."""
    iommufd: bool
    """/dev/iommu exists (iommufd, used with VFIO device cdevs)."""
    noiommu_mode: bool
    """vfio's enable_unsafe_noiommu_mode is on (VFIO without DMA isolation)."""

    @property
    def available(self) -> bool:
        return self.group_count > 0 or self.noiommu_mode

    def summary(self) -> str:
        if self.group_count == 0 and not self.noiommu_mode:
            return ("no IOMMU: VFIO unavailable on this machine (no /sys/class/iommu entries, no "
                    "IOMMU groups). Enable the IOMMU in firmware and on the kernel command line "
                    "(intel_iommu=on / amd_iommu=on), or use uacce or vfio-user instead")
        parts = [f"IOMMU: {', '.join(self.iommus) or 'present'}; {self.group_count} groups"]
        if self.noiommu_mode:
            parts.append("vfio noiommu mode ON (no DMA isolation; unsafe)")
        parts.append("vfio-pci loaded" if self.vfio_pci_loaded else "vfio-pci not loaded")
        parts.append("/dev/vfio/vfio present" if self.vfio_container else "no /dev/vfio/vfio")
        parts.append("/dev/iommu present (iommufd)" if self.iommufd else "no /dev/iommu")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["available"] = self.available
        d["summary"] = self.summary()
        return d


def iommu_status(sysfs_root: str = "/sys", dev_root: str = "/dev") -> IommuStatus:
    def listdir(p: str) -> list[str]:
        try:
            return sorted(os.listdir(p))
        except OSError:
            return []

    noiommu = _read(f"{sysfs_root}/module/vfio/parameters/enable_unsafe_noiommu_mode")
    return IommuStatus(
        iommus=tuple(listdir(f"{sysfs_root}/class/iommu")),
        group_count=len(listdir(f"{sysfs_root}/kernel/iommu_groups")),
        vfio_pci_loaded=os.path.isdir(f"{sysfs_root}/bus/pci/drivers/vfio-pci"),
        vfio_container=os.path.exists(f"{dev_root}/vfio/vfio"),
        iommufd=os.path.exists(f"{dev_root}/iommu"),
        noiommu_mode=noiommu in ("Y", "1"),
    )


def _walk_children(root: str) -> Iterator[ChildDevice]:
    """Class devices below a function, without following symlinks or entering child functions."""
    stack: list[tuple[str, int]] = [(root, 0)]
    while stack:
        path, depth = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        for e in entries:
            if e.name in _SKIP_DIRS or is_bdf(e.name) or not e.is_dir(follow_symlinks=False):
                continue
            sub = _link_name(os.path.join(e.path, "subsystem"))
            if sub is not None and sub not in ("pci", "virtio"):
                devnum = None
                dev = _read(os.path.join(e.path, "dev"))
                if dev and ":" in dev:
                    major, minor = dev.split(":", 1)
                    devnum = (int(major), int(minor))
                yield ChildDevice(e.name, sub, devnum)
            if depth + 1 < _CHILD_DEPTH:
                stack.append((e.path, depth + 1))


def _group_members(sysfs_root: str, group: int, bdf: str) -> tuple[GroupMember, ...]:
    gdir = f"{sysfs_root}/kernel/iommu_groups/{group}/devices"
    try:
        names = sorted(os.listdir(gdir))
    except OSError:
        return ()
    members = []
    for name in names:
        if name == bdf:
            continue
        mdir = os.path.join(gdir, name)
        members.append(GroupMember(name, _link_name(os.path.join(mdir, "driver")),
                                   _read_int(os.path.join(mdir, "class"), 16)))
    return tuple(members)


def read_function(bdf: str, sysfs_root: str = "/sys", dev_root: str = "/dev", *,
                  claim: Claim | None = None) -> PciFunction:
    """One function by address (`00:03.0` accepted); DeviceNotFoundError if sysfs has no such.
    `claim(vendor, device)` names the plugin that drives it: the plugin registry lives above
    discovery, so callers that want the name pass `warpdrive.devices.registry.claim`."""
    bdf = normalize_bdf(bdf)
    path = f"{sysfs_root}/bus/pci/devices/{bdf}"
    vendor = _read_int(f"{path}/vendor", 16)
    device = _read_int(f"{path}/device", 16)
    if vendor is None or device is None:
        raise DeviceNotFoundError(
            f"no PCI function {bdf} ({path} missing or unreadable)",
            hint="list the functions with `warpdrive devices`")
    class_code = _read_int(f"{path}/class", 16) or 0

    override = _read(f"{path}/driver_override")
    if override in ("", "(null)"):  # the kernel prints "(null)" when no override is set
        override = None

    group_link = _link_name(f"{path}/iommu_group")
    group = int(group_link) if group_link is not None and group_link.isdigit() else None
    group_type = _read(f"{sysfs_root}/kernel/iommu_groups/{group}/type") if group is not None \
        else None
    members = _group_members(sysfs_root, group, bdf) if group is not None else ()

    vfio_node = None
    if group is not None:
        for cand in (f"{dev_root}/vfio/{group}", f"{dev_root}/vfio/noiommu-{group}"):
            if os.path.exists(cand):
                vfio_node = cand
                break

    children = tuple(sorted(_walk_children(path), key=lambda c: (c.subsystem, c.name)))
    cdev = next((c.name for c in children if c.subsystem == "vfio-dev"), None)
    cdev_node = f"{dev_root}/vfio/devices/{cdev}" if cdev is not None else None

    numa = _read_int(f"{path}/numa_node")
    return PciFunction(
        bdf=bdf,
        vendor=vendor,
        device=device,
        class_code=class_code,
        subsystem_vendor=_read_int(f"{path}/subsystem_vendor", 16),
        subsystem_device=_read_int(f"{path}/subsystem_device", 16),
        revision=_read_int(f"{path}/revision", 16),
        driver=_link_name(f"{path}/driver"),
        driver_override=override,
        iommu_group=group,
        iommu_group_type=group_type,
        group_members=members,
        numa_node=numa if numa is not None and numa >= 0 else None,
        vfio_group_node=vfio_node,
        vfio_cdev=cdev,
        vfio_cdev_node=cdev_node,
        net_interfaces=tuple(c.name for c in children if c.subsystem == "net"),
        block_devices=tuple(c.name for c in children if c.subsystem == "block"),
        uacce_devices=tuple(c.name for c in children if c.subsystem == "uacce"),
        children=children,
        sriov_numvfs=_read_int(f"{path}/sriov_numvfs"),
        physfn=_link_name(f"{path}/physfn"),
        boot_vga=_read(f"{path}/boot_vga") == "1",
        plugin=claim(vendor, device) if claim is not None else None,
        sysfs_path=path,
    )


def devices(sysfs_root: str = "/sys", dev_root: str = "/dev", *,
            claim: Claim | None = None) -> list[PciFunction]:
    """Every PCI function the kernel knows, sorted by address (`claim` as in read_function)."""
    base = f"{sysfs_root}/bus/pci/devices"
    try:
        names = sorted(n for n in os.listdir(base) if is_bdf(n))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        try:
            out.append(read_function(name, sysfs_root, dev_root, claim=claim))
        except DeviceNotFoundError:
            continue  # hot-unplugged between listdir and read
    return out


def netdev_function(ifname: str, sysfs_root: str = "/sys") -> str | None:
    """The PCI function behind a network interface (walks up through e.g. virtio2), or None."""
    link = f"{sysfs_root}/class/net/{ifname}/device"
    if not os.path.exists(link):
        return None  # virtual interface (lo, bridges, tunnels)
    path = os.path.realpath(link)
    while path and path != "/":
        name = os.path.basename(path)
        if is_bdf(name) and os.path.exists(os.path.join(path, "vendor")):
            return name
        path = os.path.dirname(path)
    return None
