"""Bind PCI functions to vfio-pci (and back) safely: the `dpdk-devbind` / `driverctl` job.

    from warpdrive import binding
    plan = binding.plan_bind("0000:00:04.0")      # checks + exact writes; writes nothing
    print(plan.render(dry_run=True))
    binding.bind("0000:00:04.0")                   # refuses, or moves it (rolling back on failure)
    binding.unbind("0000:00:04.0")                 # back to the driver it had before

    with binding.bound_to("0000:00:04.0") as fn:   # on vfio-pci inside, restored afterwards
        ...

Safety checks (all run before the first write; any refusal means nothing is written):
  * a network interface of the function is up, has addresses or carries routes (named, with its
    addresses and routes) -- the ONLY refusal `force=True` lifts;
  * a block device of the function is mounted, used as swap or has dm/md on top;
  * a process holds one of its nodes open (/dev/vfio/N, /dev/vfio/devices/vfioN, its char/block
    devices) or maps its BARs (resource* files) -- named by pid, name and command line;
  * vfio-pci: the function has an IOMMU group, is not a bridge, and every other group member is on
    vfio-pci / pci-stub / no driver / is a bridge (`group=True` moves the blockers too);
  * root (writable sysfs).
All writes go through `sysfs_write.sysfs_write`, which refuses when
WARPDRIVE_FORBID_SYSFS_WRITES=1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .. import pci
from ..pci import PciFunction
from .apply import Result, execute
from .plan import Check, Plan, Step, Target
from .planner import DEFAULT_TIMEOUT, VFIO_PCI, plan_bind, plan_unbind
from .sysfs_write import FORBID_ENV, SysfsWritesForbiddenError, writes_forbidden

__all__ = [
    "DEFAULT_TIMEOUT",
    "FORBID_ENV",
    "VFIO_PCI",
    "Check",
    "Plan",
    "Result",
    "Step",
    "SysfsWritesForbiddenError",
    "Target",
    "bind",
    "bound_to",
    "execute",
    "plan_bind",
    "plan_unbind",
    "unbind",
    "writes_forbidden",
]


def bind(bdf: str, driver: str = VFIO_PCI, *, group: bool = False, force: bool = False,
         timeout: float = DEFAULT_TIMEOUT, sysfs_root: str = "/sys", dev_root: str = "/dev",
         state_directory: str | None = None) -> Result:
    """Move `bdf` to `driver` after every safety check; raises the refusal or the failure."""
    plan = plan_bind(bdf, driver, group=group, force=force, timeout=timeout,
                     sysfs_root=sysfs_root, dev_root=dev_root)
    return execute(plan, state_directory=state_directory)


def unbind(bdf: str, *, group: bool = False, timeout: float = DEFAULT_TIMEOUT,
           sysfs_root: str = "/sys", dev_root: str = "/dev",
           state_directory: str | None = None) -> Result:
    """Hand `bdf` back to the driver it had before `bind` (or the kernel's choice)."""
    plan = plan_unbind(bdf, group=group, timeout=timeout, sysfs_root=sysfs_root,
                       dev_root=dev_root, state_directory=state_directory)
    return execute(plan, state_directory=state_directory)


@contextmanager
def bound_to(bdf: str, driver: str = VFIO_PCI, *, timeout: float = DEFAULT_TIMEOUT,
             sysfs_root: str = "/sys", dev_root: str = "/dev",
             state_directory: str | None = None) -> Iterator[PciFunction]:
    """`bdf` on `driver` for the duration of the block, then back where it was.

    If it is already on `driver`, nothing is changed on entry or exit. Close every fd on the
    device before leaving the block: the restore refuses while the device is held open."""
    fn = pci.read_function(bdf, sysfs_root, dev_root)
    if fn.driver == driver:
        yield fn
        return
    res = bind(fn.bdf, driver, timeout=timeout, sysfs_root=sysfs_root, dev_root=dev_root,
               state_directory=state_directory)
    try:
        yield res.functions[0]
    finally:
        unbind(fn.bdf, timeout=timeout, sysfs_root=sysfs_root, dev_root=dev_root,
               state_directory=state_directory)
