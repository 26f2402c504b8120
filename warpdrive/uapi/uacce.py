"""uacce uAPI from `<misc/uacce/uacce.h>` (Linux 6.12), in ctypes, named exactly as the header.

The uacce ioctls act on a queue fd (`open("/dev/<drv>-<n>")`); driver-specific ones (the
HiSilicon QM's are in `warpdrive.uapi.hisi_qm`) are passed through by uacce to the driver. A queue
file has one mmap region per `enum uacce_qfrt` value, selected by the mmap offset
`qfrt * PAGE_SIZE`.

Not in the 6.12 header, so not here: `UACCE_MAX_REGION` (kernel-internal), and the out-of-tree
`UACCE_QFRT_SS` / `UACCE_CMD_GET_SS_DMA` / `UACCE_DEV_NOIOMMU` of UADK's private copy.
"""

from __future__ import annotations

from .ioctl import _IO

__all__ = [
    "UACCE_CMD_PUT_Q",
    "UACCE_CMD_START_Q",
    "UACCE_DEV_SVA",
    "UACCE_QFRT_DUS",
    "UACCE_QFRT_MMIO",
]

UACCE_CMD_START_Q = _IO("W", 0)
UACCE_CMD_PUT_Q = _IO("W", 1)  # stop the queue and free its resources now (faster than close)

# device flags (sysfs `flags`); the header spells it BIT(0), a kernel macro userspace lacks
UACCE_DEV_SVA = 1 << 0

# enum uacce_qfrt: queue file region type
UACCE_QFRT_MMIO = 0  # device MMIO (doorbell page)
UACCE_QFRT_DUS = 1  # device user share (the queue memory)
