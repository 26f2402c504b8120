"""Execute a plan: the only caller of `sysfs_write`. Waits for the driver to attach and rolls
every moved function back to where it was if anything fails."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from .. import pci
from ..errors import DeviceTimeoutError, KernelError, WarpdriveError
from ..pci import PciFunction
from . import state
from .plan import Plan, Target
from .sysfs_write import SysfsWritesForbiddenError, ensure_writes_allowed, modprobe, sysfs_write

_POLL = 0.02
_SETTLE = 1.0  # how long unbind waits for a driver when it does not know which one to expect


@dataclass
class Result:
    functions: list[PciFunction] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _driver(plan: Plan, bdf: str) -> str | None:
    try:
        return os.path.basename(os.readlink(f"{plan.sysfs_root}/bus/pci/devices/{bdf}/driver"))
    except OSError:
        return None


def _wait_driver(plan: Plan, bdf: str, want: str | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if _driver(plan, bdf) == want:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def _wait_any_driver(plan: Plan, bdf: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _driver(plan, bdf) is None and time.monotonic() < deadline:
        time.sleep(_POLL)


def _run_target(plan: Plan, t: Target) -> None:
    for step in t.steps:
        if step.action == "write":
            sysfs_write(step.path, step.value)
        elif step.action == "fallback-bind":
            if _driver(plan, t.bdf) != t.after_driver:
                sysfs_write(step.path, step.value)
                if not _wait_driver(plan, t.bdf, t.after_driver, plan.timeout):
                    raise DeviceTimeoutError(
                        f"{t.bdf} did not attach to {t.after_driver} (now on "
                        f"{_driver(plan, t.bdf) or 'no driver'})",
                        hint="`dmesg` shows why the driver's probe failed")
        elif step.action == "wait":
            if plan.op == "bind":
                if not _wait_driver(plan, t.bdf, t.after_driver, plan.timeout):
                    raise DeviceTimeoutError(
                        f"{t.bdf} did not attach to {t.after_driver} within {plan.timeout:g} s "
                        f"(now on {_driver(plan, t.bdf) or 'no driver'})",
                        hint="`dmesg` shows why the driver's probe failed")
            elif t.after_driver is not None:
                _wait_driver(plan, t.bdf, t.after_driver, plan.timeout)  # else: fallback-bind
            else:
                _wait_any_driver(plan, t.bdf, min(_SETTLE, plan.timeout))


def _rollback(plan: Plan, t: Target) -> list[str]:
    """Put `t` back on its previous driver and override; returns the problems left over."""
    problems = []
    dev = f"{plan.sysfs_root}/bus/pci/devices/{t.bdf}"
    try:
        sysfs_write(f"{dev}/driver_override", t.before_override or "")
        now = _driver(plan, t.bdf)
        if now != t.before_driver:
            if now is not None:
                sysfs_write(f"{plan.sysfs_root}/bus/pci/drivers/{now}/unbind", t.bdf)
            sysfs_write(f"{plan.sysfs_root}/bus/pci/drivers_probe", t.bdf)
            if t.before_driver and not _wait_driver(plan, t.bdf, t.before_driver, plan.timeout):
                sysfs_write(f"{plan.sysfs_root}/bus/pci/drivers/{t.before_driver}/bind", t.bdf)
        if _driver(plan, t.bdf) != t.before_driver:
            problems.append(f"{t.bdf} is on {_driver(plan, t.bdf) or 'no driver'}, not "
                            f"{t.before_driver or 'no driver'}")
    except WarpdriveError as e:
        problems.append(f"{t.bdf}: {e}")
    return problems


def execute(plan: Plan, *, state_directory: str | None = None) -> Result:
    """Run a plan built by `planner`. Raises the plan's refusal if it has one, before writing."""
    err = plan.error()
    if err is not None:
        raise err
    # Fail before the state record too, not only at the first sysfs write.
    ensure_writes_allowed(f"{plan.op} {plan.bdf}")
    result = Result()
    for step in plan.pre_steps:
        modprobe(step.value)
        drv_dir = f"{plan.sysfs_root}/bus/pci/drivers/{plan.driver}"
        deadline = time.monotonic() + plan.timeout
        while not os.path.isdir(drv_dir) and time.monotonic() < deadline:
            time.sleep(_POLL)
    done: list[Target] = []
    for t in plan.targets:
        if plan.op == "bind":
            prev = state.load(t.bdf, state_directory)
            # Keep the oldest record when hopping between VFIO-friendly drivers: it names the
            # native driver the function came from.
            if prev is None or t.before_driver not in pci.VFIO_FRIENDLY_DRIVERS:
                warn = state.save(state.Record(t.bdf, t.before_driver, t.before_override),
                                  state_directory)
                if warn:
                    result.warnings.append(warn)
        try:
            _run_target(plan, t)
        except SysfsWritesForbiddenError:
            raise
        except WarpdriveError as e:
            if plan.op == "unbind":
                raise type(e)(f"unbind {t.bdf} failed: {e.what}", errno=e.errno,
                              hint=e.hint) from e
            problems = []
            for d in [t, *reversed(done)]:
                problems += _rollback(plan, d)
            if problems:
                raise KernelError(
                    f"bind {t.bdf} to {plan.driver} failed ({e}) and rollback did not fully "
                    f"work: {'; '.join(problems)}",
                    hint="fix by hand: `echo > .../driver_override`, then `echo <bdf> > "
                    "/sys/bus/pci/drivers_probe` for each function") from e
            restored = ", ".join(f"{d.bdf} on {d.before_driver or 'no driver'}"
                                 for d in [t, *done])
            raise type(e)(f"bind {t.bdf} to {plan.driver} failed: {e.what}; rolled back "
                          f"({restored})", errno=e.errno, hint=e.hint) from e
        done.append(t)
        if plan.op == "unbind":
            state.forget(t.bdf, state_directory)
    for t in plan.targets:
        fn = pci.read_function(t.bdf, plan.sysfs_root, plan.dev_root)
        if plan.op == "bind" and plan.driver == "vfio-pci":
            # devtmpfs creates /dev/vfio/N as the group registers; give udev a moment to chmod.
            deadline = time.monotonic() + 2.0
            while fn.vfio_group_node is None and time.monotonic() < deadline:
                time.sleep(_POLL)
                fn = pci.read_function(t.bdf, plan.sysfs_root, plan.dev_root)
            if fn.vfio_group_node is None:
                result.warnings.append(f"{t.bdf} is on vfio-pci but no /dev/vfio/"
                                       f"{fn.iommu_group} node appeared")
        result.functions.append(fn)
    return result
