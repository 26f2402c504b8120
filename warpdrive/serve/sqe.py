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

# The SQE as the broker reads and writes it: the dwords that pass (dw4, 7-9, 13-15, the address
# words 18-23, 26-31), with pad bytes for the result words (dw0-3) and every dword the driver
# never sets (5, 6, 10-12, 16, 17, 24, 25): unpacking skips them, packing writes them as zeros.
_SQE = struct.Struct("<16x I 8x 3I 12x 3I 8x 6I 8x 6I")
ADDRS = struct.Struct("<6I")  # dw18..23: source, destination, stream context
ADDR_OFF = 4 * hw.DW_SRC_L
_RESULT = struct.Struct("<4I")  # dw0..3
_DW7_KNOWN = (hw.SQE_FLUSH_FINISH | hw.SQE_STATEFUL | hw.SQE_NEW_STREAM
              | 0xF << hw.SQE_TYPE_SHIFT)
_DW7_TYPES = tuple(t << hw.SQE_TYPE_SHIFT for t in (hw.SQE_TYPE_V1, hw.SQE_TYPE_V3))
_DW7_TYPE_MASK = 0xF << hw.SQE_TYPE_SHIFT
# dw9 bits 7:0 request type, 11:8 buffer type (flat only), 15:12 window, the rest zero.
_DW9_OK = frozenset(alg | hw.SQE_BUF_FLAT << hw.SQE_BUF_TYPE_SHIFT | win << hw.SQE_WINDOW_SHIFT
                    for alg in hw.ALG_NAMES for win in hw.WINDOW_BYTES)
_MAX = hw.HZ_MAX_SIZE
_STATEFUL = hw.SQE_STATEFUL
CTX_SPAN = hw.HW_CTX_SIZE - hw.HW_CTX_RSV_OFFSET  # what the engine may touch at the ctx address


class Refused(Exception):
    """The SQE does not go to the device; `status` is what the client's SQE reports."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def mediate(src: memoryview, off: int, ring: memoryview, hoff: int,
            maps: ClientMaps) -> tuple[tuple[int, ...], tuple[DeviceMap, ...]]:
    """Check the client's SQE at `src[off:off+128]` and write its translated form into the
    hardware ring at `ring[hoff:hoff+128]`. The SQE is read once (a snapshot: the client may
    rewrite its ring meanwhile, the check and the copy are of the same bytes). Returns the
    client's six address words (to restore in the result) and the maps the job uses; raises
    Refused (and writes nothing). The hot path of the broker: one unpack, one pack, and the
    client's maps' last hits tried before their table (`ClientMaps.translate`)."""
    w = _SQE.unpack_from(src, off)
    in_len, dw7, dw8, dw9, avail = w[0], w[1], w[2], w[3], w[5]
    if dw7 & ~_DW7_KNOWN or dw7 & _DW7_TYPE_MASK not in _DW7_TYPES or dw8:
        raise Refused(hw.STATUS_BAD_REQUEST, f"dw7 {dw7:#x} / dw8 {dw8:#x}: unknown flags, "
                      "SQE type or SGE offsets")
    if dw9 not in _DW9_OK:
        raise Refused(hw.STATUS_BAD_REQUEST, f"dw9 {dw9:#x}: request type, buffer type (flat "
                      "only) or window not allowed")
    if in_len > _MAX or avail > _MAX:
        raise Refused(hw.STATUS_BAD_REQUEST, f"lengths {in_len}/{avail} exceed {_MAX}")
    src_iova = w[8] << 32 | w[7]
    dst_iova = w[10] << 32 | w[9]
    ms, md = maps.last_read, maps.last_write
    try:
        # A range wholly inside the map that held the last one, with the same access, needs
        # no search; anything else goes through the table (and becomes the last hit).
        if not ms.iova <= src_iova or src_iova + (in_len or 1) > ms.end:
            ms = maps.translate(src_iova, in_len, write=False)
        if not md.iova <= dst_iova or dst_iova + (avail or 1) > md.end:
            md = maps.translate(dst_iova, avail, write=True)
        dsrc = ms.dev_iova + src_iova - ms.iova
        ddst = md.dev_iova + dst_iova - md.iova
        if dw7 & _STATEFUL:
            ctx = w[12] << 32 | w[11]
            mc = maps.translate(ctx, CTX_SPAN, write=True)
            dctx = mc.dev_iova + ctx - mc.iova
            used: tuple[DeviceMap, ...] = (ms, md, mc)
        else:
            dctx = 0
            used = (ms, md)
    except TranslationFault as e:
        raise Refused(hw.STATUS_DMA_FAULT, str(e)) from None
    _SQE.pack_into(ring, hoff, in_len, dw7, 0, dw9, w[4], avail, w[6],
                   dsrc & 0xFFFF_FFFF, dsrc >> 32, ddst & 0xFFFF_FFFF, ddst >> 32,
                   dctx & 0xFFFF_FFFF, dctx >> 32, w[13], w[14], w[15], w[16], w[17], w[18])
    return w[7:13], used


def restore(ring: memoryview, off: int, addrs: tuple[int, ...]) -> None:
    """Put the client's own addresses back into a completed SQE (the device's IOVAs are the
    broker's business)."""
    ADDRS.pack_into(ring, off + ADDR_OFF, *addrs)


def refuse(ring: memoryview, off: int, status: int) -> None:
    """Complete an SQE in the client's ring with an error status and nothing done."""
    _RESULT.pack_into(ring, off, 0, 0, 0, status & hw.STATUS_MASK)
