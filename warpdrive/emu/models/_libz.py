"""The system's zlib (libz.so.1, the library Python's `zlib` module links) through ctypes, for
the ZIP model's engine.

Python's `zlib.compress`/`decompressobj` set up a fresh deflate/inflate state per call (deflate's
is ~270 KiB with a 32 KiB window: fresh heap pages when the heap churns), grow their output in
blocks that are then joined, and the model copied that into the DMA destination. Here each thread
keeps one z_stream per (direction, level, window), resets it per job (a reset stream is a fresh
one with the same parameters), and points it straight at the job's source and destination memory:
no bytes in between. The layout and calls are from zlib.h (docs/research/libz.md), checked at
load time against the library's version and the struct size it expects.

`LIBZ` is None when the library cannot be used; `WHY` then says why and the engine keeps to the
`zlib` module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
import threading
from typing import Any

Z_OK, Z_STREAM_END, Z_BUF_ERROR = 0, 1, -5
Z_FINISH = 4
Z_DEFLATED = 8
DEF_MEM_LEVEL = 8  # what Python's zlib module passes (docs/research/libz.md)
Z_DEFAULT_STRATEGY = 0


class _ZStream(ctypes.Structure):
    """struct z_stream_s of zlib.h (docs/research/libz.md, "z_stream")."""

    _fields_ = [("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint),
                ("total_in", ctypes.c_ulong), ("next_out", ctypes.c_void_p),
                ("avail_out", ctypes.c_uint), ("total_out", ctypes.c_ulong),
                ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p),
                ("zalloc", ctypes.c_void_p), ("zfree", ctypes.c_void_p),
                ("opaque", ctypes.c_void_p), ("data_type", ctypes.c_int),
                ("adler", ctypes.c_ulong), ("reserved", ctypes.c_ulong)]


# The fields a job sets and reads, next_in .. total_out, as one struct (LP64: checked at load
# against the ctypes layout above): one pack before a call, one unpack after.
_IO = struct.Struct("=QI4xQQI4xQ")


class _PyBuffer(ctypes.Structure):
    """Py_buffer (the C API's buffer protocol), to take the address of a read-only buffer:
    ctypes' from_buffer wants a writable one."""

    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int), ("format", ctypes.c_char_p),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.c_void_p, ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.c_void_p]
_release_buffer.restype = None


class _Lib:
    """libz's entry points, typed (prototypes: docs/research/libz.md, "calls")."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        vp, ci, ccp = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p

        def fn(name: str, args: list[Any], res: Any = ci) -> Any:
            f = getattr(lib, name)
            f.argtypes, f.restype = args, res
            return f

        self.version = fn("zlibVersion", [], ccp)
        self.deflate_init = fn("deflateInit2_", [vp, ci, ci, ci, ci, ci, ccp, ci])
        self.inflate_init = fn("inflateInit2_", [vp, ci, ccp, ci])
        self.deflate_reset, self.inflate_reset = fn("deflateReset", [vp]), fn("inflateReset", [vp])
        self.deflate_end, self.inflate_end = fn("deflateEnd", [vp]), fn("inflateEnd", [vp])
        self.deflate, self.inflate = fn("deflate", [vp, ci]), fn("inflate", [vp, ci])


def _load() -> tuple[_Lib | None, str]:
    offsets = [getattr(_ZStream, f).offset for f in
               ("next_in", "avail_in", "total_in", "next_out", "avail_out", "total_out")]
    if offsets != [0, 8, 16, 24, 32, 40] or ctypes.sizeof(_ZStream) != 112:
        return None, (f"z_stream has an unexpected layout on this platform (offsets {offsets}, "
                      f"{ctypes.sizeof(_ZStream)} bytes; 64-bit Linux expected)")
    name = ctypes.util.find_library("z") or "libz.so.1"
    try:
        lib = _Lib(ctypes.CDLL(name))
    except (OSError, AttributeError) as e:
        return None, f"cannot load {name}: {e}"
    version = lib.version() or b""
    if not version.startswith(b"1."):
        return None, f"{name} is zlib {version.decode(errors='replace')}; 1.x expected"
    return lib, ""


LIBZ, WHY = _load()
_VERSION = LIBZ.version() if LIBZ is not None else b""
_SIZE = ctypes.sizeof(_ZStream)


class _Thread(threading.local):
    """One thread's kept streams and buffer-protocol scratch (never shared between threads:
    the model's thread and each of ThreadedJobs' workers have their own)."""

    def __init__(self) -> None:
        self.deflaters: dict[tuple[int, int], Deflater] = {}
        self.inflater: Inflater | None = None
        self.pybuf = _PyBuffer()
        self.pybuf_addr = ctypes.addressof(self.pybuf)
        self.scratch = ctypes.create_string_buffer(1)
        self.scratch_addr = ctypes.addressof(self.scratch)


_thread = _Thread()


def _in_address(buf: Any) -> int:
    """The address of a (possibly read-only) buffer's memory, valid while `buf` is held."""
    t = _thread
    if _get_buffer(buf, t.pybuf_addr, 0):
        raise ValueError("the buffer cannot be reached")
    a: int = t.pybuf.buf or t.scratch_addr
    _release_buffer(t.pybuf_addr)
    return a


def _out_address(buf: Any) -> int:
    """The address of a writable buffer's memory (at least one byte), valid while held."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


class _Stream:
    """A z_stream and its memory, ended when dropped."""

    def __init__(self) -> None:
        self.zs = _ZStream()
        self.addr = ctypes.addressof(self.zs)
        self.io = memoryview(self.zs).cast("B")  # (pack/unpack of the job's fields)

    def _check(self, rc: int, what: str) -> None:
        if rc != Z_OK:
            msg = self.zs.msg.decode(errors="replace") if self.zs.msg else f"error {rc}"
            raise MemoryError(f"zlib {what}: {msg}")


class Deflater(_Stream):
    """A raw deflate stream (no container) kept for one (level, window)."""

    def __init__(self, level: int, wbits: int) -> None:
        super().__init__()
        assert LIBZ is not None
        self._lib = LIBZ
        self._check(LIBZ.deflate_init(self.addr, level, Z_DEFLATED, -wbits, DEF_MEM_LEVEL,
                                      Z_DEFAULT_STRATEGY, _VERSION, _SIZE), "deflateInit2")
        self._reset, self._deflate = LIBZ.deflate_reset, LIBZ.deflate

    def __del__(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is not None:
            lib.deflate_end(self.addr)

    def whole(self, src: Any, n: int, dst: Any, avail: int) -> int:
        """Compress all `n` bytes of `src` into `dst` (room `avail`) as one finished raw
        deflate stream: how many bytes it took, or -1 when they do not fit."""
        if not avail:
            return -1
        _IO.pack_into(self.io, 0, _in_address(src) if n else _thread.scratch_addr, n, 0,
                      _out_address(dst), avail, 0)
        self._reset(self.addr)
        rc = self._deflate(self.addr, Z_FINISH)
        if rc == Z_STREAM_END:
            return int(_IO.unpack_from(self.io)[5])
        if rc not in (Z_OK, Z_BUF_ERROR):
            self._check(rc, "deflate")
        _next_in, _left, used, _next_out, room, made = _IO.unpack_from(self.io)
        if room:
            return -1
        # The room is full: deflate says the end only on a call that has room left, even when
        # the last byte fitted exactly. A byte more of room tells (the end, or more output).
        scratch = _thread.scratch_addr
        _IO.pack_into(self.io, 0, scratch, 0, used, scratch, 1, made)
        rc = self._deflate(self.addr, Z_FINISH)
        return made if rc == Z_STREAM_END and _IO.unpack_from(self.io)[5] == made else -1


# Inflater.whole's outcomes
END, PARTIAL, FULL, BAD = 0, 1, 2, 3


class Inflater(_Stream):
    """A raw inflate stream (no container), 32 KiB window, kept per thread."""

    def __init__(self) -> None:
        super().__init__()
        assert LIBZ is not None
        self._lib = LIBZ
        self._check(LIBZ.inflate_init(self.addr, -15, _VERSION, _SIZE), "inflateInit2")
        self._reset, self._inflate = LIBZ.inflate_reset, LIBZ.inflate

    def __del__(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is not None:
            lib.inflate_end(self.addr)

    def whole(self, src: Any, n: int, dst: Any, avail: int) -> tuple[int, int, int]:
        """Decompress a raw deflate stream from `src` (`n` bytes) into `dst` (room `avail`) in
        one call: (outcome, input used, output made). END: the stream ended; PARTIAL: the input
        ended first; FULL: more output than room; BAD: invalid data. Z_FINISH: a call that
        finishes the stream keeps no window (docs/research/libz.md, "inflate")."""
        t = _thread
        io = self.io
        _IO.pack_into(io, 0, _in_address(src) if n else t.scratch_addr, n, 0,
                      _out_address(dst) if avail else t.scratch_addr, avail, 0)
        self._reset(self.addr)
        rc = self._inflate(self.addr, Z_FINISH)
        _next_in, left, used, _next_out, room, made = _IO.unpack_from(io)
        if rc == Z_STREAM_END:
            return END, used, made
        if rc not in (Z_OK, Z_BUF_ERROR):
            return BAD, used, made
        if room:  # room left over: the input ran out first
            return PARTIAL, used, made
        # The room is full: one byte more of room tells whether more output follows (a
        # literal, a match being copied), the stream ends there, or the data is bad there
        # (as Python's zlib module tells, asked for one byte more than the room).
        _IO.pack_into(io, 0, t.scratch_addr if not left else _next_in, left, used,
                      t.scratch_addr, 1, made)
        rc = self._inflate(self.addr, Z_FINISH)
        _next_in, left, used, _next_out, room, more = _IO.unpack_from(io)
        if rc not in (Z_OK, Z_BUF_ERROR, Z_STREAM_END):  # (even after that byte, as zlib's)
            return BAD, used, made
        if more > made:
            return FULL, used, made
        return (END if rc == Z_STREAM_END else PARTIAL), used, made


def deflater(level: int, wbits: int) -> Deflater:
    """This thread's kept raw deflate stream for (level, wbits)."""
    kept = _thread.deflaters
    d = kept.get((level, wbits))
    if d is None:
        d = kept[level, wbits] = Deflater(level, wbits)
    return d


def inflater() -> Inflater:
    """This thread's kept raw inflate stream."""
    i = _thread.inflater
    if i is None:
        i = _thread.inflater = Inflater()
    return i
