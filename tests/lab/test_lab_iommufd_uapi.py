"""iommufd uAPI newer than 6.12, on both lab kernels (docs/research/iommufd-7.3.md): what 7.3
does, and that 6.12 refuses cleanly and warpdrive falls back.

- IOMMU_IOAS_MAP_FILE: memfd and hugetlbfs buffers are mapped by fd on 7.3 (the kernel then
  checks the memory kind itself); on 6.12 (ENOTTY, asked once per iommufd) by address.
- PASID: the lab's intel-iommu and emulated devices have none; GET_HW_INFO says so (0 bits),
  `warpdrive devices --iommu` shows it. 6.12 refuses PASID HWPTs (EOPNOTSUPP) and attaches
  (EINVAL); 7.3 makes them and attaches a PASID once the device's own domain is PASID-capable
  (it does not check the device can use PASIDs). Real PASID/SVA cannot be shown in this lab.
- I/O page fault queues: allocated on both; 7.3 makes a fault-capable HWPT (6.12: EOPNOTSUPP),
  which edu cannot attach to (ENODEV: no PRI). No emulated device issues page requests.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

import warpdrive
from tests.lab.lab_cli import wd
from warpdrive import binding
from warpdrive.backends.iommufd.cdev import IommufdDevice
from warpdrive.devices.edu import Edu
from warpdrive.errors import UnsupportedError, WarpdriveError
from warpdrive.uapi import iommufd as U

pytestmark = pytest.mark.lab

PAGE = 4096
CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def edu_dev(edu_bdf: str):
    with binding.bound_to(edu_bdf):
        yield edu_bdf


@pytest.fixture
def dev(edu_dev: str):
    with warpdrive.open(edu_dev, backend="iommufd") as d:
        assert isinstance(d, IommufdDevice)
        yield d


def newer(kernel: str) -> bool:
    return kernel != "6.12"


@pytest.mark.parametrize("kind,page", [("memfd", None), ("memfd", 2 << 20)],
                         ids=["memfd", "hugetlbfs-memfd"])
def test_file_backed_buffers_map_by_fd_where_the_kernel_can(dev: IommufdDevice, lab_kernel: str,
                                                            kind: str, page: int | None) -> None:
    edu = Edu(dev)
    size = page or PAGE
    src = dev.dma.alloc(size, kind, page_size=page)
    dst = dev.dma.alloc(size, kind, page_size=page)
    by_fd = [m.by_fd for m in dev.dma.mappings]
    assert by_fd == [newer(lab_kernel)] * 2
    assert dev.ctx.has_map_file is newer(lab_kernel)  # 6.12: ENOTTY once, then by address
    data = os.urandom(PAGE)
    src.write(0, data)
    edu.dma_to_device(src, size=PAGE)
    edu.dma_from_device(dst, size=PAGE)
    assert dst.read(0, PAGE) == data  # the device reached the pages either way
    anon = dev.dma.alloc(PAGE)  # no fd: by address on every kernel
    found = dev.dma.find(anon.addr)
    assert found is not None and not found.by_fd and anon.fd < 0


def test_the_kernel_itself_refuses_a_regular_file(dev: IommufdDevice, lab_kernel: str) -> None:
    """With MAP_FILE the kernel checks the memory kind on its own (memfd_pin_folios takes shmem
    and hugetlbfs only): a file of the root filesystem is refused, device attached."""
    fd = os.open(CHECKOUT / "README.md", os.O_RDONLY)
    try:
        iova = dev.dma.iova_ranges()[0].start + (1 << 30)
        if not newer(lab_kernel):
            with pytest.raises(UnsupportedError, match="no IOMMU_IOAS_MAP_FILE") as ei:
                dev.ctx.map_file(dev.ioas_id, fd, 0, PAGE, iova, writable=False)
            assert ei.value.errno == errno.ENOTTY and dev.ctx.has_map_file is False
            return
        with pytest.raises(WarpdriveError) as ei:
            dev.ctx.map_file(dev.ioas_id, fd, 0, PAGE, iova, writable=False)
        assert ei.value.errno == errno.EINVAL, ei.value
        assert "not memfd/shmem or hugetlbfs" in str(ei.value)
    finally:
        os.close(fd)


def test_pasid_reporting_and_attach(dev: IommufdDevice, lab_kernel: str) -> None:
    info = dev.iommu_info
    assert info.max_pasid_log2 == 0 and info.to_dict()["max_pasid_log2"] == 0  # edu: no PASID
    with pytest.raises(WarpdriveError) as ei:
        # 6.12: attach flags must be 0. 7.3: the RID's domain (the IOAS's) is not PASID-capable.
        dev.attach(dev.ioas_id, pasid=1)
    assert ei.value.errno == errno.EINVAL and "PASID" in str(ei.value)
    assert dev.pasid_hwpts == {} and dev.hwpt_id is not None  # the RID attachment is untouched
    if not newer(lab_kernel):
        with pytest.raises(WarpdriveError) as ei:  # 6.12: an unknown HWPT flag
            dev.alloc_hwpt(U.IOMMU_HWPT_ALLOC_PASID)
        assert ei.value.errno == errno.EOPNOTSUPP
        return
    # 7.3: a PASID-capable domain, on the RID first, then on PASID 1 too. The kernel does not
    # check PASID support for a device without the capability (docs/research/iommufd-7.3.md §5),
    # so this succeeds although edu can never issue a request with a PASID.
    assert "ats-not-supported" in info.capability_names()
    hwpt = dev.alloc_hwpt(U.IOMMU_HWPT_ALLOC_PASID)
    assert dev.attach(hwpt) == hwpt
    assert dev.attach(hwpt, pasid=1) == hwpt and dev.pasid_hwpts == {1: hwpt}
    dev.detach(pasid=1)
    assert dev.pasid_hwpts == {} and dev.hwpt_id == hwpt


def test_fault_queue_allocates_but_this_device_takes_no_page_faults(dev: IommufdDevice,
                                                                    lab_kernel: str) -> None:
    fault_id, fault_fd = dev.ctx.fault_queue_alloc()  # both kernels (6.11+)
    try:
        assert fault_id > 0 and fault_fd >= 0
        if not newer(lab_kernel):
            with pytest.raises(WarpdriveError) as ei:  # 6.12's VT-d: no fault-capable domains
                dev.alloc_hwpt(U.IOMMU_HWPT_FAULT_ID_VALID, fault_id=fault_id)
            assert ei.value.errno == errno.EOPNOTSUPP
            return
        hwpt = dev.alloc_hwpt(U.IOMMU_HWPT_FAULT_ID_VALID, fault_id=fault_id)
        with pytest.raises(WarpdriveError) as ei:  # edu cannot issue page requests (no PRI)
            dev.attach(hwpt)
        assert ei.value.errno == errno.ENODEV
        assert dev.attach() > 0  # back on its IOAS, still usable
    finally:
        os.close(fault_fd)


def test_devices_command_shows_the_iommu_behind_vfio_functions(edu_dev: str) -> None:
    proc = wd("devices", "--iommu", "--json", edu_dev)
    assert proc.returncode == 0, proc.stderr
    hw = json.loads(proc.stdout)["iommu_hw"]
    assert hw[edu_dev]["type"] == "intel-vtd" and hw[edu_dev]["max_pasid_log2"] == 0
    proc = wd("devices", "--iommu", edu_dev)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    row = next(ln for ln in text.splitlines() if ln.startswith(edu_dev) and "intel-vtd" in ln)
    assert row.split()[2] == "none"  # PASID column
