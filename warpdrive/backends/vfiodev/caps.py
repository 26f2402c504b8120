"""Parsing of VFIO info buffers and their capability chains (pure functions over bytes).

VFIO's INFO ioctls (region info, type1 IOMMU info, device info) return a fixed struct followed by a
chain of capabilities: `cap_offset` in the struct and `next` in each `vfio_info_cap_header` are
byte offsets from the *start of the buffer*, 0 ends the chain. The kernel only fills the chain if
`argsz` was big enough; otherwise it raises `argsz` to the size it needs and leaves `cap_offset` 0,
so callers ask twice (`needs_second_call`).

A malformed chain (offset inside the fixed struct, past the end, or a loop) is a kernel bug or a
wrong struct layout on our side; either way we stop with an error rather than read garbage.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from ...errors import KernelError
from ...iova import IovaRange
from ...uapi import vfio as U

_HDR = ctypes.sizeof(U.vfio_info_cap_header)


@dataclass(frozen=True)
class Cap:
    id: int
    version: int
    offset: int  # of the header, from the start of the buffer


def walk_caps(buf: bytes | bytearray, first: int, fixed_size: int, what: str) -> list[Cap]:
    """Follow a capability chain starting at `first`; every header must lie after the fixed
    struct and inside `buf`, and no offset may repeat."""
    caps: list[Cap] = []
    seen: set[int] = set()
    off = first
    limit = max(len(buf) // _HDR, 1)  # more caps than headers fit means a loop
    while off:
        if off < fixed_size or off + _HDR > len(buf) or off in seen or len(caps) >= limit:
            raise KernelError(
                f"malformed capability chain in {what}: header at offset {off} "
                f"(buffer {len(buf)} bytes, fixed part {fixed_size}, seen {sorted(seen)})",
                hint="the kernel's VFIO structs do not match warpdrive.uapi.vfio; report this "
                "with `uname -r`")
        seen.add(off)
        hdr = U.vfio_info_cap_header.from_buffer_copy(buf, off)
        caps.append(Cap(hdr.id, hdr.version, off))
        off = hdr.next
    return caps


def _cap_struct(buf: bytes | bytearray, cap: Cap, cls: type[ctypes.Structure],
                what: str) -> ctypes.Structure:
    if cap.offset + ctypes.sizeof(cls) > len(buf):
        raise KernelError(f"capability {cap.id} in {what} is cut short at offset {cap.offset} "
                          f"(needs {ctypes.sizeof(cls)} bytes, buffer {len(buf)})")
    return cls.from_buffer_copy(buf, cap.offset)


def _flex_array(buf: bytes | bytearray, cap: Cap, cls: type[ctypes.Structure],
                elem: type[ctypes.Structure], count: int, what: str) -> list[ctypes.Structure]:
    start = cap.offset + ctypes.sizeof(cls)
    end = start + count * ctypes.sizeof(elem)
    if end > len(buf):
        raise KernelError(f"capability {cap.id} in {what} claims {count} entries, which run past "
                          f"the {len(buf)}-byte buffer")
    return [elem.from_buffer_copy(buf, start + i * ctypes.sizeof(elem)) for i in range(count)]


# -- region info ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParsedRegion:
    index: int
    flags: int
    size: int
    offset: int
    sparse_areas: tuple[tuple[int, int], ...] | None
    msix_mappable: bool
    type: tuple[int, int] | None
    cap_ids: tuple[int, ...]


def region_needs_second_call(info: U.vfio_region_info) -> bool:
    return bool(info.flags & U.VFIO_REGION_INFO_FLAG_CAPS) and \
        info.argsz > ctypes.sizeof(U.vfio_region_info) and info.cap_offset == 0


def parse_region_info(buf: bytes | bytearray) -> ParsedRegion:
    """Decode a `vfio_region_info` buffer with its capabilities (SPARSE_MMAP, TYPE,
    MSIX_MAPPABLE; others are listed in `cap_ids` and otherwise ignored)."""
    fixed = ctypes.sizeof(U.vfio_region_info)
    info = U.vfio_region_info.from_buffer_copy(buf)
    what = f"region {info.index} info"
    sparse: tuple[tuple[int, int], ...] | None = None
    rtype: tuple[int, int] | None = None
    msix = False
    caps: list[Cap] = []
    if info.flags & U.VFIO_REGION_INFO_FLAG_CAPS and info.cap_offset:
        caps = walk_caps(buf, info.cap_offset, fixed, what)
    for cap in caps:
        if cap.id == U.VFIO_REGION_INFO_CAP_SPARSE_MMAP:
            sm = _cap_struct(buf, cap, U.vfio_region_info_cap_sparse_mmap, what)
            areas = _flex_array(buf, cap, U.vfio_region_info_cap_sparse_mmap,
                                U.vfio_region_sparse_mmap_area, sm.nr_areas, what)
            out = []
            for a in areas:
                if a.offset + a.size > info.size:
                    raise KernelError(f"sparse mmap area {a.offset:#x}+{a.size:#x} lies outside "
                                      f"{what} (size {info.size:#x})")
                if a.size:
                    out.append((int(a.offset), int(a.size)))
            sparse = tuple(sorted(out))
        elif cap.id == U.VFIO_REGION_INFO_CAP_TYPE:
            t = _cap_struct(buf, cap, U.vfio_region_info_cap_type, what)
            rtype = (int(t.type), int(t.subtype))
        elif cap.id == U.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE:
            msix = True
    return ParsedRegion(int(info.index), int(info.flags), int(info.size), int(info.offset),
                        sparse, msix, rtype, tuple(c.id for c in caps))


# -- type1 IOMMU info -------------------------------------------------------------------------
@dataclass(frozen=True)
class Type1Info:
    pgsizes: int  # bitmap of supported IOMMU page sizes (0 if not reported)
    ranges: tuple[IovaRange, ...] | None  # None: the kernel sent no IOVA_RANGE capability
    dma_avail: int | None  # DMA mappings still allowed in this container (dma_entry_limit)
    cap_ids: tuple[int, ...]

    @property
    def min_page_size(self) -> int | None:
        return self.pgsizes & -self.pgsizes if self.pgsizes else None


def iommu_info_needs_second_call(info: U.vfio_iommu_type1_info) -> bool:
    return bool(info.flags & U.VFIO_IOMMU_INFO_CAPS) and \
        info.argsz > ctypes.sizeof(U.vfio_iommu_type1_info) and info.cap_offset == 0


def parse_iommu_info(buf: bytes | bytearray) -> Type1Info:
    """Decode `vfio_iommu_type1_info` with its IOVA_RANGE and DMA_AVAIL capabilities."""
    fixed = ctypes.sizeof(U.vfio_iommu_type1_info)
    info = U.vfio_iommu_type1_info.from_buffer_copy(buf)
    what = "type1 IOMMU info"
    caps: list[Cap] = []
    if info.flags & U.VFIO_IOMMU_INFO_CAPS and info.cap_offset:
        caps = walk_caps(buf, info.cap_offset, fixed, what)
    ranges: tuple[IovaRange, ...] | None = None
    avail: int | None = None
    for cap in caps:
        if cap.id == U.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
            ir = _cap_struct(buf, cap, U.vfio_iommu_type1_info_cap_iova_range, what)
            elems = _flex_array(buf, cap, U.vfio_iommu_type1_info_cap_iova_range,
                                U.vfio_iova_range, ir.nr_iovas, what)
            ranges = tuple(IovaRange(int(r.start), int(r.end)) for r in elems)
        elif cap.id == U.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
            da = _cap_struct(buf, cap, U.vfio_iommu_type1_info_dma_avail, what)
            avail = int(da.avail)
    pgsizes = int(info.iova_pgsizes) if info.flags & U.VFIO_IOMMU_INFO_PGSIZES else 0
    return Type1Info(pgsizes, ranges, avail, tuple(c.id for c in caps))
