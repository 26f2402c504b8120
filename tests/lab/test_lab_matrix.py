"""lab/matrix.py counts lab tests by kernel x IOMMU mode x backend x plugin from pytest's own
collection (host only: nothing boots)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lab import kernel

ROOT = Path(__file__).resolve().parents[2]


def test_the_selftest_modes_run_on_every_kernel() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "lab" / "matrix.py"), "--json",
                           "tests/lab/test_lab_iommu_modes.py"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["lab"]
    kernels = kernel.selected_versions()
    modes = {"vfio_type1_iommu", "vfio_type1v2_iommu", "iommufd_compat_type1",
             "iommufd_compat_type1v2", "iommufd"}
    for k in kernels:
        seen = {r["mode"] for r in rows if r["kernel"] == k}
        assert modes <= seen, (k, seen)
    assert all(r["backend"] == ("iommufd" if r["mode"] == "iommufd" else "vfio")
               for r in rows if r["mode"] in modes)
