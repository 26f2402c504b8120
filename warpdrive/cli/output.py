"""Outputs that lose nothing, and signals that end a run cleanly.

A regular-file output is written to an unnamed file in the target's directory (`O_TMPFILE`; a
hidden `.NAME.XXXX.part` where the filesystem lacks it), synced, given its attributes, and only
then linked or renamed over the final name. So a failure, a signal, a full disk or `ulimit -f`
never leaves a partial file under the final name, and the run never removes anything it did not
create: the final name is only ever replaced by a complete file. Character devices and FIFOs
(`/dev/null`, a named pipe) are written directly and never removed; block devices only with
force; directories and sockets are refused; an output that is one of the inputs (same inode,
through symlinks or hard links) is refused before anything is opened for writing.
"""

from __future__ import annotations

import contextlib
import errno as E
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

from .. import syscalls as sc
from ..errors import InvalidArgumentError, PermissionDeniedError, WarpdriveError
from . import Interrupted  # defined with main(), which catches it


class OutputExistsError(InvalidArgumentError):
    """The output exists and overwriting was not asked for (gzip: a warning, exit 2)."""


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def io_error(what: str, e: OSError, path: str) -> WarpdriveError:
    """One-line error for a failed read/write/create, with what to do."""
    hint = {
        E.ENOSPC: f"the disk is full; free space and retry (nothing was left under {path})",
        E.EDQUOT: f"the disk quota is exhausted (nothing was left under {path})",
        E.EFBIG: f"the file size limit (ulimit -f) was reached (nothing was left under {path})",
        E.EROFS: "the filesystem is read-only",
    }.get(e.errno or 0)
    cls = PermissionDeniedError if e.errno in (E.EACCES, E.EPERM) else WarpdriveError
    return cls(f"{what} {path}", errno=e.errno, hint=hint)


def _link_fd(fd: int, name: str) -> None:
    """Give the open (O_TMPFILE) file `fd` the name `name`: linkat(AT_SYMLINK_FOLLOW) on its
    /proc/self/fd entry. Python calls plain link() unless a directory fd is passed."""
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(str(fd), name, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class Output:
    """One output of a run: stdout (`"-"`), a device/FIFO written directly, or a regular file
    written atomically (see the module docstring). `write` it, then `commit()` on success or
    `discard()` on failure (`discard` after `commit` does nothing)."""

    def __init__(self, path: str, *, force: bool = False,
                 inputs: Sequence[os.stat_result] = ()) -> None:
        self.path = path
        self.direct = True
        self._tmp_name: str | None = None  # a named temporary file we created
        self._fd = -1
        self._final = path
        self._replace = False
        self._done = False
        self._committed = False
        if path == "-":
            self.file: BinaryIO = sys.stdout.buffer
            self._check_not_input(os.fstat(sys.stdout.fileno()), inputs, "standard output")
            return
        try:
            st: os.stat_result | None = os.stat(path)
        except FileNotFoundError:
            st = None  # absent, or a dangling symlink: created where the link points
        except OSError as e:
            raise io_error("cannot examine", e, path) from None
        if st is not None:
            self._check_not_input(st, inputs, path)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                raise InvalidArgumentError(f"{path} is a directory",
                                           hint="name a file, or use -c for standard output")
            if stat.S_ISSOCK(mode):
                raise InvalidArgumentError(f"{path} is a socket; refusing to write to it")
            if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISBLK(mode):
                if stat.S_ISBLK(mode) and not force:
                    raise OutputExistsError(f"{path} is a block device; not overwritten",
                                            hint="use -f to write to it")
                self.file = self._open_direct(path)
                return
            if not force:
                raise OutputExistsError(f"{path} already exists; not overwritten",
                                        hint="use -f to overwrite it")
            self._replace = True
        self.direct = False
        # Through a symlink, the file it points to is replaced and the link kept, as a shell
        # redirection would write through it.
        self._final = os.path.realpath(path)
        self.file = self._open_temp(os.path.dirname(self._final) or ".")

    @staticmethod
    def _check_not_input(st: os.stat_result, inputs: Sequence[os.stat_result],
                         name: str) -> None:
        if stat.S_ISREG(st.st_mode) and any(same_file(st, i) for i in inputs):
            raise InvalidArgumentError(f"{name} is the input file; refusing to overwrite it",
                                       hint="choose another output name")

    def _open_direct(self, path: str) -> BinaryIO:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as e:
            raise io_error("cannot write", e, path) from None
        self._fd = fd
        return os.fdopen(fd, "wb", closefd=True)

    def _open_temp(self, directory: str) -> BinaryIO:
        flags = os.O_WRONLY | os.O_CLOEXEC
        try:
            fd = os.open(directory, flags | os.O_TMPFILE, 0o600)
        except OSError as e:
            if e.errno not in (E.EOPNOTSUPP, E.EISDIR, E.EINVAL):
                raise io_error("cannot create a file in", e, directory) from None
            fd = self._named_temp(directory, flags)
        self._fd = fd
        return os.fdopen(fd, "wb", closefd=True)

    def _named_temp(self, directory: str, flags: int) -> int:
        base = os.path.basename(self._final)
        for _ in range(100):
            name = os.path.join(directory, f".{base}.{os.urandom(4).hex()}.part")
            try:
                fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            except OSError as e:
                raise io_error("cannot create a file in", e, directory) from None
            self._tmp_name = name
            return fd
        raise WarpdriveError(f"cannot create a temporary file in {directory}",
                             errno=E.EEXIST)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self.file.write(data)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise io_error("cannot write", e, self.path) from None

    def commit(self, like: os.stat_result | None = None) -> None:
        """Finish: flush; for a regular file also mode/owner/times from `like` (the input),
        fsync, then put it under its final name. Raises (leaving nothing) on failure."""
        if self._done:
            return
        try:
            self.file.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise io_error("cannot write", e, self.path) from None
        if self.direct:
            self._done = self._committed = True
            if self.file is not sys.stdout.buffer:
                self.file.close()
            return
        fd = self._fd
        try:
            self._set_attributes(fd, like)
            os.fsync(fd)
            self._link(fd)
        except OSError as e:
            raise io_error("cannot write", e, self.path) from None
        self._done = self._committed = True
        self.file.close()
        self._sync_dir()

    @staticmethod
    def _set_attributes(fd: int, like: os.stat_result | None) -> None:
        if like is None:
            os.fchmod(fd, 0o666 & ~_umask())
            return
        # Owner first (it clears set-id bits); set-id bits never travel to a compressed file.
        with contextlib.suppress(OSError):
            os.fchown(fd, like.st_uid if os.geteuid() == 0 else -1, like.st_gid)
        os.fchmod(fd, stat.S_IMODE(like.st_mode) & 0o777)
        os.utime(fd, ns=(like.st_atime_ns, like.st_mtime_ns))

    def _link(self, fd: int) -> None:
        final = self._final
        if self._tmp_name is None:  # unnamed (O_TMPFILE): give it a name in one step
            if not self._replace:
                try:
                    _link_fd(fd, final)  # fails if someone made it meanwhile
                    return
                except FileExistsError:
                    raise OutputExistsError(f"{self.path} appeared while writing; not "
                                            "overwritten", hint="use -f to overwrite it") from None
            self._tmp_name = self._link_temp(fd)
        elif not self._replace:
            try:
                os.link(self._tmp_name, final)
            except FileExistsError:
                raise OutputExistsError(f"{self.path} appeared while writing; not overwritten",
                                        hint="use -f to overwrite it") from None
            except OSError as e:
                if e.errno not in (E.EPERM, E.EOPNOTSUPP):  # no hard links: rename below
                    raise
            else:
                os.unlink(self._tmp_name)
                self._tmp_name = None
                return
        os.replace(self._tmp_name, final)
        self._tmp_name = None

    def _link_temp(self, fd: int) -> str:
        directory = os.path.dirname(self._final) or "."
        base = os.path.basename(self._final)
        while True:
            name = os.path.join(directory, f".{base}.{os.urandom(4).hex()}.part")
            try:
                _link_fd(fd, name)
                return name
            except FileExistsError:
                continue

    def _sync_dir(self) -> None:
        with contextlib.suppress(OSError):
            dfd = os.open(os.path.dirname(self._final) or ".", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    @property
    def committed(self) -> bool:
        return self._committed

    def discard(self) -> None:
        """Drop what was written (a temporary file only; the final name is never touched).
        Safe to call from a signal handler, and more than once."""
        if self._done:
            return
        self._done = True
        name, self._tmp_name = self._tmp_name, None
        if name is not None:
            with contextlib.suppress(OSError):
                os.unlink(name)
        if self.file is not sys.stdout.buffer:
            with contextlib.suppress(OSError, ValueError):
                self.file.close()


_POKE = signal.SIGURG  # ignored by default; only used to interrupt our own blocked syscall


@contextlib.contextmanager
def signals_raise(emergency: Callable[[], None]) -> Iterator[None]:
    """While inside: SIGINT, SIGTERM and SIGHUP raise `Interrupted` on the main thread, so
    `finally` blocks clean up. A second signal during that cleanup calls `emergency()` (which
    must only drop temporary files) and exits at once. Signals ignored on entry (`nohup`, a
    background job's SIGINT) stay ignored, as gzip leaves them.

    Python runs handlers between bytecodes: a signal that lands just before a blocking read()
    only trips a flag, and the read could wait forever. A watcher thread sees every signal
    through the wakeup fd and, until the handler has run, pokes the main thread with a signal
    whose only effect is to interrupt that syscall (EINTR), after which the handler runs."""
    sigs = [s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
            if signal.getsignal(s) != signal.SIG_IGN]
    hits = [0]

    def handler(signum: int, _frame: object) -> None:
        hits[0] += 1
        if hits[0] > 1:
            emergency()
            os._exit(128 + signum)
        raise Interrupted(signum)

    old = {s: signal.getsignal(s) for s in [*sigs, _POKE]}
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    stop_r, stop_w = os.pipe2(os.O_CLOEXEC)
    main = threading.main_thread().ident
    assert main == threading.get_ident(), "signals_raise runs on the main thread"

    def watch() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, [*sigs, _POKE])
        while True:
            ready = sc.wait_readable([r, stop_r], None)
            if stop_r in ready:
                return
            with contextlib.suppress(BlockingIOError):
                os.read(r, 64)
            for _ in range(500):  # 10 s at most; the handler normally runs at the first poke
                if hits[0] or sc.wait_readable([stop_r], 0.02):
                    break
                signal.pthread_kill(main, _POKE)

    signal.signal(_POKE, lambda _s, _f: None)
    for s in sigs:
        signal.signal(s, handler)
    old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="warpdrive-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for s, h in old.items():
            signal.signal(s, h)
        os.write(stop_w, b"x")
        watcher.join()
        for fd in (r, w, stop_r, stop_w):
            os.close(fd)
