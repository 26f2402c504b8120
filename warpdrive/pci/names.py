"""PCI addresses and class names: small pure helpers shared by discovery, binding and the CLI."""

from __future__ import annotations

import re

from ..errors import InvalidArgumentError

_BDF_FULL = re.compile(r"^([0-9a-f]{4,8}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")
_BDF_SHORT = re.compile(r"^([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")


def is_bdf(text: str) -> bool:
    """True for a canonical `dddd:bb:ss.f` address (as sysfs spells it)."""
    return _BDF_FULL.match(text) is not None


def normalize_bdf(text: str) -> str:
    """`00:03.0` or `0000:00:03.0` (any case) -> `0000:00:03.0`; anything else is an error."""
    t = text.strip().lower()
    if _BDF_FULL.match(t):
        return t
    if _BDF_SHORT.match(t):
        return "0000:" + t
    raise InvalidArgumentError(
        f"{text!r} is not a PCI address",
        hint="give it as domain:bus:slot.function, e.g. 0000:00:03.0 (see `warpdrive devices`)",
    )


# Base class (high byte) and a few common subclasses (high two bytes) from the PCI code and ID
# assignment spec; enough to make a table readable, not an attempt at pci.ids.
_BASE_CLASSES: dict[int, str] = {
    0x00: "unclassified",
    0x01: "storage",
    0x02: "network",
    0x03: "display",
    0x04: "multimedia",
    0x05: "memory",
    0x06: "bridge",
    0x07: "communication",
    0x08: "system peripheral",
    0x09: "input",
    0x0A: "docking station",
    0x0B: "processor",
    0x0C: "serial bus",
    0x0D: "wireless",
    0x0E: "intelligent I/O",
    0x0F: "satellite",
    0x10: "encryption",
    0x11: "signal processing",
    0x12: "processing accelerator",
    0x13: "non-essential instrumentation",
    0x40: "coprocessor",
    0xFF: "unassigned",
}
_SUBCLASSES: dict[int, str] = {
    0x0100: "SCSI storage",
    0x0106: "SATA controller",
    0x0108: "NVMe controller",
    0x0200: "Ethernet controller",
    0x0300: "VGA controller",
    0x0600: "host bridge",
    0x0601: "ISA bridge",
    0x0604: "PCI bridge",
    0x0C03: "USB controller",
    0x0C05: "SMBus",
}

PCI_CLASS_BRIDGE_PCI = 0x0604


def class_name(class_code: int) -> str:
    """Readable name of a 24-bit PCI class code, e.g. 0x020000 -> "Ethernet controller"."""
    sub = _SUBCLASSES.get(class_code >> 8)
    if sub:
        return sub
    return _BASE_CLASSES.get(class_code >> 16, f"class {class_code:06x}")


def is_bridge(class_code: int) -> bool:
    """PCI-to-PCI bridge (incl. PCIe root/downstream ports): not a VFIO target, not a blocker."""
    return (class_code >> 8) == PCI_CLASS_BRIDGE_PCI
