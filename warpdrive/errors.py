"""The project's errors: each says what failed, the errno when the kernel gave one, and what to do.

Every error the runtime raises on purpose is a `WarpdriveError`; the CLI prints `str(err)` (never a
traceback) and exits non-zero. Subclasses exist where a caller may want to react differently.
"""

from __future__ import annotations

import errno as _errno
import os


class WarpdriveError(Exception):
    """Base class. `what` names the failed operation; `hint` says what to do next."""

    def __init__(self, what: str, *, errno: int | None = None, hint: str | None = None) -> None:
        self.what = what
        self.errno = errno
        self.hint = hint
        super().__init__(self._format())

    def _format(self) -> str:
        msg = self.what
        if self.errno is not None:
            name = _errno.errorcode.get(self.errno, str(self.errno))
            msg += f": {os.strerror(self.errno)} ({name})"
        if self.hint:
            msg += f". {self.hint}"
        return msg


class KernelError(WarpdriveError):
    """A syscall or ioctl failed for a reason with no more specific class."""


class PermissionDeniedError(WarpdriveError):
    """EPERM/EACCES: not root, or /dev/vfio/N (or /dev/iommu) not accessible to this user."""


class DeviceBusyError(WarpdriveError):
    """The device (or a buffer, or a queue) is held by someone else."""


class DeviceNotFoundError(WarpdriveError):
    """No such PCI function, uacce device, socket or region."""


class NotBoundError(WarpdriveError):
    """The device is not bound to the driver this operation needs (usually vfio-pci)."""


class GroupNotViableError(WarpdriveError):
    """Another function in the IOMMU group is still bound to a host driver."""


class BindingRefusedError(WarpdriveError):
    """`warpdrive bind` refused to move a device (e.g. a network interface that is up)."""


class UnsafeMemoryError(WarpdriveError):
    """Memory that must not be handed to a device for DMA (file-backed, MMIO, read-only, holes)."""


class MemlockLimitError(WarpdriveError):
    """Pinning would exceed RLIMIT_MEMLOCK."""


class ResourceExhaustedError(WarpdriveError):
    """Out of IOVA space, queue slots, DMA map entries or similar finite resources."""


class DeviceTimeoutError(WarpdriveError):
    """The device did not answer in time (lost interrupt, IOMMU fault, wedged device)."""


class DmaFaultError(DeviceTimeoutError):
    """The IOMMU blocked a DMA of the device (the kernel logged a translation fault naming it).

    A DeviceTimeoutError because on most devices the symptom is a request that never completes;
    some (QEMU's edu) report completion anyway, and the kernel's fault log is how we know."""


class DeviceError(WarpdriveError):
    """The device reported an error status for a request."""


class UnsupportedError(WarpdriveError):
    """The kernel, backend or device lacks a feature this operation needs."""


class ForkedContextError(WarpdriveError):
    """A context opened by the parent was used in a forked child."""


class InvalidArgumentError(WarpdriveError, ValueError):
    """The caller passed something invalid; nothing reached the device."""


class ArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument of the wrong type: also a TypeError, as Python's own functions raise, so
    `except TypeError` and `except WarpdriveError` both catch it."""


def require_int(what: str, value: object) -> None:
    """ArgumentTypeError unless `value` is an int (not a bool): said in the caller's words,
    before a comparison deep inside fails in its own."""
    if value.__class__ is not int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ArgumentTypeError(f"{what} must be an int, not {type(value).__name__}")


class UsageError(InvalidArgumentError):
    """A command-line argument is wrong: the CLI exits 2 (usage), as for argparse's own errors."""


class ClosedError(WarpdriveError):
    """The object was closed."""


class ProtocolError(WarpdriveError):
    """A vfio-user peer sent something malformed or unexpected."""


class ConnectionLostError(WarpdriveError):
    """The vfio-user server closed the connection (it exited or crashed)."""


_BY_ERRNO: dict[int, type[WarpdriveError]] = {
    _errno.EPERM: PermissionDeniedError,
    _errno.EACCES: PermissionDeniedError,
    _errno.EBUSY: DeviceBusyError,
    _errno.ENODEV: DeviceNotFoundError,
    _errno.ENOENT: DeviceNotFoundError,
    _errno.ENXIO: DeviceNotFoundError,
    _errno.ETIMEDOUT: DeviceTimeoutError,
    _errno.ENOTTY: UnsupportedError,
    _errno.EOPNOTSUPP: UnsupportedError,
}

_DEFAULT_HINTS: dict[int, str] = {
    _errno.EPERM: "run as root, or give this user access to the device node",
    _errno.EACCES: "run as root, or give this user access to the device node "
    "(e.g. `chown $USER /dev/vfio/N`)",
    _errno.EBUSY: "another process (or another open in this one) holds it; close that first",
    _errno.ENOTTY: "the running kernel does not support this ioctl; check its version and config",
    _errno.ENOMEM: "the kernel could not allocate or pin memory; check RLIMIT_MEMLOCK "
    "(`ulimit -l`) and free memory",
}


def from_errno(err: int, what: str, hint: str | None = None) -> WarpdriveError:
    """Build the most specific error for `err`, with a default hint where one helps."""
    cls = _BY_ERRNO.get(err, KernelError)
    return cls(what, errno=err, hint=hint if hint is not None else _DEFAULT_HINTS.get(err))
