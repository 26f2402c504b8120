"""Which ZIP engine: finding hardware, opening an engine, the process-wide default."""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any

from ..device import Device
from ..devices.zip import hw as _hw
from ..devices.zip.engine import ZipEngine
from ..errors import DeviceNotFoundError, InvalidArgumentError

log = logging.getLogger("warpdrive.zip")

EMU_NOTE = ("warpdrive.zip: no HiSilicon ZIP hardware found (no hisi_zip uacce device, no ZIP "
            "VF bound to vfio-pci); using the bundled device model (emu:zip)")


# -- devices ----------------------------------------------------------------------------------
def find_hardware(sysfs_root: str = "/sys") -> str | None:
    """The first usable ZIP device: a hisi_zip uacce device name, else the address of a ZIP VF
    bound to vfio-pci; None when there is neither."""
    from ..backends import nothing_bound

    if nothing_bound(sysfs_root):
        return None
    from .. import pci
    from ..backends.uacce.sysfs import usable_devices
    from ..devices.registry import claim

    names = usable_devices(_hw.ZIP.uacce_driver, sysfs_root)
    if names:
        return names[0]
    for fn in pci.devices(sysfs_root, claim=claim):
        if fn.plugin == "zip" and fn.device == _hw.ZIP.vf_device_id and fn.driver == "vfio-pci":
            return fn.bdf
    return None


def open_engine(device: Device | ZipEngine | str | None = None, *, doorbell: str = "mmap",
         wait: str = "auto", backend: str = "auto", depth: int | None = None,
         timeout: float = 30.0, model_options: dict[str, Any] | None = None,
         announce: bool = True) -> ZipEngine:
    """Open a ZIP engine on `device` (see the module docstring). Close it when done; an engine
    opened from a name closes the device (and stops a model it started) with it.

    `doorbell`: "mmap" (a store into the mapped doorbell page) or "message" (every doorbell a
    trapped write: a syscall on VFIO, a message on vfio-user; for comparisons). `wait`: "auto"
    (spin briefly, then sleep on the completion interrupt), "spin" (busy-poll only: no
    syscalls, one busy core) or "block"."""
    from ..devices.zip.driver import ZipDriver

    if isinstance(device, ZipEngine):
        return device
    opts: dict[str, Any] = {"depth": depth, "wait": wait, "timeout": timeout}
    if isinstance(device, Device):
        return ZipDriver(device, doorbell=doorbell, **opts).engine
    if device is None:
        # A broker (`warpdrive serve`) or a device chosen for every program of a session.
        chosen = os.environ.get("WARPDRIVE_DEVICE")
        if chosen:
            if chosen == "emu" and announce:
                _announce_emu()
            try:
                return _open_named(chosen, doorbell, backend, model_options, opts)
            except (InvalidArgumentError, DeviceNotFoundError) as e:
                # The program named no device: say where the name came from (a shell's
                # profile, a unit file), or the user looks for it in the wrong place.
                raise type(e)(f"WARPDRIVE_DEVICE={chosen}: {e.what}", errno=e.errno,
                              hint=e.hint) from None
        device = find_hardware() or "emu"
        if device == "emu" and announce:
            _announce_emu()
    return _open_named(device, doorbell, backend, model_options, opts)


def _open_named(device: object, doorbell: str, backend: str,
                model_options: dict[str, Any] | None, opts: dict[str, Any]) -> ZipEngine:
    """open_engine's part for a name: uacce queues, the bundled model or a Device's driver."""
    from ..backends import open_device, open_uacce, parse_name
    from ..devices.hisi_qm.uacce import UacceQueues
    from ..devices.zip.driver import ZipDriver

    if not isinstance(device, str):
        raise InvalidArgumentError(
            f"device must be a Device, a PCI address, a uacce name or 'emu', not "
            f"{type(device).__name__}")
    name = parse_name(device)
    if name.kind == "uacce":
        sva = open_uacce(name.target)
        try:
            return ZipEngine(UacceQueues(sva, _hw.ZIP), **opts)
        except BaseException:
            sva.close()
            raise
    # vfio-user: a message-doorbell client maps nothing, which lets trapped writes be posted.
    vu: dict[str, Any] = {"mmap_doorbells": doorbell == "mmap"}
    if name.kind == "emu":
        if name.target not in ("", "zip"):
            raise DeviceNotFoundError(f"{device!r} is not the ZIP model", hint="use 'emu'")
        dev = open_device("emu:zip", model_options=model_options or {}, **vu)
    elif name.kind in ("vfio-user", "broker"):
        dev = open_device(device, **vu)
    else:
        dev = open_device(device, backend=backend)
    try:
        return ZipDriver(dev, doorbell=doorbell, on_close=dev.close, **opts).engine
    except BaseException:
        dev.close()
        raise


_announced = False


def _announce_emu() -> None:
    global _announced
    if not _announced:
        _announced = True
        log.warning(EMU_NOTE)


_default: ZipEngine | None = None
_default_lock = threading.Lock()
_engines: dict[object, ZipEngine] = {}


def default_engine() -> ZipEngine:
    """The process-wide engine used when no `device=` is given (opened on first use)."""
    global _default
    eng = _default  # every one-shot call comes here: no lock while the engine is usable
    if eng is not None and not eng.closed and not eng._forked_dead:
        return eng
    with _default_lock:
        if _default is None or _default.closed or _default._forked_dead:
            _default = open_engine()
            atexit.register(_close_default)
        return _default


def _close_default() -> None:
    global _default
    eng, _default = _default, None
    if eng is not None:
        try:
            eng.close()
        except Exception:  # at exit: a failing close must not hide the real exit status
            pass


def engine_for(device: Device | ZipEngine | str | None) -> ZipEngine:
    """The engine behind `device=` of the module-level functions: the default engine, the
    given engine, or one opened once per device name (or `Device`) and kept."""
    if device is None:
        return default_engine()
    if isinstance(device, ZipEngine):
        return device
    key: object = id(device) if isinstance(device, Device) else device
    with _default_lock:
        eng = _engines.get(key)
        if eng is None or eng.closed or eng._forked_dead:
            eng = _engines[key] = open_engine(device)
            if isinstance(device, Device):
                def forget() -> None:
                    _engines.pop(key, None)

                device.on_close(forget)
            else:
                atexit.register(eng.close)
        return eng
