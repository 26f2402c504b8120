"""ZIP request encoding: formats (deflate / zlib / gzip, picked by `wbits` as zlib does), the
software-side headers and trailers, and the 128-byte SQE.

Division of labour (as in UADK): software writes the zlib/gzip *header* (and parses it on the way
in); the engine does the deflate body and, for the ZLIB/GZIP request types, the checksum carried
in dw31 (and the length in dw30) plus the trailer on the finishing job. A final job with no input
never reaches the hardware: software emits the empty final block and the trailer itself.
"""

from __future__ import annotations

import struct
from typing import Any

from ...record import record
from ..hisi_qm import regs as qm
from . import hw
from .errors import ZipDataError, ZipError

DEFLATE, ZLIB, GZIP, AUTO = "deflate", "zlib", "gzip", "auto"
_ALG = {DEFLATE: hw.ALG_DEFLATE, ZLIB: hw.ALG_ZLIB, GZIP: hw.ALG_GZIP}

EMPTY_FINAL_BLOCK = b"\x03\x00"  # fixed-Huffman final block holding only end-of-block
EMPTY_SYNC_BLOCK = b"\x00\x00\x00\xff\xff"  # empty stored block: a sync-flush marker
GZIP_OS_UNIX = 3


@record(frozen=True)
class Format:
    """A container plus the window size it announces/uses."""

    container: str  # deflate | zlib | gzip | auto (decompression only: zlib or gzip by magic)
    window_bits: int  # 9..15; 0 = take it from the zlib header

    @property
    def alg(self) -> int:
        return _ALG[self.container]

    @property
    def window_code(self) -> int:
        """The hardware's window code: it has 4K..32K windows."""
        wb = self.window_bits or 15
        return {12: hw.WINDOW_4K, 13: hw.WINDOW_8K, 14: hw.WINDOW_16K}.get(
            wb, hw.WINDOW_32K if wb >= 15 else hw.WINDOW_4K)

    @property
    def announced_window_bits(self) -> int:
        """Window size written into a zlib header: at least 4 KiB, the smallest the engine
        uses, so a header never promises a window the data exceeds."""
        return max(self.window_bits or 15, 12)

    @classmethod
    def from_wbits(cls, wbits: int, *, decompress: bool) -> Format:
        """zlib's convention: -15..-8 raw deflate, 8..15 zlib, 24..31 gzip; for decompression
        also 0 (zlib, window from the header), 16 (gzip), 32 and 40..47 (zlib or gzip,
        detected). Which values zlib accepts where is checked in warpdrive.zip.zlib_api."""
        if -15 <= wbits <= -8:
            return cls(DEFLATE, max(-wbits, 9))
        if 8 <= wbits <= 15:
            return cls(ZLIB, max(wbits, 9))
        if 24 <= wbits <= 31:
            return cls(GZIP, max(wbits - 16, 9))
        if decompress and wbits == 0:
            return cls(ZLIB, 0)
        if decompress and wbits == 16:  # gzip, no window given: gzip carries none, so 32 KiB
            return cls(GZIP, 15)
        if decompress and wbits == 32:  # zlib or gzip, window from the header
            return cls(AUTO, 0)
        if decompress and 40 <= wbits <= 47:
            return cls(AUTO, wbits - 32)
        raise ZipError(f"invalid wbits {wbits}",
                       hint="use -15..-9 (raw deflate), 9..15 (zlib) or 25..31 (gzip)"
                       + ("; 0 or 40..47 to detect" if decompress else ""))

    @classmethod
    def named(cls, name: str) -> Format:
        if name not in _ALG:
            raise ZipError(f"unknown format {name!r}", hint="choose deflate, zlib or gzip")
        return cls(name, 15)


# -- headers and trailers ---------------------------------------------------------------------
def zlib_header(window_bits: int, level: int) -> bytes:
    """CMF/FLG for deflate with the given window, FLEVEL from the level, FCHECK filled in."""
    cmf = (window_bits - 8) << 4 | 8
    if level == -1:
        level = 6
    flevel = 0 if level < 2 else 1 if level < 6 else 2 if level == 6 else 3
    flg = flevel << 6
    flg |= 31 - (cmf << 8 | flg) % 31
    return bytes((cmf, flg))


def gzip_header(level: int) -> bytes:
    """The 10-byte gzip header zlib writes: no name, mtime 0, XFL from the level, OS Unix."""
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes((xfl, GZIP_OS_UNIX))


def header(fmt: Format, level: int) -> bytes:
    if fmt.container == ZLIB:
        return zlib_header(fmt.announced_window_bits, level)
    if fmt.container == GZIP:
        return gzip_header(level)
    return b""


def trailer(alg: int, checksum: int, isize: int) -> bytes:
    if alg == hw.ALG_ZLIB:
        return checksum.to_bytes(4, "big")
    if alg == hw.ALG_GZIP:
        return checksum.to_bytes(4, "little") + (isize & 0xFFFF_FFFF).to_bytes(4, "little")
    return b""


def trailer_error(alg: int, checksum: int, tail: bytes | bytearray | memoryview) -> ZipDataError:
    """The error for a trailer field the engine rejected, worded as zlib words it: a bad
    Adler-32/CRC-32 is "incorrect data check", a bad gzip ISIZE "incorrect length check".
    `tail` is the input consumed so far, ending with the rejected field (at least its last
    8 bytes): when the 4 bytes before it hold the right CRC, the length was the problem."""
    crc_ok = alg == hw.ALG_GZIP and len(tail) >= 8 and \
        bytes(tail[-8:-4]) == checksum.to_bytes(4, "little")
    what = "incorrect length check" if crc_ok else "incorrect data check"
    return ZipDataError(f"Error -3 while decompressing data: {what}")


def trailer_size(alg: int) -> int:
    return {hw.ALG_ZLIB: 4, hw.ALG_GZIP: 8}.get(alg, 0)


def initial_checksum(alg: int) -> int:
    return 1 if alg == hw.ALG_ZLIB else 0


# -- the SQE ----------------------------------------------------------------------------------
SQE_PACK = hw.SQE.pack_into
_RESULT = hw.SQE_RESULT.unpack_from
_STREAM_WORDS = struct.Struct("<4I").unpack_from  # dw28..31


@record(frozen=True)
class SqeTemplate:
    """The per-queue constants of a ZIP SQE: algorithm, window, SQE type and tag position."""

    alg: int
    window: int
    sqe_type: int

    @classmethod
    def for_format(cls, fmt: Format, qm_version: int) -> SqeTemplate:
        # UADK: on QM V2 zlib/gzip use the "v1" SQE type (tag in dw13); everything else type 3.
        v1 = qm_version < qm.QM_HW_V3 and fmt.alg in (hw.ALG_ZLIB, hw.ALG_GZIP)
        return cls(fmt.alg, fmt.window_code, hw.SQE_TYPE_V1 if v1 else hw.SQE_TYPE_V3)

    @property
    def tag_dw(self) -> int:
        return hw.DW_TAG_V1 if self.sqe_type == hw.SQE_TYPE_V1 else hw.DW_TAG_V3

    def fill(self, buf: memoryview | bytearray, off: int, *, src: int, in_len: int, dst: int,
             avail: int, tag: int, finish: bool = True, stateful: bool = False,
             new_stream: bool = True, ctx: int = 0, ctx_dw0: int = 0, ctx_dw1: int = 0,
             ctx_dw2: int = 0, isize: int = 0, checksum: int = 0) -> None:
        """Write a whole SQE (all 32 dwords, result words zeroed) at `buf[off:off+128]`.
        Defaults describe a stateless job as UADK sends one: new stream, flush = finish."""
        dw7 = hw.sqe_dw7(finish=finish, stateful=stateful, new_stream=new_stream,
                         sqe_type=self.sqe_type)
        dw9 = hw.sqe_dw9(self.alg, self.window)
        v1 = self.sqe_type == hw.SQE_TYPE_V1
        SQE_PACK(
            buf, off,
            0, 0, 0, 0,  # consumed, produced, comp_data_length, status
            in_len, 0, 0, dw7, 0, dw9, 0, 0, 0,
            tag if v1 else 0,  # dw13
            avail, ctx_dw0, 0, 0,
            src & 0xFFFF_FFFF, src >> 32, dst & 0xFFFF_FFFF, dst >> 32,
            ctx & 0xFFFF_FFFF, ctx >> 32, 0, 0,
            0 if v1 else tag,  # dw26
            0, ctx_dw1, ctx_dw2, isize, checksum)

    def build(self, **kw: Any) -> bytes:
        buf = bytearray(hw.SQE_SIZE)
        self.fill(buf, 0, **kw)
        return bytes(buf)


def read_result(buf: memoryview, off: int) -> tuple[int, int, int]:
    """(consumed, produced, dw3) of a completed SQE."""
    consumed, produced, _, dw3 = _RESULT(buf, off)
    return consumed, produced, dw3


def read_stream_words(buf: memoryview, off: int) -> tuple[int, int, int, int, int]:
    """(ctx_dw0, ctx_dw1, ctx_dw2, isize, checksum) of a completed stream SQE."""
    (ctx_dw0,) = struct.unpack_from("<I", buf, off + 4 * hw.DW_CTX_DW0)
    ctx1, ctx2, isize, checksum = _STREAM_WORDS(buf, off + 4 * hw.DW_CTX_DW1)
    return ctx_dw0, ctx1, ctx2, isize, checksum


def decompression_complete(status: int, dw3: int) -> bool:
    """A decompression job reached the end of the deflate stream (the last block). Stateless
    jobs end with status 0, as the kernel requires of them (docs/research/hisi-qm-zip.md,
    section 10); UADK reads the end of a stream as 0x13 (section 15); both carry the last-block
    bit."""
    return status in (hw.STATUS_OK, hw.STATUS_DECOMP_END) and bool(dw3 & hw.STATUS_LAST_BLOCK)


def status_error(status: int, *, compress: bool) -> ZipError | None:
    """The exception for a failed status, or None for one that means success."""
    from .errors import ZipDeviceError

    if status in (hw.STATUS_OK, hw.STATUS_NEGACOMPRESS, hw.STATUS_DECOMP_END):
        return None
    if status == hw.STATUS_BAD_DATA:
        return ZipDataError("Error -3 while decompressing data: invalid compressed data "
                            f"(engine status {status:#x})")
    if status == hw.STATUS_CRC_ERR:
        return ZipDataError("Error -3 while decompressing data: incorrect data check "
                            f"(engine status {status:#x})")
    if status == hw.STATUS_DMA_FAULT:
        return ZipDeviceError(
            f"the engine could not reach a buffer (DMA fault, status {status:#x})",
            hint="a buffer was unmapped while the job ran, or an address is wrong")
    name = hw.STATUS_NAMES.get(status, "unknown status")
    what = "compression" if compress else "decompression"
    return ZipDeviceError(f"{what} job failed: {name} (engine status {status:#x})",
                          hint="the request was rejected; this is a driver or device bug")
