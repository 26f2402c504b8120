"""The ZIP virtual function as the model implements it: PCI identity, the QM registers of BAR2,
mailbox, doorbells, contexts, queue entries, and the ZIP SQE.

Transcribed for the model from docs/research/hisi-qm-zip.md (Linux 6.12 `hisi_qm`/`hisi_zip`,
UADK), one block per section, the section named on each block. The driver
(`warpdrive.devices`) keeps its own transcription; the two share no code, so a wrong offset in
either shows up against the other (tests/test_zip_layouts.py) and against Linux's own driver in
the lab. Names follow the Linux sources where they have one. Not a model: the leading underscore
keeps it out of the model registry.
"""

from __future__ import annotations

import struct

# -- §1 PCI identity and revisions (zip_main.c: hisi_zip_dev_ids; hisi_acc_qm.h: qm_hw_ver) ----
PCI_VENDOR_ID_HUAWEI = 0x19E5
ZIP_VF_DEVICE_ID = 0xA251
QM_HW_V2 = 0x21
QM_HW_V3 = 0x30
# The driver does not check the class code (§1); the model reports a processing accelerator
# (base class 0x12, subclass 0, prog-if 0).
PCI_CLASS_PROCESSING_ACCEL = 0x12 << 16

# -- §2 BARs (qm.c: qm_get_pci_res) -------------------------------------------------------------
QM_BAR = 2
QM_VF_BAR_SIZE = 64 << 10  # 64 KiB: consistent with the sources, exact size UNCONFIRMED (§2)

# -- §3 BAR2 registers a VF driver touches (qm.c) -----------------------------------------------
QM_VF_AEQ_INT_SOURCE = 0x0000
QM_VF_AEQ_INT_MASK = 0x0004  # 0 = enabled (qm_enable_eq_aeq_interrupts)
QM_VF_EQ_INT_SOURCE = 0x0008
QM_VF_EQ_INT_MASK = 0x000C
QM_IFC_INT_SOURCE_V = 0x0020  # PF->VF message source; the VF writes bit 0 to clear it
QM_IFC_INT_MASK = 0x0024  # PF->VF message mask (qm_cmd_init)
QM_IFC_INT_STATUS = 0x0028  # bit 0: a PF message is pending (qm_mb_cmd_irq)
QM_IFC_INT_SET_V = 0x002C  # VF->PF: the VF sets bit 0 and polls it clear (qm_ping_pf)
QM_QUE_ISO_CFG_V = 0x0030  # bit 0: doorbell isolation (read on V3, qm_get_hw_caps)
QM_PAGE_SIZE = 0x0034  # SVA prefetch page type (qm_init_prefetch)
QM_VF_STATE = 0x0060  # V3: 0 ready, 1 not ready (hisi_qm_set_state)
QM_CACHE_WB_START = 0x0204  # hisi_qm_cache_wb
QM_CACHE_WB_DONE = 0x0208
QM_MB_CMD_SEND_BASE = 0x0300  # the 16-byte mailbox, §4
QM_DOORBELL_SQ_CQ_BASE_V2 = 0x1000  # §6
QM_DOORBELL_EQ_AEQ_BASE_V2 = 0x2000
QM_FUNC_CAPS_REG = 0x3100  # §8: bits 7:0 cap_ver, feature bits above
QM_XEQ_DEPTH_CAP = 0x3104  # EQ depth bits 15:0, AEQ depth bits 31:16
QM_QP_DEPTH_CAP = 0x3108  # SQ depth bits 15:0, CQ depth bits 31:16
QM_EQ_IRQ_TYPE_CAP = 0x310C  # bits 31:16 non-zero = present, bits 15:0 = MSI vector
QM_AEQ_IRQ_TYPE_CAP = 0x3110
QM_ABN_IRQ_TYPE_CAP = 0x3114
QM_PF2VF_IRQ_TYPE_CAP = 0x3118
QM_IRQ_NUM_CAP = 0x311C  # VF vector count bits 15:0
# §2: live EQC/AEQC state where the migration driver reads it (hisi_acc_vfio_pci.h)
QM_EQC_DW0 = 0x8000
QM_AEQC_DW0 = 0x8020

# -- §2, §6 doorbell isolation (qm.c: qm_get_pci_res, qm_db_v2): BAR4, one 64 KiB page per
# queue, the SQ/CQ doorbell at 0x1000 of it
QM_DB_BAR = 4
QM_QP_DB_INTERVAL = 0x10000

# -- §8 capability bits and the V2 defaults (qm.c: qm_basic_info, qm_cap_info_comm) -------------
QM_CAP_FUNC_QOS = 1 << 8
QM_CAP_STOP_QP = 1 << 9
QM_CAP_STOP_FUNC = 1 << 10
QM_CAP_MB_COMMAND = 1 << 11
QM_CAP_SVA_PREFETCH = 1 << 14
QM_IRQ_TYPE_PRESENT = 1 << 16
V2_XEQ_DEPTH = 1024 << 16 | 2048  # AEQ 1024, EQ 2048
V2_EQ_IRQ = QM_IRQ_TYPE_PRESENT | 0  # vector 0
V2_AEQ_IRQ = QM_IRQ_TYPE_PRESENT | 1  # vector 1
V2_VF_IRQ_NUM = 2

# -- §4 mailbox (qm.c: struct qm_mailbox, qm_mb_nolock; hisi_acc_qm.h: QM_MB_CMD_*) -------------
# w0 (u16): command bits 7:0, status bits 12:9, busy bit 13, op bit 14; queue_num u16;
# base_l u32; base_h u32; rsvd u32.
MAILBOX = struct.Struct("<HHIII")
QM_MB_CMD_MASK = 0xFF
QM_MB_STATUS_SHIFT = 9
QM_MB_STATUS_MASK = 0xF
QM_MB_BUSY = 1 << 13
QM_MB_OP_SHIFT = 14  # 0 = write the context to the device, 1 = read it back
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
    QM_MB_CMD_SQC_BT: "SQC_BT", QM_MB_CMD_CQC_BT: "CQC_BT",
    QM_MB_CMD_SQC_VFT_V2: "SQC_VFT_V2", QM_MB_CMD_STOP_QP: "STOP_QP",
    QM_MB_CMD_FLUSH_QM: "FLUSH_QM", QM_MB_CMD_SRC: "SRC", QM_MB_CMD_DST: "DST",
    QM_MB_CMD_PAUSE_QM: "PAUSE_QM",
}


def vft_encode_v2(base: int, num: int) -> int:
    """The VFT word a PF programs (qm.c: qm_vft_data_cfg): base at bit 28, valid bit 44,
    queue count - 1 at bit 45; the VF reads it back at 0x304/0x308 (qm_get_vft_v2)."""
    return base << 28 | 1 << 44 | (num - 1) << 45


# -- §5 queue contexts (qm_common.h: struct qm_sqc / qm_cqc / qm_eqc) ----------------------------
XQC_SIZE = 32
# qm_sqc: head, tail, base_l, base_h, dw3, w8, rsvd0, pasid, w11, cq_num, w13, rsvd1
SQC = struct.Struct("<HHIIIHHHHHHI")
# qm_cqc: head, tail, base_l, base_h, dw3, w8, rsvd0, pasid, w11, dw6, rsvd1
CQC = struct.Struct("<HHIIIHHHHII")
# qm_eqc / qm_aeqc: head, tail, base_l, base_h, dw3, rsvd[2], dw6 (28 bytes)
EQC = struct.Struct("<HHIIIIII")
SQC_DEPTH_MASK = 0xFFF  # dw3 = (depth - 1) | log2(sqe_size) << 12 (QM_MK_SQC_DW3_V2)
SQC_SQE_SIZE_SHIFT = 12
SQC_W13_ALG_SHIFT = 8  # w13 bits 11:8: 0 compress queue, 1 decompress queue
CQC_CQE_SIZE_SHIFT = 12  # dw3 = (depth - 1) | 4 << 12 (16-byte CQE, QM_MK_CQC_DW3_V2)
CQC_DW6_PHASE = 1 << 0  # initial phase 1
CQC_DW6_IRQ = 1 << 1  # completion interrupts on
EQC_DW6_PHASE = 1 << 16  # dw6 = (depth - 1) | 1 << 16 (qm_eq_ctx_cfg)
assert SQC.size == CQC.size == XQC_SIZE and EQC.size == 28

# -- §6 doorbells (qm.c: qm_db_v2) --------------------------------------------------------------
# bits 10:0 queue, 15:12 command, 47:32 index, 63:48 priority; one 64-bit store.
QM_DB_CMD_SQ = 0
QM_DB_CMD_CQ = 1
QM_DB_CMD_EQ = 2
QM_DB_CMD_AEQ = 3
QM_DB_CMD_SHIFT_V2 = 12


def doorbell_decode_v2(value: int) -> tuple[int, int, int, int]:
    """(queue, command, index, priority) of a V2/V3 doorbell value."""
    return (value & 0x7FF, value >> QM_DB_CMD_SHIFT_V2 & 0xF, value >> 32 & 0xFFFF,
            value >> 48 & 0xFFFF)


# -- §7 CQE, EQE, AEQE (qm_common.h: struct qm_cqe; qm.c: qm_aeq_thread) ------------------------
CQE_SIZE = 16  # rsvd0 u32, cmd_id u16, rsvd1 u16, sq_head u16 @8, sq_num u16, rsvd2 u16, w7 u16
AEQE_TYPE_SHIFT = 17  # AEQE bits 20:17 type
AEQE_TYPE_CQ_OVERFLOW = 0
AEQE_TYPE_EQ_OVERFLOW = 1
AEQE_TYPE_CQE_ERROR = 2

# -- §10, §15 the ZIP SQE (zip.h / UADK drv/hisi_comp.c: struct hisi_zip_sqe) -----------------
SQE_SIZE = 128
SQE = struct.Struct("<32I")
DW_INPUT_LENGTH = 4
DW_IN_SGE_FLAGS = 7  # dw7: flush bit 25, stream mode 26, new stream 27, sqe_type 31:28
DW_OUT_SGE = 8  # dw8 bits 23:0: bytes of the destination SGL's data to skip
DW_REQ = 9  # dw9: request type 7:0, buffer type 11:8, window 15:12
DW_DEST_AVAIL_OUT = 14
DW_CTX_DW0 = 15  # ctx_st bits 3:0
DW_SRC_L, DW_SRC_H = 18, 19
DW_DST_L, DW_DST_H = 20, 21
DW_CTX_ADDR_L, DW_CTX_ADDR_H = 22, 23
DW_CTX_DW1, DW_CTX_DW2 = 28, 29
DW_ISIZE = 30
DW_CHECKSUM = 31
SQE_FLUSH_FINISH = 1 << 25
SQE_STATEFUL = 1 << 26
SQE_NEW_STREAM = 1 << 27
SQE_TYPE_SHIFT = 28
SQE_TYPE_V1 = 0  # tag in dw13
SQE_TYPE_V3 = 3  # tag in dw26
SQE_BUF_TYPE_SHIFT = 8
SQE_BUF_FLAT = 0
SQE_WINDOW_SHIFT = 12
WINDOW_4K, WINDOW_8K, WINDOW_16K, WINDOW_24K, WINDOW_32K = 0, 1, 2, 3, 4
ALG_DEFLATE, ALG_ZLIB, ALG_GZIP = 0x01, 0x02, 0x03
ALG_NAMES = {ALG_DEFLATE: "deflate", ALG_ZLIB: "zlib", ALG_GZIP: "gzip"}
HZ_MAX_SIZE = 8 << 20  # per SQE, input and output

# Queue directions: the SQC alg type (§10: hisi_zip_ctx_init starts queue 0 with 0, 1 with 1).
ZIP_QC_COMPRESS = 0
ZIP_QC_DECOMPRESS = 1

# dw3: status bits 7:0 and the last-block bit 8 (§15)
STATUS_MASK = 0xFF
STATUS_LAST_BLOCK = 1 << 8
STATUS_OK = 0x00
STATUS_NEGACOMPRESS = 0x0D
STATUS_DST_TOO_SMALL = 0x0E
STATUS_CRC_ERR = 0x10
STATUS_DECOMP_END = 0x13
# No code is published for these (§15): the model's choice. Drivers fail any status they do not
# accept, which is all these need to do.
STATUS_BAD_DATA = 0x03
STATUS_BAD_REQUEST = 0x04
STATUS_DMA_FAULT = 0x05

# ctx_dw0 bits 3:0 (§15)
CTX_ST_MASK = 0xF
CTX_ST_DECOMPING_NO_SPACE = 0x02

# -- §7, §8 what a V3 VF reports (qm.c: qm_basic_info V3 column; qm_cap_info_comm/_vf) ---------
# The model reports a non-zero capability version, so Linux reads every register below instead
# of assuming its V3 table; the values are that table's. Function features: STOP_QP (queues stop
# by mailbox), STOP_FUNC, MB_COMMAND (PF<->VF message registers), SVA_PREFETCH (page type write);
# not FUNC_QOS (a PF matter) nor the VF's runtime PM (bit 12, off in the kernel's table too).
MODEL_CAP_VER = 0x01
MODEL_FUNC_CAPS = QM_CAP_STOP_QP | QM_CAP_STOP_FUNC | QM_CAP_MB_COMMAND | QM_CAP_SVA_PREFETCH
V3_EQ_IRQ = QM_IRQ_TYPE_PRESENT | 0  # EQ: vector 0
V3_AEQ_IRQ = QM_IRQ_TYPE_PRESENT | 1  # AEQ: vector 1
V3_ABN_IRQ = QM_IRQ_TYPE_PRESENT | 3  # abnormal: the PF's vector 3 (a VF ignores it)
V3_PF2VF_IRQ = QM_IRQ_TYPE_PRESENT | 2  # PF->VF messages: vector 2
V3_IRQ_NUM = 4 << 16 | 3  # PF 4 vectors (bits 31:16), VF 3 (bits 15:0)
V3_VF_IRQ_NUM = 3
# MSI (not MSI-X), exactly the VF's vector count, which the MSI capability must allow as a power
# of two (§7: pci_alloc_irq_vectors(n, n, PCI_IRQ_MSI); QEMU then asks for all of them).
V2_MSI_VECTORS = 2
V3_MSI_VECTORS = 4

# -- §9 ZIP capability registers (zip_main.c: zip_basic_cap_info, V3 column) ------------------
# A 6.12 VF reads 0x313c-0x3148; 7.3 reads the whole block 0x3124-0x315c.
ZIP_V3_CAPS = {
    0x3124: 0x7C77,  # QM_NFE_MASK
    0x3128: 0x6C77,  # QM_RESET_MASK / QM_OOO_SHUTDOWN_MASK
    0x312C: 0x8,  # QM_CE_MASK
    0x3130: 0x1FFE,  # NFE_MASK
    0x3134: 0x7FE,  # RESET_MASK / OOO_SHUTDOWN_MASK
    0x3138: 0x1,  # CE_MASK
    0x313C: 1 << 28 | 2 << 24 | 5 << 16 | 2 << 8 | 3,  # clusters, core types, cores, comp/decomp
    0x3140: 0x1C << 16 | 0x3,  # decompression / compression core bitmaps
    0x3144: 0x30,  # DRV_ALG_BITMAP: bits 5:4 = deflate, so the kernel registers it
    0x3148: 0x3F,  # DEV_ALG_BITMAP: zlib, gzip, deflate
    0x314C: 0xD5, 0x3150: 0xD5, 0x3154: 0x2A, 0x3158: 0x2A, 0x315C: 0x2A,  # per-core algorithms
}

# -- §10 hardware SGL (sgl.c: struct hisi_acc_hw_sgl, acc_hw_sge) -------------------------------
SQE_BUF_SGL = 1  # dw9 bits 11:8
SGE_OFFSET_MASK = 0xFFFFFF  # dw7 / dw8 bits 23:0: bytes of the SGL's data to skip
SGL_HEADER = struct.Struct("<QHHH")  # next_dma u64, entry_sum_in_chain, entry_sum_in_sgl, length
SGL_HEADER_SIZE = 64
SGE = struct.Struct("<QQI")  # buf u64 (DMA address), page_ctrl u64 (ignored), len u32
SGE_SIZE = 32
SGL_MAX_CHAIN = 256  # the model's bound on next_dma links (6.12 never chains)
