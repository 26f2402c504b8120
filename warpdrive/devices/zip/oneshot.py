"""The one-shot functions (`compress`, `decompress`): one stateless job at a time on the caller's
thread, without per-call set-up.

A `OneShot` belongs to one lane of one engine for the engine's life. It keeps what a call would
otherwise build: its input and output DMA pieces (taken from the pool once, kept while they are
big enough, up to `KEEP_MAX`), one SQE per format with those addresses already in it (a call
patches the lengths and the tag), the headers per format and level, and one `Job`. A call copies
the input in, stores the SQE and the doorbell (`QmQueue.submit_one`), spins on the CQ for the
engine's spin time (the usual case: the job is back within microseconds) and then waits the
lane's way (refresh, watchdog, interrupt), and copies the output out.

Two ways in. `compress_fast`/`decompress_fast` serve the common call in as few Python steps as
it takes (a per-call cost of a few microseconds is most of a small call's time): a plan per
(level, wbits) or wbits holds the header, an SQE whose output room and addresses are already
in it (decompression: the input's header is copied in with the body and the SQE points past
it, so no slice of the input is made) and the largest input it takes; they return None for
anything else (no plan yet, pieces too small, an uncommon header, a queue not started), with
nothing done, and the caller takes the general way (`compress`/`decompress`), which also
builds the plans' pieces. Results that are not plain success go to the general checks.

Safety is the lane's, as for every job: the queue is looked up first (a closed engine or a forked
child is refused before any DMA memory is touched), the lane lock is held for the whole job, even
while it sleeps on the interrupt (the pieces, SQEs and `Job` serve every thread that calls: a
thread let in meanwhile would overwrite them), and a call that leaves with its job still in flight
(timeout, the device gone, an interrupt) abandons its pieces and its `Job`: nothing a device may
still write is ever reused.
"""

from __future__ import annotations

import os
import struct
import time

from ...pool import BufferPool, Chunk
from ...syscalls import YieldWatch, short_sleep
from ..hisi_qm.queue import QmQueue
from . import hw
from .errors import ZipDataError, ZipError
from .header import whole_header
from .job import Job, compress_bound, decompress_guess
from .lane import EngineParts, Lane
from .sqe import (
    DEFLATE,
    EMPTY_FINAL_BLOCK,
    GZIP,
    ZLIB,
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
_DONE = hw.STATUS_MASK | _LAST  # the status and last-block bits of dw3
_OK, _NEGA = hw.STATUS_OK | _LAST, hw.STATUS_NEGACOMPRESS | _LAST
_END = hw.STATUS_DECOMP_END | _LAST
_IN, _AVAIL = hw.DW_INPUT_LENGTH, hw.DW_DEST_AVAIL_OUT
_ISIZE, _SUM = hw.DW_ISIZE, hw.DW_CHECKSUM
_BE32 = struct.Struct(">I").unpack_from
_LE2 = struct.Struct("<2I").unpack_from
_FOREVER = float("inf")
_sched_yield = os.sched_yield
_sleep = short_sleep
_SPIN_CHECKS = range(64)  # CQ looks between two clock reads while spinning
_GZIP_PLAIN = b"\x1f\x8b\x08\x00"  # a gzip header with no optional fields: 10 bytes
# zlib headers (CMF, FLG as one u16) a 32 KiB window decodes: deflate, any window, no
# dictionary, check bits right (RFC 1950 2.2); the rest go the general way (`scan_header`).
# Walked over the multiples of 31 (the check bits) below CINFO 8: this runs at every import.
_ZLIB_HEADS = frozenset(h for h in range(0, 0x8000, 31) if (h >> 8) & 0x0F == 8 and
                        not h & 0x20)
_HLEN = {DEFLATE: 0, ZLIB: 2, GZIP: 10}


class _Plan:
    """What a fast call needs for one format (see the module docstring)."""

    __slots__ = ("alg", "avail", "cap", "fmt", "hdr", "hlen", "s32", "sqe", "tag_dw", "tlen")

    def __init__(self, fmt: Format, sqe: bytearray, tag_dw: int, cap: int, avail: int,
                 hdr: bytes = b"", hlen: int = 0) -> None:
        self.fmt, self.alg, self.tlen = fmt, fmt.alg, trailer_size(fmt.alg)
        self.sqe, self.s32, self.tag_dw = sqe, memoryview(sqe).cast("I"), tag_dw
        self.cap, self.avail = cap, avail  # largest input; output room
        self.hdr, self.hlen = hdr, hlen  # compression: header written; decompression: skipped


class OneShot:
    """The one-shot jobs of one lane (see the module docstring). The caller holds the lane lock
    around `compress`/`decompress`; the fast ways take it themselves."""

    KEEP_MAX = 1 << 20  # pieces up to this size are kept between calls
    YIELD_S = Lane.YIELD_S  # spun this long (about twice a small job's round trip): yield
    SHARED_S = 5e-6  # a yield that lasted this long ran another task on our CPU (`_wait`),
    SHARED_MAX_S = 250e-6  # and no longer than this, about a job's time (not a time slice)
    POLL_S = Lane.POLL_S  # a job still running after this (or the engine's longer spin): sleep
    NAP_S = 20e-6  # a nap while yields lose the CPU (~35 us: `short_sleep`; ~70 us with the
    # kernel's default timer slack)

    def __init__(self, engine: EngineParts, lane: Lane, compress_max: int = hw.HZ_MAX_SIZE) -> None:
        self.engine = engine
        self.lane = lane
        self.pool: BufferPool = engine.pool
        self.compress_max = compress_max  # larger compressions go out as pieces (the engine's)
        self.job = Job(self, None, 0, 0, None, 0, 0)
        self.src: Chunk | None = None
        self.dst: Chunk | None = None
        self.src_view = self.dst_view = memoryview(b"")
        self._sqes: dict[Format, tuple[bytearray, memoryview, int]] = {}  # SQE, u32s, tag dw
        self._plans: dict[object, _Plan | None] = {}  # (level, wbits) or wbits: fast ways
        self._heads: dict[tuple[Format, int], bytes] = {}
        self._fmts: dict[tuple[int, bool], Format] = {}
        self.calls = 0  # jobs run (for tests: reuse is visible)
        self.fast_calls = 0  # of them, through a fast way
        self.slot_off = 0  # SQ slot of the last job (its results are read there)
        self.retry_out = 0  # output room a fast decompression found too small
        # Output room per input byte for zlib and raw streams (no size in them): 8, or what the
        # last decompression that went the general way needed, so that a caller repeating
        # highly compressible calls (zeros, logs: 20-1000x) gets one job per call, not one too
        # small and another (`decompress`). Up to `ratio_room`, the room of the call that taught
        # it: a bomb's ~1000x would ask the next, ordinary call for up to HZ_MAX_SIZE of DMA
        # memory (over RLIMIT_MEMLOCK where the space pins). A thread racing another may read
        # a ratio and a room of two calls: either bounds the room by some call's own. (The fast
        # way needs no bound: it takes only the kept pieces.)
        self.ratio = 8
        self.ratio_room = 0  # (none learnt yet)
        self._lost = False  # the pieces in use belong to an abandoned job
        self.eager = False  # the device seems to share our CPU: yield at once (`_wait`)
        self.watch = YieldWatch()  # naps instead of yields while they lose the CPU (`_wait`)

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
                self._forget_sqes()  # they carry the old address
        if dst is None or dst.size < n_out:
            dst = self._grow(dst, n_out)
            if dst.size <= self.KEEP_MAX:
                self.dst_view.release()
                self.dst, self.dst_view = dst, dst.view
                self._forget_sqes()
        return src, dst

    def _forget_sqes(self) -> None:
        self._sqes.clear()
        self._plans.clear()

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
        self._forget_sqes()
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
        self._forget_sqes()

    def _new_sqe(self, fmt: Format, src: int, dst: int, avail: int) -> tuple[bytearray, int]:
        tmpl = self.lane.template(fmt)
        sqe = bytearray(hw.SQE_SIZE)
        tmpl.fill(sqe, 0, src=src, in_len=0, dst=dst, avail=avail, tag=0)
        return sqe, tmpl.tag_dw

    def _sqe(self, fmt: Format, src: Chunk, dst: Chunk) -> tuple[bytearray, memoryview, int]:
        kept = src is self.src and dst is self.dst
        if kept:
            got = self._sqes.get(fmt)
            if got is not None:
                return got
        sqe, tag_dw = self._new_sqe(fmt, src.iova, dst.iova, 0)
        made = (sqe, memoryview(sqe).cast("I"), tag_dw)
        if kept:
            self._sqes[fmt] = made
        return made

    # -- one job ----------------------------------------------------------------------------
    def _go(self, q: QmQueue, sqe: bytearray, s32: memoryview, tag_dw: int) -> int:
        """Tag the SQE, submit it and wait for the job; returns its SQ slot's byte offset. The
        caller has filled the input piece and the SQE's lengths, and holds the lane lock."""
        lane = self.lane
        s32[tag_dw] = lane.next_tag()
        job = self.job
        job.done = False
        off = q.submit_one(job, self, sqe)  # type: ignore[arg-type]  # any buffer will do
        if off < 0:  # the queue is full of others' jobs: make room (reaps, may wait)
            lane.make_room(1, hold=True)
            off = q.submit_one(job, self, sqe)  # type: ignore[arg-type]  # any buffer will do
        self.calls += 1
        try:
            self._wait(q, job)
        except BaseException:
            if not job.done:
                self._abandon()
            raise
        self.slot_off = off
        return off

    def _wait(self, q: QmQueue, job: Job) -> None:
        """Spin on the CQ (no syscall), then wait the lane's way. While this thread holds the
        lane lock only it moves the CQ head, so the phase word to watch and the phase it waits
        for are read once.

        The looks (with the yields below) go on for `POLL_S`, or the engine's spin time if
        longer (not at all with wait="block"), but no longer than the engine's timeout,
        re-storing the doorbell every `REFRESH_S` as the lane does; the lane's wait then counts
        from the call's start, so it sleeps on the interrupt at once (or, past the timeout,
        raises DeviceTimeoutError at once). Sleeping is what makes a call slow: the wake-up
        comes 45-300 us after the CQE on an idle machine and milliseconds on a busy one, while
        a one-shot job of up to 64 KiB takes 30-200 us on the bundled model, up to a millisecond
        on a busy machine. It used to be handed to the lane after the engine's 100 us, which
        polled without yields (on a CPU the model may share: it could not finish) until 300 us,
        then slept; a wait over SLOW_S made the next call sleep at once (docs/driver-bench.md,
        session 21). Longer jobs (1 MiB: tens of milliseconds) poll 2 ms, then sleep.

        Past `YIELD_S` each round of looks ends with `sched_yield` (not with wait="spin"): a
        device that shares the CPU (the bundled model, another process) may be waiting for
        this very CPU, which a spinning caller holds until the scheduler takes it away (a
        time slice, milliseconds on a busy machine); yielding hands it over at once, and costs
        a system call otherwise. Measured on 2 busy cores (load 8-9), the model put on the
        caller's CPU: a 5-byte call 666 -> 79 us (median); on separate CPUs no change
        (docs/driver-bench.md).

        `eager`: when the last yield of a call handed the CPU to another task for about a
        job's time (SHARED_S to SHARED_MAX_S: an empty yield is a system call, under a
        microsecond; an unrelated task keeps the CPU for a time slice, milliseconds) and the CQE
        came after it, the device most likely runs on our CPU, so the next call yields at once
        and after every round of looks instead of spinning YIELD_S first; a call whose yields
        come back at once (nobody else wants this CPU: the device runs elsewhere) or after a
        time slice (a busy machine: yielding at once would hand ours away for that long), or
        that needs none, ends that. Measured at the same CPU (taskset), load 1: a 5-byte call
        71 -> 22 us (docs/driver-bench.md, session 20).

        While the yields keep handing our CPU to another program's busy loop for whole time
        slices (`YieldWatch`), the rounds end with a short sleep instead (`NAP_S`): a sleeper
        is woken and put back on the CPU in microseconds, a yielder waits a slice each time
        (the model's spin does the same, see `warpdrive.emu.server`; docs/driver-bench.md,
        session 21)."""
        lane = self.lane
        spin = self.engine.spin_s
        since = None
        if spin > 0:
            cq16 = q.cq16
            at, phase = q.cq_head * 8 + 7, q.phase
            if (cq16[at] & 1) != phase:
                clock = time.perf_counter
                since = now = clock()
                refresh_at = now + q.REFRESH_S
                # (never past the timeout, which only the lane's wait reports: wait="spin")
                until = now + min(spin if spin > self.POLL_S else self.POLL_S,
                                  self.engine.timeout)
                polite = _FOREVER if spin == _FOREVER else now + self.YIELD_S
                ran = False  # the last yield ran another task
                if self.eager and polite != _FOREVER:
                    _sched_yield()  # the device's turn at once, then a round of looks
                    t = clock()
                    ran = self.SHARED_S <= t - now < self.SHARED_MAX_S
                    polite = now = t
                while True:
                    for _ in _SPIN_CHECKS:
                        if (cq16[at] & 1) == phase:
                            break
                    else:
                        now = clock()
                        if now >= polite:
                            if now < self.watch.naps_until:
                                _sleep(self.NAP_S)  # (not a sign of the device: `ran` stays)
                                now = clock()
                            else:
                                _sched_yield()
                                t = clock()
                                ran = self.SHARED_S <= t - now < self.SHARED_MAX_S
                                self.watch.yielded(now, t)
                                now = t
                        if now < refresh_at:
                            continue
                        if now < until:  # the lane's refresh (device alive, doorbell again)
                            refresh_at = now + q.REFRESH_S
                            q.watchdog()
                            q.ring()
                            q.refresh()
                            continue
                    break
                self.eager = ran
            else:
                self.eager = False
            if (cq16[at] & 1) == phase:
                # A CQE: ours at the head (the usual case), else the lane hands them out.
                if q.take_one(self) is job:
                    job.done = True
                    return
                lane.reap()
                if job.done:
                    return
        # The lock stays held through a blocking wait too (not `locked=True`, which lets it go
        # while asleep): the pieces, SQEs and Job are the lane's, shared by every thread.
        lane.wait_until(lambda: job.done, since=since)

    # -- the fast ways ------------------------------------------------------------------------
    def _kept_plan(self, key: object, fmt: Format, cap: int, avail: int, *, src_skip: int = 0,
                   hdr: bytes = b"") -> _Plan | None:
        src, dst = self.src, self.dst
        if src is None or dst is None or cap <= 0:
            return None  # the general way takes (and keeps) pieces first
        sqe, tag_dw = self._new_sqe(fmt, src.iova + src_skip, dst.iova, avail)
        plan = self._plans[key] = _Plan(fmt, sqe, tag_dw, cap, avail, hdr, src_skip)
        return plan

    def _compress_plan(self, level: int, wbits: int) -> _Plan | None:
        if self.src is None or self.dst is None:
            return None
        fmt = self.fmt(wbits, False)
        avail = min(self.dst.size, hw.HZ_MAX_SIZE)
        cap = min(self.src.size, self.compress_max, avail)
        while cap > 0 and compress_bound(cap) > avail:  # (a few steps: bound ~ 9/8 n)
            cap = min(cap - 1, (avail - 64) * 8 // 9)
        return self._kept_plan((level, wbits), fmt, cap, avail, hdr=header(fmt, level))

    def compress_fast(self, data: bytes | bytearray | memoryview, level: int,
                      wbits: int) -> bytes | None:
        """`compress` for a bytes or bytearray of 1 .. the plan's size, with a level and wbits
        the engine serves (the caller checked them); None: nothing done, use the general way."""
        lane = self.lane
        lane.acquire()
        try:
            q = lane.current  # None: not started, closed, or a forked child
            plan = self._plans.get((level, wbits)) or self._compress_plan(level, wbits)
            n = len(data)
            if q is None or plan is None or not 0 < n <= plan.cap:
                return None
            self.src_view[:n] = data
            plan.s32[_IN] = n
            off = self._go(q, plan.sqe, plan.s32, plan.tag_dw)
            self.fast_calls += 1
            d = off >> 2
            sq32 = q.sq32
            dw3 = sq32[d + 3] & _DONE
            if dw3 != _OK and dw3 != _NEGA:
                self._compress_failed(dw3)
            return plan.hdr + self.dst_view[:sq32[d + 1]]
        finally:
            lane.release()

    def _decompress_plan(self, wbits: int) -> _Plan | None:
        if self.src is None or self.dst is None:
            return None
        fmt = self.fmt(wbits, True)
        hlen = _HLEN.get(fmt.container)
        if hlen is None or fmt.window_bits != 15:
            self._plans[wbits] = None  # (auto detection, a smaller window): the general way
            return None
        return self._kept_plan(wbits, fmt, self.src.size, min(self.dst.size, hw.HZ_MAX_SIZE),
                               src_skip=hlen)

    def decompress_fast(self, data: bytes | bytearray | memoryview, wbits: int,
                        bufsize: int) -> bytes | None:
        """`decompress` of a whole zlib (a 32 KiB window or less, no dictionary), plain gzip
        (no optional header fields) or raw stream in a bytes or bytearray, for wbits 15, 16,
        31, 47 or -15 and 0 <= bufsize (the caller checked them); None: nothing done (or the
        output did not fit), use the general way."""
        n = len(data)
        if wbits == 47:  # zlib or gzip, detected: the plans of 15 and 31 read both
            wbits = 31 if n and data[0] == 0x1F else 15
        lane = self.lane
        lane.acquire()
        try:
            q = lane.current  # None: not started, closed, or a forked child
            plans = self._plans
            plan = plans[wbits] if wbits in plans else self._decompress_plan(wbits)
            if q is None or plan is None or n > plan.cap:
                return None
            hlen = plan.hlen
            if hlen == 10:
                if n < 20 or data[:4] != _GZIP_PLAIN:
                    return None
                room = decompress_guess(data, plan.fmt)  # the size its trailer states
            else:
                if n <= hlen or (hlen and (data[0] << 8 | data[1]) not in _ZLIB_HEADS):
                    return None
                room = n * self.ratio  # (as decompress_guess: 8x the input, at least 64 KiB)
                if room < 65536:
                    room = 65536
            if room < bufsize:
                room = bufsize
            avail = plan.avail  # (a kept piece: under HZ_MAX_SIZE)
            if room > avail:
                return None  # the general way takes a bigger output piece
            self.src_view[:n] = data
            s32 = plan.s32
            s32[_IN] = n - hlen
            off = self._go(q, plan.sqe, s32, plan.tag_dw)
            self.fast_calls += 1
            d = off >> 2
            sq32 = q.sq32
            consumed, produced, dw3 = sq32[d], sq32[d + 1], sq32[d + 3]
            st = dw3 & _DONE
            if st in (_OK, _END):  # the trailer (in the input) against the engine's sums
                tlen = plan.tlen
                at = hlen + consumed - tlen
                if tlen == 4:
                    if hlen <= at <= n - 4 and _BE32(data, at)[0] == sq32[d + _SUM]:
                        return bytes(self.dst_view[:produced])
                elif not tlen or (hlen <= at <= n - 8 and
                                  _LE2(data, at) == (sq32[d + _SUM], sq32[d + _ISIZE])):
                    return bytes(self.dst_view[:produced])
            elif dw3 & hw.STATUS_MASK == hw.STATUS_DST_TOO_SMALL:
                self.retry_out = avail * 4
                return None
            self._check_inflated(q, dw3, consumed, plan.alg, memoryview(data)[hlen:])
            return bytes(self.dst_view[:produced])
        finally:
            lane.release()

    # -- the general ways -----------------------------------------------------------------------
    @staticmethod
    def _compress_failed(dw3: int) -> None:
        st = dw3 & hw.STATUS_MASK
        if st not in (hw.STATUS_OK, hw.STATUS_NEGACOMPRESS) or not dw3 & _LAST:
            raise status_error(st, compress=True) or ZipError(
                f"compression job ended without its final block (status {st:#x})")

    def _check_inflated(self, q: QmQueue, dw3: int, consumed: int, alg: int,
                        body: memoryview) -> None:
        """Raise the error of a finished decompression job (whose status is not "output too
        small"), if it failed; its trailer is checked against the engine's checksum."""
        st = dw3 & hw.STATUS_MASK
        isize, checksum = _LE2(q.sq, self.slot_off + 4 * hw.DW_ISIZE)
        if st == hw.STATUS_CRC_ERR:
            end = min(consumed, len(body))
            raise trailer_error(alg, checksum, body[max(0, end - 8):end])
        if st not in (hw.STATUS_OK, hw.STATUS_NEGACOMPRESS, hw.STATUS_DECOMP_END):
            # Raised unbound: a local would make this frame and the error a cycle.
            raise status_error(st, compress=False) or ZipDataError(f"status {st:#x}")
        if not decompression_complete(st, dw3):
            raise ZipDataError("Error -5 while decompressing data: incomplete or truncated "
                               "stream")
        tlen = trailer_size(alg)
        if tlen:
            tail = body[max(0, consumed - 8):consumed]
            if bytes(tail[-tlen:]) != trailer(alg, checksum, isize):
                raise trailer_error(alg, checksum, tail)

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
        sqe, s32, tag_dw = self._sqe(fmt, src, dst)
        s32[_IN] = n
        s32[_AVAIL] = min(dst.size, hw.HZ_MAX_SIZE)
        try:
            off = self._go(q, sqe, s32, tag_dw)
            _, produced, _, dw3 = hw.SQE_RESULT.unpack_from(q.sq, off)
            self._compress_failed(dw3)
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
        out = max(bufsize, decompress_guess(mv, fmt), self.retry_out)
        self.retry_out = 0
        sized = fmt.container == GZIP  # (its trailer states the size: the ratio is not used)
        if not sized:
            out = max(out, min(n * self.ratio, self.ratio_room))  # (8x: decompress_guess)
        while True:
            src, dst = self._pieces(n, min(out, hw.HZ_MAX_SIZE))
            try:
                sv, dv = self._views(src, dst)
                sv[:n] = body
                sqe, s32, tag_dw = self._sqe(fmt, src, dst)
                avail = min(dst.size, hw.HZ_MAX_SIZE)
                s32[_IN] = n
                s32[_AVAIL] = avail
                off = self._go(q, sqe, s32, tag_dw)
                consumed, produced, _, dw3 = hw.SQE_RESULT.unpack_from(q.sq, off)
                if dw3 & hw.STATUS_MASK == hw.STATUS_DST_TOO_SMALL:
                    if avail >= hw.HZ_MAX_SIZE:
                        return None
                    out = avail * 4
                    continue
                self._check_inflated(q, dw3, consumed, fmt.alg, body)
                if not sized:
                    self.ratio = ratio = max(8, produced // n + 1)
                    self.ratio_room = n * ratio
                return bytes(dv[:produced])
            finally:
                self._done_with(src, dst)
