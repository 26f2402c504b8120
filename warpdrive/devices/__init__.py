"""Device plugins (edu, zip, virtio, crypto, hisi_qm), their registry (the plugin contract), and
`warpdrive.devices()`, the PCI discovery call.

`warpdrive.devices` is both this package and a function: calling it lists every PCI function
(`warpdrive.pci.devices`, each function's plugin named by the registry). A module cannot be
called, so the module's class is swapped for a callable subclass; plugin submodules import as
usual (`warpdrive.devices.edu`). Typed code can use `warpdrive.list_devices`, the same function.
"""

from __future__ import annotations

import sys
import types

TYPE_CHECKING = False  # (not typing's: importing typing costs ~3 ms of every process's boot)
if TYPE_CHECKING:
    from ..pci.sysfs import PciFunction


class _DevicesModule(types.ModuleType):
    def __call__(self, sysfs_root: str = "/sys", dev_root: str = "/dev") -> list[PciFunction]:
        from ..pci import devices
        from .registry import claim

        return devices(sysfs_root, dev_root, claim=claim)


sys.modules[__name__].__class__ = _DevicesModule
