"""The ONE place warpdrive writes to the kernel's PCI binding files (and runs modprobe).

Every change to a driver binding goes through `sysfs_write`; `modprobe` is the only other host
mutation. Both refuse when WARPDRIVE_FORBID_SYSFS_WRITES is set (the host test suite sets it, so
no test can ever rebind the host's NIC or disk). Dry runs never get here: the planner only
*describes* writes, and only `warpdrive.binding.apply` calls this module.
"""

from __future__ import annotations

import os
import subprocess

from ..errors import BindingRefusedError, InvalidArgumentError, KernelError, from_errno

FORBID_ENV = "WARPDRIVE_FORBID_SYSFS_WRITES"

# The only files this function may write: the binding interface of the PCI bus and its drivers.
WRITABLE_NAMES = frozenset({"driver_override", "bind", "unbind", "drivers_probe"})


class SysfsWritesForbiddenError(BindingRefusedError):
    """A binding write was attempted while WARPDRIVE_FORBID_SYSFS_WRITES is set."""


def writes_forbidden() -> bool:
    return os.environ.get(FORBID_ENV, "") not in ("", "0")


def ensure_writes_allowed(what: str) -> None:
    """Raise SysfsWritesForbiddenError when binding changes are disabled."""
    if writes_forbidden():
        raise SysfsWritesForbiddenError(
            f"refusing to {what}: {FORBID_ENV} is set",
            hint="binding changes are disabled in this environment (the host test suite); "
            "real binding runs only in the lab guest or with the variable unset")


def sysfs_write(path: str, value: str) -> None:
    """Write `value` to a PCI binding file in one write(2), as sysfs expects.

    An empty `value` is written as "\\n", which is how driver_override is cleared."""
    data = (value or "\n").encode()
    ensure_writes_allowed(f"write {value!r} to {path}")
    if os.path.basename(path) not in WRITABLE_NAMES:
        raise InvalidArgumentError(f"sysfs_write is only for PCI binding files, not {path}",
                                   hint=f"writable names: {', '.join(sorted(WRITABLE_NAMES))}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)  # as `echo >` does
    except OSError as e:
        raise from_errno(e.errno or 0, f"open {path} for writing",
                         hint="binding needs root (run with sudo)" if e.errno in (1, 13) else None
                         ) from None
    try:
        os.write(fd, data)
    except OSError as e:
        # The kernel's answer for a failed probe/bind, e.g. ENODEV (driver refused the device),
        # EBUSY, EINVAL (bad address or driver name).
        raise from_errno(e.errno or 0, f"write {value!r} to {path}") from None
    finally:
        os.close(fd)


def modprobe(module: str) -> None:
    """Load a kernel module (e.g. vfio-pci when /sys/bus/pci/drivers/vfio-pci is missing)."""
    ensure_writes_allowed(f"run `modprobe {module}`")
    try:
        proc = subprocess.run(["modprobe", module], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise KernelError(f"cannot load {module}: modprobe not found",
                          hint="install kmod, or load the module by other means") from None
    if proc.returncode != 0:
        raise KernelError(f"`modprobe {module}` failed (exit {proc.returncode}): "
                          f"{proc.stderr.strip()}",
                          hint="check that the running kernel has the module (CONFIG_VFIO_PCI)")
