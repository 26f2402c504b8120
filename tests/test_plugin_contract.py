"""The plugin contract (warpdrive/devices/registry.py), run for every plugin on every backend it
claims in its registry entry: the matrix below is built from the registry, so a plugin cannot
claim a backend this test does not run it on.

- probe: says yes to its device and has no side effect (command register, BARs, interrupts and
  DMA maps unchanged);
- init (`registry.attach`): bus mastering on, the interrupts the plugin uses routed, the DMA
  mask it needs set; then the plugin does one real job on the device;
- remove: afterwards no DMA mapping is held by the plugin (nothing the device may still touch),
  and a second remove does nothing; the device then closes cleanly.

Kernel backends ("vfio" legacy container, "iommufd" cdev) run in the lab guest against QEMU's
devices behind the vIOMMU; "vfio-user" runs here against the bundled device model. A plugin from
another distribution registers through the `warpdrive.plugins` entry-point group: the last test
installs one (a driver for the testdev model) and runs the same contract on it.
"""

from __future__ import annotations

import os
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import warpdrive
from lab.pytest_lab import lab_kernels
from warpdrive.device import Device
from warpdrive.devices import registry
from warpdrive.uapi import pci_regs as R
from warpdrive.uapi.vfio import VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX

KERNEL_BACKENDS = ("vfio", "iommufd")

# How the test reaches a device each plugin drives: the lab fixture naming its PCI function (for
# the kernel backends) and the bundled model (for vfio-user).
REACH: dict[str, dict[str, str]] = {
    "edu": {"lab": "edu_bdf"},
    "crypto": {"lab": "crypto_bdf", "emu": "crypto"},
    "zip": {"lab": "zip_bdf", "emu": "zip"},
}


def _exercise_edu(drv: Any, dev: Device) -> None:
    assert drv.factorial(5) == 120
    buf = dev.dma.alloc(4096)
    buf.view[:4] = b"edu!"
    drv.dma_to_device(buf, size=4)
    buf.view[:4] = bytes(4)
    drv.dma_from_device(buf, size=4)
    assert bytes(buf.view[:4]) == b"edu!"


def _exercise_crypto(drv: Any, dev: Device) -> None:
    from warpdrive.crypto import Cipher

    key, iv, data = bytes(range(16)), bytes(16), b"sixteen byte blk" * 4
    with Cipher("aes-cbc", key, device=drv) as c:
        assert c.decrypt(iv, c.encrypt(iv, data)) == data


def _exercise_zip(drv: Any, dev: Device) -> None:
    data = b"warpdrive plugin contract " * 200
    blob = drv.engine.compress(data, wbits=31)
    assert zlib.decompress(blob, 31) == data
    assert drv.engine.decompress(blob, wbits=31) == data


EXERCISE: dict[str, Callable[[Any, Device], None]] = {
    "edu": _exercise_edu, "crypto": _exercise_crypto, "zip": _exercise_zip}
# What init must have set up, beyond bus mastering: (IRQ indexes enabled, DMA mask or None)
EXPECT: dict[str, tuple[set[int], int | None]] = {
    "edu": ({VFIO_PCI_MSI_IRQ_INDEX}, (1 << 28) - 1),
    "crypto": ({VFIO_PCI_MSIX_IRQ_INDEX}, None),  # a vector for sleeping waiters; 64-bit DMA
    "zip": ({VFIO_PCI_MSI_IRQ_INDEX}, None),
}


def _matrix() -> list[Any]:
    # Kernel backends run once per lab kernel: the lab plugin parametrizes lab-marked functions
    # by kernel, but this one is lab-marked per case, so its kernel cases name their kernel here.
    cases = []
    for plugin in registry.plugins():
        for backend in plugin.backends:
            if backend not in KERNEL_BACKENDS:
                cases.append(pytest.param(plugin.name, backend, None,
                                          id=f"{plugin.name}-{backend}"))
                continue
            cases += [pytest.param(plugin.name, backend, k, id=f"{plugin.name}-{backend}-k{k}",
                                   marks=pytest.mark.lab) for k in lab_kernels()]
    return cases


@pytest.fixture
def device(request: pytest.FixtureRequest, plugin: str, backend: str) -> Iterator[Device]:
    reach = REACH.get(plugin, {})
    if backend in KERNEL_BACKENDS:
        if "lab" not in reach:
            pytest.fail(f"plugin {plugin} claims {backend} but this test has no lab device for "
                        "it: add one to REACH (or drop the claim)")
        from warpdrive import binding

        bdf = request.getfixturevalue(reach["lab"])
        with binding.bound_to(bdf), warpdrive.open(bdf, backend=backend) as dev:
            yield dev
    else:
        if "emu" not in reach:
            pytest.fail(f"plugin {plugin} claims {backend} but this test has no device model "
                        "for it: add one to REACH (or drop the claim)")
        with warpdrive.open(f"emu:{reach['emu']}") as dev:
            yield dev


def _state(dev: Device) -> tuple[int, tuple[int, ...], dict[int, int], int]:
    return (dev.config_read16(R.PCI_COMMAND), dev.mapped_bars, dev.enabled_irqs,
            len(dev.dma.mappings))


def check_contract(dev: Device, plugin: registry.Plugin,
                   exercise: Callable[[Any, Device], None] | None,
                   expect: tuple[set[int], int | None] | None) -> None:
    driver = plugin.load()
    assert plugin.matches(dev.vendor_id, dev.device_id)
    before = _state(dev)
    assert driver.probe(dev) is True
    assert _state(dev) == before, "probe changed the device or the process's view of it"

    drv = registry.attach(dev, plugin.name)
    assert isinstance(drv, driver)
    assert dev.config_read16(R.PCI_COMMAND) & R.PCI_COMMAND_MASTER, "init left bus mastering off"
    if expect is not None:
        irqs, mask = expect
        assert set(dev.enabled_irqs) == irqs
        if mask is not None:
            assert dev.dma.dma_mask == mask
    if exercise is not None:
        exercise(drv, dev)

    drv.remove()
    held = {m.iova: sorted(m.users.values()) for m in dev.dma.mappings if m.users}
    assert not held, f"after remove() the device may still use DMA memory: {held}"
    drv.remove()  # a second remove does nothing


@pytest.mark.parametrize(("plugin", "backend", "lab_kernel"), _matrix())
def test_plugin_contract(device: Device, plugin: str, backend: str,
                         lab_kernel: str | None) -> None:
    assert device.backend == backend
    entry = registry.get(plugin)
    assert entry is not None
    check_contract(device, entry, EXERCISE.get(plugin), EXPECT.get(plugin))
    device.close()  # the plugin is removed already; closing must not fail either


def test_the_matrix_covers_every_builtin_claim() -> None:
    """README's table of plugins and backends is this matrix; every claim has a way to run."""
    for plugin in registry.BUILTIN:
        assert plugin.backends, plugin.name
        for backend in plugin.backends:
            key = "lab" if backend in KERNEL_BACKENDS else "emu"
            assert key in REACH.get(plugin.name, {}), (plugin.name, backend)
        assert plugin.name in EXERCISE and plugin.name in EXPECT


EXAMPLE_PLUGIN = '''
"""A plugin from another distribution: drives the bundled testdev model (1234:7e57)."""
from warpdrive.devices.registry import Plugin
from warpdrive.uapi.vfio import VFIO_PCI_MSI_IRQ_INDEX

PLUGIN = Plugin(name="wdexample", driver="wdexample_plugin:TestdevDriver",
                description="example third-party plugin", ids=((0x1234, 0x7E57),),
                backends=("vfio-user",))


class TestdevDriver:
    name = "wdexample"

    @staticmethod
    def probe(dev):
        return (dev.vendor_id, dev.device_id) == (0x1234, 0x7E57)

    def __init__(self, dev):
        self.dev = dev
        dev.dma.set_dma_mask((1 << 48) - 1)
        self.bar = dev.map_bar(0)
        dev.enable_bus_master()
        self.irq = dev.enable_irqs(VFIO_PCI_MSI_IRQ_INDEX, 1)[0]
        self.ring = dev.dma.alloc(4096)
        dev.dma.hold(self.ring, self, "example ring")
        self.removed = False
        dev.on_close(self.remove)

    def ident(self):
        return self.bar.read32(0)

    def remove(self):
        if not self.removed:
            self.removed = True
            self.dev.dma.release(self.ring, self)
'''


def _install(where: Path, monkeypatch: pytest.MonkeyPatch, dist: str, entries: str) -> None:
    """A distribution `dist` on sys.path whose warpdrive.plugins entry points are `entries`."""
    info = where / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[warpdrive.plugins]\n{entries}\n")
    monkeypatch.syspath_prepend(str(where))
    registry.refresh()


def test_third_party_plugin_through_entry_points(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "wdexample_plugin.py").write_text(EXAMPLE_PLUGIN)
    _install(tmp_path, monkeypatch, "wdexample", "wdexample = wdexample_plugin:PLUGIN")
    try:
        plugin = registry.get("wdexample")
        assert plugin is not None and plugin in registry.plugins()
        assert registry.claim(0x1234, 0x7E57) == "wdexample"
        assert not registry.load_errors()
        with warpdrive.open("emu:testdev") as dev:
            check_contract(dev, plugin, lambda drv, dev: drv.ident() == 0x7E57DE01,
                           ({VFIO_PCI_MSI_IRQ_INDEX}, (1 << 48) - 1))
    finally:
        sys.modules.pop("wdexample_plugin", None)
        monkeypatch.undo()
        registry.refresh()
    assert registry.get("wdexample") is None


def test_broken_entry_points_are_reported_not_fatal(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, monkeypatch, "wdbroken",
             "edu = os:sep\nmissing = wd_no_such_module:PLUGIN")
    try:
        names = [p.name for p in registry.plugins()]
        assert names == [p.name for p in registry.BUILTIN]  # the built-ins still work
        errors = registry.load_errors()
        assert len(errors) == 2 and any("not a warpdrive Plugin" in e for e in errors)
        assert any("wd_no_such_module" in e for e in errors)
    finally:
        monkeypatch.undo()
        registry.refresh()
    assert os.sep  # untouched


def test_readme_claims_exactly_the_matrix() -> None:
    """README's plugin table claims a backend for a plugin iff the registry does (and so this
    test runs it)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    header = "| plugin | legacy VFIO (`vfio`) | iommufd | vfio-user |"
    assert header in readme
    lines = readme[readme.index(header):].splitlines()[2:]
    claimed: dict[str, set[str]] = {}
    for line in lines:
        if not line.startswith("| `"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = cells[0].split("`")[1]
        claimed[name] = {b for b, c in zip(("vfio", "iommufd", "vfio-user"), cells[1:])
                         if c != "—"}
    assert claimed == {p.name: set(p.backends) for p in registry.BUILTIN}
