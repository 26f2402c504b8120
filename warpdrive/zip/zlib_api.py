"""The functions and stream objects of the `zlib` module, on a ZIP engine.

Arguments are checked as zlib's own argument parsing checks them: integers through
`__index__` (a float is a TypeError), C `int` and `Py_ssize_t` ranges (OverflowError), and the
same accepted and refused sets of levels, window sizes, memory levels, strategies and flush
modes, raising the same exception types with zlib's messages (plus a hint).

What runs where. The engine has one compression level and windows of 4 KiB to 32 KiB, and
decompresses with a 32 KiB window; it checks no distances against a smaller window. So:
- compression with a window under 4 KiB (wbits 8..11, -9..-11, 25..27), whose output must not
  reach further back than that, and level 0 (stored blocks, no compression asked for) runs on
  the CPU through zlib;
- decompression with a declared window under 32 KiB (wbits 8..14, -8..-14, 24..30, 40..46, or
  0/32 with a zlib header that declares one) runs on the CPU, so distances beyond the window
  are rejected as zlib rejects them;
- everything else (the usual 15/-15/31/47 and levels -1, 1..9) runs on the engine. `level`
  then only shapes the headers (zlib's FLEVEL, gzip's XFL), and `memLevel` and `strategy` are
  checked and otherwise ignored: they tune zlib's software, not the engine.
Refused (`ZipUnsupportedError`, a `zlib.error` and a `ValueError`): preset dictionaries
(`zdict`), and `copy()` of a stream (its state lives in the engine).
"""

from __future__ import annotations

import logging
import operator
import sys
import zlib as _zlib
from collections.abc import Callable, Generator
from typing import Any, Protocol

from ..device import Device
from ..devices.zip.engine import ZipEngine
from ..devices.zip.errors import ZipDataError, ZipError, ZipUnsupportedError
from ..devices.zip.header import GzipHeader
from ..devices.zip.sqe import Format
from ..errors import InvalidArgumentError
from . import engines as _engines
from .engines import engine_for

log = logging.getLogger("warpdrive.zip")

DEFLATED = _zlib.DEFLATED
MAX_WBITS = _zlib.MAX_WBITS
DEF_MEM_LEVEL = _zlib.DEF_MEM_LEVEL
DEF_BUF_SIZE = _zlib.DEF_BUF_SIZE
Z_NO_FLUSH = _zlib.Z_NO_FLUSH
Z_FINISH = _zlib.Z_FINISH

COMPRESS_WBITS = frozenset([*range(-15, -8), *range(8, 16), *range(25, 32)])
DECOMPRESS_WBITS = frozenset([*range(-15, -7), 0, *range(8, 16), 16, *range(24, 33),
                              *range(40, 48)])
ENGINE_MIN_WINDOW = 12  # 4 KiB: the engine's smallest compression window

_INT_MAX = (1 << 31) - 1

Buffer = bytes | bytearray | memoryview
Where = Device | ZipEngine | str | None


# -- argument parsing, as zlib's -----------------------------------------------------------
def c_int(value: Any) -> int:
    """An `int` argument: anything with `__index__`, within C int."""
    i = operator.index(value)
    if not -_INT_MAX - 1 <= i <= _INT_MAX:
        raise OverflowError("Python int too large to convert to C int")
    return i


def c_ssize(value: Any) -> int:
    """A `Py_ssize_t` argument."""
    i = operator.index(value)
    if not -sys.maxsize - 1 <= i <= sys.maxsize:
        raise OverflowError("Python int too large to convert to C ssize_t")
    return i


def byte_view(data: Any) -> memoryview:
    """The bytes of a bytes-like object (C-contiguous, as zlib requires), without a copy."""
    try:
        mv = memoryview(data)
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not '{type(data).__name__}'") \
            from None
    if not mv.c_contiguous:
        raise BufferError("memoryview: underlying buffer is not C-contiguous")
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


def _zdict(zdict: Any) -> memoryview | None:
    if zdict is None:
        return None
    try:
        zd = memoryview(zdict)
    except TypeError:
        raise TypeError("zdict argument must support the buffer protocol") from None
    if zd.nbytes:
        raise ZipUnsupportedError(
            "preset dictionaries (zdict) are not supported by the ZIP engine",
            hint="use Python's zlib for streams with a preset dictionary")
    return zd


def compress_window(wbits: int) -> int:
    """The window (in bits) a compression `wbits` asks for (zlib turns 8 into 9)."""
    w = -wbits if wbits < 0 else wbits - 16 if wbits > 15 else wbits
    return max(w, 9)


def decompress_window(wbits: int, head: Buffer = b"") -> int:
    """The window a decompression `wbits` declares; for 0 and 32 (window from the stream)
    the header decides: a zlib header's CINFO, 15 for gzip (or too few bytes yet: 15)."""
    if wbits < 0:
        return -wbits
    if wbits in (0, 32):
        if len(head) < 2 or (wbits == 32 and head[0] == 0x1F and head[1] == 0x8B):
            return 15
        return (head[0] >> 4) + 8 if (head[0] << 8 | head[1]) % 31 == 0 else 15
    if wbits == 16:
        return 15
    return wbits - 32 if wbits >= 40 else wbits - 16 if wbits >= 24 else wbits


def compress_on_cpu(level: int, wbits: int) -> bool:
    return level == 0 or compress_window(wbits) < ENGINE_MIN_WINDOW


def _cpu_note(what: str) -> None:
    log.info("%s runs on the CPU (zlib): the engine cannot honour it", what)


def _cpu(fn: Any, *args: Any) -> Any:
    """A zlib call whose errors are ours (`ZipDataError`, a zlib.error, same message)."""
    try:
        return fn(*args)
    except _zlib.error as e:
        raise ZipDataError(str(e)) from None


class _CpuStream:
    """A zlib compressobj/decompressobj behind the same error classes as the engine's."""

    def __init__(self, obj: Any) -> None:
        self._o = obj

    def __getattr__(self, name: str) -> Any:
        return getattr(self._o, name)

    def compress(self, data: memoryview) -> bytes:
        return bytes(_cpu(self._o.compress, data))

    def decompress(self, data: memoryview, max_length: int = 0) -> bytes:
        return bytes(_cpu(self._o.decompress, data, max_length))

    def flush(self, arg: int = _zlib.Z_FINISH) -> bytes:
        return bytes(_cpu(self._o.flush, arg))


# -- one-shot functions ------------------------------------------------------------------
# The common call is served first, on exact types (a bool or an int subclass goes the checked
# way), with values the engine takes: the sets below hold only valid arguments, so what passes
# them needs no other check. The engine's fast way (`OneShot.compress_fast`) returns None, having
# done nothing, for anything it does not serve: then the general way below runs.
_ENGINE_LEVELS = frozenset((-1, *range(1, 10)))
_ENGINE_CWBITS = frozenset(w for w in COMPRESS_WBITS if compress_window(w) >= ENGINE_MIN_WINDOW)
_FAST_DWBITS = frozenset((MAX_WBITS, 16, 16 + MAX_WBITS, 32 + MAX_WBITS, -MAX_WBITS))
_FAST_BUFSIZE_MAX = 1 << 30


def compress(data: Buffer, /, level: int = -1, wbits: int = MAX_WBITS, *,
             device: Where = None) -> bytes:
    """zlib.compress: one complete stream (any size; over 7 MiB as a chain of stream jobs)."""
    cls = data.__class__
    if (cls is bytes or cls is bytearray) and level.__class__ is int and \
            wbits.__class__ is int and level in _ENGINE_LEVELS and wbits in _ENGINE_CWBITS:
        eng = _engines._default if device is None else device
        if eng.__class__ is ZipEngine:
            out = eng.oneshots[0].compress_fast(data, level, wbits)
            if out is not None:
                return out
    mv = byte_view(data)
    level, wbits = c_int(level), c_int(wbits)
    if not -1 <= level <= 9 or wbits not in COMPRESS_WBITS:
        raise ZipError("Bad compression level",
                       hint="level must be -1..9 and wbits -15..-9, 8..15 or 25..31")
    if compress_on_cpu(level, wbits):
        _cpu_note(f"compress(level={level}, wbits={wbits})")
        return bytes(_cpu(_zlib.compress, mv, level, wbits))
    return engine_for(device).compress(mv, level, wbits)


def decompress(data: Buffer, /, wbits: int = MAX_WBITS, bufsize: int = DEF_BUF_SIZE, *,
               device: Where = None) -> bytes:
    """zlib.decompress: one complete stream; data after its end is ignored (as zlib does).
    Corrupt or truncated input raises `error` with zlib's message."""
    cls = data.__class__
    if (cls is bytes or cls is bytearray) and wbits.__class__ is int and \
            bufsize.__class__ is int and wbits in _FAST_DWBITS and \
            0 <= bufsize <= _FAST_BUFSIZE_MAX:
        eng = _engines._default if device is None else device
        if eng.__class__ is ZipEngine:
            out = eng.oneshots[1].decompress_fast(data, wbits, bufsize)
            if out is not None:
                return out
    mv = byte_view(data)
    wbits, bufsize = c_int(wbits), c_ssize(bufsize)
    if bufsize < 0:
        raise InvalidArgumentError("bufsize must be non-negative")
    if wbits not in DECOMPRESS_WBITS:
        raise ZipError("Error -2 while preparing to decompress data: inconsistent stream state",
                       hint="wbits must be -15..-8, 0, 8..15, 16, 24..32 or 40..47")
    if decompress_window(wbits, mv[:2]) < 15:
        _cpu_note(f"decompress(wbits={wbits}) with a window under 32 KiB")
        return bytes(_cpu(_zlib.decompress, mv, wbits, bufsize))
    return engine_for(device).decompress(mv, wbits, min(bufsize, 1 << 30))


# -- streams -----------------------------------------------------------------------------
class _Backend(Protocol):
    def compress(self, data: memoryview) -> bytes: ...

    def flush(self, mode: int) -> bytes: ...


class _NoInstances:
    """Like zlib's stream types: made by the factory functions, not by calling the class."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"cannot create '{cls.__module__}.{cls.__qualname__}' instances")

    @classmethod
    def _new(cls) -> Any:
        return object.__new__(cls)

    def __reduce__(self) -> Any:
        raise TypeError(f"cannot pickle '{type(self).__name__}' object")

    def __copy__(self) -> Any:
        return self.copy()

    def __deepcopy__(self, memo: Any) -> Any:
        return self.copy()

    def copy(self) -> Any:
        raise ZipUnsupportedError(
            f"a {type(self).__name__} stream cannot be copied: its state lives in the engine",
            hint="compress (or decompress) the shared prefix again instead")


class Compress(_NoInstances):
    """A compression stream (from `compressobj`), as zlib's."""

    _b: Any
    _done: bool

    def compress(self, data: Buffer, /) -> bytes:
        mv = byte_view(data)
        if self._done:
            raise ZipError("Error -2 while compressing data: inconsistent stream state",
                           hint="the stream was finished; start a new compressobj()")
        return bytes(self._b.compress(mv))

    def flush(self, mode: int = Z_FINISH, /) -> bytes:
        mode = c_int(mode)
        if mode == Z_NO_FLUSH:
            return b""
        if self._done:
            raise ZipError("Error -2 while flushing: inconsistent stream state",
                           hint="the stream was finished; start a new compressobj()")
        out = bytes(self._b.flush(mode))
        if mode == Z_FINISH:
            self._done = True
            self._close()
        return out

    def _close(self) -> None:
        close = getattr(self._b, "close", None)
        if close is not None:
            close()  # gives the engine buffers back: lock-free, safe in a finalizer

    def __del__(self) -> None:
        if getattr(self, "_b", None) is not None and not self._done:
            self._close()


def compressobj(level: int = -1, method: int = DEFLATED, wbits: int = MAX_WBITS,
                memLevel: int = DEF_MEM_LEVEL, strategy: int = _zlib.Z_DEFAULT_STRATEGY,
                zdict: Any = None, *, device: Where = None,
                chunk_size: int = 1 << 20) -> Compress:
    """zlib.compressobj. Input is gathered into engine jobs of `chunk_size` bytes (at most
    7 MiB): `compress()` returns output once a job's worth has arrived (zlib buffers too)."""
    level, method, wbits = c_int(level), c_int(method), c_int(wbits)
    memLevel, strategy = c_int(memLevel), c_int(strategy)
    zd = _zdict(zdict) if zdict is not None else None
    if not -1 <= level <= 9 or method != DEFLATED or wbits not in COMPRESS_WBITS or \
            not 1 <= memLevel <= 9 or not 0 <= strategy <= _zlib.Z_FIXED:
        raise InvalidArgumentError(
            "Invalid initialization option",
            hint="level -1..9, method DEFLATED, wbits -15..-9, 8..15 or 25..31, memLevel "
            "1..9, strategy 0..4")
    del zd
    c = Compress._new()
    c._done = False
    if compress_on_cpu(level, wbits):
        _cpu_note(f"compressobj(level={level}, wbits={wbits})")
        c._b = _CpuStream(_zlib.compressobj(level, method, wbits, memLevel, strategy))
    else:
        from ..devices.zip.stream import Deflater

        c._b = Deflater(engine_for(device), Format.from_wbits(wbits, decompress=False), level,
                        chunk=chunk_size)
    return c


class Decompress(_NoInstances):
    """A decompression stream (from `decompressobj`), as zlib's: `unused_data`,
    `unconsumed_tail`, `eof`. With `max_length`, output and memory stay bounded per call."""

    _b: Any  # an engine Inflater, a zlib decompressobj, or None until the window is known
    _wbits: int
    _device: Where
    _head: bytes

    @property
    def unused_data(self) -> bytes:
        return b"" if self._b is None else bytes(self._b.unused_data)

    @property
    def unconsumed_tail(self) -> bytes:
        return b"" if self._b is None else bytes(self._b.unconsumed_tail)

    @property
    def eof(self) -> bool:
        return False if self._b is None else bool(self._b.eof)

    @property
    def gzip_header(self) -> GzipHeader | None:
        """(warpdrive) The fields of the gzip header read so far (name, mtime, ...), or None
        (not gzip, not read yet, or a stream decompressed on the CPU)."""
        head = getattr(self._b, "header", None)
        return head.gzip if head is not None else None

    def _start(self, head: Buffer) -> None:
        """Pick the engine or the CPU once the declared window is known."""
        wbits = self._wbits
        if decompress_window(wbits, head) < 15:
            _cpu_note(f"decompressobj(wbits={wbits}) with a window under 32 KiB")
            self._b = _CpuStream(_zlib.decompressobj(wbits))
        else:
            from ..devices.zip.stream import Inflater

            self._b = Inflater(engine_for(self._device),
                               Format.from_wbits(wbits, decompress=True))

    def decompress(self, data: Buffer, /, max_length: int = 0) -> bytes:
        mv = byte_view(data)
        max_length = c_ssize(max_length)
        if max_length < 0:
            raise InvalidArgumentError("max_length must be non-negative")
        if self._b is None:  # wbits 0/32: the window comes from the first two bytes
            head = self._head + bytes(mv[:2])
            if len(head) < 2:
                self._head = head
                return b""
            self._start(head)
            if self._head:
                mv = memoryview(self._head + bytes(mv))
                self._head = b""
        out = self._b.decompress(mv, max_length)
        if self._b.eof and hasattr(self._b, "close"):
            self._b.close()  # the engine buffers go back to the pool; attributes stay
        return bytes(out)

    def chunks(self, readinto: Callable[[memoryview], int], first: Buffer = b"",
               size: int = 1 << 20) -> Generator[memoryview, None, None]:
        """(warpdrive) The rest of the stream, `first` then what `readinto` reads (it fills a
        view, says how much, 0 at the end of the input), as views of its output, each valid
        until the next is asked for: on the engine the next piece inflates while the caller
        writes this one out, with no copy in this process (`Inflater.pipe`). Ends at the end
        of the stream (`eof`, `unused_data`) or of the input (`eof` False). Use it in a
        `with contextlib.closing(...)` block, so that an abandoned walk lets its buffers go. A
        slice of a piece kept past the next shows whatever the engine wrote there since, and
        never stops the engine's close (its memory goes with the last such slice)."""
        mv = byte_view(first)
        if self._b is None and len(self._head) + len(mv) >= 2:
            self._start(self._head + bytes(mv[:2]))
            mv = memoryview(self._head + bytes(mv))
            self._head = b""
        pipe = getattr(self._b, "pipe", None)
        if pipe is not None:
            try:
                yield from pipe(readinto, mv)
            finally:
                if self._b.eof:
                    self._b.close()  # the engine buffers go back to the pool
            return
        # Decompressed on the CPU (or no header yet): call by call, `size` bytes of output
        # at a time.
        buf = bytearray(size)
        data: Buffer = mv
        while True:
            out = self.decompress(data, size)
            if out:
                yield memoryview(out)
            if self.eof:
                return
            data = self.unconsumed_tail
            if not data and not out:
                k = readinto(memoryview(buf))
                if not k:
                    return
                data = bytes(buf[:k])

    def flush(self, length: int = DEF_BUF_SIZE, /) -> bytes:
        length = c_ssize(length)
        if length <= 0:
            raise InvalidArgumentError("length must be greater than zero")
        if isinstance(self._b, _CpuStream):  # zlib itself, call for call
            return self._b.flush(length)
        if self._b is None or self._b.eof:
            return b""
        out = self._b.flush()  # all that is left (zlib's length only sizes a first buffer)
        if self._b.eof and hasattr(self._b, "close"):
            self._b.close()
        return bytes(out)

    def __del__(self) -> None:
        b = getattr(self, "_b", None)
        if b is not None and hasattr(b, "close"):
            b.close()  # lock-free (see BufferPool)


def decompressobj(wbits: int = MAX_WBITS, zdict: Any = b"", *,
                  device: Where = None) -> Decompress:
    """zlib.decompressobj (wbits as zlib: also 0, 16, 32 and 40..47 to detect)."""
    wbits = c_int(wbits)
    _zdict(zdict)
    if wbits not in DECOMPRESS_WBITS:
        raise InvalidArgumentError(
            "Invalid initialization option",
            hint="wbits must be -15..-8, 0, 8..15, 16, 24..32 or 40..47")
    d = Decompress._new()
    d._b, d._wbits, d._device, d._head = None, wbits, device, b""
    if wbits not in (0, 32):
        d._start(b"")
    return d
