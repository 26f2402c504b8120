"""QEMU's `edu` teaching device (PCI 1234:11e8): the reference plugin to copy.

A plugin has the shape of the kernel vfio selftests' driver ops, as `warpdrive.devices.registry`
defines the contract: `probe` (is this my device?), init (the constructor: DMA mask, BAR, bus
master, interrupts, a close hook) and `remove` (stop using the device; runs first when the device
closes). It uses only `Device`, `DmaSpace` and `Mmio` and never imports a backend, so it runs
unchanged over legacy VFIO and iommufd (docs/plugins.md walks through it).

    import warpdrive
    from warpdrive.devices.edu import Edu

    with warpdrive.open("0000:00:03.0") as dev:
        edu = Edu(dev)
        print(edu.factorial(10))
        src = dev.dma.alloc(4096); src.write(0, b"hello")
        edu.dma_to_device(src)                       # RAM -> edu's 4 KiB buffer, via the IOMMU

The device (QEMU hw/misc/edu.c, docs/specs/edu.rst):
* BAR0, 1 MiB. Registers below 0x80 take 32-bit accesses only, 0x80 and up 32 or 64-bit; other
  widths read as ~0 and writes are ignored, so every access here has an explicit width.
* DMA engine: one transfer at a time between RAM (an IOVA, masked to 28 bits by the device) and a
  4 KiB buffer at device address 0x40000; it runs 100 ms (virtual time) after the command. QEMU
  does not enforce that buffer's bounds (a bad count corrupts QEMU), so we check them here.
* On a DMA the IOMMU blocks, edu completes as if nothing happened (clears RUN, raises its IRQ; a
  blocked read leaves zeros in its buffer). The only evidence is the IOMMU fault the kernel logs,
  so after every transfer we ask `Device.iommu_faults()` and raise DmaFaultError if there is one.
  (The kernel rate-limits those reports, to about three per 5 s on VT-d: a fault beyond that goes
  unseen and the transfer looks complete.)
* One MSI vector (no MSI-X); the interrupt status must be acknowledged at 0x64 even with MSI.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..device import Device, Interrupt
from ..errors import (
    DeviceNotFoundError,
    DeviceTimeoutError,
    DmaFaultError,
    InvalidArgumentError,
)
from ..memory import DmaBuffer
from ..uapi.vfio import VFIO_PCI_MSI_IRQ_INDEX

VENDOR_ID = 0x1234
DEVICE_ID = 0x11E8
DMA_MASK = (1 << 28) - 1  # edu's default dma_mask property: 28 address bits

# BAR0 registers
REG_ID = 0x00  # 0xRRrr00ed: major, minor
REG_LIVENESS = 0x04  # reads back the bitwise inverse of what was written
REG_FACTORIAL = 0x08
REG_STATUS = 0x20
REG_IRQ_STATUS = 0x24
REG_IRQ_RAISE = 0x60
REG_IRQ_ACK = 0x64
REG_DMA_SRC = 0x80  # 64-bit registers from here on
REG_DMA_DST = 0x88
REG_DMA_COUNT = 0x90
REG_DMA_CMD = 0x98

STATUS_COMPUTING = 0x01
STATUS_IRQ_FACT = 0x80
DMA_CMD_RUN = 0x1
DMA_CMD_TO_RAM = 0x2  # direction: 0 = RAM -> edu, 1 = edu -> RAM
DMA_CMD_IRQ = 0x4
IRQ_FACT = 0x001
IRQ_DMA = 0x100

DEV_BUF = 0x40000  # edu's internal DMA buffer, as a device address
DEV_BUF_SIZE = 4096


class Edu:
    """A bound edu device. Construct with an open `Device`; `remove()` (or closing the device)
    stops using it."""

    name = "edu"

    @staticmethod
    def probe(dev: Device) -> bool:
        return dev.vendor_id == VENDOR_ID and dev.device_id == DEVICE_ID

    def __init__(self, dev: Device, *, use_irq: bool = True, timeout: float = 5.0,
                 fault_grace: float = 0.02) -> None:
        if not self.probe(dev):
            raise DeviceNotFoundError(
                f"{dev.name} is {dev.vendor_id:04x}:{dev.device_id:04x}, not QEMU's edu "
                f"({VENDOR_ID:04x}:{DEVICE_ID:04x})")
        self.dev = dev
        self.timeout = timeout
        self.fault_grace = fault_grace  # how long the IOMMU's fault report may trail completion
        self._removed = False
        self._in_flight: DmaBuffer | None = None
        dev.dma.set_dma_mask(DMA_MASK)  # IOVAs above 28 bits would be silently truncated
        self.bar = dev.map_bar(0)
        self.bar.write32(REG_IRQ_ACK, 0xFFFFFFFF)  # no interrupt status left by a previous user
        dev.enable_bus_master()  # DMA, and MSI too: an MSI is a memory write by the device
        self.irq: Interrupt | None = None
        if use_irq:
            self.irq = dev.enable_irqs(VFIO_PCI_MSI_IRQ_INDEX, 1)[0]
        dev.on_close(self.remove)

    def remove(self) -> None:
        """Stop using the device: let a DMA in flight finish so its buffer can be unmapped."""
        if self._removed:
            return
        self._removed = True
        if self._in_flight is not None:
            try:
                self._poll(self._dma_idle, self.timeout, "the DMA in flight to finish")
            finally:
                self.dev.dma.release(self._in_flight, self)
                self._in_flight = None

    # -- simple registers -------------------------------------------------------------------
    @property
    def identification(self) -> tuple[int, int]:
        """(major, minor) version from the ID register (edu answers 0x010000ed: 1.0)."""
        v = self.bar.read32(REG_ID)
        if v & 0xFF != 0xED:
            raise DeviceNotFoundError(f"{self.dev.name}: ID register reads {v:#010x}, not 0x..ed")
        return v >> 24, (v >> 16) & 0xFF

    def is_alive(self, probe: int = 0x5A5AA5A5) -> bool:
        """The liveness check: edu stores the inverse of what we write."""
        self.bar.write32(REG_LIVENESS, probe)
        return self.bar.read32(REG_LIVENESS) == (~probe & 0xFFFFFFFF)

    def factorial(self, n: int, *, irq: bool = False, timeout: float | None = None) -> int:
        """n! modulo 2**32, computed by the device; with `irq` wait for its interrupt instead of
        polling the status register."""
        if not 0 <= n <= 0xFFFFFFFF:
            raise InvalidArgumentError(f"factorial argument {n} does not fit 32 bits")
        timeout = self.timeout if timeout is None else timeout
        use_irq = irq and self.irq is not None
        if irq and not use_irq:
            raise InvalidArgumentError("factorial(irq=True) needs the plugin opened with use_irq")
        self._drain_irq()
        self.bar.write32(REG_STATUS, STATUS_IRQ_FACT if use_irq else 0)
        self.bar.write32(REG_FACTORIAL, n)
        if use_irq:
            assert self.irq is not None
            self.irq.wait(timeout)
            self._ack(IRQ_FACT)
        else:
            self._poll(lambda: not self.bar.read32(REG_STATUS) & STATUS_COMPUTING, timeout,
                       f"factorial({n})")
        return self.bar.read32(REG_FACTORIAL)

    # -- DMA --------------------------------------------------------------------------------
    def dma_to_device(self, buf: DmaBuffer, *, offset: int = 0, size: int | None = None,
                      dev_offset: int = 0, timeout: float | None = None) -> None:
        """Copy `size` bytes at `offset` in the mapped buffer `buf` into edu's buffer."""
        self._buffer_dma(buf, offset, size, dev_offset, to_ram=False, timeout=timeout)

    def dma_from_device(self, buf: DmaBuffer, *, offset: int = 0, size: int | None = None,
                        dev_offset: int = 0, timeout: float | None = None) -> None:
        """Copy `size` bytes of edu's buffer into the mapped buffer `buf` at `offset`."""
        self._buffer_dma(buf, offset, size, dev_offset, to_ram=True, timeout=timeout)

    def _buffer_dma(self, buf: DmaBuffer, offset: int, size: int | None, dev_offset: int,
                    to_ram: bool, timeout: float | None) -> None:
        size = min(buf.size - offset, DEV_BUF_SIZE - dev_offset) if size is None else size
        if offset < 0 or size <= 0 or offset + size > buf.size:
            raise InvalidArgumentError(
                f"DMA of {size} bytes at offset {offset} does not fit the {buf.size}-byte buffer")
        iova = self.dev.dma.iova_of(buf.addr + offset, size)  # refuses an unmapped buffer
        # Held while the device may touch it: dma.unmap(buf) is refused until we release it.
        self.dev.dma.hold(buf, self, f"{self.dev.name} edu DMA")
        self._in_flight = buf
        try:
            self.run_dma(iova, dev_offset, size, to_ram=to_ram, timeout=timeout)
        finally:
            if self._in_flight is buf:
                self._in_flight = None
                self.dev.dma.release(buf, self)

    def run_dma(self, iova: int, dev_offset: int, size: int, *, to_ram: bool,
                timeout: float | None = None) -> None:
        """One transfer between IOVA `iova` and edu's buffer at `dev_offset`, waiting for it.

        Low level: `iova` is not checked against the DMA space (that is what dma_to_device and
        dma_from_device add). Raises DeviceTimeoutError if the device does not finish, and
        DmaFaultError if the IOMMU blocked the transfer."""
        if dev_offset < 0 or size <= 0 or dev_offset + size > DEV_BUF_SIZE:
            raise InvalidArgumentError(
                f"edu's DMA buffer is {DEV_BUF_SIZE} bytes: {size} bytes at offset {dev_offset} "
                "do not fit (QEMU does not check this itself)")
        if iova < 0 or iova + size - 1 > DMA_MASK:
            raise InvalidArgumentError(
                f"IOVA {iova:#x}+{size:#x} is above edu's 28-bit DMA mask {DMA_MASK:#x}")
        timeout = self.timeout if timeout is None else timeout
        dev_addr = DEV_BUF + dev_offset
        src, dst = (dev_addr, iova) if to_ram else (iova, dev_addr)
        if self.bar.read64(REG_DMA_CMD) & DMA_CMD_RUN:
            raise DeviceTimeoutError(f"{self.dev.name}: a previous edu DMA is still running",
                                     hint="wait for it, or reset the device")
        self._drain_irq()
        self.dev.iommu_faults()  # forget faults from before this transfer
        self.bar.write64(REG_DMA_SRC, src)
        self.bar.write64(REG_DMA_DST, dst)
        self.bar.write64(REG_DMA_COUNT, size)
        cmd = DMA_CMD_RUN | (DMA_CMD_TO_RAM if to_ram else 0)
        if self.irq is not None:
            cmd |= DMA_CMD_IRQ
        self.bar.write64(REG_DMA_CMD, cmd)
        what = (f"edu DMA of {size} bytes {'to RAM at' if to_ram else 'from RAM at'} IOVA "
                f"{iova:#x}")
        if self.irq is not None:
            self.irq.wait(timeout)
            self._ack(IRQ_DMA)
        self._poll(self._dma_idle, timeout, what)
        self._check_faults(what)

    # -- helpers ----------------------------------------------------------------------------
    def _check_faults(self, what: str) -> None:
        faults = list(self.dev.iommu_faults())
        if not faults and self.fault_grace > 0:
            time.sleep(self.fault_grace)
            faults = list(self.dev.iommu_faults())
        if faults:
            raise DmaFaultError(
                f"{what} on {self.dev.name} was blocked by the IOMMU ({faults[0]}); edu reported "
                "completion anyway, but no data moved",
                hint="the IOVA is not mapped (or not writable) in the device's DMA space: keep "
                "the buffer mapped with dev.dma until the transfer is done")

    def _dma_idle(self) -> bool:
        return not self.bar.read64(REG_DMA_CMD) & DMA_CMD_RUN

    def _drain_irq(self) -> None:
        if self.irq is not None:
            self.irq.poll()

    def _ack(self, bits: int) -> None:
        status = self.bar.read32(REG_IRQ_STATUS)
        self.bar.write32(REG_IRQ_ACK, status & bits or bits)

    def _poll(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise DeviceTimeoutError(f"{self.dev.name}: timed out after {timeout} s waiting "
                                         f"for {what}",
                                         hint="check the kernel log (dmesg) for IOMMU faults")
            time.sleep(0.001)
