"""The ZIP model's compression unit: what one SQE asks of the engine, in software.

Raw deflate, zlib and gzip bodies from Python's `zlib`, the system's libz (`_libz`) and, for
whole-buffer work, libdeflate (`_libdeflate`, the default codec: its own compressed bytes, every
status and count as on libz); stateless jobs (a whole stream per SQE) and stateful ones (a
stream over many SQEs, its state kept here by stream-context address). The
semantics are the hardware's as the drivers read them (docs/research/hisi-qm-zip.md, sections 10
and 15): software owns the zlib/gzip header; the engine makes the deflate body and, for the
zlib/gzip request types, the trailer on the finishing job, and checks it on decompression; the
running checksum and length travel in the SQE. Memory access is the caller's business: this
module sees byte buffers only.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
import zlib
from collections import OrderedDict

from ...record import field, record
from . import _libdeflate, _libz
from . import _zip_layout as L

TYPE_CHECKING = False  # (not typing's: importing typing costs ~3 ms of every process's boot)
if TYPE_CHECKING:
    from typing import Any

# dw9 window code -> zlib window bits (zlib has no 24 KiB window: 16 KiB stands in)
WINDOW_WBITS = {L.WINDOW_4K: 12, L.WINDOW_8K: 13, L.WINDOW_16K: 14, L.WINDOW_24K: 14,
                L.WINDOW_32K: 15}

# The output of a stateless decompression is taken in pieces of at most this (below glibc's
# default mmap threshold, 128 KiB, so the heap reuses them).
_PIECE = 96 << 10

# Jobs from these input sizes run on the system's libz (`_libz`: kept streams, straight into the
# destination); smaller ones on Python's zlib module, whose set-up for a small job (a small
# state, no window, a short output block) costs less than the two ctypes calls of the other way
# (reset and run: ~1,500 instructions each). Measured per job (cachegrind, docs/driver-bench.md,
# session 20): decompress 5 B +41% instructions on libz, 4 KiB +6%, 64 KiB -20%; compress 5 B
# +9%, 4 KiB +2%, 64 KiB even, but no fresh pages per call (the module's 270 KiB state).
LIBZ_COMPRESS_MIN = 8 << 10
LIBZ_DECOMPRESS_MIN = 4 << 10

# Whole-buffer (stateless) jobs run on libdeflate from these input sizes, when the model's codec
# is libdeflate (`CODECS`); smaller ones stay where they were (Python's zlib module, libz).
# libdeflate runs fewer instructions at every size (cachegrind), but its compressor clears its
# match finder's tables (hundreds of KiB) on every call, and in thread CPU that made it dearer
# than zlib's module path up to 2-12 KiB depending on the data (Python sources: cheaper from
# 2 KiB; the benchmarks' 27-word sample: from ~12 KiB); its decompressor has no such cost and
# is cheaper from ~1 KiB of input. Measured: docs/driver-bench.md, "Session 22".
LIBDEFLATE_COMPRESS_MIN = 8 << 10
LIBDEFLATE_DECOMPRESS_MIN = 1 << 10
# A zlib/gzip decompression with less input than LIBDEFLATE_DECOMPRESS_MIN starts on the module
# path, whose first piece stops at this much output; when there is more (highly compressible
# data: 64 KiB of zeros or logs from 80-320 bytes), libdeflate takes the whole job: 64 KiB
# module / libdeflate 138 / 61 us (zeros), 33 / 14 (logs), from 8 KiB on libdeflate is the
# cheaper (the thresholds' table, docs/driver-bench.md "Session 22: 64 KiB decompress").
LIBDEFLATE_PROBE = 8 << 10
# Whole-buffer decompressions with up to this much output room (one core's L2 here) inflate into
# a per-thread staging buffer and are copied into the destination in one `memmove`
# (`decompress_stateless`). The client read the previous job's output out of the destination on
# its CPU; on another CPU each line an inflate writes there must first be taken back from that
# CPU's cache, and inside the inflate loop (which reads back its own output for every match)
# those stalls come one at a time, while a `memmove`'s stores overlap. Measured on the 2 vCPUs
# here, model and client on different CPUs, a 64 KiB inflate: 42-170 us straight into the piece,
# 29 + 4-39 us staged (docs/driver-bench.md, "Session 22: 64 KiB decompress").
STAGE_MAX = 1 << 20
# Checksums over at least this many bytes come from libdeflate (when loaded): below it the
# ctypes call costs more than zlib's own loop saves.
LIBDEFLATE_SUM_MIN = 4 << 10

# The codec of whole-buffer jobs: libdeflate (faster, its own compressed bytes) or libz (zlib's
# bytes). Stream jobs and anything libdeflate cannot answer exactly run on libz either way.
CODECS = ("libdeflate", "libz")
CODEC_ENV = "WARPDRIVE_MODEL_CODEC"


def codec_asked(option: str | None = None) -> str:
    """The codec asked for: the model's `codec=` option, else $WARPDRIVE_MODEL_CODEC, else
    libdeflate. ValueError (naming where it came from) for any other name."""
    name, where = option, "codec="
    if not name:
        name, where = os.environ.get(CODEC_ENV, ""), f"${CODEC_ENV}="
    if not name:
        return CODECS[0]
    if name not in CODECS:
        raise ValueError(f"{where}{name!r} is not a codec (give {' or '.join(CODECS)})")
    return name


# deflate keeps MIN_LOOKAHEAD = 258 + 3 + 1 bytes of look-ahead, so its farthest match is
# 2**wbits - 262 back (docs/research/deflate-window.md).
_MIN_LOOKAHEAD = 262


# The largest input each level compresses with zlib's smallest state (memLevel 1: a 256-entry
# hash head, 128-symbol blocks) for the bytes memLevel 8 would make: the hash chains then hold
# every earlier position (n - 3 at most) within the shortest chain walk the level allows
# (max_chain / 4, after a good match), so the same candidates are tried in the same order, and
# every symbol fits the one block (126 < 128 - 1). Levels 1-3 (deflate_fast, walks of 1-8) are
# left out. The state is ~4 KiB against ~150 KiB at memLevel 8, whose 64 KiB hash head is cleared
# on every call: writes that push the model's own working set out of the core's 32 KiB L1
# (docs/research/deflate-window.md, "memLevel for tiny inputs").
TINY_MAX = {4: 7, 5: 11, 6: 35, 7: 67, 8: 126, 9: 126}
TINY_MEM_LEVEL = 1


def sized_wbits(n: int, wbits: int) -> int:
    """The window bits to compress a whole input of `n` bytes with, for output byte-identical to
    a `wbits` window: the smallest window whose farthest match (2**w - 262) reaches back over
    all of it, at least 9 (zlib's smallest raw window). zlib's set-up and per-call work (window
    and chain tables it allocates and clears) shrink with the window, and for small inputs that
    is most of the call (docs/research/deflate-window.md)."""
    return min(wbits, max(9, (n + _MIN_LOOKAHEAD - 1).bit_length()))


# An empty stored block, not final, after a final block whose BFINAL bit was cleared: its 3
# header bits in the end padding (at least 3 bits of it), or in one more byte, then LEN/NLEN.
_SYNC_FLUSH_IN_PAD = b"\x00\x00\xff\xff"
_SYNC_FLUSH = b"\x00\x00\x00\xff\xff"
# First jobs of streams that go on run on libdeflate up to this input (the CLI's pieces are at
# most 1 MiB; finding the final block takes a fixed scratch: `_libz.LAST_BLOCK_ROOM`).
LIBDEFLATE_FIRST_MAX = 4 << 20


class _Tail:
    """What a stream whose first job ran on libdeflate keeps for its next job: the last
    window of that job's input, the history a libz deflater continues from (a raw stream
    may take a dictionary: docs/research/libz.md). Pieces are never continued: nothing else
    is made for them. Made only when libz loads (`compress_first`)."""

    __slots__ = ("data", "level", "wbits")

    def __init__(self, level: int, wbits: int, data: bytes) -> None:
        self.level, self.wbits, self.data = level, wbits, data

    def deflater(self) -> _libz.Deflater:
        d = _libz.take(self.level, self.wbits)
        d.set_dictionary(self.data)
        return d


@record
class JobResult:
    status: int
    consumed: int = 0
    produced: int = 0
    last: bool = False
    checksum: int = 0
    isize: int = 0
    ctx_st: int = 0


@record
class Stream:
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


def _update_checksum(alg: int, data: bytes | bytearray | memoryview, value: int) -> int:
    if alg == L.ALG_ZLIB:
        return zlib.adler32(data, value)
    if alg == L.ALG_GZIP:
        return zlib.crc32(data, value)
    return 0


_ZLIB_TRAILER = struct.Struct(">I")
_memmove = ctypes.memmove
_DEFLATED = zlib.DEFLATED
_GZIP_TRAILER = struct.Struct("<II")
_TRAILER_LEN = {L.ALG_ZLIB: 4, L.ALG_GZIP: 8}


def _trailer_checks(alg: int, src: memoryview | bytes, used: int, m: int,
                    checksum: int) -> bool:
    """A whole zlib/gzip trailer follows the deflate stream's `used` bytes of `src` and checks
    against its output (`checksum`, and `m` bytes for gzip's length)."""
    return len(src) - used >= _TRAILER_LEN[alg] and (
        _ZLIB_TRAILER.unpack_from(src, used)[0] == checksum if alg == L.ALG_ZLIB
        else _GZIP_TRAILER.unpack_from(src, used) == (checksum, m & 0xFFFF_FFFF))


def _output(dst: memoryview | bytearray, avail: int) -> tuple[Any, int]:
    """Where a whole-buffer inflate writes: this thread's staging buffer and its address when
    the room is at most STAGE_MAX (copied into `dst` afterwards), else `dst` itself and 0."""
    if 0 < avail <= STAGE_MAX:
        return _libz.stage(avail)
    return dst, 0


def _trailer(alg: int, checksum: int, isize: int) -> bytes:
    if alg == L.ALG_ZLIB:
        return _ZLIB_TRAILER.pack(checksum)
    if alg == L.ALG_GZIP:
        return _GZIP_TRAILER.pack(checksum, isize & 0xFFFF_FFFF)
    return b""


def _trailer_len(alg: int) -> int:
    return _TRAILER_LEN.get(alg, 0)


def _bad_trailer_field(alg: int, got: bytes | bytearray, checksum: int, isize: int) -> int:
    """0 while the trailer bytes received so far are right; else the end offset of the first
    complete field that is wrong (4: the checksum, 8: gzip's length), so the job stops there,
    as zlib rejects a trailer field as soon as it has arrived (UNCONFIRMED for the hardware)."""
    want = _trailer(alg, checksum, isize)
    for end in (4, 8):
        if len(got) >= end and bytes(got[end - 4:end]) != want[end - 4:end]:
            return end
    return 0


class DeflateUnit:
    """The compression engine: executes one SQE's request against input/output memory views.
    Stream state is kept here, keyed by the stream-context address."""

    MAX_STREAMS = 4096

    def __init__(self, level: int = 6, codec: str | None = None) -> None:
        self.level = level
        self.streams: OrderedDict[int, Stream] = OrderedDict()
        log = logging.getLogger("warpdrive.emu")
        if _libz.LIBZ is None:
            log.info("ZIP model: the system's zlib is not usable (%s); jobs run on Python's zlib "
                     "module", _libz.WHY)
        # libdeflate's levels are zlib's scale (1 fastest, 6 default, 9 slow); -1 is zlib's
        # default, 6 (docs/research/libdeflate.md)
        self.ld_level = 6 if level < 0 else level
        self.tiny_max = TINY_MAX.get(self.ld_level, -1)  # (`_compress_tiny`)
        self.libdeflate = codec_asked(codec) == "libdeflate" and _libdeflate.lib() is not None
        if self.libdeflate:
            log.debug("ZIP model: whole-buffer jobs on libdeflate")
        else:
            log.debug("ZIP model: whole-buffer jobs on libz%s", _libdeflate.why() and
                      f" ({_libdeflate.why()})")

    def reset(self) -> None:
        self.streams.clear()

    def close(self) -> None:
        """The model is ending: this thread's libdeflate objects go now (workers' go with their
        threads)."""
        self.streams.clear()
        _libdeflate.release()

    def _sum(self, alg: int, data: memoryview | bytes | bytearray, n: int) -> int:
        """The container's checksum of the first `n` bytes of `data` (0 for raw deflate)."""
        if alg == L.ALG_ZLIB:
            if n >= LIBDEFLATE_SUM_MIN and self.libdeflate:
                return _libdeflate.adler32(data, n)
            return zlib.adler32(data[:n] if n < len(data) else data) if n else 1
        if alg == L.ALG_GZIP:
            if n >= LIBDEFLATE_SUM_MIN and self.libdeflate:
                return _libdeflate.crc32(data, n)
            return zlib.crc32(data[:n] if n < len(data) else data) if n else 0
        return 0

    # -- stateless -------------------------------------------------------------------------
    def compress_stateless(self, alg: int, wbits: int, src: memoryview | bytes,
                           dst: memoryview | bytearray) -> JobResult:
        """A stateless job is a whole stream: it always ends with the final block, whatever the
        flush bit says (the kernel sends stateless jobs with flush 0 and decompresses the output
        as a complete stream: docs/research/hisi-qm-zip.md, sections 10 and 12)."""
        n = len(src)
        if n <= self.tiny_max:  # (first: the 5-byte call of the benchmarks is one of these)
            return self._compress_tiny(alg, src, n, dst)
        if self.level:  # (stored blocks, level 0, are sized by the window: left as asked)
            if self._libdeflate_compresses(n, wbits):
                res = self._compress_libdeflate(alg, src, n, dst)
                if res is not None:
                    return res
            wbits = sized_wbits(n, wbits)
            if n >= LIBZ_COMPRESS_MIN and _libz.LIBZ is not None:
                return self._compress_libz(alg, wbits, src, n, dst)
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
        m = len(body)
        if m > len(dst):
            return JobResult(L.STATUS_DST_TOO_SMALL)
        dst[:m] = body
        status = L.STATUS_NEGACOMPRESS if m > n else L.STATUS_OK
        return JobResult(status, n, m, True, checksum, n)

    def _compress_tiny(self, alg: int, src: memoryview | bytes, n: int,
                       dst: memoryview | bytearray) -> JobResult:
        """`compress_stateless` of an input of at most TINY_MAX[level] bytes: raw deflate with
        memLevel 1 (the same bytes as zlib.compress: TINY_MAX) and the smallest window, 9 bits
        (`sized_wbits` of any such input: every asked window is larger), the container's
        checksum and trailer here."""
        c = zlib.compressobj(self.level, _DEFLATED, -9, TINY_MEM_LEVEL)
        body = c.compress(src) + c.flush()
        m = len(body)
        if alg == L.ALG_ZLIB:
            if m + 4 > len(dst):
                return JobResult(L.STATUS_DST_TOO_SMALL)
            checksum = zlib.adler32(src)
            dst[:m] = body
            _ZLIB_TRAILER.pack_into(dst, m, checksum)
            m += 4
        elif alg == L.ALG_GZIP:
            if m + 8 > len(dst):
                return JobResult(L.STATUS_DST_TOO_SMALL)
            checksum = zlib.crc32(src)
            dst[:m] = body
            _GZIP_TRAILER.pack_into(dst, m, checksum, n)
            m += 8
        else:
            if m > len(dst):
                return JobResult(L.STATUS_DST_TOO_SMALL)
            checksum = 0
            dst[:m] = body
        return JobResult(L.STATUS_NEGACOMPRESS if m > n else L.STATUS_OK, n, m, True,
                         checksum, n)

    def _libdeflate_compresses(self, n: int, wbits: int) -> bool:
        """Whether a whole buffer of `n` bytes with window `wbits` goes to libdeflate: its
        matches reach up to 32 KiB back whatever the window, so a smaller declared window only
        when no match can reach beyond it (docs/research/deflate-window.md)."""
        return self.libdeflate and n >= LIBDEFLATE_COMPRESS_MIN and (wbits >= 15
                                                                    or n <= 1 << wbits)

    def _compress_libdeflate(self, alg: int, src: memoryview | bytes, n: int,
                             dst: memoryview | bytearray) -> JobResult | None:
        """`compress_stateless` on libdeflate, straight from the source into the destination,
        the trailer after the body; None when it did not fit (the libz path then decides:
        zlib's output may fit where libdeflate's, or its end padding, did not)."""
        tlen = _TRAILER_LEN.get(alg, 0)
        m = _libdeflate.compress(self.ld_level, src, n, dst, max(0, len(dst) - tlen))
        if not m:
            return None
        checksum = self._sum(alg, src, n)
        if alg == L.ALG_ZLIB:
            _ZLIB_TRAILER.pack_into(dst, m, checksum)
        elif alg == L.ALG_GZIP:
            _GZIP_TRAILER.pack_into(dst, m, checksum, n & 0xFFFF_FFFF)
        m += tlen
        return JobResult(L.STATUS_NEGACOMPRESS if m > n else L.STATUS_OK, n, m, True,
                         checksum, n)

    def _compress_libz(self, alg: int, wbits: int, src: memoryview | bytes, n: int,
                       dst: memoryview | bytearray) -> JobResult:
        """`compress_stateless` on this thread's kept raw deflate stream, from the source
        straight into the destination; the container's trailer written after the body. The
        output is zlib.compress's (a reset stream is a fresh one; level 0, whose stored blocks
        follow the output room, stays with the `zlib` module: docs/research/libz.md). One stream
        is kept per sized window: the smaller one is also the smaller cache footprint."""
        avail = len(dst)
        d = _libz._thread.deflaters.get((self.level, wbits)) or _libz.deflater(self.level, wbits)
        m = d.whole(src, n, dst, avail)
        if m < 0:
            return JobResult(L.STATUS_DST_TOO_SMALL)
        checksum = self._sum(alg, src, n)
        if alg == L.ALG_ZLIB:
            if m + 4 > avail:
                return JobResult(L.STATUS_DST_TOO_SMALL)
            _ZLIB_TRAILER.pack_into(dst, m, checksum)
            m += 4
        elif alg == L.ALG_GZIP:
            if m + 8 > avail:
                return JobResult(L.STATUS_DST_TOO_SMALL)
            _GZIP_TRAILER.pack_into(dst, m, checksum, n & 0xFFFF_FFFF)
            m += 8
        status = L.STATUS_NEGACOMPRESS if m > n else L.STATUS_OK
        return JobResult(status, n, m, True, checksum, n)

    def decompress_stateless(self, alg: int, src: memoryview | bytes,
                             dst: memoryview | bytearray, wbits: int = 15) -> JobResult:
        """The end of the stream is status 0 with the last-block bit: the kernel accepts only
        0 and 0x0d (docs/research/hisi-qm-zip.md, section 10). Input that stops before the final
        block is a partial result: status 0, no last-block bit."""
        n = len(src)
        # libdeflate for a zlib or gzip body with a 32 KiB window; its every other answer
        # (bad data, truncated, no room, a trailer that does not check) is taken again on
        # libz, whose statuses and counts are the device's (docs/research/libdeflate.md)
        ld = self.libdeflate and alg != L.ALG_DEFLATE and wbits >= 15
        if ld and n >= LIBDEFLATE_DECOMPRESS_MIN:
            res = self._decompress_libdeflate(alg, src, n, dst)
            if res is not None:
                return res
            ld = False
        if n >= LIBZ_DECOMPRESS_MIN and _libz.LIBZ is not None:
            return self._decompress_libz(alg, src, dst)
        d = zlib.decompressobj(-15)
        avail = len(dst)
        checksum = _initial_checksum(alg)
        m = 0
        rest: bytes | memoryview = src
        probe = ld and avail >= LIBDEFLATE_PROBE  # (LIBDEFLATE_PROBE)
        try:
            while True:
                # Pieces of at most _PIECE: each is a buffer zlib fills once and the heap
                # reuses (one the size of the whole output would be fresh pages each call, and
                # grown by copies). One byte more than the room left: output that fits exactly
                # is told apart from output that does not (a full buffer alone does not say).
                want = LIBDEFLATE_PROBE if probe else min(_PIECE, avail + 1 - m)
                out = d.decompress(rest, want)
                k = len(out)
                if probe:
                    probe = False
                    if k == want and not d.eof:  # (more to come: libdeflate for all of it)
                        res = self._decompress_libdeflate(alg, src, n, dst)
                        if res is not None:
                            return res
                if m + k > avail:
                    return JobResult(L.STATUS_DST_TOO_SMALL)
                dst[m:m + k] = out
                m += k
                if alg != L.ALG_DEFLATE:
                    checksum = _update_checksum(alg, out, checksum)
                if k < want or d.eof:  # out of input, or the end of the stream
                    break
                rest = d.unconsumed_tail  # (output was cut at `want`: there may be more)
        except zlib.error:
            return JobResult(L.STATUS_BAD_DATA)
        if not d.eof:
            if d.unconsumed_tail:
                return JobResult(L.STATUS_DST_TOO_SMALL)
            # Input ended before the end of the stream: a partial result, no end flag.
            return JobResult(L.STATUS_OK, len(src), m, False, checksum, m)
        rest = d.unused_data
        return self._ended(alg, src, len(src) - len(rest), m, checksum)

    def _decompress_libdeflate(self, alg: int, src: memoryview | bytes, n: int,
                               dst: memoryview | bytearray) -> JobResult | None:
        """`decompress_stateless` of a whole zlib/gzip body and trailer on libdeflate, in one
        call into the destination (staged up to STAGE_MAX); None for anything but a stream that
        ended and a whole trailer that checks. libdeflate accepts a few constructs zlib rejects
        (symbols 286/287 and distance codes 30/31, more code lengths than zlib allows: see
        docs/research/libdeflate.md); output decoded through one of those does not match the
        trailer's checksum (and length), so such a job goes to libz too, which says what zlib
        says (not so a header declaring more codes than zlib takes, unused: that decodes to the
        data the trailer is over, and is accepted here). Raw deflate has no trailer to tell: it
        stays on libz."""
        avail = len(dst)
        out, at = _output(dst, avail)
        rc, used, m = _libdeflate.decompress(src, n, out, avail)
        if rc != _libdeflate.SUCCESS:
            return None
        checksum = self._sum(alg, out, m)
        if not _trailer_checks(alg, src, used, m, checksum):
            return None
        if at:  # (staged: into the destination only once the answer is kept)
            _memmove(_libz.address(dst), at, m)
        return JobResult(L.STATUS_OK, used + _TRAILER_LEN[alg], m, True, checksum, m)

    def _decompress_libz(self, alg: int, src: memoryview | bytes,
                         dst: memoryview | bytearray) -> JobResult:
        """`decompress_stateless` on this thread's kept raw inflate stream, from the source
        into the destination (staged up to STAGE_MAX) in one call; the checksum over the
        output it just wrote, still in the cache (docs/research/libz.md, "checksums")."""
        n, avail = len(src), len(dst)
        inflater = _libz._thread.inflater or _libz.inflater()
        out, at = _output(dst, avail)
        outcome, used, m = inflater.whole(src, n, out, avail)
        if at and outcome < _libz.FULL:  # (staged: the output a result reports)
            _memmove(_libz.address(dst), at, m)
        if outcome >= _libz.FULL:
            return JobResult(L.STATUS_DST_TOO_SMALL if outcome == _libz.FULL
                             else L.STATUS_BAD_DATA)
        if alg != L.ALG_DEFLATE:
            checksum = self._sum(alg, dst, m)
        else:
            return JobResult(L.STATUS_OK, used if outcome == _libz.END else n, m,
                             outcome == _libz.END, 0, m)
        if outcome == _libz.PARTIAL:
            # Input ended before the end of the stream: a partial result, no end flag.
            return JobResult(L.STATUS_OK, n, m, False, checksum, m)
        return self._ended(alg, src, used, m, checksum)

    @staticmethod
    def _ended(alg: int, src: memoryview | bytes, used: int, m: int,
               checksum: int) -> JobResult:
        """A stateless decompression whose deflate stream ended after `used` bytes of `src`
        with `m` bytes of output: the container's trailer, if any, decides the status."""
        if alg == L.ALG_DEFLATE:
            return JobResult(L.STATUS_OK, used, m, True, checksum, m)
        tlen = _TRAILER_LEN[alg]
        if _trailer_checks(alg, src, used, m, checksum):  # (the usual case)
            return JobResult(L.STATUS_OK, used + tlen, m, True, checksum, m)
        trailer = bytes(src[used:used + tlen])
        bad = _bad_trailer_field(alg, trailer, checksum, m)
        if bad:
            return JobResult(L.STATUS_CRC_ERR, used + bad, m, True, checksum, m)
        # Not wrong, yet not the whole trailer: input ended inside it (a partial result).
        return JobResult(L.STATUS_OK, len(src), m, False, checksum, m)

    # -- stateful ---------------------------------------------------------------------------
    def _stream(self, key: int, new: bool, alg: int) -> Stream | None:
        """The decompression stream of context `key`: a fresh one for a new stream, else the
        one kept (None if there is none). Compression streams: `compress_stateful`."""
        st = self.streams.get(key)
        if new or st is None:
            if not new:
                return None
            st = self._fresh(False, alg, 15)
            self._keep(key, st)
        else:
            self.streams.move_to_end(key)
        return st

    def _fresh(self, compress: bool, alg: int, wbits: int) -> Stream:
        """A new stream's state: a compression stream gets a libz deflater of its own (one an
        ended stream gave back, reset: nothing allocated), or a `zlib` compressobj (libz not
        usable, level 0)."""
        if not compress:
            # the stream's own libz inflater: output straight into the job's destination
            obj: Any = _libz.take_inflater() if _libz.LIBZ is not None else \
                zlib.decompressobj(-15)
        elif _libz.LIBZ is not None and self.level:
            obj = _libz.take(self.level, wbits)
        else:
            obj = zlib.compressobj(self.level, zlib.DEFLATED, -wbits)
        return Stream(compress, alg, obj, _initial_checksum(alg))

    @staticmethod
    def _drop(st: Stream | None) -> None:
        """A stream is over (ended, replaced, evicted): its deflater goes back for another."""
        if st is not None and isinstance(st.obj, _libz.Deflater):
            _libz.give(st.obj)
            st.obj = None
        elif st is not None and isinstance(st.obj, _libz.Inflater):
            _libz.give_inflater(st.obj)
            st.obj = None

    def _keep(self, key: int, st: Stream) -> None:
        old = self.streams.get(key)
        if old is not st:
            self._drop(old)
        self.streams[key] = st
        self.streams.move_to_end(key)
        while len(self.streams) > self.MAX_STREAMS:
            self._drop(self.streams.popitem(last=False)[1])

    def keep_first(self, key: int, st: Stream | None) -> None:
        """Record the outcome of `compress_first` for the stream context `key`: the stream
        goes on (kept), or it finished (forgotten)."""
        if st is None:
            self._drop(self.streams.pop(key, None))
        else:
            self._keep(key, st)

    def compress_stateful(self, key: int, new: bool, alg: int, wbits: int,
                          src: memoryview | bytes, dst: memoryview | bytearray, finish: bool,
                          checksum_in: int, isize_in: int) -> JobResult:
        if new:
            res, st = self.compress_first(alg, wbits, src, dst, finish)
            self.keep_first(key, st)
            return res
        st = self.streams.get(key)
        if st is None or not st.compress or st.done:
            return JobResult(L.STATUS_BAD_REQUEST)
        self.streams.move_to_end(key)
        st.checksum, st.isize = checksum_in, isize_in  # the running values travel in the SQE
        res = self._compress_step(st, src, dst, finish)
        if st.done:
            self.streams.pop(key, None)
        return res

    def compress_first(self, alg: int, wbits: int, src: memoryview | bytes,
                       dst: memoryview | bytearray,
                       finish: bool) -> tuple[JobResult, Stream | None]:
        """The first job of a stream, touching no state of the unit (so a worker thread may run
        it): its result, and the stream to keep for the next job (None once finished). Output
        without room leaves a fresh stream, as the job never ran.

        On the libdeflate codec a first job is whole buffers too (pigz-style pieces, the
        CLI's and large one-shots', are each the first job of a stream of their own): a
        finishing one is a whole stream; one that goes on is libdeflate's stream made to go
        on (`_first_libdeflate`), and a later job of its stream continues on libz from its
        last window of input (`_Tail`)."""
        n = len(src)
        if self.level and self._libdeflate_compresses(n, wbits):
            if finish:
                res = self._compress_libdeflate(alg, src, n, dst)
                if res is not None:
                    return res, None
            elif _libz.LIBZ is not None and n <= LIBDEFLATE_FIRST_MAX:
                res = self._first_libdeflate(alg, src, n, dst)
                if res is not None:
                    tail = _Tail(self.level, wbits, bytes(src[max(0, n - (1 << wbits)):]))
                    return res, Stream(True, alg, tail, res.checksum, res.isize)
        st = self._fresh(True, alg, wbits)
        res = self._compress_step(st, src, dst, finish)
        return res, None if st.done else st

    def _first_libdeflate(self, alg: int, src: memoryview | bytes, n: int,
                          dst: memoryview | bytearray) -> JobResult | None:
        """The first job of a stream that goes on, on libdeflate: its whole-stream output with
        the final block's BFINAL bit cleared and an empty stored block after it (a sync
        flush: 3 header bits, in the end padding when it has room, then LEN 0 / NLEN 0xffff
        from the next byte boundary), so the output ends on a byte boundary with the stream
        open, as zlib's sync flush leaves it (RFC 1951, 3.2.3 and 3.2.4). Where the final
        block starts is found by inflating the output block by block on libz
        (`Inflater.last_block`); None (the libz path) when it does not fit."""
        m = _libdeflate.compress(self.ld_level, src, n, dst, len(dst) - 5)
        if not m:
            return None
        where = (_libz._thread.inflater or _libz.inflater()).last_block(dst, m, n)
        if where is None:  # (libdeflate's output is one whole stream: not expected)
            return None
        start, end = where
        pad = 8 * m - end  # (the zero bits after the stream's end in its last byte)
        if not 0 <= pad < 8:
            return None
        dst[start >> 3] &= ~(1 << (start & 7))
        flush = _SYNC_FLUSH_IN_PAD if pad >= 3 else _SYNC_FLUSH
        dst[m:m + len(flush)] = flush
        m += len(flush)
        return JobResult(L.STATUS_NEGACOMPRESS if m > n else L.STATUS_OK, n, m, False,
                         self._sum(alg, src, n), n)

    def _compress_step(self, st: Stream, src: memoryview | bytes,
                       dst: memoryview | bytearray, finish: bool) -> JobResult:
        alg = st.alg
        n = len(src)
        if isinstance(st.obj, _Tail):  # (the stream's first job ran on libdeflate)
            st.obj = st.obj.deflater()
        # Work on a copy unless the output surely fits, so "too small" leaves the stream intact.
        sure = len(dst) >= n + (n >> 12) + (n >> 14) + 64
        if isinstance(st.obj, _libz.Deflater):
            return self._compress_step_libz(st, st.obj, src, n, dst, finish, sure)
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
        status = L.STATUS_NEGACOMPRESS if m > n else L.STATUS_OK
        return JobResult(status, n, m, finish, checksum, isize)

    def _compress_step_libz(self, st: Stream, d: _libz.Deflater, src: memoryview | bytes,
                            n: int, dst: memoryview | bytearray, finish: bool,
                            sure: bool) -> JobResult:
        """`_compress_step` on the stream's own libz deflater: the input straight in, one call
        (sync flush, or the end), the output straight into the destination, the trailer after
        it. Output identical to compressobj's compress + flush (tests/test_zip_libz.py)."""
        alg = st.alg
        avail = len(dst)
        if sure:
            run, m = d, d.step(src, n, dst, avail, finish)
        else:
            # On a copy, into a byte more room than the destination: deflate says whether its
            # flush (or the end) is complete only on a call that has room left, so output that
            # exactly fills the destination fits (as on the module path) and is copied there.
            run, out = d.copy(), bytearray(avail + 1)
            m = run.step(src, n, out, avail + 1, finish)
            if m >= 0:  # (room was left: m <= avail)
                dst[:m] = memoryview(out)[:m]
        checksum = _update_checksum(alg, src, st.checksum)
        isize = (st.isize + n) & 0xFFFF_FFFF
        if m >= 0 and finish:
            tlen = _trailer_len(alg)
            if m + tlen <= avail:
                dst[m:m + tlen] = _trailer(alg, checksum, isize)
                m += tlen
            else:
                m = -1
        if m < 0:
            return JobResult(L.STATUS_DST_TOO_SMALL, 0, 0, False, st.checksum, st.isize)
        if run is not d:
            _libz.give(d)  # (the state before this job: the copy goes on)
        st.obj, st.checksum, st.isize = run, checksum, isize
        if finish:
            st.done = True
            self._drop(st)
        status = L.STATUS_NEGACOMPRESS if m > n else L.STATUS_OK
        return JobResult(status, n, m, finish, checksum, isize)

    def decompress_stateful(self, key: int, new: bool, alg: int, src: memoryview | bytes,
                            dst: memoryview | bytearray) -> JobResult:
        st = self._stream(key, new, alg)
        if st is None or st.compress:
            return JobResult(L.STATUS_BAD_REQUEST)
        if st.done:
            return JobResult(L.STATUS_DECOMP_END, 0, 0, True, st.checksum, st.isize)
        n = len(src)
        avail = len(dst)
        out: bytes | bytearray | memoryview = b""
        used = 0
        rest: bytes | memoryview = src
        if not st.body_done and isinstance(st.obj, _libz.Inflater):
            how, used, made = st.obj.step(src, n, dst, avail)
            if how == _libz.BAD:
                st.done = True
                self._drop(st)
                return JobResult(L.STATUS_BAD_DATA, 0, 0, False, st.checksum, st.isize)
            if made:
                st.checksum = _update_checksum(alg, dst[:made], st.checksum)
                st.isize = (st.isize + made) & 0xFFFF_FFFF
            if how != _libz.END:
                return JobResult(L.STATUS_OK, used, made, False, st.checksum, st.isize,
                                 L.CTX_ST_DECOMPING_NO_SPACE if made == avail else 0)
            st.body_done = True
            self._drop(st)  # (the inflater goes back; the trailer is checked below)
            rest = src[used:n]
            out = dst[:made]
        elif not st.body_done:
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
        before = len(st.trailer)
        st.trailer += bytes(rest[:take])
        bad = _bad_trailer_field(alg, st.trailer, st.checksum, st.isize)
        if bad:  # consumed ends with the rejected field
            st.done = True
            return JobResult(L.STATUS_CRC_ERR, used + bad - before, len(out), True,
                             st.checksum, st.isize)
        used += take
        if len(st.trailer) < tlen:
            return JobResult(L.STATUS_OK, used, len(out), False, st.checksum, st.isize)
        st.done = True
        return JobResult(L.STATUS_DECOMP_END, used, len(out), True, st.checksum, st.isize)


