"""What the ABI conformance test compares, and the few places where Python cannot mirror C verbatim.

Nothing in here is an expected number: every value the test checks comes from the compiler reading
the real headers. This file only says *which* module goes with *which* headers, and lists the
deliberate deviations (each with its reason) so that they stay few and visible.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModuleSpec:
    module: str
    headers: tuple[str, ...]
    # C lines placed before the #includes (only to work around a header defect; give the reason)
    preamble: tuple[str, ...] = ()
    # function-like macros mirrored as Python functions: (python call, C expression) pairs whose
    # results are compared; args are Python literals evaluated in the module's namespace
    func_macros: tuple[tuple[str, str], ...] = field(default=())


MODULES: tuple[ModuleSpec, ...] = (
    ModuleSpec("warpdrive.uapi.ioctl", ("linux/ioctl.h",)),
    ModuleSpec("warpdrive.uapi.vfio", ("linux/vfio.h",)),
    ModuleSpec("warpdrive.uapi.iommufd", ("linux/iommufd.h",)),
    ModuleSpec(
        "warpdrive.uapi.hisi_qm",
        ("misc/uacce/hisi_qm.h",),
        # hisi_qm.h uses _IOWR without including <linux/ioctl.h> (it relied on uacce.h coming
        # first); include it ahead so the header compiles on its own.
        preamble=("#include <linux/ioctl.h>",),
    ),
    ModuleSpec(
        "warpdrive.uapi.uacce",
        ("misc/uacce/uacce.h",),
        # uacce.h defines UACCE_DEV_SVA as BIT(0), but BIT() is a kernel-internal macro that no uapi
        # header provides, so the header cannot be used as is from user space. Provide the kernel's
        # definition (include/vdso/bits.h) so the value can be taken from the header at all.
        preamble=(
            "#ifndef BIT",
            "#define BIT(nr) (1UL << (nr))",
            "#endif",
        ),
    ),
    ModuleSpec(
        "warpdrive.uapi.pci_regs",
        ("linux/pci_regs.h",),
        func_macros=(
            ("PCI_EXT_CAP_ID(0x1234ABCD)", "PCI_EXT_CAP_ID(0x1234ABCDu)"),
            ("PCI_EXT_CAP_VER(0x1234ABCD)", "PCI_EXT_CAP_VER(0x1234ABCDu)"),
            ("PCI_EXT_CAP_NEXT(0x1234ABCD)", "PCI_EXT_CAP_NEXT(0x1234ABCDu)"),
            ("PCI_EXT_CAP_NEXT(0xFFFFFFFF)", "PCI_EXT_CAP_NEXT(0xFFFFFFFFu)"),
        ),
    ),
    ModuleSpec(
        "warpdrive.uapi.virtio",
        (
            "linux/virtio_ids.h",
            "linux/virtio_config.h",
            "linux/virtio_pci.h",
            "linux/virtio_ring.h",
            "linux/virtio_crypto.h",
        ),
        func_macros=(
            ("VIRTIO_CRYPTO_OPCODE(3, 0x02)", "VIRTIO_CRYPTO_OPCODE(3, 0x02)"),
            ("VIRTIO_CRYPTO_OPCODE(4, 0x05)", "VIRTIO_CRYPTO_OPCODE(4, 0x05)"),
        ),
    ),
)

# Constants whose Python value is the C value converted to the type of the field it is used with.
# Python ints have no width, so a C int -1 or INT_MIN would never compare equal to what the kernel
# writes into a __u32 field. The C side is compared through the same cast.
C_EXPR_OVERRIDES: dict[str, tuple[str, str]] = {
    "VFIO_PCI_DEVID_NOT_OWNED": (
        "(__u32)(VFIO_PCI_DEVID_NOT_OWNED)",
        "C defines it as -1 (int); vfio_pci_dependent_device.devid is __u32",
    ),
    "VFIO_REGION_TYPE_PCI_VENDOR_TYPE": (
        "(__u32)(VFIO_REGION_TYPE_PCI_VENDOR_TYPE)",
        "C spells it (1 << 31), an int (INT_MIN); vfio_region_info_cap_type.type is __u32",
    ),
}

# Struct/union name mapping rules (no per-name table is needed):
# * a public ctypes class `foo` is `struct foo` (or `union foo` for a ctypes.Union);
# * a field listed in the class's `_anonymous_` is a C anonymous member: its own name is dropped
#   from the C member path (`vfio_pci_dependent_device._id.devid` is C `.devid`) and it gets no
#   offsetof/sizeof of its own (C has no name for it); its members are compared;
# * private classes (leading underscore) are untagged C types (`union { ... } u;`) and are
#   compared only through the members of the public struct that contains them;
# * `_flexible_ = (name, element type)` stands for a C flexible array member, which is left out of
#   `_fields_`: the test checks `offsetof(struct, name) == sizeof(python class)` and the element
#   size. C also counts that member in the struct's alignment (vfio_region_info_cap_sparse_mmap is
#   8-aligned in C, 4 in ctypes; sizes agree); Python 3.11 ctypes has no `_align_`, so alignof is
#   compared as max(ctypes alignment, element alignment).

# Names newer than Linux 6.12 that warpdrive defines, checked against the 7.3 headers (the lab's
# second kernel): on header sets of 6.12 and older the test proves each one absent instead, and a
# struct that grew a member is compared as the prefix before it (the 6.12 size and alignment are
# computed from that prefix, not written down). key: constant name, struct name, or
# "struct.member"; value: why warpdrive needs it (docs/research/iommufd-7.3.md).
NEWER_DEFINED: dict[str, str] = {
    "IOMMUFD_CMD_IOAS_MAP_FILE": "map a memfd/hugetlbfs file by fd (6.12: ENOTTY)",
    "IOMMU_IOAS_MAP_FILE": "map a memfd/hugetlbfs file by fd (6.12: ENOTTY)",
    "iommu_ioas_map_file": "map a memfd/hugetlbfs file by fd (6.12: ENOTTY)",
    "IOMMU_HWPT_ALLOC_PASID": "a HWPT attachable to PASIDs (6.12: EOPNOTSUPP)",
    "IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED": "GET_HW_INFO capability bit, reported by `devices`",
    "IOMMU_HW_INFO_FLAG_INPUT_TYPE": "GET_HW_INFO input flag (6.12: flags must be 0)",
    "VFIO_DEVICE_ATTACH_PASID": "PASID attach of a VFIO cdev",
    "vfio_device_attach_iommufd_pt.pasid": "PASID attach of a VFIO cdev (12 -> 16 bytes)",
    "VFIO_DEVICE_DETACH_PASID": "PASID detach of a VFIO cdev",
    "vfio_device_detach_iommufd_pt.pasid": "PASID detach of a VFIO cdev (8 -> 12 bytes)",
    "VFIO_DEVICE_BIND_FLAG_TOKEN": "VF token at bind time",
    "vfio_device_bind_iommufd.token_uuid_ptr": "VF token at bind time (16 -> 24 bytes)",
}

# Names the issue (or research) asks for that the Linux 6.12 uAPI headers do not have and warpdrive
# does not define (a value no header it is checked against confirms would be a hand-written
# number). The test proves each one is absent from every 6.12-era header set, reports those that
# newer sets have, and fails when a 6.12-era header gains one.
# key: constant name, or "struct.member" for a struct member; value: (module, reason)
NEWER_THAN_HEADERS: dict[str, tuple[str, str]] = {
    "VFIO_DEVICE_FEATURE_DMA_BUF": (
        "linux/vfio.h",
        "dma-buf export of a BAR range: after 6.12",
    ),
    "IOMMU_IOAS_CHANGE_PROCESS": (
        "linux/iommufd.h",
        "move pin accounting to another process: after 6.12",
    ),
    "IOMMU_VIOMMU_ALLOC": (
        "linux/iommufd.h",
        "vIOMMU objects (nested translation for VMMs): after 6.12",
    ),
    "VIRTIO_CRYPTO_SERVICE_IPSEC": (
        "linux/virtio_crypto.h",
        "virtio spec / QEMU only; Linux's header stops at AKCIPHER",
    ),
    "VIRTIO_CRYPTO_F_REVISION_1": (
        "linux/virtio_crypto.h",
        "virtio-crypto feature bits are in the spec and QEMU, not in Linux's uapi header",
    ),
    "QM_HW_V2": (
        "misc/uacce/hisi_qm.h",
        "the hisi_qm uapi header has no QM_* algorithm-type or version constants "
        "(hisi_qp_ctx.qc_type is a bare per-driver number); they are kernel-internal",
    ),
}
