"""Each lab kernel (6.12 and 7.3) boots with what the lab promises: the kernel asked for, the
IOMMU front ends of every selftest mode, loadable modules (hisi_zip among them, not loaded at
boot so it does not grab the ZIP function)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from warpdrive import binding

pytestmark = pytest.mark.lab


def test_guest_runs_the_kernel_its_node_id_names(lab_kernel: str, lab_kernel_dir: Path) -> None:
    assert os.environ["WARPDRIVE_LAB_KERNEL_VERSION"] == lab_kernel
    release = os.uname().release
    assert release == (lab_kernel_dir / "release").read_text().strip()
    assert release.startswith(lab_kernel + "."), release


def test_every_iommu_front_end_is_there() -> None:
    # /dev/vfio/vfio: the real VFIO container (type1 v1 and v2); /dev/iommu: iommufd, also usable
    # as a container (compat type1/type1v2); the cdevs appear once a function is bound.
    assert os.path.exists("/dev/vfio/vfio") and os.path.exists("/dev/iommu")
    assert Path("/sys/class/misc/vfio").is_dir()
    # VFIO_CONTAINER, not IOMMUFD_VFIO_CONTAINER: /dev/vfio/vfio is VFIO's own misc device
    assert os.stat("/dev/vfio/vfio").st_rdev != os.stat("/dev/iommu").st_rdev


def test_hisi_zip_is_a_module_that_loads_and_unloads(zip_bdf: str, kernel_modules) -> None:
    assert "hisi_zip" not in kernel_modules.present()  # nothing grabbed the function at boot
    # With the function on vfio-pci, loading hisi_zip does not probe it (that is the witness
    # test's job): this only proves the modules load and unload on this kernel.
    with binding.bound_to(zip_bdf):
        kernel_modules.load("hisi_zip")
        assert {"hisi_zip", "hisi_qm"} <= kernel_modules.present()
        assert Path("/sys/bus/pci/drivers/hisi_zip").is_dir()
        assert Path(f"/sys/bus/pci/devices/{zip_bdf}/driver").resolve().name == "vfio-pci"
        kernel_modules.unload("hisi_zip")
        assert not {"hisi_zip", "hisi_qm"} & kernel_modules.present()
