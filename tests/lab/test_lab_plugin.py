"""lab.pytest_lab end to end: an inner pytest on lab_selftest_cases.py, read back via JUnit XML."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab import kernel

ROOT = Path(__file__).resolve().parents[2]
CASES = "tests/lab/lab_selftest_cases.py"
K = kernel.known_versions()[0]  # the inner runs boot this kernel only, unless a test says both


def inner_pytest(tmp_path: Path, *args: str, **env: str) -> tuple[int, str, dict[str, ET.Element]]:
    # The inner run decides about the lab itself: an outer WARPDRIVE_LAB=skip must not leak in
    # (only tests that pass it explicitly get it).
    outer = {k: v for k, v in os.environ.items() if k != "WARPDRIVE_LAB"}
    outer["WARPDRIVE_LAB_KERNELS"] = K
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", f"--junitxml={junit}",
         *args, CASES],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        # TMPDIR: guest logs the plugin keeps after a failure stay inside this test's tmp dir.
        env={**outer, "TMPDIR": str(tmp_path), **env})
    cases = {tc.get("name", ""): tc for tc in ET.parse(junit).iter("testcase")}
    return proc.returncode, proc.stdout + proc.stderr, cases


# These host tests boot guests of their own: a host-only run (WARPDRIVE_LAB=skip) skips them too.
boots_a_guest = pytest.mark.skipif(os.environ.get("WARPDRIVE_LAB", "").lower() == "skip",
                                   reason="WARPDRIVE_LAB=skip: this test boots a lab guest")


def outcome(tc: ET.Element) -> str:
    for child in tc:
        if child.tag in ("failure", "error", "skipped"):
            return child.tag
    return "passed"


@pytest.fixture(scope="module")
def on_both_kernels(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str,
                                                                       dict[str, ET.Element]]:
    """One inner run of every case on every lab kernel, shared by the tests below (each of its
    guest boots costs tens of seconds of TCG CPU)."""
    return inner_pytest(tmp_path_factory.mktemp("both"),
                        WARPDRIVE_LAB_KERNELS=",".join(kernel.known_versions()))


@pytest.mark.slow
@boots_a_guest
def test_guest_outcomes_are_reported_by_name(
        on_both_kernels: tuple[int, str, dict[str, ET.Element]]) -> None:
    rc, out, cases = on_both_kernels
    assert rc == 1, out
    expected = {"test_host_only": "passed"}
    for v in kernel.known_versions():
        expected.update({
            f"test_guest_passes[k{v}]": "passed",
            f"test_guest_fails[k{v}]": "failure",
            f"test_guest_skips[k{v}]": "skipped",
            f"test_modes[vfio-k{v}]": "passed",
            f"test_modes[iommufd-k{v}]": "passed",
            f"test_kernel_seen[k{v}]": "passed",
        })
        failure = cases[f"test_guest_fails[k{v}]"].find("failure")
        assert failure is not None
        assert "failure-text-from-the-guest" in (failure.text or "")
    assert {n: outcome(tc) for n, tc in cases.items()} == expected, out
    assert "captured-in-the-guest" in out  # the guest's captured stdout, in the host's report
    assert "skip-reason-from-the-guest" in out


@pytest.mark.slow
@boots_a_guest
def test_each_kernel_gets_its_own_boot_and_node_ids(
        on_both_kernels: tuple[int, str, dict[str, ET.Element]]) -> None:
    both = kernel.known_versions()
    _, out, cases = on_both_kernels
    for v in both:
        assert outcome(cases[f"test_guest_passes[k{v}]"]) == "passed", out
        assert outcome(cases[f"test_kernel_seen[k{v}]"]) == "passed", out
        assert f"kernel {v}:\n  guest: boot-to-command" in out  # one boot each, in the summary
    assert f"one QEMU guest boot per kernel and boot ({', '.join(both)})" in out


def test_lab_items_fail_with_the_reason_when_the_lab_cannot_run(tmp_path: Path) -> None:
    rc, out, cases = inner_pytest(tmp_path, WARPDRIVE_LAB_QEMU="/nonexistent/qemu-system-x86_64")
    assert rc == 1, out
    lab = {n: tc for n, tc in cases.items() if n != "test_host_only"}
    assert all(outcome(tc) == "failure" for tc in lab.values()), out
    for tc in lab.values():
        failure = tc.find("failure")
        assert failure is not None and "/nonexistent/qemu-system-x86_64 not found" in (
            failure.text or failure.get("message") or "")
    assert outcome(cases["test_host_only"]) == "passed"


def test_warpdrive_lab_skip_skips_loudly(tmp_path: Path) -> None:
    rc, out, cases = inner_pytest(tmp_path, WARPDRIVE_LAB="skip")
    assert rc == 0, out
    assert outcome(cases["test_host_only"]) == "passed"
    assert all(outcome(tc) == "skipped" for n, tc in cases.items() if n != "test_host_only")
    assert "WARPDRIVE_LAB=skip: 6 lab test(s) were NOT run" in out


@pytest.mark.slow
@boots_a_guest
def test_guest_timeout_fails_every_lab_item(tmp_path: Path) -> None:
    rc, out, cases = inner_pytest(tmp_path, "--lab-timeout=2")
    assert rc == 1, out
    for name, tc in cases.items():
        if name != "test_host_only":
            failure = tc.find("failure")
            assert failure is not None and "timed out after 2 s" in (failure.text or ""), out


@pytest.mark.slow
@boots_a_guest
def test_boot_failure_is_retried_once_then_fails_every_lab_item(tmp_path: Path) -> None:
    # A kernel that cannot find its init panics before pytest starts, on both boots.
    rc, out, cases = inner_pytest(tmp_path, WARPDRIVE_LAB_APPEND="rdinit=/nonexistent")
    assert rc == 1, out
    assert f"the {K} guest failed to boot; retrying once" in out
    for name, tc in cases.items():
        if name != "test_host_only":
            failure = tc.find("failure")
            assert failure is not None, out
            assert "the guest stopped before the command started" in (failure.text or ""), out
    assert len(list(tmp_path.glob("warpdrive-lab-*/console.failed-boot.log"))) == 1


@pytest.mark.slow
@boots_a_guest
def test_a_boot_that_never_reaches_the_command_is_killed_and_retried_once(
        tmp_path: Path) -> None:
    # No TCG boot reaches the command within half a second: the first boot "stalls", is
    # killed and retried (what the retry then does is not this test's business).
    _rc, out, _cases = inner_pytest(tmp_path, WARPDRIVE_LAB_BOOT_TIMEOUT="0.5")
    assert f"the {K} guest failed to boot; retrying once" in out, out
    assert "first boot failed (the guest did not start the command within 0.5 s" in out, out
    assert len(list(tmp_path.glob("warpdrive-lab-*/console.failed-boot.log"))) == 1
