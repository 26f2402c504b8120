"""Legacy VFIO: IOMMU group + type1v2 container.

    from warpdrive.backends.vfio.legacy import open_legacy     # or warpdrive.open(bdf, "vfio")

Modules: `container` / `group` / `legacy` (the legacy path). The uAPI is `warpdrive.uapi.vfio`;
the device fd code shared with iommufd is `warpdrive.backends.vfiodev`.
"""
