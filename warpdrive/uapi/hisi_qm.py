"""HiSilicon QM uAPI from `<misc/uacce/hisi_qm.h>` (Linux 6.12), in ctypes, named exactly as the
header: the queue ioctls the hisi_qm driver takes through a uacce queue fd, and the sysfs `api`
prefixes.

Not in the 6.12 header, so not here: any `QM_*` algorithm-type constants (`hisi_qp_ctx.qc_type` is
a bare number: 0 or 1, meaning is per accelerator).
"""

from __future__ import annotations

import ctypes

from .ioctl import _IOWR

__all__ = [
    "HISI_QM_API_VER2_BASE",
    "HISI_QM_API_VER3_BASE",
    "HISI_QM_API_VER_BASE",
    "UACCE_CMD_QM_SET_QP_CTX",
    "UACCE_CMD_QM_SET_QP_INFO",
    "hisi_qp_ctx",
    "hisi_qp_info",
]


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
