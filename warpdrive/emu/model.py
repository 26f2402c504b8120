"""The device-model base class: subclass `DeviceModel` once per emulated device.

A model runs in its own process (`python -m warpdrive.emu <model> --socket PATH`) behind the generic
vfio-user server (`warpdrive.emu.server`). The framework owns the protocol, the PCI config
space (BAR sizing, command register, MSI/MSI-X enable bits, the MSI-X table), the client's DMA maps,
the interrupt eventfds and the shared memory behind mmap-able areas. The model supplies identity,
regions, register behaviour and the work itself, and reaches the framework only through the
`DeviceHost` it is given in `attach()` (`warpdrive.emu.host`; the helpers below wrap it):

    class MyDev(DeviceModel):
        name = "mydev"
        vendor_id, device_id, class_code = 0x1234, 0xABCD, 0x120000

        def regions(self):
            # BAR0: 4 KiB of trapped registers, then a 4 KiB doorbell page the client maps.
            return [RegionSpec(0, 0x2000, mmap_areas=((0x1000, 0x1000),))]

        def irq_counts(self):
            return {VFIO_PCI_MSI_IRQ_INDEX: 1}

        def build_config_space(self):
            cfg = self.config_builder()       # IDs and BARs already filled in
            cfg.add_msi(vectors=1)
            return cfg.build()

        def setup(self):                      # once the framework is attached
            self.bell = self.region_u64(0, 0x1000)   # ctypes view: one 64-bit load per .value

        def region_read(self, index, offset, size):    # trapped accesses only
            ...
        def region_write(self, index, offset, data):
            ...
        def poll(self):                       # called by the server loop
            tail = self.bell.value
            ...                               # self.dma.read/write/view, self.notify()
            return did_work

Threading: everything (message handlers, `poll`, `reset`) runs on the server's single thread, so
a model needs no locks. `poll` must not block for long: the server answers no messages meanwhile.

DMA: `self.dma.read(iova, n)`, `self.dma.write(iova, data)`, `self.dma.view(iova, n, write=False)`
(zero-copy into the client's memory). All raise `DmaFault` for an IOVA outside the client's maps,
without the needed permission, or while bus mastering is disabled; turn it into an error status
the way a device reports an IOMMU fault. A view is revoked when the client unmaps its IOVA range
(`on_dma_unmap` is called first so the model can drop it; a view kept anyway is re-pointed at
zero pages, so the model can never reach the client's memory after the unmap reply). A model
whose work runs on other threads must not write after bus mastering goes off either: in
`config_write`, once the bit is clear, it cuts that work's views off (`self.dma.cut_off`) and
drops its results (docs/research/pci-bus-master.md; the ZIP model's workers do so).
"""

from __future__ import annotations

import ctypes
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping

from ..errors import InvalidArgumentError, UnsupportedError
from ..record import record
from ..uapi.vfio import (
    VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
)
from .dma import ClientMemory, DmaFault
from .host import DeviceHost
from .pci_config import ConfigBuilder, PciConfig

TYPE_CHECKING = False  # (not typing's: importing typing costs ~3 ms of every process's boot)
if TYPE_CHECKING:
    from typing import Any, ClassVar

__all__ = [
    "VFIO_PCI_INTX_IRQ_INDEX",
    "VFIO_PCI_MSIX_IRQ_INDEX",
    "VFIO_PCI_MSI_IRQ_INDEX",
    "ConfigBuilder",
    "DeviceHost",
    "DeviceModel",
    "DmaFault",
    "RegionSpec",
]


@record(frozen=True)
class RegionSpec:
    """One device region (a BAR, or a device-specific region with index >= 9).

    `mmap_areas` are (offset, size) pieces, page-aligned, that the client maps directly: the
    framework backs the whole region with one shared memfd and gives the model
    `region_memory(index)`; stores the client makes into a mapped area reach that memory with no
    message (the model finds them in `poll`). Everything outside the areas is trapped: each client
    access is a REGION_READ/REGION_WRITE handled by `region_read`/`region_write`. Accesses that
    arrive as messages but fall inside an area (a client that maps nothing) are applied to the
    shared memory by the framework, so the model sees the same thing either way.
    """

    index: int
    size: int
    readable: bool = True
    writable: bool = True
    mmap_areas: tuple[tuple[int, int], ...] = ()
    mem64: bool = False  # 64-bit memory BAR (takes two BAR slots)
    prefetchable: bool = False


class DeviceModel(ABC):
    """Base class of every emulated device. Class attributes describe the PCI function."""

    name: ClassVar[str] = "?"
    vendor_id: ClassVar[int] = 0
    device_id: ClassVar[int] = 0
    revision: ClassVar[int] = 0
    class_code: ClassVar[int] = 0xFF0000  # 24 bits: base class, subclass, prog-if
    subsystem_vendor_id: ClassVar[int] = 0
    subsystem_id: ClassVar[int] = 0
    config_size: ClassVar[int] = 256  # 256 (conventional) or 4096 (PCIe extended)

    # DMA is refused (DmaFault) while PCI_COMMAND bus mastering is off, as real hardware would
    # master-abort. Plugins call Device.enable_bus_master() (again after a reset).
    require_bus_master: ClassVar[bool] = True

    # Poll loop (see warpdrive.emu.server): after the last sign of work the server keeps
    # calling poll() back to back for `poll_spin_s` (a store into a mapped doorbell is seen within
    # microseconds, at the cost of one busy core), then sleeps in select() for at most
    # `poll_idle_s` between polls (a doorbell rung while idle waits up to that long; an idle model
    # costs ~1/poll_idle_s cheap wakeups a second). Socket traffic always wakes it at once.
    # `polled=None` means: poll only if some region has mmap areas (else block until a message).
    poll_spin_s: ClassVar[float] = 0.02
    poll_idle_s: ClassVar[float] = 0.001
    polled: ClassVar[bool | None] = None

    # Class defaults so that a subclass which overrides __init__ without calling super() works.
    options: Mapping[str, str] = {}
    host: DeviceHost | None = None  # given by `attach()`

    def __init__(self, **options: str) -> None:
        """`options` are the `--set key=value` strings from the command line (or `model_options`
        of `open_emulated`); parse what you understand, reject the rest."""
        self.options = dict(options)

    # -- what a model describes -------------------------------------------------------------
    @abstractmethod
    def regions(self) -> list[RegionSpec]:
        """The device's regions. BARs 0-5 appear in config space; ROM/VGA are not emulated."""

    def irq_counts(self) -> dict[int, int]:
        """VFIO IRQ index (INTx 0, MSI 1, MSI-X 2) -> number of vectors. Must agree with the
        MSI/MSI-X capabilities in config space."""
        return {}

    def config_builder(self) -> ConfigBuilder:
        """A config-space builder with this model's IDs and BARs (from `regions()`) filled in."""
        cfg = ConfigBuilder(
            vendor_id=self.vendor_id, device_id=self.device_id, revision=self.revision,
            class_code=self.class_code, subsystem_vendor_id=self.subsystem_vendor_id,
            subsystem_id=self.subsystem_id, size=self.config_size)
        for r in self.regions():
            if r.index < 6 and r.size:
                cfg.set_bar(r.index, r.size, mem64=r.mem64, prefetchable=r.prefetchable)
        if VFIO_PCI_INTX_IRQ_INDEX in self.irq_counts():
            cfg.set_interrupt_pin(1)
        return cfg

    def build_config_space(self) -> bytearray:
        """256 B (or 4 KiB) of config space. Default: header + BARs, no capabilities. Override
        to add capabilities: `cfg = self.config_builder(); cfg.add_msi(1); return cfg.build()`."""
        return self.config_builder().build()

    # -- what a model does ------------------------------------------------------------------
    def attach(self, host: DeviceHost) -> None:
        """Called once by whoever hosts the model, before any other hook but the descriptions
        above (`regions`, `irq_counts`, `build_config_space`); then `setup()` runs."""
        self.host = host
        self.setup()

    def setup(self) -> None:
        """Called once the host is attached (dma, region memory, config exist)."""
        return None  # optional hook

    @abstractmethod
    def region_read(self, index: int, offset: int, size: int) -> bytes:
        """A trapped read of `size` bytes at `offset` of region `index`; return exactly `size`
        bytes. Raise `OSError(errno, ...)` to fail the access with that errno."""

    @abstractmethod
    def region_write(self, index: int, offset: int, data: bytes) -> None:
        """A trapped write. Raise `OSError(errno, ...)` to fail it."""

    def poll(self) -> bool:
        """Do any work found in shared memory (doorbells). Return True if some was done."""
        return False

    def reset(self) -> None:
        """Device reset (VFIO_USER_DEVICE_RESET). The framework has already restored config
        space and zeroed the shared region memory; restore your own register state here."""
        return None  # optional hook

    def on_dma_map(self, iova: int, size: int, fd: int | None, offset: int, readable: bool,
                   writable: bool) -> None:
        """The client mapped [iova, iova+size) (already checked and in `self.dma`), from `fd`
        at `offset` (a sealed memfd; None: no fd). The fd is closed after this returns: dup it
        to keep it. Raise OSError(errno, ...) to refuse the map (the client gets that errno)."""
        return None  # optional hook

    def on_dma_unmap(self, iova: int, size: int) -> None:
        """The client is unmapping [iova, iova+size): abandon work that uses it and drop views."""
        return None  # optional hook

    def config_read(self, offset: int, size: int) -> bytes:
        """Config-space read; the framework's emulation unless overridden."""
        return self.config.read(offset, size)

    def config_write(self, offset: int, data: bytes) -> None:
        """Config-space write; the framework's emulation (write masks, BAR sizing, enables)."""
        self.config.write(offset, data)

    def close(self) -> None:
        """The server is exiting."""
        return None  # optional hook

    # -- provided by the host ---------------------------------------------------------------
    @property
    def dma(self) -> ClientMemory:
        """The client's memory: `read`, `write`, `view`, each raising `DmaFault`."""
        return self._attached().dma

    @property
    def config(self) -> PciConfig:
        return self._attached().config

    def region_memory(self, index: int) -> memoryview:
        """Writable view of the shared memory behind region `index` (regions with mmap areas)."""
        return self._attached().region_memory(index)

    def region_address(self, index: int) -> int:
        """Process address of that memory, for ctypes loads/stores of exact width."""
        return self._attached().region_address(index)

    def region_u64(self, index: int, offset: int) -> ctypes.c_uint64:
        """A ctypes 64-bit cell over shared region memory: `.value` is one 8-byte load/store."""
        if offset % 8:
            raise InvalidArgumentError(f"model {self.name}: 64-bit cell at {offset:#x} of region "
                                       f"{index} is not 8-byte aligned")
        return ctypes.c_uint64.from_address(self.region_address(index) + offset)

    def region_u32(self, index: int, offset: int) -> ctypes.c_uint32:
        if offset % 4:
            raise InvalidArgumentError(f"model {self.name}: 32-bit cell at {offset:#x} of region "
                                       f"{index} is not 4-byte aligned")
        return ctypes.c_uint32.from_address(self.region_address(index) + offset)

    def raise_irq(self, index: int, vector: int = 0) -> bool:
        """Signal vector `vector` of IRQ `index` (writes the client's eventfd). Returns False if
        the client has not enabled it (or masked it: then it is left pending)."""
        return self._attached().raise_irq(index, vector)

    def irq_enabled(self, index: int, vector: int = 0) -> bool:
        """The client routed this vector to an eventfd and has not masked it."""
        return self._attached().irq_enabled(index, vector)

    def notify(self, vector: int = 0) -> bool:
        """Raise `vector` on whichever interrupt type the client enabled: MSI-X, else MSI, else
        INTx (vector 0). Returns False if none is enabled."""
        host = self._attached()
        for index in (VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX):
            if host.irq_assigned(index, vector):
                return self.raise_irq(index, vector)
        if vector == 0 and host.irq_assigned(VFIO_PCI_INTX_IRQ_INDEX, 0):
            return self.raise_irq(VFIO_PCI_INTX_IRQ_INDEX, 0)  # left pending while masked
        return False

    def messages_fd(self) -> int:
        """An fd readable while the server has messages or connections waiting, -1 if none: a
        model that sleeps inside poll() (its workers busy) waits on it too, so a client's
        request is not left waiting for the sleep to end."""
        return self.host.messages_fd() if self.host is not None else -1

    def host_stats(self) -> dict[str, Any]:
        """The host's counters (messages handled, DMA faults, ...), for debug registers."""
        return self._attached().stats()

    def bus_master_enabled(self) -> bool:
        return self.config.bus_master_enabled

    def log(self, msg: str) -> None:
        """A line on the model process's stderr (the launcher shows its tail when a model dies)."""
        if self.host is not None:
            self.host.log(msg)
        else:
            print(f"[{self.name}] {msg}", file=sys.stderr, flush=True)

    def _attached(self) -> DeviceHost:
        if self.host is None:
            raise UnsupportedError(f"model {self.name} is not attached to a host yet",
                                   hint="use the host's services in setup() or later, not in "
                                   "__init__")
        return self.host
