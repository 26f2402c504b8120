"""Build (or reuse) the lab's guest kernels from Debian's kernel source packages.

Two kernels, named by version (lab/versions.env KERNELS): "6.12" from `linux-source-6.12` (the
host's own release: bookworm-backports or trixie, in /usr/src) and "7.3" from `linux-source-7.3`
(trixie-backports, fetched and unpacked into the cache by lab/install-deps.sh). Each is
`make tinyconfig` + lab/kernel.config (common) + lab/kernel-<version>.config, checked to survive
olddefconfig, built with its modules (hisi_zip is a module, loaded by tests) and its uAPI headers.

Each build is cached outside the checkout, keyed by a hash of the two fragments, the source
tarball's name and size and RECIPE_VERSION, so a warm run does no kernel work at all. A lock file
per key serializes concurrent builders (a second caller waits instead of building again).

    python lab/kernel.py [6.12|7.3 ...]   # build or reuse; prints each cache directory
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
VERSIONS = LAB_DIR / "versions.env"
CACHE_ROOT = Path(os.environ.get("WARPDRIVE_LAB_CACHE", Path.home() / ".cache" / "warpdrive-lab"))

# Bump when _build() changes what lands in the cache dir. Deliberately not a hash of this file:
# editing a comment here should not cost two 10-minute rebuilds on every machine.
RECIPE_VERSION = 3


class KernelBuildError(RuntimeError):
    pass


def known_versions() -> list[str]:
    """The lab's kernels, in boot order (KERNELS= in lab/versions.env)."""
    m = re.search(r'^KERNELS="([^"]*)"$', VERSIONS.read_text(), re.M)
    if m is None:
        raise KernelBuildError(f"{VERSIONS} has no KERNELS=\"...\" line")
    return m.group(1).split()


def selected_versions() -> list[str]:
    """The kernels this run uses: $WARPDRIVE_LAB_KERNELS (e.g. "6.12" or "7.3,6.12") or all."""
    known = known_versions()
    want = os.environ.get("WARPDRIVE_LAB_KERNELS", "").replace(",", " ").split()
    bad = [v for v in want if v not in known]
    if bad:
        raise KernelBuildError(f"WARPDRIVE_LAB_KERNELS names unknown kernel(s) {', '.join(bad)}; "
                               f"the lab has {', '.join(known)}")
    return [v for v in known if v in want] if want else known


def default_version() -> str:
    return selected_versions()[0]


def source_tarball(version: str) -> Path:
    where = (CACHE_ROOT / "src") if version != "6.12" else Path("/usr/src")
    found = sorted(where.glob(f"linux-source-{version}.tar.*"))
    if not found:
        raise KernelBuildError(
            f"no {where}/linux-source-{version}.tar.* found: run `bash lab/install-deps.sh` "
            "(as root)")
    return found[-1]


def fragments(version: str) -> list[Path]:
    extra = LAB_DIR / f"kernel-{version}.config"
    if version not in known_versions() or not extra.is_file():
        raise KernelBuildError(f"no lab kernel {version!r}: known {', '.join(known_versions())}")
    return [FRAGMENT, extra]


def fragment_options(version: str) -> dict[str, str]:
    """Every option the fragments set; "n" for `# CONFIG_X is not set`."""
    opts: dict[str, str] = {}
    for frag in fragments(version):
        for line in frag.read_text().splitlines():
            line = line.strip()
            if m := re.match(r"^(CONFIG_[A-Z0-9_]+)=(.*)$", line):
                opts[m.group(1)] = m.group(2)
            elif m := re.match(r"^# (CONFIG_[A-Z0-9_]+) is not set$", line):
                opts[m.group(1)] = "n"
    return opts


def cache_key(version: str) -> str:
    tb = source_tarball(version)
    h = hashlib.sha256()
    for frag in fragments(version):
        h.update(frag.read_bytes())
    h.update(f"{tb.name}:{tb.stat().st_size}:recipe{RECIPE_VERSION}".encode())
    return h.hexdigest()[:16]


def cache_dir(version: str) -> Path:
    return CACHE_ROOT / f"kernel-{version}-{cache_key(version)}"


def _run(cmd: list[str], cwd: Path, log: IO[str]) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise KernelBuildError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}); see {log.name}")


def _check_config(config: Path, version: str) -> None:
    have: dict[str, str] = {}
    for line in config.read_text().splitlines():
        m = re.match(r"^(CONFIG_[A-Z0-9_]+)=(.*)$", line)
        if m:
            have[m.group(1)] = m.group(2)
    missing = [f"{k}={v} (got {have.get(k, 'n')})"
               for k, v in fragment_options(version).items() if have.get(k, "n") != v]
    if missing:
        raise KernelBuildError(
            f"options in lab/kernel.config + kernel-{version}.config did not survive "
            "olddefconfig (a dependency is missing or the option is gone): " + ", ".join(missing))


def _built(out: Path) -> bool:
    return all((out / p).exists() for p in ("bzImage", "headers/include/linux/vfio.h",
                                            "modules/lib/modules", "release"))


def ensure_kernel(version: str | None = None, verbose: bool = True) -> Path:
    """Return the cache directory of kernel `version` (default: the first selected), building it
    if needed: bzImage, config, release, modules/lib/modules/<release>/, headers/include/."""
    version = version or default_version()
    out = cache_dir(version)
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
            _build(out, version, verbose)
    return out


def _build(out: Path, version: str, verbose: bool) -> None:
    work = out / "build"
    log_path = out / "build.log"
    t0 = time.monotonic()
    jobs = (os.cpu_count() or 2) + 1
    if verbose:
        print(f"lab: building the {version} guest kernel into {out} (about 10 minutes on 2 cores; "
              f"log {log_path})", file=sys.stderr, flush=True)
    with open(log_path, "w") as log:
        for stale in (work, out / "headers", out / "modules"):
            if stale.exists():
                shutil.rmtree(stale)
        work.mkdir()
        # tar(1), not tarfile: decompression and 80k file writes stay out of Python.
        _run(["tar", "-xf", str(source_tarball(version)), "-C", str(work)], work, log)
        src = next(work.iterdir())
        _run(["make", "tinyconfig"], src, log)
        _run(["scripts/kconfig/merge_config.sh", "-m", ".config",
              *map(str, fragments(version))], src, log)
        _run(["make", "olddefconfig"], src, log)
        _check_config(src / ".config", version)
        _run(["make", f"-j{jobs}", "bzImage", "modules"], src, log)
        _run(["make", f"INSTALL_MOD_PATH={out / 'modules'}", "INSTALL_MOD_STRIP=1",
              "modules_install"], src, log)
        # `make headers` + a copy instead of headers_install, which needs rsync.
        _run(["make", "headers"], src, log)
        shutil.copytree(src / "usr" / "include", out / "headers" / "include",
                        ignore=shutil.ignore_patterns(".*", "*.cmd", "Makefile"))
        shutil.copy2(src / ".config", out / "config")
        release = subprocess.run(["make", "-s", "kernelrelease"], cwd=src, capture_output=True,
                                 text=True).stdout.strip()
        shutil.copy2(src / "arch/x86/boot/bzImage", out / "bzImage.tmp")
        os.replace(out / "bzImage.tmp", out / "bzImage")
        seconds = time.monotonic() - t0
        (out / "build-seconds").write_text(f"{seconds:.0f} (-j{jobs}, {os.cpu_count()} cpus)\n")
        (out / "release").write_text(release + "\n")  # last: _built() checks it
        shutil.rmtree(work)
    if verbose:
        print(f"lab: {version} kernel built in {seconds:.0f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        for v in sys.argv[1:] or selected_versions():
            print(ensure_kernel(v))
    except KernelBuildError as e:
        print(f"lab: {e}", file=sys.stderr)
        sys.exit(1)
