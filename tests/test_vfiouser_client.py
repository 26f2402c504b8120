"""The vfio-user client backend end to end against the bundled `testdev` model, each test with its
own model process (started by the launcher) over a real UNIX socket: the same Device/DmaSpace
interfaces as the kernel backends, mapped vs message doorbells, DMA, interrupts, faults, reset,
server death and fork."""

from __future__ import annotations

import errno
import os
import signal
import struct
import time
from collections.abc import Iterator

import pytest

from warpdrive.backends.vfiouser.client import VfioUserDevice
from warpdrive.backends.vfiouser.launcher import open_emulated
from warpdrive.device import Device
from warpdrive.emu.models import testdev as T
from warpdrive.errors import (
    ConnectionLostError,
    DeviceTimeoutError,
    ForkedContextError,
    InvalidArgumentError,
    UnsafeMemoryError,
    WarpdriveError,
)
from warpdrive.memory import DmaBuffer, MemoryKind, inspect_dma_memory
from warpdrive.mmio import Mmio
from warpdrive.uapi import pci_regs as R
from warpdrive.uapi import vfio_user as P
from warpdrive.uapi.vfio import (
    VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
)


@pytest.fixture
def dev() -> Iterator[VfioUserDevice]:
    d = open_emulated("testdev")
    yield d
    d.close()


class Ring:
    """Drives testdev's descriptor ring the way a plugin would."""

    def __init__(self, dev: Device, size: int = 8) -> None:
        self.dev = dev
        self.size = size
        self.bar: Mmio = dev.map_bar(0)
        dev.enable_bus_master()
        self.ring = dev.dma.alloc(size * T.DESC_SIZE)
        self.bar.write64(T.REG_RING_BASE, self.ring.iova)
        self.bar.write32(T.REG_RING_SIZE, size)
        self.doorbell = self.bar.doorbell(T.DOORBELL_TAIL, 64)
        self.tail = 0

    def submit(self, src: int, dst: int, length: int, irq_vector: int | None = None) -> int:
        slot = (self.tail % self.size) * T.DESC_SIZE
        flags = 0 if irq_vector is None else T.DESC_IRQ | (irq_vector << 8)
        self.ring.write(slot, T.DESC.pack(src, dst, length, flags, 0, 0))
        self.tail += 1
        self.doorbell.ring(self.tail)
        return slot

    def status(self, slot: int) -> int:
        return int.from_bytes(self.ring.view[slot + 24:slot + 28], "little")

    def wait(self, slot: int, timeout: float = 5.0) -> int:
        """Poll the descriptor's status word in our own memory (no syscall, no message)."""
        deadline = time.monotonic() + timeout
        while not (st := self.status(slot)):
            assert time.monotonic() < deadline, "testdev did not complete the descriptor"
        return st


def reg(dev: Device, off: int, width: int = 4) -> int:
    return int.from_bytes(dev.region_read(0, off, width), "little")


def test_device_identity_regions_and_caps(dev: VfioUserDevice) -> None:
    assert dev.backend == "vfio-user" and dev.name == "emu:testdev"
    assert (dev.vendor_id, dev.device_id, dev.revision) == (0x1234, 0x7E57, 1)
    assert [c for c, _ in dev.capabilities()] == [R.PCI_CAP_ID_MSI, R.PCI_CAP_ID_MSIX]
    # 9 PCI regions + warpdrive's control region (our client asks for it; QEMU sees 9)
    assert dev.num_regions == 10 and dev.num_irqs == 5 and dev.reset_supported
    bar0 = dev.region_info(0)
    assert (bar0.size, bar0.mappable, bar0.sparse_areas) == (0x3000, True, ((0x1000, 0x1000),))
    bar2 = dev.region_info(2)
    assert (bar2.size, bar2.mappable, bar2.sparse_areas) == (0x1000, False, None)
    assert dev.region_info(VFIO_PCI_CONFIG_REGION_INDEX).size == 256
    assert dev.region_info(1).size == 0
    assert dev.msix_table() == (0, T.MSIX_TABLE, T.MSIX_VECTORS * 16)
    assert dev.irq_info(VFIO_PCI_MSIX_IRQ_INDEX).count == 4
    intx = dev.irq_info(VFIO_PCI_INTX_IRQ_INDEX)
    assert intx.count == 1 and intx.maskable and intx.automasked


def test_region_read_write(dev: VfioUserDevice) -> None:
    for off, data in ((0, b"\x5a"), (2, b"\x01\x02"), (4, b"abcd"), (8, os.urandom(8)),
                      (100, os.urandom(300)), (0x200, os.urandom(0xE00))):
        dev.region_write(2, off, data)
        assert dev.region_read(2, off, len(data)) == data
    with pytest.raises(InvalidArgumentError):
        dev.region_read(2, 0xFFE, 4)  # checked client-side against the region size
    assert reg(dev, T.REG_ID) == T.ID_VALUE
    bar = dev.map_bar(0)
    bar.write32(T.REG_SCRATCH, 0xCAFEF00D)
    assert bar.read32(T.REG_SCRATCH) == 0xCAFEF00D and bar.read16(T.REG_SCRATCH + 2) == 0xCAFE
    # the MSI-X table is trapped and emulated by the framework
    bar.write32(T.MSIX_TABLE + 16 + 8, 0x4321)
    assert bar.read32(T.MSIX_TABLE + 16 + 8) == 0x4321
    assert bar.read32(T.MSIX_TABLE + 12) == 1  # vectors start masked


def test_server_errors_carry_the_servers_errno(dev: VfioUserDevice) -> None:
    with pytest.raises(WarpdriveError) as ei:
        dev.conn.request(P.VFIO_USER_DEVICE_GET_REGION_INFO,
                         bytes(P.vfio_region_info(argsz=32, index=40)), what="region 40")
    assert ei.value.errno == errno.EINVAL
    assert "refused VFIO_USER_DEVICE_GET_REGION_INFO (region 40)" in str(ei.value)
    assert dev.vendor_id == 0x1234  # the connection is still fine


def test_config_space_emulation_over_the_wire(dev: VfioUserDevice) -> None:
    dev.config_write32(R.PCI_BASE_ADDRESS_0, 0xFFFF_FFFF)
    assert dev.config_read32(R.PCI_BASE_ADDRESS_0) == 0xFFFF_C000  # 12 KiB decodes as 16 KiB
    dev.config_write16(R.PCI_VENDOR_ID, 0)
    assert dev.vendor_id == 0x1234
    dev.enable_bus_master()
    assert dev.config_read16(R.PCI_COMMAND) & R.PCI_COMMAND_MASTER


def test_mapped_doorbell_reaches_the_model_without_a_message(dev: VfioUserDevice) -> None:
    ring = Ring(dev)
    assert ring.bar.mapped_windows == [(0x1000, 0x1000)]
    assert ring.doorbell.mapped
    src = dev.dma.alloc(4096)
    dst = dev.dma.alloc(4096)
    payload = os.urandom(4096)
    src.write(0, payload)
    before = reg(dev, T.REG_MSG_COUNT)
    kicks = dev.kicks
    slot = ring.submit(src.iova, dst.iova, 4096)
    assert ring.wait(slot) == T.STATUS_DONE
    assert ring.bar.read64(T.DOORBELL_HEAD) == 1  # the model's shadow, read through the mapping
    after = reg(dev, T.REG_MSG_COUNT)
    # Only the read of MSG_COUNT itself: the doorbell store sent nothing. (If the server had
    # gone idle and said so in its control page, the store is followed by one wake-up kick.)
    assert after == before + 1 + (dev.kicks - kicks)
    assert dst.read(0, 4096) == payload
    for _ in range(20):  # back to back
        assert ring.wait(ring.submit(src.iova, dst.iova, 64)) == T.STATUS_DONE
    assert reg(dev, T.REG_COMPLETED, 8) == 21


def test_buffers_are_not_prefaulted_and_the_model_shares_their_pages(dev: VfioUserDevice) -> None:
    """The space leaves a memfd's pages to first touch (populating them cost ~2 us a page on
    the caller's thread before its first job): what the model writes into untouched pages
    is what this process reads."""
    ring = Ring(dev)
    src, dst = dev.dma.alloc(256 << 10), dev.dma.alloc(256 << 10)
    rss = [sum(m.fields.get("Rss", 0) for m in inspect_dma_memory(b.addr, b.size).mappings)
           for b in (src, dst)]
    assert rss == [0, 0]
    payload = os.urandom(4096)
    src.write(200 << 10, payload)
    assert ring.wait(ring.submit(src.iova + (200 << 10), dst.iova + (100 << 10), 4096)) \
        == T.STATUS_DONE
    assert dst.read(100 << 10, 4096) == payload
    assert dst.read(0, 8) == bytes(8)


def test_sleeping_server_is_kicked_once() -> None:
    """A server that stopped polling says so in its control page; the next store into a mapped
    doorbell is followed by exactly one wake-up kick (a message), and the job runs at once
    instead of after the server's (here 5 s) idle sleep. While it polls: no kick."""
    with open_emulated("testdev", spin_us=1000, idle_us=5e6) as dev:
        assert isinstance(dev, VfioUserDevice)
        ring = Ring(dev)
        assert ring.doorbell.mapped and dev._need_wakeup is not None
        src, dst = dev.dma.alloc(4096), dev.dma.alloc(4096)
        deadline = time.monotonic() + 10
        while not dev._need_wakeup.read():  # 1 ms without work: the server goes to sleep
            assert time.monotonic() < deadline, "the server never stopped polling"
            time.sleep(0.01)
        kicks = dev.kicks
        t0 = time.monotonic()
        assert ring.wait(ring.submit(src.iova, dst.iova, 64)) == T.STATUS_DONE
        assert time.monotonic() - t0 < 4.0  # woken by the kick, not by its idle timeout
        assert dev.kicks == kicks + 1


def test_message_doorbell_mode() -> None:
    with open_emulated("testdev", mmap_doorbells=False) as dev:
        assert isinstance(dev, VfioUserDevice) and dev.posted_writes
        ring = Ring(dev)
        assert ring.bar.mapped_windows == [] and not ring.doorbell.mapped
        src, dst = dev.dma.alloc(4096), dev.dma.alloc(4096)
        src.write(0, b"x" * 4096)
        before = reg(dev, T.REG_MSG_COUNT)
        slot = ring.submit(src.iova, dst.iova, 4096)
        assert ring.wait(slot) == T.STATUS_DONE
        # one (posted) REGION_WRITE for the doorbell + the read of MSG_COUNT
        assert reg(dev, T.REG_MSG_COUNT) == before + 2
        assert dst.read(0, 4096) == b"x" * 4096
        assert ring.bar.read64(T.DOORBELL_HEAD) == 1  # a trapped read of shared memory


def test_non_posted_message_doorbells() -> None:
    with open_emulated("testdev", mmap_doorbells=False, posted_writes=False) as dev:
        ring = Ring(dev)
        src, dst = dev.dma.alloc(4096), dev.dma.alloc(4096)
        assert ring.wait(ring.submit(src.iova, dst.iova, 128)) == T.STATUS_DONE


def test_interrupts_msix_msi_intx(dev: VfioUserDevice) -> None:
    ring = Ring(dev)
    buf = dev.dma.alloc(8192)
    irqs = dev.enable_irqs(VFIO_PCI_MSIX_IRQ_INDEX)
    assert len(irqs) == 4
    msix_cap = dev.find_capability(R.PCI_CAP_ID_MSIX)
    assert msix_cap is not None
    assert dev.config_read16(msix_cap + R.PCI_MSIX_FLAGS) & R.PCI_MSIX_FLAGS_ENABLE
    ring.submit(buf.iova, buf.iova + 4096, 16, irq_vector=2)
    assert irqs[2].wait(5.0) == 1
    assert irqs[0].poll() == 0 and irqs[1].poll() == 0
    dev.trigger_irq(VFIO_PCI_MSIX_IRQ_INDEX, 3)  # the server fires it on request
    assert irqs[3].wait(5.0) == 1
    dev.disable_irqs(VFIO_PCI_MSIX_IRQ_INDEX)
    assert not dev.config_read16(msix_cap + R.PCI_MSIX_FLAGS) & R.PCI_MSIX_FLAGS_ENABLE

    (msi,) = dev.enable_irqs(VFIO_PCI_MSI_IRQ_INDEX)
    ring.submit(buf.iova, buf.iova + 4096, 16, irq_vector=0)
    assert msi.wait(5.0) == 1
    dev.disable_irqs(VFIO_PCI_MSI_IRQ_INDEX)

    (intx,) = dev.enable_irqs(VFIO_PCI_INTX_IRQ_INDEX)
    ring.submit(buf.iova, buf.iova + 4096, 16, irq_vector=0)
    assert intx.wait(5.0) == 1
    slot = ring.submit(buf.iova, buf.iova + 4096, 16, irq_vector=0)
    assert ring.wait(slot) == T.STATUS_DONE
    time.sleep(0.05)
    assert intx.poll() == 0  # automasked until unmasked
    intx.unmask()
    assert intx.wait(5.0) == 1  # the pending interrupt is delivered on unmask


def test_dma_outside_the_maps_is_an_error_status(dev: VfioUserDevice) -> None:
    ring = Ring(dev)
    buf = dev.dma.alloc(4096)
    faults = reg(dev, T.REG_FAULTS)
    slot = ring.submit(0xDEAD_0000, buf.iova, 64)  # unmapped source
    assert ring.wait(slot) == T.STATUS_DMA_FAULT
    assert reg(dev, T.REG_STATUS) == 1 and reg(dev, T.REG_ERROR_CODE) == T.ERR_DATA_FAULT
    assert reg(dev, T.REG_STATUS) == 0  # reading ERROR_CODE cleared the latch
    assert reg(dev, T.REG_FAULTS) == faults + 1
    slot = ring.submit(buf.iova, buf.iova + 4096 - 8, 64)  # runs off the end of the map
    assert ring.wait(slot) == T.STATUS_DMA_FAULT
    buf.write(0, b"still serving")
    slot = ring.submit(buf.iova, buf.iova + 2048, 13)
    assert ring.wait(slot) == T.STATUS_DONE and buf.read(2048, 13) == b"still serving"
    # a ring the device cannot read: only the latched error register can tell
    dev.region_write(0, T.REG_RING_BASE, (0xBAD_0000).to_bytes(8, "little"))
    ring.submit(buf.iova, buf.iova, 8)
    deadline = time.monotonic() + 5
    while reg(dev, T.REG_STATUS) != 1:
        assert time.monotonic() < deadline
    assert reg(dev, T.REG_ERROR_CODE) == T.ERR_DESC_FAULT


def test_dma_needs_bus_mastering(dev: VfioUserDevice) -> None:
    ring = Ring(dev)
    buf = dev.dma.alloc(4096)
    dev.enable_bus_master(False)
    ring.submit(buf.iova, buf.iova + 1024, 8)
    deadline = time.monotonic() + 5
    while reg(dev, T.REG_STATUS) != 1:
        assert time.monotonic() < deadline
    assert reg(dev, T.REG_ERROR_CODE) == T.ERR_DESC_FAULT  # the descriptor fetch master-aborted


def test_unmap_while_the_model_holds_a_view(dev: VfioUserDevice) -> None:
    ring = Ring(dev)
    bar = ring.bar
    buf = dev.dma.alloc(4096)
    iova = buf.iova
    bar.write64(T.REG_HOLD_IOVA, iova)
    bar.write32(T.REG_HOLD_LEN, T.HOLD_KEEP | 4096)  # keep it even across DMA_UNMAP
    assert bar.read32(T.REG_HOLD_STATUS) == 1
    bar.write32(T.REG_HOLD_WORD, 0x11111111)
    assert buf.read(0, 4) == b"\x11" * 4  # the view is the client's memory
    dev.dma.unmap(buf)  # must not return before the server dropped its references
    bar.write32(T.REG_HOLD_WORD, 0x22222222)
    assert bar.read32(T.REG_HOLD_WORD) == 0x22222222  # the model's stale view still "works"
    assert buf.read(0, 4) == b"\x11" * 4  # ... but no longer reaches the client
    # and the unmapped IOVA is gone for the engine too
    slot = ring.submit(iova, ring.ring.iova + 1024, 8)
    assert ring.wait(slot) == T.STATUS_DMA_FAULT
    # a well-behaved model lets go when asked (on_dma_unmap)
    buf2 = dev.dma.alloc(4096)
    bar.write64(T.REG_HOLD_IOVA, buf2.iova)
    bar.write32(T.REG_HOLD_LEN, 4096)
    assert bar.read32(T.REG_HOLD_STATUS) == 1
    dev.dma.unmap(buf2)
    assert bar.read32(T.REG_HOLD_STATUS) == 0
    buf.close()
    buf2.close()


def test_anonymous_memory_is_refused(dev: VfioUserDevice) -> None:
    assert dev.dma.needs_fd and dev.dma.default_kind is MemoryKind.MEMFD and not dev.dma.pins
    anon = DmaBuffer.allocate(4096, "anonymous")
    try:
        with pytest.raises(UnsafeMemoryError, match="shared file descriptor") as ei:
            dev.dma.map(anon)
        assert "dma.alloc()" in str(ei.value)
        with pytest.raises(UnsafeMemoryError, match="without one"):
            dev.dma.map(anon.addr, 4096)
    finally:
        anon.close()
    memfd = DmaBuffer.allocate(8192, "memfd")
    m = dev.dma.map(memfd)  # a memfd buffer the caller allocated is fine
    assert m.iova >= 0x10000
    dev.dma.unmap(memfd)
    memfd.close()


def test_read_only_dma_map(dev: VfioUserDevice) -> None:
    ring = Ring(dev)
    ro = DmaBuffer.allocate(4096, "memfd")
    ro.write(0, b"readonly")
    dev.dma.map(ro, writable=False)
    assert ro.iova is not None
    rw = dev.dma.alloc(4096)
    assert ring.wait(ring.submit(ro.iova, rw.iova, 8)) == T.STATUS_DONE
    assert rw.read(0, 8) == b"readonly"
    assert ring.wait(ring.submit(rw.iova, ro.iova, 8)) == T.STATUS_DMA_FAULT  # device may not write
    dev.dma.unmap(ro)
    ro.close()


def test_reset(dev: VfioUserDevice) -> None:
    bar = dev.map_bar(0)
    dev.enable_bus_master()
    bar.write32(T.REG_SCRATCH, 0x1234)
    bar.write64(T.DOORBELL_TAIL, 0)  # mapped page
    (msi,) = dev.enable_irqs(VFIO_PCI_MSI_IRQ_INDEX)
    dev.reset()
    assert bar.read32(T.REG_SCRATCH) == 0
    assert not dev.config_read16(R.PCI_COMMAND) & R.PCI_COMMAND_MASTER
    assert bar.read32(T.REG_ID) == T.ID_VALUE
    # interrupts stay wired across reset (as with vfio-pci): the engine works again once set up
    ring = Ring(dev)
    buf = dev.dma.alloc(4096)
    ring.submit(buf.iova, buf.iova + 64, 8, irq_vector=0)
    assert msi.wait(5.0) == 1


def test_server_death_is_a_clean_error() -> None:
    dev = open_emulated("testdev")
    bar = dev.map_bar(0)
    buf = dev.dma.alloc(4096)
    dev.enable_irqs(VFIO_PCI_MSI_IRQ_INDEX)
    proc = dev.emulator
    os.kill(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait(5)
    with pytest.raises(ConnectionLostError, match="killed by signal 9"):
        bar.read32(T.REG_ID)
    with pytest.raises(ConnectionLostError):  # and stays failed, without hanging
        dev.region_read(2, 0, 4)
    dev.close()  # unmaps, disables IRQs and closes without raising
    assert buf.closed and dev.closed


def test_hung_server_times_out() -> None:
    dev = open_emulated("testdev", timeout=0.5)
    dev.region_info(2)  # cached: the next read is a single REGION_READ
    pid = dev.emulator.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(DeviceTimeoutError, match="no reply to VFIO_USER_REGION_READ"):
            dev.region_read(2, 0, 4)
        assert time.monotonic() - t0 < 3
        with pytest.raises(DeviceTimeoutError):  # the connection is closed: no late-reply mixup
            dev.region_read(2, 0, 4)
    finally:
        os.kill(pid, signal.SIGCONT)
    dev.close()
    assert dev.emulator.proc.wait(5) == 0  # it saw the disconnect and exited


def test_fork_child_cannot_use_the_device(dev: VfioUserDevice) -> None:
    bar = dev.map_bar(0)
    buf = dev.dma.alloc(4096)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            for attempt in (lambda: bar.read32(0), lambda: dev.region_read(2, 0, 4),
                            lambda: dev.dma.alloc(4096)):
                try:
                    attempt()
                    code |= 1
                except ForkedContextError:
                    pass
        except BaseException:
            code |= 2
        os.write(w, bytes([code]))
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"\0"
    os.close(r)
    assert bar.read32(T.REG_ID) == T.ID_VALUE  # the parent's connection is untouched
    assert buf.iova is not None and dev.region_read(2, 0, 4) is not None


def test_dma_map_struct_on_the_wire(dev: VfioUserDevice) -> None:
    """The DMA_MAP the client sends describes the memfd offset, IOVA and size exactly."""
    buf = dev.dma.alloc(3 * 4096)
    assert buf.fd >= 0 and buf.fd_offset == 0
    # the server sees the memory: engine copies within it
    ring = Ring(dev)
    buf.write(4096 * 2 + 5, b"tail")
    assert ring.wait(ring.submit(buf.iova + 4096 * 2 + 5, buf.iova, 4)) == T.STATUS_DONE
    assert buf.read(0, 4) == b"tail"
    assert struct.calcsize("<IIQQQ") == 32  # the layout P.vfio_user_dma_map mirrors
