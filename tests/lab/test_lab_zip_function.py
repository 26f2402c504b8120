"""The ZIP model as a guest PCI function: served on the host by `warpdrive emu zip`, attached by
QEMU's own vfio-user-pci client (the outside witness of our server), seen by the guest kernel
behind intel-iommu, and opened through the guest's VFIO in every IOMMU mode.

What the function *does* (Linux's hisi_zip and our zip driver against it) is tested elsewhere;
here: QEMU realized it, the guest enumerates it like hardware, and DMA maps made in the guest
reach the model's server as vfio-user DMA_MAP/UNMAP traffic it accepts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import warpdrive
from warpdrive import binding

pytestmark = pytest.mark.lab

PCI = Path("/sys/bus/pci/devices")
QM_BAR = 2  # the QM register BAR of a HiSilicon accelerator function
QM_BAR_SIZE = 0x10000


def test_zip_function_is_enumerated_like_hardware(zip_bdf: str) -> None:
    dev = PCI / zip_bdf
    assert int((dev / "vendor").read_text(), 16) == 0x19E5
    assert int((dev / "device").read_text(), 16) in (0xA250, 0xA251)
    # alone in its IOMMU group, behind the vIOMMU, unbound at boot (hisi_zip is a module)
    group = dev / "iommu_group" / "devices"
    assert sorted(p.name for p in group.iterdir()) == [zip_bdf]
    assert not (dev / "driver").exists()
    # BAR 2: 64 KiB, 64-bit memory (resource line: start end flags)
    start, end, flags = (int(x, 16) for x in (dev / "resource").read_text().splitlines()[QM_BAR]
                         .split())
    assert end - start + 1 == QM_BAR_SIZE and flags & 0x00100000  # IORESOURCE_MEM_64


def test_zip_function_opens_through_guest_vfio(zip_bdf: str, iommu_mode: str) -> None:
    with binding.bound_to(zip_bdf), warpdrive.open(zip_bdf, backend=iommu_mode) as dev:
        assert dev.backend == iommu_mode
        assert (dev.vendor_id, dev.device_id) == (
            int((PCI / zip_bdf / "vendor").read_text(), 16),
            int((PCI / zip_bdf / "device").read_text(), 16))
        assert dev.region_info(QM_BAR).size == QM_BAR_SIZE
        bar = dev.map_bar(QM_BAR)
        bar.read32(0)  # a trapped read: guest vfio-pci -> QEMU -> REGION_READ -> the model
        # Guest IOMMU maps become vfio-user DMA_MAPs (caching mode replays them page by page);
        # several buffers, then unmapped again as the context closes.
        bufs = [dev.dma.alloc(size) for size in (4096, 3 * 4096, 64 * 1024)]
        assert all(b.iova is not None for b in bufs)
