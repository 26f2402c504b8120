"""Build bind/unbind plans: run every safety check and list the exact writes. Reads only.

Nothing in this module writes anything or imports the write function; `--dry-run` is "plan and
print", and a real run is "plan, then `apply.execute` the plan".
"""

from __future__ import annotations

import os
import re

from .. import pci
from ..errors import InvalidArgumentError
from ..pci import PciFunction
from . import netuse, state
from .blockuse import block_use
from .holders import Targets, can_inspect_all, find_holders
from .plan import Check, Plan, Step, Target

VFIO_PCI = "vfio-pci"
DEFAULT_TIMEOUT = 10.0  # seconds; TCG guests probe slowly


def _drv_path(plan: Plan, driver: str, leaf: str) -> str:
    return f"{plan.sysfs_root}/bus/pci/drivers/{driver}/{leaf}"


def _probe_path(plan: Plan) -> str:
    return f"{plan.sysfs_root}/bus/pci/drivers_probe"


def _describe(fn: PciFunction) -> str:
    group = f"IOMMU group {fn.iommu_group}" if fn.iommu_group is not None else "no IOMMU group"
    text = f"{fn.ids} {fn.class_name}, driver {fn.driver or 'none'}, {group}"
    if fn.driver_override:
        text += f", driver_override {fn.driver_override}"
    if fn.plugin:
        text += f", plugin {fn.plugin}"
    return text


def _check_permissions(plan: Plan, fn: PciFunction, command: str) -> None:
    override = f"{fn.sysfs_path}/driver_override"
    if not os.path.exists(override):
        plan.checks.append(Check(
            "kernel", "refuse", f"{override} does not exist", fn.bdf, kind="unsupported",
            hint="the kernel predates driver_override (Linux 3.16); use a newer kernel"))
        return
    if os.geteuid() != 0:
        plan.checks.append(Check(
            "permissions", "refuse",
            f"needs root: {plan.op} writes {override}, the driver's bind/unbind files and "
            f"{_probe_path(plan)}, which only root may write", fn.bdf, kind="permission",
            hint=f"run `sudo {command}`; afterwards a normal user can be given the VFIO device "
            "nodes (the bind output says how)"))
    elif not os.access(override, os.W_OK):
        plan.checks.append(Check(
            "permissions", "refuse", f"{override} is not writable even as root (read-only "
            "/sys, e.g. inside a container)", fn.bdf, kind="permission",
            hint="run it on the host (or in a privileged container with /sys mounted rw)"))
    else:
        plan.checks.append(Check("permissions", "ok", "running as root", fn.bdf))


def _holder_targets(fn: PciFunction, leaving_vfio: bool) -> Targets:
    paths = []
    if leaving_vfio and fn.vfio_group_node:
        paths.append(fn.vfio_group_node)  # the group fd is what a legacy VFIO user holds
    if fn.vfio_cdev_node:
        paths.append(fn.vfio_cdev_node)
    devnums = tuple(("b" if c.subsystem == "block" else "c", c.devnum[0], c.devnum[1],
                     f"{c.name} ({c.subsystem})") for c in fn.children if c.devnum is not None)
    # /proc/<pid>/maps prints the resolved path, so match on the real directory.
    maps = (os.path.realpath(fn.sysfs_path) + "/resource",)
    return Targets(tuple(paths), devnums, maps)


def _check_holders(plan: Plan, fns: list[PciFunction]) -> None:
    merged = Targets()
    for fn in fns:
        t = _holder_targets(fn, leaving_vfio=fn.driver == VFIO_PCI)
        merged = Targets(merged.paths + t.paths, merged.devnums + t.devnums,
                         merged.map_prefixes + t.map_prefixes)
    holders = find_holders(merged)
    if holders:
        plan.checks.append(Check(
            "holders", "refuse",
            "the device is in use: " + "; ".join(h.describe() for h in holders), plan.bdf,
            hint="stop or close those processes first (unbinding a VFIO device blocks until its "
            "users let go; unbinding a native driver pulls it out from under them)"))
    elif not can_inspect_all():
        plan.checks.append(Check("holders", "warn", "no process of this user holds the device; "
                                 "other users' processes cannot be inspected without root",
                                 plan.bdf))
    else:
        plan.checks.append(Check("holders", "ok", "no process holds the device open or mapped",
                                 plan.bdf))


def _check_in_use(plan: Plan, fn: PciFunction) -> None:
    """Network interfaces with addresses/routes and mounted disks: the ways to cut off a host."""
    for ifname in fn.net_interfaces:
        try:
            use = netuse.interface_use(ifname)
        except Exception as e:  # netlink unavailable/denied: cannot prove the NIC is unused
            plan.checks.append(Check(
                "network", "forced" if plan.force else "refuse",
                f"could not ask the kernel whether {ifname} is in use ({e!r})", fn.bdf,
                overridable=True, hint="check `ip addr show` / `ip route` yourself; --force "
                "skips this check"))
            continue
        if use is None:
            plan.checks.append(Check("network", "warn", f"{ifname} is not in this network "
                                     "namespace; could not check its routes", fn.bdf))
        elif use.in_use:
            plan.checks.append(Check(
                "network", "forced" if plan.force else "refuse", use.describe(), fn.bdf,
                overridable=True,
                hint=f"move its addresses and routes elsewhere and `ip link set {ifname} down` "
                "first, or pass --force if you can reach this machine another way"))
        else:
            plan.checks.append(Check("network", "ok", f"{ifname} is down, with no addresses or "
                                     "routes", fn.bdf))
    uses = block_use(fn.children, plan.sysfs_root)
    if uses:
        plan.checks.append(Check("storage", "refuse", "; ".join(uses), fn.bdf,
                                 hint="unmount it / swapoff / remove what is stacked on it first"))
    if fn.sriov_numvfs:
        plan.checks.append(Check("sriov", "warn", f"physical function with {fn.sriov_numvfs} "
                                 "VFs enabled: unbinding its driver can disable them", fn.bdf))
    if fn.boot_vga:
        plan.checks.append(Check("display", "warn", "this is the boot display (boot_vga=1)",
                                 fn.bdf))


def _move_steps(plan: Plan, fn: PciFunction, driver: str) -> list[Step]:
    steps = [Step("write", fn.bdf, f"{fn.sysfs_path}/driver_override", driver)]
    if fn.driver:
        steps.append(Step("write", fn.bdf, _drv_path(plan, fn.driver, "unbind"), fn.bdf))
    steps.append(Step("write", fn.bdf, _probe_path(plan), fn.bdf))
    steps.append(Step("wait", fn.bdf, note=f"wait up to {plan.timeout:g} s for {fn.bdf} to "
                      f"attach to {driver}"))
    return steps


def plan_bind(bdf: str, driver: str = VFIO_PCI, *, group: bool = False, force: bool = False,
              timeout: float = DEFAULT_TIMEOUT, sysfs_root: str = "/sys",
              dev_root: str = "/dev", claim: pci.Claim | None = None,
              modules_root: str = "/lib/modules") -> Plan:
    """Every check and write for moving `bdf` (and with `group`, its blocking group members)
    to `driver`. Reads sysfs, netlink and /proc; writes nothing. `claim` names the plugin in the
    plan's description (`warpdrive.devices.registry.claim`)."""
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", driver):
        raise InvalidArgumentError(f"{driver!r} is not a driver name")
    fn = pci.read_function(bdf, sysfs_root, dev_root, claim=claim)
    plan = Plan("bind", fn.bdf, driver, force, timeout=timeout, sysfs_root=sysfs_root,
                dev_root=dev_root)
    plan.checks.append(Check("device", "info", _describe(fn), fn.bdf))
    _check_permissions(plan, fn, f"warpdrive bind {fn.bdf}"
                       + (f" --driver {driver}" if driver != VFIO_PCI else ""))

    moving: list[PciFunction] = []
    if fn.driver == driver:
        plan.checks.append(Check("driver", "ok", f"already bound to {driver}", fn.bdf))
    else:
        moving.append(fn)
    if not os.path.isdir(f"{sysfs_root}/bus/pci/drivers/{driver}"):
        plan.checks.append(Check("driver", "info", f"{driver} is not loaded: will run "
                                 f"`modprobe {driver}` first", fn.bdf))
        plan.pre_steps.append(Step("modprobe", None, value=driver))
        if _module_known(driver, modules_root) is False:
            # A warning, not a refusal: a PCI driver's name is not always its module's, and
            # modprobe fails before anything is written anyway. The dry run says it now.
            plan.checks.append(Check(
                "driver", "warn", f"no module named {driver} for this kernel "
                f"({os.uname().release}): `modprobe {driver}` will likely fail", fn.bdf,
                hint="check the name: `ls /sys/bus/pci/drivers`, `modinfo NAME`"))

    if driver == VFIO_PCI:
        if fn.is_bridge:
            plan.checks.append(Check("device", "refuse", "a PCI bridge cannot be bound to "
                                     "vfio-pci", fn.bdf, hint="bind the functions behind it"))
        if fn.iommu_group is None:
            status = pci.iommu_status(sysfs_root, dev_root)
            if status.noiommu_mode:
                plan.checks.append(Check("iommu", "warn", "no IOMMU group, vfio noiommu mode is "
                                         "on: the device gets /dev/vfio/noiommu-N and can DMA "
                                         "anywhere in memory", fn.bdf))
            else:
                why = (status.summary() if not status.available else
                       "the IOMMU does not cover this function")
                plan.checks.append(Check(
                    "iommu", "refuse", f"no IOMMU group for {fn.bdf}: {why}", fn.bdf,
                    kind="unsupported", hint="vfio-pci cannot drive a function without an IOMMU "
                    "group; nothing to bind"))
        else:
            members = ", ".join(f"{m.bdf} ({m.driver or 'no driver'})"
                                for m in fn.group_members) or "no other members"
            plan.checks.append(Check("iommu", "ok", f"IOMMU group {fn.iommu_group} "
                                     f"({fn.iommu_group_type or 'type unknown'}): {members}",
                                     fn.bdf))
            blockers = fn.blocking_members
            if blockers and group:
                for m in blockers:
                    mfn = pci.read_function(m.bdf, sysfs_root, dev_root)
                    plan.checks.append(Check("group", "info", f"--group: also moving {m.bdf} "
                                             f"({mfn.ids} {mfn.class_name}, driver {m.driver})",
                                             m.bdf))
                    moving.insert(0, mfn)
            elif blockers:
                names = ", ".join(f"{m.bdf} (driver {m.driver})" for m in blockers)
                plan.checks.append(Check(
                    "group", "refuse" if fn.driver != driver else "warn",
                    f"IOMMU group {fn.iommu_group} would not be viable: {names} "
                    "still on host drivers", fn.bdf, kind="group",
                    hint=f"bind them too: `warpdrive bind --group {fn.bdf}` (each member is "
                    "checked the same way), or `warpdrive bind <member>` one by one; VFIO only "
                    "accepts a group whose members are all on vfio-pci, pci-stub or no driver "
                    "(bridges excepted)"))

    for mv in moving:
        _check_in_use(plan, mv)
    if moving:
        _check_holders(plan, moving)
    for mv in moving:
        plan.targets.append(Target(mv.bdf, mv.driver, mv.driver_override, driver,
                                   steps=_move_steps(plan, mv, driver)))
    return plan


def _module_known(name: str, modules_root: str) -> bool | None:
    """Whether modprobe could find module `name` for the running kernel (modules.dep and
    modules.builtin list every module by file name; '-' and '_' are the same to modprobe);
    None when this kernel's module directory is not there to ask."""
    base = os.path.join(modules_root, os.uname().release)
    want = name.replace("-", "_")
    found = False
    for index in ("modules.dep", "modules.builtin"):
        try:
            with open(os.path.join(base, index), encoding="utf-8", errors="replace") as f:
                for line in f:
                    path = line.split(":", 1)[0].strip()
                    stem = os.path.basename(path).split(".ko", 1)[0]
                    if stem.replace("-", "_") == want:
                        return True
            found = True
        except OSError:
            continue
    return False if found else None


def plan_unbind(bdf: str, *, group: bool = False, timeout: float = DEFAULT_TIMEOUT,
                sysfs_root: str = "/sys", dev_root: str = "/dev",
                state_directory: str | None = None, claim: pci.Claim | None = None) -> Plan:
    """Every check and write for handing `bdf` back to its original (or native) driver.

    Only releases functions on vfio-pci / pci-stub, or left with an override and no driver: a
    function on its native driver is left alone ("nothing to do"), so `unbind` can never take a
    NIC or disk away from the host."""
    fn = pci.read_function(bdf, sysfs_root, dev_root, claim=claim)
    plan = Plan("unbind", fn.bdf, None, False, timeout=timeout, sysfs_root=sysfs_root,
                dev_root=dev_root)
    plan.checks.append(Check("device", "info", _describe(fn), fn.bdf))

    fns = [fn]
    if group and fn.iommu_group is not None:
        for m in fn.group_members:
            if m.driver in pci.VFIO_FRIENDLY_DRIVERS:
                fns.append(pci.read_function(m.bdf, sysfs_root, dev_root))
    releasing: list[tuple[PciFunction, state.Record | None]] = []
    for f in fns:
        rec = state.load(f.bdf, state_directory)
        ours = f.driver in pci.VFIO_FRIENDLY_DRIVERS or (f.driver is None
                                                          and f.driver_override is not None)
        if ours:
            releasing.append((f, rec))
        elif f.driver is None:
            plan.checks.append(Check("driver", "ok", "not bound to any driver and no "
                                     "driver_override: nothing to do", f.bdf))
        else:
            plan.checks.append(Check("driver", "ok", f"on its kernel driver {f.driver}: nothing "
                                     "to unbind (unbind only releases vfio-pci/pci-stub)", f.bdf))
    if not releasing:
        return plan

    _check_permissions(plan, fn, f"warpdrive unbind {fn.bdf}")
    _check_holders(plan, [f for f, _ in releasing])
    leaving = {f.bdf for f, _ in releasing}
    still = [m for m in fn.group_members if m.bdf not in leaving and m.driver == VFIO_PCI]
    if still:
        plan.checks.append(Check(
            "group", "warn", f"IOMMU group {fn.iommu_group} keeps "
            f"{', '.join(m.bdf for m in still)} on vfio-pci; once {fn.bdf} is back on a host "
            "driver that group is no longer usable through VFIO", fn.bdf,
            hint=f"`warpdrive unbind --group {fn.bdf}` releases them all"))

    for f, rec in releasing:
        restore_override = rec.driver_override if rec else None
        after = rec.driver if rec else None
        steps = [Step("write", f.bdf, f"{f.sysfs_path}/driver_override", restore_override or "")]
        if f.driver:
            steps.append(Step("write", f.bdf, _drv_path(plan, f.driver, "unbind"), f.bdf))
        steps.append(Step("write", f.bdf, _probe_path(plan), f.bdf))
        if rec is not None and after:
            steps.append(Step("wait", f.bdf, note=f"wait up to {timeout:g} s for {f.bdf} to "
                              f"attach to {after}"))
            steps.append(Step("fallback-bind", f.bdf, _drv_path(plan, after, "bind"), f.bdf,
                              note=f"{after} did not attach by itself"))
            plan.checks.append(Check("restore", "info", f"recorded original driver: {after}",
                                     f.bdf))
        else:
            steps.append(Step("wait", f.bdf, note=f"let the kernel pick {f.bdf}'s driver"))
            plan.checks.append(Check(
                "restore", "info", "original driver: none" if rec is not None else
                "no record of the original driver: the kernel picks (native driver if any)",
                f.bdf))
        plan.targets.append(Target(f.bdf, f.driver, f.driver_override, after,
                                   kernel_picks=rec is None, steps=steps))
    return plan
