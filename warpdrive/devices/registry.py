"""Static table of the device plugins warpdrive knows, and which PCI functions each one claims.

Deliberately a plain table with no imports of the plugins themselves: discovery (`warpdrive
devices`) must stay cheap and must not pull in a backend. A plugin's code is imported only when
someone opens a device with it (`importlib.import_module(plugin.module)`).

To add a plugin, append a `Plugin` to `PLUGINS`; `claim()` returns the first match.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plugin:
    """One device plugin: its name, the module that implements it and the functions it drives."""

    name: str
    module: str
    description: str
    ids: tuple[tuple[int, int], ...] = ()
    """(vendor, device) pairs this plugin drives."""
    classes: tuple[tuple[int, int], ...] = ()
    """(class_code, mask) pairs: matches when `class & mask == class_code & mask` (24-bit class)."""
    transports: tuple[str, ...] = ("vfio",)
    """How the plugin reaches the hardware: "vfio" (vfio-pci / iommufd), "uacce", "vfio-user"."""

    def matches(self, vendor: int, device: int, class_code: int | None = None) -> bool:
        if (vendor, device) in self.ids:
            return True
        if class_code is None:
            return False
        return any((class_code & mask) == (code & mask) for code, mask in self.classes)


PLUGINS: tuple[Plugin, ...] = (
    Plugin(
        name="edu",
        module="warpdrive.devices.edu",
        description="QEMU edu teaching device (factorial, DMA engine, MSI)",
        ids=((0x1234, 0x11E8),),
        transports=("vfio", "vfio-user"),
    ),
    Plugin(
        name="crypto",
        module="warpdrive.devices.crypto",
        description="virtio-crypto (modern, virtio 1.x)",
        # virtio-crypto has no transitional (legacy) device id: 0x1040 + 20 only.
        ids=((0x1AF4, 0x1054),),
    ),
    Plugin(
        name="zip",
        module="warpdrive.devices.zip",
        description="HiSilicon ZIP compression engine (QM queues)",
        ids=((0x19E5, 0xA250), (0x19E5, 0xA251)),  # PF, VF
        transports=("uacce", "vfio", "vfio-user"),
    ),
)


def claim(vendor: int, device: int, class_code: int | None = None) -> str | None:
    """Name of the plugin that drives this PCI function, or None."""
    for plugin in PLUGINS:
        if plugin.matches(vendor, device, class_code):
            return plugin.name
    return None


def get(name: str) -> Plugin | None:
    """The plugin called `name`, or None."""
    for plugin in PLUGINS:
        if plugin.name == name:
            return plugin
    return None
