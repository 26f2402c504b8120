"""IOVA allocator: every address lies inside the usable ranges and below the DMA mask,
allocations never overlap, frees coalesce. Pure logic (the lab repeats the range check on real
kernel ranges)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warpdrive.errors import DeviceBusyError, InvalidArgumentError, ResourceExhaustedError
from warpdrive.iova import IovaAllocator, IovaRange, normalise_ranges

PAGE = 4096
EDU_MASK = (1 << 28) - 1
# What intel-iommu reports to type1 on q35 (the MSI window is reserved).
VTD_RANGES = [IovaRange(0, 0xFEDFFFFF), IovaRange(0xFEF00000, (1 << 48) - 1)]


def inside(ranges: list[IovaRange], iova: int, size: int) -> bool:
    return any(r.start <= iova and iova + size - 1 <= r.last for r in ranges)


def test_edu_mask_clips_to_256_mib_and_skips_page_zero() -> None:
    a = IovaAllocator(VTD_RANGES, dma_mask=EDU_MASK)
    assert a.ranges == [IovaRange(0x10000, EDU_MASK)]
    assert a.alloc(PAGE) == 0x10000


def test_many_buffers_stay_inside_ranges_until_exhausted() -> None:
    narrow = [IovaRange(0x100000, 0x10FFFF), IovaRange(0x200000, 0x207FFF)]
    a = IovaAllocator(narrow, dma_mask=EDU_MASK)
    got = []
    while True:
        try:
            got.append(a.alloc(PAGE))
        except ResourceExhaustedError as e:
            assert "no free IOVA window" in str(e)
            break
    assert len(got) == (0x10000 + 0x8000) // PAGE
    assert all(inside(narrow, i, PAGE) for i in got)
    assert len(set(got)) == len(got)


def test_mask_below_every_range_leaves_nothing() -> None:
    a = IovaAllocator([IovaRange(1 << 32, (1 << 33) - 1)], dma_mask=EDU_MASK)
    assert a.ranges == []
    with pytest.raises(ResourceExhaustedError, match="no usable range"):
        a.alloc(PAGE)


def test_alignment_is_honoured() -> None:
    a = IovaAllocator(VTD_RANGES)
    a.alloc(PAGE)
    big = a.alloc(PAGE, align=2 << 20)
    assert big % (2 << 20) == 0


def test_reserve_checks_ranges_alignment_and_overlap() -> None:
    a = IovaAllocator(VTD_RANGES, dma_mask=EDU_MASK)
    assert a.reserve(0x100000, 2 * PAGE) == 0x100000
    with pytest.raises(DeviceBusyError, match="overlaps"):
        a.reserve(0x101000, PAGE)
    with pytest.raises(InvalidArgumentError, match="outside the usable ranges"):
        a.reserve(EDU_MASK + 1, PAGE)
    with pytest.raises(InvalidArgumentError, match="not aligned"):
        a.reserve(0x300001, PAGE)


def test_free_coalesces_so_a_large_window_fits_again() -> None:
    a = IovaAllocator([IovaRange(0x10000, 0x1FFFF)])
    xs = [a.alloc(PAGE) for _ in range(16)]
    with pytest.raises(ResourceExhaustedError):
        a.alloc(PAGE)
    for x in xs[::2] + xs[1::2]:
        a.free(x)
    assert a.alloc(16 * PAGE) == 0x10000


def test_narrowing_ranges_under_a_live_mapping_is_refused() -> None:
    a = IovaAllocator(VTD_RANGES)
    x = a.alloc(PAGE)
    with pytest.raises(DeviceBusyError, match="outside the new IOVA ranges"):
        a.set_ranges([IovaRange(x + PAGE, 1 << 40)])


def test_malformed_range_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError):
        normalise_ranges([IovaRange(10, 5)])


ranges_st = st.lists(
    st.tuples(st.integers(0, 1 << 20), st.integers(1, 1 << 12)).map(
        lambda t: IovaRange(t[0] * PAGE, (t[0] + t[1]) * PAGE - 1)),
    min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(ranges=ranges_st, mask_bits=st.integers(24, 40),
       ops=st.lists(st.tuples(st.booleans(), st.integers(1, 64), st.sampled_from([1, 2, 16, 512])),
                    max_size=60))
def test_allocations_always_inside_ranges_and_disjoint(ranges, mask_bits, ops) -> None:
    mask = (1 << mask_bits) - 1
    a = IovaAllocator(ranges, dma_mask=mask)
    live: dict[int, int] = {}
    for do_alloc, pages, align_pages in ops:
        if do_alloc or not live:
            try:
                iova = a.alloc(pages * PAGE, align=align_pages * PAGE)
            except ResourceExhaustedError:
                continue
            size = pages * PAGE
            assert iova % (align_pages * PAGE) == 0
            assert iova + size - 1 <= mask and iova >= 0x10000
            # adjacent kernel ranges form one contiguous window, so compare with their union
            assert inside(normalise_ranges(ranges), iova, size)
            for o, s in live.items():
                assert iova + size <= o or o + s <= iova
            live[iova] = size
        else:
            iova = next(iter(live))
            a.free(iova)
            del live[iova]
