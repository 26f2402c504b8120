"""Mmio accessor logic: widths, bounds, alignment, mapped windows vs trapped holes, doorbells.

The windows here are ordinary memory and the "trap" records accesses: this tests the dispatch and
checking logic only. Real registers (edu's width-sensitive BAR, vfio-user doorbells) are exercised
in the lab and the vfio-user tests."""

from __future__ import annotations

import pytest

from warpdrive.errors import ClosedError, InvalidArgumentError
from warpdrive.memory import DmaBuffer
from warpdrive.mmio import Mmio, MmioWindow


class Recorder:
    def __init__(self) -> None:
        self.log: list[tuple[str, int, int, int]] = []

    def read(self, offset: int, width: int) -> int:
        self.log.append(("r", offset, width, 0))
        return 0xA5

    def write(self, offset: int, width: int, value: int) -> None:
        self.log.append(("w", offset, width, value))

    def post(self, offset: int, width: int, value: int) -> None:
        self.log.append(("p", offset, width, value))


@pytest.fixture
def mem():
    buf = DmaBuffer.allocate(3 * 4096)
    yield buf
    buf.close()


def test_widths_are_little_endian_and_exact(mem: DmaBuffer) -> None:
    m = Mmio("t", 4096, [MmioWindow(0, 4096, mem.addr)])
    m.write64(8, 0x1122334455667788)
    assert m.read32(8) == 0x55667788 and m.read32(12) == 0x11223344
    assert m.read16(8) == 0x7788 and m.read8(15) == 0x11
    m.write8(8, 0xFF)
    assert m.read64(8) == 0x11223344556677FF
    assert mem.read(8, 8) == bytes.fromhex("ff77665544332211")


def test_bounds_alignment_and_value_range_are_checked(mem: DmaBuffer) -> None:
    m = Mmio("t", 256, [MmioWindow(0, 256, mem.addr)])
    with pytest.raises(InvalidArgumentError, match="outside t"):
        m.read32(256)
    with pytest.raises(InvalidArgumentError, match="outside t"):
        m.read64(252)
    with pytest.raises(InvalidArgumentError, match="not 4-byte aligned"):
        m.write32(2, 0)
    with pytest.raises(InvalidArgumentError, match="does not fit a 16-bit"):
        m.write16(0, 0x10000)
    with pytest.raises(InvalidArgumentError):
        m.write32(0, -1)


def test_holes_go_through_the_trap_and_windows_do_not(mem: DmaBuffer) -> None:
    rec = Recorder()
    # A BAR with a mapped page at 0 and at 0x2000, and a trapped hole (think MSI-X table) between.
    m = Mmio("bar", 0x3000, [MmioWindow(0, 0x1000, mem.addr),
                             MmioWindow(0x2000, 0x1000, mem.addr + 0x2000)], trap=rec)
    m.write32(0x10, 1)
    m.write32(0x2010, 2)
    assert rec.log == []
    assert m.read32(0x1004) == 0xA5
    m.write64(0x1008, 7)
    assert rec.log == [("r", 0x1004, 4, 0), ("w", 0x1008, 8, 7)]
    assert m.is_mapped(0x10) and not m.is_mapped(0x1004)


def test_doorbell_mapped_is_a_plain_store_and_trapped_is_a_message(mem: DmaBuffer) -> None:
    rec = Recorder()
    m = Mmio("bar", 0x2000, [MmioWindow(0, 0x1000, mem.addr)], trap=rec)
    fast = m.doorbell(0x100, 64)
    slow = m.doorbell(0x1100, 32)
    assert fast.mapped and not slow.mapped
    fast.ring(0xDEAD_BEEF_0000_0001)
    assert m.read64(0x100) == 0xDEAD_BEEF_0000_0001 and rec.log == []
    slow.ring(5)
    assert rec.log == [("w", 0x1100, 4, 5)]
    with pytest.raises(InvalidArgumentError, match="16, 32 or 64"):
        m.doorbell(0, 8)


def test_access_without_window_or_trap_is_refused(mem: DmaBuffer) -> None:
    m = Mmio("bar", 0x2000, [MmioWindow(0, 0x1000, mem.addr)])
    with pytest.raises(InvalidArgumentError, match="neither mapped nor trappable"):
        m.read32(0x1000)


def test_closed_region_refuses_access(mem: DmaBuffer) -> None:
    closed: list[bool] = []
    m = Mmio("bar", 0x1000, [MmioWindow(0, 0x1000, mem.addr)], on_close=lambda: closed.append(True))
    m.close()
    m.close()
    assert closed == [True]
    with pytest.raises(ClosedError):
        m.read32(0)


def test_a_posted_doorbell_posts_when_trapped_and_stores_when_mapped(mem: DmaBuffer) -> None:
    rec = Recorder()
    m = Mmio("t", 8192, [MmioWindow(4096, 4096, mem.addr)], trap=rec)
    trapped = m.doorbell(8, posted=True)
    assert trapped.posted and not trapped.mapped
    trapped.ring(7)
    m.doorbell(16).ring(9)
    assert rec.log == [("p", 8, 8, 7), ("w", 16, 8, 9)]
    mapped = m.doorbell(4096 + 8, posted=True)
    mapped.ring(5)
    assert mem.read(8, 8) == (5).to_bytes(8, "little") and len(rec.log) == 2
