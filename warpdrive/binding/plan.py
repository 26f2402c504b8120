"""What a bind/unbind would check and write: plain data, built by `planner`, run by `apply`.

A plan is complete before anything is written, so `--dry-run` prints exactly the plan that a real
run would execute, and a refused plan is never executed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..errors import (
    BindingRefusedError,
    GroupNotViableError,
    PermissionDeniedError,
    UnsupportedError,
    WarpdriveError,
)

Status = Literal["ok", "info", "warn", "refuse", "forced"]
Kind = Literal["refused", "group", "permission", "unsupported"]


@dataclass
class Check:
    """One safety check's result. `refuse` stops the plan; `forced` is a refusal --force lifted."""

    name: str
    status: Status
    detail: str
    bdf: str | None = None
    hint: str | None = None
    overridable: bool = False
    """--force may lift this refusal (only the in-use network interface check is)."""
    kind: Kind = "refused"


@dataclass
class Step:
    """One action: a sysfs write, a modprobe, or a wait for the driver link to change."""

    action: Literal["write", "modprobe", "wait", "fallback-bind"]
    bdf: str | None = None
    path: str = ""
    value: str = ""
    note: str = ""

    def describe(self) -> str:
        if self.action == "write":
            if not self.value:
                return f"echo '' > {self.path}  # empty: clears the override"
            return f"echo '{self.value}' > {self.path}"
        if self.action == "modprobe":
            return f"modprobe {self.value}"
        if self.action == "fallback-bind":
            return f"echo '{self.value}' > {self.path}  # only if {self.note}"
        return self.note


@dataclass
class Target:
    """One function the plan moves, with what it had before (for rollback and unbind)."""

    bdf: str
    before_driver: str | None
    before_override: str | None
    after_driver: str | None
    """The driver expected afterwards; None means no driver (or, for unbind, see `kernel_picks`)."""
    kernel_picks: bool = False
    """Unbind without a record: whatever the kernel's own matching chooses is the right result."""
    steps: list[Step] = field(default_factory=list)


@dataclass
class Plan:
    op: Literal["bind", "unbind"]
    bdf: str
    driver: str | None
    force: bool
    checks: list[Check] = field(default_factory=list)
    pre_steps: list[Step] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    timeout: float = 10.0
    sysfs_root: str = "/sys"
    dev_root: str = "/dev"

    @property
    def refusals(self) -> list[Check]:
        return [c for c in self.checks if c.status == "refuse"]

    @property
    def nothing_to_do(self) -> bool:
        return not self.targets and not self.refusals

    def error(self) -> WarpdriveError | None:
        """The error a real run raises for this plan's refusals (safety refusals first)."""
        refusals = self.refusals
        if not refusals:
            return None
        lines = [f"{c.bdf + ': ' if c.bdf else ''}{c.detail}" + (f" ({c.hint})" if c.hint else "")
                 for c in refusals]
        what = f"{self.op} {self.bdf} refused:\n  " + "\n  ".join(lines)
        kinds = {c.kind for c in refusals}
        hint = "nothing was written"
        cls: type[WarpdriveError]
        if "refused" in kinds:
            cls = BindingRefusedError
        elif "group" in kinds:
            cls = GroupNotViableError
        elif "unsupported" in kinds:
            cls = UnsupportedError
        else:
            cls = PermissionDeniedError
        return cls(what, hint=hint)

    def render(self, dry_run: bool) -> str:
        head = f"{self.op} {self.bdf}"
        if self.op == "bind":
            head += f" -> {self.driver}"
        if dry_run:
            head += "  (dry run: nothing is written)"
        lines = [head, "checks:"]
        for c in self.checks:
            tag = c.status.upper() if c.status in ("refuse", "forced", "warn") else c.status
            who = f"{c.bdf} " if c.bdf and c.bdf != self.bdf else ""
            lines.append(f"  {tag:<7} {c.name:<12} {who}{c.detail}")
            if c.hint and c.status in ("refuse", "forced", "warn"):
                lines.append(f"  {'':<7} {'':<12} -> {c.hint}")
        steps = self.pre_steps + [s for t in self.targets for s in t.steps]
        if steps:
            lines.append("would write:" if dry_run or self.refusals else "writes:")
            lines.extend(f"  {s.describe()}" for s in steps)
            if self.op == "bind":
                restore = ", ".join(f"{t.bdf} -> {t.before_driver or 'no driver'}"
                                    for t in self.targets)
                lines.append(f"on failure: roll back ({restore}), restoring driver_override")
        if self.refusals:
            lines.append(f"result: REFUSED ({len(self.refusals)} check(s) failed); "
                         "nothing was written")
        elif self.nothing_to_do:
            lines.append("result: nothing to do")
        elif dry_run:
            lines.append("result: would proceed (run without --dry-run to apply)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["refused"] = bool(self.refusals)
        d["steps"] = [s.describe() for s in self.pre_steps] + [
            s.describe() for t in self.targets for s in t.steps]
        return d
