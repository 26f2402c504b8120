"""uacce uAPI from `<misc/uacce/uacce.h>` and the HiSilicon QM part from `<misc/uacce/hisi_qm.h>`
(Linux 6.12), in ctypes, named exactly as the headers.

The uacce ioctls act on a queue fd (`open("/dev/<drv>-<n>")`); the hisi_qm ones are passed
through by uacce to the hisi_qm driver. A queue file has one mmap region per `enum uacce_qfrt`
value, selected by the mmap offset `qfrt * PAGE_SIZE`.

Not in the 6.12 headers, so not here: any `QM_*` algorithm-type constants (`hisi_qp_ctx.qc_type` is
a bare number: 0 or 1, meaning is per accelerator), `UACCE_MAX_REGION` (kernel-internal), and the
out-of-tree `UACCE_QFRT_SS` / `UACCE_CMD_GET_SS_DMA` / `UACCE_DEV_NOIOMMU` of UADK's private copy.
"""

from __future__ import annotations

import ctypes

from .ioctl import _IO, _IOWR

__all__ = [
    "HISI_QM_API_VER2_BASE",
    "HISI_QM_API_VER3_BASE",
    "HISI_QM_API_VER_BASE",
    "UACCE_CMD_PUT_Q",
    "UACCE_CMD_QM_SET_QP_CTX",
    "UACCE_CMD_QM_SET_QP_INFO",
    "UACCE_CMD_START_Q",
    "UACCE_DEV_SVA",
    "UACCE_QFRT_DUS",
    "UACCE_QFRT_MMIO",
    "hisi_qp_ctx",
    "hisi_qp_info",
]

# -- <misc/uacce/uacce.h> -------------------------------------------------------------------------
UACCE_CMD_START_Q = _IO("W", 0)
UACCE_CMD_PUT_Q = _IO("W", 1)  # stop the queue and free its resources now (faster than close)

# device flags (sysfs `flags`); the header spells it BIT(0), a kernel macro userspace lacks
UACCE_DEV_SVA = 1 << 0

# enum uacce_qfrt: queue file region type
UACCE_QFRT_MMIO = 0  # device MMIO (doorbell page)
UACCE_QFRT_DUS = 1  # device user share (the queue memory)


# -- <misc/uacce/hisi_qm.h> -----------------------------------------------------------------------
class hisi_qp_ctx(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint16),  # out: qp index (the sqn used in doorbells)
        ("qc_type", ctypes.c_uint16),  # in: algorithm type, driver specific (0 or 1)
    ]


class hisi_qp_info(ctypes.Structure):
    _fields_ = [
        ("sqe_size", ctypes.c_uint32),
        ("sq_depth", ctypes.c_uint16),
        ("cq_depth", ctypes.c_uint16),
        ("reserved", ctypes.c_uint64),
    ]


# sysfs `api` prefixes
HISI_QM_API_VER_BASE = "hisi_qm_v1"
HISI_QM_API_VER2_BASE = "hisi_qm_v2"
HISI_QM_API_VER3_BASE = "hisi_qm_v3"

UACCE_CMD_QM_SET_QP_CTX = _IOWR("H", 10, hisi_qp_ctx)
UACCE_CMD_QM_SET_QP_INFO = _IOWR("H", 11, hisi_qp_info)
