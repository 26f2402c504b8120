"""PCI discovery from sysfs (read-only): functions, drivers, IOMMU groups, VFIO nodes.

    import warpdrive.pci
    for fn in warpdrive.pci.devices():
        print(fn.bdf, fn.ids, fn.driver, fn.iommu_group)

`warpdrive.devices()` is the same list with each function's plugin named (`fn.plugin`).
"""

from __future__ import annotations

from .names import class_name, is_bdf, is_bridge, normalize_bdf
from .sysfs import (
    BRIDGE_DRIVERS,
    VFIO_FRIENDLY_DRIVERS,
    ChildDevice,
    Claim,
    GroupMember,
    IommuStatus,
    PciFunction,
    devices,
    iommu_status,
    netdev_function,
    read_function,
)

__all__ = [
    "BRIDGE_DRIVERS",
    "VFIO_FRIENDLY_DRIVERS",
    "ChildDevice",
    "Claim",
    "GroupMember",
    "IommuStatus",
    "PciFunction",
    "class_name",
    "devices",
    "iommu_status",
    "is_bdf",
    "is_bridge",
    "netdev_function",
    "normalize_bdf",
    "read_function",
]
