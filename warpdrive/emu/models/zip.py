"""Device model of a HiSilicon ZIP virtual function (QM V2 register layout), served over vfio-user.

This is the embedded default behind `warpdrive.open("emu:zip")` and `warpdrive.zip` when no ZIP
hardware is present. It speaks the register interface the kernel's hisi_qm driver and Linaro UADK
program (docs/research/hisi-qm-zip.md; the model's own transcription is `_zip_layout`, it never
imports a driver module) and does the real compression with Python's `zlib`.

What it models:
- PCI identity of a ZIP VF (19e5:a251, revision 0x21 = QM V2), MSI with two vectors (EQ 0, AEQ 1).
- BAR2 (64 KiB): the QM registers. Everything is trapped (REGION_READ/WRITE messages) except the
  page at 0x1000 holding the SQ/CQ doorbell, which is a sparse-mmap area backed by shared memory
  the model polls, so a client submits with a plain store and no message.
- The mailbox at 0x300 (busy bit 13, status bits 9-12): SQC_VFT_V2 (answers the VF's queue range in
  0x304/0x308), EQC, AEQC, SQC_BT, CQC_BT, per-queue SQC/CQC, reads back of each (op = 1),
  STOP_QP / FLUSH_QM (accepted; V3 commands). Contexts are read from client DMA memory and copied
  into the client's SQC/CQC tables, as the hardware's context cache would write them back.
- Queues: SQ of 128-byte ZIP SQEs, CQ of 16-byte CQEs with a phase bit, EQ entries + MSI vector 0
  when a CQ has its interrupt flag set and the EQ interrupt is unmasked (0x0c = 0).
- Jobs: raw deflate / zlib / gzip compression and decompression, stateless and stateful (stream)
  mode, flat buffers. The result words are written back into the SQE slot in place (consumed,
  produced, status, last-block bit, checksum, isize, ctx_dw0), then the CQE, phase word last.
- DMA outside the client's maps is reported in the SQE's status (`STATUS_DMA_FAULT`) like an
  IOMMU fault; it never crashes the model.
- BAR0 (4 KiB, read-only) is a model-only introspection window that real hardware does not have
  (drivers never touch it): counters and the log of mailbox commands, for tests. Layout: `DBG_*`.

What it assumes where the facts are UNCONFIRMED (the research document marks them so):
- **Doorbell as polled memory.** Real hardware latches every doorbell write; a polled word only
  shows the latest store. SQ and CQ doorbells (of every queue of a V2 function) share the register
  at 0x1000, so a later store can hide an earlier one. The model treats an SQ doorbell as
  level-triggered (work = tail - head mod depth, the tail being the last one seen for that queue)
  and ignores CQ doorbells for flow control: the driver never has more than depth-1 jobs
  un-reaped, so the CQ cannot overflow. The driver re-stores its SQ doorbell (same absolute tail:
  idempotent on hardware, UNCONFIRMED) after a CQ doorbell and while it waits for outstanding
  work, so a hidden SQ doorbell is always seen again. When a queue starts, the model writes a
  reserved command (15) into the word so a stale SQ doorbell from an earlier life of the queue is
  never taken for work.
- **Header/trailer split.** Software writes the zlib/gzip header (as UADK does) and points the
  SQE past it; for ZLIB/GZIP request types the engine produces the deflate body *and* the trailer
  (Adler-32 big endian / CRC-32 + ISIZE little endian) on the finishing job, and on decompression
  consumes and checks the trailer (status 0x10 on a mismatch). dw31 carries the running checksum
  and dw30 the running length, in and out, as UADK passes them.
- **Status codes** for corrupt data (0x03), malformed SQEs (0x04) and DMA faults (0x05) are this
  model's choice: the real codes are not published. Output larger than `dest_avail_out` is 0x0e
  and leaves stream state untouched, so the job can be resubmitted with more room.
- **Stream state** lives in the model keyed by the SQE's stream-context address, not inside the
  64 KiB context buffer (Python's zlib cannot serialise its state). The address must be mapped.
  Stateful decompression that fills the output reports ctx_st 0x02 (more output pending).
- **Compression level**: the hardware has one; the model uses zlib level `level` (option, default
  6). The 24 KiB window code maps to zlib's 16 KiB window.
- **Interrupts**: at most one EQ entry per CQ per poll round (coalesced); when the EQ is full the
  entry is dropped but the MSI is still raised (the driver checks its CQs on every interrupt).
- Not modelled: V1 doorbells, doorbell isolation (BAR4), SGL buffers, lz77/lz4 types, PF-only
  registers, PF<->VF messages, QoS, error injection beyond DMA faults.

Run it standalone: `warpdrive emu zip --socket PATH` (or `python -m warpdrive.emu zip ...`);
options (`--set key=value`): `queues` (default 2), `depth` (SQ/CQ depth, default 1024),
`revision` (0x21; 0x30 makes it report the V3 capability registers), `level` (zlib level).
"""

from __future__ import annotations

import struct
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...errors import InvalidArgumentError
from ..model import VFIO_PCI_MSI_IRQ_INDEX, DeviceModel, DmaFault, RegionSpec
from . import _zip_layout as L

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_CQE_BODY = struct.Struct("<IHHHHH")  # the CQE without w7: written before the phase word
_U16 = struct.Struct("<H")
_RES = struct.Struct("<4I")  # dw0..3
_TAIL = struct.Struct("<4I")  # dw28..31

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
DBG_MB_LOG = 0x100  # u32 per command: cmd | op << 8 | status << 12 | queue << 16
DBG_MB_LOG_LEN = (DBG_SIZE - DBG_MB_LOG) // 4


class Dma(Protocol):
    """What the engine needs of the framework's client-memory table (`ClientMemory`)."""

    def read(self, iova: int, size: int) -> bytes: ...

    def write(self, iova: int, data: bytes | bytearray | memoryview) -> None: ...

    def view(self, iova: int, size: int, write: bool = False) -> memoryview: ...


_WINDOW_WBITS = {L.WINDOW_4K: 12, L.WINDOW_8K: 13, L.WINDOW_16K: 14, L.WINDOW_24K: 14,
                 L.WINDOW_32K: 15}


@dataclass
class JobResult:
    status: int
    consumed: int = 0
    produced: int = 0
    last: bool = False
    checksum: int = 0
    isize: int = 0
    ctx_st: int = 0


@dataclass
class _Stream:
    """Stream (stateful) job state kept between SQEs of one stream."""

    compress: bool
    alg: int
    obj: Any  # zlib compressobj / decompressobj
    checksum: int
    isize: int = 0
    trailer: bytearray = field(default_factory=bytearray)
    body_done: bool = False
    done: bool = False


def _initial_checksum(alg: int) -> int:
    return 1 if alg == L.ALG_ZLIB else 0


def _update_checksum(alg: int, data: bytes | memoryview, value: int) -> int:
    if alg == L.ALG_ZLIB:
        return zlib.adler32(data, value)
    if alg == L.ALG_GZIP:
        return zlib.crc32(data, value)
    return 0


def _trailer(alg: int, checksum: int, isize: int) -> bytes:
    if alg == L.ALG_ZLIB:
        return checksum.to_bytes(4, "big")
    if alg == L.ALG_GZIP:
        return checksum.to_bytes(4, "little") + (isize & 0xFFFF_FFFF).to_bytes(4, "little")
    return b""


def _trailer_len(alg: int) -> int:
    return {L.ALG_ZLIB: 4, L.ALG_GZIP: 8}.get(alg, 0)


def _check_trailer(alg: int, trailer: bytes | bytearray, checksum: int, isize: int) -> bool:
    return bytes(trailer) == _trailer(alg, checksum, isize)


class DeflateUnit:
    """The compression engine: executes one SQE's request against input/output memory views.
    Stream state is kept here, keyed by the stream-context address."""

    MAX_STREAMS = 4096

    def __init__(self, level: int = 6) -> None:
        self.level = level
        self.streams: OrderedDict[int, _Stream] = OrderedDict()

    def reset(self) -> None:
        self.streams.clear()

    # -- stateless -------------------------------------------------------------------------
    def compress_stateless(self, alg: int, wbits: int, src: memoryview, dst: memoryview,
                           finish: bool) -> JobResult:
        n = len(src)
        if finish:
            # zlib writes the whole container; software owns the header, so skip it.
            if alg == L.ALG_ZLIB:
                full = zlib.compress(src, self.level, wbits)
                body = memoryview(full)[2:]
                checksum = int.from_bytes(full[-4:], "big")
            elif alg == L.ALG_GZIP:
                full = zlib.compress(src, self.level, 16 + wbits)
                body = memoryview(full)[10:]
                checksum = int.from_bytes(full[-8:-4], "little")
            else:
                full = zlib.compress(src, self.level, -wbits)
                body = memoryview(full)
                checksum = 0
        else:
            c = zlib.compressobj(self.level, zlib.DEFLATED, -wbits)
            body = memoryview(c.compress(src) + c.flush(zlib.Z_SYNC_FLUSH))
            checksum = _update_checksum(alg, src, _initial_checksum(alg))
        m = len(body)
        if m > len(dst):
            return JobResult(L.STATUS_DST_TOO_SMALL)
        dst[:m] = body
        status = L.STATUS_NEGACOMPRESS if m > n else L.STATUS_OK
        return JobResult(status, n, m, finish, checksum, n)

    def decompress_stateless(self, alg: int, src: memoryview, dst: memoryview) -> JobResult:
        d = zlib.decompressobj(-15)
        avail = len(dst)
        try:
            out = d.decompress(src, avail)
        except zlib.error:
            return JobResult(L.STATUS_BAD_DATA)
        m = len(out)
        dst[:m] = out
        checksum = _update_checksum(alg, out, _initial_checksum(alg))
        if not d.eof:
            if d.unconsumed_tail or m == avail:
                return JobResult(L.STATUS_DST_TOO_SMALL)
            # Input ended before the end of the stream: a partial result, no end flag.
            return JobResult(L.STATUS_OK, len(src), m, False, checksum, m)
        used = len(src) - len(d.unused_data)
        tlen = _trailer_len(alg)
        if tlen:
            trailer = d.unused_data[:tlen]
            if len(trailer) < tlen:
                return JobResult(L.STATUS_OK, len(src), m, False, checksum, m)
            if not _check_trailer(alg, trailer, checksum, m):
                return JobResult(L.STATUS_CRC_ERR, used, m, True, checksum, m)
            used += tlen
        return JobResult(L.STATUS_DECOMP_END, used, m, True, checksum, m)

    # -- stateful ---------------------------------------------------------------------------
    def _stream(self, key: int, new: bool, compress: bool, alg: int,
                wbits: int) -> _Stream | None:
        st = self.streams.get(key)
        if new or st is None:
            if not new:
                return None
            obj = (zlib.compressobj(self.level, zlib.DEFLATED, -wbits) if compress
                   else zlib.decompressobj(-15))
            st = _Stream(compress, alg, obj, _initial_checksum(alg))
            self.streams[key] = st
            while len(self.streams) > self.MAX_STREAMS:
                self.streams.popitem(last=False)
        else:
            self.streams.move_to_end(key)
        return st

    def compress_stateful(self, key: int, new: bool, alg: int, wbits: int, src: memoryview,
                          dst: memoryview, finish: bool, checksum_in: int,
                          isize_in: int) -> JobResult:
        st = self._stream(key, new, True, alg, wbits)
        if st is None or not st.compress or st.done:
            return JobResult(L.STATUS_BAD_REQUEST)
        n = len(src)
        if not new:  # the running values travel in the SQE (dw31/dw30)
            st.checksum, st.isize = checksum_in, isize_in
        # Work on a copy unless the output surely fits, so "too small" leaves the stream intact.
        sure = len(dst) >= n + (n >> 12) + (n >> 14) + 64
        obj = st.obj if sure else st.obj.copy()
        body = obj.compress(src) + obj.flush(zlib.Z_FINISH if finish else zlib.Z_SYNC_FLUSH)
        checksum = _update_checksum(alg, src, st.checksum)
        isize = (st.isize + n) & 0xFFFF_FFFF
        if finish:
            body += _trailer(alg, checksum, isize)
        m = len(body)
        if m > len(dst):
            return JobResult(L.STATUS_DST_TOO_SMALL, 0, 0, False, st.checksum, st.isize)
        dst[:m] = body
        st.obj, st.checksum, st.isize = obj, checksum, isize
        if finish:
            st.done = True
            self.streams.pop(key, None)
        status = L.STATUS_NEGACOMPRESS if m > n else L.STATUS_OK
        return JobResult(status, n, m, finish, checksum, isize)

    def decompress_stateful(self, key: int, new: bool, alg: int, src: memoryview,
                            dst: memoryview) -> JobResult:
        st = self._stream(key, new, False, alg, 15)
        if st is None or st.compress:
            return JobResult(L.STATUS_BAD_REQUEST)
        if st.done:
            return JobResult(L.STATUS_DECOMP_END, 0, 0, True, st.checksum, st.isize)
        n = len(src)
        avail = len(dst)
        out = b""
        used = 0
        rest: bytes | memoryview = src
        if not st.body_done:
            d = st.obj
            try:
                out = d.decompress(src, avail)
            except zlib.error:
                st.done = True
                return JobResult(L.STATUS_BAD_DATA, 0, 0, False, st.checksum, st.isize)
            dst[:len(out)] = out
            st.checksum = _update_checksum(alg, out, st.checksum)
            st.isize = (st.isize + len(out)) & 0xFFFF_FFFF
            if not d.eof:
                used = n - len(d.unconsumed_tail)
                more = len(out) == avail  # output full: more may be pending inside zlib
                return JobResult(L.STATUS_OK, used, len(out), False, st.checksum, st.isize,
                                 L.CTX_ST_DECOMPING_NO_SPACE if more else 0)
            st.body_done = True
            rest = d.unused_data
            used = n - len(rest)
        tlen = _trailer_len(alg)
        take = min(tlen - len(st.trailer), len(rest))
        st.trailer += bytes(rest[:take])
        used += take
        if len(st.trailer) < tlen:
            return JobResult(L.STATUS_OK, used, len(out), False, st.checksum, st.isize)
        st.done = True
        if tlen and not _check_trailer(alg, st.trailer, st.checksum, st.isize):
            return JobResult(L.STATUS_CRC_ERR, used, len(out), True, st.checksum, st.isize)
        return JobResult(L.STATUS_DECOMP_END, used, len(out), True, st.checksum, st.isize)


@dataclass
class _QueueState:
    qn: int
    sq_base: int = 0
    sq_depth: int = 0
    sqe_size: int = L.SQE_SIZE
    alg: int = 0  # SQC alg type: 0 compress, 1 decompress
    sqc: bytes = bytes(32)
    sqc_ok: bool = False
    cq_base: int = 0
    cq_depth: int = 0
    cq_phase: int = 1
    cq_irq: bool = False
    cqc: bytes = bytes(32)
    cqc_ok: bool = False
    head: int = 0  # next SQE the engine executes
    tail: int = 0  # last SQ tail seen in a doorbell
    cq_tail: int = 0
    cq_head: int = 0  # last CQ head seen (informational: see the module docstring)
    stopped: bool = False
    broken: str = ""  # the rings themselves faulted; the queue does nothing more

    @property
    def running(self) -> bool:
        return self.sqc_ok and self.cqc_ok and not self.stopped and not self.broken


@dataclass
class _EventQueue:
    base: int = 0
    depth: int = 0
    phase: int = 1
    tail: int = 0
    head: int = 0
    ctx: bytes = bytes(28)
    ok: bool = False


class QmFunction:
    """The device side of one QM V2 virtual function: register file, mailbox, contexts, queues
    and the ZIP engine. Plain methods, so it can be exercised without a server."""

    JOB_BUDGET = 256  # jobs per process() call, so the server keeps answering messages

    def __init__(self, dma: Dma, *, revision: int = L.QM_HW_V2, qp_base: int = 0,
                 qp_num: int = 2, sq_depth: int = 1024, cq_depth: int = 1024, level: int = 6,
                 notify: Callable[[int], bool] | None = None) -> None:
        if not 1 <= qp_num <= 1024:
            raise InvalidArgumentError(f"zip model: {qp_num} queues is out of range",
                                       hint="give queues=1..1024")
        for d in (sq_depth, cq_depth):
            if not 2 <= d <= 4096:  # power of two not required by the QM, but keep sane
                raise InvalidArgumentError(f"zip model: queue depth {d} is out of range",
                                           hint="give depth=2..4096")
        self.dma = dma
        self.revision = revision
        self.qp_base = qp_base
        self.qp_num = qp_num
        self.sq_depth_cap = sq_depth
        self.cq_depth_cap = cq_depth
        self.notify = notify or (lambda vector: False)
        self.engine = DeflateUnit(level)
        self.mb_log: list[tuple[int, int, int, int]] = []  # (cmd, op, queue, status)
        self.stats = {"jobs": 0, "trapped_reads": 0, "trapped_writes": 0, "doorbells": 0,
                      "dma_faults": 0, "msis": 0, "resets": 0}
        self.reset()

    # -- state -----------------------------------------------------------------------------
    def reset(self) -> None:
        self.regs: dict[int, int] = {
            L.QM_VF_AEQ_INT_MASK: 1, L.QM_VF_EQ_INT_MASK: 1, L.QM_IFC_INT_MASK: 1,
        }
        self.mailbox = bytearray(16)
        self.sqc_bt = 0
        self.cqc_bt = 0
        self.eq = _EventQueue()
        self.aeq = _EventQueue()
        self.queues = [_QueueState(i) for i in range(self.qp_num)]
        self.eq_pending = False
        self.aeq_pending = False
        self.engine.reset()

    def caps(self, offset: int) -> int | None:
        """Capability registers: V3 values on a V3 model; on V2 (which has none) the defaults the
        kernel assumes for V2, so a driver that reads them anyway sees consistent values."""
        v3 = self.revision >= L.QM_HW_V3
        table = {
            L.QM_FUNC_CAPS_REG: (L.QM_CAP_STOP_QP | L.QM_CAP_STOP_FUNC | 0x3) if v3 else 0,
            L.QM_XEQ_DEPTH_CAP: L.V2_XEQ_DEPTH,
            L.QM_QP_DEPTH_CAP: (self.cq_depth_cap << 16) | self.sq_depth_cap,
            L.QM_EQ_IRQ_TYPE_CAP: L.V2_EQ_IRQ,
            L.QM_AEQ_IRQ_TYPE_CAP: L.V2_AEQ_IRQ,
            L.QM_ABN_IRQ_TYPE_CAP: 0,
            L.QM_PF2VF_IRQ_TYPE_CAP: (L.QM_IRQ_TYPE_PRESENT | 2) if v3 else 0,
            L.QM_IRQ_NUM_CAP: 3 if v3 else L.V2_VF_IRQ_NUM,
        }
        return table.get(offset)

    # -- trapped register access -----------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        self.stats["trapped_reads"] += 1
        base = offset & ~3
        out = bytearray()
        for dw in range(base, offset + size, 4):
            out += _U32.pack(self._read32(dw))
        start = offset - base
        return bytes(out[start:start + size])

    def _read32(self, off: int) -> int:
        if L.QM_MB_CMD_SEND_BASE <= off < L.QM_MB_CMD_SEND_BASE + 16:
            return int(_U32.unpack_from(self.mailbox, off - L.QM_MB_CMD_SEND_BASE)[0])
        cap = self.caps(off)
        if cap is not None:
            return cap
        if off == L.QM_VF_EQ_INT_SOURCE:
            return int(self.eq_pending)
        if off == L.QM_VF_AEQ_INT_SOURCE:
            return int(self.aeq_pending)
        if off == L.QM_CACHE_WB_DONE:
            return 1
        if L.QM_EQC_DW0 <= off < L.QM_EQC_DW0 + 28:
            return int(_U32.unpack_from(self._eqc_bytes(self.eq), off - L.QM_EQC_DW0)[0])
        if L.QM_AEQC_DW0 <= off < L.QM_AEQC_DW0 + 28:
            return int(_U32.unpack_from(self._eqc_bytes(self.aeq), off - L.QM_AEQC_DW0)[0])
        return self.regs.get(off, 0)

    def write(self, offset: int, data: bytes) -> None:
        self.stats["trapped_writes"] += 1
        end = offset + len(data)
        mb = L.QM_MB_CMD_SEND_BASE
        if offset < mb + 16 and end > mb:
            lo, hi = max(offset, mb), min(end, mb + 16)
            self.mailbox[lo - mb:hi - mb] = data[lo - offset:hi - offset]
            # On x86 Linux writes the 16 bytes as four ascending dwords, busy dword first: the
            # command runs when the last dword lands (docs/research/hisi-qm-zip.md, section 4).
            if offset < mb + 16 <= end and self.mailbox[1] & (L.QM_MB_BUSY >> 8):
                self._mailbox_execute()
            return
        if offset == L.QM_DOORBELL_EQ_AEQ_BASE_V2 and len(data) == 8:
            self._eq_doorbell(_U64.unpack(data)[0])
            return
        if offset == L.QM_DOORBELL_SQ_CQ_BASE_V2 and len(data) == 8:
            # Reached only if a framework traps the doorbell page instead of applying the write
            # to the shared memory; treat it as latched.
            self.doorbell(_U64.unpack(data)[0])
            return
        for i in range(0, len(data) - len(data) % 4, 4):
            self._write32(offset + i, int(_U32.unpack_from(data, i)[0]))

    def _write32(self, off: int, value: int) -> None:
        if off in (L.QM_VF_EQ_INT_MASK, L.QM_VF_AEQ_INT_MASK, L.QM_IFC_INT_MASK,
                   L.QM_PAGE_SIZE, L.QM_VF_STATE):
            self.regs[off] = value
        elif off == L.QM_CACHE_WB_START:
            pass  # contexts are always written back at once; WB_DONE reads 1
        # everything else: read-as-zero / write-ignored, like reserved registers

    # -- mailbox ---------------------------------------------------------------------------
    def _mailbox_execute(self) -> None:
        w0, queue, base_l, base_h, _ = L.MAILBOX.unpack(self.mailbox)
        cmd = w0 & L.QM_MB_CMD_MASK  # bits 9-12 status, 13 busy, 14 op lie above
        op = (w0 >> L.QM_MB_OP_SHIFT) & 1
        base = base_h << 32 | base_l
        try:
            status = self._mailbox_command(cmd, op, queue, base)
        except DmaFault:
            status = 2
        self.mb_log.append((cmd, op, queue, status))
        w0 = (w0 & ~(L.QM_MB_BUSY | L.QM_MB_STATUS_MASK << L.QM_MB_STATUS_SHIFT)
              | (status & L.QM_MB_STATUS_MASK) << L.QM_MB_STATUS_SHIFT)
        struct.pack_into("<H", self.mailbox, 0, w0)

    def _mailbox_command(self, cmd: int, op: int, queue: int, base: int) -> int:
        if cmd == L.QM_MB_CMD_SQC_VFT_V2:
            if op != 1:
                return 1  # a VF may only read its VFT; the PF programs it
            vft = L.vft_encode_v2(self.qp_base, self.qp_num)
            struct.pack_into("<II", self.mailbox, 4, vft & 0xFFFF_FFFF, vft >> 32)
            return 0
        if cmd in (L.QM_MB_CMD_EQC, L.QM_MB_CMD_AEQC):
            eq = self.eq if cmd == L.QM_MB_CMD_EQC else self.aeq
            if op:
                self.dma.write(base, self._eqc_bytes(eq))
                return 0
            ctx = self.dma.read(base, L.EQC.size)
            head, tail, bl, bh, _dw3, _r0, _r1, dw6 = L.EQC.unpack(ctx)
            eq.base, eq.depth = bh << 32 | bl, (dw6 & 0xFFFF) + 1
            eq.phase = 1 if dw6 & L.EQC_DW6_PHASE else 0
            eq.head, eq.tail, eq.ctx, eq.ok = head, tail, ctx, True
            return 0
        if cmd in (L.QM_MB_CMD_SQC_BT, L.QM_MB_CMD_CQC_BT):
            if op:
                return 1
            if cmd == L.QM_MB_CMD_SQC_BT:
                self.sqc_bt = base
            else:
                self.cqc_bt = base
            return 0
        if cmd in (L.QM_MB_CMD_SQC, L.QM_MB_CMD_CQC):
            if queue >= self.qp_num:
                return 1
            q = self.queues[queue]
            is_sq = cmd == L.QM_MB_CMD_SQC
            table = self.sqc_bt if is_sq else self.cqc_bt
            if not table:
                return 1  # the context table base was never set
            if op:
                self.dma.write(base, self._sqc_bytes(q) if is_sq else self._cqc_bytes(q))
                return 0
            ctx = self.dma.read(base, L.XQC_SIZE)
            ok = self._load_sqc(q, ctx) if is_sq else self._load_cqc(q, ctx)
            if not ok:
                return 1
            self.dma.write(table + queue * L.XQC_SIZE, ctx)  # the context cache's write-back
            return 0
        if cmd == L.QM_MB_CMD_STOP_QP:
            if queue >= self.qp_num:
                return 1
            self.queues[queue].stopped = True
            return 0
        if cmd == L.QM_MB_CMD_FLUSH_QM:
            self.process(budget=1 << 30)
            return 0
        return 1

    def _load_sqc(self, q: _QueueState, ctx: bytes) -> bool:
        head, tail, bl, bh, dw3, _w8, _r0, _pasid, _w11, _cq_num, w13, _r1 = L.SQC.unpack(ctx)
        depth = (dw3 & L.SQC_DEPTH_MASK) + 1
        sqe_size = 1 << (dw3 >> L.SQC_SQE_SIZE_SHIFT & 0xF)
        if sqe_size != L.SQE_SIZE or depth > self.sq_depth_cap or head >= depth or \
                tail >= depth:
            return False
        q.sq_base, q.sq_depth, q.sqe_size = bh << 32 | bl, depth, sqe_size
        q.alg = w13 >> L.SQC_W13_ALG_SHIFT & 0xF
        q.head = q.tail = head
        q.sqc, q.sqc_ok, q.stopped, q.broken = ctx, True, False, ""
        self.forget_doorbell(q.qn)
        return True

    def _load_cqc(self, q: _QueueState, ctx: bytes) -> bool:
        head, tail, bl, bh, dw3, _w8, _r0, _pasid, _w11, dw6, _r1 = L.CQC.unpack(ctx)
        depth = (dw3 & L.SQC_DEPTH_MASK) + 1
        if (dw3 >> L.CQC_CQE_SIZE_SHIFT & 0xF) != 4 or depth > self.cq_depth_cap:
            return False
        q.cq_base, q.cq_depth = bh << 32 | bl, depth
        q.cq_phase = dw6 & L.CQC_DW6_PHASE
        q.cq_irq = bool(dw6 & L.CQC_DW6_IRQ)
        q.cq_head, q.cq_tail = head, tail
        q.cqc, q.cqc_ok, q.broken = ctx, True, ""
        return True

    def _sqc_bytes(self, q: _QueueState) -> bytes:
        ctx = bytearray(q.sqc)
        struct.pack_into("<HH", ctx, 0, q.head, q.tail)
        return bytes(ctx)

    def _cqc_bytes(self, q: _QueueState) -> bytes:
        ctx = bytearray(q.cqc)
        struct.pack_into("<HH", ctx, 0, q.cq_head, q.cq_tail)
        fields = list(L.CQC.unpack(ctx))
        fields[9] = (fields[9] & ~L.CQC_DW6_PHASE) | q.cq_phase
        return L.CQC.pack(*fields)

    @staticmethod
    def _eqc_bytes(eq: _EventQueue) -> bytes:
        ctx = bytearray(eq.ctx)
        struct.pack_into("<HH", ctx, 0, eq.head, eq.tail)
        return bytes(ctx)

    # -- doorbells -------------------------------------------------------------------------
    def forget_doorbell(self, qn: int) -> None:
        """Hook for the owner of the polled doorbell word (see the module docstring)."""

    def doorbell(self, value: int) -> None:
        """An SQ/CQ doorbell value (V2 format), latched or found in the polled page."""
        qn, cmd, index, _prio = L.doorbell_decode_v2(value)
        if qn >= self.qp_num:
            return
        q = self.queues[qn]
        if cmd == L.QM_DB_CMD_SQ:
            if q.sqc_ok and index < q.sq_depth:
                q.tail = index
        elif cmd == L.QM_DB_CMD_CQ and q.cqc_ok and index < q.cq_depth:
            q.cq_head = index

    def _eq_doorbell(self, value: int) -> None:
        _qn, cmd, index, _prio = L.doorbell_decode_v2(value)
        if cmd == L.QM_DB_CMD_EQ and self.eq.ok and index < self.eq.depth:
            self.eq.head = index
            self.eq_pending = self.eq.head != self.eq.tail
        elif cmd == L.QM_DB_CMD_AEQ and self.aeq.ok and index < self.aeq.depth:
            self.aeq.head = index
            self.aeq_pending = self.aeq.head != self.aeq.tail

    def _post_event(self, eq: _EventQueue, word: int) -> bool:
        """Write one EQE/AEQE; False (dropped) when the queue is full or unconfigured."""
        if not eq.ok or (eq.tail + 1) % eq.depth == eq.head:
            return False
        try:
            self.dma.write(eq.base + eq.tail * 4, _U32.pack(word | eq.phase << 16))
        except DmaFault:
            return False
        eq.tail += 1
        if eq.tail == eq.depth:
            eq.tail, eq.phase = 0, eq.phase ^ 1
        return True

    # -- the queue engine ------------------------------------------------------------------
    def pending(self) -> bool:
        return any(q.running and q.head != q.tail for q in self.queues)

    def process(self, budget: int | None = None) -> int:
        """Execute up to `budget` submitted SQEs across the queues; returns how many."""
        budget = self.JOB_BUDGET if budget is None else budget
        done = 0
        irq_queues: list[int] = []
        for q in self.queues:
            if not q.running or q.head == q.tail:
                continue
            n = self._run_queue(q, budget - done)
            done += n
            if n and q.cq_irq:
                irq_queues.append(q.qn)
            if done >= budget:
                break
        if irq_queues:
            self._interrupt(irq_queues)
        return done

    def _run_queue(self, q: _QueueState, budget: int) -> int:
        todo = min((q.tail - q.head) % q.sq_depth, budget)
        if not todo:
            return 0
        try:
            sq = self.dma.view(q.sq_base, q.sq_depth * q.sqe_size, write=True)
            cq = self.dma.view(q.cq_base, q.cq_depth * L.CQE_SIZE, write=True)
        except DmaFault as e:
            q.broken = str(e)
            self._post_event(self.aeq, q.qn | L.AEQE_TYPE_CQE_ERROR << L.AEQE_TYPE_SHIFT)
            self.aeq_pending = True
            if self.regs.get(L.QM_VF_AEQ_INT_MASK, 1) == 0:
                self.notify(1)
            return 0
        try:
            for _ in range(todo):
                off = q.head * q.sqe_size
                self._run_sqe(q, sq, off)
                # CQE: body first, then the phase word, so a poller never sees a half CQE.
                coff = q.cq_tail * L.CQE_SIZE
                _CQE_BODY.pack_into(cq, coff, 0, 0, 0, q.head, q.qn, 0)
                _U16.pack_into(cq, coff + 14, q.cq_phase)
                q.cq_tail += 1
                if q.cq_tail == q.cq_depth:
                    q.cq_tail, q.cq_phase = 0, q.cq_phase ^ 1
                q.head += 1
                if q.head == q.sq_depth:
                    q.head = 0
        finally:
            sq.release()
            cq.release()
        self.stats["jobs"] += todo
        return todo

    def _run_sqe(self, q: _QueueState, sq: memoryview, off: int) -> None:
        w = L.SQE.unpack_from(sq, off)
        res = self._execute(q, w)
        _RES.pack_into(sq, off, res.consumed, res.produced, 0,
                       (res.status & L.STATUS_MASK) | (L.STATUS_LAST_BLOCK if res.last else 0))
        struct.pack_into("<I", sq, off + 4 * L.DW_CTX_DW0,
                         (w[L.DW_CTX_DW0] & ~L.CTX_ST_MASK) | res.ctx_st)
        _TAIL.pack_into(sq, off + 4 * L.DW_CTX_DW1, w[L.DW_CTX_DW1], w[L.DW_CTX_DW2],
                        res.isize & 0xFFFF_FFFF, res.checksum & 0xFFFF_FFFF)

    def _execute(self, q: _QueueState, w: tuple[int, ...]) -> JobResult:
        dw7, dw9 = w[L.DW_IN_SGE_FLAGS], w[L.DW_REQ]
        alg = dw9 & 0xFF
        sqe_type = dw7 >> L.SQE_TYPE_SHIFT
        buf_type = dw9 >> L.SQE_BUF_TYPE_SHIFT & 0xF
        window = dw9 >> L.SQE_WINDOW_SHIFT & 0xF
        in_len, avail = w[L.DW_INPUT_LENGTH], w[L.DW_DEST_AVAIL_OUT]
        if (alg not in L.ALG_NAMES or sqe_type not in (L.SQE_TYPE_V1, L.SQE_TYPE_V3)
                or buf_type != L.SQE_BUF_FLAT or window not in _WINDOW_WBITS
                or in_len > L.HZ_MAX_SIZE or avail > L.HZ_MAX_SIZE
                or q.alg not in (L.ZIP_QC_COMPRESS, L.ZIP_QC_DECOMPRESS)):
            return JobResult(L.STATUS_BAD_REQUEST)
        src_addr = w[L.DW_SRC_H] << 32 | w[L.DW_SRC_L]
        dst_addr = w[L.DW_DST_H] << 32 | w[L.DW_DST_L]
        finish = bool(dw7 & L.SQE_FLUSH_FINISH)
        stateful = bool(dw7 & L.SQE_STATEFUL)
        new = bool(dw7 & L.SQE_NEW_STREAM)
        compress = q.alg == L.ZIP_QC_COMPRESS
        src = dst = None
        try:
            # The source address must be valid even for an empty input (as on the hardware).
            src = self.dma.view(src_addr, max(in_len, 1))[:in_len]
            dst = self.dma.view(dst_addr, max(avail, 1), write=True)[:avail]
            if stateful:
                ctx_addr = w[L.DW_CTX_ADDR_H] << 32 | w[L.DW_CTX_ADDR_L]
                self.dma.view(ctx_addr, 64, write=True).release()
                if compress:
                    return self.engine.compress_stateful(
                        ctx_addr, new, alg, _WINDOW_WBITS[window], src, dst, finish,
                        w[L.DW_CHECKSUM], w[L.DW_ISIZE])
                return self.engine.decompress_stateful(ctx_addr, new, alg, src, dst)
            if compress:
                return self.engine.compress_stateless(alg, _WINDOW_WBITS[window], src, dst,
                                                      finish)
            return self.engine.decompress_stateless(alg, src, dst)
        except DmaFault:
            self.stats["dma_faults"] += 1
            return JobResult(L.STATUS_DMA_FAULT)
        finally:
            if src is not None:
                src.release()
            if dst is not None:
                dst.release()

    def _interrupt(self, qns: list[int]) -> None:
        for qn in qns:
            self._post_event(self.eq, qn)
        self.eq_pending = True
        if self.regs.get(L.QM_VF_EQ_INT_MASK, 1) == 0 and self.notify(0):
            self.stats["msis"] += 1

    def abandon(self, iova: int, size: int) -> None:
        """The client unmaps [iova, iova+size): forget stream state whose context lived there."""
        for key in [k for k in self.engine.streams if iova <= k < iova + size]:
            del self.engine.streams[key]

    # -- introspection window --------------------------------------------------------------
    def debug_read(self, offset: int, size: int, messages: int = 0) -> bytes:
        win = bytearray(DBG_SIZE)
        _U64.pack_into(win, DBG_MESSAGES, messages)
        _U32.pack_into(win, DBG_MAGIC_OFF, DBG_MAGIC)
        _U32.pack_into(win, DBG_VERSION_OFF, 1)
        for off, key in ((DBG_JOBS, "jobs"), (DBG_TRAPPED_READS, "trapped_reads"),
                         (DBG_TRAPPED_WRITES, "trapped_writes"),
                         (DBG_DOORBELLS_POLLED, "doorbells"), (DBG_DMA_FAULTS, "dma_faults"),
                         (DBG_MSIS, "msis"), (DBG_RESETS, "resets")):
            _U64.pack_into(win, off, self.stats[key])
        _U32.pack_into(win, DBG_MB_COUNT, len(self.mb_log))
        for i, (cmd, op, queue, status) in enumerate(self.mb_log[:DBG_MB_LOG_LEN]):
            _U32.pack_into(win, DBG_MB_LOG + 4 * i, cmd | op << 8 | status << 12 | queue << 16)
        return bytes(win[offset:offset + size])


def decode_stats(window: bytes) -> dict[str, int]:
    """The counters of a BAR0 dump."""
    names = {"jobs": DBG_JOBS, "trapped_reads": DBG_TRAPPED_READS,
             "trapped_writes": DBG_TRAPPED_WRITES, "doorbells": DBG_DOORBELLS_POLLED,
             "dma_faults": DBG_DMA_FAULTS, "msis": DBG_MSIS, "messages": DBG_MESSAGES,
             "resets": DBG_RESETS}
    out = {k: int(_U64.unpack_from(window, off)[0]) for k, off in names.items()}
    out["mailbox_commands"] = int(_U32.unpack_from(window, DBG_MB_COUNT)[0])
    return out


def decode_mailbox_log(window: bytes) -> list[tuple[str, int, int, int]]:
    """(command name, op, queue, status) for each logged mailbox command in a BAR0 dump."""
    count = min(_U32.unpack_from(window, DBG_MB_COUNT)[0], DBG_MB_LOG_LEN)
    out = []
    for i in range(count):
        v = _U32.unpack_from(window, DBG_MB_LOG + 4 * i)[0]
        cmd = v & 0xFF
        out.append((L.MB_CMD_NAMES.get(cmd, f"cmd{cmd:#x}"), v >> 8 & 0xF, v >> 16,
                    v >> 12 & 0xF))
    return out


class ZipModel(DeviceModel):
    """The ZIP VF served over vfio-user (see the module docstring)."""

    name = "zip"
    vendor_id = L.PCI_VENDOR_ID_HUAWEI
    device_id = L.ZIP_VF_DEVICE_ID
    revision = L.QM_HW_V2
    class_code = L.PCI_CLASS_PROCESSING_ACCEL
    subsystem_vendor_id = L.PCI_VENDOR_ID_HUAWEI
    subsystem_id = 0
    # A mapped doorbell is seen within microseconds while jobs flow; idle for longer than this
    # and the first doorbell waits up to poll_idle_s.
    poll_spin_s = 0.05
    poll_idle_s = 0.0005
    polled = True

    def __init__(self, **options: str) -> None:
        super().__init__(**options)
        opts = dict(options)
        try:
            self.qp_num = int(opts.pop("queues", "2"), 0)
            self.depth = int(opts.pop("depth", "1024"), 0)
            rev = int(opts.pop("revision", str(L.QM_HW_V2)), 0)
            self.level = int(opts.pop("level", "6"), 0)
        except ValueError as e:
            raise InvalidArgumentError(f"zip model: bad option value: {e}",
                                       hint="options are integers (0x.. for hex)") from None
        if rev not in (L.QM_HW_V2, L.QM_HW_V3):
            raise InvalidArgumentError(f"zip model: revision {rev:#x} is not modelled",
                                       hint=f"give revision={L.QM_HW_V2:#x} or {L.QM_HW_V3:#x}")
        if not -1 <= self.level <= 9:
            raise InvalidArgumentError(f"zip model: level {self.level} is out of range",
                                       hint="give level=-1..9")
        if opts:
            raise InvalidArgumentError(f"zip model: unknown option(s) {', '.join(sorted(opts))}",
                                       hint="known: queues, depth, revision, level")
        self.revision = rev  # type: ignore[misc]  # instance override of the class default
        self.qm: QmFunction | None = None
        self._last_db = IDLE_DOORBELL

    def regions(self) -> list[RegionSpec]:
        return [
            RegionSpec(DBG_BAR, DBG_SIZE, writable=False),
            RegionSpec(L.QM_BAR, L.QM_VF_BAR_SIZE, mem64=True,
                       mmap_areas=((L.QM_DOORBELL_SQ_CQ_BASE_V2, 0x1000),)),
        ]

    def irq_counts(self) -> dict[int, int]:
        return {VFIO_PCI_MSI_IRQ_INDEX: L.V2_VF_IRQ_NUM}

    def build_config_space(self) -> bytearray:
        cfg = self.config_builder()
        cfg.add_msi(vectors=L.V2_VF_IRQ_NUM)
        return cfg.build()

    def setup(self) -> None:
        self.qm = QmFunction(self.dma, revision=self.revision, qp_num=self.qp_num,
                             sq_depth=self.depth, cq_depth=self.depth, level=self.level,
                             notify=self.notify)
        self._bell = self.region_u64(L.QM_BAR, L.QM_DOORBELL_SQ_CQ_BASE_V2)
        self.qm.forget_doorbell = self._forget_doorbell  # type: ignore[method-assign]
        self._bell.value = IDLE_DOORBELL

    def _forget_doorbell(self, qn: int) -> None:
        self._bell.value = IDLE_DOORBELL
        self._last_db = IDLE_DOORBELL

    def _qm(self) -> QmFunction:
        assert self.qm is not None, "setup() has not run"
        return self.qm

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        if index == DBG_BAR:
            messages = self.host_stats()["messages"]
            return self._qm().debug_read(offset, size, messages)
        if index == L.QM_BAR:
            return self._qm().read(offset, size)
        return bytes(size)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index == L.QM_BAR:
            self._qm().write(offset, data)

    def poll(self) -> bool:
        qm = self._qm()
        v = self._bell.value
        if v != self._last_db:
            self._last_db = v
            qm.stats["doorbells"] += 1
            qm.doorbell(v)
        return qm.process() > 0

    def reset(self) -> None:
        self._qm().reset()
        self._qm().stats["resets"] += 1
        self._bell.value = IDLE_DOORBELL
        self._last_db = IDLE_DOORBELL

    def on_dma_unmap(self, iova: int, size: int) -> None:
        self._qm().abandon(iova, size)


MODEL = ZipModel
