"""The DMA-space interface: what a device can address, and the only way memory becomes addressable.

`DmaSpace` holds everything backend-independent: the memory-kind check (every map goes through
`check_dma_memory`, callers cannot skip it), the memlock preflight, MADV_DONTFORK, IOVA allocation
inside the kernel's ranges and below the device's DMA mask, bookkeeping, and the refusal to unmap a
buffer a queue still uses. Backends implement three hooks: `_do_map`, `_do_unmap`, `_query_ranges`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod

from . import syscalls as sc
from .errors import (
    ClosedError,
    DeviceBusyError,
    InvalidArgumentError,
    KernelError,
    UnsafeMemoryError,
    WarpdriveError,
    require_int,
)
from .forkguard import ForkSafe
from .iova import U64_MAX, IovaAllocator, IovaRange
from .memory import DmaBuffer, MemoryKind, check_memlock, inspect_dma_memory
from .record import field, record


@record
class DmaMapping:
    """A live DMA mapping: `size` bytes at process address `addr`, seen by the device at `iova`."""

    iova: int
    addr: int
    size: int
    writable: bool
    kind: MemoryKind
    buffer: DmaBuffer | None = None
    users: dict[int, str] = field(default_factory=dict)  # id(owner) -> description
    # Mapped by file descriptor (IOMMU_IOAS_MAP_FILE): the kernel, too, refused any memory but
    # memfd/shmem and hugetlbfs.
    by_fd: bool = False

    def contains(self, addr: int, size: int = 1) -> bool:
        return self.addr <= addr and addr + size <= self.addr + self.size

    def iova_of(self, addr: int) -> int:
        return self.iova + (addr - self.addr)


class DmaSpace(ForkSafe, ABC):
    """A device's view of memory. Obtain it as `Device.dma`.

    Class attributes set by backends:
    - `pins`: maps pin pages (charged to RLIMIT_MEMLOCK). SVA spaces do not pin (the IOMMU walks
      the process page table and faults pages in), so they skip the memlock preflight.
    - `identity`: IOVA == process virtual address (SVA); no allocator.
    - `needs_fd`: the device reaches memory through a shared fd (vfio-user), so only memfd-backed
      buffers can be mapped.
    - `prefault`: `alloc` populates the pages of the buffers it makes (a memfd's are left to
      first touch when the device side maps the fd itself; see DmaBuffer.allocate).
    """

    pins: bool = True
    prefault: bool = True
    identity: bool = False
    needs_fd: bool = False
    default_kind: MemoryKind = MemoryKind.ANONYMOUS

    def __init__(self, name: str, dma_mask: int | None = None,
                 page_size: int = sc.PAGE_SIZE) -> None:
        self.name = name
        self.dma_mask = U64_MAX if dma_mask is None else dma_mask
        require_int("DMA mask", self.dma_mask)
        if self.dma_mask <= 0:
            raise InvalidArgumentError(f"DMA mask must be positive, got {dma_mask}")
        self.page_size = page_size
        self._mappings: dict[int, DmaMapping] = {}  # iova -> mapping
        self._owned: list[DmaBuffer] = []
        self._allocator: IovaAllocator | None = None
        self._lock = threading.RLock()
        self._closed = False
        self._fork_register()

    # -- backend hooks ----------------------------------------------------------------------
    @abstractmethod
    def _query_ranges(self) -> list[IovaRange]:
        """The IOVA ranges the kernel (or server) allows, inclusive."""

    @abstractmethod
    def _do_map(self, mapping: DmaMapping) -> None:
        """Make `mapping` visible to the device; may set `mapping.iova` if the kernel picked it."""

    @abstractmethod
    def _do_unmap(self, mapping: DmaMapping) -> int | None:
        """Remove `mapping`; must not return before the device can no longer reach the pages.
        Returns the bytes the kernel says it unmapped (None when the backend cannot tell)."""

    def _do_unmap_all(self) -> int | None:
        """Remove every mapping with one call and return the bytes unmapped; None: the backend
        has no such call (then each mapping is unmapped on its own)."""
        return None

    # -- queries ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        self._check_alive()
        if self._closed:
            raise ClosedError(f"DMA space of {self.name} is closed")

    def iova_ranges(self) -> list[IovaRange]:
        """Usable IOVA ranges: the kernel's ranges clipped to the DMA mask."""
        self._check_open()
        return list(self._get_allocator().ranges)

    def kernel_iova_ranges(self) -> list[IovaRange]:
        """The ranges exactly as the kernel reports them (not clipped)."""
        self._check_open()
        return self._query_ranges()

    def set_dma_mask(self, dma_mask: int) -> None:
        """Narrow (or widen) the addresses handed out, e.g. to a device's 28-bit DMA engine.
        Live mappings must already fit below the new mask."""
        with self._lock:
            for m in self._mappings.values():
                if m.iova + m.size - 1 > dma_mask:
                    raise DeviceBusyError(
                        f"mapping at IOVA {m.iova:#x} lies above the new DMA mask {dma_mask:#x}",
                        hint="set the DMA mask before mapping buffers")
            self.dma_mask = dma_mask
            if self._allocator is not None:
                self._allocator.dma_mask = dma_mask
                self._allocator.set_ranges(self._query_ranges())

    def refresh_ranges(self) -> None:
        """Re-read the kernel's ranges (they shrink when devices attach)."""
        with self._lock:
            self._get_allocator().set_ranges(self._query_ranges())

    def _get_allocator(self) -> IovaAllocator:
        if self._allocator is None:
            self._allocator = IovaAllocator(self._query_ranges(), self.dma_mask, self.page_size)
        return self._allocator

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def mappings(self) -> list[DmaMapping]:
        return sorted(self._mappings.values(), key=lambda m: m.iova)

    def mapping_of(self, buf: DmaBuffer) -> DmaMapping | None:
        """The live mapping of `buf` in this space, or None (not mapped here: an IOVA equal to
        another space's is not enough)."""
        m = self._mappings.get(buf.iova) if buf.iova is not None else None
        return m if m is not None and m.buffer is buf else None

    def find(self, addr: int, size: int = 1) -> DmaMapping | None:
        """The live mapping holding [addr, addr + size), or None."""
        for m in self._mappings.values():
            if m.contains(addr, size):
                return m
        return None

    def iova_of(self, addr: int, size: int = 1) -> int:
        """The IOVA of process address `addr`, which must lie in a live mapping."""
        m = self.find(addr, size)
        if m is None:
            raise InvalidArgumentError(
                f"address {addr:#x} (+{size}) is not inside any DMA mapping of {self.name}",
                hint="map the memory first (dma.map or dma.alloc)")
        return m.iova_of(addr)

    # -- map / unmap ------------------------------------------------------------------------
    def alloc(self, size: int, kind: str | MemoryKind | None = None, *,
              page_size: int | None = None, iova: int | None = None,
              writable: bool = True) -> DmaBuffer:
        """Allocate a buffer of `kind` (default: what this backend needs) and map it."""
        self._check_open()
        buf = DmaBuffer.allocate(size, kind or self.default_kind, page_size=page_size,
                                 prefault=self.prefault)
        try:
            self.map(buf, iova=iova, writable=writable)
        except BaseException:
            buf.close()
            raise
        with self._lock:
            self._owned.append(buf)
        return buf

    def map(self, target: DmaBuffer | int, size: int | None = None, iova: int | None = None,
            writable: bool = True) -> DmaMapping:
        """Map a DmaBuffer, or `size` bytes of process memory at address `target`.

        The range is checked against /proc/self/smaps first (file-backed, MMIO, read-only and
        holes are refused) and marked MADV_DONTFORK. Returns the mapping; `.iova` is what the
        device uses."""
        self._check_open()
        buf = target if isinstance(target, DmaBuffer) else None
        if buf is not None:
            if buf.closed:
                raise ClosedError("cannot map a closed DmaBuffer")
            if buf._mapped_by is not None:
                raise DeviceBusyError(f"{buf!r} is already mapped for DMA",
                                      hint="a buffer can be mapped by one DMA space at a time")
            addr, length = buf.addr, buf.size if size is None else size
        else:
            if not isinstance(target, int):
                raise InvalidArgumentError(
                    f"map() takes a DmaBuffer or an int address, not {type(target).__name__}")
            if size is None:
                raise InvalidArgumentError("map() of a raw address needs size=")
            addr, length = target, size
        require_int("DMA address", addr)
        require_int("DMA length", length)
        if length <= 0:
            raise InvalidArgumentError(f"DMA length must be positive, got {length}")
        if addr % self.page_size or length % self.page_size:
            raise InvalidArgumentError(
                f"DMA range {addr:#x}+{length:#x} is not aligned to the IOMMU page size "
                f"{self.page_size:#x}", hint="map whole pages (DmaSpace.alloc does this for you)")
        info = inspect_dma_memory(addr, length, writable)
        if self.needs_fd and (buf is None or buf.fd < 0):
            raise UnsafeMemoryError(
                f"{self.name} reaches memory through a shared file descriptor, but the range at "
                f"{addr:#x} is {info.kind.value} memory without one",
                hint="allocate buffers with dma.alloc() (memfd-backed on this backend)")
        if self.pins:
            check_memlock(length, f"mapping {length} bytes for DMA on {self.name}")
        if not info.dontfork:
            sc.madvise(addr, length, sc.MADV_DONTFORK,
                       what=f"madvise(MADV_DONTFORK) on DMA range {addr:#x}+{length:#x}")
        with self._lock:
            mapping = DmaMapping(iova=-1, addr=addr, size=length, writable=writable,
                                 kind=info.kind, buffer=buf)
            if self.identity:
                if iova is not None and iova != addr:
                    raise InvalidArgumentError(
                        f"{self.name} shares the process address space: IOVA must equal the "
                        f"address {addr:#x}")
                mapping.iova = addr
            else:
                alloc = self._get_allocator()
                if iova is None:
                    # Align to the backing page size so huge pages can use huge IOMMU pages.
                    mapping.iova = alloc.alloc(length, align=max(info.page_size, self.page_size))
                else:
                    mapping.iova = alloc.reserve(iova, length)
            try:
                self._do_map(mapping)
            except BaseException:
                if not self.identity:
                    self._get_allocator().free(mapping.iova)
                raise
            self._mappings[mapping.iova] = mapping
            if buf is not None:
                buf.iova = mapping.iova
                buf._mapped_by = self
            return mapping

    def _resolve(self, target: DmaBuffer | DmaMapping | int) -> DmaMapping:
        if isinstance(target, DmaMapping):
            m = self._mappings.get(target.iova)
        elif isinstance(target, DmaBuffer):
            m = self._mappings.get(target.iova) if target.iova is not None else None
        else:
            m = self._mappings.get(target)
        if m is None:
            raise InvalidArgumentError(f"{target!r} is not mapped in {self.name}")
        return m

    def unmap(self, target: DmaBuffer | DmaMapping | int, *, force: bool = False) -> int:
        """Unmap a buffer, a mapping, or the mapping at an IOVA; returns the bytes unmapped (as
        the kernel counted them, checked against the mapping). Refused while a queue uses it."""
        self._check_open()
        with self._lock:
            m = self._resolve(target)
            if m.users and not force:
                raise DeviceBusyError(
                    f"DMA mapping at IOVA {m.iova:#x} is in use by {', '.join(m.users.values())}",
                    hint="close or drain that queue first; the device may still access the pages")
            self._unmap_locked(m)
            return m.size

    def unmap_all(self, *, force: bool = False) -> int:
        """Unmap every mapping of this space with one kernel call where the backend has one
        (type1's VFIO_DMA_UNMAP_FLAG_ALL, an IOMMU_IOAS_UNMAP of the whole IOVA space); returns
        the bytes unmapped. Refused while a queue uses a mapping, unless `force`."""
        self._check_open()
        with self._lock:
            busy = [m for m in self._mappings.values() if m.users]
            if busy and not force:
                raise DeviceBusyError(
                    f"{len(busy)} DMA mapping(s) of {self.name} are in use (e.g. IOVA "
                    f"{busy[0].iova:#x} by {', '.join(busy[0].users.values())})",
                    hint="close or drain the queues first; the device may still access the pages")
            mappings = list(self._mappings.values())
            expected = sum(m.size for m in mappings)
            done = self._do_unmap_all()
            if done is None:
                for m in mappings:
                    self._unmap_locked(m)
                return expected
            for m in mappings:
                self._forget(m)
            self._check_unmapped(done, expected, f"unmapping all of {self.name}")
            return done

    def _check_unmapped(self, done: int | None, expected: int, what: str) -> None:
        if done is not None and done != expected:
            raise KernelError(
                f"{what}: the kernel unmapped {done:#x} bytes, warpdrive had mapped "
                f"{expected:#x}",
                hint="the IOMMU's mappings no longer match warpdrive's records; close the device")

    def _unmap_locked(self, m: DmaMapping) -> None:
        done = self._do_unmap(m)
        self._forget(m)
        self._check_unmapped(done, m.size, f"unmapping IOVA {m.iova:#x}+{m.size:#x}")

    def _forget(self, m: DmaMapping) -> None:
        del self._mappings[m.iova]
        if not self.identity:
            self._get_allocator().free(m.iova)
        if m.buffer is not None:
            m.buffer.iova = None
            m.buffer._mapped_by = None

    def hold(self, target: DmaBuffer | DmaMapping | int, owner: object, what: str) -> DmaMapping:
        """Mark a mapping as used by `owner` (a queue): unmap is refused until `release`."""
        with self._lock:
            m = self._resolve(target)
            m.users[id(owner)] = what
            return m

    def release(self, target: DmaBuffer | DmaMapping | int, owner: object) -> None:
        """Undo `hold` by `owner` (a mapping already gone is not an error)."""
        with self._lock:
            try:
                m = self._resolve(target)
            except InvalidArgumentError:
                return
            m.users.pop(id(owner), None)

    def close(self) -> None:
        """Unmap everything and free the buffers this space allocated."""
        if self._closed or self._forked_dead:
            return
        with self._lock:
            errors: list[WarpdriveError] = []
            for m in list(self._mappings.values()):
                try:
                    self._unmap_locked(m)
                except WarpdriveError as e:
                    errors.append(e)
            for buf in self._owned:
                if buf._mapped_by is None:
                    buf.close()
            self._owned.clear()
            self._closed = True
            self._fork_unregister()
            if errors:
                raise errors[0]

    def _fork_describe(self) -> str:
        return f"DMA space of {self.name}"

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name} mask={self.dma_mask:#x} "
                f"mappings={len(self._mappings)}>")
