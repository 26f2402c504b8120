"""libdeflate (libdeflate.so.0) through ctypes: the ZIP model's codec for whole-buffer jobs.

A stateless SQE is a whole buffer in and a whole buffer out, which is libdeflate's shape: one call
compresses or decompresses it, with no stream state, and measured on these machines it does so
faster than zlib at the same level (docs/research/libdeflate.md). Real ZIP hardware is not zlib
either; what the model must keep is the device's behaviour, which `_deflate` guarantees by
sending every job libdeflate cannot answer exactly (no room, a job it calls bad data, a window
smaller than its fixed 32 KiB) to the libz path.

libdeflate's compressor and decompressor objects are not thread-safe (libdeflate.h): each thread
(the model's, ThreadedJobs' workers) gets its own, made on first use and freed when the thread's
state goes (thread end) or `release` is called. The library is loaded on first use (`lib`), so
a model that never runs on it pays nothing; absent, `lib()` is None and `why()` says why.
"""

from __future__ import annotations

import ctypes
import threading

from ._libz import address

TYPE_CHECKING = False  # (not typing's: importing typing costs ~3 ms of every process's boot)
if TYPE_CHECKING:
    from typing import Any

# enum libdeflate_result (docs/research/libdeflate.md, "decompression")
SUCCESS, BAD_DATA, SHORT_OUTPUT, INSUFFICIENT_SPACE = 0, 1, 2, 3

SONAME = "libdeflate.so.0"

# Jobs of at least this many input bytes run with the GIL released (as `_libz.LONG`: a short
# job is cheaper than the switch to a thread waiting for the interpreter).
LONG = 16 << 10


class _Lib:
    """libdeflate's entry points, typed (prototypes: docs/research/libdeflate.md). The per-job
    calls come twice, as in `_libz._Lib`: through CDLL (GIL released: long jobs, so workers
    run at once on several cores) and through PyDLL (GIL kept: short jobs)."""

    def __init__(self, name: str) -> None:
        free, held = ctypes.CDLL(name), ctypes.PyDLL(name)
        vp, ci, sz, u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint32

        def fn(lib: ctypes.CDLL, name: str, args: list[Any], res: Any) -> Any:
            f = getattr(lib, name)
            f.argtypes, f.restype = args, res
            return f

        self.alloc_compressor = fn(free, "libdeflate_alloc_compressor", [ci], vp)
        self.free_compressor = fn(free, "libdeflate_free_compressor", [vp], None)
        self.alloc_decompressor = fn(free, "libdeflate_alloc_decompressor", [], vp)
        self.free_decompressor = fn(free, "libdeflate_free_decompressor", [vp], None)
        # (short jobs, long jobs)
        self.compress = tuple(fn(lib, "libdeflate_deflate_compress", [vp, vp, sz, vp, sz], sz)
                              for lib in (held, free))
        self.decompress = tuple(fn(lib, "libdeflate_deflate_decompress_ex",
                                   [vp, vp, sz, vp, sz, vp, vp], ci) for lib in (held, free))
        self.crc32 = tuple(fn(lib, "libdeflate_crc32", [u32, vp, sz], u32)
                           for lib in (held, free))
        self.adler32 = tuple(fn(lib, "libdeflate_adler32", [u32, vp, sz], u32)
                             for lib in (held, free))


_lib: _Lib | None = None
_why = ""
_tried = False
_load_lock = threading.Lock()


def lib() -> _Lib | None:
    """The library, loaded on the first call (None when it cannot be: `why` says why)."""
    global _lib, _why, _tried
    if not _tried:
        name = SONAME
        with _load_lock:
            if not _tried:
                try:
                    _lib = _Lib(name)
                except (OSError, AttributeError) as e:
                    _lib, _why = None, f"cannot load {name}: {e}"
                _tried = True
    return _lib


def why() -> str:
    return _why


class _Compressor:
    """One thread's compressor for one level, freed with it."""

    def __init__(self, lib: _Lib, level: int) -> None:
        self.lib = lib
        self.ptr = lib.alloc_compressor(level)
        if not self.ptr:
            raise MemoryError(f"libdeflate: cannot allocate a level {level} compressor")

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            self.lib.free_compressor(self.ptr)
            self.ptr = None


class _Decompressor:
    """One thread's decompressor (and the two size_t it reports through), freed with it."""

    def __init__(self, lib: _Lib) -> None:
        self.lib = lib
        self.ptr = lib.alloc_decompressor()
        if not self.ptr:
            raise MemoryError("libdeflate: cannot allocate a decompressor")
        self.sizes = (ctypes.c_size_t * 2)()  # actual in, actual out
        self.in_addr = ctypes.addressof(self.sizes)
        self.out_addr = self.in_addr + ctypes.sizeof(ctypes.c_size_t)

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            self.lib.free_decompressor(self.ptr)
            self.ptr = None


class _Thread(threading.local):
    """This thread's libdeflate objects (never shared: libdeflate's are not thread-safe)."""

    def __init__(self) -> None:
        self.compressors: dict[int, _Compressor] = {}
        self.decompressor: _Decompressor | None = None


_thread = _Thread()


def release() -> None:
    """Free this thread's compressors and decompressor now (the model is ending)."""
    _thread.compressors.clear()
    _thread.decompressor = None


def compress(level: int, src: Any, n: int, dst: Any, avail: int) -> int:
    """Raw deflate of all `n` bytes of `src` into `dst` (room `avail`) at libdeflate's `level`:
    the compressed size, or 0 when it did not fit (libdeflate also says 0 when the output
    would end within its few bytes of end padding: docs/research/libdeflate.md)."""
    c = _thread.compressors.get(level)
    if c is None:
        lb = lib()
        assert lb is not None
        c = _thread.compressors[level] = _Compressor(lb, level)
    if avail <= 0:  # (a negative room would reach libdeflate as a size_t near 2**64)
        return 0
    return int(c.lib.compress[n >= LONG](c.ptr, address(src), n, address(dst), avail))


def decompress(src: Any, n: int, dst: Any, avail: int) -> tuple[int, int, int]:
    """Inflate one raw deflate stream from `src` (`n` bytes) into `dst` (room `avail`):
    (result, input used, output made); the sizes only mean something with SUCCESS."""
    d = _thread.decompressor
    if d is None:
        lb = lib()
        assert lb is not None
        d = _thread.decompressor = _Decompressor(lb)
    rc = d.lib.decompress[n >= LONG >> 2](  # (output is several times the input)
        d.ptr, address(src), n, address(dst) if avail else None, avail, d.in_addr, d.out_addr)
    if rc:
        return int(rc), 0, 0
    s = d.sizes
    return SUCCESS, int(s[0]), int(s[1])


def crc32(data: Any, n: int, value: int = 0) -> int:
    """CRC-32 (gzip's) of `n` bytes of `data`, continuing `value`."""
    lb = _lib
    assert lb is not None
    return int(lb.crc32[n >= LONG](value, address(data) if n else None, n))


def adler32(data: Any, n: int, value: int = 1) -> int:
    """Adler-32 (zlib's) of `n` bytes of `data`, continuing `value`."""
    lb = _lib
    assert lb is not None
    return int(lb.adler32[n >= LONG](value, address(data) if n else None, n))
