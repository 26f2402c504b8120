"""The ZIP plugin's driver class (the contract of `warpdrive.devices.registry`): a ZIP virtual
function brought up over a `Device` (`hisi_qm.bringup.QmDevice`) with an engine on top."""

from __future__ import annotations

from collections.abc import Callable

from ...device import Device
from ..hisi_qm.bringup import QmDevice
from .engine import ZipEngine
from .hw import ZIP


class ZipDriver:
    """probe: a ZIP VF by its IDs. init: QM bring-up (bus master, MSI, queue contexts) and a
    `ZipEngine` (`self.engine`). remove: the engine stops its queues, the function is reset (no
    DMA in flight), the queue memory is released."""

    name = "zip"

    @staticmethod
    def probe(dev: Device) -> bool:
        return QmDevice.probe(dev, ZIP)

    def __init__(self, dev: Device, *, doorbell: str = "mmap", wait: str = "auto",
                 depth: int | None = None, timeout: float = 30.0,
                 on_close: Callable[[], None] | None = None) -> None:
        """`on_close` runs after the engine closed (the zip API closes a device it opened)."""
        self.dev = dev
        qm = QmDevice(dev, ZIP, doorbell=doorbell, interrupts=wait != "spin")
        try:
            self.engine = ZipEngine(qm, depth=depth, wait=wait, timeout=timeout,
                                    on_close=on_close)
        except BaseException:
            qm.close()
            raise
        dev.on_close(self.remove)

    def remove(self) -> None:
        self.engine.close()
