"""Virtio 1.2 layouts a virtio device model needs, as the device sees them (all little endian).

Transcribed from the OASIS VIRTIO 1.2 specification (cs01); section numbers as in
docs/research/virtio-crypto.md. Byte offsets are plain ints and `struct` formats: a model
parses what the driver wrote, it never shares the driver's ctypes structures.
"""

from __future__ import annotations

import struct

# §4.1.2 PCI Device Discovery: vendor 0x1af4; a non-transitional device is 0x1040 + device id.
PCI_VENDOR = 0x1AF4
PCI_MODERN_DEVICE_BASE = 0x1040

# §2.1 Device Status Field
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_NEEDS_RESET = 64
STATUS_FAILED = 128

# Feature bit numbers: §6 Reserved Feature Bits, §2.7 (ring features)
F_INDIRECT_DESC = 28
F_EVENT_IDX = 29
F_VERSION_1 = 32
F_ACCESS_PLATFORM = 33
F_RING_PACKED = 34

# §4.1.4 Virtio Structure PCI Capabilities: struct virtio_pci_cap, a vendor capability (id 9).
PCI_CAP_ID_VENDOR = 0x09
CAP_COMMON = 1
CAP_NOTIFY = 2
CAP_ISR = 3
CAP_DEVICE = 4
CAP_PCI_CFG = 5
# After the 2-byte id/next header: cap_len u8, cfg_type u8, bar u8, id u8, padding[2],
# offset le32, length le32 (byte 16 on: notify_off_multiplier le32, or pci_cfg_data[4]).
CAP_BODY = struct.Struct("<BBBBxxII")
CAP_LEN = 16
NOTIFY_CAP_LEN = 20  # + notify_off_multiplier
PCI_CFG_CAP_LEN = 20  # + pci_cfg_data[4]
# offsets inside a capability (from its cap_vndr byte)
CAP_OFF_BAR = 4
CAP_OFF_OFFSET = 8
CAP_OFF_LENGTH = 12
CAP_OFF_DATA = 16

# §4.1.4.3 Common configuration structure layout: (name, offset, width). Only the 1.0 fields:
# queue_notify_data/queue_reset exist only with NOTIF_CONFIG_DATA/RING_RESET, never offered here.
COMMON_FIELDS = (
    ("device_feature_select", 0, 4),
    ("device_feature", 4, 4),
    ("driver_feature_select", 8, 4),
    ("driver_feature", 12, 4),
    ("config_msix_vector", 16, 2),
    ("num_queues", 18, 2),
    ("device_status", 20, 1),
    ("config_generation", 21, 1),
    ("queue_select", 22, 2),
    ("queue_size", 24, 2),
    ("queue_msix_vector", 26, 2),
    ("queue_enable", 28, 2),
    ("queue_notify_off", 30, 2),
    ("queue_desc_lo", 32, 4),
    ("queue_desc_hi", 36, 4),
    ("queue_driver_lo", 40, 4),
    ("queue_driver_hi", 44, 4),
    ("queue_device_lo", 48, 4),
    ("queue_device_hi", 52, 4),
)
COMMON_LEN = 56
NO_VECTOR = 0xFFFF  # §4.1.5.1.2.1 "VIRTIO_MSI_NO_VECTOR"

# §4.1.4.5 ISR status: bit 0 queue interrupt, bit 1 device configuration change.
ISR_QUEUE = 1
ISR_CONFIG = 2

# §2.7.5 The Virtqueue Descriptor Table: addr le64, len le32, flags le16, next le16.
DESC = struct.Struct("<QIHH")
DESC_SIZE = 16
DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
# §2.7.6 The Virtqueue Available Ring: flags le16, idx le16, ring[size] le16, used_event le16.
AVAIL_F_NO_INTERRUPT = 1
AVAIL_OFF_IDX = 2
AVAIL_OFF_RING = 4
# §2.7.8 The Virtqueue Used Ring: flags le16, idx le16, ring[size] {id le32, len le32},
# avail_event le16.
USED_F_NO_NOTIFY = 1
USED_OFF_IDX = 2
USED_OFF_RING = 4
USED_ELEM = struct.Struct("<II")
MAX_QUEUE_SIZE = 32768  # §2.7 "Queue Size ... maximum of 32768"


def need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """§2.7.7.2: with EVENT_IDX, notify when the index moved past `event_idx` (16-bit wrap)."""
    return (new_idx - event_idx - 1) & 0xFFFF < (new_idx - old_idx) & 0xFFFF
