"""iommufd-only features on the real guest kernel and QEMU's intel-iommu: hardware info, an
explicit HWPT the device is attached to instead of the IOAS, detach / re-attach."""

from __future__ import annotations

import os

import pytest

import warpdrive
from warpdrive import binding
from warpdrive.backends.iommufd.cdev import IommufdDevice
from warpdrive.devices.edu import Edu
from warpdrive.uapi.iommufd import IOMMU_HW_INFO_TYPE_INTEL_VTD

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def edu_dev(edu_bdf: str):
    with binding.bound_to(edu_bdf):
        yield edu_bdf


def round_trip(dev: warpdrive.Device, edu: Edu) -> bool:
    src, dst = dev.dma.alloc(4096), dev.dma.alloc(4096)
    data = os.urandom(4096)
    src.write(0, data)
    edu.dma_to_device(src)
    edu.dma_from_device(dst)
    ok = dst.read() == data
    dev.dma.unmap(src)
    dev.dma.unmap(dst)
    return ok


def test_hw_info_reports_the_vtd_registers(edu_dev: str) -> None:
    with warpdrive.open(edu_dev, backend="iommufd") as dev:
        assert isinstance(dev, IommufdDevice)
        info = dev.iommu_info
        assert info.type == IOMMU_HW_INFO_TYPE_INTEL_VTD and info.type_name == "intel-vtd"
        assert info.vtd_cap_reg and info.vtd_ecap_reg
        s = info.vtd_summary()
        # lab/vm.py starts QEMU with intel-iommu,caching-mode=on and the default aw-bits=48
        assert s["caching_mode"] is True and s["mgaw"] == 48
        assert info.max_pasid_log2 == 0  # no scalable mode in the lab: no PASID
        print("IOMMU:", info.describe(), s)


def test_explicit_hwpt_attach_and_detach(edu_dev: str) -> None:
    with warpdrive.open(edu_dev, backend="iommufd") as dev:
        assert isinstance(dev, IommufdDevice)
        edu = Edu(dev)
        auto = dev.hwpt_id
        assert auto is not None
        hwpt = dev.alloc_hwpt()
        assert hwpt != auto
        assert dev.attach(hwpt) == hwpt == dev.hwpt_id
        assert round_trip(dev, edu)  # DMA through the explicit page table (filled from the IOAS)
        dev.detach()
        assert dev.hwpt_id is None
        got = dev.attach()  # back to the IOAS: the kernel picks (or makes) a domain
        assert got == dev.hwpt_id and got is not None
        assert round_trip(dev, edu)
        assert dev.dma.kernel_iova_ranges()
