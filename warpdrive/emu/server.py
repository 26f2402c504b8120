"""The generic vfio-user server: hosts one `DeviceModel` on a UNIX socket, one client at a time.

The framework side of every message lives here (VERSION negotiation, DMA map table, region info
with the sparse-mmap capability and a region fd, config space, the MSI-X table, IRQ eventfds,
reset); the model supplies register behaviour and work (`warpdrive.emu.model`).

Poll loop. A client's store into a mapped doorbell page changes shared memory and sends nothing,
so the server must look. After the last sign of activity (work found by `poll()`, or a message)
it calls `model.poll()` back to back for `spin_s` seconds, checking the socket without blocking in
between; then it sleeps in select() for at most `idle_s` between polls. Socket traffic always wakes
it at once. Trade-off: while spinning a doorbell is seen within microseconds but the server burns
a core; an idle server wakes 1/idle_s times a second (cheap, ~1-2 % of a core at 1 ms) and a
doorbell rung while idle waits up to `idle_s`. Models without mmap areas are not polled at all:
the server blocks until a message arrives. A write that arrives as a REGION_WRITE message into a
mapped area (a client that maps nothing) is applied to the shared memory and polled at once.

Robustness: malformed or unknown messages get error replies carrying an errno; a message whose
size cannot be trusted gets an error reply and the connection is closed; exceptions from the
model become EIO replies (with the traceback on stderr); the server itself keeps serving.
"""

from __future__ import annotations

import collections
import errno
import mmap
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import syscalls as sc
from ..backends.vfiouser.wire import Channel, FrameError, Message, PeerClosed, WireTimeout
from ..errors import InvalidArgumentError, ProtocolError
from ..forkguard import close_fd_quietly
from ..uapi import vfio_user as P
from ..uapi.vfio import (
    VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_NUM_IRQS,
    VFIO_PCI_NUM_REGIONS,
)
from .dma import ClientMemory, DmaFault
from .host import DeviceHost
from .model import DeviceModel, RegionSpec
from .pci_config import MsixInfo, PciConfig

_MESSAGE_TIMEOUT = 5.0  # a peer that starts a message must finish it within this


class _Stop(Exception):
    """Raised by the signal handler to leave the loop."""


class _Disconnect(Exception):
    """Close the current connection (after an unrecoverable protocol error)."""


@dataclass
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


@dataclass
class _Region:
    spec: RegionSpec
    memfd: int = -1
    mm: mmap.mmap | None = None
    addr: int = 0
    special: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, kind)


def _bad_model(model: DeviceModel, what: str) -> InvalidArgumentError:
    """A model that describes an impossible device: the server refuses to serve it."""
    return InvalidArgumentError(f"model {model.name}: {what}",
                                hint="fix the model's regions(), build_config_space() or "
                                "irq_counts()")


class VfioUserServer:
    """Serve `model` on `socket_path`. `serve_forever()` runs until SIGTERM/SIGINT, `stop()`, or
    (with `exit_on_disconnect`) the first client leaving."""

    def __init__(self, model: DeviceModel, socket_path: str, *, exit_on_disconnect: bool = False,
                 accept_timeout: float | None = None, spin_s: float | None = None,
                 idle_s: float | None = None, max_data_xfer_size: int = 1 << 20,
                 max_msg_fds: int = 64, max_dma_maps: int = 65535,
                 ready_fd: int | None = None) -> None:
        self.model = model
        self.socket_path = socket_path
        self.exit_on_disconnect = exit_on_disconnect
        self.accept_timeout = accept_timeout
        self.spin_s = model.poll_spin_s if spin_s is None else spin_s
        self.idle_s = model.poll_idle_s if idle_s is None else idle_s
        self.max_data_xfer_size = max_data_xfer_size
        self.max_msg_fds = max_msg_fds
        self.max_dma_maps = max_dma_maps
        self.ready_fd = ready_fd
        self.stats: collections.Counter[int] = collections.Counter()
        self.messages = 0
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)  # stop() from a thread
        self._chan: Channel | None = None
        self._negotiated = False
        self._listener: socket.socket | None = None
        self._poll_errors = 0
        self._setup_device()

    # -- device setup -----------------------------------------------------------------------
    def _setup_device(self) -> None:
        model = self.model
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
        self.dma = ClientMemory(self.max_dma_maps, bus_master=self._bus_master)
        self.num_regions = max([VFIO_PCI_NUM_REGIONS, *[i + 1 for i in self.regions]])
        counts = model.irq_counts()
        self.num_irqs = max([VFIO_PCI_NUM_IRQS, *[i + 1 for i in counts]])
        self.irqs = {i: _Irq(counts.get(i, 0)) for i in range(self.num_irqs)}
        msix = self.config.msix
        if msix is not None and counts.get(VFIO_PCI_MSIX_IRQ_INDEX, 0) != msix.vectors:
            raise _bad_model(model, f"its MSI-X capability has {msix.vectors} vectors but "
                             f"irq_counts() says {counts.get(VFIO_PCI_MSIX_IRQ_INDEX, 0)}")
        self.msix_table = bytearray()
        if msix is not None:
            self._setup_msix(msix)
        for r in self.regions.values():
            for off, size in r.spec.mmap_areas:
                r.special.append((off, off + size, "mem"))
            r.special.sort()
            for (_, e1, _), (s2, _, _) in zip(r.special, r.special[1:]):
                if s2 < e1:
                    raise _bad_model(model, f"region {r.spec.index} has overlapping mmap areas / "
                                     "MSI-X structures")
            if r.spec.mmap_areas:
                length = sc.page_align_up(r.spec.size)
                r.memfd = sc.memfd_create(f"warpdrive-{model.name}-region{r.spec.index}")
                os.ftruncate(r.memfd, length)
                r.mm = mmap.mmap(r.memfd, length, flags=mmap.MAP_SHARED)
                r.addr = sc.buffer_address(r.mm)
        self.polled = model.polled if model.polled is not None else any(
            r.mm is not None for r in self.regions.values())
        model.attach(_ModelHost(self))

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

    # -- services for the model (through _ModelHost) ----------------------------------------
    def _shared(self, index: int) -> tuple[mmap.mmap, int]:
        r = self.regions.get(index)
        if r is None or r.mm is None:
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
        try:
            os.write(irq.fds[vector], (1).to_bytes(8, "little"))
        except OSError as e:
            self._log(f"signalling IRQ {index} vector {vector} failed: {e}")
            return False
        if index == VFIO_PCI_INTX_IRQ_INDEX:
            irq.masked[vector] = True  # INTx is automasked until the client unmasks it
        return True

    def framework_stats(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "by_command": {P.COMMAND_NAMES.get(c, str(c)): n for c, n in self.stats.items()},
            "dma_faults": self.dma.faults,
            "dma_maps": len(self.dma.mappings()),
            "views_held_after_unmap": self.dma.held_after_unmap,
        }

    # -- lifecycle --------------------------------------------------------------------------
    def stop(self) -> None:
        """Make `serve_forever` return (callable from another thread)."""
        self._stop.set()
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def serve_forever(self) -> None:
        handlers_installed = threading.current_thread() is threading.main_thread()
        old: dict[signal.Signals, Any] = {}
        if handlers_installed:
            for signum in (signal.SIGTERM, signal.SIGINT):
                old[signum] = signal.signal(signum, self._on_signal)
        try:
            self._listen()
            self._accept_loop()
        except _Stop:
            pass
        finally:
            if handlers_installed:
                for signum, h in old.items():
                    signal.signal(signum, h)
            self._shutdown()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop.set()
        raise _Stop()

    def _listen(self) -> None:
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            lst.bind(self.socket_path)
        except OSError as e:
            lst.close()
            raise OSError(e.errno, f"cannot listen on {self.socket_path}: {e.strerror}") from None
        os.chmod(self.socket_path, 0o600)  # the protocol has no authentication: file perms do it
        lst.listen(4)
        self._listener = lst
        if self.ready_fd is not None:
            try:
                os.write(self.ready_fd, b"ready\n")
            finally:
                close_fd_quietly(self.ready_fd)
                self.ready_fd = None

    def _accept_loop(self) -> None:
        assert self._listener is not None
        first = True
        while not self._stop.is_set():
            timeout = self.accept_timeout if first else None
            r, _, _ = select.select([self._listener.fileno(), self._wake_r], [], [], timeout)
            if self._stop.is_set():
                return
            if not r:
                self._log(f"no client connected within {timeout} s; exiting")
                return
            conn, _ = self._listener.accept()
            first = False
            if not self._peer_allowed(conn):
                conn.close()
                continue
            self._serve_connection(conn)
            if self.exit_on_disconnect:
                return

    def _peer_allowed(self, conn: socket.socket) -> bool:
        from ..backends.vfiouser.wire import sock_peer_creds

        pid, uid, _ = sock_peer_creds(conn)
        if uid not in (os.getuid(), 0):
            self._log(f"refusing client pid {pid}: uid {uid} is not ours")
            return False
        return True

    def _shutdown(self) -> None:
        if self._chan is not None:
            self._disconnect()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
        try:
            self.model.close()
        except Exception:
            self._log("model close() failed:\n" + traceback.format_exc())
        for r in self.regions.values():
            if r.mm is not None:
                try:
                    r.mm.close()
                except BufferError:
                    pass  # the model still exports a view; the process is ending anyway
            close_fd_quietly(r.memfd)
            r.memfd = -1
        wake = (self._wake_r, self._wake_w)
        self._wake_r = self._wake_w = -1
        for fd in wake:
            close_fd_quietly(fd)

    # -- one connection ---------------------------------------------------------------------
    def _serve_connection(self, conn: socket.socket) -> None:
        self._chan = Channel(conn, max_msg_size=self.max_data_xfer_size + 4096)
        chan_fd = self._chan.fileno()
        self._negotiated = False
        last_activity = time.monotonic()
        try:
            while not self._stop.is_set():
                if self.polled:
                    if self._poll_model():
                        last_activity = time.monotonic()
                    spinning = time.monotonic() - last_activity < self.spin_s
                    timeout: float | None = 0.0 if spinning else self.idle_s
                else:
                    timeout = None
                r, _, _ = select.select([chan_fd, self._wake_r], [], [], timeout)
                if chan_fd in r:
                    self._handle_one()
                    last_activity = time.monotonic()
                    if self.dma.held_after_unmap:
                        self.dma.reap()
        except (PeerClosed, _Disconnect):
            pass
        finally:
            self._disconnect()

    def _disconnect(self) -> None:
        """Client gone: drop its memory and eventfds; the device state is kept (spec)."""
        model = self.model
        for iova, size, _, _ in self.dma.mappings():
            self._call_model(model.on_dma_unmap, iova, size)
        self.dma.clear()
        for index, irq in self.irqs.items():
            irq.close_all()
            self._mirror_irq_enable(index)
        if self._chan is not None:
            self._chan.close()
            self._chan = None

    def _poll_model(self) -> bool:
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

    def _call_model(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:
            self._log(f"{getattr(fn, '__name__', fn)}() raised:\n" + traceback.format_exc())
            return None

    def _log(self, msg: str) -> None:
        print(f"[vfio-user {self.model.name}] {msg}", file=sys.stderr, flush=True)

    # -- messages ---------------------------------------------------------------------------
    def _handle_one(self) -> None:
        chan = self._chan
        assert chan is not None
        try:
            msg = chan.recv(deadline=time.monotonic() + _MESSAGE_TIMEOUT)
        except FrameError as e:
            self.messages += 1
            self._log(f"bad message: {e.reason}")
            if e.header is not None and not (e.header.flags & P.VFIO_USER_F_NO_REPLY):
                self._send_error(e.header.msg_id, e.header.command, e.errno)
            if e.fatal:
                raise _Disconnect() from None
            return
        except WireTimeout:
            self._log("client started a message and did not finish it within "
                      f"{_MESSAGE_TIMEOUT} s; closing the connection")
            raise _Disconnect() from None
        self.messages += 1
        self.stats[msg.command] += 1
        try:
            self._dispatch(msg)
        finally:
            msg.close_fds()

    def _dispatch(self, msg: Message) -> None:
        if not msg.is_command:
            self._log(f"ignoring a {'reply' if msg.is_reply else f'type-{msg.type}'} message "
                      f"(id {msg.msg_id}, {P.command_name(msg.command)}): this server sends no "
                      "commands")
            return
        handler = self._HANDLERS.get(msg.command)
        try:
            if handler is None:
                known = msg.command in P.COMMAND_NAMES
                raise OSError(errno.ENOTSUP if known else errno.ENOSYS,
                              f"{P.command_name(msg.command)} is not "
                              f"{'supported by this server' if known else 'a vfio-user command'}")
            if not self._negotiated and msg.command != P.VFIO_USER_VERSION:
                raise OSError(errno.EINVAL, "the first message must be VFIO_USER_VERSION")
            payload, fds = handler(self, msg)
        except OSError as e:
            msg.close_fds()  # before replying: the client may check that nothing is left open
            err = e.errno or errno.EIO
            self._log(f"{P.command_name(msg.command)} (id {msg.msg_id}) failed: "
                      f"{e.strerror or e}" + (" [posted: no reply]" if msg.no_reply else ""))
            if not msg.no_reply:
                self._send_error(msg.msg_id, msg.command, err)
            if msg.command == P.VFIO_USER_VERSION and not self._negotiated:
                raise _Disconnect() from None  # spec: close if the version is unacceptable
            return
        except Exception:
            msg.close_fds()
            self._log(f"{P.command_name(msg.command)} (id {msg.msg_id}) crashed:\n"
                      + traceback.format_exc())
            if not msg.no_reply:
                self._send_error(msg.msg_id, msg.command, errno.EIO)
            return
        msg.close_fds()  # fds a handler did not keep are ours to close, before the reply
        if not msg.no_reply:
            assert self._chan is not None
            self._chan.send(msg.msg_id, msg.command, P.VFIO_USER_F_TYPE_REPLY, payload, fds,
                            deadline=time.monotonic() + _MESSAGE_TIMEOUT)

    def _send_error(self, msg_id: int, command: int, err: int) -> None:
        assert self._chan is not None
        try:
            self._chan.send(msg_id, command, P.VFIO_USER_F_TYPE_REPLY | P.VFIO_USER_F_ERROR,
                            error_no=err, deadline=time.monotonic() + _MESSAGE_TIMEOUT)
        except WireTimeout:
            raise _Disconnect() from None

    # -- handlers: each returns (reply payload, fds) or raises OSError(errno, text) ----------
    def _version(self, msg: Message) -> tuple[bytes, list[int]]:
        if self._negotiated:
            raise OSError(errno.EINVAL, "VERSION was already negotiated on this connection")
        try:
            major, minor, caps = P.unpack_version(msg.payload)
        except ProtocolError as e:
            raise OSError(errno.EINVAL, e.what) from None
        if major != P.VFIO_USER_MAJOR:
            raise OSError(errno.ENOTSUP, f"client proposes protocol {major}.{minor}; this server "
                          f"speaks {P.VFIO_USER_MAJOR}.{P.VFIO_USER_MINOR}")
        self.client_caps = caps
        # The reply's capabilities must be a subset of those proposed, and its limits no larger
        # than the client's (QEMU refuses a max_msg_fds above the 16 it offers as "malformed",
        # and a max_dma_maps above its 65535).
        proposed = set(P.unpack_version_keys(msg.payload))

        def limit(name: str, ours: int) -> int:
            return min(ours, getattr(caps, name)) if name in proposed else ours

        ours = P.Capabilities(max_msg_fds=limit("max_msg_fds", self.max_msg_fds),
                              max_data_xfer_size=limit("max_data_xfer_size",
                                                       self.max_data_xfer_size),
                              max_dma_maps=limit("max_dma_maps", self.max_dma_maps),
                              pgsizes=sc.PAGE_SIZE)
        reply = P.pack_version(P.VFIO_USER_MAJOR, min(minor, P.VFIO_USER_MINOR),
                               ours if proposed else None, keys=proposed)
        self._negotiated = True
        return reply, []

    def _device_get_info(self, msg: Message) -> tuple[bytes, list[int]]:
        req = self._unpack(P.vfio_user_device_info, msg)
        if req.argsz < 16:
            raise OSError(errno.EINVAL, f"argsz {req.argsz} is below the 16-byte reply")
        info = P.vfio_user_device_info(16, P.VFIO_DEVICE_FLAGS_RESET | P.VFIO_DEVICE_FLAGS_PCI,
                                       self.num_regions, self.num_irqs)
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

    def _device_get_region_info(self, msg: Message) -> tuple[bytes, list[int]]:
        req = self._unpack(P.vfio_region_info, msg)
        if req.index >= self.num_regions:
            raise OSError(errno.EINVAL, f"region {req.index} does not exist "
                          f"(the device has {self.num_regions})")
        if req.argsz < 32:
            raise OSError(errno.EINVAL, f"argsz {req.argsz} is below the 32-byte reply")
        flags, size, areas, fd = self._region_spec_info(req.index)
        caps = b""
        if areas:
            cap = P.vfio_region_info_cap_sparse_mmap()
            cap.header.id = P.VFIO_REGION_INFO_CAP_SPARSE_MMAP
            cap.header.version = 1
            cap.header.next = 0
            cap.nr_areas = len(areas)
            caps = bytes(cap) + b"".join(
                bytes(P.vfio_region_sparse_mmap_area(off, sz)) for off, sz in areas)
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

    def _device_get_irq_info(self, msg: Message) -> tuple[bytes, list[int]]:
        req = self._unpack(P.vfio_irq_info, msg)
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

    def _device_set_irqs(self, msg: Message) -> tuple[bytes, list[int]]:
        req = self._unpack(P.vfio_irq_set, msg)
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
        active = [fd for fd in irq.fds if fd >= 0]
        if index == VFIO_PCI_MSI_IRQ_INDEX:
            self.config.set_msi_enabled(bool(active), len(irq.fds) if active else 0)
        elif index == VFIO_PCI_MSIX_IRQ_INDEX:
            self.config.set_msix_enabled(bool(active))

    def _check_access(self, index: int, offset: int, count: int, write: bool) -> None:
        if count == 0 or count > self.max_data_xfer_size:
            raise OSError(errno.EINVAL, f"access of {count} bytes (1..{self.max_data_xfer_size})")
        flags, size, _, _ = self._region_spec_info(index) if index < self.num_regions \
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
            out.append((pos, stop - pos, kind))
            pos = stop
        return out

    def _region_read(self, msg: Message) -> tuple[bytes, list[int]]:
        req = self._unpack(P.vfio_user_region_access, msg)
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

    def _region_write(self, msg: Message) -> tuple[bytes, list[int]]:
        req = self._unpack(P.vfio_user_region_access, msg)
        data = msg.payload[16:]
        if len(data) != req.count:
            raise OSError(errno.EINVAL, f"REGION_WRITE carries {len(data)} data bytes but count "
                          f"is {req.count}")
        self._check_access(req.region, req.offset, req.count, write=True)
        if req.region == VFIO_PCI_CONFIG_REGION_INDEX:
            self.model.config_write(req.offset, bytes(data))
        else:
            touched_memory = False
            pos = 0
            for off, n, kind in self._pieces(req.region, req.offset, req.count):
                chunk = bytes(data[pos:pos + n])
                pos += n
                if kind == "mem":
                    mm = self.regions[req.region].mm
                    assert mm is not None
                    mm[off:off + n] = chunk
                    touched_memory = True
                elif kind == "msix_table":
                    assert self.config.msix is not None
                    base = off - self.config.msix.table_offset
                    self.msix_table[base:base + n] = chunk
                elif kind == "msix_pba":
                    pass  # read-only
                else:
                    self.model.region_write(req.region, off, chunk)
            if touched_memory and self.polled:
                self._poll_model()  # a doorbell that came as a message: act on it now
        return bytes(P.vfio_user_region_access(req.offset, req.region, req.count)), []

    def _dma_map(self, msg: Message) -> tuple[bytes, list[int]]:
        req = self._unpack(P.vfio_user_dma_map, msg)
        if req.flags & ~(P.VFIO_USER_F_DMA_REGION_READ | P.VFIO_USER_F_DMA_REGION_WRITE):
            raise OSError(errno.EINVAL, f"unknown DMA_MAP flags {req.flags:#x}")
        if len(msg.fds) > 1:
            raise OSError(errno.EINVAL, f"DMA_MAP carries {len(msg.fds)} file descriptors; at "
                          "most one")
        # Without an fd (QEMU's ROM, BIOS and BAR ranges) the range is recorded but the model
        # cannot reach it: DMA_READ/DMA_WRITE are not implemented.
        self.dma.add(req.addr, req.size, msg.fds[0] if msg.fds else None, req.offset,
                           bool(req.flags & P.VFIO_USER_F_DMA_REGION_READ),
                           bool(req.flags & P.VFIO_USER_F_DMA_REGION_WRITE))
        return b"", []  # the fd is closed by the caller: the mmap keeps the memory

    def _dma_unmap(self, msg: Message) -> tuple[bytes, list[int]]:
        req = self._unpack(P.vfio_user_dma_unmap, msg)
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
            self._call_model(self.model.on_dma_unmap, r.iova, r.size)
        dma.remove(regions)
        if dma.held_after_unmap > held:
            self._log(f"model still holds a view of IOVA {req.addr:#x}+{req.size:#x} after "
                      "DMA_UNMAP: access revoked (it now sees zero pages)")
        return bytes(P.vfio_user_dma_unmap(24, req.flags, req.addr, req.size)), []

    def _device_reset(self, msg: Message) -> tuple[bytes, list[int]]:
        self.config.reset()
        for index, irq in self.irqs.items():
            irq.masked = [False] * irq.count
            irq.pending = [False] * irq.count
            self._mirror_irq_enable(index)
        if self.config.msix is not None:
            self._setup_msix_table_only()
        for r in self.regions.values():
            if r.mm is not None:
                r.mm[:] = bytes(len(r.mm))
        self.model.reset()
        return b"", []

    def _setup_msix_table_only(self) -> None:
        for i in range(len(self.msix_table)):
            self.msix_table[i] = 1 if i % 16 == 12 else 0

    @staticmethod
    def _unpack(cls: type[Any], msg: Message) -> Any:
        try:
            return P.unpack(cls, msg.payload, P.command_name(msg.command))
        except ProtocolError as e:
            raise OSError(errno.EINVAL, e.what) from None

    _HANDLERS: dict[int, Callable[[VfioUserServer, Message], tuple[bytes, list[int]]]] = {
        P.VFIO_USER_VERSION: _version,
        P.VFIO_USER_DMA_MAP: _dma_map,
        P.VFIO_USER_DMA_UNMAP: _dma_unmap,
        P.VFIO_USER_DEVICE_GET_INFO: _device_get_info,
        P.VFIO_USER_DEVICE_GET_REGION_INFO: _device_get_region_info,
        P.VFIO_USER_DEVICE_GET_IRQ_INFO: _device_get_irq_info,
        P.VFIO_USER_DEVICE_SET_IRQS: _device_set_irqs,
        P.VFIO_USER_REGION_READ: _region_read,
        P.VFIO_USER_REGION_WRITE: _region_write,
        P.VFIO_USER_DEVICE_RESET: _device_reset,
    }


class _ModelHost(DeviceHost):
    """The server's side of the one-way host interface: the only object its model sees."""

    def __init__(self, server: VfioUserServer) -> None:
        self._server = server

    @property
    def dma(self) -> ClientMemory:
        return self._server.dma

    @property
    def config(self) -> PciConfig:
        return self._server.config

    def region_memory(self, index: int) -> memoryview:
        return self._server.region_memory(index)

    def region_address(self, index: int) -> int:
        return self._server.region_address(index)

    def raise_irq(self, index: int, vector: int) -> bool:
        return self._server.raise_irq(index, vector)

    def irq_assigned(self, index: int, vector: int) -> bool:
        return self._server.irq_assigned(index, vector)

    def irq_enabled(self, index: int, vector: int) -> bool:
        return self._server.irq_enabled(index, vector)

    def stats(self) -> dict[str, Any]:
        return self._server.framework_stats()

    def log(self, msg: str) -> None:
        print(f"[{self._server.model.name}] {msg}", file=sys.stderr, flush=True)
