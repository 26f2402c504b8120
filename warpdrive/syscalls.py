"""The one thin syscall layer: libc through ctypes, errno turned into the project's errors.

Why ctypes `ioctl` rather than `fcntl.ioctl`: with an immutable argument `fcntl.ioctl` returns the
buffer copy and drops the integer result (a returned fd, e.g. from VFIO_GROUP_GET_DEVICE_FD,
would leak); calling libc directly keeps both the return value and in-place updates of the struct.
"""

from __future__ import annotations

import ctypes
import math
import os
import select
import threading
import time
from collections.abc import Sequence

from .errors import WarpdriveError, from_errno

TYPE_CHECKING = False  # (not typing's: importing typing costs ~3 ms of every process's boot)
if TYPE_CHECKING:
    from typing import Any, NoReturn


def _load_libc() -> ctypes.CDLL:
    # glibc's soname first: `find_library` forks `ldconfig -p` (and imports subprocess), a few
    # ms of every process's start-up; it stays the fallback for other C libraries.
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        from ctypes.util import find_library

        return ctypes.CDLL(find_library("c"), use_errno=True)


libc = _load_libc()

libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
libc.ioctl.restype = ctypes.c_int
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
libc.mmap.restype = ctypes.c_void_p
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.munmap.restype = ctypes.c_int
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.madvise.restype = ctypes.c_int
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mprotect.restype = ctypes.c_int
libc.eventfd.argtypes = [ctypes.c_uint, ctypes.c_int]
libc.eventfd.restype = ctypes.c_int
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                       ctypes.c_ulong]
libc.prctl.restype = ctypes.c_int

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# <sys/mman.h>
PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MAP_HUGETLB = 0x40000
MAP_FIXED_NOREPLACE = 0x100000
MAP_HUGE_SHIFT = 26
MAP_HUGE_2MB = 21 << MAP_HUGE_SHIFT
MAP_HUGE_1GB = 30 << MAP_HUGE_SHIFT
MADV_DONTFORK = 10
MADV_DOFORK = 11
MAP_FAILED = ctypes.c_void_p(-1).value

# <sys/eventfd.h>
EFD_SEMAPHORE = 0o1
EFD_NONBLOCK = os.O_NONBLOCK
EFD_CLOEXEC = os.O_CLOEXEC


def _raise(what: str, hint: str | None = None) -> None:
    raise from_errno(ctypes.get_errno(), what, hint)


def ioctl(fd: int, request: int, arg: Any = None, *, what: str, hint: str | None = None,
          hints: dict[int, str] | None = None) -> int:
    """Issue `request` on `fd`. `arg` is None, an int (passed by value), a ctypes object (passed by
    reference and updated in place) or a bytearray (likewise). Returns the ioctl's int result.

    `hints` maps an errno to advice specific to this call; `hint` applies to any errno."""
    ptr: Any
    if arg is None:
        ptr = None
    elif isinstance(arg, int):
        ptr = ctypes.c_void_p(arg)
    elif isinstance(arg, bytearray):
        ptr = ctypes.addressof(ctypes.c_char.from_buffer(arg))
    else:
        ptr = ctypes.addressof(arg)
    ret: int = libc.ioctl(fd, request, ptr)
    if ret < 0:
        err = ctypes.get_errno()
        h = (hints or {}).get(err, hint)
        raise from_errno(err, what, h)
    return ret


def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0, addr: int = 0, *,
         what: str = "mmap", hint: str | None = None) -> int:
    """Map memory and return its address (an int); raises on MAP_FAILED."""
    res = libc.mmap(addr or None, length, prot, flags, fd, offset)
    if res is None or res == MAP_FAILED:
        _raise(what, hint)
    return int(res)


def munmap(addr: int, length: int) -> None:
    if libc.munmap(addr, length) != 0:
        _raise(f"munmap of {length:#x} bytes at {addr:#x}")


def madvise(addr: int, length: int, advice: int, *, what: str = "madvise") -> None:
    if libc.madvise(addr, length, advice) != 0:
        _raise(what)


def mprotect(addr: int, length: int, prot: int) -> None:
    if libc.mprotect(addr, length, prot) != 0:
        _raise(f"mprotect of {length:#x} bytes at {addr:#x}")


def eventfd(initval: int = 0, flags: int = EFD_CLOEXEC) -> int:
    fd: int = libc.eventfd(initval, flags | EFD_CLOEXEC)
    if fd < 0:
        _raise("eventfd")
    return fd


_FD_SETSIZE = 1024  # select(2) takes fds below this only


def wait_readable(fds: Sequence[int], timeout: float | None) -> list[int]:
    """Those of `fds` readable (or hung up) within `timeout` seconds (None: no limit), [] on
    timeout. select(2) while every fd is below FD_SETSIZE: its timeout is exact, where poll(2)'s
    is whole milliseconds (a 0.5 ms look would last 1 ms); poll(2) otherwise, as select refuses
    an fd numbered 1024 or more, which a program holding many files (or a test suite) reaches."""
    if max(fds, default=0) < _FD_SETSIZE:
        return select.select(fds, (), (), None if timeout is None else max(0.0, timeout))[0]
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
    return [fd for fd, _ in p.poll(ms)]


def exit_now(code: int) -> NoReturn:
    """`sys.exit(code)` without the interpreter's teardown (freeing every module and object:
    10-20 ms, which a model's client waits through, and a command's caller). atexit handlers
    still run and stdio is flushed; the normal exit instead when another thread still runs
    (it would wait for it) or stdio does not flush (it reports that)."""
    import atexit
    import sys

    if threading.active_count() == 1:
        atexit._run_exitfuncs()  # runs them once (the list is cleared), errors printed
        try:
            for f in (sys.stdout, sys.stderr):
                if f is not None:
                    f.flush()
        except BaseException:
            sys.exit(code)
        os._exit(code)
    sys.exit(code)


PR_SET_TIMERSLACK = 29
PR_GET_TIMERSLACK = 30


def set_timer_slack(ns: int) -> bool:
    """How late the calling thread's timed sleeps may end (the kernel's default is 50 us, so
    a 20 us sleep lasts ~70 us). False if the kernel refused (it never should)."""
    return bool(libc.prctl(PR_SET_TIMERSLACK, max(1, ns), 0, 0, 0) == 0)


def timer_slack() -> int:
    """The calling thread's timer slack (ns), to put back after `set_timer_slack`."""
    return int(libc.prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0))


class YieldWatch:
    """Whether a poller's `sched_yield` calls keep handing its CPU to another program's busy
    loop for whole time slices: then a short sleep (a nap) serves it better than a yield,
    since the scheduler wakes a sleeper within microseconds while a yielder waits a slice
    after every yield (docs/driver-bench.md, session 21). A yield that lasted STOLEN_S or
    more counts as lost; when lost yields took SHARE of a window of WINDOW_S or more, naps
    replace yields for NAP_FOR_S, then yields look again. An occasional lost slice (another
    task passing by) changes nothing: naps cost each job up to one nap."""

    STOLEN_S = 1e-3
    WINDOW_S = 0.02
    SHARE = 0.5
    NAP_FOR_S = 0.08

    __slots__ = ("_start", "_stolen", "naps_until")

    def __init__(self) -> None:
        self.naps_until = 0.0  # (the caller's clock) nap instead of yielding until then
        self._start = 0.0
        self._stolen = 0.0

    def yielded(self, t0: float, t1: float) -> None:
        """A yield from `t0` to `t1` (one clock, seconds)."""
        if t1 - t0 >= self.STOLEN_S:
            self._stolen += t1 - t0
        if t1 - self._start >= self.WINDOW_S:
            if self._stolen >= self.SHARE * (t1 - self._start):
                self.naps_until = t1 + self.NAP_FOR_S
            self._start, self._stolen = t1, 0.0


def short_sleep(s: float) -> None:
    """Sleep `s` seconds with a 1 us timer slack for this sleep only (the thread's own slack,
    e.g. the default 50 us, is put back): a 20 us sleep lasts ~35 us on this VM, not ~70."""
    old = timer_slack()
    try:  # (set inside: a KeyboardInterrupt just after it still puts the old one back)
        set_timer_slack(1000)
        time.sleep(s)
    finally:
        if old > 0:
            set_timer_slack(old)


M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_heap(trim: int = 8 << 20, mmap_at: int = 4 << 20) -> bool:
    """Fix glibc malloc's thresholds for a serving process: free memory at the heap's top
    is given back to the kernel only beyond `trim` bytes, and only blocks of `mmap_at` or
    more get their own mapping. With the defaults (adjusted as the process happens to free
    large blocks) zlib's set-up per stateless job (~270 KiB in 64 KiB pieces) could go back
    to the kernel at every `deflateEnd` and come back as fresh zeroed pages at the next
    `deflateInit`: two brk(2) and ~20 us per small job, in a model whose imports happened
    never to raise the thresholds (docs/driver-bench.md, session 21). False where the C
    library has no mallopt (not glibc): its own defaults stay."""
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_at) == 1 and mallopt(M_TRIM_THRESHOLD, trim) == 1)


def memfd_create(name: str, flags: int = 0) -> int:
    try:
        return os.memfd_create(name, flags | os.MFD_CLOEXEC)
    except OSError as e:
        raise from_errno(e.errno or 0, f"memfd_create({name!r})") from None


def open_dev(path: str, flags: int = os.O_RDWR, *, what: str | None = None,
             hints: dict[int, str] | None = None) -> int:
    """open(2) a device node with O_CLOEXEC, mapping errno to a clear error naming the path."""
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError as e:
        err = e.errno or 0
        raise from_errno(err, what or f"open {path}", (hints or {}).get(err)) from None


def pread(fd: int, size: int, offset: int, *, what: str) -> bytes:
    try:
        data = os.pread(fd, size, offset)
    except OSError as e:
        raise from_errno(e.errno or 0, what) from None
    if len(data) != size:
        raise WarpdriveError(f"{what}: short read ({len(data)} of {size} bytes)")
    return data


def pwrite(fd: int, data: bytes, offset: int, *, what: str) -> None:
    try:
        n = os.pwrite(fd, data, offset)
    except OSError as e:
        raise from_errno(e.errno or 0, what) from None
    if n != len(data):
        raise WarpdriveError(f"{what}: short write ({n} of {len(data)} bytes)")


def align_up(n: int, alignment: int) -> int:
    """Round `n` up to a multiple of `alignment`, a power of two."""
    return (n + alignment - 1) & ~(alignment - 1)


def page_align_up(n: int, page: int = PAGE_SIZE) -> int:
    return align_up(n, page)


class _Py_buffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p), ("obj", ctypes.py_object), ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p),
    ]


def buffer_address(obj: object) -> int:
    """Address of an object's memory (an mmap, even a read-only one) via the buffer protocol.
    The buffer is released at once, so it leaves no export behind that would block mmap.close()."""
    pybuf = _Py_buffer()
    if ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(obj), ctypes.byref(pybuf), 0) != 0:
        raise WarpdriveError(f"cannot take the address of a {type(obj).__name__}")
    try:
        return int(pybuf.buf or 0)
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(pybuf))


# A full memory barrier without a syscall. Python has no fence, but an uncontended lock's
# acquire + release is an atomic read-modify-write (LOCK-prefixed on x86-64), which orders every
# earlier load and store before every later one. Needed where a store must be visible before a
# load of another location (the Dekker pattern of "re-enable interrupts, then look once more").
# Hot paths call the bound pair inline (half the cost of a `with` block).
_FENCE = threading.Lock()
FENCE_ACQUIRE, FENCE_RELEASE = _FENCE.acquire, _FENCE.release


def full_fence() -> None:
    """Order all earlier memory accesses before all later ones."""
    FENCE_ACQUIRE()
    FENCE_RELEASE()
