"""A VFIO group (/dev/vfio/<N>): viability, attaching it to a container, getting device fds."""

from __future__ import annotations

import ctypes
import errno

from ... import syscalls as sc
from ...errors import ClosedError, DeviceBusyError, GroupNotViableError
from ...forkguard import close_fd_quietly
from ...pci import GroupMember
from ...uapi import vfio as U
from .container import Container


def group_path(group: int) -> str:
    return f"/dev/vfio/{group}"


def describe_blockers(members: tuple[GroupMember, ...]) -> str:
    blockers = [m for m in members if not m.vfio_viable]
    return ", ".join(f"{m.bdf} (bound to {m.driver})" for m in blockers)


class Group:
    """An open IOMMU group. One open per group at a time is all the kernel allows."""

    def __init__(self, group: int, members: tuple[GroupMember, ...] = ()) -> None:
        self.group = group
        path = group_path(group)
        self.fd = sc.open_dev(path, what=f"open {path} (IOMMU group {group})", hints={
            errno.EBUSY: f"the device is busy: IOMMU group {group} is already open (by this "
                         "process, another process, or through its VFIO cdev with iommufd); close "
                         f"that user first, e.g. find it with `fuser -v {path} "
                         "/dev/vfio/devices/*`",
            errno.ENOENT: f"{path} does not exist: bind the device to vfio-pci first "
                          "(`warpdrive bind <bdf>`)",
        })
        self.container: Container | None = None
        try:
            status = U.vfio_group_status(argsz=ctypes.sizeof(U.vfio_group_status))
            self._ioctl(U.VFIO_GROUP_GET_STATUS, status, "VFIO_GROUP_GET_STATUS")
            if not status.flags & U.VFIO_GROUP_FLAGS_VIABLE:
                blockers = describe_blockers(members)
                raise GroupNotViableError(
                    f"IOMMU group {group} is not viable: "
                    + (f"{blockers} still bound to a host driver" if blockers else
                       "some member is still bound to a host driver"),
                    hint="bind every function of the group to vfio-pci (`warpdrive bind --group "
                    "<bdf>`) or unbind them")
        except BaseException:
            self.close()
            raise

    def _ioctl(self, request: int, arg: object, what: str) -> int:
        if self.fd < 0:
            raise ClosedError(f"IOMMU group {self.group} is closed")
        return sc.ioctl(self.fd, request, arg, what=f"{what} on /dev/vfio/{self.group}")

    def set_container(self, container: Container) -> None:
        fd = ctypes.c_int(container.fd)
        self._ioctl(U.VFIO_GROUP_SET_CONTAINER, fd, "VFIO_GROUP_SET_CONTAINER")
        self.container = container

    def get_device_fd(self, bdf: str) -> int:
        """The device fd (the kernel opens it O_CLOEXEC). Keep the ioctl's int result: it *is*
        the fd."""
        name = bytearray(bdf.encode() + b"\0")
        try:
            return self._ioctl(U.VFIO_GROUP_GET_DEVICE_FD, name, f"VFIO_GROUP_GET_DEVICE_FD({bdf})")
        except DeviceBusyError as e:
            raise DeviceBusyError(e.what, errno=e.errno,
                                  hint=f"{bdf} is already open through this group") from None

    def unset_container(self) -> None:
        if self.container is not None and self.fd >= 0:
            self._ioctl(U.VFIO_GROUP_UNSET_CONTAINER, None, "VFIO_GROUP_UNSET_CONTAINER")
        self.container = None

    def close(self) -> None:
        close_fd_quietly(self.fd)
        self.fd = -1
