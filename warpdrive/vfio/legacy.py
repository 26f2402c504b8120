"""Legacy VFIO: IOMMU group + type1v2 container. Entry point `open_legacy(bdf)`.

Order the kernel requires: open the container, check API version and type1v2; open the group,
check it is viable; attach it to the container; only then VFIO_SET_IOMMU; then get the device fd
and query the IOMMU's IOVA ranges. Close undoes it in reverse: device fd, group (unset container),
container (which drops every DMA mapping left).
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgumentError, NotBoundError, UnsupportedError
from ..forkguard import close_fd_quietly
from ..pci import PciFunction, read_function
from .container import Container, Type1DmaSpace
from .device import VfioDevice, ensure_cloexec
from .group import Group


def vfio_function(bdf: str) -> PciFunction:
    """sysfs facts about `bdf`, refusing a function that is not on vfio-pci."""
    fn = read_function(bdf)
    if fn.driver != "vfio-pci":
        raise NotBoundError(f"{fn.bdf} is bound to {fn.driver or 'no driver'}, not vfio-pci",
                            hint=f"bind it first: `warpdrive bind {fn.bdf}` (as root)")
    return fn


class LegacyVfioDevice(VfioDevice):
    backend = "vfio"

    def __init__(self, fn: PciFunction, container: Container, group: Group, device_fd: int,
                 dma: Type1DmaSpace) -> None:
        self.container = container
        self.group = group
        self.function = fn
        super().__init__(fn.bdf, device_fd, dma)

    @property
    def iommu_info(self) -> None:
        """Hardware IOMMU details are an iommufd feature (IOMMU_GET_HW_INFO); type1 has none."""
        return None

    def _release_iommu(self) -> None:
        try:
            self.group.unset_container()
        finally:
            self.group.close()
            self.container.close()

    def _fork_invalidate(self) -> None:
        super()._fork_invalidate()
        self.group.close()
        self.container.close()

    def fds(self) -> dict[str, int]:
        return {"device": self.device_fd, "group": self.group.fd, "container": self.container.fd}


def open_legacy(bdf: str, dma_mask: int | None = None, **opts: Any) -> LegacyVfioDevice:
    """Open `bdf` (bound to vfio-pci) through its IOMMU group and a new type1v2 container."""
    if opts:
        raise InvalidArgumentError(f"unknown option(s) for the vfio backend: {sorted(opts)}")
    fn = vfio_function(bdf)
    if fn.iommu_group is None:
        raise UnsupportedError(f"{fn.bdf} has no IOMMU group",
                               hint="enable the IOMMU (intel_iommu=on / amd_iommu=on)")
    container = Container()
    group: Group | None = None
    device_fd = -1
    try:
        group = Group(fn.iommu_group, fn.group_members)
        group.set_container(container)
        container.set_iommu()
        device_fd = group.get_device_fd(fn.bdf)
        ensure_cloexec(device_fd)
        dma = Type1DmaSpace(fn.bdf, container, dma_mask)
        return LegacyVfioDevice(fn, container, group, device_fd, dma)
    except BaseException:
        close_fd_quietly(device_fd)
        if group is not None:
            group.close()
        container.close()
        raise
