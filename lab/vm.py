"""Boot the lab guest under QEMU (TCG, q35, intel-iommu) and run one command in it.

The host's / is shared read-only over 9p and the command runs chrooted into it, in the same
directory as on the host, as root, with WARPDRIVE_IN_LAB=1. A second, writable 9p share (a host temp
directory, mounted in the guest at the same absolute path) carries job.sh in and exit-code, dmesg
and any report files out. The guest's console is the command's stdout+stderr: everything between
the init's begin and end markers is streamed to the caller as it arrives.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from lab import emu, initramfs, kernel, qemu
from lab import virtio_crypto as virtio_crypto_lab

LAB_DIR = Path(__file__).resolve().parent
CHECKOUT = LAB_DIR.parent

BEGIN = b"@@warpdrive-lab:begin@@\n"
END_PREFIX = b"@@warpdrive-lab:end "
END_RE = re.compile(rb"@@warpdrive-lab:end (-?\d+)@@\n")
END_PARTIAL_RE = re.compile(rb"@@warpdrive-lab:end -?\d*@?@?")

# The guest's devices, as on a real machine: edu unbound, virtio-crypto and the NIC on virtio-pci.
# The 9p transports are not behind iommu_platform (QEMU's virtio-9p then bypasses the vIOMMU).
QEMU_VIRTIO_CRYPTO: tuple[str, ...] = (
    "-object", "cryptodev-backend-builtin,id=cryptodev0",
    "-device", "virtio-crypto-pci,id=crypto0,cryptodev=cryptodev0,iommu_platform=on,"
               "disable-legacy=on",
)
_PLATFORM = ("-device", "intel-iommu,intremap=on,caching-mode=on", "-device", "edu")
_NIC = ("-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0")
DEVICES: tuple[str, ...] = (*_PLATFORM, *QEMU_VIRTIO_CRYPTO, *_NIC)

# A boot reaches the command in 5-20 s (up to ~90 s with the crypto self-tests on a loaded
# machine); one that has not after this long has stalled (seen once in a 7.3 TCG boot: 13 min of
# busy vCPU, not a byte on the console) and is killed, which the lab retries once like any boot
# that dies before the command, instead of waiting out the whole run's timeout.
BOOT_TIMEOUT_S = float(os.environ.get("WARPDRIVE_LAB_BOOT_TIMEOUT", "300"))

# Lines in the guest's dmesg that mean the kernel itself complained during the run.
KERNEL_PROBLEM_RE = re.compile(
    r"WARNING: CPU|BUG:|Oops|general protection fault|Kernel panic|DMAR: \[DMA (Read|Write)|"
    r"DMAR: DRHD: handling fault|INFO: task .* blocked"
)


class LabError(RuntimeError):
    """The lab itself could not run (missing QEMU, failed kernel build, unusable temp dir)."""


@dataclass
class LabResult:
    returncode: int | None  # the command's exit status; None when the guest never reported one
    timed_out: bool
    results: Path  # console.log, qemu.stderr, dmesg, exit-code and whatever the command wrote
    boot_seconds: float | None = None  # QEMU start until the command starts in the guest
    command_seconds: float | None = None  # command start until its end marker
    total_seconds: float = 0.0
    error: str | None = None  # why returncode is None
    kernel_problems: list[str] = field(default_factory=list)
    server_problems: list[str] = field(default_factory=list)  # from the vfio-user model servers

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = (self.results / "console.log").read_bytes().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.replace("\r\n", "\n").splitlines()[-lines:])


def qemu_argv() -> list[str]:
    """How to start the lab's QEMU (lab/qemu.py: the pinned 11.1, or $WARPDRIVE_LAB_QEMU)."""
    try:
        return qemu.command()
    except qemu.QemuMissing as e:
        raise LabError(str(e)) from None


def new_results_dir() -> Path:
    """A host temp dir for the writable share; it is mounted at the same path in the guest."""
    path = Path(tempfile.mkdtemp(prefix="warpdrive-lab-"))
    if re.search(r"[\s,]", str(path)):
        shutil.rmtree(path)
        raise LabError(f"temp dir {path} contains a space or comma, which the kernel command line "
                       "and QEMU's -virtfs cannot carry; set TMPDIR to a plain path")
    return path


# The guest mounts fresh tmpfs here; host paths below them must be exposed explicitly.
GUEST_TMPFS = (Path("/tmp"), Path("/var/tmp"), Path("/run"))


def _hidden_in_guest(paths: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for p in sorted(paths, key=lambda p: len(p.parts)):
        if not p.is_absolute() or any(p.is_relative_to(f) for f in found):
            continue
        if any(p.is_relative_to(t) and p != t for t in GUEST_TMPFS):
            if re.search(r"[\s:,]", str(p)):
                raise LabError(f"{p} is under a guest tmpfs and contains a space, colon or comma, "
                               "which the kernel command line cannot carry; move it")
            found.append(p)
    return found


def qemu_command(kernel_dir: Path, initrd: Path, results: Path, *, smp: int = 2,
                 memory: str = "2G", hugepages: int = 16, expose: Sequence[Path] = (),
                 kernel_args: Sequence[str] = (), qemu_args: Sequence[str] = (),
                 virtio_crypto: bool = False) -> list[str]:
    """QEMU's command line for one lab boot. virtio_crypto=True is the boot of Linux's
    virtio_crypto witness: the driver is not blacklisted, and QEMU's own virtio-crypto is left
    out (nothing there may move a function Linux's driver holds, and 7.3's full cbc(aes)
    self-test on QEMU's function never finished), so the driver serves the models alone."""
    # no_timer_check: under TCG on a busy host the boot-time check that the timer IRQ arrives
    # through the (interrupt-remapped) IO-APIC can time out, and with IRQ remapping that is a
    # panic ("timer doesn't work through Interrupt-remapped IO-APIC"); seen once so far.
    # initcall_blacklist=virtio_crypto_driver_init: Linux's virtio_crypto (built in) never binds
    # QEMU's virtio-crypto, so tests may move that function between virtio-pci and vfio-pci
    # freely. With crypto self-tests on (the lab kernels have them, for hisi_zip), each rebind
    # registers cbc(aes) again and self-tests it, and 6.12 hung or corrupted memory when the
    # function left the driver meanwhile (lab/virtio_crypto.py).
    append = ["console=ttyS0", "quiet", "panic=-1", "no_timer_check", f"wd.results={results}",
              f"wd.hugepages={hugepages}"]
    devices = (*_PLATFORM, *_NIC) if virtio_crypto else DEVICES
    if not virtio_crypto:
        append.insert(4, "initcall_blacklist=virtio_crypto_driver_init")
    if expose:
        append.append("wd.expose=" + ":".join(map(str, expose)))
    config = kernel_dir / "config"
    if config.is_file() and virtio_crypto_lab.slow_selftests_built(config):
        # 7.3's CRYPTO_SELFTESTS_FULL fuzzes every algorithm registered at boot (minutes of TCG
        # CPU per boot, none of it about our devices); the virtio_crypto witness turns the slow
        # tests back on for the registration it judges (lab/virtio_crypto.py full_selftests).
        append.append("cryptomgr.noslowtests=1")
    # $WARPDRIVE_LAB_APPEND reaches guests booted by the pytest plugin too (e.g. iommu.strict=1).
    append += [*os.environ.get("WARPDRIVE_LAB_APPEND", "").split(), *kernel_args]
    return [
        *qemu_argv(),
        "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
        # Guest RAM in a shared memfd: vfio-user servers map it (QEMU passes its fd in DMA_MAP).
        "-object", f"memory-backend-memfd,id=ram,size={memory},share=on",
        "-machine", "q35,kernel-irqchip=split,memory-backend=ram",
        "-accel", "tcg,thread=multi",
        "-cpu", "max", "-smp", str(smp), "-m", memory,
        # Serial console on QEMU's stdout; stdin is /dev/null, so the host terminal is untouched.
        "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
        *devices,
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                   "multidevs=remap",
        "-virtfs", f"local,path={results},mount_tag=results,security_model=none",
        "-kernel", str(kernel_dir / "bzImage"),
        "-initrd", str(initrd),
        "-append", " ".join(append),
        *qemu_args,
    ]


def _guest_path() -> str:
    """The host's PATH with the project's venv first, so `python` and `warpdrive` in a guest
    command are the venv's (which has the runtime deps), as `python lab/run.py -- python x.py`
    promises."""
    path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    if sys.prefix != sys.base_prefix:
        venv_bin = Path(sys.prefix) / "bin"
    else:
        venv_bin = Path(__file__).resolve().parent.parent / ".venv" / "bin"
    if (venv_bin / "python").exists():
        path = f"{venv_bin}:{path}"
    return path


def guest_env(results: Path, kernel_dir: Path, extra: Mapping[str, str] = {},
              kernel_version: str = "") -> dict[str, str]:
    """The command's whole environment in the guest (init runs it under `env -i`)."""
    env = {
        "PATH": _guest_path(),
        "HOME": "/root",
        "USER": "root",
        "LOGNAME": "root",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "TERM": "dumb",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTEST_ADDOPTS": "-p no:cacheprovider",
        "WARPDRIVE_IN_LAB": "1",
        "WARPDRIVE_LAB_KERNEL": str(kernel_dir),
        "WARPDRIVE_LAB_KERNEL_VERSION": kernel_version,
        "WARPDRIVE_LAB_RESULTS": str(results),
    }
    # Developer knobs (WARPDRIVE_DEBUG=...) follow the command in; the host-only skip switch not.
    for k, v in os.environ.items():
        # Not the host-only switches: the lab skip, and the host's ban on sysfs binding writes
        # (binding is real, and allowed, in the guest).
        if k.startswith("WARPDRIVE_") and k not in env and k not in (
                "WARPDRIVE_LAB", "WARPDRIVE_FORBID_SYSFS_WRITES"):
            env[k] = v
    env.update(extra)
    return env


def write_job(results: Path, argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> None:
    lines = ["# written by lab/vm.py; run by the guest's /init under `env -i chroot`"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines += [f"cd {shlex.quote(str(cwd))} || exit 125", "exec " + shlex.join(argv)]
    (results / "job.sh").write_text("\n".join(lines) + "\n")


class _Demux:
    """Splits the console stream into boot noise, the command's output and shutdown noise.

    Markers may arrive split across reads, so a tail that could be the start of a marker is held
    back until the next chunk decides it.
    """

    def __init__(self, output: BinaryIO | None, boot_output: BinaryIO | None) -> None:
        self.output = output
        self.boot_output = boot_output
        self.state = "boot"
        self.pending = b""
        self.console_rc: int | None = None
        self.begin_t: float | None = None
        self.end_t: float | None = None

    @staticmethod
    def _held(buf: bytes, marker: bytes) -> int:
        for n in range(min(len(buf), len(marker) - 1), 0, -1):
            if marker.startswith(buf[-n:]):
                return n
        return 0

    def _emit(self, stream: BinaryIO | None, data: bytes) -> None:
        if stream is not None and data:
            stream.write(data)
            stream.flush()

    def feed(self, chunk: bytes) -> None:
        self.pending += chunk
        if self.state == "boot":
            i = self.pending.find(BEGIN)
            if i < 0:
                keep = self._held(self.pending, BEGIN)
                self._emit(self.boot_output, self.pending[: len(self.pending) - keep])
                self.pending = self.pending[len(self.pending) - keep:]
                return
            self._emit(self.boot_output, self.pending[:i])
            self.pending = self.pending[i + len(BEGIN):]
            self.state = "run"
            self.begin_t = time.monotonic()
        while self.state == "run":
            i = self.pending.find(END_PREFIX)
            if i < 0:
                keep = self._held(self.pending, END_PREFIX)
                self._emit(self.output, self.pending[: len(self.pending) - keep])
                self.pending = self.pending[len(self.pending) - keep:]
                return
            m = END_RE.match(self.pending, i)
            if m is not None:
                self._emit(self.output, self.pending[:i])
                self.console_rc = int(m.group(1))
                self.end_t = time.monotonic()
                self.pending = self.pending[m.end():]
                self.state = "done"
            elif END_PARTIAL_RE.fullmatch(self.pending, i):  # rest of the marker not here yet
                self._emit(self.output, self.pending[:i])
                self.pending = self.pending[i:]
                return
            else:  # the command printed something marker-like: pass it on, look further
                self._emit(self.output, self.pending[: i + 1])
                self.pending = self.pending[i + 1:]
        if self.state == "done":
            self._emit(self.boot_output, self.pending)
            self.pending = b""


def run_in_lab(argv: Sequence[str], results: Path, *, cwd: Path = CHECKOUT,
               timeout: float = 600.0, output: BinaryIO | None = None,
               boot_output: BinaryIO | None = None, env: Mapping[str, str] = {},
               kernel_args: Sequence[str] = (), qemu_args: Sequence[str] = (),
               emu_devices: Sequence[emu.EmuDevice] = emu.EMU_DEVICES,
               kernel_version: str | None = None, cancel: threading.Event | None = None,
               verbose_build: bool = True, virtio_crypto: bool = False) -> LabResult:
    """Boot the guest on kernel `kernel_version` (lab/kernel.py; default the first selected),
    run argv in cwd, stream its output to `output`, and power off. virtio_crypto=True: the
    boot of Linux's virtio_crypto witness (qemu_command).

    `results` must be an empty directory from new_results_dir(); the caller removes it. Raises
    LabError only when the guest cannot be started; a guest that crashes, times out or is
    cancelled (`cancel` set from another thread) is reported in the result (returncode None,
    error set) with its console log kept in `results`.
    """
    qemu_argv()  # fail before a 10-minute kernel build, not after
    try:
        kernel_version = kernel_version or kernel.default_version()
        kernel_dir = kernel.ensure_kernel(kernel_version, verbose=verbose_build)
        initrd = initramfs.ensure_initramfs()
    except (kernel.KernelBuildError, initramfs.InitramfsError, subprocess.CalledProcessError) as e:
        raise LabError(str(e)) from e
    if not cwd.is_absolute():
        cwd = cwd.resolve()
    write_job(results, argv, cwd, guest_env(results, kernel_dir, env,
                                            kernel_version=kernel_version))
    # The kernel's cache dir too: guest tests read its `release` and uAPI headers.
    seen = [CHECKOUT, cwd, kernel_dir] + ([Path(argv[0]).parent] if argv else [])
    expose = _hidden_in_guest(seen)
    try:
        servers = emu.start_servers(emu_devices, results)
    except emu.EmuError as e:
        raise LabError(str(e)) from e
    try:
        return _boot(argv, results, kernel_dir, initrd, expose, timeout, output, boot_output,
                     kernel_args, [*(a for s in servers for a in s.qemu_args()), *qemu_args],
                     servers, cancel, virtio_crypto)
    finally:
        emu.stop_servers(servers)


def _boot(argv: Sequence[str], results: Path, kernel_dir: Path, initrd: Path,
          expose: Sequence[Path], timeout: float, output: BinaryIO | None,
          boot_output: BinaryIO | None, kernel_args: Sequence[str], qemu_args: Sequence[str],
          servers: Sequence[emu.EmuServer], cancel: threading.Event | None,
          virtio_crypto: bool = False) -> LabResult:
    cmd = qemu_command(kernel_dir, initrd, results, expose=expose, kernel_args=kernel_args,
                       qemu_args=qemu_args, virtio_crypto=virtio_crypto)
    (results / "qemu.cmdline").write_text(shlex.join(cmd) + "\n")

    demux = _Demux(output, boot_output)
    timed_out = cancelled = stalled = False
    t0 = time.monotonic()
    deadline = t0 + timeout
    boot_deadline = t0 + BOOT_TIMEOUT_S
    with open(results / "console.log", "wb") as log, open(results / "qemu.stderr", "wb") as err:
        # Own session: a Ctrl-C on the caller's terminal reaches us, and we kill QEMU in finally.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                start_new_session=True)
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                if cancel is not None and cancel.is_set():
                    cancelled = True
                    break
                if demux.begin_t is None and time.monotonic() > boot_deadline:
                    stalled = True  # a boot that never reaches the command (TCG, rarely)
                    break
                ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
                if not ready:
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break  # QEMU closed the console: it has exited or is exiting
                log.write(chunk)
                demux.feed(chunk)
            if not timed_out and not cancelled:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            # Timeout, Ctrl-C, or a QEMU that closed its console but hangs: never outlive us.
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            proc.stdout.close()
    t_end = time.monotonic()
    emu.stop_servers(servers)  # QEMU is gone: they exit on its disconnect

    rc: int | None = None
    try:
        rc = int((results / "exit-code").read_text().strip())
    except (OSError, ValueError):
        rc = demux.console_rc
    error = None
    if timed_out or cancelled:
        where = "booting" if demux.begin_t is None else "running the command"
        why = f"timed out after {timeout:.0f} s" if timed_out else "cancelled"
        error = f"{why} while {where}; QEMU was killed"
        rc = None
    elif stalled:
        error = (f"the guest did not start the command within {BOOT_TIMEOUT_S:g} s of booting "
                 "(a boot stall; QEMU was killed)")
        rc = None
    elif rc is None:
        stage = "before the command started" if demux.begin_t is None else "during the command"
        qerr = (results / "qemu.stderr").read_text(errors="replace").strip()
        error = (f"the guest stopped {stage} without reporting an exit code "
                 f"(QEMU exit status {proc.returncode})" + (f": {qerr}" if qerr else ""))
    problems: list[str] = []
    try:
        dmesg = (results / "dmesg").read_text(errors="replace")
        problems = [ln for ln in dmesg.splitlines() if KERNEL_PROBLEM_RE.search(ln)]
    except OSError:
        pass
    return LabResult(
        returncode=rc, timed_out=timed_out, results=results,
        boot_seconds=None if demux.begin_t is None else demux.begin_t - t0,
        command_seconds=(None if demux.begin_t is None or demux.end_t is None
                         else demux.end_t - demux.begin_t),
        total_seconds=t_end - t0, error=error, kernel_problems=problems,
        server_problems=[p for s in servers for p in s.problems()],
    )
