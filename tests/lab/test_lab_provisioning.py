"""lab/install-deps.sh's plan per Debian release (its --dry-run), and how the lab finds its QEMU.

The dry run changes nothing and needs no root, so both releases' plans are checked on any host:
the host's apt only ever sees its own release's suites; QEMU and linux-source-7.3 come from a
trixie root, never from the host's sources.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from lab import emu, qemu

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "lab" / "install-deps.sh"


MIRROR = "http://deb.debian.org/debian"  # given, so the plan does not ask apt for the host's


def plan(*args: str) -> list[str]:
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "WARPDRIVE_LAB_MIRROR": MIRROR})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.parametrize(("release", "own", "foreign"), [
    ("12", {"bookworm", "bookworm-backports"}, "trixie"),
    ("13", {"trixie"}, "bookworm"),
])
def test_host_apt_uses_only_its_own_release(release: str, own: set[str], foreign: str) -> None:
    lines = plan("--release", release)
    assert lines[0].startswith(f"host: Debian {release} ")
    host_apt = [ln for ln in lines if ln.startswith("host apt:")]
    suites = {re.match(r"host apt: install from ([a-z-]+)", ln).group(1)  # type: ignore[union-attr]
              for ln in host_apt}
    assert suites == own
    assert not any(foreign in ln for ln in host_apt)
    assert any("linux-source-6.12" in ln for ln in host_apt)
    assert not any("qemu" in ln for ln in host_apt)  # QEMU lives in the trixie root only


@pytest.mark.parametrize("release", ["12", "13"])
def test_qemu_and_linux_73_come_from_the_pinned_trixie_root(release: str) -> None:
    lines = plan("--release", release)
    root = next(ln for ln in lines if ln.startswith("qemu root:"))
    assert "--variant=apt trixie" in root and f"'deb {MIRROR} trixie-backports main'" in root
    assert f"qemu-system-x86={qemu.pinned_version()}" in root
    assert str(qemu.root_dir()) in root
    src = next(ln for ln in lines if ln.startswith("linux-source-7.3:"))
    assert "qemu root" in src and "dpkg-deb -x" in src


def test_release_detection_refuses_unknown_values() -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--release", "11"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "lab/install-deps.sh: --release wants 12 or 13, not '11'"


def test_qemu_override_and_missing_root_errors(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("WARPDRIVE_LAB_QEMU", "/bin/true")
    assert qemu.command() == ["/bin/true"]
    monkeypatch.setenv("WARPDRIVE_LAB_QEMU", "/nonexistent/qemu")
    with pytest.raises(qemu.QemuMissing, match="/nonexistent/qemu not found"):
        qemu.command()
    monkeypatch.delenv("WARPDRIVE_LAB_QEMU")
    monkeypatch.setattr(qemu, "CACHE_ROOT", tmp_path)
    with pytest.raises(qemu.QemuMissing, match=r"run `bash lab/install-deps.sh`"):
        qemu.command()


def test_vfio_user_model_servers_start_attach_and_stop(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    server = emu.EmuServer(emu.EmuDevice("x", "testdev", slot=0x1A, vendor=1, devices=(2,)),
                           tmp_path)
    server.start()
    try:
        flag, spec = server.qemu_args()
        assert flag == "-device"
        assert json.loads(spec) == {"driver": "vfio-user-pci", "id": "emu-x", "addr": "1a.0",
                                    "socket": {"type": "unix", "path": server.socket}}
        assert Path(server.socket).is_socket()
    finally:
        server.stop(grace=0)  # no client ever came: TERM
    assert server.returncode is not None and server.log.is_file()
    assert not Path(server.socket).exists()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / ("d" * 120)))
    (tmp_path / ("d" * 120)).mkdir()
    with pytest.raises(emu.EmuError, match=r"cannot start `warpdrive emu zip`(.|\n)*cannot listen"):
        emu.start_servers([emu.EMU_DEVICES[0]], tmp_path)
    with pytest.raises(emu.EmuError, match="unknown lab device model"):
        emu.by_name(["nosuch"])


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot and mounts need root")
def test_debian13_dry_run_in_a_trixie_root() -> None:
    """The Debian 13 path exercised on a real trixie root (the lab's QEMU root under a throwaway
    overlay): release detection from its os-release and a trixie-only plan."""
    if not (qemu.root_dir() / ".warpdrive-lab-ok").is_file():
        pytest.skip("no trixie root yet: run bash lab/install-deps.sh")
    proc = subprocess.run(["bash", str(ROOT / "lab" / "check-debian13.sh"), "--quick", "--no-apt"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "WARPDRIVE_LAB_MIRROR": MIRROR})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "host: Debian 13 (trixie)" in lines
    planned = next(ln for ln in lines if ln.startswith("host apt: install from trixie: "))
    assert planned.rsplit(": ", 1)[1].split() == debian13_packages()
    assert not any(ln.startswith("host apt:") and "bookworm" in ln for ln in lines)


def debian13_packages() -> list[str]:
    # Minus the system Python's testsuite: planned only where python3 lacks it (the host's
    # python3 answers for a --release 13 plan here; the trixie root has no python3).
    line = next(ln for ln in plan("--release", "13") if ln.startswith("host apt: install from"))
    return [p for p in line.rsplit(": ", 1)[1].split() if not p.endswith("-testsuite")]
