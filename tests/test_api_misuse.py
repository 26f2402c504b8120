"""The device API misused as a new user would: wrong types, negative sizes, a closed device in a
`with`. Each gets a WarpdriveError naming the argument (a wrong type is an ArgumentTypeError,
also a TypeError), never a comparison or ctypes error from inside. On the bundled test device
model (emu:testdev, over vfio-user: real sockets, real mappings), and examples/compress_files.py
with bad arguments."""

from __future__ import annotations

import ctypes
import mmap
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import warpdrive
from warpdrive.errors import ArgumentTypeError, ClosedError, InvalidArgumentError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dev() -> Iterator[warpdrive.Device]:
    with warpdrive.open("emu:testdev") as d:
        yield d


@pytest.mark.parametrize("call, said", [
    (lambda d: d.map_bar("0"), "BAR index must be an int, not str"),
    (lambda d: d.dma.alloc("4096"), "DMA buffer size must be an int, not str"),
    (lambda d: d.dma.alloc(4096.0), "DMA buffer size must be an int, not float"),
    (lambda d: d.map_bar(0).write32(0, "1"), "MMIO offsets and values are ints; got int, str"),
    (lambda d: d.map_bar(0).read32("0"), "MMIO offsets and values are ints; got str"),
    (lambda d: warpdrive.check_dma_memory("0x1000", 4096), "DMA address must be an int, not str"),
    (lambda d: warpdrive.open("emu:testdev", dma_mask="0xffff"),
     "DMA mask must be an int, not str"),
])
def test_a_wrong_type_is_named(dev: warpdrive.Device, call, said: str) -> None:
    with pytest.raises(ArgumentTypeError, match=said) as e:
        call(dev)
    assert isinstance(e.value, TypeError)


def test_a_negative_length_is_called_that(dev: warpdrive.Device) -> None:
    m = mmap.mmap(-1, 8192)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    with pytest.raises(InvalidArgumentError, match="DMA length must be positive, got -1"):
        dev.dma.map(addr, -1)  # (it used to say "is not aligned to the IOMMU page size")


def test_config_space_and_irq_misuse_is_said_before_the_backend(dev: warpdrive.Device) -> None:
    with pytest.raises(InvalidArgumentError, match="does not fit a 32-bit config field at 0x40"):
        dev.config_write32(0x40, 1 << 40)  # (was int.to_bytes' OverflowError)
    with pytest.raises(ArgumentTypeError, match="config space value must be an int, not str"):
        dev.config_write16(0x40, "1")
    with pytest.raises(InvalidArgumentError, match="has no IRQ index 99"):
        dev.disable_irqs(99)  # (was the vfio-user server's EINVAL as a KernelError)


def test_a_closed_buffer_or_interrupt_is_a_closed_error() -> None:
    from warpdrive.uapi.vfio import VFIO_PCI_MSI_IRQ_INDEX

    with warpdrive.open("emu:testdev") as d:
        buf = d.dma.alloc(4096)
        (irq,) = d.enable_irqs(VFIO_PCI_MSI_IRQ_INDEX, 1)
    with pytest.raises(ClosedError, match="DMA buffer is closed"):
        buf.read(0, 4)
    with pytest.raises(ClosedError, match="MSI vector 0 of emu:testdev is closed"):
        irq.wait(0.1)  # (was os.read's EBADF)
    with pytest.raises(InvalidArgumentError, match="5 is not a device name"):
        warpdrive.open(5, backend="vfio-user")  # type: ignore[arg-type]


def test_with_on_a_closed_device_is_refused_at_once() -> None:
    d = warpdrive.open("emu:testdev")
    d.close()
    with pytest.raises(ClosedError, match="device emu:testdev is closed"), d:
        pass


@pytest.mark.parametrize("args, code, said", [
    (["docs", "--device", "nosuch"], 1, "compress_files: 'nosuch' is not a device name"),
    (["docs", "--batch", "0"], 2, "--batch 0: give 1 or more jobs per doorbell"),
])
def test_the_compress_example_says_what_is_wrong(args: list[str], code: int, said: str) -> None:
    r = subprocess.run([sys.executable, str(REPO / "examples" / "compress_files.py"), *args],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == code and "Traceback" not in r.stderr, r.stderr
    assert said in r.stderr.strip().splitlines()[-1]


def test_the_compress_example_writes_complete_files_only(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.txt").write_bytes(b"warpdrive " * 1000)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(REPO / "examples" / "compress_files.py"), str(src),
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in out.iterdir()] == ["a.txt.gz"]  # no temporary name left behind
    assert oct((out / "a.txt.gz").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    import os

    old = os.umask(0)
    os.umask(old)
    return old
