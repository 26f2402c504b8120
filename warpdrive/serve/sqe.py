"""What the broker lets through to the device, SQE by SQE.

The broker reads a client's SQE once, checks that snapshot and writes the translated snapshot into
the hardware ring (the client can rewrite its own ring at any time; what was checked is what the
device gets). What passes:
- request types on the whitelist: deflate, zlib, gzip (dw9 bits 7:0), SQE types 0 and 3
  (dw7 bits 31:28), flat buffers only (dw9 bits 11:8 = 0: a hardware SGL is a list of addresses
  in client memory the device would follow unchecked), a known window code, no in/out SGE
  offsets (dw7 bits 23:0, dw8), no unknown flag bits;
- lengths up to the engine's limit (`HZ_MAX_SIZE`);
- source [src, src+len) readable, destination [dst, dst+avail) writable and, for a stateful job,
  the stream context [ctx, ctx + HW_CTX_SIZE - 64) writable, each wholly inside one of *this*
  client's maps (`ClientMaps.translate`);
- the addresses are rewritten to device IOVAs; the result words (dw0-3) and every dword the
  driver never sets (cipher key addresses and reserved words) are cleared.
Anything else does not reach the device: the client gets its SQE back with status
`STATUS_BAD_REQUEST` (malformed) or `STATUS_DMA_FAULT` (memory it did not map), as an IOMMU fault
would end the job on hardware.
"""

from __future__ import annotations

import struct

from ..devices.zip import hw
from .maps import ClientMaps, DeviceMap, TranslationFault

_SQE = struct.Struct("<32I")
_ADDRS = struct.Struct("<6I")  # dw18..23: source, destination, stream context
_ADDR_OFF = 4 * hw.DW_SRC_L
_RESULT = struct.Struct("<4I")  # dw0..3
_ZEROED = (5, 6, 10, 11, 12, 16, 17, 24, 25)  # the driver never sets these
_DW7_KNOWN = (hw.SQE_FLUSH_FINISH | hw.SQE_STATEFUL | hw.SQE_NEW_STREAM
              | 0xF << hw.SQE_TYPE_SHIFT)
_SQE_TYPES = (hw.SQE_TYPE_V1, hw.SQE_TYPE_V3)
CTX_SPAN = hw.HW_CTX_SIZE - hw.HW_CTX_RSV_OFFSET  # what the engine may touch at the ctx address


class Refused(Exception):
    """The SQE does not go to the device; `status` is what the client's SQE reports."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def mediate(src: memoryview, off: int, ring: memoryview, hoff: int,
            maps: ClientMaps) -> tuple[tuple[int, ...], list[DeviceMap]]:
    """Check the client's SQE at `src[off:off+128]` and write its translated form into the
    hardware ring at `ring[hoff:hoff+128]`. The SQE is read once (a snapshot: the client may
    rewrite its ring meanwhile, the check and the copy are of the same bytes). Returns the
    client's six address words (to restore in the result) and the maps the job uses; raises
    Refused (and writes nothing)."""
    w = _SQE.unpack_from(src, off)
    dw7, dw9 = w[hw.DW_IN_SGE_FLAGS], w[hw.DW_REQ]
    if dw7 & ~_DW7_KNOWN or dw7 >> hw.SQE_TYPE_SHIFT not in _SQE_TYPES or w[hw.DW_OUT_SGE]:
        raise Refused(hw.STATUS_BAD_REQUEST, f"dw7 {dw7:#x} / dw8 {w[hw.DW_OUT_SGE]:#x}: unknown "
                      "flags, SQE type or SGE offsets")
    if dw9 & 0xFF not in hw.ALG_NAMES or dw9 >> hw.SQE_BUF_TYPE_SHIFT & 0xF != hw.SQE_BUF_FLAT \
            or dw9 >> hw.SQE_WINDOW_SHIFT & 0xF not in hw.WINDOW_BYTES or dw9 >> 16:
        raise Refused(hw.STATUS_BAD_REQUEST, f"dw9 {dw9:#x}: request type, buffer type (flat "
                      "only) or window not allowed")
    in_len, avail = w[hw.DW_INPUT_LENGTH], w[hw.DW_DEST_AVAIL_OUT]
    if in_len > hw.HZ_MAX_SIZE or avail > hw.HZ_MAX_SIZE:
        raise Refused(hw.STATUS_BAD_REQUEST, f"lengths {in_len}/{avail} exceed "
                      f"{hw.HZ_MAX_SIZE}")
    addrs = w[hw.DW_SRC_L:hw.DW_CTX_ADDR_H + 1]
    src_iova = addrs[1] << 32 | addrs[0]
    dst_iova = addrs[3] << 32 | addrs[2]
    try:
        ms = maps.translate(src_iova, in_len, write=False)
        md = maps.translate(dst_iova, avail, write=True)
        used = [ms, md]
        dsrc = ms.dev_iova + (src_iova - ms.iova)
        ddst = md.dev_iova + (dst_iova - md.iova)
        dctx = 0
        if dw7 & hw.SQE_STATEFUL:
            ctx = addrs[5] << 32 | addrs[4]
            mc = maps.translate(ctx, CTX_SPAN, write=True)
            used.append(mc)
            dctx = mc.dev_iova + (ctx - mc.iova)
    except TranslationFault as e:
        raise Refused(hw.STATUS_DMA_FAULT, str(e)) from None
    out = list(w)
    out[0] = out[1] = out[2] = out[3] = 0  # results: the device's to write
    for dw in _ZEROED:
        out[dw] = 0
    out[hw.DW_SRC_L:hw.DW_CTX_ADDR_H + 1] = (dsrc & 0xFFFF_FFFF, dsrc >> 32, ddst & 0xFFFF_FFFF,
                                             ddst >> 32, dctx & 0xFFFF_FFFF, dctx >> 32)
    _SQE.pack_into(ring, hoff, *out)
    return addrs, used


def restore(ring: memoryview, off: int, addrs: tuple[int, ...]) -> None:
    """Put the client's own addresses back into a completed SQE (the device's IOVAs are the
    broker's business)."""
    _ADDRS.pack_into(ring, off + _ADDR_OFF, *addrs)


def refuse(ring: memoryview, off: int, status: int) -> None:
    """Complete an SQE in the client's ring with an error status and nothing done."""
    _RESULT.pack_into(ring, off, 0, 0, 0, status & hw.STATUS_MASK)
