"""The plugin contract, and the registry of the plugins warpdrive knows.

A plugin is a driver class for one kind of PCI function, with the three steps of the kernel's
VFIO selftest drivers:

- ``probe(dev) -> bool`` (a static or class method): is this my device? It reads identity
  (config-space IDs) and nothing else: no register writes, no DMA maps, no interrupts, no BAR
  mapping. A False answer leaves the device exactly as it was.
- ``__init__(dev, **options)``, *init*: take the device. Set the DMA mask the device can address
  (``dev.dma.set_dma_mask``), map BARs, enable bus mastering, route the interrupts the plugin
  uses, and register ``remove`` with ``dev.on_close`` so that closing the device removes the
  plugin first.
- ``remove()``: stop using the device. When it returns, no DMA is in flight and the plugin holds
  no DMA mapping (``DmaSpace.hold``), so the caller may unmap anything or close the device.
  Calling it again does nothing.

A plugin receives a `Device` and uses only the core (`Device`, `DmaSpace`, `Mmio`/`Doorbell`,
`warpdrive.memory`) and `warpdrive.uapi`, never a backend (tests/test_layers.py enforces it), so
one driver runs on legacy VFIO, iommufd and vfio-user alike. docs/plugins.md walks through edu.

The registry is plain data (`Plugin`: name, the driver class as ``"module:Class"``, the
(vendor, device) IDs it claims, the backends it is tested on), so discovery stays cheap: a
plugin's module is imported only by `Plugin.load`. Plugins from other distributions register
through the entry-point group ``warpdrive.plugins``: an entry point named after the plugin that
points at a `Plugin` (``mydev = mypkg.wd_plugin:PLUGIN`` under ``[options.entry_points]``).
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..errors import DeviceNotFoundError, InvalidArgumentError, WarpdriveError

if TYPE_CHECKING:
    from ..device import Device

ENTRY_POINT_GROUP = "warpdrive.plugins"
BACKENDS = ("vfio", "iommufd", "vfio-user")
"""What a plugin may claim in `Plugin.backends`: the `Device` backends (uacce queues are not a
`Device`; a plugin reaches them its own way, see `warpdrive.devices.hisi_qm.uacce`)."""


class Driver(Protocol):
    """What `Plugin.load` returns: the plugin's driver class (see the module docstring)."""

    name: ClassVar[str]

    @staticmethod
    def probe(dev: Device) -> bool: ...

    def __init__(self, dev: Device, **options: Any) -> None: ...

    def remove(self) -> None:
        """Stop the device: afterwards no DMA is in flight and no interrupt is armed."""


@dataclass(frozen=True)
class Plugin:
    """One registered plugin."""

    name: str
    driver: str
    """The driver class, ``"package.module:Class"``; imported by `load` only."""
    description: str
    ids: tuple[tuple[int, int], ...]
    """(vendor, device) pairs this plugin drives."""
    backends: tuple[str, ...]
    """The backends the plugin is claimed (and tested, tests/test_plugin_contract.py) to run on."""

    def __post_init__(self) -> None:
        module, sep, cls = self.driver.partition(":")
        if not sep or not module or not cls.isidentifier():
            raise InvalidArgumentError(
                f"plugin {self.name!r}: driver {self.driver!r} is not 'package.module:Class'")
        unknown = set(self.backends) - set(BACKENDS)
        if unknown:
            raise InvalidArgumentError(
                f"plugin {self.name!r} claims unknown backend(s) {sorted(unknown)}",
                hint=f"choose from {', '.join(BACKENDS)}")

    def matches(self, vendor: int, device: int) -> bool:
        return (vendor, device) in self.ids

    def load(self) -> type[Driver]:
        """Import the driver class."""
        module, _, cls = self.driver.partition(":")
        try:
            obj = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as e:
            raise DeviceNotFoundError(f"plugin {self.name}: cannot load {self.driver} ({e})",
                                      hint="is the package providing it installed?") from None
        if not (isinstance(obj, type) and callable(getattr(obj, "probe", None))
                and callable(getattr(obj, "remove", None))):
            raise InvalidArgumentError(
                f"plugin {self.name}: {self.driver} is not a driver class (needs probe(dev), "
                "__init__(dev), remove())", hint="see docs/plugins.md")
        return obj


BUILTIN: tuple[Plugin, ...] = (
    Plugin(
        name="edu",
        driver="warpdrive.devices.edu:Edu",
        description="QEMU edu teaching device (factorial, DMA engine, MSI)",
        ids=((0x1234, 0x11E8),),
        backends=("vfio", "iommufd"),
    ),
    Plugin(
        name="crypto",
        driver="warpdrive.devices.crypto.engine:VirtioCrypto",
        description="virtio-crypto (modern, virtio 1.x): AES ciphers",
        # virtio-crypto has no transitional (legacy) device id: 0x1040 + 20 only.
        ids=((0x1AF4, 0x1054),),
        backends=("vfio", "iommufd", "vfio-user"),  # vfio-user: the bundled model (emu:crypto)
    ),
    Plugin(
        name="zip",
        driver="warpdrive.devices.zip.driver:ZipDriver",
        description="HiSilicon ZIP compression engine, virtual functions (QM queues)",
        ids=((0x19E5, 0xA250), (0x19E5, 0xA251)),  # PF (refused by init), VF
        # The lab presents a ZIP function (QEMU vfio-user-pci + the model, zip_bdf) to the guest
        # kernel: the kernel backends run there, vfio-user against the bundled model.
        backends=("vfio", "iommufd", "vfio-user"),
    ),
)

_lock = threading.Lock()
_external: tuple[Plugin, ...] | None = None
_errors: list[str] = []


def _load_entry_points() -> tuple[Plugin, ...]:
    found: list[Plugin] = []
    names = {p.name for p in BUILTIN}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            obj = ep.load()
            plugin = obj() if callable(obj) and not isinstance(obj, Plugin) else obj
            if not isinstance(plugin, Plugin):
                raise InvalidArgumentError(f"{ep.value} is not a warpdrive Plugin")
            if plugin.name != ep.name:
                raise InvalidArgumentError(f"entry point {ep.name!r} names plugin "
                                           f"{plugin.name!r}; the two must agree")
            if plugin.name in names:
                raise InvalidArgumentError(f"plugin name {plugin.name!r} is already taken")
        except (ImportError, AttributeError, TypeError, WarpdriveError) as e:
            _errors.append(f"entry point {ep.name} = {ep.value}: {e}")
            continue
        names.add(plugin.name)
        found.append(plugin)
    return tuple(found)


def plugins() -> tuple[Plugin, ...]:
    """The built-in plugins, then those registered through entry points (read once)."""
    global _external
    with _lock:
        if _external is None:
            _external = _load_entry_points()
        return BUILTIN + _external


def load_errors() -> list[str]:
    """Entry points that could not be used (bad target, duplicate name), one line each."""
    plugins()
    return list(_errors)


def refresh() -> None:
    """Forget the entry points read so far (after installing a plugin in this process)."""
    global _external
    with _lock:
        _external = None
        _errors.clear()


def claim(vendor: int, device: int) -> str | None:
    """Name of the plugin that drives this PCI function, or None."""
    for plugin in plugins():
        if plugin.matches(vendor, device):
            return plugin.name
    return None


def get(name: str) -> Plugin | None:
    """The plugin called `name`, or None."""
    for plugin in plugins():
        if plugin.name == name:
            return plugin
    return None


def attach(dev: Device, name: str | None = None, **options: Any) -> Driver:
    """Init the plugin for `dev` (the one called `name`, else the one claiming its IDs) after
    its probe agreed; the driver is removed when the device closes."""
    plugin = get(name) if name is not None else next(
        (p for p in plugins() if p.matches(dev.vendor_id, dev.device_id)), None)
    if plugin is None:
        raise DeviceNotFoundError(
            f"no plugin {name!r}" if name is not None else
            f"no plugin claims {dev.name} ({dev.vendor_id:04x}:{dev.device_id:04x})",
            hint="`warpdrive plugins` lists the plugins and the IDs they claim")
    driver = plugin.load()
    if not driver.probe(dev):
        raise DeviceNotFoundError(
            f"plugin {plugin.name} does not drive {dev.name} "
            f"({dev.vendor_id:04x}:{dev.device_id:04x})",
            hint="`warpdrive plugins` lists the plugins and the IDs they claim")
    return driver(dev, **options)
