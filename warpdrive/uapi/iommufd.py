"""iommufd uAPI from `<linux/iommufd.h>` (Linux 6.12 and 7.3), in ctypes, named as the header.

Every command is `_IO(IOMMUFD_TYPE, IOMMUFD_CMD_x)` on `/dev/iommu`; the first `__u32` of each
argument is `size` (set it to `ctypes.sizeof(struct)`). All reserved fields must be zero.
Layout conventions as in `warpdrive.uapi.vfio`: default ctypes alignment, `__aligned_u64` and user
pointers as `c_uint64`, checked against the real header by tests/test_abi.py.

Names newer than 6.12 that warpdrive uses (`IOMMU_IOAS_MAP_FILE`, `IOMMU_HWPT_ALLOC_PASID`, ...)
are marked as such; the ABI test checks them against 7.3's header and proves them absent from
6.12's (6.12 answers MAP_FILE with ENOTTY, an unknown HWPT flag with EOPNOTSUPP). vIOMMU, vDEVICE,
vEVENTQ and `IOMMU_IOAS_CHANGE_PROCESS` (VMM features) are not defined (tests/abi/spec.py).
"""

from __future__ import annotations

import ctypes

from .ioctl import _IO

__all__ = [
    "IOMMUFD_CMD_BASE",
    "IOMMUFD_CMD_DESTROY",
    "IOMMUFD_CMD_FAULT_QUEUE_ALLOC",
    "IOMMUFD_CMD_GET_HW_INFO",
    "IOMMUFD_CMD_HWPT_ALLOC",
    "IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP",
    "IOMMUFD_CMD_HWPT_INVALIDATE",
    "IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING",
    "IOMMUFD_CMD_IOAS_ALLOC",
    "IOMMUFD_CMD_IOAS_ALLOW_IOVAS",
    "IOMMUFD_CMD_IOAS_COPY",
    "IOMMUFD_CMD_IOAS_IOVA_RANGES",
    "IOMMUFD_CMD_IOAS_MAP",
    "IOMMUFD_CMD_IOAS_MAP_FILE",
    "IOMMUFD_CMD_IOAS_UNMAP",
    "IOMMUFD_CMD_OPTION",
    "IOMMUFD_CMD_VFIO_IOAS",
    "IOMMUFD_PAGE_RESP_INVALID",
    "IOMMUFD_PAGE_RESP_SUCCESS",
    "IOMMUFD_TYPE",
    "IOMMU_DESTROY",
    "IOMMU_FAULT_QUEUE_ALLOC",
    "IOMMU_GET_HW_INFO",
    "IOMMU_HWPT_ALLOC",
    "IOMMU_HWPT_ALLOC_DIRTY_TRACKING",
    "IOMMU_HWPT_ALLOC_NEST_PARENT",
    "IOMMU_HWPT_ALLOC_PASID",
    "IOMMU_HWPT_DATA_NONE",
    "IOMMU_HWPT_DATA_VTD_S1",
    "IOMMU_HWPT_DIRTY_TRACKING_ENABLE",
    "IOMMU_HWPT_FAULT_ID_VALID",
    "IOMMU_HWPT_GET_DIRTY_BITMAP",
    "IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR",
    "IOMMU_HWPT_INVALIDATE",
    "IOMMU_HWPT_INVALIDATE_DATA_VTD_S1",
    "IOMMU_HWPT_SET_DIRTY_TRACKING",
    "IOMMU_HW_CAP_DIRTY_TRACKING",
    "IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED",
    "IOMMU_HW_CAP_PCI_PASID_EXEC",
    "IOMMU_HW_CAP_PCI_PASID_PRIV",
    "IOMMU_HW_INFO_FLAG_INPUT_TYPE",
    "IOMMU_HW_INFO_TYPE_INTEL_VTD",
    "IOMMU_HW_INFO_TYPE_NONE",
    "IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17",
    "IOMMU_IOAS_ALLOC",
    "IOMMU_IOAS_ALLOW_IOVAS",
    "IOMMU_IOAS_COPY",
    "IOMMU_IOAS_IOVA_RANGES",
    "IOMMU_IOAS_MAP",
    "IOMMU_IOAS_MAP_FILE",
    "IOMMU_IOAS_MAP_FIXED_IOVA",
    "IOMMU_IOAS_MAP_READABLE",
    "IOMMU_IOAS_MAP_WRITEABLE",
    "IOMMU_IOAS_UNMAP",
    "IOMMU_OPTION",
    "IOMMU_OPTION_HUGE_PAGES",
    "IOMMU_OPTION_OP_GET",
    "IOMMU_OPTION_OP_SET",
    "IOMMU_OPTION_RLIMIT_MODE",
    "IOMMU_PGFAULT_FLAGS_LAST_PAGE",
    "IOMMU_PGFAULT_FLAGS_PASID_VALID",
    "IOMMU_PGFAULT_PERM_EXEC",
    "IOMMU_PGFAULT_PERM_PRIV",
    "IOMMU_PGFAULT_PERM_READ",
    "IOMMU_PGFAULT_PERM_WRITE",
    "IOMMU_VFIO_IOAS",
    "IOMMU_VFIO_IOAS_CLEAR",
    "IOMMU_VFIO_IOAS_GET",
    "IOMMU_VFIO_IOAS_SET",
    "IOMMU_VTD_INV_FLAGS_LEAF",
    "IOMMU_VTD_S1_EAFE",
    "IOMMU_VTD_S1_SRE",
    "IOMMU_VTD_S1_WPE",
    "iommu_destroy",
    "iommu_fault_alloc",
    "iommu_hw_info",
    "iommu_hw_info_vtd",
    "iommu_hwpt_alloc",
    "iommu_hwpt_get_dirty_bitmap",
    "iommu_hwpt_invalidate",
    "iommu_hwpt_page_response",
    "iommu_hwpt_pgfault",
    "iommu_hwpt_set_dirty_tracking",
    "iommu_hwpt_vtd_s1",
    "iommu_hwpt_vtd_s1_invalidate",
    "iommu_ioas_alloc",
    "iommu_ioas_allow_iovas",
    "iommu_ioas_copy",
    "iommu_ioas_iova_ranges",
    "iommu_ioas_map",
    "iommu_ioas_map_file",
    "iommu_ioas_unmap",
    "iommu_iova_range",
    "iommu_option",
    "iommu_vfio_ioas",
]

_u8 = ctypes.c_uint8
_u16 = ctypes.c_uint16
_u32 = ctypes.c_uint32
_s32 = ctypes.c_int32
_u64 = ctypes.c_uint64  # __aligned_u64 (also user pointers)

IOMMUFD_TYPE = ord(";")

# command numbers (anonymous enum)
IOMMUFD_CMD_BASE = 0x80
IOMMUFD_CMD_DESTROY = IOMMUFD_CMD_BASE
IOMMUFD_CMD_IOAS_ALLOC = 0x81
IOMMUFD_CMD_IOAS_ALLOW_IOVAS = 0x82
IOMMUFD_CMD_IOAS_COPY = 0x83
IOMMUFD_CMD_IOAS_IOVA_RANGES = 0x84
IOMMUFD_CMD_IOAS_MAP = 0x85
IOMMUFD_CMD_IOAS_UNMAP = 0x86
IOMMUFD_CMD_OPTION = 0x87
IOMMUFD_CMD_VFIO_IOAS = 0x88
IOMMUFD_CMD_HWPT_ALLOC = 0x89
IOMMUFD_CMD_GET_HW_INFO = 0x8A
IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING = 0x8B
IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP = 0x8C
IOMMUFD_CMD_HWPT_INVALIDATE = 0x8D
IOMMUFD_CMD_FAULT_QUEUE_ALLOC = 0x8E
IOMMUFD_CMD_IOAS_MAP_FILE = 0x8F  # newer than 6.12 (ENOTTY there)


class iommu_destroy(ctypes.Structure):
    _fields_ = [
        ("size", _u32),
        ("id", _u32),
    ]


IOMMU_DESTROY = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY)


class iommu_ioas_alloc(ctypes.Structure):
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("out_ioas_id", _u32),
    ]


IOMMU_IOAS_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC)


class iommu_iova_range(ctypes.Structure):
    _fields_ = [
        ("start", _u64),
        ("last", _u64),  # inclusive
    ]


class iommu_ioas_iova_ranges(ctypes.Structure):
    _fields_ = [
        ("size", _u32),
        ("ioas_id", _u32),
        ("num_iovas", _u32),  # in: capacity of allowed_iovas; out: total number of ranges
        ("__reserved", _u32),
        ("allowed_iovas", _u64),  # address of struct iommu_iova_range[num_iovas]
        ("out_iova_alignment", _u64),
    ]


IOMMU_IOAS_IOVA_RANGES = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES)


class iommu_ioas_allow_iovas(ctypes.Structure):
    _fields_ = [
        ("size", _u32),
        ("ioas_id", _u32),
        ("num_iovas", _u32),
        ("__reserved", _u32),
        ("allowed_iovas", _u64),  # address of struct iommu_iova_range[num_iovas]
    ]


IOMMU_IOAS_ALLOW_IOVAS = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOW_IOVAS)

# enum iommufd_ioas_map_flags -- note WRITEABLE=2, READABLE=4 (type1 uses READ=1, WRITE=2)
IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0
IOMMU_IOAS_MAP_WRITEABLE = 1 << 1
IOMMU_IOAS_MAP_READABLE = 1 << 2


class iommu_ioas_map(ctypes.Structure):
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("ioas_id", _u32),
        ("__reserved", _u32),
        ("user_va", _u64),
        ("length", _u64),
        ("iova", _u64),  # in with FIXED_IOVA, else out
    ]


IOMMU_IOAS_MAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP)


class iommu_ioas_map_file(ctypes.Structure):
    """Map `length` bytes of a memfd/shmem or hugetlbfs file from offset `start` (newer than 6.12:
    the kernel pins by file offset and refuses any other kind of file itself)."""

    _fields_ = [
        ("size", _u32),
        ("flags", _u32),  # as iommu_ioas_map
        ("ioas_id", _u32),
        ("fd", _s32),
        ("start", _u64),
        ("length", _u64),
        ("iova", _u64),
    ]


IOMMU_IOAS_MAP_FILE = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP_FILE)


class iommu_ioas_copy(ctypes.Structure):
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("dst_ioas_id", _u32),
        ("src_ioas_id", _u32),
        ("length", _u64),
        ("dst_iova", _u64),
        ("src_iova", _u64),
    ]


IOMMU_IOAS_COPY = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_COPY)


class iommu_ioas_unmap(ctypes.Structure):
    _fields_ = [
        ("size", _u32),
        ("ioas_id", _u32),
        ("iova", _u64),
        ("length", _u64),  # in/out; iova=0, length=UINT64_MAX unmaps everything
    ]


IOMMU_IOAS_UNMAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP)

# enum iommufd_option
IOMMU_OPTION_RLIMIT_MODE = 0
IOMMU_OPTION_HUGE_PAGES = 1

# enum iommufd_option_ops
IOMMU_OPTION_OP_SET = 0
IOMMU_OPTION_OP_GET = 1


class iommu_option(ctypes.Structure):
    _fields_ = [
        ("size", _u32),
        ("option_id", _u32),
        ("op", _u16),
        ("__reserved", _u16),
        ("object_id", _u32),
        ("val64", _u64),
    ]


IOMMU_OPTION = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_OPTION)

# enum iommufd_vfio_ioas_op
IOMMU_VFIO_IOAS_GET = 0
IOMMU_VFIO_IOAS_SET = 1
IOMMU_VFIO_IOAS_CLEAR = 2


class iommu_vfio_ioas(ctypes.Structure):
    _fields_ = [
        ("size", _u32),
        ("ioas_id", _u32),
        ("op", _u16),
        ("__reserved", _u16),
    ]


IOMMU_VFIO_IOAS = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VFIO_IOAS)

# enum iommufd_hwpt_alloc_flags
IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0
IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1
IOMMU_HWPT_FAULT_ID_VALID = 1 << 2
IOMMU_HWPT_ALLOC_PASID = 1 << 3  # newer than 6.12 (EOPNOTSUPP there)

# enum iommu_hwpt_vtd_s1_flags
IOMMU_VTD_S1_SRE = 1 << 0
IOMMU_VTD_S1_EAFE = 1 << 1
IOMMU_VTD_S1_WPE = 1 << 2


class iommu_hwpt_vtd_s1(ctypes.Structure):
    _fields_ = [
        ("flags", _u64),
        ("pgtbl_addr", _u64),
        ("addr_width", _u32),
        ("__reserved", _u32),
    ]


# enum iommu_hwpt_data_type
IOMMU_HWPT_DATA_NONE = 0
IOMMU_HWPT_DATA_VTD_S1 = 1


class iommu_hwpt_alloc(ctypes.Structure):
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("dev_id", _u32),
        ("pt_id", _u32),
        ("out_hwpt_id", _u32),
        ("__reserved", _u32),
        ("data_type", _u32),
        ("data_len", _u32),
        ("data_uptr", _u64),
        ("fault_id", _u32),
        ("__reserved2", _u32),
    ]


IOMMU_HWPT_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC)

# enum iommu_hw_info_vtd_flags
IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 = 1 << 0


class iommu_hw_info_vtd(ctypes.Structure):
    _fields_ = [
        ("flags", _u32),
        ("__reserved", _u32),
        ("cap_reg", _u64),
        ("ecap_reg", _u64),
    ]


# enum iommu_hw_info_type
IOMMU_HW_INFO_TYPE_NONE = 0
IOMMU_HW_INFO_TYPE_INTEL_VTD = 1

# enum iommufd_hw_capabilities
IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0
IOMMU_HW_CAP_PCI_PASID_EXEC = 1 << 1
IOMMU_HW_CAP_PCI_PASID_PRIV = 1 << 2
IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED = 1 << 3  # newer than 6.12

# enum iommufd_hw_info_flags (newer than 6.12, where flags must be 0)
IOMMU_HW_INFO_FLAG_INPUT_TYPE = 1 << 0


class iommu_hw_info(ctypes.Structure):
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("dev_id", _u32),
        ("data_len", _u32),
        ("data_uptr", _u64),
        ("out_data_type", _u32),  # 7.3: a union with in_data_type (IOMMU_HW_INFO_FLAG_INPUT_TYPE)
        ("out_max_pasid_log2", _u8),  # 0: no PASID support
        ("__reserved", _u8 * 3),
        ("out_capabilities", _u64),
    ]


IOMMU_GET_HW_INFO = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO)

# enum iommufd_hwpt_set_dirty_tracking_flags
IOMMU_HWPT_DIRTY_TRACKING_ENABLE = 1


class iommu_hwpt_set_dirty_tracking(ctypes.Structure):
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("hwpt_id", _u32),
        ("__reserved", _u32),
    ]


IOMMU_HWPT_SET_DIRTY_TRACKING = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING)

# enum iommufd_hwpt_get_dirty_bitmap_flags
IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR = 1


class iommu_hwpt_get_dirty_bitmap(ctypes.Structure):
    _fields_ = [
        ("size", _u32),
        ("hwpt_id", _u32),
        ("flags", _u32),
        ("__reserved", _u32),
        ("iova", _u64),
        ("length", _u64),
        ("page_size", _u64),
        ("data", _u64),  # address of the bitmap
    ]


IOMMU_HWPT_GET_DIRTY_BITMAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP)

# enum iommu_hwpt_invalidate_data_type
IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 = 0

# enum iommu_hwpt_vtd_s1_invalidate_flags
IOMMU_VTD_INV_FLAGS_LEAF = 1 << 0


class iommu_hwpt_vtd_s1_invalidate(ctypes.Structure):
    _fields_ = [
        ("addr", _u64),
        ("npages", _u64),
        ("flags", _u32),
        ("__reserved", _u32),
    ]


class iommu_hwpt_invalidate(ctypes.Structure):
    _fields_ = [
        ("size", _u32),
        ("hwpt_id", _u32),
        ("data_uptr", _u64),
        ("data_type", _u32),
        ("entry_len", _u32),
        ("entry_num", _u32),
        ("__reserved", _u32),
    ]


IOMMU_HWPT_INVALIDATE = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_INVALIDATE)

# enum iommu_hwpt_pgfault_flags
IOMMU_PGFAULT_FLAGS_PASID_VALID = 1 << 0
IOMMU_PGFAULT_FLAGS_LAST_PAGE = 1 << 1

# enum iommu_hwpt_pgfault_perm
IOMMU_PGFAULT_PERM_READ = 1 << 0
IOMMU_PGFAULT_PERM_WRITE = 1 << 1
IOMMU_PGFAULT_PERM_EXEC = 1 << 2
IOMMU_PGFAULT_PERM_PRIV = 1 << 3


class iommu_hwpt_pgfault(ctypes.Structure):
    """What read() on a fault queue fd returns, one per fault."""

    _fields_ = [
        ("flags", _u32),
        ("dev_id", _u32),
        ("pasid", _u32),
        ("grpid", _u32),
        ("perm", _u32),
        ("__reserved", _u32),
        ("addr", _u64),
        ("length", _u32),
        ("cookie", _u32),
    ]


# enum iommufd_page_response_code
IOMMUFD_PAGE_RESP_SUCCESS = 0
IOMMUFD_PAGE_RESP_INVALID = 1


class iommu_hwpt_page_response(ctypes.Structure):
    """What write() on a fault queue fd takes."""

    _fields_ = [
        ("cookie", _u32),
        ("code", _u32),
    ]


class iommu_fault_alloc(ctypes.Structure):
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("out_fault_id", _u32),
        ("out_fault_fd", _u32),
    ]


IOMMU_FAULT_QUEUE_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_FAULT_QUEUE_ALLOC)
