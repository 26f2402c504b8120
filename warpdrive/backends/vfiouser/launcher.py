"""Start a bundled device model in its own process and open it over vfio-user.

    dev = open_emulated("testdev")          # or warpdrive.open("emu:testdev")
    ...
    dev.close()                             # unmaps, disconnects, then stops the model process

The model runs as `python -m warpdrive.emu <model> --socket <private dir>/model.sock
--exit-on-disconnect --ready-fd N`: the socket lives in a fresh 0700 directory, the child writes
"ready" on an inherited pipe once it listens (bounded wait here), and it exits by itself when its
client disconnects, on SIGTERM, or if nobody connects within a minute, so no model outlives its
user. Its stdout and stderr go to a log file in that directory; when the model dies, errors quote
the log's tail. The directory is removed by `stop()`, or, when the launching process died without
stopping the model (killed, `os._exit`), by the model itself as it exits.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ... import syscalls as sc
from ...errors import DeviceError, DeviceTimeoutError, InvalidArgumentError
from ...forkguard import ForkSafe

if TYPE_CHECKING:
    from .client import VfioUserDevice

_live: weakref.WeakSet[ModelProcess] = weakref.WeakSet()
_live_lock = threading.Lock()
# The directory holding the `warpdrive` package (this file is warpdrive/backends/vfiouser/...).
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


class ModelProcess(ForkSafe):
    """A running device-model server process and its private socket."""

    def __init__(self, model: str, *, options: dict[str, Any] | None = None,
                 startup_timeout: float = 15.0, accept_timeout: float = 60.0,
                 spin_us: float | None = None, idle_us: float | None = None,
                 python: str | None = None, wait: bool = True) -> None:
        self.model = model
        self.dir = tempfile.mkdtemp(prefix=f"warpdrive-emu-{model}-")
        self.socket_path = os.path.join(self.dir, "model.sock")
        self.log_path = os.path.join(self.dir, "model.log")
        argv = [python or sys.executable, "-m", "warpdrive.emu", model, "--socket",
                self.socket_path, "--exit-on-disconnect", "--accept-timeout",
                str(accept_timeout), "--private-dir", self.dir, "--launcher-pid", str(os.getpid())]
        # What the model was started with, beyond its private paths: `open_emulated` adopts a
        # process started ahead (`prestart`) only when it would have started the same one.
        self.tuning = _tuning(options, spin_us, idle_us)
        argv += self.tuning
        self._ready_fd: int | None = None
        env = dict(os.environ)
        # The child must import this very warpdrive, wherever it was imported from.
        paths = [_PACKAGE_ROOT]
        if python is None:
            # This interpreter: -S skips the site-packages scan and .pth hooks (~20 ms of the
            # model's boot, more with an editable install's import hook); this process's own
            # import path, as those left it, serves instead (a model's third-party imports,
            # e.g. the crypto model's `cryptography`, resolve as they do here).
            argv.insert(1, "-S")
            paths += [p for p in sys.path if p and p != _PACKAGE_ROOT]
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (*paths, env.get("PYTHONPATH", "")) if p)
        r, w = os.pipe2(os.O_CLOEXEC)
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [*argv, "--ready-fd", str(w)], pass_fds=(w,), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as e:
            os.close(r)
            os.close(w)
            log.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise DeviceError(f"starting device model {model!r}", errno=e.errno) from None
        finally:
            log.close()
        os.close(w)
        self._stopped = False
        self._fork_register()
        with _live_lock:
            _live.add(self)
        self._ready_fd = r
        if wait:
            self.wait_ready(startup_timeout)

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait until the model listens (at once if it already said so); stops it on failure."""
        r, self._ready_fd = self._ready_fd, None
        if r is None:
            return
        try:
            self._wait_ready(r, timeout)
        except BaseException:
            self.stop()
            raise
        finally:
            os.close(r)

    def _wait_ready(self, r: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        got = b""
        while b"\n" not in got:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeviceTimeoutError(
                    f"device model {self.model!r} did not start serving within {timeout} s"
                    + self._tail_note(),
                    hint="the machine may be overloaded; pass a larger startup_timeout")
            ready = sc.wait_readable([r], left)
            if not ready:
                continue
            chunk = os.read(r, 64)
            if not chunk:  # the child closed the pipe without saying ready: it exited
                status = self._wait_exit(2.0)
                refusal = self._refusal()
                if refusal:  # it refused to start: that line says what and what to do
                    # (status 2: its options, InvalidArgumentError; else the model itself)
                    cls = InvalidArgumentError if status == 2 else DeviceError
                    raise cls(f"device model {self.model!r} refused to start: {refusal}")
                raise DeviceError(
                    f"device model {self.model!r} exited with status {status} before serving"
                    + self._tail_note(),
                    hint="see the model's output above; `python -m warpdrive.emu --list` "
                    "shows the bundled models")
            got += chunk

    def _wait_exit(self, timeout: float) -> int | None:
        """The exit status within `timeout` s, else None. Sleeps on a pidfd, which wakes the
        moment the model exits: `Popen.wait(timeout)` polls with doubling sleeps, up to tens
        of ms late at the end of every run that stops a model."""
        if self.proc.returncode is None and timeout > 0:
            try:
                fd = os.pidfd_open(self.proc.pid)  # not reaped yet: the pid is still ours
            except OSError:  # an old kernel (< 5.3) or a sandbox refusing it: Popen's poll
                fd = -1
            if fd >= 0:
                try:
                    sc.wait_readable([fd], timeout)
                finally:
                    os.close(fd)
                return self.proc.poll()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def _refusal(self) -> str:
        """The one-line error a model's command line ends with when it refuses to start (its
        `main`: "warpdrive emu: ..."), else "" (a crash: its whole tail is the news)."""
        tail = self.log_tail().splitlines()
        prefix = "warpdrive emu: "
        return tail[-1][len(prefix):] if tail and tail[-1].startswith(prefix) else ""

    def _tail_note(self) -> str:
        tail = self.log_tail()
        return f"; its output ended with:\n{tail}\n" if tail else ""

    def status(self) -> str | None:
        """Why the model is gone (exit status and log tail), or None while it runs."""
        code = self.proc.poll()
        if code is None:
            return None
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return f"device model {self.model!r} (pid {self.proc.pid}) {how}" + self._tail_note()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 1.0) -> int | None:
        """Stop the process (it normally exits by itself once its client disconnected): wait
        `grace` seconds, then SIGTERM, then SIGKILL. Returns its exit status."""
        if self._stopped or self._forked_dead:
            return self.proc.returncode
        self._stopped = True
        if self._ready_fd is not None:  # started ahead and never adopted: no client will come
            os.close(self._ready_fd)
            self._ready_fd = None
            grace = 0
        code = self._wait_exit(grace)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if code is not None:
                break
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            code = self._wait_exit(2.0)
        shutil.rmtree(self.dir, ignore_errors=True)
        with _live_lock:
            _live.discard(self)
        self._fork_unregister()
        return code

    def _fork_describe(self) -> str:
        return f"device model process {self.proc.pid} ({self.model})"

    def _fork_invalidate(self) -> None:
        self._stopped = True  # the child must never stop (or reap) the parent's model

    def __repr__(self) -> str:
        return f"<ModelProcess {self.model} pid={self.proc.pid} socket={self.socket_path}>"


_default_spin: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "warpdrive_model_spin_us", default=None)


@contextlib.contextmanager
def model_spin(spin_us: float | None) -> Iterator[None]:
    """Models this thread starts without a `spin_us` of their own get `spin_us` (a context, not
    a process-wide setting: other threads, such as a test run's lab guests, keep theirs)."""
    token = _default_spin.set(spin_us)
    try:
        yield
    finally:
        _default_spin.reset(token)


def _tuning(options: dict[str, Any] | None, spin_us: float | None,
            idle_us: float | None) -> list[str]:
    """The model's command-line options beyond its socket and directory."""
    argv: list[str] = []
    for key, value in (options or {}).items():
        argv += ["--set", f"{key}={value}"]
    if spin_us is None:
        spin_us = _default_spin.get()
    if spin_us is None:
        spin_us = _spin_from_env()
    if spin_us is not None:
        argv += ["--spin-us", str(spin_us)]
    if idle_us is not None:
        argv += ["--idle-us", str(idle_us)]
    return argv


def _spin_from_env() -> float | None:
    """WARPDRIVE_EMU_SPIN_US: the spin window of models started without one (after work, a
    model polls its doorbells back to back this long before it sleeps). Spinning buys latency
    with a core; 0 gives the core back where CPU is short (the host test suite sets it), and
    clients that read the control page then kick the sleeping model with a message."""
    raw = os.environ.get("WARPDRIVE_EMU_SPIN_US", "")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e7:
        raise InvalidArgumentError(f"WARPDRIVE_EMU_SPIN_US={raw!r} is not a number of "
                                   "microseconds (0 or more)")
    return value


def open_emulated(model_name: str, dma_mask: int | None = None, **opts: Any) -> VfioUserDevice:
    """Start device model `model_name` (e.g. "testdev", "zip") and open it over vfio-user.

    Options for the model process: `model_options` (dict of `--set key=value`),
    `startup_timeout` (s), `spin_us`/`idle_us` (poll loop, see warpdrive.emu.server).
    Everything else goes to `open_vfio_user` (`mmap_doorbells`, `timeout`, `posted_writes`).
    The returned device's `emulator` attribute is the `ModelProcess`; closing the device stops it.
    """
    from .client import open_vfio_user

    if not isinstance(model_name, str) or not model_name:
        raise InvalidArgumentError(f"{model_name!r} is not a device model name")
    proc_opts: dict[str, Any] = {k: opts.pop(k) for k in ("model_options", "startup_timeout",
                                               "spin_us", "idle_us") if k in opts}
    options = proc_opts.pop("model_options", None)
    proc = _adopt(model_name, options, proc_opts)
    if proc is None:
        proc = ModelProcess(model_name, options=options, **proc_opts)
    try:
        dev = open_vfio_user(proc.socket_path, dma_mask=dma_mask,
                             name=opts.pop("name", f"emu:{model_name}"),
                             peer_status=proc.status, **opts)
    except BaseException:
        proc.stop(grace=0.2)
        raise
    dev.emulator = proc

    def stop_model() -> None:
        proc.stop()

    dev.on_disconnect(stop_model)
    return dev


# Models started ahead of their `open_emulated` (see `prestart`), by model name.
_ahead: dict[str, ModelProcess] = {}


def prestart(model_name: str) -> ModelProcess:
    """Start model `model_name` now, with default options, without waiting for it: the next
    `open_emulated` of that model with the same options in this process adopts it (a second
    call while that one still waits for adoption returns it). A program
    that knows early that it will need a model (the CLI, before its own ~150 ms of imports and
    device scan) overlaps the model's boot with its own. One never adopted is stopped by
    `drop_prestarted` or at exit (and exits by itself if nobody connects within a minute)."""
    with _live_lock:
        old = _ahead.get(model_name)
        if old is not None and old._owner_pid == os.getpid() and not old._stopped and old.running:
            return old  # already booting (an earlier, cheaper guess of the same caller)
        _ahead.pop(model_name, None)
    if old is not None:
        old.stop()
    proc = ModelProcess(model_name, wait=False)
    with _live_lock:
        _ahead[model_name] = proc
    return proc


def _adopt(model_name: str, options: dict[str, Any] | None,
           proc_opts: dict[str, Any]) -> ModelProcess | None:
    with _live_lock:
        proc = _ahead.pop(model_name, None)
    if proc is None:
        return None
    usable = (proc._owner_pid == os.getpid() and not proc._stopped and not proc._forked_dead
              and proc.running)
    if usable:
        usable = proc.tuning == _tuning(options, proc_opts.get("spin_us"),
                                        proc_opts.get("idle_us"))
    if not usable:
        proc.stop()
        return None
    proc.wait_ready(proc_opts.get("startup_timeout", 15.0))
    return proc


def drop_prestarted() -> None:
    """Stop the models `prestart` started that nothing adopted (e.g. every input failed)."""
    with _live_lock:
        procs = list(_ahead.values())
        _ahead.clear()
    for p in procs:
        if p._owner_pid == os.getpid():
            p.stop()


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        procs = list(_live)
    for p in procs:
        if p._owner_pid == os.getpid():
            p.stop(grace=0.2)
