"""An open /dev/iommu: the iommufd commands warpdrive uses, each a small typed method.

Every command's first field is `size` (the struct's size); reserved fields stay zero. IOAS and
HWPT objects are numbered per fd and disappear with it.
"""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass

from ... import syscalls as sc
from ...errors import ClosedError, UnsupportedError, WarpdriveError
from ...forkguard import close_fd_quietly
from ...iova import IovaRange
from ...uapi import iommufd as U

IOMMU_PATH = "/dev/iommu"


@dataclass(frozen=True)
class HwInfo:
    """IOMMU_GET_HW_INFO: what the IOMMU behind a device can do."""

    type: int  # IOMMU_HW_INFO_TYPE_*
    capabilities: int  # IOMMU_HW_CAP_*
    max_pasid_log2: int  # 0: no PASID
    vtd_cap_reg: int | None = None  # VT-d capability / extended capability registers
    vtd_ecap_reg: int | None = None
    vtd_flags: int | None = None

    @property
    def type_name(self) -> str:
        return {U.IOMMU_HW_INFO_TYPE_NONE: "none",
                U.IOMMU_HW_INFO_TYPE_INTEL_VTD: "intel-vtd"}.get(self.type, f"type {self.type}")

    @property
    def dirty_tracking(self) -> bool:
        return bool(self.capabilities & U.IOMMU_HW_CAP_DIRTY_TRACKING)

    @property
    def pasid_bits(self) -> int:
        return self.max_pasid_log2

    def capability_names(self) -> list[str]:
        names = {U.IOMMU_HW_CAP_DIRTY_TRACKING: "dirty-tracking",
                 U.IOMMU_HW_CAP_PCI_PASID_EXEC: "pasid-exec",
                 U.IOMMU_HW_CAP_PCI_PASID_PRIV: "pasid-priv",
                 U.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED: "ats-not-supported"}
        out = [n for bit, n in names.items() if self.capabilities & bit]
        rest = self.capabilities & ~sum(names)
        return out + ([f"{rest:#x}"] if rest else [])

    def to_dict(self) -> dict[str, object]:
        return {"type": self.type_name, "max_pasid_log2": self.max_pasid_log2,
                "capabilities": self.capability_names(), **self.vtd_summary()}

    def vtd_summary(self) -> dict[str, int | bool]:
        """A few VT-d register fields (Intel VT-d spec, 11.4.2 CAP_REG and 11.4.3 ECAP_REG)."""
        if self.vtd_cap_reg is None or self.vtd_ecap_reg is None:
            return {}
        cap, ecap = self.vtd_cap_reg, self.vtd_ecap_reg
        return {
            "mgaw": ((cap >> 16) & 0x3F) + 1,  # maximum guest address width (bits)
            "sagaw": (cap >> 8) & 0x1F,  # supported adjusted guest address widths (bitmap)
            "caching_mode": bool(cap & (1 << 7)),
            "first_level_1g": bool(cap & (1 << 56)),
            "pass_through": bool(ecap & (1 << 6)),
            "snoop_control": bool(ecap & (1 << 7)),
            "nested": bool(ecap & (1 << 26)),
            "pasid": bool(ecap & (1 << 40)),
            "scalable_mode": bool(ecap & (1 << 43)),
        }

    def describe(self) -> str:
        parts = [self.type_name, f"caps {self.capabilities:#x}",
                 f"PASID {self.max_pasid_log2} bits" if self.max_pasid_log2 else "no PASID",
                 "dirty tracking" if self.dirty_tracking else "no dirty tracking"]
        if self.vtd_cap_reg is not None:
            parts.append(f"cap_reg {self.vtd_cap_reg:#x} ecap_reg {self.vtd_ecap_reg:#x}")
        return ", ".join(parts)


class IommufdContext:
    """An open /dev/iommu (O_CLOEXEC). `fd` is -1 once closed."""

    def __init__(self, path: str = IOMMU_PATH) -> None:
        self.fd = sc.open_dev(path, what=f"open {path}", hints={
            errno.ENOENT: "the kernel has no iommufd (CONFIG_IOMMUFD); use backend='vfio'"})
        # IOMMU_IOAS_MAP_FILE: None until first tried; False after ENOTTY (kernels before 6.13)
        self.has_map_file: bool | None = None

    def _ioctl(self, request: int, arg: ctypes.Structure, what: str,
               hints: dict[int, str] | None = None) -> int:
        if self.fd < 0:
            raise ClosedError("the iommufd context is closed")
        arg.size = ctypes.sizeof(arg)
        return sc.ioctl(self.fd, request, arg, what=what, hints=hints)

    # -- objects ----------------------------------------------------------------------------
    def ioas_alloc(self) -> int:
        cmd = U.iommu_ioas_alloc()
        self._ioctl(U.IOMMU_IOAS_ALLOC, cmd, "IOMMU_IOAS_ALLOC")
        return int(cmd.out_ioas_id)

    def destroy(self, obj_id: int) -> None:
        self._ioctl(U.IOMMU_DESTROY, U.iommu_destroy(id=obj_id), f"IOMMU_DESTROY({obj_id})",
                    hints={errno.EBUSY: "the object is still in use (a device attached to it?)"})

    def hwpt_alloc(self, dev_id: int, pt_id: int, flags: int = 0, fault_id: int = 0) -> int:
        """A hardware page table (IOMMU domain) for `dev_id`, filled from IOAS `pt_id`
        (`fault_id` with IOMMU_HWPT_FAULT_ID_VALID: its I/O page faults go to that queue)."""
        cmd = U.iommu_hwpt_alloc(flags=flags, dev_id=dev_id, pt_id=pt_id,
                                 data_type=U.IOMMU_HWPT_DATA_NONE, fault_id=fault_id)
        self._ioctl(U.IOMMU_HWPT_ALLOC, cmd,
                    f"IOMMU_HWPT_ALLOC(dev {dev_id}, pt {pt_id}, flags {flags:#x})",
                    hints={errno.EOPNOTSUPP: "this kernel or IOMMU does not support the "
                           "requested flags (dirty tracking; PASID: Linux 6.15+ and a "
                           "PASID-capable IOMMU; I/O page faults: a device with PRI)"})
        return int(cmd.out_hwpt_id)

    def fault_queue_alloc(self) -> tuple[int, int]:
        """IOMMU_FAULT_QUEUE_ALLOC: (fault object id, fd to read iommu_hwpt_pgfault records
        from and write iommu_hwpt_page_response to). Give the id to a HWPT allocated with
        IOMMU_HWPT_FAULT_ID_VALID; only devices that issue page requests (PRI) ever fault."""
        cmd = U.iommu_fault_alloc()
        self._ioctl(U.IOMMU_FAULT_QUEUE_ALLOC, cmd, "IOMMU_FAULT_QUEUE_ALLOC")
        return int(cmd.out_fault_id), int(cmd.out_fault_fd)

    def hw_info(self, dev_id: int) -> HwInfo:
        data = U.iommu_hw_info_vtd()
        cmd = U.iommu_hw_info(dev_id=dev_id, data_len=ctypes.sizeof(data),
                              data_uptr=ctypes.addressof(data))
        self._ioctl(U.IOMMU_GET_HW_INFO, cmd, f"IOMMU_GET_HW_INFO(dev {dev_id})")
        if cmd.out_data_type == U.IOMMU_HW_INFO_TYPE_INTEL_VTD:
            return HwInfo(int(cmd.out_data_type), int(cmd.out_capabilities),
                          int(cmd.out_max_pasid_log2), int(data.cap_reg), int(data.ecap_reg),
                          int(data.flags))
        return HwInfo(int(cmd.out_data_type), int(cmd.out_capabilities),
                      int(cmd.out_max_pasid_log2))

    # -- IOVA space -------------------------------------------------------------------------
    def iova_ranges(self, ioas_id: int) -> tuple[list[IovaRange], int]:
        """(usable ranges, required IOVA alignment). Asks with no room first: the kernel answers
        EMSGSIZE with the count, then fills an array of that size."""
        n = 0
        for _ in range(4):
            arr = (U.iommu_iova_range * max(n, 1))()
            cmd = U.iommu_ioas_iova_ranges(ioas_id=ioas_id, num_iovas=n,
                                           allowed_iovas=ctypes.addressof(arr))
            try:
                self._ioctl(U.IOMMU_IOAS_IOVA_RANGES, cmd, f"IOMMU_IOAS_IOVA_RANGES({ioas_id})")
            except WarpdriveError as e:
                if e.errno == errno.EMSGSIZE and cmd.num_iovas > n:
                    n = int(cmd.num_iovas)
                    continue
                raise
            count = int(cmd.num_iovas)
            return ([IovaRange(int(arr[i].start), int(arr[i].last)) for i in range(count)],
                    int(cmd.out_iova_alignment))
        raise WarpdriveError(f"IOMMU_IOAS_IOVA_RANGES({ioas_id}): the range list kept growing")

    def allow_iovas(self, ioas_id: int, ranges: list[IovaRange]) -> None:
        arr = (U.iommu_iova_range * max(len(ranges), 1))()
        for i, r in enumerate(ranges):
            arr[i].start, arr[i].last = r.start, r.last
        cmd = U.iommu_ioas_allow_iovas(ioas_id=ioas_id, num_iovas=len(ranges),
                                       allowed_iovas=ctypes.addressof(arr))
        self._ioctl(U.IOMMU_IOAS_ALLOW_IOVAS, cmd, f"IOMMU_IOAS_ALLOW_IOVAS({ioas_id})", hints={
            errno.EADDRINUSE: "an allowed range overlaps a reserved range of an attached device",
            errno.EBUSY: "an existing mapping lies outside the new allowed ranges"})

    def map(self, ioas_id: int, user_va: int, length: int, iova: int, writable: bool) -> None:
        flags = U.IOMMU_IOAS_MAP_FIXED_IOVA | U.IOMMU_IOAS_MAP_READABLE
        if writable:
            flags |= U.IOMMU_IOAS_MAP_WRITEABLE
        cmd = U.iommu_ioas_map(flags=flags, ioas_id=ioas_id, user_va=user_va, length=length,
                               iova=iova)
        self._ioctl(U.IOMMU_IOAS_MAP, cmd,
                    f"IOMMU_IOAS_MAP of {length:#x} bytes at {user_va:#x} to IOVA {iova:#x}",
                    hints={errno.EEXIST: "that IOVA range is already mapped",
                           errno.EINVAL: "the IOVA is misaligned or lies in a reserved range"})

    def map_file(self, ioas_id: int, fd: int, start: int, length: int, iova: int,
                 writable: bool) -> None:
        """IOMMU_IOAS_MAP_FILE: map `length` bytes of file `fd` from byte `start`. The kernel
        pins by file offset and accepts only memfd/shmem and hugetlbfs files (EINVAL otherwise,
        once a device is attached). UnsupportedError on kernels without it (6.12: ENOTTY), after
        which `has_map_file` is False and callers use `map`."""
        if self.has_map_file is False:
            raise UnsupportedError("this kernel has no IOMMU_IOAS_MAP_FILE (Linux < 6.13)")
        flags = U.IOMMU_IOAS_MAP_FIXED_IOVA | U.IOMMU_IOAS_MAP_READABLE
        if writable:
            flags |= U.IOMMU_IOAS_MAP_WRITEABLE
        cmd = U.iommu_ioas_map_file(flags=flags, ioas_id=ioas_id, fd=fd, start=start,
                                    length=length, iova=iova)
        what = (f"IOMMU_IOAS_MAP_FILE of {length:#x} bytes of fd {fd} from offset {start:#x} to "
                f"IOVA {iova:#x}")
        try:
            self._ioctl(U.IOMMU_IOAS_MAP_FILE, cmd, what, hints={
                errno.EEXIST: "that IOVA range is already mapped",
                errno.EINVAL: "the file is not memfd/shmem or hugetlbfs, the range runs past its "
                              "end, or the IOVA is misaligned or reserved"})
        except WarpdriveError as e:
            if e.errno in (errno.ENOTTY, errno.EOPNOTSUPP) and self.has_map_file is None:
                self.has_map_file = False
                raise UnsupportedError(f"{what}: this kernel has no IOMMU_IOAS_MAP_FILE "
                                       f"(errno {e.errno}); map by address instead",
                                       errno=e.errno) from None
            raise
        self.has_map_file = True

    def unmap(self, ioas_id: int, iova: int, length: int) -> int:
        """Unmap and return the bytes the kernel says it unmapped."""
        cmd = U.iommu_ioas_unmap(ioas_id=ioas_id, iova=iova, length=length)
        self._ioctl(U.IOMMU_IOAS_UNMAP, cmd,
                    f"IOMMU_IOAS_UNMAP of {length:#x} bytes at IOVA {iova:#x}")
        return int(cmd.length)

    def close(self) -> None:
        close_fd_quietly(self.fd)
        self.fd = -1
