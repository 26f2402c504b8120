"""Backends, and the one place a device name is parsed.

Names (`parse_name`):
- ``0000:03:00.0`` (or ``03:00.0``): a PCI function bound to vfio-pci. ``backend="auto"`` prefers
  iommufd + the VFIO cdev when ``/dev/iommu`` and ``/sys/bus/pci/devices/<bdf>/vfio-dev/`` exist,
  else the legacy group + type1v2 container; ``"iommufd"`` or ``"vfio"`` force one. The kernel VFIO
  selftests' five IOMMU modes are accepted by name too (`IOMMU_MODES`): "vfio_type1_iommu",
  "vfio_type1v2_iommu" (= "vfio"), "iommufd_compat_type1", "iommufd_compat_type1v2" (the legacy
  group API on /dev/iommu) and "iommufd"; `Device.iommu_mode` says which one a device uses.
- ``vfio-user:/path/to.sock``: a device model (or any vfio-user server) on a UNIX socket.
- ``emu:<model>``: start the bundled device model (e.g. ``emu:zip``) and open it over vfio-user;
  closing the device stops the model. ``emu`` alone leaves the model to the caller (the zip API
  means its ZIP model).
- ``<driver>-<n>`` (e.g. ``hisi_zip-0``): a uacce device; its SVA queues open with `open_uacce`
  (a uacce device is not a PCI `Device`).
- ``broker:/path.sock``: a virtual function of `warpdrive serve` (the broker), over vfio-user: the
  device is shared with other processes, and every request is checked by the broker.

Backend modules are imported lazily so that `import warpdrive` stays cheap.
"""

from __future__ import annotations

import os
import re

from ..errors import InvalidArgumentError, UnsupportedError
from ..record import record

# Only for annotations: this package is imported by every process that starts or hosts a device
# model (the CLI before it spawns one, the model's server), and `device`/`pci` cost them ~50 ms
# of start-up that an emulated run never needs before it opens a device.
TYPE_CHECKING = False  # (not typing's: importing typing costs ~3 ms of every process's boot)
if TYPE_CHECKING:
    from typing import Any

    from ..device import Device
    from ..sva import SvaDevice

# tools/testing/selftests/vfio's names (lib/iommu.c); all but "iommufd" use the legacy group API.
IOMMU_MODES = ("vfio_type1_iommu", "vfio_type1v2_iommu", "iommufd_compat_type1",
               "iommufd_compat_type1v2", "iommufd")
BACKENDS = ("auto", "iommufd", "vfio", "vfio-user", *IOMMU_MODES[:-1])
KINDS = ("pci", "vfio-user", "emu", "uacce", "broker")
_UACCE = re.compile(r"^[a-z][a-z0-9_]*-[0-9]+$")


@record(frozen=True)
class DeviceName:
    """A parsed device name: `kind` is one of KINDS; `target` is the normalized PCI address,
    the socket path, the model name ("" = the caller's default model) or the uacce name."""

    kind: str
    target: str


def parse_name(name: str) -> DeviceName:
    """What `name` designates (see the module docstring); InvalidArgumentError if nothing."""
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"{name!r} is not a device name",
                                   hint="give a PCI address, vfio-user:PATH, emu:MODEL or a "
                                   "uacce name such as hisi_zip-0")
    for prefix, kind in (("vfio-user:", "vfio-user"), ("broker:", "broker"), ("emu:", "emu")):
        if name.startswith(prefix):
            target = name[len(prefix):]
            if not target:
                what = "model" if kind == "emu" else "socket"
                raise InvalidArgumentError(f"{name!r} names no {what}")
            return DeviceName(kind, target)
    if name == "emu":
        return DeviceName("emu", "")
    from ..pci.names import normalize_bdf

    try:  # as `warpdrive bind` takes it: 00:03.0 too, any case
        return DeviceName("pci", normalize_bdf(name))
    except InvalidArgumentError:
        pass
    if _UACCE.match(name):
        return DeviceName("uacce", name)
    raise InvalidArgumentError(
        f"{name!r} is not a device name",
        hint="give a PCI address (0000:03:00.0), vfio-user:PATH, emu:MODEL or a uacce name "
        "such as hisi_zip-0; `warpdrive devices` lists what this machine has")


def nothing_bound(sysfs_root: str = "/sys") -> bool:
    """True when this machine surely has no device a kernel backend could open: no uacce
    device at all and no PCI function bound to vfio-pci. Two directory listings, no imports:
    hardware searches ask it first and skip their full scan (the PCI tree, the driver plugins'
    entry points: ~30 ms) on the machines most programs run on. Anything there, or an
    unreadable directory, says False and leaves the answer to the full scan."""
    for where, counts in (("class/uacce", lambda n: True),
                          ("bus/pci/drivers/vfio-pci", lambda n: ":" in n)):
        try:
            names = os.listdir(os.path.join(sysfs_root, where))
        except FileNotFoundError:
            continue
        except OSError:
            return False
        if any(counts(n) for n in names):
            return False
    return True


def kernel_backend_for(bdf: str, sysfs_root: str = "/sys", dev_root: str = "/dev") -> str:
    """'iommufd' when /dev/iommu and the device's VFIO cdev exist, else 'vfio' (legacy). Refuses
    a function that is missing or not bound to vfio-pci."""
    from .vfiodev.bound import vfio_function

    fn = vfio_function(bdf, sysfs_root, dev_root)
    if os.path.exists(os.path.join(dev_root, "iommu")) and os.path.isdir(
            os.path.join(sysfs_root, "bus/pci/devices", fn.bdf, "vfio-dev")):
        return "iommufd"
    return "vfio"


def open_device(name: str, backend: str = "auto", dma_mask: int | None = None,
                **options: Any) -> Device:
    """Open `name` (see the module docstring) and return a `Device`."""
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "vfio-user" and isinstance(name, str) and not name.startswith("vfio-user:"):
        name = "vfio-user:" + name  # a bare socket path with the backend named explicitly
    dn = parse_name(name)
    if dn.kind == "emu":
        if not dn.target:
            raise InvalidArgumentError("emu: names no model", hint="e.g. emu:zip or emu:testdev")
        from .vfiouser.launcher import open_emulated

        return open_emulated(dn.target, dma_mask=dma_mask, **options)
    if dn.kind == "vfio-user":
        from .vfiouser.client import open_vfio_user

        return open_vfio_user(dn.target, dma_mask=dma_mask, **options)
    if dn.kind == "uacce":
        raise InvalidArgumentError(
            f"{name} is a uacce device: it hands out SVA queues, not a PCI function",
            hint="open it with warpdrive.backends.open_uacce(), or use warpdrive.zip.open_engine()")
    if dn.kind == "broker":
        from .vfiouser.client import open_vfio_user

        return open_vfio_user(dn.target, dma_mask=dma_mask, **{"name": name, **options})
    chosen = kernel_backend_for(dn.target) if backend == "auto" else backend
    if chosen == "iommufd":
        if not os.path.exists("/dev/iommu"):
            raise UnsupportedError("/dev/iommu does not exist: this kernel has no iommufd",
                                   hint="use backend='vfio' (legacy container) or 'auto'")
        from .iommufd.cdev import open_iommufd

        return open_iommufd(dn.target, dma_mask=dma_mask, **options)
    from .vfio.legacy import open_legacy

    if chosen != "vfio":
        options["mode"] = chosen
    return open_legacy(dn.target, dma_mask=dma_mask, **options)


def open_uacce(name: str, *, sysfs_root: str = "/sys", dev_root: str = "/dev") -> SvaDevice:
    """Open uacce device `name` (e.g. ``hisi_zip-0``) for SVA queues."""
    dn = parse_name(name)
    if dn.kind != "uacce":
        raise InvalidArgumentError(f"{name!r} is not a uacce device name",
                                   hint="uacce devices are named <driver>-<n>, e.g. hisi_zip-0")
    from .uacce.queue import open_uacce as _open

    return _open(dn.target, sysfs_root=sysfs_root, dev_root=dev_root)
