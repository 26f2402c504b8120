"""Stream mode: inputs of any size as a chain of stateful jobs sharing one stream context.

Each job carries the new-stream flag on the first SQE, the running checksum (dw31) and length
(dw30) from the previous job's result, and the 64 KiB hardware context buffer (the engine is
handed `ctx + 64`, as UADK does). Jobs of one stream are strictly sequential. Compression
sync-flushes every non-final job, so all output so far is decodable and byte aligned; a final
flush with no pending input is finished in software (empty final block + trailer).
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Generator
from typing import NoReturn, TypeVar

from ...errors import ClosedError, InvalidArgumentError, WarpdriveError
from ...pool import Chunk
from . import hw
from .checksum import adler32_combine, crc32_combine
from .errors import ZipBufferError, ZipDataError, ZipError
from .header import Header, scan_header
from .job import COMPRESS, COMPRESS_JOB_MAX, DECOMPRESS, DECOMPRESS_JOB_MAX, Job, compress_bound
from .lane import EngineParts
from .sqe import (
    DEFLATE,
    EMPTY_FINAL_BLOCK,
    EMPTY_SYNC_BLOCK,
    Format,
    header,
    initial_checksum,
    read_result,
    read_stream_words,
    status_error,
    trailer,
    trailer_error,
    trailer_size,
)

Z_NO_FLUSH, Z_SYNC_FLUSH, Z_FULL_FLUSH, Z_FINISH = (zlib.Z_NO_FLUSH, zlib.Z_SYNC_FLUSH,
                                                     zlib.Z_FULL_FLUSH, zlib.Z_FINISH)
# Every mode that asks for "everything so far, decodable" without ending the stream.
SYNC_MODES = frozenset((zlib.Z_PARTIAL_FLUSH, zlib.Z_SYNC_FLUSH, zlib.Z_FULL_FLUSH,
                        zlib.Z_BLOCK, zlib.Z_TREES))
_E = TypeVar("_E", bound=WarpdriveError)


def _again(err: _E) -> _E:
    """A fresh exception like `err` (same class and message, no traceback) to raise again."""
    new = type(err).__new__(type(err))
    new.__dict__.update(err.__dict__)
    new.args = err.args
    return new


class _StreamBase:
    def __init__(self, engine: EngineParts, direction: int) -> None:
        engine.check_open()
        self.engine = engine
        self.pool = engine.pool
        self.lane = engine.lanes[direction]
        self.ctx = self.pool.take(hw.HW_CTX_SIZE)
        self._bufs: list[Chunk] = [self.ctx]
        self._new = True
        self._closed = False
        # The error that ended the stream, re-raised: a ZipError, or the engine's ClosedError
        # (its close ended a pipe of the stream: _PipeLoan).
        self._failed: WarpdriveError | None = None
        self.checksum = 0
        self.isize = 0

    def _buf(self, attr: str, size: int) -> Chunk:
        """A per-stream buffer of at least `size` bytes (kept between jobs)."""
        cur: Chunk | None = getattr(self, attr, None)
        if cur is not None and cur.size >= size:
            return cur
        if cur is not None:
            self._bufs.remove(cur)
            self.pool.give(cur)
        chunk = self.pool.take(size)
        self._bufs.append(chunk)
        setattr(self, attr, chunk)
        return chunk

    def on_complete(self, job: Job) -> None:
        sq = self.lane.q.sq
        job.consumed, job.produced, job.status = read_result(sq, job.slot_off)
        ctx_dw0, _, _, job.isize, job.checksum = read_stream_words(sq, job.slot_off)
        job.tag = ctx_dw0  # reused to carry ctx_dw0 back (a stream job needs no tag check)
        job.done = True

    def _post(self, fmt: Format, src: Chunk, n: int, dst: Chunk, avail: int, finish: bool,
              src_at: int = 0) -> Job:
        """Submit the stream's next job (input: `n` bytes of `src` from `src_at`) without
        waiting for it."""
        lane = self.lane
        tmpl = lane.template(fmt)
        job = Job(self, src.buf, src.off + src_at, n, dst.buf, dst.off, avail)
        with lane.lock:
            job.sqe = tmpl.build(
                src=src.iova + src_at, in_len=n, dst=dst.iova, avail=avail,
                tag=lane.next_tag(), finish=finish, stateful=True, new_stream=self._new,
                ctx=self.ctx.iova + hw.HW_CTX_RSV_OFFSET, isize=self.isize,
                checksum=self.checksum)
            off = lane.post(job)
            lane.q.sq[off:off + hw.SQE_SIZE] = job.sqe
            lane.q.ring()
        return job

    def _run(self, fmt: Format, src: Chunk, n: int, dst: Chunk, avail: int,
             finish: bool, src_at: int = 0) -> Job:
        job = self._post(fmt, src, n, dst, avail, finish, src_at)
        # The wait without the lane lock (taken to reap): other threads' jobs go on meanwhile.
        try:
            done = _is_done(job)
            self.lane.wait_until(done, since=self.lane.poll(done))
        except BaseException:  # (a timeout, the device gone, an interrupt)
            self._abandon(job, (src, dst))
            raise
        return job

    def _abandon(self, job: Job | None, chunks: tuple[Chunk, ...]) -> None:
        """Left with `job` not taken into the stream's state (an error, an interrupt, a pipe
        the caller stopped): the stream cannot go on (later calls raise) and its buffers go
        back, except, while the job may still be on the engine, the ones it uses (`chunks`,
        kept in `_bufs`, and the context): those are never reused (freed with the engine).
        No waiting: this may run in a finalizer."""
        if job is not None and not job.done and not self._closed:
            for c in (*chunks, self.ctx):
                self._bufs.remove(c)
        if self._failed is None and not self._closed:
            self._failed = ZipError("the stream was left with a job unfinished",
                                    hint="start a new stream")
        self.close()

    def _check(self) -> None:
        if self._failed is not None:
            raise _again(self._failed)
        if self._closed:
            raise ClosedError("the ZIP stream is closed")
        engine = self.engine
        if engine.closed:  # (its buffers are unmapped: the engine's error, not theirs)
            engine.check_open()

    def _fail(self, err: ZipError) -> NoReturn:
        """End the stream with `err`: the buffers go back to the pool now, later calls raise
        the same error again (as a zlib stream stays in its error state), and no reference
        cycle is left behind (the exception's traceback holds this frame; this frame must not
        hold the exception), so the stream is freed as soon as its owner lets go of it."""
        self._failed = _again(err)
        self.close()
        try:
            raise err
        finally:
            del err

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for chunk in self._bufs:
            self.pool.give(chunk)
        self._bufs.clear()

    def __enter__(self) -> _StreamBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Deflater(_StreamBase):
    """Stream compression (`compressobj`). Input is gathered into jobs of `chunk` bytes.

    Chunks of PIECE_MIN or more go out as independent pieces (`_PieceLine`), several on the
    engine at once: `compress()` queues them and returns the output of those already done,
    waiting only when PIECES_IN_FLIGHT are out (as zlib, output may come later than its input;
    a flush returns everything). Each piece starts without history (pigz's layout: ~1% larger
    at 1 MiB); once pieces are used, flushes send the pending bytes as a piece too. Smaller
    chunks, and streams that never fill one, are one stateful job at a time (history kept)."""

    def __init__(self, engine: EngineParts, fmt: Format, level: int = -1, *,
                 chunk: int = 1 << 20) -> None:
        super().__init__(engine, COMPRESS)
        if not 1 <= chunk <= COMPRESS_JOB_MAX:
            raise ZipError(f"chunk must be 1..{COMPRESS_JOB_MAX} bytes")
        self.fmt = fmt
        self.alg = fmt.alg
        self.chunk = chunk
        self.checksum = initial_checksum(self.alg)
        self.level = level
        self._hdr = header(fmt, level)
        self._pending = bytearray()
        self._finished = False
        self._line: _PieceLine | None = None  # pieces in flight, once a chunk went as pieces

    def _emit(self, body: bytes) -> bytes:
        if self._hdr:
            body, self._hdr = self._hdr + body, b""
        return body

    def _send(self, data: memoryview) -> bytes:
        """A full chunk: as a piece when chunks are large enough, else a stateful job."""
        if self._line is None and self.chunk < PIECE_MIN:
            return self._job(data, False)
        return self._piece(data, False)

    def _piece(self, data: memoryview, last: bool) -> bytes:
        """Queue `data` as a piece; returns the output of the pieces done so far (waiting for
        the oldest only when the line is full, or for all of them when `last`)."""
        line = self._line
        if line is None:
            line = self._line = _PieceLine(self.engine, self.fmt)
        if not line.inflight:
            line.checksum = self.checksum  # the pieces' checksums continue the stream's
        try:
            with self.lane.lock:
                line.submit(data, last)
        except ZipError as e:
            self._abandon_pieces()
            self._fail(e)
        self._new = False
        self.isize = (self.isize + len(data)) & 0xFFFF_FFFF
        return self._take(line, last)

    def _drain(self) -> bytes:
        """The output of every piece in flight (a flush)."""
        line = self._line
        return self._take(line, True) if line is not None and line.inflight else b""

    def _take(self, line: _PieceLine, everything: bool) -> bytes:
        """The output of the finished pieces at the front: waiting for every piece with
        `everything`, else for the oldest only while the line is full."""
        out: list[bytes] = []
        try:
            while line.inflight and (everything or line.full):
                out += line.take(wait=True, locked=False)
            out += line.take(wait=False, locked=False)
        except ZipError as e:
            self._abandon_pieces()
            self._fail(e)
        self.checksum = line.checksum
        return self._emit(b"".join(out))

    def _abandon_pieces(self) -> None:
        if self._line is not None:
            self._line.drain(locked=False)

    def _job(self, data: memoryview, finish: bool) -> bytes:
        n = len(data)
        if self._line is not None:  # pieces from here on (a stateful job has no history)
            # The pending bytes join the pieces in flight (not after them: they would wait for
            # the whole line first); the flush then takes every piece's output, in order.
            if n:
                out = self._piece(data, finish)
                if not finish:
                    out += self._drain()
            else:
                out = self._drain() + self._emit(EMPTY_FINAL_BLOCK if finish else
                                                 EMPTY_SYNC_BLOCK)
            return out + trailer(self.alg, self.checksum, self.isize) if finish else out
        if finish and self._new and n >= SPLIT_MIN:
            # The whole stream in one job: cut as the one-shot `compress` cuts it, so both give
            # the same bytes for the same data, as zlib's do.
            self._hdr = b""
            self._new = False
            return compress_pieces(self.engine, data, self.fmt, self.level)
        if n == 0:
            if finish:
                out = EMPTY_FINAL_BLOCK + trailer(self.alg, self.checksum, self.isize)
            else:
                out = EMPTY_SYNC_BLOCK
            return self._emit(out)
        src = self._buf("_src", n)
        src.view[:n] = data
        avail = min(compress_bound(n), hw.HZ_MAX_SIZE)
        dst = self._buf("_dst", avail)
        job = self._run(self.fmt, src, n, dst, avail, finish)
        st = job.status & hw.STATUS_MASK
        if st == hw.STATUS_DST_TOO_SMALL and n > 1:
            half = n // 2  # cannot happen with >= 1.125x room; split rather than fail
            return self._job(data[:half], False) + self._job(data[half:], finish)
        if st not in (hw.STATUS_OK, hw.STATUS_NEGACOMPRESS):
            self._fail(status_error(st, compress=True) or ZipBufferError(
                "the engine found no room for a stream block"))
        if job.consumed != n:
            self._fail(ZipError(f"the engine consumed {job.consumed} of {n} input bytes"))
        self._new = False
        self.checksum, self.isize = job.checksum, job.isize
        return self._emit(bytes(dst.view[:job.produced]))

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        self._check()
        if self._finished:
            raise ZipError("Error -2 while compressing data: inconsistent stream state",
                           hint="the stream was finished; start a new compressobj()")
        mv = memoryview(data).cast("B")
        out = []
        if self._pending:
            take = min(self.chunk - len(self._pending), len(mv))
            self._pending += mv[:take]
            mv = mv[take:]
            if len(self._pending) < self.chunk:
                return b""
            out.append(self._send(memoryview(self._pending)))
            self._pending = bytearray()
        while len(mv) >= self.chunk:
            out.append(self._send(mv[:self.chunk]))
            mv = mv[self.chunk:]
        self._pending += mv
        return b"".join(out)

    def flush(self, mode: int = Z_FINISH) -> bytes:
        """zlib's flush modes. Z_FINISH ends the stream. Z_SYNC_FLUSH, and the modes that
        promise less (Z_PARTIAL_FLUSH, Z_BLOCK, Z_TREES), end the engine's job with a sync
        flush: everything so far is decodable and byte aligned. Z_FULL_FLUSH also means to
        forget the history; the engine cannot, so it is a sync flush too (the output stays
        valid; only the restart point is lost)."""
        self._check()
        if mode == Z_NO_FLUSH or self._finished:
            return b""
        if mode == Z_FINISH:
            pending, self._pending = self._pending, bytearray()
            self._finished = True
            return self._job(memoryview(pending), True)
        if mode in SYNC_MODES:
            pending, self._pending = self._pending, bytearray()
            return self._job(memoryview(pending), False)
        raise ZipError("Error -2 while flushing: inconsistent stream state",
                       hint=f"{mode} is not a zlib flush mode")

    def finish(self) -> bytes:
        return self.flush(Z_FINISH)

    def close(self) -> None:
        line = self._line
        if line is not None and not self._closed:
            # No waiting here (close may run in a finalizer): the buffers of a piece the engine
            # may still write stay out of the pool (freed with the engine).
            for job, chunks, _ in line.inflight:
                if job.done:
                    for c in chunks:
                        self.pool.give(c)
            line.inflight.clear()
        super().close()


class Inflater(_StreamBase):
    """Stream decompression (`decompressobj`): any input size, any output size; with
    `max_length`, output (and memory) bounded per call. The header is read by software
    (errors at the same byte as zlib); the engine does the body and checks the trailer,
    which is rejected as soon as the bad field has arrived, as zlib does."""

    # Output room of a job without max_length: what the input can give, from the stream's
    # expansion so far (output per input byte; 4 before there is any: text deflates 3-4x) with
    # a margin, so that one job usually gives a call all its output (a job per call, not
    # several). A job that fills its room leaves output pending: the next gets 4x the room.
    OUT_MIN = 64 << 10
    RATIO_START = 4

    def __init__(self, engine: EngineParts, fmt: Format) -> None:
        super().__init__(engine, DECOMPRESS)
        self.fmt = fmt
        self.header: Header | None = None
        self._in = bytearray()  # input the engine has not taken yet (no max_length reached)
        self._pending_out = False
        self._spill = b""
        self._ended = False  # the engine reported the end of the stream
        self._tail = b""  # the last 8 bytes the engine consumed: trailer checks
        self._body_in = 0  # body bytes in and out so far: the expansion that sizes the room
        self._body_out = 0
        # The unconsumed_tail a limited call returned and where it still is in `_src`: fed
        # back (as zlib's users do), its next job needs no copy in.
        self._kept: tuple[bytes, int] | None = None
        self.unused_data = b""
        self.unconsumed_tail = b""
        if fmt.container == DEFLATE:
            self._header_read(Header(0, fmt))

    def _header_read(self, head: Header) -> None:
        self.header = head
        self.fmt = head.fmt
        self.alg = head.fmt.alg
        self.checksum = initial_checksum(self.alg)

    @property
    def eof(self) -> bool:
        """True once the end of the stream was reached and all its output returned (as zlib)."""
        return self._ended and not self._spill

    def _take_spill(self, max_length: int) -> bytes:
        n = max_length or len(self._spill)
        out, self._spill = self._spill[:n], self._spill[n:]
        return out

    def decompress(self, data: bytes | bytearray | memoryview, max_length: int = 0) -> bytes:
        if max_length < 0:
            raise InvalidArgumentError("max_length must be non-negative")  # a ValueError, as zlib
        if self._ended:  # as zlib: more input after the end is unused data (buffers may be gone)
            if data:
                self.unused_data += bytes(data)
            self.unconsumed_tail = b""
            return self._take_spill(max_length)
        self._check()
        if self.header is None:
            self._in += data
            try:
                head = scan_header(self._in, self.fmt)
            except ZipDataError as e:
                self._fail(e)
            if head is None:
                self.unconsumed_tail = b""
                return self._take_spill(max_length)
            del self._in[:head.length]
            self._header_read(head)
            data = b""
        # The input: straight from the caller's buffer into the job's (one copy), after what
        # the engine left untaken last time (rare: the header's remainder, a cut symbol).
        inp = memoryview(data).cast("B") if data else memoryview(b"")
        kept, self._kept = self._kept, None
        at = kept[1] if kept is not None and not self._in and inp.obj is kept[0] and \
            len(inp) == len(kept[0]) else -1
        if self._in:
            inp = memoryview(bytes(self._in) + bytes(inp))
            self._in.clear()
        parts = [self._take_spill(max_length)] if self._spill else []
        got = len(parts[0]) if parts else 0
        pos, end, room, limited, left_at = 0, len(inp), 0, False, -1
        while not self._ended:
            if max_length and got >= max_length:
                limited = True
                break
            if pos == end and not self._pending_out:
                break
            n = min(end - pos, DECOMPRESS_JOB_MAX)
            # Room: what the caller may still be given (zlib's max_length: the engine stops
            # where zlib stops, at least a 4 KiB job), else what the input can give.
            room = max(max_length - got, 4096) if max_length else \
                self._room(n, room if self._pending_out else 0)
            avail = min(room, hw.HZ_MAX_SIZE)
            if at >= 0:  # (the tail fed back: still in `_src`, from `at`)
                src = self._buf("_src", 1)
            else:
                src, at = self._buf("_src", max(n, 1)), 0
                src.view[:n] = inp[pos:pos + n]
            dst = self._buf("_dst", avail)
            job = self._run(self.fmt, src, n, dst, avail, False, at)
            used = self._settle(job, src.view, at, n)
            made = job.produced
            left_at = at + used if pos + n == end else -1  # (where the rest of the input is)
            at = -1
            if made:
                parts.append(bytes(dst.view[:made]))  # (the one copy out)
                got += made
            pos += used
            self._body_in += used
            self._body_out += made
            if self._ended:
                self.unused_data = bytes(inp[pos:])
                pos = end
                break
            if not (used or made or self._pending_out):
                break  # the engine needs more input to go on
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        if max_length and got > max_length:
            self._spill = out[max_length:] + self._spill
            out = out[:max_length]
            limited = True
        if pos < end:
            if limited:
                self.unconsumed_tail = bytes(inp[pos:])
                if left_at >= 0:
                    self._kept = (self.unconsumed_tail, left_at)
                return out
            self._in += inp[pos:]  # (kept, as zlib keeps input it could not use yet)
        self.unconsumed_tail = b""
        return out

    def _room(self, n: int, last: int) -> int:
        """Output room for a job of `n` input bytes without max_length (see OUT_MIN)."""
        if last:  # the last job's room was full and output is still pending
            return min(last * 4, hw.HZ_MAX_SIZE)
        ratio = self._body_out / self._body_in if self._body_in >= 4096 else self.RATIO_START
        return min(max(int(n * ratio * 1.25), self.OUT_MIN), hw.HZ_MAX_SIZE)

    def _settle(self, job: Job, src: memoryview, at: int, n: int) -> int:
        """A completed job's outcome into the stream's state (its input: `n` bytes of `src`
        from `at`): errors raise, the running checksum and length, output left pending, the
        end (trailer checked). Returns how many input bytes it used."""
        st = job.status & hw.STATUS_MASK
        used = min(job.consumed, n)
        self._tail = (self._tail + bytes(src[at + max(0, used - 8):at + used]))[-8:]
        if st == hw.STATUS_CRC_ERR:
            self._fail(trailer_error(self.alg, job.checksum, self._tail))
        if st not in (hw.STATUS_OK, hw.STATUS_NEGACOMPRESS, hw.STATUS_DECOMP_END):
            # Not bound to a local here: this frame would hold its own exception (a cycle).
            self._fail(status_error(st, compress=False) or ZipError(f"status {st:#x}"))
        self._new = False
        self.checksum, self.isize = job.checksum, job.isize
        self._pending_out = (job.tag & hw.CTX_ST_MASK) in (hw.CTX_ST_DECOMP_NO_SPACE,
                                                            hw.CTX_ST_DECOMPING_NO_SPACE)
        if st == hw.STATUS_DECOMP_END:
            tlen = trailer_size(self.alg)
            # The engine checked the trailer; its report is checked against the bytes too.
            if tlen and self._tail[-tlen:] != trailer(self.alg, job.checksum, job.isize):
                self._fail(trailer_error(self.alg, job.checksum, self._tail))
            self._ended = True
        return used

    # Input bytes per job and output room per job of `pipe` (two of each: ~10 MiB of DMA
    # memory whatever the stream expands to).
    PIPE_IN = 1 << 20
    PIPE_OUT = 4 << 20

    def pipe(self, readinto: Callable[[memoryview], int],
             first: bytes | bytearray | memoryview = b"") -> Generator[memoryview, None, None]:
        """The rest of the stream, `first` then what `readinto` reads (it fills a view and
        says how much; 0 at the end of the input), as views of the output in DMA memory, each
        valid until the next one is asked for (it is released then). Two jobs' buffers: the
        engine inflates the next piece while the caller writes this one out, and the input is
        read straight into DMA memory meanwhile, so the caller's work and the engine's overlap
        and no byte is copied in this process. Ends at the stream's end (`eof`; `unused_data`
        holds what was read after it) or when the input ends first (`eof` stays False).
        Errors raise as `decompress` raises them, after the output before the failed job.
        The engine's close ends a pipe partway (`_PipeLoan`): the piece handed out is released
        and the pipe, resumed, raises the engine's ClosedError."""
        self._check()
        self._in += first
        while self.header is None:
            try:
                head = scan_header(self._in, self.fmt)
            except ZipDataError as e:
                self._fail(e)
            if head is not None:
                del self._in[:head.length]
                self._header_read(head)
                break
            more = bytearray(64 << 10)
            k = readinto(memoryview(more))
            if not k:
                return
            self._in += more[:k]
        if self._ended:
            return
        # Jobs take at most PIPE_IN bytes: what was given or read before (`first`, the
        # header's reads: any length) goes into the jobs' buffers ahead of what `readinto`
        # reads, as they have room.
        size = self.PIPE_IN
        pending = self._in
        # One buffer cut in four (a map is a request to the device's IOMMU or model and a
        # check of this process's memory map: one, not four, before the first job).
        # The pipe gives it back itself, when it ends (not with the stream: a failed job's
        # output is copied from it after the stream closed) and never while a job of it may
        # still be on the engine.
        whole = self.pool.take(2 * size + 2 * self.PIPE_OUT)
        srcs = [Chunk(whole.buf, whole.off + k * size, size) for k in (0, 1)]
        dsts = [Chunk(whole.buf, whole.off + 2 * size + k * self.PIPE_OUT, self.PIPE_OUT)
                for k in (0, 1)]
        avail = min(self.PIPE_OUT, hw.HZ_MAX_SIZE)
        ended_input = False
        # The piece handed out is lent to the caller: the engine's close takes it back.
        loan = _PipeLoan(self)
        loans = self.engine.loans
        loans.add(loan)

        def fill(c: Chunk, have: int) -> int:
            """Read into `c` after its first `have` bytes, until it is full or the input
            ends; returns how many it holds."""
            nonlocal ended_input
            while have < size and not ended_input:
                if pending:
                    k = min(len(pending), size - have)
                    c.view[have:have + k] = pending[:k]
                    del pending[:k]
                else:
                    k = readinto(c.view[have:size])
                    if not k:
                        ended_input = True
                have += k
            return have

        i = at = j = other = n = 0  # input: srcs[i][at:at + n]; srcs[i ^ 1] holds `other` bytes
        prev: memoryview | None = None  # the last job's output, handed out after the next job
        job: Job | None = None          # is on the engine
        finished = False
        try:
            n = fill(srcs[0], 0)
            while True:
                job = self._post(self.fmt, srcs[i], n, dsts[j], avail, False, src_at=at)
                if prev is not None:
                    loan.view = prev
                    yield prev
                    loan.view = None
                    prev.release()
                    prev = None
                    if loan.revoked:  # the engine closed meanwhile: ClosedError
                        self._check()
                if other < size and not ended_input:
                    other = fill(srcs[i ^ 1], other)
                done = job
                self.lane.wait_until(_is_done(done))
                job = None
                try:
                    used = self._settle(done, srcs[i].view, at, n)
                except ZipDataError:
                    if done.produced and done.status & hw.STATUS_MASK in (
                            hw.STATUS_CRC_ERR, hw.STATUS_DECOMP_END):
                        # The body inflated: its output goes out before the trailer's error,
                        # as gzip(1) writes it and Python's gzip returns it (a copy: the
                        # failed stream is closed).
                        yield memoryview(bytes(dsts[j].view[:done.produced]))
                    raise
                if done.produced:
                    prev = dsts[j].view[:done.produced]
                    j ^= 1
                at += used
                n -= used
                if self._ended:
                    self.unused_data = bytes(srcs[i].view[at:at + n]) + \
                        bytes(srcs[i ^ 1].view[:other]) + bytes(pending)
                    pending.clear()
                    break
                if self._pending_out or (n and (used or done.produced)):
                    continue  # (the same piece goes on)
                if not other:
                    other = fill(srcs[i ^ 1], 0)
                if n and other:  # no progress on the piece's last bytes: before the next
                    rest = bytes(srcs[i].view[at:at + n]) + bytes(srcs[i ^ 1].view[:other])
                    if len(rest) > size:
                        self._fail(ZipError("the engine took no input from a stream piece",
                                            hint="the device is misbehaving; close and reset it"))
                    srcs[i ^ 1].view[:len(rest)] = rest
                    other = len(rest)
                if not other:
                    break  # the input ended before the stream did
                i, at, n, other = i ^ 1, 0, other, 0
            finished = True
            if prev is not None:
                loan.view = prev
                yield prev
                loan.view = None
        finally:
            loans.discard(loan)
            if prev is not None:
                try:
                    prev.release()
                except BufferError:  # (a view of it still held: against the rule above)
                    pass
            if not finished:  # (a job unsettled or input held in the pipe's buffers)
                self._abandon(job, ())
            if job is None or job.done:
                self.pool.give(whole)

    def flush(self, length: int = 0) -> bytes:
        """Remaining output (zlib's `Decompress.flush`): pending output is produced; input
        that does not finish the stream stays unfinished (check `eof`). After a data error
        there is nothing more (as zlib); after the engine's close, its ClosedError."""
        if isinstance(self._failed, ZipError):
            return b""
        self._check()
        tail, self.unconsumed_tail = self.unconsumed_tail, b""
        return self.decompress(tail, length)


class _PipeLoan:
    """The piece of output a pipe has handed out (`view`, in the engine's DMA memory), held
    in the engine's `loans` while the pipe runs. The engine's close revokes it: the view is
    released (a view keeps the memory exported, and the DMA space then refuses to unmap it:
    the close failed with DeviceBusyError) and the stream ends with the engine's ClosedError,
    which the pipe raises when it is resumed. The memory itself goes with the engine's (its
    queues are stopped first: no job of the pipe is running on it)."""

    __slots__ = ("revoked", "stream", "view")

    def __init__(self, stream: _StreamBase) -> None:
        self.stream = stream
        self.view: memoryview | None = None
        self.revoked = False

    def revoke(self, err: ClosedError) -> None:
        self.revoked = True
        view, self.view = self.view, None
        if view is not None:
            try:
                view.release()
            except BufferError:  # (exported further, against pipe's rule: it stays mapped)
                pass
        stream = self.stream
        if stream._failed is None:
            stream._failed = err
        stream.close()


# -- one input as pieces compressed at once -----------------------------------------------------
PIECE_MIN = 32 << 10
PIECE_MAX = 1 << 20
PIECES_IN_FLIGHT = 8
SPLIT_MIN = 2 * PIECE_MIN  # one-shot compression from this size on goes out as pieces


def piece_size(n: int) -> int:
    """How `compress_pieces` cuts `n` bytes: four pieces (two per core of a two-core model,
    evenly loaded), none under 32 KiB (each piece starts without history: 64 KiB in two
    pieces compresses about 4% larger, 1 MiB in four about 1%) nor over 1 MiB (memory)."""
    return min(PIECE_MAX, max(PIECE_MIN, -(-n // 4)))


class _PieceLine:
    """Independent pieces of one deflate stream on the engine (pigz's layout): each is the first
    job of an engine stream of its own (its own context), raw deflate ending with a sync flush
    (the final block on the last), so the pieces concatenate into one valid deflate stream; the
    hardware takes them as separate SQEs, and a device with several engines, or the model's
    workers, runs them in parallel. At most `limit` pieces are on the engine (memory stays
    bounded); their output comes back in input order, and the engine's per-piece checksums are
    combined into the stream's. A piece's buffers go back to the pool only once the engine is
    done with it (`drain`, also after an error)."""

    def __init__(self, engine: EngineParts, fmt: Format, limit: int = PIECES_IN_FLIGHT) -> None:
        engine.check_open()
        self.pool = engine.pool
        self.lane = engine.lanes[COMPRESS]
        self.tmpl = self.lane.template(fmt)
        self.alg = alg = fmt.alg
        self.limit = limit
        self.combine = crc32_combine if alg == hw.ALG_GZIP else \
            adler32_combine if alg == hw.ALG_ZLIB else None
        self.checksum = initial_checksum(alg)  # of the pieces taken so far
        self.inflight: deque[tuple[Job, list[Chunk], bool]] = deque()

    def on_complete(self, job: Job) -> None:
        """A piece completed (lane lock held): its result words."""
        sq = self.lane.q.sq
        job.consumed, job.produced, job.status = read_result(sq, job.slot_off)
        _, _, _, job.isize, job.checksum = read_stream_words(sq, job.slot_off)
        job.done = True

    @property
    def full(self) -> bool:
        return len(self.inflight) >= self.limit

    def submit(self, data: memoryview, last: bool, *, ring: bool = True) -> None:
        """Queue one piece (the caller holds the lane lock). With `ring=False` the doorbell
        waits for the next `ring()` (one per batch)."""
        k = len(data)
        pool, lane, alg = self.pool, self.lane, self.alg
        src = pool.take(max(k, 1))
        chunks = [src]
        try:
            dst = pool.take(compress_bound(k))
            chunks.append(dst)
            ctx = pool.take(hw.HW_CTX_SIZE)
            chunks.append(ctx)
            src.view[:k] = data
            avail = min(dst.size, hw.HZ_MAX_SIZE)
            job = Job(self, src.buf, src.off, k, dst.buf, dst.off, avail)
            job.sqe = self.tmpl.build(src=src.iova, in_len=k, dst=dst.iova, avail=avail,
                                      tag=lane.next_tag(), finish=last, stateful=True,
                                      new_stream=True, ctx=ctx.iova + hw.HW_CTX_RSV_OFFSET,
                                      isize=0, checksum=initial_checksum(alg))
            off = lane.post(job)
        except BaseException:
            for c in chunks:
                pool.give(c)
            raise
        lane.q.sq[off:off + hw.SQE_SIZE] = job.sqe
        self.inflight.append((job, chunks, last))
        if ring:
            lane.q.ring()

    def ring(self) -> None:
        self.lane.q.ring()

    def take(self, *, wait: bool, locked: bool) -> list[bytes]:
        """The deflate output of the finished pieces at the front, in order (without the
        trailer the engine wrote after a last piece: it covers that piece only); with `wait`,
        the oldest piece is waited for first. A failed piece raises (the pieces still in
        flight stay: `drain` them)."""
        out: list[bytes] = []
        inflight, lane = self.inflight, self.lane
        if wait and inflight:
            lane.wait_until(_is_done(inflight[0][0]), locked=locked)
        elif inflight and not inflight[0][0].done and lane.q.completed():
            if locked:
                lane.reap()
            else:
                with lane.lock:
                    lane.reap()
        while inflight and inflight[0][0].done:
            job, chunks, last = inflight.popleft()
            try:
                body, self.checksum = _piece_output(job, chunks[1], last, self.alg,
                                                    self.checksum, self.combine)
                out.append(body)
            finally:
                for c in chunks:
                    self.pool.give(c)
        return out

    def drain(self, *, locked: bool) -> None:
        """Wait for every piece in flight and give its buffers back, dropping its output
        (after an error, or when the stream is dropped)."""
        while self.inflight:
            job, chunks, _ = self.inflight[0]
            self.lane.wait_until(_is_done(job), locked=locked)
            self.inflight.popleft()
            for c in chunks:
                self.pool.give(c)


def compress_pieces(engine: EngineParts, mv: memoryview, fmt: Format, level: int = -1,
                    piece: int | None = None) -> bytes:
    """One complete stream of `fmt` holding `mv`, compressed as independent pieces on the
    engine at once (`_PieceLine`); a failed piece fails the call after the pieces in flight
    completed."""
    line = _PieceLine(engine, fmt)
    lane = line.lane
    piece = piece or piece_size(len(mv))
    n = len(mv)
    out = [header(fmt, level)]
    with lane.lock:
        try:
            for start in range(0, max(n, 1), piece):
                last = start + piece >= n
                line.submit(mv[start:start + piece], last, ring=False)
                if last or line.full:
                    line.ring()
                    while line.inflight and (last or line.full):
                        out += line.take(wait=True, locked=True)
        finally:
            line.drain(locked=True)
    out.append(trailer(line.alg, line.checksum, n))
    return b"".join(out)


def _is_done(job: Job) -> Callable[[], bool]:
    return lambda: job.done


def _piece_output(job: Job, dst: Chunk, last: bool, alg: int, checksum: int,
                  combine: Callable[[int, int, int], int] | None) -> tuple[bytes, int]:
    """A completed piece's deflate output (without the trailer the engine wrote after the
    last one: it covers that piece only), and the running checksum with it."""
    st = job.status & hw.STATUS_MASK
    if st not in (hw.STATUS_OK, hw.STATUS_NEGACOMPRESS) or job.consumed != job.src_len or \
            bool(job.status & hw.STATUS_LAST_BLOCK) != last:
        raise status_error(st, compress=True) or ZipError(
            f"a compression piece ended badly (status {st:#x}, consumed {job.consumed} of "
            f"{job.src_len})", hint="the device is misbehaving; close and reset it")
    end = job.produced - (trailer_size(alg) if last else 0)
    body = bytes(dst.view[:max(end, 0)])
    if combine is not None:
        checksum = combine(checksum, job.checksum, job.src_len)
    return body, checksum
