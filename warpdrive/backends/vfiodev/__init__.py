"""The VFIO device fd, shared by both kernel backends (legacy `vfio` and `iommufd`).

However the fd was obtained (VFIO_GROUP_GET_DEVICE_FD, or a cdev bound to an iommufd), the device
ioctls are the same: `device` (the `Device` hooks: regions, IRQs, reset), `caps` (info-buffer
capability chains), `faults` (IOMMU faults from the kernel log).
"""
