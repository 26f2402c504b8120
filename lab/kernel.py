"""Build (or reuse) the lab's guest kernel from Debian's linux-source-6.12 and a committed fragment.

The build is cached outside the checkout, keyed by a hash of the fragment and the source tarball's
name and size, so a warm run does no kernel work at all. The kernel's own uAPI headers are installed
next to the image for the ABI conformance test.

    python lab/kernel.py            # build or reuse; prints the cache directory
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

LAB_DIR = Path(__file__).resolve().parent
FRAGMENT = LAB_DIR / "kernel.config"
SOURCE_GLOB = "linux-source-6.12.tar.*"
CACHE_ROOT = Path(os.environ.get("WARPDRIVE_LAB_CACHE", Path.home() / ".cache" / "warpdrive-lab"))


class KernelBuildError(RuntimeError):
    pass


def source_tarball() -> Path:
    found = sorted(Path("/usr/src").glob(SOURCE_GLOB))
    if not found:
        raise KernelBuildError(
            "no /usr/src/linux-source-6.12.tar.* found: run `bash lab/install-deps.sh` "
            "(installs linux-source-6.12 from bookworm-backports)"
        )
    return found[-1]


def fragment_options() -> dict[str, str]:
    opts: dict[str, str] = {}
    for line in FRAGMENT.read_text().splitlines():
        m = re.match(r"^(CONFIG_[A-Z0-9_]+)=(.*)$", line.strip())
        if m:
            opts[m.group(1)] = m.group(2)
    return opts


# Bump when _build() changes what lands in the cache dir. Deliberately not a hash of this file:
# editing a comment here should not cost a 5-minute rebuild on every machine.
RECIPE_VERSION = 2


def cache_key() -> str:
    tb = source_tarball()
    h = hashlib.sha256()
    h.update(FRAGMENT.read_bytes())
    h.update(f"{tb.name}:{tb.stat().st_size}:recipe{RECIPE_VERSION}".encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    return CACHE_ROOT / f"kernel-{cache_key()}"


def bzimage_path() -> Path:
    return cache_dir() / "bzImage"


def headers_path() -> Path:
    """Directory holding include/linux/vfio.h etc. from the lab kernel's own tree."""
    return cache_dir() / "headers" / "include"


def _run(cmd: list[str], cwd: Path, log: IO[str]) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise KernelBuildError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}); see {log.name}")


def _check_config(config: Path) -> None:
    want = fragment_options()
    have: dict[str, str] = {}
    for line in config.read_text().splitlines():
        m = re.match(r"^(CONFIG_[A-Z0-9_]+)=(.*)$", line)
        if m:
            have[m.group(1)] = m.group(2)
    missing = [f"{k}={v} (got {have.get(k, 'unset')})" for k, v in want.items() if have.get(k) != v]
    if missing:
        raise KernelBuildError(
            "options in lab/kernel.config did not survive olddefconfig (a dependency is missing): "
            + ", ".join(missing)
        )


def _built(out: Path) -> bool:
    return (out / "bzImage").is_file() and (out / "headers/include/linux/vfio.h").is_file()


def ensure_kernel(verbose: bool = True) -> Path:
    """Return the cache directory holding bzImage and headers/, building them if needed.

    Concurrent callers (a pytest session and a `lab/run.py` started by hand) serialize on a lock
    file, so the second one waits for the first build instead of wiping its tree.
    """
    out = cache_dir()
    if _built(out):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if verbose:
                print(f"lab: waiting for another build of {out.name} to finish", file=sys.stderr,
                      flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not _built(out):
            _build(out, verbose)
    return out


def _build(out: Path, verbose: bool) -> None:
    work = out / "build"
    log_path = out / "build.log"
    t0 = time.monotonic()
    if verbose:
        print(f"lab: building the guest kernel into {out} (about 5 minutes on 2 cores; "
              f"log {log_path})", file=sys.stderr, flush=True)
    with open(log_path, "w") as log:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        # tar(1), not tarfile: decompression and 80k file writes stay out of Python.
        _run(["tar", "-xf", str(source_tarball()), "-C", str(work)], work, log)
        src = next(work.iterdir())
        jobs = str((os.cpu_count() or 2) + 1)
        _run(["make", "tinyconfig"], src, log)
        _run(["scripts/kconfig/merge_config.sh", "-m", ".config", str(FRAGMENT)], src, log)
        _run(["make", "olddefconfig"], src, log)
        _check_config(src / ".config")
        _run(["make", f"-j{jobs}", "bzImage"], src, log)
        # `make headers` + a copy instead of headers_install, which needs rsync.
        _run(["make", "headers"], src, log)
        hdr = out / "headers"
        if hdr.exists():
            shutil.rmtree(hdr)
        shutil.copytree(src / "usr" / "include", hdr / "include",
                        ignore=shutil.ignore_patterns(".*", "*.cmd", "Makefile"))
        shutil.copy2(src / "arch/x86/boot/bzImage", out / "bzImage.tmp")
        shutil.copy2(src / ".config", out / "config")
        release = subprocess.run(["make", "-s", "kernelrelease"], cwd=src, capture_output=True,
                                 text=True).stdout.strip()
        (out / "release").write_text(release + "\n")
        os.replace(out / "bzImage.tmp", out / "bzImage")
        shutil.rmtree(work)
    if verbose:
        print(f"lab: kernel built in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        print(ensure_kernel())
    except KernelBuildError as e:
        print(f"lab: {e}", file=sys.stderr)
        sys.exit(1)
