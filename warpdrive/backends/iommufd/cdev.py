"""iommufd + VFIO device cdev. Entry point `open_iommufd(bdf)`.

Sequence: open /dev/iommu; open /dev/vfio/devices/vfioN (found under
/sys/bus/pci/devices/<bdf>/vfio-dev/); VFIO_DEVICE_BIND_IOMMUFD (nothing else works on the cdev
before it); IOMMU_IOAS_ALLOC; VFIO_DEVICE_ATTACH_IOMMUFD_PT(ioas); read the IOAS's IOVA ranges
(after the attach: it adds the device's reserved regions). Close: detach, destroy the HWPTs and the
IOAS we made, close the cdev (which unbinds), close /dev/iommu.

The cdev can be opened many times, but only one fd can bind: a second bind fails with EINVAL (the
device is open via another cdev fd) or EBUSY (its group is open through legacy VFIO); both become
DeviceBusyError.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

from ... import syscalls as sc
from ...errors import DeviceBusyError, InvalidArgumentError, UnsupportedError, WarpdriveError
from ...forkguard import close_fd_quietly
from ...iova import IovaRange
from ...uapi import vfio as V
from ..vfiodev.bound import vfio_function
from ..vfiodev.device import VfioDevice
from .ctx import HwInfo, IommufdContext
from .ioas import IoasDmaSpace

_PASID_HINTS = {
    errno.EINVAL: "PASID attach needs Linux 6.15+ (older kernels take no flags here), a device "
                  "with PASID support (iommu_info.max_pasid_log2 > 0), a PASID below its limit "
                  "and a HWPT allocated with IOMMU_HWPT_ALLOC_PASID",
    errno.EOPNOTSUPP: "the device or its IOMMU has no PASID support (iommu_info.max_pasid_log2 is "
                      "0): no PASID capability, or an IOMMU without scalable mode"}

_BUSY = ("{bdf} is busy, already open: its VFIO cdev is bound to an iommufd by another fd (this "
         "or another process; the kernel answers a second bind with EINVAL), or its IOMMU group "
         "is open through legacy VFIO (EBUSY)")


class IommufdDevice(VfioDevice):
    backend = "iommufd"

    def __init__(self, bdf: str, ctx: IommufdContext, ioas_id: int, device_fd: int,
                 dev_id: int, hwpt_id: int, cdev: str) -> None:
        self.ctx = ctx
        self.ioas_id = ioas_id
        self.dev_id = dev_id
        self.cdev = cdev
        self.hwpt_id: int | None = hwpt_id  # what the device is attached to now (None: detached)
        self.pasid_hwpts: dict[int, int] = {}  # PASID -> the HWPT attached there
        self._own_hwpts: list[int] = []
        dma = IoasDmaSpace(bdf, ctx, ioas_id)
        super().__init__(bdf, device_fd, dma)
        self._hw_info: HwInfo | None = None

    @property
    def ioas_dma(self) -> IoasDmaSpace:
        assert isinstance(self.dma, IoasDmaSpace)
        return self.dma

    @property
    def iommu_info(self) -> HwInfo:
        """IOMMU_GET_HW_INFO for this device: IOMMU type, capabilities, PASID width, VT-d regs."""
        self._check_open()
        if self._hw_info is None:
            self._hw_info = self.ctx.hw_info(self.dev_id)
        return self._hw_info

    # -- page tables ------------------------------------------------------------------------
    def alloc_hwpt(self, flags: int = 0, fault_id: int = 0) -> int:
        """Allocate an explicit hardware page table (IOMMU domain) backed by this device's IOAS;
        attach the device to it with `attach(hwpt_id)`. Destroyed when the device closes.
        `flags`: IOMMU_HWPT_ALLOC_* (e.g. IOMMU_HWPT_ALLOC_PASID for a domain attachable to
        PASIDs, Linux 6.15+; EOPNOTSUPP from older kernels and IOMMUs without PASID)."""
        self._check_open()
        hwpt = self.ctx.hwpt_alloc(self.dev_id, self.ioas_id, flags, fault_id)
        self._own_hwpts.append(hwpt)
        return hwpt

    def attach(self, pt_id: int | None = None, *, pasid: int | None = None) -> int:
        """Attach (or re-attach, replacing the current domain) to an IOAS or HWPT id; default the
        device's IOAS. Returns the HWPT the kernel attached. Re-reads the IOVA ranges.

        With `pasid`, attach that PASID of the device instead of its requests without one
        (VFIO_DEVICE_ATTACH_PASID, Linux 6.15+): the domain should come from
        `alloc_hwpt(IOMMU_HWPT_ALLOC_PASID)`, and the device and IOMMU must support PASID
        (`iommu_info.max_pasid_log2` > 0)."""
        self._check_open()
        pt = self.ioas_id if pt_id is None else pt_id
        arg = V.vfio_device_attach_iommufd_pt(
            argsz=ctypes.sizeof(V.vfio_device_attach_iommufd_pt),
            flags=0 if pasid is None else V.VFIO_DEVICE_ATTACH_PASID, pt_id=pt, pasid=pasid or 0)
        self._ioctl(V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, arg,
                    f"VFIO_DEVICE_ATTACH_IOMMUFD_PT({pt}"
                    + ("" if pasid is None else f", PASID {pasid}") + ")",
                    hints=None if pasid is None else _PASID_HINTS)
        if pasid is not None:
            self.pasid_hwpts[pasid] = int(arg.pt_id)
            return int(arg.pt_id)
        self.hwpt_id = int(arg.pt_id)
        self.dma.refresh_ranges()
        return self.hwpt_id

    def detach(self, *, pasid: int | None = None) -> None:
        """Detach from the current IOAS/HWPT: the device's DMA is blocked until attached again.
        With `pasid`: detach that PASID only (VFIO_DEVICE_DETACH_PASID)."""
        self._check_open()
        if (self.hwpt_id if pasid is None else self.pasid_hwpts.get(pasid)) is None:
            return
        arg = V.vfio_device_detach_iommufd_pt(
            argsz=ctypes.sizeof(V.vfio_device_detach_iommufd_pt),
            flags=0 if pasid is None else V.VFIO_DEVICE_DETACH_PASID, pasid=pasid or 0)
        self._ioctl(V.VFIO_DEVICE_DETACH_IOMMUFD_PT, arg,
                    "VFIO_DEVICE_DETACH_IOMMUFD_PT" + ("" if pasid is None else f"(PASID {pasid})"),
                    hints=None if pasid is None else _PASID_HINTS)
        if pasid is None:
            self.hwpt_id = None
        else:
            del self.pasid_hwpts[pasid]

    def allow_iovas(self, ranges: list[IovaRange] | None) -> None:
        """IOMMU_IOAS_ALLOW_IOVAS on this device's IOAS; the allocator keeps inside `ranges`."""
        self.ioas_dma.allow_iovas(ranges)

    # -- close ------------------------------------------------------------------------------
    def _close_backend(self) -> None:
        # Detach while the cdev is still bound, then drop our HWPTs (a HWPT in use can't go).
        errors: list[WarpdriveError] = []
        for pasid in list(self.pasid_hwpts):
            try:
                self.detach(pasid=pasid)
            except WarpdriveError as e:
                errors.append(e)
        if self.hwpt_id is not None and self.device_fd >= 0:
            try:
                self.detach()
            except WarpdriveError as e:
                errors.append(e)
        super()._close_backend()  # closes the cdev (unbinds), then _release_iommu
        if errors:
            raise errors[0]

    def _release_iommu(self) -> None:
        try:
            for hwpt in self._own_hwpts:
                try:
                    self.ctx.destroy(hwpt)
                except WarpdriveError:
                    pass  # closing the iommufd below frees it anyway
            self._own_hwpts.clear()
            try:
                self.ctx.destroy(self.ioas_id)
            except WarpdriveError:
                pass
        finally:
            self.ctx.close()

    def _fork_invalidate(self) -> None:
        super()._fork_invalidate()
        self.ctx.close()

    def fds(self) -> dict[str, int]:
        return {"device": self.device_fd, "iommufd": self.ctx.fd}


def cdev_name(bdf: str, sysfs_root: str = "/sys") -> str:
    """vfioN of a vfio-pci function, from /sys/bus/pci/devices/<bdf>/vfio-dev/."""
    d = os.path.join(sysfs_root, "bus/pci/devices", bdf, "vfio-dev")
    try:
        names = sorted(n for n in os.listdir(d) if n.startswith("vfio"))
    except OSError:
        names = []
    if not names:
        raise UnsupportedError(
            f"{bdf} has no VFIO device cdev ({d} is missing)",
            hint="the kernel needs CONFIG_VFIO_DEVICE_CDEV; or use backend='vfio'")
    return names[0]


def open_iommufd(bdf: str, dma_mask: int | None = None, **opts: Any) -> IommufdDevice:
    """Open `bdf` (bound to vfio-pci) through its VFIO cdev bound to a new iommufd + IOAS."""
    if opts:
        raise InvalidArgumentError(f"unknown option(s) for the iommufd backend: {sorted(opts)}")
    fn = vfio_function(bdf)
    cdev = cdev_name(fn.bdf)
    ctx = IommufdContext()
    device_fd = -1
    try:
        node = f"/dev/vfio/devices/{cdev}"
        device_fd = sc.open_dev(node, what=f"open {node} (VFIO cdev of {fn.bdf})", hints={
            errno.ENOENT: f"{node} is missing although sysfs lists {cdev}; is devtmpfs mounted?"})
        bind = V.vfio_device_bind_iommufd(argsz=ctypes.sizeof(V.vfio_device_bind_iommufd),
                                          iommufd=ctx.fd)
        try:
            sc.ioctl(device_fd, V.VFIO_DEVICE_BIND_IOMMUFD, bind,
                     what=f"VFIO_DEVICE_BIND_IOMMUFD on {node}")
        except WarpdriveError as e:
            if e.errno in (errno.EBUSY, errno.EINVAL):
                raise DeviceBusyError(
                    _BUSY.format(bdf=fn.bdf) + f" (VFIO_DEVICE_BIND_IOMMUFD on {node})",
                    errno=e.errno,
                    hint="close the other user first; find it with "
                    f"`fuser -v {node} /dev/vfio/{fn.iommu_group}`") from None
            raise
        dev_id = int(bind.out_devid)
        ioas = ctx.ioas_alloc()
        attach = V.vfio_device_attach_iommufd_pt(
            argsz=ctypes.sizeof(V.vfio_device_attach_iommufd_pt), pt_id=ioas)
        sc.ioctl(device_fd, V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach,
                 what=f"VFIO_DEVICE_ATTACH_IOMMUFD_PT(ioas {ioas}) on {node}")
        dev = IommufdDevice(fn.bdf, ctx, ioas, device_fd, dev_id, int(attach.pt_id), cdev)
        if dma_mask is not None:
            dev.dma.set_dma_mask(dma_mask)
        return dev
    except BaseException:
        close_fd_quietly(device_fd)
        ctx.close()
        raise
