"""uacce queues and the SVA DMA space.

No uacce-capable device exists on these machines or in the QEMU lab (only HiSilicon
ZIP/SEC/HPRE have one), so the queue tests use a FAKE sysfs tree under a temp dir to check the
attribute parsing and refusals; the SVA DMA space has no kernel call to fake (an SVA map is a no-op
for the kernel) and is tested for real."""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

import pytest

import warpdrive.syscalls as sc
from warpdrive.backends.uacce.queue import SvaDmaSpace, UacceQueue
from warpdrive.errors import (
    DeviceBusyError,
    DeviceNotFoundError,
    UnsafeMemoryError,
    UnsupportedError,
)
from warpdrive.memory import DmaBuffer, inspect_dma_memory


def test_sva_map_is_identity_and_still_checks_memory(tmp_path: Path) -> None:
    space = SvaDmaSpace("uacce:test")
    buf = DmaBuffer.allocate(8192)
    m = space.map(buf)
    assert m.iova == buf.addr == buf.iova
    space.unmap(buf)
    f = open(tmp_path / "f", "w+b")  # noqa: SIM115
    f.write(b"\0" * 4096)
    f.flush()
    mm = mmap.mmap(f.fileno(), 4096)
    anchor = ctypes.c_char.from_buffer(mm)
    with pytest.raises(UnsafeMemoryError, match="regular file"):
        space.map(ctypes.addressof(anchor), 4096)
    del anchor
    mm.close()
    f.close()
    space.close()
    buf.close()


def test_sva_maps_user_memory_marked_dontfork() -> None:
    space = SvaDmaSpace("uacce:test")
    addr = sc.mmap(4096, sc.PROT_READ | sc.PROT_WRITE, sc.MAP_PRIVATE | sc.MAP_ANONYMOUS)
    assert not inspect_dma_memory(addr, 4096).dontfork
    space.map(addr, 4096)
    assert inspect_dma_memory(addr, 4096).dontfork
    space.close()
    sc.munmap(addr, 4096)


def _fake_uacce(root: Path, name: str, **attrs: str) -> Path:
    d = root / "class" / "uacce" / name
    d.mkdir(parents=True)
    base = {"api": "hisi_qm_v2", "flags": "1", "available_instances": "4",
            "region_mmio_size": "8192", "region_dus_size": "151552"}
    base.update(attrs)
    for k, v in base.items():
        (d / k).write_text(v + "\n")
    return d


def test_missing_device_is_reported_with_a_hint() -> None:
    with pytest.raises(DeviceNotFoundError, match="uacce_mode=1"):
        UacceQueue("hisi_zip-0")


def test_device_without_sva_is_refused(tmp_path: Path) -> None:
    _fake_uacce(tmp_path, "hisi_zip-0", flags="0")
    with pytest.raises(UnsupportedError, match="does not offer SVA"):
        UacceQueue("hisi_zip-0", sysfs_root=str(tmp_path), dev_root=str(tmp_path))


def test_device_with_no_free_queue_is_busy(tmp_path: Path) -> None:
    _fake_uacce(tmp_path, "hisi_zip-0", available_instances="0")
    with pytest.raises(DeviceBusyError, match="all queues"):
        UacceQueue("hisi_zip-0", sysfs_root=str(tmp_path), dev_root=str(tmp_path))


def test_missing_char_device_names_the_path(tmp_path: Path) -> None:
    _fake_uacce(tmp_path, "hisi_zip-0")
    with pytest.raises(DeviceNotFoundError, match="/dev/hisi_zip-0"):
        UacceQueue("hisi_zip-0", sysfs_root=str(tmp_path), dev_root=str(tmp_path))
