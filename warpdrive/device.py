"""The Device interface: regions, config space, interrupts, reset — the same for every backend.

Plugins (warpdrive.devices.*) receive a `Device` and use only what is defined here plus
`Device.dma` (a `DmaSpace`) and the `Mmio`/`Doorbell` objects `map_bar` returns. Backends (legacy
VFIO, iommufd + VFIO cdev, vfio-user) implement the small set of abstract hooks; everything
PCI-generic (config accessors, capability walk, BAR mapping that honours sparse areas and the MSI-X
table hole, eventfd interrupts) lives here once.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from . import syscalls as sc
from .dma import DmaSpace
from .errors import (
    ClosedError,
    DeviceNotFoundError,
    DeviceTimeoutError,
    InvalidArgumentError,
    UnsupportedError,
    WarpdriveError,
    require_int,
)
from .forkguard import ForkSafe, close_fd_quietly
from .mmio import Mmio, MmioWindow
from .record import record
from .uapi import pci_regs as R

# PCI region and IRQ indexes shared by VFIO and vfio-user (linux/vfio.h).
from .uapi.vfio import (
    VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
)

if TYPE_CHECKING:
    from typing import Self

IRQ_INDEX_NAMES = {VFIO_PCI_INTX_IRQ_INDEX: "INTx", VFIO_PCI_MSI_IRQ_INDEX: "MSI",
                   VFIO_PCI_MSIX_IRQ_INDEX: "MSI-X"}


@record(frozen=True)
class RegionInfo:
    """A device region as the backend reports it. `offset` is the backend's own access offset
    (for VFIO, the device-fd offset); region-relative offsets are what the accessors take."""

    index: int
    size: int
    offset: int
    readable: bool
    writable: bool
    mappable: bool
    sparse_areas: tuple[tuple[int, int], ...] | None = None  # (offset, size), region-relative
    msix_mappable: bool = False
    type: tuple[int, int] | None = None  # (type, subtype) from the TYPE capability


@record(frozen=True)
class IrqInfo:
    index: int
    count: int
    eventfd: bool
    maskable: bool
    automasked: bool
    noresize: bool

    @property
    def name(self) -> str:
        return IRQ_INDEX_NAMES.get(self.index, f"irq index {self.index}")


_IRQ_TIMEOUT_HINT = ("the device did not complete (a DMA fault in the IOMMU, or a lost "
                     "interrupt); check the kernel log (dmesg) for DMAR faults")


class Interrupt(ForkSafe):
    """One interrupt vector delivered through an eventfd: poll-able (`fileno`), or wait on it."""

    def __init__(self, device: Device, index: int, vector: int, fd: int) -> None:
        self.device = device
        self.index = index
        self.vector = vector
        self.fd = fd
        self._fork_register()

    def fileno(self) -> int:
        """The eventfd, for select/poll/epoll (-1 once closed)."""
        return self.fd

    def poll(self) -> int:
        """Consume and return the number of interrupts since the last call (0 if none)."""
        self._check_alive()
        if self.fd < 0:
            raise ClosedError(f"{IRQ_INDEX_NAMES.get(self.index, 'interrupt')} vector "
                              f"{self.vector} of {self.device.name} is closed (disabled, or its "
                              "device closed)", hint="enable_irqs() again on an open device")
        try:
            return int.from_bytes(os.read(self.fd, 8), "little")
        except BlockingIOError:
            return 0

    def wait(self, timeout: float | None = 1.0) -> int:
        """Block until the vector fires; return the count. Raises DeviceTimeoutError on timeout."""
        self._check_alive()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            n = self.poll()
            if n:
                return n
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise DeviceTimeoutError(
                    f"no {IRQ_INDEX_NAMES.get(self.index, 'interrupt')} vector {self.vector} from "
                    f"{self.device.name} within {timeout} s",
                    hint=self.device.irq_timeout_hint)
            sc.wait_readable([self.fd], left)

    def unmask(self) -> None:
        """Re-enable an automasked (INTx) line after the device's interrupt was acknowledged."""
        self.device._unmask_irq(self.index, self.vector)

    def close(self) -> None:
        """Close the eventfd (the device's disable_irqs/close do it for every vector)."""
        close_fd_quietly(self.fd)
        self.fd = -1
        self._fork_unregister()

    def _fork_invalidate(self) -> None:
        close_fd_quietly(self.fd)
        self.fd = -1


class _RegionTrap:
    """Slow-path register access through the backend (pread/pwrite or vfio-user messages)."""

    def __init__(self, device: Device, info: RegionInfo) -> None:
        self._device = device
        self._info = info

    def read(self, offset: int, width: int) -> int:
        return int.from_bytes(self._device._region_read(self._info, offset, width), "little")

    def write(self, offset: int, width: int, value: int) -> None:
        self._device._region_write(self._info, offset, value.to_bytes(width, "little"))

    def post(self, offset: int, width: int, value: int) -> None:
        self._device._region_post(self._info, offset, value.to_bytes(width, "little"))


class Device(ForkSafe, ABC):
    """A PCI function opened through some backend. Use as a context manager or call `close()`."""

    backend: str = "?"
    # What to check when an interrupt does not arrive; backends without a kernel IOMMU override.
    irq_timeout_hint: str = _IRQ_TIMEOUT_HINT

    def __init__(self, name: str, dma: DmaSpace) -> None:
        self.name = name
        self.dma = dma
        self._closed = False
        self._irqs: dict[int, list[Interrupt]] = {}
        self._bars: dict[int, Mmio] = {}
        self._close_hooks: list[Callable[[], None]] = []
        self._fork_register()

    @property
    def iommu_mode(self) -> str:
        """How DMA reaches memory: for kernel VFIO the kernel selftests' mode name
        ("vfio_type1v2_iommu", "iommufd_compat_type1", "iommufd", ...); else the backend."""
        return self.backend

    # -- backend hooks ----------------------------------------------------------------------
    @property
    @abstractmethod
    def num_regions(self) -> int: ...

    @property
    @abstractmethod
    def num_irqs(self) -> int: ...

    @property
    @abstractmethod
    def reset_supported(self) -> bool: ...

    @abstractmethod
    def region_info(self, index: int) -> RegionInfo:
        """Region `index` (BARs 0-5, ROM 6, config 7, ...): size, flags, file offset and its
        capabilities (sparse mmap areas, MSI-X mappable, type)."""

    @abstractmethod
    def _region_read(self, info: RegionInfo, offset: int, size: int) -> bytes: ...

    @abstractmethod
    def _region_write(self, info: RegionInfo, offset: int, data: bytes) -> None: ...

    def _region_post(self, info: RegionInfo, offset: int, data: bytes) -> None:
        """A posted write: one the caller does not wait on. A kernel backend's write is one
        syscall with nothing to wait for, so by default the same as `_region_write`."""
        self._region_write(info, offset, data)

    @abstractmethod
    def _mmap_region(self, info: RegionInfo, offset: int, size: int, prot: int,
                     fixed_addr: int) -> None:
        """Map [offset, offset+size) of the region at exactly `fixed_addr` (MAP_FIXED)."""

    @abstractmethod
    def irq_info(self, index: int) -> IrqInfo:
        """IRQ index `index` (VFIO_PCI_INTX/MSI/MSIX_IRQ_INDEX, ...): its vector count and
        flags; InvalidArgumentError for an index the device does not have."""

    @abstractmethod
    def _set_irq_eventfds(self, index: int, start: int, fds: list[int]) -> None: ...

    @abstractmethod
    def _disable_irq_index(self, index: int) -> None: ...

    @abstractmethod
    def _unmask_irq(self, index: int, vector: int) -> None: ...

    @abstractmethod
    def _reset(self) -> None: ...

    @abstractmethod
    def _close_backend(self) -> None:
        """Release the device and its DMA context (fds, container/IOAS, socket)."""

    # -- lifetime ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        self._check_alive()
        if self._closed:
            raise ClosedError(f"device {self.name} is closed", hint="open it again")

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def mapped_bars(self) -> tuple[int, ...]:
        """Indexes of the BARs mapped with `map_bar` and not closed."""
        return tuple(sorted(i for i, m in self._bars.items() if not m._closed))

    @property
    def enabled_irqs(self) -> dict[int, int]:
        """IRQ index -> number of vectors routed to eventfds by `enable_irqs`."""
        return {index: len(irqs) for index, irqs in self._irqs.items()}

    @property
    def persistent_id(self) -> str | None:
        """Names this function the same way in every process, for as long as it exists; None
        when it is private to this process (a device model this process started). Drivers key
        state that must outlive a process by it (e.g. device sessions a dead process left)."""
        return f"pci:{self.name}"  # the kernel backends: one name whatever the IOMMU backend

    def on_close(self, hook: Callable[[], None]) -> None:
        """Run `hook` first when the device closes (plugins stop their queues here)."""
        self._close_hooks.append(hook)

    def close(self) -> None:
        """Stop plugin queues, disable interrupts, unmap BARs and DMA, release the device."""
        if self._closed:
            return
        if self._forked_dead:
            self._closed = True
            return
        errors: list[BaseException] = []

        def attempt(fn: Callable[[], None]) -> None:
            try:
                fn()
            except WarpdriveError as e:
                errors.append(e)

        for hook in reversed(self._close_hooks):
            attempt(hook)
        self._close_hooks.clear()
        for index in list(self._irqs):
            attempt(lambda index=index: self.disable_irqs(index))  # type: ignore[misc]
        for bar in list(self._bars.values()):
            attempt(bar.close)
        self._bars.clear()
        attempt(self.dma.close)
        attempt(self._close_backend)
        self._closed = True
        self._fork_unregister()
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        if self._closed:  # as a closed file: `with` on it is a mistake, said at once
            raise ClosedError(f"device {self.name} is closed", hint="open it again")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fork_describe(self) -> str:
        return f"device {self.name} ({self.backend})"

    # -- regions ----------------------------------------------------------------------------
    def region_read(self, index: int, offset: int, size: int) -> bytes:
        """`size` bytes of region `index` at `offset` through the backend (pread or a message),
        not through a mapping: for config space and registers outside mapped areas."""
        self._check_open()
        info = self.region_info(index)
        if offset < 0 or size < 0 or offset + size > info.size:
            raise InvalidArgumentError(
                f"read of {size} bytes at {offset:#x} is outside region {index} of {self.name} "
                f"(size {info.size:#x})")
        if not info.readable:
            raise UnsupportedError(f"region {index} of {self.name} is not readable")
        return self._region_read(info, offset, size)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        """Write `data` into region `index` at `offset` through the backend (see region_read)."""
        self._check_open()
        info = self.region_info(index)
        if offset < 0 or offset + len(data) > info.size:
            raise InvalidArgumentError(
                f"write of {len(data)} bytes at {offset:#x} is outside region {index} of "
                f"{self.name} (size {info.size:#x})")
        if not info.writable:
            raise UnsupportedError(f"region {index} of {self.name} is not writable")
        self._region_write(info, offset, data)

    # -- config space -----------------------------------------------------------------------
    def config_read(self, offset: int, width: int) -> int:
        """Read a `width`-byte (1, 2, 4) field of config space at `offset`, aligned."""
        if width not in (1, 2, 4) or offset % width:
            raise InvalidArgumentError(f"config read of width {width} at {offset:#x} is invalid")
        data = self.region_read(VFIO_PCI_CONFIG_REGION_INDEX, offset, width)
        return int.from_bytes(data, "little")

    def config_write(self, offset: int, width: int, value: int) -> None:
        """Write a `width`-byte (1, 2, 4) field of config space at `offset`, aligned; the
        backend (the kernel's vfio-pci, a vfio-user server) filters what it must."""
        if width not in (1, 2, 4) or offset % width:
            raise InvalidArgumentError(f"config write of width {width} at {offset:#x} is invalid")
        require_int("config space value", value)
        if not 0 <= value < 1 << (8 * width):
            raise InvalidArgumentError(f"value {value:#x} does not fit a {width * 8}-bit config "
                                       f"field at {offset:#x}")
        self.region_write(VFIO_PCI_CONFIG_REGION_INDEX, offset, value.to_bytes(width, "little"))

    def config_read8(self, offset: int) -> int:
        """config_read(offset, 1)"""
        return self.config_read(offset, 1)

    def config_read16(self, offset: int) -> int:
        """config_read(offset, 2)"""
        return self.config_read(offset, 2)

    def config_read32(self, offset: int) -> int:
        """config_read(offset, 4)"""
        return self.config_read(offset, 4)

    def config_write8(self, offset: int, value: int) -> None:
        """config_write(offset, 1, value)"""
        self.config_write(offset, 1, value)

    def config_write16(self, offset: int, value: int) -> None:
        """config_write(offset, 2, value)"""
        self.config_write(offset, 2, value)

    def config_write32(self, offset: int, value: int) -> None:
        """config_write(offset, 4, value)"""
        self.config_write(offset, 4, value)

    @property
    def vendor_id(self) -> int:
        return self.config_read16(R.PCI_VENDOR_ID)

    @property
    def device_id(self) -> int:
        return self.config_read16(R.PCI_DEVICE_ID)

    @property
    def revision(self) -> int:
        return self.config_read8(R.PCI_REVISION_ID)

    def capabilities(self) -> list[tuple[int, int]]:
        """(cap id, config offset) of each standard PCI capability, in list order."""
        return capability_list(self.config_header())

    def config_header(self) -> bytes:
        """The standard 256 bytes of config space (where the capability list lives), in one
        read: walked byte by byte it was a trapped access per byte (a message each on
        vfio-user, a dozen or more per walk)."""
        size = min(R.PCI_CFG_SPACE_SIZE, self.region_info(VFIO_PCI_CONFIG_REGION_INDEX).size)
        return self.region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0, size)

    def find_capability(self, cap_id: int) -> int | None:
        """Config-space offset of the first standard capability `cap_id` (PCI_CAP_ID_*), or
        None."""
        for cid, pos in self.capabilities():
            if cid == cap_id:
                return pos
        return None

    def enable_bus_master(self, enable: bool = True) -> None:
        """Let the device issue DMA (PCI_COMMAND bus master + memory space)."""
        cmd = self.config_read16(R.PCI_COMMAND)
        want = R.PCI_COMMAND_MASTER | R.PCI_COMMAND_MEMORY
        new = (cmd | want) if enable else (cmd & ~R.PCI_COMMAND_MASTER)
        if new != cmd:
            self.config_write16(R.PCI_COMMAND, new)

    def msix_table(self) -> tuple[int, int, int] | None:
        """(BAR index, offset, size in bytes) of the MSI-X table, or None."""
        pos = self.find_capability(R.PCI_CAP_ID_MSIX)
        if pos is None:
            return None
        flags = self.config_read16(pos + R.PCI_MSIX_FLAGS)
        table = self.config_read32(pos + R.PCI_MSIX_TABLE)
        entries = (flags & R.PCI_MSIX_FLAGS_QSIZE) + 1
        return (table & R.PCI_MSIX_TABLE_BIR, table & R.PCI_MSIX_TABLE_OFFSET,
                entries * R.PCI_MSIX_ENTRY_SIZE)

    # -- BARs -------------------------------------------------------------------------------
    def map_bar(self, index: int, *, trap_only: bool = False) -> Mmio:
        """Map BAR `index` into the process. Mappable areas (whole BAR, or the sparse-mmap areas,
        minus the MSI-X table unless the kernel says it is mappable) become direct windows; the
        rest is reached through the backend (pread/pwrite or messages). `trap_only=True` maps
        nothing: every access is a syscall or message (for comparisons)."""
        self._check_open()
        require_int("BAR index", index)
        if index in self._bars and not self._bars[index]._closed:
            return self._bars[index]
        info = self.region_info(index)
        if info.size == 0:
            raise DeviceNotFoundError(f"BAR {index} of {self.name} is not implemented")
        trap = _RegionTrap(self, info)
        areas: list[tuple[int, int]] = []
        if info.mappable and not trap_only:
            areas = list(info.sparse_areas) if info.sparse_areas is not None else [(0, info.size)]
            msix = self.msix_table() if not info.msix_mappable else None
            if msix is not None and msix[0] == index:
                lo = msix[1] & ~(sc.PAGE_SIZE - 1)
                hi = sc.page_align_up(msix[1] + msix[2])
                areas = _subtract(areas, lo, hi)
        if not areas:
            mmio = Mmio(f"{self.name}/bar{index}", info.size, [], trap)
        else:
            span = sc.page_align_up(info.size)
            # Reserve the whole BAR's address range, then place the mappable pieces inside it.
            base = sc.mmap(span, sc.PROT_NONE, sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_NORESERVE,
                           what=f"reserving address space for BAR {index} of {self.name}")
            prot = (sc.PROT_READ if info.readable else 0) | (sc.PROT_WRITE if info.writable else 0)
            windows: list[MmioWindow] = []
            try:
                for off, size in areas:
                    mlen = sc.page_align_up(size)
                    self._mmap_region(info, off, mlen, prot, base + off)
                    windows.append(MmioWindow(off, min(size, info.size - off), base + off))
                # A child must never inherit a doorbell mapping.
                sc.madvise(base, span, sc.MADV_DONTFORK,
                           what=f"madvise(MADV_DONTFORK) on BAR {index} of {self.name}")
            except BaseException:
                sc.munmap(base, span)
                raise
            mmio = Mmio(f"{self.name}/bar{index}", info.size, windows, trap,
                        on_close=lambda: sc.munmap(base, span))
        self._bars[index] = mmio
        return mmio

    # -- interrupts -------------------------------------------------------------------------
    def enable_irqs(self, index: int, count: int | None = None, start: int = 0) -> list[Interrupt]:
        """Route `count` vectors of IRQ `index` (INTx/MSI/MSI-X) to eventfds and return them."""
        self._check_open()
        info = self.irq_info(index)
        if info.count == 0:
            raise UnsupportedError(f"{self.name} has no {info.name} interrupts")
        if count is None:
            count = info.count - start
        if count <= 0 or start < 0 or start + count > info.count:
            raise InvalidArgumentError(
                f"{info.name} vectors {start}..{start + count - 1} requested; {self.name} has "
                f"{info.count}")
        if index in self._irqs:
            self.disable_irqs(index)
        fds = [sc.eventfd(0, sc.EFD_NONBLOCK) for _ in range(count)]
        try:
            self._set_irq_eventfds(index, start, fds)
        except BaseException:
            for fd in fds:
                close_fd_quietly(fd)
            raise
        irqs = [Interrupt(self, index, start + i, fd) for i, fd in enumerate(fds)]
        self._irqs[index] = irqs
        return irqs

    def disable_irqs(self, index: int) -> None:
        """Turn off every vector of IRQ `index` (VFIO_PCI_*_IRQ_INDEX) and close its eventfds."""
        if index not in self._irqs and not self._closed:
            self.irq_info(index)  # a bad index said as enable_irqs says it, not by the backend
        irqs = self._irqs.pop(index, [])
        try:
            if not self._closed:
                self._disable_irq_index(index)
        finally:
            for irq in irqs:
                irq.close()

    # -- liveness ---------------------------------------------------------------------------
    def watchdog(self) -> None:
        """Called by drivers while they wait on shared memory for the device (no syscall on that
        path): raises `ConnectionLostError` if the backend knows the device is gone. It costs
        nothing per call on kernel backends; see the vfio-user backend for how it checks."""
        return None

    # -- IOMMU faults -----------------------------------------------------------------------
    def iommu_faults(self) -> Sequence[object]:
        """IOMMU faults the kernel reported for this device since the last call (each has a
        readable `str()`). Kernel backends read them from the kernel log; backends that cannot
        see any return an empty list. Plugins call this after a DMA that a device reports as
        complete but that may have been blocked (some devices ignore a failed DMA)."""
        return []

    # -- reset ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Function-level (or backend-equivalent) reset of the device."""
        self._check_open()
        if not self.reset_supported:
            raise UnsupportedError(f"{self.name} offers no device reset",
                                   hint="use a hot reset of the slot, or re-bind the device")
        self._reset()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.name} backend={self.backend} {state}>"


def capability_list(config: bytes) -> list[tuple[int, int]]:
    """(cap id, offset) of each standard capability in `config` (config space from offset 0),
    in list order; a loop or a pointer outside `config` ends the walk."""
    if len(config) <= R.PCI_CAPABILITY_LIST or \
            not int.from_bytes(config[R.PCI_STATUS:R.PCI_STATUS + 2], "little") & \
            R.PCI_STATUS_CAP_LIST:
        return []
    out: list[tuple[int, int]] = []
    pos = config[R.PCI_CAPABILITY_LIST] & ~3
    seen: set[int] = set()
    while pos and pos + R.PCI_CAP_LIST_NEXT < len(config) and pos not in seen and len(out) < 48:
        seen.add(pos)
        out.append((config[pos + R.PCI_CAP_LIST_ID], pos))
        pos = config[pos + R.PCI_CAP_LIST_NEXT] & ~3
    return out


def _subtract(areas: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for off, size in areas:
        end = off + size
        if end <= lo or off >= hi:
            out.append((off, size))
            continue
        if off < lo:
            out.append((off, lo - off))
        if hi < end:
            out.append((hi, end - hi))
    return out
