"""`testdev`: a small device that exercises every path of the vfio-user framework end to end.

PCI 1234:7e57 (0x1234 is the ad-hoc vendor ID QEMU uses for its own test devices, e.g. edu
1234:11e8; 0x7e57 reads "test"), class 0xff0000 (unassigned). INTx, MSI (1 vector) and MSI-X
(4 vectors).

BAR0, 12 KiB:
- page 0, trapped registers (each access is a REGION_READ/WRITE message):
    0x00 ID          RO 32  0x7e57de01
    0x04 SCRATCH     RW 32
    0x08 STATUS      RO 32  bit 0: an error was latched (cleared by reading ERROR_CODE)
    0x0c ERROR_CODE  RO 32  last error: 1 descriptor read faulted, 2 data DMA faulted,
                            3 TAIL ran more than RING_SIZE ahead of HEAD
    0x10 RING_BASE   RW 64  IOVA of the descriptor ring
    0x18 RING_SIZE   RW 32  entries (0 = engine off); writing it restarts the engine at HEAD 0
    0x20 COMPLETED   RO 64  jobs completed (ok or not)
    0x28 FAULTS      RO 32  DMA faults seen by the framework
    0x2c MSG_COUNT   RO 32  vfio-user messages the server has received (this read included)
    0x30 HOLD_IOVA   RW 64  } writing HOLD_LEN takes a writable view of [HOLD_IOVA, +len) and
    0x38 HOLD_LEN    RW 32  } keeps it (len 0 drops it; bit 31 set: keep it even across the
                              client's DMA_UNMAP, to test revocation)
    0x3c HOLD_STATUS RO 32  0 no view, 1 held, 0x8000_0000 | errno-like code if taking it faulted
    0x40 HOLD_WORD   RW 32  the first 32-bit word of the held view (reads 0xffffffff if none)
- page 1, the doorbell page (a sparse-mmap area the client maps; no message per store):
    0x1000 TAIL      64     descriptors submitted so far (a running count the client stores)
    0x1008 HEAD      64     descriptors consumed (the model stores it; the client may poll it)
- page 2: MSI-X table (4 vectors) at 0x2000 and PBA at 0x2800, emulated by the framework.

BAR2, 4 KiB of plain trapped RAM (for REGION_READ/WRITE of any size).

Descriptor ring: RING_SIZE entries of 32 bytes at RING_BASE:
    +0 src u64, +8 dst u64, +16 len u32, +20 flags u32 (bit 0: interrupt on completion; bits 8-15:
    vector), +24 status u32 (model writes 1 = done, 0x8000_0002 = data DMA fault), +28 reserved.
For each new descriptor the model copies len bytes src -> dst through zero-copy views of client
memory, writes status, bumps COMPLETED and HEAD, then signals the vector (MSI-X, MSI or INTx,
whichever the client enabled). A descriptor that cannot be read latches ERROR_CODE 1 and drops
the rest of the submitted work.
"""

from __future__ import annotations

import struct

from ...errors import InvalidArgumentError
from ..model import (
    VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
    DeviceModel,
    DmaFault,
    RegionSpec,
)

ID_VALUE = 0x7E57DE01
REG_ID, REG_SCRATCH, REG_STATUS, REG_ERROR_CODE = 0x00, 0x04, 0x08, 0x0C
REG_RING_BASE, REG_RING_SIZE, REG_COMPLETED, REG_FAULTS = 0x10, 0x18, 0x20, 0x28
REG_MSG_COUNT, REG_HOLD_IOVA, REG_HOLD_LEN, REG_HOLD_STATUS, REG_HOLD_WORD = \
    0x2C, 0x30, 0x38, 0x3C, 0x40
DOORBELL_TAIL, DOORBELL_HEAD = 0x1000, 0x1008
MSIX_TABLE, MSIX_PBA = 0x2000, 0x2800
BAR0_SIZE, BAR2_SIZE = 0x3000, 0x1000
MSIX_VECTORS = 4

DESC = struct.Struct("<QQIIII")
DESC_SIZE = DESC.size  # 32
DESC_IRQ = 1 << 0
STATUS_DONE = 1
STATUS_DMA_FAULT = 0x8000_0002
ERR_DESC_FAULT, ERR_DATA_FAULT, ERR_BAD_DOORBELL = 1, 2, 3
HOLD_KEEP = 1 << 31

_RW_REGS = {REG_SCRATCH: 4, REG_RING_BASE: 8, REG_RING_SIZE: 4, REG_HOLD_IOVA: 8,
            REG_HOLD_LEN: 4, REG_HOLD_WORD: 4}


class TestDevice(DeviceModel):
    name = "testdev"
    vendor_id = 0x1234
    device_id = 0x7E57
    revision = 1
    class_code = 0xFF0000
    subsystem_vendor_id = 0x1234
    subsystem_id = 0x0001

    def __init__(self, **options: str) -> None:
        super().__init__(**options)
        if options:  # testdev has no options; refusing them lets tests see a failing start
            raise InvalidArgumentError(f"testdev takes no options, got "
                                       f"{', '.join(sorted(options))}",
                                       hint="start it without --set / model_options")

    def regions(self) -> list[RegionSpec]:
        return [RegionSpec(0, BAR0_SIZE, mmap_areas=((0x1000, 0x1000),)),
                RegionSpec(2, BAR2_SIZE)]

    def irq_counts(self) -> dict[int, int]:
        return {VFIO_PCI_INTX_IRQ_INDEX: 1, VFIO_PCI_MSI_IRQ_INDEX: 1,
                VFIO_PCI_MSIX_IRQ_INDEX: MSIX_VECTORS}

    def build_config_space(self) -> bytearray:
        cfg = self.config_builder()
        cfg.add_msi(vectors=1)
        cfg.add_msix(MSIX_VECTORS, table_bar=0, table_offset=MSIX_TABLE, pba_bar=0,
                     pba_offset=MSIX_PBA)
        return cfg.build()

    def setup(self) -> None:
        self.tail = self.region_u64(0, DOORBELL_TAIL)
        self.head_shadow = self.region_u64(0, DOORBELL_HEAD)
        self.reset()

    def reset(self) -> None:
        self.regs = bytearray(0x1000)
        self.sram = bytearray(BAR2_SIZE)
        self.head = 0
        self.completed = 0
        self.error_code = 0
        self.error_latched = False
        self.hold: memoryview | None = None
        self.hold_keep = False
        self.hold_status = 0
        self._put(REG_ID, 4, ID_VALUE)

    # -- registers --------------------------------------------------------------------------
    def _get(self, off: int, width: int) -> int:
        return int.from_bytes(self.regs[off:off + width], "little")

    def _put(self, off: int, width: int, value: int) -> None:
        self.regs[off:off + width] = (value & ((1 << 8 * width) - 1)).to_bytes(width, "little")

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        if index == 2:
            return bytes(self.sram[offset:offset + size])
        stats = self.host_stats()
        self._put(REG_STATUS, 4, int(self.error_latched))
        self._put(REG_ERROR_CODE, 4, self.error_code)
        self._put(REG_COMPLETED, 8, self.completed)
        self._put(REG_FAULTS, 4, stats["dma_faults"])
        self._put(REG_MSG_COUNT, 4, stats["messages"])
        self._put(REG_HOLD_STATUS, 4, self.hold_status)
        word = int.from_bytes(self.hold[:4], "little") if self.hold is not None else 0xFFFF_FFFF
        self._put(REG_HOLD_WORD, 4, word)
        if offset <= REG_ERROR_CODE < offset + size:
            self.error_latched = False
        return bytes(self.regs[offset:offset + size])

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index == 2:
            self.sram[offset:offset + len(data)] = data
            return
        end = offset + len(data)
        for reg, width in _RW_REGS.items():
            lo, hi = max(offset, reg), min(end, reg + width)
            if lo < hi:
                self.regs[lo:hi] = data[lo - offset:hi - offset]
        if offset < REG_RING_SIZE + 4 and end > REG_RING_SIZE:
            self.head = 0  # restart the engine; the client restarts its TAIL count too
            self.head_shadow.value = 0
        if offset < REG_HOLD_LEN + 4 and end > REG_HOLD_LEN:
            self._take_hold()
        if offset < REG_HOLD_WORD + 4 and end > REG_HOLD_WORD and self.hold is not None:
            self.hold[:4] = self.regs[REG_HOLD_WORD:REG_HOLD_WORD + 4]

    def _take_hold(self) -> None:
        if self.hold is not None:
            self.hold.release()
            self.hold = None
        length = self._get(REG_HOLD_LEN, 4)
        self.hold_keep = bool(length & HOLD_KEEP)
        length &= ~HOLD_KEEP
        self.hold_status = 0
        if not length:
            return
        try:
            self.hold = self.dma.view(self._get(REG_HOLD_IOVA, 8), length, write=True)
            self.hold_status = 1
        except DmaFault:
            self.hold_status = 0x8000_0000 | ERR_DATA_FAULT

    def on_dma_unmap(self, iova: int, size: int) -> None:
        if self.hold is not None and not self.hold_keep:
            self.hold.release()  # a well-behaved model lets go of memory that goes away
            self.hold = None
            self.hold_status = 0

    # -- the engine -------------------------------------------------------------------------
    def poll(self) -> bool:
        tail = self.tail.value
        if tail == self.head:
            return False
        ring_size = self._get(REG_RING_SIZE, 4)
        if not ring_size:
            return False
        base = self._get(REG_RING_BASE, 8)
        if (tail - self.head) % (1 << 64) > ring_size:
            self._latch(ERR_BAD_DOORBELL)  # more submitted than the ring holds: a driver bug
            self.head = tail
        while self.head != tail:
            desc_iova = base + (self.head % ring_size) * DESC_SIZE
            try:
                src, dst, length, flags, _, _ = DESC.unpack(self.dma.read(desc_iova, DESC_SIZE))
            except DmaFault:
                self._latch(ERR_DESC_FAULT)
                self.head = tail  # the ring is unreachable: drop what was submitted
                break
            status = STATUS_DONE
            try:
                if length:
                    out = self.dma.view(dst, length, write=True)
                    inp = self.dma.view(src, length)
                    out[:] = inp
                    inp.release()
                    out.release()
            except DmaFault:
                self._latch(ERR_DATA_FAULT)
                status = STATUS_DMA_FAULT
            try:
                self.dma.write(desc_iova + 24, status.to_bytes(4, "little"))
            except DmaFault:
                self._latch(ERR_DESC_FAULT)
            self.completed += 1
            self.head += 1
            if flags & DESC_IRQ:
                self.notify((flags >> 8) & 0xFF)
        self.head_shadow.value = self.head
        return True

    def _latch(self, code: int) -> None:
        self.error_code = code
        self.error_latched = True


MODEL = TestDevice
