"""warpdrive: a pure-Python user-space driver runtime for Linux accelerators.

    import warpdrive
    with warpdrive.open("0000:00:03.0") as dev:      # iommufd or legacy VFIO, picked automatically
        bar = dev.map_bar(0)
        buf = dev.dma.alloc(4096)
"""

from __future__ import annotations

import importlib

from .errors import WarpdriveError

TYPE_CHECKING = False  # (not typing's: importing typing costs ~3 ms of every process's boot)
if TYPE_CHECKING:
    from typing import Any

    from .device import Device, Interrupt, IrqInfo, RegionInfo
    from .dma import DmaMapping, DmaSpace
    from .iova import IovaRange
    from .memory import DmaBuffer, MemoryKind, check_dma_memory
    from .mmio import Doorbell, Mmio

__version__ = "0.1.0"

# The device API is imported on first use, not with the package: `warpdrive --version`, the CLI's
# bind/zip commands and every model server import `warpdrive` without needing it, and in the TCG
# lab guest `warpdrive.device` alone cost 1.1 s per process.
_LAZY: dict[str, str] = {
    "Device": ".device", "Interrupt": ".device", "IrqInfo": ".device", "RegionInfo": ".device",
    "DmaMapping": ".dma", "DmaSpace": ".dma",
    "IovaRange": ".iova",
    "DmaBuffer": ".memory", "MemoryKind": ".memory", "check_dma_memory": ".memory",
    "Doorbell": ".mmio", "Mmio": ".mmio",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def list_devices(sysfs_root: str = "/sys", dev_root: str = "/dev") -> list[Any]:
    """Every PCI function in sysfs with its ids, driver, IOMMU group, VFIO nodes and plugin.
    Also reachable as `warpdrive.devices()`."""
    from .devices.registry import claim
    from .pci import devices as _devices

    return list(_devices(sysfs_root=sysfs_root, dev_root=dev_root, claim=claim))


from . import devices  # noqa: E402  (callable package: warpdrive.devices() lists PCI functions)


def open(name: str, backend: str = "auto", dma_mask: int | None = None,
         **options: Any) -> Device:
    """Open a device: a PCI address bound to vfio-pci, ``vfio-user:/path.sock`` or ``emu:<model>``.

    `backend` is ``"auto"`` (iommufd when available, else legacy VFIO), ``"iommufd"``, ``"vfio"``
    or ``"vfio-user"``. `dma_mask` limits the IOVAs handed out (plugins narrow it further)."""
    from .backends import open_device

    return open_device(name, backend=backend, dma_mask=dma_mask, **options)


__all__ = [
    "Device",
    "DmaBuffer",
    "DmaMapping",
    "DmaSpace",
    "Doorbell",
    "Interrupt",
    "IovaRange",
    "IrqInfo",
    "MemoryKind",
    "Mmio",
    "RegionInfo",
    "WarpdriveError",
    "check_dma_memory",
    "devices",
    "list_devices",
    "open",
]
