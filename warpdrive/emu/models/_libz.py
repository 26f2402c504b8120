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
import mmap
import struct
import threading
from collections import deque

TYPE_CHECKING = False  # (not typing's: importing typing costs ~3 ms of every process's boot)
if TYPE_CHECKING:
    from typing import Any

Z_OK, Z_STREAM_END, Z_BUF_ERROR = 0, 1, -5
Z_NO_FLUSH, Z_SYNC_FLUSH, Z_FINISH, Z_BLOCK = 0, 2, 4, 5
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
    """libz's entry points, typed (prototypes: docs/research/libz.md, "calls"). The per-job
    calls come twice: through CDLL, which releases the GIL for the call (long jobs: ThreadedJobs'
    workers compress at once on several cores), and through PyDLL, which keeps it (short jobs:
    releasing it hands the interpreter to any thread waiting for it, a switch that costs more
    than the job)."""

    def __init__(self, name: str) -> None:
        free, held = ctypes.CDLL(name), ctypes.PyDLL(name)
        vp, ci, ccp = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p

        def fn(lib: ctypes.CDLL, name: str, args: list[Any], res: Any = ci) -> Any:
            f = getattr(lib, name)
            f.argtypes, f.restype = args, res
            return f

        self.version = fn(free, "zlibVersion", [], ccp)
        self.deflate_init = fn(free, "deflateInit2_", [vp, ci, ci, ci, ci, ci, ccp, ci])
        self.inflate_init = fn(free, "inflateInit2_", [vp, ci, ccp, ci])
        self.deflate_end = fn(free, "deflateEnd", [vp])
        self.deflate_copy = fn(free, "deflateCopy", [vp, vp])
        self.deflate_set_dictionary = fn(free, "deflateSetDictionary",
                                         [vp, vp, ctypes.c_uint])
        self.inflate_end = fn(free, "inflateEnd", [vp])
        # (reset, run) for short jobs, then for long ones
        self.deflate = ((fn(held, "deflateReset", [vp]), fn(held, "deflate", [vp, ci])),
                        (fn(free, "deflateReset", [vp]), fn(free, "deflate", [vp, ci])))
        self.inflate = ((fn(held, "inflateReset", [vp]), fn(held, "inflate", [vp, ci])),
                        (fn(free, "inflateReset", [vp]), fn(free, "inflate", [vp, ci])))


# Jobs of at least this many input bytes run with the GIL released.
LONG = 16 << 10
# `Inflater.last_block`'s output room per thread: the output is thrown away, so the room is
# reused from its start when full (as fast as room for all of it: docs/research/libz.md, 12).
LAST_BLOCK_ROOM = 128 << 10


def _load(name: str | None = None) -> tuple[_Lib | None, str]:
    """The library (or None) and why not."""
    offsets = [getattr(_ZStream, f).offset for f in
               ("next_in", "avail_in", "total_in", "next_out", "avail_out", "total_out")]
    if offsets != [0, 8, 16, 24, 32, 40] or ctypes.sizeof(_ZStream) != 112:
        return None, (f"z_stream has an unexpected layout on this platform (offsets {offsets}, "
                      f"{ctypes.sizeof(_ZStream)} bytes; 64-bit Linux expected)")
    # The soname first: find_library runs `ldconfig -p` in a child process (~10 ms of every
    # model's start-up), so it is asked only when the soname does not load.
    wanted, name = name, name or "libz.so.1"
    try:
        lib = _Lib(name)
    except (OSError, AttributeError) as e:
        from ctypes.util import find_library  # (imports subprocess: only when needed)

        found = None if wanted else find_library("z")
        if not found or found == name:
            return None, f"cannot load {name}: {e}"
        name = found
        try:
            lib = _Lib(name)
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
    """One thread's kept streams and scratch (never shared between threads: the model's
    thread and each of ThreadedJobs' workers have their own)."""

    def __init__(self) -> None:
        self.deflaters: dict[tuple[int, int], Deflater] = {}
        self.inflater: Inflater | None = None
        self.pybuf = _PyBuffer()
        self.pybuf_addr = ctypes.addressof(self.pybuf)
        self.scratch = ctypes.create_string_buffer(1)
        self.scratch_addr = ctypes.addressof(self.scratch)
        self.out: bytearray | None = None  # `Inflater.last_block`'s output room (made once)
        self.stage = memoryview(b"")  # (`stage`)
        self.stage_addr = 0


_thread = _Thread()
_from_address = ctypes.c_size_t.from_address


def _buffer_address(buf: Any) -> int:
    """The address of any buffer's memory (read-only too: ctypes' from_buffer wants a writable
    one), through the buffer protocol; valid while `buf` is held."""
    t = _thread
    if _get_buffer(buf, t.pybuf_addr, 0):
        raise ValueError("the buffer cannot be reached")
    a: int = t.pybuf.buf or t.scratch_addr
    _release_buffer(t.pybuf_addr)
    return a


def _memoryview_buf_offset() -> int:
    """Where a memoryview object holds its buffer's address (its Py_buffer's `buf`, CPython's
    PyMemoryViewObject), checked on probes against the buffer protocol; 0 when it is not
    where expected (then every address goes through the protocol). Reading it costs a fifth
    of asking the protocol, and a job asks twice."""
    off = 7 * ctypes.sizeof(ctypes.c_void_p)  # (ob_refcnt, ob_type, ob_size, mbuf, hash,
    # flags, exports: then the Py_buffer, whose first field is buf)
    keep = bytearray(256)
    for mv in (memoryview(keep), memoryview(keep)[7:100], memoryview(keep)[33:].toreadonly(),
               memoryview(b"probe")[1:].toreadonly()):
        if _from_address(id(mv) + off).value != _buffer_address(mv):
            return 0
    return off


_MV_BUF = _memoryview_buf_offset()


def address(buf: Any) -> int:
    """The address of a buffer's memory (a memoryview, read-only or not, bytes, bytearray),
    valid while `buf` is held."""
    if type(buf) is memoryview and _MV_BUF:
        return int(_from_address(id(buf) + _MV_BUF).value)
    return _buffer_address(buf)


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


_pack, _unpack = _IO.pack_into, _IO.unpack_from


class Deflater(_Stream):
    """A raw deflate stream (no container) for one (level, window): kept per thread for whole
    jobs, or a stream's own across its jobs (`take`/`give`)."""

    def __init__(self, level: int, wbits: int, copy_of: Deflater | None = None) -> None:
        super().__init__()
        assert LIBZ is not None
        self.key = (level, wbits)
        if copy_of is not None:
            self._check(LIBZ.deflate_copy(self.addr, copy_of.addr), "deflateCopy")
        else:
            self._check(LIBZ.deflate_init(self.addr, level, Z_DEFLATED, -wbits,
                                          DEF_MEM_LEVEL, Z_DEFAULT_STRATEGY, _VERSION, _SIZE),
                        "deflateInit2")
        self._lib = LIBZ  # (set once the state exists: __del__ ends it)
        self._calls = LIBZ.deflate

    def copy(self) -> Deflater:
        """An independent stream in the same state (zlib's deflateCopy)."""
        return Deflater(*self.key, copy_of=self)

    def set_dictionary(self, data: bytes) -> None:
        """Continue a raw stream whose earlier output another compressor made: its last
        window of input becomes this (fresh or reset) stream's history, so matches may reach
        into it (deflateSetDictionary: docs/research/libz.md)."""
        self._check(self._lib.deflate_set_dictionary(self.addr, data, len(data)),
                    "deflateSetDictionary")

    def step(self, src: Any, n: int, dst: Any, avail: int, finish: bool) -> int:
        """One job of a stream: all `n` bytes of `src` in, then a sync flush (or the end with
        `finish`), output into `dst` (room `avail`): how many bytes it made, or -1 when the room
        ran out, a room filled exactly included (the stream is then spoilt: the caller runs a
        copy when the room may not be enough)."""
        io, a = self.io, self.addr
        _pack(io, 0, address(src) if n else _thread.scratch_addr, n, 0,
              address(dst) if avail else _thread.scratch_addr, avail, 0)
        deflate = self._calls[n >= LONG][1]
        if not n:
            # compressobj's compress(b"") is a no-flush call: after it a sync flush always
            # writes its empty block; without it, a sync flush right after another is refused
            # as a duplicate (deflate.c, deflate: "avoid duplicate consecutive flushes").
            deflate(a, Z_NO_FLUSH)
        rc = deflate(a, Z_FINISH if finish else Z_SYNC_FLUSH)
        _next_in, left, _used, _next_out, room, made = _unpack(io)
        if rc == (Z_STREAM_END if finish else Z_OK) and not left and room:
            return int(made)
        return -1

    def __del__(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is not None:
            lib.deflate_end(self.addr)

    def whole(self, src: Any, n: int, dst: Any, avail: int) -> int:
        """Compress all `n` bytes of `src` into `dst` (room `avail`) as one finished raw
        deflate stream: how many bytes it took, or -1 when they do not fit."""
        if not avail:
            return -1
        io, a = self.io, self.addr
        if type(src) is memoryview and type(dst) is memoryview and _MV_BUF:  # (the DMA views)
            _pack(io, 0, _from_address(id(src) + _MV_BUF).value, n, 0,
                  _from_address(id(dst) + _MV_BUF).value, avail, 0)
        else:
            _pack(io, 0, address(src), n, 0, address(dst), avail, 0)
        reset, deflate = self._calls[n >= LONG]
        reset(a)
        rc = deflate(a, Z_FINISH)
        if rc == Z_STREAM_END:
            return int(_unpack(io)[5])
        if rc not in (Z_OK, Z_BUF_ERROR):
            self._check(rc, "deflate")
        _next_in, _left, used, _next_out, room, made = _unpack(io)
        if room:
            return -1
        # The room is full: deflate says the end only on a call that has room left, even when
        # the last byte fitted exactly. A byte more of room tells (the end, or more output).
        scratch = _thread.scratch_addr
        _pack(io, 0, scratch, 0, used, scratch, 1, made)
        rc = deflate(a, Z_FINISH)
        return made if rc == Z_STREAM_END and _unpack(io)[5] == made else -1


# Inflater.whole's outcomes
END, PARTIAL, FULL, BAD = 0, 1, 2, 3


class Inflater(_Stream):
    """A raw inflate stream (no container), 32 KiB window, kept per thread."""

    def __init__(self) -> None:
        super().__init__()
        assert LIBZ is not None
        self._lib = LIBZ
        self._check(LIBZ.inflate_init(self.addr, -15, _VERSION, _SIZE), "inflateInit2")
        self._calls = LIBZ.inflate

    def __del__(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is not None:
            lib.inflate_end(self.addr)

    def whole(self, src: Any, n: int, dst: Any, avail: int) -> tuple[int, int, int]:
        """Decompress a raw deflate stream from `src` (`n` bytes) into `dst` (room `avail`) in
        one call: (outcome, input used, output made). END: the stream ended; PARTIAL: the input
        ended first; FULL: more output than room; BAD: invalid data. Z_FINISH: a call that
        finishes the stream keeps no window (docs/research/libz.md, "inflate")."""
        io, a = self.io, self.addr
        if not avail:
            dst = _thread.scratch
        if type(src) is memoryview and type(dst) is memoryview and _MV_BUF:  # (the DMA views)
            _pack(io, 0, _from_address(id(src) + _MV_BUF).value, n, 0,
                  _from_address(id(dst) + _MV_BUF).value, avail, 0)
        else:
            _pack(io, 0, address(src), n, 0, address(dst), avail, 0)
        reset, inflate = self._calls[n >= LONG >> 2]  # (output is several times the input)
        reset(a)
        rc = inflate(a, Z_FINISH)
        if rc == Z_STREAM_END:
            r = _unpack(io)
            return END, r[2], r[5]
        next_in, left, used, _next_out, room, made = _unpack(io)
        if rc not in (Z_OK, Z_BUF_ERROR):
            return BAD, used, made
        if room:  # room left over: the input ran out first
            return PARTIAL, used, made
        # The room is full: one byte more of room tells whether more output follows (a
        # literal, a match being copied), the stream ends there, or the data is bad there
        # (as Python's zlib module tells, asked for one byte more than the room).
        scratch = _thread.scratch_addr
        _pack(io, 0, next_in if left else scratch, left, used, scratch, 1, made)
        rc = inflate(a, Z_FINISH)
        _next_in, left, used, _next_out, room, more = _unpack(io)
        if rc not in (Z_OK, Z_BUF_ERROR, Z_STREAM_END):  # (even after that byte, as zlib's)
            return BAD, used, made
        if more > made:
            return FULL, used, made
        return (END if rc == Z_STREAM_END else PARTIAL), used, made

    def last_block(self, src: Any, n: int, size: int) -> tuple[int, int] | None:
        """Where, in bits from its start, the final block of the whole raw deflate stream in
        `src` (`n` bytes, `size` bytes once inflated) starts and where the stream ends:
        inflated block by block (Z_BLOCK returns after each block's end; data_type then holds
        the input bits not yet used: docs/research/libz.md) into this thread's scratch output,
        given again from its start whenever inflate fills it (inflate keeps its own window of
        what it wrote), so the scratch stays LAST_BLOCK_ROOM whatever the size; None when it
        is not one whole stream of that size."""
        t = _thread
        if t.out is None:
            t.out = bytearray(LAST_BLOCK_ROOM)
        out, whole = address(t.out), LAST_BLOCK_ROOM
        io, a, zs = self.io, self.addr, self.zs
        _pack(io, 0, address(src), n, 0, out, whole, 0)
        reset, inflate = self._calls[n >= LONG >> 2]
        reset(a)
        start, end = 0, -1
        while True:
            rc = inflate(a, Z_BLOCK)
            next_in, left, used, _next_out, room, made = _unpack(io)
            if rc == Z_STREAM_END:  # (the call after the last block's end: padding dropped)
                return (start, end) if made == size and end >= 0 else None
            if rc != Z_OK or made > size:
                return None
            flags = zs.data_type  # (64: the last block; 128: returned at a block's end)
            if flags & 128:
                if flags & 64:  # the last block ended here (its padding not yet dropped)
                    end = used * 8 - (flags & 63)
                else:  # a block that is not the last ended: the next starts here
                    start = used * 8 - (flags & 63)
            elif room:  # stopped inside a block with room left: the input ended
                return None
            if not room:
                _pack(io, 0, next_in, left, used, out, whole, made)

    def step(self, src: Any, n: int, dst: Any, avail: int) -> tuple[int, int, int]:
        """One job of a stream on this (the stream's own) inflater: `n` bytes of `src` in,
        output into `dst` (room `avail`), state kept for the next job. As Python's
        `decompressobj().decompress(src, avail)` does it (one sync-flush call: it stops when
        the room is full or the input ran out): (outcome, input used, output made); END: the
        body ended (input after it unused), PARTIAL: it goes on (FULL is not told apart: the
        caller sees a full room), BAD: invalid data."""
        io, a = self.io, self.addr
        scratch = _thread.scratch_addr
        _pack(io, 0, address(src) if n else scratch, n, 0,
              address(dst) if avail else scratch, avail, 0)
        rc = self._calls[n >= LONG >> 2][1](a, Z_SYNC_FLUSH)
        _next_in, left, _used, _next_out, room, _made = _unpack(io)
        outcome = END if rc == Z_STREAM_END else PARTIAL if rc in (Z_OK, Z_BUF_ERROR) else BAD
        return outcome, n - left, avail - room


# Streams' own deflaters that ended, by (level, wbits), for the next stream to take: a stream
# (stateful) job then allocates nothing either. deque append/pop are atomic: the model's thread
# gives, its workers take.
_free: dict[tuple[int, int], deque[Deflater]] = {}
_FREE_MAX = 16


def take(level: int, wbits: int) -> Deflater:
    """A deflater of its own for a new stream, fresh or reset."""
    pool = _free.get((level, wbits))
    if pool:
        try:
            d = pool.pop()
        except IndexError:  # (taken meanwhile by another thread)
            return Deflater(level, wbits)
        d._calls[0][0](d.addr)
        return d
    return Deflater(level, wbits)


def give(d: Deflater) -> None:
    """A stream's deflater back for the next stream (its stream is over)."""
    pool = _free.setdefault(d.key, deque())
    if len(pool) < _FREE_MAX:
        pool.append(d)


_free_inflaters: deque[Inflater] = deque()


def take_inflater() -> Inflater:
    """An inflater of its own for a new decompression stream (stateful jobs), fresh or reset."""
    try:
        i = _free_inflaters.pop()
    except IndexError:
        return Inflater()
    i._calls[0][0](i.addr)
    return i


def give_inflater(i: Inflater) -> None:
    """A stream's inflater back for the next stream (its stream is over)."""
    if len(_free_inflaters) < _FREE_MAX:
        _free_inflaters.append(i)


def deflater(level: int, wbits: int) -> Deflater:
    """This thread's kept raw deflate stream for (level, wbits)."""
    kept = _thread.deflaters
    d = kept.get((level, wbits))
    if d is None:
        d = kept[level, wbits] = Deflater(level, wbits)
    return d


def stage(avail: int) -> tuple[memoryview, int]:
    """This thread's staging output of at least `avail` bytes and its address (grown in steps
    of 64 KiB and kept, so its lines stay in this CPU's cache between jobs). Page-aligned, as
    the DMA pieces are: a heap block starts 16 bytes into a page, and copying stored blocks
    from a page-aligned source to there ran 10x slower (4 KiB aliasing: 31 against 3 us for
    64 KiB, docs/driver-bench.md "Session 22: 64 KiB decompress")."""
    t = _thread
    s = t.stage
    if len(s) < avail:
        s = t.stage = memoryview(mmap.mmap(-1, (avail + 0xFFFF) & ~0xFFFF))  # (keeps the map)
        t.stage_addr = address(s)
    return s, t.stage_addr


def inflater() -> Inflater:
    """This thread's kept raw inflate stream."""
    i = _thread.inflater
    if i is None:
        i = _thread.inflater = Inflater()
    return i
