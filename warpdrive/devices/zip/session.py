"""ZIP jobs over QM queues: the engine (a compress and a decompress queue on one function), batched
stateless jobs (`Session`), and pooled DMA buffers.

The engine does not know its backend: it is handed a `QueueSource` (a VF brought up over a
`Device` by `bringup.QmDevice`, or uacce queues the kernel set up, `uacce.UacceQueues`) and only
uses its DMA space, its queues and its way of blocking.

Hot path (`Session.submit` of a prepared job, `flush`, `poll`): copy a prebuilt 128-byte SQE into
the ring, one doorbell store per batch, CQE phase polling in memory, one CQ doorbell per reap. No
syscall, no message, no per-job DMA map.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from ...dma import DmaSpace
from ...errors import ClosedError, DeviceTimeoutError, InvalidArgumentError, WarpdriveError
from ...forkguard import ForkSafe
from ...memory import DmaBuffer
from ..hisi_qm.queue import QmQueue
from . import hw
from .errors import ZipBufferError, ZipDataError, ZipError
from .sqe import (
    EMPTY_FINAL_BLOCK,
    GZIP,
    Format,
    SqeTemplate,
    header,
    initial_checksum,
    parse_header,
    read_result,
    read_stream_words,
    status_error,
    trailer,
    trailer_size,
)

COMPRESS = hw.ZIP_QC_COMPRESS
DECOMPRESS = hw.ZIP_QC_DECOMPRESS
DIRECTIONS = {"compress": COMPRESS, "decompress": DECOMPRESS}

# A stateless compression job's output must fit one SQE (8 MiB) even for incompressible input:
# UADK keeps out >= 1.125 * in, so one job takes at most 7 MiB of input.
COMPRESS_JOB_MAX = 7 << 20
DECOMPRESS_JOB_MAX = hw.HZ_MAX_SIZE
_LAST = hw.STATUS_LAST_BLOCK
_RESULT = hw.SQE_RESULT.unpack_from


def compress_bound(n: int) -> int:
    """Output room a compression job gets for `n` input bytes (>= 1.125 n, >= 256)."""
    return max(n + (n >> 3) + 64, 256)


class QueueSource(Protocol):
    """Where an engine gets its queues: a brought-up VF, or uacce queues."""

    name: str
    backend: str

    @property
    def version(self) -> int:
        """QM version (PCI revision, or from the uacce api string)."""

    @property
    def dma(self) -> DmaSpace: ...

    def start_queue(self, qc_type: int, *, depth: int | None = None,
                    irq: bool = False) -> QmQueue: ...

    def stop_queue(self, q: QmQueue) -> None: ...

    def block(self, q: QmQueue, remaining: float) -> None: ...

    def close(self) -> None: ...


class Chunk:
    """`size` bytes at `off` in a mapped DMA buffer."""

    __slots__ = ("buf", "off", "size", "whole")

    def __init__(self, buf: DmaBuffer, off: int, size: int, whole: bool = False) -> None:
        self.buf, self.off, self.size, self.whole = buf, off, size, whole

    @property
    def iova(self) -> int:
        assert self.buf.iova is not None
        return self.buf.iova + self.off

    @property
    def view(self) -> memoryview:
        return self.buf.view[self.off:self.off + self.size]


class BufferPool:
    """DMA memory kept mapped for reuse: a map costs syscalls (or vfio-user messages) and a
    memory check, so small pieces are cut from 4 MiB slabs and large buffers are recycled."""

    MIN = 64 << 10
    SLAB = 4 << 20
    SLAB_MAX = 512 << 10
    CHUNK_MIN = 16 << 10

    def __init__(self, dma: DmaSpace, max_idle: int = 96 << 20) -> None:
        self.dma = dma
        self.max_idle = max_idle
        self._free: dict[int, list[DmaBuffer]] = {}
        self._chunks: dict[int, list[Chunk]] = {}
        self._slabs: list[DmaBuffer] = []
        self._idle = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> Chunk:
        """A piece of at least `size` bytes (a slab piece, or a whole pooled buffer)."""
        c = self.CHUNK_MIN
        while c < size:
            c <<= 1
        if c > self.SLAB_MAX:
            buf = self.get(size)
            return Chunk(buf, 0, buf.size, whole=True)
        with self._lock:
            free = self._chunks.setdefault(c, [])
            if not free:
                slab = self.dma.alloc(self.SLAB)
                self._slabs.append(slab)
                free.extend(Chunk(slab, off, c) for off in range(self.SLAB - c, -1, -c))
            return free.pop()

    def give(self, chunk: Chunk) -> None:
        if chunk.whole:
            self.put(chunk.buf)
            return
        with self._lock:
            self._chunks.setdefault(chunk.size, []).append(chunk)

    @classmethod
    def size_class(cls, size: int) -> int:
        if size <= 1 << 20:
            c = cls.MIN
            while c < size:
                c <<= 1
            return c
        return -(-size // (1 << 20)) << 20

    def get(self, size: int) -> DmaBuffer:
        """A whole DMA buffer of at least `size` bytes."""
        c = self.size_class(max(size, 1))
        with self._lock:
            free = self._free.get(c)
            if free:
                self._idle -= c
                return free.pop()
        return self.dma.alloc(c)

    def put(self, buf: DmaBuffer) -> None:
        with self._lock:
            if buf.size + self._idle <= self.max_idle and not self.dma.closed:
                self._free.setdefault(buf.size, []).append(buf)
                self._idle += buf.size
                return
        self._drop(buf)

    def _drop(self, buf: DmaBuffer) -> None:
        try:
            if not self.dma.closed and buf.iova is not None:
                self.dma.unmap(buf)
            buf.close()
        except WarpdriveError:
            pass

    def close(self) -> None:
        with self._lock:
            bufs = [b for lst in self._free.values() for b in lst] + self._slabs
            self._free.clear()
            self._chunks.clear()
            self._slabs = []
            self._idle = 0
        for b in bufs:
            self._drop(b)


class Job:
    """One request. Jobs from `Session.submit(data)` own pooled buffers (released by `result()`);
    prepared jobs (`Session.prepare`) use the caller's buffers and can be submitted again."""

    __slots__ = ("checksum", "chunks", "consumed", "done", "dst", "dst_len", "dst_off", "error",
                 "hdr", "isize", "owner", "owns", "prepared", "produced", "slot_off", "sqe",
                 "src", "src_len", "src_off", "status", "tag", "tag_dw", "user_data")

    def __init__(self, owner: JobOwner, src: DmaBuffer | None, src_off: int, src_len: int,
                 dst: DmaBuffer | None, dst_off: int, dst_len: int, hdr: bytes = b"",
                 owns: bool = False, prepared: bool = False) -> None:
        self.owner = owner
        self.src, self.src_off, self.src_len = src, src_off, src_len
        self.dst, self.dst_off, self.dst_len = dst, dst_off, dst_len
        self.hdr = hdr
        self.owns = owns
        self.chunks: list[Chunk] = []
        self.prepared = prepared
        self.sqe: bytes = b""
        self.tag = 0
        self.tag_dw = hw.DW_TAG_V3  # where the SQE type keeps the tag
        self.slot_off = -1
        self.status = -1
        self.consumed = self.produced = 0
        self.checksum = self.isize = 0
        self.done = False
        self.error: BaseException | None = None
        self.user_data: object = None

    @property
    def output(self) -> memoryview:
        """The job's output in its DMA buffer (header included): valid until the buffer is
        reused. Raises the job's error if it failed."""
        if self.error is not None:
            raise self.error
        if not self.done:
            raise ZipError("job has not completed", hint="poll() or wait() first")
        if self.dst is None:  # completed in software (empty input)
            return memoryview(self.hdr)
        return self.dst.view[self.dst_off:self.dst_off + len(self.hdr) + self.produced]

    def result(self) -> bytes:
        """The output as bytes; a job that owns pooled buffers gives them back."""
        try:
            return bytes(self.output)
        finally:
            if self.done:
                self.release()

    def release(self) -> None:
        if self.owns:
            self.owns = False
            pool = self.owner.engine.pool
            for chunk in self.chunks:
                pool.give(chunk)
            self.chunks = []
            self.src = self.dst = None

    def __repr__(self) -> str:
        state = "failed" if self.error else "done" if self.done else "pending"
        return f"<zip Job {state} in={self.src_len} out={self.produced}>"


class JobOwner(Protocol):
    engine: ZipEngine

    def _complete(self, job: Job) -> None: ...


class Lane:
    """One direction of the engine: its queue (started on first use), lock and tags."""

    def __init__(self, engine: ZipEngine, qc_type: int) -> None:
        self.engine = engine
        self.qc_type = qc_type
        self.lock = threading.RLock()
        self._q: QmQueue | None = None
        self._tag = 0
        self.resubmitted = False
        self._templates: dict[tuple[str, int], SqeTemplate] = {}

    @property
    def q(self) -> QmQueue:
        q = self._q
        if q is None:
            with self.lock:
                if self._q is None:
                    eng = self.engine
                    eng._check_open()
                    self._q = eng.source.start_queue(self.qc_type, depth=eng.depth,
                                                     irq=eng.wait_mode != "spin")
                q = self._q
        return q

    @property
    def started(self) -> bool:
        return self._q is not None

    def template(self, fmt: Format) -> SqeTemplate:
        key = (fmt.container, fmt.window_bits)
        t = self._templates.get(key)
        if t is None:
            t = self._templates[key] = SqeTemplate.for_format(fmt, self.engine.source.version)
        return t

    def next_tag(self) -> int:
        self._tag = (self._tag + 1) & 0xFFFF_FFFF
        return self._tag

    def post(self, job: Job) -> int:
        """Reserve a slot for `job` (waiting for room if the queue is full); caller holds lock."""
        q = self.q
        if q.space <= 0:
            self.reap()
            if q.space <= 0:
                q.ring()
                self.wait_until(lambda: q.space > 0, locked=True)
        off = q.post(job)
        job.slot_off = off
        job.done = False
        job.error = None
        return off

    def reap(self) -> int:
        """Collect completions and hand each job to its owner (caller holds `lock`)."""
        q = self._q
        if q is None:
            return 0
        jobs = q.reap()
        for job in jobs:
            job.owner._complete(job)  # type: ignore[attr-defined]
        if self.resubmitted:
            self.resubmitted = False
            q.ring()
        return len(jobs)

    def wait_until(self, done: Callable[[], bool], timeout: float | None = None, *,
                   locked: bool = False) -> None:
        """Reap until `done()` is true: busy-poll the CQ in memory (no syscall) for the engine's
        spin time, then block in the source's way (interrupt, or short sleeps)."""
        eng = self.engine
        q = self.q
        timeout = eng.timeout if timeout is None else timeout
        clock = time.perf_counter
        start = clock()
        refresh_at = start + QmQueue.REFRESH_S
        lock = self.lock
        while True:
            if q.completed():
                with lock:
                    self.reap()
            if done():
                return
            now = clock()
            if now >= refresh_at:
                with lock:
                    q.ring()
                    q.refresh()
                    self.reap()
                if done():
                    return
                if q.outstanding == 0:
                    raise ZipError(f"{q.name}: waiting for a job that is not in flight")
                refresh_at = now + QmQueue.REFRESH_S
                waited = now - start
                if waited > timeout:
                    raise DeviceTimeoutError(
                        f"{q.name}: {q.outstanding} ZIP job(s) did not complete within "
                        f"{timeout} s", hint="the engine may be wedged or its DMA blocked; close "
                        "it (the function is reset) and check the kernel log")
                if waited > eng.spin_s:
                    if locked:
                        lock.release()
                    try:
                        eng.source.block(q, timeout - waited)
                    finally:
                        if locked:
                            lock.acquire()

    def close(self) -> None:
        q, self._q = self._q, None
        if q is not None:
            self.engine.source.stop_queue(q)


class ZipEngine(ForkSafe):
    """A ZIP function: one queue per direction, a buffer pool, sessions and streams on top.

    Fork: the queue memory and doorbells are not mapped in a forked child (MADV_DONTFORK), so the
    child's copy of an engine is dead: every entry point raises ForkedContextError and `poll`
    finds nothing. Open a new engine in the child."""

    def __init__(self, source: QueueSource, *, depth: int | None = None, wait: str = "auto",
                 spin_us: float = 100.0, timeout: float = 30.0,
                 on_close: Callable[[], None] | None = None) -> None:
        if wait not in ("auto", "spin", "block"):
            raise InvalidArgumentError(f"wait must be auto, spin or block, not {wait!r}")
        self.source = source
        self.name = source.name
        self.depth = depth
        self.wait_mode = wait
        self.spin_s = float("inf") if wait == "spin" else 0.0 if wait == "block" else \
            spin_us * 1e-6
        self.timeout = timeout
        self.pool = BufferPool(source.dma)
        self.lanes = (Lane(self, COMPRESS), Lane(self, DECOMPRESS))
        self._on_close = on_close
        self._closed = False
        self._sessions: list[Session] = []
        self._fork_register()

    def _check_open(self) -> None:
        self._check_alive()
        if self._closed:
            raise ClosedError(f"ZIP engine {self.name} is closed")

    def _fork_describe(self) -> str:
        return f"ZIP engine {self.name}"

    def _fork_invalidate(self) -> None:
        # Drop the child's references to rings that are not mapped here (touching them would
        # fault); the parent still owns the queues.
        for lane in self.lanes:
            lane._q = None
        self._closed = True

    @property
    def backend(self) -> str:
        return self.source.backend

    def session(self, direction: str = "compress", *, wbits: int = 15, level: int = -1,
                format: str | None = None) -> Session:
        """A batch session: many stateless jobs in flight, one doorbell per `flush()`."""
        self._check_open()
        if direction not in DIRECTIONS:
            raise InvalidArgumentError(f"direction must be compress or decompress, not "
                                       f"{direction!r}")
        decompress = direction == "decompress"
        fmt = Format.named(format) if format else Format.from_wbits(wbits,
                                                                     decompress=decompress)
        s = Session(self, DIRECTIONS[direction], fmt, level)
        self._sessions.append(s)
        return s

    # -- one-shot helpers (zlib-shaped API lives in warpdrive.zip) --------------------------
    def compress(self, data: bytes | bytearray | memoryview, level: int = -1,
                 wbits: int = 15) -> bytes:
        from .stream import Deflater

        fmt = Format.from_wbits(wbits, decompress=False)
        mv = memoryview(data).cast("B")
        if len(mv) > COMPRESS_JOB_MAX:
            d = Deflater(self, fmt, level, chunk=COMPRESS_JOB_MAX)
            try:
                return d.compress(mv) + d.finish()
            finally:
                d.close()
        lane = self.lanes[COMPRESS]
        with lane.lock:
            s = _OneShot(self, lane)
            return s.compress(mv, fmt, level)

    def decompress(self, data: bytes | bytearray | memoryview, wbits: int = 15,
                   bufsize: int = 0) -> bytes:
        from .stream import Inflater

        fmt = Format.from_wbits(wbits, decompress=True)
        mv = memoryview(data).cast("B")
        lane = self.lanes[DECOMPRESS]
        if len(mv) <= DECOMPRESS_JOB_MAX:
            with lane.lock:
                out = _OneShot(self, lane).decompress(mv, fmt, bufsize)
            if out is not None:
                return out
        inf = Inflater(self, fmt)
        try:
            out = inf.decompress(mv)
            if not inf.eof:
                raise ZipDataError("Error -5 while decompressing data: incomplete or truncated "
                                   "stream")
            return out
        finally:
            inf.close()

    def close(self) -> None:
        if self._closed:
            return
        errors: list[BaseException] = []
        self._fork_unregister()
        for s in list(self._sessions):
            try:
                s.close()
            except WarpdriveError as e:
                errors.append(e)
        self._closed = True
        for lane in self.lanes:
            try:
                lane.close()
            except WarpdriveError as e:
                errors.append(e)
        self.pool.close()
        try:
            self.source.close()
        except WarpdriveError as e:
            errors.append(e)
        if self._on_close is not None:
            self._on_close()
        if errors:
            raise errors[0]

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ZipEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ZipEngine {self.name} backend={self.backend}{' closed' if self._closed else ''}>"


class Session:
    """Stateless jobs of one direction and format, many in flight.

        s = engine.session("compress", wbits=31)
        jobs = [s.submit(chunk, flush=False) for chunk in chunks]
        s.flush()                                # one doorbell for the batch
        for job in s.drain(): out = job.result()

    Zero-copy: `buf = s.buffer(n)`, fill `buf.view`, `job = s.prepare(buf, n)`; a prepared job's
    SQE is built once and it can be submitted again after it completes. Not thread-safe: one
    session per thread (sessions of one engine share its queues safely).
    """

    def __init__(self, engine: ZipEngine, direction: int, fmt: Format, level: int) -> None:
        self.engine = engine
        self.direction = direction
        self.compress_mode = direction == COMPRESS
        self.fmt = fmt
        self.level = level
        self.lane = engine.lanes[direction]
        self.in_flight = 0
        self._done: list[Job] = []
        self._closed = False
        if self.compress_mode:
            self._hdr = header(fmt, level)

    # -- buffers ----------------------------------------------------------------------------
    def buffer(self, size: int) -> DmaBuffer:
        """A DMA buffer (pooled, already mapped) for zero-copy jobs; give it back with
        `release_buffer` (or it is freed when the engine closes)."""
        return self.engine.pool.get(size)

    def release_buffer(self, buf: DmaBuffer) -> None:
        self.engine.pool.put(buf)

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
            parsed = parse_header(src.view[src_offset:src_offset + length], fmt)
            if parsed is None:
                raise ZipDataError("Error -5 while decompressing data: incomplete or truncated "
                                   "stream (header)")
            hlen, fmt = parsed
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
        return job

    def _build(self, job: Job, fmt: Format) -> None:
        tmpl = self.lane.template(fmt)
        job.tag = self.lane.next_tag()
        assert job.src is not None and job.dst is not None
        assert job.src.iova is not None and job.dst.iova is not None
        hl = len(job.hdr)
        job.tag_dw = tmpl.tag_dw
        job.sqe = tmpl.build(
            src=job.src.iova + job.src_off, in_len=job.src_len,
            dst=job.dst.iova + job.dst_off + hl, avail=job.dst_len - hl, tag=job.tag)

    def submit_many(self, jobs: list[Job], *, flush: bool = True) -> None:
        """Queue prepared jobs under one lock and, by default, one doorbell (the hot path:
        one 128-byte copy per job into the ring, no syscall)."""
        self._check()
        for job in jobs:
            if job.owner is not self or not job.prepared or (job.slot_off >= 0
                                                             and not job.done):
                raise InvalidArgumentError("submit_many() takes prepared jobs of this session "
                                           "that are not in flight")
        lane = self.lane
        q = lane.q
        size = hw.SQE_SIZE
        with lane.lock:
            sq = q.sq
            fast = q.space >= len(jobs)
            post = q.post if fast else lane.post
            for job in jobs:
                off = post(job)
                sq[off:off + size] = job.sqe
                job.slot_off = off
                job.done = False
                job.error = None
                self.in_flight += 1
            if flush:
                q.ring()

    def submit(self, data: bytes | bytearray | memoryview | Job, *, flush: bool = True,
               user_data: object = None) -> Job:
        """Queue one job: a prepared `Job`, or bytes (copied into pooled DMA buffers).
        With `flush=False` the doorbell waits for `flush()` (batching)."""
        self._check()
        if isinstance(data, Job):
            job = data
            if job.owner is not self or not job.prepared:
                raise InvalidArgumentError("submit() takes jobs prepared by this session")
            if job.slot_off >= 0 and not job.done:
                raise InvalidArgumentError("the job is still in flight")
        else:
            job = self._job_from_bytes(memoryview(data).cast("B"))
            if job.done:  # empty input: finished in software
                job.user_data = user_data
                self._done.append(job)
                return job
        job.user_data = user_data
        lane = self.lane
        with lane.lock:
            off = lane.post(job)
            lane.q.sq[off:off + hw.SQE_SIZE] = job.sqe
            self.in_flight += 1
            if flush:
                lane.q.ring()
        return job

    def _job_from_bytes(self, mv: memoryview) -> Job:
        n = len(mv)
        pool = self.engine.pool
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
        parsed = parse_header(mv, self.fmt)
        if parsed is None:
            raise ZipDataError("Error -5 while decompressing data: incomplete or truncated "
                               "stream (header)")
        hlen, fmt = parsed
        body = mv[hlen:]
        if len(body) > DECOMPRESS_JOB_MAX:
            raise InvalidArgumentError(
                f"a job takes at most {DECOMPRESS_JOB_MAX} compressed bytes; got {len(body)}",
                hint="use warpdrive.zip.decompress() or decompressobj() (stream mode)")
        src = pool.take(max(len(body), 1))
        src.buf.view[src.off:src.off + len(body)] = body
        dst = pool.take(_decompress_guess(mv, fmt))
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
    def _complete(self, job: Job) -> None:
        """Called by the lane for each reaped job of this session (lane lock held)."""
        q = self.lane._q
        assert q is not None
        off = job.slot_off
        consumed, produced, _, dw3 = _RESULT(q.sq, off)
        job.consumed = consumed
        job.produced = produced
        st = job.status = dw3 & 0xFF
        # Fast path: a finished compression job with the right tag.
        if self.compress_mode and (st == 0 or st == 0x0D) and dw3 & _LAST and \
                q.sq32[(off >> 2) + job.tag_dw] == job.tag:
            job.done = True
            self.in_flight -= 1
            self._done.append(job)
            return
        self._complete_slow(job, q, off, st, dw3)

    def _complete_slow(self, job: Job, q: QmQueue, off: int, st: int, dw3: int) -> None:
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
        self.in_flight -= 1
        self._done.append(job)

    def _check_decompressed(self, job: Job, sq: memoryview, off: int, st: int, dw3: int) -> None:
        if st == hw.STATUS_DST_TOO_SMALL:
            return
        err = status_error(st, compress=False)
        if err is not None:
            job.error = err
            return
        if st != hw.STATUS_DECOMP_END or not dw3 & _LAST:
            job.error = ZipDataError("Error -5 while decompressing data: incomplete or "
                                     "truncated stream")
            return
        alg = self.lane.template(self.fmt).alg if self.fmt.container != "auto" else \
            _alg_of_job(job)
        tlen = trailer_size(alg)
        if tlen:
            # The engine checked the trailer; check its report against the bytes too.
            _, _, _, isize, checksum = read_stream_words(sq, off)
            assert job.src is not None
            end = job.src_off + job.consumed
            got = bytes(job.src.view[end - tlen:end]) if job.consumed >= tlen else b""
            if got != trailer(alg, checksum, isize) or \
                    (alg == hw.ALG_GZIP and isize != job.produced & 0xFFFF_FFFF):
                job.error = ZipDataError("Error -3 while decompressing data: incorrect data "
                                         "check")

    def _grow(self, job: Job) -> bool:
        """Resubmit with a larger output buffer (owned jobs only). Lane lock held."""
        if not job.owns or job.dst_len >= hw.HZ_MAX_SIZE or job.dst is None:
            return False
        pool = self.engine.pool
        new = pool.take(min(hw.HZ_MAX_SIZE, job.dst_len * 4))
        if job.hdr:
            new.buf.view[new.off:new.off + len(job.hdr)] = job.hdr
        pool.give(job.chunks[1])
        job.chunks[1] = new
        job.dst, job.dst_off, job.dst_len = new.buf, new.off, min(new.size, hw.HZ_MAX_SIZE)
        fmt = self.fmt
        if not self.compress_mode:
            assert job.src is not None
            fmt = Format(GZIP if _alg_of_job(job) == hw.ALG_GZIP else fmt.container,
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
        q = lane._q
        if q is not None and q.completed():
            with lane.lock:
                lane.reap()
        done, self._done = self._done, []
        return done

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
        if self._closed:
            raise ClosedError("the ZIP session is closed")
        self.engine._check_open()

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self.in_flight and not self.engine.closed:
                for job in self.drain():
                    job.release()
        finally:
            self._closed = True
            if self in self.engine._sessions:
                self.engine._sessions.remove(self)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _alg_of_job(job: Job) -> int:
    """Request type recorded in a job's SQE."""
    return job.sqe[4 * hw.DW_REQ] if job.sqe else hw.ALG_DEFLATE


def _decompress_guess(data: memoryview, fmt: Format) -> int:
    """Output room for a one-job decompression: the gzip ISIZE when plausible, else 4x."""
    n = len(data)
    if n >= 18 and data[0] == 0x1F and data[1] == 0x8B:
        isize = int.from_bytes(data[n - 4:n], "little")
        if isize <= hw.HZ_MAX_SIZE:
            return max(isize + 64, 4096)
    return min(hw.HZ_MAX_SIZE, max(64 << 10, 4 * n))


class _OneShot:
    """One stateless job for the one-shot API, on the caller's thread (lane lock held)."""

    def __init__(self, engine: ZipEngine, lane: Lane) -> None:
        self.engine = engine
        self.lane = lane

    def _complete(self, job: Job) -> None:
        sq = self.lane.q.sq
        job.consumed, job.produced, dw3 = read_result(sq, job.slot_off)
        job.status = dw3
        _, _, _, job.isize, job.checksum = read_stream_words(sq, job.slot_off)
        job.done = True

    def _run(self, job: Job) -> None:
        lane = self.lane
        off = lane.post(job)
        lane.q.sq[off:off + hw.SQE_SIZE] = job.sqe
        lane.q.ring()
        lane.wait_until(lambda: job.done, locked=True)

    def compress(self, mv: memoryview, fmt: Format, level: int) -> bytes:
        hdr = header(fmt, level)
        n = len(mv)
        if n == 0:
            return hdr + EMPTY_FINAL_BLOCK + trailer(fmt.alg, initial_checksum(fmt.alg), 0)
        pool = self.engine.pool
        src = pool.take(n)
        dst = pool.take(compress_bound(n))
        try:
            src.buf.view[src.off:src.off + n] = mv
            tmpl = self.lane.template(fmt)
            job = Job(self, src.buf, src.off, n, dst.buf, dst.off,
                      min(dst.size, hw.HZ_MAX_SIZE))
            job.sqe = tmpl.build(src=src.iova, in_len=n, dst=dst.iova, avail=job.dst_len,
                                 tag=self.lane.next_tag())
            self._run(job)
            st = job.status & hw.STATUS_MASK
            if st not in (hw.STATUS_OK, hw.STATUS_NEGACOMPRESS) or not job.status & _LAST:
                raise status_error(st, compress=True) or ZipError(
                    f"compression job ended without its final block (status {st:#x})")
            return hdr + bytes(dst.buf.view[dst.off:dst.off + job.produced])
        finally:
            pool.give(src)
            pool.give(dst)

    def decompress(self, mv: memoryview, fmt: Format, bufsize: int) -> bytes | None:
        """One stateless job; None means "use stream mode" (output over 8 MiB)."""
        parsed = parse_header(mv, fmt)
        if parsed is None:
            raise ZipDataError("Error -5 while decompressing data: incomplete or truncated "
                               "stream")
        hlen, fmt = parsed
        body = mv[hlen:]
        n = len(body)
        if n == 0:
            raise ZipDataError("Error -5 while decompressing data: incomplete or truncated "
                               "stream")
        pool = self.engine.pool
        out = max(bufsize, _decompress_guess(mv, fmt))
        src = pool.take(n)
        try:
            src.buf.view[src.off:src.off + n] = body
            tmpl = self.lane.template(fmt)
            while True:
                dst = pool.take(min(out, hw.HZ_MAX_SIZE))
                try:
                    avail = min(dst.size, hw.HZ_MAX_SIZE)
                    job = Job(self, src.buf, src.off, n, dst.buf, dst.off, avail)
                    job.sqe = tmpl.build(src=src.iova, in_len=n, dst=dst.iova, avail=avail,
                                         tag=self.lane.next_tag())
                    self._run(job)
                    st = job.status & hw.STATUS_MASK
                    if st == hw.STATUS_DST_TOO_SMALL:
                        if avail >= hw.HZ_MAX_SIZE:
                            return None
                        out = avail * 4
                        continue
                    err = status_error(st, compress=False)
                    if err is not None:
                        raise err
                    if st != hw.STATUS_DECOMP_END or not job.status & _LAST:
                        raise ZipDataError("Error -5 while decompressing data: incomplete or "
                                           "truncated stream")
                    tlen = trailer_size(tmpl.alg)
                    got = bytes(body[job.consumed - tlen:job.consumed]) if tlen else b""
                    if tlen and (job.consumed < tlen or got != trailer(
                            tmpl.alg, job.checksum, job.isize)):
                        raise ZipDataError("Error -3 while decompressing data: incorrect data "
                                           "check")
                    return bytes(dst.buf.view[dst.off:dst.off + job.produced])
                finally:
                    pool.give(dst)
        finally:
            pool.give(src)
