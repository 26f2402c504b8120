"""A container of the legacy VFIO API with a type1 IOMMU, and its DMA space.

The container is the DMA context: groups are attached to it, then the IOMMU model is chosen
(VFIO_SET_IOMMU is refused until at least one group is attached), then mappings are made with
VFIO_IOMMU_MAP_DMA. Four of the kernel VFIO selftests' IOMMU modes use this API
(`CONTAINER_MODES`): VFIO's own container /dev/vfio/vfio with type1 (v1) or type1v2, and /dev/iommu
used as the container, where iommufd's VFIO compatibility serves the same ioctls
(drivers/vfio/group.c takes an iommufd for VFIO_GROUP_SET_CONTAINER;
drivers/iommu/iommufd/vfio_compat.c answers the rest). v1 differs from v2 in that an unmap may
split a mapping; warpdrive unmaps what it mapped either way. Each `open_legacy` makes its own
container unless told to share one with an open device (`share_with=`): then both devices see the
same mappings through one `Type1DmaSpace`, which is only torn down when its last device closes.
"""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass

from ... import syscalls as sc
from ...dma import DmaMapping, DmaSpace
from ...errors import ClosedError, UnsupportedError, WarpdriveError
from ...forkguard import close_fd_quietly
from ...iova import IovaRange
from ...uapi import vfio as U
from ..vfiodev import caps

CONTAINER_PATH = "/dev/vfio/vfio"


@dataclass(frozen=True)
class ContainerMode:
    """How a legacy-API container is made; named as the kernel's VFIO selftests name it."""

    name: str
    path: str  # /dev/vfio/vfio (VFIO's type1 driver) or /dev/iommu (iommufd's compat)
    iommu_type: int  # VFIO_TYPE1_IOMMU or VFIO_TYPE1v2_IOMMU

    @property
    def type_name(self) -> str:
        return "VFIO_TYPE1v2_IOMMU" if self.iommu_type == U.VFIO_TYPE1v2_IOMMU else \
            "VFIO_TYPE1_IOMMU"


CONTAINER_MODES: dict[str, ContainerMode] = {m.name: m for m in (
    ContainerMode("vfio_type1_iommu", CONTAINER_PATH, U.VFIO_TYPE1_IOMMU),
    ContainerMode("vfio_type1v2_iommu", CONTAINER_PATH, U.VFIO_TYPE1v2_IOMMU),
    ContainerMode("iommufd_compat_type1", "/dev/iommu", U.VFIO_TYPE1_IOMMU),
    ContainerMode("iommufd_compat_type1v2", "/dev/iommu", U.VFIO_TYPE1v2_IOMMU),
)}
DEFAULT_MODE = CONTAINER_MODES["vfio_type1v2_iommu"]

# Without the IOVA_RANGE capability (kernels before 5.4) assume a 39-bit IOMMU, the narrowest
# common VT-d width, minus the x86 MSI window the IOMMU reserves.
_FALLBACK_RANGES = (IovaRange(0, 0xFEDF_FFFF), IovaRange(0xFEF0_0000, (1 << 39) - 1))


class Container:
    """An open container (/dev/vfio/vfio, or /dev/iommu in compat mode). `fd` is -1 once
    closed."""

    def __init__(self, mode: ContainerMode = DEFAULT_MODE) -> None:
        self.mode = mode
        path = mode.path
        self.fd = sc.open_dev(path, what=f"open {path} (the VFIO container, {mode.name})", hints={
            errno.ENOENT: "the kernel has no legacy VFIO container (CONFIG_VFIO_CONTAINER); "
                          "use backend='iommufd'" if path == CONTAINER_PATH else
                          "the kernel has no iommufd (CONFIG_IOMMUFD); use backend='vfio'"})
        self.iommu_set = False
        self._unmap_all: bool | None = None  # VFIO_UNMAP_ALL extension, asked once
        try:
            version = sc.ioctl(self.fd, U.VFIO_GET_API_VERSION, None, what="VFIO_GET_API_VERSION")
            if version != U.VFIO_API_VERSION:
                raise UnsupportedError(
                    f"VFIO API version {version}, warpdrive speaks {U.VFIO_API_VERSION}")
            if sc.ioctl(self.fd, U.VFIO_CHECK_EXTENSION, mode.iommu_type,
                        what=f"VFIO_CHECK_EXTENSION({mode.type_name}) on {path}") <= 0:
                raise UnsupportedError(
                    f"the VFIO container {path} does not offer {mode.type_name}",
                    hint="the kernel needs CONFIG_VFIO_IOMMU_TYPE1 and an IOMMU (intel_iommu=on "
                    "or amd_iommu=on)")
        except BaseException:
            self.close()
            raise

    def _ioctl(self, request: int, arg: object, what: str) -> int:
        if self.fd < 0:
            raise ClosedError("the VFIO container is closed")
        return sc.ioctl(self.fd, request, arg, what=what)

    def set_iommu(self) -> None:
        """Choose the type1 flavour once the first group is attached (refused before)."""
        if not self.iommu_set:
            self._ioctl(U.VFIO_SET_IOMMU, self.mode.iommu_type,
                        f"VFIO_SET_IOMMU({self.mode.type_name}) on {self.mode.path}")
            self.iommu_set = True

    def iommu_info(self) -> caps.Type1Info:
        """VFIO_IOMMU_GET_INFO with its capabilities (asks twice: size, then contents)."""
        size = ctypes.sizeof(U.vfio_iommu_type1_info)
        for _ in range(4):
            buf = bytearray(size)
            hdr = U.vfio_iommu_type1_info.from_buffer(buf)
            hdr.argsz = size
            self._ioctl(U.VFIO_IOMMU_GET_INFO, buf, "VFIO_IOMMU_GET_INFO")
            if not caps.iommu_info_needs_second_call(hdr):
                del hdr
                return caps.parse_iommu_info(bytes(buf))
            size = int(hdr.argsz)
            del hdr
        raise WarpdriveError("VFIO_IOMMU_GET_INFO: the capability chain kept growing")

    def map_dma(self, vaddr: int, iova: int, size: int, writable: bool) -> None:
        flags = U.VFIO_DMA_MAP_FLAG_READ | (U.VFIO_DMA_MAP_FLAG_WRITE if writable else 0)
        arg = U.vfio_iommu_type1_dma_map(argsz=ctypes.sizeof(U.vfio_iommu_type1_dma_map),
                                         flags=flags, vaddr=vaddr, iova=iova, size=size)
        self._ioctl(U.VFIO_IOMMU_MAP_DMA, arg,
                    f"VFIO_IOMMU_MAP_DMA of {size:#x} bytes at {vaddr:#x} to IOVA {iova:#x}")

    def unmap_dma(self, iova: int, size: int) -> int:
        """Unmap and return the number of bytes the kernel says it unmapped."""
        arg = U.vfio_iommu_type1_dma_unmap(argsz=ctypes.sizeof(U.vfio_iommu_type1_dma_unmap),
                                           iova=iova, size=size)
        self._ioctl(U.VFIO_IOMMU_UNMAP_DMA, arg,
                    f"VFIO_IOMMU_UNMAP_DMA of {size:#x} bytes at IOVA {iova:#x}")
        return int(arg.size)

    @property
    def has_unmap_all(self) -> bool:
        """VFIO_UNMAP_ALL: one unmap call may drop every mapping."""
        if self._unmap_all is None:
            self._unmap_all = self._ioctl(U.VFIO_CHECK_EXTENSION, U.VFIO_UNMAP_ALL,
                                          "VFIO_CHECK_EXTENSION(VFIO_UNMAP_ALL)") > 0
        return self._unmap_all

    def unmap_all(self) -> int:
        """VFIO_IOMMU_UNMAP_DMA with VFIO_DMA_UNMAP_FLAG_ALL (IOVA 0, size 0): every mapping.
        Returns the bytes the kernel says it unmapped."""
        arg = U.vfio_iommu_type1_dma_unmap(argsz=ctypes.sizeof(U.vfio_iommu_type1_dma_unmap),
                                           flags=U.VFIO_DMA_UNMAP_FLAG_ALL)
        self._ioctl(U.VFIO_IOMMU_UNMAP_DMA, arg, "VFIO_IOMMU_UNMAP_DMA(VFIO_DMA_UNMAP_FLAG_ALL)")
        return int(arg.size)

    def close(self) -> None:
        close_fd_quietly(self.fd)
        self.fd = -1


class Type1DmaSpace(DmaSpace):
    """DMA through a type1 container: our allocator picks IOVAs inside the kernel's ranges."""

    def __init__(self, name: str, container: Container, dma_mask: int | None = None) -> None:
        self.container = container
        info = container.iommu_info()
        page = max(info.min_page_size or sc.PAGE_SIZE, sc.PAGE_SIZE)
        super().__init__(name, dma_mask, page_size=page)
        self.pgsizes = info.pgsizes
        self.sharers = 1  # devices using this space; the last close unmaps everything

    def share(self) -> None:
        with self._lock:
            self._check_open()
            self.sharers += 1

    def close(self) -> None:
        with self._lock:
            if self.sharers > 1:
                self.sharers -= 1
                return
            self.sharers = 0
        super().close()

    def _query_ranges(self) -> list[IovaRange]:
        info = self.container.iommu_info()
        return list(info.ranges if info.ranges is not None else _FALLBACK_RANGES)

    @property
    def dma_avail(self) -> int | None:
        """How many more mappings the container allows (the kernel's dma_entry_limit), if known."""
        return self.container.iommu_info().dma_avail

    def _do_map(self, mapping: DmaMapping) -> None:
        self.container.map_dma(mapping.addr, mapping.iova, mapping.size, mapping.writable)

    def _do_unmap(self, mapping: DmaMapping) -> int:
        return self.container.unmap_dma(mapping.iova, mapping.size)

    def _do_unmap_all(self) -> int | None:
        return self.container.unmap_all() if self.container.has_unmap_all else None
