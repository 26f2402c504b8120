"""`VirtioPciModel`: the modern virtio-pci transport (virtio 1.2 §4.1) as a device-model base.

A virtio device model subclasses it and supplies the device type (id, feature bits 0-23, device
configuration bytes, queue count and sizes) and the work (`process(queue)`); the transport does
the rest the way §4.1 and §2-3 ask of a device:

- PCI identity 1af4:(0x1040 + id), revision 1 (§4.1.2); vendor capabilities COMMON, NOTIFY,
  ISR, DEVICE and PCI_CFG (§4.1.4), MSI-X with one vector per queue plus one for configuration
  changes, and INTx with the ISR byte as fallback (§4.1.5.3-4).
- Feature negotiation: FEATURES_OK sticks only if the driver accepted a subset of the offer
  including VERSION_1 and ACCESS_PLATFORM (§6: a device that reaches memory only through the
  IOMMU MAY refuse to work without ACCESS_PLATFORM; this one sees nothing but IOVAs).
- Queues are taken from the driver's addresses when it writes queue_enable = 1 and serviced only
  after DRIVER_OK (§3.1.1); a driver that breaks a ring rule gets DEVICE_NEEDS_RESET and a
  configuration-change interrupt (§2.1.2), and the device stops until it is reset.
- Writing 0 to device_status resets everything synchronously, so it reads back 0 at once
  (§4.1.4.3.1).

BAR layout (BAR0, 16 KiB): common config at 0x0000, ISR at 0x1000, device config at 0x2000, the
notification area at 0x3000 (one page the client maps: a kick is a store, no message). BAR2
holds the MSI-X table (0x000) and PBA (0x800). The device polls every enabled queue's
available index, so it needs no notification at all: a kick only has to exist for the driver.

Register accesses of any width are accepted: a read packs the current register block and
returns the bytes asked for; a write merges its bytes into that block and applies each field it
touched (the spec asks drivers for natural widths, §4.1.3.1, but QEMU may split accesses).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from ...errors import InvalidArgumentError
from ...uapi.pci_regs import PCI_MSIX_FLAGS, PCI_MSIX_FLAGS_ENABLE
from ..model import (
    VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
    DeviceModel,
    DmaFault,
    RegionSpec,
)
from . import layout as L
from .vring import DeviceVirtqueue, VirtqueueError

BAR = 0
BAR_SIZE = 0x4000
COMMON_OFF, ISR_OFF, DEVICE_OFF, NOTIFY_OFF = 0x0000, 0x1000, 0x2000, 0x3000
NOTIFY_MULTIPLIER = 4
MSIX_BAR = 2
MSIX_BAR_SIZE = 0x1000
MSIX_TABLE_OFF, MSIX_PBA_OFF = 0x000, 0x800
_READ_ONLY = {"device_feature", "num_queues", "config_generation", "queue_notify_off"}
MAX_CHAINS_PER_POLL = 64  # then let the server answer messages before going on


class QueueConfig:
    """What the driver programmed for one queue (§4.1.4.3)."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = max_size
        self.msix_vector = L.NO_VECTOR
        self.enabled = False
        self.desc = self.driver = self.device = 0
        self.ring: DeviceVirtqueue | None = None

    def reset(self) -> None:
        self.__init__(self.max_size)  # type: ignore[misc]


def option_flag(options: dict[str, str], key: str, default: bool) -> bool:
    value = options.pop(key, None)
    if value is None:
        return default
    if value.lower() in ("1", "yes", "on", "true"):
        return True
    if value.lower() in ("0", "no", "off", "false"):
        return False
    raise InvalidArgumentError(f"option {key}={value!r} is not a boolean (use 1 or 0)")


def option_int(options: dict[str, str], key: str, default: int, lo: int, hi: int) -> int:
    value = options.pop(key, None)
    if value is None:
        return default
    try:
        n = int(value, 0)
    except ValueError:
        raise InvalidArgumentError(f"option {key}={value!r} is not an integer") from None
    if not lo <= n <= hi:
        raise InvalidArgumentError(f"option {key}={n} is outside {lo}..{hi}")
    return n


class VirtioPciModel(DeviceModel):
    """Base of virtio device models on the modern PCI transport; see the module docstring.

    Options every virtio model takes: ``indirect=0`` and ``event_idx=0`` stop offering
    VIRTIO_F_INDIRECT_DESC / VIRTIO_F_EVENT_IDX (both offered by default: Linux uses them)."""

    vendor_id = L.PCI_VENDOR
    revision = 1  # §4.1.2: non-transitional devices SHOULD have a revision of 1 or more
    virtio_id: ClassVar[int] = 0

    def __init__(self, **options: str) -> None:
        super().__init__(**options)
        opts = dict(options)
        self.offer_indirect = option_flag(opts, "indirect", True)
        self.offer_event_idx = option_flag(opts, "event_idx", True)
        self.configure(opts)  # the device type takes its options
        if opts:
            raise InvalidArgumentError(
                f"model {self.name}: unknown option(s) {', '.join(sorted(opts))}")
        self._queues = [QueueConfig(self.queue_max_size(i)) for i in range(self.num_queues())]
        self._reset_transport()

    # -- what a virtio device type supplies ---------------------------------------------------
    def configure(self, options: dict[str, str]) -> None:
        """Take (pop) the device type's own options; leftovers are refused."""
        return None

    @abstractmethod
    def num_queues(self) -> int: ...

    def queue_max_size(self, index: int) -> int:
        return 256

    def device_features(self) -> int:
        """Device-type feature bits (0-23) offered."""
        return 0

    @abstractmethod
    def device_config(self) -> bytes:
        """The device-specific configuration as it reads now (§4.1.4.6)."""

    @abstractmethod
    def process(self, queue: DeviceVirtqueue) -> None:
        """Serve the chains available on `queue` (at most MAX_CHAINS_PER_POLL): `queue.pop()`,
        work, `queue.push(chain, written)`. The transport publishes and interrupts."""

    def device_reset(self) -> None:
        """Forget the device type's state on a device reset (§2.4)."""
        return None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.virtio_id:  # §4.1.2: the modern PCI device id is 0x1040 + the virtio device id
            cls.device_id = L.PCI_MODERN_DEVICE_BASE + cls.virtio_id

    # -- PCI description ------------------------------------------------------------------
    def msix_vectors(self) -> int:
        return self.num_queues() + 1  # one per queue + one for configuration changes

    def regions(self) -> list[RegionSpec]:
        return [RegionSpec(BAR, BAR_SIZE, mmap_areas=((NOTIFY_OFF, 0x1000),)),
                RegionSpec(MSIX_BAR, MSIX_BAR_SIZE)]

    def irq_counts(self) -> dict[int, int]:
        return {VFIO_PCI_INTX_IRQ_INDEX: 1, VFIO_PCI_MSIX_IRQ_INDEX: self.msix_vectors()}

    def build_config_space(self) -> bytearray:
        cfg = self.config_builder()
        cfg.add_msix(self.msix_vectors(), table_bar=MSIX_BAR, table_offset=MSIX_TABLE_OFF,
                     pba_bar=MSIX_BAR, pba_offset=MSIX_PBA_OFF)
        nq = self.num_queues()
        for cfg_type, off, length, extra in (
                (L.CAP_COMMON, COMMON_OFF, L.COMMON_LEN, b""),
                (L.CAP_NOTIFY, NOTIFY_OFF, NOTIFY_MULTIPLIER * nq,
                 NOTIFY_MULTIPLIER.to_bytes(4, "little")),
                (L.CAP_ISR, ISR_OFF, 1, b""),
                (L.CAP_DEVICE, DEVICE_OFF, len(self.device_config()), b"")):
            cap_len = L.CAP_LEN + len(extra)
            cfg.add_capability(L.PCI_CAP_ID_VENDOR,
                               L.CAP_BODY.pack(cap_len, cfg_type, BAR, 0, off, length) + extra)
        # §4.1.4.9: a window onto the BARs through config space (bar/offset/length are written
        # by the driver, then pci_cfg_data is read or written).
        self._pci_cfg_cap = cfg.add_capability(
            L.PCI_CAP_ID_VENDOR, L.CAP_BODY.pack(L.PCI_CFG_CAP_LEN, L.CAP_PCI_CFG, 0, 0, 0, 0)
            + bytes(4))
        return cfg.build()

    # -- transport state ------------------------------------------------------------------
    def _reset_transport(self) -> None:
        self.status = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.driver_features = 0
        self.features = 0  # negotiated at FEATURES_OK
        self.config_msix_vector = L.NO_VECTOR
        self.queue_select = 0
        self.isr = 0
        self.config_generation = 0
        self.broken: str | None = None  # why DEVICE_NEEDS_RESET was set
        for q in self._queues:
            q.reset()
        self._pci_cfg = {"bar": 0, "offset": 0, "length": 0}

    def offered_features(self) -> int:
        bits = self.device_features() | 1 << L.F_VERSION_1 | 1 << L.F_ACCESS_PLATFORM
        if self.offer_indirect:
            bits |= 1 << L.F_INDIRECT_DESC
        if self.offer_event_idx:
            bits |= 1 << L.F_EVENT_IDX
        return bits

    def negotiated(self, bit: int) -> bool:
        return bool(self.features >> bit & 1)

    def reset(self) -> None:
        """VFIO_USER_DEVICE_RESET (a function-level reset): the same as writing status 0."""
        self._device_status_write(0)

    # -- registers ------------------------------------------------------------------------
    def region_read(self, index: int, offset: int, size: int) -> bytes:
        if index == BAR:
            for base, length, block in ((COMMON_OFF, L.COMMON_LEN, self._common_bytes),
                                        (DEVICE_OFF, 0x1000, self.device_config),
                                        (ISR_OFF, 0x1000, self._isr_bytes)):
                if base <= offset < base + length:
                    data = block()[offset - base:offset - base + size]
                    return data + bytes(size - len(data))
        return bytes(size)  # unused space and the notification area read as 0

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index == BAR and COMMON_OFF <= offset < COMMON_OFF + L.COMMON_LEN:
            self._common_write(offset - COMMON_OFF, data)
        # device config is read-only here; notifications need no action (queues are polled)

    def _isr_bytes(self) -> bytes:
        value, self.isr = self.isr, 0  # §4.1.4.5: reading the ISR clears it
        return bytes([value])

    def _queue(self) -> QueueConfig | None:
        return self._queues[self.queue_select] if self.queue_select < len(self._queues) else None

    def _common_bytes(self) -> bytes:
        q = self._queue()
        fields = {
            "device_feature_select": self.device_feature_select,
            "device_feature": (self.offered_features() >> 32 * self.device_feature_select
                               & 0xFFFF_FFFF) if self.device_feature_select < 2 else 0,
            "driver_feature_select": self.driver_feature_select,
            "driver_feature": (self.driver_features >> 32 * self.driver_feature_select
                               & 0xFFFF_FFFF) if self.driver_feature_select < 2 else 0,
            "config_msix_vector": self.config_msix_vector,
            "num_queues": len(self._queues),
            "device_status": self.status,
            "config_generation": self.config_generation,
            "queue_select": self.queue_select,
        }
        if q is not None:
            fields.update({
                "queue_size": q.size, "queue_msix_vector": q.msix_vector,
                "queue_enable": int(q.enabled), "queue_notify_off": self.queue_select,
                "queue_desc_lo": q.desc & 0xFFFF_FFFF, "queue_desc_hi": q.desc >> 32,
                "queue_driver_lo": q.driver & 0xFFFF_FFFF, "queue_driver_hi": q.driver >> 32,
                "queue_device_lo": q.device & 0xFFFF_FFFF, "queue_device_hi": q.device >> 32})
        out = bytearray(L.COMMON_LEN)
        for name, off, width in L.COMMON_FIELDS:
            out[off:off + width] = fields.get(name, 0).to_bytes(width, "little")
        return bytes(out)

    def _common_write(self, offset: int, data: bytes) -> None:
        block = bytearray(self._common_bytes())
        end = min(offset + len(data), L.COMMON_LEN)
        block[offset:end] = data[:end - offset]
        for name, off, width in L.COMMON_FIELDS:
            if off < end and offset < off + width:
                self._field_write(name, int.from_bytes(block[off:off + width], "little"))

    def _field_write(self, name: str, value: int) -> None:
        q = self._queue()
        if name == "device_feature_select":
            self.device_feature_select = value
        elif name == "driver_feature_select":
            self.driver_feature_select = value
        elif name == "driver_feature":
            if self.driver_feature_select < 2 and not self.status & L.STATUS_FEATURES_OK:
                shift = 32 * self.driver_feature_select
                self.driver_features = (self.driver_features & ~(0xFFFF_FFFF << shift)) \
                    | value << shift
        elif name == "config_msix_vector":
            self.config_msix_vector = self._vector(value)
        elif name == "device_status":
            self._device_status_write(value)
        elif name == "queue_select":
            self.queue_select = value
        elif name in _READ_ONLY or q is None or q.enabled:
            return  # no such queue, or already enabled: its configuration is fixed (§4.1.4.3)
        elif name == "queue_size":
            q.size = value
        elif name == "queue_msix_vector":
            q.msix_vector = self._vector(value)
        elif name == "queue_enable":
            if value == 1:
                self._enable_queue(self.queue_select, q)
        elif name.startswith("queue_"):
            field, half = name[len("queue_"):].rsplit("_", 1)
            shift = 0 if half == "lo" else 32
            old = getattr(q, field)
            setattr(q, field, (old & ~(0xFFFF_FFFF << shift)) | value << shift)

    def _vector(self, value: int) -> int:
        """§4.1.5.1.2: a vector the device cannot use reads back as NO_VECTOR."""
        return value if value < self.msix_vectors() else L.NO_VECTOR

    def _device_status_write(self, value: int) -> None:
        if value == 0:
            self._reset_transport()
            self.device_reset()
            return
        old = self.status
        if value & L.STATUS_FEATURES_OK and not old & L.STATUS_FEATURES_OK:
            why = self._refuse_features(self.driver_features)
            if why:
                self.log(f"FEATURES_OK refused: {why}")
                value &= ~L.STATUS_FEATURES_OK
            else:
                self.features = self.driver_features
        self.status = value | (old & L.STATUS_NEEDS_RESET)
        if value & L.STATUS_DRIVER_OK and not old & L.STATUS_DRIVER_OK:
            self.on_driver_ok()

    def _refuse_features(self, accepted: int) -> str | None:
        extra = accepted & ~self.offered_features()
        if extra:
            return f"driver accepted feature bits {extra:#x} that were not offered"
        if not accepted >> L.F_VERSION_1 & 1:
            return "driver did not accept VIRTIO_F_VERSION_1 (this is a modern-only device)"
        if not accepted >> L.F_ACCESS_PLATFORM & 1:
            return ("driver did not accept VIRTIO_F_ACCESS_PLATFORM: this device reaches memory "
                    "only through IOVAs the IOMMU maps")
        return None

    def on_driver_ok(self) -> None:
        """DRIVER_OK was set: the device may now serve its queues."""
        return None

    def _enable_queue(self, index: int, q: QueueConfig) -> None:
        try:
            q.ring = DeviceVirtqueue(
                self.dma, index, q.size, q.desc, q.driver, q.device,
                indirect=self.negotiated(L.F_INDIRECT_DESC),
                event_idx=self.negotiated(L.F_EVENT_IDX))
        except VirtqueueError as e:
            self.needs_reset(str(e))
            return
        q.enabled = True

    # -- PCI_CFG capability: BAR access through config space (§4.1.4.9) ---------------------
    def config_read(self, offset: int, size: int) -> bytes:
        data = bytearray(super().config_read(offset, size))
        cap = self._pci_cfg_cap
        for field, off, width in (("bar", L.CAP_OFF_BAR, 1), ("offset", L.CAP_OFF_OFFSET, 4),
                                  ("length", L.CAP_OFF_LENGTH, 4)):
            self._overlay(data, offset, cap + off,
                          self._pci_cfg[field].to_bytes(width, "little"))
        lo, hi = cap + L.CAP_OFF_DATA, cap + L.CAP_OFF_DATA + 4
        if offset < hi and lo < offset + size:
            self._overlay(data, offset, lo, self._pci_cfg_window(None).ljust(4, b"\0"))
        return bytes(data)

    def config_write(self, offset: int, data: bytes) -> None:
        cap = self._pci_cfg_cap
        end = offset + len(data)
        if end <= cap or offset >= cap + L.PCI_CFG_CAP_LEN:
            super().config_write(offset, data)
            return
        for field, off, width in (("bar", L.CAP_OFF_BAR, 1), ("offset", L.CAP_OFF_OFFSET, 4),
                                  ("length", L.CAP_OFF_LENGTH, 4)):
            cur = bytearray(self._pci_cfg[field].to_bytes(width, "little"))
            if self._merge(cur, offset, data, cap + off):
                self._pci_cfg[field] = int.from_bytes(cur, "little")
        window = bytearray(4)
        if self._merge(window, offset, data, cap + L.CAP_OFF_DATA):
            self._pci_cfg_window(bytes(window))

    @staticmethod
    def _overlay(out: bytearray, start: int, at: int, value: bytes) -> None:
        for i, b in enumerate(value):
            if 0 <= at + i - start < len(out):
                out[at + i - start] = b

    @staticmethod
    def _merge(cur: bytearray, start: int, data: bytes, at: int) -> bool:
        touched = False
        for i in range(len(cur)):
            j = at + i - start
            if 0 <= j < len(data):
                cur[i] = data[j]
                touched = True
        return touched

    def _pci_cfg_window(self, write: bytes | None) -> bytes:
        """Read (write=None) or write `length` (1, 2 or 4) bytes at `offset` of BAR `bar`."""
        bar, off, n = self._pci_cfg["bar"], self._pci_cfg["offset"], self._pci_cfg["length"]
        if bar != BAR or n not in (1, 2, 4) or off % n or off + n > BAR_SIZE:
            return bytes(4)  # §4.1.4.9.1: anything else has no defined effect
        if write is None:
            return self.region_read(bar, off, n)
        self.region_write(bar, off, write[:n])
        return b""

    # -- work -----------------------------------------------------------------------------
    def poll(self) -> bool:
        if not self.status & L.STATUS_DRIVER_OK or self.broken:
            return False
        did = False
        for q in self._queues:
            ring = q.ring
            if ring is None:
                continue
            try:
                if not ring.available():
                    continue
                self.process(ring)
                did = True
                self.publish(ring)
            except VirtqueueError as e:
                self.needs_reset(str(e))
                return did
            except DmaFault as e:
                self.needs_reset(f"queue {ring.index}: ring memory unreachable: {e}")
                return did
        return did

    def publish(self, ring: DeviceVirtqueue) -> None:
        """Make the chains pushed on `ring` visible, and interrupt if the driver wants it."""
        if ring.publish():
            self._interrupt(self._queues[ring.index].msix_vector, L.ISR_QUEUE)

    def config_changed(self) -> None:
        """§4.1.5.3: a configuration change notification."""
        self.config_generation = (self.config_generation + 1) & 0xFF
        self._interrupt(self.config_msix_vector, L.ISR_CONFIG)

    def _interrupt(self, vector: int, isr_bit: int) -> None:
        if self._msix_enabled():
            # §4.1.5.1.2: with MSI-X the vector the driver chose; NO_VECTOR means none at all
            if vector != L.NO_VECTOR:
                self.raise_irq(VFIO_PCI_MSIX_IRQ_INDEX, vector)
            return
        self.isr |= isr_bit  # §4.1.5.3-4: INTx, with the reason in the ISR byte
        self.raise_irq(VFIO_PCI_INTX_IRQ_INDEX, 0)

    def _msix_enabled(self) -> bool:
        msix = self.config.msix
        if msix is None:
            return False
        flags = int.from_bytes(self.config.read(msix.cap + PCI_MSIX_FLAGS, 2), "little")
        return bool(flags & PCI_MSIX_FLAGS_ENABLE)

    def needs_reset(self, why: str) -> None:
        """§2.1.2: an error only a reset can clear: DEVICE_NEEDS_RESET, and with DRIVER_OK a
        configuration-change notification. Nothing is served until the driver resets."""
        if self.broken:
            return
        self.broken = why
        self.log(f"device needs reset: {why}")
        self.status |= L.STATUS_NEEDS_RESET
        if self.status & L.STATUS_DRIVER_OK:
            self.config_changed()
