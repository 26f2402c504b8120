"""PCI config space for device models: a builder (IDs, BARs, capabilities) and the emulation the
framework runs on it (write masks, write-1-to-clear status bits, BAR sizing, MSI/MSI-X enables).

Write masks are derived from the finished bytes (the header plus a walk of the capability list),
so a model may hand-craft its config space and still get correct emulation.
"""

from __future__ import annotations

from ..errors import InvalidArgumentError
from ..record import record
from ..uapi import pci_regs as R

_HINT = "fix the model's build_config_space()"

_CAP_START = 0x40
_COMMAND_WMASK = (R.PCI_COMMAND_IO | R.PCI_COMMAND_MEMORY | R.PCI_COMMAND_MASTER
                  | R.PCI_COMMAND_PARITY | R.PCI_COMMAND_SERR | R.PCI_COMMAND_INTX_DISABLE)
_STATUS_W1C = (R.PCI_STATUS_DETECTED_PARITY | R.PCI_STATUS_SIG_SYSTEM_ERROR
               | R.PCI_STATUS_REC_MASTER_ABORT | R.PCI_STATUS_REC_TARGET_ABORT
               | R.PCI_STATUS_SIG_TARGET_ABORT | 0x0100)  # 0x100: master data parity error
_CACHE_LINE_SIZE = 0x0C
_LATENCY_TIMER = 0x0D


def _put(buf: bytearray, off: int, width: int, value: int) -> None:
    buf[off:off + width] = value.to_bytes(width, "little")


def _get(buf: bytes | bytearray, off: int, width: int) -> int:
    return int.from_bytes(buf[off:off + width], "little")


def bar_size(size: int) -> int:
    """A BAR's decoded size: the region size rounded up to a power of two, at least 16 bytes."""
    n = 16
    while n < size:
        n <<= 1
    return n


class ConfigBuilder:
    """Builds a type-0 config header plus a capability list."""

    def __init__(self, *, vendor_id: int, device_id: int, revision: int = 0,
                 class_code: int = 0xFF0000, subsystem_vendor_id: int = 0, subsystem_id: int = 0,
                 size: int = R.PCI_CFG_SPACE_SIZE) -> None:
        if size not in (R.PCI_CFG_SPACE_SIZE, R.PCI_CFG_SPACE_EXP_SIZE):
            raise InvalidArgumentError(f"config space is 256 or 4096 bytes, not {size}",
                                       hint=_HINT)
        self.data = bytearray(size)
        _put(self.data, R.PCI_VENDOR_ID, 2, vendor_id)
        _put(self.data, R.PCI_DEVICE_ID, 2, device_id)
        _put(self.data, R.PCI_REVISION_ID, 1, revision)
        _put(self.data, R.PCI_CLASS_PROG, 3, class_code & 0xFFFFFF)
        _put(self.data, R.PCI_HEADER_TYPE, 1, R.PCI_HEADER_TYPE_NORMAL)
        _put(self.data, R.PCI_SUBSYSTEM_VENDOR_ID, 2, subsystem_vendor_id)
        _put(self.data, R.PCI_SUBSYSTEM_ID, 2, subsystem_id)
        self._next_cap = _CAP_START
        self._last_cap: int | None = None

    def set_bar(self, index: int, size: int, *, mem64: bool = False,
                prefetchable: bool = False) -> None:
        """Declare memory BAR `index` (address 0; the client sizes it by writing all-ones)."""
        if not 0 <= index < R.PCI_STD_NUM_BARS or (mem64 and index == 5):
            raise InvalidArgumentError(f"BAR {index} cannot be a {'64' if mem64 else '32'}-bit "
                                       "BAR", hint="a 64-bit BAR takes two slots: index 0-4")
        flags = R.PCI_BASE_ADDRESS_SPACE_MEMORY
        flags |= R.PCI_BASE_ADDRESS_MEM_TYPE_64 if mem64 else R.PCI_BASE_ADDRESS_MEM_TYPE_32
        flags |= R.PCI_BASE_ADDRESS_MEM_PREFETCH if prefetchable else 0
        _put(self.data, R.PCI_BASE_ADDRESS_0 + 4 * index, 4, flags)

    def set_interrupt_pin(self, pin: int) -> None:
        """1 = INTA# ... 4 = INTD#; 0 = no INTx."""
        _put(self.data, R.PCI_INTERRUPT_PIN, 1, pin)

    def add_capability(self, cap_id: int, body: bytes) -> int:
        """Append a standard capability (`body` follows the 2-byte id/next header); returns its
        config offset."""
        length = (2 + len(body) + 3) & ~3
        pos = self._next_cap
        if pos + length > R.PCI_CFG_SPACE_SIZE:
            raise InvalidArgumentError("standard capabilities do not fit in the first 256 bytes",
                                       hint=_HINT)
        self.data[pos] = cap_id
        self.data[pos + 1] = 0
        self.data[pos + 2:pos + 2 + len(body)] = body
        if self._last_cap is None:
            self.data[R.PCI_CAPABILITY_LIST] = pos
            status = _get(self.data, R.PCI_STATUS, 2) | R.PCI_STATUS_CAP_LIST
            _put(self.data, R.PCI_STATUS, 2, status)
        else:
            self.data[self._last_cap + 1] = pos
        self._last_cap = pos
        self._next_cap = pos + length
        return pos

    def add_msi(self, vectors: int = 1, *, addr64: bool = True, maskable: bool = False) -> int:
        """MSI capability offering `vectors` (1, 2, 4, 8, 16 or 32) messages."""
        if vectors not in (1, 2, 4, 8, 16, 32):
            raise InvalidArgumentError(f"MSI cannot offer {vectors} vectors",
                                       hint="give 1, 2, 4, 8, 16 or 32")
        flags = (vectors.bit_length() - 1) << 1  # Multiple Message Capable
        flags |= R.PCI_MSI_FLAGS_64BIT if addr64 else 0
        flags |= R.PCI_MSI_FLAGS_MASKBIT if maskable else 0
        body_len = 2 + 4 + (4 if addr64 else 0) + 2 + 2 + (8 if maskable else 0)
        body = bytearray(body_len)
        _put(body, 0, 2, flags)
        return self.add_capability(R.PCI_CAP_ID_MSI, bytes(body))

    def add_msix(self, vectors: int, *, table_bar: int, table_offset: int, pba_bar: int,
                 pba_offset: int) -> int:
        """MSI-X capability; the framework emulates the table and PBA at those BAR offsets
        (they must lie outside the BAR's mmap areas)."""
        if not 1 <= vectors <= 2048:
            raise InvalidArgumentError(f"MSI-X cannot offer {vectors} vectors",
                                       hint="give 1..2048")
        if table_offset % 8 or pba_offset % 8:
            raise InvalidArgumentError("MSI-X table and PBA offsets must be 8-byte aligned",
                                       hint=_HINT)
        body = bytearray(10)
        _put(body, 0, 2, vectors - 1)
        _put(body, 2, 4, table_offset | table_bar)
        _put(body, 6, 4, pba_offset | pba_bar)
        return self.add_capability(R.PCI_CAP_ID_MSIX, bytes(body))

    def build(self) -> bytearray:
        return bytearray(self.data)


@record(frozen=True)
class MsixInfo:
    cap: int
    vectors: int
    table_bar: int
    table_offset: int
    pba_bar: int
    pba_offset: int

    @property
    def table_size(self) -> int:
        return self.vectors * R.PCI_MSIX_ENTRY_SIZE

    @property
    def pba_size(self) -> int:
        return ((self.vectors + 63) // 64) * 8


class PciConfig:
    """The live config space of a model: reads return the bytes, writes honour the masks."""

    def __init__(self, data: bytes | bytearray, bars: dict[int, tuple[int, bool]]) -> None:
        """`bars`: BAR index -> (region size, mem64) of each implemented memory BAR."""
        if len(data) not in (R.PCI_CFG_SPACE_SIZE, R.PCI_CFG_SPACE_EXP_SIZE):
            raise InvalidArgumentError(f"config space must be 256 or 4096 bytes, got "
                                       f"{len(data)}", hint=_HINT)
        self.data = bytearray(data)
        self.size = len(data)
        self.wmask = bytearray(self.size)
        self.w1cmask = bytearray(self.size)
        self.msi_cap: int | None = None
        self.msix: MsixInfo | None = None
        _put(self.wmask, R.PCI_COMMAND, 2, _COMMAND_WMASK)
        _put(self.w1cmask, R.PCI_STATUS, 2, _STATUS_W1C)
        self.wmask[_CACHE_LINE_SIZE] = 0xFF
        self.wmask[_LATENCY_TIMER] = 0xFF
        self.wmask[R.PCI_INTERRUPT_LINE] = 0xFF
        for index, (size, mem64) in bars.items():
            mask = ~(bar_size(size) - 1) & ((1 << 64) - 1 if mem64 else 0xFFFF_FFFF)
            off = R.PCI_BASE_ADDRESS_0 + 4 * index
            _put(self.wmask, off, 4, mask & 0xFFFF_FFF0)
            if mem64:
                _put(self.wmask, off + 4, 4, mask >> 32)
        self._parse_caps()
        self._initial = bytes(self.data)

    def _parse_caps(self) -> None:
        if not _get(self.data, R.PCI_STATUS, 2) & R.PCI_STATUS_CAP_LIST:
            return
        pos = self.data[R.PCI_CAPABILITY_LIST] & ~3
        seen: set[int] = set()
        while pos and pos not in seen and pos + 2 <= R.PCI_CFG_SPACE_SIZE:
            seen.add(pos)
            cap_id = self.data[pos]
            if cap_id == R.PCI_CAP_ID_MSI:
                self._msi_masks(pos)
            elif cap_id == R.PCI_CAP_ID_MSIX:
                self._msix_masks(pos)
            pos = self.data[pos + R.PCI_CAP_LIST_NEXT] & ~3

    def _msi_masks(self, pos: int) -> None:
        self.msi_cap = pos
        flags = _get(self.data, pos + R.PCI_MSI_FLAGS, 2)
        _put(self.wmask, pos + R.PCI_MSI_FLAGS, 2, R.PCI_MSI_FLAGS_ENABLE | R.PCI_MSI_FLAGS_QSIZE)
        _put(self.wmask, pos + R.PCI_MSI_ADDRESS_LO, 4, 0xFFFF_FFFC)
        if flags & R.PCI_MSI_FLAGS_64BIT:
            _put(self.wmask, pos + R.PCI_MSI_ADDRESS_HI, 4, 0xFFFF_FFFF)
            _put(self.wmask, pos + R.PCI_MSI_DATA_64, 2, 0xFFFF)
            if flags & R.PCI_MSI_FLAGS_MASKBIT:
                _put(self.wmask, pos + R.PCI_MSI_MASK_64, 4, 0xFFFF_FFFF)
        else:
            _put(self.wmask, pos + R.PCI_MSI_DATA_32, 2, 0xFFFF)
            if flags & R.PCI_MSI_FLAGS_MASKBIT:
                _put(self.wmask, pos + R.PCI_MSI_MASK_32, 4, 0xFFFF_FFFF)

    def _msix_masks(self, pos: int) -> None:
        flags = _get(self.data, pos + R.PCI_MSIX_FLAGS, 2)
        table = _get(self.data, pos + R.PCI_MSIX_TABLE, 4)
        pba = _get(self.data, pos + R.PCI_MSIX_PBA, 4)
        self.msix = MsixInfo(pos, (flags & R.PCI_MSIX_FLAGS_QSIZE) + 1,
                             table & R.PCI_MSIX_TABLE_BIR, table & R.PCI_MSIX_TABLE_OFFSET,
                             pba & R.PCI_MSIX_PBA_BIR, pba & R.PCI_MSIX_PBA_OFFSET)
        _put(self.wmask, pos + R.PCI_MSIX_FLAGS, 2,
             R.PCI_MSIX_FLAGS_ENABLE | R.PCI_MSIX_FLAGS_MASKALL)

    # -- access -----------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.data[offset:offset + size])

    def write(self, offset: int, data: bytes) -> None:
        for i, val in enumerate(data):
            pos = offset + i
            old = self.data[pos]
            new = (old & ~self.wmask[pos]) | (val & self.wmask[pos])
            new &= ~(val & self.w1cmask[pos])
            self.data[pos] = new & 0xFF

    def reset(self) -> None:
        self.data[:] = self._initial

    # -- state the framework and models look at ---------------------------------------------
    @property
    def command(self) -> int:
        return _get(self.data, R.PCI_COMMAND, 2)

    @property
    def bus_master_enabled(self) -> bool:
        # (looked at on every DMA access: the bit is in the command register's low byte)
        return bool(self.data[R.PCI_COMMAND] & R.PCI_COMMAND_MASTER)

    @property
    def msi_vectors(self) -> int:
        """Vectors the MSI capability offers (Multiple Message Capable), 0 without MSI."""
        if self.msi_cap is None:
            return 0
        return 1 << (_get(self.data, self.msi_cap + R.PCI_MSI_FLAGS, 2) >> 1 & 7)

    def set_msi_enabled(self, enabled: bool, vectors: int = 1) -> None:
        """Mirror what vfio-pci does when the client enables MSI through SET_IRQS."""
        if self.msi_cap is None:
            return
        off = self.msi_cap + R.PCI_MSI_FLAGS
        flags = _get(self.data, off, 2) & ~(R.PCI_MSI_FLAGS_ENABLE | R.PCI_MSI_FLAGS_QSIZE)
        if enabled:
            flags |= R.PCI_MSI_FLAGS_ENABLE | (max(vectors - 1, 0).bit_length() << 4)
        _put(self.data, off, 2, flags)

    def set_msix_enabled(self, enabled: bool) -> None:
        if self.msix is None:
            return
        off = self.msix.cap + R.PCI_MSIX_FLAGS
        flags = _get(self.data, off, 2) & ~R.PCI_MSIX_FLAGS_ENABLE
        _put(self.data, off, 2, flags | (R.PCI_MSIX_FLAGS_ENABLE if enabled else 0))
