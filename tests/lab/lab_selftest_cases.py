"""Cases for test_lab_plugin.py's end-to-end run; not collected by default (no test_ prefix).

Each case has a known outcome in the guest, so the host side can check that it reports the guest's
outcome, failure text and captured output by name.
"""

import os

import pytest


@pytest.mark.lab
def test_guest_passes() -> None:
    assert os.environ["WARPDRIVE_IN_LAB"] == "1"


@pytest.mark.lab
def test_guest_fails() -> None:
    print("captured-in-the-guest")
    assert 6 * 7 == 43, "failure-text-from-the-guest"


@pytest.mark.lab
def test_guest_skips() -> None:
    pytest.skip("skip-reason-from-the-guest")


@pytest.mark.lab
def test_modes(iommu_mode: str) -> None:
    assert iommu_mode in ("vfio", "iommufd")


@pytest.mark.lab
def test_kernel_seen(lab_kernel: str) -> None:
    # the guest booted the kernel named in the node id
    assert os.uname().release.startswith(lab_kernel + ".")


def test_host_only() -> None:
    # Would fail if the guest ran it: non-lab tests must be deselected there.
    assert os.environ.get("WARPDRIVE_IN_LAB") != "1"
