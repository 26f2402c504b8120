"""One ZIP request (`Job`), who owns it (`JobOwner`), and the limits every job obeys."""

from __future__ import annotations

from typing import Protocol

from ...memory import DmaBuffer
from ...pool import BufferPool, Chunk
from . import hw
from .errors import ZipError
from .sqe import Format

COMPRESS = hw.ZIP_QC_COMPRESS
DECOMPRESS = hw.ZIP_QC_DECOMPRESS
DIRECTIONS = {"compress": COMPRESS, "decompress": DECOMPRESS}

# A stateless compression job's output must fit one SQE (8 MiB) even for incompressible input:
# UADK keeps out >= 1.125 * in, so one job takes at most 7 MiB of input.
COMPRESS_JOB_MAX = 7 << 20
DECOMPRESS_JOB_MAX = hw.HZ_MAX_SIZE


def compress_bound(n: int) -> int:
    """Output room a compression job gets for `n` input bytes (>= 1.125 n, >= 256)."""
    return max(n + (n >> 3) + 64, 256)


def alg_of_job(job: Job) -> int:
    """Request type recorded in a job's SQE."""
    return job.sqe[4 * hw.DW_REQ] if job.sqe else hw.ALG_DEFLATE


def decompress_guess(data: bytes | bytearray | memoryview, fmt: Format) -> int:
    """Output room for a one-job decompression: the gzip ISIZE when plausible, else 8x the
    input (text deflates 3-10x; too little room makes the engine do the job twice)."""
    n = len(data)
    if n >= 18 and data[0] == 0x1F and data[1] == 0x8B:
        isize = int.from_bytes(data[n - 4:n], "little")
        if isize <= hw.HZ_MAX_SIZE:
            return max(isize + 64, 4096)
    return min(hw.HZ_MAX_SIZE, max(64 << 10, 8 * n))


class Job:
    """One request. Jobs from `Session.submit(data)` own pooled buffers (released by `result()`);
    prepared jobs (`Session.prepare`) use the caller's buffers and can be submitted again."""

    __slots__ = ("checksum", "chunks", "consumed", "done", "dst", "dst_len", "dst_off", "error",
                 "hdr", "isize", "owner", "owns", "prepared", "produced", "ready", "slot_off",
                 "sqe", "src", "src_len", "src_off", "status", "tag", "tag_dw", "user_data")

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
        # The session a prepared job may be submitted to now: None while it is in flight (and
        # always for a job that owns pooled buffers). One identity test checks both.
        self.ready: object = None
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
            pool = self.owner.pool
            for chunk in self.chunks:
                pool.give(chunk)
            self.chunks = []
            self.src = self.dst = None

    def __repr__(self) -> str:
        state = "failed" if self.error else "done" if self.done else "pending"
        return f"<zip Job {state} in={self.src_len} out={self.produced}>"


class JobOwner(Protocol):
    """Who submitted a job: gets it back from the lane when it completes, and owns the pool its
    buffers come from."""

    @property
    def pool(self) -> BufferPool: ...

    def on_complete(self, job: Job) -> None: ...
