"""HiSilicon QM (queue manager) hardware layout, shared by every accelerator behind a QM (ZIP, SEC,
HPRE): registers, mailbox, doorbell formats, the 32-byte queue contexts, EQE/AEQE and the 16-byte
CQE, and the queue memory layout. Offsets are in BAR2 of the function.

Facts and their sources (Linux drivers/crypto/hisilicon/qm.c, include/linux/hisi_acc_qm.h) are in
docs/research/hisi-qm-zip.md. Where a fact is UNCONFIRMED there, the constant below says so. The
accelerator-specific parts (PCI ids, SQE layout) live with each accelerator (`devices/zip/hw.py`).

Everything is little endian. Struct layouts are `struct.Struct` objects so the hot path can
`pack_into`/`unpack_from` a ring in place without building intermediate objects.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ...record import record

PCI_VENDOR_ID_HUAWEI = 0x19E5
PCI_CLASS_PROCESSING_ACCEL = 0x120000  # class 0x12: processing accelerator

# QM version = PCI revision ID.
QM_HW_V1 = 0x20
QM_HW_V2 = 0x21  # Kunpeng 920
QM_HW_V3 = 0x30

QM_BAR = 2  # QM registers
QM_DB_BAR = 4  # per-queue doorbells when doorbell isolation is on (V3+)
QM_VF_BAR_SIZE = 0x10000  # lower 32 KiB functional, upper 32 KiB migration control
QM_QP_DB_INTERVAL = 0x10000  # per-queue doorbell page stride in BAR4 with isolation

# -- registers (BAR2) ---------------------------------------------------------------------------
QM_VF_AEQ_INT_SOURCE = 0x0000
QM_VF_AEQ_INT_MASK = 0x0004  # 0 = enabled, 1 = masked
QM_VF_EQ_INT_SOURCE = 0x0008
QM_VF_EQ_INT_MASK = 0x000C
QM_IFC_INT_SOURCE_V = 0x0020
QM_IFC_INT_MASK = 0x0024
QM_IFC_INT_STATUS = 0x0028
QM_IFC_INT_SET_V = 0x002C
QM_QUE_ISO_CFG_V = 0x0030  # bit0: doorbell isolation supported (read on V3+)
QM_PAGE_SIZE = 0x0034
QM_VF_STATE = 0x0060  # V3: VF writes 0 (READY) after start, 1 at uninit
QM_CACHE_WB_START = 0x0204
QM_CACHE_WB_DONE = 0x0208
QM_MB_CMD_SEND_BASE = 0x0300
QM_MB_CMD_DATA_ADDR_L = 0x0304
QM_MB_CMD_DATA_ADDR_H = 0x0308
QM_DOORBELL_BASE_V1 = 0x0340
QM_DOORBELL_SQ_CQ_BASE_V2 = 0x1000
QM_DOORBELL_EQ_AEQ_BASE_V2 = 0x2000
QM_FUNC_CAPS_REG = 0x3100  # V3+
QM_XEQ_DEPTH_CAP = 0x3104
QM_QP_DEPTH_CAP = 0x3108
QM_EQ_IRQ_TYPE_CAP = 0x310C
QM_AEQ_IRQ_TYPE_CAP = 0x3110
QM_ABN_IRQ_TYPE_CAP = 0x3114
QM_PF2VF_IRQ_TYPE_CAP = 0x3118
QM_IRQ_NUM_CAP = 0x311C
QM_EQC_DW0 = 0x8000  # 7 dwords of live EQC state
QM_AEQC_DW0 = 0x8020

# QM_FUNC_CAPS_REG bits (V3+)
QM_CAP_VER_MASK = 0xFF  # bits 7:0: capability version; 0 = "read no register, use the V3 table"
QM_CAP_FUNC_QOS = 1 << 8
QM_CAP_STOP_QP = 1 << 9
QM_CAP_STOP_FUNC = 1 << 10
QM_CAP_MB_COMMAND = 1 << 11
QM_CAP_SVA_PREFETCH = 1 << 14
QM_IRQ_TYPE_PRESENT = 1 << 16  # in the *_IRQ_TYPE_CAP registers; low 16 bits = MSI vector

QM_CAP_RPM_VF = 1 << 12  # runtime PM of a VF (never on in the kernel's V3 table)
QM_VF_IRQ_NUM_MASK = 0xFFFF  # QM_IRQ_NUM_CAP bits 15:0: MSI vectors of a VF (31:16: of the PF)

QM_VF_STATE_READY = 0  # written to QM_VF_STATE on V3+ once the function is started
QM_VF_STATE_NOT_READY = 1  # ... and when it is let go

# Values the kernel uses for V2 (no capability registers): qm.c's default table.
V2_XEQ_DEPTH = 0x04000800  # eq 2048 (low16), aeq 1024 (high16)
V2_QP_DEPTH = 0x04000400  # sq 1024 (low16), cq 1024 (high16)
V2_EQ_IRQ = QM_IRQ_TYPE_PRESENT | 0  # MSI vector 0
V2_AEQ_IRQ = QM_IRQ_TYPE_PRESENT | 1  # MSI vector 1
V2_VF_IRQ_NUM = 2


@record(frozen=True)
class CapField:
    """One capability as qm.c's tables describe it (`struct hisi_qm_cap_info`): where a V3+
    function reports it, and the value the kernel assumes on V2 and on a V3 function whose
    capability version (QM_FUNC_CAPS_REG bits 7:0) is 0."""

    offset: int
    shift: int
    mask: int
    v2: int
    v3: int

    def value(self, revision: int, read32: Callable[[int], int] | None) -> int:
        """The capability of a function of `revision`; `read32` is None when its registers
        must not be read (V2, or capability version 0)."""
        if revision < QM_HW_V3:
            return self.v2
        if read32 is None:
            return self.v3
        return read32(self.offset) >> self.shift & self.mask


# qm.c: qm_basic_info and qm_cap_info_comm/_vf (docs/research/hisi-qm-zip.md, section 8)
CAP_XEQ_DEPTH = CapField(QM_XEQ_DEPTH_CAP, 0, 0xFFFF_FFFF, V2_XEQ_DEPTH, V2_XEQ_DEPTH)
CAP_QP_DEPTH = CapField(QM_QP_DEPTH_CAP, 0, 0xFFFF_FFFF, V2_QP_DEPTH, V2_QP_DEPTH)
CAP_EQ_IRQ = CapField(QM_EQ_IRQ_TYPE_CAP, 0, 0xFFFF_FFFF, V2_EQ_IRQ, V2_EQ_IRQ)
CAP_AEQ_IRQ = CapField(QM_AEQ_IRQ_TYPE_CAP, 0, 0xFFFF_FFFF, V2_AEQ_IRQ, V2_AEQ_IRQ)
CAP_PF2VF_IRQ = CapField(QM_PF2VF_IRQ_TYPE_CAP, 0, 0xFFFF_FFFF, 0, QM_IRQ_TYPE_PRESENT | 2)
CAP_VF_IRQ_NUM = CapField(QM_IRQ_NUM_CAP, 0, QM_VF_IRQ_NUM_MASK, V2_VF_IRQ_NUM, 3)
# the feature bits of QM_FUNC_CAPS_REG a VF reads, with their V3 defaults
V3_FUNC_CAPS = (QM_CAP_FUNC_QOS | QM_CAP_STOP_QP | QM_CAP_STOP_FUNC | QM_CAP_MB_COMMAND
                | QM_CAP_SVA_PREFETCH)
CAP_FUNC = CapField(QM_FUNC_CAPS_REG, 0, V3_FUNC_CAPS | QM_CAP_RPM_VF, 0, V3_FUNC_CAPS)

# -- mailbox ------------------------------------------------------------------------------------
# struct qm_mailbox { le16 w0; le16 queue_num; le32 base_l; le32 base_h; le32 rsvd; }
# w0 = cmd | op << 14 | busy << 13; after completion, bits 9-12 of the dword at 0x300 = status.
MAILBOX = struct.Struct("<HHIII")
QM_MB_BUSY = 1 << 13
QM_MB_OP_SHIFT = 14  # op 0 = write the context to hardware, 1 = read it back
QM_MB_STATUS_SHIFT = 9
QM_MB_STATUS_MASK = 0xF
QM_MB_CMD_MASK = 0xFF  # UNCONFIRMED width; commands fit in 4 bits

QM_MB_CMD_SQC = 0x0
QM_MB_CMD_CQC = 0x1
QM_MB_CMD_EQC = 0x2
QM_MB_CMD_AEQC = 0x3
QM_MB_CMD_SQC_BT = 0x4
QM_MB_CMD_CQC_BT = 0x5
QM_MB_CMD_SQC_VFT_V2 = 0x6
QM_MB_CMD_STOP_QP = 0x8
QM_MB_CMD_FLUSH_QM = 0x9
QM_MB_CMD_SRC = 0xC
QM_MB_CMD_DST = 0xD
QM_MB_CMD_PAUSE_QM = 0xE

MB_CMD_NAMES = {
    QM_MB_CMD_SQC: "SQC", QM_MB_CMD_CQC: "CQC", QM_MB_CMD_EQC: "EQC", QM_MB_CMD_AEQC: "AEQC",
    QM_MB_CMD_SQC_BT: "SQC_BT", QM_MB_CMD_CQC_BT: "CQC_BT", QM_MB_CMD_SQC_VFT_V2: "SQC_VFT_V2",
    QM_MB_CMD_STOP_QP: "STOP_QP", QM_MB_CMD_FLUSH_QM: "FLUSH_QM", QM_MB_CMD_SRC: "SRC",
    QM_MB_CMD_DST: "DST", QM_MB_CMD_PAUSE_QM: "PAUSE_QM",
}

MB_POLL_INTERVAL_S = 10e-6  # the kernel polls every 10 us ...
MB_TIMEOUT_S = 1e-3  # ... for 1 ms; the driver allows more for a trapped (emulated) register


def mailbox_words(cmd: int, queue: int, base: int, op: int = 0) -> tuple[int, int]:
    """The 128-bit mailbox as (low qword, high qword); the busy bit is in the low qword."""
    w0 = (cmd & QM_MB_CMD_MASK) | (op << QM_MB_OP_SHIFT) | QM_MB_BUSY
    lo = w0 | (queue & 0xFFFF) << 16 | (base & 0xFFFF_FFFF) << 32
    hi = base >> 32 & 0xFFFF_FFFF
    return lo, hi


def mailbox_dwords(cmd: int, queue: int, base: int, op: int = 0) -> tuple[int, int, int, int]:
    """The mailbox as the four 32-bit stores Linux makes on every architecture but arm64
    (memcpy_toio of 16 bytes = ascending dwords, the busy dword first): the command runs when
    the last one lands (docs/research/hisi-qm-zip.md, section 4)."""
    lo, hi = mailbox_words(cmd, queue, base, op)
    return lo & 0xFFFF_FFFF, lo >> 32, hi & 0xFFFF_FFFF, hi >> 32


def vft_decode_v2(vft: int) -> tuple[int, int]:
    """(qp_base, qp_num) from the SQC_VFT_V2 reply read at 0x304/0x308."""
    return (vft >> 28) & 0xFFFF, ((vft >> 45) & 0x3FF) + 1


def vft_encode_v2(base: int, num: int) -> int:
    """The SQC VFT word as the PF programs it (V2): base << 28 | valid << 44 | (num-1) << 45."""
    return base << 28 | 1 << 44 | (num - 1) << 45


# -- doorbells ----------------------------------------------------------------------------------
QM_DB_CMD_SQ = 0
QM_DB_CMD_CQ = 1
QM_DB_CMD_EQ = 2
QM_DB_CMD_AEQ = 3

QM_DB_INDEX_SHIFT = 32
QM_DB_PRIORITY_SHIFT = 48
QM_DB_CMD_SHIFT_V1 = 16
QM_DB_CMD_SHIFT_V2 = 12
QM_DB_RAND_SHIFT_V2 = 16  # random field; the kernel writes 0 (its checking is UNCONFIRMED)
QM_DB_QN_MASK_V2 = 0x7FF


def doorbell_v2(qn: int, cmd: int, index: int, priority: int = 0) -> int:
    """One 64-bit V2/V3 doorbell value (SQ/CQ at BAR2+0x1000, EQ/AEQ at BAR2+0x2000)."""
    return ((qn & QM_DB_QN_MASK_V2) | (cmd & 0xF) << QM_DB_CMD_SHIFT_V2
            | (index & 0xFFFF) << QM_DB_INDEX_SHIFT | (priority & 0xFFFF) << QM_DB_PRIORITY_SHIFT)


def doorbell_v1(qn: int, cmd: int, index: int, priority: int = 0) -> int:
    """One 64-bit V1 doorbell value (BAR2+0x340)."""
    return ((qn & 0xFFFF) | (cmd & 0xFFFF) << QM_DB_CMD_SHIFT_V1
            | (index & 0xFFFF) << QM_DB_INDEX_SHIFT | (priority & 0xFFFF) << QM_DB_PRIORITY_SHIFT)


def doorbell_decode_v2(value: int) -> tuple[int, int, int, int]:
    """(qn, cmd, index, priority) of a V2 doorbell value."""
    return (value & QM_DB_QN_MASK_V2, value >> QM_DB_CMD_SHIFT_V2 & 0xF,
            value >> QM_DB_INDEX_SHIFT & 0xFFFF, value >> QM_DB_PRIORITY_SHIFT & 0xFFFF)


# -- contexts (32 bytes each, 32-byte aligned) --------------------------------------------------
XQC_SIZE = 32
XQC_ALIGN = 32
# qm_sqc: head, tail, base_l, base_h, dw3, w8, rsvd0, pasid, w11, cq_num, w13, rsvd1
SQC = struct.Struct("<HHIIIHHHHHHI")
# qm_cqc: head, tail, base_l, base_h, dw3, w8, rsvd0, pasid, w11, dw6, rsvd1
CQC = struct.Struct("<HHIIIHHHHII")
# qm_eqc / qm_aeqc: head, tail, base_l, base_h, dw3, rsvd0, rsvd1, dw6 (28 bytes)
EQC = struct.Struct("<HHIIIIII")
assert SQC.size == CQC.size == XQC_SIZE and EQC.size == 28

SQC_SQE_SIZE_SHIFT = 12  # dw3: (depth-1) | ilog2(sqe_size) << 12 (V2+)
SQC_DEPTH_MASK = 0xFFF  # UNCONFIRMED width of the depth field (1024 fits)
SQC_W13_PRIORITY_MASK = 0xF
SQC_W13_ORDERS_SHIFT = 4  # "orders" = 1 (keep output in order; meaning UNCONFIRMED)
SQC_W13_ALG_SHIFT = 8  # alg type = qc_type: ZIP 0 compress, 1 decompress
SQC_W11_PASID_EN = 1 << 7  # V3 SVA user queue
SQC_W11_TAIL_WRAP = 1 << 6  # read back while draining

CQC_CQE_SIZE_SHIFT = 12  # dw3: (depth-1) | 4 << 12 (CQE = 16 B)
CQC_DW6_PHASE = 1 << 0
CQC_DW6_IRQ = 1 << 1  # completion interrupt enable (EQE + MSI)
CQC_W11_PASID_EN = 1 << 0

EQC_DW6_PHASE = 1 << 16  # dw6 = (depth-1) | 1 << 16
EQC_DW3_V1 = 2 << 12

EQE_SIZE = 4  # bits 0-15 CQ number, bit 16 phase
AEQE_SIZE = 4  # bits 0-15 qp, bit 16 phase, bits 17-20 type
EQE_PHASE = 1 << 16
AEQE_TYPE_SHIFT = 17
AEQE_TYPE_CQ_OVERFLOW = 0
AEQE_TYPE_EQ_OVERFLOW = 1
AEQE_TYPE_CQE_ERROR = 2

# -- CQE (16 bytes) -----------------------------------------------------------------------------
# struct qm_cqe { le32 rsvd0; le16 cmd_id; le16 rsvd1; le16 sq_head; le16 sq_num; le16 rsvd2;
#                 le16 w7; }  phase = w7 bit 0
CQE = struct.Struct("<IHHHHHH")
CQE_SIZE = 16
CQE_SQ_HEAD_U16 = 4  # u16 index of sq_head within a CQE
CQE_W7_U16 = 7  # u16 index of w7 (phase bit 0)
assert CQE.size == CQE_SIZE

QM_SQE_SIZE_DEFAULT = 128  # ZIP and SEC; HPRE uses 64


# -- queue memory layout (the uacce DUS layout; the VFIO driver uses the same) -------------------
QM_RESET_STOP_TX_OFFSET = 1  # in u32s from the end: TX-stop flag is the last u32
QM_RESET_STOP_RX_OFFSET = 2  # RX-stop flag is the one before


@record(frozen=True)
class QueueLayout:
    """Offsets in one queue's memory block: SQ, CQ, then (page aligned) one status page whose
    last two u32s are the TX- and RX-stop flags."""

    sq_depth: int
    cq_depth: int
    sqe_size: int = QM_SQE_SIZE_DEFAULT
    page_size: int = 4096
    total: int = 0  # a larger block (a uacce DUS) whose last u32s hold the stop flags

    @property
    def sq_offset(self) -> int:
        return 0

    @property
    def cq_offset(self) -> int:
        return self.sqe_size * self.sq_depth

    @property
    def min_size(self) -> int:
        end = self.cq_offset + CQE_SIZE * self.cq_depth
        return -(-end // self.page_size) * self.page_size + self.page_size

    @property
    def size(self) -> int:
        return max(self.total, self.min_size)

    @property
    def tx_stop_offset(self) -> int:
        return self.size - 4 * QM_RESET_STOP_TX_OFFSET

    @property
    def rx_stop_offset(self) -> int:
        return self.size - 4 * QM_RESET_STOP_RX_OFFSET


@record(frozen=True)
class QmAccelerator:
    """What differs between the accelerators behind a QM: their PCI ids, their SQE size and the
    name their kernel driver registers with uacce."""

    name: str  # "ZIP"
    vendor_id: int
    pf_device_id: int
    vf_device_id: int
    sqe_size: int
    uacce_driver: str  # "hisi_zip": uacce devices are hisi_zip-0, hisi_zip-1, ...

    @property
    def device_ids(self) -> tuple[int, int]:
        return (self.pf_device_id, self.vf_device_id)
