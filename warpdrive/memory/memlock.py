"""RLIMIT_MEMLOCK preflight: fail with a clear message before the kernel fails a pin with ENOMEM.

The kernel charges DMA pins to the locked-memory limit (type1: mm->locked_vm; iommufd: the user's
locked_vm by default) unless the caller has CAP_IPC_LOCK. Checking first lets us say how much is
needed and how to raise the limit, instead of a bare ENOMEM from deep inside an ioctl.
"""

from __future__ import annotations

import resource

from ..errors import MemlockLimitError

CAP_IPC_LOCK = 14


def _status_fields() -> dict[str, str]:
    out: dict[str, str] = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def has_cap_ipc_lock() -> bool:
    """True when the effective capability set holds CAP_IPC_LOCK (root normally does)."""
    cap_eff = int(_status_fields().get("CapEff", "0"), 16)
    return bool(cap_eff & (1 << CAP_IPC_LOCK))


def locked_bytes() -> int:
    """What the kernel already charges this process: VmLck (mlock + type1 pins) + VmPin."""
    st = _status_fields()
    total = 0
    for key in ("VmLck", "VmPin"):
        val = st.get(key)
        if val:
            total += int(val.split()[0]) * 1024
    return total


def memlock_limit() -> int:
    """The soft RLIMIT_MEMLOCK in bytes (resource.RLIM_INFINITY when unlimited)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return int(soft)


def binding_memlock_limit() -> int | None:
    """The soft RLIMIT_MEMLOCK in bytes where it bounds this process's pins; None where it
    does not (unlimited, or CAP_IPC_LOCK)."""
    limit = memlock_limit()
    if limit == resource.RLIM_INFINITY or has_cap_ipc_lock():
        return None
    return limit


def check_memlock(nbytes: int, what: str = "DMA mapping") -> None:
    """Raise `MemlockLimitError` if pinning `nbytes` more would exceed RLIMIT_MEMLOCK."""
    limit = binding_memlock_limit()
    if limit is None:
        return
    used = locked_bytes()
    if used + nbytes > limit:
        need = used + nbytes
        raise MemlockLimitError(
            f"{what} would pin {nbytes} bytes but RLIMIT_MEMLOCK is {limit} bytes "
            f"({used} already locked or pinned; {need} needed)",
            hint=f"raise the limit to at least {(need + 1023) // 1024} KiB: `ulimit -l "
            f"{(need + 1023) // 1024}` in the shell, `prlimit --memlock={need} --pid <pid>`, "
            "LimitMEMLOCK= in a systemd unit or memlock in /etc/security/limits.conf; "
            "or run with CAP_IPC_LOCK",
        )
