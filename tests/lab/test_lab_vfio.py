"""The VFIO device-fd layer on the real guest kernel, in both IOMMU modes, with QEMU's edu:
regions and capabilities, config space, interrupts (MSI and INTx with unmask), reset and hot-reset
info, busy handling, fork safety, close/reopen, held mappings, and legacy-only container facts."""

from __future__ import annotations

import fcntl
import os

import pytest

import warpdrive
from warpdrive import binding
from warpdrive.devices import edu as E
from warpdrive.errors import (
    ClosedError,
    DeviceBusyError,
    ForkedContextError,
    NotBoundError,
    UnsupportedError,
)
from warpdrive.memory.smaps import read_smaps
from warpdrive.uapi import pci_regs as R
from warpdrive.uapi import vfio as U

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def edu_dev(edu_bdf: str):
    with binding.bound_to(edu_bdf):
        yield edu_bdf


def vm_flags_at(addr: int) -> set[str]:
    for m in read_smaps():
        if m.start <= addr < m.end:
            return set(m.vm_flags)
    raise AssertionError(f"{addr:#x} is not mapped")


def test_regions_and_config_space(edu_dev: str, iommu_mode: str) -> None:
    with warpdrive.open(edu_dev, backend=iommu_mode) as dev:
        assert dev.num_regions >= U.VFIO_PCI_NUM_REGIONS
        bar0 = dev.region_info(U.VFIO_PCI_BAR0_REGION_INDEX)
        assert bar0.size == 1 << 20 and bar0.readable and bar0.writable and bar0.mappable
        assert bar0.sparse_areas is None  # no MSI-X table to cut out
        assert dev.region_info(U.VFIO_PCI_BAR1_REGION_INDEX).size == 0
        cfg = dev.region_info(U.VFIO_PCI_CONFIG_REGION_INDEX)
        assert cfg.readable and not cfg.mappable
        assert (dev.vendor_id, dev.device_id, dev.revision) == (0x1234, 0x11E8, 0x10)
        caps = dict(dev.capabilities())
        assert R.PCI_CAP_ID_MSI in caps and R.PCI_CAP_ID_MSIX not in caps
        assert dev.msix_table() is None
        dev.enable_bus_master()
        assert dev.config_read16(R.PCI_COMMAND) & R.PCI_COMMAND_MASTER
        dev.enable_bus_master(False)
        assert not dev.config_read16(R.PCI_COMMAND) & R.PCI_COMMAND_MASTER


def test_irq_info_msi_and_intx_unmask(edu_dev: str, iommu_mode: str) -> None:
    with warpdrive.open(edu_dev, backend=iommu_mode) as dev:
        msi = dev.irq_info(U.VFIO_PCI_MSI_IRQ_INDEX)
        assert msi.count == 1 and msi.eventfd
        assert dev.irq_info(U.VFIO_PCI_MSIX_IRQ_INDEX).count == 0
        intx = dev.irq_info(U.VFIO_PCI_INTX_IRQ_INDEX)
        assert intx.count == 1 and intx.automasked and intx.maskable
        with pytest.raises(UnsupportedError):
            dev.enable_irqs(U.VFIO_PCI_MSIX_IRQ_INDEX)

        bar = dev.map_bar(0)
        bar.write32(E.REG_IRQ_ACK, 0xFFFFFFFF)  # no interrupt status left over from earlier users
        (line,) = dev.enable_irqs(U.VFIO_PCI_INTX_IRQ_INDEX)
        dbg = []
        for _ in range(2):  # the second one only arrives if unmask worked
            dbg.append(line.poll())
            bar.write32(E.REG_IRQ_RAISE, 0x1000)
            dbg.append(line.wait(5.0))
            dbg.append(line.poll())
            bar.write32(E.REG_IRQ_ACK, 0x1000)  # deassert the level
            dbg.append(line.poll())
            line.unmask()
            dbg.append(line.poll())
        assert line.poll() == 0, dbg
        dev.disable_irqs(U.VFIO_PCI_INTX_IRQ_INDEX)

        # an MSI is a memory write by the device: QEMU drops it unless bus mastering is on
        dev.enable_bus_master()
        (vec,) = dev.enable_irqs(U.VFIO_PCI_MSI_IRQ_INDEX, 1)
        bar.write32(E.REG_IRQ_RAISE, 0x2000)
        assert vec.wait(5.0) >= 1
        bar.write32(E.REG_IRQ_ACK, 0x2000)


def test_reset_and_hot_reset_info(edu_dev: str, iommu_mode: str) -> None:
    with warpdrive.open(edu_dev, backend=iommu_mode) as dev:
        flags = dev.device_flags
        assert dev.reset_supported == bool(flags & U.VFIO_DEVICE_FLAGS_RESET)
        if dev.reset_supported:
            dev.reset()
        else:  # edu has no FLR/PM reset and sits on the root bus: nothing to reset with
            with pytest.raises(UnsupportedError):
                dev.reset()
        try:
            deps = dev.hot_reset_info()
        except UnsupportedError as e:  # integrated endpoint: no slot or bus reset
            assert "hot reset" in str(e)
        else:
            assert edu_dev in [d.bdf for d in deps]


def test_second_open_is_busy_then_reopens(edu_dev: str, iommu_mode: str) -> None:
    other = "vfio" if iommu_mode == "iommufd" else "iommufd"
    dev = warpdrive.open(edu_dev, backend=iommu_mode)
    try:
        for backend in (iommu_mode, other):
            with pytest.raises(DeviceBusyError) as busy:
                warpdrive.open(edu_dev, backend=backend)
            msg = str(busy.value)
            assert "already open" in msg and "close" in msg, msg
    finally:
        dev.close()
    assert dev.closed
    with warpdrive.open(edu_dev, backend=iommu_mode) as again:
        assert again.config_read16(R.PCI_VENDOR_ID) == 0x1234


def test_not_bound_device_is_refused(crypto_bdf: str, iommu_mode: str) -> None:
    """virtio-crypto stays on virtio-pci in the lab: opening it must say so, not crash."""
    with pytest.raises(NotBoundError) as e:
        warpdrive.open(crypto_bdf, backend=iommu_mode)
    assert "vfio-pci" in str(e.value)


def test_fds_are_cloexec_and_mappings_dontfork(edu_dev: str, iommu_mode: str) -> None:
    with warpdrive.open(edu_dev, backend=iommu_mode) as dev:
        fds = dev.fds()
        assert set(fds) == ({"device", "group", "container"} if iommu_mode == "vfio"
                            else {"device", "iommufd"})
        for name, fd in fds.items():
            assert fd >= 0 and fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, name
        (irq,) = dev.enable_irqs(U.VFIO_PCI_MSI_IRQ_INDEX, 1)
        assert fcntl.fcntl(irq.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        bar = dev.map_bar(0)
        buf = dev.dma.alloc(8192)
        assert "dc" in vm_flags_at(buf.addr)
        bar_addr = bar._windows[0].addr
        flags = vm_flags_at(bar_addr)
        assert "dc" in flags and ("io" in flags or "pf" in flags)


def test_forked_child_cannot_use_device(edu_dev: str, iommu_mode: str) -> None:
    with warpdrive.open(edu_dev, backend=iommu_mode) as dev:
        edu = E.Edu(dev)
        buf = dev.dma.alloc(4096)
        payload = os.urandom(4096)
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: every use must raise ForkedContextError
            os.close(rfd)
            results = []
            for name, use in (("config", lambda: dev.config_read16(0)),
                              ("bar", lambda: edu.bar.read32(E.REG_ID)),
                              ("buffer", lambda: buf.read(0, 4)),
                              ("dma", lambda: dev.dma.alloc(4096)),
                              ("irq", lambda: edu.irq.poll())):
                try:
                    use()
                    results.append(f"{name}:no-error")
                except ForkedContextError:
                    results.append(f"{name}:forked")
                except BaseException as e:
                    results.append(f"{name}:{type(e).__name__}")
            fds_closed = all(fd < 0 for fd in dev.fds().values())
            results.append(f"fds-closed:{fds_closed}")
            os.write(wfd, " ".join(results).encode())
            os._exit(0)
        os.close(wfd)
        with os.fdopen(rfd) as r:
            report = r.read()
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        assert report.split() == ["config:forked", "bar:forked", "buffer:forked", "dma:forked",
                                  "irq:forked", "fds-closed:True"]
        # the parent's device is untouched
        buf.write(0, payload)
        edu.dma_to_device(buf)
        buf.write(0, b"\0" * 4096)
        edu.dma_from_device(buf)
        assert buf.read() == payload


def test_held_mapping_cannot_be_unmapped(edu_dev: str, iommu_mode: str) -> None:
    with warpdrive.open(edu_dev, backend=iommu_mode) as dev:
        buf = dev.dma.alloc(4096)
        queue = object()
        dev.dma.hold(buf, queue, "test queue 0")
        with pytest.raises(DeviceBusyError) as e:
            dev.dma.unmap(buf)
        assert "test queue 0" in str(e.value)
        dev.dma.release(buf, queue)
        dev.dma.unmap(buf)
        assert buf.iova is None


def test_legacy_container_accounting(edu_dev: str) -> None:
    """type1 container facts (DMA_AVAIL, page sizes) exist only in legacy mode."""
    with warpdrive.open(edu_dev, backend="vfio") as dev:
        before = dev.dma.dma_avail
        assert isinstance(before, int) and before > 0
        bufs = [dev.dma.alloc(4096) for _ in range(3)]
        assert dev.dma.dma_avail == before - 3
        for b in bufs:
            dev.dma.unmap(b)
        assert dev.dma.dma_avail == before
        assert dev.dma.pgsizes & 0x1000
        assert dev.iommu_info is None


def test_auto_backend_prefers_iommufd(edu_dev: str) -> None:
    assert os.path.exists("/dev/iommu") and os.path.isdir(
        f"/sys/bus/pci/devices/{edu_dev}/vfio-dev")
    with warpdrive.open(edu_dev) as dev:
        assert dev.backend == "iommufd"
    with warpdrive.open(edu_dev, backend="vfio") as dev:
        assert dev.backend == "vfio"


def test_legacy_container_shared_across_groups(edu_dev: str, crypto_bdf: str) -> None:
    """Two functions in different IOMMU groups, one (legacy) container: one DMA space for both;
    the container outlives the first device closed."""
    with binding.bound_to(crypto_bdf):
        a = warpdrive.open(edu_dev, backend="vfio")
        try:
            b = warpdrive.open(crypto_bdf, backend="vfio", share_with=a)
            try:
                assert b.dma is a.dma and b.container.fd == a.container.fd
                assert a.group.group != b.group.group
                edu = E.Edu(a)
                buf = a.dma.alloc(4096)
                data = os.urandom(4096)
                buf.write(0, data)
                edu.dma_to_device(buf)
                a.close()
                assert b.config_read16(R.PCI_VENDOR_ID) == 0x1AF4
                assert b.dma.find(buf.addr) is not None  # the shared mapping is still there
                extra = b.dma.alloc(4096)
                assert extra.iova is not None
            finally:
                b.close()
        finally:
            a.close()
    with warpdrive.open(edu_dev, backend="vfio") as again:  # everything was released
        assert again.dma.mappings == []


def test_close_releases_everything(edu_dev: str, iommu_mode: str) -> None:
    dev = warpdrive.open(edu_dev, backend=iommu_mode)
    with dev:
        bufs = [dev.dma.alloc(4096) for _ in range(3)]
        mapped_elsewhere = warpdrive.DmaBuffer.allocate(4096)
        dev.dma.map(mapped_elsewhere)
        bar = dev.map_bar(0)
        (irq,) = dev.enable_irqs(U.VFIO_PCI_MSI_IRQ_INDEX, 1)
    assert dev.closed and all(b.closed for b in bufs)
    assert mapped_elsewhere.iova is None and not mapped_elsewhere.closed  # unmapped, still ours
    mapped_elsewhere.close()
    assert irq.fileno() == -1 and all(fd == -1 for fd in dev.fds().values())
    with pytest.raises(ClosedError):
        bar.read32(0)
    with pytest.raises(ClosedError):
        dev.config_read16(0)
    with warpdrive.open(edu_dev, backend=iommu_mode) as again:
        assert again.dma.mappings == []
