"""The lab's QEMU: the version pinned in lab/versions.env, from Debian trixie-backports.

lab/install-deps.sh caches it in a small trixie root (mmdebstrap) outside the checkout; it runs
from there through the root's own dynamic loader and libraries, so a Debian 12 host (older glibc
and libraries) runs it unchanged and the host's apt never sees trixie. The one QEMU serves every
boot: it has `vfio-user-pci` (QEMU >= 10.1), and it boots the lab faster than bookworm-backports'
10.0 did (2.0-2.5 s vs 2.3-7.1 s to a command, lab-facts).

$WARPDRIVE_LAB_QEMU overrides it with any qemu-system-x86_64 (a path or a name on PATH).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from lab.kernel import CACHE_ROOT

LAB_DIR = Path(__file__).resolve().parent
VERSIONS = LAB_DIR / "versions.env"
LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")
# Firmware: QEMU's own blobs, SeaBIOS (symlinked from usr/share/qemu by absolute paths, which
# would point into the host), iPXE option ROMs for the virtio-net function.
FIRMWARE_DIRS = ("usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu")


class QemuMissing(RuntimeError):
    pass


def pinned_version() -> str:
    """QEMU_VERSION from lab/versions.env, e.g. '1:11.1.3+ds-2~bpo13+1'."""
    m = re.search(r"^QEMU_VERSION=(\S+)$", VERSIONS.read_text(), re.M)
    if m is None:
        raise QemuMissing(f"{VERSIONS} has no QEMU_VERSION= line")
    return m.group(1)


def root_dir() -> Path:
    return CACHE_ROOT / f"qemu-root-{pinned_version().split(':', 1)[-1]}"


def command() -> list[str]:
    """argv prefix that starts the lab's QEMU (options follow it)."""
    override = os.environ.get("WARPDRIVE_LAB_QEMU")
    if override:
        found = shutil.which(override)
        if found is None:
            raise QemuMissing(f"{override} not found: fix $WARPDRIVE_LAB_QEMU or unset it to use "
                              "the lab's own QEMU")
        return [found]
    root = root_dir()
    binary = root / "usr/bin/qemu-system-x86_64"
    if not (root / ".warpdrive-lab-ok").is_file() or not binary.is_file():
        raise QemuMissing(f"QEMU {pinned_version()} not found in {root}: run "
                          "`bash lab/install-deps.sh` as root (builds it in about a minute)")
    libs = ":".join(str(root / d) for d in LIB_DIRS)
    cmd = ["env", f"QEMU_MODULE_DIR={root}/usr/lib/x86_64-linux-gnu/qemu",
           str(root / "lib64/ld-linux-x86-64.so.2"), "--library-path", libs, str(binary)]
    for d in FIRMWARE_DIRS:
        cmd += ["-L", str(root / d)]
    return cmd
