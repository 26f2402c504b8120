"""Where an engine gets its QM queues: a VF it brought up (`bringup.QmDevice`, over any
`Device`) or queues the kernel set up (`uacce.UacceQueues`). Engines use only this."""

from __future__ import annotations

from typing import Protocol

from ...dma import DmaSpace
from .queue import QmQueue


class QueueSource(Protocol):
    """Where an engine gets its queues: a brought-up VF, or uacce queues."""

    name: str
    backend: str

    @property
    def version(self) -> int:
        """QM version (PCI revision, or from the uacce api string)."""

    @property
    def dma(self) -> DmaSpace: ...

    def start_queue(self, qc_type: int, *, depth: int | None = None,
                    irq: bool = False) -> QmQueue: ...

    def stop_queue(self, q: QmQueue) -> None: ...

    def block(self, q: QmQueue, remaining: float) -> None: ...

    def close(self) -> None: ...
