"""The DMA space of an iommufd IOAS (I/O address space).

Maps always use IOMMU_IOAS_MAP_FIXED_IOVA with an address from warpdrive's allocator, so the
device's DMA mask is honoured (the kernel's own IOVA choice knows nothing of it). Buffers with a
file (memfd, hugetlbfs memfd) are mapped by fd with IOMMU_IOAS_MAP_FILE where the kernel has it
(6.13+), so the kernel enforces the memory kind too; elsewhere, and for raw addresses, by address.
The usable ranges are IOMMU_IOAS_IOVA_RANGES (which shrink as devices attach: re-read after every
attach) intersected with the window set by `allow_iovas`: in Linux 6.12 IOMMU_IOAS_ALLOW_IOVAS only
steers the kernel's own IOVA choice and is not reflected in IOVA_RANGES, so we apply it ourselves.
"""

from __future__ import annotations

from ... import syscalls as sc
from ...dma import DmaMapping, DmaSpace
from ...errors import UnsupportedError
from ...iova import U64_MAX, IovaRange, normalise_ranges
from .ctx import IommufdContext


def intersect(a: list[IovaRange], b: list[IovaRange]) -> list[IovaRange]:
    out: list[IovaRange] = []
    for x in normalise_ranges(a):
        for y in normalise_ranges(b):
            s, e = max(x.start, y.start), min(x.last, y.last)
            if s <= e:
                out.append(IovaRange(s, e))
    return out


class IoasDmaSpace(DmaSpace):
    def __init__(self, name: str, ctx: IommufdContext, ioas_id: int,
                 dma_mask: int | None = None) -> None:
        self.ctx = ctx
        self.ioas_id = ioas_id
        self.allowed: list[IovaRange] | None = None
        _, align = ctx.iova_ranges(ioas_id)
        super().__init__(name, dma_mask, page_size=max(align, sc.PAGE_SIZE))

    def _query_ranges(self) -> list[IovaRange]:
        ranges, _ = self.ctx.iova_ranges(self.ioas_id)
        return ranges if self.allowed is None else intersect(ranges, self.allowed)

    def allow_iovas(self, ranges: list[IovaRange] | None) -> None:
        """Restrict this IOAS to `ranges` (None lifts the restriction); the allocator follows.
        The kernel refuses if a live mapping lies outside."""
        with self._lock:
            self._check_open()
            self.ctx.allow_iovas(self.ioas_id, list(ranges or []))
            self.allowed = None if ranges is None else list(ranges)
            self.refresh_ranges()

    def _do_map(self, mapping: DmaMapping) -> None:
        buf = mapping.buffer
        if buf is not None and buf.fd >= 0 and self.ctx.has_map_file is not False:
            # A memfd/hugetlbfs buffer goes by its fd: the kernel then checks the memory kind
            # itself (on top of check_dma_memory) and pins by file offset.
            try:
                self.ctx.map_file(self.ioas_id, buf.fd, buf.fd_offset + (mapping.addr - buf.addr),
                                  mapping.size, mapping.iova, mapping.writable)
                mapping.by_fd = True
                return
            except UnsupportedError:
                pass  # Linux < 6.13: by address, below (asked once per iommufd)
        self.ctx.map(self.ioas_id, mapping.addr, mapping.size, mapping.iova, mapping.writable)

    def _do_unmap(self, mapping: DmaMapping) -> int:
        return self.ctx.unmap(self.ioas_id, mapping.iova, mapping.size)

    def _do_unmap_all(self) -> int:
        # The kernel selftests' iommufd "unmap all": IOVA 0, length U64_MAX.
        return self.ctx.unmap(self.ioas_id, 0, U64_MAX)
