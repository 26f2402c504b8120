"""The `Device` hooks over a VFIO device fd, shared by legacy VFIO and iommufd + VFIO cdev.

Whichever way the fd was obtained (VFIO_GROUP_GET_DEVICE_FD, or a cdev bound to an iommufd), the
device ioctls are the same: region info with its capability chain, pread/pwrite at the region's
fd offset, mmap of mappable pieces, IRQ info and eventfd routing, reset, hot-reset info. Backends
subclass `VfioDevice` and implement `_release_iommu` (detach/unset container, close their fds).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import struct
from dataclasses import dataclass
from functools import cached_property

from ... import syscalls as sc
from ...device import Device, IrqInfo, RegionInfo
from ...dma import DmaSpace
from ...errors import (
    ClosedError,
    InvalidArgumentError,
    UnsupportedError,
    WarpdriveError,
)
from ...forkguard import close_fd_quietly
from ...uapi import vfio as U
from . import caps
from .faults import FaultRecord, KmsgFaultWatch


@dataclass(frozen=True)
class DependentDevice:
    """A function that a hot reset of this device's slot or bus would also reset."""

    segment: int
    bus: int
    devfn: int
    group_id: int  # or iommufd dev id with VFIO_PCI_HOT_RESET_FLAG_DEV_ID (VFIO_PCI_DEVID_*)

    @property
    def bdf(self) -> str:
        return f"{self.segment:04x}:{self.bus:02x}:{self.devfn >> 3:02x}.{self.devfn & 7}"


class VfioDevice(Device):
    """A PCI function behind a VFIO device fd. Subclasses own how the fd was obtained."""

    def __init__(self, bdf: str, device_fd: int, dma: DmaSpace) -> None:
        self.bdf = bdf
        self.device_fd = device_fd
        self._regions: dict[int, RegionInfo] = {}
        self._faults = KmsgFaultWatch.open(bdf)
        super().__init__(bdf, dma)
        try:
            info = U.vfio_device_info(argsz=ctypes.sizeof(U.vfio_device_info))
            self._ioctl(U.VFIO_DEVICE_GET_INFO, info, "VFIO_DEVICE_GET_INFO")
            self.device_flags = int(info.flags)
            self._num_regions = int(info.num_regions)
            self._num_irqs = int(info.num_irqs)
            if not self.device_flags & U.VFIO_DEVICE_FLAGS_PCI:
                raise UnsupportedError(
                    f"{bdf} is not a VFIO PCI device (flags {self.device_flags:#x})")
        except BaseException:
            if self._faults is not None:
                self._faults.close()
            self._fork_unregister()
            raise

    # -- plumbing ---------------------------------------------------------------------------
    def _ioctl(self, request: int, arg: object, name: str,
               hints: dict[int, str] | None = None) -> int:
        if self.device_fd < 0:
            raise ClosedError(f"device {self.name} is closed", hint="open it again")
        return sc.ioctl(self.device_fd, request, arg, what=f"{name} on {self.name}", hints=hints)

    # -- Device hooks: counts ---------------------------------------------------------------
    @property
    def num_regions(self) -> int:
        return self._num_regions

    @property
    def num_irqs(self) -> int:
        return self._num_irqs

    @property
    def reset_supported(self) -> bool:
        return bool(self.device_flags & U.VFIO_DEVICE_FLAGS_RESET)

    # -- regions ----------------------------------------------------------------------------
    def region_info(self, index: int) -> RegionInfo:
        self._check_open()
        cached = self._regions.get(index)
        if cached is not None:
            return cached
        if not 0 <= index < self._num_regions:
            raise InvalidArgumentError(
                f"{self.name} has regions 0..{self._num_regions - 1}, not {index}")
        size = ctypes.sizeof(U.vfio_region_info)
        for _ in range(4):  # the needed size only grows if the kernel's answer changes between
            buf = bytearray(size)
            hdr = U.vfio_region_info.from_buffer(buf)
            hdr.argsz, hdr.index = size, index
            self._ioctl(U.VFIO_DEVICE_GET_REGION_INFO, buf, f"VFIO_DEVICE_GET_REGION_INFO({index})")
            if not caps.region_needs_second_call(hdr):
                break
            size = int(hdr.argsz)
            del hdr
        else:
            raise WarpdriveError(f"region {index} info of {self.name} kept growing")
        p = caps.parse_region_info(bytes(buf))
        info = RegionInfo(
            index=index, size=p.size, offset=p.offset,
            readable=bool(p.flags & U.VFIO_REGION_INFO_FLAG_READ),
            writable=bool(p.flags & U.VFIO_REGION_INFO_FLAG_WRITE),
            mappable=bool(p.flags & U.VFIO_REGION_INFO_FLAG_MMAP),
            sparse_areas=p.sparse_areas, msix_mappable=p.msix_mappable, type=p.type)
        self._regions[index] = info
        return info

    def _region_read(self, info: RegionInfo, offset: int, size: int) -> bytes:
        self._check_open()
        return sc.pread(self.device_fd, size, info.offset + offset,
                        what=f"read of {size} bytes at {offset:#x} in region {info.index} of "
                        f"{self.name}")

    def _region_write(self, info: RegionInfo, offset: int, data: bytes) -> None:
        self._check_open()
        sc.pwrite(self.device_fd, data, info.offset + offset,
                  what=f"write of {len(data)} bytes at {offset:#x} in region {info.index} of "
                  f"{self.name}")

    def _mmap_region(self, info: RegionInfo, offset: int, size: int, prot: int,
                     fixed_addr: int) -> None:
        sc.mmap(size, prot, sc.MAP_SHARED | sc.MAP_FIXED, self.device_fd, info.offset + offset,
                addr=fixed_addr,
                what=f"mmap of {size:#x} bytes at {offset:#x} of region {info.index} of "
                f"{self.name}")

    # -- interrupts -------------------------------------------------------------------------
    def irq_info(self, index: int) -> IrqInfo:
        self._check_open()
        if not 0 <= index < self._num_irqs:
            raise InvalidArgumentError(
                f"{self.name} has IRQ indexes 0..{self._num_irqs - 1}, not {index}")
        info = U.vfio_irq_info(argsz=ctypes.sizeof(U.vfio_irq_info), index=index)
        self._ioctl(U.VFIO_DEVICE_GET_IRQ_INFO, info, f"VFIO_DEVICE_GET_IRQ_INFO({index})")
        f = int(info.flags)
        return IrqInfo(index=index, count=int(info.count),
                       eventfd=bool(f & U.VFIO_IRQ_INFO_EVENTFD),
                       maskable=bool(f & U.VFIO_IRQ_INFO_MASKABLE),
                       automasked=bool(f & U.VFIO_IRQ_INFO_AUTOMASKED),
                       noresize=bool(f & U.VFIO_IRQ_INFO_NORESIZE))

    def _irq_set(self, flags: int, index: int, start: int, count: int, data: bytes,
                 what: str) -> None:
        hdr_size = ctypes.sizeof(U.vfio_irq_set)
        buf = bytearray(hdr_size + len(data))
        hdr = U.vfio_irq_set.from_buffer(buf)
        hdr.argsz, hdr.flags, hdr.index, hdr.start, hdr.count = (
            len(buf), flags, index, start, count)
        del hdr
        buf[hdr_size:] = data
        self._ioctl(U.VFIO_DEVICE_SET_IRQS, buf, what)

    def _set_irq_eventfds(self, index: int, start: int, fds: list[int]) -> None:
        self._irq_set(U.VFIO_IRQ_SET_DATA_EVENTFD | U.VFIO_IRQ_SET_ACTION_TRIGGER, index, start,
                      len(fds), struct.pack(f"<{len(fds)}i", *fds),
                      f"VFIO_DEVICE_SET_IRQS (route {len(fds)} vector(s) of irq index {index} "
                      "to eventfds)")

    def _disable_irq_index(self, index: int) -> None:
        self._irq_set(U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_TRIGGER, index, 0, 0, b"",
                      f"VFIO_DEVICE_SET_IRQS (disable irq index {index})")

    def _unmask_irq(self, index: int, vector: int) -> None:
        self._check_open()
        self._irq_set(U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_UNMASK, index, vector, 1,
                      b"", f"VFIO_DEVICE_SET_IRQS (unmask vector {vector} of irq index {index})")

    # -- reset ------------------------------------------------------------------------------
    def _reset(self) -> None:
        self._ioctl(U.VFIO_DEVICE_RESET, None, "VFIO_DEVICE_RESET")
        self._regions.clear()

    def hot_reset_info(self) -> list[DependentDevice]:
        """The functions a slot/bus hot reset would reset along with this one (each must be
        owned by the caller for VFIO_DEVICE_PCI_HOT_RESET). UnsupportedError when neither the
        slot nor the bus can be reset (e.g. an integrated endpoint on the root bus)."""
        self._check_open()
        hsize = ctypes.sizeof(U.vfio_pci_hot_reset_info)
        esize = ctypes.sizeof(U.vfio_pci_dependent_device)
        count = 0
        for _ in range(4):
            buf = bytearray(hsize + count * esize)
            hdr = U.vfio_pci_hot_reset_info.from_buffer(buf)
            hdr.argsz = len(buf)
            try:
                self._ioctl(U.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, buf,
                            "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO")
            except WarpdriveError as e:
                if e.errno == errno.ENOSPC and hdr.count > count:
                    count = int(hdr.count)  # the kernel wrote back how many it needs
                    del hdr
                    continue
                if e.errno == errno.ENODEV:
                    raise UnsupportedError(
                        f"{self.name} cannot be hot reset: neither its slot nor its bus supports "
                        "a reset", errno=e.errno,
                        hint="use VFIO_DEVICE_RESET if the device offers it") from None
                raise
            n = int(hdr.count)
            del hdr
            out = []
            for i in range(n):
                d = U.vfio_pci_dependent_device.from_buffer_copy(buf, hsize + i * esize)
                out.append(DependentDevice(int(d.segment), int(d.bus), int(d.devfn),
                                           int(d.group_id)))
            return out
        raise WarpdriveError(f"hot reset info of {self.name} kept growing")

    # -- IOMMU faults -----------------------------------------------------------------------
    def iommu_faults(self) -> list[FaultRecord]:
        """IOMMU translation faults the kernel logged for this device since the last call."""
        if self._faults is None or self._closed:
            return []
        return self._faults.poll()

    @cached_property
    def fault_log_available(self) -> bool:
        """Whether iommu_faults() can see anything (the kernel log is readable here)."""
        return self._faults is not None

    # -- close ------------------------------------------------------------------------------
    def _close_backend(self) -> None:
        try:
            close_fd_quietly(self.device_fd)
            self.device_fd = -1
        finally:
            if self._faults is not None:
                self._faults.close()
            self._release_iommu()

    def _release_iommu(self) -> None:
        """Backend part of close: detach / unset container, close the IOMMU fds."""

    def _fork_invalidate(self) -> None:
        # Child side: drop the child's references to the parent's fds (the kernel objects live on
        # in the parent). Never ioctl here: that would act on the parent's device.
        close_fd_quietly(self.device_fd)
        self.device_fd = -1
        if self._faults is not None:
            self._faults.close()

    def fds(self) -> dict[str, int]:
        """The kernel fds this device holds (for inspection, e.g. FD_CLOEXEC checks)."""
        return {"device": self.device_fd}


def fd_is_cloexec(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)


def ensure_cloexec(fd: int) -> None:
    """Set FD_CLOEXEC on an fd the kernel handed back (group device fds already carry it)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFD)
    if not flags & fcntl.FD_CLOEXEC:
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
