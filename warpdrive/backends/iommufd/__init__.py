"""iommufd + VFIO device cdev backend.

    from warpdrive.backends.iommufd.cdev import open_iommufd   # or warpdrive.open(bdf, "iommufd")

Modules: `ctx` (the /dev/iommu commands), `ioas` (the DMA space of an IOAS), `cdev` (binding a
VFIO cdev, attach/detach, HWPTs, hardware info). The uAPI is `warpdrive.uapi.iommufd`; the device
fd code shared with legacy VFIO is `warpdrive.backends.vfiodev`.
"""
