"""Device models served on the host over vfio-user and attached to the lab guest as PCI functions.

Before QEMU starts, each model in EMU_DEVICES runs as `warpdrive emu <model> --socket PATH` on
the host (PATH in the run's results dir); QEMU's own `vfio-user-pci` client connects to it and
the guest sees a PCI function at a fixed slot behind intel-iommu, which its kernel drivers
(vfio-pci, hisi_zip) bind like real hardware. The servers exit when QEMU disconnects at
power-off (or are stopped after it); their logs (`emu-<name>.log`) stay in the results dir and
problems in them are reported.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the NUL


@dataclass(frozen=True)
class EmuDevice:
    name: str  # fixture `<name>_bdf`, log `emu-<name>.log`
    model: str  # `warpdrive emu <model>`
    slot: int  # guest PCI slot 00:<slot>.0, fixed so the fixture needs no guessing
    vendor: int  # the ids the guest must see there (the fixture checks them)
    devices: tuple[int, ...]
    options: tuple[str, ...] = ()  # `--set KEY=VALUE` for the model

    @property
    def bdf(self) -> str:
        return f"0000:00:{self.slot:02x}.0"


# A new model attaches with one line here (its `<name>_bdf` fixture comes with it).
EMU_DEVICES: tuple[EmuDevice, ...] = (
    EmuDevice("zip", "zip", slot=0x10, vendor=0x19E5, devices=(0xA251, 0xA250)),
)

# Lines in a server's log that mean it complained (tracebacks, error replies it logged).
SERVER_PROBLEM_RE = re.compile(r"Traceback|Error|error|refus|malformed")


class EmuError(RuntimeError):
    """A model server could not be started."""


def _python() -> str:
    venv = CHECKOUT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


class EmuServer:
    """One model server process for one guest boot."""

    def __init__(self, device: EmuDevice, results: Path) -> None:
        self.device = device
        self.socket = results / f"emu-{device.name}.sock"
        self.log = results / f"emu-{device.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        if len(str(self.socket)) > SUN_PATH_MAX:
            raise EmuError(f"socket path {self.socket} is longer than {SUN_PATH_MAX} bytes; "
                           "set TMPDIR to a shorter directory")

    def qemu_args(self) -> list[str]:
        d = self.device
        # JSON: `socket` is a SocketAddress object, which key=value syntax cannot express.
        return ["-device", json.dumps({
            "driver": "vfio-user-pci", "id": f"emu-{d.name}", "addr": f"{d.slot:02x}.0",
            "socket": {"type": "unix", "path": str(self.socket)}})]

    def start(self, timeout: float = 30.0) -> None:
        d = self.device
        argv = [_python(), "-m", "warpdrive.cli", "emu", d.model, "--socket", str(self.socket),
                "--exit-on-disconnect", "--accept-timeout", "120"]
        for opt in d.options:
            argv += ["--set", opt]
        r, w = os.pipe2(os.O_CLOEXEC)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(CHECKOUT), os.environ.get("PYTHONPATH", "")) if p)}
        try:
            with open(self.log, "wb") as log:
                self.proc = subprocess.Popen([*argv, "--ready-fd", str(w)], pass_fds=(w,),
                                             stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, env=env,
                                             start_new_session=True)
        except OSError as e:
            os.close(r)
            raise EmuError(f"cannot start `warpdrive emu {d.model}`: {e}") from None
        finally:
            os.close(w)
        try:
            self._wait_ready(r, timeout)
        except BaseException:
            self.stop(grace=0)
            raise
        finally:
            os.close(r)

    def _wait_ready(self, r: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        got = b""
        while b"\n" not in got:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EmuError(f"`warpdrive emu {self.device.model}` did not listen within "
                               f"{timeout:.0f} s; log: {self.tail()}")
            if select.select([r], [], [], left)[0]:
                chunk = os.read(r, 64)
                if not chunk:
                    assert self.proc is not None
                    raise EmuError(f"`warpdrive emu {self.device.model}` exited with status "
                                   f"{self.proc.wait()} before listening; log: {self.tail()}")
                got += chunk

    def stop(self, grace: float = 3.0) -> None:
        """Wait for the server to leave by itself (QEMU disconnected), then TERM, then KILL."""
        if self.proc is None or self.returncode is not None:
            return
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    pass
            try:
                self.returncode = self.proc.wait(grace if sig is None else 3.0)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.returncode is None:
            self.returncode = self.proc.wait()

    def tail(self, lines: int = 10) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty)"

    def problems(self) -> list[str]:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        out = [f"emu {self.device.name}: {ln}" for ln in text.splitlines()
               if SERVER_PROBLEM_RE.search(ln)]
        if self.returncode not in (0, None):
            out.append(f"emu {self.device.name}: server exited with status {self.returncode}")
        return out


def start_servers(devices: Sequence[EmuDevice], results: Path) -> list[EmuServer]:
    """Start every server (all or none: a failure stops the ones already started)."""
    servers: list[EmuServer] = []
    try:
        for d in devices:
            s = EmuServer(d, results)
            s.start()
            servers.append(s)
    except BaseException:
        stop_servers(servers, grace=0)
        raise
    return servers


def stop_servers(servers: Sequence[EmuServer], grace: float = 3.0) -> None:
    for s in servers:
        s.stop(grace)


def by_name(names: Sequence[str]) -> list[EmuDevice]:
    known = {d.name: d for d in EMU_DEVICES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise EmuError(f"unknown lab device model(s) {', '.join(unknown)}; known: "
                       f"{', '.join(known)}")
    return [known[n] for n in names]
