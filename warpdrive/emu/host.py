"""What a device model may ask of the process that hosts it: the one-way host interface.

A model (`warpdrive.emu.model.DeviceModel`) is handed a `DeviceHost` in `attach()` and reaches
outside itself only through it: the client's memory (`dma`: bounds- and permission-checked reads,
writes and views), its PCI config space (`config`), the shared memory behind its mmap-able
regions, interrupts, the host's counters and a log. It never sees who implements this (the
vfio-user server in `warpdrive.emu.server`, or a test harness) and reaches it no other way; the
host in turn drives the model only through the model's public hooks (`regions`, `region_read`,
`poll`, `reset`, ...) and never touches its attributes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from .dma import ClientMemory
from .pci_config import PciConfig

TYPE_CHECKING = False  # (not typing's: importing typing costs ~3 ms of every process's boot)
if TYPE_CHECKING:
    from typing import Any


class DeviceHost(ABC):
    """Services for one hosted model."""

    @property
    @abstractmethod
    def dma(self) -> ClientMemory:
        """The client's memory as it mapped it: `read`, `write`, `view` (raise `DmaFault`)."""

    @property
    @abstractmethod
    def config(self) -> PciConfig:
        """The emulated PCI config space (command register, MSI/MSI-X enables, BARs)."""

    @abstractmethod
    def region_memory(self, index: int) -> memoryview:
        """Writable view of the shared memory behind region `index` (one with mmap areas)."""

    @abstractmethod
    def region_address(self, index: int) -> int:
        """Process address of that memory, for ctypes loads and stores of exact width."""

    @abstractmethod
    def raise_irq(self, index: int, vector: int) -> bool:
        """Signal a vector; False if the client has not enabled it (left pending if masked)."""

    @abstractmethod
    def irq_assigned(self, index: int, vector: int) -> bool:
        """The client routed this vector to an eventfd (masked or not)."""

    @abstractmethod
    def irq_enabled(self, index: int, vector: int) -> bool:
        """The client routed this vector to an eventfd and has not masked it."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counters a model may show in a debug register: `messages` (handled so far),
        `by_command`, `dma_faults`, `dma_maps`, `views_held_after_unmap`."""

    @abstractmethod
    def log(self, msg: str) -> None:
        """One line on the model process's stderr (the launcher shows its tail on failure)."""

    def messages_fd(self) -> int:
        """An fd that is readable while the server has messages or connections waiting (its
        epoll set), for a model that sleeps in poll() to wake for them; -1 when there is none."""
        return -1
