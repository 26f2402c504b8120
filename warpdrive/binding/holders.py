"""Which processes hold a device open: open fds on its nodes, or mmaps of its sysfs BAR files.

Read from /proc directly: the processes (its numeric entries), their fds, matched by stat()ing
/proc/<pid>/fd/<n> (the identity of the open file, not its path; a library listing "open files"
would miss /dev/vfio/7, which is not a regular file), their mappings (/proc/<pid>/maps), and
their name, command line and real uid (comm, cmdline, status), as ps shows them. No psutil: its
import alone cost 3.5 s per process in the TCG lab guest, for what these few reads give.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Holder:
    pid: int
    name: str
    cmdline: str
    user: str | None
    holds: str
    """What it holds, e.g. "fd 5 -> /dev/vfio/7" or "mmap /sys/devices/.../resource0"."""

    def describe(self) -> str:
        who = f"pid {self.pid} ({self.name}"
        if self.user:
            who += f", user {self.user}"
        who += ")"
        if self.cmdline:
            who += f" `{self.cmdline}`"
        return f"{who} holds {self.holds}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Targets:
    """What to look for. Paths are matched by file identity (st_dev, st_ino), device numbers by
    st_rdev and node type, mapping prefixes by the path printed in /proc/<pid>/maps."""

    paths: tuple[str, ...] = ()
    devnums: tuple[tuple[str, int, int, str], ...] = ()
    """("c" or "b", major, minor, label), the label naming the device in reports."""
    map_prefixes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.paths or self.devnums or self.map_prefixes)


def _identities(paths: Iterable[str]) -> dict[tuple[int, int], str]:
    ids = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue  # a node that does not exist cannot be held
        ids[(st.st_dev, st.st_ino)] = p
    return ids


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _proc_info(pid: int) -> tuple[str, str, str | None]:
    """Name (comm), command line and user (of the real uid) of `pid`; ("?", "", None) once it
    is gone or unreadable."""
    base = f"/proc/{pid}"
    try:
        name = _read(f"{base}/comm").decode(errors="replace").rstrip("\n")
        cmdline = " ".join(a.decode(errors="replace")
                           for a in _read(f"{base}/cmdline").split(b"\0") if a)
        status = _read(f"{base}/status").decode(errors="replace")
    except OSError:
        return "?", "", None
    user: str | None = None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            try:
                user = pwd.getpwuid(int(line.split()[1])).pw_name
            except (KeyError, ValueError, IndexError):
                user = None
            break
    return name, cmdline, user


def _pids() -> list[int]:
    return sorted(int(e) for e in os.listdir("/proc") if e.isdigit())


def _fd_hits(pid: int, ids: dict[tuple[int, int], str],
             rdevs: dict[tuple[bool, int], str]) -> list[str]:
    hits: list[str] = []
    base = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(base)
    except OSError:
        return hits  # gone, or not ours to inspect (reported by the caller when not root)
    for fd in fds:
        try:
            st = os.stat(f"{base}/{fd}")
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in ids:
            hits.append(f"fd {fd} -> {ids[key]}")
            continue
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            what = rdevs.get((stat.S_ISCHR(st.st_mode), st.st_rdev))
            if what:
                hits.append(f"fd {fd} -> {what}")
    return hits


def _map_hits(pid: int, ids: dict[tuple[int, int], str], prefixes: Sequence[str]) -> list[str]:
    hits: list[str] = []
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.readlines()
    except OSError:
        return hits
    seen = set()
    for line in lines:
        # address perms offset dev inode [path]
        parts = line.split(maxsplit=5)
        if len(parts) < 6:
            continue
        path = parts[5].strip()
        major, minor = (int(x, 16) for x in parts[3].split(":"))
        key = (os.makedev(major, minor), int(parts[4]))
        hit = ids.get(key) if key[1] else None
        if hit is None and any(path.startswith(p) for p in prefixes):
            hit = path
        if hit is not None and hit not in seen:
            seen.add(hit)
            hits.append(f"mmap {hit}")
    return hits


def find_holders(targets: Targets, *, exclude_pids: Iterable[int] = ()) -> list[Holder]:
    """Every process with an open fd on, or a mapping of, anything in `targets`."""
    if targets.empty:
        return []
    ids = _identities(targets.paths)
    rdevs = {(kind == "c", os.makedev(major, minor)): f"{label} ({major}:{minor})"
             for kind, major, minor, label in targets.devnums}
    prefixes = tuple(targets.map_prefixes)
    skip = set(exclude_pids)
    holders: list[Holder] = []
    for pid in _pids():
        if pid in skip:
            continue
        hits = _fd_hits(pid, ids, rdevs) + _map_hits(pid, ids, prefixes)
        if hits:
            name, cmdline, user = _proc_info(pid)
            holders.extend(Holder(pid, name, cmdline, user, h) for h in hits)
    return holders


def can_inspect_all() -> bool:
    """Without root, other users' /proc/<pid>/fd are unreadable, so 'nobody holds it' is weak."""
    return os.geteuid() == 0
