"""The lab itself: lab/run.py on the host, and what the guest provides to lab tests.

Host tests here boot their own guests through `python lab/run.py` (the entry point under test);
`lab`-marked tests run inside the session's single guest boot.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = [sys.executable, str(ROOT / "lab" / "run.py")]
BOOT_TIMEOUT = 300  # generous: TCG on a loaded 2-core machine


def run_lab(*args: str, timeout: float = BOOT_TIMEOUT,
            tmpdir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmpdir)} if tmpdir else None
    return subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=timeout + 60,
                          env=env)


# ------------------------------------------------------------------------------ host: lab/run.py


@pytest.fixture(scope="module")
def uname_and_streams() -> subprocess.CompletedProcess[str]:
    """One boot for the two tests below (each boot is seconds of TCG CPU on both cores): the
    kernel release, then both streams and an exit status of 7. An error-level kernel message
    during the command must not land in its output."""
    script = ("uname -r; echo to-stdout; echo '<3>wd-kmsg-probe' > /dev/kmsg; "
              "echo to-stderr >&2; exit 7")
    return run_lab("--", "sh", "-c", script)


@pytest.mark.slow
def test_run_prints_lab_kernel_release(lab_kernel_dir: Path,
                                       uname_and_streams: subprocess.CompletedProcess[str]) -> None:
    proc = uname_and_streams
    # stdout is exactly the command's output: no boot noise, no \r from the serial line.
    assert proc.stdout.startswith((lab_kernel_dir / "release").read_text()), proc.stderr
    assert "boot-to-command" in proc.stderr


@pytest.mark.slow
def test_run_false_exits_nonzero() -> None:
    proc = run_lab("-q", "--", "false")
    assert proc.returncode == 1, proc.stderr
    assert "boot-to-command" not in proc.stderr  # -q: no timing line


@pytest.mark.slow
def test_run_streams_both_streams_and_exact_status(
        lab_kernel_dir: Path, uname_and_streams: subprocess.CompletedProcess[str]) -> None:
    proc = uname_and_streams
    assert proc.returncode == 7, proc.stderr
    # The guest command's stdout and stderr share the serial console, so both arrive on stdout.
    release = (lab_kernel_dir / "release").read_text()
    assert proc.stdout == release + "to-stdout\nto-stderr\n"


@pytest.mark.slow
def test_run_timeout_kills_qemu(tmp_path: Path) -> None:
    # TMPDIR: the logs a timeout keeps land in pytest's tmp dir, not in /tmp on every run.
    proc = run_lab("-q", "--timeout", "3", "--", "sleep", "600", timeout=3, tmpdir=tmp_path)
    assert proc.returncode == 124
    assert "timed out after 3 s" in proc.stderr
    kept = list(tmp_path.glob("warpdrive-lab-*/console.log"))
    assert len(kept) == 1 and f"logs kept in {kept[0].parent}" in proc.stderr


@pytest.mark.slow
def test_checkout_under_tmp_is_visible_in_the_guest(tmp_path: Path) -> None:
    # The guest mounts a fresh tmpfs on /tmp; a clone living there must still be the cwd.
    shutil.copytree(ROOT / "lab", tmp_path / "lab")
    proc = subprocess.run([sys.executable, str(tmp_path / "lab" / "run.py"), "-q", "--",
                           "sh", "-c", "pwd; ls; touch written"],
                          capture_output=True, text=True, timeout=BOOT_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(tmp_path), "lab"]
    assert not (tmp_path / "written").exists()  # guest writes never reach the host


def test_lab_kernel_headers_are_the_lab_kernels(lab_kernel_headers: Path) -> None:
    for h in ("linux/vfio.h", "linux/iommufd.h", "misc/uacce/uacce.h"):
        assert (lab_kernel_headers / h).is_file(), h
    assert "IOMMU_IOAS_MAP" in (lab_kernel_headers / "linux/iommufd.h").read_text()


# ------------------------------------------------------------------------------ guest: lab tests


@pytest.mark.lab
def test_guest_runs_the_lab_kernel_as_root_in_the_checkout(lab_kernel_dir: Path) -> None:
    assert os.uname().release == (lab_kernel_dir / "release").read_text().strip()
    assert os.environ["WARPDRIVE_IN_LAB"] == "1"
    assert os.geteuid() == 0
    assert Path.cwd() == ROOT
    # The job's environment as lab/vm.py wrote it (/proc/self/environ: as this process started;
    # tests/conftest.py drops PYTHONDONTWRITEBYTECODE from os.environ afterwards, so that the
    # Pythons tests start write byte-code, in the guest into its tmpfs overlay).
    environ = Path("/proc/self/environ").read_bytes().split(b"\0")
    assert b"PYTHONDONTWRITEBYTECODE=1" in environ


@pytest.mark.lab
@pytest.mark.parametrize("node", ["/dev/iommu", "/dev/vfio/vfio"])
def test_iommu_device_nodes_exist(node: str) -> None:
    assert stat.S_ISCHR(os.stat(node).st_mode)


@pytest.mark.lab
def test_edu_and_crypto_each_in_an_iommu_group(edu_bdf: str, crypto_bdf: str) -> None:
    groups = {}
    for bdf in (edu_bdf, crypto_bdf):
        link = Path("/sys/bus/pci/devices", bdf, "iommu_group")
        group = os.readlink(link).rsplit("/", 1)[-1]
        members = os.listdir(f"/sys/kernel/iommu_groups/{group}/devices")
        assert bdf in members
        groups[bdf] = group
    assert groups[edu_bdf] != groups[crypto_bdf]


@pytest.mark.lab
def test_uacce_class_exists() -> None:
    assert Path("/sys/class/uacce").is_dir()


@pytest.mark.lab
def test_devices_start_as_on_a_real_machine(edu_bdf: str, crypto_bdf: str, nic_bdf: str) -> None:
    def driver(bdf: str) -> str | None:
        link = Path("/sys/bus/pci/devices", bdf, "driver")
        return os.readlink(link).rsplit("/", 1)[-1] if link.exists() else None

    assert driver(edu_bdf) is None
    assert driver(crypto_bdf) == "virtio-pci"
    assert driver(nic_bdf) == "virtio-pci"


@pytest.mark.lab
def test_nic_is_up_and_carries_the_default_route(nic_ifname: str) -> None:
    flags = int(Path(f"/sys/class/net/{nic_ifname}/flags").read_text(), 16)
    assert flags & 0x1, "IFF_UP"
    assert Path(f"/sys/class/net/{nic_ifname}/operstate").read_text().strip() == "up"
    routes = [ln.split() for ln in Path("/proc/net/route").read_text().splitlines()[1:]]
    assert any(r[0] == nic_ifname and r[1] == "00000000" for r in routes), routes


@pytest.mark.lab
def test_hugepages_are_reserved_and_mounted() -> None:
    meminfo = dict(ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines())
    assert int(meminfo["HugePages_Total"]) > 0
    assert int(meminfo["Hugepagesize"].split()[0]) == 2048
    mounts = [ln.split() for ln in Path("/proc/mounts").read_text().splitlines()]
    assert any(m[1] == "/dev/hugepages" and m[2] == "hugetlbfs" for m in mounts)


@pytest.mark.lab
def test_iommu_mode_matrix(iommu_mode: str, lab_kernel: str,
                           request: pytest.FixtureRequest) -> None:
    assert request.node.name == f"test_iommu_mode_matrix[{iommu_mode}-k{lab_kernel}]"
    assert os.path.exists({"vfio": "/dev/vfio/vfio", "iommufd": "/dev/iommu"}[iommu_mode])
