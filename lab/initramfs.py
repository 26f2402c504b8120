"""Build (or reuse) the lab guest's initramfs: static busybox plus lab/init.sh as /init.

Written as a newc cpio directly from Python, so building needs no root (the /dev/console node is
just a header) and the archive is byte-for-byte reproducible. Cached next to the kernel, keyed by a
hash of busybox, init.sh and this file.

    python lab/initramfs.py         # build or reuse; prints the path of initramfs.gz
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

LAB_DIR = Path(__file__).resolve().parent
INIT_SCRIPT = LAB_DIR / "init.sh"
BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
CACHE_ROOT = Path(os.environ.get("WARPDRIVE_LAB_CACHE", Path.home() / ".cache" / "warpdrive-lab"))


class InitramfsError(RuntimeError):
    pass


def busybox_path() -> Path:
    for p in BUSYBOX_CANDIDATES:
        if p.is_file():
            return p
    raise InitramfsError("no static busybox found: run `bash lab/install-deps.sh` "
                         "(installs busybox-static)")


def _is_static(path: Path) -> bool:
    """True if the 64-bit ELF at path has no PT_INTERP header (no dynamic loader to find)."""
    data = path.read_bytes()
    if data[:5] != b"\x7fELF\x02":
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    pt_interp = 3
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != pt_interp
               for i in range(phnum))


class _Cpio:
    """Minimal writer for the newc format the kernel unpacks (see Documentation/.../initramfs)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        namez = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0]
        self.ino += 1
        self.out += b"070701" + b"".join(b"%08X" % f for f in fields) + namez
        self.out += b"\0" * (-len(self.out) % 4)
        self.out += data
        self.out += b"\0" * (-len(self.out) % 4)

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return bytes(self.out)


def cache_key() -> str:
    h = hashlib.sha256()
    h.update(busybox_path().read_bytes())
    h.update(INIT_SCRIPT.read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def build(dest: Path) -> None:
    bb = busybox_path()
    if not _is_static(bb):
        raise InitramfsError(f"{bb} is dynamically linked; install busybox-static")
    applets = subprocess.run([str(bb), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    c = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "host", "rw", "newroot"):
        c.dir(d)
    # The kernel opens /dev/console for PID 1 before /init can mount devtmpfs.
    c.chardev("dev/console", 5, 1)
    c.file("bin/busybox", bb.read_bytes())
    for a in sorted(set(applets) - {"busybox"}):
        c.symlink(f"bin/{a}", "busybox")
    c.file("init", INIT_SCRIPT.read_bytes())
    tmp = dest.with_suffix(f".{os.getpid()}.tmp")  # concurrent builders must not share it
    tmp.write_bytes(gzip.compress(c.finish(), compresslevel=6, mtime=0))
    os.replace(tmp, dest)


def ensure_initramfs() -> Path:
    """Return the path of initramfs.gz, building it if its inputs changed."""
    out = CACHE_ROOT / f"initramfs-{cache_key()}"
    dest = out / "initramfs.gz"
    if not dest.is_file():
        out.mkdir(parents=True, exist_ok=True)
        build(dest)
    return dest


if __name__ == "__main__":
    try:
        print(ensure_initramfs())
    except (InitramfsError, subprocess.CalledProcessError) as e:
        print(f"lab: {e}", file=sys.stderr)
        sys.exit(1)
