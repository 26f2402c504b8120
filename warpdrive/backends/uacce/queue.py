"""uacce queues: the SVA backend, where the device shares this process's page table.

A uacce device (`/sys/class/uacce/<drv>-<n>`, char dev `/dev/<drv>-<n>`) hands out one hardware
queue per open(). The kernel binds the process's mm to a PASID at open, so the device walks the
process page table: DMA addresses are process virtual addresses, nothing is pinned, and the kernel
driver has already brought the function up. What remains for user space is to map the queue's
regions (MMIO doorbell page, DUS queue memory), start it, and ring doorbells.

Driver-specific ioctls (e.g. hisi_qm's SET_QP_CTX) go through `UacceQueue.ioctl`. Plugins see
these classes only as the core's `warpdrive.sva.SvaDevice` / `SvaQueue`; `open_uacce(name)`
(also `warpdrive.backends.open_uacce`) opens a device.
"""

from __future__ import annotations

import mmap
import os
import select
from pathlib import Path
from typing import Any

from ... import syscalls as sc
from ...dma import DmaMapping, DmaSpace
from ...errors import (
    ClosedError,
    DeviceBusyError,
    DeviceNotFoundError,
    DeviceTimeoutError,
    UnsupportedError,
)
from ...forkguard import ForkSafe, close_fd_quietly
from ...iova import IovaRange
from ...mmio import Mmio, MmioWindow
from ...sva import SvaDevice, SvaQueue
from ...uapi.uacce import (
    UACCE_CMD_PUT_Q,
    UACCE_CMD_START_Q,
    UACCE_DEV_SVA,
    UACCE_QFRT_DUS,
    UACCE_QFRT_MMIO,
)
from .sysfs import read_device

# x86-64 and arm64 (48-bit VA) user address space: the device sees exactly this.
_USER_VA_LAST = (1 << 47) - 1


class SvaDmaSpace(DmaSpace):
    """DMA space of a queue bound to this process's mm: IOVA == virtual address.

    Maps still go through `check_dma_memory` (the same memory rules apply: no file-backed, MMIO or
    read-only targets) but pin nothing: with SVA the IOMMU resolves addresses through the process
    page table and faults missing pages in (I/O page faults), so the memlock preflight is skipped
    and the kernel is not involved in a map at all."""

    pins = False
    identity = True
    skip_pin_reason = ("SVA: the IOMMU walks this process's page table and faults pages in on "
                       "demand, so nothing is pinned or charged to RLIMIT_MEMLOCK")

    def _query_ranges(self) -> list[IovaRange]:
        return [IovaRange(sc.PAGE_SIZE, _USER_VA_LAST)]

    def _do_map(self, mapping: DmaMapping) -> None:
        """Nothing to tell the kernel: the mapping exists in the shared page table already."""

    def _do_unmap(self, mapping: DmaMapping) -> None:
        """Nothing to undo; the caller stops using the address."""


def _read_attr(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


class UacceQueue(SvaQueue, ForkSafe):
    """One queue of a uacce device. Open, map regions, `start()`, use, `close()`. With `dma`
    (the device's shared SVA space) the queue uses it and leaves closing it to its owner."""

    def __init__(self, name: str, *, sysfs_root: str = "/sys", dev_root: str = "/dev",
                 dma: SvaDmaSpace | None = None) -> None:
        self.name = name
        attrs = Path(sysfs_root) / "class" / "uacce" / name
        if not attrs.is_dir():
            raise DeviceNotFoundError(
                f"no uacce device {name!r} (nothing at {attrs})",
                hint="list accelerators with `warpdrive devices`; HiSilicon drivers register "
                "uacce devices only with uacce_mode=1")
        self.api = _read_attr(attrs / "api")
        flags = _read_attr(attrs / "flags")
        self.flags = int(flags) if flags.isdigit() else 0
        if not self.flags & UACCE_DEV_SVA:
            raise UnsupportedError(
                f"uacce device {name} does not offer SVA (flags={self.flags})",
                hint="enable SVA in the IOMMU (and the device's PASID/PRI), or use the device "
                "through VFIO with explicit DMA maps instead")
        avail = _read_attr(attrs / "available_instances")
        if avail.isdigit() and int(avail) == 0:
            raise DeviceBusyError(f"all queues of uacce device {name} are in use",
                                  hint="close other users, or pick another device")
        self.region_sizes = {
            UACCE_QFRT_MMIO: int(_read_attr(attrs / "region_mmio_size") or 0),
            UACCE_QFRT_DUS: int(_read_attr(attrs / "region_dus_size") or 0),
        }
        self.fd = sc.open_dev(os.path.join(dev_root, name), os.O_RDWR,
                              what=f"open uacce queue /dev/{name}")
        self._own_dma = dma is None
        self.dma = SvaDmaSpace(f"uacce:{name}") if dma is None else dma
        self._mmio: Mmio | None = None
        self._dus: mmap.mmap | None = None
        self._started = False
        self._closed = False
        self._fork_register()

    def _check_open(self) -> None:
        self._check_alive()
        if self._closed:
            raise ClosedError(f"uacce queue {self.name} is closed")

    def fileno(self) -> int:
        return self.fd

    def ioctl(self, request: int, arg: Any = None, *, what: str) -> int:
        """Driver-specific queue ioctl (e.g. UACCE_CMD_QM_SET_QP_CTX)."""
        self._check_open()
        return sc.ioctl(self.fd, request, arg, what=f"{what} on /dev/{self.name}")

    def _region_len(self, qfrt: int) -> int:
        size = self.region_sizes.get(qfrt, 0)
        if size <= 0:
            raise UnsupportedError(f"uacce device {self.name} exposes no region {qfrt}")
        return size

    def map_mmio(self) -> Mmio:
        """The queue's doorbell page(s): device MMIO, explicit-width access only."""
        self._check_open()
        if self._mmio is None:
            size = self._region_len(UACCE_QFRT_MMIO)
            addr = sc.mmap(size, sc.PROT_READ | sc.PROT_WRITE, sc.MAP_SHARED, self.fd,
                           UACCE_QFRT_MMIO * sc.PAGE_SIZE,
                           what=f"mmap of the MMIO region of /dev/{self.name}")
            # The kernel marks queue mappings VM_DONTCOPY|VM_WIPEONFORK; say so ourselves too.
            sc.madvise(addr, size, sc.MADV_DONTFORK)
            self._mmio = Mmio(f"{self.name}/mmio", size, [MmioWindow(0, size, addr)],
                              on_close=lambda: sc.munmap(addr, size))
        return self._mmio

    def map_dus(self) -> memoryview:
        """The queue memory the kernel allocated (SQ, CQ, status page): ordinary coherent RAM."""
        self._check_open()
        if self._dus is None:
            size = self._region_len(UACCE_QFRT_DUS)
            try:
                self._dus = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED,
                                      offset=UACCE_QFRT_DUS * sc.PAGE_SIZE)
            except OSError as e:
                raise DeviceBusyError(f"mmap of the DUS region of /dev/{self.name}",
                                      errno=e.errno) from None
        return memoryview(self._dus)

    def start(self) -> None:
        self._check_open()
        sc.ioctl(self.fd, UACCE_CMD_START_Q, what=f"UACCE_CMD_START_Q on /dev/{self.name}")
        self._started = True

    def wait(self, timeout: float | None) -> None:
        """Block until the kernel reports a completion (poll() on the queue fd)."""
        self._check_open()
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        if not p.poll(None if timeout is None else int(timeout * 1000)):
            raise DeviceTimeoutError(f"no completion on uacce queue {self.name} in {timeout} s")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._forked_dead:
            return
        try:
            if self._started:
                # Stop the hardware queue now rather than at the last fd reference's release.
                sc.ioctl(self.fd, UACCE_CMD_PUT_Q, what=f"UACCE_CMD_PUT_Q on /dev/{self.name}")
        finally:
            if self._own_dma:
                self.dma.close()
            if self._mmio is not None:
                self._mmio.close()
            if self._dus is not None:
                self._dus.close()
            close_fd_quietly(self.fd)
            self.fd = -1
            self._fork_unregister()

    def _fork_describe(self) -> str:
        return f"uacce queue {self.name}"

    def _fork_invalidate(self) -> None:
        close_fd_quietly(self.fd)
        self.fd = -1

    def __enter__(self) -> UacceQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class UacceSva(SvaDevice):
    """A uacce device opened for SVA queues: one DMA space (this process's page table) that
    every queue shares, and `open_queue()` for each hardware queue."""

    def __init__(self, name: str, *, sysfs_root: str = "/sys", dev_root: str = "/dev") -> None:
        if not (Path(sysfs_root) / "class" / "uacce" / name).is_dir():
            raise DeviceNotFoundError(
                f"no uacce device {name!r} (nothing at {sysfs_root}/class/uacce/{name})",
                hint="list accelerators with `warpdrive devices`; HiSilicon drivers register "
                "uacce devices only with uacce_mode=1")
        info = read_device(name, sysfs_root, dev_root)
        self.name = name
        self.driver = info.driver
        self.api = info.api or ""
        self._roots = (sysfs_root, dev_root)
        self._dma = SvaDmaSpace(f"uacce:{name}")

    @property
    def dma(self) -> SvaDmaSpace:
        return self._dma

    def open_queue(self) -> UacceQueue:
        return UacceQueue(self.name, sysfs_root=self._roots[0], dev_root=self._roots[1],
                          dma=self._dma)

    def close(self) -> None:
        self._dma.close()

    def __repr__(self) -> str:
        return f"<UacceSva {self.name} api={self.api}>"


def open_uacce(name: str, *, sysfs_root: str = "/sys", dev_root: str = "/dev") -> UacceSva:
    """Open uacce device `name` (e.g. hisi_zip-0) for SVA queues."""
    return UacceSva(name, sysfs_root=sysfs_root, dev_root=dev_root)
