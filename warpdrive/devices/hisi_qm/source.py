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

    def wakeups(self, q: QmQueue) -> int:
        """Wake-ups taken so far on what `q`'s waiters sleep on: read it before the last look
        at the CQ and hand it to `block` (no wake-up is lost between the two: `wake`)."""

    def block(self, q: QmQueue, remaining: float, seen: int | None = None) -> None:
        """Sleep until a completion may have come to `q` (at once if a wake-up was taken since
        `seen`), for at most `remaining` (implementations bound it further)."""

    def close(self) -> None: ...
