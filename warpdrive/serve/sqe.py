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
  driver never sets (cipher key addresses and reserved words) are cleared;
- back to the client go only the words the device writes (`copy_results`), so the device's
  IOVAs never reach it.
Runs of common SQEs are checked a field at a time for the whole run (`mediate_run`: the same
checks and the same bytes into the hardware ring as `mediate` SQE by SQE, in fewer Python
operations); anything unusual goes SQE by SQE.
Anything else does not reach the device: the client gets its SQE back with status
`STATUS_BAD_REQUEST` (malformed) or `STATUS_DMA_FAULT` (memory it did not map), as an IOMMU fault
would end the job on hardware.
"""

from __future__ import annotations

import struct
from array import array
from operator import add

from ..devices.zip import hw
from .maps import ClientMaps, DeviceMap, TranslationFault

# The SQE as the broker reads and writes it: the dwords that pass (dw4, 7-9, 13-15, the address
# words 18-23, 26-31), with pad bytes for the result words (dw0-3) and every dword the driver
# never sets (5, 6, 10-12, 16, 17, 24, 25): unpacking skips them, packing writes them as zeros.
_SQE = struct.Struct("<16x I 8x 3I 12x 3I 8x 6I 8x 6I")
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
            maps: ClientMaps) -> tuple[DeviceMap, ...]:
    """Check the client's SQE at `src[off:off+128]` and write its translated form into the
    hardware ring at `ring[hoff:hoff+128]`. The SQE is read once (a snapshot: the client may
    rewrite its ring meanwhile, the check and the copy are of the same bytes). Returns the maps
    the job uses; raises Refused (and writes nothing). One unpack, one pack, and the client's
    maps' last hits tried before their table (`ClientMaps.translate`); runs of common SQEs
    take `mediate_run` instead."""
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
    return used


# A run of SQEs is checked on its copy in the hardware ring (`mediate_run`), a field at a time
# for the whole run: strided views of the ring as u32 and u64 words (an address pair is one
# little-endian u64), indexes per SQE below.
_I, _Q = hw.SQE_SIZE // 4, hw.SQE_SIZE // 8  # u32 and u64 words per SQE
_Q_SRC, _Q_DST = hw.DW_SRC_L // 2, hw.DW_DST_L // 2
# cleared in what reaches the device: the result words, every dword the driver never sets and
# the context address (a stateless run has none), as `_SQE` leaves them
_CLEAR_Q = (0, 1, 5, 8, hw.DW_CTX_ADDR_L // 2, 12)  # dw0-3, 10-11, 16-17, 22-23, 24-25
_CLEAR_I = (5, 6, 12)
RUN_MAX = 64  # SQEs per run at most (longer ones are taken in pieces)
_ZERO_I = memoryview(array("I", bytes(4 * RUN_MAX)))
_ZERO_Q = memoryview(array("Q", bytes(8 * RUN_MAX)))
# The dw7 values a run may hold: stateless (a stateful SQE's context is checked SQE by SQE).
_DW7_RUN = frozenset(f | t for t in _DW7_TYPES for f in
                     (0, hw.SQE_FLUSH_FINISH, hw.SQE_NEW_STREAM,
                      hw.SQE_FLUSH_FINISH | hw.SQE_NEW_STREAM))
# dw8 (the SGE offsets: none) and dw9 (the request) as one u64, the low half dw8: the values a
# run may hold, so one set inclusion checks both (`mediate` checks them apart).
_Q_REQ = hw.DW_OUT_SGE // 2
_DW89_RUN = frozenset(dw9 << 32 for dw9 in _DW9_OK)


def mediate_run(src: memoryview, off: int, n: int, ring: memoryview, h32: memoryview,
                h64: memoryview, hslot: int,
                maps: ClientMaps) -> tuple[DeviceMap, DeviceMap] | None:
    """`mediate` for `n` (<= RUN_MAX) consecutive SQEs at once, into hardware slots `hslot`..
    of `ring` (also seen as u32 words `h32` and u64 words `h64`; the run must not wrap). The run
    is copied into the hardware ring first, in one copy: that copy is the snapshot (the client
    cannot change it) and everything is checked on it, each field for the whole run in one
    C-level pass (a set inclusion, a min, a max); then the addresses are rewritten and the
    words the device must not see cleared, a field at a time. Takes only the common case:
    stateless SQEs with non-empty lengths whose sources lie in one readable map and
    destinations in one writable map; returns those two maps, and the ring then holds exactly
    what `mediate` would have written SQE by SQE. Anything else returns None: the caller takes
    the run SQE by SQE through `mediate`. (The slots past the queue's tail then hold an
    unchecked copy until they are written again; the device never reads past the tail the
    doorbell announced.)"""
    hoff, size = hslot * hw.SQE_SIZE, n * hw.SQE_SIZE
    ring[hoff:hoff + size] = src[off:off + size]
    b, e = hslot * _I, (hslot + n) * _I
    qb, qe = hslot * _Q, (hslot + n) * _Q
    if not (_DW7_RUN.issuperset(h32[b + hw.DW_IN_SGE_FLAGS:e:_I])
            and _DW89_RUN.issuperset(h64[qb + _Q_REQ:qe:_Q])):
        return None
    lens = h32[b + hw.DW_INPUT_LENGTH:e:_I].tolist()
    avails = h32[b + hw.DW_DEST_AVAIL_OUT:e:_I].tolist()
    lmax, amax = max(lens), max(avails)
    if lmax > _MAX or amax > _MAX or not min(lens) or not min(avails):
        return None
    srcs, dsts = h64[qb + _Q_SRC:qe:_Q].tolist(), h64[qb + _Q_DST:qe:_Q].tolist()
    # The last maps hit, with a bound (the highest address plus the longest length: two C
    # calls, no per-SQE sum) before any call: a client submitting from the same buffers pass
    # after pass needs no more. Anything else: `_run_map`.
    ms, md = maps.last_read, maps.last_write
    if not (ms.iova <= min(srcs) and max(srcs) + lmax <= ms.end):
        found = _run_map(maps, ms, srcs, lens, False)
        if found is None:
            return None
        ms = found
    if not (md.iova <= min(dsts) and max(dsts) + amax <= md.end):
        found = _run_map(maps, md, dsts, avails, True)
        if found is None:
            return None
        md = found
    d = ms.dev_iova - ms.iova
    h64[qb + _Q_SRC:qe:_Q] = array("Q", [a + d for a in srcs])
    d = md.dev_iova - md.iova
    h64[qb + _Q_DST:qe:_Q] = array("Q", [a + d for a in dsts])
    zq, zi = _ZERO_Q[:n], _ZERO_I[:n]
    for k in _CLEAR_Q:
        h64[qb + k:qe:_Q] = zq
    for k in _CLEAR_I:
        h32[b + k:e:_I] = zi
    return ms, md


# The words the device writes into a completed SQE, copied back to the client's slot (nothing
# else: its own addresses and fields stay as it wrote them, and the device's IOVAs never reach
# it): dw0-3 (consumed, produced, length, status) and dw28-31 (stream state, isize, checksum) as
# u64 pairs, dw15 (ctx_dw0) as a u32.
_RESULT_I = hw.DW_CTX_DW0  # u32 index
_Q_PER_SQE, _I_PER_SQE = hw.SQE_SIZE // 8, hw.SQE_SIZE // 4


def _run_map(maps: ClientMaps, last: DeviceMap, addrs: list[int], lens: list[int],
             write: bool) -> DeviceMap | None:
    """The one map of this client holding every buffer [addr, addr+len) of a run (the last map
    hit, else one bisection), or None: the run then goes SQE by SQE for the exact reason.
    `mediate_run` has tried the last map with its bound already: here it is tried with the
    exact ends."""
    lo, hi = min(addrs), max(map(add, addrs, lens))
    if last.iova <= lo and hi <= last.end:
        return last
    try:
        return maps.translate(lo, hi - lo, write=write)
    except TranslationFault:
        return None


def copy_results(h64: memoryview, h32: memoryview, hs: int, c64: memoryview,
                 c32: memoryview, cs: int, n: int) -> None:
    """Copy the result words of `n` consecutive completed SQEs from hardware slots `hs`.. (the
    ring as u64 `h64` and u32 `h32`) to client slots `cs`.. (`c64`, `c32`): five strided copies
    for the whole run (written out: this runs for every stretch of completions)."""
    q = _Q_PER_SQE
    h, c = hs * q, cs * q
    he, ce = h + n * q, c + n * q
    c64[c:ce:q] = h64[h:he:q]  # dw0-1
    c64[c + 1:ce:q] = h64[h + 1:he:q]  # dw2-3
    c64[c + 14:ce:q] = h64[h + 14:he:q]  # dw28-29
    c64[c + 15:ce:q] = h64[h + 15:he:q]  # dw30-31
    c32[2 * c + _RESULT_I:2 * ce:_I_PER_SQE] = h32[2 * h + _RESULT_I:2 * he:_I_PER_SQE]


def refuse(ring: memoryview, off: int, status: int) -> None:
    """Complete an SQE in the client's ring with an error status and nothing done."""
    _RESULT.pack_into(ring, off, 0, 0, 0, status & hw.STATUS_MASK)
