"""DMA buffers: page-aligned memory the runtime owns, excluded from fork, pre-faulted unless the
caller says a memfd's pages may be made on first touch (`allocate(prefault=False)`: vfio-user).

Kinds:
- ``anonymous``: private anonymous pages (the default for kernel backends).
- ``hugetlb``: private anonymous huge pages (2 MiB, or 1 GiB where the system has them) for IOTLB
  reach; needs pages reserved in /proc/sys/vm/nr_hugepages.
- ``memfd``: a sealed-size memfd mapped shared; the fd can be passed to another process (vfio-user
  servers map client memory this way), optionally on huge pages.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import weakref
from pathlib import Path

from .. import syscalls as sc
from ..errors import (
    ClosedError,
    DeviceBusyError,
    InvalidArgumentError,
    MemlockLimitError,
    WarpdriveError,
    require_int,
)
from ..forkguard import ForkSafe, close_fd_quietly
from .check import MemoryKind

HUGE_2M = 2 << 20
HUGE_1G = 1 << 30
_HUGE_FLAGS = {HUGE_2M: sc.MAP_HUGE_2MB, HUGE_1G: sc.MAP_HUGE_1GB}
_MFD_HUGE = {HUGE_2M: 21 << 26, HUGE_1G: 30 << 26}
_MFD_HUGETLB = 0x0004
_MFD_ALLOW_SEALING = 0x0002


def hugepage_sizes() -> list[int]:
    """Huge page sizes this kernel offers, smallest first."""
    root = Path("/sys/kernel/mm/hugepages")
    sizes = []
    if root.is_dir():
        for d in root.iterdir():
            if d.name.startswith("hugepages-") and d.name.endswith("kB"):
                sizes.append(int(d.name[len("hugepages-"):-2]) * 1024)
    return sorted(sizes)


def free_hugepages(page_size: int) -> int:
    p = Path(f"/sys/kernel/mm/hugepages/hugepages-{page_size // 1024}kB/free_hugepages")
    try:
        return int(p.read_text())
    except OSError:
        return 0


def _hugepage_error(page_size: int, npages: int, err: WarpdriveError) -> WarpdriveError:
    mib = page_size >> 20
    return MemlockLimitError(
        f"could not allocate {npages} huge page(s) of {mib} MiB "
        f"({free_hugepages(page_size)} free): {err.what}",
        errno=err.errno,
        hint=f"reserve huge pages first, e.g. `echo {max(npages, 8)} > /sys/kernel/mm/hugepages/"
        f"hugepages-{page_size // 1024}kB/nr_hugepages` (as root), or use kind='anonymous'",
    )


class DmaBuffer(ForkSafe):
    """Memory for DMA. `addr`/`size` describe the mapping; `view` is a writable memoryview;
    `iova` is set while a DmaSpace has it mapped; `fd`/`fd_offset` are set for memfd buffers."""

    def __init__(self, memory: mmap.mmap, kind: MemoryKind, *, page_size: int,
                 fd: int = -1, fd_offset: int = 0) -> None:
        # A Python mmap object owns the mapping because it counts exports and unmaps only when
        # none is left: no view can outlive the pages (see `close`).
        self._mmap: mmap.mmap | None = memory
        self.addr = sc.buffer_address(memory)
        self.size = len(memory)
        self.kind = kind
        self.page_size = page_size
        self.fd = fd
        self.fd_offset = fd_offset
        self.iova: int | None = None
        self._view: memoryview | None = memoryview(memory)
        self._mapped_by: object | None = None  # the DmaSpace holding a mapping of this buffer
        self._closed = False
        self._fork_register()

    # -- allocation -------------------------------------------------------------------------
    @classmethod
    def allocate(cls, size: int, kind: str | MemoryKind = MemoryKind.ANONYMOUS, *,
                 page_size: int | None = None, name: str = "warpdrive-dma",
                 prefault: bool = True) -> DmaBuffer:
        """Allocate `size` bytes (rounded up to the page size) of pre-faulted DMA memory.
        `prefault=False` leaves a memfd's small pages to be made on first touch, by this
        process or by whoever maps the fd (huge pages are always reserved up front: a missing
        one is a SIGBUS later, not an error now)."""
        require_int("DMA buffer size", size)
        if size <= 0:
            raise InvalidArgumentError(f"DMA buffer size must be positive, got {size}")
        try:
            kind = MemoryKind(kind)
        except ValueError:
            raise InvalidArgumentError(
                f"unknown DMA memory kind {kind!r}; choose anonymous, hugetlb or memfd"
            ) from None
        if kind is MemoryKind.HUGETLB and page_size is None:
            page_size = HUGE_2M
        page = page_size or sc.PAGE_SIZE
        if page != sc.PAGE_SIZE and page not in _HUGE_FLAGS:
            raise InvalidArgumentError(
                f"page size {page} is not supported; use {sc.PAGE_SIZE}, 2 MiB or 1 GiB")
        if page != sc.PAGE_SIZE and page not in hugepage_sizes():
            raise InvalidArgumentError(f"this kernel has no {page >> 20} MiB huge pages")
        length = sc.page_align_up(size, page)
        fd = -1
        try:
            if kind is MemoryKind.MEMFD:
                mflags = 0
                if page != sc.PAGE_SIZE:
                    mflags = _MFD_HUGETLB | _MFD_HUGE[page]
                fd = sc.memfd_create(name, mflags | _MFD_ALLOW_SEALING)
                os.ftruncate(fd, length)
                # Whoever we pass the fd to (a vfio-user server) maps it; a later shrink would
                # turn its accesses into SIGBUS, so fix the size for good.
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                            fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
                populate = sc.MAP_POPULATE if prefault or page != sc.PAGE_SIZE else 0
                m = mmap.mmap(fd, length, flags=mmap.MAP_SHARED | populate)
                result_kind = MemoryKind.HUGETLB if page != sc.PAGE_SIZE else MemoryKind.MEMFD
            elif kind in (MemoryKind.ANONYMOUS, MemoryKind.HUGETLB):
                flags = mmap.MAP_PRIVATE | sc.MAP_POPULATE
                if page != sc.PAGE_SIZE:
                    flags |= sc.MAP_HUGETLB | _HUGE_FLAGS[page]
                m = mmap.mmap(-1, length, flags=flags)
                result_kind = MemoryKind.HUGETLB if page != sc.PAGE_SIZE else MemoryKind.ANONYMOUS
            else:
                raise InvalidArgumentError(f"cannot allocate memory of kind {kind.value}")
        except OSError as e:
            close_fd_quietly(fd)
            # A memfd is a file: RLIMIT_FSIZE (`ulimit -f`) caps its size too.
            hint = ("the file size limit (ulimit -f) is below this buffer's size; raise it"
                    if e.errno == errno.EFBIG else None)
            err = WarpdriveError(f"mmap of a {length}-byte {kind.value} DMA buffer",
                                 errno=e.errno, hint=hint)
            if page != sc.PAGE_SIZE:
                raise _hugepage_error(page, length // page, err) from None
            raise err from None
        except WarpdriveError:
            close_fd_quietly(fd)
            raise
        # Not in the child after fork: the device writes the parent's pages, never a COW copy.
        # (hugetlb mappings reserve their pages at mmap time, so a short pool fails above with
        # ENOMEM rather than later with SIGBUS.)
        m.madvise(mmap.MADV_DONTFORK)
        return cls(m, result_kind, page_size=page, fd=fd)

    # -- access -----------------------------------------------------------------------------
    @property
    def view(self) -> memoryview:
        self._check_alive()
        if self._view is None:
            raise ClosedError("DMA buffer is closed", hint="allocate a new one")
        return self._view

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy `data` into the buffer at `offset` (bounds checked)."""
        n = len(data)
        if offset < 0 or offset + n > self.size:
            raise InvalidArgumentError(
                f"write of {n} bytes at offset {offset} overruns the {self.size}-byte buffer")
        self.view[offset:offset + n] = data

    def read(self, offset: int = 0, n: int | None = None) -> bytes:
        """A copy of `n` bytes at `offset` (default: to the end)."""
        if n is None:
            n = self.size - offset
        if offset < 0 or n < 0 or offset + n > self.size:
            raise InvalidArgumentError(
                f"read of {n} bytes at offset {offset} overruns the {self.size}-byte buffer")
        return bytes(self.view[offset:offset + n])

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the buffer and unmap its memory. Refused while a DmaSpace still maps it (unmap
        it there first: the device could still write it). Views made from `view` that are still
        alive (a caller's slice of a piece of output) keep the memory: it is unmapped when the
        last of them dies, never under one; the buffer itself is closed at once."""
        if self._closed:
            return
        if self._forked_dead:
            return
        if self._mapped_by is not None:
            raise DeviceBusyError(
                f"DMA buffer at {self.addr:#x} is still mapped for DMA (IOVA {self.iova:#x})",
                hint="call dma.unmap(buffer) first; the device could still write to it",
            )
        if self._view is not None:
            self._view.release()
            self._view = None
        mm, self._mmap = self._mmap, None
        assert mm is not None
        lingering = False
        try:
            mm.close()
        except BufferError:
            # Python unmaps it when the last view goes (with the mmap object). Until then the
            # buffer stays registered for fork: a child must still get the placeholder over
            # the address (`_fork_invalidate`), or its copy of a view would unmap whatever it
            # found there when it dies.
            weakref.finalize(mm, self._fork_unregister)
            lingering = True
        del mm
        close_fd_quietly(self.fd)
        self.fd = -1
        self._closed = True
        if not lingering:
            self._fork_unregister()

    @property
    def closed(self) -> bool:
        return self._closed

    def _fork_describe(self) -> str:
        return f"DMA buffer at {self.addr:#x}"

    def _fork_invalidate(self) -> None:
        # The pages are not mapped in the child (MADV_DONTFORK). Park an inaccessible placeholder
        # at the address so the child cannot place another mapping there (the mmap object's
        # eventual munmap must not unmap something else), and drop the dangling view.
        self._view = None
        try:
            sc.mmap(self.size, sc.PROT_NONE,
                    sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_FIXED_NOREPLACE, addr=self.addr)
        except WarpdriveError:
            pass
        close_fd_quietly(self.fd)
        self.fd = -1

    def __enter__(self) -> DmaBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        iova = f" iova={self.iova:#x}" if self.iova is not None else ""
        return f"<DmaBuffer {self.kind.value} addr={self.addr:#x} size={self.size:#x}{iova}>"
