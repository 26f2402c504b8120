"""Test helpers for the vfio-user server as a trust boundary: a model server in its own process
(a crash is a dead process, not a dead test runner) and a raw client that can send anything."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from warpdrive.backends.vfiouser.wire import Channel, Message, PeerClosed, WireTimeout
from warpdrive.uapi import vfio_user as P

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """`python -m warpdrive.emu MODEL --socket PATH ...` with its stderr in a file."""

    def __init__(self, path: str, model: str = "testdev", *args: str, log: Path | None = None,
                 wait: bool = True) -> None:
        self.path = path
        self.log_path = log or Path(path + ".log")
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "warpdrive.emu", model, "--socket", path, *args],
            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.DEVNULL,
            stdout=self.log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_listening()

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"server exited early:\n{self.output()}"
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(self.path)
                return
            assert time.monotonic() < deadline, "server did not start listening"
            time.sleep(0.02)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@contextlib.contextmanager
def server_process(path: str, model: str = "testdev", *args: str) -> Iterator[ServerProcess]:
    srv = ServerProcess(path, model, *args)
    try:
        yield srv
    finally:
        srv.stop()


class RawClient:
    """A vfio-user client that sends whatever it is told (for probing the server)."""

    def __init__(self, path: str, negotiate: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.chan = Channel(self.sock)
        self._id = 0
        if negotiate:
            reply = self.request(P.VFIO_USER_VERSION, P.pack_version(
                0, 0, P.Capabilities(max_msg_fds=16, max_data_xfer_size=1 << 20)))
            assert not reply.is_error, f"VERSION refused: {errno.errorcode.get(reply.error_no)}"

    def next_id(self) -> int:
        self._id = (self._id + 1) & 0xFFFF
        return self._id

    def send(self, command: int, payload: bytes = b"", fds: list[int] | tuple[int, ...] = (),
             flags: int = P.VFIO_USER_F_TYPE_COMMAND) -> int:
        msg_id = self.next_id()
        self.chan.send(msg_id, command, flags, payload, fds, deadline=time.monotonic() + 10)
        return msg_id

    def recv(self, timeout: float = 10.0) -> Message:
        return self.chan.recv(deadline=time.monotonic() + timeout)

    def request(self, command: int, payload: bytes = b"", fds: list[int] | tuple[int, ...] = (),
                timeout: float = 10.0) -> Message:
        msg_id = self.send(command, payload, fds)
        while True:
            reply = self.recv(timeout)
            if reply.msg_id == msg_id and reply.command == command:
                return reply
            reply.close_fds()

    def region_info(self, index: int, argsz: int = 256) -> Message:
        return self.request(P.VFIO_USER_DEVICE_GET_REGION_INFO,
                            bytes(P.vfio_region_info(argsz=argsz, index=index)))

    def region_read(self, index: int, offset: int, count: int) -> Message:
        return self.request(P.VFIO_USER_REGION_READ,
                            bytes(P.vfio_user_region_access(offset, index, count)))

    def dma_map(self, iova: int, size: int, fd: int | None, offset: int = 0,
                flags: int = P.VFIO_USER_F_DMA_REGION_READ | P.VFIO_USER_F_DMA_REGION_WRITE
                ) -> Message:
        req = P.vfio_user_dma_map(argsz=ctypes.sizeof(P.vfio_user_dma_map), flags=flags,
                                  offset=offset, addr=iova, size=size)
        return self.request(P.VFIO_USER_DMA_MAP, bytes(req), [fd] if fd is not None else [])

    def set_irqs(self, flags: int, index: int, start: int, count: int,
                 fds: list[int] | tuple[int, ...] = ()) -> Message:
        req = P.vfio_irq_set(argsz=ctypes.sizeof(P.vfio_irq_set), flags=flags, index=index,
                             start=start, count=count)
        return self.request(P.VFIO_USER_DEVICE_SET_IRQS, bytes(req), fds)

    def closed_by_peer(self, timeout: float = 10.0) -> bool:
        """Read (and drop) everything until EOF; True if the server closed the connection."""
        try:
            while True:
                self.recv(timeout).close_fds()
        except PeerClosed:
            return True
        except WireTimeout:
            return False

    def close(self) -> None:
        self.sock.close()


def ping(path: str) -> None:
    """A full client round trip on a fresh connection: the server is alive and serving."""
    c = RawClient(path)
    try:
        reply = c.region_read(7, 0, 4)  # config space: vendor and device id
        assert not reply.is_error and len(reply.payload) == 20
    finally:
        c.close()
