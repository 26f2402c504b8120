"""Framing of vfio-user messages on an AF_UNIX stream socket, with fds as SCM_RIGHTS.

The socket stays in blocking mode and deadlines are enforced with poll(): a Python socket timeout
would add a poll() before *every* send, and a posted doorbell write should cost one sendmsg().
Sends first try MSG_DONTWAIT and only wait (bounded) when the peer's buffer is full.

Received fds get MSG_CMSG_CLOEXEC. A message's fds travel with its first byte, so they arrive
with the header read; any fds that come with a message nobody wanted are closed here.
"""

from __future__ import annotations

import array
import ctypes
import errno
import os
import select
import socket
import time

from ...errors import InvalidArgumentError
from ...forkguard import close_fd_quietly
from ...record import field, record
from ...uapi.vfio_user import (
    HEADER_SIZE,
    SCM_MAX_FD,
    VFIO_USER_F_ERROR,
    VFIO_USER_F_NO_REPLY,
    VFIO_USER_F_TYPE_COMMAND,
    VFIO_USER_F_TYPE_MASK,
    VFIO_USER_F_TYPE_REPLY,
    vfio_user_header,
)

_MSG_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0x40000000)
_FD_SIZE = array.array("i").itemsize


class PeerClosed(Exception):
    """The peer closed the connection (EOF or reset)."""


class WireTimeout(Exception):
    """No (complete) message within the deadline."""


class FrameError(Exception):
    """A header that cannot be honoured. `header` is set when 16 bytes were read (so an error reply
    can name the message); `fatal` means the byte stream can no longer be trusted."""

    def __init__(self, reason: str, header: vfio_user_header | None, fatal: bool,
                 errno_: int = errno.EINVAL) -> None:
        super().__init__(reason)
        self.reason = reason
        self.header = header
        self.fatal = fatal
        self.errno = errno_


@record
class Message:
    msg_id: int
    command: int
    flags: int
    error_no: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def type(self) -> int:
        return self.flags & VFIO_USER_F_TYPE_MASK

    @property
    def is_reply(self) -> bool:
        return self.type == VFIO_USER_F_TYPE_REPLY

    @property
    def is_command(self) -> bool:
        return self.type == VFIO_USER_F_TYPE_COMMAND

    @property
    def no_reply(self) -> bool:
        return bool(self.flags & VFIO_USER_F_NO_REPLY)

    @property
    def is_error(self) -> bool:
        return bool(self.flags & VFIO_USER_F_ERROR)

    def take_fds(self) -> list[int]:
        fds, self.fds = self.fds, []
        return fds

    def close_fds(self) -> None:
        for fd in self.take_fds():
            close_fd_quietly(fd)


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def _wait(sock: socket.socket, write: bool, deadline: float | None) -> None:
    left = _remaining(deadline)
    p = select.poll()
    p.register(sock, select.POLLOUT if write else select.POLLIN)
    if not p.poll(None if left is None else int(left * 1000) + 1):
        raise WireTimeout("timed out")


class Channel:
    """One end of a vfio-user connection."""

    def __init__(self, sock: socket.socket, max_msg_size: int = (1 << 20) + 4096) -> None:
        sock.setblocking(True)
        self.sock = sock
        self.max_msg_size = max_msg_size  # larger incoming messages are refused
        self.sent = 0
        self.received = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    # -- send -------------------------------------------------------------------------------
    def send(self, msg_id: int, command: int, flags: int, payload: bytes = b"",
             fds: list[int] | tuple[int, ...] = (), error_no: int = 0,
             deadline: float | None = None) -> None:
        if len(fds) > SCM_MAX_FD:
            raise InvalidArgumentError(f"{len(fds)} fds in one message; the kernel allows "
                                       f"{SCM_MAX_FD}", hint="send them in several messages")
        hdr = vfio_user_header(msg_id & 0xFFFF, command, HEADER_SIZE + len(payload), flags,
                               error_no)
        data = memoryview(bytes(hdr) + payload)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] \
            if fds else []
        sent = 0
        while True:
            try:
                n = self.sock.sendmsg([data[sent:]], anc, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except BlockingIOError:
                _wait(self.sock, True, deadline)
                continue
            except (BrokenPipeError, ConnectionResetError) as e:
                raise PeerClosed(str(e)) from None
            anc = []  # the fds went with the first byte
            sent += n
            if sent >= len(data):
                break
        self.sent += 1

    # -- receive ----------------------------------------------------------------------------
    def recv(self, deadline: float | None = None) -> Message:
        """Read one whole message. Raises PeerClosed, WireTimeout or FrameError."""
        fds: list[int] = []
        try:
            raw = self._recv_header(fds, deadline)
            hdr = vfio_user_header.from_buffer_copy(raw)
            if hdr.msg_size < HEADER_SIZE:
                raise FrameError(f"message size {hdr.msg_size} is smaller than the 16-byte header",
                                 hdr, fatal=False)
            if hdr.msg_size > self.max_msg_size:
                raise FrameError(f"message size {hdr.msg_size} exceeds the limit of "
                                 f"{self.max_msg_size} bytes", hdr, fatal=True,
                                 errno_=errno.E2BIG)
            payload = self._recv_exact(hdr.msg_size - HEADER_SIZE, deadline)
        except BaseException:
            for fd in fds:
                close_fd_quietly(fd)
            raise
        self.received += 1
        return Message(hdr.msg_id, hdr.command, hdr.flags, hdr.error_no, payload, fds)

    def _recv_header(self, fds: list[int], deadline: float | None) -> bytes:
        buf = bytearray()
        anc_size = socket.CMSG_SPACE(SCM_MAX_FD * _FD_SIZE)
        while len(buf) < HEADER_SIZE:
            _wait(self.sock, False, deadline)
            try:
                data, anc, msg_flags, _ = self.sock.recvmsg(
                    HEADER_SIZE - len(buf), anc_size, _MSG_CMSG_CLOEXEC)
            except ConnectionResetError as e:
                raise PeerClosed(str(e)) from None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    arr = array.array("i")
                    arr.frombytes(cdata[:len(cdata) - len(cdata) % _FD_SIZE])
                    fds.extend(arr)
            if msg_flags & socket.MSG_CTRUNC:
                raise FrameError("too many file descriptors in one message (truncated)",
                                 None, fatal=True)
            if not data:
                if buf:
                    raise PeerClosed(f"connection closed after {len(buf)} of 16 header bytes")
                raise PeerClosed("connection closed")
            buf += data
        return bytes(buf)

    def _recv_exact(self, n: int, deadline: float | None) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            _wait(self.sock, False, deadline)
            try:
                k = self.sock.recv_into(view[got:], n - got)
            except ConnectionResetError as e:
                raise PeerClosed(str(e)) from None
            if k == 0:
                raise PeerClosed(f"connection closed after {got} of {n} payload bytes")
            got += k
        return bytes(buf)


def sock_peer_creds(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, ctypes.sizeof(ctypes.c_int) * 3)
    pid, uid, gid = array.array("i", creds)
    return pid, uid, gid


def errno_name(err: int) -> str:
    return errno.errorcode.get(err, str(err)) + f" ({os.strerror(err)})" if err else "0"
