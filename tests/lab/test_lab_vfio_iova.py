"""The IOVA allocator against the real kernel's reported ranges, in both IOMMU modes: every
address handed out lies inside a range the kernel reported (VFIO_IOMMU_GET_INFO's IOVA_RANGE cap,
or IOMMU_IOAS_IOVA_RANGES) and below the DMA mask, also when the usable space is forced narrow
(a narrowed DMA mask; on iommufd also IOMMU_IOAS_ALLOW_IOVAS)."""

from __future__ import annotations

import itertools

import pytest

import warpdrive
from warpdrive import binding
from warpdrive.devices.edu import Edu
from warpdrive.errors import ResourceExhaustedError
from warpdrive.iova import IovaRange

pytestmark = pytest.mark.lab

MSI_WINDOW = (0xFEE00000, 0xFEEFFFFF)  # x86: reserved by the IOMMU for interrupt messages


@pytest.fixture(scope="module")
def edu_dev(edu_bdf: str):
    with binding.bound_to(edu_bdf):
        yield edu_bdf


def inside(iova: int, size: int, ranges: list[IovaRange]) -> bool:
    return any(r.start <= iova and iova + size - 1 <= r.last for r in ranges)


def test_many_buffers_inside_kernel_ranges(edu_dev: str, iommu_mode: str) -> None:
    with warpdrive.open(edu_dev, backend=iommu_mode) as dev:
        kernel = dev.dma.kernel_iova_ranges()
        assert kernel, "the kernel reported no IOVA range"
        # the attach added the device's reserved regions: the MSI window is never usable
        assert not any(r.start <= MSI_WINDOW[0] <= r.last for r in kernel), kernel
        sizes = [4096, 8192, 65536, 4096 * 3, 1 << 20]
        bufs = [dev.dma.alloc(sizes[i % len(sizes)]) for i in range(60)]
        seen: list[tuple[int, int]] = []
        for b in bufs:
            assert b.iova is not None
            assert inside(b.iova, b.size, kernel), (hex(b.iova), kernel)
            assert b.iova + b.size - 1 <= dev.dma.dma_mask
            seen.append((b.iova, b.iova + b.size))
        seen.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(seen)), "overlapping IOVAs"
        # ...and a device can really use the last one
        edu = Edu(dev)
        small = [b for b in bufs if b.size == 4096][-1]
        small.write(0, b"x" * 4096)
        edu.dma_to_device(small)


def test_narrow_dma_mask_is_honoured_to_exhaustion(edu_dev: str, iommu_mode: str) -> None:
    mask = (1 << 22) - 1  # 4 MiB of IOVA space, minus the allocator's 64 KiB floor
    with warpdrive.open(edu_dev, backend=iommu_mode, dma_mask=mask) as dev:
        kernel = dev.dma.kernel_iova_ranges()
        bufs = []
        with pytest.raises(ResourceExhaustedError):
            for _ in range(1000):
                bufs.append(dev.dma.alloc(65536))
        assert len(bufs) == (mask + 1 - 0x10000) // 65536
        for b in bufs:
            assert b.iova is not None and b.iova + b.size - 1 <= mask
            assert inside(b.iova, b.size, kernel)


def test_allow_iovas_window(edu_dev: str) -> None:
    """IOMMU_IOAS_ALLOW_IOVAS (an iommufd command) narrows what the allocator hands out."""
    window = IovaRange(0x200000, 0x27FFFF)  # 512 KiB
    with warpdrive.open(edu_dev, backend="iommufd") as dev:
        dev.allow_iovas([window])
        assert dev.dma.iova_ranges() == [window]
        bufs = []
        with pytest.raises(ResourceExhaustedError):
            for _ in range(100):
                bufs.append(dev.dma.alloc(65536))
        assert len(bufs) == 8
        assert all(window.start <= b.iova and b.iova + b.size - 1 <= window.last for b in bufs)
        edu = Edu(dev)  # narrows the mask to 28 bits; the window lies below it
        bufs[3].write(0, b"w" * 4096)
        edu.dma_to_device(bufs[3], size=4096)
        for b in bufs:
            dev.dma.unmap(b)
        dev.allow_iovas(None)
        assert len(dev.dma.iova_ranges()) >= 1 and dev.dma.iova_ranges() != [window]
