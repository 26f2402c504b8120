"""Device models served on the host over vfio-user and attached to the lab guest as PCI functions.

Before QEMU starts, each model in EMU_DEVICES runs on the host as `python -m warpdrive.emu <model>
--socket PATH` (warpdrive's model launcher: a private socket directory, a ready handshake); QEMU's
own `vfio-user-pci` client connects to it and the guest sees a PCI function at a fixed slot behind
intel-iommu, which its kernel drivers (vfio-pci, hisi_zip) bind like real hardware. The servers
exit when QEMU disconnects at power-off (or are stopped after it); their logs (`emu-<name>.log`)
stay in the results dir and problems in them are reported.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from warpdrive.backends.vfiouser.launcher import ModelProcess
from warpdrive.errors import WarpdriveError

CHECKOUT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class EmuDevice:
    name: str  # fixture `<name>_bdf`, log `emu-<name>.log`
    model: str  # `warpdrive emu <model>`
    slot: int  # guest PCI slot 00:<slot>.0, fixed so the fixture needs no guessing
    vendor: int  # the ids the guest must see there (the fixture checks them)
    devices: tuple[int, ...]
    options: tuple[str, ...] = ()  # `--set KEY=VALUE` for the model
    spin_us: float | None = None  # the server's poll timings (`--spin-us`, `--idle-us`);
    idle_us: float | None = None  # None: the model's own

    @property
    def bdf(self) -> str:
        return f"0000:00:{self.slot:02x}.0"


# A new model attaches with one line here (its `<name>_bdf` fixture comes with it).
EMU_DEVICES: tuple[EmuDevice, ...] = (
    # QM V3 (the model's default): what Linux 6.12's hisi_zip registers deflate for. Trapped
    # doorbells: Linux rings CQ doorbells after waking the next submitter, so a polled doorbell
    # word could lose its SQ doorbell (docs/research/hisi-qm-zip.md, section 6).
    # A trapped doorbell arrives as a message, which wakes the server at once: its polling only
    # collects the jobs its worker threads finished, so it neither spins after a message nor
    # polls every 0.5 ms (its default) for the guest's whole life, CPU the guests need.
    EmuDevice("zip", "zip", slot=0x10, vendor=0x19E5, devices=(0xA251, 0xA250),
              options=("doorbells=trap",), spin_us=0, idle_us=2000),
    # Its notify page is mapped into the guest, so the server must poll it; between a guest's
    # bursts of requests it looks every 5 ms, not every 1 ms (its default): the first request
    # after a pause waits a little, the guest's other minutes cost the host less CPU.
    EmuDevice("crypto_model", "crypto", slot=0x11, vendor=0x1AF4, devices=(0x1054,),
              idle_us=5000),
)

# Lines in a server's log that mean it complained (tracebacks, error replies it logged).
SERVER_PROBLEM_RE = re.compile(r"Traceback|Error|error|refus|malformed")


class EmuError(RuntimeError):
    """A model server could not be started."""


def _python() -> str:
    venv = CHECKOUT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


class EmuServer:
    """One model server process for one guest boot (warpdrive's own model launcher: a private
    socket directory, a ready handshake, exit on the client's disconnect)."""

    def __init__(self, device: EmuDevice, results: Path) -> None:
        self.device = device
        self.log = results / f"emu-{device.name}.log"
        self.proc: ModelProcess | None = None
        self.returncode: int | None = None

    @property
    def socket(self) -> str:
        assert self.proc is not None
        return self.proc.socket_path

    def qemu_args(self) -> list[str]:
        d = self.device
        # JSON: `socket` is a SocketAddress object, which key=value syntax cannot express.
        return ["-device", json.dumps({
            "driver": "vfio-user-pci", "id": f"emu-{d.name}", "addr": f"{d.slot:02x}.0",
            "socket": {"type": "unix", "path": self.socket}})]

    def start(self, timeout: float = 30.0) -> None:
        d = self.device
        options = dict(opt.split("=", 1) for opt in d.options)
        try:
            # QEMU connects as soon as it starts; the server gives up if it never does.
            self.proc = ModelProcess(d.model, options=options, startup_timeout=timeout,
                                     accept_timeout=120, spin_us=d.spin_us, idle_us=d.idle_us,
                                     python=_python())
        except WarpdriveError as e:
            raise EmuError(f"cannot start `warpdrive emu {d.model}`: {e}") from None

    def stop(self, grace: float = 3.0) -> None:
        """Wait for the server to leave by itself (QEMU disconnected), keep its log, then make
        sure it is gone (TERM, then KILL)."""
        if self.proc is None or self.returncode is not None:
            return
        try:
            self.proc.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        try:
            shutil.copyfile(self.proc.log_path, self.log)
        except OSError:
            pass
        self.returncode = self.proc.stop(grace=0)

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
