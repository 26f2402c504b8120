"""Pure parts of the iommufd backend: range intersection (for IOMMU_IOAS_ALLOW_IOVAS) and VT-d
register decoding. The kernel paths are lab tests (tests/lab/test_lab_iommufd*.py)."""

from __future__ import annotations

from warpdrive.backends.iommufd.ctx import HwInfo
from warpdrive.backends.iommufd.ioas import intersect
from warpdrive.iova import IovaAllocator, IovaRange
from warpdrive.uapi.iommufd import IOMMU_HW_CAP_DIRTY_TRACKING, IOMMU_HW_INFO_TYPE_INTEL_VTD


def test_intersect_with_allowed_window():
    kernel = [IovaRange(0, 0xFEDFFFFF), IovaRange(0xFEF00000, (1 << 48) - 1)]
    assert intersect(kernel, [IovaRange(0x100000, 0x1FFFFF)]) == [IovaRange(0x100000, 0x1FFFFF)]
    # a window straddling the reserved MSI hole keeps only the usable parts
    assert intersect(kernel, [IovaRange(0xFE000000, 0xFF000000)]) == [
        IovaRange(0xFE000000, 0xFEDFFFFF), IovaRange(0xFEF00000, 0xFF000000)]
    assert intersect(kernel, [IovaRange(0xFEE00000, 0xFEEFFFFF)]) == []


def test_allocator_stays_inside_intersection():
    usable = intersect([IovaRange(0, (1 << 48) - 1)], [IovaRange(0x100000, 0x13FFFF)])
    alloc = IovaAllocator(usable, dma_mask=(1 << 28) - 1)
    got = [alloc.alloc(0x1000) for _ in range(64)]
    assert all(g >= 0x100000 and g + 0xFFF <= 0x13FFFF for g in got)


def test_vtd_summary_decodes_registers():
    # cap: MGAW 48 (field 47), SAGAW 39+48-bit (bits 1,2), caching mode; ecap: PT, SC, PASID, SMTS
    cap = (47 << 16) | (0b00110 << 8) | (1 << 7)
    ecap = (1 << 6) | (1 << 7) | (1 << 40) | (1 << 43)
    hw = HwInfo(IOMMU_HW_INFO_TYPE_INTEL_VTD, IOMMU_HW_CAP_DIRTY_TRACKING, 20, cap, ecap, 0)
    s = hw.vtd_summary()
    assert s["mgaw"] == 48 and s["sagaw"] == 0b110 and s["caching_mode"]
    assert s["pass_through"] and s["snoop_control"] and s["pasid"] and s["scalable_mode"]
    assert not s["nested"]
    assert hw.type_name == "intel-vtd" and hw.dirty_tracking and hw.pasid_bits == 20
    assert "cap_reg" in hw.describe()
