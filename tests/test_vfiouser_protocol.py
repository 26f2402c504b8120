"""vfio-user at the message level: a real server process (`python -m warpdrive.emu testdev`, the
same entry point the launcher uses) driven over a real UNIX socket with hand-built messages,
including malformed ones. The server must answer every bad message with an error reply carrying
an errno (or close the connection where the stream can no longer be trusted) and keep serving."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from warpdrive.backends.vfiouser.client import VfioUserConnection
from warpdrive.backends.vfiouser.wire import Channel, Message, PeerClosed
from warpdrive.errors import UnsupportedError
from warpdrive.uapi import vfio_user as P
from warpdrive.uapi.vfio import VFIO_DMA_UNMAP_FLAG_ALL

ROOT = Path(__file__).resolve().parents[1]
CAPS = json.dumps({"capabilities": {"max_msg_fds": 8, "max_data_xfer_size": 1 << 20,
                                    "pgsizes": 4096}}).encode() + b"\0"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A testdev server that keeps serving after a client leaves (no --exit-on-disconnect)."""
    path = str(tmp_path / "testdev.sock")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "warpdrive.emu", "testdev", "--socket", path],
                            env=env, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not os.path.exists(path):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield path
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(10)
    assert rc == 0, proc.stderr.read().decode() if proc.stderr else ""  # SIGTERM: a clean exit
    assert not os.path.exists(path)  # and it removed its socket
    if proc.stderr:
        proc.stderr.close()


class Raw:
    """A hand-driven client connection."""

    def __init__(self, path: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        self.sock = sock
        self.chan = Channel(sock)
        self.next_id = 100

    def send(self, command: int, payload: bytes = b"", *, flags: int = 0,
             fds: tuple[int, ...] = ()) -> int:
        self.next_id += 1
        self.chan.send(self.next_id, command, flags, payload, fds)
        return self.next_id

    def recv(self, timeout: float = 5.0) -> Message:
        return self.chan.recv(time.monotonic() + timeout)

    def call(self, command: int, payload: bytes = b"", fds: tuple[int, ...] = ()) -> Message:
        msg_id = self.send(command, payload, fds=fds)
        reply = self.recv()
        assert reply.is_reply and reply.msg_id == msg_id and reply.command == command
        return reply

    def version(self) -> Message:
        reply = self.call(P.VFIO_USER_VERSION, struct.pack("<HH", 0, 0) + CAPS)
        assert not reply.is_error
        return reply

    def close(self) -> None:
        self.sock.close()


def expect_error(reply: Message, err: int) -> None:
    assert reply.is_reply and reply.is_error, reply
    assert reply.error_no == err, (errno.errorcode.get(reply.error_no), errno.errorcode[err])
    assert reply.payload == b""  # an error reply is the header only


def device_info(raw: Raw) -> P.vfio_user_device_info:
    reply = raw.call(P.VFIO_USER_DEVICE_GET_INFO, bytes(P.vfio_user_device_info(argsz=16)))
    assert not reply.is_error
    return P.vfio_user_device_info.from_buffer_copy(reply.payload)


def test_version_negotiation(server: str) -> None:
    raw = Raw(server)
    reply = raw.version()
    major, minor, caps = P.unpack_version(reply.payload)
    assert (major, minor) == (0, 0)
    stated = set(P.unpack_version_keys(reply.payload))
    assert stated and stated <= {"max_msg_fds", "max_data_xfer_size", "pgsizes"}  # a subset
    assert caps.max_msg_fds >= 1 and caps.max_data_xfer_size == 1 << 20
    assert reply.payload.endswith(b"\0")  # NUL-terminated JSON
    expect_error(raw.call(P.VFIO_USER_VERSION, struct.pack("<HH", 0, 0)), errno.EINVAL)  # twice
    info = device_info(raw)
    assert info.argsz == 16 and info.num_regions == 9 and info.num_irqs == 5
    assert info.flags == P.VFIO_DEVICE_FLAGS_RESET | P.VFIO_DEVICE_FLAGS_PCI


def test_version_without_capabilities_gets_none_back(server: str) -> None:
    raw = Raw(server)
    reply = raw.call(P.VFIO_USER_VERSION, struct.pack("<HH", 0, 3))
    assert not reply.is_error
    assert reply.payload == struct.pack("<HH", 0, 0)  # minor <= proposed; no caps proposed


def test_bad_major_version_is_refused_and_connection_closed(server: str) -> None:
    raw = Raw(server)
    expect_error(raw.call(P.VFIO_USER_VERSION, struct.pack("<HH", 7, 0) + CAPS), errno.ENOTSUP)
    with pytest.raises(PeerClosed):
        raw.recv()
    # the client API turns that into a clear error
    conn = VfioUserConnection(server, timeout=5)
    with pytest.raises(UnsupportedError, match=r"rejected protocol version 3\.0"):
        conn.negotiate(major=3)
    conn.close()
    Raw(server).version()  # and the server still serves


def test_bad_version_json(server: str) -> None:
    raw = Raw(server)
    expect_error(raw.call(P.VFIO_USER_VERSION, struct.pack("<HH", 0, 0) + b"{not json\0"),
                 errno.EINVAL)
    raw = Raw(server)
    bad = json.dumps({"capabilities": {"max_msg_fds": "many"}}).encode() + b"\0"
    expect_error(raw.call(P.VFIO_USER_VERSION, struct.pack("<HH", 0, 0) + bad), errno.EINVAL)
    raw = Raw(server)
    expect_error(raw.call(P.VFIO_USER_VERSION, b"\0"), errno.EINVAL)  # shorter than 4 bytes


def test_command_before_version(server: str) -> None:
    raw = Raw(server)
    expect_error(raw.call(P.VFIO_USER_DEVICE_GET_INFO, bytes(P.vfio_user_device_info(argsz=16))),
                 errno.EINVAL)
    raw.version()  # the connection is still usable
    device_info(raw)


def test_short_header_size(server: str) -> None:
    """A header whose msg_size is below 16: error reply naming that message; keeps serving."""
    raw = Raw(server)
    raw.version()
    raw.sock.sendall(bytes(P.vfio_user_header(0x4242, P.VFIO_USER_DEVICE_GET_INFO, 8, 0, 0)))
    reply = raw.recv()
    assert reply.msg_id == 0x4242
    expect_error(reply, errno.EINVAL)
    device_info(raw)


def test_truncated_header_then_close(server: str) -> None:
    raw = Raw(server)
    raw.sock.sendall(b"\x01\x00\x04")  # three bytes of a header, then gone
    raw.close()
    Raw(server).version()


def test_wrong_payload_sizes(server: str) -> None:
    raw = Raw(server)
    raw.version()
    expect_error(raw.call(P.VFIO_USER_REGION_READ, b"\0" * 8), errno.EINVAL)  # needs 16
    expect_error(raw.call(P.VFIO_USER_DEVICE_GET_REGION_INFO, b"\0" * 12), errno.EINVAL)
    expect_error(raw.call(P.VFIO_USER_DMA_MAP, b"\0" * 31), errno.EINVAL)
    # REGION_WRITE whose data length disagrees with count
    hdr = bytes(P.vfio_user_region_access(offset=0, region=2, count=8))
    expect_error(raw.call(P.VFIO_USER_REGION_WRITE, hdr + b"abc"), errno.EINVAL)
    # accesses outside a region, to a missing region, of zero length
    expect_error(raw.call(P.VFIO_USER_REGION_READ,
                          bytes(P.vfio_user_region_access(0x1000, 2, 4))), errno.EINVAL)
    expect_error(raw.call(P.VFIO_USER_REGION_READ,
                          bytes(P.vfio_user_region_access(0, 4, 4))), errno.EINVAL)
    expect_error(raw.call(P.VFIO_USER_REGION_READ,
                          bytes(P.vfio_user_region_access(0, 2, 0))), errno.EINVAL)
    device_info(raw)


def test_unknown_and_unsupported_commands(server: str) -> None:
    raw = Raw(server)
    raw.version()
    expect_error(raw.call(99), errno.ENOSYS)
    expect_error(raw.call(P.VFIO_USER_DEVICE_GET_REGION_IO_FDS, b"\0" * 16), errno.ENOTSUP)
    expect_error(raw.call(P.VFIO_USER_DMA_READ, b"\0" * 16), errno.ENOTSUP)
    device_info(raw)


def test_oversized_message_closes_the_connection_only(server: str) -> None:
    raw = Raw(server)
    raw.version()
    raw.sock.sendall(bytes(P.vfio_user_header(7, P.VFIO_USER_REGION_WRITE, 1 << 30, 0, 0)))
    expect_error(raw.recv(), errno.E2BIG)
    with pytest.raises(PeerClosed):
        raw.recv()
    Raw(server).version()


def test_replies_from_the_client_are_ignored(server: str) -> None:
    raw = Raw(server)
    raw.version()
    raw.send(P.VFIO_USER_DEVICE_GET_INFO, flags=P.VFIO_USER_F_TYPE_REPLY)
    raw.send(P.VFIO_USER_DEVICE_GET_INFO, flags=0x7)  # an undefined message type
    assert device_info(raw).num_regions == 9  # the next reply is to this request


def test_posted_write_errors_send_nothing(server: str) -> None:
    raw = Raw(server)
    raw.version()
    bad = bytes(P.vfio_user_region_access(0x5000, 2, 4)) + b"abcd"
    raw.send(P.VFIO_USER_REGION_WRITE, bad, flags=P.VFIO_USER_F_NO_REPLY)
    good = bytes(P.vfio_user_region_access(0x10, 2, 4)) + b"wxyz"
    raw.send(P.VFIO_USER_REGION_WRITE, good, flags=P.VFIO_USER_F_NO_REPLY)
    reply = raw.call(P.VFIO_USER_REGION_READ, bytes(P.vfio_user_region_access(0x10, 2, 4)))
    assert reply.payload[16:] == b"wxyz"  # in order, and the failed posted write sent no reply


def _region_info(raw: Raw, index: int, argsz: int) -> tuple[Message, P.vfio_region_info]:
    reply = raw.call(P.VFIO_USER_DEVICE_GET_REGION_INFO,
                     bytes(P.vfio_region_info(argsz=argsz, index=index)))
    assert not reply.is_error
    return reply, P.vfio_region_info.from_buffer_copy(reply.payload)


def test_region_info_sparse_mmap_and_argsz_retry(server: str) -> None:
    raw = Raw(server)
    raw.version()
    reply, info = _region_info(raw, 0, 32)  # QEMU's client asks with 32 bytes first
    assert info.argsz == 32 + 16 + 16  # info + sparse cap with one area
    assert info.cap_offset == 0 and len(reply.payload) == 32  # caps left out: argsz too small
    # ... and refuses a CAPS flag whose cap_offset is not inside the reply (unlike the kernel)
    assert not info.flags & P.VFIO_REGION_INFO_FLAG_CAPS and info.size == 0x3000
    reply.close_fds()
    reply, info = _region_info(raw, 0, info.argsz)
    assert info.flags == (P.VFIO_REGION_INFO_FLAG_READ | P.VFIO_REGION_INFO_FLAG_WRITE
                          | P.VFIO_REGION_INFO_FLAG_MMAP | P.VFIO_REGION_INFO_FLAG_CAPS)
    assert info.cap_offset == 32
    cap = P.vfio_region_info_cap_sparse_mmap.from_buffer_copy(reply.payload, 32)
    assert (cap.header.id, cap.header.version, cap.header.next) == (
        P.VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, 0)
    assert cap.nr_areas == 1
    area = P.vfio_region_sparse_mmap_area.from_buffer_copy(reply.payload, 48)
    assert (area.offset, area.size) == (0x1000, 0x1000)
    assert len(reply.fds) == 1  # the region fd, as SCM_RIGHTS
    fd = reply.fds[0]
    assert os.fstat(fd).st_size >= 0x3000
    reply.close_fds()
    # a trapped-only region: no MMAP, no fd; a missing BAR: size 0; config: 256 bytes
    reply, info = _region_info(raw, 2, 32)
    assert info.flags == P.VFIO_REGION_INFO_FLAG_READ | P.VFIO_REGION_INFO_FLAG_WRITE
    assert info.size == 0x1000 and reply.fds == []
    _, info = _region_info(raw, 4, 32)
    assert info.size == 0 and info.flags == 0
    _, info = _region_info(raw, 7, 32)
    assert info.size == 256
    expect_error(raw.call(P.VFIO_USER_DEVICE_GET_REGION_INFO,
                          bytes(P.vfio_region_info(argsz=32, index=9))), errno.EINVAL)
    expect_error(raw.call(P.VFIO_USER_DEVICE_GET_REGION_INFO,
                          bytes(P.vfio_region_info(argsz=16, index=0))), errno.EINVAL)


def test_irq_info_and_bad_set_irqs(server: str) -> None:
    raw = Raw(server)
    raw.version()
    counts = {}
    for index in range(5):
        reply = raw.call(P.VFIO_USER_DEVICE_GET_IRQ_INFO,
                         bytes(P.vfio_irq_info(argsz=16, index=index)))
        counts[index] = P.vfio_irq_info.from_buffer_copy(reply.payload).count
    assert counts == {0: 1, 1: 1, 2: 4, 3: 1, 4: 0}  # ERR: one eventfd (QEMU's error recovery)

    def set_irqs(flags: int, index: int, start: int, count: int, data: bytes = b"",
                 fds: tuple[int, ...] = ()) -> Message:
        req = P.vfio_irq_set(argsz=20 + len(data), flags=flags, index=index, start=start,
                             count=count)
        return raw.call(P.VFIO_USER_DEVICE_SET_IRQS, bytes(req) + data, fds)

    trig = P.VFIO_IRQ_SET_ACTION_TRIGGER
    expect_error(set_irqs(trig, 2, 0, 1), errno.EINVAL)  # no DATA flag
    expect_error(set_irqs(P.VFIO_IRQ_SET_DATA_NONE | P.VFIO_IRQ_SET_DATA_BOOL | trig, 2, 0, 1),
                 errno.EINVAL)
    expect_error(set_irqs(P.VFIO_IRQ_SET_DATA_NONE | trig, 2, 3, 2), errno.EINVAL)  # past 4
    expect_error(set_irqs(P.VFIO_IRQ_SET_DATA_NONE | trig, 9, 0, 1), errno.EINVAL)
    expect_error(set_irqs(P.VFIO_IRQ_SET_DATA_BOOL | trig, 2, 0, 4, b"\1"), errno.EINVAL)
    expect_error(set_irqs(P.VFIO_IRQ_SET_DATA_NONE | P.VFIO_IRQ_SET_ACTION_MASK, 2, 0, 1),
                 errno.EINVAL)  # MSI-X is not maskable through SET_IRQS
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        expect_error(set_irqs(P.VFIO_IRQ_SET_DATA_EVENTFD | trig, 2, 0, 2, fds=(efd,)),
                     errno.EINVAL)  # one fd for two vectors
        assert not set_irqs(P.VFIO_IRQ_SET_DATA_EVENTFD | trig, 2, 1, 1, fds=(efd,)).is_error
        # DATA_BOOL trigger: the server fires the vectors whose byte is set
        assert not set_irqs(P.VFIO_IRQ_SET_DATA_BOOL | trig, 2, 0, 2, b"\0\1").is_error
        assert os.eventfd_read(efd) == 1
        # QEMU's vfio_register_err_notifier: one eventfd on the ERR index, start 0, count 1
        assert not set_irqs(P.VFIO_IRQ_SET_DATA_EVENTFD | trig, 3, 0, 1, fds=(efd,)).is_error
        expect_error(set_irqs(P.VFIO_IRQ_SET_DATA_EVENTFD | trig, 3, 0, 2, fds=(efd, efd)),
                     errno.EINVAL)
    finally:
        os.close(efd)


def test_dma_map_rules(server: str) -> None:
    raw = Raw(server)
    raw.version()
    fd = os.memfd_create("dma", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 0x4000)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)  # or refused
    rw = P.VFIO_USER_F_DMA_REGION_READ | P.VFIO_USER_F_DMA_REGION_WRITE
    try:
        req = bytes(P.vfio_user_dma_map(32, rw, 0, 0x100000, 0x2000))
        expect_error(raw.call(P.VFIO_USER_DMA_MAP, req, (fd, fd)), errno.EINVAL)  # one fd at most
        assert not raw.call(P.VFIO_USER_DMA_MAP, req, (fd,)).is_error
        overlap = bytes(P.vfio_user_dma_map(32, rw, 0x2000, 0x101000, 0x2000))
        expect_error(raw.call(P.VFIO_USER_DMA_MAP, overlap, (fd,)), errno.EEXIST)
        expect_error(raw.call(P.VFIO_USER_DMA_MAP, bytes(
            P.vfio_user_dma_map(32, rw, 0x3000, 0x200000, 0x2000)), (fd,)), errno.EINVAL)
        expect_error(raw.call(P.VFIO_USER_DMA_MAP, bytes(
            P.vfio_user_dma_map(32, 0x80, 0, 0x300000, 0x1000)), (fd,)), errno.EINVAL)
        unmap = P.vfio_user_dma_unmap(24, 0, 0x100000, 0x1000)  # would split the map
        expect_error(raw.call(P.VFIO_USER_DMA_UNMAP, bytes(unmap)), errno.EINVAL)
        unmap.size = 0x2000
        reply = raw.call(P.VFIO_USER_DMA_UNMAP, bytes(unmap))
        assert not reply.is_error
        echoed = P.vfio_user_dma_unmap.from_buffer_copy(reply.payload)
        assert (echoed.addr, echoed.size) == (0x100000, 0x2000)  # the original entry
    finally:
        os.close(fd)


# What QEMU 11.1's vfio-user-pci client sends and accepts (docs/research/vfio-user.md §2, §3, §5),
# message by message.
QEMU_CAPS = json.dumps({"capabilities": {
    "migration": {"pgsize": 4096, "max_bitmap_size": 256 << 20},
    "max_msg_fds": 16, "max_data_xfer_size": 1 << 20, "pgsizes": 4096, "max_dma_maps": 65535,
    "write_multiple": True}}).encode() + b"\0"


def test_qemu_version_reply_stays_within_the_clients_limits(server: str) -> None:
    raw = Raw(server)
    reply = raw.call(P.VFIO_USER_VERSION, struct.pack("<HH", 0, 0) + QEMU_CAPS)
    assert not reply.is_error
    caps = json.loads(reply.payload[4:].rstrip(b"\0"))["capabilities"]
    assert caps["max_msg_fds"] <= 16  # QEMU: above 16 is "malformed max_msg_fds"
    assert caps["max_dma_maps"] <= 65535  # QEMU: "can only lower it"
    assert caps["max_data_xfer_size"] <= 1 << 20 and caps["pgsizes"] % 4096 == 0
    assert not caps.get("write_multiple", False)  # we do not take REGION_WRITE_MULTI


def test_qemu_dma_traffic_maps_without_fd_and_unmaps_ranges(server: str) -> None:
    raw = Raw(server)
    raw.version()
    fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 0x100000)
    # QEMU's memory-backend-memfd seals its RAM by default (property seal=on); the server
    # refuses an unsealed one.
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    rw = P.VFIO_USER_F_DMA_REGION_READ | P.VFIO_USER_F_DMA_REGION_WRITE

    def dma_map(iova: int, size: int, offset: int = 0, fds: tuple[int, ...] = ()) -> Message:
        return raw.call(P.VFIO_USER_DMA_MAP,
                        bytes(P.vfio_user_dma_map(32, rw, offset, iova, size)), fds)

    def dma_unmap(iova: int, size: int, flags: int = 0) -> Message:
        return raw.call(P.VFIO_USER_DMA_UNMAP, bytes(P.vfio_user_dma_unmap(24, flags, iova, size)))

    try:
        # BIOS/ROM ranges come without an fd (offset 0): recorded, not refused
        assert not dma_map(0xFFFC0000, 0x40000).is_error
        expect_error(dma_map(0xFFFD0000, 0x1000, fds=(fd,)), errno.EEXIST)  # but still there
        # intel-iommu with caching-mode replays the guest's IOVA mappings as 4 KiB maps of
        # scattered guest pages ...
        for i in range(64):
            assert not dma_map(0x200000 + i * 0x1000, 0x1000, (63 - i) * 0x1000, (fd,)).is_error
        # ... and unmaps a whole invalidated range at once
        expect_error(dma_unmap(0x200800, 0x2000), errno.EINVAL)  # unaligned (type1 v2)
        assert not dma_unmap(0x200000, 0x20000).is_error  # 32 maps in one go
        assert not dma_unmap(0x200000, 0x20000).is_error  # nothing left there: still fine
        assert not dma_map(0x200000, 0x1000, 0, (fd,)).is_error  # the range is free again
        expect_error(dma_unmap(0x1000, 0x1000, VFIO_DMA_UNMAP_FLAG_ALL), errno.EINVAL)
        reply = dma_unmap(0, 0, VFIO_DMA_UNMAP_FLAG_ALL)  # QEMU's unmap of a 2^64 section
        assert not reply.is_error
        for iova in (0x200000, 0x220000, 0xFFFC0000):  # everything went
            assert not dma_map(iova, 0x1000, 0, (fd,)).is_error
    finally:
        os.close(fd)


def test_qemu_page_maps_carry_device_buffers_that_span_many_maps(server: str) -> None:
    """Behind intel-iommu with caching mode QEMU maps every guest page on its own (4 KiB DMA_MAPs
    of scattered guest RAM); a device's descriptor ring and data buffers then each span several
    maps. The device must reach them as the guest sees them: contiguous in IOVA."""
    from warpdrive.emu.models import testdev as T

    raw = Raw(server)
    raw.version()
    pages = 32
    fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, pages * 0x1000)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)  # as QEMU's
    rw = P.VFIO_USER_F_DMA_REGION_READ | P.VFIO_USER_F_DMA_REGION_WRITE
    base = 0x7FF00000
    order = [(i * 13) % pages for i in range(pages)]  # IOVA page i -> guest page order[i]

    def guest(iova: int, data: bytes | None = None, n: int = 0) -> bytes:
        """Read or write the guest's memory at an IOVA, page by page through the mapping."""
        out = b""
        pos = 0
        size = len(data) if data is not None else n
        while pos < size:
            page, off = divmod(iova + pos - base, 0x1000)
            chunk = min(size - pos, 0x1000 - off)
            file_off = order[page] * 0x1000 + off
            if data is not None:
                os.pwrite(fd, data[pos:pos + chunk], file_off)
            else:
                out += os.pread(fd, chunk, file_off)
            pos += chunk
        return out

    def write(region: int, off: int, data: bytes) -> None:
        payload = bytes(P.vfio_user_region_access(off, region, len(data))) + data
        assert not raw.call(P.VFIO_USER_REGION_WRITE, payload).is_error

    def read64(off: int) -> int:
        reply = raw.call(P.VFIO_USER_REGION_READ, bytes(P.vfio_user_region_access(off, 0, 8)))
        return int.from_bytes(reply.payload[16:24], "little")

    try:
        for i, page in enumerate(order):
            reply = raw.call(P.VFIO_USER_DMA_MAP, bytes(P.vfio_user_dma_map(
                32, rw, page * 0x1000, base + i * 0x1000, 0x1000)), (fd,))
            assert not reply.is_error
        write(7, 4, struct.pack("<H", 0x6))  # PCI_COMMAND: memory + bus master
        ring, src, dst, n = base + 0xF80, base + 0x2000 + 123, base + 0xA000 + 7, 5 * 0x1000 + 99
        payload = os.urandom(n)
        guest(src, payload)
        # the ring's second descriptor straddles the seam of two maps, too
        descs = [T.DESC.pack(src, dst, 64, 0, 0, 0),
                 T.DESC.pack(src, dst, n, 0, 0, 0)]
        guest(ring, b"".join(descs))
        write(0, T.REG_RING_BASE, struct.pack("<Q", ring))
        write(0, T.REG_RING_SIZE, struct.pack("<I", 8))
        write(0, T.DOORBELL_TAIL, struct.pack("<Q", 2))  # arrives as a message: applied, polled
        deadline = time.monotonic() + 10
        while read64(T.REG_COMPLETED) < 2:
            assert time.monotonic() < deadline, "the copies never completed"
            time.sleep(0.01)
        for k in range(2):
            status = struct.unpack("<I", guest(ring + k * T.DESC_SIZE + 24, n=4))[0]
            assert status == T.STATUS_DONE, hex(status)
        assert guest(dst, n=n) == payload
    finally:
        os.close(fd)


def test_fds_with_a_bad_message_are_not_leaked(server: str) -> None:
    """Send eventfds with a message that fails; the server must close its copies."""
    raw = Raw(server)
    raw.version()
    efds = [os.eventfd(0) for _ in range(4)]
    try:
        for _ in range(50):
            expect_error(raw.call(99, b"", tuple(efds)), errno.ENOSYS)
        pid = _server_pid(raw.sock)
        held = [p for p in Path(f"/proc/{pid}/fd").iterdir()
                if "eventfd" in os.readlink(p)]
        assert held == []
    finally:
        for fd in efds:
            os.close(fd)


def _server_pid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, ctypes.sizeof(ctypes.c_int) * 3)
    return struct.unpack("3i", creds)[0]


def test_sigterm_at_any_point_is_a_clean_exit(tmp_path: Path) -> None:
    """SIGTERM (sometimes twice) at random points of a server's life, while clients talk to it:
    every server exits 0 and removes its socket. (The handler used to raise out of wherever the
    main thread was, e.g. inside an `except Exception`, and the server once exited 1.)"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    seed = int.from_bytes(os.urandom(4), "little")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "emu_sigterm.py"), "100",
                           str(seed), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["rounds"] == 100
    assert result["bad"] == [], f"seed {seed}: {json.dumps(result['bad'], indent=1)}"
