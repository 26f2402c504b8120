"""Legacy VFIO: IOMMU group + type1 container. Entry point `open_legacy(bdf, mode=...)`.

`mode` is one of the four container modes of the kernel's VFIO selftests (container.py
CONTAINER_MODES): "vfio_type1v2_iommu" (the default, backend "vfio"), "vfio_type1_iommu",
"iommufd_compat_type1v2" and "iommufd_compat_type1" (/dev/iommu as the container).

Order the kernel requires: open the container, check API version and type1v2; open the group,
check it is viable; attach it to the container; only then VFIO_SET_IOMMU; then get the device fd
and query the IOMMU's IOVA ranges. Close undoes it in reverse: device fd, group (unset container),
container (which drops every DMA mapping left).

By default every device gets its own container. `open_legacy(bdf, share_with=dev)` puts the new
device in `dev`'s container instead: both then share one DMA space (a buffer mapped once is
reachable by both). That is also how two functions of one IOMMU group are opened, since a group
can be opened only once. The container, each group and the DMA space stay until their last device
closes.
"""

from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError, UnsupportedError
from ...forkguard import close_fd_quietly
from ...pci import PciFunction
from ..vfiodev.bound import vfio_function
from ..vfiodev.device import VfioDevice, ensure_cloexec
from .container import CONTAINER_MODES, DEFAULT_MODE, Container, ContainerMode, Type1DmaSpace
from .group import Group


class LegacyContext:
    """One container with its groups and DMA space, shared by the devices opened into it."""

    def __init__(self, mode: ContainerMode = DEFAULT_MODE) -> None:
        self.mode = mode
        self.container = Container(mode)
        self.groups: dict[int, tuple[Group, int]] = {}  # group number -> (group, open devices)
        self.dma: Type1DmaSpace | None = None

    def open_device(self, fn: PciFunction, dma_mask: int | None) -> tuple[int, Type1DmaSpace]:
        if fn.iommu_group is None:
            raise UnsupportedError(f"{fn.bdf} has no IOMMU group",
                                   hint="enable the IOMMU (intel_iommu=on / amd_iommu=on)")
        entry = self.groups.get(fn.iommu_group)
        new_group = entry is None
        group = Group(fn.iommu_group, fn.group_members) if entry is None else entry[0]
        try:
            if new_group:
                group.set_container(self.container)
                self.container.set_iommu()  # the kernel refuses it before a group is attached
            device_fd = group.get_device_fd(fn.bdf)
        except BaseException:
            if new_group:
                self._drop_group(group)
            raise
        try:
            ensure_cloexec(device_fd)
            if self.dma is None:
                self.dma = Type1DmaSpace(fn.bdf, self.container, dma_mask)
            else:
                self.dma.share()
                if new_group:
                    self.dma.refresh_ranges()  # an attached group can shrink the usable ranges
        except BaseException:
            close_fd_quietly(device_fd)
            if new_group:
                self._drop_group(group)
            raise
        self.groups[fn.iommu_group] = (group, (0 if entry is None else entry[1]) + 1)
        return device_fd, self.dma

    def close_device(self, fn: PciFunction) -> None:
        """After the device fd is closed (and the DMA space released): drop its group when no
        device of it is left, and the container when no group is."""
        assert fn.iommu_group is not None
        group, users = self.groups[fn.iommu_group]
        try:
            if users <= 1:
                del self.groups[fn.iommu_group]
                self._drop_group(group)
            else:
                self.groups[fn.iommu_group] = (group, users - 1)
        finally:
            if not self.groups:
                self.container.close()

    def _drop_group(self, group: Group) -> None:
        try:
            group.unset_container()
        finally:
            group.close()
            if not self.groups:
                self.container.close()

    def forget_fds(self) -> None:
        """Forked child: close our copies of the group and container fds, touch nothing."""
        for group, _ in self.groups.values():
            group.close()
        self.container.close()


class LegacyVfioDevice(VfioDevice):
    backend = "vfio"

    def __init__(self, fn: PciFunction, ctx: LegacyContext, device_fd: int,
                 dma: Type1DmaSpace) -> None:
        self.ctx = ctx
        self.function = fn
        super().__init__(fn.bdf, device_fd, dma)

    @property
    def container(self) -> Container:
        return self.ctx.container

    @property
    def iommu_mode(self) -> str:
        return self.ctx.mode.name

    @property
    def group(self) -> Group:
        assert self.function.iommu_group is not None
        return self.ctx.groups[self.function.iommu_group][0]

    @property
    def iommu_info(self) -> None:
        """Hardware IOMMU details are an iommufd feature (IOMMU_GET_HW_INFO); type1 has none."""
        return None

    def _release_iommu(self) -> None:
        self.ctx.close_device(self.function)

    def _fork_invalidate(self) -> None:
        super()._fork_invalidate()
        self.ctx.forget_fds()

    def fds(self) -> dict[str, int]:
        num = self.function.iommu_group
        entry = self.ctx.groups.get(num) if num is not None else None
        return {"device": self.device_fd, "group": entry[0].fd if entry else -1,
                "container": self.container.fd}


def open_legacy(bdf: str, dma_mask: int | None = None, *, share_with: VfioDevice | None = None,
                mode: str | None = None, **opts: Any) -> LegacyVfioDevice:
    """Open `bdf` (bound to vfio-pci) through its IOMMU group and a type1 container of `mode`
    (default type1v2 on /dev/vfio/vfio): a new one, or the one of `share_with` (an open legacy
    device), sharing its DMA space."""
    if opts:
        raise InvalidArgumentError(f"unknown option(s) for the vfio backend: {sorted(opts)}")
    if mode is not None and mode not in CONTAINER_MODES:
        raise InvalidArgumentError(f"unknown container mode {mode!r}; choose one of "
                                   f"{', '.join(CONTAINER_MODES)}")
    fn = vfio_function(bdf)
    if share_with is not None:
        if not isinstance(share_with, LegacyVfioDevice):
            raise InvalidArgumentError(
                f"share_with must be a device opened with backend='vfio', not {share_with!r}")
        share_with._check_open()
        if mode is not None and mode != share_with.iommu_mode:
            raise InvalidArgumentError(
                f"share_with's container is {share_with.iommu_mode}, not {mode}",
                hint="devices sharing a container share its IOMMU mode; leave mode= out")
        if dma_mask is not None:
            raise InvalidArgumentError("a shared container has one DMA space: set its mask with "
                                       "dev.dma.set_dma_mask() instead of dma_mask=")
        ctx = share_with.ctx
    else:
        ctx = LegacyContext(CONTAINER_MODES[mode] if mode else DEFAULT_MODE)
    try:
        device_fd, dma = ctx.open_device(fn, dma_mask)
    except BaseException:
        if share_with is None:
            ctx.container.close()
        raise
    try:
        return LegacyVfioDevice(fn, ctx, device_fd, dma)
    except BaseException:
        close_fd_quietly(device_fd)
        dma.close()
        ctx.close_device(fn)
        raise
