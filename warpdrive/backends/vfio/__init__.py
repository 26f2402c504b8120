"""Legacy VFIO (group + type1v2 container) and the VFIO device-fd code shared with iommufd.

    from warpdrive.vfio.legacy import open_legacy      # usually via warpdrive.open(bdf, "vfio")

Modules: `uapi` (linux/vfio.h in ctypes), `caps` (info-buffer capability chains), `device` (the
`Device` hooks over a VFIO device fd), `container` / `group` / `legacy` (the legacy path), `faults`
(IOMMU faults from the kernel log).
"""
