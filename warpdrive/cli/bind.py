"""`warpdrive bind` / `warpdrive unbind`: move a PCI function to vfio-pci and back, safely."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import EXIT_PERMISSION, EXIT_REFUSED
from ._common import add_root_options, bdf_arg, nonnegative_seconds, print_json

FORCE_HELP = (
    "override ONE check: the refusal to unbind a network interface that is up, has addresses or "
    "carries routes (including the default route). Every other refusal (processes holding the "
    "device, mounted disks, IOMMU group viability, no IOMMU, permissions) stays in force")


def register(subparsers: Any) -> None:
    b = subparsers.add_parser(
        "bind", help="bind a PCI function to vfio-pci (checks first; rolls back on failure)",
        description="Bind a PCI function to vfio-pci (or --driver) through driver_override. "
        "Refuses, writing nothing, when the function's network interface is up or carries "
        "routes, its disk is mounted, a process holds it open or maps its BARs, or its IOMMU "
        "group would not be viable. Rolls back to the previous driver if the new one does not "
        "attach. `--dry-run` prints every check and the exact writes without writing.")
    b.add_argument("bdf", type=bdf_arg, help="PCI address, e.g. 0000:00:04.0 or 00:04.0")
    b.add_argument("--driver", default="vfio-pci", help="target driver (default vfio-pci)")
    b.add_argument("--dry-run", action="store_true",
                   help="run the checks and print the writes it would make; write nothing")
    b.add_argument("--force", action="store_true", help=FORCE_HELP)
    b.add_argument("--group", action="store_true",
                   help="also move the other members of the IOMMU group that keep it from being "
                   "viable (each is checked the same way)")
    b.add_argument("--timeout", type=nonnegative_seconds, default=10.0,
                   help="seconds to wait for the driver to attach (default 10)")
    b.add_argument("--json", action="store_true", help="print the plan/result as JSON")
    add_root_options(b)
    b.add_argument("--modules-root", default="/lib/modules", help=argparse.SUPPRESS)  # tests
    b.set_defaults(func=run_bind)

    u = subparsers.add_parser(
        "unbind", help="hand a function on vfio-pci back to its original driver",
        description="Release a function from vfio-pci/pci-stub: clear driver_override (or "
        "restore the one recorded by `bind`), unbind, and let the kernel re-probe, binding the "
        "driver recorded by `bind` if the kernel does not pick it. A function on its native "
        "driver is left alone. Refuses while a process holds the device open.")
    u.add_argument("bdf", type=bdf_arg, help="PCI address")
    u.add_argument("--dry-run", action="store_true", help="print checks and writes; write nothing")
    u.add_argument("--group", action="store_true",
                   help="also release the other group members on vfio-pci/pci-stub")
    u.add_argument("--timeout", type=nonnegative_seconds, default=10.0,
                   help="seconds to wait for the driver to attach (default 10)")
    u.add_argument("--json", action="store_true", help="print the plan/result as JSON")
    add_root_options(u)
    u.set_defaults(func=run_unbind)


def _refusal_code(plan: Any) -> int:
    if all(c.kind == "permission" for c in plan.refusals):
        return EXIT_PERMISSION
    return EXIT_REFUSED


def _finish(plan: Any, args: argparse.Namespace) -> int:
    """Shared tail of bind/unbind: dry-run print, refusal, or execute and report."""
    from ..binding import access, execute

    if args.dry_run:
        if args.json:
            print_json({"dry_run": True, "plan": plan.to_dict()})
        else:
            print(plan.render(dry_run=True))
        return _refusal_code(plan) if plan.refusals else 0

    err = plan.error()
    if err is not None:
        if args.json:
            print_json({"dry_run": False, "plan": plan.to_dict(), "error": str(err)})
        print(f"warpdrive: {err}", file=sys.stderr)
        print("(`--dry-run` lists every check)", file=sys.stderr)
        return _refusal_code(plan)

    for c in plan.checks:
        if c.status == "forced":
            print(f"WARNING: --force overrides a safety check on {c.bdf}: {c.detail}",
                  file=sys.stderr, flush=True)
    if plan.nothing_to_do:
        if args.json:
            print_json({"dry_run": False, "plan": plan.to_dict(), "changed": []})
        else:
            for c in plan.checks:
                if c.name == "driver":
                    print(f"{c.bdf}: {c.detail}")
        return 0

    result = execute(plan)
    if args.json:
        print_json({"dry_run": False, "plan": plan.to_dict(),
                    "changed": [f.to_dict() for f in result.functions],
                    "warnings": result.warnings})
        return 0
    before = {t.bdf: t.before_driver for t in plan.targets}
    for fn in result.functions:
        group = f" (IOMMU group {fn.iommu_group})" if fn.iommu_group is not None else ""
        print(f"{fn.bdf}: {before[fn.bdf] or 'no driver'} -> {fn.driver or 'no driver'}{group}")
        if fn.driver == "vfio-pci":
            for line in access.node_lines(fn, args.dev_root):
                print(f"  {line}")
            for line in access.access_advice(fn, args.dev_root):
                print(f"  {line}")
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def run_bind(args: argparse.Namespace) -> int:
    from ..binding import plan_bind
    from ..devices.registry import claim

    plan = plan_bind(args.bdf, args.driver, group=args.group, force=args.force,
                     timeout=args.timeout, sysfs_root=args.sysfs_root, dev_root=args.dev_root,
                     claim=claim, modules_root=args.modules_root)
    return _finish(plan, args)


def run_unbind(args: argparse.Namespace) -> int:
    from ..binding import plan_unbind
    from ..devices.registry import claim

    plan = plan_unbind(args.bdf, group=args.group, timeout=args.timeout,
                       sysfs_root=args.sysfs_root, dev_root=args.dev_root, claim=claim)
    return _finish(plan, args)
