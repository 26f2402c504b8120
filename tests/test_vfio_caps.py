"""Capability-chain parsing of VFIO info buffers.

Pure logic on bytes: each buffer is laid out with the real uAPI structs from warpdrive.uapi.vfio
the way the kernel fills it (fixed struct, then capabilities linked by `next` offsets from the
buffer start). The kernel itself is exercised by the lab tests (tests/lab/test_lab_vfio*.py).
"""

from __future__ import annotations

import ctypes

import pytest

from warpdrive.backends.vfiodev import caps
from warpdrive.errors import KernelError
from warpdrive.iova import IovaRange
from warpdrive.uapi import vfio as U


def _put(buf: bytearray, off: int, obj: ctypes.Structure) -> None:
    buf[off:off + ctypes.sizeof(obj)] = bytes(obj)


def region_buf(size: int = 0x10000, index: int = 0, flags: int = 0,
               caps_list: list[tuple[int, bytes]] = ()) -> bytearray:
    """vfio_region_info followed by the given (cap id, body) capabilities, chained in order."""
    fixed = ctypes.sizeof(U.vfio_region_info)
    hdr_sz = ctypes.sizeof(U.vfio_info_cap_header)
    total = fixed + sum(hdr_sz + len(body) for _, body in caps_list)
    buf = bytearray(total)
    info = U.vfio_region_info(argsz=total, flags=flags, index=index, size=size,
                              offset=index << 40)
    off = fixed
    if caps_list:
        info.flags |= U.VFIO_REGION_INFO_FLAG_CAPS
        info.cap_offset = fixed
    _put(buf, 0, info)
    for i, (cid, body) in enumerate(caps_list):
        nxt = off + hdr_sz + len(body) if i + 1 < len(caps_list) else 0
        _put(buf, off, U.vfio_info_cap_header(id=cid, version=1, next=nxt))
        buf[off + hdr_sz:off + hdr_sz + len(body)] = body
        off = off + hdr_sz + len(body)
    return buf


def sparse_body(areas: list[tuple[int, int]]) -> bytes:
    hdr_sz = ctypes.sizeof(U.vfio_info_cap_header)
    sm = U.vfio_region_info_cap_sparse_mmap(nr_areas=len(areas))
    out = bytes(sm)[hdr_sz:]
    for o, s in areas:
        out += bytes(U.vfio_region_sparse_mmap_area(offset=o, size=s))
    return out


def type_body(t: int, sub: int) -> bytes:
    hdr_sz = ctypes.sizeof(U.vfio_info_cap_header)
    return bytes(U.vfio_region_info_cap_type(type=t, subtype=sub))[hdr_sz:]


RW_MMAP = (U.VFIO_REGION_INFO_FLAG_READ | U.VFIO_REGION_INFO_FLAG_WRITE
           | U.VFIO_REGION_INFO_FLAG_MMAP)


def test_region_without_caps():
    p = caps.parse_region_info(region_buf(size=0x100000, index=0, flags=RW_MMAP))
    assert (p.index, p.size, p.offset) == (0, 0x100000, 0)
    assert p.sparse_areas is None and not p.msix_mappable and p.type is None
    assert p.cap_ids == ()


def test_region_sparse_type_and_msix_caps():
    buf = region_buf(size=0x4000, index=4, flags=RW_MMAP, caps_list=[
        (U.VFIO_REGION_INFO_CAP_SPARSE_MMAP, sparse_body([(0x2000, 0x2000), (0, 0x1000)])),
        (U.VFIO_REGION_INFO_CAP_TYPE, type_body(U.VFIO_REGION_TYPE_PCI_VENDOR_TYPE | 0x8086, 3)),
        (U.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, b""),
    ])
    p = caps.parse_region_info(buf)
    assert p.offset == 4 << 40
    assert p.sparse_areas == ((0, 0x1000), (0x2000, 0x2000))  # sorted
    assert p.type == (U.VFIO_REGION_TYPE_PCI_VENDOR_TYPE | 0x8086, 3)
    assert p.msix_mappable
    assert p.cap_ids == (1, 2, 3)


def test_unknown_caps_are_listed_and_skipped():
    buf = region_buf(flags=RW_MMAP, caps_list=[(77, b"\0" * 8),
                                               (U.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, b"")])
    p = caps.parse_region_info(buf)
    assert p.cap_ids == (77, 3) and p.msix_mappable


def test_empty_sparse_cap_means_nothing_mappable():
    buf = region_buf(flags=RW_MMAP,
                     caps_list=[(U.VFIO_REGION_INFO_CAP_SPARSE_MMAP, sparse_body([]))])
    assert caps.parse_region_info(buf).sparse_areas == ()


def test_needs_second_call_when_kernel_raised_argsz():
    info = U.vfio_region_info(argsz=80, flags=RW_MMAP | U.VFIO_REGION_INFO_FLAG_CAPS, cap_offset=0)
    assert caps.region_needs_second_call(info)
    info.cap_offset = 32
    assert not caps.region_needs_second_call(info)
    plain = U.vfio_region_info(argsz=32, flags=RW_MMAP)
    assert not caps.region_needs_second_call(plain)


@pytest.mark.parametrize("corrupt", ["loop", "past_end", "inside_fixed", "areas_overrun",
                                     "area_outside_region"])
def test_malformed_chains_are_refused(corrupt):
    buf = region_buf(size=0x4000, flags=RW_MMAP, caps_list=[
        (U.VFIO_REGION_INFO_CAP_SPARSE_MMAP, sparse_body([(0, 0x1000)])),
        (U.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, b""),
    ])
    fixed = ctypes.sizeof(U.vfio_region_info)
    second = fixed + ctypes.sizeof(U.vfio_info_cap_header) + len(sparse_body([(0, 0x1000)]))
    if corrupt == "loop":
        _put(buf, second, U.vfio_info_cap_header(id=3, version=1, next=fixed))
    elif corrupt == "past_end":
        _put(buf, second, U.vfio_info_cap_header(id=3, version=1, next=len(buf) + 8))
    elif corrupt == "inside_fixed":
        _put(buf, second, U.vfio_info_cap_header(id=3, version=1, next=8))
    elif corrupt == "areas_overrun":
        sm = U.vfio_region_info_cap_sparse_mmap.from_buffer(buf, fixed)
        sm.nr_areas = 1000
        del sm
    elif corrupt == "area_outside_region":
        area_off = fixed + ctypes.sizeof(U.vfio_region_info_cap_sparse_mmap)
        _put(buf, area_off, U.vfio_region_sparse_mmap_area(offset=0x3000, size=0x2000))
    with pytest.raises(KernelError):
        caps.parse_region_info(buf)


def iommu_buf(ranges: list[tuple[int, int]] | None, avail: int | None,
              pgsizes: int = 0x40201000) -> bytearray:
    fixed = ctypes.sizeof(U.vfio_iommu_type1_info)
    hdr_sz = ctypes.sizeof(U.vfio_info_cap_header)
    parts: list[bytes] = []
    if ranges is not None:
        ir = U.vfio_iommu_type1_info_cap_iova_range(
            header=U.vfio_info_cap_header(id=U.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, version=1),
            nr_iovas=len(ranges))
        parts.append(bytes(ir) + b"".join(bytes(U.vfio_iova_range(start=s, end=e))
                                          for s, e in ranges))
    if avail is not None:
        da = U.vfio_iommu_type1_info_dma_avail(
            header=U.vfio_info_cap_header(id=U.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, version=1),
            avail=avail)
        parts.append(bytes(da) + b"\0" * (-ctypes.sizeof(da) % 8))
    total = fixed + sum(len(p) for p in parts)
    buf = bytearray(total)
    info = U.vfio_iommu_type1_info(argsz=total, flags=U.VFIO_IOMMU_INFO_PGSIZES,
                                   iova_pgsizes=pgsizes)
    if parts:
        info.flags |= U.VFIO_IOMMU_INFO_CAPS
        info.cap_offset = fixed
    _put(buf, 0, info)
    off = fixed
    for i, p in enumerate(parts):
        buf[off:off + len(p)] = p
        hdr = U.vfio_info_cap_header.from_buffer(buf, off)
        hdr.next = off + len(p) if i + 1 < len(parts) else 0
        del hdr
        off += len(p)
    assert hdr_sz == 8
    return buf


def test_iommu_info_ranges_and_dma_avail():
    buf = iommu_buf([(0, 0xFEDFFFFF), (0xFEF00000, (1 << 48) - 1)], 65535)
    info = caps.parse_iommu_info(buf)
    assert info.ranges == (IovaRange(0, 0xFEDFFFFF), IovaRange(0xFEF00000, (1 << 48) - 1))
    assert info.dma_avail == 65535
    assert info.min_page_size == 0x1000
    assert info.cap_ids == (U.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
                            U.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL)


def test_iommu_info_without_caps():
    info = caps.parse_iommu_info(iommu_buf(None, None))
    assert info.ranges is None and info.dma_avail is None


def test_iommu_info_second_call_detection():
    short = U.vfio_iommu_type1_info(argsz=96, flags=U.VFIO_IOMMU_INFO_CAPS, cap_offset=0)
    assert caps.iommu_info_needs_second_call(short)
    short.argsz = ctypes.sizeof(U.vfio_iommu_type1_info)
    assert not caps.iommu_info_needs_second_call(short)
