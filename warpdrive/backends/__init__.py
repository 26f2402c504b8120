"""Pick and open a backend for a device name.

Names:
- ``0000:03:00.0`` (or ``03:00.0``): a PCI function bound to vfio-pci. ``backend="auto"`` prefers
  iommufd + the VFIO cdev when ``/dev/iommu`` and ``/sys/bus/pci/devices/<bdf>/vfio-dev/`` exist,
  else the legacy group + type1v2 container; ``"iommufd"`` or ``"vfio"`` force one.
- ``vfio-user:/path/to.sock``: a device model (or any vfio-user server) on a UNIX socket.
- ``emu:<model>``: start the bundled device model (e.g. ``emu:zip``) and open it over vfio-user;
  closing the device stops the model.

Backend modules are imported lazily so that `import warpdrive` stays cheap.
"""

from __future__ import annotations

import os
from typing import Any

from ..device import Device
from ..errors import DeviceNotFoundError, InvalidArgumentError, NotBoundError, UnsupportedError
from ..pci.names import normalize_bdf

BACKENDS = ("auto", "iommufd", "vfio", "vfio-user")


def kernel_backend_for(bdf: str, sysfs_root: str = "/sys", dev_root: str = "/dev") -> str:
    """'iommufd' when /dev/iommu and the device's VFIO cdev exist, else 'vfio' (legacy)."""
    devdir = os.path.join(sysfs_root, "bus/pci/devices", bdf)
    if not os.path.isdir(devdir):
        raise DeviceNotFoundError(f"no PCI function {bdf}",
                                  hint="list devices with `warpdrive devices`")
    driver = os.path.join(devdir, "driver")
    drv = os.path.basename(os.readlink(driver)) if os.path.islink(driver) else None
    if drv != "vfio-pci":
        raise NotBoundError(
            f"{bdf} is bound to {drv or 'no driver'}, not vfio-pci",
            hint=f"bind it first: `warpdrive bind {bdf}` (as root)")
    if os.path.exists(os.path.join(dev_root, "iommu")) and os.path.isdir(
            os.path.join(devdir, "vfio-dev")):
        return "iommufd"
    return "vfio"


def open_device(name: str, backend: str = "auto", dma_mask: int | None = None,
                **options: Any) -> Device:
    """Open `name` (see module docstring) and return a `Device`."""
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if name.startswith("emu:"):
        from .vfiouser.launcher import open_emulated

        return open_emulated(name[4:], dma_mask=dma_mask, **options)
    if name.startswith("vfio-user:") or backend == "vfio-user":
        from .vfiouser.client import open_vfio_user

        return open_vfio_user(name.removeprefix("vfio-user:"), dma_mask=dma_mask, **options)
    bdf = normalize_bdf(name)
    chosen = kernel_backend_for(bdf) if backend == "auto" else backend
    if chosen == "iommufd":
        if not os.path.exists("/dev/iommu"):
            raise UnsupportedError("/dev/iommu does not exist: this kernel has no iommufd",
                                   hint="use backend='vfio' (legacy container) or 'auto'")
        from .iommufd.cdev import open_iommufd

        return open_iommufd(bdf, dma_mask=dma_mask, **options)
    from .vfio.legacy import open_legacy

    return open_legacy(bdf, dma_mask=dma_mask, **options)
