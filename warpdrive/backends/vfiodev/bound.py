"""The one "is it bound to vfio-pci?" check, for both kernel backends and backend selection."""

from __future__ import annotations

from ...errors import NotBoundError
from ...pci import PciFunction, read_function


def vfio_function(bdf: str, sysfs_root: str = "/sys", dev_root: str = "/dev") -> PciFunction:
    """sysfs facts about `bdf`, refusing a function that is not on vfio-pci."""
    fn = read_function(bdf, sysfs_root, dev_root)
    if fn.driver != "vfio-pci":
        raise NotBoundError(f"{fn.bdf} is bound to {fn.driver or 'no driver'}, not vfio-pci",
                            hint=f"bind it first: `warpdrive bind {fn.bdf}` (as root)")
    return fn
