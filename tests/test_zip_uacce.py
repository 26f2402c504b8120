"""ZIP device discovery and the uacce path's refusals.

No HiSilicon ZIP device exists on this machine or in the QEMU lab, so the uacce queue bring-up
(SET_QP_CTX / SET_QP_INFO / mmap / START_Q) cannot run anywhere here. These tests use a FAKE sysfs
tree (a temp dir; tests/fakesysfs.py) only to check the *parsing*: which uacce devices and which
PCI functions count as usable ZIP hardware, and that a path that is not a hisi_zip queue is
refused with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

import warpdrive.zip as wz
from tests.fakesysfs import FakeSysfs
from warpdrive.backends import open_uacce
from warpdrive.backends.uacce.sysfs import usable_devices
from warpdrive.devices.hisi_qm import regs as qm
from warpdrive.devices.hisi_qm.uacce import UacceQueues, api_version
from warpdrive.devices.zip import hw
from warpdrive.errors import DeviceNotFoundError, UnsupportedError, WarpdriveError

ATTRS = {"api": "hisi_qm_v2", "flags": "1", "available_instances": "60",
         "algorithms": "zlib\ngzip\ndeflate", "region_mmio_size": "8192",
         "region_dus_size": "151552"}


def tree(tmp_path: Path) -> FakeSysfs:
    fs = FakeSysfs(tmp_path)
    fs.add_driver("vfio-pci")
    fs.add_driver("hisi_zip")
    return fs


def test_uacce_devices_filter(tmp_path: Path) -> None:
    fs = tree(tmp_path)
    fs.add_function("0000:75:00.0", hw.PCI_VENDOR_ID_HUAWEI, hw.ZIP_PF_DEVICE_ID, 0x120000,
                    driver="hisi_zip")
    fs.add_uacce("hisi_zip-0", "0000:75:00.0", ATTRS)
    fs.add_uacce("hisi_zip-1", "0000:75:00.0", {**ATTRS, "isolate": "1"})  # isolated
    fs.add_uacce("hisi_zip-2", "0000:75:00.0", {**ATTRS, "available_instances": "0"})
    fs.add_uacce("hisi_zip-3", "0000:75:00.0", {**ATTRS, "flags": "0"})  # no SVA
    fs.add_uacce("hisi_sec2-0", "0000:75:00.0", ATTRS)
    assert usable_devices(hw.ZIP.uacce_driver, fs.sysfs_root) == ["hisi_zip-0"]
    assert wz.find_hardware(fs.sysfs_root) == "hisi_zip-0"


def test_vfio_pci_vf_is_found_and_others_are_not(tmp_path: Path) -> None:
    fs = tree(tmp_path)
    fs.add_function("0000:75:00.0", hw.PCI_VENDOR_ID_HUAWEI, hw.ZIP_PF_DEVICE_ID, 0x120000,
                    driver="vfio-pci")  # a PF: not driven
    fs.add_function("0000:75:00.1", hw.PCI_VENDOR_ID_HUAWEI, hw.ZIP_VF_DEVICE_ID, 0x120000,
                    driver="hisi_zip")  # a VF on the kernel driver: not ours to take
    assert wz.find_hardware(fs.sysfs_root) is None
    fs.add_function("0000:75:00.2", hw.PCI_VENDOR_ID_HUAWEI, hw.ZIP_VF_DEVICE_ID, 0x120000,
                    driver="vfio-pci")
    assert wz.find_hardware(fs.sysfs_root) == "0000:75:00.2"


def test_api_versions() -> None:
    assert api_version("hisi_qm_v1") == qm.QM_HW_V1
    assert api_version("hisi_qm_v2") == qm.QM_HW_V2
    assert api_version("hisi_qm_v3") == qm.QM_HW_V3
    assert api_version("hisi_qm_v5") == qm.QM_HW_V3
    with pytest.raises(UnsupportedError):
        api_version("virtio")


def test_uacce_refusals(tmp_path: Path) -> None:
    fs = tree(tmp_path)
    with pytest.raises(DeviceNotFoundError, match="hisi_sec2-0"):
        open_uacce("hisi_sec2-0", sysfs_root=fs.sysfs_root, dev_root=fs.dev_root)
    fs.add_function("0000:75:00.0", hw.PCI_VENDOR_ID_HUAWEI, hw.ZIP_PF_DEVICE_ID, 0x120000,
                    driver="hisi_zip")
    fs.add_uacce("hisi_sec2-0", "0000:75:00.0", ATTRS)
    sec = open_uacce("hisi_sec2-0", sysfs_root=fs.sysfs_root, dev_root=fs.dev_root)
    with pytest.raises(DeviceNotFoundError, match="hisi_zip"):
        UacceQueues(sec, hw.ZIP)  # a QM device, but not a ZIP one
    sec.close()
    fs.add_uacce("hisi_zip-0", "0000:75:00.0", ATTRS)
    src = UacceQueues(open_uacce("hisi_zip-0", sysfs_root=fs.sysfs_root, dev_root=fs.dev_root),
                      hw.ZIP)
    assert src.version == qm.QM_HW_V2
    # /dev/hisi_zip-0 in the fake tree is a plain file: the first queue ioctl must fail cleanly.
    with pytest.raises(WarpdriveError, match="UACCE_CMD_QM_SET_QP_CTX"):
        src.start_queue(hw.ZIP_QC_COMPRESS)
    src.close()
