"""One emulated PCI function as the vfio-user server hosts it for a client: a `DeviceModel` plus
everything the framework keeps for it (config space, the client's DMA maps, regions and their
shared memory, interrupt eventfds, the MSI-X table, the control region), and the handlers of the
device commands. The connection side (wire, VERSION, who may talk to which function) is
`warpdrive.emu.server`.

What a client hands over is checked before it is used, because a client can change it later:
- DMA maps need a memfd sealed against shrinking and growing (F_SEAL_SHRINK | F_SEAL_GROW): an
  unsealed file could be truncated after the server mapped it, and the model's next access would
  be a SIGBUS that kills the server. Regular files are refused for the same reason, and because
  device writes into page-cache pages race the file system. Maps without an fd (QEMU's ROM and
  BIOS ranges) are recorded but unreachable, as before.
- The region memfds the server hands out are sealed the same way (plus F_SEAL_SEAL).
- "Eventfds" in SET_IRQS must be eventfds (a pipe fills up and a blocked write would stop the
  server); the server makes them non-blocking (O_NONBLOCK is a property of the open file, shared
  with the client, which polls them anyway), so a full counter is "already signalled", not a
  wait. A client can clear O_NONBLOCK again and fill its counter: where signals reach the
  server's loop (its main thread) every interrupt write is also bounded by a one-shot timer
  (`BoundedWrites`), and a write that would wait loses the client that eventfd.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import logging
import mmap
import os
import signal
import threading
import traceback
from collections.abc import Callable

from .. import syscalls as sc
from ..backends.vfiouser.wire import Message
from ..errors import InvalidArgumentError, ProtocolError, WarpdriveError
from ..forkguard import close_fd_quietly
from ..record import field, record
from ..uapi import vfio_user as P
from ..uapi.vfio import (
    VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_ERR_IRQ_INDEX,
    VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_NUM_IRQS,
    VFIO_PCI_NUM_REGIONS,
    VFIO_REGION_INFO_CAP_TYPE,
    vfio_region_info_cap_type,
)
from .dma import ClientMemory, DmaFault
from .host import DeviceHost
from .model import DeviceModel, RegionSpec
from .pci_config import MsixInfo, PciConfig

TYPE_CHECKING = False  # (not typing's: importing typing costs ~3 ms of every process's boot)
if TYPE_CHECKING:
    from typing import Any

Handler = Callable[["Function", Message], tuple[bytes, list[int]]]

REQUIRED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


def _bad_model(model: DeviceModel, what: str) -> InvalidArgumentError:
    """A model that describes an impossible device: the server refuses to serve it."""
    return InvalidArgumentError(f"model {model.name}: {what}",
                                hint="fix the model's regions(), build_config_space() or "
                                "irq_counts()")


def check_sealed_memfd(fd: int, what: str) -> None:
    """OSError(EINVAL) unless `fd` is a memfd sealed against shrinking and growing."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        raise OSError(errno.EINVAL, f"{what}: the fd is not a memfd (only sealed memfds are "
                      "accepted: a file could be truncated under the server)") from None
    if seals & REQUIRED_SEALS != REQUIRED_SEALS:
        raise OSError(errno.EINVAL, f"{what}: the memfd is not sealed with F_SEAL_SHRINK | "
                      "F_SEAL_GROW (a client could truncate it under the server)")


def check_eventfd(fd: int, what: str) -> None:
    """OSError(EINVAL) unless `fd` is an eventfd; then make our writes to it non-blocking."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = ""
    if target != "anon_inode:[eventfd]":
        raise OSError(errno.EINVAL, f"{what}: fd is not an eventfd ({target or 'unknown'})")
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if not flags & os.O_NONBLOCK:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


class _WriteStuck(Exception):
    """An interrupt write waited past its bound (see `BoundedWrites`)."""


_WRITE_BOUND_S = 0.2
_WRITE_TRIES = 3  # writes of one interrupt whose bound passed on a file that cannot block
# The thread whose interrupt writes are bounded: the server's loop in the main thread, while
# the alarm handler is installed (None otherwise). Another thread's write is not bounded: the
# handler would raise in the main thread, wherever it happens to be.
_bounded: int | None = None


def _on_alarm(signum: int, frame: object) -> None:
    raise _WriteStuck()


class BoundedWrites:
    """While the server's loop runs (in the main thread): SIGALRM ends a stuck interrupt write."""

    def __enter__(self) -> None:
        global _bounded
        self._old = signal.signal(signal.SIGALRM, _on_alarm)
        _bounded = threading.get_ident()

    def __exit__(self, *exc: object) -> None:
        global _bounded
        _bounded = None
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._old)


def write_event(fd: int) -> None:
    """Add 1 to an eventfd; BlockingIOError if its counter is full, _WriteStuck if it blocked."""
    if _bounded != threading.get_ident():
        os.write(fd, _ONE)
        return
    signal.setitimer(signal.ITIMER_REAL, _WRITE_BOUND_S)
    try:
        os.write(fd, _ONE)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


_ONE = (1).to_bytes(8, "little")


@record
class _Irq:
    count: int
    fds: list[int] = field(default_factory=list)
    masked: list[bool] = field(default_factory=list)
    pending: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fds = [-1] * self.count
        self.masked = [False] * self.count
        self.pending = [False] * self.count

    def close_all(self) -> None:
        for i, fd in enumerate(self.fds):
            close_fd_quietly(fd)
            self.fds[i] = -1
            self.masked[i] = False
            self.pending[i] = False


@record
class _Region:
    spec: RegionSpec
    memfd: int = -1
    mm: mmap.mmap | None = None
    addr: int = 0
    special: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, kind)
    caps: bytes = b""  # extra region-info capabilities (the control region's TYPE)


def _shared_memory(name: str, length: int) -> tuple[int, mmap.mmap]:
    """A sealed memfd of `length` bytes, mapped shared: what a client mmaps of a region."""
    fd = sc.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, length)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, REQUIRED_SEALS | fcntl.F_SEAL_SEAL)
        return fd, mmap.mmap(fd, length, flags=mmap.MAP_SHARED)
    except BaseException:
        os.close(fd)
        raise


class Function:
    """A model and the framework state of the function it emulates (see the module docstring).
    The server calls the `handle_*` methods for device commands, `poll()` from its loop,
    `detach_client()` when the client leaves and `close()` when the function goes away."""

    def __init__(self, model: DeviceModel, *, max_dma_maps: int, max_data_xfer_size: int,
                 logger: logging.Logger, label: str, control: bool = True,
                 idle_max_s: float = 0.01) -> None:
        self.model = model
        self.max_data_xfer_size = max_data_xfer_size
        self._logger = logger
        self.label = label
        self.messages = 0
        self.by_command: collections.Counter[int] = collections.Counter()
        self._poll_errors = 0
        self.control_aware = False  # the client looked up the control region
        self.control_visible = False  # the client asked for it in VERSION (see the server)
        self._closed = False
        # Set by the server: its epoll fd, readable while messages or connections wait
        self.messages_fd: Callable[[], int] = lambda: -1
        specs = model.regions()
        self.regions: dict[int, _Region] = {}
        for spec in specs:
            if spec.index in self.regions or spec.index == VFIO_PCI_CONFIG_REGION_INDEX:
                raise _bad_model(model, f"region {spec.index} is defined twice or clashes with "
                                 "config space (index 7)")
            if spec.size <= 0:
                raise _bad_model(model, f"region {spec.index} has size {spec.size}")
            for off, size in spec.mmap_areas:
                if off % sc.PAGE_SIZE or size % sc.PAGE_SIZE or size <= 0 or \
                        off + size > sc.page_align_up(spec.size):
                    raise _bad_model(model, f"mmap area ({off:#x}, {size:#x}) of region "
                                     f"{spec.index} is not page-aligned inside the region")
            self.regions[spec.index] = _Region(spec)
        bars = {s.index: (s.size, s.mem64) for s in specs if s.index < 6}
        self.config = PciConfig(model.build_config_space(), bars)
        self.dma = ClientMemory(max_dma_maps, bus_master=self._bus_master)
        self.control_index = -1
        if control:
            self.control_index = max([VFIO_PCI_NUM_REGIONS - 1, *self.regions]) + 1
            cap = vfio_region_info_cap_type()
            cap.header.id = VFIO_REGION_INFO_CAP_TYPE
            cap.header.version = 1
            cap.type = P.WARPDRIVE_CTL_REGION_TYPE
            cap.subtype = P.WARPDRIVE_CTL_REGION_SUBTYPE
            self.regions[self.control_index] = _Region(
                RegionSpec(self.control_index, P.WARPDRIVE_CTL_REGION_SIZE,
                           mmap_areas=((0, sc.PAGE_SIZE),)), caps=bytes(cap))
        self.num_regions = max([VFIO_PCI_NUM_REGIONS, *[i + 1 for i in self.regions]])
        # Every function offers the error notification (one eventfd) as vfio-pci does for PCIe
        # devices: QEMU's client enables its error recovery only then (else it warns "Could not
        # enable error recovery"). A model signals it with raise_irq(VFIO_PCI_ERR_IRQ_INDEX).
        counts = {VFIO_PCI_ERR_IRQ_INDEX: 1, **model.irq_counts()}
        self.num_irqs = max([VFIO_PCI_NUM_IRQS, *[i + 1 for i in counts]])
        self.irqs = {i: _Irq(counts.get(i, 0)) for i in range(self.num_irqs)}
        # QEMU's vfio-pci shows the guest the MSI capability as it is and, when the guest enables
        # MSI, asks for the power of two it enabled (up to Multiple Message Capable): the MSI
        # index must offer exactly what the capability does (docs/research/vfio-user.md, §6).
        msi = self.config.msi_vectors
        if msi and counts.get(VFIO_PCI_MSI_IRQ_INDEX, 0) != msi:
            raise _bad_model(model, f"its MSI capability offers {msi} vectors but "
                             f"irq_counts() says {counts.get(VFIO_PCI_MSI_IRQ_INDEX, 0)}")
        msix = self.config.msix
        if msix is not None and counts.get(VFIO_PCI_MSIX_IRQ_INDEX, 0) != msix.vectors:
            raise _bad_model(model, f"its MSI-X capability has {msix.vectors} vectors but "
                             f"irq_counts() says {counts.get(VFIO_PCI_MSIX_IRQ_INDEX, 0)}")
        self.msix_table = bytearray()
        if msix is not None:
            self._setup_msix(msix)
        try:
            for r in self.regions.values():
                for off, size in r.spec.mmap_areas:
                    r.special.append((off, off + size, "mem"))
                r.special.sort()
                for (_, e1, _), (s2, _, _) in zip(r.special, r.special[1:]):
                    if s2 < e1:
                        raise _bad_model(model, f"region {r.spec.index} has overlapping mmap "
                                         "areas / MSI-X structures")
                if r.spec.mmap_areas:
                    r.memfd, r.mm = _shared_memory(
                        f"warpdrive-{model.name}-region{r.spec.index}",
                        sc.page_align_up(r.spec.size))
                    r.addr = sc.buffer_address(r.mm)
        except BaseException:
            self._unmap_regions()
            raise
        self.polled = model.polled if model.polled is not None else any(
            r.mm is not None for i, r in self.regions.items() if i != self.control_index)
        # The control page: magic, idle period, heartbeat, need-wakeup (uapi.vfio_user).
        self._heartbeat: ctypes.c_uint64 | None = None
        self._need_wakeup: ctypes.c_uint32 | None = None
        if control:
            base = self.regions[self.control_index].addr
            ctypes.c_uint32.from_address(base + P.WARPDRIVE_CTL_MAGIC_OFF).value = \
                P.WARPDRIVE_CTL_MAGIC
            ctypes.c_uint32.from_address(base + P.WARPDRIVE_CTL_IDLE_US).value = \
                int(idle_max_s * 1e6)
            self._heartbeat = ctypes.c_uint64.from_address(base + P.WARPDRIVE_CTL_HEARTBEAT)
            self._need_wakeup = ctypes.c_uint32.from_address(base + P.WARPDRIVE_CTL_NEED_WAKEUP)
        try:
            model.attach(_ModelHost(self))
        except BaseException:
            self._unmap_regions()
            raise

    def _setup_msix(self, msix: MsixInfo) -> None:
        for bar, off, size, kind in ((msix.table_bar, msix.table_offset, msix.table_size,
                                      "msix_table"),
                                     (msix.pba_bar, msix.pba_offset, msix.pba_size, "msix_pba")):
            region = self.regions.get(bar)
            if region is None or off + size > region.spec.size:
                raise _bad_model(self.model, f"its MSI-X {kind[5:]} at BAR {bar} +{off:#x} lies "
                                 "outside the BAR")
            region.special.append((off, off + size, kind))
        self.msix_table = bytearray(msix.table_size)
        for v in range(msix.vectors):  # every vector starts masked
            self.msix_table[v * 16 + 12] = 1

    def _bus_master(self) -> bool:
        return not self.model.require_bus_master or self.config.bus_master_enabled

    @property
    def name(self) -> str:
        return self.model.name

    # -- the control page -------------------------------------------------------------------
    def heartbeat(self) -> None:
        hb = self._heartbeat
        if hb is not None:
            hb.value += 1

    def set_need_wakeup(self, on: bool) -> None:
        if self._need_wakeup is not None:
            self._need_wakeup.value = int(on)

    # -- services for the model (through _ModelHost) ----------------------------------------
    def _shared(self, index: int) -> tuple[mmap.mmap, int]:
        r = self.regions.get(index)
        if r is None or r.mm is None or index == self.control_index:
            raise InvalidArgumentError(f"region {index} of model {self.model.name} has no shared "
                                       "memory", hint="declare mmap_areas in its RegionSpec")
        return r.mm, r.addr

    def region_memory(self, index: int) -> memoryview:
        return memoryview(self._shared(index)[0])

    def region_address(self, index: int) -> int:
        return self._shared(index)[1]

    def irq_assigned(self, index: int, vector: int) -> bool:
        irq = self.irqs.get(index)
        return irq is not None and 0 <= vector < irq.count and irq.fds[vector] >= 0

    def irq_enabled(self, index: int, vector: int) -> bool:
        irq = self.irqs.get(index)
        return irq is not None and 0 <= vector < irq.count and irq.fds[vector] >= 0 \
            and not irq.masked[vector]

    def raise_irq(self, index: int, vector: int) -> bool:
        irq = self.irqs.get(index)
        if irq is None or not 0 <= vector < irq.count or irq.fds[vector] < 0:
            return False
        if irq.masked[vector]:
            irq.pending[vector] = True
            return False
        fd = irq.fds[vector]
        for _ in range(_WRITE_TRIES):
            try:
                write_event(fd)
            except BlockingIOError:
                pass  # the counter is full: the client has an unread interrupt already
            except _WriteStuck:
                # The alarm only says the bound passed, not that the write waited: on a loaded
                # host the server can lose its CPU (or the GIL) for longer than the bound around
                # a write that never blocked. Only a file the client made blocking again can
                # wait; otherwise write again (a second interrupt is harmless, a lost one
                # stalls the client's driver for good).
                if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
                    self._log(f"IRQ {index} vector {vector}: the client's eventfd would block "
                              "(it made it blocking again and filled it); dropping that eventfd")
                    close_fd_quietly(fd)
                    irq.fds[vector] = -1
                    return False
                continue
            except OSError as e:
                self._log(f"signalling IRQ {index} vector {vector} failed: {e}")
                return False
            break
        if index == VFIO_PCI_INTX_IRQ_INDEX:
            irq.masked[vector] = True  # INTx is automasked until the client unmasks it
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "by_command": {P.COMMAND_NAMES.get(c, str(c)): n for c, n in self.by_command.items()},
            "dma_faults": self.dma.faults,
            "dma_maps": len(self.dma.mappings()),
            "views_held_after_unmap": self.dma.held_after_unmap,
        }

    def log(self, msg: str) -> None:
        """What the model says (informational)."""
        self._logger.info("[%s] %s", self.label, msg)

    def _log(self, msg: str) -> None:
        """What went wrong in the model or with the client's requests."""
        self._logger.warning("[%s] %s", self.label, msg)

    # -- driving the model ------------------------------------------------------------------
    def poll(self) -> bool:
        try:
            return bool(self.model.poll())
        except DmaFault as e:
            self._poll_error(f"unhandled DMA fault in poll(): {e}")
        except Exception:
            self._poll_error("poll() raised:\n" + traceback.format_exc())
        return False  # a failing poll() is not work: do not keep a core spinning on it

    def _poll_error(self, text: str) -> None:
        self._poll_errors += 1
        if self._poll_errors <= 10 or self._poll_errors % 1000 == 0:
            self._log(f"{text} (error #{self._poll_errors})")

    def call_model(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:
            self._log(f"{getattr(fn, '__name__', fn)}() raised:\n" + traceback.format_exc())
            return None

    def after_message(self) -> None:
        if self.dma.held_after_unmap:
            self.dma.reap()

    def detach_client(self) -> None:
        """The client left: drop its memory and eventfds; the device state is kept (spec)."""
        for iova, size, _, _ in self.dma.mappings():
            self.call_model(self.model.on_dma_unmap, iova, size)
        self.dma.clear()
        for index, irq in self.irqs.items():
            irq.close_all()
            self._mirror_irq_enable(index)
        self.control_aware = self.control_visible = False
        self.set_need_wakeup(False)

    def close(self) -> None:
        """The function goes away (server exit, or a per-client function whose client left)."""
        if self._closed:
            return
        self._closed = True
        self.detach_client()
        self.call_model(self.model.close)
        self._heartbeat = self._need_wakeup = None
        self._unmap_regions()

    def _unmap_regions(self) -> None:
        for r in self.regions.values():
            if r.mm is not None:
                try:
                    r.mm.close()
                except BufferError:
                    pass  # the model still exports a view; the process is ending anyway
            close_fd_quietly(r.memfd)
            r.memfd = -1

    # -- device commands: each returns (reply payload, fds) or raises OSError(errno, text) --
    def handle_device_get_info(self, msg: Message) -> tuple[bytes, list[int]]:
        req = _unpack(P.vfio_user_device_info, msg)
        if req.argsz < 16:
            raise OSError(errno.EINVAL, f"argsz {req.argsz} is below the 16-byte reply")
        info = P.vfio_user_device_info(16, P.VFIO_DEVICE_FLAGS_RESET | P.VFIO_DEVICE_FLAGS_PCI,
                                       self.visible_regions, self.num_irqs)
        return bytes(info), []

    def _region_spec_info(self, index: int) -> tuple[int, int, tuple[tuple[int, int], ...], int]:
        """(flags, size, sparse areas, fd) of region `index`."""
        if index == VFIO_PCI_CONFIG_REGION_INDEX:
            return (P.VFIO_REGION_INFO_FLAG_READ | P.VFIO_REGION_INFO_FLAG_WRITE,
                    self.config.size, (), -1)
        r = self.regions.get(index)
        if r is None:
            return 0, 0, (), -1
        flags = (P.VFIO_REGION_INFO_FLAG_READ if r.spec.readable else 0) | \
            (P.VFIO_REGION_INFO_FLAG_WRITE if r.spec.writable else 0)
        if r.mm is not None:
            flags |= P.VFIO_REGION_INFO_FLAG_MMAP
        return flags, r.spec.size, r.spec.mmap_areas, r.memfd

    @property
    def visible_regions(self) -> int:
        """Regions the client sees: the control region only if it asked for it."""
        if self.control_index < 0 or self.control_visible:
            return self.num_regions
        return max([VFIO_PCI_NUM_REGIONS, *[i + 1 for i in self.regions
                                             if i != self.control_index]])

    def handle_region_info(self, msg: Message) -> tuple[bytes, list[int]]:
        req = _unpack(P.vfio_region_info, msg)
        if req.index >= self.visible_regions:
            raise OSError(errno.EINVAL, f"region {req.index} does not exist "
                          f"(the device has {self.visible_regions})")
        if req.argsz < 32:
            raise OSError(errno.EINVAL, f"argsz {req.argsz} is below the 32-byte reply")
        flags, size, areas, fd = self._region_spec_info(req.index)
        if req.index == self.control_index:
            self.control_aware = True
        r = self.regions.get(req.index)
        chain: list[bytes] = [r.caps] if r is not None and r.caps else []
        if areas:
            cap = P.vfio_region_info_cap_sparse_mmap()
            cap.header.id = P.VFIO_REGION_INFO_CAP_SPARSE_MMAP
            cap.header.version = 1
            cap.nr_areas = len(areas)
            chain.append(bytes(cap) + b"".join(
                bytes(P.vfio_region_sparse_mmap_area(off, sz)) for off, sz in areas))
        caps = _link_caps(chain, 32)
        info = P.vfio_region_info(argsz=32 + len(caps), flags=flags, index=req.index,
                                  cap_offset=0, size=size, offset=0)
        if caps and req.argsz >= info.argsz:
            info.flags |= P.VFIO_REGION_INFO_FLAG_CAPS
            info.cap_offset = 32
            payload = bytes(info) + caps
        else:
            # argsz says how much to ask for next time. No CAPS flag without the caps: the
            # kernel sets it with cap_offset 0, but QEMU's vfio-user client rejects a CAPS flag
            # whose cap_offset lies outside the reply before it would retry.
            payload = bytes(info)
        return payload, ([fd] if fd >= 0 else [])

    def handle_irq_info(self, msg: Message) -> tuple[bytes, list[int]]:
        req = _unpack(P.vfio_irq_info, msg)
        if req.index >= self.num_irqs:
            raise OSError(errno.EINVAL, f"IRQ index {req.index} does not exist")
        if req.argsz < 16:
            raise OSError(errno.EINVAL, f"argsz {req.argsz} is below the 16-byte reply")
        flags = P.VFIO_IRQ_INFO_EVENTFD
        if req.index == VFIO_PCI_INTX_IRQ_INDEX:
            flags |= P.VFIO_IRQ_INFO_MASKABLE | P.VFIO_IRQ_INFO_AUTOMASKED
        elif req.index in (VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX):
            flags |= P.VFIO_IRQ_INFO_NORESIZE
        info = P.vfio_irq_info(16, flags, req.index, self.irqs[req.index].count)
        return bytes(info), []

    def handle_set_irqs(self, msg: Message) -> tuple[bytes, list[int]]:
        req = _unpack(P.vfio_irq_set, msg)
        data = msg.payload[20:]
        dtype = req.flags & P.VFIO_IRQ_SET_DATA_TYPE_MASK
        action = req.flags & P.VFIO_IRQ_SET_ACTION_TYPE_MASK
        if req.flags & ~(P.VFIO_IRQ_SET_DATA_TYPE_MASK | P.VFIO_IRQ_SET_ACTION_TYPE_MASK):
            raise OSError(errno.EINVAL, f"unknown SET_IRQS flags {req.flags:#x}")
        if dtype.bit_count() != 1 or action.bit_count() != 1:
            raise OSError(errno.EINVAL, "SET_IRQS needs exactly one DATA and one ACTION flag")
        if req.index >= self.num_irqs:
            raise OSError(errno.EINVAL, f"IRQ index {req.index} does not exist")
        irq = self.irqs[req.index]
        fds = msg.fds
        if dtype != P.VFIO_IRQ_SET_DATA_EVENTFD and fds:
            raise OSError(errno.EINVAL, "file descriptors sent without DATA_EVENTFD")
        if req.count == 0:
            if dtype != P.VFIO_IRQ_SET_DATA_NONE or action != P.VFIO_IRQ_SET_ACTION_TRIGGER:
                raise OSError(errno.EINVAL, "count 0 is only valid as DATA_NONE|ACTION_TRIGGER "
                              "(disable the index)")
            irq.close_all()
            self._mirror_irq_enable(req.index)
            return b"", []
        if req.start + req.count > irq.count:
            raise OSError(errno.EINVAL, f"vectors {req.start}..{req.start + req.count - 1} of IRQ "
                          f"index {req.index}: the device has {irq.count}")
        vectors = range(req.start, req.start + req.count)
        if dtype == P.VFIO_IRQ_SET_DATA_BOOL:
            if len(data) < req.count:
                raise OSError(errno.EINVAL, f"DATA_BOOL needs {req.count} bytes, got {len(data)}")
            chosen = [v for i, v in enumerate(vectors) if data[i]]
        else:
            chosen = list(vectors)
        if action == P.VFIO_IRQ_SET_ACTION_TRIGGER:
            if dtype == P.VFIO_IRQ_SET_DATA_EVENTFD:
                if fds and len(fds) != req.count:
                    raise OSError(errno.EINVAL, f"{len(fds)} eventfds for {req.count} vectors")
                for i, fd in enumerate(fds):
                    check_eventfd(fd, f"SET_IRQS index {req.index} vector {req.start + i}")
                new = msg.take_fds()
                for i, v in enumerate(vectors):
                    close_fd_quietly(irq.fds[v])
                    irq.fds[v] = new[i] if new else -1
                    irq.pending[v] = False
                self._mirror_irq_enable(req.index)
            else:
                for v in chosen:
                    self.raise_irq(req.index, v)
            return b"", []
        if dtype == P.VFIO_IRQ_SET_DATA_EVENTFD:
            raise OSError(errno.ENOTSUP, "mask/unmask notification eventfds are not supported")
        if req.index != VFIO_PCI_INTX_IRQ_INDEX:
            raise OSError(errno.EINVAL, f"IRQ index {req.index} is not maskable")
        for v in chosen:
            if action == P.VFIO_IRQ_SET_ACTION_MASK:
                irq.masked[v] = True
            else:
                irq.masked[v] = False
                if irq.pending[v]:
                    irq.pending[v] = False
                    self.raise_irq(req.index, v)
        return b"", []

    def _mirror_irq_enable(self, index: int) -> None:
        irq = self.irqs.get(index)
        if irq is None:
            return
        active = [v for v, fd in enumerate(irq.fds) if fd >= 0]
        if index == VFIO_PCI_MSI_IRQ_INDEX:
            self.config.set_msi_enabled(bool(active), active[-1] + 1 if active else 0)
        elif index == VFIO_PCI_MSIX_IRQ_INDEX:
            self.config.set_msix_enabled(bool(active))

    def _check_access(self, index: int, offset: int, count: int, write: bool) -> None:
        if count == 0 or count > self.max_data_xfer_size:
            raise OSError(errno.EINVAL, f"access of {count} bytes (1..{self.max_data_xfer_size})")
        flags, size, _, _ = self._region_spec_info(index) if index < self.visible_regions \
            else (0, 0, (), -1)
        if size == 0:
            raise OSError(errno.EINVAL, f"region {index} does not exist")
        if offset + count > size:
            raise OSError(errno.EINVAL, f"access of {count} bytes at {offset:#x} is outside "
                          f"region {index} (size {size:#x})")
        need = P.VFIO_REGION_INFO_FLAG_WRITE if write else P.VFIO_REGION_INFO_FLAG_READ
        if not flags & need:
            raise OSError(errno.EINVAL, f"region {index} is not "
                          f"{'writable' if write else 'readable'}")

    def _pieces(self, index: int, offset: int, count: int) -> list[tuple[int, int, str]]:
        """Split an access into (offset, length, kind) by mmap areas and MSI-X structures."""
        r = self.regions.get(index)
        special = r.special if r is not None else []
        out = []
        pos, end = offset, offset + count
        while pos < end:
            kind, stop = "model", end
            for s, e, k in special:
                if s <= pos < e:
                    kind, stop = k, min(e, end)
                    break
                if pos < s < stop:
                    stop = s
            if kind == "model" and index == self.control_index:
                kind = "control"
            out.append((pos, stop - pos, kind))
            pos = stop
        return out

    def handle_region_read(self, msg: Message) -> tuple[bytes, list[int]]:
        req = _unpack(P.vfio_user_region_access, msg)
        self._check_access(req.region, req.offset, req.count, write=False)
        if req.region == VFIO_PCI_CONFIG_REGION_INDEX:
            data = self.model.config_read(req.offset, req.count)
        else:
            data = b"".join(self._read_piece(req.region, off, n, kind)
                            for off, n, kind in self._pieces(req.region, req.offset, req.count))
        if len(data) != req.count:
            raise OSError(errno.EIO, f"model returned {len(data)} bytes for a {req.count}-byte "
                          "read")
        return bytes(P.vfio_user_region_access(req.offset, req.region, req.count)) + data, []

    def _read_piece(self, index: int, off: int, n: int, kind: str) -> bytes:
        if kind == "mem":
            mm = self.regions[index].mm
            assert mm is not None
            return mm[off:off + n]
        if kind == "msix_table":
            assert self.config.msix is not None
            base = off - self.config.msix.table_offset
            return bytes(self.msix_table[base:base + n])
        if kind == "msix_pba":
            return self._pba_bytes(off, n)
        if kind == "control":
            return bytes(n)
        return bytes(self.model.region_read(index, off, n))

    def _pba_bytes(self, off: int, n: int) -> bytes:
        msix = self.config.msix
        assert msix is not None
        bits = 0
        for v, pending in enumerate(self.irqs[VFIO_PCI_MSIX_IRQ_INDEX].pending):
            bits |= int(pending) << v
        raw = bits.to_bytes(msix.pba_size, "little")
        base = off - msix.pba_offset
        return raw[base:base + n]

    def handle_region_write(self, msg: Message) -> tuple[bytes, list[int]]:
        """A write; returns (reply, fds). Sets `self.kicked` when the model must be polled now
        (a doorbell that came as a message, or a kick of the control region)."""
        req = _unpack(P.vfio_user_region_access, msg)
        data = msg.payload[16:]
        if len(data) != req.count:
            raise OSError(errno.EINVAL, f"REGION_WRITE carries {len(data)} data bytes but count "
                          f"is {req.count}")
        self._check_access(req.region, req.offset, req.count, write=True)
        if req.region == VFIO_PCI_CONFIG_REGION_INDEX:
            self.model.config_write(req.offset, bytes(data))
        else:
            pos = 0
            for off, n, kind in self._pieces(req.region, req.offset, req.count):
                chunk = bytes(data[pos:pos + n])
                pos += n
                if kind == "mem":
                    if req.region == self.control_index:
                        continue  # the control page is the server's to write
                    mm = self.regions[req.region].mm
                    assert mm is not None
                    mm[off:off + n] = chunk
                    self.kicked = True
                elif kind == "control":
                    self.kicked = True  # KICK: the loop polls at once, nothing else to do
                elif kind == "msix_table":
                    assert self.config.msix is not None
                    base = off - self.config.msix.table_offset
                    self.msix_table[base:base + n] = chunk
                elif kind == "msix_pba":
                    pass  # read-only
                else:
                    self.model.region_write(req.region, off, chunk)
        return bytes(P.vfio_user_region_access(req.offset, req.region, req.count)), []

    kicked = False

    def handle_dma_map(self, msg: Message) -> tuple[bytes, list[int]]:
        req = _unpack(P.vfio_user_dma_map, msg)
        if req.flags & ~(P.VFIO_USER_F_DMA_REGION_READ | P.VFIO_USER_F_DMA_REGION_WRITE):
            raise OSError(errno.EINVAL, f"unknown DMA_MAP flags {req.flags:#x}")
        if len(msg.fds) > 1:
            raise OSError(errno.EINVAL, f"DMA_MAP carries {len(msg.fds)} file descriptors; at "
                          "most one")
        if msg.fds:
            check_sealed_memfd(msg.fds[0], f"DMA_MAP of IOVA {req.addr:#x}+{req.size:#x}")
        # Without an fd (QEMU's ROM, BIOS and BAR ranges) the range is recorded but the model
        # cannot reach it: DMA_READ/DMA_WRITE are not implemented.
        fd = msg.fds[0] if msg.fds else None
        readable = bool(req.flags & P.VFIO_USER_F_DMA_REGION_READ)
        writable = bool(req.flags & P.VFIO_USER_F_DMA_REGION_WRITE)
        self.dma.add(req.addr, req.size, fd, req.offset, readable, writable)
        try:
            self.model.on_dma_map(req.addr, req.size, fd, req.offset, readable, writable)
        except BaseException as e:
            region = self.dma.region_at(req.addr)
            if region is not None:
                self.dma.remove([region])
            if isinstance(e, WarpdriveError):  # the model's own refusal: keep its errno
                raise OSError(e.errno or errno.EIO, str(e)) from None
            raise
        return b"", []  # the fd is closed by the caller: the mmap keeps the memory

    def handle_dma_unmap(self, msg: Message) -> tuple[bytes, list[int]]:
        req = _unpack(P.vfio_user_dma_unmap, msg)
        dma = self.dma
        # As the kernel's type1: FLAG_ALL (with IOVA 0, size 0) drops every map; a range drops
        # every map inside it (QEMU unmaps whole sections and vIOMMU invalidations at once),
        # succeeds when it covers none and fails with EINVAL when it would split one.
        if req.flags == VFIO_DMA_UNMAP_FLAG_ALL:
            if req.addr or req.size:
                raise OSError(errno.EINVAL, "DMA_UNMAP with FLAG_ALL needs IOVA 0 and size 0")
            regions = dma.covered(0, 1 << 64)
        elif req.flags:
            raise OSError(errno.ENOTSUP, f"DMA_UNMAP flags {req.flags:#x} (dirty bitmaps) are not "
                          "supported")
        else:
            regions = dma.covered(req.addr, req.size)
        held = dma.held_after_unmap
        for r in regions:
            self.call_model(self.model.on_dma_unmap, r.iova, r.size)
        dma.remove(regions)
        if dma.held_after_unmap > held:
            self._log(f"model still holds a view of IOVA {req.addr:#x}+{req.size:#x} after "
                      "DMA_UNMAP: access revoked (it now sees zero pages)")
        return bytes(P.vfio_user_dma_unmap(24, req.flags, req.addr, req.size)), []

    def handle_reset(self, msg: Message) -> tuple[bytes, list[int]]:
        self.config.reset()
        for index, irq in self.irqs.items():
            irq.masked = [False] * irq.count
            irq.pending = [False] * irq.count
            self._mirror_irq_enable(index)
        if self.config.msix is not None:
            for i in range(len(self.msix_table)):
                self.msix_table[i] = 1 if i % 16 == 12 else 0
        for index, r in self.regions.items():
            if r.mm is not None and index != self.control_index:
                r.mm[:] = bytes(len(r.mm))
        self.model.reset()
        return b"", []

    HANDLERS: dict[int, Handler] = {
        P.VFIO_USER_DMA_MAP: handle_dma_map,
        P.VFIO_USER_DMA_UNMAP: handle_dma_unmap,
        P.VFIO_USER_DEVICE_GET_INFO: handle_device_get_info,
        P.VFIO_USER_DEVICE_GET_REGION_INFO: handle_region_info,
        P.VFIO_USER_DEVICE_GET_IRQ_INFO: handle_irq_info,
        P.VFIO_USER_DEVICE_SET_IRQS: handle_set_irqs,
        P.VFIO_USER_REGION_READ: handle_region_read,
        P.VFIO_USER_REGION_WRITE: handle_region_write,
        P.VFIO_USER_DEVICE_RESET: handle_reset,
    }


def _link_caps(chain: list[bytes], start: int) -> bytes:
    """Join capabilities into one chain, filling each header's `next` (offsets from the start
    of the region info, the first one at `start`)."""
    out = bytearray()
    for i, cap in enumerate(chain):
        c = bytearray(cap)
        nxt = start + len(out) + len(c) if i + 1 < len(chain) else 0
        c[4:8] = nxt.to_bytes(4, "little")
        out += c
    return bytes(out)


def _unpack(cls: type[Any], msg: Message) -> Any:
    try:
        return P.unpack(cls, msg.payload, P.command_name(msg.command))
    except ProtocolError as e:
        raise OSError(errno.EINVAL, e.what) from None


class _ModelHost(DeviceHost):
    """The function's side of the one-way host interface: the only object its model sees."""

    def __init__(self, fn: Function) -> None:
        self._fn = fn

    @property
    def dma(self) -> ClientMemory:
        return self._fn.dma

    @property
    def config(self) -> PciConfig:
        return self._fn.config

    def region_memory(self, index: int) -> memoryview:
        return self._fn.region_memory(index)

    def region_address(self, index: int) -> int:
        return self._fn.region_address(index)

    def raise_irq(self, index: int, vector: int) -> bool:
        return self._fn.raise_irq(index, vector)

    def irq_assigned(self, index: int, vector: int) -> bool:
        return self._fn.irq_assigned(index, vector)

    def irq_enabled(self, index: int, vector: int) -> bool:
        return self._fn.irq_enabled(index, vector)

    def stats(self) -> dict[str, Any]:
        return self._fn.stats()

    def log(self, msg: str) -> None:
        self._fn.log(msg)

    def messages_fd(self) -> int:
        return self._fn.messages_fd()
