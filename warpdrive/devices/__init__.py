"""Device plugins (edu, zip, virtio, crypto), and `warpdrive.devices()`, the PCI discovery call.

`warpdrive.devices` is both this package and a function: calling it lists every PCI function
(`warpdrive.pci.devices`). A module cannot be called, so the module's class is swapped for a
callable subclass; plugin submodules import as usual (`warpdrive.devices.edu`). Typed code can use
`warpdrive.list_devices`, the same function.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..pci.sysfs import PciFunction


class _DevicesModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> list[PciFunction]:
        from ..pci import devices

        return devices(*args, **kwargs)


sys.modules[__name__].__class__ = _DevicesModule
