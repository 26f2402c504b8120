"""vfio-user message layouts and constants (QEMU `docs/interop/vfio-user.rst`).

All data is in host byte order. Every message is a 16-byte header followed by a command-specific
payload; replies echo the message id and command. Structures the protocol shares with the kernel
(`vfio_region_info` and its capability chain, `vfio_irq_info`, `vfio_irq_set`) are taken from
`warpdrive.uapi.vfio`; the ones below exist only in vfio-user. Names follow the spec (`vfio_user_`
prefix); layouts have no padding, so ctypes' natural alignment reproduces them (checked by size
assertions at import).
"""

from __future__ import annotations

import ctypes
import json

from ..errors import ProtocolError
from ..record import field, record
from .vfio import (
    VFIO_DEVICE_FLAGS_PCI,
    VFIO_DEVICE_FLAGS_RESET,
    VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE,
    VFIO_IRQ_SET_ACTION_MASK,
    VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE,
    VFIO_IRQ_SET_DATA_TYPE_MASK,
    VFIO_PCI_NUM_REGIONS,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP,
    VFIO_REGION_INFO_FLAG_CAPS,
    VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
    VFIO_REGION_TYPE_PCI_VENDOR_TYPE,
    vfio_info_cap_header,
    vfio_irq_info,
    vfio_irq_set,
    vfio_region_info,
    vfio_region_info_cap_sparse_mmap,
    vfio_region_sparse_mmap_area,
)

TYPE_CHECKING = False  # (not typing's: importing typing costs ~3 ms of every process's boot)
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "VFIO_DEVICE_FLAGS_PCI",
    "VFIO_DEVICE_FLAGS_RESET",
    "VFIO_IRQ_INFO_AUTOMASKED",
    "VFIO_IRQ_INFO_EVENTFD",
    "VFIO_IRQ_INFO_MASKABLE",
    "VFIO_IRQ_INFO_NORESIZE",
    "VFIO_IRQ_SET_ACTION_MASK",
    "VFIO_IRQ_SET_ACTION_TRIGGER",
    "VFIO_IRQ_SET_ACTION_TYPE_MASK",
    "VFIO_IRQ_SET_ACTION_UNMASK",
    "VFIO_IRQ_SET_DATA_BOOL",
    "VFIO_IRQ_SET_DATA_EVENTFD",
    "VFIO_IRQ_SET_DATA_NONE",
    "VFIO_IRQ_SET_DATA_TYPE_MASK",
    "VFIO_REGION_INFO_CAP_SPARSE_MMAP",
    "VFIO_REGION_INFO_FLAG_CAPS",
    "VFIO_REGION_INFO_FLAG_MMAP",
    "VFIO_REGION_INFO_FLAG_READ",
    "VFIO_REGION_INFO_FLAG_WRITE",
    "vfio_info_cap_header",
    "vfio_irq_info",
    "vfio_irq_set",
    "vfio_region_info",
    "vfio_region_info_cap_sparse_mmap",
    "vfio_region_sparse_mmap_area",
]

_u16 = ctypes.c_uint16
_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64

# -- commands (spec "Commands" table) -------------------------------------------------------------
VFIO_USER_VERSION = 1
VFIO_USER_DMA_MAP = 2
VFIO_USER_DMA_UNMAP = 3
VFIO_USER_DEVICE_GET_INFO = 4
VFIO_USER_DEVICE_GET_REGION_INFO = 5
VFIO_USER_DEVICE_GET_REGION_IO_FDS = 6
VFIO_USER_DEVICE_GET_IRQ_INFO = 7
VFIO_USER_DEVICE_SET_IRQS = 8
VFIO_USER_REGION_READ = 9
VFIO_USER_REGION_WRITE = 10
VFIO_USER_DMA_READ = 11
VFIO_USER_DMA_WRITE = 12
VFIO_USER_DEVICE_RESET = 13
VFIO_USER_REGION_WRITE_MULTI = 15
VFIO_USER_DEVICE_FEATURE = 16
VFIO_USER_MIG_DATA_READ = 17
VFIO_USER_MIG_DATA_WRITE = 18

COMMAND_NAMES = {
    VFIO_USER_VERSION: "VERSION",
    VFIO_USER_DMA_MAP: "DMA_MAP",
    VFIO_USER_DMA_UNMAP: "DMA_UNMAP",
    VFIO_USER_DEVICE_GET_INFO: "DEVICE_GET_INFO",
    VFIO_USER_DEVICE_GET_REGION_INFO: "DEVICE_GET_REGION_INFO",
    VFIO_USER_DEVICE_GET_REGION_IO_FDS: "DEVICE_GET_REGION_IO_FDS",
    VFIO_USER_DEVICE_GET_IRQ_INFO: "DEVICE_GET_IRQ_INFO",
    VFIO_USER_DEVICE_SET_IRQS: "DEVICE_SET_IRQS",
    VFIO_USER_REGION_READ: "REGION_READ",
    VFIO_USER_REGION_WRITE: "REGION_WRITE",
    VFIO_USER_DMA_READ: "DMA_READ",
    VFIO_USER_DMA_WRITE: "DMA_WRITE",
    VFIO_USER_DEVICE_RESET: "DEVICE_RESET",
    VFIO_USER_REGION_WRITE_MULTI: "REGION_WRITE_MULTI",
    VFIO_USER_DEVICE_FEATURE: "DEVICE_FEATURE",
    VFIO_USER_MIG_DATA_READ: "MIG_DATA_READ",
    VFIO_USER_MIG_DATA_WRITE: "MIG_DATA_WRITE",
}


def command_name(command: int) -> str:
    return "VFIO_USER_" + COMMAND_NAMES.get(command, f"command {command}")


# -- header flags ---------------------------------------------------------------------------------
VFIO_USER_F_TYPE_MASK = 0xF  # bits 0-3
VFIO_USER_F_TYPE_COMMAND = 0x0
VFIO_USER_F_TYPE_REPLY = 0x1
VFIO_USER_F_NO_REPLY = 0x10  # bit 4, commands only
VFIO_USER_F_ERROR = 0x20  # bit 5, replies only; `error` holds the errno

# -- protocol version we speak (the one QEMU's vfio-user-pci client proposes) ----------------------
VFIO_USER_MAJOR = 0
VFIO_USER_MINOR = 0

# -- capability defaults when the peer does not state them (spec "Version" table) ------------------
DEFAULT_MAX_MSG_FDS = 1
DEFAULT_MAX_DATA_XFER_SIZE = 1 << 20
DEFAULT_MAX_DMA_MAPS = 65535
DEFAULT_PGSIZES = 4096

SCM_MAX_FD = 253  # the kernel's limit on fds in one SCM_RIGHTS message

# DMA_MAP flags
VFIO_USER_F_DMA_REGION_READ = 1 << 0
VFIO_USER_F_DMA_REGION_WRITE = 1 << 1


class vfio_user_header(ctypes.Structure):
    _fields_ = [
        ("msg_id", _u16),
        ("command", _u16),
        ("msg_size", _u32),  # whole message, header included
        ("flags", _u32),
        ("error_no", _u32),  # errno in an error reply; reserved in commands
    ]


class vfio_user_version(ctypes.Structure):
    _fields_ = [
        ("major", _u16),
        ("minor", _u16),
        # followed by optional NUL-terminated UTF-8 JSON
    ]


class vfio_user_dma_map(ctypes.Structure):
    _fields_ = [
        ("argsz", _u32),  # size of this structure (there is no reply payload)
        ("flags", _u32),
        ("offset", _u64),  # file offset in the passed fd (0 when no fd)
        ("addr", _u64),  # IOVA
        ("size", _u64),
    ]


class vfio_user_dma_unmap(ctypes.Structure):
    _fields_ = [
        ("argsz", _u32),  # maximum reply payload size
        ("flags", _u32),
        ("addr", _u64),
        ("size", _u64),
    ]


class vfio_user_device_info(ctypes.Structure):
    """Like `vfio_device_info` but 16 bytes: no cap_offset (vfio-user has no device caps)."""

    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("num_regions", _u32),
        ("num_irqs", _u32),
    ]


class vfio_user_region_access(ctypes.Structure):
    """REGION_READ / REGION_WRITE request and reply; data follows for write requests and read
    replies."""

    _fields_ = [
        ("offset", _u64),
        ("region", _u32),
        ("count", _u32),
    ]


class vfio_user_dma_region_access(ctypes.Structure):
    """DMA_READ / DMA_WRITE (server -> client), as the specification lays it out (data at 16).
    QEMU's client reads a u32 count at 8 and the data at 12 instead (docs/research/vfio-user.md,
    section 8); warpdrive's server sends neither message (a map without an fd is unreachable)."""

    _fields_ = [
        ("addr", _u64),
        ("count", _u64),
    ]


# -- warpdrive extension: the server control region ---------------------------------------------
# A device-specific region (index >= VFIO_PCI_NUM_REGIONS) that warpdrive's server adds to a
# device for a client that proposes the VERSION capability WARPDRIVE_CTL_CAPABILITY (true; the
# server echoes it when it offers the region), found by its TYPE capability. Page 0 is mmap-able
# shared memory the server writes: a heartbeat it bumps while its poll loop runs (a client
# waiting on shared memory can tell a dead server from a busy one without a syscall) and a
# need-wakeup flag it sets before it stops polling (SQPOLL-style: only then does a client that
# stored a doorbell kick the server, with one posted REGION_WRITE to the KICK register in page 1,
# trapped). Peers that do not know the region (QEMU) do not propose it and never see it. The
# type uses the invalid PCI vendor id 0xffff, so no real vendor-type region can collide with it.
WARPDRIVE_CTL_CAPABILITY = "warpdrive_control"
WARPDRIVE_CTL_REGION_TYPE = VFIO_REGION_TYPE_PCI_VENDOR_TYPE | 0xFFFF
WARPDRIVE_CTL_REGION_SUBTYPE = 1
WARPDRIVE_CTL_REGION_SIZE = 0x2000
WARPDRIVE_CTL_MAGIC = 0x50434457  # "WDCP" (u32 at CTL_MAGIC)
WARPDRIVE_CTL_MAGIC_OFF = 0x00  # u32
WARPDRIVE_CTL_IDLE_US = 0x04  # u32: longest the server sleeps between polls once idle (us)
WARPDRIVE_CTL_HEARTBEAT = 0x08  # u64: bumped by every pass of the server's loop
# u32: 1 = the server stopped polling; kick after a doorbell. Read after every doorbell store,
# so it sits on its own cache line: the heartbeat's line changes on every pass of the server.
WARPDRIVE_CTL_NEED_WAKEUP = 0x40
WARPDRIVE_CTL_KICK = 0x1000  # trapped: any write wakes the server's loop
FIRST_DEVICE_SPECIFIC_REGION = VFIO_PCI_NUM_REGIONS

HEADER_SIZE = 16
for _cls, _size in ((vfio_user_header, 16), (vfio_user_version, 4), (vfio_user_dma_map, 32),
                    (vfio_user_dma_unmap, 24), (vfio_user_device_info, 16),
                    (vfio_user_region_access, 16), (vfio_user_dma_region_access, 16),
                    (vfio_region_info, 32), (vfio_irq_info, 16), (vfio_irq_set, 20),
                    (vfio_region_info_cap_sparse_mmap, 16), (vfio_region_sparse_mmap_area, 16)):
    if ctypes.sizeof(_cls) != _size:  # pragma: no cover - a layout bug, caught on import
        raise ImportError(f"{_cls.__name__} is {ctypes.sizeof(_cls)} bytes, spec says {_size}")


# -- VERSION capabilities (JSON) -------------------------------------------------------------
@record
class Capabilities:
    """What one side states in its VERSION JSON. Unstated values take the spec's defaults."""

    max_msg_fds: int = DEFAULT_MAX_MSG_FDS
    max_data_xfer_size: int = DEFAULT_MAX_DATA_XFER_SIZE
    max_dma_maps: int = DEFAULT_MAX_DMA_MAPS
    pgsizes: int = DEFAULT_PGSIZES
    write_multiple: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # uninterpreted keys (twin_socket, ...)

    def to_json(self, keys: set[str] | None = None) -> dict[str, Any]:
        """The JSON object; with `keys`, only those capabilities (a reply must not state
        capabilities the peer did not propose)."""
        caps: dict[str, Any] = {
            "max_msg_fds": self.max_msg_fds,
            "max_data_xfer_size": self.max_data_xfer_size,
            "max_dma_maps": self.max_dma_maps,
            "pgsizes": self.pgsizes,
        }
        if self.write_multiple:
            caps["write_multiple"] = True
        caps.update(self.extra)
        if keys is not None:
            caps = {k: v for k, v in caps.items() if k in keys}
        return {"capabilities": caps}

    @classmethod
    def from_json(cls, obj: Any) -> Capabilities:
        """Parse a VERSION JSON object; raises ProtocolError naming the bad field."""
        if not isinstance(obj, dict):
            raise ProtocolError("version data is not a JSON object")
        caps = obj.get("capabilities", {})
        if not isinstance(caps, dict):
            raise ProtocolError("'capabilities' is not a JSON object")
        out = cls()
        for name in ("max_msg_fds", "max_data_xfer_size", "max_dma_maps", "pgsizes"):
            if name in caps:
                value = caps[name]
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ProtocolError(f"capability {name!r} must be a non-negative "
                                        f"integer, got {value!r}")
                setattr(out, name, value)
        if "write_multiple" in caps:
            if not isinstance(caps["write_multiple"], bool):
                raise ProtocolError("capability 'write_multiple' must be a boolean")
            out.write_multiple = caps["write_multiple"]
        known = {"max_msg_fds", "max_data_xfer_size", "max_dma_maps", "pgsizes", "write_multiple"}
        out.extra = {k: v for k, v in caps.items() if k not in known}
        return out


def pack_version(major: int, minor: int, caps: Capabilities | None,
                 keys: set[str] | None = None) -> bytes:
    body = bytes(vfio_user_version(major, minor))
    if caps is not None:
        body += json.dumps(caps.to_json(keys), separators=(",", ":")).encode() + b"\0"
    return body


def unpack_version_keys(payload: bytes) -> list[str]:
    """The capability names a (well-formed) VERSION payload states."""
    text = payload[ctypes.sizeof(vfio_user_version):].split(b"\0", 1)[0]
    try:
        caps = json.loads(text.decode("utf-8")).get("capabilities", {}) if text.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return []
    return list(caps) if isinstance(caps, dict) else []


def unpack_version(payload: bytes) -> tuple[int, int, Capabilities]:
    """(major, minor, capabilities) of a VERSION payload; ProtocolError if malformed."""
    if len(payload) < ctypes.sizeof(vfio_user_version):
        raise ProtocolError(f"VERSION payload is {len(payload)} bytes, needs at least 4")
    v = vfio_user_version.from_buffer_copy(payload)
    data = payload[ctypes.sizeof(vfio_user_version):]
    if not data:
        return v.major, v.minor, Capabilities()
    text = data.split(b"\0", 1)[0]
    try:
        obj = json.loads(text.decode("utf-8")) if text.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"version data is not UTF-8 JSON: {e}") from None
    return v.major, v.minor, Capabilities.from_json(obj)


def unpack(cls: type[ctypes.Structure], payload: bytes, what: str) -> Any:
    """Parse a fixed-size structure at the start of `payload`; ProtocolError if too short."""
    need = ctypes.sizeof(cls)
    if len(payload) < need:
        raise ProtocolError(f"{what} payload is {len(payload)} bytes, needs {need}")
    return cls.from_buffer_copy(payload[:need])
