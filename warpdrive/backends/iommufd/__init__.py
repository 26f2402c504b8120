"""iommufd + VFIO device cdev backend.

    from warpdrive.iommufd.cdev import open_iommufd    # usually via warpdrive.open(bdf, "iommufd")

Modules: `uapi` (linux/iommufd.h in ctypes), `ctx` (the /dev/iommu commands), `ioas` (the DMA
space of an IOAS), `cdev` (binding a VFIO cdev, attach/detach, HWPTs, hardware info).
"""
