"""The generic vfio-user server: hosts device models on a UNIX socket for many clients at once.

The protocol's framework side lives here and in `warpdrive.emu.function` (VERSION negotiation,
DMA map table, region info with the sparse-mmap capability and a region fd, config space, the
MSI-X table, IRQ eventfds, reset); the model supplies register behaviour and work
(`warpdrive.emu.model`).

Two ways to serve:
- `VfioUserServer(model, path)`: one device. One client owns it at a time (the one whose VERSION
  was accepted); another client is told EBUSY at once. When the owner leaves, the device keeps
  its state (spec) and the next client may take it.
- `VfioUserServer(None, path, factory=make_model)`: every client gets its own function, made when
  its VERSION is accepted and closed when it leaves (the broker, `warpdrive serve`).

The server is a trust boundary between processes: one event loop (epoll) over non-blocking
sockets, a state machine per connection, and nothing that waits on one client:
- a message is read as it arrives; a client that starts one and stalls is dropped after
  `message_timeout`, a connection that never negotiates after `handshake_timeout`;
- replies go out through a bounded per-client queue; a client that does not read them is
  dropped (more than `max_pending_out` bytes queued, or no progress for `message_timeout`);
- fds a client hands over are checked before use (sealed memfds, real eventfds: see
  `warpdrive.emu.function`), and the memory the server hands out is sealed;
- malformed or unknown messages get error replies carrying an errno; a message whose size
  cannot be trusted gets an error reply and the connection is closed; exceptions from a model
  become EIO replies (with the traceback in the log); the server keeps serving the others.

Poll loop. A client's store into a mapped doorbell page changes shared memory and sends nothing,
so the server must look. After the last sign of activity (work found by a model's `poll()`, or a
message) it polls every attached function back to back for a spin window, checking sockets
without blocking in between (a burst of `_BURST` polls between two checks, so a doorbell is seen
within one poll's time; a burst follows a pass that worked too, so a client's next doorbell is
seen without waiting for the socket check; a pass that worked yields the CPU once, so a client
that shares it gets its completion at once; a turn where nothing worked gives the CPU away first:
`sched_yield`, or with `nap_s` a sleep that long, see `_loop`; naps for a while when the
yields keep losing the CPU to another program's busy loop, `syscalls.YieldWatch`);
then it sets need-wakeup in each
function's control page, polls once more (so a doorbell stored just before is not missed) and
sleeps in epoll for at most `idle_s` between polls, or up to `idle_max_s` when every client
reads the control page and so kicks the server after a doorbell (see `warpdrive.uapi.vfio_user`,
WARPDRIVE_CTL_*). The passes bump each function's heartbeat (once a millisecond at most), by
which a client waiting on shared memory knows the server is alive.
The spin window of a single-device server adapts (`SpinWindow`) unless `spin_s` is given: it
starts short and doubles each time work comes back soon after the server fell asleep (a client
working in bursts: a longer window saves it the wake-up), up to the model's `poll_spin_s`, and
drops back to the shortest after a long quiet spell, so an idle model costs no CPU and a lone
call only a short spin. A broker's (one function per client) stays fixed: it paces itself.
Models without mmap areas are not polled at all: the server blocks until a message arrives.

Access: the socket is created with `socket_mode` (0600 by default) and `socket_group`, bound and
listening under a private name and then published with link(2), so it never appears with wider
permissions or before it accepts. A stale socket left by a crashed server (nothing accepts on it)
is replaced; a live one, or anything that is not a socket, is never touched. Every connection is
checked with SO_PEERCRED against `allow` (default: our uid or root) and logged.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import os
import select
import signal
import socket
import stat
import threading
import time
import traceback
from collections.abc import Callable

from .. import syscalls as sc
from ..backends.vfiouser.wire import FrameError, Message, PeerClosed, sock_peer_creds
from ..errors import InvalidArgumentError, ProtocolError
from ..forkguard import close_fd_quietly
from ..record import record
from ..uapi import vfio_user as P
from .function import BoundedWrites, Function
from .model import DeviceModel

TYPE_CHECKING = False  # (not typing's: importing typing costs ~3 ms of every process's boot)
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("warpdrive.emu.server")

_ANC_SIZE = socket.CMSG_SPACE(P.SCM_MAX_FD * 4)
_MSG_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0x40000000)
_MESSAGES_PER_TURN = 32  # per client per loop pass, so one chatty client cannot starve others
_DEADLINE_CHECK_S = 0.05  # while spinning, look at the (seconds-long) timeouts this often
_BURST = 16  # polls back to back (no syscall, no clock) between two socket checks while spinning
_HEARTBEAT_S = 0.001  # bump heartbeats at most this often (a client calls 30 ms without one stale)
_FENCE = threading.Lock()  # see warpdrive.mmio (Wake): a full memory barrier
# What an `on_poll` hook returns: nothing to do, waiting on work in flight (keep polling), or
# work done this pass.
POLL_IDLE, POLL_BUSY, POLL_WORKED = 0, 1, 2

_SUN_PATH_MAX = 107  # bytes of a bindable AF_UNIX path (sun_path is 108, NUL-terminated here)
_PRIVATE_NAMES = itertools.count()
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13+


@record(frozen=True)
class Peer:
    """Who is on the other end of a connection (SO_PEERCRED, SO_PEERGROUPS): as of connect()."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    @classmethod
    def of(cls, sock: socket.socket) -> Peer:
        pid, uid, gid = sock_peer_creds(sock)
        groups: tuple[int, ...] = ()
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * 1024)
            groups = tuple(int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw), 4))
        except OSError:
            pass  # an older kernel: the primary group only
        return cls(pid, uid, gid, groups)

    def __str__(self) -> str:
        return f"pid {self.pid} uid {self.uid} gid {self.gid}"


class SpinWindow:
    """How long the server keeps polling after the last activity (see the module docstring):
    `s` seconds, between `low` and `high`. `slept(now)` when it stops polling, `woke(now)` when
    activity brings it back."""

    LOW_S = 0.02

    def __init__(self, high: float, low: float | None = None, *, fixed: bool = False) -> None:
        self.high = high
        self.low = high if fixed else min(high, self.LOW_S if low is None else low)
        self.s = self.low
        self._slept_at: float | None = None

    def slept(self, now: float) -> None:
        self._slept_at = now

    def woke(self, now: float) -> None:
        if self._slept_at is None:
            return
        gap = now - self._slept_at
        self._slept_at = None
        # Back soon after the window ran out: spinning longer would have caught it. Quiet for
        # longer than the longest window: start short again.
        self.s = min(self.s * 2, self.high) if gap <= self.high else self.low


class _Drop(Exception):
    """Close this client's connection (after an unrecoverable protocol error)."""


def default_allow(peer: Peer) -> str | None:
    """The default policy: our own uid and root may connect. Returns why not, or None."""
    return None if peer.uid in (os.getuid(), 0) else f"uid {peer.uid} is neither ours nor root"


class _Session:
    """One client connection: non-blocking reads into a message state machine, a bounded queue
    of replies, and the function it talks to once VERSION is accepted."""

    def __init__(self, sock: socket.socket, peer: Peer, now: float) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.name = f"client pid {peer.pid} uid {peer.uid}"
        self.accepted_at = now
        self.hdr = bytearray()
        self.header: P.vfio_user_header | None = None
        self.payload = bytearray()
        self.got = 0
        self.fds: list[int] = []
        self.msg_started: float | None = None
        self.out: collections.deque[tuple[memoryview, list[int]]] = collections.deque()
        self.out_bytes = 0
        self.out_progress = now
        self.function: Function | None = None
        self.negotiated = False
        self.closing = False  # close once the queued replies are out (a refused VERSION)
        self.client_caps = P.Capabilities()

    # -- receive ----------------------------------------------------------------------------
    def read_message(self, max_size: int, now: float) -> Message | None:
        """The next complete message if one arrived; None when the socket has no more for now.
        Raises PeerClosed or FrameError."""
        while True:
            if self.header is None:
                try:
                    data, anc, flags, _ = self.sock.recvmsg(
                        16 - len(self.hdr), _ANC_SIZE, _MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return None
                except (ConnectionResetError, OSError) as e:
                    raise PeerClosed(str(e)) from None
                for level, kind, cdata in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        n = len(cdata) // 4
                        self.fds.extend(int.from_bytes(cdata[4 * i:4 * i + 4], "little",
                                                       signed=True) for i in range(n))
                if flags & socket.MSG_CTRUNC:
                    raise FrameError("too many file descriptors in one message (truncated)",
                                     None, fatal=True)
                if not data:
                    raise PeerClosed("connection closed" + (
                        f" after {len(self.hdr)} of 16 header bytes" if self.hdr else ""))
                if self.msg_started is None:
                    self.msg_started = now
                self.hdr += data
                if len(self.hdr) < 16:
                    continue
                hdr = P.vfio_user_header.from_buffer_copy(bytes(self.hdr))
                self.hdr.clear()
                if hdr.msg_size < P.HEADER_SIZE:
                    self._reset()
                    raise FrameError(f"message size {hdr.msg_size} is smaller than the 16-byte "
                                     "header", hdr, fatal=False)
                if hdr.msg_size > max_size:
                    self._reset()
                    raise FrameError(f"message size {hdr.msg_size} exceeds the limit of "
                                     f"{max_size} bytes", hdr, fatal=True, errno_=errno.E2BIG)
                self.header = hdr
                self.payload = bytearray(hdr.msg_size - P.HEADER_SIZE)
                self.got = 0
            if self.got < len(self.payload):
                try:
                    k = self.sock.recv_into(memoryview(self.payload)[self.got:],
                                            len(self.payload) - self.got, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return None
                except (ConnectionResetError, OSError) as e:
                    raise PeerClosed(str(e)) from None
                if k == 0:
                    raise PeerClosed(f"connection closed after {self.got} of "
                                     f"{len(self.payload)} payload bytes")
                self.got += k
                if self.got < len(self.payload):
                    continue
            hdr = self.header
            msg = Message(hdr.msg_id, hdr.command, hdr.flags, hdr.error_no, bytes(self.payload),
                          self.fds)
            self.fds = []
            self._reset()
            return msg

    def _reset(self) -> None:
        self.header = None
        self.payload = bytearray()
        self.got = 0
        self.msg_started = None
        for fd in self.fds:  # only a dropped message leaves fds here
            close_fd_quietly(fd)
        self.fds = []

    # -- send -------------------------------------------------------------------------------
    def queue(self, data: bytes, fds: list[int], now: float) -> None:
        if not self.out:
            self.out_progress = now
        self.out.append((memoryview(data), fds))
        self.out_bytes += len(data)
        self.flush(now)

    def flush(self, now: float) -> None:
        """Send what the socket takes now (never waits)."""
        while self.out:
            data, fds = self.out[0]
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                    b"".join(fd.to_bytes(4, "little") for fd in fds))] if fds else []
            try:
                n = self.sock.sendmsg([data], anc, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                raise PeerClosed(str(e)) from None
            self.out_progress = now
            self.out_bytes -= n
            if n < len(data):
                self.out[0] = (data[n:], [])  # the fds went with the first byte
                continue
            self.out.popleft()

    def close(self) -> None:
        self._reset()
        self.out.clear()
        self.sock.close()


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # each stops serve_forever cleanly


class VfioUserServer:
    """Serve `model` (or one model per client from `factory`) on `socket_path`. `serve_forever()`
    runs until SIGTERM/SIGINT/SIGHUP (in the main thread; later ones are then ignored, as the
    process is exiting), `stop()`, or (with `exit_on_disconnect`) the first client that had a device
    leaving. See the module docstring for the rest."""

    def __init__(self, model: DeviceModel | None, socket_path: str, *,
                 factory: Callable[[Peer], DeviceModel] | None = None,
                 exit_on_disconnect: bool = False, accept_timeout: float | None = None,
                 spin_s: float | None = None, idle_s: float | None = None,
                 idle_max_s: float = 0.01, max_data_xfer_size: int = 1 << 20,
                 max_msg_fds: int = 64, max_dma_maps: int = 65535, ready_fd: int | None = None,
                 max_clients: int = 64, handshake_timeout: float = 10.0,
                 message_timeout: float = 5.0, max_pending_out: int = 4 << 20,
                 socket_mode: int = 0o600, socket_group: int | None = None,
                 allow: Callable[[Peer], str | None] = default_allow,
                 on_poll: Callable[[], int] | None = None, measure: bool = False,
                 nap_s: float = 0.0) -> None:
        if (model is None) == (factory is None):
            raise InvalidArgumentError("give the server a model (one shared device) or a "
                                       "factory (one device per client), not both")
        self.socket_path = socket_path
        self.factory = factory
        self.exit_on_disconnect = exit_on_disconnect
        self.accept_timeout = accept_timeout
        self.spin_s = spin_s if spin_s is not None else (model.poll_spin_s if model else 0.02)
        # A window given by the caller is kept as is (tests and benchmarks rely on it), and so
        # is a broker's (one function per client: it paces its own polling, `nap_s`).
        self.window = SpinWindow(self.spin_s, fixed=spin_s is not None or model is None)
        self.idle_s = idle_s if idle_s is not None else (model.poll_idle_s if model else 0.001)
        self.idle_max_s = max(idle_max_s, self.idle_s)
        self.nap_s = max(0.0, nap_s)
        self.max_data_xfer_size = max_data_xfer_size
        self.max_msg_fds = max_msg_fds
        self.max_dma_maps = max_dma_maps
        self.ready_fd = ready_fd
        self.max_clients = max_clients
        self.handshake_timeout = handshake_timeout
        self.message_timeout = message_timeout
        self.max_pending_out = max(max_pending_out, 2 * (max_data_xfer_size + 4096))
        self.socket_mode = socket_mode
        self.socket_group = socket_group
        self.allow = allow
        self.on_poll = on_poll
        self.measure = measure
        self.work_s = 0.0  # with `measure`: CPU time of the poll passes that found work
        self.work_passes = 0  # and how many there were
        self._beat_due = 0.0  # when the passes next bump the heartbeats
        self.messages = 0
        self.stats: collections.Counter[int] = collections.Counter()
        self._stop = threading.Event()
        self._signalled = False  # a STOP_SIGNALS signal stopped serve_forever (a plain flag)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)  # stop() from a thread
        self._listener: socket.socket | None = None
        self._sessions: dict[int, _Session] = {}
        self._ep: Any = None
        self._asleep = False
        self._ever_connected = False
        self.shared: Function | None = None
        self._owner: _Session | None = None
        self._active: list[Function] = []  # functions attached to a connection, in order
        self._rr = 0
        if model is not None:
            self.shared = self._make_function(model, model.name)

    def _make_function(self, model: DeviceModel, label: str) -> Function:
        fn = Function(model, max_dma_maps=self.max_dma_maps,
                      max_data_xfer_size=self.max_data_xfer_size, logger=log, label=label,
                      idle_max_s=self.idle_max_s)
        fn.messages_fd = self._messages_fd
        return fn

    def _messages_fd(self) -> int:
        """The epoll fd (readable while a socket or the wake pipe has something): a model that
        sleeps in poll() while its workers are busy wakes for messages too."""
        ep = self._ep
        return ep.fileno() if ep is not None and not ep.closed else -1

    # compatibility: the single-device server's function state, for tests and tools
    @property
    def model(self) -> DeviceModel | None:
        return self.shared.model if self.shared is not None else None

    @property
    def clients(self) -> int:
        return len(self._sessions)

    # -- lifecycle --------------------------------------------------------------------------
    def stop(self) -> None:
        """Make `serve_forever` return (callable from another thread)."""
        self._stop.set()
        self._wake()

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def serve_forever(self) -> None:
        handlers_installed = threading.current_thread() is threading.main_thread()
        old: dict[signal.Signals, Any] = {}
        if handlers_installed:
            for signum in STOP_SIGNALS:
                # SIGHUP (the terminal or ssh session went away) stops us cleanly too, with the
                # socket removed; unless it was ignored when we started (nohup): then it stays so.
                if signum == signal.SIGHUP and signal.getsignal(signum) == signal.SIG_IGN:
                    continue
                old[signum] = signal.signal(signum, self._on_signal)
        # The loop's naps last what they say, not 50 us more (fixed naps and the ones under
        # contention); the calling thread's own slack comes back after.
        slack = sc.timer_slack()
        sc.set_timer_slack(1000)
        try:
            self._listen()
            if handlers_installed:
                with BoundedWrites():
                    self._loop()
            else:
                self._loop()
        finally:
            sc.set_timer_slack(slack)
            try:
                self._shutdown()
            finally:
                # After a signal stopped us our handlers stay: the process is on its way out, and
                # a second SIGTERM/Ctrl-C must not kill it halfway (it is a no-op now).
                if not self._signalled:
                    for signum, h in old.items():
                        signal.signal(signum, h)

    def _on_signal(self, signum: int, frame: object) -> None:
        # A flag and a wake-up byte only: an exception raised here would surface wherever the
        # main thread happened to be, e.g. inside an `except Exception` that takes it for a
        # client's or the model's failure and carries on (or exits 1). Not Event.set() either:
        # a second signal arriving while the first handler holds the Event's lock deadlocks.
        self._signalled = True
        self._wake()

    def _listen(self) -> None:
        path = self.socket_path
        _check_length(path)
        _clear_stale_socket(path)
        # Bound, restricted and listening under a private name, then published with link(2),
        # which fails if the path exists again (another server won a race): a client that sees
        # the path can connect at once, and never finds it with wider permissions.
        # The private name is unique per server (one process may run several). Only when it
        # would not fit in a sockaddr is the path bound directly: its node then exists before
        # listen(2), so a client may briefly see ECONNREFUSED there.
        tmp = os.path.join(os.path.dirname(path) or ".",
                           f".wd{os.getpid():x}.{next(_PRIVATE_NAMES):x}")
        if len(os.fsencode(tmp)) > _SUN_PATH_MAX:
            tmp = path
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            # bind(2) creates the node with the socket inode's mode less the umask: set it
            # first, so even a node published under its own name is never wider than asked.
            os.fchmod(lst.fileno(), self.socket_mode)
            if tmp != path:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
            lst.bind(tmp)
            try:
                os.chmod(tmp, self.socket_mode)
                if self.socket_group is not None:
                    os.chown(tmp, -1, self.socket_group)
                lst.listen(64)
                if tmp != path:
                    os.link(tmp, path)
            except BaseException:
                if tmp == path:
                    os.unlink(path)
                raise
            finally:
                if tmp != path:
                    os.unlink(tmp)
        except OSError as e:
            lst.close()
            if e.errno == errno.EEXIST:
                raise OSError(errno.EADDRINUSE, f"cannot listen on {path}: another server "
                              "created it meanwhile") from None
            raise OSError(e.errno or errno.ENAMETOOLONG,
                          f"cannot listen on {path}: {e.strerror or e}") from None
        lst.setblocking(False)
        self._listener = lst
        log.info("listening on %s (mode %#o%s)", path, self.socket_mode,
                 f", group {self.socket_group}" if self.socket_group is not None else "")
        if self.ready_fd is not None:
            try:
                os.write(self.ready_fd, b"ready\n")
            finally:
                close_fd_quietly(self.ready_fd)
                self.ready_fd = None

    def _shutdown(self) -> None:
        for s in list(self._sessions.values()):
            self._drop(s, "the server is stopping", quiet=True)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
        if self.shared is not None:
            self.shared.close()
        if self._ep is not None:
            self._ep.close()
            self._ep = None
        wake = (self._wake_r, self._wake_w)
        self._wake_r = self._wake_w = -1
        for fd in wake:
            close_fd_quietly(fd)

    # -- the loop ---------------------------------------------------------------------------
    def _turn(self) -> list[Function]:
        """The attached functions, starting one further each pass: who is polled first (and so
        takes hardware slots first) rotates among the clients."""
        fns = self._active
        if len(fns) < 2:
            return fns
        self._rr = k = (self._rr + 1) % len(fns)
        return fns[k:] + fns[:k]

    def _poll(self) -> int:
        """One pass over the attached functions and the hook: POLL_WORKED if any made progress,
        POLL_BUSY if something is waiting on work in flight, else POLL_IDLE."""
        r = POLL_IDLE
        fns = self._turn()
        now = time.monotonic()
        if now >= self._beat_due:  # (not every pass: a store per client into its control page)
            self._beat_due = now + _HEARTBEAT_S
            for fn in fns:
                fn.heartbeat()
        for fn in fns:
            if fn.polled and fn.poll():
                r = POLL_WORKED
        if self.on_poll is not None:
            r = max(r, self.on_poll())
        return r

    def _poll_measured(self) -> int:
        """`_poll`, adding the thread CPU time of the passes that did work to `work_s`: the
        whole pass, the polls that found nothing included (two clock reads per pass: only
        with `measure`)."""
        t0 = time.thread_time()
        r = self._poll()
        if r == POLL_WORKED:
            self.work_s += time.thread_time() - t0
            self.work_passes += 1
        return r

    def _loop(self) -> None:
        assert self._listener is not None
        ep = self._ep = select.epoll()
        ep.register(self._listener.fileno(), select.EPOLLIN)
        ep.register(self._wake_r, select.EPOLLIN)
        started = last_activity = checked = time.monotonic()
        # Whether the spin's yields keep losing the CPU to another program (see below).
        watch = sc.YieldWatch()
        while not (self._signalled or self._stop.is_set()):
            fns = self._active
            polled = self.on_poll is not None or any(fn.polled for fn in fns)
            progress = POLL_IDLE
            if polled:
                progress = self._poll_measured() if self.measure else self._poll()
                if progress:
                    last_activity = time.monotonic()
                    self._wake_up(fns)
            now = time.monotonic()
            timeout: float | None
            if polled and now - last_activity < self.window.s:
                timeout = 0.0
                # A burst before the socket check, after a pass that worked too: a client
                # working call after call stores its next doorbell within microseconds of its
                # CQE, and the burst sees it at once instead of after this turn's clock reads
                # and epoll call (the sockets are still checked once a turn).
                # After a pass that worked (before the burst, or after a burst that did) the
                # CPU goes first to a client that may share ours and wait for the completion
                # just posted: without it that client got the CPU only after this turn's and
                # the next turn's polls (~17 us at the same CPU; `zip_oneshot_cpu.py
                # --breakdown --cpus same`). With nobody else runnable here the yield returns
                # at once (a system call, under a microsecond: less than a client takes to
                # reap and ring again).
                nap = self.nap_s or (self.CONTENDED_NAP_S if now < watch.naps_until else 0.0)
                if progress == POLL_WORKED and not nap:
                    os.sched_yield()
                burst = self._burst(fns)
                if burst:
                    last_activity = now = time.monotonic()
                    progress = max(progress, burst)
                    if burst == POLL_WORKED and not nap:
                        os.sched_yield()
                if progress != POLL_WORKED:
                    # Spinning without progress: let the processes we wait for (clients, the
                    # device model) have the CPU first; on a busy machine they share ours.
                    # A yield gives it away only if one of them is runnable on this core, and
                    # a poller that yields is runnable again at once, so it still takes its
                    # fair share of a loaded machine in empty passes; a nap (a timed sleep)
                    # leaves that share to them, for at most `nap_s` of latency.
                    # While the yields keep handing our CPU to another program's busy loop
                    # for whole time slices, one job per slice (4-7 ms per call measured with
                    # a busy loop on the model's CPU), naps replace them: a sleeper is woken
                    # in microseconds (`sc.YieldWatch`; 0.2-1.5 ms per call, 5 B at 17 us
                    # p50; docs/driver-bench.md, session 21).
                    if nap:
                        time.sleep(nap)
                    else:
                        os.sched_yield()
                        watch.yielded(now, time.monotonic())
            elif polled:
                if not self._asleep and self._fall_asleep(fns):
                    last_activity = now
                    continue
                aware = all(fn.control_aware for fn in fns if fn.polled)
                timeout = self.idle_max_s if aware and self._asleep else self.idle_s
            else:
                timeout = None
            if timeout != 0.0:
                deadline = self._next_deadline(started)
                if deadline is not None:
                    left = max(0.0, deadline - now)
                    timeout = left if timeout is None else min(timeout, left)
            events = ep.poll(-1 if timeout is None else timeout)
            now = time.monotonic()
            if events:
                for fd, ev in events:
                    if fd == self._wake_r:
                        try:
                            os.read(self._wake_r, 64)
                        except OSError:
                            pass
                    elif self._listener is not None and fd == self._listener.fileno():
                        self._accept(now)
                    else:
                        s = self._sessions.get(fd)
                        if s is not None and self._service(s, ev, now):
                            last_activity = now
                            self._wake_up(self._active)
                if self._signalled or self._stop.is_set():
                    return
            if timeout != 0.0 or now - checked > _DEADLINE_CHECK_S:  # timeouts are seconds
                checked = now
                self._check_deadlines(now, started)

    CONTENDED_NAP_S = 20e-6  # a nap while the yields lose the CPU (`sc.YieldWatch`; ~35 us)

    def _burst(self, fns: list[Function]) -> int:
        """Up to `_BURST` polls back to back (no clock, no heartbeat, no syscall): the spin's
        inner loop, so a doorbell is seen within one poll. With `measure`, a pass that works
        is counted in `work_s` as `_poll_measured` counts the others (two clock reads each)."""
        hook = self.on_poll
        clock = time.thread_time if self.measure else None
        t0 = 0.0
        for _ in range(_BURST):
            if clock is not None:
                t0 = clock()
            r = POLL_IDLE
            for fn in fns:
                if fn.polled and fn.poll():
                    r = POLL_WORKED
            if hook is not None:
                r = max(r, hook())
            if r:
                if r == POLL_WORKED and clock is not None:
                    self.work_s += clock() - t0
                    self.work_passes += 1
                return r
        return POLL_IDLE

    def _fall_asleep(self, fns: list[Function]) -> bool:
        """Tell clients we stop polling, then look once more: True if there was work after all
        (a doorbell stored before the client could see the flag)."""
        for fn in fns:
            fn.set_need_wakeup(True)
        with _FENCE:
            pass
        self._asleep = True
        self.window.slept(time.monotonic())
        if self._poll():
            self._wake_up(fns)
            return True
        return False

    def _wake_up(self, fns: list[Function]) -> None:
        if self._asleep:
            self._asleep = False
            for fn in fns:
                fn.set_need_wakeup(False)
            self.window.woke(time.monotonic())

    def _next_deadline(self, started: float) -> float | None:
        times: list[float] = []
        if self.accept_timeout is not None and not self._ever_connected:
            times.append(started + self.accept_timeout)
        for s in self._sessions.values():
            if not s.negotiated:
                times.append(s.accepted_at + self.handshake_timeout)
            if s.msg_started is not None:
                times.append(s.msg_started + self.message_timeout)
            if s.out:
                times.append(s.out_progress + self.message_timeout)
        return min(times) if times else None

    def _check_deadlines(self, now: float, started: float) -> None:
        if self.accept_timeout is not None and not self._ever_connected and \
                now - started >= self.accept_timeout:
            log.info("no client connected within %s s; exiting", self.accept_timeout)
            self._stop.set()
            return
        for s in list(self._sessions.values()):
            if s.out and now - s.out_progress >= self.message_timeout:
                self._drop(s, f"it is not reading its replies ({s.out_bytes} bytes waiting for "
                           f"{self.message_timeout} s)")
            elif s.msg_started is not None and now - s.msg_started >= self.message_timeout:
                self._drop(s, "it started a message and did not finish it within "
                           f"{self.message_timeout} s")
            elif not s.negotiated and now - s.accepted_at >= self.handshake_timeout:
                self._drop(s, f"it did not negotiate VERSION within {self.handshake_timeout} s")

    # -- connections ------------------------------------------------------------------------
    def _accept(self, now: float) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: leave it queued, say why
                log.warning("accept on %s failed: %s", self.socket_path, e)
                return
            try:
                peer = Peer.of(conn)
            except OSError:
                conn.close()
                continue
            why = self.allow(peer)
            if why is None and len(self._sessions) >= self.max_clients:
                why = f"the server already has {self.max_clients} clients"
            if why is not None:
                log.warning("refused client %s: %s", peer, why)
                conn.close()
                continue
            self._ever_connected = True
            s = _Session(conn, peer, now)
            self._sessions[s.fd] = s
            assert self._ep is not None
            self._ep.register(s.fd, select.EPOLLIN)
            log.info("accepted client %s", peer)

    def _drop(self, s: _Session, reason: str, quiet: bool = False) -> None:
        if self._sessions.pop(s.fd, None) is None:
            return
        if not quiet:
            log.info("closing the connection of %s: %s", s.name, reason)
        if self._ep is not None:
            try:
                self._ep.unregister(s.fd)
            except OSError:
                pass
        s.close()
        fn, s.function = s.function, None
        if fn is not None:
            if fn in self._active:
                self._active.remove(fn)
            if fn is self.shared:
                fn.detach_client()
                self._owner = None
            else:
                fn.close()
            if self.exit_on_disconnect:
                self._stop.set()

    def _service(self, s: _Session, ev: int, now: float) -> bool:
        """Handle what epoll reported for one client; True if a message was handled."""
        handled = False
        try:
            if ev & select.EPOLLOUT:
                s.flush(now)
            if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                for _ in range(_MESSAGES_PER_TURN):
                    if s.closing:
                        break
                    try:
                        msg = s.read_message(self.max_data_xfer_size + 4096, now)
                    except FrameError as e:
                        self._frame_error(s, e, now)
                        continue
                    if msg is None:
                        break
                    handled = True
                    self._handle(s, msg, now)
        except PeerClosed as e:
            self._drop(s, f"{e}")
            return handled
        except _Drop as e:
            self._drop(s, str(e))
            return handled
        if s.closing and not s.out:
            self._drop(s, "its VERSION was refused")
        elif s.out_bytes > self.max_pending_out:
            self._drop(s, f"it is not reading its replies ({s.out_bytes} bytes waiting)")
        elif self._ep is not None and s.fd in self._sessions:
            self._ep.modify(s.fd, select.EPOLLIN | (select.EPOLLOUT if s.out else 0))
        return handled

    def _frame_error(self, s: _Session, e: FrameError, now: float) -> None:
        self.messages += 1
        log.warning("bad message from %s: %s", s.name, e.reason)
        if e.header is not None and not (e.header.flags & P.VFIO_USER_F_NO_REPLY):
            self._reply_error(s, e.header.msg_id, e.header.command, e.errno, now)
        if e.fatal:
            raise _Drop(f"malformed message ({e.reason})")

    # -- messages ---------------------------------------------------------------------------
    def _handle(self, s: _Session, msg: Message, now: float) -> None:
        self.messages += 1
        self.stats[msg.command] += 1
        fn = s.function
        if fn is not None:
            fn.messages += 1
            fn.by_command[msg.command] += 1
            if fn.polled:
                # Doorbells the client stored before it sent this message take effect first,
                # as a PCI read or write is ordered after the posted writes before it.
                fn.poll()
        try:
            self._dispatch(s, msg, now)
        finally:
            msg.close_fds()
        if fn is not None:
            fn.after_message()
            if fn.kicked:
                fn.kicked = False
                if fn.polled:
                    fn.poll()  # a doorbell that came as a message: act on it now

    def _dispatch(self, s: _Session, msg: Message, now: float) -> None:
        if not msg.is_command:
            log.info("ignoring a %s message (id %d, %s) from %s: this server sends no commands",
                     "reply" if msg.is_reply else f"type-{msg.type}", msg.msg_id,
                     P.command_name(msg.command), s.name)
            return
        name = P.command_name(msg.command)
        try:
            if msg.command == P.VFIO_USER_VERSION:
                payload, fds = self._version(s, msg)
            else:
                handler = Function.HANDLERS.get(msg.command)
                if handler is None:
                    known = msg.command in P.COMMAND_NAMES
                    what = "supported by this server" if known else "a vfio-user command"
                    raise OSError(errno.ENOTSUP if known else errno.ENOSYS,
                                  f"{name} is not {what}")
                if s.function is None:
                    raise OSError(errno.EINVAL, "the first message must be VFIO_USER_VERSION")
                payload, fds = handler(s.function, msg)
        except OSError as e:
            msg.close_fds()  # before replying: the client may check that nothing is left open
            err = e.errno or errno.EIO
            log.warning("%s (id %d) from %s failed: %s%s", name, msg.msg_id, s.name,
                        e.strerror or e, " [posted: no reply]" if msg.no_reply else "")
            if not msg.no_reply:
                self._reply_error(s, msg.msg_id, msg.command, err, now)
            if msg.command == P.VFIO_USER_VERSION and s.function is None:
                s.closing = True  # spec: close if the version is unacceptable
            return
        except Exception:
            msg.close_fds()
            log.warning("%s (id %d) from %s crashed:\n%s", name, msg.msg_id, s.name,
                        traceback.format_exc().rstrip())
            if not msg.no_reply:
                self._reply_error(s, msg.msg_id, msg.command, errno.EIO, now)
            return
        msg.close_fds()  # fds a handler did not keep are ours to close, before the reply
        if not msg.no_reply:
            s.queue(bytes(P.vfio_user_header(msg.msg_id, msg.command,
                                             P.HEADER_SIZE + len(payload),
                                             P.VFIO_USER_F_TYPE_REPLY, 0)) + payload, fds, now)

    def _reply_error(self, s: _Session, msg_id: int, command: int, err: int, now: float) -> None:
        s.queue(bytes(P.vfio_user_header(msg_id, command, P.HEADER_SIZE,
                                         P.VFIO_USER_F_TYPE_REPLY | P.VFIO_USER_F_ERROR, err)),
                [], now)

    def _version(self, s: _Session, msg: Message) -> tuple[bytes, list[int]]:
        if s.negotiated:
            raise OSError(errno.EINVAL, "VERSION was already negotiated on this connection")
        try:
            major, minor, caps = P.unpack_version(msg.payload)
        except ProtocolError as e:
            raise OSError(errno.EINVAL, e.what) from None
        if major != P.VFIO_USER_MAJOR:
            raise OSError(errno.ENOTSUP, f"client proposes protocol {major}.{minor}; this server "
                          f"speaks {P.VFIO_USER_MAJOR}.{P.VFIO_USER_MINOR}")
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
        s.function = self._function_for(s)
        self._active.append(s.function)
        if caps.extra.get(P.WARPDRIVE_CTL_CAPABILITY) is True and s.function.control_index >= 0:
            ours.extra[P.WARPDRIVE_CTL_CAPABILITY] = True
            s.function.control_visible = True
        s.client_caps = caps
        s.negotiated = True
        return P.pack_version(P.VFIO_USER_MAJOR, min(minor, P.VFIO_USER_MINOR),
                              ours if proposed else None, keys=proposed), []

    def _function_for(self, s: _Session) -> Function:
        if self.shared is not None:
            if self._owner is not None:
                raise OSError(errno.EBUSY, f"the device is busy: {self._owner.name} has it")
            self._owner = s
            return self.shared
        assert self.factory is not None
        try:
            model = self.factory(s.peer)
            return self._make_function(model, f"{model.name} for {s.name}")
        except OSError:
            raise
        except Exception as e:
            err = getattr(e, "errno", None) or errno.EBUSY
            raise OSError(err, f"no device for {s.name}: {e}") from None


def check_socket_path(path: str) -> None:
    """Raise the OSError listening on `path` would meet, creating and removing nothing: a
    command checks before it starts its device (a broker's model takes a second to boot), so a
    wrong --socket fails at once. A stale socket passes (listening replaces it)."""
    _check_length(path)
    parent = os.path.dirname(path) or "."
    try:
        is_dir = stat.S_ISDIR(os.stat(parent).st_mode)
    except FileNotFoundError:
        raise OSError(errno.ENOENT, f"cannot listen on {path}: the directory {parent} does "
                      "not exist") from None
    except PermissionError:  # a directory on the way this user may not search
        raise OSError(errno.EACCES, f"cannot listen on {path}: this user may not reach "
                      f"{parent}") from None
    except NotADirectoryError:
        is_dir = False
    if not is_dir:
        raise OSError(errno.ENOTDIR, f"cannot listen on {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, f"cannot listen on {path}: this user may not create "
                      f"files in {parent}")
    _stale_socket(path)


def _check_length(path: str) -> None:
    """A path no client could connect to (connect(2) takes sun_path, 108 bytes) is refused,
    though a link to our private name could publish it."""
    n = len(os.fsencode(path))
    if n > _SUN_PATH_MAX:
        raise OSError(errno.ENAMETOOLONG, f"cannot listen on {path}: a socket path has at most "
                      f"{_SUN_PATH_MAX} bytes (clients connect through sun_path); this one {n}")


def _stale_socket(path: str) -> bool:
    """True when `path` is a socket nothing listens on any more (a crashed server's); False when
    nothing is there; OSError for anything else, which is never touched."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"cannot listen on {path}: it exists and is not a socket "
                      "(left untouched)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True  # nobody accepts: stale
    except OSError as e:
        raise OSError(errno.EADDRINUSE, f"cannot listen on {path}: a server may be listening "
                      f"there ({e.strerror or e}); left untouched") from None
    else:
        raise OSError(errno.EADDRINUSE, f"cannot listen on {path}: a server is already "
                      "listening there")
    finally:
        probe.close()


def _clear_stale_socket(path: str) -> None:
    """Remove a socket nothing listens on any more (a crashed server's); refuse anything else."""
    if not _stale_socket(path):
        return
    log.warning("replacing the stale socket %s (nothing listens on it: a crashed server's)", path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
