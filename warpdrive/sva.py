"""SVA accelerator queues: what a uacce backend hands a plugin, as `Device` is for PCI functions.

A uacce device (`/dev/<driver>-<n>`) gives out one hardware queue per open(); the kernel driver
has brought the function up, and the device walks this process's page table (SVA), so DMA
addresses are virtual addresses and `SvaDevice.dma` maps pin nothing (they are still checked).
Plugins (e.g. `warpdrive.devices.hisi_qm.uacce`) use only these two interfaces; the backend that
implements them is `warpdrive.backends.uacce`, opened by name through `warpdrive.backends`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from .dma import DmaSpace
from .mmio import Mmio


class SvaQueue(ABC):
    """One hardware queue: map its regions, `start()`, ring doorbells, `close()`."""

    name: str

    @abstractmethod
    def ioctl(self, request: int, arg: Any = None, *, what: str) -> int:
        """A driver-specific queue ioctl (e.g. the HiSilicon QM's UACCE_CMD_QM_SET_QP_CTX)."""

    @abstractmethod
    def map_mmio(self) -> Mmio:
        """The queue's doorbell page(s): device MMIO, explicit-width access only."""

    @abstractmethod
    def map_dus(self) -> memoryview:
        """The queue memory the kernel allocated (device user share)."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def wait(self, timeout: float | None) -> None:
        """Block until the kernel reports a completion on this queue."""

    @abstractmethod
    def close(self) -> None:
        """Stop the hardware queue and release it (no DMA in flight afterwards)."""


class SvaDevice(ABC):
    """An accelerator that hands out SVA queues."""

    name: str  # e.g. hisi_zip-0
    driver: str  # the kernel driver that registered it, e.g. hisi_zip
    api: str  # the queue interface it speaks, e.g. hisi_qm_v2

    @property
    @abstractmethod
    def dma(self) -> DmaSpace:
        """This process's address space as every queue of the device sees it."""

    @abstractmethod
    def open_queue(self) -> SvaQueue: ...

    @abstractmethod
    def close(self) -> None: ...
