"""IOVA allocation inside the ranges the kernel reports and below the device's DMA mask.

Ranges come from VFIO_IOMMU_GET_INFO (type1) or IOMMU_IOAS_IOVA_RANGES (iommufd), normalised to
inclusive [start, last] like iommufd's `iommu_iova_range`. The allocator is first-fit over a sorted
free list with coalescing on free; every address it returns lies wholly inside one reported range
and at or below the mask, which the tests check on many allocations and on forced-narrow ranges.
"""

from __future__ import annotations

import bisect

from .errors import DeviceBusyError, InvalidArgumentError, ResourceExhaustedError
from .record import record
from .syscalls import align_up

U64_MAX = (1 << 64) - 1


@record(frozen=True, order=True)
class IovaRange:
    start: int
    last: int  # inclusive

    @property
    def size(self) -> int:
        return self.last - self.start + 1

    def __str__(self) -> str:
        return f"[{self.start:#x}, {self.last:#x}]"


def normalise_ranges(ranges: list[IovaRange], dma_mask: int = U64_MAX,
                     floor: int = 0) -> list[IovaRange]:
    """Sort, merge and clip ranges to [floor, dma_mask]; reject malformed input."""
    out: list[IovaRange] = []
    for r in sorted(ranges):
        if r.last < r.start:
            raise InvalidArgumentError(f"IOVA range {r} ends before it starts")
        start, last = max(r.start, floor), min(r.last, dma_mask)
        if start > last:
            continue
        if out and start <= out[-1].last + 1:
            out[-1] = IovaRange(out[-1].start, max(out[-1].last, last))
        else:
            out.append(IovaRange(start, last))
    return out


class IovaAllocator:
    """First-fit allocator over the usable IOVA space. Sizes and alignments are page multiples.

    IOVA 0 (and the first `floor` bytes) are never handed out: many devices treat 0 as "no address".
    """

    def __init__(self, ranges: list[IovaRange], dma_mask: int = U64_MAX, page_size: int = 4096,
                 floor: int = 0x10000) -> None:
        if page_size & (page_size - 1):
            raise InvalidArgumentError(f"page size {page_size} is not a power of two")
        self.page_size = page_size
        self.dma_mask = dma_mask
        self.floor = floor
        self._allocated: dict[int, int] = {}  # iova -> size
        self.set_ranges(ranges)

    def set_ranges(self, ranges: list[IovaRange]) -> None:
        """(Re)load the kernel's ranges, e.g. after an attach narrowed them. Live allocations must
        still fit, else the caller is told which one does not."""
        usable = normalise_ranges(ranges, self.dma_mask, self.floor)
        for iova, size in self._allocated.items():
            if not any(r.start <= iova and iova + size - 1 <= r.last for r in usable):
                raise DeviceBusyError(
                    f"mapping at IOVA {iova:#x} (+{size:#x}) falls outside the new IOVA ranges "
                    f"{', '.join(map(str, usable))}", hint="unmap it first")
        self.ranges = usable
        # free list = usable minus allocated, as sorted [start, end) pairs
        free: list[tuple[int, int]] = [(r.start, r.last + 1) for r in usable]
        for iova, size in sorted(self._allocated.items()):
            free = self._carve(free, iova, iova + size)
        self._free = free

    @staticmethod
    def _carve(free: list[tuple[int, int]], s: int, e: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for fs, fe in free:
            if fe <= s or fs >= e:
                out.append((fs, fe))
                continue
            if fs < s:
                out.append((fs, s))
            if e < fe:
                out.append((e, fe))
        return out

    def _check_size(self, size: int) -> int:
        if size <= 0:
            raise InvalidArgumentError(f"IOVA size must be positive, got {size}")
        return align_up(size, self.page_size)

    def alloc(self, size: int, align: int | None = None) -> int:
        size = self._check_size(size)
        align = max(align or self.page_size, self.page_size)
        if align & (align - 1):
            raise InvalidArgumentError(f"IOVA alignment {align:#x} is not a power of two")
        for i, (fs, fe) in enumerate(self._free):
            a = align_up(fs, align)
            if a + size <= fe:
                pieces = [p for p in ((fs, a), (a + size, fe)) if p[0] < p[1]]
                self._free[i:i + 1] = pieces
                self._allocated[a] = size
                return a
        total = sum(fe - fs for fs, fe in self._free)
        raise ResourceExhaustedError(
            f"no free IOVA window of {size:#x} bytes (alignment {align:#x}) in "
            f"{', '.join(map(str, self.ranges)) or 'no usable range'} below DMA mask "
            f"{self.dma_mask:#x} ({total:#x} bytes free in total)",
            hint="unmap buffers you no longer need, or use fewer, larger buffers")

    def reserve(self, iova: int, size: int) -> int:
        """Claim a caller-chosen IOVA; it must lie in a usable range and not overlap a mapping."""
        size = self._check_size(size)
        if iova % self.page_size:
            raise InvalidArgumentError(
                f"IOVA {iova:#x} is not aligned to the IOMMU page size {self.page_size:#x}")
        end = iova + size
        if not any(r.start <= iova and end - 1 <= r.last for r in self.ranges):
            raise InvalidArgumentError(
                f"IOVA window [{iova:#x}, {end:#x}) is outside the usable ranges "
                f"{', '.join(map(str, self.ranges))} (DMA mask {self.dma_mask:#x})")
        for fs, fe in self._free:
            if fs <= iova and end <= fe:
                self._free = self._carve(self._free, iova, end)
                self._allocated[iova] = size
                return iova
        raise DeviceBusyError(f"IOVA window [{iova:#x}, {end:#x}) overlaps an existing mapping")

    def free(self, iova: int) -> None:
        size = self._allocated.pop(iova, None)
        if size is None:
            raise InvalidArgumentError(f"IOVA {iova:#x} was not allocated")
        starts = [fs for fs, _ in self._free]
        i = bisect.bisect_left(starts, iova)
        s, e = iova, iova + size
        if i > 0 and self._free[i - 1][1] == s:
            i -= 1
            s = self._free[i][0]
            del self._free[i]
        if i < len(self._free) and self._free[i][0] == e:
            e = self._free[i][1]
            del self._free[i]
        self._free.insert(i, (s, e))

    @property
    def allocated(self) -> dict[int, int]:
        return dict(self._allocated)
