"""Device model of a HiSilicon ZIP virtual function (QM V3 by default, V2 on request), served over
vfio-user.

This is the embedded default behind `warpdrive.open("emu:zip")` and `warpdrive.zip` when no ZIP
hardware is present, and the ZIP function of the lab guest, where Linux's own `hisi_zip` driver
judges it. It speaks the interface the kernel's hisi_qm/hisi_zip and Linaro UADK program, as
docs/research/hisi-qm-zip.md records it from their sources (the model's transcription is
`_zip_layout`; it never imports a driver module), and compresses with Python's `zlib`.

What it models (section numbers are those of the research document):
- PCI identity of a ZIP VF, 19e5:a251, revision 0x30 (V3) or 0x21 (V2) (§1). MSI, not MSI-X:
  V3 3 vectors (EQ 0, AEQ 1, PF->VF 2) offered as 4 (the power of two the driver's request
  enables), V2 2 (§7).
- BAR2 (64 KiB): the QM registers (§3), trapped (each access a REGION_READ/WRITE message), and
  the SQ/CQ doorbell at 0x1000: a page the client maps and the model polls (`doorbells=mmap`,
  the default), or trapped and latched write by write (`doorbells=trap`). Option `isolation=1`:
  doorbell isolation, a 64 KiB BAR4 page per queue with its doorbell at 0x1000 (§2, §6).
- V3 capability registers (§8, §9) with a non-zero capability version, so Linux reads them all:
  the V3 table's values (deflate for the crypto API, 3 vectors, STOP_QP, ...). V2 has none (they
  read as 0; a V2 driver never reads them).
- The QM (`_qm.QmFunction`): mailbox (§4; runs on its last dword, as x86 Linux writes it),
  contexts with read-back into the driver's scratch buffer, doorbells, CQEs, EQEs (at most one
  per queue until it is re-armed, §7, §7.1), AEQ on ring faults, STOP_QP after draining.
- Jobs: raw deflate / zlib / gzip compression and decompression, stateless and stateful, from
  flat buffers or hardware SGLs (§10). Results go into the SQE slot in place (consumed,
  produced, status, last-block bit, checksum, isize, ctx_dw0); the tag words are left alone.
- Statuses (§10, §15): a stateless job is a whole stream, whatever the flush bit says (the kernel
  sends flush 0); its success is 0 (0x0d for output larger than input) with the last-block bit;
  a stateful decompression that reaches the end reports 0x13 with the last-block bit, as UADK
  reads it.
- DMA outside the client's maps is reported in the SQE's status (`STATUS_DMA_FAULT`) like an
  IOMMU fault; it never crashes the model. Buffers may span many client maps (QEMU maps a
  vIOMMU's pages one by one).
- BAR0 (4 KiB) is a model-only introspection window real hardware does not have (drivers
  never touch it): counters and the log of mailbox commands, for tests, and one writable
  register (`DBG_INJECT`) that makes an EQ or CQ overflow happen, for witnesses of a driver's
  error paths. Layout: `DBG_*`. A function handed to someone who is not testing it (the
  broker's clients: `ZipModel.fault_injection`) has the window read-only, without the register.

What it assumes where the facts are UNCONFIRMED:
- **A mapped doorbell is polled memory.** Hardware latches every doorbell write; a polled word
  only shows the latest store, and SQ and CQ doorbells (of every queue without isolation) share
  it. The model takes an SQ doorbell as level-triggered (work = tail - head) and CQ doorbells as
  information only (no driver has more than depth-1 jobs un-reaped, so the CQ cannot overflow).
  warpdrive's driver re-stores its SQ doorbell (same absolute tail: idempotent) after a CQ
  doorbell and while it waits, so a hidden SQ doorbell is seen again. Linux does not (its
  completion work rings CQ doorbells after it has woken the submitter, whose next SQ doorbell
  can be overwritten), so a function Linux drives needs `doorbells=trap` (the lab's setting).
  When a queue starts, a polled word is reset to a reserved command (15), so a stale SQ doorbell
  from an earlier life of the queue is never taken for work.
- **Header/trailer split.** Software writes the zlib/gzip header (as UADK does); for the
  ZLIB/GZIP request types the engine produces the deflate body *and* the trailer on the finishing
  job, and on decompression checks it (status 0x10 on a mismatch, as soon as the bad field, the
  checksum or then gzip's length, is complete; `consumed` ends with it, as zlib stops at the
  field it rejects). dw31/dw30 carry the running
  checksum and length, in and out.
- **Status codes** for corrupt data (0x03), malformed SQEs (0x04) and DMA faults (0x05) are this
  model's choice: the real codes are not published. Output larger than `dest_avail_out` is 0x0e
  and leaves stream state untouched, so the job can be resubmitted with more room.
- **Stream state** lives in the model keyed by the SQE's stream-context address, not inside the
  64 KiB context buffer (Python's zlib cannot serialise its state). The address must be mapped.
- **Compression level**: the model uses level `level` (option, default 6) of libdeflate for
  whole-buffer jobs (`codec=libdeflate`, the default when installed: its own compressed bytes,
  the same statuses and counts) and of zlib for the rest; the 24 KiB window code maps to zlib's
  16 KiB window.
- Not modelled: V1, lz77/lz4 types, PF-only registers, PF<->VF messages, QoS, error injection
  beyond DMA faults.

Run it standalone: `warpdrive emu zip --socket PATH` (or `python -m warpdrive.emu zip ...`);
options (`--set key=value`): `queues` (default 2), `depth` (SQ/CQ depth, default 1024),
`revision` (0x30 default, or 0x21), `level` (zlib level), `doorbells` (mmap | trap),
`isolation` (0 | 1), `executor` (zlib, or null: jobs complete at once without being done, to
measure a driver alone), `workers` (zlib threads for stateless jobs over 64 KiB, default one
per core up to 4; 1 = everything on the model's thread; see `ThreadedJobs`), `codec`
(libdeflate | libz: what runs whole-buffer jobs; default $WARPDRIVE_MODEL_CODEC, else libdeflate
when libdeflate.so.0 loads; see `_deflate`).
"""

from __future__ import annotations

import itertools
import os
import struct
from collections import deque
from collections.abc import Callable

from ... import syscalls as sc
from ...errors import InvalidArgumentError
from ..dma import DmaFault
from ..model import VFIO_PCI_MSI_IRQ_INDEX, DeviceModel, RegionSpec
from . import _zip_layout as L
from ._deflate import WINDOW_WBITS, DeflateUnit, JobResult, Stream, codec_asked
from ._qm import BUSY, PENDING, Execute, QmFunction, QueueState

TYPE_CHECKING = False  # (not typing's: importing typing costs ~3 ms of every process's boot)
if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor
    from typing import Any, ClassVar

    from ._qm import Dma

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_RES = struct.Struct("<4I")  # dw0..3
_ISIZE_SUM = struct.Struct("<2I")  # dw30, dw31
# The SQE words and results as module constants, not `L.` lookups: read on every job.
_DW_IN, _DW_AVAIL, _DW7, _DW9 = L.DW_INPUT_LENGTH, L.DW_DEST_AVAIL_OUT, L.DW_IN_SGE_FLAGS, L.DW_REQ
_DW_SRC_L, _DW_SRC_H, _DW_DST_L, _DW_DST_H = L.DW_SRC_L, L.DW_SRC_H, L.DW_DST_L, L.DW_DST_H
_SQE_UNPACK = L.SQE.unpack_from
_RES_PACK, _ISIZE_SUM_PACK = _RES.pack_into, _ISIZE_SUM.pack_into
_ST_MASK, _ST_LAST, _CTX_ST_MASK = L.STATUS_MASK, L.STATUS_LAST_BLOCK, L.CTX_ST_MASK
_DW_CTX0, _CTX0_OFF, _ISIZE_OFF = L.DW_CTX_DW0, 4 * L.DW_CTX_DW0, 4 * L.DW_ISIZE

IDLE_DOORBELL = 0xF << L.QM_DB_CMD_SHIFT_V2  # reserved command 15: "nothing to do"

# -- BAR0 introspection window (model only) -----------------------------------------------------
DBG_BAR = 0
DBG_SIZE = 0x1000
DBG_MAGIC = 0x4D5A4457  # "WDZM"
DBG_MAGIC_OFF = 0x00
DBG_VERSION_OFF = 0x04
DBG_JOBS = 0x08  # u64 jobs completed
DBG_TRAPPED_READS = 0x10  # u64 trapped BAR2 reads
DBG_TRAPPED_WRITES = 0x18  # u64 trapped BAR2 writes
DBG_DOORBELLS_POLLED = 0x20  # u64 doorbell values seen in the mapped page
DBG_DMA_FAULTS = 0x28  # u64 jobs failed with a DMA fault
DBG_MSIS = 0x30  # u64 MSIs raised
DBG_MB_COUNT = 0x38  # u32 mailbox commands executed (all of them)
DBG_MESSAGES = 0x40  # u64 vfio-user messages the server has received (this read included)
DBG_RESETS = 0x48  # u64 device resets (VFIO_USER_DEVICE_RESET)
DBG_EQES = 0x50  # u64 event-queue entries posted
DBG_SGL_JOBS = 0x58  # u64 jobs whose buffers were hardware SGLs
DBG_AEQES = 0x60  # u64 async-event-queue entries posted (queue errors, overflows)
# The window's one writable register, for witnesses of a driver's error paths: a 32-bit store of
# AEQE type | queue << 16 makes the function do what it does when that overflow happens
# (docs/research/hisi-qm-zip.md §7.2): EQ overflow: one EQ-overflow AEQE; CQ overflow: the
# queue stops and a CQ-overflow AEQE names it. Other types are ignored.
DBG_INJECT = 0x80
# u32 per command: cmd | op << 8 | status << 12 | queue << 16. A ring of the last
# DBG_MB_LOG_LEN commands: command n (counting from 0 up to DBG_MB_COUNT) is in slot
# n % DBG_MB_LOG_LEN, so a reader that noted the count earlier finds exactly the newer ones.
DBG_MB_LOG = 0x100
DBG_MB_LOG_LEN = (DBG_SIZE - DBG_MB_LOG) // 4
_DBG_COUNTERS = {"jobs": DBG_JOBS, "trapped_reads": DBG_TRAPPED_READS,
                 "trapped_writes": DBG_TRAPPED_WRITES, "doorbells": DBG_DOORBELLS_POLLED,
                 "dma_faults": DBG_DMA_FAULTS, "msis": DBG_MSIS, "resets": DBG_RESETS,
                 "eqes": DBG_EQES, "sgl_jobs": DBG_SGL_JOBS, "aeqes": DBG_AEQES}


def debug_window(qm: QmFunction, messages: int = 0) -> bytes:
    win = bytearray(DBG_SIZE)
    _U32.pack_into(win, DBG_MAGIC_OFF, DBG_MAGIC)
    _U32.pack_into(win, DBG_VERSION_OFF, 3)  # 3: the mailbox log is a ring
    _U64.pack_into(win, DBG_MESSAGES, messages)
    for key, off in _DBG_COUNTERS.items():
        _U64.pack_into(win, off, qm.stats.get(key, 0))
    _U32.pack_into(win, DBG_MB_COUNT, qm.mb_count)
    recent = list(qm.mb_log)[-DBG_MB_LOG_LEN:]
    first = qm.mb_count - len(recent)
    for i, (cmd, op, queue, status) in enumerate(recent):
        _U32.pack_into(win, DBG_MB_LOG + 4 * ((first + i) % DBG_MB_LOG_LEN),
                       cmd | op << 8 | status << 12 | queue << 16)
    return bytes(win)


def decode_stats(window: bytes) -> dict[str, int]:
    """The counters of a BAR0 dump."""
    out = {k: int(_U64.unpack_from(window, off)[0]) for k, off in _DBG_COUNTERS.items()}
    out["messages"] = int(_U64.unpack_from(window, DBG_MESSAGES)[0])
    out["mailbox_commands"] = int(_U32.unpack_from(window, DBG_MB_COUNT)[0])
    return out


def decode_mailbox_log(window: bytes, since: int = 0) -> list[tuple[str, int, int, int]]:
    """(command name, op, queue, status) for each logged mailbox command in a BAR0 dump, oldest
    first, from command number `since` (a DBG_MB_COUNT read earlier) where the ring still has it."""
    count = _U32.unpack_from(window, DBG_MB_COUNT)[0]
    out = []
    for n in range(max(since, count - DBG_MB_LOG_LEN), count):
        v = _U32.unpack_from(window, DBG_MB_LOG + 4 * (n % DBG_MB_LOG_LEN))[0]
        cmd = v & 0xFF
        out.append((L.MB_CMD_NAMES.get(cmd, f"cmd{cmd:#x}"), v >> 8 & 0xF, v >> 16,
                    v >> 12 & 0xF))
    return out


# -- capabilities -----------------------------------------------------------------------------
def capability_registers(revision: int, sq_depth: int, cq_depth: int,
                         isolation: bool = False) -> dict[int, int]:
    """BAR2 capability registers (§8, §9): none on V2 (they read as 0), the V3 table on V3."""
    if revision < L.QM_HW_V3:
        return {}
    return {
        L.QM_QUE_ISO_CFG_V: int(isolation),
        L.QM_FUNC_CAPS_REG: L.MODEL_CAP_VER | L.MODEL_FUNC_CAPS,
        L.QM_XEQ_DEPTH_CAP: L.V2_XEQ_DEPTH,  # the V3 value is the same
        L.QM_QP_DEPTH_CAP: cq_depth << 16 | sq_depth,
        L.QM_EQ_IRQ_TYPE_CAP: L.V3_EQ_IRQ,
        L.QM_AEQ_IRQ_TYPE_CAP: L.V3_AEQ_IRQ,
        L.QM_ABN_IRQ_TYPE_CAP: L.V3_ABN_IRQ,
        L.QM_PF2VF_IRQ_TYPE_CAP: L.V3_PF2VF_IRQ,
        L.QM_IRQ_NUM_CAP: L.V3_IRQ_NUM,
        **L.ZIP_V3_CAPS,
    }


# -- jobs ---------------------------------------------------------------------------------------
class _BadSgl(Exception):
    """A hardware SGL the model cannot walk (reported as a malformed request)."""


class ZipJobs:
    """Executes ZIP SQEs for a `QmFunction`: decodes the SQE, reaches its buffers (flat or
    hardware SGL, §10), runs the `DeflateUnit`, writes the results into the SQE slot."""

    def __init__(self, dma: Dma, level: int = 6, codec: str | None = None) -> None:
        self.dma = dma
        self.unit = DeflateUnit(level, codec)
        self.stats: dict[str, int] = {"dma_faults": 0, "sgl_jobs": 0}  # shared with the QM's
        # (dw7, dw9, the queue's alg) -> (compress?, alg, wbits) of a well-formed flat stateless
        # SQE of that shape, or False for any other (stateful, SGL, malformed): a client sends
        # the same few shapes over and over, so each is decoded once (`_execute`).
        self._shapes: dict[tuple[int, int, int], tuple[bool, int, int] | bool] = {}
        self._kept: dict[tuple[int, int, int, int], tuple[memoryview, memoryview]] = {}  # `_keep`

    KEPT_MAX = 16  # view pairs `_execute` keeps (a client's pieces in use; more: all dropped)

    def reset(self) -> None:
        self.drop_views()
        self.unit.reset()

    def __call__(self, q: QueueState, sq: memoryview, off: int) -> int | None:
        w = _SQE_UNPACK(sq, off)
        self.write_result(sq, off, w, self._execute(q, w))
        return None

    @staticmethod
    def write_result(sq: memoryview, off: int, w: tuple[int, ...], res: JobResult) -> None:
        """The results into the SQE slot in place (dw0..3, ctx_dw0's state, dw30/31)."""
        _RES_PACK(sq, off, res.consumed, res.produced, 0,
                  (res.status & _ST_MASK) | (_ST_LAST if res.last else 0))
        dw = w[_DW_CTX0]
        if dw & _CTX_ST_MASK != res.ctx_st:  # (ctx_dw1/2 are left as they are)
            _U32.pack_into(sq, off + _CTX0_OFF, (dw & ~_CTX_ST_MASK) | res.ctx_st)
        _ISIZE_SUM_PACK(sq, off + _ISIZE_OFF, res.isize & 0xFFFF_FFFF, res.checksum & 0xFFFF_FFFF)

    @staticmethod
    def malformed(q: QueueState, w: tuple[int, ...]) -> bool:
        """An SQE the engine refuses (STATUS_BAD_REQUEST) before touching memory."""
        dw7, dw9 = w[L.DW_IN_SGE_FLAGS], w[L.DW_REQ]
        return (dw9 & 0xFF not in L.ALG_NAMES
                or dw7 >> L.SQE_TYPE_SHIFT not in (L.SQE_TYPE_V1, L.SQE_TYPE_V3)
                or dw9 >> L.SQE_BUF_TYPE_SHIFT & 0xF not in (L.SQE_BUF_FLAT, L.SQE_BUF_SGL)
                or dw9 >> L.SQE_WINDOW_SHIFT & 0xF not in WINDOW_WBITS
                or w[L.DW_INPUT_LENGTH] > L.HZ_MAX_SIZE or w[L.DW_DEST_AVAIL_OUT] > L.HZ_MAX_SIZE
                or q.alg not in (L.ZIP_QC_COMPRESS, L.ZIP_QC_DECOMPRESS))

    def _execute(self, q: QueueState, w: tuple[int, ...]) -> JobResult:
        shape = self._shapes.get((w[_DW7], w[_DW9], q.alg))
        if shape is None:
            shape = self._shape(q, w)
        in_len, avail = w[_DW_IN], w[_DW_AVAIL]
        if not shape or in_len > L.HZ_MAX_SIZE or avail > L.HZ_MAX_SIZE:
            return self._slow(q, w)
        # The common job (`_flat`, inline: one frame fewer per job): flat buffers, stateless
        # (a whole stream), well-formed.
        compress, alg, wbits = shape  # type: ignore[misc]  # (a shape, not True)
        key = (w[_DW_SRC_H] << 32 | w[_DW_SRC_L], in_len, w[_DW_DST_H] << 32 | w[_DW_DST_L], avail)
        views = self._kept.get(key)
        if views is None:
            try:
                views = self._keep(key)
            except DmaFault:
                self.stats["dma_faults"] += 1
                return JobResult(L.STATUS_DMA_FAULT)
        src, dst = views
        if compress:
            return self.unit.compress_stateless(alg, wbits, src if in_len else src[:0],
                                                dst if avail else dst[:0])
        return self.unit.decompress_stateless(alg, src if in_len else src[:0],
                                              dst if avail else dst[:0], wbits)

    def _shape(self, q: QueueState, w: tuple[int, ...]) -> tuple[bool, int, int] | bool:
        """Decode (and remember) the shape of an SQE for `_execute`."""
        if w[L.DW_INPUT_LENGTH] > L.HZ_MAX_SIZE or w[L.DW_DEST_AVAIL_OUT] > L.HZ_MAX_SIZE:
            # refused for its lengths, not its shape: remembered, the refusal would send every
            # later job of this shape the slow way (`_execute` checks lengths per job)
            return False
        dw7, dw9 = w[L.DW_IN_SGE_FLAGS], w[L.DW_REQ]
        shape: tuple[bool, int, int] | bool = False
        if not (self.malformed(q, w) or dw7 & L.SQE_STATEFUL
                or dw9 >> L.SQE_BUF_TYPE_SHIFT & 0xF != L.SQE_BUF_FLAT):
            shape = (q.alg == L.ZIP_QC_COMPRESS, dw9 & 0xFF,
                     WINDOW_WBITS[dw9 >> L.SQE_WINDOW_SHIFT & 0xF])
        if len(self._shapes) >= 256:  # a client making up shapes cannot grow it without end
            self._shapes.clear()
        self._shapes[(dw7, dw9, q.alg)] = shape
        return shape

    def _keep(self, key: tuple[int, int, int, int]) -> tuple[memoryview, memoryview]:
        """Views of a job's buffers in client memory, for `_execute`: key (source address,
        input length, destination address, output room), checked by the DMA table and kept
        until `drop_views`. A client sends job after job on the same pieces (a one-shot call's
        input and output), and taking the views again cost ~1 us per job. The device model
        drops them whenever a check could now say otherwise (an unmap, bus mastering off, a
        reset, close: `ZipModel._drop_rings`); more than KEPT_MAX pairs drops them all first.
        The source address must be valid even for an empty input (as on hardware)."""
        kept = self._kept
        if len(kept) >= self.KEPT_MAX:
            self.drop_views()
        saddr, n, daddr, avail = key
        src = self.dma.view(saddr, n or 1)
        try:
            dst = self.dma.view(daddr, avail or 1, write=True)
        except BaseException:
            src.release()
            raise
        views = kept[key] = (src, dst)
        return views

    def drop_views(self) -> None:
        for src, dst in self._kept.values():
            src.release()
            dst.release()
        self._kept.clear()

    def _slow(self, q: QueueState, w: tuple[int, ...]) -> JobResult:
        """Every other job: malformed ones, hardware SGLs, stream (stateful) jobs."""
        dw9 = w[L.DW_REQ]
        buf_type = dw9 >> L.SQE_BUF_TYPE_SHIFT & 0xF
        in_len, avail = w[L.DW_INPUT_LENGTH], w[L.DW_DEST_AVAIL_OUT]
        if self.malformed(q, w):
            return JobResult(L.STATUS_BAD_REQUEST)
        src_addr = w[L.DW_SRC_H] << 32 | w[L.DW_SRC_L]
        dst_addr = w[L.DW_DST_H] << 32 | w[L.DW_DST_L]
        try:
            if buf_type == L.SQE_BUF_SGL:
                return self._sgl_job(q, w, src_addr, dst_addr, in_len, avail)
            src = dst = None
            try:
                # The source address must be valid even for an empty input (as on hardware).
                src = self.dma.view(src_addr, max(in_len, 1))[:in_len]
                dst = self.dma.view(dst_addr, max(avail, 1), write=True)[:avail]
                return self._run(q, w, src, dst)
            finally:
                if src is not None:
                    src.release()
                if dst is not None:
                    dst.release()
        except DmaFault:
            self.stats["dma_faults"] += 1
            return JobResult(L.STATUS_DMA_FAULT)

    def _run(self, q: QueueState, w: tuple[int, ...], src: memoryview | bytes,
             dst: memoryview | bytearray) -> JobResult:
        dw7, dw9 = w[L.DW_IN_SGE_FLAGS], w[L.DW_REQ]
        alg = dw9 & 0xFF
        wbits = WINDOW_WBITS[dw9 >> L.SQE_WINDOW_SHIFT & 0xF]
        compress = q.alg == L.ZIP_QC_COMPRESS
        if not dw7 & L.SQE_STATEFUL:  # a stateless job is a whole stream (§10)
            if compress:
                return self.unit.compress_stateless(alg, wbits, src, dst)
            return self.unit.decompress_stateless(alg, src, dst, wbits)
        new = bool(dw7 & L.SQE_NEW_STREAM)
        ctx_addr = w[L.DW_CTX_ADDR_H] << 32 | w[L.DW_CTX_ADDR_L]
        self.dma.view(ctx_addr, 64, write=True).release()  # the context must be mapped
        if compress:
            return self.unit.compress_stateful(ctx_addr, new, alg, wbits, src, dst,
                                               bool(dw7 & L.SQE_FLUSH_FINISH),
                                               w[L.DW_CHECKSUM], w[L.DW_ISIZE])
        return self.unit.decompress_stateful(ctx_addr, new, alg, src, dst)

    # -- hardware SGLs (§10) ---------------------------------------------------------------
    def _sgl_job(self, q: QueueState, w: tuple[int, ...], src_sgl: int, dst_sgl: int,
                 in_len: int, avail: int) -> JobResult:
        """Gather the input, run, scatter the output: SGL segments are small pieces of memory
        the engine reads and writes once, so copies cost nothing worth a zero-copy view."""
        self.stats["sgl_jobs"] += 1
        try:
            src_segs = self._segments(src_sgl, w[L.DW_IN_SGE_FLAGS] & L.SGE_OFFSET_MASK, in_len)
            dst_segs = self._segments(dst_sgl, w[L.DW_OUT_SGE] & L.SGE_OFFSET_MASK, avail)
        except _BadSgl:
            return JobResult(L.STATUS_BAD_REQUEST)
        src = b"".join(self.dma.read(a, n) for a, n in src_segs)
        out = bytearray(avail)
        res = self._run(q, w, src, out)
        pos = 0
        for a, n in dst_segs:
            if pos >= res.produced:
                break
            k = min(n, res.produced - pos)
            self.dma.write(a, memoryview(out)[pos:pos + k])
            pos += k
        return res

    def _segments(self, sgl: int, skip: int, length: int) -> list[tuple[int, int]]:
        """(address, length) pieces of `length` bytes of an SGL chain's data after `skip`."""
        out: list[tuple[int, int]] = []
        chained = 0
        while length > 0:
            if not sgl or chained > L.SGL_MAX_CHAIN:
                raise _BadSgl  # the buffer is shorter than the SQE says
            chained += 1
            next_dma, _in_chain, count, capacity = L.SGL_HEADER.unpack(
                self.dma.read(sgl, L.SGL_HEADER.size))
            if count > max(capacity, 1) or count > 255:
                raise _BadSgl
            entries = self.dma.read(sgl + L.SGL_HEADER_SIZE, count * L.SGE_SIZE) if count \
                else b""
            for i in range(count):
                addr, _page_ctrl, n = L.SGE.unpack_from(entries, i * L.SGE_SIZE)
                if skip >= n:
                    skip -= n
                    continue
                take = min(n - skip, length)
                if take:
                    out.append((addr + skip, take))
                length -= take
                skip = 0
                if length == 0:
                    break
            sgl = next_dma
        return out

    def abandon(self, iova: int, size: int) -> None:
        """The client unmaps [iova, iova+size): forget stream state whose context lived there
        (and every kept view: `_keep`)."""
        self.drop_views()
        for key in [k for k in self.unit.streams if iova <= k < iova + size]:
            del self.unit.streams[key]


# What a worker hands back: the job's result, and for the first job of a compression stream,
# (context address, the stream to keep or None).
_Done = tuple[JobResult, tuple[int, Stream | None] | None]


class NullJobs(ZipJobs):
    """The null executor (`executor=null`): every SQE completes at once as a successful
    stateless job that consumed its whole input and produced nothing, without reading or
    writing its buffers. For measuring a driver alone (benchmarks/zip_bench.py --driver): the
    device's work no longer hides the driver's cost."""

    def __call__(self, q: QueueState, sq: memoryview, off: int) -> None:
        in_len = _U32.unpack_from(sq, off + 4 * L.DW_INPUT_LENGTH)[0]
        _RES.pack_into(sq, off, in_len, 0, 0, L.STATUS_OK | L.STATUS_LAST_BLOCK)


class ThreadedJobs(ZipJobs):
    """The zlib executor with worker threads (`workers=N`, N > 1). Taken (PENDING) and run on
    one of N threads, so jobs of one queue, or of several, are compressed at once on several
    cores (zlib releases the GIL): flat-buffer stateless jobs and first jobs of compression
    streams (which depend on no earlier job: a client cuts a large input into such pieces, as
    pigz does) that are larger than INLINE_MAX, or of PIECE_MIN or more with more SQEs waiting
    behind them, or behind a job in flight. Results and CQEs are posted from `collect()` on the
    model's thread, in submission order per queue, as `QmFunction.complete` wants them.
    Everything else runs inline as in `ZipJobs`, after the queue's jobs in flight (BUSY until
    then): a lone small job pays no thread hand-off, and the later jobs of a stream (keyed by
    context) stay in order. Only the model's thread touches DMA maps, rings and stream state
    (a first job's stream is recorded at collect time); a worker sees two buffer views."""

    INLINE_MAX = 64 << 10
    PIECE_MIN = 16 << 10
    SATURATED_WAIT_S = 0.05

    def __init__(self, dma: Dma, level: int = 6, workers: int = 2,
                 codec: str | None = None) -> None:
        super().__init__(dma, level, codec)
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None  # started on the first big job
        # per queue: (queue, slot, SQE words, future, src view, dst view), oldest first
        self.inflight: dict[int, deque[tuple[QueueState, int, tuple[int, ...], Future[_Done],
                                             memoryview, memoryview]]] = {}
        self.qm: QmFunction | None = None
        # Counted up by a worker as it finishes a job (`watch`): what the model's thread sleeps
        # on while the workers are busy (one wait on fds, no waiter objects per future). Made with
        # the first job handed to a worker, closed by `close`.
        self._done_fd = -1
        # Readable while the server has messages or connections waiting (-1: none known): a
        # sleep while every worker is busy ends for them too, not only when a job finishes.
        self.messages_fd: Callable[[], int] = lambda: -1

    def __call__(self, q: QueueState, sq: memoryview, off: int) -> int | None:
        w = _SQE_UNPACK(sq, off)
        mine = self.inflight.get(q.qn)
        in_len = w[_DW_IN]
        if not mine and in_len < self.PIECE_MIN:
            # A small job with nothing of its queue in flight runs inline whatever its kind
            # (the test below would say so too): decided before the flags and `malformed`,
            # as a one-shot call's job is this one (~150 bytecodes less per job).
            self.write_result(sq, off, w, self._execute(q, w))
            return None
        dw7, dw9 = w[L.DW_IN_SGE_FLAGS], w[L.DW_REQ]
        first = dw7 & (L.SQE_STATEFUL | L.SQE_NEW_STREAM) == L.SQE_STATEFUL | L.SQE_NEW_STREAM \
            and q.alg == L.ZIP_QC_COMPRESS
        if ((dw7 & L.SQE_STATEFUL and not first)
                or dw9 >> L.SQE_BUF_TYPE_SHIFT & 0xF != L.SQE_BUF_FLAT or self.malformed(q, w)
                or not (mine or in_len > self.INLINE_MAX or (
                    in_len >= self.PIECE_MIN and (q.tail - q.head) % q.sq_depth > 1))):
            if mine:
                return BUSY  # after the jobs before it
            self.write_result(sq, off, w, self._execute(q, w))
            return None
        avail = w[L.DW_DEST_AVAIL_OUT]
        src = dst = None
        try:
            src = self.dma.view(w[L.DW_SRC_H] << 32 | w[L.DW_SRC_L], max(in_len, 1))[:in_len]
            dst = self.dma.view(w[L.DW_DST_H] << 32 | w[L.DW_DST_L], max(avail, 1),
                                write=True)[:avail]
            if first:  # the context must be mapped (its state stays here, keyed by address)
                self.dma.view(w[L.DW_CTX_ADDR_H] << 32 | w[L.DW_CTX_ADDR_L], 64,
                              write=True).release()
        except DmaFault:
            for v in (src, dst):
                if v is not None:
                    v.release()
            if mine:
                return BUSY
            self.stats["dma_faults"] += 1
            self.write_result(sq, off, w, JobResult(L.STATUS_DMA_FAULT))
            return None
        if self._pool is None:
            # Imported here: a model that never gets a big stateless job (a small file, a
            # stream) boots without concurrent.futures (~3 ms of the CLI's critical path).
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="zip-engine",
                                            initializer=self._pin, initargs=(itertools.count(),))
        fut = self._pool.submit(self._work, q, w, src, dst, first)
        self.watch(fut)
        self.inflight.setdefault(q.qn, deque()).append((q, off // q.sqe_size, w, fut, src, dst))
        return PENDING

    def _pin(self, seq: itertools.count[int]) -> None:
        """A new worker thread binds itself to one CPU when the workers are at least as many
        as the CPUs this process may use (one each, round robin). Busy workers never sleep,
        so they never pass through the scheduler's wake-up placement, and its periodic load
        balancing, weighing our whole process group as one, left both on one CPU about half of
        the time on a loaded 2-core machine (a 200 MB CLI compress: 14.7 s against 11.8 s
        pinned, pigz 9.9 s, load 5-6). With more CPUs than workers the scheduler keeps the
        choice (an idle CPU pulls a waiting task)."""
        try:
            cpus = sorted(os.sched_getaffinity(0))
            if self.workers >= len(cpus) > 1:
                os.sched_setaffinity(0, {cpus[next(seq) % len(cpus)]})
        except OSError:  # (a CPU taken offline meanwhile, a sandbox): unbound, as before
            pass

    def watch(self, fut: Future[Any]) -> None:
        """Count `fut`'s end on the eventfd the model's thread sleeps on (`_wait_for_change`)."""
        if self._done_fd < 0:
            self._done_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        fut.add_done_callback(self._finished)

    def _finished(self, _fut: Future[Any]) -> None:
        try:
            os.eventfd_write(self._done_fd, 1)
        except OSError:  # the counter full: a wake-up is due anyway
            pass

    def _work(self, q: QueueState, w: tuple[int, ...], src: memoryview, dst: memoryview,
              first: bool) -> _Done:
        """A job on a worker thread (no shared state touched)."""
        if not first:
            return self._run(q, w, src, dst), None
        dw7, dw9 = w[L.DW_IN_SGE_FLAGS], w[L.DW_REQ]
        res, st = self.unit.compress_first(dw9 & 0xFF,
                                           WINDOW_WBITS[dw9 >> L.SQE_WINDOW_SHIFT & 0xF],
                                           src, dst, bool(dw7 & L.SQE_FLUSH_FINISH))
        return res, (w[L.DW_CTX_ADDR_H] << 32 | w[L.DW_CTX_ADDR_L], st)

    def collect(self, wait_s: float = 0.0) -> int:
        """Post the finished jobs (a queue's done prefix); with `wait_s` and nothing to post,
        first sleep (`_wait_for_change`: the model's thread sleeps instead of spinning on the
        cores the workers need). Returns how many were posted."""
        if not self.inflight:
            return 0
        if wait_s:
            self._wait_for_change(wait_s)
        posted = 0
        dropped = False
        for qn in list(self.inflight):
            jobs = self.inflight[qn]
            if not jobs[0][3].done():
                continue
            slots: list[int] = []
            q = jobs[0][0]
            try:
                sq = self.dma.view(q.sq_base, q.sq_depth * q.sqe_size, write=True)
            except DmaFault:
                sq = None
            try:
                while jobs and jobs[0][3].done():
                    q, slot, w, fut, src, dst = jobs.popleft()
                    src.release()
                    dst.release()
                    if slot < 0:
                        dropped = True
                        continue  # cut off (`cut_off`): its work is dropped unposted
                    res, stream = self._result(fut)
                    if stream is not None:
                        self.unit.keep_first(*stream)
                    if sq is not None:
                        self.write_result(sq, slot * q.sqe_size, w, res)
                        slots.append(slot)
            finally:
                if sq is not None:
                    sq.release()
            if not jobs:
                del self.inflight[qn]
            if slots and self.qm is not None:
                self.qm.complete(q, slots)
                posted += len(slots)
        if dropped:
            self.dma.reap()  # the cut-off mappings its views held go now, not at a next message
        return posted

    def _wait_for_change(self, idle_s: float) -> None:
        """Sleep until this thread has something to do: the oldest job of a queue finished (it
        can be posted), or a worker may be idle (a doorbell may bring it work: look again
        within `idle_s`). While every worker has a job, nothing a doorbell brings could start
        sooner, so the sleep lasts until a job finishes or a message or connection arrives
        (`messages_fd`), at most SATURATED_WAIT_S (a mapped doorbell of another queue, e.g. a
        small job the model's thread could run, waits that long at most). Each wake-up of
        this thread costs ~0.1 ms of a core the workers need (measured: a 1 MiB job takes
        ~30 ms; a 10 ms bound woke it ~3 times more per job than the jobs' ends), and spinning
        while a later job had finished before the oldest took a whole core."""
        try:
            os.eventfd_read(self._done_fd)  # ends seen below need no wake-up
        except BlockingIOError:
            pass
        if any(d[0][3].done() for d in self.inflight.values() if d):
            return
        # The executor starts jobs in submission order: the running ones are each queue's
        # oldest unfinished.
        k = self.workers
        busy = sum(1 for d in self.inflight.values()
                   for e in itertools.islice(d, 2 * k) if not e[3].done())
        fds = [self._done_fd]
        wait_s = idle_s
        if busy >= k:
            wait_s = self.SATURATED_WAIT_S
            fd = self.messages_fd()
            if fd >= 0:
                fds.append(fd)
        # (a process with many DMA maps holds an fd per map: wait_readable takes any number)
        sc.wait_readable(fds, wait_s)

    @staticmethod
    def _result(fut: Future[_Done]) -> _Done:
        try:
            return fut.result()
        except Exception:  # a bug in a job must not take the model down: the job fails
            return JobResult(L.STATUS_BAD_DATA), None

    def drain(self, qn: int | None = None) -> None:
        """Wait for the jobs in flight (of queue `qn`, or all) and drop them unposted: the
        queue stopped or restarted, the device reset, or the client unmaps memory they use."""
        if not self.inflight:  # (no pool started: nothing in flight, nothing to import)
            return
        from concurrent.futures import wait as futures_wait

        for n in [qn] if qn is not None else list(self.inflight):
            for _q, _slot, _w, fut, src, dst in self.inflight.pop(n, ()):
                futures_wait([fut])
                src.release()
                dst.release()

    def settle(self) -> None:
        """Finish and post every job in flight (before memory goes away). It sleeps on the
        jobs alone: the server's messages, which end `collect`'s sleep (`messages_fd`), wait
        for this (an unmap being handled), so waking for them would spin until the jobs end."""
        if not self.inflight:
            return
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as futures_wait

        while self.inflight:
            futures_wait([d[0][3] for d in self.inflight.values()], return_when=FIRST_COMPLETED)
            self.collect()

    def cut_off(self) -> None:
        """Bus mastering went off: the device may not touch the client's memory any more, but a
        job on a worker cannot be stopped (zlib and libdeflate run to the end of the call). Its
        buffers are cut from the client's memory (`ClientMemory.cut_off`: its views now reach
        zero pages, later accesses the client's memory as before), and it is kept in flight
        marked to be dropped unposted (slot -1): no byte of its output and no CQE reaches the
        client, even if bus mastering comes back before it ends; the queue's later jobs still
        wait behind it, in order. A job already finished is dropped the same way (posting it
        would be a write after the fact)."""
        spans: list[tuple[int, int]] = []
        for qn, jobs in self.inflight.items():
            cut: deque[tuple[QueueState, int, tuple[int, ...], Future[_Done], memoryview,
                             memoryview]] = deque()
            for q, slot, w, fut, src, dst in jobs:
                if slot >= 0:
                    spans.append((w[L.DW_SRC_H] << 32 | w[L.DW_SRC_L], len(src)))
                    spans.append((w[L.DW_DST_H] << 32 | w[L.DW_DST_L], len(dst)))
                cut.append((q, -1, w, fut, src, dst))
            self.inflight[qn] = cut
        if spans:
            self.dma.cut_off(spans)

    def reset(self) -> None:
        self.drain()
        super().reset()

    def abandon(self, iova: int, size: int) -> None:
        self.settle()
        super().abandon(iova, size)

    def close(self) -> None:
        self.drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._done_fd >= 0:
            os.close(self._done_fd)
            self._done_fd = -1


EXECUTORS = {"zlib": ZipJobs, "null": NullJobs}


def zip_function(dma: Dma, *, revision: int = L.QM_HW_V3, qp_base: int = 0, qp_num: int = 2,
                 sq_depth: int = 1024, cq_depth: int = 1024, level: int = 6,
                 isolation: bool = False, executor: str = "zlib", workers: int = 1,
                 notify: Callable[[int], bool] | None = None,
                 execute: Execute | None = None,
                 codec: str | None = None) -> tuple[QmFunction, ZipJobs]:
    """A ZIP function's device side, without a server (tests drive it directly). `executor`
    names the model's own engine (`EXECUTORS`), `workers` > 1 gives the zlib one worker
    threads (`ThreadedJobs`: then call `jobs.collect()` after `qm.process()`); `execute`
    replaces it as the executor of SQEs (the broker's virtual functions); `codec` is the
    engine's for whole-buffer jobs (`_deflate.codec_asked`)."""
    jobs = (ThreadedJobs(dma, level, workers, codec) if executor == "zlib" and workers > 1
            else EXECUTORS[executor](dma, level, codec))
    qm = QmFunction(dma, execute or jobs, revision=revision,
                    caps=capability_registers(revision, sq_depth, cq_depth, isolation),
                    eq_vector=L.V3_EQ_IRQ & 0xFFFF, aeq_vector=L.V3_AEQ_IRQ & 0xFFFF,
                    qp_base=qp_base, qp_num=qp_num, sq_depth=sq_depth, cq_depth=cq_depth,
                    notify=notify,
                    stats=jobs.stats)
    if isinstance(jobs, ThreadedJobs) and execute is None:
        jobs.qm = qm
        # jobs of an earlier life of a queue never complete into its new one
        qm.queue_started = qm.queue_stopped = lambda q: jobs.drain(q.qn)
    return qm, jobs


def default_workers() -> int:
    """Worker threads of the bundled model: one per usable core, at most 4."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


# -- the device ---------------------------------------------------------------------------------
class ZipModel(DeviceModel):
    """The ZIP VF served over vfio-user (see the module docstring)."""

    name = "zip"
    vendor_id = L.PCI_VENDOR_ID_HUAWEI
    device_id = L.ZIP_VF_DEVICE_ID
    revision = L.QM_HW_V3
    class_code = L.PCI_CLASS_PROCESSING_ACCEL
    subsystem_vendor_id = L.PCI_VENDOR_ID_HUAWEI
    subsystem_id = 0
    # A mapped doorbell is seen within microseconds while jobs flow. The longest spin window
    # (the server's adapts up to it: a client that keeps coming back after pauses of up to
    # this long finds the model awake); asleep, the first doorbell waits up to poll_idle_s.
    poll_spin_s = 0.2
    poll_idle_s = 0.0005
    polled = True
    # DBG_INJECT makes the function's EQ or CQ overflow on request: for the witnesses of a
    # driver's error paths, never for a function served to others (a broker's clients): False
    # makes BAR0 read-only (counters only), so a store there is refused as for any read-only BAR.
    fault_injection: ClassVar[bool] = True

    OPTIONS = "queues, depth, revision, level, doorbells, isolation, executor, workers, codec"

    def __init__(self, **options: str) -> None:
        super().__init__(**options)
        opts = dict(options)
        try:
            self.qp_num = int(opts.pop("queues", "2"), 0)
            self.depth = int(opts.pop("depth", "1024"), 0)
            rev = int(opts.pop("revision", str(L.QM_HW_V3)), 0)
            self.level = int(opts.pop("level", "6"), 0)
            self.isolation = bool(int(opts.pop("isolation", "0"), 0))
            self.workers = int(opts.pop("workers", str(default_workers())), 0)
        except ValueError as e:
            raise InvalidArgumentError(f"zip model: bad option value: {e}",
                                       hint="options are integers (0x.. for hex)") from None
        self.executor_name = opts.pop("executor", "zlib")
        if self.executor_name not in EXECUTORS:
            raise InvalidArgumentError(f"zip model: executor={self.executor_name!r} is not one",
                                       hint="give executor=zlib (compresses) or executor=null "
                                       "(completes jobs without doing them, for benchmarks)")
        try:
            self.codec = codec_asked(opts.pop("codec", None))
        except ValueError as e:
            raise InvalidArgumentError(f"zip model: {e}",
                                       hint="libdeflate (the default when installed) or libz "
                                       "(zlib's own output)") from None
        self.doorbells = opts.pop("doorbells", "mmap")
        if self.doorbells not in ("mmap", "trap"):
            raise InvalidArgumentError(f"zip model: doorbells={self.doorbells!r} is not a mode",
                                       hint="give doorbells=mmap or doorbells=trap")
        if rev not in (L.QM_HW_V2, L.QM_HW_V3):
            raise InvalidArgumentError(f"zip model: revision {rev:#x} is not modelled",
                                       hint=f"give revision={L.QM_HW_V2:#x} or {L.QM_HW_V3:#x}")
        if self.isolation and rev < L.QM_HW_V3:
            raise InvalidArgumentError("zip model: doorbell isolation is a V3 feature",
                                       hint=f"give revision={L.QM_HW_V3:#x} with isolation=1")
        if not 1 <= self.qp_num <= 64:
            raise InvalidArgumentError(f"zip model: {self.qp_num} queues is out of range",
                                       hint="give queues=1..64")
        if not 1 <= self.workers <= 64:
            raise InvalidArgumentError(f"zip model: workers={self.workers} is out of range",
                                       hint="give workers=1..64 (1: jobs run on the model's "
                                       "thread)")
        if not -1 <= self.level <= 9:
            raise InvalidArgumentError(f"zip model: level {self.level} is out of range",
                                       hint="give level=-1..9")
        if opts:
            raise InvalidArgumentError(f"zip model: unknown option(s) {', '.join(sorted(opts))}",
                                       hint=f"known: {self.OPTIONS}")
        self.revision = rev  # type: ignore[misc]  # instance override of the class default
        self.qm: QmFunction | None = None
        self.jobs: ZipJobs | None = None
        self._bells: list[tuple[Any, int | None]] = []  # (ctypes cell, queue or None)
        self._last: list[int] = []
        # queue -> views of its SQ and CQ rings, kept while the queue runs and the client's
        # memory and bus mastering stay as they are (`_rings`): not made again on every pass
        self._views: dict[int, tuple[memoryview, memoryview]] = {}
        # A poll where no doorbell word moved and no SQE was left waiting is the doorbell loads
        # and compares only (`poll`); anything else that can make work (a trapped write: a
        # doorbell or a mailbox command; a reset) sets this.
        self._recheck = True
        # `poll`'s quick pass: the one doorbell word (no isolation; None otherwise) and the
        # jobs in flight on the workers (`ThreadedJobs.inflight`, or an empty dict for ever)
        self._cell: Any = None
        self._inflight: dict[int, Any] = {}

    # -- description ------------------------------------------------------------------------
    @property
    def msi_vectors(self) -> int:
        return L.V3_MSI_VECTORS if self.revision >= L.QM_HW_V3 else L.V2_MSI_VECTORS

    def regions(self) -> list[RegionSpec]:
        mapped = self.doorbells == "mmap"
        regions = [
            RegionSpec(DBG_BAR, DBG_SIZE, writable=self.fault_injection),  # (DBG_INJECT only)
            RegionSpec(L.QM_BAR, L.QM_VF_BAR_SIZE, mem64=True,
                       mmap_areas=() if self.isolation or not mapped else
                       ((L.QM_DOORBELL_SQ_CQ_BASE_V2, 0x1000),)),
        ]
        if self.isolation:
            size = 1 << (self.qp_num * L.QM_QP_DB_INTERVAL - 1).bit_length()
            areas = tuple((qn * L.QM_QP_DB_INTERVAL + L.QM_DOORBELL_SQ_CQ_BASE_V2, 0x1000)
                          for qn in range(self.qp_num)) if mapped else ()
            regions.append(RegionSpec(L.QM_DB_BAR, size, mem64=True, mmap_areas=areas))
        return regions

    def irq_counts(self) -> dict[int, int]:
        return {VFIO_PCI_MSI_IRQ_INDEX: self.msi_vectors}

    def build_config_space(self) -> bytearray:
        cfg = self.config_builder()
        cfg.add_msi(vectors=self.msi_vectors)
        return cfg.build()

    # -- life -----------------------------------------------------------------------------
    def setup(self) -> None:
        self.qm, self.jobs = zip_function(
            self.dma, revision=self.revision, qp_num=self.qp_num, sq_depth=self.depth,
            cq_depth=self.depth, level=self.level, isolation=self.isolation,
            executor=self.executor_name, workers=self.workers, notify=self.notify,
            execute=self.executor(), codec=self.codec)
        if self.doorbells == "mmap":
            if self.isolation:
                self._bells = [(self.region_u64(L.QM_DB_BAR, qn * L.QM_QP_DB_INTERVAL
                                                + L.QM_DOORBELL_SQ_CQ_BASE_V2), qn)
                               for qn in range(self.qp_num)]
            else:
                self._bells = [(self.region_u64(L.QM_BAR, L.QM_DOORBELL_SQ_CQ_BASE_V2), None)]
        if len(self._bells) == 1 and self._bells[0][1] is None:
            self._cell = self._bells[0][0]
        if isinstance(self.jobs, ThreadedJobs):
            self.jobs.messages_fd = self.messages_fd
            self._inflight = self.jobs.inflight  # (the same dict for the model's life)
        self.qm.forget_doorbell = self._forget_doorbell
        self.qm.cq_rearm = self.doorbells == "trap"  # every store seen: the c_flag re-arm
        self.qm.rings = self._rings
        started, stopped = self.qm.queue_started, self.qm.queue_stopped

        def queue_started(q: QueueState) -> None:
            self._drop_ring(q.qn)
            started(q)

        def queue_stopped(q: QueueState) -> None:
            self._drop_ring(q.qn)
            stopped(q)

        self.qm.queue_started, self.qm.queue_stopped = queue_started, queue_stopped
        self.qm.cq_loaded = lambda q: self._drop_ring(q.qn)
        self._idle_bells()

    def executor(self) -> Execute | None:
        """What executes the SQEs: None for the model's own engine (`ZipJobs`, zlib). A
        subclass that presents the function to a client and runs its jobs elsewhere (the
        broker) returns its own."""
        return None

    def _rings(self, q: QueueState) -> tuple[memoryview, memoryview]:
        views = self._views.get(q.qn)
        if views is None:
            sq = self.dma.view(q.sq_base, q.sq_depth * q.sqe_size, write=True)
            try:
                cq = self.dma.view(q.cq_base, q.cq_depth * L.CQE_SIZE, write=True)
            except BaseException:
                sq.release()
                raise
            views = self._views[q.qn] = (sq, cq)
        return views

    def _drop_ring(self, qn: int) -> None:
        for view in self._views.pop(qn, ()):
            view.release()

    def _drop_rings(self) -> None:
        for qn in list(self._views):
            self._drop_ring(qn)
        if self.jobs is not None:
            self.jobs.drop_views()  # (the same events end the buffer views `_execute` keeps)

    def _idle_bells(self) -> None:
        for cell, _ in self._bells:
            cell.value = IDLE_DOORBELL
        self._last = [IDLE_DOORBELL] * len(self._bells)

    def _forget_doorbell(self, qn: int) -> None:
        for i, (cell, bell_qn) in enumerate(self._bells):
            if bell_qn is None or bell_qn == qn:
                cell.value = IDLE_DOORBELL
                self._last[i] = IDLE_DOORBELL

    def _qm(self) -> QmFunction:
        assert self.qm is not None, "setup() has not run"
        return self.qm

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        if index == DBG_BAR:
            win = debug_window(self._qm(), self.host_stats()["messages"])
            return win[offset:offset + size]
        if index == L.QM_BAR:
            return self._qm().read(offset, size)
        return bytes(size)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        self._recheck = True
        if index == L.QM_BAR:
            self._qm().write(offset, data)
        elif index == DBG_BAR and offset == DBG_INJECT and len(data) == 4 and \
                self.fault_injection:
            v = _U32.unpack(data)[0]
            self._qm().inject_overflow(v & 0xFFFF, v >> 16)
        elif index == L.QM_DB_BAR and self.isolation:  # a trapped per-queue doorbell page
            qn, off = divmod(offset, L.QM_QP_DB_INTERVAL)
            if off == L.QM_DOORBELL_SQ_CQ_BASE_V2 and len(data) == 8:
                self._qm().doorbell(_U64.unpack(data)[0], qn)

    def poll(self) -> bool:
        cell = self._cell
        if cell is not None and not self._recheck and not self._inflight:
            # The common pass, in few steps (a one-shot call waits on it): one doorbell word
            # (no isolation), nothing else that can have made work (no trapped write, no reset,
            # no SQE left waiting: `_recheck` is clear), no jobs on the workers. Unmoved: idle.
            v = cell.value
            last = self._last
            if v == last[0]:
                return False
            last[0] = v
            qm: QmFunction = self.qm  # type: ignore[assignment]  # (set with `_cell`)
            qm.stats["doorbells"] += 1
            # Only the queue the value names can have new SQEs (`process` for it alone).
            q = qm.rung(v)
            if q is None:
                return False
            views = self._views.get(q.qn)
            if views is not None and (q.tail - q.head) % q.sq_depth == 1 and \
                    qm.execute_run is None:
                taken = qm.process_one(q, *views)  # (no c_flag re-arm with mapped doorbells)
            else:
                taken = qm.process_queue(q, qm.JOB_BUDGET)
            if q.head != q.tail or self._inflight:
                # SQEs left for later (budget, BUSY), or jobs handed to the workers: the full
                # pass next
                self._recheck = True
            return taken > 0
        return self._poll()

    def _poll(self) -> bool:
        qm = self.qm
        assert qm is not None, "setup() has not run"
        last = self._last
        moved = self._recheck
        for i, (cell, qn) in enumerate(self._bells):
            v = cell.value
            if v != last[i]:
                last[i] = v
                qm.stats["doorbells"] += 1
                # (a CQ doorbell, rung after each reap, makes no work: no pass for it)
                if qm.doorbell(v, qn):
                    moved = True
        worked = False
        if moved:
            worked = qm.process() > 0
            self._recheck = qm.pending()  # SQEs left for later (budget, BUSY): look again
        if self._inflight:
            jobs = self.jobs
            assert isinstance(jobs, ThreadedJobs)
            # Jobs on the workers: sleep briefly on the oldest rather than spin (the workers
            # need the cores), and count as busy so the server keeps polling.
            posted = jobs.collect(0 if worked else self.poll_idle_s)
            if posted:
                qm.process()  # jobs held back (BUSY) behind them
                self._recheck = qm.pending()
            return True
        return worked

    def reset(self) -> None:
        self._drop_rings()
        self._recheck = True
        qm = self._qm()
        qm.reset()
        assert self.jobs is not None
        self.jobs.reset()
        qm.stats["resets"] += 1
        self._idle_bells()

    def on_dma_unmap(self, iova: int, size: int) -> None:
        assert self.jobs is not None
        # Jobs on the workers are finished and posted first (through the ring views, which that
        # may take again), then every view goes: taken again on the next pass, if still mapped.
        self.jobs.abandon(iova, size)
        self._drop_rings()

    def config_write(self, offset: int, data: bytes) -> None:
        super().config_write(offset, data)
        if not self.bus_master_enabled():
            self._drop_rings()  # taking them again faults, as the device would
            if isinstance(self.jobs, ThreadedJobs):
                # Before the write is answered: a driver frees or reuses the buffers next.
                self.jobs.cut_off()

    def close(self) -> None:
        self._drop_rings()
        if isinstance(self.jobs, ThreadedJobs):
            self.jobs.close()  # its jobs drained and its worker threads ended
        if self.jobs is not None:
            self.jobs.unit.close()
        super().close()


MODEL = ZipModel
