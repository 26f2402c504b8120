"""The one-shot functions (`compress`, `decompress`): one stateless job at a time on the caller's
thread, without per-call set-up.

A `OneShot` belongs to one lane of one engine for the engine's life. It keeps what a call would
otherwise build: its input and output DMA pieces (taken from the pool once, kept while they are
big enough, up to `KEEP_MAX`), one SQE per format with those addresses already in it (a call
patches the lengths and the tag), the headers per format and level, and one `Job`. A call copies
the input in, stores the SQE and the doorbell (`QmQueue.submit_one`), spins on the CQ for the
engine's spin time (the usual case: the job is back within microseconds) and then waits the
lane's way (refresh, watchdog, interrupt), and copies the output out.

Safety is the lane's, as for every job: the queue is looked up first (a closed engine or a
forked child is refused before any DMA memory is touched), the lane lock is held for the whole
job, and a call that leaves with its job still in flight (timeout, the device gone, an
interrupt) abandons its pieces and its `Job`: nothing a device may still write is ever reused.
"""

from __future__ import annotations

import struct
import time

from ...pool import BufferPool, Chunk
from ..hisi_qm.queue import QmQueue
from . import hw
from .errors import ZipDataError, ZipError
from .header import whole_header
from .job import Job, compress_bound, decompress_guess
from .lane import EngineParts, Lane
from .sqe import (
    EMPTY_FINAL_BLOCK,
    Format,
    decompression_complete,
    header,
    initial_checksum,
    status_error,
    trailer,
    trailer_error,
    trailer_size,
)

_LAST = hw.STATUS_LAST_BLOCK
_RESULT = hw.SQE_RESULT.unpack_from  # dw0..3: consumed, produced, comp length, status
_ISIZE_SUM = struct.Struct("<2I").unpack_from  # dw30, dw31: isize, checksum
_U32 = struct.Struct("<I").pack_into
_IN_LEN, _AVAIL = 4 * hw.DW_INPUT_LENGTH, 4 * hw.DW_DEST_AVAIL_OUT
_SPIN_CHECKS = 64  # CQ looks between two clock reads while spinning


class OneShot:
    """The one-shot jobs of one lane (see the module docstring); the caller holds the lane
    lock around `compress`/`decompress`."""

    KEEP_MAX = 1 << 20  # pieces up to this size are kept between calls

    def __init__(self, engine: EngineParts, lane: Lane) -> None:
        self.engine = engine
        self.lane = lane
        self.pool: BufferPool = engine.pool
        self.job = Job(self, None, 0, 0, None, 0, 0)
        self.src: Chunk | None = None
        self.dst: Chunk | None = None
        self.src_view = self.dst_view = memoryview(b"")
        self._sqes: dict[Format, tuple[bytearray, int]] = {}  # SQE and its tag's byte offset
        self._heads: dict[tuple[Format, int], bytes] = {}
        self._fmts: dict[tuple[int, bool], Format] = {}
        self.calls = 0  # jobs run (for tests: reuse is visible)
        self.slot_off = 0  # SQ slot of the last job (its results are read there)
        self._lost = False  # the pieces in use belong to an abandoned job

    def fmt(self, wbits: int, decompress: bool) -> Format:
        key = (wbits, decompress)
        f = self._fmts.get(key)
        if f is None:
            f = self._fmts[key] = Format.from_wbits(wbits, decompress=decompress)
        return f

    # -- completion (from `Lane.reap`, when other owners' CQEs came first) --------------------
    def on_complete(self, job: Job) -> None:
        job.done = True

    # -- pieces -----------------------------------------------------------------------------
    def _pieces(self, n_in: int, n_out: int) -> tuple[Chunk, Chunk]:
        """Input and output pieces of at least these sizes: the kept ones when they fit."""
        src, dst = self.src, self.dst
        if src is None or src.size < n_in:
            src = self._grow(src, n_in)
            if src.size <= self.KEEP_MAX:
                self.src_view.release()
                self.src, self.src_view = src, src.view
                self._sqes.clear()  # they carry the old address
        if dst is None or dst.size < n_out:
            dst = self._grow(dst, n_out)
            if dst.size <= self.KEEP_MAX:
                self.dst_view.release()
                self.dst, self.dst_view = dst, dst.view
                self._sqes.clear()
        return src, dst

    def _views(self, src: Chunk, dst: Chunk) -> tuple[memoryview, memoryview]:
        """Views of the pieces: kept with kept pieces (a call is refused in a forked child or
        on a closed engine before it gets here, so they need no check of their own)."""
        return (self.src_view if src is self.src else src.view,
                self.dst_view if dst is self.dst else dst.view)

    def _grow(self, old: Chunk | None, size: int) -> Chunk:
        """A new piece: kept instead of `old` (given back) up to KEEP_MAX, else only borrowed
        for this call (`_done_with` gives it back; `old` stays kept)."""
        new = self.pool.take(size)
        if old is not None and new.size <= self.KEEP_MAX:
            self.pool.give(old)
        return new

    def _done_with(self, src: Chunk, dst: Chunk) -> None:
        """Give back pieces too big to keep (not those of an abandoned job)."""
        if self._lost:
            self._lost = False
            return
        if src is not self.src:
            self.pool.give(src)
        if dst is not self.dst:
            self.pool.give(dst)

    def _abandon(self) -> None:
        """The job is still in flight: its pieces and `Job` are never used again (the device may
        still write them; they stay mapped until the pool closes)."""
        self._drop_views()
        self.src = self.dst = None
        self._lost = True
        self._sqes.clear()
        self.job = Job(self, None, 0, 0, None, 0, 0)

    def _drop_views(self) -> None:
        self.src_view.release()
        self.dst_view.release()
        self.src_view = self.dst_view = memoryview(b"")

    def close(self) -> None:
        """Before the pool unmaps the pieces: a kept view would keep their memory exported
        (the buffer could not be closed)."""
        self._drop_views()
        self.src = self.dst = None
        self._sqes.clear()

    def _sqe(self, fmt: Format, src: Chunk, dst: Chunk) -> tuple[bytearray, int]:
        if src is self.src and dst is self.dst:
            got = self._sqes.get(fmt)
            if got is not None:
                return got
        tmpl = self.lane.template(fmt)
        sqe = bytearray(hw.SQE_SIZE)
        tmpl.fill(sqe, 0, src=src.iova, in_len=0, dst=dst.iova, avail=0, tag=0)
        got = (sqe, 4 * tmpl.tag_dw)
        if src is self.src and dst is self.dst:
            self._sqes[fmt] = got
        return got

    # -- one job ----------------------------------------------------------------------------
    def _run(self, q: QmQueue, sqe: bytearray, tag_at: int, n: int,
             avail: int) -> tuple[int, int, int]:
        """Submit the job and wait for it; returns (consumed, produced, dw3). The caller has
        filled the input piece and holds the lane lock."""
        lane = self.lane
        _U32(sqe, _IN_LEN, n)
        _U32(sqe, _AVAIL, avail)
        _U32(sqe, tag_at, lane.next_tag())
        job = self.job
        job.done = False
        off = q.submit_one(job, self, sqe)  # type: ignore[arg-type]  # any buffer will do
        if off < 0:  # the queue is full of others' jobs: make room (reaps, may wait)
            lane.make_room(1)
            off = q.submit_one(job, self, sqe)  # type: ignore[arg-type]
        self.calls += 1
        try:
            self._wait(q, job)
        except BaseException:
            if not job.done:
                self._abandon()
            raise
        self.slot_off = off
        consumed, produced, _, dw3 = _RESULT(q.sq, off)
        return consumed, produced, dw3

    def _wait(self, q: QmQueue, job: Job) -> None:
        """Spin on the CQ (no syscall) for the engine's spin time, then wait the lane's way."""
        lane = self.lane
        spin = self.engine.spin_s
        if spin > 0:
            cq16 = q.cq16
            clock = time.perf_counter
            until = clock() + min(spin, q.REFRESH_S)  # past REFRESH_S the lane re-rings
            while True:
                for _ in range(_SPIN_CHECKS):
                    if (cq16[q.cq_head * 8 + 7] & 1) == q.phase:  # q.completed(), inlined
                        break
                else:
                    if clock() < until:
                        continue
                    break
                # A CQE: ours at the head (the usual case), else the lane hands them out.
                if q.take_one(self) is job:
                    job.done = True
                    return
                lane.reap()
                if job.done:
                    return
        lane.wait_until(lambda: job.done, locked=True)

    # -- the calls ----------------------------------------------------------------------------
    def compress(self, mv: memoryview, fmt: Format, level: int) -> bytes:
        key = (fmt, level)
        hdr = self._heads.get(key)
        if hdr is None:
            hdr = self._heads[key] = header(fmt, level)
        n = len(mv)
        if n == 0:
            return hdr + EMPTY_FINAL_BLOCK + trailer(fmt.alg, initial_checksum(fmt.alg), 0)
        lane = self.lane
        q = lane.current or lane.q  # refuses a closed engine or a forked child: before any DMA
        src, dst = self._pieces(n, compress_bound(n))
        sv, dv = self._views(src, dst)
        sv[:n] = mv
        sqe, tag_at = self._sqe(fmt, src, dst)
        _, produced, dw3 = self._run(q, sqe, tag_at, n, min(dst.size, hw.HZ_MAX_SIZE))
        try:
            st = dw3 & hw.STATUS_MASK
            if st not in (hw.STATUS_OK, hw.STATUS_NEGACOMPRESS) or not dw3 & _LAST:
                raise status_error(st, compress=True) or ZipError(
                    f"compression job ended without its final block (status {st:#x})")
            return hdr + dv[:produced]
        finally:
            self._done_with(src, dst)

    def decompress(self, mv: memoryview, fmt: Format, bufsize: int) -> bytes | None:
        """One stateless job; None means "use stream mode" (output over 8 MiB)."""
        head = whole_header(mv, fmt)
        hlen, fmt = head.length, head.fmt
        body = mv[hlen:]
        n = len(body)
        if n == 0:
            raise ZipDataError("Error -5 while decompressing data: incomplete or truncated "
                               "stream")
        lane = self.lane
        q = lane.current or lane.q  # refuses a closed engine or a forked child: before any DMA
        out = max(bufsize, decompress_guess(mv, fmt))
        alg = fmt.alg
        while True:
            src, dst = self._pieces(n, min(out, hw.HZ_MAX_SIZE))
            try:
                sv, dv = self._views(src, dst)
                sv[:n] = body
                sqe, tag_at = self._sqe(fmt, src, dst)
                avail = min(dst.size, hw.HZ_MAX_SIZE)
                consumed, produced, dw3 = self._run(q, sqe, tag_at, n, avail)
                st = dw3 & hw.STATUS_MASK
                if st == hw.STATUS_DST_TOO_SMALL:
                    if avail >= hw.HZ_MAX_SIZE:
                        return None
                    out = avail * 4
                    continue
                isize, checksum = _ISIZE_SUM(q.sq, self.slot_off + 4 * hw.DW_ISIZE)
                if st == hw.STATUS_CRC_ERR:
                    end = min(consumed, n)
                    raise trailer_error(alg, checksum, body[max(0, end - 8):end])
                if st not in (hw.STATUS_OK, hw.STATUS_NEGACOMPRESS, hw.STATUS_DECOMP_END):
                    # Raised unbound: a local would make this frame and the error a cycle.
                    raise status_error(st, compress=False) or ZipDataError(f"status {st:#x}")
                if not decompression_complete(st, dw3):
                    raise ZipDataError("Error -5 while decompressing data: incomplete or "
                                       "truncated stream")
                tlen = trailer_size(alg)
                if tlen:
                    tail = body[max(0, consumed - 8):consumed]
                    if bytes(tail[-tlen:]) != trailer(alg, checksum, isize):
                        raise trailer_error(alg, checksum, tail)
                return bytes(dv[:produced])
            finally:
                self._done_with(src, dst)
