"""HiSilicon ZIP layout: PCI identity, queue directions, the 128-byte SQE, request types, window
sizes and status codes. The QM underneath (registers, contexts, CQE) is `devices/hisi_qm/regs.py`.

Facts and their sources (Linux drivers/crypto/hisilicon/zip/, Linaro UADK drv/hisi_comp.c) are
in docs/research/hisi-qm-zip.md; where a fact is UNCONFIRMED there, the constant says so.
"""

from __future__ import annotations

import struct

from ..hisi_qm.regs import PCI_VENDOR_ID_HUAWEI, QmAccelerator

# -- PCI identity -------------------------------------------------------------------------------
ZIP_PF_DEVICE_ID = 0xA250
ZIP_VF_DEVICE_ID = 0xA251
ZIP_DEVICE_IDS = (ZIP_PF_DEVICE_ID, ZIP_VF_DEVICE_ID)

# ZIP queue directions (SQC alg type, uacce qc_type)
ZIP_QC_COMPRESS = 0
ZIP_QC_DECOMPRESS = 1

# -- ZIP SQE (128 bytes = 32 dwords) ------------------------------------------------------------
SQE_SIZE = 128
SQE_DWORDS = 32
SQE = struct.Struct("<32I")
SQE_RESULT = struct.Struct("<4I")  # dw0..3: consumed, produced, comp_data_length, dw3 (status)
assert SQE.size == SQE_SIZE

# dword indexes
DW_CONSUMED = 0
DW_PRODUCED = 1
DW_COMP_DATA_LENGTH = 2
DW_STATUS = 3  # bits 0-7 status, bit 8 last block
DW_INPUT_LENGTH = 4
DW_IN_SGE_FLAGS = 7  # bits 0-23 in sge offset, 25 flush, 26 stream mode, 27 new stream, 28-31 type
DW_OUT_SGE = 8
DW_REQ = 9  # bits 0-7 alg type, 8-11 buffer type, 12-15 window size
DW_TAG_V1 = 13  # tag with sqe_type 0
DW_DEST_AVAIL_OUT = 14
DW_CTX_DW0 = 15  # bits 0-3 ctx_st, bit 7 BFINAL, bits 10-15 header bit count
DW_SRC_L = 18
DW_SRC_H = 19
DW_DST_L = 20
DW_DST_H = 21
DW_CTX_ADDR_L = 22
DW_CTX_ADDR_H = 23
DW_TAG_V3 = 26  # tag with sqe_type 3
DW_CTX_DW1 = 28
DW_CTX_DW2 = 29
DW_ISIZE = 30
DW_CHECKSUM = 31

STATUS_MASK = 0xFF
STATUS_LAST_BLOCK = 1 << 8  # HZ_LSTBLK_MASK
SQE_FLUSH_FINISH = 1 << 25  # 0 = sync flush
SQE_STATEFUL = 1 << 26
SQE_NEW_STREAM = 1 << 27  # also read back as HZ_STREAM_POS_MASK
SQE_TYPE_SHIFT = 28
SQE_TYPE_V1 = 0x0  # tag in dw13 (zlib/gzip on QM V2)
SQE_TYPE_V3 = 0x3  # tag in dw26
SQE_BUF_TYPE_SHIFT = 8
SQE_BUF_FLAT = 0
SQE_BUF_SGL = 1
SQE_WINDOW_SHIFT = 12
CTX_ST_MASK = 0xF

# request / algorithm types (dw9 bits 0-7)
ALG_DEFLATE = 0x01  # raw deflate
ALG_ZLIB = 0x02
ALG_GZIP = 0x03
ALG_NAMES = {ALG_DEFLATE: "deflate", ALG_ZLIB: "zlib", ALG_GZIP: "gzip"}

# window size codes (dw9 bits 12-15): 4K, 8K, 16K, 24K, 32K
WINDOW_4K, WINDOW_8K, WINDOW_16K, WINDOW_24K, WINDOW_32K = range(5)
WINDOW_BYTES = {WINDOW_4K: 4096, WINDOW_8K: 8192, WINDOW_16K: 16384, WINDOW_24K: 24576,
                WINDOW_32K: 32768}

# status codes (dw3 bits 0-7)
STATUS_OK = 0x00
STATUS_NEGACOMPRESS = 0x0D  # output bigger than input; the result is still valid
STATUS_DST_TOO_SMALL = 0x0E  # dest_avail_out insufficient
STATUS_CRC_ERR = 0x10
STATUS_DECOMP_END = 0x13  # end of the compressed stream reached
# The real codes for these are not published (UNCONFIRMED); the model reports them and the
# driver treats any status it does not know as a failed request, naming the code.
STATUS_BAD_DATA = 0x03  # corrupt compressed input
STATUS_BAD_REQUEST = 0x04  # malformed SQE (length, type, alignment)
STATUS_DMA_FAULT = 0x05  # an address outside the function's DMA maps (IOMMU fault)

STATUS_NAMES = {
    STATUS_OK: "ok", STATUS_NEGACOMPRESS: "negative compression",
    STATUS_DST_TOO_SMALL: "output buffer too small", STATUS_CRC_ERR: "checksum mismatch",
    STATUS_DECOMP_END: "end of stream", STATUS_BAD_DATA: "corrupt compressed data",
    STATUS_BAD_REQUEST: "malformed request", STATUS_DMA_FAULT: "DMA fault",
}

# ctx_st codes (ctx_dw0 bits 0-3), stateful decompression
CTX_ST_DECOMP_NO_SPACE = 0x01
CTX_ST_DECOMPING_NO_SPACE = 0x02
CTX_ST_DECOMP_BLK_NOSTART = 0x03

HZ_MAX_SIZE = 8 << 20  # per-SQE input (and output) limit
HW_CTX_SIZE = 0x10000  # stateful stream context buffer
HW_CTX_RSV_OFFSET = 64  # UADK hands the hardware ctx_buf + 64 and keeps ctx_dw0..2 in front
MIN_DST_SIZE = 200  # the hardware needs at least this much output room


def sqe_dw7(*, finish: bool, stateful: bool, new_stream: bool, sqe_type: int) -> int:
    return ((SQE_FLUSH_FINISH if finish else 0) | (SQE_STATEFUL if stateful else 0)
            | (SQE_NEW_STREAM if new_stream else 0) | sqe_type << SQE_TYPE_SHIFT)


def sqe_dw9(alg: int, window: int = WINDOW_32K, buf_type: int = SQE_BUF_FLAT) -> int:
    return alg | buf_type << SQE_BUF_TYPE_SHIFT | window << SQE_WINDOW_SHIFT

ZIP = QmAccelerator("ZIP", PCI_VENDOR_ID_HUAWEI, ZIP_PF_DEVICE_ID, ZIP_VF_DEVICE_ID, SQE_SIZE,
                    "hisi_zip")
