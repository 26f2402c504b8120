"""One stateless job at a time for the one-shot functions (`compress`, `decompress`), on the
caller's thread, with pooled buffers."""

from __future__ import annotations

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
    read_result,
    read_stream_words,
    status_error,
    trailer,
    trailer_error,
    trailer_size,
)

_LAST = hw.STATUS_LAST_BLOCK


class OneShot:
    """One stateless job for the one-shot API, on the caller's thread (lane lock held)."""

    def __init__(self, engine: EngineParts, lane: Lane) -> None:
        self.engine = engine
        self.lane = lane
        self.pool = engine.pool

    def on_complete(self, job: Job) -> None:
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
        pool = self.pool
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
        head = whole_header(mv, fmt)
        hlen, fmt = head.length, head.fmt
        body = mv[hlen:]
        n = len(body)
        if n == 0:
            raise ZipDataError("Error -5 while decompressing data: incomplete or truncated "
                               "stream")
        pool = self.pool
        out = max(bufsize, decompress_guess(mv, fmt))
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
                    if st == hw.STATUS_CRC_ERR:
                        end = min(job.consumed, n)
                        raise trailer_error(tmpl.alg, job.checksum, body[max(0, end - 8):end])
                    if st not in (hw.STATUS_OK, hw.STATUS_NEGACOMPRESS, hw.STATUS_DECOMP_END):
                        # Raised unbound: a local would make this frame and the error a cycle.
                        raise status_error(st, compress=False) or ZipDataError(f"status {st:#x}")
                    if not decompression_complete(st, job.status):
                        raise ZipDataError("Error -5 while decompressing data: incomplete or "
                                           "truncated stream")
                    tlen = trailer_size(tmpl.alg)
                    tail = body[max(0, job.consumed - 8):job.consumed]
                    if tlen and bytes(tail[-tlen:]) != trailer(tmpl.alg, job.checksum,
                                                               job.isize):
                        raise trailer_error(tmpl.alg, job.checksum, tail)
                    return bytes(dst.buf.view[dst.off:dst.off + job.produced])
                finally:
                    pool.give(dst)
        finally:
            pool.give(src)
