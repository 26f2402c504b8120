"""`warpdrive devices [BDF...] [--json]`: PCI functions, IOMMU groups, VFIO nodes, uacce devices."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_root_options, bdf_arg, print_json, table


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "devices", help="list PCI functions (driver, IOMMU group, VFIO nodes) and uacce devices",
        description="List every PCI function with its ids, class, driver, IOMMU group (and the "
        "group's other members), VFIO nodes, NUMA node, network/block/uacce children and the "
        "warpdrive plugin that drives it; then the uacce devices. Reads sysfs only, unless "
        "--iommu is given.")
    p.add_argument("bdf", nargs="*", type=bdf_arg, help="only these functions (e.g. 00:03.0)")
    p.add_argument("--json", action="store_true", help="machine-readable output, same facts")
    p.add_argument("--iommu", action="store_true",
                   help="also ask the IOMMU behind each vfio-pci function (IOMMU_GET_HW_INFO: "
                   "type, PASID width, capabilities); this opens the function through iommufd, "
                   "which resets it, and reports functions in use as busy")
    add_root_options(p)
    p.set_defaults(func=run)


def _uses(fn: Any) -> str:
    parts = [f"net:{n}" for n in fn.net_interfaces]
    parts += [f"blk:{b}" for b in fn.block_devices]
    parts += [f"uacce:{u}" for u in fn.uacce_devices]
    return ",".join(parts) or "-"


def _group(fn: Any) -> str:
    if fn.iommu_group is None:
        return "-"
    return f"{fn.iommu_group}+{len(fn.group_members)}" if fn.group_members else str(fn.iommu_group)


def _vfio(fn: Any) -> str:
    nodes = [n for n in (fn.vfio_group_node, fn.vfio_cdev_node) if n]
    return ",".join(nodes) or "-"


def iommu_hw_info(fns: list[Any]) -> dict[str, dict[str, Any]]:
    """IOMMU_GET_HW_INFO for each function on vfio-pci with a VFIO cdev (opened and closed again
    through iommufd); {"error": ...} for one that cannot be opened (busy, no iommufd)."""
    from ..backends.iommufd.cdev import open_iommufd
    from ..errors import WarpdriveError

    out: dict[str, dict[str, Any]] = {}
    for f in fns:
        if f.driver != "vfio-pci" or not f.vfio_cdev_node:
            continue
        try:
            with open_iommufd(f.bdf) as dev:
                out[f.bdf] = dev.iommu_info.to_dict()
        except WarpdriveError as e:
            out[f.bdf] = {"error": str(e)}
    return out


def _iommu_rows(info: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for bdf, d in info.items():
        if "error" in d:
            rows.append([bdf, "-", "-", d["error"]])
            continue
        pasid = f"{d['max_pasid_log2']} bits" if d["max_pasid_log2"] else "none"
        rows.append([bdf, d["type"], pasid, ",".join(d["capabilities"]) or "-"])
    return rows


def run(args: argparse.Namespace) -> int:
    from .. import pci
    from ..backends.uacce import sysfs as uacce_sysfs
    from ..devices.registry import claim

    status = pci.iommu_status(args.sysfs_root, args.dev_root)
    if args.bdf:
        fns = [pci.read_function(b, args.sysfs_root, args.dev_root, claim=claim)
               for b in args.bdf]
    else:
        fns = pci.devices(args.sysfs_root, args.dev_root, claim=claim)
    uacce = uacce_sysfs.devices(args.sysfs_root, args.dev_root)
    hw = iommu_hw_info(fns) if args.iommu else {}

    if args.json:
        print_json({"iommu": status.to_dict(), "pci": [f.to_dict() for f in fns],
                    "uacce": [u.to_dict() for u in uacce],
                    **({"iommu_hw": hw} if args.iommu else {})})
        return 0

    print(status.summary())
    print()
    rows = [[f.bdf, f.ids, f.class_name, f.driver or "-", _group(f), _vfio(f),
             str(f.numa_node) if f.numa_node is not None else "-", _uses(f), f.plugin or "-"]
            for f in fns]
    print(table(rows, ["BDF", "ID", "CLASS", "DRIVER", "GROUP", "VFIO", "NUMA", "USES",
                       "PLUGIN"]))
    groups: dict[int, Any] = {}
    for f in fns:
        if f.group_members and f.iommu_group is not None and f.iommu_group not in groups:
            groups[f.iommu_group] = f
    if groups:
        print()
        for num, f in sorted(groups.items()):
            def one(bdf: str, driver: str | None, viable: bool) -> str:
                return f"{bdf} ({driver or 'no driver'}{'' if viable else ', blocks VFIO'})"
            members = [one(f.bdf, f.driver, True)] + [one(m.bdf, m.driver, m.vfio_viable)
                                                      for m in f.group_members]
            print(f"IOMMU group {num}: {', '.join(sorted(members))}")
    if args.iommu:
        print()
        if hw:
            print(table(_iommu_rows(hw), ["BDF", "IOMMU", "PASID", "CAPABILITIES"]))
        else:
            print("IOMMU_GET_HW_INFO: no function is on vfio-pci with a VFIO cdev (and /dev/iommu)")
    print()
    if not uacce:
        print("uacce: none (no /sys/class/uacce entries: kernel without CONFIG_UACCE, or no "
              "uacce driver loaded, e.g. hisi_zip needs uacce_mode=1)")
        return 0
    urows = [[u.name, u.dev_path, u.api or "-", "yes" if u.sva else "no",
              str(u.available_instances) if u.available_instances is not None else "-",
              ",".join(u.algorithms) or "-", u.parent_bdf or "-",
              str(u.numa_node) if u.numa_node is not None else "-",
              "ISOLATED" if u.isolated else "-"] for u in uacce]
    print(table(urows, ["UACCE", "NODE", "API", "SVA", "FREE", "ALGORITHMS", "PARENT", "NUMA",
                        "STATE"]))
    return 0
