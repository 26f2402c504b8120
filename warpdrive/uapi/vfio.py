"""VFIO uAPI from `<linux/vfio.h>` (Linux 6.12), in ctypes, named exactly as the header spells it.

Covers what a PCI user-space driver needs: container + type1 IOMMU, group, device (regions with
their capability chain, IRQs, reset, hot reset, features) and the VFIO cdev <-> iommufd ioctls.
s390, powerpc (SPAPR/EEH), mdev graphics and the migration/dirty-tracking structs are left out.

Conventions (checked against the real header by tests/test_abi.py):
* every ioctl is `_IO(VFIO_TYPE, VFIO_BASE + n)`: no size or direction bits, whatever the header's
  comments say; the number space is per fd type (VFIO_IOMMU_GET_INFO on a container and
  VFIO_DEVICE_GET_PCI_HOT_RESET_INFO on a device are the same number);
* ctypes default alignment reproduces the kernel layout on 64-bit Linux; `__aligned_u64` and pointer
  fields are `c_uint64` holding addresses;
* a C flexible array member is not in `_fields_`: the class names it in `_flexible_ = (name, element
  type)`; its data starts at `ctypes.sizeof(cls)` (the ABI test checks `offsetof == sizeof`);
* C anonymous unions are private ctypes unions listed in `_anonymous_` (their members read as
  fields of the outer struct, as in C).

The cdev <-> iommufd structs have their newer (7.3) layouts: `vfio_device_bind_iommufd` 24 bytes
(`token_uuid_ptr`, with `VFIO_DEVICE_BIND_FLAG_TOKEN`), `vfio_device_attach_iommufd_pt` 16 and
`vfio_device_detach_iommufd_pt` 12 (`pasid`, with `VFIO_DEVICE_ATTACH_PASID` /
`VFIO_DEVICE_DETACH_PASID`). Linux 6.12 has the shorter forms (16, 12, 8 bytes) and takes the
longer ones as long as the flags are 0: it reads only the first argsz bytes it knows and checks
`argsz >= its size` (drivers/vfio/device_cdev.c). tests/abi/spec.py NEWER_DEFINED lists these
names; the ABI test checks them against 7.3's headers and proves them absent from 6.12's.
"""

from __future__ import annotations

import ctypes

from .ioctl import _IO

__all__ = [
    "VFIO_API_VERSION",
    "VFIO_BASE",
    "VFIO_CHECK_EXTENSION",
    "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
    "VFIO_DEVICE_ATTACH_PASID",
    "VFIO_DEVICE_BIND_FLAG_TOKEN",
    "VFIO_DEVICE_BIND_IOMMUFD",
    "VFIO_DEVICE_DETACH_IOMMUFD_PT",
    "VFIO_DEVICE_DETACH_PASID",
    "VFIO_DEVICE_FEATURE",
    "VFIO_DEVICE_FEATURE_BUS_MASTER",
    "VFIO_DEVICE_FEATURE_CLEAR_MASTER",
    "VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT",
    "VFIO_DEVICE_FEATURE_DMA_LOGGING_START",
    "VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP",
    "VFIO_DEVICE_FEATURE_GET",
    "VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY",
    "VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP",
    "VFIO_DEVICE_FEATURE_LOW_POWER_EXIT",
    "VFIO_DEVICE_FEATURE_MASK",
    "VFIO_DEVICE_FEATURE_MIGRATION",
    "VFIO_DEVICE_FEATURE_MIG_DATA_SIZE",
    "VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE",
    "VFIO_DEVICE_FEATURE_PCI_VF_TOKEN",
    "VFIO_DEVICE_FEATURE_PROBE",
    "VFIO_DEVICE_FEATURE_SET",
    "VFIO_DEVICE_FEATURE_SET_MASTER",
    "VFIO_DEVICE_FLAGS_AMBA",
    "VFIO_DEVICE_FLAGS_AP",
    "VFIO_DEVICE_FLAGS_CAPS",
    "VFIO_DEVICE_FLAGS_CCW",
    "VFIO_DEVICE_FLAGS_CDX",
    "VFIO_DEVICE_FLAGS_FSL_MC",
    "VFIO_DEVICE_FLAGS_PCI",
    "VFIO_DEVICE_FLAGS_PLATFORM",
    "VFIO_DEVICE_FLAGS_RESET",
    "VFIO_DEVICE_GET_INFO",
    "VFIO_DEVICE_GET_IRQ_INFO",
    "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO",
    "VFIO_DEVICE_GET_REGION_INFO",
    "VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP",
    "VFIO_DEVICE_IOEVENTFD",
    "VFIO_DEVICE_IOEVENTFD_8",
    "VFIO_DEVICE_IOEVENTFD_16",
    "VFIO_DEVICE_IOEVENTFD_32",
    "VFIO_DEVICE_IOEVENTFD_64",
    "VFIO_DEVICE_IOEVENTFD_SIZE_MASK",
    "VFIO_DEVICE_PCI_HOT_RESET",
    "VFIO_DEVICE_RESET",
    "VFIO_DEVICE_SET_IRQS",
    "VFIO_DMA_CC_IOMMU",
    "VFIO_DMA_MAP_FLAG_READ",
    "VFIO_DMA_MAP_FLAG_VADDR",
    "VFIO_DMA_MAP_FLAG_WRITE",
    "VFIO_DMA_UNMAP_FLAG_ALL",
    "VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP",
    "VFIO_DMA_UNMAP_FLAG_VADDR",
    "VFIO_EEH",
    "VFIO_GET_API_VERSION",
    "VFIO_GROUP_FLAGS_CONTAINER_SET",
    "VFIO_GROUP_FLAGS_VIABLE",
    "VFIO_GROUP_GET_DEVICE_FD",
    "VFIO_GROUP_GET_STATUS",
    "VFIO_GROUP_SET_CONTAINER",
    "VFIO_GROUP_UNSET_CONTAINER",
    "VFIO_IOMMU_GET_INFO",
    "VFIO_IOMMU_INFO_CAPS",
    "VFIO_IOMMU_INFO_PGSIZES",
    "VFIO_IOMMU_MAP_DMA",
    "VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE",
    "VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION",
    "VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL",
    "VFIO_IOMMU_UNMAP_DMA",
    "VFIO_IRQ_INFO_AUTOMASKED",
    "VFIO_IRQ_INFO_EVENTFD",
    "VFIO_IRQ_INFO_MASKABLE",
    "VFIO_IRQ_INFO_NORESIZE",
    "VFIO_IRQ_SET_ACTION_MASK",
    "VFIO_IRQ_SET_ACTION_TRIGGER",
    "VFIO_IRQ_SET_ACTION_TYPE_MASK",
    "VFIO_IRQ_SET_ACTION_UNMASK",
    "VFIO_IRQ_SET_DATA_BOOL",
    "VFIO_IRQ_SET_DATA_EVENTFD",
    "VFIO_IRQ_SET_DATA_NONE",
    "VFIO_IRQ_SET_DATA_TYPE_MASK",
    "VFIO_NOIOMMU_IOMMU",
    "VFIO_PCI_ATOMIC_COMP32",
    "VFIO_PCI_ATOMIC_COMP64",
    "VFIO_PCI_ATOMIC_COMP128",
    "VFIO_PCI_BAR0_REGION_INDEX",
    "VFIO_PCI_BAR1_REGION_INDEX",
    "VFIO_PCI_BAR2_REGION_INDEX",
    "VFIO_PCI_BAR3_REGION_INDEX",
    "VFIO_PCI_BAR4_REGION_INDEX",
    "VFIO_PCI_BAR5_REGION_INDEX",
    "VFIO_PCI_CONFIG_REGION_INDEX",
    "VFIO_PCI_DEVID_NOT_OWNED",
    "VFIO_PCI_DEVID_OWNED",
    "VFIO_PCI_ERR_IRQ_INDEX",
    "VFIO_PCI_HOT_RESET_FLAG_DEV_ID",
    "VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED",
    "VFIO_PCI_INTX_IRQ_INDEX",
    "VFIO_PCI_MSIX_IRQ_INDEX",
    "VFIO_PCI_MSI_IRQ_INDEX",
    "VFIO_PCI_NUM_IRQS",
    "VFIO_PCI_NUM_REGIONS",
    "VFIO_PCI_REQ_IRQ_INDEX",
    "VFIO_PCI_ROM_REGION_INDEX",
    "VFIO_PCI_VGA_REGION_INDEX",
    "VFIO_REGION_INFO_CAP_MSIX_MAPPABLE",
    "VFIO_REGION_INFO_CAP_SPARSE_MMAP",
    "VFIO_REGION_INFO_CAP_TYPE",
    "VFIO_REGION_INFO_FLAG_CAPS",
    "VFIO_REGION_INFO_FLAG_MMAP",
    "VFIO_REGION_INFO_FLAG_READ",
    "VFIO_REGION_INFO_FLAG_WRITE",
    "VFIO_REGION_TYPE_PCI_VENDOR_MASK",
    "VFIO_REGION_TYPE_PCI_VENDOR_TYPE",
    "VFIO_SET_IOMMU",
    "VFIO_SPAPR_TCE_IOMMU",
    "VFIO_TYPE",
    "VFIO_TYPE1_IOMMU",
    "VFIO_UNMAP_ALL",
    "VFIO_UPDATE_VADDR",
    "VFIO_SPAPR_TCE_v2_IOMMU",
    "VFIO_TYPE1v2_IOMMU",
    "vfio_device_attach_iommufd_pt",
    "vfio_device_bind_iommufd",
    "vfio_device_detach_iommufd_pt",
    "vfio_device_feature",
    "vfio_device_feature_bus_master",
    "vfio_device_info",
    "vfio_device_info_cap_pci_atomic_comp",
    "vfio_device_ioeventfd",
    "vfio_device_low_power_entry_with_wakeup",
    "vfio_group_status",
    "vfio_info_cap_header",
    "vfio_iommu_type1_dma_map",
    "vfio_iommu_type1_dma_unmap",
    "vfio_iommu_type1_info",
    "vfio_iommu_type1_info_cap_iova_range",
    "vfio_iommu_type1_info_cap_migration",
    "vfio_iommu_type1_info_dma_avail",
    "vfio_iova_range",
    "vfio_irq_info",
    "vfio_irq_set",
    "vfio_pci_dependent_device",
    "vfio_pci_hot_reset",
    "vfio_pci_hot_reset_info",
    "vfio_region_info",
    "vfio_region_info_cap_sparse_mmap",
    "vfio_region_info_cap_type",
    "vfio_region_sparse_mmap_area",
]

_u8 = ctypes.c_uint8
_u16 = ctypes.c_uint16
_u32 = ctypes.c_uint32
_s32 = ctypes.c_int32
_u64 = ctypes.c_uint64  # __u64 and __aligned_u64 alike (same layout on 64-bit Linux)

VFIO_API_VERSION = 0

# Extensions for VFIO_CHECK_EXTENSION / IOMMU types for VFIO_SET_IOMMU
VFIO_TYPE1_IOMMU = 1
VFIO_SPAPR_TCE_IOMMU = 2
VFIO_TYPE1v2_IOMMU = 3
VFIO_DMA_CC_IOMMU = 4
VFIO_EEH = 5
# 6 was VFIO_TYPE1_NESTING_IOMMU, which 7.x removed from the header (never useful on x86)
VFIO_SPAPR_TCE_v2_IOMMU = 7
VFIO_NOIOMMU_IOMMU = 8
VFIO_UNMAP_ALL = 9
VFIO_UPDATE_VADDR = 10

VFIO_TYPE = ord(";")
VFIO_BASE = 100


class vfio_info_cap_header(ctypes.Structure):
    """Header of every capability in an info buffer; `next` is an offset from the buffer start."""

    _fields_ = [
        ("id", _u16),
        ("version", _u16),
        ("next", _u32),
    ]


# -- container ------------------------------------------------------------------------------------
VFIO_GET_API_VERSION = _IO(VFIO_TYPE, VFIO_BASE + 0)
VFIO_CHECK_EXTENSION = _IO(VFIO_TYPE, VFIO_BASE + 1)  # arg: extension id, by value
VFIO_SET_IOMMU = _IO(VFIO_TYPE, VFIO_BASE + 2)  # arg: IOMMU type, by value


# -- group ----------------------------------------------------------------------------------------
class vfio_group_status(ctypes.Structure):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
    ]


VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1

VFIO_GROUP_GET_STATUS = _IO(VFIO_TYPE, VFIO_BASE + 3)
VFIO_GROUP_SET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 4)  # arg: pointer to the container fd (int)
VFIO_GROUP_UNSET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 5)
VFIO_GROUP_GET_DEVICE_FD = _IO(VFIO_TYPE, VFIO_BASE + 6)  # arg: NUL-terminated name; returns fd


# -- device ---------------------------------------------------------------------------------------
class vfio_device_info(ctypes.Structure):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("num_regions", _u32),
        ("num_irqs", _u32),
        ("cap_offset", _u32),
        ("pad", _u32),
    ]


VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1
VFIO_DEVICE_FLAGS_PLATFORM = 1 << 2
VFIO_DEVICE_FLAGS_AMBA = 1 << 3
VFIO_DEVICE_FLAGS_CCW = 1 << 4
VFIO_DEVICE_FLAGS_AP = 1 << 5
VFIO_DEVICE_FLAGS_FSL_MC = 1 << 6
VFIO_DEVICE_FLAGS_CAPS = 1 << 7
VFIO_DEVICE_FLAGS_CDX = 1 << 8

VFIO_DEVICE_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 7)

VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP = 5


class vfio_device_info_cap_pci_atomic_comp(ctypes.Structure):
    _fields_ = [
        ("header", vfio_info_cap_header),
        ("flags", _u32),
        ("reserved", _u32),
    ]


VFIO_PCI_ATOMIC_COMP32 = 1 << 0
VFIO_PCI_ATOMIC_COMP64 = 1 << 1
VFIO_PCI_ATOMIC_COMP128 = 1 << 2


class vfio_region_info(ctypes.Structure):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("index", _u32),
        ("cap_offset", _u32),
        ("size", _u64),
        ("offset", _u64),
    ]


VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3

VFIO_DEVICE_GET_REGION_INFO = _IO(VFIO_TYPE, VFIO_BASE + 8)

VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1


class vfio_region_sparse_mmap_area(ctypes.Structure):
    _fields_ = [
        ("offset", _u64),  # relative to the region
        ("size", _u64),
    ]


class vfio_region_info_cap_sparse_mmap(ctypes.Structure):
    _fields_ = [
        ("header", vfio_info_cap_header),
        ("nr_areas", _u32),
        ("reserved", _u32),
        # flexible array member: struct vfio_region_sparse_mmap_area areas[nr_areas]
    ]
    _flexible_ = ("areas", vfio_region_sparse_mmap_area)


VFIO_REGION_INFO_CAP_TYPE = 2


class vfio_region_info_cap_type(ctypes.Structure):
    _fields_ = [
        ("header", vfio_info_cap_header),
        ("type", _u32),
        ("subtype", _u32),
    ]


# C spells this (1 << 31), an int (INT_MIN); the `type` field it is tested against is __u32, so
# Python holds the __u32 value (tests/abi/spec.py compares it through a (__u32) cast).
VFIO_REGION_TYPE_PCI_VENDOR_TYPE = 1 << 31
VFIO_REGION_TYPE_PCI_VENDOR_MASK = 0xFFFF

VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3  # no body: the MSI-X table BAR may be mmapped whole


class vfio_irq_info(ctypes.Structure):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("index", _u32),
        ("count", _u32),
    ]


VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3

VFIO_DEVICE_GET_IRQ_INFO = _IO(VFIO_TYPE, VFIO_BASE + 9)


class vfio_irq_set(ctypes.Structure):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("index", _u32),
        ("start", _u32),
        ("count", _u32),
        # flexible array member: __u8 data[] (s32 eventfds for DATA_EVENTFD, u8 bools for DATA_BOOL)
    ]
    _flexible_ = ("data", _u8)


VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_DATA_BOOL = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2
VFIO_IRQ_SET_ACTION_MASK = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5

VFIO_DEVICE_SET_IRQS = _IO(VFIO_TYPE, VFIO_BASE + 10)

VFIO_IRQ_SET_DATA_TYPE_MASK = (
    VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD
)
VFIO_IRQ_SET_ACTION_TYPE_MASK = (
    VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER
)

VFIO_DEVICE_RESET = _IO(VFIO_TYPE, VFIO_BASE + 11)

# vfio-pci region indexes (anonymous enum)
VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_BAR1_REGION_INDEX = 1
VFIO_PCI_BAR2_REGION_INDEX = 2
VFIO_PCI_BAR3_REGION_INDEX = 3
VFIO_PCI_BAR4_REGION_INDEX = 4
VFIO_PCI_BAR5_REGION_INDEX = 5
VFIO_PCI_ROM_REGION_INDEX = 6
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_VGA_REGION_INDEX = 8
VFIO_PCI_NUM_REGIONS = 9  # fixed ABI; indexes >= 9 are device specific, described by a TYPE cap

# vfio-pci IRQ indexes (anonymous enum)
VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4
VFIO_PCI_NUM_IRQS = 5


# -- PCI hot reset ---------------------------------------------------------------------------------
class _vfio_pci_dependent_device_id(ctypes.Union):
    """The anonymous union of `struct vfio_pci_dependent_device` (no C tag)."""

    _fields_ = [
        ("group_id", _u32),
        ("devid", _u32),  # with VFIO_PCI_HOT_RESET_FLAG_DEV_ID
    ]


class vfio_pci_dependent_device(ctypes.Structure):
    _anonymous_ = ("_id",)
    _fields_ = [
        ("_id", _vfio_pci_dependent_device_id),
        ("segment", _u16),
        ("bus", _u8),
        ("devfn", _u8),  # PCI_SLOT/PCI_FUNC
    ]


VFIO_PCI_DEVID_OWNED = 0
# C spells this -1 (int); `devid` is __u32, so Python holds the __u32 value that field reads back as
# (tests/abi/spec.py compares it through a (__u32) cast).
VFIO_PCI_DEVID_NOT_OWNED = 0xFFFFFFFF


class vfio_pci_hot_reset_info(ctypes.Structure):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("count", _u32),
        # flexible array member: struct vfio_pci_dependent_device devices[count]
    ]
    _flexible_ = ("devices", vfio_pci_dependent_device)


VFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1 << 0
VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED = 1 << 1

VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12)


class vfio_pci_hot_reset(ctypes.Structure):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("count", _u32),
        # flexible array member: __s32 group_fds[count]
    ]
    _flexible_ = ("group_fds", _s32)


VFIO_DEVICE_PCI_HOT_RESET = _IO(VFIO_TYPE, VFIO_BASE + 13)


# -- ioeventfd -------------------------------------------------------------------------------------
class vfio_device_ioeventfd(ctypes.Structure):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("offset", _u64),
        ("data", _u64),
        ("fd", _s32),
        ("reserved", _u32),
    ]


VFIO_DEVICE_IOEVENTFD_8 = 1 << 0
VFIO_DEVICE_IOEVENTFD_16 = 1 << 1
VFIO_DEVICE_IOEVENTFD_32 = 1 << 2
VFIO_DEVICE_IOEVENTFD_64 = 1 << 3
VFIO_DEVICE_IOEVENTFD_SIZE_MASK = 0xF

VFIO_DEVICE_IOEVENTFD = _IO(VFIO_TYPE, VFIO_BASE + 16)


# -- device features -------------------------------------------------------------------------------
class vfio_device_feature(ctypes.Structure):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),  # low 16 bits: feature index
        # flexible array member: __u8 data[]
    ]
    _flexible_ = ("data", _u8)


VFIO_DEVICE_FEATURE_MASK = 0xFFFF
VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIO_DEVICE_FEATURE_SET = 1 << 17
VFIO_DEVICE_FEATURE_PROBE = 1 << 18

VFIO_DEVICE_FEATURE = _IO(VFIO_TYPE, VFIO_BASE + 17)

VFIO_DEVICE_FEATURE_PCI_VF_TOKEN = 0
VFIO_DEVICE_FEATURE_MIGRATION = 1
VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4
VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5
VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6
VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7
VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8
VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9
VFIO_DEVICE_FEATURE_BUS_MASTER = 10


class vfio_device_low_power_entry_with_wakeup(ctypes.Structure):
    _fields_ = [
        ("wakeup_eventfd", _s32),
        ("reserved", _u32),
    ]


class vfio_device_feature_bus_master(ctypes.Structure):
    _fields_ = [
        ("op", _u32),
    ]


VFIO_DEVICE_FEATURE_CLEAR_MASTER = 0
VFIO_DEVICE_FEATURE_SET_MASTER = 1


# -- VFIO device cdev + iommufd (6.12 layouts) -----------------------------------------------------
VFIO_DEVICE_BIND_FLAG_TOKEN = 1 << 0  # newer than 6.12


class vfio_device_bind_iommufd(ctypes.Structure):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("iommufd", _s32),
        ("out_devid", _u32),
        ("token_uuid_ptr", _u64),  # newer than 6.12: a VF token (16-byte UUID) with FLAG_TOKEN
    ]


VFIO_DEVICE_BIND_IOMMUFD = _IO(VFIO_TYPE, VFIO_BASE + 18)


class vfio_device_attach_iommufd_pt(ctypes.Structure):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("pt_id", _u32),  # in: IOAS or HWPT id; out: the HWPT actually attached
        ("pasid", _u32),  # newer than 6.12: with VFIO_DEVICE_ATTACH_PASID
    ]


VFIO_DEVICE_ATTACH_PASID = 1 << 0  # newer than 6.12


VFIO_DEVICE_ATTACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 19)


class vfio_device_detach_iommufd_pt(ctypes.Structure):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("pasid", _u32),  # newer than 6.12: with VFIO_DEVICE_DETACH_PASID
    ]


VFIO_DEVICE_DETACH_PASID = 1 << 0  # newer than 6.12


VFIO_DEVICE_DETACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 20)


# -- type1 IOMMU (container) -----------------------------------------------------------------------
class vfio_iommu_type1_info(ctypes.Structure):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("iova_pgsizes", _u64),
        ("cap_offset", _u32),
        ("pad", _u32),
    ]


VFIO_IOMMU_INFO_PGSIZES = 1 << 0
VFIO_IOMMU_INFO_CAPS = 1 << 1

VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1


class vfio_iova_range(ctypes.Structure):
    _fields_ = [
        ("start", _u64),
        ("end", _u64),  # inclusive
    ]


class vfio_iommu_type1_info_cap_iova_range(ctypes.Structure):
    _fields_ = [
        ("header", vfio_info_cap_header),
        ("nr_iovas", _u32),
        ("reserved", _u32),
        # flexible array member: struct vfio_iova_range iova_ranges[nr_iovas]
    ]
    _flexible_ = ("iova_ranges", vfio_iova_range)


VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2


class vfio_iommu_type1_info_cap_migration(ctypes.Structure):
    _fields_ = [
        ("header", vfio_info_cap_header),
        ("flags", _u32),
        ("pgsize_bitmap", _u64),  # natural alignment puts this at 16, not 12
        ("max_dirty_bitmap_size", _u64),
    ]


VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3


class vfio_iommu_type1_info_dma_avail(ctypes.Structure):
    _fields_ = [
        ("header", vfio_info_cap_header),
        ("avail", _u32),
    ]


VFIO_IOMMU_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12)


class vfio_iommu_type1_dma_map(ctypes.Structure):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("vaddr", _u64),
        ("iova", _u64),
        ("size", _u64),
    ]


# MAP flags READ=1, WRITE=2: not the UNMAP namespace below, nor iommufd's WRITEABLE=2, READABLE=4
VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_DMA_MAP_FLAG_VADDR = 1 << 2

VFIO_IOMMU_MAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 13)


class vfio_iommu_type1_dma_unmap(ctypes.Structure):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("iova", _u64),
        ("size", _u64),  # in/out: bytes unmapped
        # flexible array member: __u8 data[] (struct vfio_bitmap with GET_DIRTY_BITMAP)
    ]
    _flexible_ = ("data", _u8)


# UNMAP flags: GET_DIRTY_BITMAP=1, ALL=2 -- bit 0 is *not* READ here
VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1
VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2

VFIO_IOMMU_UNMAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 14)
