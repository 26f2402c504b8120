"""Batched stateless ZIP jobs of one direction and format (`Session`).

Hot path (prepared jobs: `submit_many`/`submit`, `flush`, `poll_many`/`poll`): their prebuilt
SQEs copied into the ring as one block per batch, one doorbell store per batch; completions
harvested in one pass over the CQ phase words, the results of a run of consecutive slots read as
columns (strided views of the SQ ring), one CQ doorbell per harvest. No syscall, no message, no
per-job DMA map, no per-job allocation. What stays on it, because it protects the caller: the
engine is open and not inherited through fork (one flag), each job belongs to this session and is
not in flight (one identity test), the CQE names a slot holding a job, the SQE still carries the
job's tag, and the status is checked before a job is called done.
"""

from __future__ import annotations

from collections.abc import Callable

from ...errors import ClosedError, InvalidArgumentError
from ...memory import DmaBuffer
from ..hisi_qm.queue import QmQueue
from . import hw
from .errors import ZipBufferError, ZipDataError, ZipError
from .header import whole_header
from .job import (
    COMPRESS,
    COMPRESS_JOB_MAX,
    DECOMPRESS_JOB_MAX,
    Job,
    alg_of_job,
    compress_bound,
    decompress_guess,
)
from .lane import EngineParts, Lane
from .sqe import (
    EMPTY_FINAL_BLOCK,
    GZIP,
    Format,
    decompression_complete,
    header,
    initial_checksum,
    read_stream_words,
    status_error,
    trailer,
    trailer_error,
    trailer_size,
)

_LAST = hw.STATUS_LAST_BLOCK
# dw3 of a finished compression job that went well (0x0d: output larger than input, still valid)
_OK_LAST = hw.STATUS_OK | hw.STATUS_LAST_BLOCK
_NEG_LAST = hw.STATUS_NEGACOMPRESS | hw.STATUS_LAST_BLOCK
_DONE_WELL = frozenset((_OK_LAST, _NEG_LAST))
# Empty polls (jobs in flight) between two doorbell refreshes: a few hundred microseconds, about
# the wait loops' REFRESH_S; counted, since reading a clock on every poll would cost more.
_REFRESH_POLLS = 1024
_RESULT = hw.SQE_RESULT.unpack_from


class Session:
    """Stateless jobs of one direction and format, many in flight.

        s = engine.session("compress", wbits=31)
        jobs = [s.submit(chunk, flush=False) for chunk in chunks]
        s.flush()                                # one doorbell for the batch
        for job in s.drain(): out = job.result()

    Zero-copy: `buf = s.buffer(n)`, fill `buf.view`, `job = s.prepare(buf, n)`; a prepared job's
    SQE is built once and it can be submitted again after it completes. Not thread-safe: one
    session per thread (sessions of one engine share its queues safely).

    The hot path: `submit_many(jobs)` of prepared jobs, `poll_many(out)`. A session made with
    `own_queue=True` drives a queue pair of its own; one thread can drive several of them
    (`for s in sessions: s.poll_many(done)`), and the device works on their queues at once.
    """

    def __init__(self, engine: EngineParts, direction: int, fmt: Format, level: int, *,
                 on_close: Callable[[Session], None] | None = None,
                 lane: Lane | None = None) -> None:
        self.engine = engine
        self.pool = engine.pool
        self._on_close = on_close
        self.direction = direction
        self.compress_mode = direction == COMPRESS
        self.fmt = fmt
        self.level = level
        self._own_lane = lane is not None  # a queue pair of its own, stopped when it closes
        self.lane = lane if lane is not None else engine.lanes[direction]
        self.in_flight = 0
        self._done: list[Job] = []
        self._closed = False
        self._empty_polls = 0  # polls in a row that found nothing while jobs were in flight
        self._tag_dw = hw.DW_TAG_V3  # where this session's SQEs keep the tag (set by _build)
        if self.compress_mode:
            self._hdr = header(fmt, level)

    # -- buffers ----------------------------------------------------------------------------
    def buffer(self, size: int) -> DmaBuffer:
        """A DMA buffer (pooled, already mapped) for zero-copy jobs; give it back with
        `release_buffer` (or it is freed when the engine closes)."""
        return self.pool.get(size)

    def release_buffer(self, buf: DmaBuffer) -> None:
        self.pool.put(buf)

    # -- submission -------------------------------------------------------------------------
    def prepare(self, src: DmaBuffer, length: int, dst: DmaBuffer | None = None, *,
                src_offset: int = 0, dst_offset: int = 0,
                dst_length: int | None = None) -> Job:
        """A reusable zero-copy job over caller-filled buffers. For compression the header is
        written into `dst` now; for decompression the header in `src` is parsed now."""
        self._check()
        if src.iova is None:
            raise InvalidArgumentError("the source buffer is not DMA-mapped",
                                       hint="get buffers from session.buffer()")
        if not 0 <= src_offset <= src_offset + length <= src.size:
            raise InvalidArgumentError(f"{length} bytes at {src_offset} overrun the source")
        fmt = self.fmt
        hdr = b""
        if self.compress_mode:
            if length > COMPRESS_JOB_MAX:
                raise InvalidArgumentError(
                    f"a job takes at most {COMPRESS_JOB_MAX} bytes; got {length}",
                    hint="use compressobj() (stream mode) for more")
            hdr = self._hdr
            if dst is None:
                dst = self.buffer(len(hdr) + compress_bound(length))
        else:
            head = whole_header(src.view[src_offset:src_offset + length], fmt)
            hlen, fmt = head.length, head.fmt
            src_offset, length = src_offset + hlen, length - hlen
            if dst is None:
                raise InvalidArgumentError("a prepared decompression job needs dst=")
        dlen = dst.size - dst_offset if dst_length is None else dst_length
        if dst.iova is None or not 0 <= dst_offset <= dst_offset + dlen <= dst.size:
            raise InvalidArgumentError("the destination is not mapped or too small")
        if dlen - len(hdr) < hw.MIN_DST_SIZE:
            raise ZipBufferError(f"the engine needs at least {hw.MIN_DST_SIZE} bytes of output "
                                 f"room; the destination has {dlen - len(hdr)}")
        job = Job(self, src, src_offset, length, dst, dst_offset, min(dlen, hw.HZ_MAX_SIZE),
                  hdr, prepared=True)
        if hdr:
            dst.view[dst_offset:dst_offset + len(hdr)] = hdr
        self._build(job, fmt)
        job.ready = self
        return job

    def _build(self, job: Job, fmt: Format) -> None:
        tmpl = self.lane.template(fmt)
        job.tag = self.lane.next_tag()
        assert job.src is not None and job.dst is not None
        assert job.src.iova is not None and job.dst.iova is not None
        hl = len(job.hdr)
        job.tag_dw = self._tag_dw = tmpl.tag_dw
        job.sqe = tmpl.build(
            src=job.src.iova + job.src_off, in_len=job.src_len,
            dst=job.dst.iova + job.dst_off + hl, avail=job.dst_len - hl, tag=job.tag)

    def submit_many(self, jobs: list[Job], *, flush: bool = True) -> None:
        """Queue prepared jobs of this session that are not in flight, in order, under one lock
        and, by default, one doorbell. Their SQEs go into the ring as one block (two at the
        ring's end); when the queue is full, waits for room. All or nothing: if one job is
        refused, none is queued."""
        if self._closed:
            self._check()
        n = len(jobs)
        if not n:
            return
        for i, job in enumerate(jobs):  # ownership and "not in flight" in one identity test
            if job.ready is not self:
                self._refuse(jobs, i)
            job.ready = None  # a job given twice in one batch fails the test the second time
            job.done = False
            job.error = None
        lane = self.lane
        posted = False
        lane.acquire()  # the lane's lock, without a `with` block's cost
        try:
            q = lane.current or lane.q
            if q.capacity - q.outstanding < n:
                lane.make_room(n)
            q.write_sqes(q.post_many(jobs, self), b"".join([j.sqe for j in jobs]))
            posted = True
            self.in_flight += n
            if flush:
                q.ring()
        except BaseException:
            if not posted:
                for job in jobs:
                    job.ready = self
            raise
        finally:
            lane.release()

    def _refuse(self, jobs: list[Job], bad: int) -> None:
        for job in jobs[:bad]:  # they passed the test: take back their marks
            job.ready = self
        job = jobs[bad]
        if job.owner is not self or not job.prepared:
            raise InvalidArgumentError("submit_many() takes jobs prepared by this session",
                                       hint="build them with session.prepare()")
        raise InvalidArgumentError(
            "a job is still in flight (or appears twice in the batch)",
            hint="wait for it to complete (poll/wait/drain) before submitting it again")

    def submit(self, data: bytes | bytearray | memoryview | Job, *, flush: bool = True,
               user_data: object = None) -> Job:
        """Queue one job: a prepared `Job`, or bytes (copied into pooled DMA buffers).
        With `flush=False` the doorbell waits for `flush()` (batching)."""
        if self._closed:
            self._check()
        if data.__class__ is Job or isinstance(data, Job):
            job = data
            if job.ready is not self:
                self._refuse([job], 0)
            job.ready = None
            job.done = False
            job.error = None
        else:
            job = self._job_from_bytes(memoryview(data).cast("B"))
            if job.done:  # empty input: finished in software
                job.user_data = user_data
                self._done.append(job)
                return job
        job.user_data = user_data
        lane = self.lane
        q: QmQueue | None = None
        lane.acquire()
        try:
            q = lane.current or lane.q
            off = q.submit_one(job, self, job.sqe, flush)
            if off < 0:  # full: reap, or wait for room
                lane.make_room(1)
                off = q.submit_one(job, self, job.sqe, flush)
            job.slot_off = off
            self.in_flight += 1
        except BaseException:
            if q is not None and any(j is job for j in q.jobs):
                self.in_flight += 1  # posted, not rung (a stopped queue): it goes if it restarts
            elif job.prepared:
                job.ready = self  # not posted: it may be submitted again
            raise
        finally:
            lane.release()
        return job

    def _job_from_bytes(self, mv: memoryview) -> Job:
        n = len(mv)
        pool = self.pool
        if self.compress_mode:
            if n > COMPRESS_JOB_MAX:
                raise InvalidArgumentError(
                    f"a job takes at most {COMPRESS_JOB_MAX} bytes; got {n}",
                    hint="use warpdrive.zip.compress() or compressobj() (stream mode) for more")
            if n == 0:
                job = Job(self, None, 0, 0, None, 0, 0, self._empty_output())
                job.done = True
                return job
            src = pool.take(n)
            src.buf.view[src.off:src.off + n] = mv
            dst = pool.take(len(self._hdr) + compress_bound(n))
            job = Job(self, src.buf, src.off, n, dst.buf, dst.off,
                      min(dst.size, hw.HZ_MAX_SIZE), self._hdr, owns=True)
            job.chunks = [src, dst]
            dst.buf.view[dst.off:dst.off + len(self._hdr)] = self._hdr
            self._build(job, self.fmt)
            return job
        head = whole_header(mv, self.fmt)
        hlen, fmt = head.length, head.fmt
        body = mv[hlen:]
        if len(body) > DECOMPRESS_JOB_MAX:
            raise InvalidArgumentError(
                f"a job takes at most {DECOMPRESS_JOB_MAX} compressed bytes; got {len(body)}",
                hint="use warpdrive.zip.decompress() or decompressobj() (stream mode)")
        src = pool.take(max(len(body), 1))
        src.buf.view[src.off:src.off + len(body)] = body
        dst = pool.take(decompress_guess(mv, fmt))
        job = Job(self, src.buf, src.off, len(body), dst.buf, dst.off,
                  min(dst.size, hw.HZ_MAX_SIZE), owns=True)
        job.chunks = [src, dst]
        self._build(job, fmt)
        return job

    def _empty_output(self) -> bytes:
        alg = self.fmt.alg
        return self._hdr + EMPTY_FINAL_BLOCK + trailer(alg, initial_checksum(alg), 0)

    def flush(self) -> None:
        """Ring the doorbell once for every job submitted with flush=False."""
        lane = self.lane
        if lane.started:
            with lane.lock:
                lane.q.ring()

    # -- completion -------------------------------------------------------------------------
    def on_complete(self, job: Job) -> None:
        """Called by the lane for each reaped job of this session (lane lock held)."""
        q = self.lane.current
        assert q is not None
        self._complete(job, q, job.slot_off)

    def _complete(self, job: Job, q: QmQueue, off: int) -> None:
        """A job of this session completed in the slot at byte offset `off` (lock held)."""
        job.consumed, job.produced, _, dw3 = _RESULT(q.sq, off)
        st = job.status = dw3 & 0xFF
        # Fast path: a finished compression job with the right tag.
        if dw3 in _DONE_WELL and self.compress_mode and \
                q.sq32[(off >> 2) + job.tag_dw] == job.tag:
            job.done = True
            if job.prepared:
                job.ready = self
            self.in_flight -= 1
            self._done.append(job)
            return
        self._complete_slow(job, q, off, st, dw3)

    def on_complete_many(self, q: QmQueue, s0: int, jobs: list[Job]) -> None:
        """Called by the lane for jobs of this session completed in consecutive slots from `s0`
        (lane lock held). Compression results are read as columns: one strided read per result
        word for the whole run; anything but "finished, status 0, right tag" goes job by job."""
        k = len(jobs)
        if self.compress_mode:
            dw = q.sqe_size >> 2
            b = s0 * dw
            e = b + k * dw
            sq32 = q.sq32
            dw3 = sq32[b + hw.DW_STATUS:e:dw].tolist()
            if dw3.count(_OK_LAST) + dw3.count(_NEG_LAST) == k and \
                    sq32[b + self._tag_dw:e:dw].tolist() == [j.tag for j in jobs]:
                for job, consumed, produced, st in zip(
                        jobs, sq32[b:e:dw].tolist(), sq32[b + hw.DW_PRODUCED:e:dw].tolist(), dw3):
                    job.consumed = consumed
                    job.produced = produced
                    job.status = st & 0xFF
                    job.done = True
                    if job.prepared:
                        job.ready = self
                self.in_flight -= k
                self._done += jobs
                return
        size = q.sqe_size
        for i, job in enumerate(jobs):
            job.slot_off = (s0 + i) * size
            self.on_complete(job)

    def _complete_slow(self, job: Job, q: QmQueue, off: int, st: int, dw3: int) -> None:
        job.slot_off = off
        sq = q.sq
        if q.sq32[(off >> 2) + job.tag_dw] != job.tag:
            job.error = ZipError(f"{q.name}: completion for the wrong job (tag mismatch)",
                                 hint="the device is misbehaving; close and reset it")
        elif self.compress_mode:
            if st == hw.STATUS_DST_TOO_SMALL and self._grow(job):
                return
            job.error = status_error(st, compress=True) or ZipError(
                f"compression job ended without its final block (status {st:#x})")
        else:
            self._check_decompressed(job, sq, off, st, dw3)
            if job.error is None and job.status == hw.STATUS_DST_TOO_SMALL:
                if self._grow(job):
                    return
                job.error = ZipBufferError(
                    f"decompressed output exceeds the {job.dst_len}-byte buffer",
                    hint="give a larger dst, or use decompress()/decompressobj() (stream "
                    "mode) for outputs over 8 MiB")
        job.done = True
        if job.prepared:
            job.ready = self
        self.in_flight -= 1
        self._done.append(job)

    def _check_decompressed(self, job: Job, sq: memoryview, off: int, st: int, dw3: int) -> None:
        if st == hw.STATUS_DST_TOO_SMALL:
            return
        if st == hw.STATUS_CRC_ERR:
            assert job.src is not None
            end = job.src_off + min(job.consumed, job.src_len)
            job.error = trailer_error(alg_of_job(job), read_stream_words(sq, off)[4],
                                      job.src.view[max(job.src_off, end - 8):end])
            return
        err = status_error(st, compress=False)
        if err is not None:
            job.error = err
            return
        if not decompression_complete(st, dw3):
            job.error = ZipDataError("Error -5 while decompressing data: incomplete or "
                                     "truncated stream")
            return
        alg = self.lane.template(self.fmt).alg if self.fmt.container != "auto" else \
            alg_of_job(job)
        tlen = trailer_size(alg)
        if tlen:
            # The engine checked the trailer; check its report against the bytes too.
            _, _, _, isize, checksum = read_stream_words(sq, off)
            assert job.src is not None
            end = job.src_off + job.consumed
            tail = job.src.view[max(job.src_off, end - 8):end]
            if bytes(tail[-tlen:]) != trailer(alg, checksum, isize) or \
                    (alg == hw.ALG_GZIP and isize != job.produced & 0xFFFF_FFFF):
                job.error = trailer_error(alg, checksum, tail)

    def _grow(self, job: Job) -> bool:
        """Resubmit with a larger output buffer (owned jobs only). Lane lock held."""
        if not job.owns or job.dst_len >= hw.HZ_MAX_SIZE or job.dst is None:
            return False
        pool = self.pool
        new = pool.take(min(hw.HZ_MAX_SIZE, job.dst_len * 4))
        if job.hdr:
            new.buf.view[new.off:new.off + len(job.hdr)] = job.hdr
        pool.give(job.chunks[1])
        job.chunks[1] = new
        job.dst, job.dst_off, job.dst_len = new.buf, new.off, min(new.size, hw.HZ_MAX_SIZE)
        fmt = self.fmt
        if not self.compress_mode:
            assert job.src is not None
            fmt = Format(GZIP if alg_of_job(job) == hw.ALG_GZIP else fmt.container,
                         fmt.window_bits) if fmt.container == "auto" else fmt
        self._build(job, fmt)
        lane = self.lane
        off = lane.post(job)
        lane.q.sq[off:off + hw.SQE_SIZE] = job.sqe
        lane.resubmitted = True
        return True

    def poll(self) -> list[Job]:
        """Completed jobs of this session (never blocks, no syscall)."""
        lane = self.lane
        q = lane.current
        if q is not None and q.completed():
            with lane.lock:
                lane.reap()
        done, self._done = self._done, []
        return done

    def poll_many(self, out: list[Job]) -> int:
        """Append this session's completed jobs to `out` and return how many (never blocks, no
        syscall, no list built: the hot-path form of `poll`)."""
        lane = self.lane
        q = lane.current
        if q is not None:
            if (q.cq16[q.cq_head * 8 + 7] & 1) == q.phase:  # q.completed()
                lane.acquire()
                try:
                    # A few jobs of ours, one at a time (no lists, no lane.reap); a run of
                    # them, or anything else, the lane's way.
                    while True:
                        job = q.take_one(self)
                        if job is None:
                            lane.reap()
                            break
                        self._complete(job, q, q.taken_slot * q.sqe_size)  # type: ignore[arg-type]
                        if (q.cq16[q.cq_head * 8 + 7] & 1) != q.phase:
                            break
                finally:
                    lane.release()
            elif q.outstanding:
                self._empty_polls += 1
                if self._empty_polls >= _REFRESH_POLLS:
                    self._refresh(q)
        done = self._done
        n = len(done)
        if n:
            out += done
            done.clear()
        return n

    def _refresh(self, q: QmQueue) -> None:
        """What a wait does on its refresh tick, for callers that only ever poll: re-store the
        SQ doorbell (a polled doorbell shared by several queues shows only the last store) and
        ask whether the device is still there."""
        self._empty_polls = 0
        q.watchdog()
        with self.lane.lock:
            q.refresh()

    def wait(self, timeout: float | None = None) -> list[Job]:
        """Block until at least one job of this session completes; returns the completed."""
        if not self._done and self.in_flight:
            self.lane.wait_until(lambda: bool(self._done), timeout)
        return self.poll()

    def drain(self, timeout: float | None = None) -> list[Job]:
        """Wait for every job in flight; returns all completed jobs not yet returned."""
        if self.in_flight:
            self.flush()
            self.lane.wait_until(lambda: self.in_flight == 0, timeout)
        return self.poll()

    def _check(self) -> None:
        """Refuse a closed session, or one whose engine is closed or was inherited through
        fork (the engine closes its sessions, and marks them in a forked child): one flag."""
        if self._closed:
            self.engine.check_open()  # a forked child: ForkedContextError, which says why
            raise ClosedError("the ZIP session is closed")

    def forked(self) -> None:
        """The engine was inherited through fork (the child's side): refuse everything."""
        self._closed = True
        if self._own_lane:
            self.lane.forget()  # its rings are not mapped in the child

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self.in_flight and not self.engine.closed:
                for job in self.drain():
                    job.release()
        finally:
            self._closed = True
            try:
                if self._own_lane:
                    self.lane.close()
            finally:
                if self._on_close is not None:
                    self._on_close(self)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
