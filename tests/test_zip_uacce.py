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


class _KernelQueue:
    """STAND-IN for one uacce queue of hisi_zip (no such device here, see the module doc): it
    answers the ioctls as 6.12 does, hands out queue memory, and keeps the doorbell values."""

    def __init__(self) -> None:
        self.doorbells: list[int] = []

    def ioctl(self, cmd: int, arg: object, what: str) -> None:
        if what == "UACCE_CMD_QM_SET_QP_CTX":
            arg.id = 5  # type: ignore[attr-defined]
        else:
            arg.sqe_size, arg.sq_depth, arg.cq_depth = hw.SQE_SIZE, 8, 8  # type: ignore[attr-defined]

    def map_mmio(self) -> object:
        from warpdrive.mmio import Doorbell

        outer = self

        class _Page:
            def doorbell(self, offset: int) -> Doorbell:
                return Doorbell(offset, 8, None, self, "stand-in")  # type: ignore[arg-type]

            def write(self, _offset: int, _width: int, value: int) -> None:
                outer.doorbells.append(value)

        return _Page()

    def map_dus(self) -> memoryview:
        return memoryview(bytearray(qm.QueueLayout(8, 8, hw.SQE_SIZE).size + 4096))

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("irq", [True, False])
def test_uacce_queue_rearms_its_interrupt_only_when_it_has_one(irq: bool) -> None:
    """The kernel never rings a CQ doorbell for a uacce queue (it only wakes poll()): the queue
    re-arms its own interrupt (priority-1 CQ doorbell) before a sleep, as UADK's epoll mode
    does (docs/research/hisi-qm-zip.md §7.1); a polled queue never sends priority 1."""
    from types import SimpleNamespace

    kq = _KernelQueue()
    sva = SimpleNamespace(driver=hw.ZIP.uacce_driver, name="hisi_zip-0", api="hisi_qm_v2",
                          dma=None, open_queue=lambda: kq)
    src = UacceQueues(sva, hw.ZIP)  # type: ignore[arg-type]
    q = src.start_queue(hw.ZIP_QC_COMPRESS, irq=irq)
    assert q.irq is irq and q.qn == 5
    q.ring_cq()
    q.ring_cq(rearm=True)
    prios = [qm.doorbell_decode_v2(v)[1:4:2] for v in kq.doorbells]
    assert prios == [(qm.QM_DB_CMD_CQ, 0), (qm.QM_DB_CMD_CQ, int(irq))]
    q.release()
