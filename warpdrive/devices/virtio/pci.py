"""The modern virtio-pci transport (virtio 1.x, `transport-pci.tex`) over a `Device`.

The device describes its register blocks with vendor-specific PCI capabilities (`virtio_pci_cap`):
common configuration, notification area (+ `notify_off_multiplier`), ISR byte and the
device-specific configuration, each a window into some BAR. The BARs are mapped with
`Device.map_bar`, so every register access below is one explicit-width load or store into the
mapping (no syscall); the spec requires fields to be accessed at their natural width, which is also
all emulated MMIO can decode. Setup-time config-space reads go through the backend (pread).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ...device import Device, Interrupt, capability_list
from ...errors import (
    DeviceError,
    DeviceNotFoundError,
    DeviceTimeoutError,
    InvalidArgumentError,
    UnsupportedError,
)
from ...mmio import Doorbell, Mmio
from ...uapi import pci_regs as R
from ...uapi import virtio as U
from ...uapi.vfio import VFIO_PCI_MSIX_IRQ_INDEX

VIRTIO_PCI_VENDOR_ID = 0x1AF4
VIRTIO_PCI_MODERN_DEVICE_BASE = 0x1040  # modern device id = 0x1040 + virtio device id

_CAP_NAMES = {
    U.VIRTIO_PCI_CAP_COMMON_CFG: "common",
    U.VIRTIO_PCI_CAP_NOTIFY_CFG: "notify",
    U.VIRTIO_PCI_CAP_ISR_CFG: "ISR",
    U.VIRTIO_PCI_CAP_DEVICE_CFG: "device",
}
_STATUS_NAMES = (
    (U.VIRTIO_CONFIG_S_ACKNOWLEDGE, "ACKNOWLEDGE"),
    (U.VIRTIO_CONFIG_S_DRIVER, "DRIVER"),
    (U.VIRTIO_CONFIG_S_FEATURES_OK, "FEATURES_OK"),
    (U.VIRTIO_CONFIG_S_DRIVER_OK, "DRIVER_OK"),
    (U.VIRTIO_CONFIG_S_NEEDS_RESET, "NEEDS_RESET"),
    (U.VIRTIO_CONFIG_S_FAILED, "FAILED"),
)

T = TypeVar("T")


def status_names(status: int) -> str:
    names = [n for bit, n in _STATUS_NAMES if status & bit]
    return "|".join(names) if names else "0"


@dataclass(frozen=True)
class VirtioCap:
    """One virtio vendor capability: a window of `length` bytes at `offset` in BAR `bar`."""

    cfg_type: int
    bar: int
    offset: int
    length: int
    config_offset: int  # where the capability sits in PCI config space
    notify_off_multiplier: int = 0


def read_virtio_caps(device: Device) -> list[VirtioCap]:
    """Every virtio vendor capability in config-space order (parsing only; maps nothing)."""
    caps: list[VirtioCap] = []
    cfg = device.config_header()  # one read; the capabilities are parsed from this copy

    def u32(at: int) -> int:
        return int.from_bytes(cfg[at:at + 4], "little")

    for cap_id, pos in capability_list(cfg):
        if cap_id != R.PCI_CAP_ID_VNDR or pos + 16 > len(cfg):
            continue
        cap_len = cfg[pos + U.VIRTIO_PCI_CAP_LEN]
        if cap_len < 16:
            continue  # some other vendor capability, not a virtio_pci_cap
        cfg_type = cfg[pos + U.VIRTIO_PCI_CAP_CFG_TYPE]
        mult = 0
        if cfg_type == U.VIRTIO_PCI_CAP_NOTIFY_CFG and cap_len >= 20 and pos + 20 <= len(cfg):
            mult = u32(pos + U.VIRTIO_PCI_NOTIFY_CAP_MULT)
        caps.append(VirtioCap(
            cfg_type=cfg_type,
            bar=cfg[pos + U.VIRTIO_PCI_CAP_BAR],
            offset=u32(pos + U.VIRTIO_PCI_CAP_OFFSET),
            length=u32(pos + U.VIRTIO_PCI_CAP_LENGTH),
            config_offset=pos,
            notify_off_multiplier=mult,
        ))
    return caps


class CapWindow:
    """Explicit-width accessors confined to one capability's window of a mapped BAR."""

    def __init__(self, name: str, mmio: Mmio, cap: VirtioCap) -> None:
        self.name = name
        self.mmio = mmio
        self.cap = cap
        self.base = cap.offset
        self.length = cap.length

    def _at(self, offset: int, width: int) -> int:
        if offset < 0 or offset + width > self.length:
            raise InvalidArgumentError(
                f"{width * 8}-bit access at {offset:#x} is outside the virtio {self.name} "
                f"window ({self.length:#x} bytes)")
        return self.base + offset

    def read8(self, offset: int) -> int:
        return self.mmio.read8(self._at(offset, 1))

    def read16(self, offset: int) -> int:
        return self.mmio.read16(self._at(offset, 2))

    def read32(self, offset: int) -> int:
        return self.mmio.read32(self._at(offset, 4))

    def write8(self, offset: int, value: int) -> None:
        self.mmio.write8(self._at(offset, 1), value)

    def write16(self, offset: int, value: int) -> None:
        self.mmio.write16(self._at(offset, 2), value)

    def write32(self, offset: int, value: int) -> None:
        self.mmio.write32(self._at(offset, 4), value)


@dataclass(frozen=True)
class QueueInfo:
    index: int
    size: int
    notify: Doorbell
    msix_vector: int


class VirtioPciTransport:
    """A modern virtio-pci function: status, features, device config, queue setup, notify.

    Typical use (the device-initialisation sequence of the spec):

        t = VirtioPciTransport(dev)
        t.reset(); t.add_status(ACKNOWLEDGE | DRIVER)
        t.negotiate(optional=...)            # VERSION_1 + ACCESS_PLATFORM, then FEATURES_OK
        cfg = t.read_device_config(lambda: ...)
        q = t.setup_queue(0, desc, avail, used, size)
        t.driver_ok()
    """

    RESET_TIMEOUT = 5.0

    def __init__(self, device: Device, *, expect_device_id: int | None = None) -> None:
        self.device = device
        if device.vendor_id != VIRTIO_PCI_VENDOR_ID:
            raise DeviceNotFoundError(
                f"{device.name} is not a virtio device (vendor {device.vendor_id:#06x})",
                hint="give a virtio function (vendor 0x1af4); `warpdrive devices` names the "
                "plugin of each function")
        did = device.device_id
        if did < VIRTIO_PCI_MODERN_DEVICE_BASE:
            raise UnsupportedError(
                f"{device.name} is a transitional/legacy virtio device (id {did:#06x}); "
                "warpdrive drives modern (virtio 1.x) devices only",
                hint="start QEMU with disable-legacy=on")
        self.virtio_id = did - VIRTIO_PCI_MODERN_DEVICE_BASE
        if expect_device_id is not None and self.virtio_id != expect_device_id:
            raise DeviceNotFoundError(
                f"{device.name} is virtio device type {self.virtio_id}, not {expect_device_id}")
        self.caps = read_virtio_caps(device)
        found: dict[int, VirtioCap] = {}
        for cap in self.caps:
            # The spec: several caps of one type may exist; the driver should use the first one
            # it can use (BARs 0-5 only; higher values are reserved).
            if cap.cfg_type in _CAP_NAMES and cap.cfg_type not in found and cap.bar <= 5:
                found[cap.cfg_type] = cap
        for t in (U.VIRTIO_PCI_CAP_COMMON_CFG, U.VIRTIO_PCI_CAP_NOTIFY_CFG,
                  U.VIRTIO_PCI_CAP_ISR_CFG):
            if t not in found:
                raise UnsupportedError(
                    f"{device.name} has no virtio {_CAP_NAMES[t]} capability",
                    hint="is it a modern virtio-pci device (disable-legacy=on)?")
        self._windows: dict[int, CapWindow] = {}
        for t, cap in found.items():
            mmio = device.map_bar(cap.bar)
            if cap.offset + cap.length > mmio.size:
                raise DeviceError(
                    f"virtio {_CAP_NAMES[t]} window {cap.offset:#x}+{cap.length:#x} overruns "
                    f"BAR {cap.bar} of {device.name} ({mmio.size:#x} bytes)")
            self._windows[t] = CapWindow(_CAP_NAMES[t], mmio, cap)
        self.common = self._windows[U.VIRTIO_PCI_CAP_COMMON_CFG]
        self.isr = self._windows[U.VIRTIO_PCI_CAP_ISR_CFG]
        self.notify_cap = found[U.VIRTIO_PCI_CAP_NOTIFY_CFG]
        self.device_cfg = self._windows.get(U.VIRTIO_PCI_CAP_DEVICE_CFG)
        self.features = 0  # negotiated
        self._msix: list[Interrupt] = []

    # -- status ----------------------------------------------------------------------------
    @property
    def status(self) -> int:
        return self.common.read8(U.VIRTIO_PCI_COMMON_STATUS)

    def add_status(self, bits: int) -> None:
        self.common.write8(U.VIRTIO_PCI_COMMON_STATUS, self.status | bits)

    def reset(self) -> None:
        """Write 0 to device_status and wait until it reads back 0 (virtio 1.x requires the
        wait: the device may still be finishing in-flight requests)."""
        self.common.write8(U.VIRTIO_PCI_COMMON_STATUS, 0)
        deadline = time.monotonic() + self.RESET_TIMEOUT
        while self.status != 0:
            if time.monotonic() > deadline:
                raise DeviceTimeoutError(
                    f"virtio device {self.device.name} did not finish its reset within "
                    f"{self.RESET_TIMEOUT} s (status {status_names(self.status)})",
                    hint="reset the function (Device.reset) or re-bind it")
            time.sleep(0.001)

    def fail(self) -> None:
        """Tell the device the driver gave up (FAILED), e.g. after a setup error."""
        try:
            self.add_status(U.VIRTIO_CONFIG_S_FAILED)
        except Exception:
            pass

    def check_status(self) -> None:
        """Raise DeviceError if the device has flagged DEVICE_NEEDS_RESET or FAILED."""
        st = self.status
        if st & (U.VIRTIO_CONFIG_S_NEEDS_RESET | U.VIRTIO_CONFIG_S_FAILED):
            raise DeviceError(
                f"virtio device {self.device.name} is in state {status_names(st)}",
                hint="it rejected a malformed request; close the device and open it again "
                "(that resets it)")

    # -- features --------------------------------------------------------------------------
    def device_features(self) -> int:
        lo = self._read_feature_word(0)
        hi = self._read_feature_word(1)
        return lo | (hi << 32)

    def _read_feature_word(self, sel: int) -> int:
        self.common.write32(U.VIRTIO_PCI_COMMON_DFSELECT, sel)
        return self.common.read32(U.VIRTIO_PCI_COMMON_DF)

    def negotiate(self, optional: int = 0, required: int = 0) -> int:
        """Accept VERSION_1 and ACCESS_PLATFORM (both mandatory here), plus `required` (must be
        offered) and whatever of `optional` the device offers; set FEATURES_OK and check the
        device kept it. Returns the negotiated feature bits."""
        offered = self.device_features()
        must = required | (1 << U.VIRTIO_F_VERSION_1)
        missing = must & ~offered
        if missing:
            raise UnsupportedError(
                f"virtio device {self.device.name} does not offer feature bit(s) "
                f"{_bits(missing)} (offers {offered:#x})")
        if not offered & (1 << U.VIRTIO_F_ACCESS_PLATFORM):
            # Without ACCESS_PLATFORM the device DMAs to guest-physical addresses, bypassing the
            # IOMMU: the IOVAs this runtime hands out would be wrong (and unsafe).
            raise UnsupportedError(
                f"virtio device {self.device.name} does not offer VIRTIO_F_ACCESS_PLATFORM, so it "
                "would bypass the IOMMU and cannot be driven through VFIO",
                hint="give the QEMU device iommu_platform=on")
        accept = must | (1 << U.VIRTIO_F_ACCESS_PLATFORM) | (optional & offered)
        self.common.write32(U.VIRTIO_PCI_COMMON_GFSELECT, 0)
        self.common.write32(U.VIRTIO_PCI_COMMON_GF, accept & 0xFFFF_FFFF)
        self.common.write32(U.VIRTIO_PCI_COMMON_GFSELECT, 1)
        self.common.write32(U.VIRTIO_PCI_COMMON_GF, accept >> 32)
        self.add_status(U.VIRTIO_CONFIG_S_FEATURES_OK)
        if not self.status & U.VIRTIO_CONFIG_S_FEATURES_OK:
            self.fail()
            raise UnsupportedError(
                f"virtio device {self.device.name} refused feature set {accept:#x} "
                "(FEATURES_OK did not stick)")
        self.features = accept
        return accept

    # -- device configuration --------------------------------------------------------------
    def read_device_config(self, reader: Callable[[CapWindow], T], attempts: int = 100) -> T:
        """Run `reader(window)` until config_generation is the same before and after, so a
        multi-field read is consistent (the device may change its config meanwhile)."""
        if self.device_cfg is None:
            raise UnsupportedError(f"virtio device {self.device.name} has no device config")
        for _ in range(attempts):
            before = self.common.read8(U.VIRTIO_PCI_COMMON_CFGGENERATION)
            value = reader(self.device_cfg)
            if self.common.read8(U.VIRTIO_PCI_COMMON_CFGGENERATION) == before:
                return value
        raise DeviceTimeoutError(
            f"device config of {self.device.name} kept changing over {attempts} reads")

    def read_isr(self) -> int:
        """Read (and so clear) the ISR byte: bit 0 queue interrupt, bit 1 config change."""
        return self.isr.read8(0)

    # -- queues ----------------------------------------------------------------------------
    @property
    def num_queues(self) -> int:
        return self.common.read16(U.VIRTIO_PCI_COMMON_NUMQ)

    def queue_max_size(self, index: int) -> int:
        self._select(index)
        return self.common.read16(U.VIRTIO_PCI_COMMON_Q_SIZE)

    def _select(self, index: int) -> None:
        if not 0 <= index < self.num_queues:
            raise InvalidArgumentError(
                f"virtqueue {index} does not exist on {self.device.name} "
                f"({self.num_queues} queues)")
        self.common.write16(U.VIRTIO_PCI_COMMON_Q_SELECT, index)

    def setup_queue(self, index: int, size: int, desc: int, avail: int, used: int,
                    msix_vector: int = U.VIRTIO_MSI_NO_VECTOR) -> QueueInfo:
        """Program queue `index` with ring IOVAs and `size` entries, then enable it."""
        self._select(index)
        if self.common.read16(U.VIRTIO_PCI_COMMON_Q_ENABLE):
            raise DeviceError(f"virtqueue {index} of {self.device.name} is already enabled",
                              hint="reset the device before setting its queues up again")
        max_size = self.common.read16(U.VIRTIO_PCI_COMMON_Q_SIZE)
        if max_size == 0:
            raise DeviceNotFoundError(f"virtqueue {index} of {self.device.name} is not available")
        if size > max_size or size & (size - 1) or size == 0:
            raise InvalidArgumentError(
                f"virtqueue size {size} is not a power of two <= {max_size} (the device's "
                f"maximum for queue {index})")
        self.common.write16(U.VIRTIO_PCI_COMMON_Q_SIZE, size)
        for lo, value in ((U.VIRTIO_PCI_COMMON_Q_DESCLO, desc),
                          (U.VIRTIO_PCI_COMMON_Q_AVAILLO, avail),
                          (U.VIRTIO_PCI_COMMON_Q_USEDLO, used)):
            self.common.write32(lo, value & 0xFFFF_FFFF)
            self.common.write32(lo + 4, value >> 32)
        self.common.write16(U.VIRTIO_PCI_COMMON_Q_MSIX, msix_vector)
        got = self.common.read16(U.VIRTIO_PCI_COMMON_Q_MSIX)
        if got != msix_vector:
            raise DeviceError(
                f"virtio device {self.device.name} refused MSI-X vector {msix_vector} for queue "
                f"{index} (reads back {got:#x})")
        notify_off = self.common.read16(U.VIRTIO_PCI_COMMON_Q_NOFF)
        doorbell = self._notify_doorbell(index, notify_off)
        self.common.write16(U.VIRTIO_PCI_COMMON_Q_ENABLE, 1)
        return QueueInfo(index, size, doorbell, msix_vector)

    def _notify_doorbell(self, index: int, notify_off: int) -> Doorbell:
        cap = self.notify_cap
        off = notify_off * cap.notify_off_multiplier
        if off + 2 > cap.length:
            raise DeviceError(
                f"notify address of queue {index} ({cap.offset:#x}+{off:#x}) lies outside the "
                f"notify window of {self.device.name} ({cap.length:#x} bytes)")
        return self._windows[U.VIRTIO_PCI_CAP_NOTIFY_CFG].mmio.doorbell(cap.offset + off, 16)

    # -- interrupts ------------------------------------------------------------------------
    def enable_msix(self, count: int) -> list[Interrupt]:
        """Route MSI-X vectors 0..count-1 to eventfds (assign them with setup_queue/
        set_config_vector). Polling drivers need none."""
        self._msix = self.device.enable_irqs(VFIO_PCI_MSIX_IRQ_INDEX, count)
        return self._msix

    def set_config_vector(self, vector: int) -> None:
        self.common.write16(U.VIRTIO_PCI_COMMON_MSIX, vector)
        if self.common.read16(U.VIRTIO_PCI_COMMON_MSIX) != vector:
            raise DeviceError(f"virtio device {self.device.name} refused config vector {vector}")

    def driver_ok(self) -> None:
        self.add_status(U.VIRTIO_CONFIG_S_DRIVER_OK)
        self.check_status()


def _bits(mask: int) -> str:
    return ", ".join(str(b) for b in range(64) if mask >> b & 1)
