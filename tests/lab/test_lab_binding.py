"""Binding against the REAL kernel in the lab guest (intel-iommu, vfio-pci built in, VFIO cdev on).

Everything here is real: the guest's sysfs, its edu / virtio-crypto / virtio-net functions, the
`warpdrive` CLI (in-process `main(argv)`, and as a real process where its exit status is the
point), real holder processes. Each test leaves edu (no driver) and
virtio-crypto (virtio-pci) in their boot state, checked by the `boot_state` fixture.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.lab.lab_cli import wd
from warpdrive import binding, pci

pytestmark = pytest.mark.lab

BOOT_DRIVER = {"edu": None, "crypto": "virtio-pci"}


def driver_of(bdf: str) -> str | None:
    return pci.read_function(bdf).driver


@pytest.fixture
def boot_state(edu_bdf: str, crypto_bdf: str) -> Iterator[dict[str, str]]:
    """Yields {"edu": bdf, "crypto": bdf}; afterwards puts both back and fails if they were not."""
    bdfs = {"edu": edu_bdf, "crypto": crypto_bdf}
    for name, bdf in bdfs.items():
        assert driver_of(bdf) == BOOT_DRIVER[name], f"{name} not in its boot state at start"
    yield bdfs
    wrong = {}
    for name, bdf in bdfs.items():
        fn = pci.read_function(bdf)
        if fn.driver != BOOT_DRIVER[name] or fn.driver_override is not None:
            wrong[name] = (fn.driver, fn.driver_override)
            binding.unbind(bdf)
    assert not wrong, f"test left devices out of their boot state: {wrong}"


def test_devices_shows_edu_and_crypto_with_groups(boot_state: dict[str, str]) -> None:
    import json

    proc = wd("devices", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["iommu"]["available"] and data["iommu"]["group_count"] > 0
    by = {d["bdf"]: d for d in data["pci"]}
    for name, bdf in boot_state.items():
        d = by[bdf]
        assert d["plugin"] == name and d["iommu_group"] is not None
        assert d["driver"] == BOOT_DRIVER[name]
    table = wd("devices")
    assert table.returncode == 0
    for name, bdf in boot_state.items():
        line = next(ln for ln in table.stdout.splitlines() if ln.startswith(bdf))
        assert name in line and str(by[bdf]["iommu_group"]) in line


@pytest.mark.parametrize("name", ["edu", "crypto"])
def test_bind_then_unbind_restores(boot_state: dict[str, str], name: str) -> None:
    bdf = boot_state[name]
    group = pci.read_function(bdf).iommu_group
    assert group is not None
    assert not os.path.exists(f"/dev/vfio/{group}")

    proc = wd("bind", bdf, process=name == "edu")  # a real process exits 0 once
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fn = pci.read_function(bdf)
    assert fn.driver == "vfio-pci" and fn.driver_override == "vfio-pci"
    assert fn.vfio_group_node == f"/dev/vfio/{group}" and os.path.exists(fn.vfio_group_node)
    assert fn.vfio_cdev is not None and os.path.exists(f"/dev/vfio/devices/{fn.vfio_cdev}")
    assert f"/dev/vfio/{group}: crw" in proc.stdout and "RLIMIT_MEMLOCK" in proc.stdout
    cdev = fn.vfio_cdev

    again = wd("bind", bdf)
    assert again.returncode == 0 and "already bound to vfio-pci" in again.stdout

    proc = wd("unbind", bdf)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fn = pci.read_function(bdf)
    assert fn.driver == BOOT_DRIVER[name] and fn.driver_override is None
    deadline = time.monotonic() + 5
    while os.path.exists(f"/dev/vfio/{group}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/dev/vfio/{group}")
    assert not os.path.exists(f"/dev/vfio/devices/{cdev}")


def test_bind_guest_nic_refused(boot_state: dict[str, str], nic_bdf: str,
                                nic_ifname: str) -> None:
    """A real bind (not a dry run) of the guest's NIC, which carries the default route."""
    before = pci.read_function(nic_bdf)
    for args in (("bind", nic_bdf), ("bind", nic_bdf, "--dry-run")):
        proc = wd(*args, process="--dry-run" not in args)  # a real process exits 3
        assert proc.returncode == 3, proc.stdout + proc.stderr
        text = proc.stdout + proc.stderr
        assert nic_ifname in text and "default via" in text and "DEFAULT ROUTE" in text
    after = pci.read_function(nic_bdf)
    assert (after.driver, after.driver_override) == (before.driver, before.driver_override)
    assert after.driver is not None and nic_ifname in after.net_interfaces


HOLD = "import os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); print('ready', flush=True); " \
       "time.sleep(120)"


@pytest.mark.parametrize("node", ["group", "cdev"])
def test_unbind_refused_while_held(boot_state: dict[str, str], node: str) -> None:
    bdf = boot_state["edu"]
    with binding.bound_to(bdf) as fn:
        path = fn.vfio_group_node if node == "group" else fn.vfio_cdev_node
        assert path is not None
        holder = subprocess.Popen([sys.executable, "-c", HOLD, path], stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
            proc = wd("unbind", bdf)
            assert proc.returncode == 3, proc.stdout + proc.stderr
            assert f"pid {holder.pid}" in proc.stderr and path in proc.stderr
            assert driver_of(bdf) == "vfio-pci"
        finally:
            holder.kill()
            holder.wait()


def test_bind_refused_while_bar_mapped(boot_state: dict[str, str]) -> None:
    """A process mmapping edu's BAR0 through sysfs (resource0) blocks a bind."""
    bdf = boot_state["edu"]
    code = ("import mmap, sys, time; f = open(sys.argv[1], 'r+b'); "
            "m = mmap.mmap(f.fileno(), 4096); print('ready', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code,
                               f"/sys/bus/pci/devices/{bdf}/resource0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        proc = wd("bind", bdf)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert f"pid {holder.pid}" in proc.stderr and "resource0" in proc.stderr
        assert driver_of(bdf) is None
    finally:
        holder.kill()
        holder.wait()


def test_failed_bind_rolls_back(boot_state: dict[str, str]) -> None:
    """virtio-pci's probe rejects edu (not a virtio device): the bind fails and rolls back."""
    bdf = boot_state["edu"]
    proc = wd("bind", bdf, "--driver", "virtio-pci", "--timeout", "3")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "rolled back" in proc.stderr and "Traceback" not in proc.stderr
    fn = pci.read_function(bdf)
    assert fn.driver is None and fn.driver_override is None


def test_bound_to_context_manager(boot_state: dict[str, str]) -> None:
    bdf = boot_state["crypto"]
    with binding.bound_to(bdf) as fn:
        assert fn.driver == "vfio-pci" and fn.vfio_group_node is not None
        assert driver_of(bdf) == "vfio-pci"
    assert driver_of(bdf) == "virtio-pci"
    assert pci.read_function(bdf).driver_override is None
