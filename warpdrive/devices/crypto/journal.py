"""Session journal: the sessions a process holds on a virtio-crypto function, kept in a file so
that whoever opens the function next can destroy what a dead owner left behind.

Why: virtio-crypto sessions live in the device, not in the process. A process that dies without
closing (SIGKILL, a crash) leaves its sessions allocated, and a device reset does not free them in
QEMU's builtin backend (its reset leaves the backend's session table alone), which holds 256 in
all: after enough deaths no one can create a session until QEMU restarts. The kernel cannot help:
it does not know what a session is.

How: one file per function under the runtime directory (/run/warpdrive/crypto-sessions, else
$XDG_RUNTIME_DIR/warpdrive/..., else /tmp/warpdrive-<uid>/...): `<key>.lock`, held with flock()
by the engine that owns the function for as long as it is open (the kernel drops the lock when
the process dies, however it dies), and `<key>.ids`, the session ids it holds, replaced atomically
(write to a temporary file, rename) after each change. The next engine takes the lock, reads the
ids and destroys them.

Ordering keeps it safe against QEMU, which aborts on a destroy of an id it does not have: an id is
recorded only after the device returned it, and removed before it is destroyed. A death between
the two steps at worst leaks that one session; it never makes anyone destroy a stranger's id.
The key names the function and the boot (PCI address + /proc boot id; vfio-user socket + server
pid), so ids never outlive the device that issued them.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import tempfile

from ...errors import DeviceBusyError
from ...forkguard import ForkSafe, close_fd_quietly

log = logging.getLogger("warpdrive.crypto")


def journal_dir() -> str | None:
    """A private directory for journals, created if needed; None if none is writable."""
    uid = os.getuid()
    candidates = ["/run/warpdrive/crypto-sessions"] if uid == 0 else []
    if os.environ.get("XDG_RUNTIME_DIR"):
        candidates.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "warpdrive",
                                       "crypto-sessions"))
    candidates.append(os.path.join(tempfile.gettempdir(), f"warpdrive-{uid}", "crypto-sessions"))
    for d in candidates:
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            st = os.stat(d)
            if st.st_uid == uid and not st.st_mode & 0o022:  # ours, not writable by others
                return d
        except OSError:
            continue
    return None


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown-boot"


def journal_key(identity: str) -> str:
    """A file name for a device identity (readable prefix + hash of the whole)."""
    digest = hashlib.sha256(f"{_boot_id()}|{identity}".encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9_.:-]+", "_", identity)[-48:]
    return f"{readable}-{digest}"


class SessionJournal(ForkSafe):
    """The session ids one engine holds, recorded for its successor. Use `acquire()` first."""

    def __init__(self, identity: str, directory: str) -> None:
        self.identity = identity
        base = os.path.join(directory, journal_key(identity))
        self.lock_path = base + ".lock"
        self.ids_path = base + ".ids"
        self._fd = -1
        self._ids: set[int] = set()

    def acquire(self) -> list[int]:
        """Take the function; return the ids a dead previous owner left (to destroy now).
        DeviceBusyError if a live process holds it."""
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise DeviceBusyError(
                    f"virtio-crypto {self.identity} is in use by process {holder}",
                    hint="one process drives a function at a time; close it there first"
                ) from None
            try:  # the holder we waited for may have removed the file: lock the live one
                if os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        self._fork_register()
        try:
            with open(self.ids_path) as f:
                left = sorted({int(x) for x in f.read().split()})
        except FileNotFoundError:
            left = []
        except (OSError, ValueError) as e:
            log.warning("virtio-crypto %s: unreadable session journal %s (%s); ignoring it",
                        self.identity, self.ids_path, e)
            left = []
        self._ids = set(left)  # still ours to destroy until the successor says otherwise
        return left

    def add(self, sid: int) -> None:
        self._ids.add(sid)
        self._write()

    def remove(self, sid: int) -> None:
        self._ids.discard(sid)
        self._write()

    def _write(self) -> None:
        if self._fd < 0 or self._forked_dead:
            return
        tmp = f"{self.ids_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write("".join(f"{i}\n" for i in sorted(self._ids)))
        os.replace(tmp, self.ids_path)  # whole or not at all, even if we die mid-write

    def release(self, *, keep_ids: bool = False) -> None:
        """Let the function go; with `keep_ids` the recorded ids stay for the next owner (the
        device could not destroy them), else the journal is emptied."""
        if self._fd < 0:
            return
        if not self._forked_dead and not keep_ids:
            self._ids.clear()
            for path in (self.ids_path, self.lock_path):  # nothing left: leave no files
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        close_fd_quietly(self._fd)  # drops the lock (in a forked child: only our copy)
        self._fd = -1
        self._fork_unregister()

    def _fork_invalidate(self) -> None:
        close_fd_quietly(self._fd)  # the parent keeps the lock: flock belongs to its open file
        self._fd = -1
