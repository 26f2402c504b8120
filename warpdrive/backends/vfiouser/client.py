"""The vfio-user client backend: a `Device` and a `DmaSpace` whose kernel is a socket.

    dev = warpdrive.open("vfio-user:/run/model.sock")      # or open_vfio_user(path)

Everything goes through the same interfaces as the kernel backends: `map_bar` maps the sparse-mmap
areas of a region through the fd the server sends with GET_REGION_INFO and traps the rest into
REGION_READ/REGION_WRITE messages; DMA buffers are memfds passed with DMA_MAP (so only
memfd-backed memory can be mapped: `needs_fd`); interrupts are eventfds passed with SET_IRQS.

Doorbells. With `mmap_doorbells=True` (default) a doorbell in a mapped area is one store into
shared memory that the server polls: no syscall, no message. `mmap_doorbells=False` maps nothing,
so every register access is a message ("message doorbell", the syscall path, for comparison).

Posted writes. In message-doorbell mode trapped BAR writes are *posted* (the No_reply flag: one
sendmsg, no wait for a reply). That is the fair comparison: a store to MMIO is a posted write on
PCI too, and QEMU's vfio-user client posts BAR writes the same way. Ordering still holds because
every access travels the same socket and the server handles messages in order (a later read sees
the write). With mapped doorbells the trapped writes wait for their reply instead: a posted
message can be overtaken by a later store into the mapped page (the server may poll the page
before it reads the socket), which would let a doorbell reach the model before the register
writes that set up the work -- PCI never reorders posted writes, so the driver must not see that.
The cost of posting: a failed posted write is only logged by the server. Config-space writes
always wait. `posted_writes=True/False` overrides the choice.

Replies are awaited at most `timeout` seconds; a server that dies or hangs is a clear error
(`ConnectionLostError` / `DeviceTimeoutError`), never a hang, and the connection is then closed.

Shared memory carries no error. On the mapped-doorbell path nothing is sent, so a dead server
would only show as work that never completes. warpdrive's server offers a control region
(`WARPDRIVE_CTL_*` in `warpdrive.uapi.vfio_user`): a heartbeat its loop bumps, and a need-wakeup
flag. `watchdog()`, which drivers call while they wait, reads the heartbeat (no syscall) and only
when it has stood still for a while asks the socket whether the peer hung up (one poll()), so a
dead server is a `ConnectionLostError` within tens of milliseconds, at no cost per job. After every
store into a mapped doorbell the device reads the need-wakeup flag (after a full memory barrier,
so the store and the server's setting of the flag cannot both be missed) and, when the server
has stopped polling, wakes it with one posted write to the region's KICK register: the only
syscall a client pays, and only after the server went idle (io_uring's SQPOLL does the same).
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ... import syscalls as sc
from ...device import Device, IrqInfo, RegionInfo
from ...dma import DmaMapping, DmaSpace
from ...errors import (
    ConnectionLostError,
    DeviceNotFoundError,
    DeviceTimeoutError,
    InvalidArgumentError,
    ProtocolError,
    UnsupportedError,
    WarpdriveError,
    from_errno,
)
from ...forkguard import ForkSafe, close_fd_quietly
from ...iova import U64_MAX, IovaRange
from ...memory import MemoryKind
from ...mmio import Doorbell, Mmio, Wake
from ...uapi import vfio_user as P
from ...uapi.vfio import (
    VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_NUM_REGIONS,
    VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
    VFIO_REGION_INFO_CAP_TYPE,
    vfio_region_info_cap_type,
)
from .wire import Channel, FrameError, PeerClosed, WireTimeout, sock_peer_creds

DEFAULT_TIMEOUT = 5.0  # seconds; QEMU's client uses the same default (x-msg-timeout)
_CLIENT_MAX_FDS = 16  # what we accept in one reply (we expect at most one)
_PEER_STALE_S = 0.03  # heartbeat unchanged this long (or no heartbeat): ask the socket


class VfioUserConnection(ForkSafe):
    """One client connection: request/reply with deadlines, posted commands, VERSION."""

    def __init__(self, path: str, *, timeout: float = DEFAULT_TIMEOUT,
                 peer_status: Callable[[], str | None] | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.peer_status = peer_status
        self.server_caps = P.Capabilities()
        self.server_version = (0, 0)
        self._lock = threading.Lock()
        self._next_id = 0
        self._broken: WarpdriveError | None = None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except OSError as e:
            sock.close()
            err = e.errno or errno.EIO
            hint = ("is the device model running? start one with `warpdrive emu <model> "
                    "--socket PATH`, or use warpdrive.open('emu:<model>'); for broker:PATH, "
                    "is `warpdrive serve` running on that socket?")
            if isinstance(e, TimeoutError):
                raise DeviceTimeoutError(f"connecting to vfio-user server {path}",
                                         hint=hint) from None
            if err in (errno.ENOENT, errno.ECONNREFUSED):
                raise DeviceNotFoundError(f"no vfio-user server listening on {path}", errno=err,
                                          hint=hint) from None
            raise from_errno(err, f"connecting to vfio-user server {path}") from None
        self.chan = Channel(sock, max_msg_size=(1 << 20) + 4096)
        self._fork_register()

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._broken is None and self.chan.sock.fileno() >= 0

    def _alloc_id(self) -> int:
        self._next_id = (self._next_id + 1) & 0xFFFF
        return self._next_id

    def _check_usable(self) -> None:
        self._check_alive()
        if self._broken is not None:
            raise self._broken

    def _fail(self, err: WarpdriveError) -> WarpdriveError:
        """The stream can no longer be trusted: remember why and close it."""
        if self._broken is None:
            self._broken = err
            self.chan.close()
        return err

    def _lost(self, detail: str) -> WarpdriveError:
        note = self.peer_status() if self.peer_status is not None else None
        return ConnectionLostError(
            f"vfio-user server {self.path} closed the connection ({detail})"
            + (f"; {note}" if note else ""),
            hint="the device model exited or crashed; open the device again")

    def request(self, command: int, payload: bytes = b"", fds: list[int] | tuple[int, ...] = (),
                *, what: str) -> tuple[bytes, list[int]]:
        """Send a command and wait for its reply; return (payload, fds). Error replies raise the
        project error for the server's errno."""
        with self._lock:
            self._check_usable()
            msg_id = self._alloc_id()
            deadline = time.monotonic() + self.timeout
            name = P.command_name(command)
            try:
                self.chan.send(msg_id, command, P.VFIO_USER_F_TYPE_COMMAND, payload, fds,
                               deadline=deadline)
                while True:
                    reply = self.chan.recv(deadline)
                    if reply.is_command:  # server -> client commands are not supported
                        reply.close_fds()
                        if not reply.no_reply:
                            self.chan.send(reply.msg_id, reply.command,
                                           P.VFIO_USER_F_TYPE_REPLY | P.VFIO_USER_F_ERROR,
                                           error_no=errno.ENOTSUP, deadline=deadline)
                        continue
                    if reply.msg_id != msg_id or reply.command != command:
                        reply.close_fds()  # e.g. a stray reply to a posted write
                        continue
                    break
            except PeerClosed as e:
                raise self._fail(self._lost(str(e))) from None
            except WireTimeout:
                raise self._fail(DeviceTimeoutError(
                    f"no reply to {name} ({what}) from vfio-user server {self.path} within "
                    f"{self.timeout} s",
                    hint="the device model is wedged or overloaded; the connection was closed, "
                    "open the device again")) from None
            except FrameError as e:
                raise self._fail(ProtocolError(
                    f"vfio-user server {self.path} sent a malformed reply to {name}: "
                    f"{e.reason}")) from None
        if reply.is_error:
            reply.close_fds()
            err = reply.error_no or errno.EIO
            raise from_errno(err, f"vfio-user server {self.path} refused {name} ({what})",
                             hint="the server's stderr says why")
        return reply.payload, reply.take_fds()

    def check_peer(self, why: str) -> None:
        """Raise ConnectionLostError if the server hung up (one poll(); nothing is read)."""
        self._check_usable()
        p = select.poll()
        p.register(self.chan.sock, select.POLLRDHUP)  # POLLHUP and POLLERR are always reported
        for _, ev in p.poll(0):
            if ev & (select.POLLHUP | select.POLLERR | select.POLLRDHUP | select.POLLNVAL):
                raise self._fail(self._lost(why))

    def post(self, command: int, payload: bytes, *, what: str) -> None:
        """Send a command with No_reply (a posted write): one sendmsg, no wait."""
        with self._lock:
            self._check_usable()
            try:
                self.chan.send(self._alloc_id(), command,
                               P.VFIO_USER_F_TYPE_COMMAND | P.VFIO_USER_F_NO_REPLY, payload,
                               deadline=time.monotonic() + self.timeout)
            except PeerClosed as e:
                raise self._fail(self._lost(str(e))) from None
            except WireTimeout:
                raise self._fail(DeviceTimeoutError(
                    f"vfio-user server {self.path} did not accept {what} within "
                    f"{self.timeout} s (its socket buffer stayed full)",
                    hint="the device model is wedged; open the device again")) from None

    def negotiate(self, major: int = P.VFIO_USER_MAJOR, minor: int = P.VFIO_USER_MINOR) -> None:
        """VFIO_USER_VERSION: propose our version and capabilities, check the server's answer."""
        ours = P.Capabilities(max_msg_fds=_CLIENT_MAX_FDS, max_data_xfer_size=1 << 20,
                              pgsizes=sc.PAGE_SIZE, extra={P.WARPDRIVE_CTL_CAPABILITY: True})
        try:
            payload, fds = self.request(P.VFIO_USER_VERSION, P.pack_version(major, minor, ours),
                                        what=f"protocol {major}.{minor}")
        except ConnectionLostError as e:
            raise UnsupportedError(
                f"vfio-user server {self.path} closed the connection on VERSION {major}.{minor}",
                hint="it does not speak this protocol version") from e
        except WarpdriveError as e:
            if e.errno in (errno.ENOTSUP, errno.EINVAL):
                self._fail(e)
                raise UnsupportedError(
                    f"vfio-user server {self.path} rejected protocol version {major}.{minor}",
                    errno=e.errno, hint="client and server speak different protocol versions"
                ) from None
            raise
        for fd in fds:
            close_fd_quietly(fd)
        try:
            smajor, sminor, caps = P.unpack_version(payload)
        except ProtocolError as e:
            raise self._fail(ProtocolError(
                f"vfio-user server {self.path} sent a malformed VERSION reply: {e.what}")) from None
        if smajor != major or sminor > minor:
            raise self._fail(ProtocolError(
                f"vfio-user server {self.path} answered VERSION {major}.{minor} with "
                f"{smajor}.{sminor}", hint="the spec requires the same major and a minor no "
                "higher than proposed"))
        if not caps.pgsizes & sc.PAGE_SIZE:
            raise self._fail(UnsupportedError(
                f"vfio-user server {self.path} supports DMA page sizes {caps.pgsizes:#x}, not "
                f"this host's {sc.PAGE_SIZE:#x}"))
        self.server_version = (smajor, sminor)
        self.server_caps = caps

    def close(self) -> None:
        if self._broken is None:
            self._broken = ConnectionLostError(
                f"the connection to vfio-user server {self.path} is closed",
                hint="open the device again")
        self.chan.close()
        self._fork_unregister()

    def _fork_describe(self) -> str:
        return f"vfio-user connection to {self.path}"

    def _fork_invalidate(self) -> None:
        # Close only the child's copy of the fd: the parent's connection stays up.
        self.chan.close()


class VfioUserDmaSpace(DmaSpace):
    """DMA through DMA_MAP/DMA_UNMAP: the server mmaps the buffer's memfd (passed as SCM_RIGHTS).
    Nothing is pinned (the server maps shared memory), so there is no memlock preflight."""

    pins = False
    needs_fd = True
    default_kind = MemoryKind.MEMFD
    # The server maps the memfd and shares its pages: populating them here would only zero
    # them up front on the caller's thread (~2 us a page: a CLI's 16 MiB of member slots took
    # ~30 ms before its first job); on first touch the same work is spread over the run.
    prefault = False

    def __init__(self, conn: VfioUserConnection, name: str, dma_mask: int | None) -> None:
        self.conn = conn
        super().__init__(name, dma_mask)

    def _query_ranges(self) -> list[IovaRange]:
        # vfio-user has no IOVA-range query: any 64-bit IOVA is valid; the DMA mask narrows it.
        return [IovaRange(0, U64_MAX)]

    def _do_map(self, mapping: DmaMapping) -> None:
        buf = mapping.buffer
        assert buf is not None and buf.fd >= 0  # DmaSpace.map enforces needs_fd
        req = P.vfio_user_dma_map(
            argsz=ctypes.sizeof(P.vfio_user_dma_map),
            flags=P.VFIO_USER_F_DMA_REGION_READ
            | (P.VFIO_USER_F_DMA_REGION_WRITE if mapping.writable else 0),
            offset=buf.fd_offset + (mapping.addr - buf.addr), addr=mapping.iova,
            size=mapping.size)
        self.conn.request(P.VFIO_USER_DMA_MAP, bytes(req), [buf.fd],
                          what=f"IOVA {mapping.iova:#x} size {mapping.size:#x}")

    def _do_unmap(self, mapping: DmaMapping) -> None:
        if not self.conn.connected:
            return  # the server is gone, and its mappings with it
        req = P.vfio_user_dma_unmap(argsz=ctypes.sizeof(P.vfio_user_dma_unmap), flags=0,
                                    addr=mapping.iova, size=mapping.size)
        try:
            self.conn.request(P.VFIO_USER_DMA_UNMAP, bytes(req),
                              what=f"IOVA {mapping.iova:#x} size {mapping.size:#x}")
        except ConnectionLostError:
            pass  # it died while we asked: nothing maps the buffer any more


class VfioUserDevice(Device):
    """A PCI function served by a vfio-user server."""

    backend = "vfio-user"
    irq_timeout_hint = ("the device model did not complete or did not signal; check that the "
                        "model process is alive and read its log (stderr)")
    emulator: Any = None  # the launcher's ModelProcess, when the device is a bundled model

    def __init__(self, conn: VfioUserConnection, name: str, dma_mask: int | None, *,
                 mmap_doorbells: bool = True, posted_writes: bool | None = None) -> None:
        self.conn = conn
        self.mmap_doorbells = mmap_doorbells
        # Posting is only safe when nothing is mapped (see the module docstring).
        self.posted_writes = (not mmap_doorbells) if posted_writes is None else posted_writes
        self._regions: dict[int, RegionInfo] = {}
        self._region_fds: dict[int, int] = {}
        self._irq_infos: dict[int, IrqInfo] = {}
        self._disconnect_hooks: list[Callable[[], None]] = []
        super().__init__(name, VfioUserDmaSpace(conn, name, dma_mask))
        payload, _ = conn.request(P.VFIO_USER_DEVICE_GET_INFO,
                                  bytes(P.vfio_user_device_info(argsz=16)), what="device info")
        try:
            info = P.unpack(P.vfio_user_device_info, payload, "DEVICE_GET_INFO reply")
        except ProtocolError as e:
            raise ProtocolError(f"vfio-user server {conn.path}: {e.what}") from None
        if not info.flags & P.VFIO_DEVICE_FLAGS_PCI:
            raise UnsupportedError(f"{name} is not a PCI device (flags {info.flags:#x})",
                                   hint="warpdrive drives PCI functions only")
        self._info = info
        self._hb: Doorbell | None = None  # the control region's heartbeat and wake-up cells
        self._need_wakeup: Doorbell | None = None
        self._kick = b""
        self.kicks = 0  # wake-up kicks sent (a doorbell stored while the server slept)
        self._hb_value = -1
        self._hb_at = time.monotonic()
        self._stale_s = _PEER_STALE_S
        if mmap_doorbells and conn.server_caps.extra.get(P.WARPDRIVE_CTL_CAPABILITY) is True:
            self._map_control()

    def _map_control(self) -> None:
        """Map warpdrive's server control region if the server offers one (module docstring)."""
        wanted = (P.WARPDRIVE_CTL_REGION_TYPE, P.WARPDRIVE_CTL_REGION_SUBTYPE)
        for index in range(P.FIRST_DEVICE_SPECIFIC_REGION, self.num_regions):
            info = self.region_info(index)
            if info.type != wanted or not info.mappable or \
                    info.size < P.WARPDRIVE_CTL_REGION_SIZE:
                continue
            ctl = self.map_bar(index)
            if not ctl.is_mapped(P.WARPDRIVE_CTL_HEARTBEAT, 8) or \
                    ctl.read32(P.WARPDRIVE_CTL_MAGIC_OFF) != P.WARPDRIVE_CTL_MAGIC:
                return
            idle_s = ctl.read32(P.WARPDRIVE_CTL_IDLE_US) / 1e6
            self._stale_s = max(_PEER_STALE_S, 3 * idle_s)
            self._hb = ctl.doorbell(P.WARPDRIVE_CTL_HEARTBEAT, 64)
            self._need_wakeup = ctl.doorbell(P.WARPDRIVE_CTL_NEED_WAKEUP, 32)
            self._kick = bytes(P.vfio_user_region_access(P.WARPDRIVE_CTL_KICK, index, 4)) + \
                bytes(4)
            return

    @property
    def persistent_id(self) -> str | None:
        if self.emulator is not None:
            return None  # a model this process started: it goes away with the process
        try:
            pid = sock_peer_creds(self.conn.chan.sock)[0]
        except OSError:
            pid = 0
        return f"vfio-user:{os.path.realpath(self.conn.path)}:{pid}"  # a restarted server differs

    # -- Device hooks -----------------------------------------------------------------------
    @property
    def num_regions(self) -> int:
        return int(self._info.num_regions)

    @property
    def num_irqs(self) -> int:
        return int(self._info.num_irqs)

    @property
    def reset_supported(self) -> bool:
        return bool(self._info.flags & P.VFIO_DEVICE_FLAGS_RESET)

    def region_info(self, index: int) -> RegionInfo:
        self._check_open()
        cached = self._regions.get(index)
        if cached is not None:
            return cached
        if not 0 <= index < self.num_regions:
            raise InvalidArgumentError(f"{self.name} has no region {index} "
                                       f"(it has {self.num_regions})")
        argsz = ctypes.sizeof(P.vfio_region_info)
        for _ in range(3):  # the reply says how big argsz must be for the capabilities
            req = P.vfio_region_info(argsz=argsz, index=index)
            payload, fds = self.conn.request(P.VFIO_USER_DEVICE_GET_REGION_INFO, bytes(req),
                                             what=f"region {index}")
            try:
                reply = P.unpack(P.vfio_region_info, payload, "DEVICE_GET_REGION_INFO reply")
            except ProtocolError as e:
                for fd in fds:
                    close_fd_quietly(fd)
                raise ProtocolError(f"vfio-user server {self.conn.path}: {e.what}") from None
            # A larger argsz asks for a second call; the CAPS flag may come with it (as from the
            # kernel) or only once the capabilities fit (servers that QEMU's client accepts).
            if reply.argsz > argsz:
                for fd in fds:
                    close_fd_quietly(fd)
                argsz = reply.argsz
                continue
            break
        else:
            raise ProtocolError(f"vfio-user server {self.conn.path} keeps growing argsz for "
                                f"region {index}")
        info = self._parse_region(reply, payload, fds)
        self._regions[index] = info
        return info

    def _parse_region(self, reply: Any, payload: bytes, fds: list[int]) -> RegionInfo:
        fd = fds[0] if fds else -1
        for extra in fds[1:]:
            close_fd_quietly(extra)
        mmap_flag = bool(reply.flags & P.VFIO_REGION_INFO_FLAG_MMAP)
        if not mmap_flag and fd >= 0:
            close_fd_quietly(fd)
            fd = -1
        sparse: tuple[tuple[int, int], ...] | None = None
        msix_mappable = False
        rtype: tuple[int, int] | None = None
        if reply.flags & P.VFIO_REGION_INFO_FLAG_CAPS and reply.cap_offset:
            pos, seen = reply.cap_offset, set()
            while pos and pos not in seen and pos + 8 <= len(payload):
                seen.add(pos)
                hdr = P.vfio_info_cap_header.from_buffer_copy(payload, pos)
                if hdr.id == P.VFIO_REGION_INFO_CAP_SPARSE_MMAP and pos + 16 <= len(payload):
                    cap = P.vfio_region_info_cap_sparse_mmap.from_buffer_copy(payload, pos)
                    areas = []
                    for i in range(cap.nr_areas):
                        at = pos + 16 + 16 * i
                        if at + 16 > len(payload):
                            break
                        a = P.vfio_region_sparse_mmap_area.from_buffer_copy(payload, at)
                        if a.size:
                            areas.append((int(a.offset), int(a.size)))
                    sparse = tuple(areas)
                elif hdr.id == VFIO_REGION_INFO_CAP_TYPE and pos + 16 <= len(payload):
                    t = vfio_region_info_cap_type.from_buffer_copy(payload, pos)
                    rtype = (int(t.type), int(t.subtype))
                elif hdr.id == VFIO_REGION_INFO_CAP_MSIX_MAPPABLE:
                    msix_mappable = True
                pos = hdr.next
        if fd >= 0:
            self._region_fds[reply.index] = fd
        return RegionInfo(
            index=int(reply.index), size=int(reply.size), offset=int(reply.offset),
            readable=bool(reply.flags & P.VFIO_REGION_INFO_FLAG_READ),
            writable=bool(reply.flags & P.VFIO_REGION_INFO_FLAG_WRITE),
            mappable=mmap_flag and fd >= 0, sparse_areas=sparse, msix_mappable=msix_mappable,
            type=rtype)

    def _chunks(self, offset: int, size: int) -> list[tuple[int, int]]:
        step = max(1, min(self.conn.server_caps.max_data_xfer_size, 1 << 20))
        return [(offset + i, min(step, size - i)) for i in range(0, size, step)]

    def _region_read(self, info: RegionInfo, offset: int, size: int) -> bytes:
        out = bytearray()
        for off, n in self._chunks(offset, size):
            req = P.vfio_user_region_access(offset=off, region=info.index, count=n)
            payload, fds = self.conn.request(P.VFIO_USER_REGION_READ, bytes(req),
                                             what=f"{n} bytes at region {info.index}+{off:#x}")
            for fd in fds:
                close_fd_quietly(fd)
            data = payload[16:]
            if len(data) != n:
                raise ProtocolError(f"vfio-user server {self.conn.path} returned {len(data)} "
                                    f"bytes for a {n}-byte read of region {info.index}")
            out += data
        return bytes(out)

    def _region_write(self, info: RegionInfo, offset: int, data: bytes) -> None:
        posted = self.posted_writes and info.index < VFIO_PCI_NUM_REGIONS and \
            info.index != VFIO_PCI_CONFIG_REGION_INDEX
        for off, n in self._chunks(offset, len(data)):
            body = bytes(P.vfio_user_region_access(offset=off, region=info.index, count=n)) + \
                data[off - offset:off - offset + n]
            what = f"{n} bytes at region {info.index}+{off:#x}"
            if posted:
                self.conn.post(P.VFIO_USER_REGION_WRITE, body, what=what)
            else:
                self.conn.request(P.VFIO_USER_REGION_WRITE, body, what=what)

    def _region_post(self, info: RegionInfo, offset: int, data: bytes) -> None:
        """A BAR write sent with No_reply whatever `posted_writes` says: its caller chose a
        register whose writes may be overtaken by later stores into a mapped page
        (`Mmio.doorbell(posted=True)`). Config space always waits."""
        if info.index >= VFIO_PCI_NUM_REGIONS or info.index == VFIO_PCI_CONFIG_REGION_INDEX or \
                len(data) > self.conn.server_caps.max_data_xfer_size:
            self._region_write(info, offset, data)
            return
        body = bytes(P.vfio_user_region_access(offset=offset, region=info.index,
                                               count=len(data))) + data
        self.conn.post(P.VFIO_USER_REGION_WRITE, body,
                       what=f"{len(data)} bytes at region {info.index}+{offset:#x}")

    def _mmap_region(self, info: RegionInfo, offset: int, size: int, prot: int,
                     fixed_addr: int) -> None:
        fd = self._region_fds.get(info.index, -1)
        if fd < 0:
            raise UnsupportedError(f"region {info.index} of {self.name} came without a file "
                                   "descriptor to map")
        sc.mmap(size, prot, sc.MAP_SHARED | sc.MAP_FIXED, fd, info.offset + offset, fixed_addr,
                what=f"mmap of region {info.index}+{offset:#x} ({size:#x} bytes) of {self.name}")

    def map_bar(self, index: int, *, trap_only: bool = False) -> Mmio:
        mmio = super().map_bar(index, trap_only=trap_only or not self.mmap_doorbells)
        if self._need_wakeup is not None:
            # After each store into a mapped doorbell: fence, load need-wakeup, kick if set.
            mmio.set_wake(Wake(self._need_wakeup, self._kick_server))
        return mmio

    def _kick_server(self) -> None:
        """A doorbell was stored while the server had stopped polling: tell it."""
        self.kicks += 1
        self.conn.post(P.VFIO_USER_REGION_WRITE, self._kick, what="a wake-up kick")

    def watchdog(self) -> None:
        """ConnectionLostError if the server is gone; a load of its heartbeat while it runs, one
        poll() of the socket once the heartbeat stood still for a while (module docstring)."""
        now = time.monotonic()
        hb = self._hb
        if hb is not None:
            value = hb.read()
            if value != self._hb_value:
                self._hb_value, self._hb_at = value, now
                return
        if now - self._hb_at < self._stale_s:
            return
        self._hb_at = now
        self.conn.check_peer("noticed while waiting for the device to complete work")

    def irq_info(self, index: int) -> IrqInfo:
        self._check_open()
        cached = self._irq_infos.get(index)
        if cached is not None:
            return cached
        if not 0 <= index < self.num_irqs:
            raise InvalidArgumentError(f"{self.name} has no IRQ index {index}")
        payload, fds = self.conn.request(P.VFIO_USER_DEVICE_GET_IRQ_INFO,
                                         bytes(P.vfio_irq_info(argsz=16, index=index)),
                                         what=f"IRQ index {index}")
        for fd in fds:
            close_fd_quietly(fd)
        try:
            r = P.unpack(P.vfio_irq_info, payload, "DEVICE_GET_IRQ_INFO reply")
        except ProtocolError as e:
            raise ProtocolError(f"vfio-user server {self.conn.path}: {e.what}") from None
        info = IrqInfo(index=index, count=int(r.count),
                       eventfd=bool(r.flags & P.VFIO_IRQ_INFO_EVENTFD),
                       maskable=bool(r.flags & P.VFIO_IRQ_INFO_MASKABLE),
                       automasked=bool(r.flags & P.VFIO_IRQ_INFO_AUTOMASKED),
                       noresize=bool(r.flags & P.VFIO_IRQ_INFO_NORESIZE))
        self._irq_infos[index] = info
        return info

    def _set_irqs(self, flags: int, index: int, start: int, count: int,
                  fds: list[int] | tuple[int, ...] = ()) -> None:
        req = P.vfio_irq_set(argsz=ctypes.sizeof(P.vfio_irq_set), flags=flags, index=index,
                             start=start, count=count)
        self.conn.request(P.VFIO_USER_DEVICE_SET_IRQS, bytes(req), fds,
                          what=f"IRQ index {index} vectors {start}+{count}")

    def _set_irq_eventfds(self, index: int, start: int, fds: list[int]) -> None:
        per_msg = max(1, min(self.conn.server_caps.max_msg_fds, P.SCM_MAX_FD))
        for i in range(0, len(fds), per_msg):
            chunk = fds[i:i + per_msg]
            self._set_irqs(P.VFIO_IRQ_SET_DATA_EVENTFD | P.VFIO_IRQ_SET_ACTION_TRIGGER, index,
                           start + i, len(chunk), chunk)

    def _disable_irq_index(self, index: int) -> None:
        if not self.conn.connected:
            return  # the server is gone; so is its copy of the eventfds
        try:
            self._set_irqs(P.VFIO_IRQ_SET_DATA_NONE | P.VFIO_IRQ_SET_ACTION_TRIGGER, index, 0, 0)
        except ConnectionLostError:
            pass

    def _unmask_irq(self, index: int, vector: int) -> None:
        self._set_irqs(P.VFIO_IRQ_SET_DATA_NONE | P.VFIO_IRQ_SET_ACTION_UNMASK, index, vector, 1)

    def trigger_irq(self, index: int, vector: int = 0) -> None:
        """Ask the server to fire a vector itself (DATA_NONE|ACTION_TRIGGER): a loopback check
        that interrupts are wired."""
        self._check_open()
        self._set_irqs(P.VFIO_IRQ_SET_DATA_NONE | P.VFIO_IRQ_SET_ACTION_TRIGGER, index, vector, 1)

    def _reset(self) -> None:
        self.conn.request(P.VFIO_USER_DEVICE_RESET, what="device reset")

    def on_disconnect(self, hook: Callable[[], None]) -> None:
        """Run `hook` after the connection is closed (last step of `close()`, after the DMA
        unmaps reached the server): the launcher stops the model process here."""
        self._disconnect_hooks.append(hook)

    def _close_backend(self) -> None:
        try:
            for fd in self._region_fds.values():
                close_fd_quietly(fd)
            self._region_fds.clear()
            self.conn.close()
        finally:
            hooks, self._disconnect_hooks = self._disconnect_hooks, []
            for hook in reversed(hooks):
                hook()

    def _fork_invalidate(self) -> None:
        for fd in self._region_fds.values():
            close_fd_quietly(fd)
        self._region_fds.clear()


def open_vfio_user(socket_path: str, dma_mask: int | None = None, mmap_doorbells: bool = True,
                   **opts: Any) -> VfioUserDevice:
    """Connect to the vfio-user server on `socket_path` and return its device.

    Options: `timeout` (seconds to wait for each reply, default 5), `posted_writes` (default:
    posted when `mmap_doorbells=False`, see the module docstring), `name` (for messages),
    `peer_status` (a callable describing why the server died, used by the launcher)."""
    allowed = {"timeout", "posted_writes", "name", "peer_status"}
    unknown = set(opts) - allowed
    if unknown:
        raise InvalidArgumentError(
            f"unknown vfio-user option(s) {', '.join(sorted(unknown))}",
            hint=f"accepted: dma_mask, mmap_doorbells, {', '.join(sorted(allowed))}")
    path = os.fspath(socket_path)
    conn = VfioUserConnection(path, timeout=float(opts.get("timeout", DEFAULT_TIMEOUT)),
                              peer_status=opts.get("peer_status"))
    try:
        conn.negotiate()
        return VfioUserDevice(conn, str(opts.get("name") or f"vfio-user:{path}"), dma_mask,
                              mmap_doorbells=mmap_doorbells,
                              posted_writes=opts.get("posted_writes"))
    except BaseException:
        conn.close()
        raise
