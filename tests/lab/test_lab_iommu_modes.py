"""The kernel VFIO selftests' IOMMU matrix through warpdrive's API, on every lab kernel.

Every case of tools/testing/selftests/vfio/vfio_dma_mapping_test.c runs here in each of its five
IOMMU modes (docs/research/vfio-selftests.md §1-2): `backend=` takes the selftests' mode names,
and `Device.iommu_mode` reports them. The cases of vfio_iommufd_setup_test.c (§3), which exist for
the VFIO cdev only, follow. QEMU's edu is the device (its own DMA engine checks the mappings
really reach it); binding happens inside the guest only.
"""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

import warpdrive
from warpdrive import binding
from warpdrive import syscalls as sc
from warpdrive.backends import IOMMU_MODES
from warpdrive.backends.iommufd.cdev import IommufdDevice, cdev_name
from warpdrive.backends.iommufd.ctx import IommufdContext
from warpdrive.devices.edu import Edu
from warpdrive.dma import DmaMapping
from warpdrive.errors import DeviceBusyError, InvalidArgumentError, WarpdriveError
from warpdrive.memory import DmaBuffer, MemoryKind
from warpdrive.uapi import vfio as V

pytestmark = pytest.mark.lab

PAGE = 4096
TOP_PAGE = 0xFFFF_FFFF_FFFF_F000  # the overflow case's IOVA: two pages from here wrap


@pytest.fixture(scope="module")
def edu_dev(edu_bdf: str):
    with binding.bound_to(edu_bdf):
        yield edu_bdf


@pytest.fixture(params=IOMMU_MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """One of the selftests' five IOMMU modes (tests/.../lib/iommu.c names)."""
    return str(request.param)


def overflow_errno(mode: str, kernel: str) -> int:
    """What the kernel answers a wrapping map/unmap with (vfio-selftests.md §2.3): VFIO's own
    type1 gave EINVAL before 7.x, every iommufd path EOVERFLOW."""
    return errno.EINVAL if mode.startswith("vfio_type1") and kernel == "6.12" else errno.EOVERFLOW


def test_each_mode_opens_as_named_and_does_dma(edu_dev: str, mode: str) -> None:
    with warpdrive.open(edu_dev, backend=mode) as dev:
        assert dev.iommu_mode == mode
        assert dev.backend == ("iommufd" if mode == "iommufd" else "vfio")
        if mode != "iommufd":
            container = dev.container  # type: ignore[attr-defined]
            assert container.mode.path == ("/dev/iommu" if mode.startswith("iommufd_compat")
                                           else "/dev/vfio/vfio")
        edu = Edu(dev)
        src, dst = dev.dma.alloc(PAGE), dev.dma.alloc(PAGE)
        data = os.urandom(PAGE)
        src.write(0, data)
        edu.dma_to_device(src)
        edu.dma_from_device(dst)
        assert dst.read() == data  # the device really went through this mode's page tables


@pytest.mark.parametrize("kind", ["anonymous", "anonymous_hugetlb_2mb", "anonymous_hugetlb_1gb"])
def test_dma_map_unmap(edu_dev: str, mode: str, kind: str) -> None:
    """vfio_dma_mapping_test.dma_map_unmap: map, the VA translates to the IOVA, unmap returns
    the whole size, and the VA no longer translates."""
    size, mkind, page = {"anonymous": (PAGE, MemoryKind.ANONYMOUS, None),
                         "anonymous_hugetlb_2mb": (2 << 20, MemoryKind.HUGETLB, 2 << 20),
                         "anonymous_hugetlb_1gb": (1 << 30, MemoryKind.HUGETLB, 1 << 30)}[kind]
    try:
        buf = DmaBuffer.allocate(size, mkind, page_size=page)
    except WarpdriveError as e:  # as the selftest: no such huge pages reserved -> skip
        pytest.skip(f"no {kind} memory in the lab guest: {e}")
    with buf, warpdrive.open(edu_dev, backend=mode) as dev:
        m = dev.dma.map(buf)
        assert m.iova % size == 0  # aligned to the page size, so the IOMMU can use huge pages
        assert dev.dma.iova_of(buf.addr + size - 1) == m.iova + size - 1
        assert dev.dma.unmap(buf) == size  # the kernel's own count, checked against ours
        with pytest.raises(InvalidArgumentError, match="not inside any DMA mapping"):
            dev.dma.iova_of(buf.addr)
        # the kernel agrees: the same IOVA maps again
        dev.dma.map(buf, iova=m.iova)


def last_page(dev: warpdrive.Device) -> int:
    """The selftests' limit fixture: the last page of the last IOVA range the kernel reports."""
    return dev.dma.kernel_iova_ranges()[-1].last & ~(PAGE - 1)


def test_dma_map_limit_unmap_range(edu_dev: str, mode: str) -> None:
    with warpdrive.open(edu_dev, backend=mode) as dev:
        buf = dev.dma.alloc(PAGE, iova=last_page(dev))
        assert buf.iova == last_page(dev)
        assert dev.dma.iova_of(buf.addr) == buf.iova
        assert dev.dma.unmap(buf) == PAGE


def test_dma_map_limit_unmap_all(edu_dev: str, mode: str) -> None:
    with warpdrive.open(edu_dev, backend=mode) as dev:
        dev.dma.alloc(PAGE, iova=last_page(dev))
        assert dev.dma.unmap_all() == PAGE  # one kernel call: FLAG_ALL / IOAS_UNMAP 0..U64_MAX
        assert dev.dma.mappings == []
        two = [dev.dma.alloc(PAGE), dev.dma.alloc(3 * PAGE)]
        assert dev.dma.unmap_all() == 4 * PAGE and all(b.iova is None for b in two)


def test_dma_map_limit_overflow(edu_dev: str, mode: str, lab_kernel: str) -> None:
    """A range at the top of the 64-bit space that wraps: warpdrive refuses it before the kernel
    sees it; the backend's own map/unmap calls get the kernel's refusal, errno as the selftest
    expects for this mode and kernel."""
    with warpdrive.open(edu_dev, backend=mode) as dev:
        buf = DmaBuffer.allocate(2 * PAGE)
        with buf:
            with pytest.raises(InvalidArgumentError):
                dev.dma.map(buf, iova=TOP_PAGE)
            assert dev.dma.mappings == []
            wrap = DmaMapping(iova=TOP_PAGE, addr=buf.addr, size=2 * PAGE, writable=True,
                              kind=MemoryKind.ANONYMOUS)
            want = overflow_errno(mode, lab_kernel)
            with pytest.raises(WarpdriveError) as ei:
                dev.dma._do_map(wrap)  # the backend's ioctl, without warpdrive's own checks
            assert ei.value.errno == want, ei.value
            with pytest.raises(WarpdriveError) as ei:
                dev.dma._do_unmap(wrap)
            assert ei.value.errno == want, ei.value


# -- vfio_iommufd_setup_test: the VFIO cdev's bind/attach contract --------------------------------


def open_cdev(bdf: str) -> int:
    return sc.open_dev(f"/dev/vfio/devices/{cdev_name(bdf)}", what="open the VFIO cdev")


def bind(device_fd: int, iommufd: int) -> V.vfio_device_bind_iommufd:
    arg = V.vfio_device_bind_iommufd(argsz=ctypes.sizeof(V.vfio_device_bind_iommufd),
                                     iommufd=iommufd)
    sc.ioctl(device_fd, V.VFIO_DEVICE_BIND_IOMMUFD, arg, what="VFIO_DEVICE_BIND_IOMMUFD")
    return arg


@pytest.fixture
def cdev(edu_dev: str):
    """The selftest's fixture: the device cdev and /dev/iommu, both open, nothing bound."""
    fd = open_cdev(edu_dev)
    ctx = IommufdContext()
    yield fd, ctx
    os.close(fd)
    ctx.close()


def test_iommufd_setup_bind(cdev) -> None:
    fd, ctx = cdev
    assert bind(fd, ctx.fd).out_devid > 0
    info = V.vfio_device_info(argsz=ctypes.sizeof(V.vfio_device_info))
    sc.ioctl(fd, V.VFIO_DEVICE_GET_INFO, info, what="VFIO_DEVICE_GET_INFO")
    assert info.flags & V.VFIO_DEVICE_FLAGS_PCI


def test_iommufd_setup_get_info_without_bind_fails(cdev) -> None:
    fd, _ = cdev
    info = V.vfio_device_info(argsz=ctypes.sizeof(V.vfio_device_info))
    with pytest.raises(WarpdriveError) as ei:
        sc.ioctl(fd, V.VFIO_DEVICE_GET_INFO, info, what="VFIO_DEVICE_GET_INFO")
    assert ei.value.errno == errno.EINVAL


def test_iommufd_setup_bind_bad_iommufd_fails(cdev) -> None:
    fd, _ = cdev
    with pytest.raises(WarpdriveError) as ei:
        bind(fd, -2)
    assert ei.value.errno == errno.EINVAL


def test_iommufd_setup_repeated_bind_fails(cdev, edu_dev: str) -> None:
    fd, ctx = cdev
    bind(fd, ctx.fd)
    with pytest.raises(WarpdriveError) as ei:
        bind(fd, ctx.fd)
    assert ei.value.errno == errno.EINVAL
    # and warpdrive's open of the same device says why, in one line
    with pytest.raises(DeviceBusyError, match="already open"):
        warpdrive.open(edu_dev, backend="iommufd")


def test_iommufd_setup_attach_detach_pt(edu_dev: str) -> None:
    with warpdrive.open(edu_dev, backend="iommufd") as dev:
        assert isinstance(dev, IommufdDevice)
        ioas = dev.ctx.ioas_alloc()
        dev.detach()
        assert dev.attach(ioas) > 0  # a fresh IOAS: the kernel makes its domain
        dev.detach()
        assert dev.hwpt_id is None
        dev.attach()  # back to the device's own IOAS, as warpdrive set it up
        dev.ctx.destroy(ioas)


def test_iommufd_setup_attach_invalid_pt_fails(edu_dev: str) -> None:
    with warpdrive.open(edu_dev, backend="iommufd") as dev:
        assert isinstance(dev, IommufdDevice)
        with pytest.raises(WarpdriveError) as ei:
            dev.attach(0xFFFF_FFFF)
        assert ei.value.errno == errno.ENOENT
