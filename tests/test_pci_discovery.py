"""PCI and uacce discovery: parsing on a FAKE sysfs tree, plus read-only checks on this real host.

The fake tree (tests/fakesysfs.py FakeSysfs, under pytest's tmp_path) stands in for the kernel's
/sys/bus/pci, /sys/kernel/iommu_groups, /sys/class/{net,block,uacce,vfio-dev} and /dev/vfio layout;
it tests parsing only. The `real_host` tests read this machine's own /sys (no IOMMU here) and
write nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

import warpdrive
from tests.fakesysfs import FakeSysfs
from tests.hostnet import default_route_ifname
from warpdrive import pci
from warpdrive.backends.uacce import sysfs as uacce_sysfs
from warpdrive.devices import registry as plugins
from warpdrive.errors import DeviceNotFoundError, InvalidArgumentError


@pytest.fixture(autouse=True)
def _no_binding_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARPDRIVE_FORBID_SYSFS_WRITES", "1")


def build_fake(tmp_path) -> FakeSysfs:
    """FAKE q35-like machine: host bridge, root port, edu on vfio-pci, virtio-crypto sharing a
    group with a sound card, virtio-net with a root port in its group, a HiSilicon ZIP PF with
    uacce, an NVMe disk."""
    f = FakeSysfs(tmp_path)
    f.add_iommu("dmar0")
    f.add_function("0000:00:00.0", 0x8086, 0x29C0, 0x060000, group=0)
    f.add_function("0000:00:01.0", 0x8086, 0x7C01, 0x060400, driver="pcieport", group=7)
    f.add_function("0000:00:03.0", 0x1234, 0x11E8, 0x00FF00, driver="vfio-pci", group=5,
                   numa=0, revision=0x10, subsystem=(0x1AF4, 0x1100), override="vfio-pci")
    f.add_vfio_node(5)
    f.add_vfio_cdev("0000:00:03.0", "vfio0")
    f.add_function("0000:00:04.0", 0x1AF4, 0x1054, 0x100000, driver="virtio-pci", group=6)
    f.add_child("0000:00:04.0", "virtio1", "virtio")
    f.add_function("0000:00:04.1", 0x8086, 0x293E, 0x040300, driver="snd_hda_intel", group=6)
    f.add_function("0000:00:05.0", 0x1AF4, 0x1041, 0x020000, driver="virtio-pci", group=7)
    f.add_child("0000:00:05.0", "virtio2", "virtio")
    f.add_child("0000:00:05.0", "virtio2/net/wdfake0", "net")
    f.add_function("0000:00:06.0", 0x19E5, 0xA250, 0x120000, driver="hisi_zip", group=8,
                   numa=1, revision=0x21)
    f.add_uacce("hisi_zip-0", "0000:00:06.0", {
        "api": "hisi_qm_v2", "flags": "1", "available_instances": "60",
        "algorithms": "zlib\ngzip\ndeflate", "region_mmio_size": "8192",
        "region_dus_size": "1069056", "isolate": "0", "isolate_strategy": "0"})
    (f.fn_dir("0000:00:06.0") / "sriov_numvfs").write_text("0\n")
    f.add_function("0000:00:07.0", 0x1B36, 0x0010, 0x010802, driver="nvme", group=9)
    f.add_child("0000:00:07.0", "nvme/nvme0", "nvme", (250, 0))
    f.add_child("0000:00:07.0", "nvme/nvme0/nvme0n1", "block", (259, 0))
    f.add_child("0000:00:07.0", "nvme/nvme0/nvme0n1/nvme0n1p1", "block", (259, 1))
    return f


def by_bdf(fake: FakeSysfs) -> dict[str, pci.PciFunction]:
    return {f.bdf: f for f in pci.devices(fake.sysfs_root, fake.dev_root)}


def test_fake_tree_identity_fields(tmp_path) -> None:
    """Fake tree: ids, class, revision, subsystem ids, driver, override, NUMA."""
    fns = by_bdf(build_fake(tmp_path))
    assert sorted(fns) == ["0000:00:00.0", "0000:00:01.0", "0000:00:03.0", "0000:00:04.0",
                           "0000:00:04.1", "0000:00:05.0", "0000:00:06.0", "0000:00:07.0"]
    edu = fns["0000:00:03.0"]
    assert (edu.vendor, edu.device, edu.class_code, edu.revision) == (0x1234, 0x11E8, 0xFF00, 0x10)
    assert (edu.subsystem_vendor, edu.subsystem_device) == (0x1AF4, 0x1100)
    assert edu.ids == "1234:11e8"
    assert edu.driver == "vfio-pci" and edu.driver_override == "vfio-pci"
    assert edu.numa_node == 0
    crypto = fns["0000:00:04.0"]
    assert crypto.driver_override is None  # the kernel's "(null)"
    assert crypto.numa_node is None  # -1
    assert crypto.class_name == "encryption"
    assert fns["0000:00:00.0"].driver is None
    assert fns["0000:00:05.0"].class_name == "Ethernet controller"


def test_fake_tree_iommu_groups_and_vfio_nodes(tmp_path) -> None:
    """Fake tree: group number/type, the other members with their drivers, viability, nodes."""
    fake = build_fake(tmp_path)
    fns = by_bdf(fake)
    edu = fns["0000:00:03.0"]
    assert edu.iommu_group == 5 and edu.iommu_group_type == "DMA"
    assert edu.group_members == ()
    assert edu.vfio_group_node == f"{fake.dev_root}/vfio/5"
    assert edu.vfio_cdev == "vfio0"
    assert edu.vfio_cdev_node == f"{fake.dev_root}/vfio/devices/vfio0"

    crypto = fns["0000:00:04.0"]
    assert crypto.iommu_group == 6
    assert [(m.bdf, m.driver) for m in crypto.group_members] == [("0000:00:04.1",
                                                                  "snd_hda_intel")]
    assert [m.bdf for m in crypto.blocking_members] == ["0000:00:04.1"]
    assert crypto.vfio_group_node is None and crypto.vfio_cdev is None

    nic = fns["0000:00:05.0"]  # shares group 7 with a root port: bridges never block
    assert [(m.bdf, m.driver, m.is_bridge) for m in nic.group_members] == [
        ("0000:00:01.0", "pcieport", True)]
    assert nic.blocking_members == ()


def test_fake_tree_children(tmp_path) -> None:
    """Fake tree: net interface below virtio, uacce device, NVMe block devices with numbers."""
    fns = by_bdf(build_fake(tmp_path))
    assert fns["0000:00:05.0"].net_interfaces == ("wdfake0",)
    assert fns["0000:00:06.0"].uacce_devices == ("hisi_zip-0",)
    assert fns["0000:00:06.0"].sriov_numvfs == 0
    nvme = fns["0000:00:07.0"]
    assert nvme.block_devices == ("nvme0n1", "nvme0n1p1")
    assert {c.name: c.devnum for c in nvme.children} == {
        "nvme0": (250, 0), "nvme0n1": (259, 0), "nvme0n1p1": (259, 1)}
    assert fns["0000:00:03.0"].net_interfaces == ()


def test_fake_tree_plugins_claimed(tmp_path) -> None:
    """Fake tree: the plugin table claims edu, virtio-crypto and the ZIP PF, nothing else; bare
    discovery (the core, below the plugins) names none."""
    fake = build_fake(tmp_path)
    fns = warpdrive.list_devices(fake.sysfs_root, fake.dev_root)
    claimed = {f.bdf: f.plugin for f in fns if f.plugin}
    assert claimed == {"0000:00:03.0": "edu", "0000:00:04.0": "crypto", "0000:00:06.0": "zip"}
    assert [f.bdf for f in warpdrive.devices(fake.sysfs_root, fake.dev_root)] == \
        [f.bdf for f in fns]
    assert not any(f.plugin for f in by_bdf(fake).values())


def test_fake_tree_iommu_status(tmp_path) -> None:
    fake = build_fake(tmp_path)
    s = pci.iommu_status(fake.sysfs_root, fake.dev_root)
    assert s.iommus == ("dmar0",) and s.group_count == 6 and s.available
    assert s.vfio_pci_loaded  # the fake has a vfio-pci driver dir (edu is bound to it)
    assert "6 groups" in s.summary()
    empty = FakeSysfs(tmp_path / "noiommu")
    s2 = pci.iommu_status(empty.sysfs_root, empty.dev_root)
    assert not s2.available
    assert s2.summary().startswith("no IOMMU: VFIO unavailable on this machine")


def test_fake_tree_netdev_function(tmp_path) -> None:
    """Fake tree: /sys/class/net/<if>/device -> virtio2 -> walk up to the PCI function."""
    fake = build_fake(tmp_path)
    assert pci.netdev_function("wdfake0", fake.sysfs_root) == "0000:00:05.0"
    assert pci.netdev_function("nope", fake.sysfs_root) is None


def test_fake_tree_missing_function(tmp_path) -> None:
    fake = build_fake(tmp_path)
    with pytest.raises(DeviceNotFoundError, match=r"0000:00:1f\.0"):
        pci.read_function("00:1f.0", fake.sysfs_root, fake.dev_root)


def test_fake_tree_to_dict_is_json_friendly(tmp_path) -> None:
    import json

    d = by_bdf(build_fake(tmp_path))["0000:00:04.0"].to_dict()
    json.dumps(d)
    assert d["vendor"] == "0x1af4" and d["class_code"] == "0x100000" and d["ids"] == "1af4:1054"
    assert d["group_members"][0]["driver"] == "snd_hda_intel"


def test_fake_tree_uacce(tmp_path) -> None:
    """Fake /sys/class/uacce: every attribute, SVA flag, parent function and its NUMA node."""
    fake = build_fake(tmp_path)
    (u,) = uacce_sysfs.devices(fake.sysfs_root, fake.dev_root)
    assert u.name == "hisi_zip-0" and u.driver == "hisi_zip"
    assert u.dev_path == f"{fake.dev_root}/hisi_zip-0"
    assert u.api == "hisi_qm_v2" and u.flags == 1 and u.sva
    assert u.available_instances == 60
    assert u.algorithms == ("zlib", "gzip", "deflate")
    assert (u.region_mmio_size, u.region_dus_size) == (8192, 1069056)
    assert u.isolate == 0 and not u.isolated and u.isolate_strategy == 0
    assert u.parent_bdf == "0000:00:06.0" and u.numa_node == 1


def test_fake_tree_uacce_optional_attributes(tmp_path) -> None:
    """Fake uacce device of an old kernel: no isolate, no region_dus_size, flags 0 (no SVA)."""
    fake = FakeSysfs(tmp_path)
    fake.add_function("0000:00:06.0", 0x19E5, 0xA251, 0x120000, driver="hisi_zip")
    fake.add_uacce("hisi_zip-3", "0000:00:06.0", {"api": "hisi_qm_v1", "flags": "0",
                                                  "algorithms": "zlib\ngzip"})
    (u,) = uacce_sysfs.devices(fake.sysfs_root, fake.dev_root)
    assert not u.sva and u.isolate is None and u.region_dus_size is None
    assert u.available_instances is None and u.numa_node is None


def test_uacce_absent_on_this_host() -> None:
    """Real host: no /sys/class/uacce here, so the list is empty rather than an error."""
    if os.path.isdir("/sys/class/uacce"):
        pytest.skip("this machine has uacce devices")
    assert uacce_sysfs.devices() == []


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.integers(0, 0x1F), st.integers(0, 7))
def test_normalize_bdf_roundtrip(domain: int, bus: int, slot: int, fn: int) -> None:
    full = f"{domain:04x}:{bus:02x}:{slot:02x}.{fn}"
    assert pci.normalize_bdf(full.upper()) == full
    if domain == 0:
        assert pci.normalize_bdf(full[5:]) == full


@pytest.mark.parametrize("bad", ["", "00:03", "0000:00:03.8", "eth0", "../../etc", "0:0:0.0"])
def test_normalize_bdf_rejects(bad: str) -> None:
    with pytest.raises(InvalidArgumentError):
        pci.normalize_bdf(bad)


def test_plugin_claims() -> None:
    assert plugins.claim(0x1234, 0x11E8) == "edu"
    assert plugins.claim(0x1AF4, 0x1054) == "crypto"
    assert plugins.claim(0x19E5, 0xA250) == "zip"
    assert plugins.claim(0x19E5, 0xA251) == "zip"
    assert plugins.claim(0x1AF4, 0x1041) is None
    assert plugins.claim(0x19E5, 0xA255) is None
    z = plugins.get("zip")
    assert z is not None and z.driver == "warpdrive.devices.zip.driver:ZipDriver"
    assert z.load().probe.__qualname__ == "ZipDriver.probe"


def test_discovery_imports_stay_light() -> None:
    """Discovery and the plugin table add no plugin, backend, pyroute2 or psutil import of their
    own (measured against what `import warpdrive` already loads)."""
    code = ("import sys, warpdrive; before = set(sys.modules); "
            "import warpdrive.pci, warpdrive.devices.registry, warpdrive.backends.uacce.sysfs; "
            "new = set(sys.modules) - before; "
            "bad = [m for m in new if m != 'warpdrive.devices.registry' and m.startswith(("
            "'warpdrive.devices', 'warpdrive.backends.vfio', 'warpdrive.backends.iommufd', "
            "'warpdrive.binding', 'pyroute2', 'psutil'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _real_functions() -> list[str]:
    return sorted(os.listdir("/sys/bus/pci/devices"))


def test_real_host_lists_every_function() -> None:
    """Real host sysfs: every function is listed, and the ids agree with the kernel's uevent."""
    fns = pci.devices()
    assert [f.bdf for f in fns] == _real_functions()
    for f in fns:
        with open(f"/sys/bus/pci/devices/{f.bdf}/uevent") as fh:
            uevent = dict(line.strip().split("=", 1) for line in fh if "=" in line)
        assert uevent["PCI_ID"].lower() == f.ids
        assert int(uevent["PCI_CLASS"], 16) == f.class_code
        assert uevent.get("DRIVER") == f.driver


def test_real_host_nic_and_iommu() -> None:
    """Real host: the default-route interface is found below its PCI function; no IOMMU here."""
    from warpdrive.binding.netuse import interface_use  # noqa: F401  (the netlink reader imports)

    ifname = default_route_ifname()
    bdf = pci.netdev_function(ifname)
    if bdf is None:
        pytest.skip(f"{ifname} is not a PCI function here")
    assert ifname in pci.read_function(bdf).net_interfaces
    status = pci.iommu_status()
    if not os.listdir("/sys/kernel/iommu_groups"):
        assert not status.available
        assert all(f.iommu_group is None for f in pci.devices())


