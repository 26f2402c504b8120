"""Decide whether a virtual address range may be handed to a device for DMA.

Allowed: anonymous private memory, hugetlb, and shmem (memfd, tmpfs files, shared anonymous, SysV).
Refused, with the reason and what to do instead:
- regular-file-backed mappings: the device writes pages behind the filesystem's back, racing
  writeback (the kernel itself refuses long-term write pins of such pages since ~6.5);
- VM_IO / VM_PFNMAP (MMIO such as a mapped BAR or a uacce doorbell page): not RAM;
- read-only (or inaccessible) memory when the device may write;
- kernel special mappings ([vdso], [vvar], ...);
- ranges with unmapped holes.
"""

from __future__ import annotations

import enum

from ..errors import InvalidArgumentError, UnsafeMemoryError, require_int
from ..record import record
from .smaps import Mapping, filesystem_types, mappings_in_range, read_smaps_range

_SHMEM_FS = {"tmpfs", "ramfs", "shm", "devshm"}
_ANON_NAMES = ("", "[heap]", "[stack]")


class MemoryKind(enum.StrEnum):
    ANONYMOUS = "anonymous"
    HUGETLB = "hugetlb"
    MEMFD = "memfd"
    SHMEM = "shmem"
    MIXED = "mixed"


@record(frozen=True)
class DmaMemoryInfo:
    kind: MemoryKind
    page_size: int  # smallest kernel page size across the range
    dontfork: bool  # every mapping carries VM_DONTCOPY ("dc")
    mappings: tuple[Mapping, ...]


def _describe(m: Mapping) -> str:
    return f"[{m.start:#x}-{m.end:#x} {m.perms} {m.path or 'anonymous'}]"


def _classify(m: Mapping, fstypes: dict[tuple[int, int], str] | None, writable: bool) -> MemoryKind:
    where = _describe(m)
    if "io" in m.vm_flags or "pf" in m.vm_flags:
        raise UnsafeMemoryError(
            f"DMA target {where} is MMIO (VM_IO/VM_PFNMAP), not RAM",
            hint="DMA buffers must be ordinary memory: allocate one with DmaSpace.alloc()",
        )
    if not m.readable and not m.writable:
        raise UnsafeMemoryError(f"DMA target {where} has no access permissions (PROT_NONE)",
                                hint="map the memory readable (and writable) before DMA")
    if writable and not m.writable:
        raise UnsafeMemoryError(
            f"DMA target {where} is read-only but the device may write to it",
            hint="pass writable=False if the device only reads this buffer, or use writable memory",
        )
    if "ht" in m.vm_flags:
        return MemoryKind.HUGETLB
    path = m.path.removesuffix(" (deleted)")
    if m.inode == 0 and (path in _ANON_NAMES or path.startswith("[anon:")):
        return MemoryKind.ANONYMOUS
    if path.startswith("["):
        raise UnsafeMemoryError(f"DMA target {where} is a kernel special mapping",
                                hint="use a buffer from DmaSpace.alloc()")
    if path.startswith("/memfd:"):
        return MemoryKind.MEMFD
    if path in ("/dev/zero", "/SYSV00000000") or path.startswith("/SYSV"):
        return MemoryKind.SHMEM
    if fstypes is not None:
        fs = fstypes.get((m.dev_major, m.dev_minor), "")
        if fs in _SHMEM_FS:
            return MemoryKind.SHMEM
        if fs == "hugetlbfs":
            return MemoryKind.HUGETLB
    raise UnsafeMemoryError(
        f"DMA target {where} is backed by a regular file: device writes would race the "
        "filesystem's writeback and the page cache",
        hint="copy the data into an anonymous, memfd or hugetlb buffer (DmaSpace.alloc())",
    )


def inspect_dma_memory(addr: int, length: int, writable: bool = True,
                       maps: list[Mapping] | None = None) -> DmaMemoryInfo:
    """Like `check_dma_memory` but return everything learned about the range."""
    require_int("DMA address", addr)
    require_int("DMA length", length)
    if length <= 0:
        raise InvalidArgumentError(f"DMA length must be positive, got {length}")
    if addr <= 0:
        raise InvalidArgumentError(f"DMA address must be a valid user address, got {addr:#x}")
    if maps is None:
        maps = read_smaps_range(addr, length)
    covered, hole = mappings_in_range(maps, addr, length)
    if hole is not None:
        raise UnsafeMemoryError(
            f"DMA range [{addr:#x}, {addr + length:#x}) is not fully mapped: nothing is mapped "
            f"at {hole:#x}",
            hint="map exactly the memory you own; a buffer must be one contiguous mapping",
        )
    fstypes: dict[tuple[int, int], str] | None = None
    kinds: set[MemoryKind] = set()
    for m in covered:
        if m.inode != 0 and fstypes is None:
            fstypes = filesystem_types()
        kinds.add(_classify(m, fstypes, writable))
    kind = kinds.pop() if len(kinds) == 1 else MemoryKind.MIXED
    return DmaMemoryInfo(
        kind=kind,
        page_size=min(m.kernel_page_size for m in covered),
        dontfork=all("dc" in m.vm_flags for m in covered),
        mappings=tuple(covered),
    )


def check_dma_memory(addr: int, length: int, writable: bool = True) -> MemoryKind:
    """Return the kind of memory at [addr, addr+length) or raise `UnsafeMemoryError` saying why it
    must not be used for DMA. Reads /proc/self/smaps for the exact range."""
    return inspect_dma_memory(addr, length, writable).kind
